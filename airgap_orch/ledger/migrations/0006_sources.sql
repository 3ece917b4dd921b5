-- Sources: the upstream feeds jobs ingest from (an advisory feed, a VEX publisher, a registry), each with
-- an optional cron schedule (UTC). A plain row with a record_version (the shape of the row) and a revision
-- (1 on creation, +1 per change of its definition), so a later bundle can carry it across the air gap.
-- `name` is unique per site across tenants: jobs of a source carry the flow key 'source:<name>', and
-- pauses, concurrency limits and breakers on that key are global, so two tenants cannot share a name.
-- last_tick and skipped_ticks are scheduler state, not definition: they change without a new revision.
CREATE TABLE sources (
    name            VARCHAR PRIMARY KEY,
    record_version  INTEGER NOT NULL,       -- orchestrator/sources.py RECORD_VERSION
    revision        INTEGER NOT NULL,
    site_id         VARCHAR NOT NULL,       -- the site whose scheduler ticks it (one owner per job)
    tenant          VARCHAR NOT NULL,
    project         VARCHAR NOT NULL,
    job_type        VARCHAR NOT NULL,
    queue           VARCHAR NOT NULL,
    host            VARCHAR,                -- jobs also carry 'host:<host>'
    schedule        VARCHAR,                -- 5-field cron expression, UTC; NULL: no schedule
    missed_policy   VARCHAR NOT NULL,       -- 'skip' | 'backfill': what to do with ticks missed while down
    payload         VARCHAR NOT NULL,       -- canonical JSON object each job's payload starts from
    last_tick       TIMESTAMP,              -- the latest tick enqueued (NULL: none yet)
    skipped_ticks   BIGINT NOT NULL,        -- missed ticks dropped so far (policy 'skip', or past the bound)
    created_at      TIMESTAMP NOT NULL,
    created_by      VARCHAR NOT NULL,
    updated_at      TIMESTAMP NOT NULL,
    updated_by      VARCHAR NOT NULL
);
