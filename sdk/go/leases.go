package orch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// The lease tracker: the rules the Python SDK's LeaseTracker (airgap_orch/worker/leases.py) keeps, for the attempts
// one Go worker holds.
//
//   - Attempts are tracked by lease id, not job id: a retry due at once can bring a job back while the last
//     attempt's report is in flight.
//   - Phases: waiting (claimed, no handler yet) -> running -> reporting (the handler returned; its slot is free)
//     -> done.
//   - Heartbeats: a waiting job is beaten once it has waited one heartbeat interval; a running job's first beat (it
//     moves the job to running) FirstBeatSeconds after its handler starts (sooner if the interval is shorter), then
//     one every interval: the lease's retry hint (heartbeat_every_seconds), else lease/HeartbeatsPerLease. Progress
//     rides along at most every ProgressInterval. A beat that failed goes again within RetryBeatSeconds.
//   - A beat answering cancel_requested cancels the handler's context (reason CancelRequested); a handler that
//     ignores it for a lease period is beaten no more, so its lease lapses and the server ends the job canceled.
//   - A beat refused as stale while the handler has the job means another worker may own it: the context is
//     cancelled (reason LeaseLost) and nothing is reported for the attempt.
//   - Job logs (Job.Log, Job.Logf): lines wait here and ride on the next heartbeat, which falls due LogFlushSeconds
//     after the oldest waiting line at the latest, or on the ack or fail, which carries every line not sent yet
//     (finalLogs: it takes back the lines of a beat not sent yet, and waits for one on the wire, so lines are stored
//     in the order they were written). A beat that failed gives its lines back for the next one; a refused (stale)
//     one drops them with the attempt. At most MaxLogLines wait per attempt: past that the oldest go, and a marker
//     line says how many. Lines written once the attempt is over (reported, lost or given back) are not stored.

type phase int

const (
	waiting phase = iota
	running
	reporting
	done
)

// Handler runs one attempt of a job. Return artifacts (or nil) to ack; an error to fail: a RetryableError (see
// Retryable) is retried after its delay, a PermanentError (see Permanent) ends the job failed, any other error is
// retried with the orchestrator's backoff while attempts remain. ctx is cancelled when the job should stop (an
// operator cancelled it, its lease was lost, or the worker is shutting down: job.CancelReason() says which);
// returning ctx.Err() then reports the job canceled when cancellation was requested.
type Handler func(ctx context.Context, job *Job) ([]Artifact, error)

// Job is one attempt of one job, as handed to a handler. Safe for concurrent use.
type Job struct {
	ID            string
	LeaseID       string
	Attempt       int
	MaxAttempts   int
	Payload       json.RawMessage
	Tenant        string
	Project       string
	Type          string
	Queue         string
	CorrelationID string
	Keys          []string
	WorkerID      string
	Lease         Lease // the claim's answer, whole

	tracker     *leaseTracker
	entry       *tracked
	running     chan struct{}
	runningOnce sync.Once
	mu          sync.Mutex
	reason      string
	cancel      context.CancelFunc
}

// Decode unmarshals the job's payload into v.
func (j *Job) Decode(v any) error { return json.Unmarshal(j.Payload, v) }

// Progress records progress (0..1) and an optional message; it is sent with the next heartbeat, rate-limited.
func (j *Job) Progress(fraction float64, message string) error {
	if !(fraction >= 0 && fraction <= 1) {
		return fmt.Errorf("progress must be a number between 0 and 1, not %v", fraction)
	}
	if utf8.RuneCountInString(message) > MaxMessageChars {
		message = string([]rune(message)[:MaxMessageChars])
	}
	j.tracker.noteProgress(j.entry, fraction, message)
	return nil
}

// Log writes a line to the job's log at LevelInfo (README "Job logs"): it is kept in the worker and sent with the
// next heartbeat (one goes within a second of the line) or with the job's ack or fail, never in a request of its
// own. The orchestrator stamps it with the job, attempt, lease, tenant, project, correlation id and a sequence
// number. A line longer than MaxLogLineChars is cut (ending in "…"); never log secrets. Lines written once the
// attempt is over (reported, lost or given back) are not stored.
func (j *Job) Log(message string) { j.tracker.noteLog(j.entry, logLine(LevelInfo, message)) }

// Logf writes a line formatted as fmt.Sprintf does at level (LevelDebug, LevelInfo, LevelWarning or LevelError),
// as Log does. Another level is an error, and nothing is written.
func (j *Job) Logf(level, format string, args ...any) error {
	if !logLevels[level] {
		return fmt.Errorf("log level must be one of %s, %s, %s or %s, not %q", LevelDebug, LevelInfo, LevelWarning,
			LevelError, level)
	}
	j.tracker.noteLog(j.entry, logLine(level, fmt.Sprintf(format, args...)))
	return nil
}

var logLevels = map[string]bool{LevelDebug: true, LevelInfo: true, LevelWarning: true, LevelError: true}

// logLine is a line as the server takes it: UTF-8 (a byte that is not becomes U+FFFD), cut to MaxLogLineChars.
func logLine(level, message string) LogLine {
	message = strings.ToValidUTF8(message, "\uFFFD")
	if utf8.RuneCountInString(message) > MaxLogLineChars {
		message = string([]rune(message)[:MaxLogLineChars-1]) + "…"
	}
	return LogLine{Message: message, Level: level, At: isoTime(time.Now())}
}

// isoTime is the Python side's clock.iso: UTC, microseconds, "Z".
func isoTime(moment time.Time) string { return moment.UTC().Format("2006-01-02T15:04:05.000000Z") }

// withMarker: the lines with, when the worker dropped some (it keeps at most MaxLogLines waiting), a marker line
// first.
func withMarker(lines []LogLine, dropped int) []LogLine {
	if dropped == 0 {
		return append([]LogLine(nil), lines...)
	}
	marker := LogLine{Message: fmt.Sprintf("... %d lines dropped by the worker: the handler logged faster than %d "+
		"lines per report", dropped, MaxLogLines), Level: LevelWarning, At: isoTime(time.Now())}
	return append([]LogLine{marker}, lines...)
}

// Running is closed once a heartbeat for the job was answered: the orchestrator shows it running.
func (j *Job) Running() <-chan struct{} { return j.running }

// CancelReason says why the handler's context was cancelled: CancelRequested, LeaseLost or Shutdown ("" while
// it was not).
func (j *Job) CancelReason() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.reason
}

func (j *Job) stop(reason string) {
	j.mu.Lock()
	if j.reason == "" {
		j.reason = reason
	}
	j.mu.Unlock()
	j.cancel()
}

// RetryableError is a transient failure: the job is tried again (after After, when HasAfter) while attempts remain.
type RetryableError struct {
	Err      error
	After    time.Duration
	HasAfter bool
}

func (e *RetryableError) Error() string { return e.Err.Error() }
func (e *RetryableError) Unwrap() error { return e.Err }

// Retryable marks err as transient; the orchestrator's backoff decides when the job runs again.
func Retryable(err error) error { return &RetryableError{Err: err} }

// RetryAfter marks err as transient and asks for the next attempt after delay.
func RetryAfter(err error, delay time.Duration) error {
	return &RetryableError{Err: err, After: delay, HasAfter: true}
}

// PermanentError is a failure retrying cannot fix (bad input): the job ends failed.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as one retrying cannot fix.
func Permanent(err error) error { return &PermanentError{Err: err} }

// outcome is how one attempt's handler ended, before it is reported.
type outcome struct {
	kind       string // "ack", "fail" or "stopped"
	artifacts  []Artifact
	err        string
	retryAfter *float64
	noRetry    bool
}

// FinishedJob is one attempt a worker is done with (passed to WorkerConfig.OnFinished).
type FinishedJob struct {
	JobID   string
	Type    string
	Tenant  string
	Attempt int
	Outcome string // a job state (OutcomeSucceeded, OutcomeRetry, ...), OutcomeLost, OutcomeReleased or OutcomeError
	Seconds float64
	Error   string
}

type tracked struct {
	lease        Lease
	handler      Handler
	job          *Job
	ctx          context.Context
	phase        phase
	lost         bool
	released     bool
	beating      bool
	lapsing      bool
	claimedAt    time.Time
	started      time.Time
	lastBeat     time.Time
	nextBeat     time.Time
	retryAt      time.Time
	interval     time.Duration
	pending      *progressNote
	cancelSeenAt time.Time
	logs         []LogLine // log lines not sent yet, oldest first
	logsSince    time.Time // when the oldest of them was written (zero: none wait)
	logsDropped  int       // lines dropped from logs (it was full) since the last report took them
	logsBeat     *beat     // the beat carrying lines, until it is answered
	logsSending  bool      // ... and it is on the wire (its lines can no longer be taken back)
}

type progressNote struct {
	fraction float64
	message  string
}

type beat struct {
	entry    *tracked
	takenAt  time.Time
	progress *float64
	message  string
	logs     []LogLine // may be taken back by the job's report until beatWanted is called
}

type leaseTracker struct {
	leaseSeconds     float64
	progressInterval time.Duration
	wake             func()
	mu               sync.Mutex
	changed          chan struct{} // closed (and replaced) whenever an attempt changes phase
	jobs             map[string]*tracked
	handling         int
	reporting        int
	logf             func(format string, args ...any)
	now              func() time.Time // time.Now unless a test sets its own clock
}

func newLeaseTracker(leaseSeconds float64, progressInterval time.Duration, wake func(),
	logf func(string, ...any)) *leaseTracker {
	return &leaseTracker{leaseSeconds: leaseSeconds, progressInterval: progressInterval, wake: wake,
		changed: make(chan struct{}), jobs: map[string]*tracked{}, logf: logf, now: time.Now}
}

// changes returns a channel closed at the next change.
func (t *leaseTracker) changes() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

func (t *leaseTracker) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *leaseTracker) counts() (handling, reportingNow int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.handling, t.reporting
}

func (t *leaseTracker) inPhases(phases ...phase) []*tracked {
	t.mu.Lock()
	defer t.mu.Unlock()
	var found []*tracked
	for _, entry := range t.jobs {
		for _, wanted := range phases {
			if entry.phase == wanted {
				found = append(found, entry)
				break
			}
		}
	}
	return found
}

// interval is the lease's heartbeat interval: the server's hint, else lease/HeartbeatsPerLease.
func (t *leaseTracker) intervalFor(lease Lease) time.Duration {
	hint := lease.RetryHint.HeartbeatEverySeconds
	if hint > 0 && hint < t.leaseSeconds {
		return seconds(hint)
	}
	return seconds(t.leaseSeconds / HeartbeatsPerLease)
}

func (t *leaseTracker) track(lease Lease, handler Handler, workerID string) *tracked {
	now := t.now()
	ctx, cancel := context.WithCancel(context.Background())
	correlation := ""
	if lease.CorrelationID != nil {
		correlation = *lease.CorrelationID
	}
	job := &Job{ID: lease.JobID, LeaseID: lease.LeaseID, Attempt: lease.Attempt, MaxAttempts: lease.MaxAttempts,
		Payload: lease.Payload, Tenant: lease.Tenant, Project: lease.Project, Type: lease.Type, Queue: lease.Queue,
		CorrelationID: correlation, Keys: lease.Keys, WorkerID: workerID, Lease: lease, tracker: t,
		running: make(chan struct{}), cancel: cancel}
	interval := t.intervalFor(lease)
	entry := &tracked{lease: lease, handler: handler, job: job, ctx: ctx, phase: waiting, claimedAt: now,
		started: now, lastBeat: now, nextBeat: now.Add(interval), interval: interval}
	job.entry = entry
	t.mu.Lock()
	t.jobs[lease.LeaseID] = entry
	t.handling++
	t.notifyLocked()
	t.mu.Unlock()
	return entry
}

func (t *leaseTracker) noteProgress(entry *tracked, fraction float64, message string) {
	t.mu.Lock()
	entry.pending = &progressNote{fraction, message}
	t.mu.Unlock()
	t.wake()
}

func (t *leaseTracker) noteLog(entry *tracked, line LogLine) {
	t.mu.Lock()
	if (entry.phase != waiting && entry.phase != running) || entry.lost || entry.released {
		t.mu.Unlock()
		return // the attempt is over: its lines have gone with its report, or are not ours to store
	}
	if len(entry.logs) >= MaxLogLines-1 { // room for the marker line
		entry.logs = entry.logs[:copy(entry.logs, entry.logs[1:])]
		entry.logsDropped++
	}
	if len(entry.logs) == 0 {
		entry.logsSince = t.now()
	}
	entry.logs = append(entry.logs, line)
	t.mu.Unlock()
	t.wake()
}

// finalLogs: the log lines the attempt's report carries: every line not stored yet, oldest first (at most
// MaxLogLines, a marker line first when some were dropped). Lines of a beat not yet sent are taken back from it; a
// beat on the wire is waited for (up to one heartbeat interval), so its lines are stored before the report's.
func (t *leaseTracker) finalLogs(entry *tracked) []LogLine {
	deadline := time.Now().Add(entry.interval)
	t.mu.Lock()
	for entry.logsBeat != nil && entry.logsSending {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			break
		}
		changed := t.changed
		t.mu.Unlock()
		select {
		case <-changed:
		case <-time.After(minDuration(remaining, 100*time.Millisecond)):
		}
		t.mu.Lock()
	}
	lines, dropped := append([]LogLine(nil), entry.logs...), entry.logsDropped
	if sent := entry.logsBeat; sent != nil && !entry.logsSending && len(sent.logs) > 0 {
		lines = append(sent.logs, lines...)
		sent.logs = nil
		entry.logsBeat = nil
	}
	entry.logs, entry.logsSince, entry.logsDropped = nil, time.Time{}, 0
	t.mu.Unlock()
	if over := len(lines) - (MaxLogLines - 1); over > 0 {
		dropped += over
		lines = lines[over:]
	}
	return withMarker(lines, dropped)
}

// start: a handler goroutine takes the attempt; false when it was given back while it waited.
func (t *leaseTracker) start(entry *tracked) bool {
	now := t.now()
	t.mu.Lock()
	if entry.phase != waiting || entry.released {
		t.mu.Unlock()
		return false
	}
	t.moveLocked(entry, running)
	entry.started, entry.lastBeat = now, now
	entry.nextBeat = now.Add(minDuration(seconds(FirstBeatSeconds), entry.interval))
	t.mu.Unlock()
	t.wake()
	return true
}

// run calls the handler (not if the attempt should already stop) and says how it ended.
func (t *leaseTracker) run(entry *tracked) outcome {
	if entry.ctx.Err() != nil {
		return outcome{kind: "stopped", err: fmt.Sprintf("job %s stopped before it started: %s", entry.job.ID,
			entry.job.CancelReason())}
	}
	return runHandler(entry.handler, entry.ctx, entry.job)
}

// runHandler turns a handler's return, error or panic into an outcome: the contract both SDKs keep.
func runHandler(handler Handler, ctx context.Context, job *Job) (result outcome) {
	defer func() {
		if recovered := recover(); recovered != nil { // a handler bug is that attempt's failure, not the worker's
			result = outcome{kind: "fail", err: clipError(fmt.Sprintf("panic: %v", recovered))}
		}
	}()
	artifacts, err := handler(ctx, job)
	if err == nil {
		return outcome{kind: "ack", artifacts: artifacts}
	}
	var retryable *RetryableError
	var permanent *PermanentError
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return outcome{kind: "stopped", err: fmt.Sprintf("job %s stopped: %s", job.ID, job.CancelReason())}
	case errors.As(err, &permanent):
		return outcome{kind: "fail", err: clipError(err.Error()), noRetry: true}
	case errors.As(err, &retryable):
		result := outcome{kind: "fail", err: clipError(err.Error())}
		if retryable.HasAfter {
			after := retryable.After.Seconds()
			if after < 0 {
				after = 0
			}
			if after > MaxRetryAfterSeconds {
				after = MaxRetryAfterSeconds
			}
			result.retryAfter = &after
		}
		return result
	default:
		return outcome{kind: "fail", err: clipError(err.Error())}
	}
}

func clipError(text string) string {
	if text == "" {
		text = "handler failed"
	}
	if utf8.RuneCountInString(text) <= MaxErrorChars {
		return text
	}
	return string([]rune(text)[:MaxErrorChars-1]) + "…"
}

// handlerReturned frees the slot. "": report the outcome; OutcomeLost or OutcomeReleased: nothing to report.
func (t *leaseTracker) handlerReturned(entry *tracked) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if entry.released || entry.lost {
		t.moveLocked(entry, done)
		if entry.released {
			return OutcomeReleased
		}
		return OutcomeLost
	}
	t.moveLocked(entry, reporting)
	entry.nextBeat = entry.lastBeat.Add(entry.interval) // only to keep the lease while the report waits
	return ""
}

// release marks the attempt given back on shutdown; true when jobs.release should be sent for it.
func (t *leaseTracker) release(entry *tracked) bool {
	t.mu.Lock()
	if entry.released || entry.lost || (entry.phase != waiting && entry.phase != running) {
		t.mu.Unlock()
		return false
	}
	entry.released = true
	if entry.phase == waiting {
		t.moveLocked(entry, done)
	}
	t.notifyLocked()
	t.mu.Unlock()
	entry.job.stop(Shutdown)
	return true
}

// finish: the report was answered or given up. ok is false when the attempt was finished already.
func (t *leaseTracker) finish(entry *tracked, result, errText string) (FinishedJob, bool) {
	t.mu.Lock()
	if entry.phase == done {
		t.mu.Unlock()
		return FinishedJob{}, false
	}
	if result == OutcomeLost {
		entry.lost = true
	}
	t.moveLocked(entry, done)
	t.mu.Unlock()
	return t.result(entry, result, errText), true
}

func (t *leaseTracker) result(entry *tracked, result, errText string) FinishedJob {
	elapsed := t.now().Sub(entry.claimedAt).Seconds()
	return FinishedJob{JobID: entry.lease.JobID, Type: entry.lease.Type, Tenant: entry.lease.Tenant,
		Attempt: entry.lease.Attempt, Outcome: result, Seconds: float64(int64(elapsed*1000)) / 1000, Error: errText}
}

func (t *leaseTracker) moveLocked(entry *tracked, to phase) {
	from := entry.phase
	entry.phase = to
	handlingPhase := func(p phase) int {
		if p == waiting || p == running {
			return 1
		}
		return 0
	}
	reportingPhase := func(p phase) int {
		if p == reporting {
			return 1
		}
		return 0
	}
	t.handling += handlingPhase(to) - handlingPhase(from)
	t.reporting += reportingPhase(to) - reportingPhase(from)
	if to == done {
		if t.jobs[entry.lease.LeaseID] == entry {
			delete(t.jobs, entry.lease.LeaseID)
		}
		entry.job.cancel() // the attempt is over: goroutines its handler left behind see ctx done
	}
	t.notifyLocked()
}

// dueBeats takes every heartbeat due now (an attempt has at most one in flight) and says how long until the next
// one falls due.
func (t *leaseTracker) dueBeats() ([]*beat, time.Duration) {
	now := t.now()
	wakeAt := now.Add(seconds(t.leaseSeconds / HeartbeatsPerLease))
	var due []*beat
	t.mu.Lock()
	for _, entry := range t.jobs {
		at, ok := t.beatDueAtLocked(entry, now)
		if !ok {
			continue
		}
		if at.After(now) {
			if at.Before(wakeAt) {
				wakeAt = at
			}
			continue
		}
		next := &beat{entry: entry, takenAt: now}
		if entry.pending != nil && entry.phase == running {
			fraction := entry.pending.fraction
			next.progress, next.message = &fraction, entry.pending.message
		}
		entry.pending = nil
		entry.beating = true
		if len(entry.logs) > 0 && entry.phase == running { // once the handler returned, its report carries them
			next.logs = withMarker(entry.logs, entry.logsDropped)
			entry.logs, entry.logsSince, entry.logsDropped = nil, time.Time{}, 0
			entry.logsBeat, entry.logsSending = next, false
		}
		due = append(due, next)
	}
	t.mu.Unlock()
	wait := wakeAt.Sub(now)
	if wait < 0 {
		wait = 0
	}
	return due, wait
}

func (t *leaseTracker) beatDueAtLocked(entry *tracked, now time.Time) (time.Time, bool) {
	if entry.lost || entry.released || entry.beating || entry.lapsing || entry.phase == done {
		return time.Time{}, false
	}
	if !entry.cancelSeenAt.IsZero() && now.Sub(entry.cancelSeenAt) > seconds(t.leaseSeconds) {
		entry.lapsing = true
		t.logf("job %s ignored its cancel request for %.0fs; letting its lease lapse", entry.lease.JobID,
			now.Sub(entry.cancelSeenAt).Seconds())
		return time.Time{}, false
	}
	at := entry.nextBeat
	if entry.pending != nil && entry.phase == running {
		progressAt := latest(entry.lastBeat.Add(t.progressInterval),
			entry.started.Add(seconds(FirstBeatSeconds)), entry.retryAt)
		if progressAt.Before(at) {
			at = progressAt
		}
	}
	if !entry.logsSince.IsZero() && entry.phase == running {
		if logsAt := latest(entry.logsSince.Add(seconds(LogFlushSeconds)), entry.retryAt); logsAt.Before(at) {
			at = logsAt
		}
	}
	return at, true
}

func latest(times ...time.Time) time.Time {
	result := times[0]
	for _, value := range times[1:] {
		if value.After(result) {
			result = value
		}
	}
	return result
}

// beatWanted: whether a beat that waited to be sent is still wanted (else it is dropped).
func (t *leaseTracker) beatWanted(b *beat) bool {
	t.mu.Lock()
	if b.entry.phase != done && !b.entry.released {
		if len(b.logs) > 0 && b.entry.logsBeat == b {
			b.entry.logsSending = true // from now on the report waits for this beat's answer
		}
		t.mu.Unlock()
		return true
	}
	b.entry.beating = false
	t.linesAnsweredLocked(b)
	t.mu.Unlock()
	t.wake()
	return false
}

// beatSent takes a heartbeat's answer or error.
func (t *leaseTracker) beatSent(b *beat, answer HeartbeatAnswer, err error) {
	entry := b.entry
	var refusal *Error
	switch {
	case errors.As(err, &refusal) && refusal.Stale():
		t.mu.Lock()
		t.linesAnsweredLocked(b) // its lines are dropped with the attempt
		entry.beating = false
		entry.nextBeat = t.now().Add(entry.interval)
		lose := (entry.phase == waiting || entry.phase == running) && !entry.released
		if lose {
			entry.lost = true
		}
		t.mu.Unlock()
		if lose {
			t.logf("job %s: %v", entry.lease.JobID, err)
			entry.job.stop(LeaseLost)
		}
	case err != nil:
		t.logf("heartbeat for job %s failed: %v", entry.lease.JobID, err)
		t.mu.Lock()
		entry.beating = false
		entry.retryAt = t.now().Add(minDuration(entry.interval, seconds(RetryBeatSeconds)))
		entry.nextBeat = entry.retryAt
		if entry.pending == nil && b.progress != nil {
			entry.pending = &progressNote{*b.progress, b.message}
		}
		if len(b.logs) > 0 && entry.logsBeat == b && entry.phase != done { // the next beat (or report) takes them
			entry.logs = append(append([]LogLine(nil), b.logs...), entry.logs...)
			if over := len(entry.logs) - (MaxLogLines - 1); over > 0 {
				entry.logs = entry.logs[over:]
				entry.logsDropped += over
			}
			if entry.logsSince.IsZero() {
				entry.logsSince = t.now()
			}
		}
		t.linesAnsweredLocked(b)
		t.mu.Unlock()
	default:
		t.mu.Lock()
		t.linesAnsweredLocked(b)
		entry.beating = false
		entry.lastBeat = b.takenAt
		entry.nextBeat = b.takenAt.Add(entry.interval)
		cancel := answer.CancelRequested && entry.ctx.Err() == nil
		if cancel {
			entry.cancelSeenAt = t.now()
		}
		t.mu.Unlock()
		entry.job.runningOnce.Do(func() { close(entry.job.running) })
		if cancel {
			entry.job.stop(CancelRequested)
		}
	}
	t.wake()
}

// linesAnsweredLocked: the beat's lines are stored, refused or given back; a report waiting for them goes on.
func (t *leaseTracker) linesAnsweredLocked(b *beat) {
	if b.entry.logsBeat == b {
		b.entry.logsBeat, b.entry.logsSending = nil, false
		t.notifyLocked()
	}
}
