"""The job log bounds `serve` and `worker run` take (README "Job logs"): --job-log-lines, --job-log-retention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .. import validation


def job_log_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add --job-log-lines and --job-log-retention to a command (its function takes job_log_lines and
    job_log_retention; limits() turns them into the ledger's joblogs.Limits)."""
    function = click.option(
        "--job-log-lines", type=click.IntRange(validation.MIN_JOB_LOG_LINES, validation.MAX_JOB_LOG_LINES),
        default=validation.DEFAULT_JOB_LOG_LINES, show_default=True,
        help="Log lines a job keeps at most; past that the oldest are dropped, a marker line says how many.")(function)
    return click.option(
        "--job-log-retention", default=validation.DEFAULT_JOB_LOG_RETENTION, show_default=True, metavar="DURATION",
        help="How long job log lines are kept after they are stored, e.g. 12h, 7d, 30d.")(function)


def limits(lines: int, retention: str) -> Any:
    """joblogs.Limits of the flags (the retention refused with exit 1 unless it is a duration such as 7d)."""
    from ..orchestrator.joblogs import Limits  # here: a command sent to a server needs no DuckDB

    return Limits(lines=lines, retention_seconds=validation.duration_seconds(retention, "--job-log-retention"))
