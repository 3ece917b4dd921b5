"""`airgap-orch quota | ratelimit | concurrency | breaker | queues`: flow control, enforced at claim time."""

from __future__ import annotations

from typing import Any

import click

from .. import validation
from .context import command, invoke, settings
from .output import _table

_REASON = click.option("--reason", help=f"Why (at most {validation.MAX_REASON_CHARS} characters); recorded in the "
                                        "audit log.")
_REASON_REQUIRED = click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters); "
                                                 "recorded in the audit log.")
_TICKET = click.option("--ticket", help=f"Change ticket (at most {validation.MAX_TICKET_CHARS} characters).")


def _listing(result: dict[str, Any], field: str, columns: tuple[str, ...], empty: str) -> dict | None:
    if settings().json:
        return result
    click.echo(_table(result[field], columns) or empty)
    return None


# -- quota -------------------------------------------------------------------------------------------------

@click.group("quota")
def quota() -> None:
    """Per-tenant quotas: jobs active at once, claims per hour, burst."""


@command(quota, "set")
@click.option("--tenant", required=True)
@click.option("--max-active", type=int, help="Jobs of the tenant leased or running at once.")
@click.option("--max-per-hour", type=int, help="Claims per hour, refilled continuously.")
@click.option("--burst", type=int, help="Claims at once above the hourly pace (default: --max-per-hour).")
@click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters).")
@_TICKET
def quota_set(tenant: str, max_active: int | None, max_per_hour: int | None, burst: int | None, reason: str | None,
              ticket: str | None) -> dict:
    """Set a tenant's quota; options left out keep their value. Needs --reason."""
    return invoke("quotas.set", {"tenant": tenant, "max_active": max_active, "max_per_hour": max_per_hour,
                                          "burst": burst, "reason": reason, "ticket": ticket})


def _quota_rows(result: dict[str, Any]) -> dict | None:
    for item in result["quotas"]:
        item["active"], item["claims_left"] = item["use"]["active"], item["use"]["claims_left"]
    return _listing(result, "quotas", ("tenant", "max_active", "max_per_hour", "burst", "active", "claims_left",
                                       "revision", "reason"), "no quotas")


@command(quota, "show")
@click.option("--tenant")
def quota_show(tenant: str | None) -> dict | None:
    """Quotas (one tenant's with --tenant) and their use now."""
    return _quota_rows(invoke("quotas.list", {"tenant": tenant}))


@command(quota, "list")
def quota_list() -> dict | None:
    """Every quota and its use now."""
    return _quota_rows(invoke("quotas.list", {}))


@command(quota, "delete")
@click.option("--tenant", required=True)
@click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters).")
@_TICKET
def quota_delete(tenant: str, reason: str | None, ticket: str | None) -> dict:
    """Remove a tenant's quota. Needs --reason."""
    return invoke("quotas.delete", {"tenant": tenant, "reason": reason, "ticket": ticket})


# -- ratelimit ---------------------------------------------------------------------------------------------

@click.group("ratelimit")
def ratelimit() -> None:
    """Token buckets per {tenant, type} or per key jobs declare (--key host:nvd.nist.gov)."""


_TARGET = (click.option("--tenant"), click.option("--type", "job_type"),
           click.option("--key", help="A key jobs declare (jobs enqueue --key), instead of --tenant/--type."))


def _target(function: Any) -> Any:
    for option in reversed(_TARGET):
        function = option(function)
    return function


@command(ratelimit, "set")
@_target
@click.option("--rate", type=float, required=True, help="Jobs per second (above 0).")
@click.option("--burst", type=int, required=True, help="Jobs at once above that pace (at least 1).")
@_REASON_REQUIRED
@_TICKET
def ratelimit_set(tenant: str | None, job_type: str | None, key: str | None, rate: float, burst: int,
                  reason: str | None, ticket: str | None) -> dict:
    """Limit claims of {tenant, type} or of a key to RATE per second with bursts of BURST. Needs --reason."""
    return invoke("ratelimits.set", {"tenant": tenant, "type": job_type, "key": key, "rate": rate,
                                              "burst": burst, "reason": reason, "ticket": ticket})


@command(ratelimit, "list")
def ratelimit_list() -> dict | None:
    """Rate limits and the tokens their buckets hold now."""
    return _listing(invoke("ratelimits.list", {}), "rate_limits",
                    ("scope", "rate_per_second", "burst", "tokens", "revision", "reason"), "no rate limits")


@command(ratelimit, "delete")
@_target
@_REASON_REQUIRED
@_TICKET
def ratelimit_delete(tenant: str | None, job_type: str | None, key: str | None, reason: str | None,
                     ticket: str | None) -> dict:
    """Remove a rate limit. Needs --reason."""
    return invoke("ratelimits.delete", {"tenant": tenant, "type": job_type, "key": key, "reason": reason,
                                                 "ticket": ticket})


# -- concurrency -------------------------------------------------------------------------------------------

@click.group("concurrency")
def concurrency() -> None:
    """At most N jobs leased or running at once per key (tenant:T, type:JT, or a key jobs declare)."""


@command(concurrency, "set")
@click.option("--key", required=True, help="tenant:T, type:JT or a key jobs declare, e.g. host:nvd.nist.gov.")
@click.option("--max", "most", type=int, required=True, help="Jobs at once (at least 1).")
@_REASON_REQUIRED
@_TICKET
def concurrency_set(key: str, most: int, reason: str | None, ticket: str | None) -> dict:
    """Limit jobs carrying KEY to MAX leased or running at once, across all workers. Needs --reason."""
    return invoke("concurrency.set", {"key": key, "max": most, "reason": reason, "ticket": ticket})


@command(concurrency, "list")
def concurrency_list() -> dict | None:
    """Concurrency limits and how many jobs hold each key now."""
    return _listing(invoke("concurrency.list", {}), "concurrency_limits",
                    ("key", "max_active", "active", "revision", "reason"), "no concurrency limits")


@command(concurrency, "delete")
@click.option("--key", required=True)
@_REASON_REQUIRED
@_TICKET
def concurrency_delete(key: str, reason: str | None, ticket: str | None) -> dict:
    """Remove a concurrency limit. Needs --reason."""
    return invoke("concurrency.delete", {"key": key, "reason": reason, "ticket": ticket})


# -- breaker -----------------------------------------------------------------------------------------------

@click.group("breaker")
def breaker() -> None:
    """Circuit breakers per key: open after N consecutive failures, one probe after a cool-down."""


@command(breaker, "set")
@click.option("--key", required=True, help="tenant:T, type:JT or a key jobs declare, e.g. host:nvd.nist.gov.")
@click.option("--failures", type=int, required=True, help="Consecutive failures that open the breaker.")
@click.option("--cooldown", type=float, required=True, help="Seconds open before one probe job may run.")
@_REASON_REQUIRED
@_TICKET
def breaker_set(key: str, failures: int, cooldown: float, reason: str | None, ticket: str | None) -> dict:
    """Add or change the breaker on KEY (a changed breaker keeps its state). Needs --reason."""
    return invoke("breakers.set", {"key": key, "failures": failures, "cooldown": cooldown,
                                            "reason": reason, "ticket": ticket})


@command(breaker, "list")
def breaker_list() -> dict | None:
    """Circuit breakers and their state."""
    return _listing(invoke("breakers.list", {}), "breakers",
                    ("key", "state", "consecutive_failures", "failure_threshold", "cooldown_seconds", "opened_at",
                     "probe_job_id"), "no circuit breakers")


@command(breaker, "delete")
@click.option("--key", required=True)
@_REASON_REQUIRED
@_TICKET
def breaker_delete(key: str, reason: str | None, ticket: str | None) -> dict:
    """Remove a circuit breaker (its jobs run unguarded). Needs --reason."""
    return invoke("breakers.delete", {"key": key, "reason": reason, "ticket": ticket})


# -- queues ------------------------------------------------------------------------------------------------

@click.group("queues")
def queues() -> None:
    """Queues: pause, resume, and what each holds."""


@command(queues, "pause")
@click.argument("queue")
@click.option("--reason", help=f"Why (required, at most {validation.MAX_REASON_CHARS} characters).")
@_TICKET
def queues_pause(queue: str, reason: str | None, ticket: str | None) -> dict:
    """Pause QUEUE: its jobs stay queued and none is claimed until `queues resume`. Needs --reason."""
    return invoke("queues.pause", {"queue": queue, "reason": reason, "ticket": ticket})


@command(queues, "resume")
@click.argument("queue")
@_REASON
@_TICKET
def queues_resume(queue: str, reason: str | None, ticket: str | None) -> dict:
    """Resume a paused QUEUE."""
    return invoke("queues.resume", {"queue": queue, "reason": reason, "ticket": ticket})


@command(queues, "list")
def queues_list() -> dict | None:
    """Queues with active jobs or a pause: job counts by state, and who paused them why."""
    result = invoke("queues.list", {})
    if settings().json:
        return result
    rows = [{"queue": item["queue"], **{state: item["jobs"].get(state, 0)
                                        for state in ("waiting", "queued", "leased", "running")},
             "paused": f"since {item['paused']['paused_at']}: {item['paused']['reason']}" if item["paused"] else "no"}
            for item in result["queues"]]
    click.echo(_table(rows, ("queue", "waiting", "queued", "leased", "running", "paused")) or "no queues")
    return None


GROUPS = (quota, ratelimit, concurrency, breaker, queues)
