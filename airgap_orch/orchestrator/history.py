"""The hash-chained, append-only history: one entry per state change.

Each entry is stored as canonical JSON (keys in ENTRY_FIELDS order, compact separators): exactly the
text that is hashed, so verification needs no re-encoding:

    entry_hash = sha256(prev_entry_hash || entry)      (the first entry's prev is 64 zeros)

event_id is derived from entry_hash, so it is stable and needs no randomness.
"""

from __future__ import annotations

import hashlib
import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring  # what _encode() uses for a str
from typing import Any

from .. import clock
from ..errors import VerificationFailed
from ..ledger import Transaction

GENESIS = "0" * 64
_HASH = re.compile("[0-9a-f]{64}")
ENTRY_FIELDS = (
    "seq", "job_id", "event_type", "from_state", "to_state", "attempt", "lease_id", "worker_id", "actor",
    "reason", "tenant", "project", "job_type", "correlation_id", "payload_digest", "artifacts", "occurred_at",
)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# json.loads's own value scanner (the C one), called without json.loads's wrapping: see _parse.
_scan = json.scanner.make_scanner(json.decoder.JSONDecoder())
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
    queue_of = tx.queue_of
    for entry in entries:
        seq += 1
        if entry["occurred_at"] is not moment:  # a batch shares one time: render it once
            moment = entry["occurred_at"]
            occurred_at = _encode(clock.iso(moment))
        text = _text(seq, entry, encoded, attempts, occurred_at)
        prev = chain(prev, text)
        rows.append((seq, entry["job_id"], text, prev))
        queue = entry.get("queue")  # not part of the entry text: the metrics' queue label (Ledger.commit_observers)
        if queue is not None:
            queue_of[entry["job_id"]] = queue
    tx.head_seq, tx.head_hash = seq, prev
    tx.appended.extend(rows)
    return len(rows)


def parse(seq: int, entry_text: str, entry_hash: str) -> dict[str, Any]:
    """A stored entry as a dict, with its event_id and hash."""
    entry = json.loads(entry_text)
    entry["event_id"] = event_id(entry_hash)
    entry["entry_hash"] = entry_hash
    return entry


def _parse(text: Any) -> Any:
    """json.loads(text), or None when it is not valid JSON: the same verdict and value, faster for the usual text.

    json.loads(s) is the decoder's scanner run from the first non-whitespace character, then a refusal of anything
    but whitespace after the value. Text that starts with a value and ends with it (what an entry is) gets exactly
    that from the scanner run at 0; any other text (leading or trailing whitespace, a BOM, extra data, an error, not
    a str) goes to json.loads itself for its verdict."""
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError, TypeError):
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


class Broken(VerificationFailed):
    """A verification failure, with what a caller limited to other tenants may be told: `tenant` is whose record
    is at fault (None: no one tenant's), `redacted` the message without that record's details or site totals.
    Seq numbers stay in both: every event a caller sees carries its global seq already."""

    def __init__(self, message: str, *, tenant: str | None = None, redacted: str | None = None):
        super().__init__(message)
        self.tenant = tenant
        self.redacted = message if redacted is None else redacted

    def told_to(self, tenants: Collection[str] | None) -> VerificationFailed:
        """The plain VerificationFailed for a caller limited to `tenants` (None: the whole site)."""
        if tenants is None or (self.tenant is not None and self.tenant in tenants):
            return VerificationFailed(str(self))
        return VerificationFailed(self.redacted)


@dataclass(frozen=True)
class ChainCheck:
    """What verify_chain found: the number of entries, the hash of the last one (GENESIS when empty), and how
    many of them belong to the tenants it was asked to count (all of them when asked for none)."""

    entries: int
    head_hash: str
    counted: int
    hash_only: int = 0  # entries carried as hashes only (another tenant's, in a --tenant bundle or its mirror)


def _entry_tenant(entry: dict[str, Any]) -> str | None:
    return entry.get("tenant")


def verify_chain(rows: Iterable[tuple[int, str, str, str]], *, what: str = "history", key: str = "job_id",
                 label: str = "job {}", whole: str = "history",
                 tenant_of: Callable[[dict[str, Any]], str | None] = _entry_tenant,
                 tenants: Collection[str] | None = None, start: ChainCheck | None = None,
                 hash_only: bool = False) -> ChainCheck:
    """Recompute a hash chain over (seq, key column, entry, entry_hash) rows in seq order: the history
    (key job_id) or the audit log (key action). Counts the entries whose `tenant_of(entry)` is one of
    `tenants` (every entry when None). Raises Broken naming the first bad entry. `start`: what the check of the
    chain's earlier rows found, to go on from there (a chain checked in chunks). `hash_only`: the chain may hold
    entries carried as hashes only (entry None: another tenant's, in a --tenant bundle or its mirror); such an
    entry's stored hash is taken as the link, and the next entry's hash, computed over it, binds it."""
    prev, count, counted = (GENESIS, 0, 0) if start is None else (start.head_hash, start.entries, start.counted)
    hidden = 0 if start is None else start.hash_only
    # The loop runs once per entry (2M for an import of 1M jobs): names bound locally, the owner looked up only
    # when it is needed (tenants to count, or a broken entry to name).
    sha256, parse = hashlib.sha256, _parse
    for seq, key_value, text, stored_hash in rows:
        count += 1
        if seq != count:
            raise Broken(f"{what} entry {count}: found seq {seq}; entries are missing or reordered")
        if text is None:
            if not hash_only:
                raise Broken(f"{what} entry {seq}: has no content; only a --tenant bundle carries entries as hashes")
            if key_value is not None or not _HASH.fullmatch(stored_hash or ""):
                raise Broken(f"{what} entry {seq} (hashes only): it must carry a 64-hex-digit hash and nothing else")
            prev = stored_hash
            hidden += 1
            continue
        expected = sha256(f"{prev}{text}".encode()).hexdigest()  # chain(prev, text)
        inner = parse(text)  # json.loads(text), None when not valid JSON
        if stored_hash != expected:
            owner = tenant_of(inner) if isinstance(inner, dict) else None
            problem = f"hash does not match its content or its predecessor; the {whole} was altered"
            raise Broken(f"{what} entry {seq} ({label.format(key_value)}): {problem}", tenant=owner,
                         redacted=f"{what} entry {seq} (outside your tenants): {problem}")
        if inner is None:
            raise Broken(f"{what} entry {seq}: not valid JSON")
        if inner.get("seq") != seq or inner.get(key) != key_value:
            raise Broken(f"{what} entry {seq}: its columns disagree with its content")
        if tenants is None or (tenant_of(inner) if isinstance(inner, dict) else None) in tenants:
            counted += 1
        prev = expected
    return ChainCheck(count, prev, counted, hidden)


def check_head(check: ChainCheck, recorded: tuple[int, str], *, whole: str = "history") -> None:
    """Refuse a chain that does not end at the head recorded at commit time (entries removed from its end,
    added behind the ledger's back, or the last one replaced). The redacted form leaves out the recorded seq:
    it is the site's total."""
    seq, entry_hash = recorded
    if check.entries < seq:
        raise Broken(f"{whole} ends at seq {check.entries} but the recorded head is seq {seq}; entries were "
                     "removed from its end",
                     redacted=f"{whole} ends at seq {check.entries} but the recorded head is later; entries were "
                              "removed from its end")
    if check.entries > seq:
        raise Broken(f"{whole} goes on to seq {check.entries} past the recorded head (seq {seq}); entries were "
                     "added behind the ledger's back",
                     redacted=f"{whole} goes on to seq {check.entries} past the recorded head; entries were "
                              "added behind the ledger's back")
    if check.head_hash != entry_hash:
        raise Broken(f"{whole} entry {seq} is not the head recorded at commit time; the {whole} was rewritten")


def check_past(last_seq: int, recorded: tuple[int, str], *, whole: str = "history") -> None:
    """Refuse entries past the head recorded at commit time (`last_seq`: the last of them), read with that head in
    one snapshot: entries added behind the ledger's back."""
    raise Broken(f"{whole} goes on to seq {last_seq} past the recorded head (seq {recorded[0]}); entries were "
                 "added behind the ledger's back",
                 redacted=f"{whole} goes on to seq {last_seq} past the recorded head; entries were added behind the "
                          "ledger's back")
