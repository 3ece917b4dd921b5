package orch

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// WorkerConfig holds a Worker's settings; a zero field takes the default of defaults.go (the Python SDK's).
type WorkerConfig struct {
	WorkerID     string  // default: host-pid-random
	Concurrency  int     // handlers running at once (DefaultConcurrency)
	Prefetch     int     // jobs claimed beyond the free handler slots (DefaultPrefetch)
	LeaseSeconds float64 // lease each claim asks for (DefaultLeaseSeconds)
	Queue        string  // claim only from this queue ("": any)
	// ClaimWait: how long a claim long-polls when there is no work (DefaultClaimWaitSeconds; negative: not at all).
	ClaimWait time.Duration
	// GracePeriod: how long a stopping worker waits for running handlers before it releases their jobs
	// (DefaultGraceSeconds; negative: not at all).
	GracePeriod  time.Duration
	AckBatchSize int // acks gathered into one jobs.ack_many at most (DefaultAckBatchSize)
	// AckFlush: an ack batch goes this long after its first ack (DefaultAckFlushSeconds; negative: at once).
	AckFlush         time.Duration
	NoBatchAcks      bool          // ack each job with its own jobs.ack
	ProgressInterval time.Duration // progress rides on a heartbeat at most this often (DefaultProgressIntervalSeconds)
	// MaxUnreported: claiming pauses while this many reports wait (default: max(2*(Concurrency+Prefetch),
	// AckBatchSize)).
	MaxUnreported int
	OnFinished    func(FinishedJob) // called for every attempt the worker is done with
	Logger        *log.Logger       // default: standard error, prefixed "airgap-orch worker "
	// NoSignals: Run does not stop on SIGTERM and SIGINT by itself (cancel Run's context or call Stop instead).
	NoSignals bool
}

// Summary is what Run returns.
type Summary struct {
	WorkerID  string         `json:"worker_id"`
	StoppedBy string         `json:"stopped_by"`
	Claimed   int            `json:"claimed"`
	Outcomes  map[string]int `json:"outcomes"`
	Seconds   float64        `json:"seconds"`
}

// Worker claims jobs from a server and runs handlers for them, as the Python SDK's Worker does:
//
//   - a claimer claims up to the free handler slots plus Prefetch in one request, long-polling ClaimWait when there
//     is no work (rotating between job types when it handles several);
//   - Concurrency handler goroutines run handlers; a prefetched job that waits is heartbeated like a running one;
//   - heartbeats (leases.go) keep every held lease, carry progress and job log lines (Job.Log: a line goes within a
//     second, the rest with the ack or fail), and deliver cancellation through the handler's context;
//   - acks are gathered into jobs.ack_many batches (AckBatchSize, or AckFlush after the first); fails go one each;
//   - while the server is unreachable, claims and reports are retried with capped backoff (RetryCapSeconds), each
//     under the Idempotency-Key it was first sent with: a report the server applied before it went away gets its
//     original answer, never applied twice nor mistaken for a stale lease. A report refused as stale is never
//     retried: the attempt is counted OutcomeLost.
//
// Stopping (Stop, Run's context, SIGTERM or SIGINT): stop claiming, give back jobs whose handler has not started,
// wait up to GracePeriod for running handlers and their reports, then release the remaining leases (their contexts
// are cancelled with reason Shutdown). A second stop skips the rest of the grace period.
type Worker struct {
	cfg          WorkerConfig
	handlers     map[string]Handler
	types        []string
	claimClient  *Client
	reportClient *Client
	beatClient   *Client
	logger       *log.Logger
	tracker      *leaseTracker
	work         chan *tracked
	reports      chan reportItem
	sends        chan struct{} // bounds concurrent heartbeat, fail and release requests
	beatWake     chan struct{}
	beatsDone    chan struct{}
	reportsEnd   chan struct{} // closed when the reporter should send what it has and return

	stopOnce     sync.Once
	stopRequest  chan struct{}
	stopping     chan struct{}
	hurryOnce    sync.Once
	hurry        chan struct{}
	stopReason   string
	claimCtx     context.Context
	abortClaim   context.CancelFunc
	reportsMu    sync.Mutex
	reportsUntil time.Time // reports give up after this (set while stopping)

	statsMu sync.Mutex
	stats   map[string]int
	fatal   error
	started bool
}

type reportItem struct {
	entry   *tracked
	outcome outcome
}

// NewWorker returns a worker for the server at serverURL; token needs scope orch:worker (empty for --no-auth).
func NewWorker(serverURL, token string, cfg WorkerConfig) (*Worker, error) {
	if cfg.WorkerID == "" {
		host, _ := os.Hostname()
		cfg.WorkerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), newUUID()[:6])
	}
	if len(cfg.WorkerID) > MaxWorkerIDChars {
		return nil, invalid("worker id is longer than %d characters", MaxWorkerIDChars)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > 256 {
		return nil, invalid("concurrency must be 1 to 256, not %d", cfg.Concurrency)
	}
	if cfg.Prefetch < 0 || cfg.Prefetch > MaxClaimLimit {
		return nil, invalid("prefetch must be 0 to %d, not %d", MaxClaimLimit, cfg.Prefetch)
	}
	if cfg.LeaseSeconds == 0 {
		cfg.LeaseSeconds = DefaultLeaseSeconds
	}
	if cfg.LeaseSeconds < MinLeaseSeconds || cfg.LeaseSeconds > MaxLeaseSeconds {
		return nil, invalid("lease seconds must be %g to %g, not %g", MinLeaseSeconds, MaxLeaseSeconds,
			cfg.LeaseSeconds)
	}
	cfg.ClaimWait = orDefault(cfg.ClaimWait, DefaultClaimWaitSeconds)
	if cfg.ClaimWait > 60*time.Second {
		return nil, invalid("claim wait must be at most 60 s, not %s", cfg.ClaimWait)
	}
	cfg.GracePeriod = orDefault(cfg.GracePeriod, DefaultGraceSeconds)
	cfg.AckFlush = orDefault(cfg.AckFlush, DefaultAckFlushSeconds)
	if cfg.AckBatchSize == 0 {
		cfg.AckBatchSize = DefaultAckBatchSize
	}
	if cfg.AckBatchSize < 1 || cfg.AckBatchSize > MaxAckBatch {
		return nil, invalid("ack batch size must be 1 to %d, not %d", MaxAckBatch, cfg.AckBatchSize)
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = seconds(DefaultProgressIntervalSeconds)
	}
	if cfg.MaxUnreported <= 0 {
		cfg.MaxUnreported = 2 * (cfg.Concurrency + cfg.Prefetch)
		if cfg.AckBatchSize > cfg.MaxUnreported {
			cfg.MaxUnreported = cfg.AckBatchSize
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = log.New(os.Stderr, "airgap-orch worker ", log.LstdFlags|log.Lmsgprefix)
	}
	// One client per role: a long-poll or a slow report never holds up a heartbeat.
	clients := make([]*Client, 3)
	for index := range clients {
		client, err := NewClient(serverURL, token)
		if err != nil {
			return nil, err
		}
		clients[index] = client
	}
	beatTimeout := cfg.LeaseSeconds / HeartbeatsPerLease
	if beatTimeout > 10 {
		beatTimeout = 10
	}
	if beatTimeout < 2 {
		beatTimeout = 2
	}
	clients[2].Retries, clients[2].Timeout = 1, seconds(beatTimeout)
	w := &Worker{cfg: cfg, handlers: map[string]Handler{}, claimClient: clients[0], reportClient: clients[1],
		beatClient: clients[2], logger: logger, work: make(chan *tracked, cfg.Concurrency+cfg.Prefetch+MaxClaimLimit),
		reports: make(chan reportItem, cfg.MaxUnreported+cfg.Concurrency+cfg.Prefetch),
		sends:   make(chan struct{}, 8), beatWake: make(chan struct{}, 1), beatsDone: make(chan struct{}), reportsEnd: make(chan struct{}),
		stopRequest: make(chan struct{}), stopping: make(chan struct{}), hurry: make(chan struct{}),
		stats: map[string]int{}}
	w.tracker = newLeaseTracker(cfg.LeaseSeconds, cfg.ProgressInterval, w.wakeBeats, logger.Printf)
	w.claimCtx, w.abortClaim = context.WithCancel(context.Background())
	return w, nil
}

func orDefault(value time.Duration, fallback float64) time.Duration {
	if value == 0 {
		return seconds(fallback)
	}
	if value < 0 {
		return 0
	}
	return value
}

func invalid(format string, args ...any) error {
	return &Error{Kind: KindInvalidInput, ExitCode: 1, Detail: fmt.Sprintf(format, args...)}
}

// WorkerID is the id the worker claims under.
func (w *Worker) WorkerID() string { return w.cfg.WorkerID }

// Handle runs handler for jobs of jobType.
func (w *Worker) Handle(jobType string, handler Handler) error {
	if jobType == "" || len(jobType) > 128 {
		return invalid("job type must be 1 to 128 characters")
	}
	if handler == nil {
		return invalid("handler for %s is nil", jobType)
	}
	if _, taken := w.handlers[jobType]; taken {
		return invalid("job type %s already has a handler", jobType)
	}
	w.handlers[jobType] = handler
	w.types = append(w.types, jobType)
	return nil
}

// SetToken uses token from the next request on.
func (w *Worker) SetToken(token string) {
	for _, client := range []*Client{w.claimClient, w.reportClient, w.beatClient} {
		client.SetToken(token)
	}
}

// Stop asks Run to stop gracefully; safe from any goroutine. A second call skips the rest of the grace period.
func (w *Worker) Stop() { w.stop("stop") }

func (w *Worker) stop(reason string) {
	first := false
	w.stopOnce.Do(func() {
		first = true
		w.stopReason = reason
		close(w.stopRequest)
	})
	if !first {
		w.hurryOnce.Do(func() { close(w.hurry) })
	}
}

// Run claims and runs jobs until stopped (Stop, ctx done, SIGTERM or SIGINT) and returns a summary. It returns the
// error that made it stop, if any: a refused token (errors.Is(err, ErrNotAuthorized)) or a refused claim.
func (w *Worker) Run(ctx context.Context) (Summary, error) {
	if len(w.handlers) == 0 {
		return Summary{}, invalid("register at least one handler: worker.Handle(\"job.type\", handler)")
	}
	if w.started {
		return Summary{}, invalid("a Worker runs once; make a new one")
	}
	w.started = true
	began := time.Now()
	if !w.cfg.NoSignals {
		signals := make(chan os.Signal, 2)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(signals)
		go func() {
			for {
				select {
				case received := <-signals:
					w.stop("signal:" + signalName(received))
				case <-w.beatsDone:
					return
				}
			}
		}()
	}
	go func() {
		select {
		case <-ctx.Done():
			w.stop("context")
		case <-w.beatsDone:
		}
	}()
	var handlers sync.WaitGroup
	for n := 0; n < w.cfg.Concurrency; n++ {
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			w.handleLoop()
		}()
	}
	claimerDone, reporterDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(claimerDone)
		w.claimLoop()
	}()
	go func() {
		defer close(reporterDone)
		w.reportLoop()
	}()
	go w.beatLoop()
	w.logger.Printf("%s claiming %s from %s", w.cfg.WorkerID, strings.Join(w.types, ", "), w.claimClient.URL)
	<-w.stopRequest
	w.shutdown(claimerDone, reporterDone)
	close(w.beatsDone)
	for _, client := range []*Client{w.claimClient, w.reportClient, w.beatClient} {
		client.CloseIdleConnections()
	}
	summary := w.summary(time.Since(began))
	w.logger.Printf("%s stopped (%s): %v", w.cfg.WorkerID, summary.StoppedBy, summary.Outcomes)
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	return summary, w.fatal
}

func signalName(received os.Signal) string {
	switch received {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return received.String()
}

// -- claiming -----------------------------------------------------------------------------------------------------

func (w *Worker) freeSlots() int {
	handling, reportingNow := w.tracker.counts()
	if reportingNow >= w.cfg.MaxUnreported {
		return 0
	}
	free := w.cfg.Concurrency + w.cfg.Prefetch - handling
	if free > MaxClaimLimit {
		free = MaxClaimLimit
	}
	return free
}

func (w *Worker) isStopping() bool {
	select {
	case <-w.stopping:
		return true
	default:
		return false
	}
}

func (w *Worker) claimLoop() {
	turn, emptyInARow, failures := 0, 0, 0
	var pending *ClaimRequest // a claim to send again under the same key
	key := ""
	for !w.isStopping() {
		if pending == nil {
			changed := w.tracker.changes()
			free := w.freeSlots()
			if free <= 0 {
				select {
				case <-changed:
				case <-w.stopping:
				case <-time.After(500 * time.Millisecond):
				}
				continue
			}
			jobType := w.types[turn%len(w.types)]
			turn++
			// Several types: try each at once; long-poll (briefly) only after a full round found nothing.
			wait := w.cfg.ClaimWait
			if len(w.types) > 1 {
				wait = 0
				if emptyInARow >= len(w.types) {
					wait = minDuration(w.cfg.ClaimWait, time.Second)
				}
			}
			pending = &ClaimRequest{WorkerID: w.cfg.WorkerID, Limit: free, LeaseSeconds: w.cfg.LeaseSeconds,
				Queue: w.cfg.Queue, Type: jobType, Wait: wait.Seconds()}
			key = newUUID()
		}
		leases, err := w.claimClient.Claim(w.claimCtx, *pending, WithIdempotencyKey(key))
		if err != nil {
			if w.isStopping() {
				return
			}
			failures++
			switch {
			case isRetryable(err):
				w.logger.Printf("claim failed (%v); retrying", err)
				// the same key: a claim the server applied before it went away is answered again
			case errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrInvalidInput): // retrying cannot help
				w.statsMu.Lock()
				w.fatal = err
				w.statsMu.Unlock()
				w.logger.Printf("claim refused: %v; stopping", err)
				w.stop("error")
				return
			default:
				w.logger.Printf("claim failed: %v", err)
				pending = nil
			}
			select {
			case <-w.stopping:
			case <-time.After(workerBackoff(failures)):
			}
			continue
		}
		pending, failures = nil, 0
		if len(leases) == 0 {
			emptyInARow++
		} else {
			emptyInARow = 0
		}
		for _, lease := range leases {
			w.take(lease)
		}
	}
}

func (w *Worker) take(lease Lease) {
	handler := w.handlers[lease.Type]
	if handler == nil { // a server that answered another type than asked: give it back
		handler = func(ctx context.Context, job *Job) ([]Artifact, error) {
			return nil, fmt.Errorf("no handler for job type %s", job.Type)
		}
	}
	entry := w.tracker.track(lease, handler, w.cfg.WorkerID)
	w.count("claimed")
	if w.isStopping() { // claimed as the worker stopped: give it back at once
		w.release([]*tracked{entry}, "claimed while stopping")
		return
	}
	w.work <- entry
}

// -- handling -----------------------------------------------------------------------------------------------------

func (w *Worker) handleLoop() {
	for {
		var entry *tracked
		select {
		case entry = <-w.work:
		case <-w.beatsDone:
			return
		}
		if !w.tracker.start(entry) {
			continue // given back while it waited
		}
		result := w.tracker.run(entry)
		switch verdict := w.tracker.handlerReturned(entry); verdict {
		case "":
			select {
			case w.reports <- reportItem{entry, result}:
			case <-w.beatsDone: // the worker has stopped: its lease lapses
			}
		case OutcomeLost: // a release was counted by release()
			w.record(w.tracker.result(entry, OutcomeLost, result.err))
		}
	}
}

// -- heartbeats ---------------------------------------------------------------------------------------------------

func (w *Worker) wakeBeats() {
	select {
	case w.beatWake <- struct{}{}:
	default:
	}
}

func (w *Worker) beatLoop() {
	for {
		beats, wait := w.tracker.dueBeats()
		for _, due := range beats {
			due := due
			w.sends <- struct{}{}
			go func() {
				defer func() { <-w.sends }()
				w.sendBeat(due)
			}()
		}
		timer := time.NewTimer(wait)
		select {
		case <-w.beatsDone:
			timer.Stop()
			return
		case <-w.beatWake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func (w *Worker) sendBeat(due *beat) {
	select {
	case <-w.beatsDone:
		return
	default:
	}
	if !w.tracker.beatWanted(due) {
		return
	}
	answer, err := w.beatClient.Heartbeat(context.Background(), due.entry.lease.JobID, due.entry.lease.LeaseID,
		due.progress, due.message, WithLogs(due.logs))
	w.tracker.beatSent(due, answer, err)
}

// -- reporting ----------------------------------------------------------------------------------------------------

func (w *Worker) reportLoop() {
	for {
		var item reportItem
		last := false
		select {
		case item = <-w.reports:
		case <-w.reportsEnd:
			select {
			case item = <-w.reports: // what is still queued goes first
				last = true
			default:
				return
			}
		}
		var acks, others []reportItem
		deadline := time.NewTimer(w.cfg.AckFlush)
	gather:
		for {
			if item.outcome.kind == "ack" && !w.cfg.NoBatchAcks {
				acks = append(acks, item)
			} else {
				others = append(others, item)
			}
			if len(acks) >= w.cfg.AckBatchSize || len(others) > 0 {
				break
			}
			if last { // stopping: take what is queued without waiting
				select {
				case item = <-w.reports:
					continue
				default:
					break gather
				}
			}
			select {
			case item = <-w.reports:
			case <-deadline.C:
				break gather
			case <-w.reportsEnd:
				last = true
				break gather
			}
		}
		deadline.Stop()
		if len(acks) > 0 {
			w.sendAcks(acks)
		}
		for _, other := range others {
			other := other
			w.sends <- struct{}{}
			go func() {
				defer func() { <-w.sends }()
				w.sendOne(other.entry, other.outcome, w.tracker.finalLogs(other.entry))
			}()
		}
	}
}

func (w *Worker) sendAcks(acks []reportItem) {
	items := make([]AckItem, len(acks))
	for index, item := range acks {
		items[index] = AckItem{JobID: item.entry.lease.JobID, LeaseID: item.entry.lease.LeaseID,
			Artifacts: item.outcome.artifacts, Logs: w.tracker.finalLogs(item.entry)}
	}
	// Log lines can make a batch large: send it in parts of at most AckBatchLogChars of log text each.
	start, chars := 0, 0
	for index, item := range items {
		size := 0
		for _, line := range item.Logs {
			size += utf8.RuneCountInString(line.Message)
		}
		if index > start && chars+size > AckBatchLogChars {
			w.sendAckBatch(acks[start:index], items[start:index])
			start, chars = index, 0
		}
		chars += size
	}
	w.sendAckBatch(acks[start:], items[start:])
}

func (w *Worker) sendAckBatch(acks []reportItem, items []AckItem) {
	var results []AckResult
	err := w.deliver(func(opts ...CallOption) (callErr error) {
		results, callErr = w.reportClient.AckMany(context.Background(), items, opts...)
		return callErr
	})
	if err != nil {
		if errors.Is(err, ErrInvalidInput) { // one handler's artifacts were refused: ack one by one to single it out
			for index, item := range acks {
				w.sendOne(item.entry, item.outcome, items[index].Logs)
			}
			return
		}
		for _, item := range acks {
			w.finish(item.entry, OutcomeError, err.Error())
		}
		return
	}
	// One result per ack, in order (two attempts of one job in a batch would share a job id).
	for index, item := range acks {
		switch {
		case index >= len(results) || results[index].JobID != item.entry.lease.JobID:
			w.finish(item.entry, OutcomeError, "no answer for this job")
		case results[index].Err == nil:
			w.finish(item.entry, results[index].State, "")
		case results[index].Err.Stale():
			w.finish(item.entry, OutcomeLost, results[index].Err.Error())
		default:
			w.finish(item.entry, OutcomeError, results[index].Err.Error())
		}
	}
}

// sendOne reports one attempt on its own: an ack with its artifacts, or a fail with its error; either with the
// attempt's log lines not sent yet (leaseTracker.finalLogs).
func (w *Worker) sendOne(entry *tracked, result outcome, logs []LogLine) {
	jobID, leaseID := entry.lease.JobID, entry.lease.LeaseID
	var answer ReportAnswer
	var err error
	if result.kind == "ack" {
		err = w.deliver(func(opts ...CallOption) (callErr error) {
			answer, callErr = w.reportClient.Ack(context.Background(), jobID, leaseID, result.artifacts,
				append(opts, WithLogs(logs))...)
			return callErr
		})
		if err != nil && errors.Is(err, ErrInvalidInput) && !errors.Is(err, ErrNotFound) {
			// refused for the handler's artifacts: a fail, since retrying cannot help
			// (with the ack's log lines, which the refused ack did not store)
			refusal := FailRequest{LeaseID: leaseID, Error: clipError("invalid artifacts: " + err.Error()),
				NoRetry: true, Logs: logs}
			err = w.deliver(func(opts ...CallOption) (callErr error) {
				answer, callErr = w.reportClient.Fail(context.Background(), jobID, refusal, opts...)
				return callErr
			})
		}
	} else {
		request := FailRequest{LeaseID: leaseID, Error: clipError(result.err), RetryAfter: result.retryAfter,
			NoRetry: result.noRetry, Logs: logs}
		if result.kind == "stopped" && entry.job.CancelReason() == CancelRequested {
			// a fail on a job whose cancellation was requested ends it canceled
			request = FailRequest{LeaseID: leaseID, Error: CanceledMessage, NoRetry: true, Logs: logs}
		}
		err = w.deliver(func(opts ...CallOption) (callErr error) {
			answer, callErr = w.reportClient.Fail(context.Background(), jobID, request, opts...)
			return callErr
		})
	}
	var refusal *Error
	switch {
	case errors.As(err, &refusal) && refusal.Stale():
		w.finish(entry, OutcomeLost, err.Error()) // a stale lease: never retried as if it were ours
	case err != nil:
		w.logger.Printf("could not report job %s: %v", jobID, err)
		w.finish(entry, OutcomeError, err.Error())
	default:
		w.finish(entry, answer.State, result.err)
	}
}

// deliver calls send until the server answers: while it is unreachable or busy, again under the same
// Idempotency-Key after a capped backoff, until the stop deadline (set while stopping) has passed.
func (w *Worker) deliver(send func(opts ...CallOption) error) error {
	key := newUUID()
	for failures := 1; ; failures++ {
		err := send(WithIdempotencyKey(key))
		if err == nil || !isRetryable(err) {
			return err
		}
		w.reportsMu.Lock()
		until := w.reportsUntil
		w.reportsMu.Unlock()
		if !until.IsZero() && !time.Now().Before(until) {
			return err
		}
		w.logger.Printf("report failed (%v); retrying", err)
		pause := workerBackoff(failures)
		if !until.IsZero() {
			pause = minDuration(pause, time.Until(until))
		}
		select {
		case <-w.hurry:
		case <-time.After(pause):
		}
	}
}

func (w *Worker) finish(entry *tracked, result, errText string) {
	if finished, ok := w.tracker.finish(entry, result, errText); ok {
		w.record(finished)
	}
}

func (w *Worker) count(key string) {
	w.statsMu.Lock()
	w.stats[key]++
	w.statsMu.Unlock()
}

// record counts an attempt the worker is done with and passes it to OnFinished.
func (w *Worker) record(finished FinishedJob) {
	w.count(finished.Outcome)
	if w.cfg.OnFinished != nil {
		func() {
			defer func() {
				if recovered := recover(); recovered != nil { // a broken callback must not stop reporting
					w.logger.Printf("OnFinished panicked: %v", recovered)
				}
			}()
			w.cfg.OnFinished(finished)
		}()
	}
}

// -- stopping -----------------------------------------------------------------------------------------------------

func (w *Worker) shutdown(claimerDone, reporterDone <-chan struct{}) {
	deadline := time.Now().Add(w.cfg.GracePeriod)
	// The claimer starts no new claim. One in flight (a long-poll) may finish: aborting it could strand jobs the
	// server grants after the connection is gone.
	close(w.stopping)
	w.release(w.tracker.inPhases(waiting), "not started")
	for {
		changed := w.tracker.changes()
		handling, reportingNow := w.tracker.counts()
		if handling == 0 && reportingNow == 0 && isClosed(claimerDone) {
			break
		}
		remaining := time.Until(deadline)
		if remaining <= 0 || isClosed(w.hurry) {
			break
		}
		select {
		case <-changed:
		case <-claimerDone:
		case <-w.hurry:
		case <-time.After(minDuration(remaining, 100*time.Millisecond)):
		}
	}
	if !isClosed(claimerDone) { // out of time: abort the long-poll
		w.abortClaim()
		select {
		case <-claimerDone:
		case <-time.After(2 * time.Second):
		}
	}
	// Reports still waiting (the server is away) get a little longer than the grace period.
	until := deadline
	if now := time.Now(); now.After(until) {
		until = now
	}
	if !isClosed(w.hurry) {
		until = until.Add(2 * time.Second)
	}
	w.reportsMu.Lock()
	w.reportsUntil = until
	w.reportsMu.Unlock()
	w.release(w.tracker.inPhases(waiting, running), "still running at the end of the grace period")
	for {
		changed := w.tracker.changes()
		if _, reportingNow := w.tracker.counts(); reportingNow == 0 || time.Now().After(until.Add(time.Second)) {
			break
		}
		select {
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
	close(w.reportsEnd)
	select {
	case <-reporterDone:
	case <-time.After(time.Until(until) + 5*time.Second):
	}
}

func isClosed(channel <-chan struct{}) bool {
	select {
	case <-channel:
		return true
	default:
		return false
	}
}

// release gives jobs back (jobs.release: queued again without using up the attempt), several side by side.
func (w *Worker) release(entries []*tracked, why string) {
	var group sync.WaitGroup
	slots := make(chan struct{}, 8)
	for _, entry := range entries {
		if !w.tracker.release(entry) {
			continue
		}
		entry := entry
		group.Add(1)
		slots <- struct{}{}
		go func() {
			defer func() { <-slots; group.Done() }()
			errText := why
			if _, err := w.reportClient.Release(context.Background(), entry.lease.JobID,
				entry.lease.LeaseID); err != nil { // its lease lapses instead, and the job is retried
				w.logger.Printf("could not release job %s: %v", entry.lease.JobID, err)
				errText = why + "; release failed: " + err.Error()
			} else {
				w.logger.Printf("released job %s (%s)", entry.lease.JobID, why)
			}
			w.record(w.tracker.result(entry, OutcomeReleased, errText))
		}()
	}
	group.Wait()
}

func (w *Worker) summary(elapsed time.Duration) Summary {
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	outcomes := map[string]int{}
	keys := make([]string, 0, len(w.stats))
	for key := range w.stats {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if key != "claimed" {
			outcomes[key] = w.stats[key]
		}
	}
	return Summary{WorkerID: w.cfg.WorkerID, StoppedBy: w.stopReason, Claimed: w.stats["claimed"],
		Outcomes: outcomes, Seconds: float64(elapsed.Milliseconds()) / 1000}
}

// workerBackoff is the worker's own pause after failures in a row (on top of the client's retries): capped at
// RetryCapSeconds.
func workerBackoff(failures int) time.Duration {
	if failures > 11 {
		failures = 11
	}
	return backoff(failures, 200*time.Millisecond, seconds(RetryCapSeconds))
}
