"""In-process worker runner: Python handlers run against the ledger this process owns.

A handler is `def handler(ctx: JobContext) -> list[artifact] | None`; see context.py for the contract.
"""

from .context import HandlerError, JobCanceled, JobContext, PermanentError, RetryableError
from .runner import FinishedJob, Runner, RunnerConfig, load_handler, load_handlers

__all__ = [
    "FinishedJob", "HandlerError", "JobCanceled", "JobContext", "PermanentError", "RetryableError", "Runner",
    "RunnerConfig", "load_handler", "load_handlers",
]
