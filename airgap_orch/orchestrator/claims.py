"""Claims: lease ready jobs to workers, by priority then fair turn among tenants, within the flow-control
limits; one claim may serve several workers (the server's group commit) and carry a batch of acks with it."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from .. import clock
from ..errors import OrchError
from ..ledger import Transaction
from . import backoff, dependencies, fairness, flow, history, recovery, reports, rows
from .states import QUEUED, next_state

# With limits set, a claim of N reads windows of N * CANDIDATES_PER_LEASE + CANDIDATES_EXTRA ready jobs, leaving
# out groups a limit blocks as a whole; when a group fills up inside a window, the next round leaves it out too
# (at most CANDIDATE_ROUNDS windows per claim).
CANDIDATES_PER_LEASE, CANDIDATES_EXTRA, CANDIDATE_ROUNDS = 2, 16, 4
BLOCKED_REPORT_WINDOW = 200  # ready jobs read to find the next one of each blocked group


def claim(tx: Transaction, *, worker_id: str, limit: int, lease_seconds: float, queue: str | None = None,
          job_type: str | None = None, tenants: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Lease up to `limit` ready jobs, by priority then fair turn among tenants; each gets a fresh lease id."""
    return claim_shared(tx, [(worker_id, limit)], lease_seconds=lease_seconds, queue=queue, job_type=job_type,
                        tenants=tenants)[0]


def claim_shared(tx: Transaction, takers: Sequence[tuple[str, int]], *, lease_seconds: float,
                 queue: str | None = None, job_type: str | None = None,
                 tenants: Collection[str] | None = None) -> list[list[dict[str, Any]]]:
    """One claim for several workers asking with the same filters (the server's group commit): up to
    sum(limit) ready jobs are leased in claim order, the first `limit` of them to the first taker, and so on.
    Returns each taker's leases.

    One statement when no flow-control limit can bind within this claim; otherwise flow.py admits the
    candidates one by one first."""
    recovery.maintain(tx)
    limit = sum(wanted for _, wanted in takers)
    now = clock.now()
    lease, where = _claim_params(tx, takers, now, lease_seconds, queue, job_type, tenants)
    found = flow.limits(tx)
    walk = None if found.empty else flow.Walk.start(tx, found, now)
    throttled: list[tuple[dict[str, Any], flow.Throttle]] = []
    if walk is not None:
        _report_blocked(tx, walk, where, now, throttled)
    if walk is None or walk.has_room(limit):
        # No limit can bind within this claim: one statement, leaving out the groups blocked as a whole.
        blocked = walk.blocked() if walk is not None else flow.NOTHING_BLOCKED
        if any(blocked.values()):
            leased = _fetch(tx.execute("claim_outside_blocked", **lease, **where, **blocked, limit=limit))
        else:
            leased = _fetch(tx.execute("claim", **lease, **where, limit=limit))
        if walk is not None:
            walk.count(leased)
    else:
        chosen = _admit(tx, walk, where, now, limit, throttled)
        leased = _fetch(tx.execute("claim_rows", **lease, row_ids=chosen))
    if walk is not None:
        walk.settle({job["job_id"] for job in leased})
    return _grant(tx, leased, takers, throttled, now, lease_seconds)


def _claim_params(tx: Transaction, takers: Sequence[tuple[str, int]], now: datetime, lease_seconds: float,
                  queue: str | None, job_type: str | None,
                  tenants: Collection[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A claim statement's parameters: the lease it gives (to the first taker) and which jobs it may take."""
    lease = {"worker_id": takers[0][0], "lease_seconds": lease_seconds, "now": now,
             "lease_expires_at": now + timedelta(seconds=lease_seconds)}
    where = {"site_id": tx.site_id, "queue": queue, "job_type": job_type,
             "tenants": sorted(tenants) if tenants is not None else None}
    return lease, where


def _grant(tx: Transaction, leased: list[dict[str, Any]], takers: Sequence[tuple[str, int]],
           throttled: list[tuple[dict[str, Any], flow.Throttle]], now: datetime,
           lease_seconds: float) -> list[list[dict[str, Any]]]:
    """After a claim statement leased `leased` (to the first taker): share them out, record the claims (and the
    jobs held back) in history, and return each taker's leases."""
    shares = _share(tx, leased, takers)
    fairness.claimed(tx, (job["fair_seq"] for job in leased))
    to_state = next_state(QUEUED, "claim")
    history.append(tx, [*(rows.entry(job, "claim", QUEUED, to_state, actor=f"worker:{job['worker_id']}", at=now)
                              for share in shares for job in share),
                        *(rows.entry(job, "throttle", QUEUED, QUEUED, actor="orchestrator", at=now,
                                     reason=_throttle_reason(held)) for job, held in throttled)])
    expires_text = clock.iso(now + timedelta(seconds=lease_seconds))
    heartbeat_every = round(lease_seconds / 3, 3)
    return [[lease_answer(job, expires_text, heartbeat_every) for job in share] for share in shares]


def ack_and_claim(tx: Transaction, acks: list[dict[str, Any]], takers: Sequence[tuple[str, int]], *,
                  lease_seconds: float, queue: str | None = None, job_type: str | None = None,
                  tenants: Collection[str] | None = None) -> tuple[list[dict[str, Any] | OrchError],
                                                                   list[list[dict[str, Any]]]]:
    """reports.ack(acks), then claim_shared(takers, ...): the outcomes of both, as each gives them.

    When no flow-control limit is set, no job waits on another (so the acks can change neither what the claim
    may take nor anything else) and the acks share one tenant restriction, both run as one statement: a batch
    worker's ack of one batch and claim of the next cost one statement instead of two."""
    if not takers:
        return reports.ack(tx, acks), []
    if not acks:
        return [], claim_shared(tx, takers, lease_seconds=lease_seconds, queue=queue, job_type=job_type,
                                tenants=tenants)
    groups = reports.ack_groups(acks)
    if len(groups) != 1 or not flow.limits(tx).empty or dependencies.any_waiting(tx):
        return reports.ack(tx, acks), claim_shared(tx, takers, lease_seconds=lease_seconds, queue=queue,
                                                   job_type=job_type, tenants=tenants)
    recovery.maintain(tx)
    now = clock.now()
    lease, where = _claim_params(tx, takers, now, lease_seconds, queue, job_type, tenants)
    [ack_tenants] = groups
    rows = tx.rows("ack_and_claim", **reports.ack_params(acks, ack_tenants), **lease, **where,
                   limit=sum(wanted for _, wanted in takers))
    to_lease = next_state(QUEUED, "claim")
    outcomes = reports.acked(tx, acks, {row["job_id"]: row for row in rows if row["state"] != to_lease}, now)
    return outcomes, _grant(tx, [row for row in rows if row["state"] == to_lease], takers, [], now, lease_seconds)


def _share(tx: Transaction, leased: list[dict[str, Any]], takers: Sequence[tuple[str, int]]) -> list[list[dict]]:
    """Split jobs leased (to the first taker) among the takers in claim order, and record the others' ids."""
    leased.sort(key=lambda job: (-job["priority"], job["fair_seq"], job["job_id"]))
    shares, start = [], 0
    for worker_id, wanted in takers:
        share = leased[start:start + wanted]
        start += wanted
        for job in share:
            job["worker_id"] = worker_id
        shares.append(share)
    moved = [job for share in shares[1:] for job in share]
    if moved:
        tx.execute("leases_assign", lease_ids=[job["lease_id"] for job in moved],
                   worker_ids=[job["worker_id"] for job in moved])
    for share in shares:
        share.sort(key=lambda job: job["job_id"])
    return shares


def lease_answer(job: dict[str, Any], lease_expires_at: str, heartbeat_every_seconds: float) -> dict[str, Any]:
    """What a worker gets for one leased job (the expiry and heartbeat hint are the same for the whole claim); also
    how the request log rebuilds a claim's answer from the job row (operations/request_log.py)."""
    return {
        "job_id": job["job_id"], "lease_id": job["lease_id"], "lease_expires_at": lease_expires_at,
        "attempt": job["attempts"], "max_attempts": job["max_attempts"], "tenant": job["tenant"],
        "project": job["project"], "type": job["job_type"], "queue": job["queue"],
        "priority": job["priority"], "payload": json.loads(job["payload"]),
        "payload_digest": job["payload_digest"], "correlation_id": job["correlation_id"],
        "timeout_seconds": job["timeout_seconds"], "keys": job["limit_keys"] or [],
        "retry_hint": {"heartbeat_every_seconds": heartbeat_every_seconds,
                       "backoff_seconds_if_failed": backoff.hint(job["attempts"])},
    }


def _fetch(cursor: Any) -> list[dict[str, Any]]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _admit(tx: Transaction, walk: flow.Walk, where: dict[str, Any], now: datetime, limit: int,
           throttled: list[tuple[dict[str, Any], flow.Throttle]]) -> list[int]:
    """Row ids of up to `limit` ready jobs the limits admit, in claim order; jobs held back and not yet
    reported for that reason are added to `throttled`."""
    chosen: list[int] = []
    window = limit * CANDIDATES_PER_LEASE + CANDIDATES_EXTRA
    for _ in range(CANDIDATE_ROUNDS):  # another round when a group filled up mid-window
        candidates = tx.rows("claim_candidates", **where, **walk.blocked(), now=now, chosen=chosen, limit=window)
        held_back = 0
        for job in candidates:
            if len(chosen) == limit:
                break
            held = walk.admit(job)
            if held is None:
                chosen.append(job["row_id"])
                continue
            held_back += 1
            if flow.noted(tx, job["job_id"], held):
                throttled.append((job, held))
        if len(chosen) == limit or len(candidates) < window or not held_back:
            break
    return chosen


def _report_blocked(tx: Transaction, walk: flow.Walk, where: dict[str, Any], now: datetime,
                    throttled: list[tuple[dict[str, Any], flow.Throttle]]) -> None:
    """When the groups blocked as a whole change, report the next ready job of each (once per reason): the
    claim leaves those groups out, so no claim would pass their jobs over and say so."""
    blocked = walk.blocked()
    if blocked == tx.cache.get("blocked") or not any(blocked.values()):
        tx.cache["blocked"] = blocked
        return
    tx.cache["blocked"] = blocked
    reasons: set[str] = set()
    for job in tx.rows("blocked_candidates", **where, **blocked, now=now, limit=BLOCKED_REPORT_WINDOW):
        held = walk.admit(job, dry=True)
        if held is not None and held.reason not in reasons:
            reasons.add(held.reason)
            if flow.noted(tx, job["job_id"], held):
                throttled.append((job, held))


def _throttle_reason(held: flow.Throttle) -> str:
    until = f"eligible at {clock.iso(held.eligible_at)}" if held.eligible_at is not None else \
        f"eligible once {held.waits_for}"
    return f"throttled: {held.reason}; {until}"
