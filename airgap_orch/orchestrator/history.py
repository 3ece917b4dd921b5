"""The hash-chained, append-only history: one entry per state change.

Each entry is stored as canonical JSON (keys in ENTRY_FIELDS order, compact separators): exactly the
text that is hashed, so verification needs no re-encoding:

    entry_hash = sha256(prev_entry_hash || entry)      (the first entry's prev is 64 zeros)

event_id is derived from entry_hash, so it is stable and needs no randomness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from .. import clock
from ..errors import VerificationFailed
from ..ledger import Transaction

GENESIS = "0" * 64
ENTRY_FIELDS = (
    "seq", "job_id", "event_type", "from_state", "to_state", "attempt", "lease_id", "worker_id", "actor",
    "reason", "tenant", "project", "job_type", "correlation_id", "payload_digest", "artifacts", "occurred_at",
)
_SCHEMA = pa.schema([("seq", pa.int64()), ("job_id", pa.string()), ("entry", pa.string()),
                     ("entry_hash", pa.string())])
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def chain(prev_hash: str, entry_text: str) -> str:
    return hashlib.sha256(f"{prev_hash}{entry_text}".encode()).hexdigest()


def event_id(entry_hash: str) -> str:
    """A UUID-shaped id (version 8, RFC 9562 custom) taken from the entry hash."""
    h = entry_hash
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:32]}"


def append(tx: Transaction, entries: Iterable[dict[str, Any]]) -> int:
    """Chain and insert entries (dicts with ENTRY_FIELDS except seq; occurred_at a datetime)."""
    seq, prev = tx.head_seq, tx.head_hash
    seqs, job_ids, texts, hashes = [], [], [], []
    for entry in entries:
        seq += 1
        text = _encode({
            "seq": seq, "job_id": entry["job_id"], "event_type": entry["event_type"],
            "from_state": entry["from_state"], "to_state": entry["to_state"], "attempt": entry["attempt"],
            "lease_id": entry["lease_id"], "worker_id": entry["worker_id"], "actor": entry["actor"],
            "reason": entry["reason"], "tenant": entry["tenant"], "project": entry["project"],
            "job_type": entry["job_type"], "correlation_id": entry["correlation_id"],
            "payload_digest": entry["payload_digest"], "artifacts": entry["artifacts"],
            "occurred_at": clock.iso(entry["occurred_at"]),
        })
        prev = chain(prev, text)
        seqs.append(seq)
        job_ids.append(entry["job_id"])
        texts.append(text)
        hashes.append(prev)
    if seqs:
        table = pa.table([seqs, job_ids, texts, hashes], schema=_SCHEMA)
        tx.execute_with("history_append", "entries", table)
        tx.head_seq, tx.head_hash = seq, prev
        tx.appended.extend(zip(seqs, job_ids, texts, hashes, strict=True))
    return len(seqs)


def parse(seq: int, entry_text: str, entry_hash: str) -> dict[str, Any]:
    """A stored entry as a dict, with its event_id and hash."""
    entry = json.loads(entry_text)
    entry["event_id"] = event_id(entry_hash)
    entry["entry_hash"] = entry_hash
    return entry


def verify_chain(rows: Iterable[tuple[int, str, str, str]], *, what: str = "history", key: str = "job_id",
                 label: str = "job {}", whole: str = "history") -> int:
    """Recompute a hash chain over (seq, key column, entry, entry_hash) rows in seq order: the history
    (key job_id) or the audit log (key action). Returns the number of entries; raises
    VerificationFailed naming the first bad entry."""
    prev = GENESIS
    count = 0
    for seq, key_value, text, stored_hash in rows:
        count += 1
        if seq != count:
            raise VerificationFailed(f"{what} entry {count}: found seq {seq}; entries are missing or reordered")
        expected = chain(prev, text)
        if stored_hash != expected:
            raise VerificationFailed(f"{what} entry {seq} ({label.format(key_value)}): hash does not match its "
                                     f"content or its predecessor; the {whole} was altered")
        try:
            inner = json.loads(text)
        except json.JSONDecodeError:
            raise VerificationFailed(f"{what} entry {seq}: not valid JSON") from None
        if inner.get("seq") != seq or inner.get(key) != key_value:
            raise VerificationFailed(f"{what} entry {seq}: its columns disagree with its content")
        prev = expected
    return count
