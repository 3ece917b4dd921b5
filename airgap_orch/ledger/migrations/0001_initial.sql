-- Ledger schema v1: identity, jobs (hot and finished), idempotency keys, hash-chained history.

CREATE TABLE ledger_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

-- Active jobs (queued, leased, running) plus recently finished ones awaiting archive.
-- Finished jobs move to jobs_finished in bulk, so the claim scan stays small.
CREATE TABLE jobs (
    job_id            VARCHAR NOT NULL,
    site_id           VARCHAR NOT NULL,
    tenant            VARCHAR NOT NULL,
    project           VARCHAR NOT NULL,
    job_type          VARCHAR NOT NULL,
    queue             VARCHAR NOT NULL,
    priority          INTEGER NOT NULL,
    payload           VARCHAR NOT NULL,
    payload_digest    VARCHAR NOT NULL,
    idempotency_key   VARCHAR,
    state             VARCHAR NOT NULL,
    run_at            TIMESTAMP NOT NULL,
    attempts          INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    timeout_seconds   INTEGER,
    correlation_id    VARCHAR,
    lease_id          VARCHAR,
    worker_id         VARCHAR,
    lease_seconds     DOUBLE,
    leased_at         TIMESTAMP,
    lease_expires_at  TIMESTAMP,
    started_at        TIMESTAMP,
    progress          DOUBLE,
    progress_message  VARCHAR,
    artifacts         VARCHAR,
    last_error        VARCHAR,
    cancel_requested  BOOLEAN NOT NULL,
    replay_of         VARCHAR,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP
);

CREATE TABLE jobs_finished AS SELECT * FROM jobs WITH NO DATA;

CREATE VIEW all_jobs AS
    SELECT * FROM jobs
    UNION ALL
    SELECT * FROM jobs_finished;

-- Insert-only: the key outlives the job's move to jobs_finished.
CREATE TABLE idempotency_keys (
    site_id          VARCHAR NOT NULL,
    tenant           VARCHAR NOT NULL,
    idempotency_key  VARCHAR NOT NULL,
    job_id           VARCHAR NOT NULL,
    PRIMARY KEY (site_id, tenant, idempotency_key)
);

-- Append-only. `entry` is the canonical JSON of one transition, exactly the text that was hashed:
-- entry_hash = sha256(prev entry_hash || entry); see orchestrator/history.py.
CREATE TABLE history (
    seq         BIGINT NOT NULL,
    job_id      VARCHAR NOT NULL,
    entry       VARCHAR NOT NULL,
    entry_hash  VARCHAR NOT NULL
);
