-- The digest of the job spec a caller sent with an idempotency key (validation.job_spec: `spec_digest`), so the
-- same key with a different spec is refused as a conflict instead of silently answering with the first job.
-- Keys reserved before this migration keep NULL: what their caller sent is not known (the stored row has
-- defaults filled in, e.g. run_at = the enqueue time), so they accept any spec, as before.
ALTER TABLE idempotency_keys ADD COLUMN spec_digest VARCHAR;
