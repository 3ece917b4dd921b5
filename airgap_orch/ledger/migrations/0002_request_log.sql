-- Answers to mutating HTTP requests that carried an Idempotency-Key, written in the same transaction
-- as the operation: a retried request gets the original answer, also after a server restart.
CREATE TABLE request_log (
    request_key  VARCHAR PRIMARY KEY,   -- subject || ' ' || Idempotency-Key
    operation    VARCHAR NOT NULL,
    status       INTEGER NOT NULL,
    response     VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL
);
