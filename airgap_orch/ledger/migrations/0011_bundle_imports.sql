-- Air-gap bundle IMPORT (issue 15): the bundles this site imported (its anti-rollback floors and time anchors)
-- and read-only mirrors of what they carried. Mirrors are never claimed, cancelled or replayed: they are not in
-- `jobs`, so no job code path reads them. A later full bundle of one source replaces that source's rows.

-- One row per ACCEPTED import (refusals are in the audit log only). The floor of a source site is its highest
-- sequence; the latest verified time anchor is the highest created_at.
CREATE TABLE bundle_imports (
    source_site     VARCHAR NOT NULL,
    sequence        BIGINT NOT NULL,
    kind            VARCHAR NOT NULL,
    bundle_id       VARCHAR NOT NULL,
    payload_digest  VARCHAR NOT NULL,   -- sha256 of the signed manifest payload
    created_at      TIMESTAMP NOT NULL, -- the verified time anchor's time
    imported_at     TIMESTAMP NOT NULL,
    imported_by     VARCHAR NOT NULL,
    outcome         VARCHAR NOT NULL,   -- 'imported' or 'forced' (staleness overridden with --force)
    PRIMARY KEY (source_site, sequence)
);

-- The source site's jobs (active and finished), one row each; `row_json` holds every exported column.
CREATE TABLE mirror_jobs (
    source_site  VARCHAR NOT NULL,
    job_id       VARCHAR NOT NULL,
    tenant       VARCHAR,
    state        VARCHAR,
    row_json     VARCHAR NOT NULL,
    PRIMARY KEY (source_site, job_id)
);

-- The source site's history, exactly as exported; the chain was recomputed from genesis on import.
CREATE TABLE mirror_history (
    source_site  VARCHAR NOT NULL,
    seq          BIGINT NOT NULL,
    job_id       VARCHAR,
    entry        VARCHAR NOT NULL,
    entry_hash   VARCHAR NOT NULL,
    PRIMARY KEY (source_site, seq)
);

-- The source site's quotas, rate limits, concurrency limits, circuit breakers and pauses: kept, NOT applied.
CREATE TABLE mirror_policies (
    source_site  VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,      -- the bundle table: quotas, rate_limits, ...
    key          VARCHAR NOT NULL,      -- the row's key columns joined by '/'
    row_json     VARCHAR NOT NULL,
    PRIMARY KEY (source_site, kind, key)
);
