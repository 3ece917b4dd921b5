"""What GET /metrics reads from the ledger at scrape time: jobs by tenant and state, the backlog by tenant, queue and
type (depth, held, oldest ready job), and the air-gap clock (staleness and drift of the latest verified time anchor).

One read snapshot, three grouped statements, whatever the caller: the door keeps the caller's tenants and maps tenant,
queue and type to bounded label sets (server/metrics.py). On a 1M-job ledger the cost is the jobs-by-state count the
ledger info already paid; the backlog reads only the hot table's unfinished jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .. import clock
from ..bundle.anchor import assess_time
from ..ledger import Ledger


@dataclass(frozen=True)
class Backlog:
    tenant: str
    queue: str
    job_type: str
    queued: int  # in state queued, ready or not (run_at in the future: a retry's backoff, a scheduled job)
    active: int  # leased or running
    waiting: int  # waiting for parents
    oldest_ready_at: datetime | None  # run_at of the oldest queued job that is ready now (None: none is)


@dataclass(frozen=True)
class AirgapClock:
    """As `airgap status` reports it: the latest verified anchor's age and drift, under the ledger's staleness mode."""

    state: str  # fresh, grace, stale, future, unchecked
    age_seconds: float
    drift_seconds: float
    warn_after_seconds: float
    refuse_after_seconds: float  # the staleness budget: warn_after plus grace


@dataclass(frozen=True)
class TelemetrySnapshot:
    now: datetime
    jobs: dict[tuple[str, str], int]  # (tenant, state) -> jobs, active and finished
    backlog: list[Backlog]
    airgap: AirgapClock | None  # None: no bundle imported yet, so no anchor


def snapshot(ledger: Ledger, *, now: datetime | None = None) -> TelemetrySnapshot:
    """Every tenant's figures (the caller filters): call it on a reader thread."""
    from .bundle_import import STALENESS_SETTING
    from .bundles import staleness_policy

    moment = now or clock.now()
    with ledger.snapshot() as read:
        jobs = {(tenant, state): count for tenant, state, count in read.fetch("telemetry_states")}
        backlog = [Backlog(*row) for row in read.fetch("telemetry_backlog", now=moment)]
        latest = read.fetch("bundle_import_latest_anchor")[0][0]
        mode = read.fetch("meta_get", key=STALENESS_SETTING)
    airgap = None
    if latest is not None:
        policy = staleness_policy(mode[0][0] if mode else "warn")
        verdict = assess_time(latest, local_now=moment, latest_anchor=latest, policy=policy)
        airgap = AirgapClock(state=verdict.state, age_seconds=verdict.age.total_seconds(),
                             drift_seconds=verdict.drift.total_seconds(),
                             warn_after_seconds=verdict.warn_after.total_seconds(),
                             refuse_after_seconds=verdict.refuse_after.total_seconds())
    return TelemetrySnapshot(now=moment, jobs=jobs, backlog=backlog, airgap=airgap)
