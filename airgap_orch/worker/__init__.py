"""Running Python handlers. A handler is `def handler(ctx: JobContext) -> list[artifact] | None`; see
context.py for the contract, which the in-process runner (runner.py) and the SDK worker share.

The runner's names load lazily: `airgap_orch.worker.context` alone needs neither DuckDB nor pyarrow,
so the SDK can import it.
"""

from typing import Any

from .context import HandlerError, JobCanceled, JobContext, PermanentError, RetryableError

_RUNNER_NAMES = ("FinishedJob", "Runner", "RunnerConfig", "load_handler", "load_handlers")

__all__ = ["HandlerError", "JobCanceled", "JobContext", "PermanentError", "RetryableError", *_RUNNER_NAMES]


def __getattr__(name: str) -> Any:
    if name in _RUNNER_NAMES:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
