"""Dependency chains: a job enqueued with parents waits (state `waiting`) until every parent succeeded; a
parent that ends any other way (failed, dead-lettered, timed out, canceled) cancels its waiting descendants
with reason `dependency_failed`.

Parents must exist, in the child's own tenant, when the child is enqueued, and a job's edges never change
afterwards, so a chain cannot close into a cycle; the one way to ask for one (re-enqueueing an idempotency key
with its own job as a parent) is refused.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from .. import clock
from ..errors import InvalidInput, NotFound
from ..ledger import Transaction
from . import rows
from .states import CANCELED, FINAL_STATES, SUCCEEDED, WAITING, next_state

DEPENDENCY_FAILED = "dependency_failed"


def parent_states(tx: Transaction, records: list[dict[str, Any]]) -> dict[str, str]:
    """States of every parent the records name; refuses unknown parents and parents that already ended
    without success (their child could never run).

    A parent is resolved within its child's tenant (which the caller may enqueue for): a job of another
    tenant is "not found", whoever asks, so a chain never ties two tenants together and a caller learns
    nothing of a job it cannot see."""
    wanted = sorted({parent for record in records for parent in record["depends_on"]})
    if not wanted:
        return {}
    found = {job_id: (tenant, state) for job_id, tenant, state in tx.fetch("parents_states", job_ids=wanted)}
    for record in records:
        for parent in record["depends_on"]:
            tenant, state = found.get(parent, (None, None))
            if tenant != record["tenant"]:
                raise NotFound(f"parent job {parent} does not exist in tenant {record['tenant']}; a job can depend "
                               "only on jobs of its own tenant: enqueue the parent first and pass its id to "
                               "--depends-on")
            if state in FINAL_STATES and state != SUCCEEDED:
                raise InvalidInput(f"parent job {parent} is {state}; a job depending on it could never run "
                                   "(replay the parent and depend on the replay)")
    return {job_id: state for job_id, (_, state) in found.items()}


def refuse_cycles(tx: Transaction, records: list[dict[str, Any]]) -> None:
    """Refuse a record whose idempotency key already names a job that the record lists as its parent."""
    for record in records:
        if not record["depends_on"] or record["idempotency_key"] is None:
            continue
        found = {key: job_id for key, job_id, _ in tx.fetch("idempotency_lookup", site_id=tx.site_id,
                                                             tenant=record["tenant"], keys=[record["idempotency_key"]])}
        job_id = found.get(record["idempotency_key"])
        if job_id in record["depends_on"]:
            raise InvalidInput(f"job {job_id} cannot depend on itself (idempotency key "
                               f"{record['idempotency_key']!r} names it); dependency cycles are refused")


def add_edges(tx: Transaction, edges: list[tuple[str, str]]) -> None:
    """Record (child, parent) edges for new waiting jobs."""
    if edges:
        tx.execute_with("dependencies_insert", "incoming", pa.table({
            "job_id": [child for child, _ in edges], "parent_id": [parent for _, parent in edges]}))
        tx.cache["waiting"] = True


def any_waiting(tx: Transaction) -> bool:
    known = tx.cache.get("waiting")
    if known is None:
        known = tx.cache["waiting"] = bool(tx.fetch("waiting_count")[0][0])
    return known


def settled(tx: Transaction, ended: list[tuple[str, str]]) -> None:
    """After jobs ended [(job_id, final state)]: children whose last parent succeeded become queued;
    waiting descendants of a job that ended otherwise are canceled (dependency_failed)."""
    if not ended or not any_waiting(tx):
        return
    now = clock.now()
    succeeded = [job_id for job_id, state in ended if state == SUCCEEDED]
    if succeeded:
        ready = [job_id for job_id, unmet in tx.fetch("children_waiting", parent_ids=succeeded)
                 if unmet == 0]
        unblocked = [dict(job, state=next_state(WAITING, "unblock"), updated_at=now)
                     for job in rows.load(tx, ready).values()]
        rows.write(tx, unblocked, [rows.entry(row, "unblock", WAITING, row["state"], actor="orchestrator", at=now,
                                              reason="parents_succeeded") for row in unblocked])
    failed = [job_id for job_id, state in ended if state in FINAL_STATES and state != SUCCEEDED]
    while failed:
        children = [job_id for job_id, _ in tx.fetch("children_waiting", parent_ids=failed)]
        canceled = [dict(job, state=next_state(WAITING, "cancel"), finished_at=now, updated_at=now)
                    for job in rows.load(tx, children).values()]
        rows.write(tx, canceled, [rows.entry(row, "cancel", WAITING, CANCELED, actor="orchestrator", at=now,
                                             reason=DEPENDENCY_FAILED) for row in canceled])
        tx.unarchived = max(tx.unarchived, 0) + len(canceled)
        failed = [row["job_id"] for row in canceled]
