"""Job state machine, leases, retries and history: pure logic over the ledger (no HTTP, no printing)."""
