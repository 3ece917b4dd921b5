"""The request log: what a retried request needs to get its original answer back.

The writer logs each mutating request that carried an Idempotency-Key, in the transaction that applies it, under
`subject operation key`: the operation, a fingerprint of what was asked (a key reused for another request is a
conflict, not a replay) and a replay recipe, the least that rebuilds the answer from the ledger:

- jobs.claim: the (job id, lease id, attempt) of each lease it granted, and the lease expiry and heartbeat hint the
  claim gave them all. Each lease is rebuilt from its job row (payload, type, keys ...) with those ids: the same
  leases the claim answered, even if they have ended since (a report under an ended lease is refused as usual).
- worker reports (heartbeat, ack, fail, release, ack_many): the job id and lease id of each item. An ack, fail
  or release answers from the history entry that ended that lease (the last one naming it); a fail adds the
  run_at it gave, a heartbeat its state, lease expiry and cancel flag (no history entry holds them); an item
  of jobs.ack_many that was refused keeps its error.
- every other operation (enqueue, cancel, quota set ...): its answer, zlib-compressed when over PACK_FROM bytes
  (an enqueue_batch of 100,000 jobs answers 3.9 MB of job ids, ~1.5 MB packed). A recipe over MAX_RECIPE_BYTES is
  not logged: a retry of that request runs again.

Bounded (Limits): rows older than `keep_days` go, and beyond the newest `max_rows` rows or the newest
`max_bytes` of stored text, the oldest go first. The writer prunes after every max_rows/50 rows or
max_bytes/50 bytes it logs (so the table overshoots by at most that), at its first batch and at least hourly.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..errors import Conflict, OrchError
from ..ledger import Transaction
from ..orchestrator import claims

PACK_FROM = 4_096  # recipes larger than this many bytes of JSON are stored zlib-compressed
MAX_RECIPE_BYTES = 4 * 1024 * 1024  # a recipe still larger once packed is not logged
PRUNE_FRACTION = 50  # prune after logging max_rows / PRUNE_FRACTION rows (or max_bytes / PRUNE_FRACTION bytes)
REPORT_KINDS = {"jobs.heartbeat": "heartbeat", "jobs.ack": "ack", "jobs.ack_many": "ack", "jobs.fail": "fail",
                "jobs.release": "release"}


@dataclass(frozen=True)
class Limits:
    keep_days: float = 7.0
    max_rows: int = 250_000
    max_bytes: int = 64 * 1024 * 1024  # request keys, fingerprints and recipes as stored


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Logged:
    """A request log row: the operation, what was asked (None: logged before fingerprints were kept; any
    request with the key matches) and the replay recipe."""

    operation: str
    fingerprint: str | None
    recipe: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """A row to log: `text` is the answer's JSON when the recipe holds the answer itself (the HTTP door sends it)."""

    request_key: str
    operation: str
    fingerprint: str
    recipe: bytes
    packed: bool
    text: str | None = None

    @property
    def size(self) -> int:
        return len(self.request_key.encode()) + len(self.fingerprint) + len(self.recipe)


def dumps(value: Any) -> str:
    """Compact JSON, as the HTTP door sends answers."""
    return json.dumps(value, separators=(",", ":"), default=str)


def row(request_key: str, operation: str, fingerprint: str, prepared: Any, answer: dict[str, Any]) -> Row | None:
    """The row that replays `answer` to request `operation` (prepared: its dispatch.prepare result, if any), or
    None when it is not logged: an empty claim (a long-poll repeats it under the same key until work arrives) or a
    recipe over MAX_RECIPE_BYTES."""
    text = None
    if operation == "jobs.claim":
        if not answer["leases"]:
            return None
        first = answer["leases"][0]
        recipe: dict[str, Any] = {
            "leases": [[lease["job_id"], lease["lease_id"], lease["attempt"]] for lease in answer["leases"]],
            "expires": first["lease_expires_at"], "heartbeat_every": first["retry_hint"]["heartbeat_every_seconds"]}
    elif operation in REPORT_KINDS:
        outcomes = answer["results"] if prepared.many else [answer]
        recipe = {"reports": [_report_item(prepared.kind, item, outcome)
                              for item, outcome in zip(prepared.items, outcomes, strict=True)]}
    else:
        text = dumps(answer)
        recipe = {"answer": answer}
    encoded = (dumps(recipe) if text is None else f'{{"answer":{text}}}').encode()
    packed = len(encoded) > PACK_FROM
    if packed:
        encoded = zlib.compress(encoded, 1)
    if len(encoded) > MAX_RECIPE_BYTES:
        return None
    return Row(request_key, operation, fingerprint, encoded, packed, text)


def _report_item(kind: str, item: dict[str, Any], outcome: dict[str, Any]) -> list[Any]:
    ids = [item["job_id"], item["lease_id"]]
    if "error" in outcome:  # an item of jobs.ack_many that was refused
        return [*ids, outcome["error"]]
    if kind == "heartbeat":
        return [*ids, outcome["state"], outcome["lease_expires_at"], outcome["cancel_requested"]]
    if kind == "fail":
        return [*ids, outcome["run_at"]]
    return ids


def write(tx: Transaction, rows: list[Row], now: datetime) -> None:
    # Only keys the lookup did not find, once each (the writer sees to it): the one writer needs no ON CONFLICT.
    if rows:
        tx.append("request_log", [(r.request_key, r.operation, r.fingerprint, r.recipe, r.packed, r.size, now)
                                  for r in rows])


def lookup(read: Transaction, keys: list[str]) -> dict[str, Logged]:
    found = {}
    for key, operation, fingerprint, recipe, packed in read.fetch("request_log_lookup", keys=keys):
        found[key] = Logged(operation, fingerprint, json.loads(zlib.decompress(recipe) if packed else recipe))
    return found


def rebuild(read: Transaction, logged: dict[str, Logged]) -> dict[str, dict[str, Any] | OrchError]:
    """The answer each logged request gave, rebuilt from its recipe and the ledger (by request key)."""
    claimed = [lease for entry in logged.values() if "leases" in entry.recipe for lease in entry.recipe["leases"]]
    reported = [item for entry in logged.values() if "reports" in entry.recipe for item in entry.recipe["reports"]
                if REPORT_KINDS[entry.operation] != "heartbeat" and not _refused(item)]
    jobs = {row["job_id"]: row for row in read.rows("jobs_any_by_ids", job_ids=sorted({j for j, _, _ in claimed}))
            } if claimed else {}
    endings = _lease_endings(read, reported) if reported else {}
    answers: dict[str, dict[str, Any] | OrchError] = {}
    for key, entry in logged.items():
        recipe = entry.recipe
        try:
            if "answer" in recipe:
                answers[key] = recipe["answer"]
            elif "leases" in recipe:
                answers[key] = {"leases": [
                    claims.lease_answer(jobs[job_id] | {"lease_id": lease_id, "attempts": attempt}, recipe["expires"],
                                        recipe["heartbeat_every"])
                    for job_id, lease_id, attempt in recipe["leases"] if job_id in jobs]}
            else:
                kind = REPORT_KINDS[entry.operation]
                outcomes = [_report_answer(kind, item, endings) for item in recipe["reports"]]
                answers[key] = {"results": outcomes} if entry.operation == "jobs.ack_many" else outcomes[0]
        except OrchError as error:
            answers[key] = error
    return answers


def _refused(item: list[Any]) -> bool:
    return len(item) == 3 and isinstance(item[2], dict)


def _lease_endings(read: Transaction, items: Iterable[list[Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last history entry naming each (job id, lease id): the one that ended the lease."""
    job_ids = sorted({item[0] for item in items})
    lease_ids = sorted({item[1] for item in items})
    endings = {}
    for job_id, entry in read.fetch("history_by_leases", job_ids=job_ids, lease_ids=lease_ids):
        parsed = json.loads(entry)
        endings[(job_id, parsed["lease_id"])] = parsed  # oldest first: the last one stays
    return endings


def _report_answer(kind: str, item: list[Any], endings: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    job_id, lease_id, *tail = item
    if tail and isinstance(tail[0], dict):
        return {"job_id": job_id, "error": tail[0]}
    if kind == "heartbeat":
        state, lease_expires_at, cancel_requested = tail
        return {"job_id": job_id, "state": state, "lease_expires_at": lease_expires_at,
                "cancel_requested": cancel_requested}
    ending = endings.get((job_id, lease_id))
    if ending is None:
        raise Conflict(f"the answer logged for this Idempotency-Key cannot be rebuilt: no history entry ends lease "
                       f"{lease_id} of job {job_id}; send the request with a new key")
    if kind == "ack":
        return {"job_id": job_id, "state": ending["to_state"], "attempt": ending["attempt"]}
    if kind == "fail":
        return {"job_id": job_id, "state": ending["to_state"], "attempt": ending["attempt"], "run_at": tail[0]}
    return {"job_id": job_id, "state": ending["to_state"]}


def prune(tx: Transaction, now: datetime, limits: Limits) -> None:
    """Drop rows older than keep_days, then the oldest beyond the newest max_rows rows and max_bytes bytes."""
    tx.execute("request_log_prune_older", before=now - timedelta(days=limits.keep_days))
    _prune_through(tx, tx.fetch("request_log_nth_newest", rows=limits.max_rows))
    ((stored,),) = tx.fetch("request_log_bytes")
    if stored is not None and stored > limits.max_bytes:  # rare: the cumulative sum reads every row
        _prune_through(tx, tx.fetch("request_log_bytes_cutoff", max_bytes=limits.max_bytes))


def _prune_through(tx: Transaction, cutoff: list[tuple]) -> None:
    """Delete the row `cutoff` names and every older one (in newest-first order: created_at, then request_key)."""
    if cutoff:
        created_at, request_key = cutoff[0]
        tx.execute("request_log_prune_through", created_at=created_at, request_key=request_key)
