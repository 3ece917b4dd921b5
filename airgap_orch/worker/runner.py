"""The in-process worker runner: claims jobs in batches, runs handlers in threads, heartbeats, reports.

The runner is handed an open Ledger and owns it for its whole life (one writer). Claims and worker reports
go through a LedgerWriter (operations/writer.py), as they do in the server: reports and claims that the
threads make at the same time share one transaction (group commit), so short jobs are not limited by one
commit per report; a group that fails for another reason than a refusal is retried one request at a time.
The main loop's other ledger work (running due schedules, the idle check) goes through operations/
directly; the Ledger's lock orders it with the writer's transactions.

Threads:
- the main loop (the caller's thread) claims up to the number of free handler slots, one claim
  statement per handled job type, records finished jobs and watches for stop requests. A slot is free once
  its handler returns, while the outcome is still being reported, so that claim and report can share a
  transaction;
- one thread per job runs the handler and then acks or fails under the job's lease;
- one heartbeat thread hands the writer every heartbeat due, without waiting for the answers.

What is tracked per lease, when heartbeats are due, when a job is dropped as lost, and what is reported for
each way a handler ends: the lease tracker (leases.py), the one the SDK worker uses. In short: a job's first
heartbeat, which moves it to running, goes out FIRST_BEAT_SECONDS after its handler starts, so a shorter job
costs none; then one every lease/3 seconds, carrying progress (at most every `progress_interval` seconds).
A heartbeat that answers `cancel_requested` sets `ctx.cancelled`; one refused as stale (the lease expired
or was superseded) means another worker may own the job now: the runner stops reporting for it, signals
the handler to stop, and never acks it.

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
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .. import validation
from ..errors import InvalidInput, OrchError
from ..ledger import Ledger
from ..operations import jobs as ops
from ..operations import sources as source_ops
from ..operations.dispatch import Caller
from ..operations.writer import LedgerWriter
from ..orchestrator.sources import SCHEDULE_EVERY_SECONDS
from ..orchestrator.states import ACTIVE_STATES
from .context import FinishedJob, JobContext, install_stop_signals, restore_signals
from .leases import RELEASED, Beat, LeaseTracker, TrackedJob

log = logging.getLogger(__name__)

Handler = Callable[[JobContext], "list[dict[str, str]] | None"]
_JOB_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
MAX_CONCURRENCY = 256



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
    job_log_limits: Any = None  # orchestrator/joblogs.Limits (worker run --job-log-lines, --job-log-retention)

    def __post_init__(self) -> None:
        if not self.handlers:
            raise InvalidInput("name at least one handler: --handler JOBTYPE=module:function")
        validation.text(self.worker_id, validation.MAX_WORKER_ID_CHARS, "worker id", required=True)
        validation.number_in(self.concurrency, 1, MAX_CONCURRENCY, "concurrency")
        validation.lease_seconds(self.lease_seconds)
        if self.max_jobs is not None:
            validation.number_in(self.max_jobs, 1, 10**9, "max jobs")
        validation.number_in(self.grace_seconds, 0, 86_400, "grace seconds")




class Runner:
    """Runs handlers for claimed jobs until stopped, idle (with exit_when_idle) or max_jobs are done."""

    def __init__(self, ledger: Ledger, config: RunnerConfig,
                 on_finished: Callable[[FinishedJob], None] | None = None):
        self.ledger = ledger
        self.config = config
        self.on_finished = on_finished
        self._beat_wake = threading.Event()
        self._beats_done = threading.Event()
        # A finished attempt stays tracked until the main loop records it, so slots and max_jobs count it.
        self._leases = LeaseTracker(config.lease_seconds, progress_interval=config.progress_interval,
                                    forget_done=False, wake=self._beat_wake.set)
        self._done: queue_module.SimpleQueue[tuple[TrackedJob, FinishedJob]] = queue_module.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hurry = threading.Event()  # a second stop request: skip the grace period
        self._stop_reason = "stop"
        self._finished: list[FinishedJob] = []
        self._claimed = 0
        self._type_offset = 0
        self._scheduled_at: float | None = None  # monotonic time of the last run of due schedules
        if config.job_log_limits is not None:
            ledger.job_log_limits = config.job_log_limits
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
        beater = threading.Thread(target=self._beat_loop, name="heartbeats", daemon=True)
        try:
            self._writer.start()
            beater.start()
            try:
                stopped_by = self._loop()
            except BaseException:
                self._hurry.set()  # the loop broke: give the leases back now rather than strand them
                self._shutdown()
                raise
            self._shutdown()
        finally:
            self._beats_done.set()
            self._beat_wake.set()
            if beater.is_alive():
                beater.join()
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
            slots = config.concurrency - self._leases.handling
            if config.max_jobs is not None:
                slots = min(slots, config.max_jobs - len(self._finished) - len(self._leases))
            claimed = self._claim(slots) if slots > 0 else 0
            if config.exit_when_idle and not self._leases and claimed == 0 and self._site_idle():
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
                page = ops.list_jobs(self.ledger, state=state, job_type=job_type, queue=self.config.queue, limit=1)
                if page["jobs"]:
                    return False
        return True

    def _reap(self) -> None:
        while True:
            try:
                job, finished = self._done.get_nowait()
            except queue_module.Empty:
                return
            self._leases.forget(job)
            self._record(finished)

    def _record(self, finished: FinishedJob) -> None:
        self._finished.append(finished)
        if self.on_finished is not None:
            self.on_finished(finished)

    # -- one job -----------------------------------------------------------------------------------
    def _start(self, lease: dict[str, Any]) -> None:
        self._claimed += 1
        job = self._leases.track(lease, self.config.handlers[lease["type"]], self.config.worker_id)
        self._leases.start(job)  # its first beat, FIRST_BEAT_SECONDS from now, moves the job to running
        threading.Thread(target=self._work, args=(job,), name=f"job-{lease['job_id'][:13]}", daemon=True).start()

    def _work(self, job: TrackedJob) -> None:
        outcome = self._leases.run(job)
        verdict = self._leases.handler_returned(job)
        # The slot is free before the report: the main loop's claim for it can then join this report's transaction.
        self._wake.set()
        if verdict is None:
            finished = self._leases.report(job, outcome, self._send)
        else:
            finished = self._leases.result(job, verdict, outcome.error)
        if finished is not None:  # None only if another thread finished it, and none does
            self._done.put((job, finished))
        self._wake.set()

    def _send(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._call(name, **params)

    def _call(self, name: str, **params: Any) -> dict[str, Any]:
        """Run a claim or a report through the group-commit writer; raises what the operation raises."""
        return self._writer.call(name, params)

    # -- heartbeats --------------------------------------------------------------------------------
    def _beat_loop(self) -> None:
        """Hand every heartbeat due to the writer without waiting for its answer: beats due together share a
        transaction."""
        while not self._beats_done.is_set():
            beats, wait = self._leases.due_beats()
            for beat in beats:
                self._send_beat(beat)
            self._beat_wake.wait(wait)
            self._beat_wake.clear()

    def _send_beat(self, beat: Beat) -> None:
        if not self._leases.beat_wanted(beat):
            return
        try:
            answer = self._writer.submit("jobs.heartbeat", beat.params, Caller())
        except RuntimeError as stopped:  # the writer has stopped: the runner is ending
            self._leases.beat_sent(beat, stopped)
            return

        def answered(done: Future) -> None:  # runs in the writer's thread
            error = done.exception()
            self._leases.beat_sent(beat, done.result() if error is None else error)

        answer.add_done_callback(answered)

    # -- stopping ----------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Wait up to grace_seconds for running handlers, then release what is left."""
        self._drain(time.monotonic() + self.config.grace_seconds, hurry=True)
        for job in self._leases.jobs():
            if self._leases.release(job):
                try:
                    self._call("jobs.release", job_id=job.job_id, lease_id=job.lease_id)
                except OrchError as error:
                    log.warning("could not release job %s: %s", job.job_id, error)
        # Give cooperative handlers a moment to notice; threads still running are daemons.
        self._drain(time.monotonic() + min(1.0, self.config.grace_seconds + 0.2), hurry=False)
        for job in self._leases.jobs():  # handlers that did not return: record them as released
            self._leases.forget(job)
            self._record(self._leases.result(job, RELEASED, "handler still running at exit"))

    def _drain(self, deadline: float, *, hurry: bool) -> None:
        """Record finished attempts until none is held or the deadline passes (or a second stop request,
        if `hurry`)."""
        while self._leases and not (hurry and self._hurry.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            self._reap()
            if self._leases:
                self._wake.wait(min(remaining, 0.1))
        self._reap()

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
