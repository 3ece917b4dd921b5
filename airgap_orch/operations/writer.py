"""The one writer path: a thread that owns the ledger's write connection and runs every operation that changes the
ledger the server (or the in-process worker runner) hands it. Operations that change nothing run beside it, on
snapshots (operations/readers.py): they never queue here behind claims and acks, nor hold them up.

Group commit: worker reports (heartbeat, ack, fail, release) and claims that arrive together are applied
in ONE transaction, so the server pays the ledger's per-statement and per-commit cost once per batch
instead of once per request. Each is turned into a validated request by dispatch.prepare, the step the local
path uses too, so every check holds on both. Other operations run one transaction each. A mutating request that
carries an Idempotency-Key is logged in the same transaction (operations/request_log.py: a replay recipe, not the
answer); a retry gets the original answer, rebuilt from that recipe and the ledger.

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
from typing import Any

from .. import api, clock
from ..errors import Conflict, OrchError
from ..ledger import Ledger, Transaction
from ..orchestrator import claims, joblogs
from ..orchestrator import reports as lease_reports
from . import dispatch, request_log
from . import jobs as job_ops

GROUPABLE = frozenset(dispatch.PREPARED)  # claims and worker reports: dispatch.prepare, then one group commit
MAX_SHARED_CLAIM = 2_000  # jobs one shared claim statement may lease for the claims it serves
PRUNE_EVERY_SECONDS = 3_600.0  # the request log is pruned at least this often (and as it fills: request_log.py)


class Answer(Future):
    """A request's future; `text` is the answer as compact JSON when the writer already encoded it (for the
    request log), so the HTTP door sends those bytes instead of encoding the answer a second time."""

    text: str | None = None


dumps = request_log.dumps  # the JSON text of an answer, as the HTTP door sends it


@dataclass
class Request:
    name: str
    params: dict[str, Any]
    caller: dispatch.Caller
    request_key: str | None = None  # subject + Idempotency-Key, for mutating requests
    future: Answer = field(default_factory=Answer)
    prepared: dispatch.Prepared | OrchError | None = None  # GROUPABLE: dispatch.prepare's request, or why not

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the request asked for: a key reused for a different request is refused, not replayed."""
        text = json.dumps([self.name, self.params], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Gathered:
    """The report items of one kind gathered from a group's requests (each request's job_ops.Reports), in order,
    so each request's outcomes go back to it."""

    owners: list[Request] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, request: Request, reports: job_ops.Reports) -> None:
        self.owners.append(request)
        self.items.extend(reports.items)

    def answer(self, outcomes: list[dict[str, Any] | OrchError],
               answers: dict[int, dict[str, Any] | OrchError]) -> None:
        start = 0
        for request in self.owners:
            reports: job_ops.Reports = request.prepared  # type: ignore[assignment]
            mine = outcomes[start:start + len(reports.items)]
            start += len(reports.items)
            try:
                answers[id(request)] = reports.answer(mine)
            except OrchError as error:
                answers[id(request)] = error


class LedgerWriter:
    def __init__(self, ledger: Ledger, *, group_commit: bool = True, max_batch: int = 2_000,
                 request_log_limits: request_log.Limits = request_log.DEFAULT_LIMITS):
        self.ledger = ledger
        self.group_commit = group_commit
        self.max_batch = max_batch
        self.request_log_limits = request_log_limits
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.batch_observers: list[Callable[[int], None]] = []  # metrics: size of each group commit
        self._last_prune: float | None = None  # monotonic time of the last request log prune (None: not yet)
        self._last_log_prune: float | None = None  # ... and of the last job log prune (orchestrator/joblogs.py)
        self._logged_rows = self._logged_bytes = 0  # logged since then
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
        if name in GROUPABLE:
            try:
                request.prepared = dispatch.prepare(name, params, caller, text_checked=True)
            except OrchError as error:
                request.prepared = error
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
        self._prune_job_logs()

    def _replayed(self, batch: list[Request]) -> list[Request]:
        """Resolve requests whose Idempotency-Key is logged already (with the answer rebuilt from the log and the
        ledger); return the rest."""
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
        replays: dict[str, list[Request]] = {}
        for request in batch:
            if request.future.done():
                continue
            if request.request_key in stored:
                logged = stored[request.request_key]
                if logged.fingerprint not in (None, request.fingerprint):  # None: logged before fingerprints
                    request.future.set_exception(Conflict(
                        "this Idempotency-Key was already used for a different request; use a new key per request"))
                else:
                    replays.setdefault(request.request_key, []).append(request)  # type: ignore[arg-type]
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
        if replays:
            self._replay({key: stored[key] for key in replays}, replays)
        return pending

    def _stored(self, keys: list[str]) -> dict[str, request_log.Logged]:
        return request_log.lookup(self.ledger.read(), keys)

    def _replay(self, logged: dict[str, request_log.Logged], requests: dict[str, list[Request]]) -> None:
        """Answer each request with the answer rebuilt for its key; should rebuilding them together fail, rebuild
        each key alone, so the error reaches only the requests of the key that raises it."""
        try:
            answers = request_log.rebuild(self.ledger.read(), logged)
        except Exception:
            answers = {}
            for key, entry in logged.items():
                try:
                    answers.update(request_log.rebuild(self.ledger.read(), {key: entry}))
                except Exception as exc:
                    answers[key] = exc  # type: ignore[assignment]
        for key, waiting in requests.items():
            for request in waiting:
                if isinstance(answers[key], BaseException):
                    _fail(request, answers[key])  # type: ignore[arg-type]
                else:
                    _answer(request, answers[key])

    def _run_single(self, request: Request) -> None:
        def run() -> dict[str, Any]:
            with self.ledger.transaction() as tx:
                result = dispatch.run(self.ledger, request.name, request.params, request.caller, text_checked=True)
                self._log(tx, [(request, result)])
            return result

        _settle(request, run)

    def _run_group(self, requests: list[Request]) -> None:
        for observer in self.batch_observers:
            observer(len(requests))
        answers: dict[int, dict[str, Any] | OrchError] = {}
        try:
            with self.ledger.transaction() as tx:
                for request in requests:
                    if isinstance(request.prepared, OrchError):
                        answers[id(request)] = request.prepared
                acks = self._apply_reports(tx, requests, answers)
                self._apply_claims(tx, requests, answers, acks)
                self._log(tx, [(r, answers[id(r)]) for r in requests if not isinstance(answers[id(r)], OrchError)])
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
                       answers: dict[int, dict[str, Any] | OrchError]) -> Gathered:
        """Apply the group's heartbeats, acks, fails and releases, in that order (so of an ack and a fail of one
        lease, the ack wins). When the group also claims and has no fail or release, the acks are returned
        instead, for _apply_claims to apply with the first claim."""
        reported = [r for r in requests if isinstance(r.prepared, job_ops.Reports)]
        kinds = {r.prepared.kind for r in reported}  # type: ignore[union-attr]
        claiming = any(isinstance(r.prepared, job_ops.ClaimRequest) for r in requests)
        hold_acks = claiming and not kinds & {"fail", "release"}
        held = Gathered()
        for kind in ("heartbeat", "ack", "fail", "release"):
            gathered = Gathered()
            for request in reported:
                if request.prepared.kind == kind:  # type: ignore[union-attr]
                    gathered.add(request, request.prepared)  # type: ignore[arg-type]
            if kind == "ack" and hold_acks:
                held = gathered
            elif gathered.items:
                gathered.answer(job_ops.BATCHED[kind][1](tx, gathered.items), answers)
        return held

    def _apply_claims(self, tx: Transaction, requests: list[Request],
                      answers: dict[int, dict[str, Any] | OrchError], acks: Gathered) -> None:
        """Claims asking with the same filters share one claim (claims.claim_shared), up to MAX_SHARED_CLAIM jobs.
        The acks held back go with the first claim (claims.ack_and_claim), or alone when no claim is valid."""
        groups: dict[tuple, list[tuple[Request, job_ops.ClaimRequest]]] = {}
        for request in requests:
            if isinstance(request.prepared, job_ops.ClaimRequest):
                groups.setdefault(request.prepared.filters, []).append((request, request.prepared))
        for members in groups.values():
            for share in _chunks(members, MAX_SHARED_CLAIM):
                first = share[0][1]
                ack_outcomes, leases = claims.ack_and_claim(
                    tx, acks.items, [(claim.worker_id, claim.limit) for _, claim in share],
                    lease_seconds=first.lease_seconds, queue=first.queue, job_type=first.job_type,
                    tenants=first.tenants)
                acks.answer(ack_outcomes, answers)
                acks = Gathered()
                for (request, _), granted in zip(share, leases, strict=True):
                    answers[id(request)] = {"leases": granted}
        if acks.items:
            acks.answer(lease_reports.ack(tx, acks.items), answers)

    def _log(self, tx: Transaction, done: list[tuple[Request, Any]]) -> None:
        """Log the requests with an Idempotency-Key (operations/request_log.py), in their transaction."""
        rows = []
        for request, answer in done:
            if request.request_key:
                row = request_log.row(request.request_key, request.name, request.fingerprint, request.prepared,
                                      answer)
                if row is not None:
                    rows.append(row)
                    request.future.text = row.text  # the answer's JSON when encoded for the log: the door sends it
        request_log.write(tx, rows, clock.now())
        self._logged_rows += len(rows)
        self._logged_bytes += sum(row.size for row in rows)

    def _prune_request_log(self) -> None:
        """Prune the request log at the first batch, after every 1/PRUNE_FRACTION of its bounds logged, and at least
        every PRUNE_EVERY_SECONDS (its rows age out)."""
        limits = self.request_log_limits
        if (self._last_prune is not None and time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS
                and self._logged_rows < max(1, limits.max_rows // request_log.PRUNE_FRACTION)
                and self._logged_bytes < max(1, limits.max_bytes // request_log.PRUNE_FRACTION)):
            return
        self._last_prune = time.monotonic()
        self._logged_rows = self._logged_bytes = 0
        with self.ledger.transaction() as tx:
            request_log.prune(tx, clock.now(), limits)


    def _prune_job_logs(self) -> None:
        """Delete job log lines stored before the retention window: at the first batch, then at most every
        joblogs.PRUNE_EVERY_SECONDS."""
        if self._last_log_prune is not None and time.monotonic() - self._last_log_prune < joblogs.PRUNE_EVERY_SECONDS:
            return
        self._last_log_prune = time.monotonic()
        with self.ledger.transaction() as tx:
            joblogs.prune(tx, clock.now())


def _chunks(members: list[tuple[Request, job_ops.ClaimRequest]],
            most: int) -> list[list[tuple[Request, job_ops.ClaimRequest]]]:
    """Consecutive runs of claims whose limits add up to at most `most` (a claim over it runs alone)."""
    chunks: list[list[tuple[Request, job_ops.ClaimRequest]]] = []
    total = most
    for member in members:
        if total + member[1].limit > most:
            chunks.append([])
            total = 0
        chunks[-1].append(member)
        total += member[1].limit
    return chunks


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
