"""GET /metrics for the dashboards (issue 17, "Telemetry"): per-tenant, queue and job-type series with bounded label
sets, counters of claims, acks, failures, dead letters, lease expiries and throttles by kind of limit, request latency
histograms by route, and the air-gap clock after an import. Real server subprocesses on loopback, the real CLI, and
prometheus_client's own parser over the exposition."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import init_ledger, metric, run_cli, send, serving, total
from test_bundle_cli import export, holders, new_ledger, ok, root_v1  # noqa: F401 (fixtures)

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as job_ops
from airgap_orch.orchestrator import flow
from airgap_orch.server import metrics as server_metrics

KEY = ("tenant", "queue", "job_type")


def call(server, method: str, path: str, body=None) -> dict:
    response = server.request(method, path, body)
    assert response.status == 200, response
    return response.json


def families(server) -> dict:
    """{family name: prometheus_client Metric} from the server's exposition, read by prometheus_client's parser."""
    response = server.request("GET", "/metrics")
    assert response.status == 200, response
    return {family.name: family for family in text_string_to_metric_families(response.body.decode())}


def label_values(samples: dict, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (sample, labels), _ in samples.items() if sample == name}


def enqueue(ledger: Path, specs: list[dict]) -> None:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        job_ops.enqueue_batch(opened, specs)


@pytest.fixture
def ledger(tmp_path) -> Path:
    return init_ledger(tmp_path / "telemetry.duckdb")


def test_thirty_tenants_show_as_the_top_ten_by_backlog_and_other(ledger):
    # tenant t00 holds 30 jobs, t01 29, ... t29 1: the ten largest are t00..t09.
    enqueue(ledger, [{"tenant": f"t{i:02d}", "project": "p", "type": "feed"} for i in range(30) for _ in range(30 - i)])
    with serving(ledger, "--no-auth") as server:
        first = server.metrics()
        top = {f"t{i:02d}" for i in range(server_metrics.TOP_TENANTS)}
        assert label_values(first, "airgap_orch_queue_depth", "tenant") == top | {"other"}
        assert metric(first, "airgap_orch_queue_depth", tenant="t00", queue="default", job_type="feed") == 30
        assert metric(first, "airgap_orch_queue_depth", tenant="other", queue="default", job_type="feed") == sum(
            30 - i for i in range(server_metrics.TOP_TENANTS, 30))
        # Claim everything: each claim counts under its tenant's label; the totals add up to the jobs claimed.
        claimed = 0
        while True:
            leases = call(server, "POST", "/v1/jobs/claim", {"worker_id": "w", "type": "feed", "limit": 100})["leases"]
            if not leases:
                break
            claimed += len(leases)
        after = server.metrics()
        assert claimed == 465
        assert label_values(after, "airgap_orch_claims_total", "tenant") == top | {"other"}
        assert total(after, "airgap_orch_claims_total") == 465
        assert metric(after, "airgap_orch_claims_total", tenant="t00", queue="default", job_type="feed") == 30
        for name in ("airgap_orch_queue_depth", "airgap_orch_active_jobs", "airgap_orch_claims_total"):
            assert len(label_values(after, name, "tenant")) <= server_metrics.TOP_TENANTS + 1, name


def test_queues_and_job_types_past_their_caps_are_other(ledger):
    queues = server_metrics.MAX_QUEUES + 5
    types = server_metrics.MAX_JOB_TYPES + 5
    enqueue(ledger, [{"tenant": "acme", "project": "p", "type": f"type-{i}", "queue": f"q-{i % queues}"}
                     for i in range(types)])
    with serving(ledger, "--no-auth") as server:
        samples = server.metrics()
    assert len(label_values(samples, "airgap_orch_queue_depth", "queue") - {"other"}) == server_metrics.MAX_QUEUES
    assert len(label_values(samples, "airgap_orch_queue_depth", "job_type") - {"other"}) == server_metrics.MAX_JOB_TYPES
    assert "other" in label_values(samples, "airgap_orch_queue_depth", "queue")
    assert total(samples, "airgap_orch_queue_depth") == types  # nothing lost to the caps


def test_acks_failures_dead_letters_and_lease_expiries_are_counted_by_tenant_queue_and_type(ledger):
    with serving(ledger, "--no-auth") as server:
        for max_attempts in (1, 1, 3):
            call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "p", "type": "scan", "queue": "slow",
                                              "max_attempts": max_attempts})
        call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "p", "type": "scan", "queue": "slow",
                                          "max_attempts": 2})
        server.metrics()  # a scrape names acme (its jobs make it a top tenant)
        leases = call(server, "POST", "/v1/jobs/claim", {"worker_id": "w", "type": "scan", "limit": 3})["leases"]
        ack, dead, retried = leases
        call(server, "POST", f"/v1/jobs/{ack['job_id']}/ack", {"lease_id": ack["lease_id"]})
        call(server, "POST", f"/v1/jobs/{dead['job_id']}/fail", {"lease_id": dead["lease_id"], "error": "boom"})
        call(server, "POST", f"/v1/jobs/{retried['job_id']}/fail", {"lease_id": retried["lease_id"], "error": "x"})
        (expiring,) = call(server, "POST", "/v1/jobs/claim", {"worker_id": "w", "type": "scan", "lease_seconds": 1})[
            "leases"]
        deadline = time.monotonic() + 30
        while total(server.metrics(), "airgap_orch_lease_expirations_total") < 1:  # swept about once a second
            assert time.monotonic() < deadline, "no lease expiry was counted"
            time.sleep(0.3)
        samples = server.metrics()
    acme = {"tenant": "acme", "queue": "slow", "job_type": "scan"}
    assert metric(samples, "airgap_orch_acks_total", **acme) == 1
    assert metric(samples, "airgap_orch_dead_letters_total", **acme) == 1
    assert metric(samples, "airgap_orch_failures_total", **acme) == 3  # dead-lettered, retried, lease expired
    assert metric(samples, "airgap_orch_lease_expirations_total", **acme) == 1
    assert metric(samples, "airgap_orch_claims_total", **acme) == 4
    assert expiring["job_id"] not in {ack["job_id"], dead["job_id"], retried["job_id"]}


def test_throttles_are_counted_by_the_kind_of_limit_that_held_the_job(ledger):
    with serving(ledger, "--no-auth") as server:
        for queue in ("held", "held", "free"):
            call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "p", "type": "scan", "queue": queue})
        ok_pause = send(server.url, "POST", "/v1/queues/held/pause", {}, headers={"X-Orch-Reason": "maintenance"})
        assert ok_pause.status == 200, ok_pause
        limited = send(server.url, "POST", "/v1/concurrency", {"key": "type:scan", "max": 1},
                       headers={"X-Orch-Reason": "one scanner"})
        assert limited.status == 200, limited
        call(server, "POST", "/v1/jobs/claim", {"worker_id": "w", "type": "scan", "limit": 3})
        call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "p", "type": "scan", "queue": "free"})
        call(server, "POST", "/v1/jobs/claim", {"worker_id": "w", "type": "scan", "limit": 3})
        samples = server.metrics()
    throttled = {dict(labels)["reason"]: value for (name, labels), value in samples.items()
                 if name == "airgap_orch_throttles_total"}
    assert throttled.get("paused", 0) >= 1 and throttled.get("concurrency", 0) >= 1, throttled
    assert set(throttled) <= {kind for _, kind in flow.THROTTLE_KINDS} | {"paused", "other"}


@pytest.mark.parametrize(("reason", "kind"), [
    ("throttled: queue nightly paused; eligible once resumed", "paused"),
    ("throttled: host:a;b paused; eligible once resumed", "paused"),
    ("throttled: circuit breaker host:x open; eligible at 2026-01-01T00:00:00Z", "circuit_breaker"),
    ("throttled: circuit breaker host:x half-open, probe j running; eligible once the probe ends", "circuit_breaker"),
    ("throttled: concurrency limit type:scan (1 at once); eligible once a running job ends", "concurrency"),
    ("throttled: quota max_active of tenant acme (2); eligible once a running job ends", "quota_active"),
    ("throttled: quota max_per_hour of tenant acme; eligible at 2026-01-01T00:00:00Z", "quota_rate"),
    ("throttled: rate limit tenant:acme/type:scan; eligible at 2026-01-01T00:00:00Z", "rate_limit"),
])
def test_a_throttle_reason_maps_to_one_of_a_few_kinds(reason, kind):
    assert flow.throttle_kind(reason) == kind


def test_request_latency_histograms_have_buckets_per_route_and_the_process_is_exported(ledger):
    with serving(ledger, "--no-auth") as server:
        for _ in range(3):
            call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "p", "type": "t"})
        call(server, "GET", "/v1/jobs")
        found = families(server)
    latency = found["airgap_orch_http_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = {sample.labels["route"]: sample.value for sample in latency.samples if sample.name.endswith("_count")}
    assert counts["jobs.enqueue"] == 3 and counts["jobs.list"] == 1
    bounds = [sample.labels["le"] for sample in latency.samples
              if sample.name.endswith("_bucket") and sample.labels["route"] == "jobs.enqueue"]
    assert [float(bound) for bound in bounds] == [*server_metrics.REQUEST_BUCKETS_S, float("inf")]
    assert "0.5" in bounds  # the alert's threshold is a bucket bound, so its p95 is not interpolated across it
    assert found["airgap_orch_group_commit_requests"].type == "histogram"
    assert found["process_resident_memory_bytes"].samples[0].value > 0
    assert found["airgap_staleness_seconds"].samples == []  # nothing imported yet: no anchor, no sample


def test_staleness_and_drift_gauges_appear_after_an_import(tmp_path, holders, root_v1):  # noqa: F811
    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    enqueue(source, [{"tenant": "acme", "project": "p", "type": "t"}])
    ok(run_cli("trust", "pin", str(root_v1), ledger=source))
    bundle = tmp_path / "a.bundle"
    ok(export(source, bundle, holders, "--json"))
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(run_cli("bundle", "import", str(bundle), "--trust", str(root_v1), "--json", ledger=target))
    status = ok(run_cli("airgap", "status", "--json", ledger=target))
    with serving(target, "--no-auth") as server:
        samples = server.metrics()
    age = metric(samples, "airgap_staleness_seconds")
    assert status["staleness"]["age_seconds"] <= age < status["staleness"]["age_seconds"] + 120
    assert metric(samples, "airgap_drift_seconds") == pytest.approx(-age, abs=1e-3)  # an anchor in the past
    refuse_after = status["staleness"]["age_seconds"] + status["staleness"]["budget_left_seconds"]
    assert metric(samples, "airgap_staleness_refuse_seconds") == pytest.approx(refuse_after, abs=1e-3)
    assert age < metric(samples, "airgap_staleness_budget_seconds") <= refuse_after  # fresh: within the budget
