package orch

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAProblemAnswerBecomesAnErrorOfItsKindAndFamily(t *testing.T) {
	err := problemError("jobs.ack", 409, map[string]any{"type": ProblemBase + "stale-lease", "title": "stale lease",
		"status": 409.0, "detail": "lease x no longer holds job y", "exit_code": 3.0})
	if !errors.Is(err, ErrStaleLease) || !errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
		t.Fatalf("%v: want stale lease within conflict, not not-found", err)
	}
	if err.ExitCode != 3 || err.Status != 409 || !err.Stale() {
		t.Errorf("%+v", err)
	}
	notFound := problemError("jobs.ack", 404, map[string]any{"type": ProblemBase + "not-found", "index": 2.0,
		"field": "job_id"})
	if !errors.Is(notFound, ErrInvalidInput) || notFound.ExitCode != 1 || *notFound.Index != 2 ||
		notFound.Field != "job_id" {
		t.Errorf("%+v", notFound)
	}
	forbidden := problemError("jobs.claim", 403, map[string]any{"type": ProblemBase + "forbidden"})
	if !errors.Is(forbidden, ErrNotAuthorized) || forbidden.ExitCode != 7 || forbidden.Stale() {
		t.Errorf("%+v", forbidden)
	}
	busy := problemError("jobs.claim", 503, map[string]any{"type": ProblemBase + "too-many-connections"})
	if !errors.Is(busy, ErrLedgerBusy) || !isRetryable(busy) || busy.ExitCode != 6 {
		t.Errorf("%+v: a 503 is safe to retry", busy)
	}
	if ExitCodeOf(forbidden) != 7 || ExitCodeOf(nil) != 0 || ExitCodeOf(errors.New("x")) != 1 {
		t.Error("ExitCodeOf")
	}
}

func TestAnAckManyItemErrorIsNamedByItsPythonClass(t *testing.T) {
	err := resultError("jobs.ack_many", map[string]any{"type": "StaleLease", "message": "gone", "exit_code": 3.0})
	if !errors.Is(err, ErrStaleLease) || !err.Stale() || err.ExitCode != 3 {
		t.Errorf("%+v", err)
	}
	other := resultError("jobs.ack_many", map[string]any{"type": "InvalidInput", "message": "bad artifact"})
	if other.Stale() || !errors.Is(other, ErrInvalidInput) {
		t.Errorf("%+v", other)
	}
}

func TestBackoffStaysWithinItsCap(t *testing.T) {
	for attempt := 1; attempt < 100; attempt++ {
		pause := workerBackoff(attempt)
		if pause <= 0 || pause > seconds(RetryCapSeconds) {
			t.Fatalf("attempt %d: pause %s outside (0, %gs]", attempt, pause, RetryCapSeconds)
		}
	}
	if pause := backoff(1, 100*time.Millisecond, time.Second); pause < 50*time.Millisecond || pause > 100*time.Millisecond {
		t.Errorf("first pause %s", pause)
	}
}

func TestHeartbeatsFollowTheLeasesRetryHintAndStartBeforeTheFirstExpiry(t *testing.T) {
	tracker := newLeaseTracker(30, time.Second, func() {}, t.Logf)
	hinted := tracker.track(Lease{JobID: "j1", LeaseID: "l1", RetryHint: RetryHint{HeartbeatEverySeconds: 4}}, nil, "w")
	if hinted.interval != 4*time.Second {
		t.Errorf("interval %s, want the hint's 4s", hinted.interval)
	}
	plain := tracker.track(Lease{JobID: "j2", LeaseID: "l2"}, nil, "w")
	if plain.interval != 10*time.Second || !plain.nextBeat.Before(plain.claimedAt.Add(30*time.Second)) {
		t.Errorf("interval %s, first beat %s after the claim", plain.interval, plain.nextBeat.Sub(plain.claimedAt))
	}
	tracker.start(plain)
	if first := plain.nextBeat.Sub(plain.started); first != seconds(FirstBeatSeconds) {
		t.Errorf("first beat %s after the start, want %gs", first, FirstBeatSeconds)
	}
}

func TestAHandlersEndBecomesItsOutcome(t *testing.T) {
	job := &Job{ID: "j"}
	ctx, cancel := context.WithCancel(context.Background())
	cases := []struct {
		handler Handler
		kind    string
		noRetry bool
	}{
		{func(context.Context, *Job) ([]Artifact, error) { return nil, nil }, "ack", false},
		{func(context.Context, *Job) ([]Artifact, error) { return nil, Permanent(errors.New("bad")) }, "fail", true},
		{func(context.Context, *Job) ([]Artifact, error) { return nil, errors.New("flaky") }, "fail", false},
		{func(context.Context, *Job) ([]Artifact, error) { panic("bug") }, "fail", false},
	}
	for index, each := range cases {
		if result := runHandler(each.handler, ctx, job); result.kind != each.kind || result.noRetry != each.noRetry {
			t.Errorf("case %d: %+v", index, result)
		}
	}
	later := runHandler(func(context.Context, *Job) ([]Artifact, error) {
		return nil, RetryAfter(errors.New("later"), 2*time.Second)
	}, ctx, job)
	if later.retryAfter == nil || *later.retryAfter != 2 {
		t.Errorf("%+v", later)
	}
	cancel()
	stopped := runHandler(func(ctx context.Context, _ *Job) ([]Artifact, error) { return nil, ctx.Err() }, ctx, job)
	if stopped.kind != "stopped" {
		t.Errorf("%+v", stopped)
	}
}

func TestEveryWorkerRouteIsInTheRouteTable(t *testing.T) {
	for _, name := range []string{"jobs.claim", "jobs.heartbeat", "jobs.ack", "jobs.ack_many", "jobs.fail",
		"jobs.release", "jobs.enqueue", "jobs.enqueue_batch", "jobs.cancel", "backfills.create"} {
		if RouteByName(name) == nil {
			t.Errorf("no route %s", name)
		}
	}
}
