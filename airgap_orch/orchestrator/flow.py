"""Flow control, enforced inside the claim transaction so it holds however many workers run.

What may hold a ready job back (each a plain, versioned ledger row; ledger/migrations/0005_flow_control.sql):
- a paused queue, or a paused key the job carries (`pauses`);
- an open circuit breaker on one of its keys (`circuit_breakers`);
- a concurrency limit on one of its keys: at most N of them leased or running (`concurrency_limits`);
- its tenant's quota: max_active leased or running, max_per_hour claims with a burst (`quotas`);
- a rate limit on its {tenant, type} or on a key it declares: a token bucket (`rate_limits`).

A job's keys are 'tenant:<tenant>', 'type:<job type>' and the keys it declares (`limit_keys`, e.g.
'host:nvd.nist.gov'). A token bucket holds up to `burst` tokens and refills at `rate` per second by elapsed
time; each claim takes one token from every bucket the job falls under.

claims.claim() asks a Walk which groups are blocked as a whole (they are left out of the candidate query,
so a throttled tenant's backlog never hides another tenant's jobs), admits each candidate in claim order,
then settles: bucket levels and breaker probes are written back in the same transaction.
"""

from __future__ import annotations

import collections
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .. import clock
from ..ledger import Transaction

RECORD_VERSION = 1  # shape of the rows in quotas, rate_limits, concurrency_limits, pauses, circuit_breakers
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_NOTED_MAX = 100_000  # throttled jobs remembered so each is reported once per reason


@dataclass
class Limits:
    """Every flow-control row, loaded once and kept in the ledger cache until a change or a rollback."""

    quotas: dict[str, dict[str, Any]]
    rates: dict[str, dict[str, Any]]
    concurrency_rows: dict[str, dict[str, Any]]
    paused: dict[tuple[str, str], dict[str, Any]]
    breakers: dict[str, dict[str, Any]]
    levels: dict[str, tuple[float, datetime]]

    @property
    def empty(self) -> bool:
        return not (self.quotas or self.rates or self.concurrency_rows or self.paused or self.breakers)

    @property
    def counts_active(self) -> bool:
        return bool(self.concurrency_rows) or any(row["max_active"] is not None for row in self.quotas.values())


def limits(tx: Transaction) -> Limits:
    cached = tx.cache.get("flow")
    if cached is None:
        generation = tx.cache.get("flow_generation", 0)
        cached = Limits(
            quotas={row["tenant"]: row for row in tx.rows("flow_quotas")},
            rates={row["scope"]: row for row in tx.rows("flow_rate_limits")},
            concurrency_rows={row["limit_key"]: row for row in tx.rows("flow_concurrency_limits")},
            paused={(row["kind"], row["name"]): row for row in tx.rows("flow_pauses")},
            breakers={row["limit_key"]: row for row in tx.rows("flow_breakers")},
            levels={bucket: (tokens, at) for bucket, tokens, at in tx.fetch("flow_bucket_levels")},
        )
        if tx.cache.get("flow_generation", 0) == generation:  # no change landed while this loaded
            tx.cache["flow"] = cached
    return cached


def active_counts(tx: Transaction) -> collections.Counter[str]:
    """Leased and running jobs by key ('tenant:T', 'type:JT' and declared keys)."""
    active: collections.Counter[str] = collections.Counter()
    for tenant, job_type, declared, jobs in tx.fetch("active_by_keys"):
        for key in job_keys(tenant, job_type, declared):
            active[key] += jobs
    return active


def forget(tx: Transaction) -> None:
    """Drop the cached limits after a change to them (they reload on the next claim). The generation stops a
    reader that loaded before the change from caching what it read."""
    tx.cache["flow_generation"] = tx.cache.get("flow_generation", 0) + 1
    tx.cache.pop("flow", None)


def job_keys(tenant: str, job_type: str, declared: list[str] | None) -> list[str]:
    return [f"tenant:{tenant}", f"type:{job_type}", *(declared or ())]


def rate_scope(tenant: str | None, job_type: str | None, key: str | None) -> str:
    """The rate_limits row a `ratelimit set` names: {tenant, type}, or a declared key."""
    return key if key is not None else f"tenant:{tenant}/type:{job_type}"


@dataclass
class Bucket:
    name: str  # bucket_levels.bucket
    label: str  # what an operator sees: 'rate limit tenant:a/type:x', 'quota max_per_hour for tenant a'
    rate: float  # tokens per second
    burst: float

    def level(self, levels: dict[str, tuple[float, datetime]], now: datetime) -> float:
        tokens, at = levels.get(self.name, (self.burst, now))
        return min(self.burst, tokens + max(0.0, (now - at).total_seconds()) * self.rate)

    def eligible_at(self, level: float, now: datetime) -> datetime:
        return now + timedelta(seconds=(1.0 - level) / self.rate)


def quota_burst(quota: dict[str, Any]) -> int | None:
    """The claims a quota's bucket holds at most: its burst, which defaults to max_per_hour."""
    return quota["burst"] if quota["burst"] is not None else quota["max_per_hour"]


def buckets_for(found: Limits, tenant: str, job_type: str, declared: list[str] | None) -> list[Bucket]:
    out = []
    quota = found.quotas.get(tenant)
    if quota is not None and quota["max_per_hour"] is not None:
        out.append(Bucket(f"quota:{tenant}", f"quota max_per_hour of tenant {tenant}", quota["max_per_hour"] / 3600.0,
                          float(quota_burst(quota))))
    for scope in (rate_scope(tenant, job_type, None), *(declared or ())):
        row = found.rates.get(scope)
        if row is not None:
            out.append(rate_bucket(scope, row))
    return out


def rate_bucket(scope: str, row: dict[str, Any]) -> Bucket:
    return Bucket(f"rate:{scope}", f"rate limit {scope}", row["rate_per_second"], float(row["burst"]))


NOTHING_BLOCKED: dict[str, list[str]] = {f"blocked_{name}": [] for name in ("queues", "tenants", "types", "scopes",
                                                                             "keys")}


@dataclass
class Throttle:
    reason: str
    eligible_at: datetime | None  # None: it waits for an event, not a time
    waits_for: str = ""  # that event: "resumed", "a running job ends", "the probe ends"

    def render(self) -> dict[str, Any]:
        return {"throttled_by": self.reason, "eligible_at": clock.iso(self.eligible_at),
                "waits_for": self.waits_for or None}


@dataclass
class Walk:
    """One claim's admission pass over the candidates, in claim order."""

    tx: Transaction
    found: Limits
    now: datetime
    active: collections.Counter[str] = field(default_factory=collections.Counter)
    levels: dict[str, tuple[float, datetime]] = field(default_factory=dict)  # changed bucket levels
    probes: dict[str, str] = field(default_factory=dict)  # breaker key -> probe job id chosen now

    @classmethod
    def start(cls, tx: Transaction, found: Limits, now: datetime) -> Walk:
        return cls(tx, found, now, active_counts(tx) if found.counts_active else collections.Counter())

    # -- what is blocked as a whole (left out of the candidate query) ---------------------------------
    def blocked(self) -> dict[str, list[str]]:
        found, now = self.found, self.now
        groups: dict[str, set[str]] = {"queues": set(), "tenants": set(), "types": set(), "scopes": set(),
                                       "keys": set()}

        def block(key: str) -> None:
            kind, _, name = key.partition(":")
            if kind == "tenant":
                groups["tenants"].add(name)
            elif kind == "type":
                groups["types"].add(name)
            else:
                groups["keys"].add(key)

        for kind, name in found.paused:
            groups["queues"].add(name) if kind == "queue" else block(name)
        for key, breaker in found.breakers.items():
            if self._breaker_blocks(breaker, None) is not None:
                block(key)
        for key, row in found.concurrency_rows.items():
            if self.active[key] >= row["max_active"]:
                block(key)
        for tenant, quota in found.quotas.items():
            if quota["max_active"] is not None and self.active[f"tenant:{tenant}"] >= quota["max_active"]:
                block(f"tenant:{tenant}")
        levels = {**found.levels, **self.levels}
        for tenant in found.quotas:
            for bucket in buckets_for(found, tenant, "", None):
                if bucket.level(levels, now) < 1.0:
                    block(f"tenant:{tenant}")
        for scope, row in found.rates.items():
            if rate_bucket(scope, row).level(levels, now) < 1.0:
                if row["limit_key"] is not None:
                    block(scope)
                else:
                    groups["scopes"].add(f"{row['tenant']}/{row['job_type']}")
        return {f"blocked_{name}": sorted(members) for name, members in groups.items()}

    def has_room(self, limit: int) -> bool:
        """Whether `limit` more leases fit under every limit, so none can bind inside this claim (paused and
        fully blocked groups aside: the claim query leaves those out)."""
        found, now = self.found, self.now
        levels = {**found.levels, **self.levels}
        if any(breaker["state"] != CLOSED for breaker in found.breakers.values()):
            return False
        if any(self.active[key] + limit > row["max_active"] for key, row in found.concurrency_rows.items()):
            return False
        for tenant, quota in found.quotas.items():
            if quota["max_active"] is not None and self.active[f"tenant:{tenant}"] + limit > quota["max_active"]:
                return False
        buckets = [bucket for tenant in found.quotas for bucket in buckets_for(found, tenant, "", None)]
        buckets += [rate_bucket(scope, row) for scope, row in found.rates.items()]
        return all(bucket.level(levels, now) >= limit for bucket in buckets)

    def count(self, leased: list[dict[str, Any]]) -> None:
        """Take slots and tokens for jobs leased without a walk (has_room() held before the claim)."""
        for job in leased:
            held = self.admit(job)
            if held is not None:  # pragma: no cover - has_room() rules this out
                raise AssertionError(f"job {job['job_id']} was leased past {held.reason}")

    # -- one job ----------------------------------------------------------------------------------------
    def admit(self, job: dict[str, Any], *, dry: bool = False) -> Throttle | None:
        """None when the job may be leased now (and, unless dry, count it); else what holds it back."""
        found, now = self.found, self.now
        keys = job_keys(job["tenant"], job["job_type"], job.get("limit_keys"))
        if ("queue", job["queue"]) in found.paused:
            return Throttle(f"queue {job['queue']} paused", None, "resumed")
        for key in keys:
            if ("key", key) in found.paused:
                return Throttle(f"{key} paused", None, "resumed")
        probes = []
        for key in keys:
            breaker = found.breakers.get(key)
            if breaker is None:
                continue
            held = self._breaker_blocks(breaker, job["job_id"])
            if held is not None:
                return held
            if breaker["state"] != CLOSED:
                probes.append(key)
        for key in keys:
            row = found.concurrency_rows.get(key)
            if row is not None and self.active[key] >= row["max_active"]:
                return Throttle(f"concurrency limit {key} ({row['max_active']} at once)", None, "a running job ends")
        quota = found.quotas.get(job["tenant"])
        if quota is not None and quota["max_active"] is not None and \
                self.active[f"tenant:{job['tenant']}"] >= quota["max_active"]:
            return Throttle(f"quota max_active of tenant {job['tenant']} ({quota['max_active']})", None,
                            "a running job ends")
        buckets = buckets_for(found, job["tenant"], job["job_type"], job.get("limit_keys"))
        current = {**found.levels, **self.levels}
        for bucket in buckets:
            level = bucket.level(current, now)
            if level < 1.0:
                return Throttle(bucket.label, bucket.eligible_at(level, now))
        if not dry:
            for key in keys:
                self.active[key] += 1
            for bucket in buckets:
                self.levels[bucket.name] = (bucket.level(current, now) - 1.0, now)
            for key in probes:
                self.probes[key] = job["job_id"]
        return None

    def _breaker_blocks(self, breaker: dict[str, Any], job_id: str | None) -> Throttle | None:
        if breaker["state"] == CLOSED:
            return None
        reopen = breaker["opened_at"] + timedelta(seconds=breaker["cooldown_seconds"])
        probe = self.probes.get(breaker["limit_key"], breaker["probe_job_id"])
        if breaker["state"] == OPEN and self.now < reopen:
            return Throttle(f"circuit breaker {breaker['limit_key']} open", reopen)
        if probe is not None and probe != job_id:
            return Throttle(f"circuit breaker {breaker['limit_key']} half-open, probe {probe} running", None,
                            "the probe ends")
        return None  # cooled down and no probe yet (or this job is the probe)

    # -- write back ---------------------------------------------------------------------------------------
    def settle(self, leased_ids: set[str]) -> None:
        """Persist the bucket levels taken and the probes started by the jobs actually leased."""
        tx, found = self.tx, self.found
        for query, buckets in (("bucket_levels_update", [name for name in self.levels if name in found.levels]),
                               ("bucket_levels_insert", [name for name in self.levels if name not in found.levels])):
            if buckets:  # every level taken in this walk is as of self.now
                tx.execute(query, buckets=buckets, tokens=[self.levels[name][0] for name in buckets],
                           refilled_at=self.now)
        found.levels.update(self.levels)
        for key, job_id in self.probes.items():
            if job_id in leased_ids:
                _put_breaker(tx, {**found.breakers[key], "state": HALF_OPEN, "probe_job_id": job_id,
                                  "updated_at": self.now})


# What held a job back, as a small fixed set (the metrics' `reason` label), from the Throttle reasons above: the
# reason text names the limit and may name a tenant or key, the kind does not.
THROTTLE_KINDS = (("circuit breaker ", "circuit_breaker"), ("concurrency limit ", "concurrency"),
                  ("quota max_active ", "quota_active"), ("quota max_per_hour ", "quota_rate"),
                  ("rate limit ", "rate_limit"))


def throttle_kind(reason: str) -> str:
    """The kind of a Throttle reason (or of a job.throttled history reason, "throttled: <reason>; ...")."""
    reason = reason.removeprefix("throttled: ")
    for prefix, kind in THROTTLE_KINDS:
        if reason.startswith(prefix):
            return kind
    return "paused" if reason.rsplit("; eligible ", 1)[0].endswith(" paused") else "other"


def explain(tx: Transaction, job: dict[str, Any]) -> dict[str, Any] | None:
    """For a queued job: what holds it back now and until when (None if nothing does)."""
    found = limits(tx)
    if found.empty or job["state"] != "queued":
        return None
    throttle = Walk.start(tx, found, clock.now()).admit(job, dry=True)
    return throttle.render() if throttle is not None else None


def throttled(tx: Transaction, *, tenants: Collection[str] | None, after: tuple[datetime | None, str | None],
              limit: int) -> tuple[list[tuple[dict[str, Any], Throttle]], dict[str, Any] | None]:
    """Queued, due jobs a limit holds back now, in (created_at, job_id) order after `after`, with what holds each:
    at most `limit` rows are read (the groups Walk.blocked() names; a row flow control admits after all is left
    out). Also returns the last row read (where the next page starts), or None when no more rows followed."""
    found = limits(tx)
    if found.empty:
        return [], None
    now = clock.now()
    walk = Walk.start(tx, found, now)
    blocked = walk.blocked()
    if not any(blocked.values()):
        return [], None
    rows = tx.rows("throttled_page", **blocked, site_id=tx.site_id, queue=None, job_type=None, now=now,
                   tenants=sorted(tenants) if tenants is not None else None, after_created_at=after[0],
                   after_job_id=after[1], limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    held = [(row, throttle) for row in rows if (throttle := walk.admit(row, dry=True)) is not None]
    return held, (rows[-1] if more and rows else None)


def noted(tx: Transaction, job_id: str, throttle: Throttle) -> bool:
    """True the first time a job is held back for this reason (so it is reported once, not every claim)."""
    seen = tx.cache.setdefault("throttled", {})
    if seen.get(job_id) == throttle.reason:
        return False
    if len(seen) >= _NOTED_MAX:
        seen.clear()
    seen[job_id] = throttle.reason
    return True


# -- circuit breakers: outcomes ------------------------------------------------------------------------

SUCCESS, FAILURE, NEUTRAL = "success", "failure", "neutral"


def record_outcomes(tx: Transaction, outcomes: list[tuple[dict[str, Any], str]]) -> None:
    """Feed finished attempts (job row, SUCCESS/FAILURE/NEUTRAL) to the breakers on their keys."""
    found = limits(tx)
    if not found.breakers:
        return
    now = clock.now()
    for job, outcome in outcomes:
        for key in job_keys(job["tenant"], job["job_type"], job.get("limit_keys")):
            breaker = found.breakers.get(key)
            if breaker is None:
                continue
            changed = _after(breaker, job["job_id"], outcome, now)
            if changed is not breaker:
                _put_breaker(tx, changed)


def _after(breaker: dict[str, Any], job_id: str, outcome: str, now: datetime) -> dict[str, Any]:
    """The breaker row after one attempt's outcome (the same object when nothing changes)."""
    is_probe = breaker["probe_job_id"] == job_id
    if outcome == NEUTRAL:
        return {**breaker, "probe_job_id": None, "updated_at": now} if is_probe else breaker
    if outcome == SUCCESS:
        if breaker["state"] == HALF_OPEN and not is_probe:
            return breaker
        if breaker["state"] == CLOSED and breaker["consecutive_failures"] == 0:
            return breaker
        if breaker["state"] == OPEN:
            return breaker  # a job leased before the breaker opened; the probe decides
        return {**breaker, "state": CLOSED, "consecutive_failures": 0, "opened_at": None, "probe_job_id": None,
                "updated_at": now}
    failures = breaker["consecutive_failures"] + 1
    if breaker["state"] == HALF_OPEN and is_probe or \
            breaker["state"] == CLOSED and failures >= breaker["failure_threshold"]:
        return {**breaker, "state": OPEN, "consecutive_failures": failures, "opened_at": now, "probe_job_id": None,
                "updated_at": now}
    return {**breaker, "consecutive_failures": failures, "updated_at": now}


def _put_breaker(tx: Transaction, row: dict[str, Any]) -> None:
    tx.execute("breaker_put", **row)
    limits(tx).breakers[row["limit_key"]] = row
