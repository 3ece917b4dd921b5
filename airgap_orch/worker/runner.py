"""The in-process worker runner: claims jobs in batches, runs handlers in threads, heartbeats, reports.

The runner is handed an open Ledger and owns it for its whole life (one writer). Claims and worker reports
go through a LedgerWriter (operations/writer.py), as they do in the server: reports and claims that the
threads make at the same time share one transaction (group commit), so short jobs are not limited by one
commit per report; a group that fails for another reason than a refusal is retried one request at a time.
The main loop's other ledger work (running due schedules, the idle check) goes through operations/
directly; the Ledger's lock orders it with the writer's transactions.

Threads:
- the main loop (the caller's thread) claims up to the number of free handler slots, one claim
  statement per handled job type, reaps finished jobs and watches for stop requests. A slot is free once
  its handler returns, while the outcome is still being reported, so that claim and report can share a
  transaction;
- one thread per job runs the handler and then acks or fails under the job's lease;
- one heartbeat thread per job sends the first heartbeat (which moves the job to running) FIRST_BEAT_SECONDS
  after the handler starts, as the SDK worker does, so a shorter job costs no heartbeat; then it extends
  the lease every lease/3 seconds while the handler runs and sends progress (at most every
  `progress_interval` seconds). A heartbeat that answers
  `cancel_requested` sets `ctx.cancelled`; one refused as stale (the lease expired or was superseded)
  means another worker may own the job now: the runner stops reporting for it, signals the handler
  to stop, and never acks it.

Python threads cannot be killed, so cancellation is cooperative (see context.py). A handler that
ignores a cancel request for longer than one lease period stops being heartbeated: its lease lapses
and the orchestrator's sweep ends the job canceled; its thread keeps its slot until it returns.

Stopping (`stop()`, SIGTERM, SIGINT): stop claiming, wait up to `grace_seconds` for running handlers
to finish and report, then release the remaining leases (the jobs go back to queued) and return.
A second signal skips the rest of the grace period.
"""

from __future__ import annotations

import importlib
import logging
import queue as queue_module
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import validation
from ..errors import InvalidInput, NotFound, OrchError, StaleLease
from ..ledger import Ledger
from ..operations import jobs as ops
from ..operations import sources as source_ops
from ..operations.writer import LedgerWriter
from ..orchestrator.sources import SCHEDULE_EVERY_SECONDS
from ..orchestrator.states import ACTIVE_STATES
from .context import (
    CANCEL_REQUESTED,
    FIRST_BEAT_SECONDS,
    LEASE_LOST,
    SHUTDOWN,
    FinishedJob,
    JobContext,
    Outcome,
    bounded_retry_after,
    clip_error,
    install_stop_signals,
    restore_signals,
    run_handler,
)

log = logging.getLogger(__name__)

Handler = Callable[[JobContext], "list[dict[str, str]] | None"]
_JOB_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MAX_CONCURRENCY = 256

# Outcomes of one attempt as the runner saw it (FinishedJob.outcome). The first five are job states.
SUCCEEDED, FAILED, DEAD_LETTER, CANCELED, RETRY = "succeeded", "failed", "dead_letter", "canceled", "queued"
LOST = "lost"  # the lease was taken away; nothing was reported
RELEASED = "released"  # the worker stopped and gave the job back
ERROR = "error"  # reporting failed for another reason (logged)


def load_handler(spec: str) -> tuple[str, Handler]:
    """Parse `JOBTYPE=module:function` and import the handler."""
    job_type, sep, target = spec.partition("=")
    module_name, colon, function_name = target.partition(":")
    if not sep or not colon or not module_name or not function_name:
        raise InvalidInput(f"handler {spec!r} must be JOBTYPE=module:function, "
                           "e.g. advisory.ingest=airgap_orch.worker.samples:ingest_advisory")
    if not _JOB_TYPE.match(job_type):
        raise InvalidInput(f"handler {spec!r}: job type {job_type!r} is not a valid job type name")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail in any way; report it as bad input
        raise InvalidInput(f"handler for {job_type}: cannot import {module_name!r} "
                           f"({type(exc).__name__}: {exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InvalidInput(f"handler for {job_type}: {module_name} has no function {function_name!r}")
    return job_type, function


def load_handlers(specs: list[str] | tuple[str, ...]) -> dict[str, Handler]:
    if not specs:
        raise InvalidInput("name at least one handler: --handler JOBTYPE=module:function")
    handlers: dict[str, Handler] = {}
    for spec in specs:
        job_type, function = load_handler(spec)
        if job_type in handlers:
            raise InvalidInput(f"job type {job_type} has two handlers; give each job type one --handler")
        handlers[job_type] = function
    return handlers


@dataclass(frozen=True)
class RunnerConfig:
    handlers: Mapping[str, Handler]
    worker_id: str
    concurrency: int = 4
    lease_seconds: float = validation.DEFAULT_LEASE_SECONDS
    queue: str | None = None
    max_jobs: int | None = None
    exit_when_idle: bool = False
    grace_seconds: float = 10.0
    poll_seconds: float = 0.2  # how long the main loop sleeps when nothing can be claimed
    progress_interval: float = 0.25  # at most one progress write per job per this many seconds

    def __post_init__(self) -> None:
        if not self.handlers:
            raise InvalidInput("name at least one handler: --handler JOBTYPE=module:function")
        validation.text(self.worker_id, 128, "worker id", required=True)
        validation.number_in(self.concurrency, 1, MAX_CONCURRENCY, "concurrency")
        validation.lease_seconds(self.lease_seconds)
        if self.max_jobs is not None:
            validation.number_in(self.max_jobs, 1, 10**9, "max jobs")
        validation.number_in(self.grace_seconds, 0, 86_400, "grace seconds")




class _ActiveJob:
    """Runner-side state of one leased job. `lock` orders every ledger report for this job."""

    def __init__(self, lease: dict[str, Any], handler: Handler, ctx: JobContext):
        self.lease = lease
        self.handler = handler
        self.ctx = ctx
        self.lock = threading.Lock()
        self.settled = False  # a final ack/fail was sent
        self.released = False  # the runner gave the lease back on shutdown
        self.lost = False  # the lease was refused as stale
        self.handled = False  # the handler returned: its slot is free while the outcome is reported
        self.stop_beating = threading.Event()
        self.wake = threading.Event()
        self.pending: tuple[float, str | None] | None = None
        self.pending_lock = threading.Lock()
        self.started = time.monotonic()
        self.cancel_seen_at: float | None = None
        self.thread: threading.Thread | None = None
        self.beater: threading.Thread | None = None


class Runner:
    """Runs handlers for claimed jobs until stopped, idle (with exit_when_idle) or max_jobs are done."""

    def __init__(self, ledger: Ledger, config: RunnerConfig,
                 on_finished: Callable[[FinishedJob], None] | None = None):
        self.ledger = ledger
        self.config = config
        self.on_finished = on_finished
        # By lease id: a retry due at once may bring a job back while its last attempt is still being reported.
        self._active: dict[str, _ActiveJob] = {}
        self._done: queue_module.SimpleQueue[tuple[_ActiveJob, FinishedJob]] = queue_module.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hurry = threading.Event()  # a second stop request: skip the grace period
        self._stop_reason = "stop"
        self._finished: list[FinishedJob] = []
        self._claimed = 0
        self._type_offset = 0
        self._scheduled_at: float | None = None  # monotonic time of the last run of due schedules
        self._writer = LedgerWriter(ledger)

    # -- public ------------------------------------------------------------------------------------
    def stop(self, reason: str = "stop") -> None:
        """Ask the runner to stop gracefully (thread-safe; a second call skips the grace period)."""
        if self._stopping.is_set():
            self._hurry.set()
        else:
            self._stop_reason = reason
            self._stopping.set()
        self._wake.set()

    def run(self, *, handle_signals: bool = True) -> dict[str, Any]:
        """Run until done; returns a summary. Installs SIGTERM/SIGINT handlers when called from the main
        thread and `handle_signals` is true (they are restored on return)."""
        started = time.monotonic()
        previous = install_stop_signals(self.stop) if handle_signals else {}
        try:
            self._writer.start()
            try:
                stopped_by = self._loop()
            except BaseException:
                self._hurry.set()  # the loop broke: give the leases back now rather than strand them
                self._shutdown()
                raise
            self._shutdown()
        finally:
            self._writer.stop()
            restore_signals(previous)
        return self._summary(stopped_by, time.monotonic() - started)

    # -- main loop ---------------------------------------------------------------------------------
    def _loop(self) -> str:
        config = self.config
        while True:
            self._wake.clear()
            self._reap()
            if self._stopping.is_set():
                return self._stop_reason
            if config.max_jobs is not None and len(self._finished) >= config.max_jobs:
                return "max_jobs"
            self._run_schedules()
            slots = config.concurrency - sum(1 for job in self._active.values() if not job.handled)
            if config.max_jobs is not None:
                slots = min(slots, config.max_jobs - len(self._finished) - len(self._active))
            claimed = self._claim(slots) if slots > 0 else 0
            if config.exit_when_idle and not self._active and claimed == 0 and self._site_idle():
                return "idle"
            self._wake.wait(config.poll_seconds)

    def _run_schedules(self) -> None:
        """The runner owns the ledger, so it ticks the source schedules (every SCHEDULE_EVERY_SECONDS)."""
        now = time.monotonic()
        if self._scheduled_at is not None and now - self._scheduled_at < SCHEDULE_EVERY_SECONDS:
            return
        self._scheduled_at = now
        try:
            source_ops.run_due(self.ledger)
        except OrchError as error:
            log.warning("running due schedules failed: %s", error)

    def _claim(self, slots: int) -> int:
        """Claim up to `slots` jobs across the handled types (rotating which type goes first)."""
        types = list(self.config.handlers)
        self._type_offset = (self._type_offset + 1) % len(types)
        types = types[self._type_offset:] + types[:self._type_offset]
        claimed = 0
        for job_type in types:
            want = slots - claimed
            if want <= 0:
                break
            try:
                leases = self._call("jobs.claim", worker_id=self.config.worker_id, limit=want,
                                    lease_seconds=self.config.lease_seconds, queue=self.config.queue,
                                    type=job_type)["leases"]
            except Exception as error:  # refused, or the ledger failed: log it and try again on the next loop
                log.warning("claim for %s failed: %s", job_type, error)
                continue
            for lease in leases:
                self._start(lease)
            claimed += len(leases)
        return claimed

    def _site_idle(self) -> bool:
        """True when no job of a handled type (in our queue) is queued, leased or running."""
        for job_type in self.config.handlers:
            for state in ACTIVE_STATES:
                # Only a --queue filter needs more than one row; jobs_list cannot filter by queue.
                rows = ops.list_jobs(self.ledger, state=state, job_type=job_type,
                                     limit=1 if self.config.queue is None else 10_000)["jobs"]
                if any(self.config.queue in (None, row["queue"]) for row in rows):
                    return False
        return True

    def _reap(self) -> None:
        while True:
            try:
                job, finished = self._done.get_nowait()
            except queue_module.Empty:
                return
            self._active.pop(job.lease["lease_id"], None)
            self._finished.append(finished)
            if self.on_finished is not None:
                self.on_finished(finished)

    # -- one job -----------------------------------------------------------------------------------
    def _start(self, lease: dict[str, Any]) -> None:
        self._claimed += 1
        handler = self.config.handlers[lease["type"]]
        job: _ActiveJob

        def note_progress(fraction: float, message: str | None) -> None:
            with job.pending_lock:
                job.pending = (fraction, message[:validation.MAX_MESSAGE_CHARS] if message else None)
            job.wake.set()

        ctx = JobContext(lease, self.config.worker_id, note_progress)
        job = _ActiveJob(lease, handler, ctx)
        job.thread = threading.Thread(target=self._work, args=(job,), name=f"job-{lease['job_id'][:13]}",
                                      daemon=True)
        job.beater = threading.Thread(target=self._beat, args=(job,), name=f"beat-{lease['job_id'][:13]}",
                                      daemon=True)
        self._active[lease["lease_id"]] = job
        job.thread.start()

    def _work(self, job: _ActiveJob) -> None:
        outcome: Outcome | None = None
        try:
            assert job.beater is not None
            job.beater.start()  # its first beat, after FIRST_BEAT_SECONDS, moves the job to running
            outcome = Outcome("skip") if job.ctx.cancelled.is_set() else run_handler(job.handler, job.ctx)
        finally:
            job.stop_beating.set()
            job.wake.set()
            if job.beater is not None and job.beater.is_alive():
                job.beater.join()
        # Free the slot before reporting: the main loop's claim for it can then join this report's transaction.
        job.handled = True
        self._wake.set()
        self._done.put((job, self._report(job, outcome)))
        self._wake.set()

    def _report(self, job: _ActiveJob, outcome: Outcome | None) -> FinishedJob:
        ctx = job.ctx
        error = outcome.error if outcome is not None else None
        with job.lock:
            if job.released:
                return self._finish(job, RELEASED, error)
            if job.lost or outcome is None:
                return self._finish(job, LOST, error)
            job.settled = True
            try:
                result = self._send(job, outcome)
            except (StaleLease, NotFound) as refused:
                job.lost = True
                return self._finish(job, LOST, str(refused))
            except Exception as failure:  # the ledger refused or broke; the lease will lapse and retry
                log.error("could not report job %s: %s", ctx.job_id, failure)
                return self._finish(job, ERROR, str(failure))
        return self._finish(job, result["state"], error)

    def _send(self, job: _ActiveJob, outcome: Outcome) -> dict[str, Any]:
        ctx = job.ctx
        if outcome.kind == "ack":
            try:
                return self._call("jobs.ack", job_id=ctx.job_id, lease_id=ctx.lease_id, artifacts=outcome.artifacts)
            except NotFound:
                raise
            except InvalidInput as bad:  # the handler returned malformed artifacts: retrying won't help
                return self._call("jobs.fail", job_id=ctx.job_id, lease_id=ctx.lease_id,
                                  error=clip_error(f"invalid artifacts: {bad}"), no_retry=True)
        if outcome.kind in ("stopped", "skip") and ctx.cancel_reason == CANCEL_REQUESTED:
            # fail on a job with cancel_requested ends it canceled (orchestrator/jobs.py).
            return self._call("jobs.fail", job_id=ctx.job_id, lease_id=ctx.lease_id,
                              error="canceled on request; handler stopped", no_retry=True)
        return self._call("jobs.fail", job_id=ctx.job_id, lease_id=ctx.lease_id,
                          error=clip_error(outcome.error or "handler failed"),
                          retry_after=bounded_retry_after(outcome.retry_after), no_retry=outcome.no_retry)

    def _call(self, name: str, **params: Any) -> dict[str, Any]:
        """Run a claim or a report through the group-commit writer; raises what the operation raises."""
        return self._writer.call(name, params)

    def _finish(self, job: _ActiveJob, outcome: str, error: str | None) -> FinishedJob:
        lease = job.lease
        return FinishedJob(job_id=lease["job_id"], type=lease["type"], tenant=lease["tenant"],
                           attempt=lease["attempt"], outcome=outcome,
                           seconds=round(time.monotonic() - job.started, 3), error=error)

    # -- heartbeats --------------------------------------------------------------------------------
    def _beat(self, job: _ActiveJob) -> None:
        interval = self.config.lease_seconds / 3
        min_gap = self.config.progress_interval
        last_sent = time.monotonic()
        next_beat = last_sent + min(FIRST_BEAT_SECONDS, interval)
        while not job.stop_beating.is_set():
            with job.pending_lock:
                dirty = job.pending is not None
            due_at = min(next_beat, last_sent + min_gap) if dirty else next_beat
            job.wake.wait(max(0.0, due_at - time.monotonic()))
            job.wake.clear()
            if job.stop_beating.is_set():
                return
            now = time.monotonic()
            with job.pending_lock:
                dirty = job.pending is not None
                if now < next_beat and not (dirty and now >= last_sent + min_gap):
                    continue
                pending, job.pending = job.pending, None
            if job.cancel_seen_at is not None and now - job.cancel_seen_at > self.config.lease_seconds:
                log.warning("job %s ignored its cancel request for %.0fs; letting its lease lapse",
                            job.ctx.job_id, now - job.cancel_seen_at)
                return
            if not self._heartbeat(job, pending):
                return
            last_sent, next_beat = now, now + interval

    def _heartbeat(self, job: _ActiveJob, pending: tuple[float, str | None] | None) -> bool:
        """Send one heartbeat. False when this job must no longer be reported (lost or settled)."""
        ctx = job.ctx
        progress, message = pending if pending is not None else (None, None)
        with job.lock:
            if job.settled or job.released or job.lost:
                return False
            try:
                answer = self._call("jobs.heartbeat", job_id=ctx.job_id, lease_id=ctx.lease_id, progress=progress,
                                    message=message)
            except (StaleLease, NotFound) as refused:
                job.lost = True
                log.warning("job %s: %s", ctx.job_id, refused)
                ctx.cancel(LEASE_LOST)
                return False
            except Exception as failure:  # keep beating; the next one may get through
                log.warning("heartbeat for job %s failed: %s", ctx.job_id, failure)
                return True
        if answer.get("cancel_requested") and not ctx.cancelled.is_set():
            job.cancel_seen_at = time.monotonic()
            ctx.cancel(CANCEL_REQUESTED)
        return True

    # -- stopping ----------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Wait up to grace_seconds for running handlers, then release what is left."""
        deadline = time.monotonic() + self.config.grace_seconds
        while self._active and not self._hurry.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            self._reap()
            if self._active:
                self._wake.wait(min(remaining, 0.1))
        self._reap()
        for job in list(self._active.values()):
            with job.lock:
                if job.settled or job.lost or job.released:
                    continue
                job.released = True
                job.ctx.cancel(SHUTDOWN)
                job.stop_beating.set()
                job.wake.set()
                try:
                    self._call("jobs.release", job_id=job.ctx.job_id, lease_id=job.ctx.lease_id)
                except OrchError as error:
                    log.warning("could not release job %s: %s", job.ctx.job_id, error)
        # Give cooperative handlers a moment to notice; threads still running are daemons.
        give_up = time.monotonic() + min(1.0, self.config.grace_seconds + 0.2)
        for job in list(self._active.values()):
            assert job.thread is not None
            job.thread.join(max(0.0, give_up - time.monotonic()))
        self._reap()
        for job in self._active.values():  # handlers that did not return: record them as released
            self._finished.append(self._finish(job, RELEASED, "handler still running at exit"))
            if self.on_finished is not None:
                self.on_finished(self._finished[-1])
        self._active.clear()

    def _summary(self, stopped_by: str, seconds: float) -> dict[str, Any]:
        outcomes: dict[str, int] = {}
        for finished in self._finished:
            outcomes[finished.outcome] = outcomes.get(finished.outcome, 0) + 1
        return {
            "worker_id": self.config.worker_id,
            "stopped_by": stopped_by,
            "claimed": self._claimed,
            "finished": len(self._finished),
            "outcomes": dict(sorted(outcomes.items())),
            "released": [f.job_id for f in self._finished if f.outcome == RELEASED],
            "seconds": round(seconds, 3),
        }
