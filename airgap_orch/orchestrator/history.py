"""The hash-chained, append-only history: one entry per state change.

entry_hash = sha256(prev_hash || 0x1e || canonical(entry)), where canonical() joins the fields in
CHAINED_FIELDS with 0x1f (None as 0x00). The first entry's prev_hash is 64 zeros. event_id is
derived from entry_hash, so it is stable and needs no randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pyarrow as pa

from ..errors import VerificationFailed
from ..ledger import Transaction

CHAINED_FIELDS = (
    "seq", "job_id", "event_type", "from_state", "to_state", "attempt", "lease_id", "worker_id", "actor",
    "reason", "tenant", "project", "job_type", "correlation_id", "payload_digest", "artifacts", "occurred_at",
)
_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("event_id", pa.string()), ("job_id", pa.string()), ("event_type", pa.string()),
    ("from_state", pa.string()), ("to_state", pa.string()), ("attempt", pa.int32()),
    ("lease_id", pa.string()), ("worker_id", pa.string()), ("actor", pa.string()), ("reason", pa.string()),
    ("tenant", pa.string()), ("project", pa.string()), ("job_type", pa.string()),
    ("correlation_id", pa.string()), ("payload_digest", pa.string()), ("artifacts", pa.string()),
    ("occurred_at", pa.timestamp("us")), ("prev_hash", pa.string()), ("entry_hash", pa.string()),
])


def _text(value: Any) -> str:
    if value is None:
        return "\x00"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    canonical = "\x1f".join([_text(entry[name]) for name in CHAINED_FIELDS])
    return hashlib.sha256(f"{prev_hash}\x1e{canonical}".encode()).hexdigest()


def event_id_from_hash(digest: str) -> str:
    # UUID layout with version 8 (custom, RFC 9562) so it validates as a UUID.
    return f"{digest[:8]}-{digest[8:12]}-8{digest[13:16]}-{'89ab'[int(digest[16], 16) % 4]}{digest[17:20]}-{digest[20:32]}"


def append(tx: Transaction, entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chain and insert entries (dicts with CHAINED_FIELDS except seq). Returns them completed."""
    seq, prev = tx.head_seq, tx.head_hash
    done = []
    for entry in entries:
        seq += 1
        entry["seq"] = seq
        entry["prev_hash"] = prev
        prev = entry["entry_hash"] = entry_hash(prev, entry)
        entry["event_id"] = event_id_from_hash(prev)
        done.append(entry)
    if not done:
        return done
    columns = {name: [entry[name] for entry in done] for name in _SCHEMA.names}
    tx.execute_with("history_append", "entries", pa.table(columns, schema=_SCHEMA))
    tx.head_seq, tx.head_hash = seq, prev
    return done


def verify_chain(rows: Iterable[tuple]) -> int:
    """Recompute the chain over history rows in seq order (verify_history_scan column order).

    Returns the number of entries; raises VerificationFailed naming the first bad entry."""
    prev = "0" * 64
    count = 0
    names = ("seq", "event_id", "job_id", "event_type", "from_state", "to_state", "attempt", "lease_id",
             "worker_id", "actor", "reason", "tenant", "project", "job_type", "correlation_id",
             "payload_digest", "artifacts", "occurred_at", "prev_hash", "entry_hash")
    for row in rows:
        entry = dict(zip(names, row, strict=True))
        count += 1
        if entry["seq"] != count:
            raise VerificationFailed(f"history entry {entry['seq']}: expected seq {count}; entries are missing")
        if entry["prev_hash"] != prev:
            raise VerificationFailed(f"history entry {count}: prev_hash does not match entry {count - 1}")
        expected = entry_hash(prev, entry)
        if entry["entry_hash"] != expected:
            raise VerificationFailed(f"history entry {count} (job {entry['job_id']}): content does not "
                                     "match its hash; the entry was altered")
        prev = expected
    return count
