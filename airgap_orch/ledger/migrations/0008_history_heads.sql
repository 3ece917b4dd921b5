-- The head (last seq and entry_hash) of each hash chain, written in the same transaction as the entries it
-- ends: 'history' (orchestrator/history.py, written by ledger/store.py at commit) and 'audit'
-- (orchestrator/audit.py). `ledger verify` checks each chain against its recorded head, so removing entries from
-- a chain's end is caught; the ledger continues a chain from this head, never from its last row. No key or
-- index: two rows, updated in place, one UPDATE per committing transaction that appended.
CREATE TABLE chain_heads (
    chain       VARCHAR NOT NULL,   -- 'history' | 'audit'
    seq         BIGINT NOT NULL,    -- 0: the chain is empty
    entry_hash  VARCHAR NOT NULL    -- 64 zeros while empty (the genesis)
);

INSERT INTO chain_heads
SELECT 'history', coalesce(max(seq), 0), coalesce(arg_max(entry_hash, seq), repeat('0', 64)) FROM history;

INSERT INTO chain_heads
SELECT 'audit', coalesce(max(seq), 0), coalesce(arg_max(entry_hash, seq), repeat('0', 64)) FROM audit_log;
