"""Enqueue: validated job records become queued (or waiting) jobs, with idempotency keys resolved, dependency
edges added and a create entry in each job's history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa

from .. import clock, ids
from ..errors import Conflict
from ..ledger import Transaction
from . import dependencies, fairness, history, rows
from .states import QUEUED, SUCCEEDED, WAITING

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
                     else pa.nulls(count, field.type) for field in rows.JOB_SCHEMA], schema=rows.JOB_SCHEMA)


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
        history.append(tx, (rows.entry({**record, "job_id": job_id, "attempts": 0},
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
