"""`airgap-orch deadletter list | replay`."""

from __future__ import annotations

import click

from ..operations import jobs as ops
from .context import command, settings


@click.group("deadletter")
def group() -> None:
    """Jobs whose attempts ran out."""


@command(group, "list")
@click.option("--tenant")
@click.option("--type", "job_type")
def list_(tenant: str | None, job_type: str | None) -> dict:
    """Dead-lettered jobs."""
    with settings().open_ledger() as ledger:
        return ops.deadletter_list(ledger, tenant=tenant, job_type=job_type)


@command(group, "replay")
@click.argument("job_ids", nargs=-1, required=True)
def replay(job_ids: tuple[str, ...]) -> dict:
    """Clone dead-lettered (or failed, timed-out) jobs into new queued jobs with replay_of set."""
    with settings().open_ledger() as ledger:
        return ops.replay(ledger, list(job_ids))
