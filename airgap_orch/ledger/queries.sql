-- Every query the ledger runs, by name. Parameters are named ($name). Relations called
-- `incoming`, `updates`, `entries` and `rows` are Arrow tables the statement reads (Transaction.execute_with).
-- A `-- fragment:` is a piece of SQL that several queries share; they include it as {{fragment_name}}.
-- A query that changes a job's state names the transitions (orchestrator/states.py) it makes in a
-- `-- transitions:` line; tests/test_state_literals.py checks every state it writes or reads against them.

-- name: meta_get
SELECT value FROM ledger_meta WHERE key = $key;

-- name: meta_put
INSERT OR REPLACE INTO ledger_meta VALUES ($key, $value);

-- name: chain_head
-- The head recorded at commit time of chain $chain ('history' or 'audit'; migration 0008).
SELECT seq, entry_hash FROM chain_heads WHERE chain = $chain;

-- name: memory_limit_set
-- DuckDB's buffer-pool limit: one setting for the whole database, every connection (Transaction.cap_memory).
SET memory_limit = $limit;

-- name: memory_limit_reset
-- Back to DuckDB's default (80% of RAM), the limit the ledger runs at.
RESET memory_limit;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- name: chain_head_record
UPDATE chain_heads SET seq = $seq, entry_hash = $entry_hash WHERE chain = $chain;

-- name: history_count_for_tenants
-- History entries of the jobs of the listed tenants (through the jobs' tenant column: no JSON to parse).
SELECT count(*) FROM history h JOIN all_jobs j ON j.job_id = h.job_id WHERE list_contains($tenants, j.tenant);

-- name: history_append
INSERT INTO history SELECT * FROM entries;

-- name: history_for_job
SELECT seq, entry, entry_hash FROM history WHERE job_id = $job_id ORDER BY seq;

-- name: lease_issued
-- Whether a claim of this job ever handed out this lease (its job.leased entry names it); only on the refusal path.
SELECT 1 FROM history WHERE job_id = $job_id AND json_extract_string(entry, '$.lease_id') = $lease_id LIMIT 1;

-- name: history_page
-- One page of events (operations/ledger.py event_log): entries after $after_seq, the caller's tenants' only.
SELECT seq, entry, entry_hash FROM history
WHERE seq > $after_seq AND ($tenants IS NULL OR list_contains($tenants, entry ->> 'tenant'))
ORDER BY seq LIMIT $limit;

-- name: history_chunk
-- `ledger verify` reads the chain in chunks, each in a snapshot of its own: every row with $after_seq < seq <=
-- $upto_seq ($after_seq NULL: from the very start, rows with a seq of 0 or less included), duplicates included.
SELECT seq, job_id, entry, entry_hash FROM history
WHERE ($after_seq IS NULL OR seq > $after_seq) AND seq <= $upto_seq
ORDER BY seq;

-- name: history_past
-- The last seq of entries past a recorded head (NULL: none), read in one snapshot with that head.
SELECT max(seq) FROM history WHERE seq > $seq;

-- name: jobs_insert
-- transitions: python (states.next_state decides create / create_waiting / receive)
INSERT INTO jobs SELECT * FROM incoming;

-- name: idempotency_reserve
INSERT INTO idempotency_keys (site_id, tenant, idempotency_key, job_id, spec_digest)
SELECT site_id, tenant, idempotency_key, job_id, spec_digest FROM incoming
ON CONFLICT DO NOTHING
RETURNING tenant, idempotency_key;

-- name: idempotency_lookup
-- spec_digest is NULL for keys reserved before migration 0007 (any spec matches them).
SELECT k.idempotency_key, k.job_id, k.spec_digest FROM idempotency_keys k
WHERE k.site_id = $site_id AND k.tenant = $tenant AND list_contains($keys, k.idempotency_key);

-- fragment: ready
-- Jobs a claim may take: queued, due, owned by this site, and matching the claim's filters.
(state = 'queued' AND run_at <= $now AND site_id = $site_id
 AND ($queue IS NULL OR queue = $queue)
 AND ($job_type IS NULL OR job_type = $job_type)
 AND ($tenants IS NULL OR list_contains($tenants, tenant)))

-- fragment: in_blocked_group
-- Jobs in a group that flow control blocks as a whole (orchestrator/flow.py, Walk.blocked()).
(list_contains($blocked_queues, queue) OR list_contains($blocked_tenants, tenant)
 OR list_contains($blocked_types, job_type) OR list_contains($blocked_scopes, tenant || '/' || job_type)
 OR list_has_any(coalesce(limit_keys, []::VARCHAR[]), $blocked_keys))

-- fragment: claim_order
priority DESC, fair_seq, run_at

-- fragment: lease_to_worker
state = 'leased', lease_id = uuid()::VARCHAR, worker_id = $worker_id, attempts = attempts + 1,
lease_seconds = $lease_seconds, leased_at = $now, lease_expires_at = $lease_expires_at,
started_at = NULL, progress = NULL, progress_message = NULL, updated_at = $now

-- fragment: lease_returning
job_id, lease_id, lease_expires_at, attempts, max_attempts, tenant, project, job_type, queue, priority, payload,
payload_digest, correlation_id, timeout_seconds, limit_keys, fair_seq

-- name: claim
-- transitions: claim
-- Lease the first $limit ready jobs (flow control blocks no group as a whole: orchestrator/flow.py).
UPDATE jobs SET {{lease_to_worker}}
WHERE rowid IN (SELECT rowid FROM jobs WHERE {{ready}} ORDER BY {{claim_order}} LIMIT $limit)
RETURNING {{lease_returning}};

-- name: claim_outside_blocked
-- transitions: claim
-- Lease the first $limit ready jobs outside the groups flow control blocks as a whole (orchestrator/flow.py).
UPDATE jobs SET {{lease_to_worker}}
WHERE rowid IN (SELECT rowid FROM jobs WHERE {{ready}} AND NOT {{in_blocked_group}}
                ORDER BY {{claim_order}} LIMIT $limit)
RETURNING {{lease_returning}};

-- fragment: acks_given
-- One ack per position of the lists $lease_ids, $job_ids, $artifacts. (Lists unnested in the query cost ~1 ms
-- less than registering an Arrow table of 100 rows.)
(SELECT unnest($lease_ids) AS lease_id, unnest($job_ids) AS job_id, unnest($artifacts) AS given_artifacts)

-- fragment: ack_holds
-- The jobs row is held by the ack's lease: a lease id names one claim of one job, so a row is completed only by
-- the ack that presents its current lease together with its job id, before the lease expires or the job times out.
(jobs.lease_id = acks.lease_id AND jobs.job_id = acks.job_id
 AND list_contains($from_states, jobs.state) AND jobs.lease_expires_at > $now
 AND (jobs.timeout_seconds IS NULL OR jobs.leased_at + to_seconds(jobs.timeout_seconds) > $now)
 AND ($ack_tenants IS NULL OR list_contains($ack_tenants, jobs.tenant)))

-- fragment: acked_state
CASE WHEN cancel_requested THEN 'canceled' ELSE 'succeeded' END

-- fragment: acked_progress
CASE WHEN cancel_requested THEN progress ELSE 1.0 END

-- fragment: ack_returning
jobs.job_id, state, attempts, jobs.lease_id, worker_id, tenant, project, job_type, correlation_id, payload_digest, queue,
started_at

-- name: ack
-- transitions: ack, cancel
UPDATE jobs SET
    state = {{acked_state}}, artifacts = acks.given_artifacts, progress = {{acked_progress}},
    finished_at = $now, updated_at = $now
FROM {{acks_given}} AS acks
WHERE {{ack_holds}}
RETURNING {{ack_returning}};

-- name: ack_and_claim
-- transitions: ack, cancel, claim
-- ack, then claim (the unfiltered form), in one statement: the rows acked come back succeeded or canceled,
-- the rows leased come back leased, with the values lease_to_worker gives (keep the two alike). Only while no
-- flow-control limit is set and no job waits on another (orchestrator/claims.py, ack_and_claim), so the ack
-- cannot change what the claim may take.
UPDATE jobs SET
    state = CASE WHEN picked.acked THEN {{acked_state}} ELSE 'leased' END,
    artifacts = CASE WHEN picked.acked THEN picked.given_artifacts ELSE artifacts END,
    progress = CASE WHEN picked.acked THEN {{acked_progress}} END,
    finished_at = CASE WHEN picked.acked THEN $now ELSE finished_at END,
    lease_id = CASE WHEN picked.acked THEN lease_id ELSE uuid()::VARCHAR END,
    worker_id = CASE WHEN picked.acked THEN worker_id ELSE $worker_id END,
    attempts = CASE WHEN picked.acked THEN attempts ELSE attempts + 1 END,
    lease_seconds = CASE WHEN picked.acked THEN lease_seconds ELSE $lease_seconds END,
    leased_at = CASE WHEN picked.acked THEN leased_at ELSE $now END,
    lease_expires_at = CASE WHEN picked.acked THEN lease_expires_at ELSE $lease_expires_at END,
    started_at = CASE WHEN picked.acked THEN started_at END,
    progress_message = CASE WHEN picked.acked THEN progress_message END,
    updated_at = $now
FROM (SELECT jobs.rowid, true, acks.given_artifacts FROM jobs, {{acks_given}} AS acks WHERE {{ack_holds}}
      UNION ALL
      SELECT row_id, false, NULL
      FROM (SELECT rowid FROM jobs WHERE {{ready}} ORDER BY {{claim_order}} LIMIT $limit) AS ready(row_id))
     AS picked(row_id, acked, given_artifacts)
WHERE jobs.rowid = picked.row_id
RETURNING {{lease_returning}}, state, worker_id, started_at;

-- name: jobs_by_ids
SELECT * FROM jobs WHERE list_contains($job_ids, job_id);

-- name: job_any
SELECT * FROM all_jobs WHERE job_id = $job_id;

-- name: jobs_any_by_ids
SELECT * FROM all_jobs WHERE list_contains($job_ids, job_id);

-- name: jobs_update
-- transitions: python (states.next_state decides every row's new state: retry, cancel, hand_off, ...)
-- Write back rows whose new values were decided in Python (orchestrator/rows.py write_back).
UPDATE jobs SET
    state = updates.state, run_at = updates.run_at, attempts = updates.attempts, lease_id = updates.lease_id,
    worker_id = updates.worker_id, lease_expires_at = updates.lease_expires_at,
    started_at = updates.started_at, progress = updates.progress,
    progress_message = updates.progress_message, last_error = updates.last_error,
    cancel_requested = updates.cancel_requested, finished_at = updates.finished_at,
    updated_at = updates.updated_at
FROM updates
WHERE jobs.job_id = updates.job_id;

-- name: expired_leases
SELECT * FROM jobs
WHERE list_contains($from_states, state)
  AND (lease_expires_at <= $now
       OR (timeout_seconds IS NOT NULL AND leased_at + to_seconds(timeout_seconds) <= $now))
ORDER BY lease_expires_at
LIMIT $limit;

-- name: archive_copy
INSERT INTO jobs_finished SELECT * FROM jobs WHERE list_contains($final_states, state);

-- name: archive_delete
DELETE FROM jobs WHERE list_contains($final_states, state);

-- fragment: jobs_listed
-- The jobs a listing shows, in (created_at, job_id) order from after the key ($after_created_at, $after_job_id)
-- of the previous page's last job (NULL: from the first). A job keeps its key for life (archiving moves it from
-- jobs to jobs_finished unchanged), so paging by it neither repeats nor skips a job.
FROM all_jobs
WHERE ($state IS NULL OR state = $state)
  AND ($tenant IS NULL OR tenant = $tenant)
  AND ($job_type IS NULL OR job_type = $job_type)
  AND ($project IS NULL OR project = $project)
  AND ($queue IS NULL OR queue = $queue)
  AND ($tenants IS NULL OR list_contains($tenants, tenant))
  -- The range test alone first: DuckDB skips the row groups before it (min/max per group); an OR would not.
  AND created_at >= coalesce($after_created_at, '-infinity'::TIMESTAMP)
  AND ($after_created_at IS NULL OR created_at > $after_created_at OR job_id > $after_job_id)
ORDER BY created_at, job_id
LIMIT $limit

-- name: jobs_list
SELECT * {{jobs_listed}};

-- name: jobs_list_sizes
-- The payload size of each job jobs_list would list, to end a page at its byte budget before reading payloads.
SELECT strlen(payload) AS payload_bytes {{jobs_listed}};

-- name: state_counts
SELECT state, count(*) AS jobs FROM all_jobs
WHERE ($tenants IS NULL OR list_contains($tenants, tenant))
GROUP BY state ORDER BY state;

-- name: count_history
SELECT count(*) FROM history;

-- name: verify_states
-- Jobs whose state or attempt differs from what their last history entry says, or that lack history.
WITH last AS (
    SELECT job_id, arg_max(entry ->> 'to_state', seq) AS to_state,
           arg_max((entry ->> 'attempt')::INTEGER, seq) AS attempt,
           arg_max(entry ->> 'payload_digest', seq) AS payload_digest, arg_max(entry ->> 'tenant', seq) AS tenant
    FROM history GROUP BY job_id
)
SELECT coalesce(j.job_id, last.job_id) AS job_id, coalesce(j.tenant, last.tenant) AS tenant, j.state,
       last.to_state, j.attempts, last.attempt, j.payload_digest AS job_digest, last.payload_digest AS history_digest
FROM all_jobs j FULL OUTER JOIN last ON j.job_id = last.job_id
WHERE j.job_id IS NULL OR last.job_id IS NULL OR j.state <> last.to_state OR j.attempts <> last.attempt
   OR j.payload_digest <> last.payload_digest
ORDER BY 1
LIMIT 20;

-- name: verify_payload_digests
SELECT job_id, tenant FROM all_jobs WHERE 'sha256:' || sha256(payload) <> payload_digest ORDER BY job_id LIMIT 20;

-- name: verify_handoff_links
-- Local `job.received` entries (a handed-over job's first entry here) whose reason does not name an entry the
-- mirror of its source site holds with that hash (`handed_off_from:<site>#<seq>:<entry_hash>`): the hand-off no
-- longer continues the source's chain. The first few, oldest first.
SELECT h.seq, h.job_id, h.entry ->> 'tenant' AS tenant, h.entry ->> 'reason' AS reason
FROM (SELECT seq, job_id, entry,
             regexp_extract(entry ->> 'reason', '^handed_off_from:(.+)#([0-9]+):([0-9a-f]{64})$',
                            ['site', 'seq', 'hash']) AS link
      FROM history
      WHERE contains(entry, '"event_type":"job.received"') AND entry ->> 'event_type' = 'job.received') h
LEFT JOIN mirror_history m ON m.source_site = h.link.site AND m.seq = TRY_CAST(h.link.seq AS BIGINT)
WHERE m.entry_hash IS NULL OR m.entry_hash <> h.link.hash
ORDER BY h.seq LIMIT 20;

-- name: verify_audited_transitions
-- Audited job actions that history lacks the transition of: a job.cancel needs a job.canceled or
-- job.cancel_requested entry of its job, a job.replay a job.replayed entry of each job it lists (details.replays
-- names the first 100). tenant: the job's, else the one the audit entry names.
WITH audited AS (
    SELECT seq, action, entry ->> '$.target' AS job_id, entry ->> '$.details.tenant' AS tenant,
           ['job.canceled', 'job.cancel_requested'] AS transitions
    FROM audit_log WHERE action = 'job.cancel'
    UNION ALL
    SELECT seq, action, unnest(json_extract_string(entry, '$.details.replays[*].replay_of')) AS job_id,
           entry ->> '$.details.tenant' AS tenant, ['job.replayed'] AS transitions
    FROM audit_log WHERE action = 'job.replay'
), recorded AS (
    SELECT job_id, list(DISTINCT entry ->> 'event_type') AS event_types FROM history
    WHERE job_id IN (SELECT job_id FROM audited)
    GROUP BY job_id
)
SELECT a.seq, a.action, a.job_id, coalesce(j.tenant, a.tenant) AS tenant
FROM audited a
LEFT JOIN recorded r ON r.job_id = a.job_id
LEFT JOIN all_jobs j ON j.job_id = a.job_id
WHERE r.event_types IS NULL OR NOT list_has_any(r.event_types, a.transitions)
ORDER BY a.seq, a.job_id
LIMIT 20;

-- Request log (operations/request_log.py; migration 0009) ---------------------------------------------------

-- name: request_log_lookup
SELECT request_key, operation, fingerprint, recipe, packed FROM request_log WHERE list_contains($keys, request_key);

-- name: request_log_prune_older
DELETE FROM request_log WHERE created_at < $before;

-- name: request_log_nth_newest
-- The newest row past the newest $rows (newest first: created_at, then request_key), if there is one.
SELECT created_at, request_key FROM request_log ORDER BY created_at DESC, request_key DESC LIMIT 1 OFFSET $rows;

-- name: request_log_bytes
SELECT sum(size) FROM request_log;

-- name: request_log_bytes_cutoff
-- The newest row whose bytes, added to those of every newer row, exceed $max_bytes.
SELECT created_at, request_key FROM (
    SELECT created_at, request_key,
           sum(size) OVER (ORDER BY created_at DESC, request_key DESC ROWS UNBOUNDED PRECEDING) AS newer_bytes
    FROM request_log)
WHERE newer_bytes > $max_bytes
ORDER BY created_at DESC, request_key DESC LIMIT 1;

-- name: request_log_prune_through
-- Delete the row ($created_at, $request_key) and every row older in newest-first order.
DELETE FROM request_log
WHERE created_at < $created_at OR (created_at = $created_at AND request_key <= $request_key);

-- name: history_by_leases
-- The entries of the listed jobs that name one of the listed leases, oldest first (a replayed report answers from
-- the last entry naming its lease: the one that ended it).
SELECT job_id, entry FROM history
WHERE list_contains($job_ids, job_id) AND list_contains($lease_ids, entry ->> 'lease_id')
ORDER BY seq;

-- name: audit_append
INSERT INTO audit_log VALUES ($seq, $action, $entry, $entry_hash);

-- name: audit_page
-- $action, $by: only entries of that action / by that actor (NULL: any).
SELECT seq, action, entry, entry_hash FROM audit_log
WHERE seq > $after_seq AND ($since IS NULL OR (entry ->> 'at') >= $since)
  AND ($action IS NULL OR action = $action) AND ($by IS NULL OR (entry ->> 'actor') = $by)
ORDER BY seq LIMIT $limit;

-- name: audit_scan
SELECT seq, action, entry, entry_hash FROM audit_log ORDER BY seq;

-- name: audit_chunk
-- history_chunk for the audit log.
SELECT seq, action, entry, entry_hash FROM audit_log
WHERE ($after_seq IS NULL OR seq > $after_seq) AND seq <= $upto_seq
ORDER BY seq;

-- name: audit_past
-- history_past for the audit log.
SELECT max(seq) FROM audit_log WHERE seq > $seq;

-- name: audit_count
SELECT count(*) FROM audit_log;

-- name: replays_of
-- Replays already made of some jobs: (original, replay), oldest first.
SELECT replay_of, job_id FROM all_jobs WHERE list_contains($job_ids, replay_of) ORDER BY created_at, job_id;

-- name: deadletters_matching
-- Dead letters of one tenant and type that died at or after $since and have no replay yet.
SELECT j.job_id FROM all_jobs j
WHERE j.state = 'dead_letter' AND j.tenant = $tenant AND j.job_type = $job_type AND j.finished_at >= $since
  AND ($tenants IS NULL OR list_contains($tenants, j.tenant))
  AND NOT EXISTS (SELECT 1 FROM all_jobs r WHERE r.replay_of = j.job_id)
ORDER BY j.finished_at, j.job_id
LIMIT $limit;

-- name: backfill_window_jobs
-- Jobs of one tenant and type whose payload names a window (candidates to cover a backfill's windows).
SELECT job_id, payload ->> '$.window.start' AS window_start, payload ->> '$.window.end' AS window_end
FROM all_jobs
WHERE tenant = $tenant AND job_type = $job_type AND json_exists(payload, '$.window')
ORDER BY job_id;

-- name: backfill_insert
INSERT INTO backfills SELECT * FROM incoming;

-- name: backfill_windows_insert
INSERT INTO backfill_windows SELECT * FROM incoming;

-- name: backfill_get
SELECT * FROM backfills WHERE backfill_id = $backfill_id;

-- name: backfill_list
SELECT * FROM backfills
WHERE ($tenant IS NULL OR tenant = $tenant)
  AND ($job_type IS NULL OR job_type = $job_type)
  AND ($state IS NULL OR state = $state)
  AND ($tenants IS NULL OR list_contains($tenants, tenant))
ORDER BY created_at DESC, backfill_id DESC
LIMIT $limit;

-- name: backfill_progress
-- State counts of the jobs the listed backfills created (suppressed windows are not theirs).
SELECT w.backfill_id, j.state, count(*) AS jobs
FROM backfill_windows w JOIN all_jobs j ON j.job_id = w.job_id
WHERE list_contains($backfill_ids, w.backfill_id) AND w.created
GROUP BY w.backfill_id, j.state
ORDER BY w.backfill_id, j.state;

-- name: backfill_watermark
-- The end of the latest window such that it and every window before it succeeded (directly, or through
-- a replay of its job).
WITH windows AS (
    SELECT w.window_start, w.window_end,
           coalesce(j.state = 'succeeded', false)
           OR EXISTS (SELECT 1 FROM all_jobs r WHERE r.replay_of = w.job_id AND r.state = 'succeeded') AS done
    FROM backfill_windows w LEFT JOIN all_jobs j ON j.job_id = w.job_id
    WHERE w.backfill_id = $backfill_id
)
SELECT max(window_end) AS watermark FROM windows
WHERE window_start < coalesce((SELECT min(window_start) FROM windows WHERE NOT done), 'infinity'::TIMESTAMP);

-- name: backfill_active_jobs
-- The still-active jobs a backfill created (to cancel them).
SELECT j.* FROM jobs j JOIN backfill_windows w ON w.job_id = j.job_id
WHERE w.backfill_id = $backfill_id AND w.created AND list_contains($states, j.state)
ORDER BY j.job_id;

-- name: backfill_cancel
UPDATE backfills SET state = 'canceled', canceled_at = $now, canceled_by = $actor, cancel_reason = $reason
WHERE backfill_id = $backfill_id AND state = 'active';

-- name: audit_page_for_tenants
-- audit_page for a caller limited to some tenants: only entries that name one of them in details.tenant.
SELECT seq, action, entry, entry_hash FROM audit_log
WHERE seq > $after_seq AND ($since IS NULL OR (entry ->> 'at') >= $since)
  AND ($action IS NULL OR action = $action) AND ($by IS NULL OR (entry ->> 'actor') = $by)
  AND list_contains($tenants, entry ->> '$.details.tenant')
ORDER BY seq LIMIT $limit;

-- Flow control (orchestrator/flow.py) -------------------------------------------------------------

-- name: claim_candidates
-- Ready jobs in claim order, minus those a limit already blocks as a whole; flow.py admits them one by one.
SELECT rowid AS row_id, job_id, tenant, project, job_type, queue, limit_keys, attempts, payload_digest,
       correlation_id
FROM jobs
WHERE {{ready}} AND NOT {{in_blocked_group}} AND NOT list_contains($chosen, rowid)
ORDER BY {{claim_order}}
LIMIT $limit;

-- name: blocked_candidates
-- Ready jobs in claim order inside the groups a limit blocks as a whole (to report the next one of each).
SELECT rowid AS row_id, job_id, tenant, project, job_type, queue, limit_keys, attempts, payload_digest,
       correlation_id
FROM jobs
WHERE {{ready}} AND {{in_blocked_group}}
ORDER BY {{claim_order}}
LIMIT $limit;

-- name: throttled_page
-- Ready jobs inside the groups flow control blocks as a whole (Walk.blocked(): every limit that holds a job back
-- blocks its group), in (created_at, job_id) order after the previous page's last job (jobs_listed's key);
-- jobs.throttled asks flow.py what holds each back.
SELECT job_id, tenant, project, job_type, queue, priority, limit_keys, attempts, created_at, run_at, state
FROM jobs
WHERE {{ready}} AND {{in_blocked_group}}
  AND created_at >= coalesce($after_created_at, '-infinity'::TIMESTAMP)
  AND ($after_created_at IS NULL OR created_at > $after_created_at OR job_id > $after_job_id)
ORDER BY created_at, job_id
LIMIT $limit;

-- name: leases_assign
-- A claim shared by several workers (jobs.claim_shared) leases to the first; this hands the others their jobs.
UPDATE jobs SET worker_id = $worker_ids[list_position($lease_ids, lease_id)]
WHERE list_contains($lease_ids, lease_id);

-- name: claim_rows
-- transitions: claim
-- claim for the rows flow.py admitted.
UPDATE jobs SET {{lease_to_worker}}
WHERE list_contains($row_ids, rowid) AND state = 'queued'
RETURNING {{lease_returning}};

-- name: active_by_keys
-- Leased and running jobs by tenant, type and declared keys (concurrency limits, quotas' max_active).
SELECT tenant, job_type, limit_keys, count(*) AS jobs FROM jobs
WHERE state IN ('leased', 'running')
GROUP BY ALL;

-- name: flow_quotas
SELECT * FROM quotas ORDER BY tenant;

-- name: flow_rate_limits
SELECT * FROM rate_limits ORDER BY scope;

-- name: flow_concurrency_limits
SELECT * FROM concurrency_limits ORDER BY limit_key;

-- name: flow_pauses
SELECT * FROM pauses ORDER BY kind, name;

-- name: flow_breakers
SELECT * FROM circuit_breakers ORDER BY limit_key;

-- name: flow_bucket_levels
SELECT bucket, tokens, refilled_at FROM bucket_levels;

-- name: bucket_levels_update
-- Levels of existing buckets after a claim ($tokens[i] for $buckets[i]): list parameters, no Arrow join,
-- cost ~3 ms against ~13 ms for INSERT OR REPLACE.
UPDATE bucket_levels SET tokens = $tokens[list_position($buckets, bucket)], refilled_at = $refilled_at
WHERE list_contains($buckets, bucket);

-- name: bucket_levels_insert
INSERT INTO bucket_levels SELECT unnest($buckets), unnest($tokens), $refilled_at;

-- name: bucket_level_delete
DELETE FROM bucket_levels WHERE bucket = $bucket;

-- name: quota_put
INSERT OR REPLACE INTO quotas (tenant, record_version, revision, max_active, max_per_hour, burst, reason, ticket,
                               updated_at, updated_by, issuer_site, issuer_version)
VALUES ($tenant, $record_version, $revision, $max_active, $max_per_hour, $burst, $reason, $ticket, $updated_at,
        $updated_by, $issuer_site, $issuer_version);

-- name: quota_delete
DELETE FROM quotas WHERE tenant = $tenant;

-- name: rate_limit_put
INSERT OR REPLACE INTO rate_limits (scope, record_version, revision, tenant, job_type, limit_key, rate_per_second,
                                    burst, reason, ticket, updated_at, updated_by, issuer_site, issuer_version)
VALUES ($scope, $record_version, $revision, $tenant, $job_type, $limit_key, $rate_per_second, $burst, $reason,
        $ticket, $updated_at, $updated_by, $issuer_site, $issuer_version);

-- name: rate_limit_delete
DELETE FROM rate_limits WHERE scope = $scope;

-- name: concurrency_limit_put
INSERT OR REPLACE INTO concurrency_limits (limit_key, record_version, revision, max_active, reason, ticket,
                                           updated_at, updated_by, issuer_site, issuer_version)
VALUES ($limit_key, $record_version, $revision, $max_active, $reason, $ticket, $updated_at, $updated_by,
        $issuer_site, $issuer_version);

-- name: concurrency_limit_delete
DELETE FROM concurrency_limits WHERE limit_key = $limit_key;

-- name: pause_put
INSERT INTO pauses VALUES ($kind, $target, $record_version, $reason, $ticket, $paused_at, $paused_by);

-- name: pause_delete
DELETE FROM pauses WHERE kind = $kind AND name = $target;

-- name: breaker_put
INSERT OR REPLACE INTO circuit_breakers VALUES ($limit_key, $record_version, $revision, $failure_threshold,
    $cooldown_seconds, $reason, $ticket, $state, $consecutive_failures, $opened_at, $probe_job_id, $updated_at,
    $updated_by);

-- name: breaker_delete
DELETE FROM circuit_breakers WHERE limit_key = $limit_key;

-- name: fairness_turns
-- Each tenant's latest turn among hot jobs, and the turn claims have reached (the first queued one).
SELECT tenant, max(fair_seq) AS last_turn, min(fair_seq) FILTER (WHERE state = 'queued') AS next_turn
FROM jobs GROUP BY tenant;

-- Dependencies (orchestrator/dependencies.py) ----------------------------------------------------------

-- name: dependencies_insert
INSERT INTO job_dependencies SELECT job_id, parent_id FROM incoming;

-- name: parents_states
SELECT job_id, tenant, state FROM all_jobs WHERE list_contains($job_ids, job_id);

-- name: children_waiting
-- Waiting children of the listed parents, with how many of each child's parents have not succeeded.
SELECT d.job_id,
       (SELECT count(*) FROM job_dependencies p JOIN all_jobs pj ON pj.job_id = p.parent_id
        WHERE p.job_id = d.job_id AND pj.state <> 'succeeded') AS unmet
FROM job_dependencies d JOIN jobs c ON c.job_id = d.job_id
WHERE list_contains($parent_ids, d.parent_id) AND c.state = 'waiting'
GROUP BY d.job_id;

-- name: parents_of
SELECT parent_id FROM job_dependencies WHERE job_id = $job_id ORDER BY parent_id;

-- name: waiting_count
SELECT count(*) FROM jobs WHERE state = 'waiting';

-- name: queue_counts
SELECT queue, state, count(*) AS jobs FROM jobs
WHERE state IN ('waiting', 'queued', 'leased', 'running')
  AND ($tenants IS NULL OR list_contains($tenants, tenant))
GROUP BY ALL ORDER BY ALL;

-- name: queue_oldest_ready
-- The ready job that has waited longest per queue (what the console shows as a queue's oldest age).
SELECT queue, min(run_at) AS oldest_ready_at FROM jobs
WHERE state = 'queued' AND run_at <= $now AND ($tenants IS NULL OR list_contains($tenants, tenant))
GROUP BY queue ORDER BY queue;

-- name: queue_finished_since
-- Jobs per queue that reached a final state since $since (a queue's throughput), in both job tables.
SELECT queue, count(*) AS finished FROM (
    SELECT queue, tenant FROM jobs WHERE finished_at >= $since
    UNION ALL SELECT queue, tenant FROM jobs_finished WHERE finished_at >= $since)
WHERE $tenants IS NULL OR list_contains($tenants, tenant)
GROUP BY queue ORDER BY queue;

-- Sources and schedules (orchestrator/sources.py) -------------------------------------------------------

-- name: source_insert
INSERT INTO sources VALUES ($source, $record_version, $revision, $site_id, $tenant, $project, $job_type, $queue,
                            $host, $schedule, $missed_policy, $payload, $last_tick, $skipped_ticks, $created_at,
                            $created_by, $updated_at, $updated_by);

-- name: source_get
SELECT * FROM sources WHERE name = $source;

-- name: source_list
SELECT * FROM sources
WHERE ($tenant IS NULL OR tenant = $tenant)
  AND ($tenants IS NULL OR list_contains($tenants, tenant))
ORDER BY name;

-- name: sources_scheduled
-- Sources this site ticks: those with a schedule that it owns.
SELECT * FROM sources WHERE schedule IS NOT NULL AND site_id = $site_id ORDER BY name;

-- name: source_ticked
UPDATE sources SET last_tick = $last_tick, skipped_ticks = skipped_ticks + $skipped WHERE name = $source;

-- Trust roots (operations/trust.py; migration 0010) ------------------------------------------------------

-- name: trust_root_latest
SELECT version, root_json, fingerprint, expires_at, pinned_at, pinned_by FROM trust_roots
ORDER BY version DESC LIMIT 1;

-- name: trust_root_insert
INSERT INTO trust_roots VALUES ($version, $root_json, $fingerprint, $expires_at, $pinned_at, $pinned_by);

-- Bundle export (operations/bundles.py; bundle/tables.py declares each member's columns and row order) ------
-- Every bundle_export_* query runs in ONE read-only transaction on a cursor of its own (Ledger.snapshot), so
-- all members show the same commit, and writers go on meanwhile. Columns are listed, never `*`: a migration that
-- adds a column changes no bundle until bundle/tables.py says so (tests/test_bundle_export.py checks that each
-- query returns exactly its table's columns, and that every ledger column is exported or listed as local).
-- $tenant NULL: every row; else only that tenant's rows (docs/bundle-format.md, "Table members").

-- fragment: export_tenant_jobs
(SELECT job_id FROM all_jobs WHERE tenant = $tenant)

-- fragment: export_tenant_key
('tenant:' || $tenant)

-- name: bundle_export_next_sequence
-- The next number of the target's series: after every export recorded and every sequence a hand-off reserved.
SELECT greatest((SELECT coalesce(max(sequence), 0) FROM bundle_exports WHERE target_site = $target_site),
                (SELECT coalesce(max(sequence), 0) FROM bundle_handoffs WHERE target_site = $target_site)) + 1;

-- name: bundle_export_record
INSERT INTO bundle_exports (target_site, sequence, kind, base_sequence, tenant, bundle_id, payload_sha256,
                            merkle_root, created_at, size_bytes, exported_at, exported_by, history_seq, audit_seq,
                            file_sha256, handed_off)
VALUES ($target_site, $sequence, $kind, $base_sequence, $tenant, $bundle_id, $payload_sha256, $merkle_root,
        $created_at, $size_bytes, $exported_at, $exported_by, $history_seq, $audit_seq, $file_sha256, $handed_off);

-- name: bundle_export_marks
-- The high-water marks an export records (read in its snapshot): the last history and audit seq.
SELECT (SELECT coalesce(max(seq), 0) FROM history), (SELECT coalesce(max(seq), 0) FROM audit_log);

-- name: bundle_export_get
-- One recorded export of a target's series (an incremental bundle's base; a reissue).
SELECT sequence, kind, base_sequence, tenant, bundle_id, history_seq, audit_seq, file_sha256, size_bytes, created_at
FROM bundle_exports WHERE target_site = $target_site AND sequence = $sequence;

-- name: bundle_export_latest
-- The latest export to a target of the same scope ($tenant NULL: every tenant): `--incremental`'s base.
SELECT max(sequence) FROM bundle_exports WHERE target_site = $target_site AND tenant IS NOT DISTINCT FROM $tenant;

-- name: bundle_export_sequences
-- What a target's series holds: exports recorded, and sequences reserved by a hand-off whose export never finished.
SELECT sequence, 'exported' AS status FROM bundle_exports WHERE target_site = $target_site
UNION ALL
SELECT DISTINCT sequence, 'handed-off, not exported' FROM bundle_handoffs h
WHERE target_site = $target_site
  AND NOT EXISTS (SELECT 1 FROM bundle_exports e WHERE e.target_site = h.target_site AND e.sequence = h.sequence)
ORDER BY 1;

-- name: bundle_export_handoff_reserved
-- Jobs handed off under a sequence of a target's series.
SELECT count(*) FROM bundle_handoffs WHERE target_site = $target_site AND sequence = $sequence;

-- name: bundle_export_counts
-- Rows each member will hold (for progress), in the same snapshot as the members.
SELECT
    (SELECT count(*) FROM all_jobs WHERE $tenant IS NULL OR tenant = $tenant) AS jobs,
    (SELECT count(*) FROM history) AS history,  -- whole: other tenants' entries travel as hashes
    (SELECT count(*) FROM idempotency_keys WHERE $tenant IS NULL OR tenant = $tenant) AS idempotency_keys,
    (SELECT count(*) FROM job_dependencies WHERE $tenant IS NULL OR job_id IN {{export_tenant_jobs}})
        AS job_dependencies,
    (SELECT count(*) FROM quotas WHERE $tenant IS NULL OR tenant = $tenant) AS quotas,
    (SELECT count(*) FROM rate_limits WHERE $tenant IS NULL OR tenant = $tenant OR limit_key = {{export_tenant_key}})
        AS rate_limits,
    (SELECT count(*) FROM concurrency_limits WHERE $tenant IS NULL OR limit_key = {{export_tenant_key}})
        AS concurrency_limits,
    (SELECT count(*) FROM circuit_breakers WHERE $tenant IS NULL OR limit_key = {{export_tenant_key}})
        AS circuit_breakers,
    (SELECT count(*) FROM pauses WHERE $tenant IS NULL OR (kind = 'key' AND name = {{export_tenant_key}})) AS pauses,
    (SELECT count(*) FROM sources WHERE $tenant IS NULL OR tenant = $tenant) AS sources,
    (SELECT count(*) FROM backfills WHERE $tenant IS NULL OR tenant = $tenant) AS backfills,
    (SELECT count(*) FROM backfill_windows
     WHERE $tenant IS NULL OR backfill_id IN (SELECT backfill_id FROM backfills WHERE tenant = $tenant))
        AS backfill_windows,
    (SELECT count(*) FROM audit_log) AS audit_log,  -- whole, as history
    -- every hand-off this site made: a bound (the member holds the bundle's own)
    (SELECT count(*) FROM bundle_handoffs WHERE $tenant IS NULL OR job_id IN {{export_tenant_jobs}}) AS handoffs;

-- name: bundle_export_jobs
-- Hot and finished jobs (all_jobs), by job_id.
SELECT job_id, site_id, tenant, project, job_type, queue, priority, payload, payload_digest, idempotency_key, state,
       run_at, attempts, max_attempts, timeout_seconds, correlation_id, lease_id, worker_id, lease_seconds, leased_at,
       lease_expires_at, started_at, progress, progress_message, artifacts, last_error, cancel_requested, replay_of,
       created_at, updated_at, finished_at, limit_keys, fair_seq
FROM all_jobs
WHERE $tenant IS NULL OR tenant = $tenant
ORDER BY job_id;

-- name: bundle_export_history
-- The hash chain, by seq; with $tenant, the other tenants' entries as hashes only (no job_id, no entry): the chain
-- stays whole without revealing them.
SELECT seq, CASE WHEN shown THEN job_id END AS job_id, CASE WHEN shown THEN entry END AS entry, entry_hash,
       NOT shown AS hash_only
FROM (SELECT seq, job_id, entry, entry_hash, ($tenant IS NULL OR job_id IN {{export_tenant_jobs}}) AS shown
      FROM history)
ORDER BY seq;

-- name: bundle_export_idempotency_keys
SELECT site_id, tenant, idempotency_key, job_id, spec_digest FROM idempotency_keys
WHERE $tenant IS NULL OR tenant = $tenant
ORDER BY site_id, tenant, idempotency_key;

-- name: bundle_export_job_dependencies
SELECT job_id, parent_id FROM job_dependencies
WHERE $tenant IS NULL OR job_id IN {{export_tenant_jobs}}
ORDER BY job_id, parent_id;

-- name: bundle_export_quotas
SELECT tenant, record_version, revision, max_active, max_per_hour, burst, reason, ticket, updated_at, updated_by,
       issuer_site, issuer_version
FROM quotas
WHERE $tenant IS NULL OR tenant = $tenant
ORDER BY tenant;

-- name: bundle_export_rate_limits
SELECT scope, record_version, revision, tenant, job_type, limit_key, rate_per_second, burst, reason, ticket,
       updated_at, updated_by, issuer_site, issuer_version
FROM rate_limits
WHERE $tenant IS NULL OR tenant = $tenant OR limit_key = {{export_tenant_key}}
ORDER BY scope;

-- name: bundle_export_concurrency_limits
SELECT limit_key, record_version, revision, max_active, reason, ticket, updated_at, updated_by, issuer_site,
       issuer_version
FROM concurrency_limits
WHERE $tenant IS NULL OR limit_key = {{export_tenant_key}}
ORDER BY limit_key;

-- name: bundle_export_circuit_breakers
SELECT limit_key, record_version, revision, failure_threshold, cooldown_seconds, reason, ticket, state,
       consecutive_failures, opened_at, probe_job_id, updated_at, updated_by
FROM circuit_breakers
WHERE $tenant IS NULL OR limit_key = {{export_tenant_key}}
ORDER BY limit_key;

-- name: bundle_export_pauses
SELECT kind, name, record_version, reason, ticket, paused_at, paused_by
FROM pauses
WHERE $tenant IS NULL OR (kind = 'key' AND name = {{export_tenant_key}})
ORDER BY kind, name;

-- name: bundle_export_sources
SELECT name, record_version, revision, site_id, tenant, project, job_type, queue, host, schedule, missed_policy,
       payload, last_tick, skipped_ticks, created_at, created_by, updated_at, updated_by
FROM sources
WHERE $tenant IS NULL OR tenant = $tenant
ORDER BY name;

-- name: bundle_export_backfills
SELECT backfill_id, record_version, site_id, tenant, project, job_type, queue, priority, payload, window_from,
       window_to, step, step_seconds, reason, ticket, state, windows_total, windows_created, windows_suppressed,
       created_at, created_by, canceled_at, canceled_by, cancel_reason
FROM backfills
WHERE $tenant IS NULL OR tenant = $tenant
ORDER BY backfill_id;

-- name: bundle_export_backfill_windows
SELECT backfill_id, record_version, window_index, window_start, window_end, job_id, created
FROM backfill_windows
WHERE $tenant IS NULL OR backfill_id IN (SELECT backfill_id FROM backfills WHERE tenant = $tenant)
ORDER BY backfill_id, window_index;

-- name: bundle_export_audit_log
-- The audit chain, by seq; with $tenant, the entries whose details do not name that tenant as hashes only.
SELECT seq, CASE WHEN shown THEN action END AS action, CASE WHEN shown THEN entry END AS entry, entry_hash,
       NOT shown AS hash_only
FROM (SELECT seq, action, entry, entry_hash,
             ($tenant IS NULL OR coalesce(entry ->> '$.details.tenant' = $tenant, false)) AS shown
      FROM audit_log)
ORDER BY seq;

-- name: bundle_export_handoffs
-- The jobs handed over by the bundle of sequence $sequence to $target_site (empty for a bundle without hand-off).
SELECT job_id, backfill_id, window_index, history_seq, entry_hash FROM bundle_handoffs
WHERE target_site = $target_site AND sequence = $sequence AND ($tenant IS NULL OR job_id IN {{export_tenant_jobs}})
ORDER BY job_id;

-- Incremental bundles: what changed after the base's high-water marks ($after_history_seq, $after_audit_seq), in
-- the same columns and order as the full queries above. A job changed when a history entry of it came after the
-- base (every state change writes one); its idempotency keys and dependency edges travel with it.

-- fragment: export_changed_jobs
(SELECT DISTINCT job_id FROM history WHERE seq > $after_history_seq)

-- name: bundle_export_since_jobs
SELECT job_id, site_id, tenant, project, job_type, queue, priority, payload, payload_digest, idempotency_key, state,
       run_at, attempts, max_attempts, timeout_seconds, correlation_id, lease_id, worker_id, lease_seconds, leased_at,
       lease_expires_at, started_at, progress, progress_message, artifacts, last_error, cancel_requested, replay_of,
       created_at, updated_at, finished_at, limit_keys, fair_seq
FROM all_jobs
WHERE job_id IN {{export_changed_jobs}} AND ($tenant IS NULL OR tenant = $tenant)
ORDER BY job_id;

-- name: bundle_export_since_history
SELECT seq, CASE WHEN shown THEN job_id END AS job_id, CASE WHEN shown THEN entry END AS entry, entry_hash,
       NOT shown AS hash_only
FROM (SELECT seq, job_id, entry, entry_hash, ($tenant IS NULL OR job_id IN {{export_tenant_jobs}}) AS shown
      FROM history WHERE seq > $after_history_seq)
ORDER BY seq;

-- name: bundle_export_since_idempotency_keys
SELECT site_id, tenant, idempotency_key, job_id, spec_digest FROM idempotency_keys
WHERE job_id IN {{export_changed_jobs}} AND ($tenant IS NULL OR tenant = $tenant)
ORDER BY site_id, tenant, idempotency_key;

-- name: bundle_export_since_job_dependencies
SELECT job_id, parent_id FROM job_dependencies
WHERE job_id IN {{export_changed_jobs}} AND ($tenant IS NULL OR job_id IN {{export_tenant_jobs}})
ORDER BY job_id, parent_id;

-- name: bundle_export_since_audit_log
SELECT seq, CASE WHEN shown THEN action END AS action, CASE WHEN shown THEN entry END AS entry, entry_hash,
       NOT shown AS hash_only
FROM (SELECT seq, action, entry, entry_hash,
             ($tenant IS NULL OR coalesce(entry ->> '$.details.tenant' = $tenant, false)) AS shown
      FROM audit_log WHERE seq > $after_audit_seq)
ORDER BY seq;

-- Hand-off at the source (operations/bundles.py handoff): pending, never-started jobs of this site.

-- name: handoff_candidates
-- Queued (due or scheduled) jobs never claimed, of this site, not asked to cancel; of the listed queues or
-- backfills' windows (both NULL: every such job); never one whose children wait on it (they would be canceled).
SELECT j.* FROM jobs j
WHERE j.state = 'queued' AND j.attempts = 0 AND j.site_id = $site_id AND NOT j.cancel_requested
  AND ($tenant IS NULL OR j.tenant = $tenant)
  AND (($queues IS NULL AND $backfills IS NULL)
       OR list_contains(coalesce($queues, []::VARCHAR[]), j.queue)
       OR j.job_id IN (SELECT job_id FROM backfill_windows
                       WHERE list_contains(coalesce($backfills, []::VARCHAR[]), backfill_id) AND created))
  AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs c ON c.job_id = d.job_id
                  WHERE d.parent_id = j.job_id AND c.state = 'waiting')
ORDER BY j.job_id;

-- name: handoff_windows
-- The windows of the listed backfills, by the job that covers them.
SELECT job_id, backfill_id, window_index FROM backfill_windows
WHERE list_contains($backfills, backfill_id) AND created
ORDER BY backfill_id, window_index;

-- name: backfills_known
SELECT backfill_id FROM backfills WHERE list_contains($backfills, backfill_id);

-- name: bundle_handoffs_insert
INSERT INTO bundle_handoffs SELECT * FROM incoming;

-- Bundle import (operations/bundle_import.py; migration 0011).

-- name: bundle_import_floor
SELECT coalesce(max(sequence), 0) FROM bundle_imports WHERE source_site = $source_site;

-- name: bundle_import_find
SELECT source_site, sequence, bundle_id, payload_digest, imported_at, outcome FROM bundle_imports
WHERE payload_digest = $payload_digest OR bundle_id = $bundle_id;

-- name: bundle_import_latest_anchor
-- Imports a key rotation superseded (bundle_imports_superseded) still count: the latest anchor never moves back.
SELECT max(created_at) FROM (SELECT created_at FROM bundle_imports
                             UNION ALL SELECT created_at FROM bundle_imports_superseded);

-- name: bundle_import_supersede
-- A rotation replaced $source_site's keys (operations/trust.py store_roots): its floor rows move aside.
INSERT INTO bundle_imports_superseded
SELECT source_site, sequence, kind, bundle_id, payload_digest, created_at, imported_at, imported_by, outcome,
       $root_version, $superseded_at
FROM bundle_imports WHERE source_site = $source_site;

-- name: bundle_import_supersede_delete
DELETE FROM bundle_imports WHERE source_site = $source_site;

-- name: bundle_import_superseded_list
SELECT source_site, sequence, kind, bundle_id, superseded_by_root, superseded_at FROM bundle_imports_superseded
ORDER BY superseded_at, source_site, sequence;

-- name: bundle_import_floors
SELECT source_site, max(sequence), max(created_at), count(*) FROM bundle_imports GROUP BY source_site
ORDER BY source_site;

-- name: bundle_import_record
INSERT INTO bundle_imports VALUES ($source_site, $sequence, $kind, $bundle_id, $payload_digest, $created_at,
                                   $imported_at, $imported_by, $outcome);

-- name: bundle_import_list
SELECT source_site, sequence, kind, bundle_id, payload_digest, created_at, imported_at, imported_by, outcome
FROM bundle_imports ORDER BY imported_at, source_site, sequence;

-- name: bundle_import_checks
-- The verification checks (name, ok, detail) the audit entry of each import recorded, by payload digest: the entry
-- of the import that wrote the row (outcome imported or forced; a no-op re-import or a refusal wrote none).
SELECT entry ->> '$.details.payload_sha256' AS payload_digest, entry -> '$.details.checks' AS checks
FROM audit_log
WHERE action = 'bundle.import' AND entry ->> '$.details.outcome' IN ('imported', 'forced')
  AND list_contains($payload_digests, entry ->> '$.details.payload_sha256')
ORDER BY seq;

-- name: bundle_import_refusals
-- The latest $limit refused imports, newest first, and how many there are in all: the audit entry each refusal
-- wrote (operations/bundle_import.py _Run.refuse: reason code, file digest, the checks up to the failed one, and
-- the source and sequence once the manifest verified).
SELECT seq, entry ->> '$.at' AS at, entry ->> '$.actor' AS actor, entry -> '$.details' AS details,
       count(*) OVER () AS total
FROM audit_log
WHERE action = 'bundle.import' AND entry ->> '$.details.outcome' = 'refused'
ORDER BY seq DESC
LIMIT $limit;

-- name: bundle_export_list
SELECT target_site, sequence, kind, base_sequence, tenant, bundle_id, payload_sha256, created_at, size_bytes,
       exported_at, exported_by, handed_off
FROM bundle_exports ORDER BY exported_at, target_site, sequence;

-- name: mirror_counts
SELECT (SELECT count(*) FROM mirror_jobs WHERE source_site = $source_site),
       (SELECT count(*) FROM mirror_history WHERE source_site = $source_site),
       (SELECT count(*) FROM mirror_policies WHERE source_site = $source_site),
       (SELECT count(*) FROM mirror_audit_log WHERE source_site = $source_site);

-- name: mirror_policy_counts
SELECT kind, count(*) FROM mirror_policies WHERE source_site = $source_site GROUP BY kind;

-- name: mirror_jobs_delete
DELETE FROM mirror_jobs WHERE source_site = $source_site;

-- name: mirror_jobs_delete_listed
-- An incremental bundle's jobs replace their earlier mirror rows.
DELETE FROM mirror_jobs WHERE source_site = $source_site AND job_id IN (SELECT job_id FROM rows);

-- name: mirror_job_owner
-- A job id this site holds only as a mirror of another site's job (orchestrator/rows.no_job says so).
SELECT source_site, tenant FROM mirror_jobs WHERE job_id = $job_id ORDER BY source_site LIMIT 1;

-- name: mirror_jobs_known
-- How many of the listed jobs the mirror of their source already holds (an incremental plan's updates).
SELECT count(*) FROM mirror_jobs WHERE source_site = $source_site AND list_contains($job_ids, job_id);

-- name: mirror_chain_head
-- The head of a source's chain $chain ('history' | 'audit') recorded by the import that brought it (migration
-- 0014; no row: this site holds no such chain of that source).
SELECT seq, entry_hash FROM mirror_chain_heads WHERE source_site = $source_site AND chain = $chain;

-- name: mirror_chain_head_put
INSERT OR REPLACE INTO mirror_chain_heads VALUES ($source_site, $chain, $seq, $entry_hash);

-- name: mirror_chain_heads_all
-- Every mirrored chain's recorded head, by site (`ledger verify`).
SELECT source_site, chain, seq, entry_hash FROM mirror_chain_heads ORDER BY source_site, chain;

-- name: mirror_history_hashes
-- The held entries of a source's history from $from_seq to $to_seq (an incremental bundle's overlap and the
-- entry it chains onto).
SELECT seq, entry_hash FROM mirror_history
WHERE source_site = $source_site AND seq BETWEEN $from_seq AND $to_seq ORDER BY seq;

-- name: mirror_audit_hashes
-- mirror_history_hashes for the source's audit log.
SELECT seq, entry_hash FROM mirror_audit_log
WHERE source_site = $source_site AND seq BETWEEN $from_seq AND $to_seq ORDER BY seq;

-- name: mirror_history_chunk
-- history_chunk for a mirrored site's history (`ledger verify`).
SELECT seq, job_id, entry, entry_hash FROM mirror_history
WHERE source_site = $source_site AND ($after_seq IS NULL OR seq > $after_seq) AND seq <= $upto_seq
ORDER BY seq;

-- name: mirror_history_past
SELECT max(seq) FROM mirror_history WHERE source_site = $source_site AND seq > $seq;

-- name: mirror_audit_chunk
-- history_chunk for a mirrored site's audit log (`ledger verify`).
SELECT seq, action, entry, entry_hash FROM mirror_audit_log
WHERE source_site = $source_site AND ($after_seq IS NULL OR seq > $after_seq) AND seq <= $upto_seq
ORDER BY seq;

-- name: mirror_audit_past
SELECT max(seq) FROM mirror_audit_log WHERE source_site = $source_site AND seq > $seq;

-- name: bundle_import_has
SELECT count(*) FROM bundle_imports WHERE source_site = $source_site AND sequence = $sequence;

-- Hand-off at the target (operations/bundle_import.py): handed-over jobs become local.

-- name: jobs_known_any
SELECT job_id FROM all_jobs WHERE list_contains($job_ids, job_id);

-- name: idempotency_holders
-- Which job holds each (tenant, key) of this site among the listed ones.
SELECT k.tenant, k.idempotency_key, k.job_id FROM idempotency_keys k
WHERE k.site_id = $site_id AND list_contains($pairs, k.tenant || chr(0) || k.idempotency_key);

-- name: backfill_windows_known
SELECT backfill_id, window_index FROM backfill_windows WHERE list_contains($backfills, backfill_id);

-- name: mirror_history_delete
DELETE FROM mirror_history WHERE source_site = $source_site;

-- name: mirror_policies_delete
DELETE FROM mirror_policies WHERE source_site = $source_site;

-- name: mirror_jobs_insert
INSERT INTO mirror_jobs SELECT $source_site, job_id, tenant, state, row_json FROM rows;

-- name: mirror_history_insert
INSERT INTO mirror_history SELECT $source_site, seq, job_id, entry, entry_hash, hash_only FROM rows;

-- name: mirror_audit_log_delete
DELETE FROM mirror_audit_log WHERE source_site = $source_site;

-- name: mirror_audit_log_insert
INSERT INTO mirror_audit_log SELECT $source_site, seq, action, entry, entry_hash, hash_only FROM rows;

-- name: mirror_policies_insert
INSERT INTO mirror_policies SELECT $source_site, kind, key, row_json FROM rows;

-- name: mirror_rows_counts
-- The source's mirrored rows of migration 0016 per bundle table (idempotency_keys, job_dependencies, ...).
SELECT kind, count(*) FROM mirror_rows WHERE source_site = $source_site GROUP BY kind;

-- name: mirror_rows_delete
DELETE FROM mirror_rows WHERE source_site = $source_site;

-- name: mirror_rows_delete_kind
-- A table that travels whole in an incremental bundle replaces the source's rows of that table.
DELETE FROM mirror_rows WHERE source_site = $source_site AND kind = $kind;

-- name: mirror_rows_delete_listed
-- An incremental bundle's keys and edges replace their earlier mirror rows (merged by key).
DELETE FROM mirror_rows WHERE source_site = $source_site AND kind = $kind AND key IN (SELECT key FROM rows);

-- name: mirror_rows_insert
INSERT INTO mirror_rows SELECT $source_site, $kind, key, row_json FROM rows;

-- name: mirror_rows_known
-- How many of the listed keys the mirror of their source already holds (an incremental plan's updates).
SELECT count(*) FROM mirror_rows WHERE source_site = $source_site AND kind = $kind AND list_contains($keys, key);

-- name: mirror_rows_list
-- `bundle mirrors`: the mirrored rows, by source site, table and key, at most $limit of them, after the row
-- ($after_site, $after_kind, $after_key) a cursor names (all NULL: from the first).
SELECT source_site, kind, key, row_json FROM mirror_rows
WHERE ($source_site IS NULL OR source_site = $source_site) AND ($kind IS NULL OR kind = $kind)
  AND ($after_site IS NULL OR source_site > $after_site
       OR (source_site = $after_site AND (kind > $after_kind OR (kind = $after_kind AND key > $after_key))))
ORDER BY source_site, kind, key
LIMIT $limit;

-- name: mirror_rows_totals
SELECT source_site, kind, count(*) FROM mirror_rows
WHERE ($source_site IS NULL OR source_site = $source_site) AND ($kind IS NULL OR kind = $kind)
GROUP BY source_site, kind ORDER BY source_site, kind;

-- name: trust_root_versions
SELECT version, fingerprint FROM trust_roots ORDER BY version;

-- Policy authority (operations/bundle_policies.py; migration 0013) ------------------------------------------

-- name: policy_authority_get
SELECT authority_site, reason, set_at, set_by FROM policy_authority WHERE slot = 1;

-- name: policy_authority_put
INSERT OR REPLACE INTO policy_authority VALUES (1, $authority_site, $reason, $set_at, $set_by);

-- name: policy_authority_delete
DELETE FROM policy_authority;

-- name: mirror_policies_list
SELECT source_site, kind, key, row_json FROM mirror_policies
WHERE $source_site IS NULL OR source_site = $source_site
ORDER BY source_site, kind, key;

-- Job logs (orchestrator/joblogs.py; migration 0017) ---------------------------------------------------------

-- name: job_log_heads
-- The first and last line of each job in the hot table that has lines: what the writer starts from (a job not
-- listed has none; only a job in the hot table can get lines).
SELECT l.job_id, min(l.seq) AS first_seq, max(l.seq) AS last_seq
FROM job_logs l SEMI JOIN jobs j ON j.job_id = l.job_id
GROUP BY l.job_id;

-- name: job_log_cut
-- Drop a job's lines before $first_seq (its buffer is full); the line at $first_seq becomes the marker.
-- The job's lines are found through the index first (one equality), then filtered by seq.
WITH mine AS MATERIALIZED (SELECT rowid AS row_id, seq FROM job_logs WHERE job_id = $job_id)
DELETE FROM job_logs WHERE rowid IN (SELECT row_id FROM mine WHERE seq < $first_seq);

-- name: job_log_mark
WITH mine AS MATERIALIZED (SELECT rowid AS row_id, seq FROM job_logs WHERE job_id = $job_id)
UPDATE job_logs SET level = 'warning', message = $message, dropped = $first_seq
WHERE rowid IN (SELECT row_id FROM mine WHERE seq = $first_seq);

-- name: job_log_page
-- A job's lines after $after_seq, oldest first.
WITH mine AS MATERIALIZED (
    SELECT seq, attempt, lease_id, tenant, project, correlation_id, level, message, logged_at, stored_at, dropped
    FROM job_logs WHERE job_id = $job_id)
SELECT * FROM mine WHERE seq > $after_seq ORDER BY seq LIMIT $limit;

-- name: job_log_prune
-- Lines stored before the retention window.
DELETE FROM job_logs WHERE stored_at < $cutoff;

-- name: telemetry_states
-- Jobs by tenant and state (GET /metrics; the door keeps the caller's tenants).
SELECT tenant, state, count(*) AS jobs FROM all_jobs GROUP BY tenant, state;

-- name: telemetry_backlog
-- The hot table's unfinished jobs by tenant, queue and type: queued (ready or not), leased or running, and the
-- run_at of the oldest ready one (GET /metrics: queue depth and oldest queued age).
SELECT tenant, queue, job_type,
       count(*) FILTER (WHERE state = 'queued') AS queued,
       count(*) FILTER (WHERE state IN ('leased', 'running')) AS active,
       count(*) FILTER (WHERE state = 'waiting') AS waiting,
       min(run_at) FILTER (WHERE state = 'queued' AND run_at <= $now) AS oldest_ready_at
FROM jobs
WHERE state IN ('waiting', 'queued', 'leased', 'running')
GROUP BY tenant, queue, job_type;
