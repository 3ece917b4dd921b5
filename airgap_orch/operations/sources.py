"""Source and schedule operations: add, list, show, pause, resume, run due schedules.

Every check runs before the transaction opens, so a refused request leaves the ledger as it was.
orchestrator/sources.py holds the rules; pauses are key pauses (orchestrator/limits.py), enforced at claim.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import clock, validation
from ..errors import Forbidden
from ..ledger import Ledger
from ..orchestrator import sources as core
from .registry import operation

Tenants = Collection[str] | None


@operation("sources.add")
def add(ledger: Ledger, *, tenant: Any, name: Any, type: Any, project: Any = None, queue: Any = None,
        host: Any = None, schedule: Any = None, missed: Any = core.SKIP, payload: Any = None, reason: Any = None,
        ticket: Any = None, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """Add a source; `project` defaults to the source name, `queue` to the default queue."""
    checked_name = validation.source_name(name)
    validation.name(tenant, "tenant")
    validation.name(type, "type")
    checked_project = validation.name(project if project is not None else checked_name, "project")
    checked_queue = validation.name(queue if queue is not None else validation.DEFAULT_QUEUE, "queue")
    checked_host = validation.host(host)
    checked_schedule = validation.cron(schedule)
    policy = validation.missed_policy(missed)
    checked_payload = validation.source_payload(payload)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, reason_required=False)
    if tenants is not None and tenant not in tenants:
        raise Forbidden(f"this caller may not add sources for tenant {tenant!r}")
    with ledger.transaction() as tx:
        return core.add(tx, name=checked_name, tenant=tenant, project=checked_project, job_type=type,
                        queue=checked_queue, host=checked_host, schedule=checked_schedule, missed_policy=policy,
                        payload=checked_payload, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("sources.list")
def list_sources(ledger: Ledger, *, tenant: Any = None, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """Sources by name, each with its pause and next tick."""
    if tenant is not None:
        validation.name(tenant, "tenant")
    now = clock.now()
    with ledger.snapshot() as read:
        rows = read.rows("source_list", tenant=tenant, tenants=sorted(tenants) if tenants is not None else None)
        return {"sources": [core.render(read, row, now) for row in rows]}


@operation("sources.show")
def show(ledger: Ledger, *, name: Any, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    checked = validation.source_name(name)
    with ledger.snapshot() as read:
        return core.render(read, core.get(read, checked, tenants), clock.now())


@operation("sources.pause")
def pause(ledger: Ledger, *, name: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
          tenants: Tenants = None) -> dict[str, Any]:
    """Pause a source: its jobs stay queued and are not claimed, its schedule stops until `resume`."""
    checked_name = validation.source_name(name)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket)
    assert checked_reason is not None
    with ledger.transaction() as tx:
        return core.pause(tx, checked_name, reason=checked_reason, ticket=checked_ticket, actor=actor,
                          tenants=tenants)


@operation("sources.resume")
def resume(ledger: Ledger, *, name: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
           tenants: Tenants = None) -> dict[str, Any]:
    checked_name = validation.source_name(name)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, reason_required=False)
    with ledger.transaction() as tx:
        return core.resume(tx, checked_name, reason=checked_reason, ticket=checked_ticket, actor=actor,
                           tenants=tenants)


@operation("schedules.run_due")
def run_due(ledger: Ledger, *, actor: str = core.SCHEDULER, tenants: Tenants = None) -> dict[str, Any]:
    """Enqueue every due tick now (the server and the worker loop call this every few seconds)."""
    with ledger.transaction() as tx:
        return core.run_due(tx, actor=actor, tenants=tenants)
