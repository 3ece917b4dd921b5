-- One hash chain per owning site (issue 15), for history and for the audit log.
--
-- `history` and `audit_log` hold exactly ONE site's chains: this site's (ledger_meta site_id). Every entry in
-- them is owned by this site (a handed-over job's history goes on HERE with a `job.received` entry), and their
-- `seq` is this site's per-site sequence, which the entry text carries and the hash covers. So the owning site
-- is a property of the table, not of a row: no column is stored per entry (the commit-time append stays as fast
-- as it was), and the global seq, which the SSE event ids and cursors use, does not change.
-- Other sites' chains are the mirrors, keyed by (source_site, seq): mirror_history (0011) and, from here on,
-- mirror_audit_log. The view `site_chains` puts all of them in one relation keyed by (site_id, chain, site_seq).
--
-- A `--tenant` bundle carries the other tenants' entries as hashes only (entry NULL, hash_only true): the next
-- entry's hash binds them, so the chain verifies without their text. Mirrors keep them so.
ALTER TABLE mirror_history ALTER COLUMN entry DROP NOT NULL;
ALTER TABLE mirror_history ADD COLUMN hash_only BOOLEAN DEFAULT false;
UPDATE mirror_history SET hash_only = false;

-- The source site's audit log, as exported (chain checked at import like its history).
CREATE TABLE mirror_audit_log (
    source_site  VARCHAR NOT NULL,
    seq          BIGINT NOT NULL,
    action       VARCHAR,
    entry        VARCHAR,
    entry_hash   VARCHAR NOT NULL,
    hash_only    BOOLEAN NOT NULL,
    PRIMARY KEY (source_site, seq)
);

-- The head (last seq and entry_hash) of each mirrored chain, written by the import that brought it: the
-- counterpart of chain_heads (0008) for other sites. An import extends this head; `ledger verify` recomputes each
-- mirrored chain and matches it here. Mirrors imported before this migration: their history head; no audit row
-- (their source's audit log was not imported: the next full bundle of that source brings it).
CREATE TABLE mirror_chain_heads (
    source_site  VARCHAR NOT NULL,
    chain        VARCHAR NOT NULL,   -- 'history' | 'audit'
    seq          BIGINT NOT NULL,
    entry_hash   VARCHAR NOT NULL,
    PRIMARY KEY (source_site, chain)
);

INSERT INTO mirror_chain_heads
SELECT source_site, 'history', max(seq), arg_max(entry_hash, seq) FROM mirror_history GROUP BY source_site;

CREATE VIEW site_chains AS
SELECT (SELECT value FROM ledger_meta WHERE key = 'site_id') AS site_id, 'history' AS chain, seq AS site_seq,
       job_id AS key, entry, entry_hash, false AS hash_only
FROM history
UNION ALL
SELECT (SELECT value FROM ledger_meta WHERE key = 'site_id'), 'audit', seq, action, entry, entry_hash, false
FROM audit_log
UNION ALL
SELECT source_site, 'history', seq, job_id, entry, entry_hash, hash_only FROM mirror_history
UNION ALL
SELECT source_site, 'audit', seq, action, entry, entry_hash, hash_only FROM mirror_audit_log;
