-- Flow control: the keys a job declares, dependency edges, and the limits enforced at claim time.
-- Limits, pauses and breakers are plain rows with a record_version (the shape of the row) and a
-- revision (bumped on each change), so a later bundle can carry them across the air gap.

-- limit_keys: keys a job declares beyond its tenant and type, e.g. 'host:nvd.nist.gov' or 'source:nvd'.
-- fair_seq: the job's turn among tenants (start-time fair queueing; orchestrator/fairness.py).
ALTER TABLE jobs ADD COLUMN limit_keys VARCHAR[];
ALTER TABLE jobs ADD COLUMN fair_seq BIGINT;
ALTER TABLE jobs_finished ADD COLUMN limit_keys VARCHAR[];
ALTER TABLE jobs_finished ADD COLUMN fair_seq BIGINT;
UPDATE jobs SET fair_seq = 0;
CREATE OR REPLACE VIEW all_jobs AS
    SELECT * FROM jobs
    UNION ALL
    SELECT * FROM jobs_finished;

-- A job in state 'waiting' becomes 'queued' once every parent succeeded.
CREATE TABLE job_dependencies (
    job_id     VARCHAR NOT NULL,
    parent_id  VARCHAR NOT NULL,
    PRIMARY KEY (job_id, parent_id)
);

-- Per tenant: max_active leased/running jobs; max_per_hour claims, refilled continuously, up to `burst`
-- at once (a token bucket whose level lives in bucket_levels under 'quota:<tenant>').
CREATE TABLE quotas (
    tenant          VARCHAR PRIMARY KEY,
    record_version  INTEGER NOT NULL,
    revision        INTEGER NOT NULL,
    max_active      INTEGER,
    max_per_hour    INTEGER,
    burst           INTEGER,
    reason          VARCHAR NOT NULL,
    ticket          VARCHAR,
    updated_at      TIMESTAMP NOT NULL,
    updated_by      VARCHAR NOT NULL
);

-- Token buckets. scope: 'tenant:T/type:JT' for a tenant and job type, or the declared key itself; the
-- level lives in bucket_levels under 'rate:<scope>'.
CREATE TABLE rate_limits (
    scope            VARCHAR PRIMARY KEY,
    record_version   INTEGER NOT NULL,
    revision         INTEGER NOT NULL,
    tenant           VARCHAR,
    job_type         VARCHAR,
    limit_key        VARCHAR,
    rate_per_second  DOUBLE NOT NULL,
    burst            INTEGER NOT NULL,
    reason           VARCHAR,
    ticket           VARCHAR,
    updated_at       TIMESTAMP NOT NULL,
    updated_by       VARCHAR NOT NULL
);

-- Most jobs leased or running at once that carry `limit_key` ('tenant:T', 'type:JT' or a declared key).
CREATE TABLE concurrency_limits (
    limit_key       VARCHAR PRIMARY KEY,
    record_version  INTEGER NOT NULL,
    revision        INTEGER NOT NULL,
    max_active      INTEGER NOT NULL,
    reason          VARCHAR,
    ticket          VARCHAR,
    updated_at      TIMESTAMP NOT NULL,
    updated_by      VARCHAR NOT NULL
);

-- How full each token bucket is: `tokens` as of `refilled_at` (refilled by elapsed time when read).
CREATE TABLE bucket_levels (
    bucket       VARCHAR PRIMARY KEY,   -- 'rate:<scope>' or 'quota:<tenant>'
    tokens       DOUBLE NOT NULL,
    refilled_at  TIMESTAMP NOT NULL
);

-- Paused queues and keys: their jobs stay queued and are not claimed.
CREATE TABLE pauses (
    kind            VARCHAR NOT NULL,   -- 'queue', or 'key': jobs that declare it (e.g. 'source:nvd')
    name            VARCHAR NOT NULL,
    record_version  INTEGER NOT NULL,
    reason          VARCHAR NOT NULL,
    ticket          VARCHAR,
    paused_at       TIMESTAMP NOT NULL,
    paused_by       VARCHAR NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Circuit breakers per key: closed -> open after `failure_threshold` consecutive failures; open ->
-- half_open after `cooldown_seconds`, when one probe job may run; half_open -> closed when it succeeds,
-- back to open when it fails.
CREATE TABLE circuit_breakers (
    limit_key             VARCHAR PRIMARY KEY,
    record_version        INTEGER NOT NULL,
    revision              INTEGER NOT NULL,
    failure_threshold     INTEGER NOT NULL,
    cooldown_seconds      DOUBLE NOT NULL,
    reason                VARCHAR,
    ticket                VARCHAR,
    state                 VARCHAR NOT NULL,
    consecutive_failures  INTEGER NOT NULL,
    opened_at             TIMESTAMP,
    probe_job_id          VARCHAR,
    updated_at            TIMESTAMP NOT NULL,
    updated_by            VARCHAR NOT NULL
);
