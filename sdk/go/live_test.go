package orch_test

// Tests against a real `airgap-orch serve` on a real ledger, which tests/test_go_sdk.py starts; it passes the server
// and its tokens in the environment. Without ORCH_TEST_URL these tests skip (`go test ./...` alone runs the unit
// tests only).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"airgap-orch.dev/orch"
)

type live struct {
	url            string
	operator       *orch.Client // acme and globex: read, operate
	workerToken    string       // acme: orch:worker
	noWorkerToken  string       // acme: read and operate, not orch:worker
	globexWorker   string       // globex only: orch:worker and read
	globexOperator *orch.Client // globex only
}

func liveServer(t *testing.T) live {
	t.Helper()
	url := os.Getenv("ORCH_TEST_URL")
	if url == "" {
		t.Skip("ORCH_TEST_URL is not set: tests/test_go_sdk.py runs these against a live server")
	}
	operator, err := orch.NewClient(url, os.Getenv("ORCH_TEST_OPERATOR_TOKEN"))
	if err != nil {
		t.Fatal(err)
	}
	globexOperator, err := orch.NewClient(url, os.Getenv("ORCH_TEST_GLOBEX_OPERATOR_TOKEN"))
	if err != nil {
		t.Fatal(err)
	}
	return live{url: url, operator: operator, workerToken: os.Getenv("ORCH_TEST_WORKER_TOKEN"),
		noWorkerToken: os.Getenv("ORCH_TEST_NO_WORKER_TOKEN"), globexWorker: os.Getenv("ORCH_TEST_GLOBEX_WORKER_TOKEN"),
		globexOperator: globexOperator}
}

func uniqueType(prefix string) string { return prefix + "." + orch.NewIdempotencyKey()[:8] }

func enqueue(t *testing.T, client *orch.Client, tenant, jobType string, count int) []string {
	t.Helper()
	specs := make([]orch.JobSpec, count)
	for n := range specs {
		specs[n] = orch.JobSpec{Tenant: tenant, Project: "go-sdk", Type: jobType, Payload: map[string]any{"n": n}}
	}
	ids, err := client.EnqueueBatch(context.Background(), specs)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func quietLogger(t *testing.T) *log.Logger {
	if testing.Verbose() {
		return log.New(os.Stderr, t.Name()+" ", log.Lmicroseconds)
	}
	return log.New(io.Discard, "", 0)
}

type running struct {
	worker  *orch.Worker
	done    chan struct{}
	summary orch.Summary
	err     error
}

func start(worker *orch.Worker) *running {
	run := &running{worker: worker, done: make(chan struct{})}
	go func() {
		defer close(run.done)
		run.summary, run.err = worker.Run(context.Background())
	}()
	return run
}

func (r *running) stop(t *testing.T) orch.Summary {
	t.Helper()
	r.worker.Stop()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not stop")
	}
	if r.err != nil {
		t.Fatalf("worker stopped with %v", r.err)
	}
	return r.summary
}

func waitFor(t *testing.T, what string, timeout time.Duration, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countState(t *testing.T, client *orch.Client, jobType, state string) int {
	t.Helper()
	page, err := client.ListJobs(context.Background(), orch.ListJobsRequest{Type: jobType, State: state, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(page.Jobs)
}

func TestFleetOfGoWorkersCompletesEveryJobExactlyOnceAndTheLedgerVerifies(t *testing.T) {
	server := liveServer(t)
	jobType := uniqueType("go.fleet")
	const jobs = 400
	ids := enqueue(t, server.operator, "acme", jobType, jobs)
	var mu sync.Mutex
	runs := map[string]int{}
	var fleet []*running
	for n := 0; n < 4; n++ {
		worker, err := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{
			WorkerID: fmt.Sprintf("go-fleet-%d", n), Concurrency: 8, Prefetch: 50, AckBatchSize: 100,
			ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
			mu.Lock()
			runs[job.ID]++
			mu.Unlock()
			time.Sleep(time.Millisecond)
			return nil, nil
		})
		fleet = append(fleet, start(worker))
	}
	waitFor(t, "every job to succeed", 60*time.Second, func() bool {
		return countState(t, server.operator, jobType, "succeeded") == jobs
	})
	succeeded := 0
	for _, member := range fleet {
		summary := member.stop(t)
		succeeded += summary.Outcomes[orch.OutcomeSucceeded]
		if len(summary.Outcomes) != 1 {
			t.Errorf("%s: outcomes %v, want only succeeded", summary.WorkerID, summary.Outcomes)
		}
	}
	if succeeded != jobs {
		t.Errorf("the fleet counted %d successes, want %d", succeeded, jobs)
	}
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("job %s ran %d times", id, runs[id])
		}
	}
	verified, err := server.operator.VerifyLedger(context.Background())
	if err != nil || verified["ok"] != true {
		t.Fatalf("ledger verify: %v %v", verified, err)
	}
}

func TestHandlersReportProgressArtifactsAndRetryableAndPermanentErrors(t *testing.T) {
	server := liveServer(t)
	jobType := uniqueType("go.outcomes")
	ctx := context.Background()
	okJob, _ := server.operator.Enqueue(ctx, orch.JobSpec{Tenant: "acme", Project: "go-sdk", Type: jobType,
		Payload: map[string]any{"kind": "ok"}})
	retryJob, _ := server.operator.Enqueue(ctx, orch.JobSpec{Tenant: "acme", Project: "go-sdk", Type: jobType,
		Payload: map[string]any{"kind": "retry"}, MaxAttempts: 2})
	permanentJob, _ := server.operator.Enqueue(ctx, orch.JobSpec{Tenant: "acme", Project: "go-sdk", Type: jobType,
		Payload: map[string]any{"kind": "permanent"}})
	badArtifactJob, _ := server.operator.Enqueue(ctx, orch.JobSpec{Tenant: "acme", Project: "go-sdk", Type: jobType,
		Payload: map[string]any{"kind": "bad-artifact"}})
	artifact := orch.Artifact{URI: "file:///go/ok.json", MIME: "application/json",
		Digest: "sha256:" + strings.Repeat("ab", 32)}
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{ClaimWait: time.Second,
		NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		var payload struct{ Kind string }
		_ = job.Decode(&payload)
		switch payload.Kind {
		case "retry":
			return nil, orch.RetryAfter(errors.New("mirror unreachable"), 0)
		case "permanent":
			return nil, orch.Permanent(errors.New("payload has no advisory_id"))
		case "bad-artifact":
			return []orch.Artifact{{URI: "file:///go/bad.json", MIME: "application/json", Digest: "md5:nope"}}, nil
		}
		_ = job.Progress(0.5, "halfway")
		select { // hold until a heartbeat carried the progress and the job shows running
		case <-job.Running():
		case <-time.After(10 * time.Second):
		}
		return []orch.Artifact{artifact}, nil
	})
	run := start(worker)
	finished := func(id string, state string) func() bool {
		return func() bool {
			job, err := server.operator.ShowJob(ctx, id)
			return err == nil && job.State == state
		}
	}
	waitFor(t, "the ok job to succeed", 30*time.Second, finished(okJob.JobID, "succeeded"))
	waitFor(t, "the retried job to be dead-lettered", 30*time.Second, finished(retryJob.JobID, "dead_letter"))
	waitFor(t, "the permanent failure to fail", 30*time.Second, finished(permanentJob.JobID, "failed"))
	waitFor(t, "the job with a malformed artifact to fail", 30*time.Second, finished(badArtifactJob.JobID, "failed"))
	summary := run.stop(t)
	done, _ := server.operator.ShowJob(ctx, okJob.JobID)
	if len(done.Artifacts) != 1 || done.Artifacts[0] != artifact {
		t.Errorf("artifacts %v, want [%v]", done.Artifacts, artifact)
	}
	if done.Progress == nil || *done.Progress != 1 {
		t.Errorf("progress %v, want 1 after the ack", done.Progress)
	}
	retried, _ := server.operator.ShowJob(ctx, retryJob.JobID)
	if retried.Attempts != 2 || retried.LastError == nil || !strings.Contains(*retried.LastError, "mirror unreachable") {
		t.Errorf("retried job: %d attempts, last error %v", retried.Attempts, retried.LastError)
	}
	bad, _ := server.operator.ShowJob(ctx, badArtifactJob.JobID)
	if bad.LastError == nil || !strings.Contains(*bad.LastError, "invalid artifacts") || bad.Attempts != 1 {
		t.Errorf("the malformed artifact's job: %d attempts, last error %v", bad.Attempts, bad.LastError)
	}
	want := map[string]int{orch.OutcomeSucceeded: 1, orch.OutcomeRetry: 1, orch.OutcomeDeadLetter: 1,
		orch.OutcomeFailed: 2}
	for outcome, count := range want {
		if summary.Outcomes[outcome] != count {
			t.Errorf("outcomes %v, want %v", summary.Outcomes, want)
			break
		}
	}
}

func TestACancelledJobsHandlerSeesItsContextCancelledAndTheJobEndsCanceled(t *testing.T) {
	server := liveServer(t)
	jobType := uniqueType("go.cancel")
	ids := enqueue(t, server.operator, "acme", jobType, 1)
	started := make(chan struct{})
	seen := make(chan string, 1)
	// A short lease: heartbeats (lease/3) bring the cancel request soon.
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{LeaseSeconds: 3,
		ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		<-job.Running()
		close(started)
		select {
		case <-ctx.Done():
			seen <- job.CancelReason()
			return nil, ctx.Err()
		case <-time.After(30 * time.Second):
			seen <- "never cancelled"
			return nil, nil
		}
	})
	run := start(worker)
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not start running")
	}
	if _, err := server.operator.Cancel(context.Background(), ids[0], "go sdk test"); err != nil {
		t.Fatal(err)
	}
	if reason := <-seen; reason != orch.CancelRequested {
		t.Fatalf("the handler saw %q, want %q", reason, orch.CancelRequested)
	}
	waitFor(t, "the job to end canceled", 30*time.Second, func() bool {
		job, err := server.operator.ShowJob(context.Background(), ids[0])
		return err == nil && job.State == "canceled"
	})
	if summary := run.stop(t); summary.Outcomes[orch.OutcomeCanceled] != 1 {
		t.Errorf("outcomes %v, want one canceled", summary.Outcomes)
	}
}

func TestATokenWithoutTheWorkerScopeIsRefusedAndTheErrorSaysSo(t *testing.T) {
	server := liveServer(t)
	worker, _ := orch.NewWorker(server.url, server.noWorkerToken, orch.WorkerConfig{NoSignals: true,
		Logger: quietLogger(t)})
	_ = worker.Handle(uniqueType("go.scope"), func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		return nil, nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := worker.Run(context.Background())
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not stop on its refused token")
	}
	var refusal *orch.Error
	if !errors.As(err, &refusal) || !errors.Is(err, orch.ErrForbidden) || !errors.Is(err, orch.ErrNotAuthorized) {
		t.Fatalf("got %v, want a forbidden refusal", err)
	}
	if refusal.Status != 403 || refusal.ExitCode != 7 || !strings.Contains(refusal.Detail, "orch:worker") {
		t.Errorf("refusal %+v: want HTTP 403, exit code 7 and a detail naming orch:worker", refusal)
	}
	if errors.Is(err, orch.ErrNotFound) || errors.Is(err, orch.ErrConflict) {
		t.Errorf("%v also matched not-found or conflict", err)
	}
}

func TestAnotherTenantsLeaseIsNotFoundAndItsClaimsNeverSeeTheOtherTenantsJobs(t *testing.T) {
	server := liveServer(t)
	ctx := context.Background()
	jobType := uniqueType("go.tenants")
	acmeIDs := enqueue(t, server.operator, "acme", jobType, 3)
	globex, _ := orch.NewClient(server.url, server.globexWorker)
	leases, err := globex.Claim(ctx, orch.ClaimRequest{WorkerID: "go-globex", Limit: 10, Type: jobType})
	if err != nil || len(leases) != 0 {
		t.Fatalf("globex claimed %d of acme's jobs (%v)", len(leases), err)
	}
	acme, _ := orch.NewClient(server.url, server.workerToken)
	leases, err = acme.Claim(ctx, orch.ClaimRequest{WorkerID: "go-acme", Limit: 10, Type: jobType})
	if err != nil || len(leases) != len(acmeIDs) {
		t.Fatalf("acme claimed %d of its %d jobs (%v)", len(leases), len(acmeIDs), err)
	}
	_, err = globex.Ack(ctx, leases[0].JobID, leases[0].LeaseID, nil)
	var refusal *orch.Error
	if !errors.As(err, &refusal) || !errors.Is(err, orch.ErrNotFound) || refusal.Status != 404 || refusal.ExitCode != 1 {
		t.Fatalf("globex's ack of acme's lease: %v, want not found (404, exit code 1)", err)
	}
	if !refusal.Stale() {
		t.Error("a lease the caller cannot see should be dropped like a stale one")
	}
	answer, err := acme.Ack(ctx, leases[0].JobID, leases[0].LeaseID, nil)
	if err != nil || answer.State != "succeeded" {
		t.Fatalf("acme's own ack after globex's: %v %v", answer, err)
	}
	for _, lease := range leases[1:] {
		if _, err := acme.Release(ctx, lease.JobID, lease.LeaseID); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAnAckSentAgainUnderItsIdempotencyKeyGetsItsOriginalAnswerAndANewKeyIsStale(t *testing.T) {
	server := liveServer(t)
	ctx := context.Background()
	jobType := uniqueType("go.idempotent")
	enqueue(t, server.operator, "acme", jobType, 1)
	client, _ := orch.NewClient(server.url, server.workerToken)
	leases, err := client.Claim(ctx, orch.ClaimRequest{WorkerID: "go-idem", Limit: 1, Type: jobType})
	if err != nil || len(leases) != 1 {
		t.Fatalf("claim: %v %v", leases, err)
	}
	key := orch.NewIdempotencyKey()
	first, err := client.Ack(ctx, leases[0].JobID, leases[0].LeaseID, nil, orch.WithIdempotencyKey(key))
	if err != nil {
		t.Fatal(err)
	}
	again, err := client.Ack(ctx, leases[0].JobID, leases[0].LeaseID, nil, orch.WithIdempotencyKey(key))
	if err != nil || again != first {
		t.Fatalf("the resent ack got %+v (%v), want its original answer %+v", again, err, first)
	}
	_, err = client.Ack(ctx, leases[0].JobID, leases[0].LeaseID, nil)
	var refusal *orch.Error
	if !errors.As(err, &refusal) || !errors.Is(err, orch.ErrStaleLease) || !errors.Is(err, orch.ErrConflict) ||
		refusal.ExitCode != 3 || !refusal.Stale() {
		t.Fatalf("a second ack under a new key: %v, want a stale lease (exit code 3)", err)
	}
}

func TestStopGivesBackPrefetchedJobsAndReleasesRunningOnesAfterTheGracePeriod(t *testing.T) {
	server := liveServer(t)
	jobType := uniqueType("go.release")
	ids := enqueue(t, server.operator, "acme", jobType, 6)
	var startedMu sync.Mutex
	started := 0
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{Concurrency: 2, Prefetch: 4,
		GracePeriod: 300 * time.Millisecond, ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	reasons := make(chan string, 6)
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		startedMu.Lock()
		started++
		startedMu.Unlock()
		<-ctx.Done()
		reasons <- job.CancelReason()
		return nil, ctx.Err()
	})
	run := start(worker)
	waitFor(t, "two handlers to start and four jobs to wait", 30*time.Second, func() bool {
		startedMu.Lock()
		defer startedMu.Unlock()
		return started == 2 && countState(t, server.operator, jobType, "queued") == 0
	})
	summary := run.stop(t)
	if summary.Outcomes[orch.OutcomeReleased] != 6 || summary.Claimed != 6 {
		t.Errorf("summary %+v, want 6 claimed and 6 released", summary)
	}
	for n := 0; n < 2; n++ {
		if reason := <-reasons; reason != orch.Shutdown {
			t.Errorf("a running handler saw %q, want %q", reason, orch.Shutdown)
		}
	}
	for _, id := range ids {
		job, err := server.operator.ShowJob(context.Background(), id)
		if err != nil || job.State != "queued" || job.Attempts != 0 {
			t.Errorf("job %s after release: %+v %v, want queued with its attempt given back", id, job, err)
		}
	}
}

func TestABackfillCreatedThroughTheGoClientIsWorkedByAGoWorker(t *testing.T) {
	server := liveServer(t)
	ctx := context.Background()
	jobType := uniqueType("go.backfill")
	request := orch.BackfillRequest{Tenant: "acme", Project: "go-sdk", Type: jobType, From: "2026-01-01T00:00:00Z",
		To: "2026-01-01T03:00:00Z", Step: "1h", Payload: map[string]any{"feed": "nvd"}}
	_, err := server.operator.CreateBackfill(ctx, request, "re-ingest after the mirror outage", "")
	if !errors.Is(err, orch.ErrInvalidInput) || !strings.Contains(err.Error(), "ticket") {
		t.Fatalf("a backfill without a ticket: %v, want invalid input naming the ticket", err)
	}
	created, err := server.operator.CreateBackfill(ctx, request, "re-ingest after the mirror outage", "OPS-16")
	if err != nil {
		t.Fatal(err)
	}
	backfillID, _ := created["backfill_id"].(string)
	windows := make(chan string, 3)
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{ClaimWait: time.Second,
		NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		var payload struct {
			Feed   string
			Window struct{ Start, End string }
		}
		if err := job.Decode(&payload); err != nil || payload.Feed != "nvd" {
			return nil, orch.Permanent(fmt.Errorf("payload %s: %v", job.Payload, err))
		}
		windows <- payload.Window.Start
		return nil, nil
	})
	run := start(worker)
	waitFor(t, "the backfill's three jobs to succeed", 30*time.Second, func() bool {
		return countState(t, server.operator, jobType, "succeeded") == 3
	})
	run.stop(t)
	shown, err := server.operator.ShowBackfill(ctx, backfillID)
	if err != nil || shown["backfill_id"] != backfillID {
		t.Fatalf("show backfill %s: %v %v", backfillID, shown, err)
	}
	close(windows)
	starts := map[int]bool{}
	for start := range windows {
		at, err := time.Parse(time.RFC3339Nano, start)
		if err != nil {
			t.Fatalf("window start %q: %v", start, err)
		}
		starts[at.UTC().Hour()] = true
	}
	if len(starts) != 3 || !starts[0] || !starts[1] || !starts[2] {
		t.Errorf("windows start at hours %v, want 0, 1 and 2 of 2026-01-01", starts)
	}
}

func TestALeaseTakenAwayCancelsTheHandlerWithLeaseLostAndIsNeverAcked(t *testing.T) {
	server := liveServer(t)
	ctx := context.Background()
	jobType := uniqueType("go.taken")
	ids := enqueue(t, server.operator, "acme", jobType, 1)
	first := make(chan orch.Lease, 1)
	var mu sync.Mutex
	var calls []string
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{Concurrency: 1, LeaseSeconds: 3,
		ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	mine := orch.Artifact{URI: "file:///go/first.json", MIME: "application/json",
		Digest: "sha256:" + strings.Repeat("01", 32)}
	var once sync.Once
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		isFirst := false
		once.Do(func() { isFirst = true })
		if isFirst { // (a release gives the attempt back: the second run is attempt 1 again)
			first <- job.Lease
			select {
			case <-ctx.Done(): // a heartbeat was refused as stale
			case <-time.After(20 * time.Second):
			}
			mu.Lock()
			calls = append(calls, "first:"+job.CancelReason())
			mu.Unlock()
			return []orch.Artifact{mine}, nil // must never be acked
		}
		mu.Lock()
		calls = append(calls, "second:"+job.CancelReason())
		mu.Unlock()
		return nil, nil
	})
	run := start(worker)
	lease := <-first
	behindItsBack, _ := orch.NewClient(server.url, server.workerToken)
	if _, err := behindItsBack.Release(ctx, lease.JobID, lease.LeaseID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second attempt to succeed", 30*time.Second, func() bool {
		job, err := server.operator.ShowJob(ctx, ids[0])
		return err == nil && job.State == "succeeded"
	})
	summary := run.stop(t)
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(calls, ",") != "first:"+orch.LeaseLost+",second:" {
		t.Errorf("handler calls %v", calls)
	}
	job, _ := server.operator.ShowJob(ctx, ids[0])
	if len(job.Artifacts) != 0 || job.LeaseID == nil || *job.LeaseID == lease.LeaseID {
		t.Errorf("job after the lost lease: lease %v, artifacts %v; want the second lease's ack (no artifacts)",
			job.LeaseID, job.Artifacts)
	}
	if summary.Outcomes[orch.OutcomeLost] != 1 || summary.Outcomes[orch.OutcomeSucceeded] != 1 {
		t.Errorf("outcomes %v, want one lost and one succeeded", summary.Outcomes)
	}
}

// jobLogs reads a job's stored log lines (GET /v1/jobs/{id}/logs) and its state.
func jobLogs(t *testing.T, client *orch.Client, jobID string) ([]map[string]any, string) {
	t.Helper()
	page, err := client.Call(context.Background(), "jobs.logs", map[string]any{"job_id": jobID})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := page["lines"].([]any)
	lines := make([]map[string]any, len(raw))
	for index, line := range raw {
		lines[index], _ = line.(map[string]any)
	}
	state, _ := page["state"].(string)
	return lines, state
}

func storedMessages(lines []map[string]any) []string {
	texts := make([]string, len(lines))
	for index, line := range lines {
		texts[index], _ = line["message"].(string)
	}
	return texts
}

func TestAHandlersLogLinesAreStoredInOrderWithTheirLevelsAndTheJobsFields(t *testing.T) {
	server := liveServer(t)
	ctx := context.Background()
	jobType := uniqueType("go.logs")
	queued, err := server.operator.Enqueue(ctx, orch.JobSpec{Tenant: "acme", Project: "go-sdk", Type: jobType,
		CorrelationID: "corr-go-16"})
	if err != nil {
		t.Fatal(err)
	}
	leaseIDs := make(chan string, 1)
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{Concurrency: 1,
		ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		leaseIDs <- job.LeaseID
		job.Log("fetching feed")
		if err := job.Logf(orch.LevelDebug, "parsed %d advisories", 3); err != nil {
			return nil, err
		}
		_ = job.Logf(orch.LevelWarning, "one advisory had no CVE id")
		return nil, nil
	})
	run := start(worker)
	var lines []map[string]any
	waitFor(t, "the job to succeed with its lines", 30*time.Second, func() bool {
		var state string
		lines, state = jobLogs(t, server.operator, queued.JobID)
		return state == "succeeded"
	})
	run.stop(t)
	leaseID := <-leaseIDs
	if got := strings.Join(storedMessages(lines), "|"); got != "fetching feed|parsed 3 advisories|one advisory had no CVE id" {
		t.Fatalf("stored %q", got)
	}
	for index, line := range lines {
		want := map[string]any{"seq": float64(index + 1), "level": []string{"info", "debug", "warning"}[index],
			"job_id": queued.JobID, "attempt": 1.0, "lease_id": leaseID, "tenant": "acme", "project": "go-sdk",
			"correlation_id": "corr-go-16", "dropped": nil}
		for field, value := range want {
			if line[field] != value {
				t.Errorf("line %d: %s is %v, want %v", index+1, field, line[field], value)
			}
		}
		if at, _ := line["at"].(string); at == "" || line["stored_at"] == nil {
			t.Errorf("line %d: at %v, stored_at %v", index+1, line["at"], line["stored_at"])
		}
	}
}

func TestARunningJobsLinesReachTheServerWithinASecond(t *testing.T) {
	server := liveServer(t)
	jobType := uniqueType("go.logs.live")
	ids := enqueue(t, server.operator, "acme", jobType, 1)
	loggedAt := make(chan time.Time, 1)
	release := make(chan struct{})
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{Concurrency: 1, LeaseSeconds: 30,
		ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		time.Sleep(300 * time.Millisecond) // past the first heartbeat: the line needs a beat of its own
		loggedAt <- time.Now()
		job.Log("still working")
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	})
	run := start(worker)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
		run.stop(t)
	}()
	logged := <-loggedAt
	var state string
	waitFor(t, "the line to be stored", 20*time.Second, func() bool {
		var lines []map[string]any
		lines, state = jobLogs(t, server.operator, ids[0])
		return len(lines) == 1
	})
	if took := time.Since(logged); took > 1500*time.Millisecond || state != "running" {
		t.Errorf("the line was stored %s after it was written, with the job %s; want within about a second while "+
			"it runs", took, state)
	}
	close(release)
	waitFor(t, "the job to succeed", 20*time.Second, func() bool {
		_, state := jobLogs(t, server.operator, ids[0])
		return state == "succeeded"
	})
}

func TestTheLinesOfAStaleLeaseAreNotStored(t *testing.T) {
	server := liveServer(t)
	ctx := context.Background()
	jobType := uniqueType("go.logs.stale")
	ids := enqueue(t, server.operator, "acme", jobType, 1)
	first := make(chan orch.Lease, 1)
	released := make(chan struct{})
	reasons := make(chan string, 2)
	var once sync.Once
	// A 30 s lease beats every 10 s: the beat that finds the lease gone is the one carrying the line.
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{Concurrency: 1, LeaseSeconds: 30,
		ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		isFirst := false
		once.Do(func() { isFirst = true })
		if !isFirst {
			job.Log("second attempt")
			reasons <- "second:" + job.CancelReason()
			return nil, nil
		}
		job.Log("first attempt")
		first <- job.Lease
		<-released
		job.Log("written after the lease was taken away")
		select {
		case <-ctx.Done(): // the heartbeat carrying that line was refused as stale
		case <-time.After(20 * time.Second):
		}
		job.Log("written after the lease was lost")
		reasons <- "first:" + job.CancelReason()
		return nil, nil // never acked
	})
	run := start(worker)
	lease := <-first
	waitFor(t, "the first attempt's line to be stored", 20*time.Second, func() bool {
		lines, _ := jobLogs(t, server.operator, ids[0])
		return len(lines) == 1
	})
	behindItsBack, _ := orch.NewClient(server.url, server.workerToken)
	if _, err := behindItsBack.Release(ctx, lease.JobID, lease.LeaseID); err != nil {
		t.Fatal(err)
	}
	close(released)
	waitFor(t, "the second attempt to succeed", 30*time.Second, func() bool {
		job, err := server.operator.ShowJob(ctx, ids[0])
		return err == nil && job.State == "succeeded"
	})
	summary := run.stop(t)
	if got := <-reasons + "," + <-reasons; got != "first:"+orch.LeaseLost+",second:" {
		t.Errorf("handler ends %s", got)
	}
	lines, _ := jobLogs(t, server.operator, ids[0])
	if got := strings.Join(storedMessages(lines), "|"); got != "first attempt|second attempt" {
		t.Errorf("stored %q; the lost lease's lines must not be", got)
	}
	if summary.Outcomes[orch.OutcomeLost] != 1 || summary.Outcomes[orch.OutcomeSucceeded] != 1 {
		t.Errorf("outcomes %v, want one lost and one succeeded", summary.Outcomes)
	}
}

func TestAHandlerLoggingPastTheWorkersBufferStoresTheNewestLinesAfterAMarker(t *testing.T) {
	server := liveServer(t)
	jobType := uniqueType("go.logs.cap")
	ids := enqueue(t, server.operator, "acme", jobType, 1)
	worker, _ := orch.NewWorker(server.url, server.workerToken, orch.WorkerConfig{Concurrency: 1,
		ClaimWait: time.Second, NoSignals: true, Logger: quietLogger(t)})
	_ = worker.Handle(jobType, func(ctx context.Context, job *orch.Job) ([]orch.Artifact, error) {
		for n := 0; n < orch.MaxLogLines+50; n++ { // faster than any heartbeat: the ack carries what is kept
			job.Log(fmt.Sprintf("line %d", n))
		}
		job.Log(strings.Repeat("x", orch.MaxLogLineChars+10))
		return nil, nil
	})
	run := start(worker)
	var lines []map[string]any
	waitFor(t, "the job to succeed", 30*time.Second, func() bool {
		var state string
		lines, state = jobLogs(t, server.operator, ids[0])
		return state == "succeeded"
	})
	run.stop(t)
	messages := storedMessages(lines)
	if len(lines) != orch.MaxLogLines {
		t.Fatalf("%d lines stored, want %d", len(lines), orch.MaxLogLines)
	}
	if lines[0]["level"] != "warning" || !strings.Contains(messages[0], "52 lines dropped by the worker") {
		t.Errorf("marker %v", lines[0])
	}
	if messages[1] != "line 52" || messages[len(messages)-2] != fmt.Sprintf("line %d", orch.MaxLogLines+49) {
		t.Errorf("kept %q ... %q, want the newest", messages[1], messages[len(messages)-2])
	}
	long := messages[len(messages)-1]
	if !strings.HasSuffix(long, "…") || len([]rune(long)) != orch.MaxLogLineChars {
		t.Errorf("the long line has %d characters, want %d ending in …", len([]rune(long)), orch.MaxLogLineChars)
	}
}
