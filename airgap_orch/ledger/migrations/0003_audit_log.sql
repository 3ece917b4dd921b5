-- Operator actions (quota changes, backfills, replays, pauses, cancels): append-only, hash-chained like
-- history. `entry` is the canonical JSON that was hashed: entry_hash = sha256(prev entry_hash || entry).
CREATE TABLE audit_log (
    seq         BIGINT NOT NULL,
    action      VARCHAR NOT NULL,
    entry       VARCHAR NOT NULL,
    entry_hash  VARCHAR NOT NULL
);
