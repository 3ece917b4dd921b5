"""Job operations: enqueue, claim, heartbeat, ack, fail, cancel, list, show, recover, dead letters."""

from __future__ import annotations

from typing import Any

from .. import validation
from ..errors import OrchError
from ..ledger import Ledger
from ..orchestrator import jobs as core
from ..orchestrator.states import DEAD_LETTER


def _single(outcomes: list[dict[str, Any] | OrchError]) -> dict[str, Any]:
    (outcome,) = outcomes
    if isinstance(outcome, OrchError):
        raise outcome
    return outcome


def enqueue(ledger: Ledger, spec: Any, *, actor: str = "cli") -> dict[str, Any]:
    record = validation.job_spec(spec)
    with ledger.transaction() as tx:
        ((job_id, created),) = core.enqueue(tx, [record], actor=actor)
    return {"job_id": job_id, "created": created, "tenant": record["tenant"], "type": record["job_type"]}


def enqueue_batch(ledger: Ledger, specs: list[Any], *, actor: str = "cli") -> dict[str, Any]:
    """All specs in one transaction; one invalid spec refuses the whole batch."""
    if len(specs) > validation.MAX_BATCH_JOBS:
        raise validation.InvalidInput(f"batch has {len(specs)} jobs; the limit is {validation.MAX_BATCH_JOBS}: "
                                      "split the file")
    records = [validation.job_spec(spec, f"job {number}") for number, spec in enumerate(specs, 1)]
    with ledger.transaction() as tx:
        results = core.enqueue(tx, records, actor=actor)
    created = sum(1 for _, was_created in results if was_created)
    return {"job_ids": [job_id for job_id, _ in results], "created": created, "existing": len(results) - created}


def claim(ledger: Ledger, *, worker_id: str, limit: int = 1, lease_seconds: float | None = None,
          queue: str | None = None, job_type: str | None = None) -> dict[str, Any]:
    validation.text(worker_id, 128, "worker id", required=True)
    limit = validation.claim_limit(limit)
    seconds = validation.lease_seconds(lease_seconds)
    with ledger.transaction() as tx:
        leases = core.claim(tx, worker_id=worker_id, limit=limit, lease_seconds=seconds, queue=queue,
                            job_type=job_type)
    return {"leases": leases}


def heartbeat(ledger: Ledger, job_id: str, lease_id: str, *, progress: float | None = None,
              message: str | None = None) -> dict[str, Any]:
    item = {"job_id": validation.job_id(job_id), "lease_id": lease_id,
            "progress": validation.progress(progress),
            "message": validation.text(message, validation.MAX_MESSAGE_CHARS, "message")}
    with ledger.transaction() as tx:
        return _single(core.heartbeat(tx, [item]))


def ack(ledger: Ledger, job_id: str, lease_id: str, *, artifacts: list[dict[str, str]] | None = None
        ) -> dict[str, Any]:
    item = {"job_id": validation.job_id(job_id), "lease_id": lease_id,
            "artifacts": validation.artifacts(artifacts or [])}
    with ledger.transaction() as tx:
        return _single(core.ack(tx, [item]))


def fail(ledger: Ledger, job_id: str, lease_id: str, *, error: str, retry_after: float | None = None,
         no_retry: bool = False) -> dict[str, Any]:
    item = {"job_id": validation.job_id(job_id), "lease_id": lease_id,
            "error": validation.text(error, validation.MAX_ERROR_CHARS, "error", required=True),
            "retry_after": validation.retry_after(retry_after), "no_retry": no_retry}
    with ledger.transaction() as tx:
        return _single(core.fail(tx, [item]))


def release(ledger: Ledger, job_id: str, lease_id: str) -> dict[str, Any]:
    with ledger.transaction() as tx:
        return _single(core.release(tx, [{"job_id": validation.job_id(job_id), "lease_id": lease_id}]))


def cancel(ledger: Ledger, job_id: str, *, reason: str, actor: str = "cli") -> dict[str, Any]:
    job_id = validation.job_id(job_id)
    reason = validation.text(reason, validation.MAX_REASON_CHARS, "reason", required=True)
    with ledger.transaction() as tx:
        return core.cancel(tx, job_id, reason=reason, actor=actor)


def recover(ledger: Ledger) -> dict[str, Any]:
    with ledger.transaction() as tx:
        recovered = core.maintain(tx, force=True)
    return {"recovered": recovered}


def list_jobs(ledger: Ledger, *, state: str | None = None, tenant: str | None = None,
              job_type: str | None = None, limit: int = 1000) -> dict[str, Any]:
    state = validation.state(state)
    limit = int(validation.number_in(limit, 1, 100_000, "limit"))
    rows = ledger.read().rows("jobs_list", state=state, tenant=tenant, job_type=job_type, limit=limit)
    return {"jobs": [core.render(row) for row in rows]}


def show(ledger: Ledger, job_id: str) -> dict[str, Any]:
    return core.show(ledger.read(), validation.job_id(job_id))


def deadletter_list(ledger: Ledger, *, tenant: str | None = None, job_type: str | None = None
                    ) -> dict[str, Any]:
    return list_jobs(ledger, state=DEAD_LETTER, tenant=tenant, job_type=job_type)


def replay(ledger: Ledger, job_ids: list[str], *, actor: str = "cli") -> dict[str, Any]:
    if not job_ids:
        raise validation.InvalidInput("name at least one job id to replay; see `deadletter list`")
    checked = [validation.job_id(job_id) for job_id in job_ids]
    with ledger.transaction() as tx:
        return {"replays": core.replay(tx, checked, actor=actor, priority=100)}
