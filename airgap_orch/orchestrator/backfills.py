"""Backfills: one job per time window [start, end) over a range, created in one transaction.

A window already covered by an existing job of the same tenant and type (its payload's `window` contains
the new window, whatever that job's state) is suppressed, not enqueued again; each new job also carries the
idempotency key `backfill:{type}:{start}:{end}`, so re-running a backfill, or an overlapping one, never
duplicates a window. Every window is recorded with the job that covers it (backfill_windows), so progress
(state counts of the jobs the backfill created) and the watermark (the end of the latest window such that
every window up to it succeeded) are derived from the jobs, never kept by hand.

Rows are plain and versioned (RECORD_VERSION) so a bundle can carry them across the air gap.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from .. import clock, validation
from ..errors import Conflict, InvalidInput, NotFound
from ..ledger import Transaction
from . import audit, history, rows
from .enqueue import enqueue
from .states import FINAL_STATES, HELD_STATES, QUEUED, next_state

RECORD_VERSION = 1
MAX_WINDOWS = 100_000  # documented in README "Backfills, replays and the audit log"
ACTIVE, CANCELED = "active", "canceled"

_BACKFILL_SCHEMA = pa.schema([
    ("backfill_id", pa.string()), ("record_version", pa.int32()), ("site_id", pa.string()),
    ("tenant", pa.string()), ("project", pa.string()), ("job_type", pa.string()), ("queue", pa.string()),
    ("priority", pa.int32()), ("payload", pa.string()), ("window_from", pa.timestamp("us")),
    ("window_to", pa.timestamp("us")), ("step", pa.string()), ("step_seconds", pa.int64()),
    ("reason", pa.string()), ("ticket", pa.string()), ("state", pa.string()), ("windows_total", pa.int32()),
    ("windows_created", pa.int32()), ("windows_suppressed", pa.int32()), ("created_at", pa.timestamp("us")),
    ("created_by", pa.string()), ("canceled_at", pa.timestamp("us")), ("canceled_by", pa.string()),
    ("cancel_reason", pa.string()),
])
_WINDOW_SCHEMA = pa.schema([
    ("backfill_id", pa.string()), ("record_version", pa.int32()), ("window_index", pa.int32()),
    ("window_start", pa.timestamp("us")), ("window_end", pa.timestamp("us")), ("job_id", pa.string()),
    ("created", pa.bool_()),
])


@dataclass(frozen=True)
class Plan:
    """A validated backfill request; `windows` are consecutive [start, end) pairs covering [start, end):
    steps of `step_seconds`, or the given `spans` (a schedule's missed ticks, orchestrator/sources.py)."""

    backfill_id: str
    tenant: str
    project: str
    job_type: str
    queue: str
    priority: int
    payload: dict[str, Any]
    start: datetime
    end: datetime
    step: str
    step_seconds: int
    reason: str
    ticket: str
    spans: tuple[tuple[datetime, datetime], ...] | None = None

    @property
    def windows(self) -> list[tuple[datetime, datetime]]:
        if self.spans is not None:
            return list(self.spans)
        return windows(self.start, self.end, self.step_seconds)


def parse_step(text: Any) -> int:
    """'15m', '1h', '1d' -> seconds (validation.duration_seconds, the grammar token lifetimes use too)."""
    return validation.duration_seconds(text, "step", example="15m, 1h, 1d")


def window_count(start: datetime, end: datetime, step_seconds: int) -> int:
    """How many windows [start, end) splits into (the last one may be shorter than a step)."""
    span = (end - start) // timedelta(microseconds=1)
    step = step_seconds * 1_000_000
    return -(-span // step)


def check_range(start: datetime, end: datetime, step_seconds: int) -> int:
    """The window count, or InvalidInput for an empty or reversed range or too many windows."""
    if start >= end:
        raise InvalidInput(f"--from {clock.iso(start)} must be before --to {clock.iso(end)}")
    count = window_count(start, end, step_seconds)
    if count > MAX_WINDOWS:
        raise InvalidInput(f"the range makes {count} windows; the limit is {MAX_WINDOWS} per backfill: use a larger "
                           "--step or split the range")
    return count


def windows(start: datetime, end: datetime, step_seconds: int) -> list[tuple[datetime, datetime]]:
    step = timedelta(seconds=step_seconds)
    out = []
    current = start
    while current < end:
        following = end if end - current <= step else current + step  # a step past year 9999 ends at `end`
        out.append((current, following))
        current = following
    return out


def window_key(job_type: str, start: str, end: str) -> str:
    """The idempotency key of one window's job (start and end as clock.iso renders them): the same window
    of the same type is one job per tenant."""
    return f"backfill:{job_type}:{start}:{end}"


# -- create ----------------------------------------------------------------------------------------

def create(tx: Transaction, plan: Plan, records: list[dict[str, Any]], *, actor: str,
           suppress_covered: bool = True) -> dict[str, Any]:
    """Enqueue the records (validated job specs, one per window of `plan`, in window order) except those
    whose window an existing job covers; record the backfill, its windows and an audit entry.

    `suppress_covered=False` skips the covering check (a schedule's backfill: its records carry per-tick
    idempotency keys, and another source's jobs of the same tenant and type must not suppress its windows)."""
    spans = plan.windows
    if len(records) != len(spans):
        raise InvalidInput(f"backfill has {len(spans)} windows but {len(records)} job records")
    covering = _covering_jobs(tx, plan.tenant, plan.job_type, spans) if suppress_covered else {}
    fresh = [index for index in range(len(spans)) if index not in covering]
    # A window's idempotency key names the window: a job already holding it covers the window, whatever its spec.
    enqueued = enqueue(tx, [records[index] for index in fresh], actor=actor, refuse_other_spec=False)
    job_ids: list[str] = [""] * len(spans)
    created = [False] * len(spans)
    for index, job_id in covering.items():
        job_ids[index] = job_id
    for index, (job_id, was_created) in zip(fresh, enqueued, strict=True):
        job_ids[index], created[index] = job_id, was_created  # not created: its idempotency key existed
    made = sum(created)
    now = clock.now()
    tx.execute_with("backfill_windows_insert", "incoming", pa.table({
        "backfill_id": [plan.backfill_id] * len(spans), "record_version": [RECORD_VERSION] * len(spans),
        "window_index": list(range(len(spans))), "window_start": [s for s, _ in spans],
        "window_end": [e for _, e in spans], "job_id": job_ids, "created": created,
    }, schema=_WINDOW_SCHEMA))
    row = {
        "backfill_id": plan.backfill_id, "record_version": RECORD_VERSION, "site_id": tx.site_id,
        "tenant": plan.tenant, "project": plan.project, "job_type": plan.job_type, "queue": plan.queue,
        "priority": plan.priority, "payload": json.dumps(plan.payload, sort_keys=True, separators=(",", ":")),
        "window_from": plan.start, "window_to": plan.end, "step": plan.step, "step_seconds": plan.step_seconds,
        "reason": plan.reason, "ticket": plan.ticket, "state": ACTIVE, "windows_total": len(spans),
        "windows_created": made, "windows_suppressed": len(spans) - made, "created_at": now,
        "created_by": actor, "canceled_at": None, "canceled_by": None, "cancel_reason": None,
    }
    tx.execute_with("backfill_insert", "incoming",
                    pa.table({name: [row[name]] for name in _BACKFILL_SCHEMA.names}, schema=_BACKFILL_SCHEMA))
    audit.append(tx, "backfill.create", actor=actor, reason=plan.reason, ticket=plan.ticket,
                 target=plan.backfill_id, details={
                     "tenant": plan.tenant, "project": plan.project, "type": plan.job_type,
                     "from": clock.iso(plan.start), "to": clock.iso(plan.end), "step": plan.step,
                     "windows": len(spans), "created": made, "suppressed": len(spans) - made})
    return {"backfill_id": plan.backfill_id, "windows": len(spans), "created": made,
            "suppressed": len(spans) - made}


def _covering_jobs(tx: Transaction, tenant: str, job_type: str,
                   spans: list[tuple[datetime, datetime]]) -> dict[int, str]:
    """{window index: job id} for windows that an existing job's payload window contains."""
    existing = []
    for row in tx.rows("backfill_window_jobs", tenant=tenant, job_type=job_type):
        try:
            start, end = clock.parse_iso(row["window_start"]), clock.parse_iso(row["window_end"])
        except (TypeError, ValueError, AttributeError):
            continue  # a payload window we cannot read covers nothing
        if start < end:
            existing.append((start, end, row["job_id"]))
    if not existing:
        return {}
    existing.sort(key=lambda item: (item[0], item[2]))
    starts = [start for start, _, _ in existing]
    # best[i]: the interval with the latest end among existing[0..i] (all starting at or before starts[i]).
    best: list[tuple[datetime, str]] = []
    for _, end, job_id in existing:
        best.append((end, job_id) if not best or end > best[-1][0] else best[-1])
    covered = {}
    for index, (start, end) in enumerate(spans):
        position = bisect.bisect_right(starts, start) - 1
        if position >= 0 and best[position][0] >= end:
            covered[index] = best[position][1]
    return covered


# -- read ------------------------------------------------------------------------------------------

def get(tx: Transaction, backfill_id: str, tenants: Collection[str] | None = None) -> dict[str, Any]:
    found = tx.rows("backfill_get", backfill_id=backfill_id)
    if not found or not rows.visible(found[0], tenants):
        raise NotFound(f"no backfill {backfill_id}; list backfills with `airgap-orch backfill list`")
    return found[0]


def progress(tx: Transaction, backfill_ids: list[str]) -> dict[str, dict[str, int]]:
    """{backfill id: {state: jobs}} over the jobs each backfill created."""
    counts: dict[str, dict[str, int]] = {backfill_id: {} for backfill_id in backfill_ids}
    if backfill_ids:
        for row in tx.rows("backfill_progress", backfill_ids=backfill_ids):
            counts[row["backfill_id"]][row["state"]] = row["jobs"]
    return counts


def watermark(tx: Transaction, backfill_id: str) -> datetime | None:
    rows = tx.rows("backfill_watermark", backfill_id=backfill_id)  # rows(): leaves no open result behind
    return rows[0]["watermark"] if rows else None


def render(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    done = sum(jobs for state, jobs in counts.items() if state in FINAL_STATES)
    return {
        "backfill_id": row["backfill_id"], "record_version": row["record_version"], "state": row["state"],
        "tenant": row["tenant"], "project": row["project"], "type": row["job_type"], "queue": row["queue"],
        "priority": row["priority"], "payload": json.loads(row["payload"]), "from": clock.iso(row["window_from"]),
        "to": clock.iso(row["window_to"]), "step": row["step"], "reason": row["reason"], "ticket": row["ticket"],
        "windows": row["windows_total"], "created": row["windows_created"],
        "suppressed": row["windows_suppressed"], "created_at": clock.iso(row["created_at"]),
        "created_by": row["created_by"], "canceled_at": clock.iso(row["canceled_at"]),
        "canceled_by": row["canceled_by"], "cancel_reason": row["cancel_reason"],
        "progress": {"total": row["windows_created"], "done": done, "by_state": dict(sorted(counts.items()))},
    }


# -- cancel ----------------------------------------------------------------------------------------

def cancel(tx: Transaction, backfill_id: str, *, reason: str, actor: str, ticket: str | None = None,
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Cancel the backfill's queued jobs, request cancellation of its leased/running ones, mark it canceled
    and record it in the audit log. A canceled backfill cannot be canceled again (Conflict)."""
    row = get(tx, backfill_id, tenants)
    if row["state"] != ACTIVE:
        raise Conflict(f"backfill {backfill_id} is already {row['state']}")
    now = clock.now()
    updates, entries = [], []
    canceled = requested = 0
    for job in tx.rows("backfill_active_jobs", backfill_id=backfill_id, states=[QUEUED, *HELD_STATES]):
        if job["state"] == QUEUED:
            updated = dict(job, state=next_state(QUEUED, "cancel"), finished_at=now, updated_at=now)
            entries.append(rows.entry(updated, "cancel", QUEUED, updated["state"], actor=actor, reason=reason,
                                      at=now))
            canceled += 1
        elif not job["cancel_requested"]:
            updated = dict(job, state=next_state(job["state"], "request_cancel"), cancel_requested=True,
                           updated_at=now)
            entries.append(rows.entry(updated, "request_cancel", job["state"], updated["state"], actor=actor,
                                      reason=reason, at=now))
            requested += 1
        else:
            continue
        updates.append(updated)
    rows.write_back(tx, updates)
    history.append(tx, entries)
    tx.unarchived = max(tx.unarchived, 0) + canceled
    tx.execute("backfill_cancel", backfill_id=backfill_id, now=now, actor=actor, reason=reason)
    audit.append(tx, "backfill.cancel", actor=actor, reason=reason, ticket=ticket, target=backfill_id,
                 details={"tenant": row["tenant"], "type": row["job_type"], "canceled": canceled,
                          "cancel_requested": requested})
    return {"backfill_id": backfill_id, "state": CANCELED, "canceled": canceled, "cancel_requested": requested}
