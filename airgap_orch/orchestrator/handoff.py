"""Hand-off: pending, never-started jobs move from this site to another across the air gap.

At the SOURCE (`hand_off`, in the transaction that commits before the bundle file is written): each job goes
queued -> handed_off (a final state: never claimed, retried or canceled here again) with a `job.handed_off`
history entry whose reason names the target and the bundle sequence, and a `bundle_handoffs` row that names that
entry (its seq and hash); one `bundle.handoff` audit entry.

At the TARGET (`receive`, inside the import transaction): each handed-over job becomes a local queued job (this
site's id, attempts 0, a fresh fairness turn) with a `job.received` history entry whose reason names the source
site and the source's last entry of the job (`handed_off_from:<site>#<seq>:<entry_hash>`), so its history goes on
from there; its idempotency keys move into this site's scope and the backfill windows it covers become local. A
job this site already has (the same bundle imported again, or a later bundle of the source) is skipped, and so is
one whose idempotency key a local job of this site already holds (that job does the work): nothing runs twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from .. import clock
from ..bundle.errors import PayloadError
from ..errors import NotFound
from ..ledger import Transaction
from . import audit, fairness, flow, history, leases, rows
from .states import HANDED_OFF, QUEUED, next_state

HANDOFF_SCHEMA = pa.schema([
    ("target_site", pa.string()), ("sequence", pa.int64()), ("job_id", pa.string()), ("backfill_id", pa.string()),
    ("window_index", pa.int32()), ("history_seq", pa.int64()), ("entry_hash", pa.string()),
    ("handed_off_at", pa.timestamp("us")), ("handed_off_by", pa.string()),
])
_KEY_SCHEMA = pa.schema([("site_id", pa.string()), ("tenant", pa.string()), ("idempotency_key", pa.string()),
                         ("job_id", pa.string()), ("spec_digest", pa.string())])


def hand_off(tx: Transaction, *, target_site: str, sequence: int, tenant: str | None, queues: Sequence[str],
             backfills: Sequence[str], actor: str, reason: str | None = None) -> list[str]:
    """Hand this site's pending, never-started jobs (of `queues` and `backfills`' windows; neither: all) to
    `target_site` as part of bundle `sequence`. Returns the job ids, in order."""
    now = clock.now()
    backfills = sorted(set(backfills))
    if backfills:
        known = {row[0] for row in tx.fetch("backfills_known", backfills=backfills)}
        missing = [backfill for backfill in backfills if backfill not in known]
        if missing:
            raise NotFound(f"no backfill {missing[0]}; `backfill list` shows the backfills")
    candidates = tx.rows("handoff_candidates", site_id=tx.site_id, tenant=tenant,
                         queues=sorted(set(queues)) or None, backfills=backfills or None)
    if not candidates:
        return []
    windows = ({job_id: (backfill, index) for job_id, backfill, index in tx.fetch("handoff_windows",
                                                                                  backfills=backfills)}
               if backfills else {})
    changed = [dict(job, state=next_state(job["state"], "hand_off"), finished_at=now, updated_at=now)
               for job in candidates]
    rows.write_back(tx, changed)
    tx.unarchived = max(tx.unarchived, 0) + len(changed)
    first = len(tx.appended)
    history.append(tx, (rows.entry(row, "hand_off", QUEUED, HANDED_OFF, actor=actor,
                                   reason=f"handed_off_to:{target_site}#{sequence}", at=now) for row in changed))
    entries = tx.appended[first:]
    leases.ended(tx, [(row, flow.NEUTRAL) for row in changed])
    job_ids = [row["job_id"] for row in changed]
    tx.execute_with("bundle_handoffs_insert", "incoming", pa.table({
        "target_site": [target_site] * len(changed), "sequence": [sequence] * len(changed), "job_id": job_ids,
        "backfill_id": [windows.get(job_id, (None, None))[0] for job_id in job_ids],
        "window_index": [windows.get(job_id, (None, None))[1] for job_id in job_ids],
        "history_seq": [seq for seq, _, _, _ in entries], "entry_hash": [entry_hash for *_, entry_hash in entries],
        "handed_off_at": [now] * len(changed), "handed_off_by": [actor] * len(changed),
    }, schema=HANDOFF_SCHEMA))
    tenants = {row["tenant"] for row in changed}
    audit.append(tx, "bundle.handoff", actor=actor, reason=reason, target=f"{target_site}#{sequence}",
                 details={"target_site": target_site, "sequence": sequence, "jobs": len(job_ids),
                          "job_ids": job_ids[:100], "queues": sorted(set(queues)), "backfills": backfills,
                          "tenant": next(iter(tenants)) if len(tenants) == 1 else None})
    return job_ids


def receive(tx: Transaction, *, source_site: str, handoffs: list[dict[str, Any]], jobs: dict[str, dict[str, Any]],
            keys: list[dict[str, Any]], backfills: dict[str, dict[str, Any]],
            windows: dict[tuple[str, int], dict[str, Any]], actor: str, now: datetime | None = None,
            write: bool = True) -> dict[str, Any]:
    """Make the handed-over jobs local (module docstring). `jobs`, `backfills` and `windows`: the bundle's rows
    by key; `keys`: the bundle's idempotency keys of the handed-over jobs. With `write` False only says what it
    would do (a plan). Returns {received, already_local, key_held, windows}."""
    now = now or clock.now()
    wanted = [handoff["job_id"] for handoff in handoffs]
    present = {row[0] for row in tx.fetch("jobs_known_any", job_ids=wanted)} if wanted else set()
    keys_by_job: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        keys_by_job.setdefault(key["job_id"], []).append(key)
    pairs = sorted({f"{key['tenant']}\0{key['idempotency_key']}" for key in keys})
    held = {(tenant, key): job_id for tenant, key, job_id in
            tx.fetch("idempotency_holders", site_id=tx.site_id, pairs=pairs)} if pairs else {}
    received, already, key_held = [], [], []
    for handoff in handoffs:
        job_id = handoff["job_id"]
        if job_id in present:
            already.append(job_id)
            continue
        holder = next((held[(k["tenant"], k["idempotency_key"])] for k in keys_by_job.get(job_id, ())
                       if held.get((k["tenant"], k["idempotency_key"]), job_id) != job_id), None)
        if holder is not None:
            key_held.append({"job_id": job_id, "held_by": holder})
            continue
        if job_id not in jobs:
            raise PayloadError("handoff", f"the bundle hands over job {job_id} but does not carry it")
        received.append(handoff)
    new_windows = _windows(tx, received, windows)
    summary = {"received": [h["job_id"] for h in received], "already_local": already, "key_held": key_held,
               "windows": len(new_windows)}
    if not write or not received:
        return summary
    made = []
    for handoff, turn in zip(received, fairness.assign(tx, (jobs[h["job_id"]]["tenant"] for h in received)),
                             strict=True):
        job = jobs[handoff["job_id"]]
        made.append(dict(job, site_id=tx.site_id, state=next_state(None, "receive"), attempts=0, lease_id=None,
                         worker_id=None, lease_seconds=None, leased_at=None, lease_expires_at=None, started_at=None,
                         progress=None, progress_message=None, artifacts=None, last_error=None,
                         cancel_requested=False, finished_at=None, updated_at=now, fair_seq=turn))
    tx.execute_with("jobs_insert", "incoming", pa.Table.from_pylist(made, schema=rows.JOB_SCHEMA))
    moved = [dict(key, site_id=tx.site_id) for handoff in received for key in keys_by_job.get(handoff["job_id"], ())]
    if moved:
        tx.execute_with("idempotency_reserve", "incoming", pa.Table.from_pylist(moved, schema=_KEY_SCHEMA))
    history.append(tx, (rows.entry(row, "receive", None, QUEUED, actor=actor, at=now,
                                   reason=f"handed_off_from:{source_site}#{h['history_seq']}:{h['entry_hash']}")
                        for row, h in zip(made, received, strict=True)))
    for backfill_id in sorted({backfill for backfill, _ in new_windows}):
        if not tx.fetch("backfill_get", backfill_id=backfill_id):
            row = dict(backfills[backfill_id], site_id=tx.site_id)
            tx.execute_with("backfill_insert", "incoming", pa.Table.from_pylist([row], schema=_schema("backfills")))
    if new_windows:
        tx.execute_with("backfill_windows_insert", "incoming", pa.Table.from_pylist(
            [windows[key] for key in new_windows], schema=_schema("backfill_windows")))
    return summary


def _windows(tx: Transaction, received: list[dict[str, Any]], windows: dict[tuple[str, int], dict[str, Any]]
             ) -> list[tuple[str, int]]:
    """The (backfill, window) keys the received jobs cover that this site does not hold yet."""
    wanted = sorted({(h["backfill_id"], h["window_index"]) for h in received if h["backfill_id"] is not None})
    if not wanted:
        return []
    known = set(tx.fetch("backfill_windows_known", backfills=sorted({b for b, _ in wanted})))
    missing = [key for key in wanted if key not in windows]
    if missing:
        raise PayloadError("handoff", f"the bundle hands over window {missing[0][1]} of backfill {missing[0][0]} "
                           "but does not carry it")
    return [key for key in wanted if key not in known]


def _schema(table: str) -> pa.Schema:
    from ..bundle.tables import BY_NAME

    return BY_NAME[table].schema
