"""Ledger operations: init, info, verify, events."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import clock, ids, validation
from ..errors import InvalidInput, VerificationFailed
from ..ledger import Ledger, Snapshot
from ..orchestrator import audit, events, history
from .registry import operation

_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def init(path: Path, *, site_id: str | None, lock_timeout: float) -> dict[str, Any]:
    if site_id is not None and not _SITE_ID.match(site_id):
        raise InvalidInput(f"site id {site_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    with Ledger.open(path, lock_timeout=lock_timeout, create=True, site_id=site_id or f"site-{ids.uuid7()[:13]}"
                     ) as ledger:
        return {"ledger": str(path), "site_id": ledger.site_id, "schema_version": ledger.schema_version}


def _tenant_list(tenants: Collection[str] | None) -> list[str] | None:
    return sorted(tenants) if tenants is not None else None


@operation("ledger.info")
def info(ledger: Ledger, *, tenants: Collection[str] | None = None, history_count: bool = True,
         actor: str = "cli") -> dict[str, Any]:
    """Identity, schema, history head, and job counts by state. A caller limited to some tenants gets the counts
    of its tenants only: its jobs and their history entries, and no site head (`history_head` None).
    `history_count=False` (the metrics door) skips counting a limited caller's history entries."""
    with ledger.snapshot() as read:
        counts = {row["state"]: row["jobs"] for row in read.rows("state_counts", tenants=_tenant_list(tenants))}
        if tenants is None:
            history_entries, history_head = _recorded_head(read, "history")
        else:
            history_head = None
            history_entries = (read.fetch("history_count_for_tenants", tenants=_tenant_list(tenants))[0][0]
                               if history_count else None)
        created_at = read.fetch("meta_get", key="created_at")[0][0]
    return {
        "ledger": str(ledger.path),
        "site_id": ledger.site_id,
        "schema_version": ledger.schema_version,
        "created_at": created_at,
        "jobs": counts,
        "history_entries": history_entries,
        "history_head": history_head,
    }


PROGRESS_EVERY = 10_000  # chain entries between two progress reports
VERIFY_CHUNK = 10_000  # chain entries (by seq) read and checked per snapshot


@operation("ledger.verify")
def verify(ledger: Ledger, *, progress: Callable[[int, int], None] | None = None,
           tenants: Collection[str] | None = None, actor: str = "cli") -> dict[str, Any]:
    """Schema version, both hash chains against the heads recorded at commit, the audit log against history
    (every audited job action has its transition), and state tables against history. Raises VerificationFailed.
    `progress(done, total)` hears how many chain entries (history, then audit log) have been checked.

    Verify runs beside the writer: it reads in snapshots of its own, never one for its whole run (an open read
    transaction stops DuckDB's checkpoints). Each chain is checked up to the head recorded when verify began, in
    chunks of VERIFY_CHUNK entries with the chain's state carried from one to the next; entries committed since
    are left to the next verify, and any entry past the head recorded at the end is refused. The cross-table
    checks are each one statement in a snapshot of its own.

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

    with ledger.snapshot() as read:
        version = read.fetch("schema_version")[0][0]
        if version != sql.latest_version():
            raise VerificationFailed(f"schema version {version} != expected {sql.latest_version()}")
        history_head = _recorded_head(read, "history")
        audit_head = _recorded_head(read, "audit")
    total = history_head[0] + audit_head[0]

    def reporting(start: int) -> Callable[[int], None] | None:
        """Report every PROGRESS_EVERY entries of one chain (whose entries follow `start` others)."""
        if progress is None:
            return None
        reported = [0]

        def heard(entries: int) -> None:
            for mark in range(reported[0] + PROGRESS_EVERY, entries + 1, PROGRESS_EVERY):
                progress(min(start + mark, total), total)
                reported[0] = mark

        return heard

    chain = chain_in_chunks(ledger, HISTORY, history_head, tenants=tenants, progress=reporting(0))
    audit_chain = chain_in_chunks(ledger, AUDIT, audit_head, tenants=tenants, progress=reporting(chain.entries))
    sites = {ledger.site_id: {"mirror": False, "history_entries": chain.counted, "audit_entries": audit_chain.counted}}
    sites.update(_verify_mirrors(ledger, tenants))
    if progress is not None:
        progress(total, total)
    with ledger.snapshot() as read:
        _check_audited_transitions(read)
        _check_handoff_links(read)
    _check_states(ledger, tenants)
    with ledger.snapshot() as read:
        jobs = sum(row["jobs"] for row in read.rows("state_counts", tenants=_tenant_list(tenants)))
    return {"ok": True, "schema_version": version, "history_entries": chain.counted,
            "audit_entries": audit_chain.counted, "jobs": jobs, "sites": sites,
            "counts_of": "site" if tenants is None else _tenant_list(tenants),
            "checked_at": clock.iso(clock.now())}


def _verify_mirrors(ledger: Ledger, tenants: Collection[str] | None) -> dict[str, dict[str, Any]]:
    """Each mirrored site's history and audit chains (the other sites' chains this site imported), recomputed and
    matched against the heads their imports recorded (mirror_chain_heads; hashes-only entries taken as links).
    history.Broken names the site."""
    with ledger.snapshot() as read:
        heads: dict[str, dict[str, tuple[int, str]]] = {}
        for site, chain, seq, entry_hash in read.fetch("mirror_chain_heads_all"):
            heads.setdefault(site, {})[chain] = (int(seq), entry_hash)
        for row in read.fetch("bundle_import_floors"):  # an imported site whose heads were removed: checked too
            heads.setdefault(row[0], {})
    found: dict[str, dict[str, Any]] = {}
    for site in sorted(heads):
        report: dict[str, Any] = {"mirror": True}
        for chain in (MIRROR_HISTORY, MIRROR_AUDIT):
            # No recorded head: nothing of that chain may be held (an audit log mirrored before migration 0014).
            head = heads[site].get(chain.name, (0, history.GENESIS))
            try:
                checked = chain_in_chunks(ledger, chain, head, tenants=tenants, site=site)
            except history.Broken as broken:
                raise history.Broken(f"site {site}: {broken}", tenant=broken.tenant,
                                     redacted=f"site {site}: {broken.redacted}") from None
            prefix = "history" if chain is MIRROR_HISTORY else "audit"
            report[f"{prefix}_entries"] = checked.counted
            report[f"{prefix}_hash_only"] = checked.hash_only
            if tenants is None:
                report[f"{prefix}_head"] = list(head) if chain.name in heads[site] else None
        found[site] = report
    return found


@dataclass(frozen=True)
class Chain:
    """One hash chain as `chain_in_chunks` reads it: its name in chain_heads (or mirror_chain_heads), its queries,
    and its checks."""

    name: str
    chunk_query: str
    past_query: str
    check: Callable[..., history.ChainCheck]
    check_head: Callable[[history.ChainCheck, tuple[int, str]], None]
    check_past: Callable[[int, tuple[int, str]], None]


HISTORY = Chain("history", "history_chunk", "history_past", history.verify_chain, history.check_head,
                history.check_past)
AUDIT = Chain("audit", "audit_chunk", "audit_past", audit.verify_chain, audit.check_head, audit.check_past)
# Another site's chains as mirrored here (chain_in_chunks with site=...): a --tenant bundle's hashes-only entries
# are links.
MIRROR_HISTORY = Chain("history", "mirror_history_chunk", "mirror_history_past",
                       functools.partial(history.verify_chain, hash_only=True), history.check_head,
                       history.check_past)
MIRROR_AUDIT = Chain("audit", "mirror_audit_chunk", "mirror_audit_past",
                     functools.partial(audit.verify_chain, hash_only=True), audit.check_head, audit.check_past)


def chain_in_chunks(ledger: Ledger, chain: Chain, head: tuple[int, str], *, tenants: Collection[str] | None,
                    progress: Callable[[int], None] | None = None, site: str | None = None) -> history.ChainCheck:
    """Check `chain` up to `head` (the head recorded when the check began) in chunks of VERIFY_CHUNK seqs, each
    read in a snapshot of its own, carrying the chain's state (entries seen, last hash, entries counted) from one
    chunk to the next; then, in one last snapshot, that nothing follows the head recorded by then. A chunk takes
    every row in its range of seqs (the first chunk from the very start), so a repeated, missing or stray seq is
    found as it is by one pass over the whole chain. `progress(entries)` hears the entries checked so far. `site`:
    the chain is that site's mirror (its queries take source_site; its head is in mirror_chain_heads)."""
    checked = history.ChainCheck(0, history.GENESIS, 0)
    after: int | None = None
    where = {} if site is None else {"source_site": site}
    while True:
        upto = min(head[0], (after or 0) + VERIFY_CHUNK)
        with ledger.snapshot() as read:
            rows = read.fetch(chain.chunk_query, after_seq=after, upto_seq=upto, **where)
        checked = chain.check(rows, tenants=tenants, start=checked)
        if progress is not None:
            progress(checked.entries)
        after = upto
        if upto >= head[0]:
            break
    chain.check_head(checked, head)
    with ledger.snapshot() as read:
        if site is None:
            now = _recorded_head(read, chain.name)
        else:
            recorded = read.fetch("mirror_chain_head", source_site=site, chain=chain.name)
            now = (int(recorded[0][0]), recorded[0][1]) if recorded else head
        past = read.fetch(chain.past_query, seq=now[0], **where)[0][0]
    if past is not None:
        chain.check_past(past, now)
    return checked


def _recorded_head(read: Snapshot, chain: str) -> tuple[int, str]:
    rows = read.fetch("chain_head", chain=chain)
    if len(rows) != 1:
        raise VerificationFailed(f"the ledger records {len(rows)} heads for its {chain} chain instead of one; "
                                 "the chain_heads table was altered")
    return int(rows[0][0]), rows[0][1]


def _check_audited_transitions(read: Snapshot) -> None:
    """Every job action the audit log records has its transition in history."""
    missing = read.rows("verify_audited_transitions")
    if missing:
        first = missing[0]
        kind = "cancel" if first["action"] == "job.cancel" else "replay"
        raise history.Broken(
            f"audit entry {first['seq']} records {first['action']} of job {first['job_id']} but history has no "
            f"{kind} transition for {first['job_id']}", tenant=first["tenant"],
            redacted=f"audit entry {first['seq']} records a job action outside your tenants that history lacks")


def _check_handoff_links(read: Snapshot) -> None:
    """Every job handed over to this site continues its source's chain: its `job.received` entry names an entry
    the mirror of that source holds with that hash."""
    broken = read.rows("verify_handoff_links")
    if broken:
        first = broken[0]
        raise history.Broken(
            f"history entry {first['seq']} (job {first['job_id']}): its hand-off names a source entry "
            f"({first['reason'][:120]}) that the mirror of that site does not hold with that hash; the hand-off no "
            "longer continues the source's chain", tenant=first["tenant"],
            redacted=f"history entry {first['seq']} (outside your tenants): its hand-off names a source entry the "
                     "mirror does not hold")


def _check_states(ledger: Ledger, tenants: Collection[str] | None) -> None:
    """Each job's state, attempt and payload digest against its last history entry; payloads against digests.
    Two statements, each in a snapshot of its own (each is consistent in itself)."""
    with ledger.snapshot() as read:
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
    with ledger.snapshot() as read:
        bad_payloads = read.rows("verify_payload_digests")
    if bad_payloads:
        raise history.Broken(f"job {bad_payloads[0]['job_id']}: payload does not match its digest",
                             tenant=bad_payloads[0]["tenant"],
                             redacted="a job outside your tenants: payload does not match its digest")


@operation("ledger.events")
def event_log(ledger: Ledger, *, after_seq: int = 0, limit: int = 1000, cursor: str | None = None,
              tenants: Collection[str] | None = None, actor: str = "cli") -> dict[str, Any]:
    """One page of history entries after `after_seq` (or after where `cursor` says) as orch.event.v1 envelopes,
    of the caller's tenants only: at most `limit`, and at most validation.MAX_PAGE_ROWS; `next_cursor` continues
    after it (None: nothing follows yet). One snapshot per page."""
    after_seq = int(validation.number_in(after_seq, 0, 2**62, "after_seq"))
    wanted = min(validation.list_limit(limit), validation.MAX_PAGE_ROWS)
    if cursor is not None:
        if after_seq:
            raise InvalidInput("give cursor or after_seq, not both; cursor continues where the previous page ended")
        (after_seq,) = validation.cursor(cursor, "events", (int,))
    with ledger.snapshot() as read:
        entries = read.rows("history_page", after_seq=after_seq, limit=wanted + 1, tenants=_tenant_list(tenants))
    more = len(entries) > wanted
    entries = entries[:wanted]
    last_seq = entries[-1]["seq"] if entries else after_seq
    return {"events": [events.envelope(history.parse(row["seq"], row["entry"], row["entry_hash"]))
                       for row in entries], "last_seq": last_seq,
            "next_cursor": validation.page_cursor("events", [last_seq]) if more else None}
