"""Job lifecycle over one ledger transaction: enqueue, claim, heartbeat, ack, fail, cancel, recover,
release, replay. Every state change is decided by states.next_state() and recorded in history.

Batch functions take many items and return one outcome per item: a result dict, or the OrchError
that refused that item. A refused item changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from .. import clock, ids
from ..errors import Conflict, NotFound, OrchError, StaleLease
from ..ledger import Transaction
from . import audit, backoff, dependencies, fairness, flow, history
from .states import EVENT_TYPES as _EVENT_TYPES
from .states import (
    FINAL_STATES,
    HELD_STATES,
    QUEUED,
    REPLAYABLE_STATES,
    SUCCEEDED,
    WAITING,
    next_state,
    sources,
)

ARCHIVE_AFTER = 2_000  # finished rows allowed in the hot table before they move to jobs_finished
SWEEP_EVERY_SECONDS = 1.0
SWEEP_LIMIT = 1_000
# With limits set, a claim of N reads windows of N * CANDIDATES_PER_LEASE + CANDIDATES_EXTRA ready jobs, leaving
# out groups a limit blocks as a whole; when a group fills up inside a window, the next round leaves it out too
# (at most CANDIDATE_ROUNDS windows per claim).
CANDIDATES_PER_LEASE, CANDIDATES_EXTRA, CANDIDATE_ROUNDS = 2, 16, 4
BLOCKED_REPORT_WINDOW = 200  # ready jobs read to find the next one of each blocked group

_JOB_SCHEMA = pa.schema([
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


def _entry(job: dict[str, Any], event: str, from_state: str | None, to_state: str, *, actor: str,
           reason: str | None = None, at: datetime) -> dict[str, Any]:
    return {
        "job_id": job["job_id"], "event_type": _EVENT_TYPES[event], "from_state": from_state,
        "to_state": to_state, "attempt": job["attempts"], "lease_id": job.get("lease_id"),
        "worker_id": job.get("worker_id"), "actor": actor, "reason": reason, "tenant": job["tenant"],
        "project": job["project"], "job_type": job["job_type"], "correlation_id": job.get("correlation_id"),
        "payload_digest": job["payload_digest"], "artifacts": _artifact_list(job.get("artifacts")),
        "occurred_at": at,
    }


def no_job(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id}; check the id (`jobs list` shows the jobs)")


def any_job(tx: Transaction, job_id: str, tenants: Collection[str] | None) -> dict[str, Any]:
    """The job's row, active or finished, if a caller limited to `tenants` may see it; otherwise NotFound."""
    found = tx.rows("job_any", job_id=job_id)
    if not visible(found[0] if found else None, tenants):
        raise no_job(job_id)
    return found[0]


def _artifact_list(value: str | list | None) -> list:
    if isinstance(value, str):
        return json.loads(value)
    return value or []


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.table({name: [row.get(name) for row in rows] for name in schema.names}, schema=schema)


_RECORD_COLUMNS = ("tenant", "project", "job_type", "queue", "priority", "payload", "payload_digest",
                   "idempotency_key", "max_attempts", "timeout_seconds", "correlation_id", "limit_keys")


def _new_jobs_table(records: list[dict[str, Any]], job_ids: list[str], replay_of: list[str | None],
                    states: list[str], turns: list[int], site_id: str, now: datetime) -> pa.Table:
    """New jobs rows for validated records, built column by column (no per-row dict)."""
    count = len(records)
    columns: dict[str, list[Any]] = {name: [record[name] for record in records] for name in _RECORD_COLUMNS}
    columns.update(job_id=job_ids, site_id=[site_id] * count, state=states, fair_seq=turns,
                   run_at=[record["run_at"] or now for record in records], attempts=[0] * count,
                   cancel_requested=[False] * count, replay_of=replay_of, created_at=[now] * count,
                   updated_at=[now] * count)
    return pa.table([pa.array(columns[field.name], field.type) if field.name in columns
                     else pa.nulls(count, field.type) for field in _JOB_SCHEMA], schema=_JOB_SCHEMA)


def _write_back(tx: Transaction, rows: list[dict[str, Any]]) -> None:
    if rows:
        tx.execute_with("jobs_update", "updates", _table(rows, _UPDATE_SCHEMA))


def _load(tx: Transaction, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {row["job_id"]: row for row in tx.rows("jobs_by_ids", job_ids=job_ids)} if job_ids else {}


def write(tx: Transaction, rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Write back changed hot rows and append their history entries."""
    _write_back(tx, rows)
    history.append(tx, entries)


load_rows, entry = _load, _entry  # for dependencies.py


def _ended(tx: Transaction, outcomes: list[tuple[dict[str, Any], str]]) -> None:
    """After attempts ended [(job row after, flow.SUCCESS/FAILURE/NEUTRAL)]: circuit breakers learn the
    outcomes; dependents of jobs that reached a final state become ready or are canceled."""
    if not outcomes:
        return
    flow.record_outcomes(tx, outcomes)
    dependencies.settled(tx, [(row["job_id"], row["state"]) for row, _ in outcomes
                              if row["state"] in FINAL_STATES])


def visible(job: dict[str, Any] | None, tenants: Collection[str] | None) -> bool:
    """Whether a caller limited to `tenants` (None: all) may see `job`; others get NotFound, not Forbidden."""
    return job is not None and (tenants is None or job["tenant"] in tenants)


def _held(tx: Transaction, items: list[dict[str, Any]], now: datetime, outcomes: list[dict[str, Any] | OrchError],
          changed: dict[str, dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each item with the active row its lease holds. An item whose lease is refused gets its error appended to
    `outcomes` instead, in turn, so a caller that appends one outcome per item it is given keeps them in order.

    The caller puts each row it changes into `changed` (by job id) before taking the next item, and an item is
    checked against that row: a later item for the same job (a repeated report in one group commit) meets the
    state the earlier one left, so it gets what it would get one transaction later."""
    jobs = _load(tx, [item["job_id"] for item in items])
    for item in items:
        try:
            job = _check_lease(changed.get(item["job_id"]) or jobs.get(item["job_id"]), item, now, tx)
        except OrchError as error:
            outcomes.append(error)
            continue
        yield item, job


def _write_changed(tx: Transaction, changed: dict[str, dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """Write back the rows _held's caller changed (one per job, as the last item left it) and their entries."""
    _write_back(tx, list(changed.values()))
    history.append(tx, entries)


def _check_lease(job: dict[str, Any] | None, item: dict[str, Any], now: datetime,
                 tx: Transaction) -> dict[str, Any]:
    """The active row for the item's (job_id, lease_id), or the error that refuses it."""
    job_id, lease_id, tenants = item["job_id"], item["lease_id"], item.get("tenants")
    if job is None:
        raise StaleLease(f"job {job_id} is already {any_job(tx, job_id, tenants)['state']}; lease {lease_id} can "
                         "no longer change it")
    if not visible(job, tenants):
        raise no_job(job_id)
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


# -- enqueue ---------------------------------------------------------------------------------------

def enqueue(tx: Transaction, records: list[dict[str, Any]], *, actor: str,
            replay_of: list[str | None] | None = None, refuse_other_spec: bool = True) -> list[tuple[str, bool]]:
    """Insert validated job records (validation.job_spec). Returns [(job_id, created)] in order.

    A record whose idempotency key already exists in (site, tenant) resolves to the existing job when it
    carries the same spec (its `spec_digest`); a different spec under that key, in the ledger or earlier in
    this batch, is refused (Conflict) unless `refuse_other_spec` is False (a backfill's window or a schedule's
    tick: the key names the window, and the job already holding it covers it whatever its spec). A key
    reserved before spec digests were kept accepts any spec."""
    now = clock.now()
    parents = dependencies.parent_states(tx, records)
    if parents:
        dependencies.refuse_cycles(tx, records)
    resolved: list[str | None] = [None] * len(records)
    fresh: list[int] = []
    first_by_key: dict[tuple[str, str], int] = {}
    for index, record in enumerate(records):
        key = record["idempotency_key"]
        if key is None:
            fresh.append(index)
            continue
        earlier = first_by_key.setdefault((record["tenant"], key), index)
        if earlier == index:
            fresh.append(index)
        elif refuse_other_spec:
            _same_spec(record, records[earlier].get("spec_digest"), f"job {earlier + 1} of this batch")
    job_ids = dict(zip(fresh, ids.uuid7s(len(fresh)), strict=True))

    keyed = [i for i in fresh if records[i]["idempotency_key"] is not None]
    if keyed:
        reserve = pa.table({
            "site_id": [tx.site_id] * len(keyed),
            "tenant": [records[i]["tenant"] for i in keyed],
            "idempotency_key": [records[i]["idempotency_key"] for i in keyed],
            "job_id": [job_ids[i] for i in keyed],
            "spec_digest": pa.array([records[i].get("spec_digest") for i in keyed], pa.string()),
        })
        won = {(row[0], row[1]) for row in tx.execute_with("idempotency_reserve", "incoming", reserve).fetchall()}
        lost = [i for i in keyed if (records[i]["tenant"], records[i]["idempotency_key"]) not in won]
        for tenant in {records[i]["tenant"] for i in lost}:
            keys = [records[i]["idempotency_key"] for i in lost if records[i]["tenant"] == tenant]
            existing = {key: (job_id, spec_digest) for key, job_id, spec_digest in
                        tx.fetch("idempotency_lookup", site_id=tx.site_id, tenant=tenant, keys=keys)}
            for i in lost:
                if records[i]["tenant"] == tenant:
                    job_id, spec_digest = existing[records[i]["idempotency_key"]]
                    if refuse_other_spec:
                        _same_spec(records[i], spec_digest, f"job {job_id}")
                    resolved[i] = job_id
        lost_set = set(lost)
        fresh = [i for i in fresh if i not in lost_set]

    if fresh:
        created_records = [records[index] for index in fresh]
        created_ids = [job_ids[index] for index in fresh]
        created_replay_of = [replay_of[index] for index in fresh] if replay_of else [None] * len(fresh)
        states = [WAITING if any(parents[parent] != SUCCEEDED for parent in record["depends_on"]) else QUEUED
                  for record in created_records]
        turns = fairness.assign(tx, (record["tenant"] for record in created_records))
        tx.execute_with("jobs_insert", "incoming", _new_jobs_table(created_records, created_ids, created_replay_of,
                                                                   states, turns, tx.site_id, now))
        dependencies.add_edges(tx, [(job_id, parent) for record, job_id, state in
                                    zip(created_records, created_ids, states, strict=True) if state == WAITING
                                    for parent in record["depends_on"]])
        history.append(tx, (_entry({**record, "job_id": job_id, "attempts": 0},
                                   "create" if state == QUEUED else "create_waiting", None, state, actor=actor,
                                   at=now, reason=_create_reason(record, state, original))
                            for record, job_id, original, state in zip(created_records, created_ids,
                                                                       created_replay_of, states, strict=True)))
        for index in fresh:
            resolved[index] = job_ids[index]
    # Later duplicates inside this batch resolve to the first record with their key.
    for index, record in enumerate(records):
        if resolved[index] is None:
            resolved[index] = resolved[first_by_key[(record["tenant"], record["idempotency_key"])]]
    created = {job_ids[i] for i in fresh}
    seen: set[str] = set()
    out = []
    for job_id in resolved:
        assert job_id is not None
        out.append((job_id, job_id in created and job_id not in seen))
        seen.add(job_id)
    return out


def _same_spec(record: dict[str, Any], earlier_digest: str | None, earlier: str) -> None:
    """Refuse a record whose idempotency key was first given with another spec (None: not known, so any)."""
    digest = record.get("spec_digest")
    if digest is not None and earlier_digest is not None and digest != earlier_digest:
        raise Conflict(f"idempotency key {record['idempotency_key']!r} of tenant {record['tenant']} was already "
                       f"used for a different job spec ({earlier}); send the same spec again to get that job, or "
                       "use a new key for a new job")


def _create_reason(record: dict[str, Any], state: str, replay_of: str | None) -> str | None:
    """What a create entry records beyond the row: the replayed job, or the parents a waiting job needs
    (so dependency edges, like states, can be rebuilt from history)."""
    if replay_of:
        return f"replay_of:{replay_of}"
    if state == WAITING:
        return "depends_on:" + ",".join(record["depends_on"])
    return None


# -- claim -----------------------------------------------------------------------------------------

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
    maintain(tx)
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
    history.append(tx, [*(_entry(job, "claim", QUEUED, to_state, actor=f"worker:{job['worker_id']}", at=now)
                          for share in shares for job in share),
                        *(_entry(job, "throttle", QUEUED, QUEUED, actor="orchestrator", at=now,
                                 reason=_throttle_reason(held)) for job, held in throttled)])
    expires_text = clock.iso(now + timedelta(seconds=lease_seconds))
    heartbeat_every = round(lease_seconds / 3, 3)
    return [[_lease(job, expires_text, heartbeat_every) for job in share] for share in shares]


def ack_and_claim(tx: Transaction, acks: list[dict[str, Any]], takers: Sequence[tuple[str, int]], *,
                  lease_seconds: float, queue: str | None = None, job_type: str | None = None,
                  tenants: Collection[str] | None = None) -> tuple[list[dict[str, Any] | OrchError],
                                                                   list[list[dict[str, Any]]]]:
    """ack(acks), then claim_shared(takers, ...): the outcomes of both, as each gives them.

    When no flow-control limit is set, no job waits on another (so the acks can change neither what the claim
    may take nor anything else) and the acks share one tenant restriction, both run as one statement: a batch
    worker's ack of one batch and claim of the next cost one statement instead of two."""
    if not takers:
        return ack(tx, acks), []
    if not acks:
        return [], claim_shared(tx, takers, lease_seconds=lease_seconds, queue=queue, job_type=job_type,
                                tenants=tenants)
    groups = _ack_groups(acks)
    if len(groups) != 1 or not flow.limits(tx).empty or dependencies.any_waiting(tx):
        return ack(tx, acks), claim_shared(tx, takers, lease_seconds=lease_seconds, queue=queue, job_type=job_type,
                                           tenants=tenants)
    maintain(tx)
    now = clock.now()
    lease, where = _claim_params(tx, takers, now, lease_seconds, queue, job_type, tenants)
    [ack_tenants] = groups
    rows = tx.rows("ack_and_claim", **_ack_params(acks, ack_tenants), **lease, **where,
                   limit=sum(wanted for _, wanted in takers))
    to_lease = next_state(QUEUED, "claim")
    outcomes = _acked(tx, acks, {row["job_id"]: row for row in rows if row["state"] != to_lease}, now)
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


def _lease(job: dict[str, Any], lease_expires_at: str, heartbeat_every_seconds: float) -> dict[str, Any]:
    """What a worker gets for one leased job (the expiry and heartbeat hint are the same for the whole claim)."""
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


# -- worker reports --------------------------------------------------------------------------------

def heartbeat(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """items: {job_id, lease_id, progress?, message?}. Extends each lease; first one starts the job."""
    now = clock.now()
    outcomes: list[dict[str, Any] | OrchError] = []
    changed: dict[str, dict[str, Any]] = {}
    entries = []
    for item, job in _held(tx, items, now, outcomes, changed):
        row = dict(job)
        if job["state"] == "leased":
            row["state"] = next_state("leased", "start")
            row["started_at"] = now
            entries.append(_entry(row, "start", "leased", row["state"], actor=f"worker:{job['worker_id']}",
                                  at=now))
        row["lease_expires_at"] = now + timedelta(seconds=job["lease_seconds"])
        if item.get("progress") is not None:
            row["progress"] = item["progress"]
        if item.get("message") is not None:
            row["progress_message"] = item["message"]
        row["updated_at"] = now
        changed[row["job_id"]] = row
        outcomes.append({"job_id": job["job_id"], "state": row["state"],
                         "lease_expires_at": clock.iso(row["lease_expires_at"]),
                         "cancel_requested": bool(job["cancel_requested"])})
    _write_changed(tx, changed, entries)
    return outcomes


def ack(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """items: {job_id, lease_id, artifacts?}. Completes each job held by that current lease
    (canceled instead of succeeded when cancellation had been requested)."""
    now = clock.now()
    done: dict[str, dict[str, Any]] = {}
    for tenants, group in _ack_groups(items).items():  # one statement per distinct tenant set (usually one)
        done.update((row["job_id"], row) for row in tx.rows("ack", **_ack_params(group, tenants), now=now))
    return _acked(tx, items, done, now)


def _ack_groups(items: list[dict[str, Any]]) -> dict[frozenset[str] | None, list[dict[str, Any]]]:
    """The items an ack statement gets, by the tenants their caller is limited to. Only the first ack of a
    (job, lease) goes in: a repeat would complete the row a second time, with its own artifacts, and _acked
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


def _ack_params(items: list[dict[str, Any]], tenants: frozenset[str] | None) -> dict[str, Any]:
    return {"lease_ids": [item["lease_id"] for item in items], "job_ids": [item["job_id"] for item in items],
            "artifacts": [_encode_artifacts(item.get("artifacts")) for item in items],
            "from_states": sources("ack"), "ack_tenants": sorted(tenants) if tenants is not None else None}


def _acked(tx: Transaction, items: list[dict[str, Any]], done: dict[str, dict[str, Any]],
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
    current = _load(tx, refused) if refused else {}
    for position, item in enumerate(items):
        if position not in credited:
            try:
                _check_lease(current.get(item["job_id"]), item, now, tx)
                raise StaleLease(f"lease {item['lease_id']} could not complete job {item['job_id']}")
            except OrchError as error:
                outcomes.append(error)
            continue
        job = done[item["job_id"]]
        event = "cancel" if job["state"] == "canceled" else "ack"
        from_state = "running" if job["started_at"] is not None else "leased"  # started_at marks 'start'
        entries.append(_entry({**job, "artifacts": item.get("artifacts")}, event, from_state, job["state"],
                              actor=f"worker:{job['worker_id']}", at=now,
                              reason="canceled_by_request" if event == "cancel" else None))
        outcomes.append({"job_id": job["job_id"], "state": job["state"], "attempt": job["attempts"]})
    if entries:  # (-1, unknown after open, must stay so until the next claim archives)
        tx.unarchived = max(tx.unarchived, 0) + len(entries)
    history.append(tx, entries)
    if entries and (flow.limits(tx).breakers or dependencies.any_waiting(tx)):
        finished = _load(tx, [entry["job_id"] for entry in entries])
        _ended(tx, [(row, flow.SUCCESS if row["state"] == SUCCEEDED else flow.NEUTRAL) for row in finished.values()])
    return outcomes


def _encode_artifacts(artifacts: list | None) -> str:
    return json.dumps(artifacts, separators=(",", ":")) if artifacts else "[]"


def fail(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """items: {job_id, lease_id, error, retry_after?, no_retry?}. Retries with backoff while attempts
    remain, else dead-letters; no_retry fails the job for good."""
    now = clock.now()
    outcomes: list[dict[str, Any] | OrchError] = []
    changed: dict[str, dict[str, Any]] = {}
    entries, ended = [], []
    for item, job in _held(tx, items, now, outcomes, changed):
        if job["cancel_requested"]:
            event, reason = "cancel", "canceled_by_request"
        elif item.get("no_retry"):
            event, reason = "fail", "no_retry"
        elif job["attempts"] >= job["max_attempts"]:
            event, reason = "exhaust", "attempts_exhausted"
        else:
            event, reason = "retry", "worker_error"
        row = _settle(job, event, now, error=item["error"], retry_after=item.get("retry_after"))
        changed[row["job_id"]] = row
        ended.append((row, flow.NEUTRAL if event == "cancel" else flow.FAILURE))
        entries.append(_entry(row, event, job["state"], row["state"], actor=f"worker:{job['worker_id']}",
                              reason=f"{reason}: {item['error']}"[:512], at=now))
        outcomes.append({"job_id": row["job_id"], "state": row["state"], "attempt": row["attempts"],
                         "run_at": clock.iso(row["run_at"]) if row["state"] == QUEUED else None})
    _write_changed(tx, changed, entries)
    _ended(tx, ended)
    return outcomes


def _settle(job: dict[str, Any], event: str, now: datetime, *, error: str | None = None,
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
        row = _settle(job, event, now, error=reason)
        updates.append(row)
        ended.append((row, flow.NEUTRAL if event == "cancel" else flow.FAILURE))
        entries.append(_entry(job | {"state": row["state"]}, event, job["state"], row["state"],
                              actor="orchestrator", reason=reason, at=now))
        if row["state"] in FINAL_STATES:
            tx.unarchived = max(tx.unarchived, 0) + 1
    _write_back(tx, updates)
    history.append(tx, entries)
    _ended(tx, ended)
    return [row["tenant"] for row in updates]


def release(tx: Transaction, items: list[dict[str, Any]]) -> list[dict[str, Any] | OrchError]:
    """Give leased jobs back without using up the attempt (graceful worker shutdown). A job whose
    cancellation was requested ends canceled instead, as it would on fail or lease expiry."""
    now = clock.now()
    outcomes: list[dict[str, Any] | OrchError] = []
    changed: dict[str, dict[str, Any]] = {}
    entries = []
    for _item, job in _held(tx, items, now, outcomes, changed):
        if job["cancel_requested"]:
            event, reason = "cancel", "canceled_by_request"
            row = _settle(job, event, now)
            tx.unarchived = max(tx.unarchived, 0) + 1
        else:
            event, reason = "release", "worker_shutdown"
            row = _settle(job, event, now)
            row["attempts"] = job["attempts"] - 1  # a released lease does not use up the attempt
        changed[row["job_id"]] = row
        entries.append(_entry(job | {"state": row["state"], "attempts": row["attempts"]}, event, job["state"],
                              row["state"], actor=f"worker:{job['worker_id']}", reason=reason, at=now))
        outcomes.append({"job_id": job["job_id"], "state": row["state"]})
    _write_changed(tx, changed, entries)
    _ended(tx, [(row, flow.NEUTRAL) for row in changed.values()])
    return outcomes


# -- operator actions ------------------------------------------------------------------------------

def cancel(tx: Transaction, job_id: str, *, reason: str, actor: str,
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Cancel a queued job now; for a leased/running job, request cancellation from its worker."""
    now = clock.now()
    job = _load(tx, [job_id]).get(job_id)
    if job is None:
        next_state(any_job(tx, job_id, tenants)["state"], "cancel")  # raises IllegalTransition for a finished job
    if not visible(job, tenants):
        raise no_job(job_id)
    if job["cancel_requested"] and job["state"] in HELD_STATES:
        # Asked before and not yet answered: the job's history is unchanged; the audit log keeps the request.
        audit.append(tx, "job.cancel", actor=actor, reason=reason, target=job_id,
                     details={"state": job["state"], "tenant": job["tenant"], "already_requested": True})
        return {"job_id": job_id, "state": job["state"], "cancel_requested": True}
    if job["state"] in (WAITING, QUEUED):
        row = dict(job, state=next_state(job["state"], "cancel"), finished_at=now, updated_at=now)
        entry = _entry(row, "cancel", job["state"], row["state"], actor=actor, reason=reason, at=now)
        tx.unarchived = max(tx.unarchived, 0) + 1
    else:
        row = dict(job, state=next_state(job["state"], "request_cancel"), cancel_requested=True, updated_at=now)
        entry = _entry(row, "request_cancel", job["state"], row["state"], actor=actor, reason=reason, at=now)
    _write_back(tx, [row])
    history.append(tx, [entry])
    if row["state"] in FINAL_STATES:
        _ended(tx, [(row, flow.NEUTRAL)])
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
        if job is None or not visible(job, tenants):
            raise no_job(job_id)
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
    history.append(tx, (_entry(job, "replay", job["state"], job["state"], actor=actor,
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


# -- reading ---------------------------------------------------------------------------------------

def show(tx: Transaction, job_id: str, tenants: Collection[str] | None = None) -> dict[str, Any]:
    found = any_job(tx, job_id, tenants)
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
