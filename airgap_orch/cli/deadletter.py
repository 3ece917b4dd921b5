"""`airgap-orch deadletter list | replay`."""

from __future__ import annotations

import click

from .context import command, invoke


@click.group("deadletter")
def group() -> None:
    """Jobs whose attempts ran out."""


@command(group, "list")
@click.option("--tenant")
@click.option("--type", "job_type")
def list_(tenant: str | None, job_type: str | None) -> dict:
    """Dead-lettered jobs."""
    return invoke("deadletter.list", {"tenant": tenant, "type": job_type})


@command(group, "replay")
@click.argument("job_ids", nargs=-1, required=True)
def replay(job_ids: tuple[str, ...]) -> dict:
    """Clone dead-lettered (or failed, timed-out) jobs into new queued jobs with replay_of set."""
    return invoke("deadletter.replay", {"job_ids": list(job_ids)})
