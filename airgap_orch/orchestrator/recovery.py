"""Housekeeping: recover jobs whose lease expired or which ran past their timeout, and move finished rows out
of the hot table. The claim path runs it, bounded; `jobs recover` runs it now."""

from __future__ import annotations

from datetime import timedelta

from .. import clock
from ..ledger import Transaction
from . import flow, history, leases, rows
from .states import FINAL_STATES, HELD_STATES

ARCHIVE_AFTER = 2_000  # finished rows allowed in the hot table before they move to jobs_finished
SWEEP_EVERY_SECONDS = 1.0
SWEEP_LIMIT = 1_000


def recover(tx: Transaction, *, limit: int = SWEEP_LIMIT) -> list[str]:
    """Expired leases and exceeded timeouts: retry, dead-letter, time out or (if requested) cancel. Returns the
    tenant of each job recovered."""
    now = clock.now()
    expired = tx.rows("expired_leases", from_states=list(HELD_STATES), now=now, limit=limit)
    updates, entries, ended = [], [], []
    for job in expired:
        timed_out = job["timeout_seconds"] is not None and (
            job["leased_at"] + timedelta(seconds=job["timeout_seconds"]) <= now)
        if job["cancel_requested"]:
            event, reason = "cancel", "canceled_by_request"
        elif job["attempts"] >= job["max_attempts"]:
            event, reason = ("time_out", "timeout") if timed_out else ("exhaust", "lease_expired")
        else:
            event, reason = "retry", "timeout" if timed_out else "lease_expired"
        row = leases.settle(job, event, now, error=reason)
        updates.append(row)
        ended.append((row, flow.NEUTRAL if event == "cancel" else flow.FAILURE))
        entries.append(rows.entry(job | {"state": row["state"]}, event, job["state"], row["state"],
                                  actor="orchestrator", reason=reason, at=now))
        if row["state"] in FINAL_STATES:
            tx.unarchived = max(tx.unarchived, 0) + 1
    rows.write_back(tx, updates)
    history.append(tx, entries)
    leases.ended(tx, ended)
    return [row["tenant"] for row in updates]


def maintain(tx: Transaction, *, force: bool = False) -> list[str]:
    """Bounded housekeeping on the claim path: recover expired leases (at most once a second)
    and move finished rows out of the hot table once enough have gathered. Returns the tenant of each job
    recovered."""
    import time

    recovered: list[str] = []
    if force or time.monotonic() - tx.ledger.last_sweep >= SWEEP_EVERY_SECONDS:
        tx.ledger.last_sweep = time.monotonic()
        recovered = recover(tx, limit=SWEEP_LIMIT)
    if force or tx.unarchived < 0 or tx.unarchived >= ARCHIVE_AFTER:
        tx.execute("archive_copy", final_states=list(FINAL_STATES))
        tx.execute("archive_delete", final_states=list(FINAL_STATES))
        tx.unarchived = 0
    return recovered
