"""A job as callers see it: a row rendered as JSON, and one job shown with its parents, throttling and
history."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from typing import Any

from .. import clock
from ..ledger import Transaction
from . import flow, history, rows
from .states import HELD_STATES


def show(tx: Transaction, job_id: str, tenants: Collection[str] | None = None) -> dict[str, Any]:
    found = rows.any_job(tx, job_id, tenants)
    job = render(found)
    job["depends_on"] = [parent for (parent,) in tx.fetch("parents_of", job_id=job_id)]
    job["throttled"] = flow.explain(tx, found)
    job["history"] = [history.parse(row["seq"], row["entry"], row["entry_hash"])
                      for row in tx.rows("history_for_job", job_id=job_id)]
    return job


def render(row: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A job row as JSON. `lease_expired` marks a held job whose lease ran out that no sweep has recovered yet
    (its state stays as stored, so filters on it keep working)."""
    expires = row.get("lease_expires_at")
    lease_expired = row.get("state") in HELD_STATES and expires is not None and expires <= (now or clock.now())
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = clock.iso(value)
        out[key] = value
    out["payload"] = json.loads(row["payload"])
    out["artifacts"] = json.loads(row["artifacts"]) if row.get("artifacts") else []
    out["type"] = out.pop("job_type")
    out["keys"] = out.pop("limit_keys", None) or []
    out.pop("fair_seq", None)
    out["lease_expired"] = lease_expired
    return out
