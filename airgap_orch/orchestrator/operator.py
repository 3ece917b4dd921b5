"""Operator actions on one job or many: cancel, and replay a job that ended without success. Each records the
change in the job's history and in the audit log."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import clock
from ..errors import Conflict
from ..ledger import Transaction
from . import audit, flow, history, leases, rows
from .enqueue import enqueue
from .states import FINAL_STATES, HELD_STATES, QUEUED, REPLAYABLE_STATES, WAITING, next_state


def cancel(tx: Transaction, job_id: str, *, reason: str, actor: str,
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Cancel a queued job now; for a leased/running job, request cancellation from its worker."""
    now = clock.now()
    job = rows.load(tx, [job_id]).get(job_id)
    if job is None:
        # Raises IllegalTransition for a finished job.
        next_state(rows.any_job(tx, job_id, tenants, doing="cancelled")["state"], "cancel")
    if not rows.visible(job, tenants):
        raise rows.no_job(job_id)
    if job["cancel_requested"] and job["state"] in HELD_STATES:
        # Asked before and not yet answered: the job's history is unchanged; the audit log keeps the request.
        audit.append(tx, "job.cancel", actor=actor, reason=reason, target=job_id,
                     details={"state": job["state"], "tenant": job["tenant"], "already_requested": True})
        return {"job_id": job_id, "state": job["state"], "cancel_requested": True}
    if job["state"] in (WAITING, QUEUED):
        row = dict(job, state=next_state(job["state"], "cancel"), finished_at=now, updated_at=now)
        entry = rows.entry(row, "cancel", job["state"], row["state"], actor=actor, reason=reason, at=now)
        tx.unarchived = max(tx.unarchived, 0) + 1
    else:
        row = dict(job, state=next_state(job["state"], "request_cancel"), cancel_requested=True, updated_at=now)
        entry = rows.entry(row, "request_cancel", job["state"], row["state"], actor=actor, reason=reason, at=now)
    rows.write_back(tx, [row])
    history.append(tx, [entry])
    if row["state"] in FINAL_STATES:
        leases.ended(tx, [(row, flow.NEUTRAL)])
    audit.append(tx, "job.cancel", actor=actor, reason=reason, target=job_id,
                 details={"state": row["state"], "tenant": job["tenant"]})
    return {"job_id": job_id, "state": row["state"], "cancel_requested": bool(row["cancel_requested"])}


def replay(tx: Transaction, job_ids: list[str], *, actor: str, priority: int | None = None,
           tenants: Collection[str] | None = None, reason: str | None = None,
           again: bool = False) -> list[dict[str, Any]]:
    """Clone each dead-lettered/failed/timed-out job into a new queued job with replay_of set. A job that
    already has a replay is refused (Conflict) unless `again`: a repeated command must not run it twice."""
    now = clock.now()
    originals = []
    found = {row["job_id"]: row for row in tx.rows("jobs_any_by_ids", job_ids=list(job_ids))}
    for job_id in job_ids:
        job = found.get(job_id)
        if job is None or not rows.visible(job, tenants):
            raise rows.no_job(job_id, tx, tenants, doing="replayed")
        next_state(job["state"], "replay")  # only dead_letter, failed, timed_out may be replayed
        if job["state"] not in REPLAYABLE_STATES:  # pragma: no cover - next_state already refused
            continue
        originals.append(job)
    if not again:
        refuse_replayed(tx, job_ids)
    records = [{
        "tenant": job["tenant"], "project": job["project"], "job_type": job["job_type"], "queue": job["queue"],
        "priority": job["priority"] if priority is None else priority, "payload": job["payload"],
        "payload_digest": job["payload_digest"], "idempotency_key": None, "run_at": None,
        "max_attempts": job["max_attempts"], "timeout_seconds": job["timeout_seconds"],
        "correlation_id": job["correlation_id"], "limit_keys": job["limit_keys"], "depends_on": (),
    } for job in originals]
    created = enqueue(tx, records, actor=actor, replay_of=[job["job_id"] for job in originals])
    history.append(tx, (rows.entry(job, "replay", job["state"], job["state"], actor=actor,
                                   reason=f"replayed_as:{new_id}", at=now)
                        for job, (new_id, _) in zip(originals, created, strict=True)))
    replays = [{"job_id": new_id, "replay_of": job["job_id"]}
               for job, (new_id, _) in zip(originals, created, strict=True)]
    audit.append(tx, "job.replay", actor=actor, reason=reason, target=",".join(job_ids) if len(job_ids) <= 20
                 else f"{len(job_ids)} jobs", details={"replays": replays[:100], "count": len(replays),
                                                       "tenant": _only({job["tenant"] for job in originals})})
    return replays


def refuse_replayed(tx: Transaction, job_ids: list[str]) -> None:
    """Conflict for the first of `job_ids` that already has a replay."""
    for original, earlier in tx.fetch("replays_of", job_ids=list(job_ids)):
        raise Conflict(f"job {original} was already replayed as {earlier}; to run it once more, replay it again "
                       "with --again (\"again\": true over HTTP)")


def _only(values: set[str]) -> str | None:
    """The one value, or None when there are several (an audit entry names one tenant or none)."""
    return next(iter(values)) if len(values) == 1 else None
