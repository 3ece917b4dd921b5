"""Job operations: enqueue, claim, heartbeat, ack, fail, cancel, list, show, recover, dead letters."""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import clock, schemas, validation
from ..errors import Forbidden, OrchError, exit_code_for
from ..ledger import Ledger, Transaction
from ..orchestrator import claims, flow, joblogs, operator, recovery, render, reports
from ..orchestrator.enqueue import enqueue as enqueue_records
from ..orchestrator.states import DEAD_LETTER, FINAL_STATES
from .registry import operation, prepared


def _single(outcomes: list[dict[str, Any] | OrchError]) -> dict[str, Any]:
    (outcome,) = outcomes
    if isinstance(outcome, OrchError):
        raise outcome
    return outcome


def _allowed(record: dict[str, Any], tenants: Collection[str] | None) -> None:
    if tenants is not None and record["tenant"] not in tenants:
        raise Forbidden(f"this caller may not enqueue for tenant {record['tenant']!r}")


@operation("jobs.enqueue")
def enqueue(ledger: Ledger, spec: Any, *, actor: str = "cli", tenants: Collection[str] | None = None
            ) -> dict[str, Any]:
    record = validation.job_spec(spec)
    _allowed(record, tenants)
    with ledger.transaction() as tx:
        ((job_id, created),) = enqueue_records(tx, [record], actor=actor)
    return {"job_id": job_id, "created": created, "tenant": record["tenant"], "type": record["job_type"]}


def enqueue_batch(ledger: Ledger, specs: list[Any], *, actor: str = "cli",
                  tenants: Collection[str] | None = None) -> dict[str, Any]:
    """All specs in one transaction; one invalid spec refuses the whole batch, and the error carries its index."""
    schemas.validate("enqueue-batch-request", {"jobs": specs}, "batch")
    records = []
    for index, spec in enumerate(specs):
        try:
            records.append(validation.job_spec(spec, f"job {index + 1}", shape_checked=True))
        except OrchError as error:
            raise error.at(index) from None
    for index, record in enumerate(records):
        try:
            _allowed(record, tenants)
        except OrchError as error:
            raise error.at(index) from None
    with ledger.transaction() as tx:
        results = enqueue_records(tx, records, actor=actor)
    created = sum(1 for _, was_created in results if was_created)
    return {"job_ids": [job_id for job_id, _ in results], "created": created, "existing": len(results) - created}


@operation("jobs.enqueue_batch")
def _enqueue_batch(ledger: Ledger, *, jobs: list[Any], **kw: Any) -> dict[str, Any]:  # the body's `jobs`
    return enqueue_batch(ledger, jobs, **kw)


@dataclass(frozen=True)
class ClaimRequest:
    """A validated claim, applied alone (apply) or sharing one claim with others that ask with the same filters
    (the server's group commit: claims.claim_shared)."""

    worker_id: str
    limit: int
    lease_seconds: float
    queue: str | None
    job_type: str | None
    tenants: Collection[str] | None

    @property
    def filters(self) -> tuple[Any, ...]:
        """What claims must share to be served by one claim statement."""
        return (self.lease_seconds, self.queue, self.job_type,
                frozenset(self.tenants) if self.tenants is not None else None)

    def apply(self, tx: Transaction) -> dict[str, Any]:
        return {"leases": claims.claim(tx, worker_id=self.worker_id, limit=self.limit,
                                       lease_seconds=self.lease_seconds, queue=self.queue, job_type=self.job_type,
                                       tenants=self.tenants)}


def claim_request(*, worker_id: str, limit: int = 1, lease_seconds: float | None = None, queue: str | None = None,
                  job_type: str | None = None, actor: str = "cli",
                  tenants: Collection[str] | None = None) -> ClaimRequest:
    """The claim asked for, validated: the one step from parameters to a claim, on every path."""
    validation.text(worker_id, validation.MAX_WORKER_ID_CHARS, "worker id", required=True)
    return ClaimRequest(worker_id, validation.claim_limit(limit), validation.lease_seconds(lease_seconds), queue,
                        job_type, tenants)


@prepared("jobs.claim")
def _claim_request(*, worker_id: str, limit: int = 1, lease_seconds: float | None = None, queue: str | None = None,
                   type: str | None = None, wait: float | None = None, **kw: Any) -> ClaimRequest:
    # `wait` (long-poll) is the server's business (its door checks it); locally a claim answers at once.
    return claim_request(worker_id=worker_id, limit=limit, lease_seconds=lease_seconds, queue=queue, job_type=type,
                         **kw)


def claim(ledger: Ledger, *, worker_id: str, limit: int = 1, lease_seconds: float | None = None,
          queue: str | None = None, job_type: str | None = None, actor: str = "cli",
          tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Lease up to `limit` ready jobs, each under a fresh lease."""
    return _apply(ledger, claim_request(worker_id=worker_id, limit=limit, lease_seconds=lease_seconds, queue=queue,
                                        job_type=job_type, tenants=tenants))


def heartbeat_item(job_id: str, lease_id: str, *, progress: float | None = None, message: str | None = None,
                   logs: list[Any] | None = None, tenants: Collection[str] | None = None) -> dict[str, Any]:
    return {"job_id": validation.job_id(job_id), "lease_id": validation.lease_id(lease_id), "tenants": tenants,
            "progress": validation.progress(progress),
            "message": validation.text(message, validation.MAX_MESSAGE_CHARS, "message"),
            "logs": validation.log_lines(logs)}


def ack_item(job_id: str, lease_id: str, *, artifacts: list[dict[str, str]] | None = None,
             logs: list[Any] | None = None, tenants: Collection[str] | None = None) -> dict[str, Any]:
    return {"job_id": validation.job_id(job_id), "lease_id": validation.lease_id(lease_id), "tenants": tenants,
            "artifacts": validation.artifacts(artifacts or []), "logs": validation.log_lines(logs)}


def fail_item(job_id: str, lease_id: str, *, error: str, retry_after: float | None = None,
              no_retry: bool = False, logs: list[Any] | None = None,
              tenants: Collection[str] | None = None) -> dict[str, Any]:
    return {"job_id": validation.job_id(job_id), "lease_id": validation.lease_id(lease_id), "tenants": tenants,
            "error": validation.text(error, validation.MAX_ERROR_CHARS, "error", required=True),
            "retry_after": validation.retry_after(retry_after), "no_retry": bool(no_retry),
            "logs": validation.log_lines(logs)}


def release_item(job_id: str, lease_id: str, *, tenants: Collection[str] | None = None) -> dict[str, Any]:
    return {"job_id": validation.job_id(job_id), "lease_id": validation.lease_id(lease_id), "tenants": tenants}


# The worker reports: item builders validate; the batch core functions apply many items in one
# transaction (the server's group commit) and answer one outcome per item.
BATCHED = {"heartbeat": (heartbeat_item, reports.heartbeat), "ack": (ack_item, reports.ack),
           "fail": (fail_item, reports.fail), "release": (release_item, reports.release)}


@dataclass(frozen=True)
class Reports:
    """The validated report items of one request (heartbeat, ack, fail or release: one item; ack_many: many),
    applied alone (apply) or with other requests' items of the same kind in one transaction (the server's group
    commit), each way answered by `answer` from the outcomes of its items."""

    kind: str  # a BATCHED kind
    items: list[dict[str, Any]]
    many: bool = False  # jobs.ack_many: {"results": [one per item]}; otherwise the one item's outcome

    def answer(self, outcomes: list[dict[str, Any] | OrchError]) -> dict[str, Any]:
        """The request's answer; a single report that was refused raises its error."""
        if self.many:
            return {"results": [outcome_dict(item, outcome)
                                for item, outcome in zip(self.items, outcomes, strict=True)]}
        return _single(outcomes)

    def apply(self, tx: Transaction) -> dict[str, Any]:
        return self.answer(BATCHED[self.kind][1](tx, self.items))


def report(kind: str, job_id: str, lease_id: str, *, actor: str = "cli", tenants: Collection[str] | None = None,
           **fields: Any) -> Reports:
    """One heartbeat, ack, fail or release, validated: the one step from parameters to its item, on every path."""
    return Reports(kind, [BATCHED[kind][0](job_id, lease_id, **fields, tenants=tenants)])


for _kind in BATCHED:
    prepared(f"jobs.{_kind}")(functools.partial(report, _kind))


@prepared("jobs.ack_many")
def ack_many_reports(acks: list[dict[str, Any]], *, actor: str = "cli",
                     tenants: Collection[str] | None = None) -> Reports:
    """The acks of one jobs.ack_many, validated: at most MAX_CLAIM_LIMIT (a claim's most), each an object."""
    if not isinstance(acks, list) or not acks or len(acks) > validation.MAX_CLAIM_LIMIT:
        raise validation.InvalidInput(f"acks must be a list of 1 to {validation.MAX_CLAIM_LIMIT} items")
    items = []
    for index, given in enumerate(acks):
        if not isinstance(given, dict):
            raise validation.InvalidInput(f"ack {index + 1} must be an object with job_id and lease_id").at(index)
        try:
            items.append(ack_item(given.get("job_id"), given.get("lease_id"), artifacts=given.get("artifacts"),
                                  logs=given.get("logs"), tenants=tenants))
        except OrchError as error:
            raise error.at(index) from None
    return Reports("ack", items, many=True)


def _apply(ledger: Ledger, request: Reports | ClaimRequest) -> dict[str, Any]:
    with ledger.transaction() as tx:
        return request.apply(tx)


def heartbeat(ledger: Ledger, job_id: str, lease_id: str, **fields: Any) -> dict[str, Any]:
    """Extend a lease (progress?, message?); the first heartbeat starts the job."""
    return _apply(ledger, report("heartbeat", job_id, lease_id, **fields))


def ack(ledger: Ledger, job_id: str, lease_id: str, **fields: Any) -> dict[str, Any]:
    """Complete a job under its current lease (artifacts?)."""
    return _apply(ledger, report("ack", job_id, lease_id, **fields))


def fail(ledger: Ledger, job_id: str, lease_id: str, **fields: Any) -> dict[str, Any]:
    """Report a failed attempt (error, retry_after?, no_retry?)."""
    return _apply(ledger, report("fail", job_id, lease_id, **fields))


def release(ledger: Ledger, job_id: str, lease_id: str, **fields: Any) -> dict[str, Any]:
    """Give a lease back without using up the attempt."""
    return _apply(ledger, report("release", job_id, lease_id, **fields))


def ack_many(ledger: Ledger, acks: list[dict[str, Any]], *, actor: str = "cli",
             tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Many acks in one transaction; one result per ack, in their order ({job_id, state} or {job_id, error})."""
    return _apply(ledger, ack_many_reports(acks, tenants=tenants))


def outcome_dict(item: dict[str, Any], outcome: dict[str, Any] | OrchError) -> dict[str, Any]:
    if isinstance(outcome, OrchError):
        return {"job_id": item["job_id"], "error": {"type": type(outcome).__name__, "message": str(outcome),
                                                   "exit_code": exit_code_for(outcome)}}
    return outcome


@operation("jobs.cancel")
def cancel(ledger: Ledger, job_id: str, *, reason: str, actor: str = "cli",
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    job_id = validation.job_id(job_id)
    reason = validation.text(reason, validation.MAX_REASON_CHARS, "reason", required=True)
    with ledger.transaction() as tx:
        return operator.cancel(tx, job_id, reason=reason, actor=actor, tenants=tenants)


@operation("jobs.recover")
def recover(ledger: Ledger, *, actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Recover every expired lease now (site-wide housekeeping); the count covers the caller's tenants only."""
    with ledger.transaction() as tx:
        recovered = recovery.maintain(tx, force=True)
    return {"recovered": sum(1 for tenant in recovered if tenants is None or tenant in tenants)}


def list_jobs(ledger: Ledger, *, state: str | None = None, tenant: str | None = None,
              job_type: str | None = None, project: str | None = None, queue: str | None = None, limit: int = 1000,
              cursor: str | None = None, actor: str = "cli", tenants: Collection[str] | None = None
              ) -> dict[str, Any]:
    """One page of jobs in creation order: at most `limit` of them, and at most a page (validation.MAX_PAGE_ROWS
    jobs, payloads up to MAX_PAGE_PAYLOAD_BYTES); `next_cursor` continues after it (None: nothing follows). The
    page is one read transaction of its own (a snapshot: it neither waits for the writer nor holds it up)."""
    state = validation.state(state)
    wanted = min(validation.list_limit(limit), validation.MAX_PAGE_ROWS)
    after = _job_key(cursor)
    filters = {"state": state, "tenant": tenant, "job_type": job_type, "project": project, "queue": queue,
               "tenants": sorted(tenants) if tenants is not None else None,
               "after_created_at": after[0], "after_job_id": after[1]}
    with ledger.snapshot() as read:
        # The page's payload sizes first (no payload read), to end it at the byte budget.
        sizes = [size for (size,) in read.fetch("jobs_list_sizes", **filters, limit=wanted + 1)]
        count, total = 0, 0
        for size in sizes[:wanted]:
            total += size
            if count and total > validation.MAX_PAGE_PAYLOAD_BYTES:
                break
            count += 1
        rows = read.rows("jobs_list", **filters, limit=count) if count else []
    now = clock.now()
    more = len(sizes) > len(rows)
    return {"jobs": [render.render(row, now) for row in rows],
            "next_cursor": validation.page_cursor("jobs", [rows[-1]["created_at"], rows[-1]["job_id"]])
            if more and rows else None}


@operation("jobs.list")
def _list(ledger: Ledger, *, type: str | None = None, **kw: Any) -> dict[str, Any]:  # `type` over HTTP
    return list_jobs(ledger, job_type=type, **kw)


def _job_key(cursor: Any) -> tuple[datetime | None, str | None]:
    """(created_at, job_id) of the last job of the page a jobs cursor continues after; (None, None) without one."""
    if cursor is None:
        return None, None
    created_at, job_id = validation.cursor(cursor, "jobs", (datetime, str))
    return created_at, job_id


@operation("jobs.logs")
def logs(ledger: Ledger, job_id: str, *, after_seq: int = 0, limit: int = 1000, cursor: str | None = None,
         follow: Any = None, actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """One page of a job's log lines after `after_seq` (or where `cursor` says), oldest first: at most `limit`, and
    at most joblogs.MAX_PAGE_LINES; `next_cursor` continues after it (None: nothing follows yet). With the job's
    state, and `last_seq` (where to continue: the page's last line, else after_seq). Another tenant's job is not
    found, as for jobs.show. `follow` is the server's (GET ...?follow=1 streams the lines as SSE); here a page."""
    job_id = validation.job_id(job_id)
    after_seq = int(validation.number_in(after_seq or 0, 0, 2**62, "after_seq"))
    wanted = min(validation.list_limit(limit), joblogs.MAX_PAGE_LINES)
    if cursor is not None:
        if after_seq:
            raise validation.InvalidInput("give cursor or after_seq, not both; cursor continues where the previous "
                                          "page ended")
        (after_seq,) = validation.cursor(cursor, "logs", (int,))
    with ledger.snapshot() as read:
        job, lines = joblogs.page(read, job_id, after_seq=after_seq, limit=wanted + 1, tenants=tenants)
    more = len(lines) > wanted
    lines = lines[:wanted]
    last_seq = lines[-1]["seq"] if lines else after_seq
    return {"job_id": job_id, "state": job["state"], "final": job["state"] in FINAL_STATES, "lines": lines,
            "last_seq": last_seq, "next_cursor": validation.page_cursor("logs", [last_seq]) if more else None}


@operation("jobs.show")
def show(ledger: Ledger, job_id: str, *, actor: str = "cli", tenants: Collection[str] | None = None
         ) -> dict[str, Any]:
    with ledger.snapshot() as read:
        return render.show(read, validation.job_id(job_id), tenants)


@operation("jobs.throttled")
def throttled(ledger: Ledger, *, limit: int = 100, cursor: str | None = None, actor: str = "cli",
              tenants: Collection[str] | None = None) -> dict[str, Any]:
    """One page of the queued, due jobs that a limit (a pause, a breaker, a concurrency limit, a quota, a rate limit)
    holds back now, in creation order, each with `throttled` as jobs.show says it (throttled_by, eligible_at,
    waits_for): at most `limit` jobs and validation.MAX_PAGE_ROWS are read per page (one read only of the ledger,
    the jobs in the groups flow control blocks), `next_cursor` continues after them. A caller limited to some tenants
    sees its tenants' jobs only. No payloads: jobs.show has them."""
    wanted = min(validation.list_limit(limit), validation.MAX_PAGE_ROWS)
    after = _job_key(cursor)
    with ledger.snapshot() as read:
        held, last = flow.throttled(read, tenants=tenants, after=after, limit=wanted)
    jobs = []
    for row, throttle in held:
        job = {key: clock.iso(value) if isinstance(value, datetime) else value for key, value in row.items()}
        job["type"] = job.pop("job_type")
        job["keys"] = job.pop("limit_keys", None) or []
        job["throttled"] = throttle.render()
        jobs.append(job)
    return {"jobs": jobs, "next_cursor": validation.page_cursor("jobs", [last["created_at"], last["job_id"]])
            if last is not None else None}


def deadletter_list(ledger: Ledger, *, tenant: str | None = None, job_type: str | None = None, limit: int = 1000,
                    cursor: str | None = None, actor: str = "cli", tenants: Collection[str] | None = None
                    ) -> dict[str, Any]:
    return list_jobs(ledger, state=DEAD_LETTER, tenant=tenant, job_type=job_type, limit=limit, cursor=cursor,
                     tenants=tenants)


@operation("deadletter.list")
def _deadletters(ledger: Ledger, *, type: str | None = None, **kw: Any) -> dict[str, Any]:  # `type` over HTTP
    return deadletter_list(ledger, job_type=type, **kw)


@operation("deadletter.replay")
def replay(ledger: Ledger, job_ids: list[str], *, again: Any = False, actor: str = "cli",
           tenants: Collection[str] | None = None) -> dict[str, Any]:
    if not job_ids:
        raise validation.InvalidInput("name at least one job id to replay; see `deadletter list`")
    checked = validation.job_ids(job_ids)
    with ledger.transaction() as tx:
        return {"replays": operator.replay(tx, checked, actor=actor, priority=100, tenants=tenants,
                                       again=validation.flag(again, "again"))}
