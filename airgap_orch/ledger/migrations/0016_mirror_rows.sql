-- The rest of what moves (issue 15): a source site's idempotency keys, job dependencies, sources, backfills and
-- backfill windows, kept as read-only mirrors like mirror_policies (never read by the job code; `bundle mirrors`
-- shows them). A full bundle replaces the source's rows; an incremental one replaces the tables that travel whole
-- (sources, backfills, backfill_windows) and merges idempotency_keys and job_dependencies by key.
CREATE TABLE mirror_rows (
    source_site  VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,      -- the bundle table: idempotency_keys, job_dependencies, ...
    key          VARCHAR NOT NULL,      -- the row's order columns joined by '/'
    row_json     VARCHAR NOT NULL,      -- every exported column
    PRIMARY KEY (source_site, kind, key)
);
