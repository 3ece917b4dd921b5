"""airgap-orch: a job orchestrator for air-gapped sites, on an embedded DuckDB ledger."""

__version__ = "0.1.0"
