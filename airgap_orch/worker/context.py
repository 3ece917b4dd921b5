"""What a handler sees: the job context, and the exceptions a handler raises to say how it ended.

    def handler(ctx: JobContext) -> list[dict] | None:   # artifacts {uri, digest, mime}, or None
        for step in range(10):
            ctx.check_cancelled()          # raises JobCanceled once the job should stop
            ...
            ctx.progress((step + 1) / 10, f"step {step + 1}")
            ctx.log(f"step {step + 1} done")   # a job log line: sent with the next heartbeat or the ack/fail

How a handler ends decides what the runner reports under the job's lease:
- returns            -> ack with the returned artifacts
- RetryableError     -> fail; retried (after `retry_after` seconds if given) while attempts remain
- PermanentError     -> fail with no retry (state `failed`)
- any other error    -> fail; retried with the orchestrator's backoff while attempts remain
- JobCanceled        -> the runner reports the job as canceled when cancellation was requested

Python threads cannot be killed: cancellation is cooperative. `ctx.cancelled` is set when an operator
cancels the job, when its lease is lost, or when the worker shuts down; a handler should call
`ctx.check_cancelled()` (or test `ctx.cancelled.is_set()`) between units of work.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HandlerError(Exception):
    """Base of the exceptions a handler raises on purpose."""


class RetryableError(HandlerError):
    """A transient failure: try the job again (after `retry_after` seconds, if given)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(HandlerError):
    """A failure that retrying cannot fix (bad input): the job ends `failed`."""


class JobCanceled(HandlerError):
    """Raised by `ctx.check_cancelled()`: stop working on this job now."""


# Why a context's `cancelled` event was set.
CANCEL_REQUESTED = "cancel_requested"  # an operator canceled the job
LEASE_LOST = "lease_lost"  # the lease expired or was superseded: another worker may own the job
SHUTDOWN = "shutdown"  # the worker is stopping and released the job

# Both workers (worker run and the SDK) start a handler at once and send its job's first heartbeat, which
# moves the job to running, this long after (or at lease_seconds / 3 if sooner): a job shorter than that
# goes from leased to its ack or fail with no heartbeat of its own.
FIRST_BEAT_SECONDS = 0.2


class JobContext:
    """One attempt of one job, as handed to a handler. Thread-safe."""

    def __init__(self, lease: dict[str, Any], worker_id: str,
                 report_progress: Callable[[float, str | None], None],
                 report_log: Callable[[str, str], None] | None = None):
        self.job_id: str = lease["job_id"]
        self.lease_id: str = lease["lease_id"]
        self.attempt: int = lease["attempt"]
        self.max_attempts: int = lease["max_attempts"]
        self.payload: Any = lease["payload"]
        self.tenant: str = lease["tenant"]
        self.project: str = lease["project"]
        self.type: str = lease["type"]
        self.queue: str = lease["queue"]
        self.correlation_id: str | None = lease.get("correlation_id")
        self.worker_id = worker_id
        self.cancelled = threading.Event()
        self.cancel_reason: str | None = None
        self.running = threading.Event()  # set once a heartbeat was answered: the orchestrator shows it running
        self._report_progress = report_progress
        self._report_log = report_log
        self._lock = threading.Lock()

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (0..1, plus an optional message); sent with the next heartbeat, rate-limited."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be a number between 0 and 1, not {fraction!r}")
        self._report_progress(float(fraction), message)

    def log(self, message: str, level: str = "info") -> None:
        """Write a line to the job's log (README "Job logs"): kept in this worker and sent with the next heartbeat
        (one goes within a second of the line) or with the job's ack or fail, never in a request of its own. The
        orchestrator stamps it with the job, attempt, lease, tenant, project, correlation id and a sequence number.
        `level`: debug, info, warning or error. A line longer than the limit is cut (ending in "…"); never log
        secrets. Lines written once the attempt is over (reported, lost or given back) are not stored."""
        from ..validation import LOG_LEVELS, MAX_LOG_LINE_CHARS

        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
        text = message if isinstance(message, str) else str(message)
        if not text.isascii():  # a lone surrogate would have the report refused: store a replacement instead
            text = text.encode("utf-8", "replace").decode("utf-8")
        if len(text) > MAX_LOG_LINE_CHARS:
            text = text[:MAX_LOG_LINE_CHARS - 1] + "…"
        if self._report_log is not None:
            self._report_log(text, level)

    def check_cancelled(self) -> None:
        """Raise JobCanceled if this job should stop (canceled, lease lost, or worker shutting down)."""
        if self.cancelled.is_set():
            raise JobCanceled(f"job {self.job_id} stopped: {self.cancel_reason}")

    def cancel(self, reason: str) -> None:
        """Signal the handler to stop (the first reason wins). Used by the runner."""
        with self._lock:
            if self.cancel_reason is None:
                self.cancel_reason = reason
        self.cancelled.set()


# -- a handler's outcome (shared by the in-process runner and the SDK worker; leases.py reports it) ------

def describe_error(exc: BaseException) -> str:
    """The error text a failed attempt records: exception type and message, clipped."""
    text = str(exc)
    return clip_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def clip_error(text: str) -> str:
    from ..validation import MAX_ERROR_CHARS

    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 1] + "…"


def bounded_retry_after(value: float | None) -> float | None:
    from ..validation import MAX_RETRY_AFTER_SECONDS

    if value is None:
        return None
    return min(max(0.0, float(value)), MAX_RETRY_AFTER_SECONDS)


def install_stop_signals(stop: Callable[[str], None]) -> dict[int, Any]:
    """Make SIGTERM and SIGINT call stop("signal:NAME") (main thread only); returns the handlers they replace,
    for restore_signals()."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda number, _frame: stop(f"signal:{signal.Signals(number).name}"))
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@dataclass(frozen=True)
class FinishedJob:
    """One attempt a runner or an SDK worker finished with: what happened and how long it took (passed to
    `on_finished`)."""

    job_id: str
    type: str
    tenant: str
    attempt: int
    outcome: str
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How one attempt of a handler ended, before it is reported.

    kind: "ack" (artifacts), "fail" (error, retry_after, no_retry), or "stopped" (the handler raised
    JobCanceled, or was not started because its job should already stop). What each is reported as:
    leases.report_request."""

    kind: str
    artifacts: list[Any] = field(default_factory=list)
    error: str | None = None
    retry_after: float | None = None
    no_retry: bool = False


def run_handler(handler: Callable[[JobContext], Any], ctx: JobContext) -> Outcome:
    """Call a handler and turn its return or exception into an Outcome: the one contract both runners keep."""
    import json
    import logging

    try:
        result = handler(ctx)
    except JobCanceled as exc:
        return Outcome("stopped", error=str(exc))
    except RetryableError as exc:
        return Outcome("fail", error=describe_error(exc), retry_after=exc.retry_after)
    except PermanentError as exc:
        return Outcome("fail", error=describe_error(exc), no_retry=True)
    except (Exception, SystemExit) as exc:  # a handler bug is that attempt's failure, not the worker's
        logging.getLogger("airgap_orch.worker").debug("handler for job %s raised", ctx.job_id, exc_info=True)
        return Outcome("fail", error=describe_error(exc))
    if result is None:
        return Outcome("ack")
    if not isinstance(result, list):
        return Outcome("fail", error=f"handler returned {type(result).__name__}; it must return a list "
                                      "of artifacts or None", no_retry=True)
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return Outcome("fail", error=clip_error(f"handler returned artifacts that are not JSON: {exc}"),
                       no_retry=True)
    return Outcome("ack", artifacts=result)
