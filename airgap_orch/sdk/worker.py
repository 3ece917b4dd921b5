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
- the heartbeat scheduler extends every held lease each lease/3 seconds and sends progress (at most every
  `progress_interval` seconds) through a few sender threads, so that beats of many jobs arrive together
  (the server commits concurrent worker requests in one transaction). A job's first heartbeat, which
  moves it to running, waits FIRST_BEAT_SECONDS: a short job costs a share of one claim and of one batched
  ack and nothing else. A heartbeat that answers cancel_requested sets ctx.cancelled; one refused as stale
  (the lease expired or was superseded) means the job was taken away: the handler is told (ctx.cancelled,
  reason lease_lost) and the job is never reported. A handler that ignores a cancel request for a lease
  period stops being heartbeated, so its lease lapses and the server ends the job canceled;
- the reporter sends outcomes. Successes are acked together through jobs.ack_many, flushed `ack_flush_seconds`
  after the first one or when `ack_batch_size` have gathered (while one batch is in flight the next one
  gathers); failures go one request each (jobs.fail), through the sender threads.

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
from ..errors import Conflict, InvalidInput, LedgerBusy, NotAuthorized, NotFound, OrchError
from ..worker import context as context_module
from ..worker.context import (
    FIRST_BEAT_SECONDS,
    FinishedJob,
    Outcome,
    bounded_retry_after,
    clip_error,
    install_stop_signals,
    restore_signals,
    run_handler,
)
from .client import OrchClient, ServerUnavailable

_context = context_module
JobContext = _context.JobContext
HandlerError = _context.HandlerError
RetryableError = _context.RetryableError
PermanentError = _context.PermanentError
JobCanceled = _context.JobCanceled
CANCEL_REQUESTED, LEASE_LOST, SHUTDOWN = _context.CANCEL_REQUESTED, _context.LEASE_LOST, _context.SHUTDOWN

log = logging.getLogger("airgap_orch.sdk")

Handler = Callable[[Any], "list[dict[str, str]] | None"]

MAX_ACK_BATCH = 1000  # schemas/ack-many-request.schema.json maxItems
MAX_PREFETCH = 1000  # validation.MAX_CLAIM_LIMIT: one claim can fill it
RETRY_CAP_SECONDS = 5.0  # longest pause between the worker's own retries (after the client's retries)
RELEASE_THREADS = 8  # concurrent jobs.release requests when giving back many jobs at once
CANCELED_MESSAGE = "canceled on request; handler stopped"

# Outcomes of one attempt as the worker saw it (JobResult.outcome); the first five are job states.
SUCCEEDED, FAILED, DEAD_LETTER, CANCELED, RETRY = "succeeded", "failed", "dead_letter", "canceled", "queued"
LOST = "lost"  # the lease was taken away; nothing was reported
RELEASED = "released"  # the worker stopped and gave the job back
ERROR = "error"  # the report could not be delivered (logged); the lease lapses and the job is retried


JobResult = FinishedJob  # the SDK's name for it




class _Held:
    """One leased job, from claim until its report is answered. Fields change under Worker._lock."""

    def __init__(self, lease: dict[str, Any], handler: Handler, ctx: Any):
        self.lease = lease
        self.handler = handler
        self.ctx = ctx
        self.phase = "waiting"  # waiting (for a thread) -> running -> reporting -> done
        self.lost = False  # a heartbeat or report was refused as stale: another worker may own the job
        self.beating = False  # a heartbeat for this job is in flight
        self.released = False  # given back on shutdown
        self.claimed_at = time.monotonic()
        self.started = 0.0
        self.next_beat = 0.0
        self.last_beat = 0.0
        self.pending: tuple[float, str | None] | None = None  # progress not sent yet
        self.cancel_seen_at: float | None = None

    @property
    def job_id(self) -> str:
        return self.lease["job_id"]

    @property
    def lease_id(self) -> str:
        return self.lease["lease_id"]


class Worker:
    """Runs handlers for jobs claimed from a server until stopped. See the module docstring."""

    def __init__(self, url: str, token: str | None = None, *, worker_id: str | None = None, concurrency: int = 4,
                 lease_seconds: float = validation.DEFAULT_LEASE_SECONDS, queue: str | None = None,
                 claim_wait: float = 10.0, grace_seconds: float = 10.0, batch_acks: bool = True,
                 ack_batch_size: int = 100, ack_flush_seconds: float = 0.005, progress_interval: float = 0.25,
                 max_unreported: int | None = None, prefetch: int = 0,
                 on_finished: Callable[[JobResult], None] | None = None):
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        validation.text(self.worker_id, 128, "worker id", required=True)
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
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}  # by lease id: a retry due at once may return while its last attempt reports
        self._busy = 0  # leases claimed whose handler has not returned
        self._unreported = 0  # finished handlers whose report is not answered yet
        self._work: queue_module.SimpleQueue[_Held | None] = queue_module.SimpleQueue()
        self._sends: queue_module.SimpleQueue[Callable[[], None] | None] = queue_module.SimpleQueue()
        self._senders = min(self.concurrency, 8)
        self._reports: queue_module.SimpleQueue[tuple[_Held, Outcome] | None] = queue_module.SimpleQueue()
        self._changed = threading.Condition(self._lock)  # a slot freed or a report was answered
        self._beat_wake = threading.Event()
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
        if self._unreported >= self.max_unreported:
            return 0
        return min(self.concurrency + self.prefetch - self._busy, validation.MAX_CLAIM_LIMIT)

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
        held: _Held

        def note(fraction: float, message: str | None) -> None:
            with self._lock:
                held.pending = (fraction, message[:validation.MAX_MESSAGE_CHARS] if message else None)
            self._beat_wake.set()

        held = _Held(lease, self._handlers[lease["type"]], JobContext(lease, self.worker_id, note))
        held.next_beat = held.claimed_at + self.lease_seconds / 3  # only if it is still waiting for a thread then
        with self._lock:
            self.stats["claimed"] += 1
            self._held[held.lease_id] = held
            self._busy += 1
        if self._stopping.is_set():  # claimed as the worker stopped: give it back at once
            self._release([held], "claimed while stopping")
            return
        self._work.put(held)

    # -- handling ----------------------------------------------------------------------------------
    def _handle_loop(self) -> None:
        while True:
            held = self._work.get()
            if held is None:
                return
            now = time.monotonic()
            with self._lock:
                if held.phase != "waiting" or held.released:
                    continue
                held.phase = "running"
                held.started = held.last_beat = now
                held.next_beat = now + min(FIRST_BEAT_SECONDS, self.lease_seconds / 3)
            self._beat_wake.set()  # the heartbeater may be asleep until a later job's beat
            outcome = self._call(held)
            with self._changed:
                self._busy -= 1
                if held.released or held.lost:
                    held.phase = "done"
                    self._held.pop(held.lease_id, None)
                    result = "" if held.released else LOST  # a release was counted by _release
                else:
                    held.phase = "reporting"
                    # Beat again only to keep the lease while the report waits; no first beat for it.
                    held.next_beat = held.last_beat + self.lease_seconds / 3
                    self._unreported += 1
                    result = None
                self._changed.notify_all()
            if result is None:
                self._reports.put((held, outcome))
            elif result:
                self._finish(held, result, outcome.error)

    def _call(self, held: _Held) -> Outcome:
        ctx = held.ctx
        if ctx.cancelled.is_set():
            return Outcome("stopped", error=f"job {held.job_id} stopped before it started: {ctx.cancel_reason}")
        return run_handler(held.handler, ctx)

    # -- heartbeats --------------------------------------------------------------------------------
    def _beat_loop(self) -> None:
        interval = self.lease_seconds / 3
        while not self._beats_done.is_set():
            now = time.monotonic()
            wake_at = now + interval
            due: list[tuple[_Held, tuple[float, str | None] | None]] = []
            with self._lock:
                for held in self._held.values():
                    if held.lost or held.released or held.beating or held.phase == "done":
                        continue
                    if held.cancel_seen_at is not None and now - held.cancel_seen_at > self.lease_seconds:
                        continue  # the handler ignores its cancel request: let the lease lapse
                    at = held.next_beat
                    if held.pending is not None and held.phase == "running":
                        at = min(at, max(held.last_beat + self.progress_interval,
                                         held.started + FIRST_BEAT_SECONDS))
                    if at <= now:
                        due.append((held, held.pending if held.phase == "running" else None))
                        held.pending = None
                        held.beating = True
                    else:
                        wake_at = min(wake_at, at)
            for held, pending in due:
                self._sends.put(lambda held=held, pending=pending: self._beat(held, pending, interval))
            self._beat_wake.wait(max(0.0, wake_at - time.monotonic()))
            self._beat_wake.clear()

    def _beat(self, held: _Held, pending: tuple[float, str | None] | None, interval: float) -> None:
        try:
            self._send_beat(held, pending, interval)
        finally:
            with self._lock:
                held.beating = False
            self._beat_wake.set()

    def _send_beat(self, held: _Held, pending: tuple[float, str | None] | None, interval: float) -> None:
        if held.phase == "done" or held.released or self._beats_done.is_set():
            return  # settled while this beat waited for a sender
        progress, message = pending if pending is not None else (None, None)
        sent = time.monotonic()
        try:
            answer = self._beat_client.call("jobs.heartbeat", {"job_id": held.job_id, "lease_id": held.lease_id,
                                                               "progress": progress, "message": message})
        except (Conflict, NotFound) as refused:
            with self._lock:
                held.next_beat = time.monotonic() + interval
                if held.phase not in ("waiting", "running") or held.released:
                    return  # already reporting (the report's answer decides) or given back
                held.lost = True
            log.warning("job %s: %s", held.job_id, refused)
            held.ctx.cancel(LEASE_LOST)
            return
        except OrchError as error:  # the server is away or refused this once: try again soon
            log.warning("heartbeat for job %s failed: %s", held.job_id, error)
            with self._lock:
                held.next_beat = time.monotonic() + min(interval, 1.0)
                if held.pending is None:
                    held.pending = pending
            return
        with self._lock:
            held.last_beat = sent
            held.next_beat = sent + interval
        if answer.get("cancel_requested") and not held.ctx.cancelled.is_set():
            held.cancel_seen_at = time.monotonic()
            held.ctx.cancel(CANCEL_REQUESTED)

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
            acks: list[tuple[_Held, Outcome]] = []
            others: list[tuple[_Held, Outcome]] = []
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
                    for held, _outcome in acks:
                        self._settle(held, ERROR, str(error))
            for held, outcome in others:
                self._sends.put(lambda held=held, outcome=outcome: self._send_one(held, outcome))
            if last:
                return

    def _send_acks(self, acks: list[tuple[_Held, Outcome]]) -> None:
        body = [{"job_id": held.job_id, "lease_id": held.lease_id, "artifacts": outcome.artifacts or []}
                for held, outcome in acks]
        try:
            answer = self._deliver("jobs.ack_many", {"acks": body})
        except InvalidInput:  # one handler returned malformed artifacts: ack one by one to single it out
            for held, outcome in acks:
                self._send_one(held, outcome)
            return
        except OrchError as error:
            for held, _outcome in acks:
                self._settle(held, ERROR, str(error))
            return
        # One result per ack, in order (by job id alone, two attempts of one job in a batch would get one answer).
        results = answer.get("results", [])
        for index, (held, _outcome) in enumerate(acks):
            result = results[index] if index < len(results) and results[index].get("job_id") == held.job_id else {}
            if "state" in result:
                self._settle(held, result["state"], None)
            else:
                error = result.get("error") or {}
                lost = error.get("type") in ("StaleLease", "NotFound", "IllegalTransition")
                self._settle(held, LOST if lost else ERROR, error.get("message", "no answer for this job"))

    def _send_one(self, held: _Held, outcome: Outcome) -> None:
        try:
            self._report_one(held, outcome)
        except Exception as error:  # settle it anyway, so shutdown does not wait for it
            log.exception("reporting job %s failed", held.job_id)
            self._settle(held, ERROR, str(error))

    def _report_one(self, held: _Held, outcome: Outcome) -> None:
        ctx = held.ctx
        job = {"job_id": held.job_id, "lease_id": held.lease_id}
        if outcome.kind == "stopped" and ctx.cancel_reason == CANCEL_REQUESTED:
            # A fail on a job whose cancellation was requested ends it canceled (orchestrator/jobs.py).
            name, params = "jobs.fail", {**job, "error": CANCELED_MESSAGE, "no_retry": True}
        elif outcome.kind == "ack":
            name, params = "jobs.ack", {**job, "artifacts": outcome.artifacts or []}
        else:
            name, params = "jobs.fail", {**job, "error": clip_error(outcome.error or "handler failed"),
                                         "retry_after": bounded_retry_after(outcome.retry_after),
                                         "no_retry": outcome.no_retry or None}
        try:
            try:
                answer = self._deliver(name, params)
            except InvalidInput as bad:
                if name != "jobs.ack" or isinstance(bad, NotFound):
                    raise
                # The handler returned malformed artifacts: retrying will not help.
                answer = self._deliver("jobs.fail", {**job, "error": clip_error(f"invalid artifacts: {bad}"),
                                                     "no_retry": True})
        except (Conflict, NotFound) as refused:
            self._settle(held, LOST, str(refused))
            return
        except OrchError as error:
            log.error("could not report job %s: %s", held.job_id, error)
            self._settle(held, ERROR, str(error))
            return
        self._settle(held, answer["state"], outcome.error)

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

    def _settle(self, held: _Held, outcome: str, error: str | None) -> None:
        with self._changed:
            if held.phase == "done":
                return
            held.phase = "done"
            if outcome == LOST:
                held.lost = True
            self._held.pop(held.lease_id, None)
            self._unreported -= 1
            self._changed.notify_all()
        self._finish(held, outcome, error)

    def _finish(self, held: _Held, outcome: str, error: str | None) -> None:
        with self._lock:
            self.stats[outcome] += 1
        if self.on_finished is not None:
            lease = held.lease
            result = JobResult(job_id=held.job_id, type=lease["type"], tenant=lease["tenant"],
                               attempt=lease["attempt"], outcome=outcome,
                               seconds=round(time.monotonic() - held.claimed_at, 3), error=error)
            try:
                self.on_finished(result)
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
            waiting = [held for held in self._held.values() if held.phase == "waiting" and not held.released]
        self._release(waiting, "not started")
        with self._changed:
            while (self._busy or self._unreported or claimer.is_alive()) and not self._hurry.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
        if claimer.is_alive():
            # Out of time: abort the long-poll. Jobs the server grants it from now on go back to the queue
            # when their lease lapses.
            self._claim_client.close()
            claimer.join(2.0)
        with self._lock:
            running = [held for held in self._held.values() if held.phase in ("waiting", "running")
                       and not held.released and not held.lost]
        # Reports still waiting (the server is away) get a little longer than the grace period.
        self._report_deadline = max(deadline, time.monotonic()) + (0.0 if self._hurry.is_set() else 2.0)
        self._release(running, "still running at the end of the grace period")
        with self._changed:
            while self._unreported and time.monotonic() < self._report_deadline + 1.0:
                self._changed.wait(0.1)
        self._reports.put(None)
        reporter.join(max(0.0, self._report_deadline - time.monotonic()) + 5.0)

    def _release(self, jobs: list[_Held], why: str) -> None:
        chosen = []
        for held in jobs:
            with self._lock:
                if held.released or held.lost or held.phase in ("reporting", "done"):
                    continue
                held.released = True
                if held.phase == "waiting":  # no handler thread will take it: settle here
                    held.phase = "done"
                    self._busy -= 1
                    self._held.pop(held.lease_id, None)
            held.ctx.cancel(SHUTDOWN)
            chosen.append(held)
        if len(chosen) > 1:  # many prefetched jobs: release them side by side (the server commits them together)
            with ThreadPoolExecutor(min(len(chosen), RELEASE_THREADS), thread_name_prefix="release") as pool:
                list(pool.map(lambda held: self._release_one(held, why), chosen))
        elif chosen:
            self._release_one(chosen[0], why)
        with self._changed:
            self._changed.notify_all()

    def _release_one(self, held: _Held, why: str) -> None:
        try:
            self._report_client.call("jobs.release", {"job_id": held.job_id, "lease_id": held.lease_id})
            log.info("released job %s (%s)", held.job_id, why)
            error = why
        except OrchError as refused:  # its lease lapses instead, and the job is retried
            log.warning("could not release job %s: %s", held.job_id, refused)
            error = f"{why}; release failed: {refused}"
        # Counted now: a handler that ignores ctx.cancelled may outlive run().
        self._finish(held, RELEASED, error)

    def _summary(self, seconds: float) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.stats)
        claimed = counts.pop("claimed", 0)
        return {"worker_id": self.worker_id, "stopped_by": self._stop_reason, "claimed": claimed,
                "outcomes": dict(sorted(counts.items())), "seconds": round(seconds, 3)}


def _backoff(failures: int) -> float:
    ceiling = min(RETRY_CAP_SECONDS, 0.2 * 2 ** min(failures - 1, 10))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
