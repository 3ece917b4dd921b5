"""Audit log operations: list and verify (orchestrator/audit.py keeps the chain)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import clock, validation
from ..errors import InvalidInput
from ..ledger import Ledger
from ..orchestrator import audit

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
    """Recompute the audit chain; VerificationFailed (exit 4) names the first bad entry."""
    read = ledger.read()
    entries = audit.verify_chain(read.scan("audit_scan"))
    head = read.rows("audit_head")
    return {"ok": True, "audit_entries": entries, "audit_head": head[0]["entry_hash"] if head else None,
            "checked_at": clock.iso(clock.now())}
