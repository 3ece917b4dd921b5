package orch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
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

// A settable clock for the lease tracker's log rules; answers are handed in as the transport would.
type settableClock struct{ at time.Time }

func (c *settableClock) now() time.Time          { return c.at }
func (c *settableClock) advance(d time.Duration) { c.at = c.at.Add(d) }

func messages(lines []LogLine) []string {
	texts := make([]string, len(lines))
	for index, line := range lines {
		texts[index] = line.Message
	}
	return texts
}

// trackedForLogs: a running attempt whose first heartbeat (sent before it logged anything) was answered.
func trackedForLogs(t *testing.T) (*leaseTracker, *tracked, *settableClock) {
	t.Helper()
	clock := &settableClock{at: time.Unix(1000, 0)}
	tracker := newLeaseTracker(30, 250*time.Millisecond, func() {}, t.Logf)
	tracker.now = clock.now
	entry := tracker.track(Lease{JobID: "job-1", LeaseID: "lease-1", Attempt: 1, MaxAttempts: 3, Tenant: "acme",
		Project: "p", Type: "work", Queue: "default"}, nil, "w")
	if !tracker.start(entry) {
		t.Fatal("not started")
	}
	if beats, _ := tracker.dueBeats(); len(beats) != 0 {
		t.Fatalf("a beat at once: %+v", beats)
	}
	clock.advance(250 * time.Millisecond) // the first beat (0.2 s) goes, with no line yet
	beats, _ := tracker.dueBeats()
	if len(beats) != 1 || !tracker.beatWanted(beats[0]) || beats[0].logs != nil {
		t.Fatalf("first beat %+v", beats)
	}
	tracker.beatSent(beats[0], HeartbeatAnswer{State: "running"}, nil)
	return tracker, entry, clock
}

func TestALoggedLineMakesAHeartbeatDueWithinHalfASecondThatCarriesIt(t *testing.T) {
	tracker, entry, clock := trackedForLogs(t)
	if _, wait := tracker.dueBeats(); wait < 9*time.Second {
		t.Fatalf("nothing logged, yet the next beat is due in %s (want lease/3)", wait)
	}
	entry.job.Log("hello")
	beats, wait := tracker.dueBeats()
	if len(beats) != 0 || wait != seconds(LogFlushSeconds) {
		t.Fatalf("beats %d, next in %s; want none yet, one in %gs", len(beats), wait, LogFlushSeconds)
	}
	clock.advance(seconds(LogFlushSeconds))
	beats, _ = tracker.dueBeats()
	if len(beats) != 1 || !tracker.beatWanted(beats[0]) {
		t.Fatalf("beats %+v", beats)
	}
	if got := messages(beats[0].logs); len(got) != 1 || got[0] != "hello" || beats[0].logs[0].Level != LevelInfo ||
		beats[0].logs[0].At == "" {
		t.Errorf("the beat carries %+v", beats[0].logs)
	}
}

func TestTheReportTakesBackTheLinesOfABeatNotSentYetAndKeepsTheirOrder(t *testing.T) {
	tracker, entry, clock := trackedForLogs(t)
	entry.job.Log("one")
	clock.advance(500 * time.Millisecond)
	beats, _ := tracker.dueBeats() // taken, not sent yet (queued behind other requests)
	if len(beats) != 1 || len(beats[0].logs) != 1 {
		t.Fatalf("beats %+v", beats)
	}
	entry.job.Log("two")
	if verdict := tracker.handlerReturned(entry); verdict != "" {
		t.Fatal(verdict)
	}
	if got := messages(tracker.finalLogs(entry)); strings.Join(got, ",") != "one,two" {
		t.Errorf("the report carries %v, want one,two", got)
	}
	if !tracker.beatWanted(beats[0]) || beats[0].logs != nil {
		t.Errorf("the beat still carries %+v; it should go without them", beats[0].logs)
	}
	entry.job.Log("after the handler returned")
	if got := tracker.finalLogs(entry); len(got) != 0 {
		t.Errorf("a line written after the handler returned is kept: %v", messages(got))
	}
}

func TestAFailedHeartbeatGivesItsLinesBackAndARefusedOneDropsThem(t *testing.T) {
	tracker, entry, clock := trackedForLogs(t)
	entry.job.Log("kept")
	clock.advance(500 * time.Millisecond)
	beats, _ := tracker.dueBeats()
	if len(beats) != 1 || !tracker.beatWanted(beats[0]) {
		t.Fatalf("beats %+v", beats)
	}
	tracker.beatSent(beats[0], HeartbeatAnswer{}, &Error{Kind: KindUnavailable, Detail: "server away"})
	clock.advance(seconds(RetryBeatSeconds))
	again, _ := tracker.dueBeats()
	if len(again) != 1 || !tracker.beatWanted(again[0]) || strings.Join(messages(again[0].logs), ",") != "kept" {
		t.Fatalf("the beat after the failed one: %+v", again)
	}
	stale := problemError("jobs.heartbeat", 409, map[string]any{"type": ProblemBase + "stale-lease"})
	tracker.beatSent(again[0], HeartbeatAnswer{}, stale)
	if entry.job.CancelReason() != LeaseLost {
		t.Fatalf("cancel reason %q, want %q", entry.job.CancelReason(), LeaseLost)
	}
	entry.job.Log("after the lease was lost")
	if got := tracker.finalLogs(entry); len(got) != 0 {
		t.Errorf("lines of a lost attempt are kept: %v", messages(got))
	}
}

func TestAHandlerLoggingFasterThanAReportCarriesKeepsTheNewestLinesAfterAMarker(t *testing.T) {
	tracker, entry, _ := trackedForLogs(t)
	for n := 0; n < MaxLogLines+50; n++ {
		entry.job.Log(fmt.Sprintf("line %d", n))
	}
	if err := entry.job.Logf(LevelError, "%s", strings.Repeat("é", MaxLogLineChars+10)); err != nil {
		t.Fatal(err)
	}
	if err := entry.job.Logf("loud", "not a level"); err == nil || !strings.Contains(err.Error(), "loud") {
		t.Errorf("an unknown level: %v", err)
	}
	lines := tracker.finalLogs(entry)
	if len(lines) != MaxLogLines {
		t.Fatalf("%d lines, want %d", len(lines), MaxLogLines)
	}
	if lines[0].Level != LevelWarning || !strings.Contains(lines[0].Message, "52 lines dropped by the worker") {
		t.Errorf("marker %+v", lines[0])
	}
	if lines[1].Message != "line 52" || lines[len(lines)-2].Message != fmt.Sprintf("line %d", MaxLogLines+49) {
		t.Errorf("kept %q ... %q", lines[1].Message, lines[len(lines)-2].Message)
	}
	last := lines[len(lines)-1]
	if last.Level != LevelError || !strings.HasSuffix(last.Message, "…") ||
		utf8.RuneCountInString(last.Message) != MaxLogLineChars {
		t.Errorf("the long line: level %s, %d characters", last.Level, utf8.RuneCountInString(last.Message))
	}
	if cut := logLine(LevelInfo, "bad \xff byte").Message; cut != "bad \uFFFD byte" {
		t.Errorf("a byte that is not UTF-8 becomes %q", cut)
	}
}
