"""Ledger operations: init, info, verify, events."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from .. import clock, ids, validation
from ..errors import InvalidInput, VerificationFailed
from ..ledger import Ledger
from ..orchestrator import audit, events, history

_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def init(path: Path, *, site_id: str | None, lock_timeout: float) -> dict[str, Any]:
    if site_id is not None and not _SITE_ID.match(site_id):
        raise InvalidInput(f"site id {site_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    with Ledger.open(path, lock_timeout=lock_timeout, create=True, site_id=site_id or f"site-{ids.uuid7()[:13]}"
                     ) as ledger:
        return {"ledger": str(path), "site_id": ledger.site_id, "schema_version": ledger.schema_version}


def _tenant_list(tenants: Collection[str] | None) -> list[str] | None:
    return sorted(tenants) if tenants is not None else None


def info(ledger: Ledger, *, tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Identity, schema, history head, and job counts by state (of the caller's tenants only)."""
    read = ledger.read()
    counts = {row["state"]: row["jobs"] for row in read.rows("state_counts", tenants=_tenant_list(tenants))}
    return {
        "ledger": str(ledger.path),
        "site_id": ledger.site_id,
        "schema_version": ledger.schema_version,
        "created_at": read.fetch("meta_get", key="created_at")[0][0],
        "jobs": counts,
        "history_entries": ledger.head_seq,
        "history_head": ledger.head_hash,
    }


PROGRESS_EVERY = 10_000  # chain entries between two progress reports


def verify(ledger: Ledger, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Schema version, history chain, and state tables against history. Raises VerificationFailed.
    `progress(done, total)` hears how many chain entries (history, then audit log) have been checked."""
    from ..ledger import sql

    read = ledger.read()
    if ledger.schema_version != sql.latest_version():
        raise VerificationFailed(f"schema version {ledger.schema_version} != expected {sql.latest_version()}")
    total = ledger.head_seq + read.fetch("audit_count")[0][0]
    entries = history.verify_chain(_counted(read.scan("verify_history_scan"), progress, 0, total))
    audit_entries = audit.verify_chain(_counted(read.scan("audit_scan"), progress, entries, total))
    if progress is not None:
        progress(total, total)
    if entries != ledger.head_seq:
        raise VerificationFailed(f"history has {entries} entries but its head says {ledger.head_seq}")
    mismatched = read.rows("verify_states")
    if mismatched:
        first = mismatched[0]
        if first["job_digest"] is not None and first["job_digest"] != first["history_digest"]:
            raise VerificationFailed(f"job {first['job_id']}: payload digest differs from the one its history "
                                     "recorded; the payload was rewritten")
        raise VerificationFailed(
            f"job {first['job_id']}: state {first['state']!r}/attempt {first['attempts']} does not match its "
            f"history ({first['to_state']!r}/attempt {first['attempt']}); {len(mismatched)} job(s) differ")
    bad_payloads = read.rows("verify_payload_digests")
    if bad_payloads:
        raise VerificationFailed(f"job {bad_payloads[0]['job_id']}: payload does not match its digest")
    jobs = sum(row["jobs"] for row in read.rows("state_counts", tenants=None))
    return {"ok": True, "schema_version": ledger.schema_version, "history_entries": entries,
            "audit_entries": audit_entries, "jobs": jobs,
            "checked_at": clock.iso(clock.now())}


def _counted(rows: Iterator[tuple], progress: Callable[[int, int], None] | None, start: int, total: int
             ) -> Iterator[tuple]:
    """The rows, reporting `start` + rows seen so far every PROGRESS_EVERY rows."""
    if progress is None:
        yield from rows
        return
    for seen, row in enumerate(rows, 1):
        yield row
        if seen % PROGRESS_EVERY == 0:
            progress(min(start + seen, total), total)


def event_log(ledger: Ledger, *, after_seq: int = 0, limit: int = 1000,
              tenants: Collection[str] | None = None) -> dict[str, Any]:
    """History entries after `after_seq` as orch.event.v1 envelopes (of the caller's tenants only)."""
    after_seq = int(validation.number_in(after_seq, 0, 2**62, "after_seq"))
    limit = int(validation.number_in(limit, 1, 100_000, "limit"))
    entries = ledger.read().rows("history_page", after_seq=after_seq, limit=limit, tenants=_tenant_list(tenants))
    last_seq = entries[-1]["seq"] if entries else after_seq
    return {"events": [events.envelope(history.parse(row["seq"], row["entry"], row["entry_hash"]))
                       for row in entries], "last_seq": last_seq}
