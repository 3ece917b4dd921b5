"""Replay operations: one job (`jobs replay`) and dead letters in bulk (`deadletter replay --tenant ...`).

A replay clones the payload into a new queued job with replay_of set and high priority; operator.replay
records it in history and in the audit log (with the reason, when given).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .. import validation
from ..errors import InvalidInput
from ..ledger import Ledger
from ..orchestrator import operator, rows
from ..orchestrator.states import next_state
from .registry import operation

REPLAY_PRIORITY = 100  # replays jump ahead of ordinary work (job priorities run -1000..1000)
MAX_BULK_REPLAY = validation.MAX_BULK_REPLAY


@operation("jobs.replay")
def replay_job(ledger: Ledger, job_id: Any, *, reason: Any = None, again: Any = False, actor: str = "cli",
               tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Replay one dead-lettered, failed or timed-out job (once, unless `again`)."""
    checked = validation.job_id(job_id)
    checked_reason = validation.text(reason, validation.MAX_REASON_CHARS, "reason")
    with ledger.transaction() as tx:
        (replay,) = operator.replay(tx, [checked], actor=actor, priority=REPLAY_PRIORITY, tenants=tenants,
                                    reason=checked_reason, again=validation.flag(again, "again"))
    return {**replay, "priority": REPLAY_PRIORITY, "state": "queued"}


@operation("deadletter.replay_bulk")
def replay_bulk(ledger: Ledger, *, job_ids: list[Any] | None = None, tenant: str | None = None,
                type: str | None = None, since: str | None = None, dry_run: bool = False, reason: Any = None,
                again: Any = False, actor: str = "cli", tenants: Collection[str] | None = None) -> dict[str, Any]:
    """Replay the listed jobs (those with a replay already only with `again`), or the dead letters of `tenant`
    and `type` that died at or after `since` and have no replay yet, all in one transaction. With dry_run, name
    them and change nothing."""
    checked_reason = validation.text(reason, validation.MAX_REASON_CHARS, "reason")
    dry_run, again = validation.flag(dry_run, "dry_run"), validation.flag(again, "again")
    filters = {"--tenant": tenant, "--type": type, "--since": since}
    if job_ids is not None:
        if any(value is not None for value in filters.values()):
            raise InvalidInput("name job ids or --tenant/--type/--since, not both")
        if not isinstance(job_ids, list) or not job_ids or len(job_ids) > MAX_BULK_REPLAY:
            raise InvalidInput(f"job ids must be a list of 1 to {MAX_BULK_REPLAY} ids")
        chosen = validation.job_ids(job_ids)
        if dry_run:
            read = ledger.read()
            for job_id in chosen:  # the checks operator.replay makes, without writing
                next_state(rows.any_job(read, job_id, tenants, doing="replayed")["state"], "replay")
            if not again:
                operator.refuse_replayed(read, chosen)
    else:
        missing = [flag for flag, value in filters.items() if value is None]
        if missing:
            raise InvalidInput(f"bulk replay needs {', '.join(missing)} (or name job ids)")
        for flag in ("--tenant", "--type"):
            validation.text(filters[flag], validation.MAX_NAME_CHARS, flag, required=True)
        moment = validation.timestamp(since, "--since")
        found = ledger.read().rows("deadletters_matching", tenant=tenant, job_type=type, since=moment,
                                   tenants=sorted(tenants) if tenants is not None else None,
                                   limit=MAX_BULK_REPLAY + 1)
        if len(found) > MAX_BULK_REPLAY:
            raise InvalidInput(f"more than {MAX_BULK_REPLAY} dead letters match; replay them in parts with a "
                               "later --since")
        chosen = [row["job_id"] for row in found]
        if not chosen:
            return {"dry_run": dry_run, "count": 0, "job_ids": [], "replays": []}
    if dry_run:
        return {"dry_run": True, "count": len(chosen), "job_ids": chosen, "replays": []}
    with ledger.transaction() as tx:
        replays = operator.replay(tx, chosen, actor=actor, priority=REPLAY_PRIORITY, tenants=tenants,
                                  reason=checked_reason, again=again)
    return {"dry_run": False, "count": len(replays), "job_ids": chosen, "replays": replays}
