"""Job logs: the lines a handler writes with ctx.log, stored in the ledger's job_logs table (migration 0017).

Lines ride on the reports of a lease (heartbeat, ack, fail: schemas/log-lines.schema.json) and are stored in the
transaction that applies the report, so a line costs no request and no commit of its own, and a report refused (a
stale lease, another tenant's job) stores none of its lines. The reports stage the lines of the items they accept
(`add`); the transaction writes them all just before its COMMIT (`_flush`: one append, whatever the number of
reports and jobs in a group commit), numbering each job's lines 1, 2, 3, ... in the order they are stored.

Bounds (README "Job logs"): a job keeps at most `Limits.lines` lines: past that the oldest are deleted and the oldest
line kept becomes a marker that says how many went (its `dropped`); lines stored longer ago than
`Limits.retention_seconds` are deleted by `prune` (the ledger writer runs it every PRUNE_EVERY_SECONDS).

The first and last seq of each job with lines are kept in the ledger's cache (loaded once per process, for the
jobs in the hot table: only a leased job can get lines), so storing lines reads nothing; a job leaves the cache
when it ends. The cache is rebuilt from the ledger after a rollback.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .. import clock, validation
from ..ledger import Transaction
from . import rows
from .states import FINAL_STATES

DEFAULT_LINES = validation.DEFAULT_JOB_LOG_LINES  # serve / worker run --job-log-lines
DEFAULT_RETENTION_SECONDS = validation.duration_seconds(validation.DEFAULT_JOB_LOG_RETENTION, "retention")
PRUNE_EVERY_SECONDS = 60.0  # the writer deletes lines past the retention window at least this often
MAX_CACHED_HEADS = 200_000  # more jobs with lines than this in the cache: it is dropped and loaded again
MAX_PAGE_LINES = 1_000  # lines per page of GET /v1/jobs/{id}/logs
_HEADS = "job_log_heads"
_STAGED = "job_logs"


@dataclass(frozen=True)
class Limits:
    lines: int = DEFAULT_LINES
    retention_seconds: int = DEFAULT_RETENTION_SECONDS


DEFAULT_LIMITS = Limits()


def limits(tx: Transaction) -> Limits:
    """The limits the process that opened the ledger set (serve, worker run), else the defaults."""
    return tx.ledger.job_log_limits or DEFAULT_LIMITS


def add(tx: Transaction, job: dict[str, Any], lines: list[dict[str, Any]], *, state: str) -> None:
    """Stage the log lines of an accepted report of `job` (a row with job_id, attempts, lease_id, tenant, project,
    correlation_id), whose state after the report is `state`; written at the transaction's end."""
    if not lines:
        return
    staged = tx.staged.get(_STAGED)
    if staged is None:
        staged = tx.staged[_STAGED] = []
        tx.before_commit.append(_flush)
    staged.append((job, lines, state in FINAL_STATES))


def _flush(tx: Transaction) -> None:
    staged = tx.staged.pop(_STAGED, [])
    if not staged:
        return
    heads = _heads(tx)
    cap = limits(tx).lines
    now = clock.now()
    out: list[tuple[Any, ...]] = []
    ended: set[str] = set()
    for job, lines, final in staged:
        job_id = job["job_id"]
        head = heads.setdefault(job_id, [1, 0])
        for line in lines:
            head[1] += 1
            out.append((job_id, head[1], job["attempts"], job["lease_id"], job["tenant"], job["project"],
                        job.get("correlation_id"), line["level"], line["message"], line["at"] or now, now, None))
        tx.logged[job_id] = head[1]
        if final:
            ended.add(job_id)
    tx.append("job_logs", out)
    for job_id in {job["job_id"] for job, _, _ in staged}:
        first, last = heads[job_id]
        if last - first + 1 > cap:
            keep_from = last - cap + 1  # this line becomes the marker: the buffer holds `cap` lines in all
            tx.execute("job_log_cut", job_id=job_id, first_seq=keep_from)
            tx.execute("job_log_mark", job_id=job_id, first_seq=keep_from,
                       message=f"... {keep_from} earlier lines dropped: this job logged more than its buffer of "
                               f"{cap} lines")
            heads[job_id][0] = keep_from
    for job_id in ended:
        heads.pop(job_id, None)
    if len(heads) > MAX_CACHED_HEADS:
        tx.cache.pop(_HEADS, None)


def _heads(tx: Transaction) -> dict[str, list[int]]:
    heads = tx.cache.get(_HEADS)
    if heads is None:
        heads = tx.cache[_HEADS] = {job_id: [first, last] for job_id, first, last in tx.fetch("job_log_heads")}
    return heads


def prune(tx: Transaction, now: datetime, retention_seconds: int | None = None) -> int:
    """Delete the lines stored before the retention window; how many went."""
    seconds = limits(tx).retention_seconds if retention_seconds is None else retention_seconds
    (deleted,) = tx.fetch("job_log_prune", cutoff=now - timedelta(seconds=seconds))[0]
    if deleted:
        tx.cache.pop(_HEADS, None)  # a job's first line may have gone: count its lines afresh
    return int(deleted)


def page(read: Any, job_id: str, *, after_seq: int, limit: int, tenants: Collection[str] | None
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job (as rows.any_job finds it for a caller limited to `tenants`: NotFound otherwise) and up to `limit`
    of its lines after `after_seq`, oldest first."""
    job = rows.any_job(read, job_id, tenants)
    found = read.rows("job_log_page", job_id=job_id, after_seq=after_seq, limit=limit)
    return job, [render(job_id, line) for line in found]


def render(job_id: str, line: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job_id, "seq": line["seq"], "attempt": line["attempt"], "lease_id": line["lease_id"],
            "tenant": line["tenant"], "project": line["project"], "correlation_id": line["correlation_id"],
            "level": line["level"], "message": line["message"], "at": clock.iso(line["logged_at"]),
            "stored_at": clock.iso(line["stored_at"]), "dropped": line["dropped"]}
