"""Python worker SDK: talks HTTP to a running `airgap-orch serve`. Loads neither DuckDB nor pyarrow.

`Worker` runs handlers (the same handler contract as the in-process runner, airgap_orch/worker/context.py);
`OrchClient` calls any operation of the HTTP API.
"""

from .client import OrchClient, ServerUnavailable
from .worker import (
    HandlerError,
    JobCanceled,
    JobContext,
    JobResult,
    PermanentError,
    RetryableError,
    Worker,
)

__all__ = [
    "HandlerError", "JobCanceled", "JobContext", "JobResult", "OrchClient", "PermanentError", "RetryableError",
    "ServerUnavailable", "Worker",
]
