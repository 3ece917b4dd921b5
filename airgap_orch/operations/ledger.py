"""Ledger operations: init, info, verify, events."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from .. import clock, ids, validation
from ..errors import InvalidInput, VerificationFailed
from ..ledger import Ledger, Transaction
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


def info(ledger: Ledger, *, tenants: Collection[str] | None = None, history_count: bool = True) -> dict[str, Any]:
    """Identity, schema, history head, and job counts by state. A caller limited to some tenants gets the counts
    of its tenants only: its jobs and their history entries, and no site head (`history_head` None).
    `history_count=False` (the metrics door) skips counting a limited caller's history entries."""
    read = ledger.read()
    counts = {row["state"]: row["jobs"] for row in read.rows("state_counts", tenants=_tenant_list(tenants))}
    if tenants is None:
        history_entries, history_head = ledger.head_seq, ledger.head_hash
    else:
        history_head = None
        history_entries = (read.fetch("history_count_for_tenants", tenants=_tenant_list(tenants))[0][0]
                           if history_count else None)
    return {
        "ledger": str(ledger.path),
        "site_id": ledger.site_id,
        "schema_version": ledger.schema_version,
        "created_at": read.fetch("meta_get", key="created_at")[0][0],
        "jobs": counts,
        "history_entries": history_entries,
        "history_head": history_head,
    }


PROGRESS_EVERY = 10_000  # chain entries between two progress reports


def verify(ledger: Ledger, *, progress: Callable[[int, int], None] | None = None,
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Schema version, both hash chains against the heads recorded at commit, the audit log against history
    (every audited job action has its transition), and state tables against history. Raises VerificationFailed.
    `progress(done, total)` hears how many chain entries (history, then audit log) have been checked.

    The chains are the site's, so a caller limited to some tenants still has the whole ledger verified; it is
    told the counts of its tenants only, and a failure in another tenant's record without that record's
    details (job id, action, state), nor the site's totals (history.Broken.told_to)."""
    try:
        return _verify(ledger, progress, tenants)
    except history.Broken as broken:
        raise broken.told_to(tenants) from None


def _verify(ledger: Ledger, progress: Callable[[int, int], None] | None,
            tenants: Collection[str] | None) -> dict[str, Any]:
    from ..ledger import sql

    read = ledger.read()
    if ledger.schema_version != sql.latest_version():
        raise VerificationFailed(f"schema version {ledger.schema_version} != expected {sql.latest_version()}")
    # The recorded heads first: the one writer commits nothing while this runs (the server runs it in its writer
    # thread), so they and the scans below see the same commits.
    history_head = _recorded_head(read, "history")
    audit_head = _recorded_head(read, "audit")
    total = history_head[0] + audit_head[0]
    chain = history.verify_chain(_counted(read.scan("verify_history_scan"), progress, 0, total), tenants=tenants)
    history.check_head(chain, history_head)
    audit_chain = audit.verify_chain(_counted(read.scan("audit_scan"), progress, chain.entries, total),
                                     tenants=tenants)
    audit.check_head(audit_chain, audit_head)
    if progress is not None:
        progress(total, total)
    _check_audited_transitions(read)
    _check_states(read, tenants)
    jobs = sum(row["jobs"] for row in read.rows("state_counts", tenants=_tenant_list(tenants)))
    return {"ok": True, "schema_version": ledger.schema_version, "history_entries": chain.counted,
            "audit_entries": audit_chain.counted, "jobs": jobs,
            "counts_of": "site" if tenants is None else _tenant_list(tenants),
            "checked_at": clock.iso(clock.now())}


def _recorded_head(read: Transaction, chain: str) -> tuple[int, str]:
    rows = read.fetch("chain_head", chain=chain)
    if len(rows) != 1:
        raise VerificationFailed(f"the ledger records {len(rows)} heads for its {chain} chain instead of one; "
                                 "the chain_heads table was altered")
    return int(rows[0][0]), rows[0][1]


def _check_audited_transitions(read: Transaction) -> None:
    """Every job action the audit log records has its transition in history."""
    missing = read.rows("verify_audited_transitions")
    if missing:
        first = missing[0]
        kind = "cancel" if first["action"] == "job.cancel" else "replay"
        raise history.Broken(
            f"audit entry {first['seq']} records {first['action']} of job {first['job_id']} but history has no "
            f"{kind} transition for {first['job_id']}", tenant=first["tenant"],
            redacted=f"audit entry {first['seq']} records a job action outside your tenants that history lacks")


def _check_states(read: Transaction, tenants: Collection[str] | None) -> None:
    """Each job's state, attempt and payload digest against its last history entry; payloads against digests."""
    mismatched = read.rows("verify_states")
    if mismatched:
        first = mismatched[0]
        differ = (len(mismatched) if tenants is None
                  else sum(1 for row in mismatched if row["tenant"] in tenants))
        if first["job_digest"] is not None and first["job_digest"] != first["history_digest"]:
            raise history.Broken(
                f"job {first['job_id']}: payload digest differs from the one its history recorded; the payload "
                "was rewritten", tenant=first["tenant"],
                redacted="a job outside your tenants: payload digest differs from the one its history recorded")
        raise history.Broken(
            f"job {first['job_id']}: state {first['state']!r}/attempt {first['attempts']} does not match its "
            f"history ({first['to_state']!r}/attempt {first['attempt']}); {differ} job(s) differ",
            tenant=first["tenant"],
            redacted="a job outside your tenants does not match its history (state or attempt)")
    bad_payloads = read.rows("verify_payload_digests")
    if bad_payloads:
        raise history.Broken(f"job {bad_payloads[0]['job_id']}: payload does not match its digest",
                             tenant=bad_payloads[0]["tenant"],
                             redacted="a job outside your tenants: payload does not match its digest")


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
