"""Job rows in Python: the jobs table's Arrow schemas, loading hot rows and writing them back, the history
entry a change records, and which jobs a caller may see."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

import pyarrow as pa

from ..errors import NotFound, OrchError, PolicyRefused
from ..ledger import Transaction
from . import history
from .states import EVENT_TYPES

JOB_SCHEMA = pa.schema([
    ("job_id", pa.string()), ("site_id", pa.string()), ("tenant", pa.string()), ("project", pa.string()),
    ("job_type", pa.string()), ("queue", pa.string()), ("priority", pa.int32()), ("payload", pa.string()),
    ("payload_digest", pa.string()), ("idempotency_key", pa.string()), ("state", pa.string()),
    ("run_at", pa.timestamp("us")), ("attempts", pa.int32()), ("max_attempts", pa.int32()),
    ("timeout_seconds", pa.int32()), ("correlation_id", pa.string()), ("lease_id", pa.string()),
    ("worker_id", pa.string()), ("lease_seconds", pa.float64()), ("leased_at", pa.timestamp("us")),
    ("lease_expires_at", pa.timestamp("us")), ("started_at", pa.timestamp("us")),
    ("progress", pa.float64()), ("progress_message", pa.string()), ("artifacts", pa.string()),
    ("last_error", pa.string()), ("cancel_requested", pa.bool_()), ("replay_of", pa.string()),
    ("created_at", pa.timestamp("us")), ("updated_at", pa.timestamp("us")),
    ("finished_at", pa.timestamp("us")), ("limit_keys", pa.list_(pa.string())), ("fair_seq", pa.int64()),
])
_UPDATE_SCHEMA = pa.schema([
    ("job_id", pa.string()), ("state", pa.string()), ("run_at", pa.timestamp("us")), ("attempts", pa.int32()),
    ("lease_id", pa.string()), ("worker_id", pa.string()), ("lease_expires_at", pa.timestamp("us")),
    ("started_at", pa.timestamp("us")), ("progress", pa.float64()), ("progress_message", pa.string()),
    ("last_error", pa.string()), ("cancel_requested", pa.bool_()), ("finished_at", pa.timestamp("us")),
    ("updated_at", pa.timestamp("us")),
])


def entry(job: dict[str, Any], event: str, from_state: str | None, to_state: str, *, actor: str,
          reason: str | None = None, at: datetime) -> dict[str, Any]:
    """The history entry for `event` moving `job` from `from_state` to `to_state`."""
    return {
        "job_id": job["job_id"], "event_type": EVENT_TYPES[event], "from_state": from_state,
        "to_state": to_state, "attempt": job["attempts"], "lease_id": job.get("lease_id"),
        "worker_id": job.get("worker_id"), "actor": actor, "reason": reason, "tenant": job["tenant"],
        "project": job["project"], "job_type": job["job_type"], "correlation_id": job.get("correlation_id"),
        "payload_digest": job["payload_digest"], "artifacts": _artifact_list(job.get("artifacts")),
        "occurred_at": at, "queue": job.get("queue"),  # queue: not hashed (history.ENTRY_FIELDS), for the metrics
    }


def no_job(job_id: str, tx: Transaction | None = None, tenants: Collection[str] | None = None, *,
           doing: str | None = None) -> OrchError:
    """NotFound; or, for an id this site holds only as a read-only mirror of another site's job (imported in a
    bundle), an error that says so: PolicyRefused when `doing` (cancelled, replayed, ...) would change it, since a
    mirror is never claimed, cancelled or replayed here."""
    mirrored = tx.fetch("mirror_job_owner", job_id=job_id) if tx is not None else []
    if mirrored and (tenants is None or mirrored[0][1] in tenants):
        site = mirrored[0][0]
        what = f"job {job_id} is a read-only mirror of site {site}'s job (imported in a bundle)"
        if doing is not None:
            return PolicyRefused(f"{what}: it is never {doing} here; do it at {site}, which owns it")
        return NotFound(f"no local job {job_id}: {what}; `bundle list` shows the mirrors")
    return NotFound(f"no job {job_id}; check the id (`jobs list` shows the jobs)")


def any_job(tx: Transaction, job_id: str, tenants: Collection[str] | None, *,
            doing: str | None = None) -> dict[str, Any]:
    """The job's row, active or finished, if a caller limited to `tenants` may see it; otherwise NotFound (or
    what no_job says of a mirror)."""
    found = tx.rows("job_any", job_id=job_id)
    if not visible(found[0] if found else None, tenants):
        raise no_job(job_id, tx, tenants, doing=doing)
    return found[0]


def _artifact_list(value: str | list | None) -> list:
    if isinstance(value, str):
        return json.loads(value)
    return value or []


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.table({name: [row.get(name) for row in rows] for name in schema.names}, schema=schema)


def write_back(tx: Transaction, rows: list[dict[str, Any]]) -> None:
    if rows:
        tx.execute_with("jobs_update", "updates", _table(rows, _UPDATE_SCHEMA))


def load(tx: Transaction, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {row["job_id"]: row for row in tx.rows("jobs_by_ids", job_ids=job_ids)} if job_ids else {}


def write(tx: Transaction, rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Write back changed hot rows and append their history entries."""
    write_back(tx, rows)
    history.append(tx, entries)


def visible(job: dict[str, Any] | None, tenants: Collection[str] | None) -> bool:
    """Whether a caller limited to `tenants` (None: all) may see `job`; others get NotFound, not Forbidden."""
    return job is not None and (tenants is None or job["tenant"] in tenants)
