-- Backfills: one job per time window over [window_from, window_to). Plain, versioned rows (record_version)
-- so a later bundle can carry them across the air gap. Progress and the watermark are derived from the
-- jobs each window points at; the counts here are what creation found.
CREATE TABLE backfills (
    backfill_id         VARCHAR PRIMARY KEY,    -- UUIDv7
    record_version      INTEGER NOT NULL,       -- shape of this row (orchestrator/backfills.py RECORD_VERSION)
    site_id             VARCHAR NOT NULL,
    tenant              VARCHAR NOT NULL,
    project             VARCHAR NOT NULL,
    job_type            VARCHAR NOT NULL,
    queue               VARCHAR NOT NULL,
    priority            INTEGER NOT NULL,
    payload             VARCHAR NOT NULL,       -- canonical JSON each window's payload starts from
    window_from         TIMESTAMP NOT NULL,
    window_to           TIMESTAMP NOT NULL,
    step                VARCHAR NOT NULL,       -- as given, e.g. '1h'
    step_seconds        BIGINT NOT NULL,
    reason              VARCHAR NOT NULL,
    ticket              VARCHAR NOT NULL,
    state               VARCHAR NOT NULL,       -- active | canceled
    windows_total       INTEGER NOT NULL,
    windows_created     INTEGER NOT NULL,       -- a new job each
    windows_suppressed  INTEGER NOT NULL,       -- already covered by an existing job
    created_at          TIMESTAMP NOT NULL,
    created_by          VARCHAR NOT NULL,
    canceled_at         TIMESTAMP,
    canceled_by         VARCHAR,
    cancel_reason       VARCHAR
);

-- One row per window: the job that covers it, new (created) or found (suppressed).
CREATE TABLE backfill_windows (
    backfill_id     VARCHAR NOT NULL,
    record_version  INTEGER NOT NULL,
    window_index    INTEGER NOT NULL,
    window_start    TIMESTAMP NOT NULL,
    window_end      TIMESTAMP NOT NULL,
    job_id          VARCHAR NOT NULL,
    created         BOOLEAN NOT NULL,
    PRIMARY KEY (backfill_id, window_index)
);
