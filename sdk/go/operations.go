package orch

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"
)

// Typed calls for the worker routes (scope orch:worker) and the producer routes (enqueue, cancel, replay,
// backfills, and the reads a producer follows its jobs with). Client.Call reaches every other operation.

// Artifact is what a handler produced, recorded with the ack (schemas/artifact.schema.json).
type Artifact struct {
	URI    string `json:"uri"`
	Digest string `json:"digest"` // sha256:<64 hex> or sha512:<128 hex>
	MIME   string `json:"mime"`
}

// RetryHint is what the server advises with each lease.
type RetryHint struct {
	HeartbeatEverySeconds  float64 `json:"heartbeat_every_seconds"`
	BackoffSecondsIfFailed float64 `json:"backoff_seconds_if_failed"`
}

// Lease is one leased job, as a claim answers it.
type Lease struct {
	JobID          string          `json:"job_id"`
	LeaseID        string          `json:"lease_id"`
	LeaseExpiresAt string          `json:"lease_expires_at"`
	Attempt        int             `json:"attempt"`
	MaxAttempts    int             `json:"max_attempts"`
	Tenant         string          `json:"tenant"`
	Project        string          `json:"project"`
	Type           string          `json:"type"`
	Queue          string          `json:"queue"`
	Priority       int             `json:"priority"`
	Payload        json.RawMessage `json:"payload"`
	PayloadDigest  string          `json:"payload_digest"`
	CorrelationID  *string         `json:"correlation_id"`
	TimeoutSeconds *int            `json:"timeout_seconds"`
	Keys           []string        `json:"keys"`
	RetryHint      RetryHint       `json:"retry_hint"`
}

// ClaimRequest asks for up to Limit ready jobs (schemas/claim-request.schema.json).
type ClaimRequest struct {
	WorkerID     string  `json:"worker_id"`
	Limit        int     `json:"limit,omitempty"`
	LeaseSeconds float64 `json:"lease_seconds,omitempty"`
	Queue        string  `json:"queue,omitempty"`
	Type         string  `json:"type,omitempty"`
	Wait         float64 `json:"wait,omitempty"` // seconds to long-poll for work
}

// Claim leases up to req.Limit ready jobs, each under a fresh lease, long-polling req.Wait seconds for work.
func (c *Client) Claim(ctx context.Context, req ClaimRequest, opts ...CallOption) ([]Lease, error) {
	route, path := routePath("jobs.claim")
	wait := seconds(req.Wait) + c.Timeout
	opts = append([]CallOption{WithTimeout(wait)}, opts...)
	var answer struct {
		Leases []Lease `json:"leases"`
	}
	err := c.send(ctx, route, path, nil, req, &answer, opts)
	return answer.Leases, err
}

// HeartbeatAnswer says how a heartbeat left the job.
type HeartbeatAnswer struct {
	JobID           string `json:"job_id"`
	State           string `json:"state"`
	LeaseExpiresAt  string `json:"lease_expires_at"`
	CancelRequested bool   `json:"cancel_requested"`
}

// LogLine is one job log line a heartbeat, ack or fail carries (schemas/log-lines.schema.json): stored with that
// report, and refused with it. Job.Log and Job.Logf write them for a handler.
type LogLine struct {
	Message string `json:"message"`         // at most MaxLogLineChars characters
	Level   string `json:"level,omitempty"` // LevelDebug, LevelInfo, LevelWarning or LevelError; "": info
	At      string `json:"at,omitempty"`    // when the line was written (RFC 3339); "": when the server stored it
}

// Heartbeat extends a lease; progress (0..1, nil: none) and message ride along, and job log lines with
// WithLogs(lines).
func (c *Client) Heartbeat(ctx context.Context, jobID, leaseID string, progress *float64, message string,
	opts ...CallOption) (HeartbeatAnswer, error) {
	route, path := routePath("jobs.heartbeat", jobID)
	body := map[string]any{"lease_id": leaseID}
	if progress != nil {
		body["progress"] = *progress
	}
	if message != "" {
		body["message"] = message
	}
	if logs := logsOf(opts); len(logs) > 0 {
		body["logs"] = logs
	}
	var answer HeartbeatAnswer
	err := c.send(ctx, route, path, nil, body, &answer, opts)
	return answer, err
}

// ReportAnswer is the job's state after an ack, fail or release.
type ReportAnswer struct {
	JobID   string `json:"job_id"`
	State   string `json:"state"`
	Attempt int    `json:"attempt"`
}

// Ack completes a job under its lease, recording artifacts (and job log lines given WithLogs(lines)).
func (c *Client) Ack(ctx context.Context, jobID, leaseID string, artifacts []Artifact,
	opts ...CallOption) (ReportAnswer, error) {
	route, path := routePath("jobs.ack", jobID)
	if artifacts == nil {
		artifacts = []Artifact{}
	}
	body := map[string]any{"lease_id": leaseID, "artifacts": artifacts}
	if logs := logsOf(opts); len(logs) > 0 {
		body["logs"] = logs
	}
	var answer ReportAnswer
	err := c.send(ctx, route, path, nil, body, &answer, opts)
	return answer, err
}

// AckItem is one ack of a jobs.ack_many.
type AckItem struct {
	JobID     string     `json:"job_id"`
	LeaseID   string     `json:"lease_id"`
	Artifacts []Artifact `json:"artifacts,omitempty"`
	Logs      []LogLine  `json:"logs,omitempty"` // job log lines stored with the ack
}

// AckResult is one ack's outcome: State, or Err (the lease was refused, or the item was invalid).
type AckResult struct {
	JobID   string
	State   string
	Attempt int
	Err     *Error
}

// AckMany completes many jobs, each under its lease, in one request; one result per item, in order.
func (c *Client) AckMany(ctx context.Context, acks []AckItem, opts ...CallOption) ([]AckResult, error) {
	route, path := routePath("jobs.ack_many")
	var answer struct {
		Results []struct {
			JobID   string         `json:"job_id"`
			State   string         `json:"state"`
			Attempt int            `json:"attempt"`
			Error   map[string]any `json:"error"`
		} `json:"results"`
	}
	if err := c.send(ctx, route, path, nil, map[string]any{"acks": acks}, &answer, opts); err != nil {
		return nil, err
	}
	results := make([]AckResult, len(answer.Results))
	for index, item := range answer.Results {
		results[index] = AckResult{JobID: item.JobID, State: item.State, Attempt: item.Attempt}
		if item.Error != nil {
			results[index].Err = resultError("jobs.ack_many", item.Error)
		}
	}
	return results, nil
}

// FailRequest reports a failed attempt (schemas/fail-request.schema.json).
type FailRequest struct {
	LeaseID    string    `json:"lease_id"`
	Error      string    `json:"error"`
	RetryAfter *float64  `json:"retry_after,omitempty"` // seconds; nil: the orchestrator's backoff
	NoRetry    bool      `json:"no_retry,omitempty"`
	Logs       []LogLine `json:"logs,omitempty"` // job log lines stored with the fail
}

// Fail reports a failed attempt of a job under its lease.
func (c *Client) Fail(ctx context.Context, jobID string, req FailRequest, opts ...CallOption) (ReportAnswer, error) {
	route, path := routePath("jobs.fail", jobID)
	var answer ReportAnswer
	err := c.send(ctx, route, path, nil, req, &answer, opts)
	return answer, err
}

// Release gives a lease back unused: the job goes back to queued without using up the attempt.
func (c *Client) Release(ctx context.Context, jobID, leaseID string, opts ...CallOption) (ReportAnswer, error) {
	route, path := routePath("jobs.release", jobID)
	var answer ReportAnswer
	err := c.send(ctx, route, path, nil, map[string]any{"lease_id": leaseID}, &answer, opts)
	return answer, err
}

// JobSpec is what a producer submits to enqueue one job (schemas/job-spec.schema.json).
type JobSpec struct {
	Tenant         string   `json:"tenant"`
	Project        string   `json:"project"`
	Type           string   `json:"type"`
	Queue          string   `json:"queue,omitempty"`
	Priority       int      `json:"priority,omitempty"`
	Payload        any      `json:"payload,omitempty"`
	IdempotencyKey string   `json:"idempotency_key,omitempty"`
	RunAt          string   `json:"run_at,omitempty"`
	MaxAttempts    int      `json:"max_attempts,omitempty"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty"`
	CorrelationID  string   `json:"correlation_id,omitempty"`
	Keys           []string `json:"keys,omitempty"`
	DependsOn      []string `json:"depends_on,omitempty"`
}

// EnqueueAnswer names the job; Created is false when the spec's idempotency key named an existing job.
type EnqueueAnswer struct {
	JobID   string `json:"job_id"`
	Created bool   `json:"created"`
	Tenant  string `json:"tenant"`
	Type    string `json:"type"`
}

// Enqueue adds one job.
func (c *Client) Enqueue(ctx context.Context, spec JobSpec, opts ...CallOption) (EnqueueAnswer, error) {
	route, path := routePath("jobs.enqueue")
	var answer EnqueueAnswer
	err := c.send(ctx, route, path, nil, spec, &answer, opts)
	return answer, err
}

// EnqueueBatch adds many jobs in one transaction and returns their ids, in order.
func (c *Client) EnqueueBatch(ctx context.Context, specs []JobSpec, opts ...CallOption) ([]string, error) {
	route, path := routePath("jobs.enqueue_batch")
	var answer struct {
		JobIDs []string `json:"job_ids"`
	}
	err := c.send(ctx, route, path, nil, map[string]any{"jobs": specs}, &answer, opts)
	return answer.JobIDs, err
}

// Cancel cancels a queued job, or asks a running one's worker to stop (its handler's context is cancelled).
func (c *Client) Cancel(ctx context.Context, jobID, reason string, opts ...CallOption) (map[string]any, error) {
	route, path := routePath("jobs.cancel", jobID)
	var answer map[string]any
	err := c.send(ctx, route, path, nil, map[string]any{"reason": reason}, &answer, opts)
	return answer, err
}

// JobRecord is one job with its history, as jobs.show answers it (fields this SDK names; Raw holds the whole answer).
type JobRecord struct {
	JobID           string           `json:"job_id"`
	Tenant          string           `json:"tenant"`
	Project         string           `json:"project"`
	Type            string           `json:"type"`
	Queue           string           `json:"queue"`
	State           string           `json:"state"`
	Attempts        int              `json:"attempts"`
	MaxAttempts     int              `json:"max_attempts"`
	LeaseID         *string          `json:"lease_id"`
	WorkerID        *string          `json:"worker_id"`
	Progress        *float64         `json:"progress"`
	ProgressMessage *string          `json:"progress_message"`
	Artifacts       []Artifact       `json:"artifacts"`
	LastError       *string          `json:"last_error"`
	CancelRequested bool             `json:"cancel_requested"`
	History         []map[string]any `json:"history"`
	Raw             map[string]any   `json:"-"`
}

// ShowJob returns one job with its history.
func (c *Client) ShowJob(ctx context.Context, jobID string, opts ...CallOption) (*JobRecord, error) {
	route, path := routePath("jobs.show", jobID)
	var raw json.RawMessage
	if err := c.send(ctx, route, path, nil, nil, &raw, opts); err != nil {
		return nil, err
	}
	job := &JobRecord{}
	if err := json.Unmarshal(raw, job); err != nil {
		return nil, err
	}
	_ = json.Unmarshal(raw, &job.Raw)
	return job, nil
}

// ListJobsRequest filters jobs.list; zero fields are left out.
type ListJobsRequest struct {
	State, Tenant, Type, Cursor string
	Limit                       int
}

// JobPage is one page of jobs.list (NextCursor empty: the listing ended).
type JobPage struct {
	Jobs       []map[string]any `json:"jobs"`
	NextCursor string           `json:"next_cursor"`
}

// ListJobs returns one page of jobs in creation order.
func (c *Client) ListJobs(ctx context.Context, req ListJobsRequest, opts ...CallOption) (JobPage, error) {
	route, path := routePath("jobs.list")
	query := url.Values{}
	for key, value := range map[string]string{"state": req.State, "tenant": req.Tenant, "type": req.Type,
		"cursor": req.Cursor} {
		if value != "" {
			query.Set(key, value)
		}
	}
	if req.Limit > 0 {
		query.Set("limit", strconv.Itoa(req.Limit))
	}
	var page JobPage
	err := c.send(ctx, route, path, query, nil, &page, opts)
	return page, err
}

// ReplayJob replays a dead-lettered, failed or timed-out job as a new job; params as
// schemas/job-replay-request.schema.json.
func (c *Client) ReplayJob(ctx context.Context, jobID string, params map[string]any,
	opts ...CallOption) (map[string]any, error) {
	route, path := routePath("jobs.replay", jobID)
	if params == nil {
		params = map[string]any{}
	}
	var answer map[string]any
	err := c.send(ctx, route, path, nil, params, &answer, opts)
	return answer, err
}

// BackfillRequest creates one job per window [start, end) from From to To in steps of Step
// (schemas/backfill-create-request.schema.json).
type BackfillRequest struct {
	Tenant         string         `json:"tenant"`
	Project        string         `json:"project"`
	Type           string         `json:"type"`
	From           string         `json:"from"`
	To             string         `json:"to"`
	Step           string         `json:"step"` // 15m, 1h, 1d
	Payload        map[string]any `json:"payload,omitempty"`
	Queue          string         `json:"queue,omitempty"`
	Priority       int            `json:"priority,omitempty"`
	MaxAttempts    int            `json:"max_attempts,omitempty"`
	TimeoutSeconds int            `json:"timeout_seconds,omitempty"`
}

// CreateBackfill creates a backfill (scope orch:backfill); the server needs a reason and a ticket.
func (c *Client) CreateBackfill(ctx context.Context, req BackfillRequest, reason, ticket string,
	opts ...CallOption) (map[string]any, error) {
	route, path := routePath("backfills.create")
	opts = append([]CallOption{WithReason(reason), WithTicket(ticket)}, opts...)
	var answer map[string]any
	err := c.send(ctx, route, path, nil, req, &answer, opts)
	return answer, err
}

// ShowBackfill returns one backfill with its progress and watermark.
func (c *Client) ShowBackfill(ctx context.Context, backfillID string, opts ...CallOption) (map[string]any, error) {
	route, path := routePath("backfills.show", backfillID)
	var answer map[string]any
	err := c.send(ctx, route, path, nil, nil, &answer, opts)
	return answer, err
}

// CancelBackfill cancels a backfill's queued jobs and asks its running ones to stop (needs a reason).
func (c *Client) CancelBackfill(ctx context.Context, backfillID, reason string,
	opts ...CallOption) (map[string]any, error) {
	route, path := routePath("backfills.cancel", backfillID)
	opts = append([]CallOption{WithReason(reason)}, opts...)
	var answer map[string]any
	err := c.send(ctx, route, path, nil, nil, &answer, opts)
	return answer, err
}

// LedgerInfo returns the ledger's identity and job counts by state (of the caller's tenants).
func (c *Client) LedgerInfo(ctx context.Context, opts ...CallOption) (map[string]any, error) {
	route, path := routePath("ledger.info")
	var answer map[string]any
	err := c.send(ctx, route, path, nil, nil, &answer, opts)
	return answer, err
}

// VerifyLedger checks the history chain and state tables (answer["ok"] is true when they hold).
func (c *Client) VerifyLedger(ctx context.Context, opts ...CallOption) (map[string]any, error) {
	route, path := routePath("ledger.verify")
	var answer map[string]any
	err := c.send(ctx, route, path, nil, nil, &answer, opts)
	return answer, err
}
