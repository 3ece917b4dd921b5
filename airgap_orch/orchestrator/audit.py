"""The audit log: one append-only, hash-chained entry per operator action, with actor, time, reason
and ticket. Same chaining as history (history.chain), kept apart because it records who asked for what,
not what a job did. A refused operator action records nothing unless its caller asks for it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from .. import clock
from ..ledger import Transaction
from . import history
from .history import GENESIS, chain

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=False).encode


def append(tx: Transaction, action: str, *, actor: str, reason: str | None, ticket: str | None = None,
           target: str | None = None, details: dict[str, Any] | None = None) -> int:
    """Record one operator action inside the caller's transaction; returns its seq."""
    # Continue from the head recorded at commit (migration 0008), not the last row: entries removed from the
    # log's end stay a visible gap.
    head = next(iter(tx.fetch("chain_head", chain="audit")), None)
    seq, prev = (int(head[0]), head[1]) if head else (0, GENESIS)
    seq += 1
    text = _encode({"seq": seq, "action": action, "actor": actor, "at": clock.iso(clock.now()),
                    "reason": reason, "ticket": ticket, "target": target, "details": details or {}})
    entry_hash = chain(prev, text)
    tx.execute("audit_append", seq=seq, action=action, entry=text, entry_hash=entry_hash)
    tx.execute("chain_head_record", chain="audit", seq=seq, entry_hash=entry_hash)
    return seq


def parse(seq: int, text: str, entry_hash: str) -> dict[str, Any]:
    entry = json.loads(text)
    entry["entry_hash"] = entry_hash
    return entry


def entry_tenant(entry: dict[str, Any]) -> str | None:
    """The tenant an audit entry is about (details.tenant), or None (a site-wide action, e.g. a rate limit on a
    declared key)."""
    details = entry.get("details")
    return details.get("tenant") if isinstance(details, dict) else None


def verify_chain(rows: Iterable[tuple[int, str, str, str]], *, tenants: Collection[str] | None = None,
                 start: history.ChainCheck | None = None, hash_only: bool = False) -> history.ChainCheck:
    """Recompute the chain over (seq, action, entry, entry_hash) rows, counting the entries about `tenants`
    (all when None), going on from `start`, hashes-only entries allowed with `hash_only` (history.verify_chain);
    history.Broken names the first bad entry."""
    return history.verify_chain(rows, what="audit", key="action", label="{}", whole="audit log",
                                tenant_of=entry_tenant, tenants=tenants, start=start, hash_only=hash_only)


def check_head(check: history.ChainCheck, recorded: tuple[int, str]) -> None:
    """history.Broken unless the log ends at the head recorded at commit time."""
    history.check_head(check, recorded, whole="audit log")


def check_past(last_seq: int, recorded: tuple[int, str]) -> None:
    """history.Broken: the log goes on past the head recorded at commit time."""
    history.check_past(last_seq, recorded, whole="audit log")
