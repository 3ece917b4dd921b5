"""Setting and removing flow-control rows: quotas, rate limits, concurrency limits, pauses and circuit
breakers. Each change is one audited write inside the caller's transaction; flow.py enforces the rows.

Rows carry record_version (their shape, flow.RECORD_VERSION) and revision (1 on creation, +1 per change).
Quotas, rate limits and concurrency limits also carry issuer_site and issuer_version (migration 0013): a change
made here is issued by this site, at version = its revision; operations/bundle_policies.py applies rows issued
elsewhere (from this site's policy authority).
"""

from __future__ import annotations

from typing import Any

from .. import clock
from ..errors import Conflict, NotFound
from ..ledger import Transaction
from . import audit, flow

QUEUE, KEY = "queue", "key"


def _revision(old: dict[str, Any] | None) -> int:
    return 1 if old is None else old["revision"] + 1


def _stamp(old: dict[str, Any] | None, actor: str) -> dict[str, Any]:
    return {"record_version": flow.RECORD_VERSION, "revision": _revision(old), "updated_at": clock.now(),
            "updated_by": actor}


def _issued_here(tx: Transaction, stamp: dict[str, Any]) -> dict[str, Any]:
    """A local change is issued by this site; its per-issuer version is the row's revision, which every change
    here bumps (so it only grows, also after a row applied from a policy authority)."""
    return {**stamp, "issuer_site": tx.site_id, "issuer_version": stamp["revision"]}


def _audit(tx: Transaction, action: str, *, actor: str, reason: str | None, ticket: str | None, target: str,
           details: dict[str, Any]) -> None:
    audit.append(tx, action, actor=actor, reason=reason, ticket=ticket, target=target, details=details)
    flow.forget(tx)


# -- quotas ------------------------------------------------------------------------------------------------

def set_quota(tx: Transaction, tenant: str, *, max_active: int | None, max_per_hour: int | None,
              burst: int | None, reason: str, ticket: str | None, actor: str) -> dict[str, Any]:
    """Set a tenant's quota; fields left None keep their current value."""
    old = flow.limits(tx).quotas.get(tenant)
    row = {
        "tenant": tenant,
        "max_active": max_active if max_active is not None else (old or {}).get("max_active"),
        "max_per_hour": max_per_hour if max_per_hour is not None else (old or {}).get("max_per_hour"),
        "burst": burst if burst is not None else (old or {}).get("burst"),
        "reason": reason, "ticket": ticket, **_issued_here(tx, _stamp(old, actor)),
    }
    tx.execute("quota_put", **row)
    if old is None or old["max_per_hour"] != row["max_per_hour"] or old["burst"] != row["burst"]:
        tx.execute("bucket_level_delete", bucket=f"quota:{tenant}")  # a new bucket starts full
    _audit(tx, "quota.set", actor=actor, reason=reason, ticket=ticket, target=tenant,
           details={"tenant": tenant, "before": public(old), "after": public(row)})
    return public(row)


def delete_quota(tx: Transaction, tenant: str, *, reason: str, ticket: str | None, actor: str) -> dict[str, Any]:
    old = flow.limits(tx).quotas.get(tenant)
    if old is None:
        raise NotFound(f"tenant {tenant} has no quota; see `quota list`")
    tx.execute("quota_delete", tenant=tenant)
    tx.execute("bucket_level_delete", bucket=f"quota:{tenant}")
    _audit(tx, "quota.delete", actor=actor, reason=reason, ticket=ticket, target=tenant,
           details={"tenant": tenant, "before": public(old)})
    return {"tenant": tenant, "deleted": True}


# -- rate limits -------------------------------------------------------------------------------------------

def set_rate_limit(tx: Transaction, *, tenant: str | None, job_type: str | None, key: str | None,
                   rate_per_second: float, burst: int, reason: str | None, ticket: str | None,
                   actor: str) -> dict[str, Any]:
    scope = flow.rate_scope(tenant, job_type, key)
    old = flow.limits(tx).rates.get(scope)
    row = {"scope": scope, "tenant": tenant, "job_type": job_type, "limit_key": key,
           "rate_per_second": rate_per_second, "burst": burst, "reason": reason, "ticket": ticket,
           **_issued_here(tx, _stamp(old, actor))}
    tx.execute("rate_limit_put", **row)
    tx.execute("bucket_level_delete", bucket=f"rate:{scope}")  # a new or changed bucket starts full
    _audit(tx, "ratelimit.set", actor=actor, reason=reason, ticket=ticket, target=scope,
           details={"tenant": tenant, "before": public(old), "after": public(row)})
    return public(row)


def delete_rate_limit(tx: Transaction, scope: str, *, reason: str | None, ticket: str | None,
                      actor: str) -> dict[str, Any]:
    old = flow.limits(tx).rates.get(scope)
    if old is None:
        raise NotFound(f"no rate limit on {scope}; see `ratelimit list`")
    tx.execute("rate_limit_delete", scope=scope)
    tx.execute("bucket_level_delete", bucket=f"rate:{scope}")
    _audit(tx, "ratelimit.delete", actor=actor, reason=reason, ticket=ticket, target=scope,
           details={"tenant": old["tenant"], "before": public(old)})
    return {"scope": scope, "deleted": True}


# -- concurrency limits ------------------------------------------------------------------------------------

def set_concurrency(tx: Transaction, key: str, *, max_active: int, reason: str | None, ticket: str | None,
                    actor: str) -> dict[str, Any]:
    old = flow.limits(tx).concurrency_rows.get(key)
    row = {"limit_key": key, "max_active": max_active, "reason": reason, "ticket": ticket,
           **_issued_here(tx, _stamp(old, actor))}
    tx.execute("concurrency_limit_put", **row)
    _audit(tx, "concurrency.set", actor=actor, reason=reason, ticket=ticket, target=key,
           details={"before": public(old), "after": public(row)})
    return public(row)


def delete_concurrency(tx: Transaction, key: str, *, reason: str | None, ticket: str | None,
                       actor: str) -> dict[str, Any]:
    old = flow.limits(tx).concurrency_rows.get(key)
    if old is None:
        raise NotFound(f"no concurrency limit on {key}; see `concurrency list`")
    tx.execute("concurrency_limit_delete", limit_key=key)
    _audit(tx, "concurrency.delete", actor=actor, reason=reason, ticket=ticket, target=key,
           details={"before": public(old)})
    return {"key": key, "deleted": True}


# -- pauses ------------------------------------------------------------------------------------------------

def pause(tx: Transaction, kind: str, name: str, *, reason: str, ticket: str | None, actor: str,
          tenant: str | None = None) -> dict[str, Any]:
    """Pause a queue (kind 'queue') or every job that carries a key (kind 'key'); their jobs stay queued.
    `tenant` names the tenant the pause concerns in the audit entry (a source's), so its tokens see it."""
    if (kind, name) in flow.limits(tx).paused:
        raise Conflict(f"{kind} {name} is already paused; resume it first to pause it with a new reason")
    row = {"kind": kind, "name": name, "record_version": flow.RECORD_VERSION, "reason": reason, "ticket": ticket,
           "paused_at": clock.now(), "paused_by": actor}
    tx.execute("pause_put", **{("target" if field == "name" else field): value for field, value in row.items()})
    _audit(tx, f"{kind}.pause", actor=actor, reason=reason, ticket=ticket, target=name,
           details={"tenant": tenant} if tenant else {})
    return public(row)


def resume(tx: Transaction, kind: str, name: str, *, reason: str | None, ticket: str | None,
           actor: str, tenant: str | None = None) -> dict[str, Any]:
    old = flow.limits(tx).paused.get((kind, name))
    if old is None:
        raise NotFound(f"{kind} {name} is not paused; see `queues list`")
    tx.execute("pause_delete", kind=kind, target=name)
    _audit(tx, f"{kind}.resume", actor=actor, reason=reason, ticket=ticket, target=name,
           details={"paused": public(old), **({"tenant": tenant} if tenant else {})})
    return {"kind": kind, "name": name, "paused": False}


# -- circuit breakers --------------------------------------------------------------------------------------

def set_breaker(tx: Transaction, key: str, *, failure_threshold: int, cooldown_seconds: float,
                reason: str | None, ticket: str | None, actor: str) -> dict[str, Any]:
    """Add or change a breaker on a key; a new breaker starts closed, a changed one keeps its state."""
    old = flow.limits(tx).breakers.get(key)
    state = old or {"state": flow.CLOSED, "consecutive_failures": 0, "opened_at": None, "probe_job_id": None}
    row = {"limit_key": key, "failure_threshold": failure_threshold, "cooldown_seconds": cooldown_seconds,
           "reason": reason, "ticket": ticket, "state": state["state"],
           "consecutive_failures": state["consecutive_failures"], "opened_at": state["opened_at"],
           "probe_job_id": state["probe_job_id"], **_stamp(old, actor)}
    tx.execute("breaker_put", **row)
    _audit(tx, "breaker.set", actor=actor, reason=reason, ticket=ticket, target=key,
           details={"before": public(old), "after": public(row)})
    return public(row)


def delete_breaker(tx: Transaction, key: str, *, reason: str | None, ticket: str | None,
                   actor: str) -> dict[str, Any]:
    old = flow.limits(tx).breakers.get(key)
    if old is None:
        raise NotFound(f"no circuit breaker on {key}; see `breaker list`")
    tx.execute("breaker_delete", limit_key=key)
    _audit(tx, "breaker.delete", actor=actor, reason=reason, ticket=ticket, target=key,
           details={"before": public(old)})
    return {"key": key, "deleted": True}


def public(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row as JSON: times as ISO 8601 text, `limit_key` as `key`."""
    if row is None:
        return None
    out = {("key" if name == "limit_key" else name): clock.iso(value) if hasattr(value, "isoformat") else value
           for name, value in row.items()}
    return out
