"""Audit log operations: list and verify (orchestrator/audit.py keeps the chain)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import clock, validation
from ..errors import InvalidInput, VerificationFailed
from ..ledger import Ledger
from ..orchestrator import audit, history
from .registry import operation

MAX_LIST = 100_000
MAX_FILTER_CHARS = 256  # an action or actor named in a filter (actions are short; actors are token:<subject>)


def _whole(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number between {low} and {high}")
    return int(validation.number_in(value, low, high, what))


@operation("audit.list")
def list_entries(ledger: Ledger, *, since: str | None = None, limit: int = 1000, after_seq: int = 0,
                 cursor: str | None = None, action: str | None = None, by: str | None = None,
                 actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """One page of audit entries in order (oldest first), from `since` (ISO 8601) and after `after_seq` (or after
    where `cursor` says): at most `limit`, and at most validation.MAX_PAGE_ROWS; `next_cursor` continues after it
    (None: nothing follows yet). `action` keeps the entries of that action (e.g. quota.set), `by` those of that
    actor (e.g. token:alice; `actor` is the caller's own name): the filter runs in the ledger, so a page holds up to
    `limit` matching entries however many others lie between them. A caller limited to some tenants sees the
    entries whose details name one of them. One snapshot per page."""
    wanted = min(_whole(limit, 1, MAX_LIST, "limit"), validation.MAX_PAGE_ROWS)
    action = validation.text(action, MAX_FILTER_CHARS, "action")
    by = validation.text(by, MAX_FILTER_CHARS, "by (the actor)")
    after_seq = _whole(after_seq, 0, 2**62, "after_seq")
    if cursor is not None:
        if after_seq:
            raise InvalidInput("give cursor or after_seq, not both; cursor continues where the previous page ended")
        (after_seq,) = validation.cursor(cursor, "audit", (int,))
    since_text = clock.iso(validation.timestamp(since, "--since")) if since is not None else None
    with ledger.snapshot() as read:
        if tenants is None:
            rows = read.rows("audit_page", after_seq=after_seq, since=since_text, action=action, by=by,
                             limit=wanted + 1)
        else:  # a token sees the actions on its tenants only (entries that name no tenant stay hidden)
            rows = read.rows("audit_page_for_tenants", after_seq=after_seq, since=since_text, action=action, by=by,
                             limit=wanted + 1, tenants=sorted(tenants))
    more = len(rows) > wanted
    entries = [audit.parse(row["seq"], row["entry"], row["entry_hash"]) for row in rows[:wanted]]
    last_seq = entries[-1]["seq"] if entries else after_seq
    return {"entries": entries, "last_seq": last_seq,
            "next_cursor": validation.page_cursor("audit", [last_seq]) if more else None}


@operation("audit.verify")
def verify(ledger: Ledger, *, actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Recompute the audit chain and check it ends at the head recorded at commit; VerificationFailed (exit 4)
    names the first bad entry. The whole log is checked for every caller; one limited to some tenants is told
    how many entries are about its tenants, not the site's head, and no details of another tenant's entry.
    Checked beside the writer, in chunks (operations.ledger.chain_in_chunks)."""
    from .ledger import AUDIT, chain_in_chunks

    with ledger.snapshot() as read:
        recorded = read.fetch("chain_head", chain="audit")
    try:
        if len(recorded) != 1:
            raise VerificationFailed(f"the ledger records {len(recorded)} heads for its audit log instead of one; "
                                     "the chain_heads table was altered")
        checked = chain_in_chunks(ledger, AUDIT, (int(recorded[0][0]), recorded[0][1]), tenants=tenants)
    except history.Broken as broken:
        raise broken.told_to(tenants) from None
    return {"ok": True, "audit_entries": checked.counted,
            "audit_head": checked.head_hash if tenants is None and checked.entries else None,
            "checked_at": clock.iso(clock.now())}
