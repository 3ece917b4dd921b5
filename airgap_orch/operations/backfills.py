"""Backfill operations: create, list, show, cancel (orchestrator/backfills.py holds the rules).

Every check runs before the transaction opens, so a refused backfill changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from typing import Any

from .. import clock, ids, schemas, validation
from ..errors import Forbidden, InvalidInput
from ..ledger import Ledger
from ..orchestrator import backfills as core
from .registry import operation

Progress = Callable[[int, int], None]  # (records built, records in all)
_PROGRESS_EVERY = 500
MAX_LIST = 10_000  # backfills one list answers at most


def backfill_id(value: Any) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"backfill id {value!r} is not a UUID; copy it from `backfill list`") from None


def plan(request: dict[str, Any], *, reason: Any, ticket: Any) -> core.Plan:
    """Validate a create request (schemas/backfill-create-request.schema.json) with its reason and ticket."""
    schemas.validate("backfill-create-request", request, "backfill")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, ticket_required=True)
    assert checked_reason is not None and checked_ticket is not None
    start = validation.timestamp(request["from"], "--from")
    end = validation.timestamp(request["to"], "--to")
    step_seconds = core.parse_step(request["step"])
    core.check_range(start, end, step_seconds)
    payload = request.get("payload", {})
    if not isinstance(payload, dict):
        raise InvalidInput("backfill payload must be a JSON object; each window's job gets it with a `window` "
                           "member added")
    if "window" in payload:
        raise InvalidInput("backfill payload must not carry `window`: the backfill sets it for each job")
    return core.Plan(
        backfill_id=ids.uuid7(), tenant=request["tenant"], project=request["project"], job_type=request["type"],
        queue=request.get("queue", validation.DEFAULT_QUEUE), priority=request.get("priority", 0),
        payload=payload, start=start, end=end, step=request["step"].strip(), step_seconds=step_seconds,
        reason=checked_reason, ticket=checked_ticket)


def job_records(plan: core.Plan, extra: dict[str, Any], progress: Progress | None = None) -> list[dict[str, Any]]:
    """One validated job record per window (validation.job_spec each); `extra` adds max_attempts etc."""
    spans = plan.windows
    bounds = [clock.iso(start) for start, _ in spans] + [clock.iso(plan.end)]  # each boundary rendered once
    records = []
    for number in range(1, len(spans) + 1):
        start, end = bounds[number - 1], bounds[number]
        spec = {"tenant": plan.tenant, "project": plan.project, "type": plan.job_type, "queue": plan.queue,
                "priority": plan.priority, "payload": {**plan.payload, "window": {"start": start, "end": end}},
                "idempotency_key": core.window_key(plan.job_type, start, end),
                "correlation_id": f"backfill:{plan.backfill_id}", **extra}
        records.append(validation.job_spec(spec, f"window {number} (from {start})"))
        if progress is not None and (number % _PROGRESS_EVERY == 0 or number == len(spans)):
            progress(number, len(spans))
    return records


def create(ledger: Ledger, request: dict[str, Any], *, reason: Any = None, ticket: Any = None,
           progress: Progress | None = None, actor: str = "cli",
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Create a backfill: one job per window, all in one transaction, with an audit entry."""
    if not isinstance(request, dict):
        raise InvalidInput("a backfill request must be a JSON object")
    checked = plan(request, reason=reason, ticket=ticket)
    if tenants is not None and checked.tenant not in tenants:
        raise Forbidden(f"this caller may not create backfills for tenant {checked.tenant!r}")
    extra = {key: request[key] for key in ("max_attempts", "timeout_seconds") if key in request}
    records = job_records(checked, extra, progress)
    with ledger.transaction() as tx:
        core.create(tx, checked, records, actor=actor)
        return _show(tx, checked.backfill_id, tenants)


@operation("backfills.create")
def _create(ledger: Ledger, *, reason: Any = None, ticket: Any = None, progress: Progress | None = None,
            actor: str, tenants: Collection[str] | None, **request: Any) -> dict[str, Any]:  # the body is the request
    return create(ledger, request, reason=reason, ticket=ticket, progress=progress, actor=actor, tenants=tenants)


def _show(tx: Any, checked_id: str, tenants: Collection[str] | None) -> dict[str, Any]:
    row = core.get(tx, checked_id, tenants)
    result = core.render(row, core.progress(tx, [checked_id])[checked_id])
    mark = core.watermark(tx, checked_id)
    result["watermark"] = clock.iso(mark)
    result["complete"] = mark is not None and mark >= row["window_to"]
    return result


@operation("backfills.show")
def _show_by_id(ledger: Ledger, *, backfill_id: Any, **kw: Any) -> dict[str, Any]:  # the path's {backfill_id}
    return show(ledger, backfill_id, **kw)


def show(ledger: Ledger, backfill: Any, *, actor: str = "cli", tenants: Collection[str] | None = None
         ) -> dict[str, Any]:
    """One backfill with its progress (state counts of its jobs) and watermark."""
    checked = backfill_id(backfill)
    with ledger.snapshot() as read:
        return _show(read, checked, tenants)


@operation("backfills.list")
def _list(ledger: Ledger, *, type: str | None = None, **kw: Any) -> dict[str, Any]:  # `type` over HTTP
    return list_backfills(ledger, job_type=type, **kw)


def list_backfills(ledger: Ledger, *, tenant: str | None = None, job_type: str | None = None,
                   state: str | None = None, limit: int = 100, actor: str = "cli",
                   tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Backfills, newest first, each with its progress."""
    if state is not None and state not in (core.ACTIVE, core.CANCELED):
        raise InvalidInput(f"unknown backfill state {state!r}; use {core.ACTIVE} or {core.CANCELED}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput("limit must be a whole number")
    limit = int(validation.number_in(limit, 1, MAX_LIST, "limit"))
    with ledger.snapshot() as read:
        rows = read.rows("backfill_list", tenant=tenant, job_type=job_type, state=state, limit=limit,
                         tenants=sorted(tenants) if tenants is not None else None)
        counts = core.progress(read, [row["backfill_id"] for row in rows])
    return {"backfills": [core.render(row, counts[row["backfill_id"]]) for row in rows]}


@operation("backfills.cancel")
def _cancel_by_id(ledger: Ledger, *, backfill_id: Any, **kw: Any) -> dict[str, Any]:  # the path's {backfill_id}
    return cancel(ledger, backfill_id, **kw)


def cancel(ledger: Ledger, backfill: Any, *, reason: Any = None, ticket: Any = None, actor: str = "cli",
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Cancel a backfill's queued jobs and request cancellation of its running ones (audited)."""
    checked_id = backfill_id(backfill)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket)
    assert checked_reason is not None
    with ledger.transaction() as tx:
        return core.cancel(tx, checked_id, reason=checked_reason, ticket=checked_ticket, actor=actor,
                           tenants=tenants)
