"""Flow-control operations: quotas, rate limits, concurrency limits, queue pauses and circuit breakers.

Every check runs before the transaction opens, so a refused change leaves the ledger as it was.
orchestrator/limits.py writes the rows (each change audited); orchestrator/flow.py enforces them.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from .. import clock, validation
from ..errors import Forbidden, InvalidInput
from ..ledger import Ledger
from ..orchestrator import flow
from ..orchestrator import limits as core
from .registry import operation

Tenants = Collection[str] | None


def _may_touch(tenants: Tenants, *, tenant: str | None = None, key: str | None = None) -> None:
    """A caller limited to some tenants may change limits on those tenants only."""
    if tenants is None:
        return
    if key is not None and key.startswith("tenant:"):
        tenant = key.removeprefix("tenant:")
    if tenant is None or tenant not in tenants:
        raise Forbidden("this caller is limited to tenants " + ", ".join(sorted(tenants)) +
                        "; limits on other tenants, types, queues or keys need an unrestricted token")


def _visible(tenants: Tenants, *, tenant: str | None = None, key: str | None = None) -> bool:
    try:
        _may_touch(tenants, tenant=tenant, key=key)
    except Forbidden:
        return False
    return True


def _name(value: Any, what: str) -> str:
    return validation.name(value, what)


# -- quotas ------------------------------------------------------------------------------------------------

@operation("quotas.set")
def quota_set(ledger: Ledger, *, tenant: Any, max_active: Any = None, max_per_hour: Any = None, burst: Any = None,
              reason: Any = None, ticket: Any = None, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """Set a tenant's quota (fields not given keep their value); needs a reason."""
    _name(tenant, "tenant")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket)
    assert checked_reason is not None
    values = {field: None if value is None else validation.whole_number(value, field.replace("_", "-"))
              for field, value in (("max_active", max_active), ("max_per_hour", max_per_hour), ("burst", burst))}
    if all(value is None for value in values.values()):
        raise InvalidInput("name at least one of --max-active, --max-per-hour, --burst")
    _may_touch(tenants, tenant=tenant)
    with ledger.transaction() as tx:
        return core.set_quota(tx, tenant, **values, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("quotas.delete")
def quota_delete(ledger: Ledger, *, tenant: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
                 tenants: Tenants = None) -> dict[str, Any]:
    _name(tenant, "tenant")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket)
    assert checked_reason is not None
    _may_touch(tenants, tenant=tenant)
    with ledger.transaction() as tx:
        return core.delete_quota(tx, tenant, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("quotas.list")
def quota_list(ledger: Ledger, *, tenant: str | None = None, actor: str = "cli",
               tenants: Tenants = None) -> dict[str, Any]:
    """Quotas with their use now: jobs leased or running, and claims left in the per-hour bucket."""
    with ledger.snapshot() as read:
        found, now = flow.limits(read), clock.now()
        active = flow.active_counts(read)
    out = []
    for name, row in found.quotas.items():
        if (tenant is not None and name != tenant) or not _visible(tenants, tenant=name):
            continue
        item = core.public(row)
        assert item is not None
        item["burst"] = flow.quota_burst(row)  # the effective burst, not the unset column
        buckets = flow.buckets_for(found, name, "", None)
        item["use"] = {"active": active[f"tenant:{name}"],
                       "claims_left": round(buckets[0].level(found.levels, now), 3) if buckets else None}
        out.append(item)
    return {"quotas": out}


# -- rate limits -------------------------------------------------------------------------------------------

def _rate_target(tenant: Any, job_type: Any, key: Any) -> tuple[str | None, str | None, str | None]:
    if key is not None:
        if tenant is not None or job_type is not None:
            raise InvalidInput("give either --key, or --tenant with --type, not both")
        return None, None, validation.flow_key(key)
    if tenant is None or job_type is None:
        raise InvalidInput("a rate limit needs --tenant and --type (or --key for a key jobs declare)")
    return _name(tenant, "tenant"), _name(job_type, "type"), None


@operation("ratelimits.set")
def ratelimit_set(ledger: Ledger, *, tenant: Any = None, type: Any = None, key: Any = None, rate: Any = None,
                  burst: Any = None, reason: Any = None, ticket: Any = None, actor: str = "cli",
                  tenants: Tenants = None) -> dict[str, Any]:
    """A token bucket on {tenant, type} or on a declared key: `rate` jobs per second, up to `burst` at once."""
    target = _rate_target(tenant, type, key)
    checked_rate = validation.rate(rate)
    checked_burst = validation.whole_number(burst, "burst")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, )
    _may_touch(tenants, tenant=target[0], key=target[2])
    with ledger.transaction() as tx:
        return core.set_rate_limit(tx, tenant=target[0], job_type=target[1], key=target[2],
                                   rate_per_second=checked_rate, burst=checked_burst, reason=checked_reason,
                                   ticket=checked_ticket, actor=actor)


@operation("ratelimits.delete")
def ratelimit_delete(ledger: Ledger, *, tenant: Any = None, type: Any = None, key: Any = None, reason: Any = None,
                     ticket: Any = None, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    target = _rate_target(tenant, type, key)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, )
    _may_touch(tenants, tenant=target[0], key=target[2])
    with ledger.transaction() as tx:
        return core.delete_rate_limit(tx, flow.rate_scope(*target), reason=checked_reason, ticket=checked_ticket,
                                      actor=actor)


@operation("ratelimits.list")
def ratelimit_list(ledger: Ledger, *, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """Rate limits with the tokens their buckets hold now."""
    with ledger.snapshot() as read:
        found, now = flow.limits(read), clock.now()
    out = []
    for scope, row in found.rates.items():
        if not _visible(tenants, tenant=row["tenant"], key=row["limit_key"]):
            continue
        item = core.public(row)
        assert item is not None
        item["tokens"] = round(flow.rate_bucket(scope, row).level(found.levels, now), 3)
        out.append(item)
    return {"rate_limits": out}


# -- concurrency limits ------------------------------------------------------------------------------------

@operation("concurrency.set")
def concurrency_set(ledger: Ledger, *, key: Any, max: Any = None, reason: Any = None, ticket: Any = None,
                    actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """At most `max` jobs carrying `key` leased or running at once, across all workers."""
    checked_key = validation.flow_key(key)
    most = validation.whole_number(max, "max")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, )
    _may_touch(tenants, key=checked_key)
    with ledger.transaction() as tx:
        return core.set_concurrency(tx, checked_key, max_active=most, reason=checked_reason, ticket=checked_ticket,
                                    actor=actor)


@operation("concurrency.delete")
def concurrency_delete(ledger: Ledger, *, key: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
                       tenants: Tenants = None) -> dict[str, Any]:
    checked_key = validation.flow_key(key)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, )
    _may_touch(tenants, key=checked_key)
    with ledger.transaction() as tx:
        return core.delete_concurrency(tx, checked_key, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("concurrency.list")
def concurrency_list(ledger: Ledger, *, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """Concurrency limits with how many jobs hold each key now."""
    with ledger.snapshot() as read:
        active = flow.active_counts(read)
        found = flow.limits(read)
    out = []
    for key, row in found.concurrency_rows.items():
        if _visible(tenants, key=key):
            item = core.public(row)
            assert item is not None
            item["active"] = active[key]
            out.append(item)
    return {"concurrency_limits": out}


# -- queues ------------------------------------------------------------------------------------------------

@operation("queues.pause")
def queue_pause(ledger: Ledger, *, queue: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
                tenants: Tenants = None) -> dict[str, Any]:
    """Pause a queue: its jobs stay queued and are not claimed until it is resumed."""
    _name(queue, "queue")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket)
    assert checked_reason is not None
    _may_touch(tenants)
    with ledger.transaction() as tx:
        return core.pause(tx, core.QUEUE, queue, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("queues.resume")
def queue_resume(ledger: Ledger, *, queue: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
                 tenants: Tenants = None) -> dict[str, Any]:
    _name(queue, "queue")
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, reason_required=False)
    _may_touch(tenants)
    with ledger.transaction() as tx:
        return core.resume(tx, core.QUEUE, queue, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("queues.list")
def queue_list(ledger: Ledger, *, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """Queues with active jobs or a pause: job counts by state, the pause if any, when the ready job that has waited
    longest became ready (`oldest_ready_at`, `oldest_ready_seconds`) and how many jobs ended in the last hour
    (`finished_last_hour`)."""
    counts: dict[str, dict[str, int]] = {}
    now = clock.now()
    scope = sorted(tenants) if tenants is not None else None
    with ledger.snapshot() as read:
        for queue, state, jobs in read.fetch("queue_counts", tenants=scope):
            counts.setdefault(queue, {})[state] = jobs
        oldest = dict(read.fetch("queue_oldest_ready", now=now, tenants=scope))
        finished = dict(read.fetch("queue_finished_since", since=now - timedelta(hours=1), tenants=scope))
        found = flow.limits(read)
    paused = {name: row for (kind, name), row in found.paused.items() if kind == core.QUEUE}
    return {"queues": [{"queue": name, "jobs": counts.get(name, {}), "paused": core.public(paused.get(name)),
                        "oldest_ready_at": clock.iso(oldest.get(name)),
                        "oldest_ready_seconds": round((now - oldest[name]).total_seconds(), 3) if name in oldest
                        else None, "finished_last_hour": finished.get(name, 0)}
                       for name in sorted(set(counts) | set(paused) | set(finished))]}


# -- circuit breakers --------------------------------------------------------------------------------------

@operation("breakers.set")
def breaker_set(ledger: Ledger, *, key: Any, failures: Any = None, cooldown: Any = None, reason: Any = None,
                ticket: Any = None, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    """A breaker on `key`: opens after `failures` consecutive failures, lets one probe job through after
    `cooldown` seconds, closes when the probe succeeds."""
    checked_key = validation.flow_key(key)
    threshold = validation.whole_number(failures, "failures", high=validation.MAX_BREAKER_FAILURES)
    cool = float(validation.number_in(cooldown, validation.MIN_COOLDOWN_SECONDS, validation.MAX_COOLDOWN_SECONDS,
                                      "cooldown seconds"))
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, )
    _may_touch(tenants, key=checked_key)
    with ledger.transaction() as tx:
        return core.set_breaker(tx, checked_key, failure_threshold=threshold, cooldown_seconds=cool,
                                reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("breakers.delete")
def breaker_delete(ledger: Ledger, *, key: Any, reason: Any = None, ticket: Any = None, actor: str = "cli",
                   tenants: Tenants = None) -> dict[str, Any]:
    checked_key = validation.flow_key(key)
    checked_reason, checked_ticket = validation.reason_and_ticket(reason, ticket, )
    _may_touch(tenants, key=checked_key)
    with ledger.transaction() as tx:
        return core.delete_breaker(tx, checked_key, reason=checked_reason, ticket=checked_ticket, actor=actor)


@operation("breakers.list")
def breaker_list(ledger: Ledger, *, actor: str = "cli", tenants: Tenants = None) -> dict[str, Any]:
    with ledger.snapshot() as read:
        rows = flow.limits(read).breakers
    return {"breakers": [core.public(row) for key, row in rows.items() if _visible(tenants, key=key)]}
