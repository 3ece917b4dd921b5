"""`airgap-orch deadletter list | replay`."""

from __future__ import annotations

import click

from .. import validation
from .context import command, invoke
from .paging import invoke_listing


@click.group("deadletter")
def group() -> None:
    """Jobs whose attempts ran out."""


@command(group, "list")
@click.option("--tenant")
@click.option("--type", "job_type")
@click.option("--limit", type=int, default=1000, show_default=True,
              help="Jobs to list at most (1 to 100,000), read a page at a time.")
def list_(tenant: str | None, job_type: str | None, limit: int) -> dict:
    """Dead-lettered jobs."""
    return invoke_listing("deadletter.list", {"tenant": tenant, "type": job_type}, limit)


@command(group, "replay")
@click.argument("job_ids", nargs=-1)
@click.option("--tenant", help="Bulk: replay this tenant's dead letters (with --type and --since).")
@click.option("--type", "job_type", help="Bulk: of this job type.")
@click.option("--since", help="Bulk: that were dead-lettered at or after this ISO 8601 time.")
@click.option("--dry-run", is_flag=True, help="Report the count and ids; change nothing.")
@click.option("--reason", help=f"Why (recorded in the audit log; at most {validation.MAX_REASON_CHARS} characters).")
@click.option("--again", is_flag=True, help="Replay named jobs that already have a replay once more.")
def replay(job_ids: tuple[str, ...], tenant: str | None, job_type: str | None, since: str | None, dry_run: bool,
           reason: str | None, again: bool) -> dict:
    """Clone dead-lettered (or failed, timed-out) jobs into new queued jobs with replay_of set: the named
    ones (each once, unless --again), or in bulk every dead letter of --tenant and --type since --since that
    has no replay yet. Answers {dry_run, count, job_ids, replays} either way."""
    bulk = {"tenant": tenant, "type": job_type, "since": since}
    if job_ids and any(value is not None for value in bulk.values()):
        raise click.UsageError("name job ids or --tenant/--type/--since, not both")
    if not job_ids and any(value is None for value in bulk.values()):
        raise click.UsageError("name job ids, or all of --tenant, --type and --since")
    if again and not job_ids:
        raise click.UsageError("--again goes with named job ids; a bulk replay takes only dead letters with no replay")
    params = {"job_ids": list(job_ids), "again": again} if job_ids else bulk
    return invoke("deadletter.replay_bulk", {**params, "dry_run": dry_run, "reason": reason})
