"""The audit log: one append-only, hash-chained entry per operator action, with actor, time, reason
and ticket. Same chaining as history (history.chain), kept apart because it records who asked for what,
not what a job did. A refused operator action records nothing unless its caller asks for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .. import clock
from ..ledger import Transaction
from . import history
from .history import GENESIS, chain

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=False).encode


def append(tx: Transaction, action: str, *, actor: str, reason: str | None, ticket: str | None = None,
           target: str | None = None, details: dict[str, Any] | None = None) -> int:
    """Record one operator action inside the caller's transaction; returns its seq."""
    head = next(iter(tx.fetch("audit_head")), None)
    seq, prev = (int(head[0]), head[1]) if head else (0, GENESIS)
    seq += 1
    text = _encode({"seq": seq, "action": action, "actor": actor, "at": clock.iso(clock.now()),
                    "reason": reason, "ticket": ticket, "target": target, "details": details or {}})
    tx.execute("audit_append", seq=seq, action=action, entry=text, entry_hash=chain(prev, text))
    return seq


def parse(seq: int, text: str, entry_hash: str) -> dict[str, Any]:
    entry = json.loads(text)
    entry["entry_hash"] = entry_hash
    return entry


def verify_chain(rows: Iterable[tuple[int, str, str, str]]) -> int:
    """Recompute the chain over (seq, action, entry, entry_hash) rows; VerificationFailed names the first
    bad entry."""
    return history.verify_chain(rows, what="audit", key="action", label="{}", whole="audit log")
