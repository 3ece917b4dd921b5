"""The one writer path: a thread that owns the ledger's write connection and runs every operation that changes the
ledger the server (or the in-process worker runner) hands it. Operations that change nothing run beside it, on
snapshots (operations/readers.py): they never queue here behind claims and acks, nor hold them up.

Group commit: worker reports (heartbeat, ack, fail, release) and claims that arrive together are applied
in ONE transaction, so the server pays the ledger's per-statement and per-commit cost once per batch
instead of once per request. Other operations run one transaction each. A mutating request that carries
an Idempotency-Key has its answer stored in the same transaction (request_log); a retry gets that answer.

Isolation: one request's failure never becomes another's answer. DuckDB has no savepoints, so a shared
transaction that fails is rolled back whole and its requests are run again in halves, until the request that
fails stands alone (about 2·log2(n) transactions for one bad request among n, instead of n one at a time).
A shared lookup that fails (request_log_lookup) is repeated key by key, and anything else that escapes the
processing of a batch runs each unanswered request of it alone. A request is only ever run again when it has
no answer yet, and it has one as soon as its transaction commits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .. import api, clock
from ..errors import Conflict, InvalidInput, OrchError
from ..ledger import Ledger, Transaction
from ..orchestrator import jobs as core
from . import dispatch
from . import jobs as job_ops

GROUPED = {"jobs.heartbeat": "heartbeat", "jobs.ack": "ack", "jobs.fail": "fail", "jobs.release": "release"}
GROUPABLE = frozenset(GROUPED) | {"jobs.claim", "jobs.ack_many"}
REQUEST_LOG_DAYS = 7
MAX_SHARED_CLAIM = 2_000  # jobs one shared claim statement may lease for the claims it serves


class Answer(Future):
    """A request's future; `text` is the answer as compact JSON when the writer already encoded it (for the
    request log), so the HTTP door sends those bytes instead of encoding the answer a second time."""

    text: str | None = None


def dumps(value: Any) -> str:
    """The JSON text of an answer, as the HTTP door sends it and the request log stores it."""
    return json.dumps(value, separators=(",", ":"), default=str)


@dataclass
class Request:
    name: str
    params: dict[str, Any]
    caller: dispatch.Caller
    request_key: str | None = None  # subject + Idempotency-Key, for mutating requests
    future: Answer = field(default_factory=Answer)
    acks: list[dict[str, Any]] | OrchError | None = None  # jobs.ack_many: its validated items, or why not

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the request asked for: a key reused for a different request is refused, not replayed."""
        text = json.dumps([self.name, self.params], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Reports:
    """Report items of one kind gathered from a group's requests, with the request (and, for jobs.ack_many, the
    position in its list) each outcome goes back to."""

    owners: list[tuple[Request, int | None]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, request: Request, index: int | None, item: dict[str, Any]) -> None:
        self.owners.append((request, index))
        self.items.append(item)

    def answer(self, outcomes: list[dict[str, Any] | OrchError],
               answers: dict[int, dict[str, Any] | OrchError]) -> None:
        for (request, index), item, outcome in zip(self.owners, self.items, outcomes, strict=True):
            if index is None:
                answers[id(request)] = outcome
            else:
                answers[id(request)]["results"][index] = job_ops.outcome_dict(item, outcome)


class LedgerWriter:
    def __init__(self, ledger: Ledger, *, group_commit: bool = True, max_batch: int = 2_000):
        self.ledger = ledger
        self.group_commit = group_commit
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.batch_observers: list[Callable[[int], None]] = []  # metrics: size of each group commit
        self._last_prune = 0.0
        self._stopped = False
        self._accepting = threading.Lock()  # orders submit() against stop(): nothing queued after the end mark

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._accepting:
            self._stopped = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, name: str, params: dict[str, Any], caller: dispatch.Caller,
               request_key: str | None = None) -> Answer:
        route = api.BY_NAME.get(name)
        if route is not None and not route.mutating:
            raise ValueError(f"{name} changes nothing; run it on LedgerReaders, not on the writer")
        request = Request(name, params, caller, request_key)
        # Work that needs no ledger is done here, in the caller's thread (the event loop), not in the writer's.
        if request_key:
            _ = request.fingerprint
        if name == "jobs.ack_many":
            try:
                request.acks = _ack_many_items(request)
            except OrchError as error:
                request.acks = error
            except (TypeError, AttributeError) as error:
                request.acks = InvalidInput(f"acks: {error}")
        with self._accepting:
            if self._stopped:  # nothing would ever answer: refuse instead of leaving the caller waiting
                raise RuntimeError(f"the ledger writer has stopped; {name} was not run")
            self._queue.put(request)
        return request.future

    def call(self, name: str, params: dict[str, Any], caller: dispatch.Caller | None = None) -> Any:
        """Blocking form of submit (for threads that are not the event loop)."""
        return self.submit(name, params, caller or dispatch.Caller()).result()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            # A request whose caller gave up before it ran (its future canceled) is not run; the others can no
            # longer be canceled, so setting their answer cannot fail.
            batch = [request for request in batch if request.future.set_running_or_notify_cancel()]
            try:
                self._isolated(batch)
            except BaseException as exc:  # never let the writer die with requests waiting
                for request in batch:
                    _fail(request, exc)
            if stop:
                return

    def _isolated(self, batch: list[Request]) -> None:
        """Process a batch; should anything escape, run each request still unanswered alone (in order, so a request
        chained to an earlier one with the same key gets its answer from it), so the error reaches only the request
        that raises it."""
        try:
            self._process(batch)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            for request in batch:
                if not request.future.done():
                    self._isolated([request])

    def _process(self, batch: list[Request]) -> None:
        pending = self._replayed(batch)
        grouped = [r for r in pending if self.group_commit and r.name in GROUPABLE]
        if grouped:
            self._run_group(grouped)
        for request in pending:
            if request in grouped:
                continue
            if request.name in GROUPABLE:
                self._run_group([request])
            else:
                self._run_single(request)
        self._prune_request_log()

    def _replayed(self, batch: list[Request]) -> list[Request]:
        """Resolve requests whose Idempotency-Key already has an answer; return the rest."""
        keyed = [r for r in batch if r.request_key]
        if not keyed:
            return batch
        try:
            stored = self._stored([r.request_key for r in keyed])  # type: ignore[misc]
        except Exception:  # one key the ledger cannot take fails the whole lookup: look each key up alone
            stored = {}
            for request in keyed:
                try:
                    stored.update(self._stored([request.request_key]))  # type: ignore[list-item]
                except Exception as exc:
                    _fail(request, exc)
        pending = []
        seen: dict[str, Request] = {}
        for request in batch:
            if request.future.done():
                continue
            if request.request_key in stored:
                record = stored[request.request_key]
                if "fingerprint" not in record:  # stored before fingerprints were kept: the answer itself
                    record = {"fingerprint": request.fingerprint, "answer": record}
                if record["fingerprint"] != request.fingerprint:
                    request.future.set_exception(Conflict(
                        "this Idempotency-Key was already used for a different request; use a new key per request"))
                else:
                    request.future.set_result(record["answer"])
            elif request.request_key and request.request_key in seen:  # the same key twice in one batch
                if seen[request.request_key].fingerprint != request.fingerprint:
                    request.future.set_exception(Conflict(
                        "this Idempotency-Key was already used for a different request; use a new key per request"))
                else:
                    _chain(seen[request.request_key].future, request.future)
            else:
                if request.request_key:
                    seen[request.request_key] = request
                pending.append(request)
        return pending

    def _stored(self, keys: list[str]) -> dict[str, Any]:
        return {key: json.loads(response) for key, _status, response in
                self.ledger.read().fetch("request_log_lookup", keys=keys)}

    def _run_single(self, request: Request) -> None:
        def run() -> dict[str, Any]:
            with self.ledger.transaction() as tx:
                result = dispatch.run(self.ledger, request.name, request.params, request.caller, text_checked=True)
                _log(tx, [(request, result)])
            return result

        _settle(request, run)

    def _run_group(self, requests: list[Request]) -> None:
        for observer in self.batch_observers:
            observer(len(requests))
        answers: dict[int, dict[str, Any] | OrchError] = {}
        try:
            with self.ledger.transaction() as tx:
                acks = self._apply_reports(tx, requests, answers)
                self._apply_claims(tx, requests, answers, acks)
                _log(tx, [(r, answers[id(r)]) for r in requests if not isinstance(answers.get(id(r)), OrchError)])
        except Exception as exc:
            if len(requests) > 1:  # rolled back: run each half on its own, until the broken request fails alone
                middle = len(requests) // 2
                self._run_group(requests[:middle])
                self._run_group(requests[middle:])
                return
            _fail(requests[0], exc)
            return
        except BaseException as exc:
            for request in requests:
                _fail(request, exc)
            return
        for request in requests:
            answer = answers[id(request)]
            if isinstance(answer, OrchError):
                _fail(request, answer)
            else:
                _answer(request, answer)

    def _apply_reports(self, tx: Transaction, requests: list[Request],
                       answers: dict[int, dict[str, Any] | OrchError]) -> Reports:
        """Apply the group's heartbeats, acks, fails and releases, in that order (so of an ack and a fail of one
        lease, the ack wins). When the group also claims and has no fail or release, the acks are returned
        instead, for _apply_claims to apply with the first claim."""
        names = {request.name for request in requests}
        hold_acks = "jobs.claim" in names and not names & {"jobs.fail", "jobs.release"}
        held = Reports()
        for kind in ("heartbeat", "ack", "fail", "release"):
            build, apply = job_ops.BATCHED[kind]
            reports = Reports()
            for request in requests:
                if request.name == "jobs.ack_many" and kind == "ack":
                    entries = request.acks if request.acks is not None else _ack_many_items(request)
                    if isinstance(entries, OrchError):
                        answers[id(request)] = entries
                        continue
                    answers[id(request)] = {"results": [None] * len(entries)}
                    for index, item in enumerate(entries):
                        reports.add(request, index, item)
                    continue
                if GROUPED.get(request.name) != kind:
                    continue
                try:
                    params = dict(request.params)
                    reports.add(request, None, build(params.pop("job_id"), params.pop("lease_id", None), **params,
                                                     tenants=request.caller.tenants))
                except (OrchError, TypeError, KeyError) as error:
                    answers[id(request)] = error if isinstance(error, OrchError) else InvalidInput(str(error))
            if kind == "ack" and hold_acks:
                held = reports
            elif reports.items:
                reports.answer(apply(tx, reports.items), answers)
        return held

    def _apply_claims(self, tx: Transaction, requests: list[Request],
                      answers: dict[int, dict[str, Any] | OrchError], acks: Reports) -> None:
        """Claims asking with the same filters share one claim (core.claim_shared), up to MAX_SHARED_CLAIM jobs.
        The acks held back go with the first claim (core.ack_and_claim), or alone when no claim is valid."""
        groups: dict[tuple, list[tuple[Request, dict[str, Any]]]] = {}
        for request in requests:
            if request.name != "jobs.claim":
                continue
            params = dict(request.params)
            params.pop("wait", None)
            try:
                args = job_ops.claim_args(worker_id=params.pop("worker_id", None), job_type=params.pop("type", None),
                                          tenants=request.caller.tenants, **params)
            except (OrchError, TypeError) as error:
                answers[id(request)] = error if isinstance(error, OrchError) else InvalidInput(str(error))
                continue
            tenants = args["tenants"]
            key = (args["lease_seconds"], args["queue"], args["job_type"],
                   frozenset(tenants) if tenants is not None else None)
            groups.setdefault(key, []).append((request, args))
        for members in groups.values():
            for share in _chunks(members, MAX_SHARED_CLAIM):
                first = share[0][1]
                ack_outcomes, leases = core.ack_and_claim(
                    tx, acks.items, [(args["worker_id"], args["limit"]) for _, args in share],
                    lease_seconds=first["lease_seconds"], queue=first["queue"], job_type=first["job_type"],
                    tenants=first["tenants"])
                acks.answer(ack_outcomes, answers)
                acks = Reports()
                for (request, _), granted in zip(share, leases, strict=True):
                    answers[id(request)] = {"leases": granted}
        if acks.items:
            acks.answer(core.ack(tx, acks.items), answers)

    def _prune_request_log(self) -> None:
        if time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        with self.ledger.transaction() as tx:
            tx.execute("request_log_prune", before=clock.now() - timedelta(days=REQUEST_LOG_DAYS))


def _chunks(members: list[tuple[Request, dict[str, Any]]], most: int) -> list[list[tuple[Request, dict[str, Any]]]]:
    """Consecutive runs of claims whose limits add up to at most `most` (a claim over it runs alone)."""
    chunks: list[list[tuple[Request, dict[str, Any]]]] = []
    total = most
    for member in members:
        if total + member[1]["limit"] > most:
            chunks.append([])
            total = 0
        chunks[-1].append(member)
        total += member[1]["limit"]
    return chunks


def _ack_many_items(request: Request) -> list[dict[str, Any]]:
    acks = request.params.get("acks")
    if not isinstance(acks, list) or not acks:
        raise InvalidInput("acks must be a non-empty list")
    return [job_ops.ack_item(a.get("job_id"), a.get("lease_id"), artifacts=a.get("artifacts"),
                             tenants=request.caller.tenants) for a in acks]


def _log(tx: Transaction, done: list[tuple[Request, Any]]) -> None:
    # An empty claim is not recorded: a long-poll repeats it under the same key until work arrives.
    rows = []
    for request, answer in done:
        if not request.request_key or (request.name == "jobs.claim" and not answer["leases"]):
            continue
        request.future.text = text = dumps(answer)  # encoded once: stored here, sent as is by the door
        rows.append((request.request_key, request.name,
                     f'{{"fingerprint":"{request.fingerprint}","answer":{text}}}'))
    if not rows:
        return
    # Only keys request_log_lookup did not find, once each (_replayed): the one writer needs no ON CONFLICT.
    now = clock.now()
    tx.append("request_log", [(key, operation, 200, response, now) for key, operation, response in rows])


def _settle(request: Request, run: Callable[[], Any]) -> None:
    try:
        result = run()
    except BaseException as exc:
        _fail(request, exc)
    else:
        _answer(request, result)


def _answer(request: Request, result: Any) -> None:
    if not request.future.done():
        request.future.set_result(result)


def _fail(request: Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)


def _chain(source: Future, target: Future) -> None:
    def copy(done: Future) -> None:
        if target.done():
            return
        if done.exception() is not None:
            target.set_exception(done.exception())
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)
