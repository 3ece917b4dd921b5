"""Audit log operations: list and verify (orchestrator/audit.py keeps the chain)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import clock, validation
from ..errors import InvalidInput, VerificationFailed
from ..ledger import Ledger
from ..orchestrator import audit, history

MAX_LIST = 100_000


def _whole(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number between {low} and {high}")
    return int(validation.number_in(value, low, high, what))


def list_entries(ledger: Ledger, *, since: str | None = None, limit: int = 1000, after_seq: int = 0,
                 actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Audit entries in order (oldest first), from `since` (ISO 8601) and after `after_seq`, at most `limit`;
    a caller limited to some tenants sees the entries whose details name one of them."""
    limit = _whole(limit, 1, MAX_LIST, "limit")
    after_seq = _whole(after_seq, 0, 2**62, "after_seq")
    since_text = clock.iso(validation.timestamp(since, "--since")) if since is not None else None
    if tenants is None:
        rows = ledger.read().rows("audit_page", after_seq=after_seq, since=since_text, limit=limit)
    else:  # a token sees the actions on its tenants only (entries that name no tenant stay hidden)
        rows = ledger.read().rows("audit_page_for_tenants", after_seq=after_seq, since=since_text, limit=limit,
                                  tenants=sorted(tenants))
    entries = [audit.parse(row["seq"], row["entry"], row["entry_hash"]) for row in rows]
    return {"entries": entries, "last_seq": entries[-1]["seq"] if entries else after_seq}


def verify(ledger: Ledger, *, actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Recompute the audit chain and check it ends at the head recorded at commit; VerificationFailed (exit 4)
    names the first bad entry. The whole log is checked for every caller; one limited to some tenants is told
    how many entries are about its tenants, not the site's head, and no details of another tenant's entry."""
    read = ledger.read()
    try:
        recorded = read.fetch("chain_head", chain="audit")
        if len(recorded) != 1:
            raise VerificationFailed(f"the ledger records {len(recorded)} heads for its audit log instead of one; "
                                     "the chain_heads table was altered")
        checked = audit.verify_chain(read.scan("audit_scan"), tenants=tenants)
        audit.check_head(checked, (int(recorded[0][0]), recorded[0][1]))
    except history.Broken as broken:
        raise broken.told_to(tenants) from None
    return {"ok": True, "audit_entries": checked.counted,
            "audit_head": checked.head_hash if tenants is None and checked.entries else None,
            "checked_at": clock.iso(clock.now())}
