-- The request log keeps a replay recipe instead of the whole answer (operations/request_log.py): a claim's
-- (job id, lease id, attempt) triples, not its payloads; a report's job and lease ids. `size` (bytes of key,
-- fingerprint and recipe) lets the writer bound the table by bytes as well as by rows and age.
-- Rows logged before this migration keep their answer ({"answer": ...}), except claims, which become recipes;
-- only the newest 250,000 (the default row bound) are kept.
CREATE TABLE request_log_slim (
    request_key  VARCHAR PRIMARY KEY,   -- subject || ' ' || operation || ' ' || Idempotency-Key
    operation    VARCHAR NOT NULL,
    fingerprint  VARCHAR,               -- sha256 of what was asked; NULL: logged before fingerprints were kept
    recipe       BLOB NOT NULL,         -- JSON, zlib-compressed when `packed`
    packed       BOOLEAN NOT NULL,
    size         INTEGER NOT NULL,
    created_at   TIMESTAMP NOT NULL
);

INSERT INTO request_log_slim
SELECT request_key, operation, fingerprint, encode(recipe), false,
       octet_length(encode(request_key)) + coalesce(length(fingerprint), 0) + octet_length(encode(recipe)), created_at
FROM (
    SELECT request_key, operation, created_at,
           CASE WHEN json_exists(response, '$.fingerprint') THEN response ->> '$.fingerprint' END AS fingerprint,
           CASE WHEN json_exists(response, '$.fingerprint') THEN response -> '$.answer' ELSE response::JSON END
               AS answer
    FROM request_log
    ORDER BY created_at DESC
    LIMIT 250000
) old,
LATERAL (SELECT CASE
    WHEN operation = 'jobs.claim' THEN json_object(
        'leases', to_json(list_transform(json_extract(answer, '$.leases[*]'),
                                         lambda lease: json_array(lease ->> 'job_id', lease ->> 'lease_id',
                                                                  (lease ->> 'attempt')::INTEGER))),
        'expires', answer ->> '$.leases[0].lease_expires_at',
        'heartbeat_every', (answer ->> '$.leases[0].retry_hint.heartbeat_every_seconds')::DOUBLE)::VARCHAR
    ELSE json_object('answer', answer)::VARCHAR END AS recipe);

DROP TABLE request_log;
ALTER TABLE request_log_slim RENAME TO request_log;
