"""The Python worker SDK: run job handlers in this process against a server, over HTTP.

    worker = Worker("http://127.0.0.1:8080", token)

    @worker.handler("advisory.ingest")
    def ingest(ctx):                       # the in-process runner's contract, unchanged
        ctx.progress(0.5, "halfway")       # sent with the next heartbeat
        ctx.check_cancelled()              # raises JobCanceled once the job should stop
        return [{"uri": ..., "digest": "sha256:...", "mime": "application/json"}]

    worker.run()                           # blocks until stop(), SIGTERM or SIGINT

Handlers get the same JobContext and raise the same RetryableError, PermanentError and JobCanceled as
under `airgap-orch worker run` (airgap_orch/worker/context.py), so one handler runs under both.

Threads (all daemons, so a handler that never returns cannot keep the process alive):
- the claimer claims up to the number of free handler slots plus `prefetch` in one request, long-polling
  (`claim_wait`) when there is no work; with several job types it rotates between them. Prefetched jobs wait
  in this process for a free handler thread; short jobs want a prefetch of a few hundred, so that one claim
  (one ledger transaction on the server) brings many jobs. A prefetched job that waits lease/3 is
  heartbeated like a running one (the server then counts it running), so its lease never lapses in the queue;
- `concurrency` handler threads run handlers;
- the heartbeat scheduler sends the heartbeats the lease tracker says are due through a few sender threads,
  so that beats of many jobs arrive together (the server commits concurrent worker requests in one
  transaction). The tracker (airgap_orch/worker/leases.py, shared with `worker run`) holds the rules: every
  held lease is extended each lease/3 seconds, with progress (at most every `progress_interval` seconds); a
  job's first heartbeat, which moves it to running, waits FIRST_BEAT_SECONDS, so a short job costs a share
  of one claim and of one batched ack and nothing else. A heartbeat that answers cancel_requested sets
  ctx.cancelled; one refused as stale (the lease expired or was superseded) means the job was taken away:
  the handler is told (ctx.cancelled, reason lease_lost) and the job is never reported. A handler that
  ignores a cancel request for a lease period stops being heartbeated, so its lease lapses and the server
  ends the job canceled;
- the reporter sends outcomes. Successes are acked together through jobs.ack_many, flushed `ack_flush_seconds`
  after the first one or when `ack_batch_size` have gathered (while one batch is in flight the next one
  gathers); failures go one request each (jobs.fail), through the sender threads.
- job logs (ctx.log) ride on the heartbeats and reports above (the tracker holds the rules: a line goes within a
  second), so logging adds no request per line.

A handler slot frees as soon as the handler returns; its report follows asynchronously (at most
`max_unreported` reports wait before claiming pauses).

Faults: the client retries connection errors and 5xx with backoff and jitter; past its retries the worker
keeps trying (claims and reports forever, with capped backoff), so it survives a server restart. Every
report keeps its Idempotency-Key across these retries: an ack that was applied before a crash is answered
with its original result, never applied twice and never mistaken for a stale lease.

Stopping (`stop()`, SIGTERM, SIGINT; run() installs the signal handlers when it runs in the main thread):
stop claiming, give back leases whose handler has not started, wait up to `grace_seconds` for running
handlers, their reports and a long-poll in flight (jobs it brings are given back at once; aborting it
could strand jobs the server grants after the connection is gone), then release the remaining leases
(jobs.release: the job goes back to queued without using up the attempt) and tell their handlers
(ctx.cancelled, reason shutdown). A second signal skips the rest of the grace period.
"""

from __future__ import annotations

import collections
import logging
import os
import queue as queue_module
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import validation
from ..errors import InvalidInput, LedgerBusy, NotAuthorized, OrchError
from ..worker import context as context_module
from ..worker.context import FinishedJob, Outcome, install_stop_signals, restore_signals
from ..worker.leases import ERROR, LOST, RELEASED, RUNNING, WAITING, Beat, LeaseTracker, TrackedJob, report_request
from .client import OrchClient, ServerUnavailable

_context = context_module
JobContext = _context.JobContext
HandlerError = _context.HandlerError
RetryableError = _context.RetryableError
PermanentError = _context.PermanentError
JobCanceled = _context.JobCanceled

log = logging.getLogger("airgap_orch.sdk")

Handler = Callable[[Any], "list[dict[str, str]] | None"]

MAX_ACK_BATCH = validation.MAX_ACKS  # schemas/ack-many-request.schema.json maxItems
MAX_PREFETCH = validation.MAX_CLAIM_LIMIT  # one claim can fill it
RETRY_CAP_SECONDS = 5.0  # longest pause between the worker's own retries (after the client's retries)
RELEASE_THREADS = 8  # concurrent jobs.release requests when giving back many jobs at once
# Log text one jobs.ack_many carries at most (a batch with more goes in parts): JSON escaping can make a character
# six bytes, and the server takes bodies up to api.MAX_BODY_BYTES.
ACK_BATCH_LOG_CHARS = 500_000

JobResult = FinishedJob  # the SDK's name for it


class Worker:
    """Runs handlers for jobs claimed from a server until stopped. See the module docstring."""

    def __init__(self, url: str, token: str | None = None, *, worker_id: str | None = None, concurrency: int = 4,
                 lease_seconds: float = validation.DEFAULT_LEASE_SECONDS, queue: str | None = None,
                 claim_wait: float = 10.0, grace_seconds: float = 10.0, batch_acks: bool = True,
                 ack_batch_size: int = 100, ack_flush_seconds: float = 0.005, progress_interval: float = 0.25,
                 max_unreported: int | None = None, prefetch: int = 0,
                 on_finished: Callable[[JobResult], None] | None = None):
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        validation.text(self.worker_id, validation.MAX_WORKER_ID_CHARS, "worker id", required=True)
        self.concurrency = int(validation.number_in(concurrency, 1, 256, "concurrency"))
        self.prefetch = int(validation.number_in(prefetch, 0, MAX_PREFETCH, "prefetch"))
        self.lease_seconds = validation.lease_seconds(lease_seconds)
        self.queue = queue
        self.claim_wait = float(validation.number_in(claim_wait, 0, 60, "claim wait"))
        self.grace_seconds = float(validation.number_in(grace_seconds, 0, 86_400, "grace seconds"))
        self.batch_acks = batch_acks
        self.ack_batch_size = int(validation.number_in(ack_batch_size, 1, MAX_ACK_BATCH, "ack batch size"))
        self.ack_flush_seconds = float(validation.number_in(ack_flush_seconds, 0, 10, "ack flush seconds"))
        self.progress_interval = progress_interval
        self.max_unreported = max_unreported or max(2 * (self.concurrency + self.prefetch), self.ack_batch_size)
        self.on_finished = on_finished
        self.url = url
        # One client per role: a long-poll or a slow report never holds up a heartbeat, and close() on
        # the claim client aborts only the long-poll.
        self._claim_client = OrchClient(url, token)
        self._report_client = OrchClient(url, token)
        self._beat_client = OrchClient(url, token, retries=1, timeout=max(2.0, min(10.0, self.lease_seconds / 3)))
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()  # guards stats
        self._beat_wake = threading.Event()
        self._leases = LeaseTracker(self.lease_seconds, progress_interval=progress_interval, wake=self._beat_wake.set)
        self._changed = self._leases.changed  # notified when a slot frees or a report is answered
        self._work: queue_module.SimpleQueue[TrackedJob | None] = queue_module.SimpleQueue()
        self._sends: queue_module.SimpleQueue[Callable[[], None] | None] = queue_module.SimpleQueue()
        self._senders = min(self.concurrency, 8)
        self._reports: queue_module.SimpleQueue[tuple[TrackedJob, Outcome] | None] = queue_module.SimpleQueue()
        self._stop_requested = threading.Event()
        self._stopping = threading.Event()  # claiming has stopped (set by run() once it acts on a stop)
        self._hurry = threading.Event()
        self._beats_done = threading.Event()
        self._report_deadline: float | None = None  # reports give up after this (set while stopping)
        self._stop_reason = ""
        self._fatal: OrchError | None = None
        self._started = False
        self.stats: collections.Counter[str] = collections.Counter()

    # -- configuration ---------------------------------------------------------------------------
    def handler(self, job_type: str) -> Callable[[Handler], Handler]:
        """Decorator: run the function for jobs of `job_type`."""

        def register(function: Handler) -> Handler:
            self.add_handler(job_type, function)
            return function

        return register

    def add_handler(self, job_type: str, function: Handler) -> None:
        validation.text(job_type, 128, "job type", required=True)
        if not callable(function):
            raise InvalidInput(f"handler for {job_type} is not callable")
        if job_type in self._handlers:
            raise InvalidInput(f"job type {job_type} already has a handler")
        self._handlers[job_type] = function

    def set_token(self, token: str | None) -> None:
        """Use `token` from the next request on (a token about to expire, replaced by a fresh one)."""
        for client in (self._claim_client, self._report_client, self._beat_client):
            client.token = token

    # -- running ---------------------------------------------------------------------------------
    def stop(self, reason: str = "stop") -> None:
        """Ask run() to stop gracefully; safe from any thread or a signal handler. A second call hurries."""
        if self._stop_requested.is_set():
            self._hurry.set()
            return
        self._stop_reason = reason
        self._stop_requested.set()

    def run(self) -> dict[str, Any]:
        """Claim and run jobs until stopped; returns a summary. Raises the error that made it stop, if any
        (a refused token, a malformed claim)."""
        if not self._handlers:
            raise InvalidInput("register at least one handler: @worker.handler('job.type')")
        if self._started:
            raise InvalidInput("a Worker runs once; make a new one")
        self._started = True
        started = time.monotonic()
        previous = install_stop_signals(self.stop)
        threads = [threading.Thread(target=self._handle_loop, name=f"{self.worker_id}:handler-{n}", daemon=True)
                   for n in range(self.concurrency)]
        claimer = threading.Thread(target=self._claim_loop, name=f"{self.worker_id}:claimer", daemon=True)
        threads += [threading.Thread(target=self._send_loop, name=f"{self.worker_id}:sender-{n}", daemon=True)
                    for n in range(self._senders)]
        beater = threading.Thread(target=self._beat_loop, name=f"{self.worker_id}:heartbeats", daemon=True)
        reporter = threading.Thread(target=self._report_loop, name=f"{self.worker_id}:reporter", daemon=True)
        try:
            for thread in [*threads, beater, reporter, claimer]:
                thread.start()
            log.info("worker %s claiming %s from %s", self.worker_id, ", ".join(self._handlers), self.url)
            while not self._stop_requested.wait(0.5):
                pass
            self._shutdown(claimer, reporter)
        finally:
            self._beats_done.set()
            self._beat_wake.set()
            for _ in range(self.concurrency):
                self._work.put(None)
            for _ in range(self._senders):
                self._sends.put(None)
            for client in (self._claim_client, self._report_client, self._beat_client):
                client.close()  # a Worker runs once; let the server drop these connections now
            restore_signals(previous)
        summary = self._summary(time.monotonic() - started)
        log.info("worker %s stopped (%s): %s", self.worker_id, summary["stopped_by"], summary["outcomes"])
        if self._fatal is not None:
            raise self._fatal
        return summary

    # -- claiming ----------------------------------------------------------------------------------
    def _free_slots(self) -> int:
        if self._leases.reporting >= self.max_unreported:
            return 0
        return min(self.concurrency + self.prefetch - self._leases.handling, validation.MAX_CLAIM_LIMIT)

    def _claim_loop(self) -> None:
        types = list(self._handlers)
        turn, empty_in_a_row, failures = 0, 0, 0
        pending: tuple[str, dict[str, Any]] | None = None  # a claim to repeat under the same key
        while not self._stopping.is_set():
            if pending is None:
                with self._changed:
                    free = self._free_slots()
                    if free <= 0:
                        self._changed.wait(0.5)
                        continue
                job_type = types[turn % len(types)]
                turn += 1
                # Several types: try each at once; long-poll (briefly, so the others are not starved)
                # only after a full round found nothing.
                if len(types) == 1:
                    wait = self.claim_wait
                else:
                    wait = min(self.claim_wait, 1.0) if empty_in_a_row >= len(types) else 0.0
                params = {"worker_id": self.worker_id, "limit": free, "lease_seconds": self.lease_seconds,
                          "queue": self.queue, "type": job_type, "wait": wait}
                pending = (str(uuid.uuid4()), params)
            key, params = pending
            try:
                answer = self._claim_client.call("jobs.claim", params, idempotency_key=key,
                                                 timeout=max(self._claim_client.timeout, params["wait"] + 10))
            except (ServerUnavailable, LedgerBusy) as error:
                if self._stopping.is_set():
                    return
                failures += 1
                log.warning("claim failed (%s); retrying", error)
                self._stopping.wait(_backoff(failures))
                continue  # the same key: a claim the server applied before it went away is answered again
            except (NotAuthorized, InvalidInput) as error:  # retrying cannot help; stop the worker
                self._fatal = error
                log.error("claim refused: %s; stopping", error)
                self.stop("error")
                return
            except OrchError as error:
                failures += 1
                log.warning("claim failed: %s", error)
                pending = None
                self._stopping.wait(_backoff(failures))
                continue
            pending, failures = None, 0
            leases = answer.get("leases", [])
            empty_in_a_row = 0 if leases else empty_in_a_row + 1
            for lease in leases:
                self._take(lease)

    def _take(self, lease: dict[str, Any]) -> None:
        job = self._leases.track(lease, self._handlers[lease["type"]], self.worker_id)
        with self._lock:
            self.stats["claimed"] += 1
        if self._stopping.is_set():  # claimed as the worker stopped: give it back at once
            self._release([job], "claimed while stopping")
            return
        self._work.put(job)

    # -- handling ----------------------------------------------------------------------------------
    def _handle_loop(self) -> None:
        while True:
            job = self._work.get()
            if job is None:
                return
            if not self._leases.start(job):
                continue  # given back while it waited
            outcome = self._leases.run(job)
            verdict = self._leases.handler_returned(job)
            if verdict is None:
                self._reports.put((job, outcome))
            elif verdict == LOST:  # a release was counted by _release
                self._record(self._leases.result(job, LOST, outcome.error))

    # -- heartbeats --------------------------------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self._beats_done.is_set():
            beats, wait = self._leases.due_beats()
            for beat in beats:
                self._sends.put(lambda beat=beat: self._send_beat(beat))
            self._beat_wake.wait(wait)
            self._beat_wake.clear()

    def _send_beat(self, beat: Beat) -> None:
        if self._beats_done.is_set() or not self._leases.beat_wanted(beat):
            return
        try:
            answer: dict[str, Any] | Exception = self._beat_client.call("jobs.heartbeat", beat.params)
        except Exception as error:  # refused, or the server is away: the tracker decides
            answer = error
        self._leases.beat_sent(beat, answer)

    def _send_loop(self) -> None:
        while True:
            send = self._sends.get()
            if send is None:
                return
            try:
                send()
            except Exception:  # never lose a sender thread
                log.exception("sending a worker request failed")

    # -- reporting ---------------------------------------------------------------------------------
    def _report_loop(self) -> None:
        while True:
            item = self._reports.get()
            if item is None:
                return
            acks: list[tuple[TrackedJob, Outcome]] = []
            others: list[tuple[TrackedJob, Outcome]] = []
            last = False
            deadline = time.monotonic() + self.ack_flush_seconds
            while True:
                (acks if item[1].kind == "ack" and self.batch_acks else others).append(item)
                if len(acks) >= self.ack_batch_size or others:
                    break
                try:
                    item = self._reports.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue_module.Empty:
                    break
                if item is None:
                    last = True
                    break
            if acks:
                try:
                    self._send_acks(acks)
                except Exception as error:  # never lose the reporter; the leases lapse and the jobs are retried
                    log.exception("acking %d jobs failed", len(acks))
                    for job, _outcome in acks:
                        self._record(self._leases.finish(job, ERROR, str(error)))
            for job, outcome in others:
                self._sends.put(lambda job=job, outcome=outcome: self._send_one(job, outcome))
            if last:
                return

    def _send_acks(self, acks: list[tuple[TrackedJob, Outcome]]) -> None:
        body = [report_request(job, outcome, self._leases.final_logs(job))[1] for job, outcome in acks]
        # Log lines can make a batch large: send it in parts of at most ACK_BATCH_LOG_CHARS of log text each.
        start, chars = 0, 0
        for index, item in enumerate(body):
            size = sum(len(line["message"]) for line in item.get("logs", ()))
            if index > start and chars + size > ACK_BATCH_LOG_CHARS:
                self._send_ack_batch(acks[start:index], body[start:index])
                start, chars = index, 0
            chars += size
        self._send_ack_batch(acks[start:], body[start:])

    def _send_ack_batch(self, acks: list[tuple[TrackedJob, Outcome]], body: list[dict[str, Any]]) -> None:
        try:
            answer = self._deliver("jobs.ack_many", {"acks": body})
        except InvalidInput:  # one handler returned malformed artifacts: ack one by one to single it out
            for (job, outcome), item in zip(acks, body, strict=True):
                self._record(self._leases.report(job, outcome, self._deliver, logs=item.get("logs", [])))
            return
        except OrchError as error:
            for job, _outcome in acks:
                self._record(self._leases.finish(job, ERROR, str(error)))
            return
        # One result per ack, in order (by job id alone, two attempts of one job in a batch would get one answer).
        results = answer.get("results", [])
        for index, (job, _outcome) in enumerate(acks):
            result = results[index] if index < len(results) and results[index].get("job_id") == job.job_id else {}
            self._record(self._leases.finish_acked(job, result))

    def _send_one(self, job: TrackedJob, outcome: Outcome) -> None:
        self._record(self._leases.report(job, outcome, self._deliver))

    def _deliver(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call until the server answers (ServerUnavailable: again, under the same Idempotency-Key), or
        until the stop deadline has passed."""
        key = str(uuid.uuid4())
        failures = 0
        while True:
            try:
                return self._report_client.call(name, params, idempotency_key=key)
            except (ServerUnavailable, LedgerBusy) as error:
                failures += 1
                deadline = self._report_deadline
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                log.warning("%s failed (%s); retrying", name, error)
                pause = _backoff(failures)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                self._hurry.wait(pause)

    def _record(self, finished: FinishedJob | None) -> None:
        """Count an attempt the worker is done with and pass it to on_finished (None: it was counted already)."""
        if finished is None:
            return
        with self._lock:
            self.stats[finished.outcome] += 1
        if self.on_finished is not None:
            try:
                self.on_finished(finished)
            except Exception:  # a broken callback must not stop reporting
                log.exception("on_finished callback failed")

    # -- stopping ----------------------------------------------------------------------------------
    def _shutdown(self, claimer: threading.Thread, reporter: threading.Thread) -> None:
        deadline = time.monotonic() + self.grace_seconds
        # The claimer starts no new claim. One in flight (a long-poll) may finish: the server goes on polling
        # for a request whose connection is gone, so aborting it could strand jobs granted to nobody.
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._release(self._leases.jobs(WAITING), "not started")
        with self._changed:
            while (self._leases.handling or self._leases.reporting or claimer.is_alive()) and not self._hurry.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
        if claimer.is_alive():
            # Out of time: abort the long-poll. Jobs the server grants it from now on go back to the queue
            # when their lease lapses.
            self._claim_client.close()
            claimer.join(2.0)
        # Reports still waiting (the server is away) get a little longer than the grace period.
        self._report_deadline = max(deadline, time.monotonic()) + (0.0 if self._hurry.is_set() else 2.0)
        self._release(self._leases.jobs(WAITING, RUNNING), "still running at the end of the grace period")
        with self._changed:
            while self._leases.reporting and time.monotonic() < self._report_deadline + 1.0:
                self._changed.wait(0.1)
        self._reports.put(None)
        reporter.join(max(0.0, self._report_deadline - time.monotonic()) + 5.0)

    def _release(self, jobs: list[TrackedJob], why: str) -> None:
        chosen = [job for job in jobs if self._leases.release(job)]
        if len(chosen) > 1:  # many prefetched jobs: release them side by side (the server commits them together)
            with ThreadPoolExecutor(min(len(chosen), RELEASE_THREADS), thread_name_prefix="release") as pool:
                list(pool.map(lambda job: self._release_one(job, why), chosen))
        elif chosen:
            self._release_one(chosen[0], why)

    def _release_one(self, job: TrackedJob, why: str) -> None:
        try:
            self._report_client.call("jobs.release", {"job_id": job.job_id, "lease_id": job.lease_id})
            log.info("released job %s (%s)", job.job_id, why)
            error = why
        except OrchError as refused:  # its lease lapses instead, and the job is retried
            log.warning("could not release job %s: %s", job.job_id, refused)
            error = f"{why}; release failed: {refused}"
        # Counted now: a handler that ignores ctx.cancelled may outlive run().
        self._record(self._leases.result(job, RELEASED, error))

    def _summary(self, seconds: float) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.stats)
        claimed = counts.pop("claimed", 0)
        return {"worker_id": self.worker_id, "stopped_by": self._stop_reason, "claimed": claimed,
                "outcomes": dict(sorted(counts.items())), "seconds": round(seconds, 3)}


def _backoff(failures: int) -> float:
    ceiling = min(RETRY_CAP_SECONDS, 0.2 * 2 ** min(failures - 1, 10))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
