-- Job logs (issue 17): the lines handlers write with ctx.log, stored in the transaction of the heartbeat, ack or fail
-- that carried them (orchestrator/joblogs.py). Not history: not hash-chained, not exported in bundles, pruned to a
-- per-job buffer (the oldest dropped, a marker line saying how many) and to a retention window.
CREATE TABLE job_logs (
    job_id          VARCHAR NOT NULL,
    seq             BIGINT NOT NULL,       -- per job, from 1, in the order lines were stored
    attempt         INTEGER NOT NULL,
    lease_id        VARCHAR NOT NULL,
    tenant          VARCHAR NOT NULL,
    project         VARCHAR NOT NULL,
    correlation_id  VARCHAR,
    level           VARCHAR NOT NULL,      -- debug, info, warning, error
    message         VARCHAR NOT NULL,
    logged_at       TIMESTAMP NOT NULL,    -- when the handler wrote it (the worker's clock), else stored_at
    stored_at       TIMESTAMP NOT NULL,    -- when the ledger stored it: the retention window counts from here
    dropped         BIGINT                 -- a marker line: how many earlier lines the buffer dropped (else NULL)
);
-- A job's lines are read by job id (DuckDB looks a single equality up in this index; a scan would read every line).
CREATE INDEX job_logs_job ON job_logs (job_id);
