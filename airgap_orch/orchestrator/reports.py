"""Worker reports under a lease: heartbeat, ack, fail and release. Each takes many items (the server's group
commit) and answers one outcome per item: a result dict, or the OrchError that refused that item."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from .. import clock
from ..errors import OrchError, StaleLease
from ..ledger import Transaction
from . import dependencies, flow, history, joblogs, leases, rows
from .states import QUEUED, SUCCEEDED, next_state, sources


def heartbeat(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """items: {job_id, lease_id, progress?, message?, logs?}. Extends each lease; first one starts the job. The log
    lines of each accepted item are stored with it (joblogs.py)."""
    now = clock.now()
    outcomes: list[dict[str, Any] | OrchError] = []
    changed: dict[str, dict[str, Any]] = {}
    entries = []
    for item, job in leases.held(tx, items, now, outcomes, changed):
        row = dict(job)
        if job["state"] == "leased":
            row["state"] = next_state("leased", "start")
            row["started_at"] = now
            entries.append(rows.entry(row, "start", "leased", row["state"], actor=f"worker:{job['worker_id']}",
                                      at=now))
        row["lease_expires_at"] = now + timedelta(seconds=job["lease_seconds"])
        if item.get("progress") is not None:
            row["progress"] = item["progress"]
        if item.get("message") is not None:
            row["progress_message"] = item["message"]
        row["updated_at"] = now
        changed[row["job_id"]] = row
        joblogs.add(tx, job, item.get("logs"), state=row["state"])
        outcomes.append({"job_id": job["job_id"], "state": row["state"],
                         "lease_expires_at": clock.iso(row["lease_expires_at"]),
                         "cancel_requested": bool(job["cancel_requested"])})
    leases.write_changed(tx, changed, entries)
    return outcomes


def ack(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """items: {job_id, lease_id, artifacts?, logs?}. Completes each job held by that current lease
    (canceled instead of succeeded when cancellation had been requested)."""
    now = clock.now()
    done: dict[str, dict[str, Any]] = {}
    for tenants, group in ack_groups(items).items():  # one statement per distinct tenant set (usually one)
        done.update((row["job_id"], row) for row in tx.rows("ack", **ack_params(group, tenants), now=now))
    return acked(tx, items, done, now)


def ack_groups(items: list[dict[str, Any]]) -> dict[frozenset[str] | None, list[dict[str, Any]]]:
    """The items an ack statement gets, by the tenants their caller is limited to. Only the first ack of a
    (job, lease) goes in: a repeat would complete the row a second time, with its own artifacts, and acked
    refuses it as stale."""
    groups: dict[frozenset[str] | None, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    for item in items:
        if (item["job_id"], item["lease_id"]) in seen:
            continue
        seen.add((item["job_id"], item["lease_id"]))
        tenants = item.get("tenants")
        groups.setdefault(frozenset(tenants) if tenants is not None else None, []).append(item)
    return groups


def ack_params(items: list[dict[str, Any]], tenants: frozenset[str] | None) -> dict[str, Any]:
    """An ack statement's parameters for `items` of one tenant restriction (an ack_groups group)."""
    return {"lease_ids": [item["lease_id"] for item in items], "job_ids": [item["job_id"] for item in items],
            "artifacts": [_encode_artifacts(item.get("artifacts")) for item in items],
            "from_states": sources("ack"), "ack_tenants": sorted(tenants) if tenants is not None else None}


def acked(tx: Transaction, items: list[dict[str, Any]], done: dict[str, dict[str, Any]],
          now: datetime) -> list[dict[str, Any] | OrchError]:
    """After the ack statement completed the rows `done` (by job id): each item's outcome, in order, with the
    history entries of the completed jobs; an item that completed nothing gets the error that refused it."""
    outcomes: list[dict[str, Any] | OrchError] = []
    entries = []
    first: dict[str, int] = {}  # job id -> position of the first item whose lease completed it
    for position, item in enumerate(items):
        job = done.get(item["job_id"])
        if job is not None and job["lease_id"] == item["lease_id"]:
            first.setdefault(item["job_id"], position)
    credited = set(first.values())
    # Every other item is checked against the row as the statement left it (a repeated ack of a lease finds the
    # job it completed), so it gets what it would get one transaction later.
    refused = [item["job_id"] for position, item in enumerate(items) if position not in credited]
    current = rows.load(tx, refused) if refused else {}
    for position, item in enumerate(items):
        if position not in credited:
            try:
                leases.check_lease(current.get(item["job_id"]), item, now, tx)
                raise StaleLease(f"lease {item['lease_id']} could not complete job {item['job_id']}")
            except OrchError as error:
                outcomes.append(error)
            continue
        job = done[item["job_id"]]
        joblogs.add(tx, job, item.get("logs"), state=job["state"])
        event = "cancel" if job["state"] == "canceled" else "ack"
        from_state = "running" if job["started_at"] is not None else "leased"  # started_at marks 'start'
        entries.append(rows.entry({**job, "artifacts": item.get("artifacts")}, event, from_state, job["state"],
                                  actor=f"worker:{job['worker_id']}", at=now,
                                  reason="canceled_by_request" if event == "cancel" else None))
        outcomes.append({"job_id": job["job_id"], "state": job["state"], "attempt": job["attempts"]})
    if entries:  # (-1, unknown after open, must stay so until the next claim archives)
        tx.unarchived = max(tx.unarchived, 0) + len(entries)
    history.append(tx, entries)
    if entries and (flow.limits(tx).breakers or dependencies.any_waiting(tx)):
        finished = rows.load(tx, [entry["job_id"] for entry in entries])
        leases.ended(tx, [(row, flow.SUCCESS if row["state"] == SUCCEEDED else flow.NEUTRAL)
                          for row in finished.values()])
    return outcomes


def _encode_artifacts(artifacts: list | None) -> str:
    return json.dumps(artifacts, separators=(",", ":")) if artifacts else "[]"


def fail(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """items: {job_id, lease_id, error, retry_after?, no_retry?, logs?}. Retries with backoff while attempts
    remain, else dead-letters; no_retry fails the job for good."""
    now = clock.now()
    outcomes: list[dict[str, Any] | OrchError] = []
    changed: dict[str, dict[str, Any]] = {}
    entries, ended = [], []
    for item, job in leases.held(tx, items, now, outcomes, changed):
        if job["cancel_requested"]:
            event, reason = "cancel", "canceled_by_request"
        elif item.get("no_retry"):
            event, reason = "fail", "no_retry"
        elif job["attempts"] >= job["max_attempts"]:
            event, reason = "exhaust", "attempts_exhausted"
        else:
            event, reason = "retry", "worker_error"
        row = leases.settle(job, event, now, error=item["error"], retry_after=item.get("retry_after"))
        changed[row["job_id"]] = row
        joblogs.add(tx, job, item.get("logs"), state=row["state"])
        ended.append((row, flow.NEUTRAL if event == "cancel" else flow.FAILURE))
        # The entry names the lease this report ended (as release and recovery do; the row after a retry has none):
        # the request log answers a retried fail from it.
        entries.append(rows.entry(job | {"state": row["state"]}, event, job["state"], row["state"],
                                  actor=f"worker:{job['worker_id']}", reason=f"{reason}: {item['error']}"[:512],
                                  at=now))
        outcomes.append({"job_id": row["job_id"], "state": row["state"], "attempt": row["attempts"],
                         "run_at": clock.iso(row["run_at"]) if row["state"] == QUEUED else None})
    leases.write_changed(tx, changed, entries)
    leases.ended(tx, ended)
    return outcomes


def release(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """Give leased jobs back without using up the attempt (graceful worker shutdown). A job whose
    cancellation was requested ends canceled instead, as it would on fail or lease expiry."""
    now = clock.now()
    outcomes: list[dict[str, Any] | OrchError] = []
    changed: dict[str, dict[str, Any]] = {}
    entries = []
    for _item, job in leases.held(tx, items, now, outcomes, changed):
        if job["cancel_requested"]:
            event, reason = "cancel", "canceled_by_request"
            row = leases.settle(job, event, now)
            tx.unarchived = max(tx.unarchived, 0) + 1
        else:
            event, reason = "release", "worker_shutdown"
            row = leases.settle(job, event, now)
            row["attempts"] = job["attempts"] - 1  # a released lease does not use up the attempt
        changed[row["job_id"]] = row
        entries.append(rows.entry(job | {"state": row["state"], "attempts": row["attempts"]}, event, job["state"],
                                  row["state"], actor=f"worker:{job['worker_id']}", reason=reason, at=now))
        outcomes.append({"job_id": job["job_id"], "state": row["state"]})
    leases.write_changed(tx, changed, entries)
    leases.ended(tx, [(row, flow.NEUTRAL) for row in changed.values()])
    return outcomes
