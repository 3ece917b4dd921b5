"""`airgap-orch backfill create | list | show | cancel`: one job per time window, driven and watched."""

from __future__ import annotations

from typing import Any

import click

from .. import validation
from .context import command, invoke, progress_bar, settings
from .jobs import _payload


@click.group("backfill")
def group() -> None:
    """Re-run a time range: one job per window, with progress and a watermark."""


@command(group, "create")
@click.option("--tenant", required=True)
@click.option("--project", required=True)
@click.option("--type", "job_type", required=True)
@click.option("--from", "start", required=True, help="ISO 8601 date or time (UTC if no offset).")
@click.option("--to", "end", required=True, help="ISO 8601 date or time, after --from.")
@click.option("--step", required=True, help="Window length: a whole number and s, m, h or d (15m, 1h, 1d).")
@click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters).")
@click.option("--ticket", help=f"Change ticket (required, at most {validation.MAX_TICKET_CHARS} characters).")
@click.option("--payload", help="JSON object (or @FILE) each window's payload starts from.")
@click.option("--queue")
@click.option("--priority", type=int)
@click.option("--max-attempts", type=int)
@click.option("--timeout-seconds", type=int)
def create(tenant: str, project: str, job_type: str, start: str, end: str, step: str, reason: str | None,
           ticket: str | None, payload: str | None, queue: str | None, priority: int | None,
           max_attempts: int | None, timeout_seconds: int | None) -> dict:
    """Create one job per window [start, end), all in one transaction; windows already covered by a job of
    the same tenant and type are suppressed."""
    request: dict[str, Any] = {"tenant": tenant, "project": project, "type": job_type, "from": start, "to": end,
                               "step": step, "payload": _payload(payload)}
    for key, value in (("queue", queue), ("priority", priority), ("max_attempts", max_attempts),
                       ("timeout_seconds", timeout_seconds)):
        if value is not None:
            request[key] = value
    with progress_bar("building window jobs") as bar:
        return invoke("backfills.create", {**request, "reason": reason, "ticket": ticket}, progress=bar)


@command(group, "list")
@click.option("--tenant")
@click.option("--type", "job_type")
@click.option("--state", type=click.Choice(["active", "canceled"]))
@click.option("--limit", type=int, default=100, show_default=True)
def list_(tenant: str | None, job_type: str | None, state: str | None, limit: int) -> dict | None:
    """Backfills, newest first, with their progress."""
    result = invoke("backfills.list", {"tenant": tenant, "type": job_type, "state": state, "limit": limit})
    if settings().json:
        return result
    if not result["backfills"]:
        click.echo("no backfills")
        return None
    columns = ("backfill_id", "state", "tenant", "type", "from", "to", "step", "windows", "done")
    rows = [[str(item["progress"]["done"] if column == "done" else item[column]) for column in columns]
            for item in result["backfills"]]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(widths[i]) for i, column in enumerate(columns)).rstrip())
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return None


@command(group, "show")
@click.argument("backfill_id")
def show(backfill_id: str) -> dict:
    """One backfill: its windows, progress by job state and watermark."""
    return invoke("backfills.show", {"backfill_id": backfill_id})


@command(group, "cancel")
@click.argument("backfill_id")
@click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters).")
@click.option("--ticket", help=f"Change ticket (at most {validation.MAX_TICKET_CHARS} characters).")
def cancel(backfill_id: str, reason: str | None, ticket: str | None) -> dict:
    """Cancel the backfill's queued jobs and ask the workers of its running ones to stop."""
    return invoke("backfills.cancel", {"backfill_id": backfill_id, "reason": reason, "ticket": ticket})
