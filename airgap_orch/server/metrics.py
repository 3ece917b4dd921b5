"""GET /metrics: the Prometheus exposition, written by prometheus_client.

Totals count only the scraping token's tenants (DESIGN invariant 10): job gauges and transition counters are kept
per tenant and summed over the tenants asked for. The server-wide series (HTTP requests and their latency, claim
latency, group commit sizes, the process, the air-gap clock) belong to no one tenant and are shown only to a
site-wide caller (orch:admin, or a server without auth).

Every label set is bounded, whatever the ledger holds:
- `tenant`: at most TOP_TENANTS tenants keep their name; every other tenant is `other`. The first TOP_TENANTS
  tenants the server meets are named at once; past that, each scrape names the largest: by job events counted since
  the server started plus unfinished jobs (queued, waiting, leased, running) now. A counter counts an event under
  the label its tenant had when the event was counted, so no series ever goes down: a tenant overtaken by a larger
  one has its own series removed (counting under `other` from then on), one that enters starts a series from zero.
- `queue`, `job_type`: the first MAX_QUEUES queues and MAX_JOB_TYPES job types the server meets keep their name for
  the life of the process; later ones are `other` (a site has a handful of each; the cap is a guard).
- `reason` (throttles): the kind of limit (orchestrator/flow.THROTTLE_KINDS), not the limit's name.
- `route`, `status`: the API's routes (api.ROUTES) and HTTP status codes.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection, Iterator

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..operations.telemetry import TelemetrySnapshot
from ..orchestrator.flow import throttle_kind

prom.disable_created_metrics()  # no *_created series: nothing here reads them, and they double the output

TOP_TENANTS = 10  # tenants with a `tenant` label of their own; the rest are "other"
MAX_QUEUES = 20
MAX_JOB_TYPES = 30
OTHER = "other"

LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Counter families over job events, by the history event type (or a derived name) they count.
_EVENT_FAMILIES = (
    ("airgap_orch_claims_total", "Jobs leased.", ("job.leased",)),
    ("airgap_orch_acks_total", "Jobs completed by their lease.", ("job.succeeded",)),
    ("airgap_orch_failures_total", "Attempts that ended in failure (retried, failed, dead-lettered or timed out).",
     ("job.retry_scheduled", "job.failed", "job.dead_lettered", "job.timed_out")),
    ("airgap_orch_dead_letters_total", "Jobs moved to the dead-letter queue (attempts exhausted).",
     ("job.dead_lettered",)),
    ("airgap_orch_lease_expirations_total", "Leases that expired and were recovered.", ("lease_expired",)),
)
_THROTTLE = "throttle:"  # derived event name prefix: "throttle:<kind>"
_KEY_LABELS = ["tenant", "queue", "job_type"]


class CappedLabels:
    """The first `cap` distinct values keep their own label; later ones are OTHER."""

    def __init__(self, cap: int):
        self.cap = cap
        self.named: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return OTHER
        if value in self.named:
            return value
        if len(self.named) < self.cap:
            self.named.add(value)
            return value
        return OTHER


class _Collected:
    """A fixed list of families in the shape generate_latest() reads (anything with collect())."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Metrics:
    def __init__(self, top_tenants: int = TOP_TENANTS) -> None:
        self.site = prom.CollectorRegistry(auto_describe=False)
        self.claim_latency_ms = prom.Histogram(
            "airgap_orch_claim_latency_ms", "Claim request latency in ms (includes long-poll wait).",
            buckets=LATENCY_BUCKETS_MS, registry=self.site)
        self.group_commit_size = prom.Histogram(
            "airgap_orch_group_commit_requests", "Requests applied per group commit (one ledger transaction).",
            buckets=BATCH_BUCKETS, registry=self.site)
        self.request_seconds = prom.Histogram(
            "airgap_orch_http_request_duration_seconds", "HTTP request latency by route (a claim's includes its "
            "long-poll wait; bundle routes include the transfer).", ["route"], buckets=REQUEST_BUCKETS_S,
            registry=self.site)
        self.requests = prom.Counter("airgap_orch_http_requests", "HTTP requests by route and status.",
                                     ["route", "status"], registry=self.site)
        prom.ProcessCollector(registry=self.site)
        self.top_tenants = top_tenants
        self.tenant_labels: frozenset[str] = frozenset()
        self.activity: Counter[str] = Counter()  # job events counted per tenant since the server started
        self.queues = CappedLabels(MAX_QUEUES)
        self.job_types = CappedLabels(MAX_JOB_TYPES)
        # (tenant, its label when counted, queue label, job_type label, event type or derived name) -> events
        self.events: Counter[tuple[str, str, str, str, str]] = Counter()
        self._lock = threading.Lock()

    # -- fed by the server ---------------------------------------------------------------------------------
    def count_entries(self, appended: list[tuple[int, str, str, str]], queue_of: dict[str, str]) -> None:
        with self._lock:
            named = self.tenant_labels
            for _seq, job_id, text, _hash in appended:
                entry = json.loads(text)
                tenant = entry["tenant"]
                self.activity[tenant] += 1
                if tenant not in named and len(named) < self.top_tenants:  # a free name: no need to wait for a scrape
                    named = self.tenant_labels = named | {tenant}
                key = (tenant, tenant if tenant in named else OTHER, self.queues(queue_of.get(job_id)),
                       self.job_types(entry["job_type"]))
                self.events[(*key, entry["event_type"])] += 1
                if entry.get("reason") == "lease_expired":
                    self.events[(*key, "lease_expired")] += 1
                if entry["event_type"] == "job.throttled":
                    self.events[(*key, _THROTTLE + throttle_kind(entry.get("reason") or ""))] += 1

    def count_request(self, route: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(route, str(status)).inc()
        if seconds is not None:
            self.request_seconds.labels(route).observe(seconds)

    def rank_tenants(self, snapshot: TelemetrySnapshot) -> frozenset[str]:
        """Name the largest tenants (events counted plus unfinished jobs; ties by name); drop the series of those
        that left the top."""
        with self._lock:
            size = Counter(self.activity)
            for row in snapshot.backlog:
                size[row.tenant] += row.queued + row.active + row.waiting
            top = frozenset(sorted(size, key=lambda tenant: (-size[tenant], tenant))[:self.top_tenants])
            left = self.tenant_labels - top
            self.tenant_labels = top
            if left:
                self.events = Counter({key: count for key, count in self.events.items() if key[1] not in left})
        return top

    # -- the exposition ------------------------------------------------------------------------------------
    def counted(self) -> Counter[tuple[str, str, str, str, str]]:
        """The event counts so far. Take them before the ledger snapshot a scrape renders them with: an event is
        counted after its commit, so the snapshot then shows at least every counted transition's state."""
        with self._lock:
            return Counter(self.events)

    def render(self, snapshot: TelemetrySnapshot, tenants: Collection[str] | None = None,
               counted: Counter[tuple[str, str, str, str, str]] | None = None) -> str:
        """The exposition for a caller limited to `tenants` (None: the whole site). `snapshot` is the whole site's
        (it ranks the tenants); only `tenants`' figures are shown. `counted`: counted() before the snapshot."""
        if counted is None:
            counted = self.counted()
        self.rank_tenants(snapshot)
        parts = [prom.generate_latest(_Collected(self._tenant_families(snapshot, tenants, counted))).decode()]
        if tenants is not None:
            parts.append("# airgap_orch_http_*, airgap_orch_claim_latency_ms, airgap_orch_group_commit_requests, "
                         "process_* and airgap_* cover the whole site: scrape with an orch:admin token\n")
        else:
            parts.append(prom.generate_latest(self.site).decode())
            parts.append(prom.generate_latest(_Collected(_airgap_families(snapshot))).decode())
        return "".join(parts)

    def _tenant_families(self, snapshot: TelemetrySnapshot, tenants: Collection[str] | None,
                         counted: Counter[tuple[str, str, str, str, str]]) -> list[Metric]:
        def visible(tenant: str) -> bool:
            return tenants is None or tenant in tenants

        named = self.tenant_labels  # a tenant that has just left the top: its series end (rank_tenants)
        events = [(key, count) for key, count in counted.items()
                  if visible(key[0]) and (key[1] == OTHER or key[1] in named)]
        families: list[Metric] = []

        by_state: Counter[str] = Counter()
        for (tenant, state), count in snapshot.jobs.items():
            if visible(tenant):
                by_state[state] += count
        jobs = GaugeMetricFamily("airgap_orch_jobs", "Jobs in the ledger by state.", labels=["state"])
        for state, count in sorted(by_state.items()):
            jobs.add_metric([state], count)
        families.append(jobs)

        depth: Counter[tuple[str, str, str]] = Counter()
        active: Counter[tuple[str, str, str]] = Counter()
        oldest: dict[tuple[str, str, str], float] = {}
        for row in snapshot.backlog:
            if not visible(row.tenant):
                continue
            key = (row.tenant if row.tenant in named else OTHER, self.queues(row.queue), self.job_types(row.job_type))
            depth[key] += row.queued
            active[key] += row.active
            if row.queued:
                age = 0.0 if row.oldest_ready_at is None else max(
                    0.0, (snapshot.now - row.oldest_ready_at).total_seconds())
                oldest[key] = max(age, oldest.get(key, 0.0))
        for name, text, values in (
                ("airgap_orch_queue_depth", "Queued jobs (ready or waiting for their run_at).", depth),
                ("airgap_orch_queue_oldest_age_seconds", "Age of the oldest ready queued job: how long it has "
                 "been claimable and not claimed (0 when none is ready).", oldest),
                ("airgap_orch_active_jobs", "Jobs leased or running.", active)):
            family = GaugeMetricFamily(name, text, labels=_KEY_LABELS)
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value)
            families.append(family)

        totals: Counter[tuple[str, str, str, str]] = Counter()  # (tenant label, queue, type, event) over tenants
        for (_tenant, label, queue, job_type, name), count in events:
            totals[(label, queue, job_type, name)] += count
        for name, text, counted in _EVENT_FAMILIES:
            family = CounterMetricFamily(name, text, labels=_KEY_LABELS)
            summed: Counter[tuple[str, str, str]] = Counter()
            for (label, queue, job_type, event), count in totals.items():
                if event in counted:
                    summed[(label, queue, job_type)] += count
            for key, count in sorted(summed.items()):
                family.add_metric(list(key), count)
            families.append(family)
        throttles = CounterMetricFamily("airgap_orch_throttles_total", "Jobs held back at claim by a limit, once per "
                                        "job and reason, by kind of limit.", labels=[*_KEY_LABELS, "reason"])
        for (label, queue, job_type, event), count in sorted(totals.items()):
            if event.startswith(_THROTTLE):
                throttles.add_metric([label, queue, job_type, event.removeprefix(_THROTTLE)], count)
        families.append(throttles)
        transitions = CounterMetricFamily("airgap_orch_transitions_total", "History entries by event type.",
                                          labels=["event_type"])
        by_event: Counter[str] = Counter()
        for (_label, _queue, _type, event), count in totals.items():
            if event.startswith("job."):
                by_event[event] += count
        for event, count in sorted(by_event.items()):
            transitions.add_metric([event], count)
        families.append(transitions)
        return families


def _airgap_families(snapshot: TelemetrySnapshot) -> list[Metric]:
    """The latest verified time anchor, as `airgap status` reports it (no samples before the first import)."""
    clock = snapshot.airgap
    families = []
    for name, text, value in (
            ("airgap_staleness_seconds", "Age of the latest verified time anchor (imported bundles).",
             None if clock is None else clock.age_seconds),
            ("airgap_drift_seconds", "The latest time anchor minus the local clock (positive: the anchor is ahead).",
             None if clock is None else clock.drift_seconds),
            ("airgap_staleness_budget_seconds", "The staleness budget: anchor age past which imports warn (then "
             "the grace period runs).", None if clock is None else clock.warn_after_seconds),
            ("airgap_staleness_refuse_seconds", "Anchor age past which a strict site refuses imports (budget plus "
             "grace).", None if clock is None else clock.refuse_after_seconds)):
        family = GaugeMetricFamily(name, text, labels=[])
        if value is not None:
            family.add_metric([], value)
        families.append(family)
    return families
