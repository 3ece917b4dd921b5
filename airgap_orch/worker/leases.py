"""The one lease tracker both workers use: `worker run` (runner.py, through the ledger writer) and the SDK's
`Worker` (sdk/worker.py, over HTTP). Each worker keeps its transport (how a request reaches the ledger) and
its threads; every rule about a leased attempt lives here:

- Attempts are tracked by lease id, not job id: a retry due at once can bring a job back to the worker
  while the last attempt's report is still in flight, and the two attempts must stay apart.
- Phases: waiting (claimed, no handler thread yet) -> running -> reporting (the handler returned; its slot
  is free) -> done. `handling` (waiting or running) and `reporting` count them for the workers' slots.
- Heartbeats: the first, which moves the job to running, FIRST_BEAT_SECONDS after the handler starts (at
  lease/3 if sooner), so a shorter job costs none; then every lease/3 in every phase (a prefetched job
  waiting lease/3 for a thread is heartbeated; a job whose report waits keeps its lease). Progress rides
  along, at most every `progress_interval` and never before the first beat. A beat that failed (no answer,
  or refused for another reason) goes again within RETRY_BEAT_SECONDS and keeps its progress.
- An answered heartbeat sets ctx.running (the job is running in the ledger now); one answering
  cancel_requested sets ctx.cancelled; a handler that ignores it for one lease
  period is heartbeated no more, so its lease lapses and the orchestrator ends the job canceled.
- A heartbeat refused as stale (LEASE_REFUSALS) while the handler has the job means another worker may own
  it: the attempt is lost, the handler is told (ctx.cancel_reason lease_lost) and nothing is reported for
  it. Once its report is under way the report's answer decides.
- Reports: how a handler's end maps to jobs.ack / jobs.fail and their error texts, the fallback when an ack
  is refused for the handler's artifacts, and which answers mean the attempt is lost.
- Job logs (ctx.log): lines wait here and ride on the next heartbeat, which falls due LOG_FLUSH_SECONDS after the
  oldest waiting line at the latest (a running job that logs costs at most two beats a second, none when it logs
  nothing), or on the ack or fail, which carries every line not sent yet (`final_logs`: it takes back the lines of a
  beat not sent yet, and waits for one on the wire, so lines are stored in the order they were written). A beat that
  failed gives its lines back for the next one; a refused (stale) one drops them with the attempt. At most
  validation.MAX_LOG_LINES wait per attempt: past that the oldest go, and a marker line says how many.

Times come from `clock` (time.monotonic unless a test passes its own). Loads neither DuckDB nor pyarrow:
the SDK imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import clock as wall_clock
from ..errors import Conflict, IllegalTransition, InvalidInput, NotFound, StaleLease
from ..validation import MAX_LOG_LINES, MAX_MESSAGE_CHARS
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
    run_handler,
)

log = logging.getLogger("airgap_orch.worker")

# Outcomes of one attempt as a worker saw it (FinishedJob.outcome); the first five are job states.
SUCCEEDED, FAILED, DEAD_LETTER, CANCELED, RETRY = "succeeded", "failed", "dead_letter", "canceled", "queued"
LOST = "lost"  # the lease was taken away; nothing was reported
RELEASED = "released"  # the worker stopped and gave the job back
ERROR = "error"  # the report could not be delivered (logged); the lease lapses and the job is retried

# Answers that mean the lease is not this attempt's any more: expired or superseded, or the job is gone.
LEASE_REFUSALS: tuple[type[Exception], ...] = (Conflict, NotFound)
# The same, by the error type a jobs.ack_many result names.
LEASE_REFUSAL_NAMES = frozenset(kind.__name__ for kind in (Conflict, StaleLease, IllegalTransition, NotFound))

CANCELED_MESSAGE = "canceled on request; handler stopped"
RETRY_BEAT_SECONDS = 1.0  # a heartbeat that failed goes again within this
LOG_FLUSH_SECONDS = 0.5  # a log line waits at most this long for a heartbeat (README: "within a second")

WAITING, RUNNING, REPORTING, DONE = "waiting", "running", "reporting", "done"
_HANDLING = (WAITING, RUNNING)

Handler = Callable[[JobContext], Any]


class TrackedJob:
    """One leased attempt, from claim until its report is answered. Fields change under the tracker's lock."""

    def __init__(self, lease: dict[str, Any], handler: Handler, ctx: JobContext, claimed_at: float,
                 next_beat: float):
        self.lease = lease
        self.handler = handler
        self.ctx = ctx
        self.phase = WAITING
        self.lost = False  # a heartbeat or report was refused as stale: another worker may own the job
        self.released = False  # given back on shutdown
        self.beating = False  # a heartbeat for this attempt is in flight
        self.lapsing = False  # its handler ignored a cancel request for a lease period: no more heartbeats
        self.claimed_at = claimed_at
        self.started = claimed_at
        self.last_beat = claimed_at
        self.next_beat = next_beat
        self.retry_at = 0.0  # after a failed beat, not even progress goes before this
        self.pending: tuple[float, str | None] | None = None  # progress not sent yet
        self.cancel_seen_at: float | None = None
        self.logs: list[dict[str, Any]] = []  # log lines not sent yet, oldest first
        self.logs_since: float | None = None  # when the oldest of them was written
        self.logs_dropped = 0  # lines dropped from `logs` (it was full) since the last report took them
        self.logs_beat: Beat | None = None  # the beat carrying lines, until it is answered
        self.logs_sending = False  # ... and it is on the wire (its lines can no longer be taken back)

    @property
    def job_id(self) -> str:
        return self.lease["job_id"]

    @property
    def lease_id(self) -> str:
        return self.lease["lease_id"]


@dataclass
class Beat:
    """One heartbeat taken from the tracker: call LeaseTracker.beat_wanted, send `params` as jobs.heartbeat, then
    hand the answer (or the error) to LeaseTracker.beat_sent. `logs` may be taken back by the job's report until
    beat_wanted is called."""

    job: TrackedJob
    taken_at: float
    progress: float | None = None
    message: str | None = None
    logs: list[dict[str, Any]] | None = None

    @property
    def params(self) -> dict[str, Any]:
        params = {"job_id": self.job.job_id, "lease_id": self.job.lease_id, "progress": self.progress,
                  "message": self.message}
        if self.logs:
            params["logs"] = self.logs
        return params


def report_request(job: TrackedJob, outcome: Outcome,
                   logs: list[dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """The request that reports how the handler ended: an ack with its artifacts, or a fail with its error text;
    with the log lines not sent yet (LeaseTracker.final_logs), if any."""
    ids: dict[str, Any] = {"job_id": job.job_id, "lease_id": job.lease_id}
    if logs:
        ids["logs"] = logs
    if outcome.kind == "ack":
        return "jobs.ack", {**ids, "artifacts": outcome.artifacts or []}
    if outcome.kind == "stopped" and job.ctx.cancel_reason == CANCEL_REQUESTED:
        # A fail on a job whose cancellation was requested ends it canceled (orchestrator/reports.py).
        return "jobs.fail", {**ids, "error": CANCELED_MESSAGE, "no_retry": True}
    return "jobs.fail", {**ids, "error": clip_error(outcome.error or "handler failed"),
                         "retry_after": bounded_retry_after(outcome.retry_after), "no_retry": outcome.no_retry}


def invalid_artifacts_request(job: TrackedJob, refusal: InvalidInput,
                              logs: list[dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """What is reported instead of an ack refused for the handler's artifacts: a fail, since retrying cannot help
    (with the ack's log lines, which the refused ack did not store)."""
    params: dict[str, Any] = {"job_id": job.job_id, "lease_id": job.lease_id,
                              "error": clip_error(f"invalid artifacts: {refusal}"), "no_retry": True}
    if logs:
        params["logs"] = logs
    return "jobs.fail", params


class LeaseTracker:
    """The attempts one worker holds, by lease id, and the rules above. Thread-safe: `changed` is its lock, and
    is notified whenever an attempt changes phase."""

    def __init__(self, lease_seconds: float, *, progress_interval: float = 0.25, forget_done: bool = True,
                 wake: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic):
        """`wake` is called when a heartbeat may have fallen due sooner than the heartbeat loop was told (progress,
        a handler start, an answered beat). With `forget_done` false, a done attempt stays (and counts in len())
        until forget(): the runner's main loop forgets it once it has recorded it."""
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.progress_interval = progress_interval
        self.forget_done = forget_done
        self._wake = wake or (lambda: None)
        self._clock = clock
        self.changed = threading.Condition()
        self._jobs: dict[str, TrackedJob] = {}
        self.handling = 0  # waiting or running: claimed, and the handler has not returned
        self.reporting = 0  # the handler returned; the report is not answered yet

    def __len__(self) -> int:
        with self.changed:
            return len(self._jobs)

    def jobs(self, *phases: str) -> list[TrackedJob]:
        """The attempts held now (in these phases, if any are named)."""
        with self.changed:
            return [job for job in self._jobs.values() if not phases or job.phase in phases]

    # -- the attempt's life ----------------------------------------------------------------------------
    def track(self, lease: dict[str, Any], handler: Handler, worker_id: str) -> TrackedJob:
        """A newly claimed lease: waiting for a handler thread (heartbeated if it still waits after lease/3)."""
        job: TrackedJob

        def note_progress(fraction: float, message: str | None) -> None:
            with self.changed:
                job.pending = (fraction, message[:MAX_MESSAGE_CHARS] if message else None)
            self._wake()

        def note_log(message: str, level: str) -> None:
            line = {"message": message, "level": level, "at": wall_clock.iso(wall_clock.now())}
            with self.changed:
                if job.phase not in _HANDLING or job.lost or job.released:
                    return  # the attempt is over: its lines have gone with its report, or are not ours to store
                if len(job.logs) >= MAX_LOG_LINES - 1:  # room for the marker line
                    del job.logs[0]
                    job.logs_dropped += 1
                if not job.logs:
                    job.logs_since = self._clock()
                job.logs.append(line)
            self._wake()

        now = self._clock()
        job = TrackedJob(lease, handler, JobContext(lease, worker_id, note_progress, note_log), now,
                         now + self.interval)
        with self.changed:
            self._jobs[job.lease_id] = job
            self.handling += 1
            self.changed.notify_all()
        return job

    def start(self, job: TrackedJob) -> bool:
        """A handler thread takes the attempt. False when it was given back while it waited."""
        now = self._clock()
        with self.changed:
            if job.phase != WAITING or job.released:
                return False
            self._move(job, RUNNING)
            job.started = job.last_beat = now
            job.next_beat = now + min(FIRST_BEAT_SECONDS, self.interval)
        self._wake()
        return True

    def run(self, job: TrackedJob) -> Outcome:
        """Run the handler (not if the attempt should already stop) and say how it ended."""
        ctx = job.ctx
        if ctx.cancelled.is_set():
            return Outcome("stopped", error=f"job {job.job_id} stopped before it started: {ctx.cancel_reason}")
        try:
            return run_handler(job.handler, ctx)
        except BaseException:  # the handler's thread is ending: stop heartbeating, so the lease lapses
            with self.changed:
                job.lost = True
            raise

    def handler_returned(self, job: TrackedJob) -> str | None:
        """The handler returned, so its slot is free. None: report its outcome (the attempt is now reporting).
        LOST or RELEASED: there is nothing to report (the attempt is done)."""
        with self.changed:
            if job.released or job.lost:
                self._move(job, DONE)
                return RELEASED if job.released else LOST
            self._move(job, REPORTING)
            # Beat again only to keep the lease while the report waits; no first beat for it.
            job.next_beat = job.last_beat + self.interval
            return None

    def release(self, job: TrackedJob) -> bool:
        """Give the attempt back on shutdown. True when the worker should send jobs.release for it: its handler
        has not returned and the lease is still ours. One still waiting for a thread is done at once."""
        with self.changed:
            if job.released or job.lost or job.phase not in _HANDLING:
                return False
            job.released = True
            if job.phase == WAITING:
                self._move(job, DONE)
            self.changed.notify_all()
        job.ctx.cancel(SHUTDOWN)
        return True

    def report(self, job: TrackedJob, outcome: Outcome, send: Callable[[str, dict[str, Any]], dict[str, Any]], *,
               logs: list[dict[str, Any]] | None = None) -> FinishedJob | None:
        """Report how the handler ended through `send` (the worker's transport: it raises what the operation
        raises) and finish the attempt with the answer. The report carries `logs`, else final_logs(job)."""
        name, params = report_request(job, outcome, self.final_logs(job) if logs is None else logs)
        try:
            try:
                state = send(name, params)["state"]
            except InvalidInput as refused:
                if name != "jobs.ack" or isinstance(refused, NotFound):
                    raise
                state = send(*invalid_artifacts_request(job, refused, params.get("logs")))["state"]
        except LEASE_REFUSALS as refused:
            return self.finish(job, LOST, str(refused))
        except Exception as failure:  # the transport gave up or the ledger broke: the lease lapses, the job retries
            log.error("could not report job %s: %s", job.job_id, failure)
            return self.finish(job, ERROR, str(failure))
        return self.finish(job, state, outcome.error)

    def final_logs(self, job: TrackedJob) -> list[dict[str, Any]]:
        """The log lines the attempt's report carries: every line not stored yet, oldest first (at most
        MAX_LOG_LINES, a marker line first when some were dropped). Lines of a beat not yet sent are taken back
        from it; a beat on the wire is waited for (up to lease/3), so its lines are stored before the report's."""
        deadline = self._clock() + self.interval
        with self.changed:
            while job.logs_beat is not None and job.logs_sending and self._clock() < deadline:
                self.changed.wait(max(0.0, min(0.1, deadline - self._clock())))
            lines, dropped = list(job.logs), job.logs_dropped
            beat = job.logs_beat
            if beat is not None and not job.logs_sending and beat.logs:
                lines = beat.logs + lines
                beat.logs = None
                job.logs_beat = None
            job.logs, job.logs_since, job.logs_dropped = [], None, 0
        if len(lines) > MAX_LOG_LINES - 1:
            dropped += len(lines) - (MAX_LOG_LINES - 1)
            lines = lines[-(MAX_LOG_LINES - 1):]
        return _with_marker(lines, dropped)

    def finish_acked(self, job: TrackedJob, result: dict[str, Any]) -> FinishedJob | None:
        """Finish an attempt from its jobs.ack_many result: {job_id, state} or {job_id, error: {type, message}}."""
        if "state" in result:
            return self.finish(job, result["state"], None)
        error = result.get("error") or {}
        lost = error.get("type") in LEASE_REFUSAL_NAMES
        return self.finish(job, LOST if lost else ERROR, error.get("message", "no answer for this job"))

    def finish(self, job: TrackedJob, outcome: str, error: str | None) -> FinishedJob | None:
        """The report was answered or given up: the attempt is done. None when it already was."""
        with self.changed:
            if job.phase == DONE:
                return None
            if outcome == LOST:
                job.lost = True
            self._move(job, DONE)
        return self.result(job, outcome, error)

    def result(self, job: TrackedJob, outcome: str, error: str | None) -> FinishedJob:
        """The record of an attempt (for on_finished), timed from its claim."""
        lease = job.lease
        return FinishedJob(job_id=job.job_id, type=lease["type"], tenant=lease["tenant"], attempt=lease["attempt"],
                           outcome=outcome, seconds=round(self._clock() - job.claimed_at, 3), error=error)

    def forget(self, job: TrackedJob) -> None:
        with self.changed:
            if self._jobs.get(job.lease_id) is job:
                del self._jobs[job.lease_id]
            self.changed.notify_all()

    def _move(self, job: TrackedJob, phase: str) -> None:
        old, job.phase = job.phase, phase
        self.handling += (phase in _HANDLING) - (old in _HANDLING)
        self.reporting += (phase == REPORTING) - (old == REPORTING)
        if phase == DONE and self.forget_done and self._jobs.get(job.lease_id) is job:
            del self._jobs[job.lease_id]
        self.changed.notify_all()

    # -- heartbeats ------------------------------------------------------------------------------------
    def due_beats(self) -> tuple[list[Beat], float]:
        """Take every heartbeat due now (an attempt has at most one in flight), and the seconds until the next
        one falls due (at most lease/3)."""
        now = self._clock()
        wake_at = now + self.interval
        due: list[Beat] = []
        with self.changed:
            for job in self._jobs.values():
                at = self._beat_due_at(job, now)
                if at is None:
                    continue
                if at > now:
                    wake_at = min(wake_at, at)
                    continue
                progress, message = job.pending if job.pending is not None and job.phase == RUNNING else (None, None)
                job.pending = None
                job.beating = True
                beat = Beat(job, now, progress, message)
                if job.logs and job.phase == RUNNING:  # once the handler returned, its report carries them
                    beat.logs = _with_marker(job.logs, job.logs_dropped)
                    job.logs, job.logs_since, job.logs_dropped = [], None, 0
                    job.logs_beat, job.logs_sending = beat, False
                due.append(beat)
        return due, max(0.0, wake_at - now)

    def _beat_due_at(self, job: TrackedJob, now: float) -> float | None:
        if job.lost or job.released or job.beating or job.lapsing or job.phase == DONE:
            return None
        if job.cancel_seen_at is not None and now - job.cancel_seen_at > self.lease_seconds:
            job.lapsing = True
            log.warning("job %s ignored its cancel request for %.0fs; letting its lease lapse", job.job_id,
                        now - job.cancel_seen_at)
            return None
        at = job.next_beat
        if job.pending is not None and job.phase == RUNNING:
            at = min(at, max(job.last_beat + self.progress_interval, job.started + FIRST_BEAT_SECONDS, job.retry_at))
        if job.logs_since is not None and job.phase == RUNNING:
            at = min(at, max(job.logs_since + LOG_FLUSH_SECONDS, job.retry_at))
        return at

    def beat_wanted(self, beat: Beat) -> bool:
        """Whether a beat that waited to be sent is still wanted; if not, it is dropped (the attempt finished or
        was given back meanwhile)."""
        with self.changed:
            if beat.job.phase != DONE and not beat.job.released:
                if beat.logs and beat.job.logs_beat is beat:
                    beat.job.logs_sending = True  # from now on the report waits for this beat's answer
                return True
            beat.job.beating = False
            self._lines_answered(beat)
        self._wake()
        return False

    def beat_sent(self, beat: Beat, answer: dict[str, Any] | BaseException) -> None:
        """Take a heartbeat's answer, or the error it raised."""
        job = beat.job
        if isinstance(answer, LEASE_REFUSALS):
            with self.changed:
                self._lines_answered(beat)
            self._beat_refused(beat, answer)
        elif isinstance(answer, BaseException):
            log.warning("heartbeat for job %s failed: %s", job.job_id, answer)
            with self.changed:
                job.beating = False
                job.next_beat = job.retry_at = self._clock() + min(self.interval, RETRY_BEAT_SECONDS)
                if job.pending is None and beat.progress is not None:
                    job.pending = (beat.progress, beat.message)
                if beat.logs and job.logs_beat is beat and job.phase != DONE:  # the next beat (or report) takes them
                    job.logs[:0] = beat.logs
                    over = max(0, len(job.logs) - (MAX_LOG_LINES - 1))
                    del job.logs[:over]
                    job.logs_dropped += over
                    job.logs_since = job.logs_since if job.logs_since is not None else self._clock()
                self._lines_answered(beat)
        else:
            with self.changed:
                self._lines_answered(beat)
                job.beating = False
                job.last_beat = beat.taken_at
                job.next_beat = beat.taken_at + self.interval
                cancel = bool(answer.get("cancel_requested")) and not job.ctx.cancelled.is_set()
                if cancel:
                    job.cancel_seen_at = self._clock()
            job.ctx.running.set()
            if cancel:
                job.ctx.cancel(CANCEL_REQUESTED)
        self._wake()

    def _lines_answered(self, beat: Beat) -> None:
        """Under the lock: the beat's lines are stored, refused or given back; a report waiting for them goes on."""
        if beat.job.logs_beat is beat:
            beat.job.logs_beat, beat.job.logs_sending = None, False
            self.changed.notify_all()

    def _beat_refused(self, beat: Beat, refused: BaseException) -> None:
        job = beat.job
        with self.changed:
            job.beating = False
            job.next_beat = self._clock() + self.interval
            if job.phase not in _HANDLING or job.released:
                return  # its report is under way (the report's answer decides), or it was given back
            job.lost = True
        log.warning("job %s: %s", job.job_id, refused)
        job.ctx.cancel(LEASE_LOST)


def _with_marker(lines: list[dict[str, Any]], dropped: int) -> list[dict[str, Any]]:
    """The lines with, when the worker dropped some (it kept at most MAX_LOG_LINES waiting), a marker line first."""
    if not dropped:
        return list(lines)
    marker = {"message": f"... {dropped} lines dropped by the worker: the handler logged faster than "
                         f"{MAX_LOG_LINES} lines per report", "level": "warning",
              "at": wall_clock.iso(wall_clock.now())}
    return [marker, *lines]
