-- Incremental bundles, reissue and hand-off (issue 15; operations/bundles.py, operations/bundle_import.py).

-- The high-water marks an export read in its snapshot: an incremental bundle cut from this one as its base
-- carries the history and audit entries after them (and the jobs those history entries name). NULL for exports
-- written before this migration: they cannot be a base.
ALTER TABLE bundle_exports ADD COLUMN history_seq BIGINT;
ALTER TABLE bundle_exports ADD COLUMN audit_seq BIGINT;
-- sha256 of the bundle file as written; its bytes are kept in `<ledger>.exports/` for `bundle export --reissue`.
ALTER TABLE bundle_exports ADD COLUMN file_sha256 VARCHAR;
-- How many jobs the bundle hands over (bundle_handoffs holds which).
ALTER TABLE bundle_exports ADD COLUMN handed_off BIGINT;

-- At the SOURCE: the jobs handed off to a target site, one row each, written in the transaction that made them
-- `handed_off` (which commits BEFORE the bundle file is written): `sequence` is the bundle of that target's
-- series that carries them (reserved by that transaction; `bundle export --reissue SEQ` writes it if the first
-- export never finished). history_seq and entry_hash: the job's `job.handed_off` history entry, the last one the
-- source holds for the job, which the target's `job.received` entry names.
CREATE TABLE bundle_handoffs (
    target_site    VARCHAR NOT NULL,
    sequence       BIGINT NOT NULL,
    job_id         VARCHAR NOT NULL,
    backfill_id    VARCHAR,             -- set when the job covers a window of a backfill handed over
    window_index   INTEGER,
    history_seq    BIGINT NOT NULL,
    entry_hash     VARCHAR NOT NULL,
    handed_off_at  TIMESTAMP NOT NULL,
    handed_off_by  VARCHAR NOT NULL,
    PRIMARY KEY (job_id)
);
