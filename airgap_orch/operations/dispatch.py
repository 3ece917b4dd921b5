"""Run an operation by its API name (airgap_orch/api.py) with JSON-shaped params.

Both doors end here: the CLI (on a ledger it opened) and the server's writer (on the ledger it owns).
`Caller` carries who asks: the actor recorded in history, and the tenants a token is limited to.

The claims and worker reports (PREPARED) have a `prepare` step: params in, a validated request out
(operations/jobs.py ClaimRequest or Reports), which `run` applies in a transaction of its own and the server's
writer applies with other requests in one group commit. Both paths go through `prepare`, so every check and cap
holds on both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import validation
from ..errors import InvalidInput
from ..ledger import Ledger
from . import audit as audit_ops
from . import backfills as backfill_ops
from . import jobs as job_ops
from . import ledger
from . import limits as limit_ops
from . import replays as replay_ops
from . import sources as source_ops


@dataclass(frozen=True)
class Caller:
    actor: str = "cli"
    tenants: frozenset[str] | None = None  # None: every tenant (a local operator)


def _claim(*, worker_id: str, limit: int = 1, lease_seconds: float | None = None, queue: str | None = None,
           type: str | None = None, wait: float | None = None, **kw: Any) -> job_ops.ClaimRequest:
    # `wait` (long-poll) is the server's business (its door checks it); locally a claim answers at once.
    return job_ops.claim_request(worker_id=worker_id, limit=limit, lease_seconds=lease_seconds, queue=queue,
                                 job_type=type, **kw)


Prepared = job_ops.Reports | job_ops.ClaimRequest
PREPARED: dict[str, Callable[..., Prepared]] = {
    "jobs.claim": _claim,
    "jobs.heartbeat": functools.partial(job_ops.report, "heartbeat"),
    "jobs.ack": functools.partial(job_ops.report, "ack"),
    "jobs.fail": functools.partial(job_ops.report, "fail"),
    "jobs.release": functools.partial(job_ops.report, "release"),
    "jobs.ack_many": job_ops.ack_many_reports,
}


def _prepared(name: str) -> Callable[..., dict[str, Any]]:
    def operation(led: Ledger, **params: Any) -> dict[str, Any]:
        request = PREPARED[name](**params)
        with led.transaction() as tx:
            return request.apply(tx)

    return operation


def _list(led: Ledger, *, state: str | None = None, tenant: str | None = None, type: str | None = None,
          limit: int = 1000, cursor: str | None = None, **kw: Any) -> dict:
    return job_ops.list_jobs(led, state=state, tenant=tenant, job_type=type, limit=limit, cursor=cursor, **kw)


def _deadletters(led: Ledger, *, tenant: str | None = None, type: str | None = None, limit: int = 1000,
                 cursor: str | None = None, **kw: Any) -> dict:
    return job_ops.deadletter_list(led, tenant=tenant, job_type=type, limit=limit, cursor=cursor, **kw)


def _enqueue_batch(led: Ledger, *, jobs: list[Any], **kw: Any) -> dict:
    return job_ops.enqueue_batch(led, jobs, **kw)


def _backfill_create(led: Ledger, *, reason: Any = None, ticket: Any = None, progress: Any = None,
                     actor: str, tenants: frozenset[str] | None, **request: Any) -> dict:
    return backfill_ops.create(led, request, reason=reason, ticket=ticket, progress=progress, actor=actor,
                               tenants=tenants)


def _backfill_list(led: Ledger, *, type: str | None = None, **kw: Any) -> dict:
    return backfill_ops.list_backfills(led, job_type=type, **kw)


OPERATIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "jobs.enqueue": lambda led, *, spec, **kw: job_ops.enqueue(led, spec, **kw),
    "jobs.enqueue_batch": _enqueue_batch,
    "jobs.claim": _prepared("jobs.claim"),
    "jobs.heartbeat": _prepared("jobs.heartbeat"),
    "jobs.ack": _prepared("jobs.ack"),
    "jobs.ack_many": _prepared("jobs.ack_many"),
    "jobs.fail": _prepared("jobs.fail"),
    "jobs.release": _prepared("jobs.release"),
    "jobs.cancel": job_ops.cancel,
    "jobs.list": _list,
    "jobs.show": job_ops.show,
    "jobs.recover": job_ops.recover,
    "deadletter.list": _deadletters,
    "deadletter.replay": job_ops.replay,
    "ledger.info": lambda led, *, actor, tenants, **kw: ledger.info(led, tenants=tenants, **kw),
    "ledger.verify": lambda led, *, actor, tenants, **kw: ledger.verify(led, tenants=tenants, **kw),
    "ledger.events": lambda led, *, actor, tenants, **kw: ledger.event_log(led, tenants=tenants, **kw),
    "audit.list": audit_ops.list_entries,
    "audit.verify": audit_ops.verify,
    "jobs.replay": replay_ops.replay_job,
    "deadletter.replay_bulk": replay_ops.replay_bulk,
    "backfills.create": _backfill_create,
    "backfills.list": _backfill_list,
    "backfills.show": lambda led, *, backfill_id, **kw: backfill_ops.show(led, backfill_id, **kw),
    "backfills.cancel": lambda led, *, backfill_id, **kw: backfill_ops.cancel(led, backfill_id, **kw),
    "quotas.set": limit_ops.quota_set,
    "quotas.delete": limit_ops.quota_delete,
    "quotas.list": limit_ops.quota_list,
    "ratelimits.set": limit_ops.ratelimit_set,
    "ratelimits.delete": limit_ops.ratelimit_delete,
    "ratelimits.list": limit_ops.ratelimit_list,
    "concurrency.set": limit_ops.concurrency_set,
    "concurrency.delete": limit_ops.concurrency_delete,
    "concurrency.list": limit_ops.concurrency_list,
    "breakers.set": limit_ops.breaker_set,
    "breakers.delete": limit_ops.breaker_delete,
    "breakers.list": limit_ops.breaker_list,
    "queues.pause": limit_ops.queue_pause,
    "queues.resume": limit_ops.queue_resume,
    "queues.list": limit_ops.queue_list,
    "sources.add": source_ops.add,
    "sources.list": source_ops.list_sources,
    "sources.show": source_ops.show,
    "sources.pause": source_ops.pause,
    "sources.resume": source_ops.resume,
    "schedules.run_due": source_ops.run_due,
}


LOCAL = Caller()


def run(led: Ledger, name: str, params: dict[str, Any], caller: Caller = LOCAL, *,
        text_checked: bool = False) -> dict[str, Any]:
    """Run operation `name`; unknown or malformed params are InvalidInput, never a crash. Text the ledger cannot
    store (validation.utf8_text: e.g. a command-line argument with bytes that are not UTF-8) is refused naming
    the param, unless the caller says its door has checked it already (the server checks every request)."""
    try:
        operation = OPERATIONS[name]
    except KeyError:
        raise InvalidInput(f"unknown operation {name!r}") from None
    return _call(name, functools.partial(operation, led), params, caller, text_checked)


def prepare(name: str, params: dict[str, Any], caller: Caller = LOCAL, *, text_checked: bool = False) -> Prepared:
    """The validated request of a PREPARED operation (a claim or a worker report), as `run` would apply it:
    refused, where `run` would refuse it, with the same error."""
    return _call(name, PREPARED[name], params, caller, text_checked)


def _call(name: str, function: Callable[..., Any], params: dict[str, Any], caller: Caller,
          text_checked: bool) -> Any:
    clean = {key: value for key, value in params.items() if key not in ("actor", "tenants")}
    if not text_checked:
        validation.utf8_text(clean, "")
    try:
        return function(**clean, actor=caller.actor, tenants=caller.tenants)
    except TypeError as exc:
        if "argument" in str(exc):
            raise InvalidInput(f"{name}: {str(exc).split(')', 1)[-1].strip() or exc}") from None
        raise
