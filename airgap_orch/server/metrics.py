"""Prometheus text exposition for GET /metrics (no client library needed for a handful of series).

Totals count only the scraping token's tenants (DESIGN invariant 10): job gauges and transition counters are
kept per tenant and summed over the tenants asked for. The server-wide series (HTTP requests, claim latency,
group commit sizes) belong to no one tenant and are shown only to a site-wide caller (orch:admin, or a server
without auth)."""

from __future__ import annotations

import bisect
import json
import threading
from collections import Counter
from collections.abc import Collection

LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.total += value
            self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        with self._lock:
            for bound, count in zip(self.bounds, self.counts, strict=False):
                running += count
                out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
            out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
            out.append(f"{name}_sum {self.total:g}")
            out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.claim_latency_ms = Histogram(LATENCY_BUCKETS_MS)
        self.group_commit_size = Histogram(BATCH_BUCKETS)
        self.events: Counter[tuple[str, str]] = Counter()  # (tenant, event type or "lease_expired") -> transitions
        self.requests: Counter[str] = Counter()  # "route|status"
        self._lock = threading.Lock()

    def count_entries(self, appended: list[tuple[int, str, str, str]]) -> None:
        with self._lock:
            for _seq, _job, text, _hash in appended:
                entry = json.loads(text)
                self.events[entry["tenant"], entry["event_type"]] += 1
                if entry.get("reason") == "lease_expired":
                    self.events[entry["tenant"], "lease_expired"] += 1

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[f"{route}|{status}"] += 1

    def render(self, jobs_by_state: dict[str, int], tenants: Collection[str] | None = None) -> str:
        """The exposition for a caller limited to `tenants` (None: the whole site); `jobs_by_state` must already
        count only those tenants' jobs."""
        lines = ["# HELP airgap_orch_jobs Jobs in the ledger by state.", "# TYPE airgap_orch_jobs gauge"]
        lines += [f'airgap_orch_jobs{{state="{state}"}} {count}' for state, count in sorted(jobs_by_state.items())]
        events: Counter[str] = Counter()
        with self._lock:
            for (tenant, name), count in self.events.items():
                if tenants is None or tenant in tenants:
                    events[name] += count
            requests = dict(self.requests)
        lines += ["# HELP airgap_orch_claims_total Jobs leased.", "# TYPE airgap_orch_claims_total counter",
                  f"airgap_orch_claims_total {events.get('job.leased', 0)}",
                  "# HELP airgap_orch_acks_total Jobs completed by their lease.",
                  "# TYPE airgap_orch_acks_total counter",
                  f"airgap_orch_acks_total {events.get('job.succeeded', 0)}",
                  "# HELP airgap_orch_lease_expirations_total Leases that expired and were recovered.",
                  "# TYPE airgap_orch_lease_expirations_total counter",
                  f"airgap_orch_lease_expirations_total {events.get('lease_expired', 0)}",
                  "# HELP airgap_orch_transitions_total History entries by event type.",
                  "# TYPE airgap_orch_transitions_total counter"]
        lines += [f'airgap_orch_transitions_total{{event_type="{name}"}} {count}'
                  for name, count in sorted(events.items()) if name.startswith("job.")]
        if tenants is not None:
            lines.append("# airgap_orch_http_requests_total, airgap_orch_claim_latency_ms and "
                         "airgap_orch_group_commit_requests cover every tenant: scrape with an orch:admin token")
            return "\n".join(lines) + "\n"
        lines += ["# HELP airgap_orch_http_requests_total HTTP requests by route and status.",
                  "# TYPE airgap_orch_http_requests_total counter"]
        for key, count in sorted(requests.items()):
            route, status = key.rsplit("|", 1)
            lines.append(f'airgap_orch_http_requests_total{{route="{route}",status="{status}"}} {count}')
        lines += ["# HELP airgap_orch_claim_latency_ms Claim request latency (includes long-poll wait).",
                  "# TYPE airgap_orch_claim_latency_ms histogram"]
        lines += self.claim_latency_ms.lines("airgap_orch_claim_latency_ms")
        lines += ["# HELP airgap_orch_group_commit_requests Requests applied per group commit.",
                  "# TYPE airgap_orch_group_commit_requests histogram"]
        lines += self.group_commit_size.lines("airgap_orch_group_commit_requests")
        return "\n".join(lines) + "\n"
