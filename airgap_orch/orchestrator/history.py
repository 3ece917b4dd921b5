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
from json.encoder import encode_basestring  # what _encode() uses for a str
from typing import Any

from .. import clock
from ..errors import VerificationFailed
from ..ledger import Transaction

GENESIS = "0" * 64
ENTRY_FIELDS = (
    "seq", "job_id", "event_type", "from_state", "to_state", "attempt", "lease_id", "worker_id", "actor",
    "reason", "tenant", "project", "job_type", "correlation_id", "payload_digest", "artifacts", "occurred_at",
)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# The entry text, field by field: exactly what _encode() of the entry dict in ENTRY_FIELDS order gives, at a
# fraction of its cost (values repeated across a batch, e.g. tenant or actor, are encoded once per append).
_ENTRY_TEMPLATE = "{" + ",".join(f'"{field}":%s' for field in ENTRY_FIELDS) + "}"


def chain(prev_hash: str, entry_text: str) -> str:
    return hashlib.sha256(f"{prev_hash}{entry_text}".encode()).hexdigest()


def event_id(entry_hash: str) -> str:
    """A UUID-shaped id (version 8, RFC 9562 custom) taken from the entry hash."""
    h = entry_hash
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:32]}"


class _Encoded(dict):
    """JSON text of scalar values, computed once each (one instance per append call and kind of value:
    keys compare by ==, so ints and bools must not share one)."""

    def __missing__(self, value: Any) -> str:
        text = self[value] = _encode(value)
        return text


def _unique(value: Any) -> str:
    """JSON text of a value that rarely repeats (job_id, lease_id, payload_digest): not worth caching."""
    if value is None:
        return "null"
    return encode_basestring(value) if value.__class__ is str else _encode(value)


def _text(seq: int, entry: dict[str, Any], encoded: _Encoded, attempts: _Encoded, occurred_at: str) -> str:
    unique = _unique
    artifacts = entry["artifacts"]
    return _ENTRY_TEMPLATE % (
        seq, unique(entry["job_id"]), encoded[entry["event_type"]], encoded[entry["from_state"]],
        encoded[entry["to_state"]], attempts[entry["attempt"]], unique(entry["lease_id"]),
        encoded[entry["worker_id"]], encoded[entry["actor"]], encoded[entry["reason"]], encoded[entry["tenant"]],
        encoded[entry["project"]], encoded[entry["job_type"]], encoded[entry["correlation_id"]],
        unique(entry["payload_digest"]), "[]" if artifacts == [] else _encode(artifacts), occurred_at,
    )


def append(tx: Transaction, entries: Iterable[dict[str, Any]]) -> int:
    """Chain entries (dicts with ENTRY_FIELDS except seq; occurred_at a datetime) onto the transaction's
    history; the ledger writes them, with every other entry of the transaction, just before it commits."""
    seq, prev = tx.head_seq, tx.head_hash
    rows = []
    encoded, attempts = _Encoded(), _Encoded()  # texts and None; attempt numbers
    moment, occurred_at = None, ""
    for entry in entries:
        seq += 1
        if entry["occurred_at"] is not moment:  # a batch shares one time: render it once
            moment = entry["occurred_at"]
            occurred_at = _encode(clock.iso(moment))
        text = _text(seq, entry, encoded, attempts, occurred_at)
        prev = chain(prev, text)
        rows.append((seq, entry["job_id"], text, prev))
    tx.head_seq, tx.head_hash = seq, prev
    tx.appended.extend(rows)
    return len(rows)


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
