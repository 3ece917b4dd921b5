"""Sources and their schedules: the upstream feeds jobs ingest from, and the cron ticks that enqueue them.

A source is a plain, versioned row (ledger/migrations/0006_sources.sql). Its jobs carry the flow key
'source:<name>' (and 'host:<host>' when it names one), so pausing a source is a key pause (limits.pause):
its jobs stay queued and flow.py does not let them be claimed.

A schedule (5-field cron, UTC) enqueues one job per tick. The tick's job has the idempotency key
`schedule:<name>:<tick ISO>`, so a tick is never enqueued twice, also across restarts or a stale
`last_tick`; its payload is the source's payload plus `tick` and `window` = [previous tick, tick).
`run_due` handles the ticks in (last_tick, now]: the latest one is enqueued; earlier ones were missed
(nothing ran, or the source was paused) and are dropped and counted (policy 'skip') or turned into one
backfill of their windows (policy 'backfill'). At most MAX_TICKS_PER_RUN ticks per source per run: older
missed ticks are dropped uncounted (`truncated`), so a source paused for a year cannot explode.

run_due writes through the caller's transaction: it runs inside the process that owns the ledger (the
server's writer, the in-process worker loop, or `schedules run-due` on a ledger the CLI opened).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from cronsim import CronSim

from .. import clock, ids, validation
from ..errors import Conflict, NotFound
from ..ledger import Transaction
from . import audit, backfills, flow, limits
from .enqueue import enqueue

RECORD_VERSION = 1
MAX_TICKS_PER_RUN = 1_000  # documented in README "Sources and schedules"
SCHEDULE_EVERY_SECONDS = 5.0  # how often the server and the worker loop run due schedules
SKIP, BACKFILL = validation.MISSED_POLICIES
SCHEDULER = "scheduler"  # the actor of what the scheduler does


def flow_key(name: str) -> str:
    return f"source:{name}"


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of one tick's job."""
    return f"schedule:{name}:{clock.iso(tick)}"


def job_keys(row: dict[str, Any]) -> list[str]:
    return [flow_key(row["name"]), *([f"host:{row['host']}"] if row["host"] else [])]


def get(tx: Transaction, name: str, tenants: Collection[str] | None = None) -> dict[str, Any]:
    found = tx.rows("source_get", source=name)
    if not found or (tenants is not None and found[0]["tenant"] not in tenants):
        raise NotFound(f"no source {name}; see `airgap-orch sources list`")
    return found[0]


def pause_of(tx: Transaction, name: str) -> dict[str, Any] | None:
    return flow.limits(tx).paused.get((limits.KEY, flow_key(name)))


# -- add ---------------------------------------------------------------------------------------------------

def add(tx: Transaction, *, name: str, tenant: str, project: str, job_type: str, queue: str, host: str | None,
        schedule: str | None, missed_policy: str, payload: dict[str, Any], reason: str | None,
        ticket: str | None, actor: str) -> dict[str, Any]:
    """Record a new source (Conflict if the name exists, in any tenant) and an audit entry."""
    if tx.rows("source_get", source=name):
        raise Conflict(f"source {name} already exists (names are unique across tenants); see "
                       f"`airgap-orch sources show {name}`")
    now = clock.now()
    row = {"name": name, "record_version": RECORD_VERSION, "revision": 1, "site_id": tx.site_id,
           "tenant": tenant, "project": project, "job_type": job_type, "queue": queue, "host": host,
           "schedule": schedule, "missed_policy": missed_policy, "payload": validation.canonical_json(payload),
           "last_tick": None, "skipped_ticks": 0, "created_at": now, "created_by": actor, "updated_at": now,
           "updated_by": actor}
    tick_record(row, now, now, flow_key(name))  # the same checks every tick's job will meet (payload size)
    tx.execute("source_insert", source=name, **{key: value for key, value in row.items() if key != "name"})
    audit.append(tx, "source.add", actor=actor, reason=reason, ticket=ticket, target=name,
                 details={"tenant": tenant, "after": public(row)})
    return public(row)


# -- pause and resume ----------------------------------------------------------------------------------------

def pause(tx: Transaction, name: str, *, reason: str, ticket: str | None, actor: str,
          tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Pause the key 'source:<name>': the source's jobs stay queued, its schedule stops ticking (the ticks
    missed meanwhile meet its policy after `resume`). Audited by limits.pause."""
    row = get(tx, name, tenants)
    if pause_of(tx, name) is not None:
        raise Conflict(f"source {name} is already paused; resume it first to pause it with a new reason")
    limits.pause(tx, limits.KEY, flow_key(name), reason=reason, ticket=ticket, actor=actor, tenant=row["tenant"])
    return {"name": name, "paused": limits.public(pause_of(tx, name))}


def resume(tx: Transaction, name: str, *, reason: str | None, ticket: str | None, actor: str,
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    row = get(tx, name, tenants)
    if pause_of(tx, name) is None:
        raise NotFound(f"source {name} is not paused; see `airgap-orch sources show {name}`")
    limits.resume(tx, limits.KEY, flow_key(name), reason=reason, ticket=ticket, actor=actor, tenant=row["tenant"])
    return {"name": name, "paused": None}


# -- schedules -----------------------------------------------------------------------------------------------

def due_ticks(schedule: str, after: datetime, now: datetime,
              limit: int = MAX_TICKS_PER_RUN) -> tuple[list[datetime], datetime, bool]:
    """The newest `limit` ticks in (after, now], oldest first; the tick before the oldest of them (its
    window's start); and whether older due ticks were left out."""
    found: list[datetime] = []
    before: datetime | None = None
    truncated = False
    # Walk back from now: a long outage costs `limit` steps, not one per tick since `after`.
    for tick in CronSim(schedule, now.replace(microsecond=0) + timedelta(seconds=1), reverse=True):
        if tick <= after or len(found) == limit:
            before, truncated = tick, tick > after
            break
        found.append(tick)
    found.reverse()
    return found, before if before is not None else after, truncated


def next_tick(schedule: str, after: datetime) -> datetime:
    return next(iter(CronSim(schedule, after)))


def tick_record(row: dict[str, Any], start: datetime, tick: datetime, correlation_id: str) -> dict[str, Any]:
    """The validated job record (validation.job_spec) of one tick: window [start, tick)."""
    spec = {"tenant": row["tenant"], "project": row["project"], "type": row["job_type"], "queue": row["queue"],
            "payload": {**json.loads(row["payload"]), "tick": clock.iso(tick),
                        "window": {"start": clock.iso(start), "end": clock.iso(tick)}},
            "idempotency_key": tick_key(row["name"], tick), "correlation_id": correlation_id,
            "keys": job_keys(row)}
    return validation.job_spec(spec, f"source {row['name']} tick {clock.iso(tick)}")


def run_due(tx: Transaction, *, actor: str = SCHEDULER, tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Enqueue the due ticks of every scheduled, unpaused source this site owns (of `tenants` if given)."""
    now = clock.now()
    paused = flow.limits(tx).paused
    ran = []
    for row in tx.rows("sources_scheduled", site_id=tx.site_id):
        if tenants is not None and row["tenant"] not in tenants:
            continue
        if (limits.KEY, flow_key(row["name"])) in paused:
            continue  # its ticks wait: after resume they meet the missed-tick policy
        ticks, before, truncated = due_ticks(row["schedule"], row["last_tick"] or row["created_at"], now)
        if ticks:
            ran.append(_run_ticks(tx, row, ticks, before, truncated, actor))
    return {"at": clock.iso(now), "sources": ran}


def _run_ticks(tx: Transaction, row: dict[str, Any], ticks: list[datetime], before: datetime, truncated: bool,
               actor: str) -> dict[str, Any]:
    starts = [before, *ticks[:-1]]
    missed = list(zip(starts[:-1], ticks[:-1], strict=True))
    result: dict[str, Any] = {"name": row["name"], "tenant": row["tenant"], "tick": clock.iso(ticks[-1]),
                              "missed": len(missed), "skipped": 0, "backfill_id": None, "truncated": truncated}
    if missed and row["missed_policy"] == BACKFILL:
        result["backfill_id"] = _backfill(tx, row, missed, actor)  # first, so older windows queue first
    else:
        result["skipped"] = len(missed)
    # The tick's key names the tick: a job already holding it is that tick's job, whatever its spec (a missed-tick
    # backfill gives its jobs another correlation id).
    [(job_id, created)] = enqueue(tx, [tick_record(row, starts[-1], ticks[-1], flow_key(row["name"]))],
                                 actor=actor, refuse_other_spec=False)
    result["job_id"], result["created"] = job_id, created
    tx.execute("source_ticked", source=row["name"], last_tick=ticks[-1], skipped=result["skipped"])
    return result


def _backfill(tx: Transaction, row: dict[str, Any], missed: list[tuple[datetime, datetime]], actor: str) -> str:
    """One backfill of the missed ticks' windows; reason: the policy, ticket: the schedule (both audited)."""
    backfill_id = ids.uuid7()
    name, schedule = row["name"], row["schedule"]
    plan = backfills.Plan(
        backfill_id=backfill_id, tenant=row["tenant"], project=row["project"], job_type=row["job_type"],
        queue=row["queue"], priority=0, payload=json.loads(row["payload"]), start=missed[0][0], end=missed[-1][1],
        step=f"cron:{schedule}", step_seconds=int(min(end - start for start, end in missed).total_seconds()),
        reason=f"missed ticks: backfill policy of source {name}", ticket=f"schedule:{name}:{schedule}",
        spans=tuple(missed))
    records = [tick_record(row, start, tick, f"backfill:{backfill_id}") for start, tick in missed]
    backfills.create(tx, plan, records, actor=actor, suppress_covered=False)
    return backfill_id


# -- rendering -----------------------------------------------------------------------------------------------

def public(row: dict[str, Any]) -> dict[str, Any]:
    """A source row as JSON: times as ISO 8601 text, the payload as an object, and the keys its jobs carry."""
    return {
        "name": row["name"], "record_version": row["record_version"], "revision": row["revision"],
        "tenant": row["tenant"], "project": row["project"], "type": row["job_type"], "queue": row["queue"],
        "host": row["host"], "schedule": row["schedule"], "missed_policy": row["missed_policy"],
        "payload": json.loads(row["payload"]), "keys": job_keys(row), "last_tick": clock.iso(row["last_tick"]),
        "skipped_ticks": row["skipped_ticks"], "created_at": clock.iso(row["created_at"]),
        "created_by": row["created_by"], "updated_at": clock.iso(row["updated_at"]), "updated_by": row["updated_by"],
    }


def render(tx: Transaction, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """public() plus the pause (if any) and the next tick."""
    out = public(row)
    out["paused"] = limits.public(pause_of(tx, row["name"]))
    if row["schedule"] is not None:
        out["next_tick"] = clock.iso(next_tick(row["schedule"], max(now, row["last_tick"] or now)))
    else:
        out["next_tick"] = None
    return out
