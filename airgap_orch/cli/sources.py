"""`airgap-orch sources add | list | show | pause | resume` and `airgap-orch schedules run-due`."""

from __future__ import annotations

from typing import Any

import click

from .. import validation
from .context import command, invoke, settings
from .jobs import _payload
from .output import _table

_TICKET = click.option("--ticket", help=f"Change ticket (at most {validation.MAX_TICKET_CHARS} characters).")


@click.group("sources")
def group() -> None:
    """Upstream sources jobs ingest from, their schedules, pauses and resumes."""


@command(group, "add")
@click.option("--tenant", required=True)
@click.option("--name", required=True, help="Unique across tenants; jobs carry the key source:NAME.")
@click.option("--type", "job_type", required=True, help="Job type of the source's jobs.")
@click.option("--project", help="Project of its jobs (default: the source name).")
@click.option("--queue", help="Queue of its jobs (default: default).")
@click.option("--host", help="Upstream host; jobs also carry the key host:HOST.")
@click.option("--schedule", help="Cron expression, 5 fields, UTC (e.g. '0 * * * *'): one job per tick.")
@click.option("--missed", type=click.Choice(["skip", "backfill"]), default="skip", show_default=True,
              help="Ticks missed while nothing ran: skip them, or backfill their windows.")
@click.option("--payload", help="JSON object (or @FILE) each job's payload starts from.")
@click.option("--reason", help=f"Why (at most {validation.MAX_REASON_CHARS} characters); recorded in the audit log.")
@_TICKET
def add(tenant: str, name: str, job_type: str, project: str | None, queue: str | None, host: str | None,
        schedule: str | None, missed: str, payload: str | None, reason: str | None, ticket: str | None) -> dict:
    """Add a source (and its schedule)."""
    request: dict[str, Any] = {"tenant": tenant, "name": name, "type": job_type, "missed": missed}
    for key, value in (("project", project), ("queue", queue), ("host", host), ("schedule", schedule)):
        if value is not None:
            request[key] = value
    if payload is not None:
        request["payload"] = _payload(payload)
    return invoke("sources.add", {**request, "reason": reason, "ticket": ticket})


@command(group, "list")
@click.option("--tenant")
def list_(tenant: str | None) -> dict | None:
    """Sources with their schedule, last and next tick, and pause."""
    result = invoke("sources.list", {"tenant": tenant})
    if settings().json:
        return result
    rows = [{**item, "paused": f"since {item['paused']['paused_at']}: {item['paused']['reason']}"
             if item["paused"] else "no"} for item in result["sources"]]
    click.echo(_table(rows, ("name", "tenant", "type", "schedule", "missed_policy", "last_tick", "next_tick",
                             "paused")) or "no sources")
    return None


@command(group, "show")
@click.argument("name")
def show(name: str) -> dict:
    """One source: its definition, last and next tick, skipped ticks and pause."""
    return invoke("sources.show", {"name": name})


@command(group, "pause")
@click.argument("name")
@click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters).")
@_TICKET
def pause(name: str, reason: str | None, ticket: str | None) -> dict:
    """Pause source NAME: its jobs stay queued and none is claimed; its schedule waits. Needs --reason."""
    return invoke("sources.pause", {"name": name, "reason": reason, "ticket": ticket})


@command(group, "resume")
@click.argument("name")
@click.option("--reason", help=f"Why (at most {validation.MAX_REASON_CHARS} characters); recorded in the audit log.")
@_TICKET
def resume(name: str, reason: str | None, ticket: str | None) -> dict:
    """Resume source NAME; ticks missed while paused meet its missed-tick policy at the next run."""
    return invoke("sources.resume", {"name": name, "reason": reason, "ticket": ticket})


@click.group("schedules")
def schedules() -> None:
    """Source schedules (the server and `worker run` run them every few seconds)."""


@command(schedules, "run-due")
def run_due() -> dict:
    """Enqueue the due ticks of every scheduled, unpaused source now (through the server that owns the
    ledger, if one runs)."""
    return invoke("schedules.run_due", {})


GROUPS = (group, schedules)
