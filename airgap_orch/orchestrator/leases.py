"""The lease a worker's report names, and how an attempt ends: check that the lease still holds its job, the
row after an event ends the attempt, and what follows a job's end (circuit breakers learn the outcome;
dependents become ready or are canceled)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from .. import clock
from ..errors import OrchError, StaleLease
from ..ledger import Transaction
from . import backoff, dependencies, flow, rows
from .states import FINAL_STATES, HELD_STATES, QUEUED, next_state


def ended(tx: Transaction, outcomes: list[tuple[dict[str, Any], str]]) -> None:
    """After attempts ended [(job row after, flow.SUCCESS/FAILURE/NEUTRAL)]: circuit breakers learn the
    outcomes; dependents of jobs that reached a final state become ready or are canceled."""
    if not outcomes:
        return
    flow.record_outcomes(tx, outcomes)
    dependencies.settled(tx, [(row["job_id"], row["state"]) for row, _ in outcomes
                              if row["state"] in FINAL_STATES])


def held(tx: Transaction, items: list[dict[str, Any]], now: datetime, outcomes: list[dict[str, Any] | OrchError],
         changed: dict[str, dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each item with the active row its lease holds. An item whose lease is refused gets its error appended to
    `outcomes` instead, in turn, so a caller that appends one outcome per item it is given keeps them in order.

    The caller puts each row it changes into `changed` (by job id) before taking the next item, and an item is
    checked against that row: a later item for the same job (a repeated report in one group commit) meets the
    state the earlier one left, so it gets what it would get one transaction later."""
    jobs = rows.load(tx, [item["job_id"] for item in items])
    for item in items:
        try:
            job = check_lease(changed.get(item["job_id"]) or jobs.get(item["job_id"]), item, now, tx)
        except OrchError as error:
            outcomes.append(error)
            continue
        yield item, job


def write_changed(tx: Transaction, changed: dict[str, dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Write back the rows held()'s caller changed (one per job, as the last item left it) and their entries."""
    rows.write(tx, list(changed.values()), entries)


def check_lease(job: dict[str, Any] | None, item: dict[str, Any], now: datetime,
                tx: Transaction) -> dict[str, Any]:
    """The active row for the item's (job_id, lease_id), or the error that refuses it."""
    job_id, lease_id, tenants = item["job_id"], item["lease_id"], item.get("tenants")
    if job is None:
        raise StaleLease(f"job {job_id} is already {rows.any_job(tx, job_id, tenants, doing='leased')['state']}; "
                         f"lease {lease_id} "
                         "can no longer change it")
    if not rows.visible(job, tenants):
        raise rows.no_job(job_id)
    if job["state"] not in HELD_STATES or job["lease_id"] != lease_id:
        if not tx.fetch("lease_issued", job_id=job_id, lease_id=lease_id):
            raise StaleLease(f"lease {lease_id} was never issued for job {job_id}; report with the lease id its "
                             "claim answered")
        if job["state"] in HELD_STATES:
            raise StaleLease(f"lease {lease_id} is not the current lease of job {job_id}; a newer lease holds it "
                             "now: drop this job")
        raise StaleLease(f"lease {lease_id} no longer holds job {job_id} (now {job['state']}): drop this job")
    if job["timeout_seconds"] is not None and job["leased_at"] + timedelta(seconds=job["timeout_seconds"]) <= now:
        raise StaleLease(f"job {job_id} ran past its timeout of {job['timeout_seconds']}s; lease {lease_id} "
                         "can no longer change it")
    if job["lease_expires_at"] <= now:
        raise StaleLease(f"lease {lease_id} on job {job_id} expired at {clock.iso(job['lease_expires_at'])}; "
                         "drop this job, it will be retried")
    return job


def settle(job: dict[str, Any], event: str, now: datetime, *, error: str | None = None,
           retry_after: float | None = None) -> dict[str, Any]:
    """The row after `event` ends the current lease (retry, fail, exhaust, time_out, cancel, release)."""
    row = dict(job)
    row["state"] = next_state(job["state"], event)
    row["updated_at"] = now
    if error is not None:
        row["last_error"] = error
    if row["state"] == QUEUED:
        delay = 0.0 if event == "release" else backoff.retry_delay(job["attempts"], retry_after)
        row["run_at"] = now + timedelta(seconds=delay)
        row.update(lease_id=None, worker_id=None, lease_expires_at=None, started_at=None)
    else:
        row["finished_at"] = now
    return row
