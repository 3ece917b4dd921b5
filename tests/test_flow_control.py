"""Flow control at claim time on a real ledger: fairness among tenants, concurrency limits, quotas, rate limits
(token buckets), queue pauses and circuit breakers; throttled jobs reported with their next eligible time;
every refused change leaves the ledger as it was."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from airgap_orch import clock
from airgap_orch.errors import Conflict, Forbidden, InvalidInput, NotFound
from airgap_orch.ledger import Ledger
from airgap_orch.operations import audit as audit_ops
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations import limits as limit_ops


def enqueue_many(ledger: Ledger, count: int, **fields) -> list[str]:
    spec = {"tenant": "acme", "project": "feeds", "type": "scan", **fields}
    return ops.enqueue_batch(ledger, [dict(spec) for _ in range(count)])["job_ids"]


def claim(ledger: Ledger, limit: int = 100, worker: str = "w-1", **kw) -> list[dict]:
    return ops.claim(ledger, worker_id=worker, limit=limit, lease_seconds=60, **kw)["leases"]


def ack_all(ledger: Ledger, leases: list[dict]) -> None:
    for lease in leases:
        ops.ack(ledger, lease["job_id"], lease["lease_id"])


def history_types(ledger: Ledger, job_id: str) -> list[str]:
    return [entry["event_type"] for entry in ops.show(ledger, job_id)["history"]]


def state(path_or_ledger) -> dict:
    """What a refused change must leave alone: history, audit log and every flow-control table."""
    ledger = path_or_ledger
    read = ledger.read()
    info = ledger_ops.info(ledger)
    tables = ("quotas", "rate_limits", "concurrency_limits", "pauses", "circuit_breakers", "bucket_levels")
    return {"history": (info["history_entries"], info["history_head"]), "audit": read.rows("audit_scan"),
            **{table: read.con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in tables}}


# -- fairness ----------------------------------------------------------------------------------------------

def test_a_tenant_with_10_jobs_is_served_within_the_first_batches_behind_one_with_10000(ledger):
    big = set(enqueue_many(ledger, 10_000, tenant="tenant-a"))
    small = set(enqueue_many(ledger, 10, tenant="tenant-b"))
    first, second = claim(ledger, 10), claim(ledger, 10)
    served = [lease["job_id"] for lease in first + second]
    assert small <= set(served), "tenant B waited behind tenant A's backlog"
    assert sum(job_id in big for job_id in served) == 10  # A still gets its share: they alternate


def test_a_tenant_arriving_late_does_not_wait_for_the_backlog_claimed_so_far(ledger):
    enqueue_many(ledger, 2_000, tenant="tenant-a")
    ack_all(ledger, claim(ledger, 500))
    late = set(enqueue_many(ledger, 5, tenant="tenant-b"))
    assert late <= {lease["job_id"] for lease in claim(ledger, 10)}


def test_priority_still_comes_before_fair_turns(ledger):
    enqueue_many(ledger, 50, tenant="tenant-a")
    urgent = enqueue_many(ledger, 3, tenant="tenant-b", priority=10)
    assert [lease["job_id"] for lease in claim(ledger, 3)] == sorted(urgent)


# -- concurrency limits ------------------------------------------------------------------------------------

def test_concurrency_limit_holds_across_workers_and_frees_up_when_a_job_ends(ledger):
    enqueue_many(ledger, 10)
    limit_ops.concurrency_set(ledger, key="type:scan", max=2, reason="test")
    first = claim(ledger, 10, worker="w-1")
    assert len(first) == 2
    assert claim(ledger, 10, worker="w-2") == []
    ops.ack(ledger, first[0]["job_id"], first[0]["lease_id"])
    assert len(claim(ledger, 10, worker="w-3")) == 1
    assert limit_ops.concurrency_list(ledger)["concurrency_limits"][0]["active"] == 2


def test_concurrency_limit_on_a_declared_key_leaves_other_jobs_alone(ledger):
    nvd = enqueue_many(ledger, 5, keys=["host:nvd.nist.gov"])
    other = enqueue_many(ledger, 5, keys=["host:osv.dev"])
    limit_ops.concurrency_set(ledger, key="host:nvd.nist.gov", max=1, reason="test")
    leased = {lease["job_id"] for lease in claim(ledger, 10)}
    assert len(leased & set(nvd)) == 1 and set(other) <= leased
    held = ops.show(ledger, sorted(set(nvd) - leased)[0])
    assert held["throttled"] == {"throttled_by": "concurrency limit host:nvd.nist.gov (1 at once)",
                                 "eligible_at": None, "waits_for": "a running job ends"}
    assert held["keys"] == ["host:nvd.nist.gov"]


def test_a_limited_group_with_a_big_backlog_does_not_hide_other_tenants_jobs(ledger):
    enqueue_many(ledger, 3_000, tenant="tenant-a", priority=5)  # ahead of B in claim order
    limit_ops.quota_set(ledger, tenant="tenant-a", max_active=1, reason="noisy neighbour")
    b_jobs = set(enqueue_many(ledger, 20, tenant="tenant-b"))
    leased = claim(ledger, 50)
    assert sum(lease["tenant"] == "tenant-a" for lease in leased) == 1
    assert {lease["job_id"] for lease in leased if lease["tenant"] == "tenant-b"} == b_jobs


# -- quotas ------------------------------------------------------------------------------------------------

def test_quota_max_active_counts_leased_and_running_jobs_of_the_tenant(ledger):
    enqueue_many(ledger, 10)
    enqueue_many(ledger, 2, tenant="globex")
    limit_ops.quota_set(ledger, tenant="acme", max_active=3, reason="contract tier")
    leased = claim(ledger, 20)
    assert sorted(lease["tenant"] for lease in leased) == ["acme"] * 3 + ["globex"] * 2
    ops.heartbeat(ledger, leased[0]["job_id"], leased[0]["lease_id"])  # running still counts
    assert claim(ledger, 20) == []
    quota = limit_ops.quota_list(ledger, tenant="acme")["quotas"][0]
    assert (quota["max_active"], quota["use"]["active"], quota["reason"]) == (3, 3, "contract tier")


def test_quota_per_hour_is_a_bucket_with_a_burst_refilled_by_elapsed_time(ledger, manual_clock):
    jobs = enqueue_many(ledger, 10)
    limit_ops.quota_set(ledger, tenant="acme", max_per_hour=3600, burst=2, reason="one a second")
    leased = {lease["job_id"] for lease in claim(ledger, 10)}
    assert len(leased) == 2
    assert claim(ledger, 10) == []
    held = ops.show(ledger, next(job for job in jobs if job not in leased))["throttled"]
    assert held == {"throttled_by": "quota max_per_hour of tenant acme",
                    "eligible_at": clock.iso(manual_clock.current + timedelta(seconds=1)), "waits_for": None}
    manual_clock.advance(1.0)
    assert len(claim(ledger, 10)) == 1
    manual_clock.advance(60)
    assert len(claim(ledger, 10)) == 2  # refilled up to the burst, not 60


def test_bucket_levels_persist_across_a_reopen(ledger_path, manual_clock):
    with Ledger.open(ledger_path) as ledger:
        enqueue_many(ledger, 5)
        limit_ops.ratelimit_set(ledger, tenant="acme", type="scan", rate=0.01, burst=2, reason="test")
        assert len(claim(ledger, 5)) == 2
    with Ledger.open(ledger_path) as ledger:
        assert claim(ledger, 5) == []  # the bucket is still empty after the restart
        assert limit_ops.ratelimit_list(ledger)["rate_limits"][0]["tokens"] == 0.0


# -- rate limits -------------------------------------------------------------------------------------------

def test_rate_limit_on_tenant_and_type_throttles_only_that_pair(ledger, manual_clock):
    enqueue_many(ledger, 5)
    other = enqueue_many(ledger, 3, type="export")
    limit_ops.ratelimit_set(ledger, tenant="acme", type="scan", rate=2, burst=1, reason="test")
    leased = claim(ledger, 10)
    assert sorted(lease["type"] for lease in leased) == ["export"] * 3 + ["scan"]
    assert set(other) <= {lease["job_id"] for lease in leased}
    manual_clock.advance(0.25)
    assert claim(ledger, 10) == []
    manual_clock.advance(0.25)
    assert [lease["type"] for lease in claim(ledger, 10)] == ["scan"]


def test_rate_limit_on_a_declared_key_spans_tenants_and_types(ledger, manual_clock):
    enqueue_many(ledger, 3, keys=["host:nvd.nist.gov"])
    enqueue_many(ledger, 3, tenant="globex", type="vex", keys=["host:nvd.nist.gov"])
    limit_ops.ratelimit_set(ledger, key="host:nvd.nist.gov", rate=1, burst=2, reason="test")
    assert len(claim(ledger, 10)) == 2
    manual_clock.advance(1)
    assert len(claim(ledger, 10)) == 1


def test_a_throttled_job_is_reported_once_in_its_history_with_its_next_eligible_time(ledger, manual_clock):
    first, second = enqueue_many(ledger, 2)
    limit_ops.ratelimit_set(ledger, tenant="acme", type="scan", rate=0.5, burst=1, reason="test")
    # any limit puts claims on the admitting path
    limit_ops.concurrency_set(ledger, key="tenant:acme", max=100, reason="test")
    # One bucket left at one token: the first job takes it; the second is seen and held back.
    assert [lease["job_id"] for lease in claim(ledger, 2)] == [first]
    manual_clock.advance(1.0)
    for _ in range(3):
        assert claim(ledger, 2) == []
    entries = [entry for entry in ops.show(ledger, second)["history"] if entry["event_type"] == "job.throttled"]
    assert len(entries) <= 1
    shown = ops.show(ledger, second)["throttled"]
    assert shown["throttled_by"] == "rate limit tenant:acme/type:scan"
    manual_clock.advance(1.0)
    assert [lease["job_id"] for lease in claim(ledger, 2)] == [second]
    assert ops.show(ledger, second)["throttled"] is None


def test_a_job_skipped_inside_a_claim_gets_a_throttled_event(ledger):
    jobs = enqueue_many(ledger, 3, keys=["host:a"])
    limit_ops.concurrency_set(ledger, key="host:a", max=5, reason="test")
    limit_ops.ratelimit_set(ledger, key="host:a", rate=0.001, burst=1, reason="test")
    (leased,) = claim(ledger, 3)
    skipped = [job for job in jobs if job != leased["job_id"]]
    # The bucket empties mid-claim, so the other two are seen in the candidate window and held back.
    for job_id in skipped:
        entries = [e for e in ops.show(ledger, job_id)["history"] if e["event_type"] == "job.throttled"]
        assert len(entries) == 1 and entries[0]["reason"].startswith("throttled: rate limit host:a; eligible at ")
    claim(ledger, 3)
    assert all(history_types(ledger, job_id).count("job.throttled") == 1 for job_id in skipped)


# -- pauses ------------------------------------------------------------------------------------------------

def test_paused_queue_keeps_its_jobs_queued_until_resumed(ledger):
    ingest = enqueue_many(ledger, 3, queue="ingest")
    exports = enqueue_many(ledger, 2, queue="exports")
    limit_ops.queue_pause(ledger, queue="ingest", reason="upstream maintenance", ticket="OPS-9")
    assert {lease["job_id"] for lease in claim(ledger, 10)} == set(exports)
    assert ops.show(ledger, ingest[0])["throttled"]["throttled_by"] == "queue ingest paused"
    listed = {item["queue"]: item for item in limit_ops.queue_list(ledger)["queues"]}
    assert listed["ingest"]["jobs"] == {"queued": 3}
    assert listed["ingest"]["paused"]["reason"] == "upstream maintenance"
    with pytest.raises(Conflict):
        limit_ops.queue_pause(ledger, queue="ingest", reason="again")
    limit_ops.queue_resume(ledger, queue="ingest")
    assert {lease["job_id"] for lease in claim(ledger, 10)} == set(ingest)
    actions = [entry["action"] for entry in audit_ops.list_entries(ledger)["entries"]]
    assert actions[-2:] == ["queue.pause", "queue.resume"]


# -- circuit breakers --------------------------------------------------------------------------------------

def test_breaker_opens_after_consecutive_failures_then_lets_one_probe_through(ledger, manual_clock):
    enqueue_many(ledger, 10, type="flaky")
    healthy = enqueue_many(ledger, 2, type="steady")
    limit_ops.breaker_set(ledger, key="type:flaky", failures=2, cooldown=30, reason="test")
    for _ in range(2):
        lease = claim(ledger, 1, job_type="flaky")[0]
        ops.fail(ledger, lease["job_id"], lease["lease_id"], error="upstream 503", no_retry=True)
    assert limit_ops.breaker_list(ledger)["breakers"][0]["state"] == "open"
    assert {lease["job_id"] for lease in claim(ledger, 10)} == set(healthy)
    manual_clock.advance(31)
    (probe,) = claim(ledger, 10)  # half-open: exactly one probe
    assert claim(ledger, 10) == []
    breaker = limit_ops.breaker_list(ledger)["breakers"][0]
    assert (breaker["state"], breaker["probe_job_id"]) == ("half_open", probe["job_id"])
    ops.fail(ledger, probe["job_id"], probe["lease_id"], error="still down", no_retry=True)
    assert limit_ops.breaker_list(ledger)["breakers"][0]["state"] == "open"
    manual_clock.advance(31)
    (probe,) = claim(ledger, 10)
    ops.ack(ledger, probe["job_id"], probe["lease_id"])
    breaker = limit_ops.breaker_list(ledger)["breakers"][0]
    assert (breaker["state"], breaker["consecutive_failures"]) == ("closed", 0)
    assert len(claim(ledger, 10)) == 6  # the 10 flaky jobs minus 2 failures and 2 probes


def test_a_canceled_probe_frees_the_half_open_breaker_for_another(ledger, manual_clock):
    enqueue_many(ledger, 4, type="flaky")
    limit_ops.breaker_set(ledger, key="type:flaky", failures=1, cooldown=5, reason="test")
    lease = claim(ledger, 1)[0]
    ops.fail(ledger, lease["job_id"], lease["lease_id"], error="boom", no_retry=True)
    manual_clock.advance(6)
    (probe,) = claim(ledger, 5)
    ops.release(ledger, probe["job_id"], probe["lease_id"])
    assert len(claim(ledger, 5)) == 1


# -- changes: audit, reason, refusals ----------------------------------------------------------------------

def test_quota_changes_are_audited_with_reason_ticket_and_before_after(ledger):
    limit_ops.quota_set(ledger, tenant="acme", max_active=5, reason="tier 1", ticket="CHG-1")
    limit_ops.quota_set(ledger, tenant="acme", max_per_hour=100, reason="tier 2", ticket="CHG-2")
    (quota,) = limit_ops.quota_list(ledger)["quotas"]
    assert (quota["max_active"], quota["max_per_hour"], quota["revision"], quota["record_version"]) == (5, 100, 2, 1)
    entries = audit_ops.list_entries(ledger)["entries"]
    assert [(e["action"], e["reason"], e["ticket"]) for e in entries] == [
        ("quota.set", "tier 1", "CHG-1"), ("quota.set", "tier 2", "CHG-2")]
    assert entries[1]["details"]["before"]["max_active"] == 5 and entries[1]["details"]["after"]["max_per_hour"] == 100
    assert audit_ops.verify(ledger)["ok"] is True


@pytest.mark.parametrize(("operation", "kwargs", "error"), [
    (limit_ops.quota_set, {"tenant": "acme", "max_active": 5}, InvalidInput),  # no reason
    (limit_ops.quota_set, {"tenant": "acme", "max_active": 5, "reason": "r" * 257}, InvalidInput),
    (limit_ops.quota_set, {"tenant": "acme", "max_active": 5, "reason": "ok", "ticket": "t" * 129}, InvalidInput),
    (limit_ops.quota_set, {"tenant": "acme", "reason": "nothing to set"}, InvalidInput),
    (limit_ops.quota_set, {"tenant": "acme", "max_active": 0, "reason": "zero"}, InvalidInput),
    (limit_ops.quota_set, {"tenant": "bad tenant", "max_active": 1, "reason": "r"}, InvalidInput),
    (limit_ops.quota_delete, {"tenant": "acme", "reason": "none there"}, NotFound),
    (limit_ops.ratelimit_set, {"tenant": "acme", "type": "scan", "rate": 0, "burst": 1, "reason": "r"}, InvalidInput),
    (limit_ops.ratelimit_set, {"tenant": "acme", "type": "scan", "rate": -1, "burst": 1, "reason": "r"}, InvalidInput),
    (limit_ops.ratelimit_set, {"tenant": "acme", "type": "scan", "rate": 1, "burst": 0, "reason": "r"}, InvalidInput),
    (limit_ops.ratelimit_set, {"tenant": "acme", "rate": 1, "burst": 1, "reason": "r"}, InvalidInput),  # no type
    (limit_ops.ratelimit_set, {"tenant": "acme", "key": "host:x", "rate": 1, "burst": 1, "reason": "r"}, InvalidInput),
    (limit_ops.ratelimit_set, {"key": "no-colon", "rate": 1, "burst": 1, "reason": "r"}, InvalidInput),
    (limit_ops.ratelimit_delete, {"key": "host:x", "reason": "r"}, NotFound),
    (limit_ops.concurrency_set, {"key": "host:x", "max": 0, "reason": "r"}, InvalidInput),
    (limit_ops.concurrency_delete, {"key": "host:x", "reason": "r"}, NotFound),
    (limit_ops.breaker_set, {"key": "host:x", "failures": 0, "cooldown": 10, "reason": "r"}, InvalidInput),
    (limit_ops.breaker_set, {"key": "host:x", "failures": 3, "cooldown": 0, "reason": "r"}, InvalidInput),
    (limit_ops.queue_pause, {"queue": "ingest"}, InvalidInput),  # no reason
    (limit_ops.queue_resume, {"queue": "ingest"}, NotFound),
])
def test_every_refused_limit_change_leaves_the_ledger_unchanged(ledger, operation, kwargs, error):
    enqueue_many(ledger, 1)
    before = state(ledger)
    with pytest.raises(error):
        operation(ledger, **kwargs)
    assert state(ledger) == before


def test_a_token_limited_to_one_tenant_cannot_change_another_tenants_or_global_limits(ledger):
    mine = frozenset({"acme"})
    limit_ops.quota_set(ledger, tenant="acme", max_active=2, reason="own", tenants=mine)
    before = state(ledger)
    for operation, kwargs in ((limit_ops.quota_set, {"tenant": "globex", "max_active": 2, "reason": "r"}),
                              (limit_ops.concurrency_set, {"key": "type:scan", "max": 1, "reason": "r"}),
                              (limit_ops.ratelimit_set, {"key": "host:x", "rate": 1, "burst": 1, "reason": "r"}),
                              (limit_ops.queue_pause, {"queue": "default", "reason": "r"})):
        with pytest.raises(Forbidden):
            operation(ledger, **kwargs, tenants=mine)
    assert state(ledger) == before
    assert limit_ops.quota_list(ledger, tenants=frozenset({"globex"}))["quotas"] == []


LIMIT_CHANGES = (
    ("ratelimit", "set", "--key", "host:x", "--rate", "1", "--burst", "1"),
    ("concurrency", "set", "--key", "host:x", "--max", "1"),
    ("breaker", "set", "--key", "host:x", "--failures", "2", "--cooldown", "5"),
    ("ratelimit", "delete", "--key", "host:x"),
    ("concurrency", "delete", "--key", "host:x"),
    ("breaker", "delete", "--key", "host:x"),
)


def test_every_limit_set_and_delete_without_a_reason_is_refused_naming_reason(cli, ledger_path):
    for args in LIMIT_CHANGES[:3]:  # something for the deletes to find
        assert cli(*args, "--reason", "setup").code == 0
    with Ledger.open(ledger_path) as ledger:
        before = state(ledger)
    for args in LIMIT_CHANGES:
        refused = cli(*args)
        assert refused.code == 1, (args, refused)
        assert "reason is required" in refused.stderr and "--reason" in refused.stderr, refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    with Ledger.open(ledger_path) as ledger:
        assert state(ledger) == before


def test_every_limit_set_and_delete_without_x_orch_reason_is_400_over_http(tmp_path):
    from server_fixtures import assert_problem, init_ledger, send, serving

    path = init_ledger(tmp_path / "l.duckdb")
    bodies = (("/v1/ratelimits", {"key": "host:x", "rate": 1, "burst": 1}),
              ("/v1/concurrency", {"key": "host:x", "max": 1}),
              ("/v1/breakers", {"key": "host:x", "failures": 2, "cooldown": 5}))
    with serving(path, "--no-auth") as server:
        for route, body in bodies:
            assert send(server.url, "POST", route, body, headers={"X-Orch-Reason": "setup"}).status == 200
        listed = [server.request("GET", route).json for route, _ in bodies]
        for route, body in bodies + tuple((route + "/delete", {"key": "host:x"}) for route, _ in bodies):
            assert_problem(send(server.url, "POST", route, body), 400, exit_code=1)
        assert [server.request("GET", route).json for route, _ in bodies] == listed


def test_cli_quota_without_reason_exits_1_and_changes_nothing(cli, ledger_path):
    refused = cli("quota", "set", "--tenant", "acme", "--max-active", "5")
    assert refused.code == 1 and "reason is required" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert cli("--json", "quota", "list").json == {"quotas": []}
    assert cli("ratelimit", "set", "--tenant", "acme", "--type", "scan", "--rate", "0", "--burst", "1").code == 1
    assert cli("concurrency", "set", "--key", "host:x").code == 2  # click: --max missing
    assert cli("--json", "audit", "list").json["entries"] == []
    done = cli("--json", "quota", "set", "--tenant", "acme", "--max-active", "5", "--reason", "tier", "--ticket", "C-1")
    assert done.code == 0 and done.json["max_active"] == 5, done
    listed = cli("quota", "show", "--tenant", "acme")
    assert listed.code == 0 and "tier" in listed.stdout


def test_http_quota_needs_the_reason_header_and_limits_are_enforced_for_server_claims(ledger_path):
    from server_fixtures import assert_problem, serving

    with serving(ledger_path, "--no-auth") as server:
        before = server.request("GET", "/v1/audit").json["entries"]
        assert_problem(server.request("POST", "/v1/quotas/acme", {"max_active": 1}), 400, "invalid-input", 1)
        assert_problem(server.request("POST", "/v1/ratelimits", {"tenant": "acme", "type": "scan", "rate": 0,
                                                                 "burst": 1}, headers={"X-Orch-Reason": "r"}),
                       400, "invalid-input", 1)
        assert server.request("GET", "/v1/audit").json["entries"] == before
        done = server.request("POST", "/v1/quotas/acme", {"max_active": 1}, headers={"X-Orch-Reason": "tier"})
        assert done.status == 200 and done.json["reason"] == "tier", done
        for _ in range(3):
            server.request("POST", "/v1/jobs", {"tenant": "acme", "project": "p", "type": "scan"})
        leased = server.request("POST", "/v1/jobs/claim", {"worker_id": "w", "limit": 3}).json["leases"]
        assert len(leased) == 1
        assert server.request("GET", "/v1/quotas").json["quotas"][0]["use"]["active"] == 1
        paused = server.request("POST", "/v1/queues/default/pause", headers={"X-Orch-Reason": "maint"})
        assert paused.status == 200, paused
        assert server.request("GET", "/v1/queues").json["queues"][0]["paused"]["reason"] == "maint"


def test_limits_are_plain_versioned_rows_in_the_ledger(ledger_path):
    with Ledger.open(ledger_path) as ledger:
        limit_ops.quota_set(ledger, tenant="acme", max_active=1, reason="r")
        limit_ops.ratelimit_set(ledger, key="host:x", rate=1, burst=1, reason="test")
        limit_ops.concurrency_set(ledger, key="type:scan", max=1, reason="test")
        limit_ops.breaker_set(ledger, key="host:x", failures=1, cooldown=5, reason="test")
        limit_ops.queue_pause(ledger, queue="q", reason="r")
    import duckdb

    with duckdb.connect(str(ledger_path), read_only=True) as con:
        for table in ("quotas", "rate_limits", "concurrency_limits", "circuit_breakers", "pauses"):
            assert con.execute(f"SELECT record_version FROM {table}").fetchall() == [(1,)], table


def test_claims_without_any_limit_report_no_throttle(ledger):
    (job_id,) = enqueue_many(ledger, 1)
    assert ops.show(ledger, job_id)["throttled"] is None
    assert json.loads(json.dumps(ops.show(ledger, job_id)))["keys"] == []
    assert uuid.UUID(claim(ledger, 1)[0]["job_id"])


def test_limits_hold_across_concurrent_workers_through_the_server(ledger_path):
    """Four workers claim and ack at once through one server; the event stream never shows more jobs of the
    limited type held at once than the limit, nor more of the tenant than its quota."""
    import threading
    import time

    from server_fixtures import serving

    with serving(ledger_path, "--no-auth") as server:
        assert server.request("POST", "/v1/concurrency", {"key": "type:mirror.sync", "max": 3},
                              headers={"X-Orch-Reason": "mirror slots"}).status == 200
        assert server.request("POST", "/v1/quotas/globex", {"max_active": 2},
                              headers={"X-Orch-Reason": "small tenant"}).status == 200
        specs = ([{"tenant": "acme", "project": "p", "type": "mirror.sync"}] * 40 +
                 [{"tenant": "globex", "project": "p", "type": "scan"}] * 20 +
                 [{"tenant": "acme", "project": "p", "type": "scan"}] * 20)
        assert server.request("POST", "/v1/jobs/batch", {"jobs": specs}).status == 200
        errors: list[str] = []

        def work(worker: str) -> None:
            idle = 0
            while idle < 20:
                answer = server.request("POST", "/v1/jobs/claim", {"worker_id": worker, "limit": 4})
                if answer.status != 200:
                    errors.append(repr(answer))
                    return
                leases = answer.json["leases"]
                idle = 0 if leases else idle + 1
                time.sleep(0.02)  # the work
                for lease in leases:
                    acked = server.request("POST", f"/v1/jobs/{lease['job_id']}/ack", {"lease_id": lease["lease_id"]})
                    if acked.status != 200:
                        errors.append(repr(acked))

        workers = [threading.Thread(target=work, args=(f"w-{n}",)) for n in range(4)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=240)
        assert not errors, errors[:3]
        assert server.ledger_info()["jobs"] == {"succeeded": 80}
        events = server.request("GET", "/v1/ledger/events", query={"limit": 100_000}).json["events"]

    def peak(match) -> int:
        held: set[str] = set()
        most = 0
        for event in events:
            if match(event):
                (held.add if event["job"]["status"] in ("leased", "running") else held.discard)(event["job"]["id"])
                most = max(most, len(held))
        return most

    assert 2 <= peak(lambda event: event["job"]["type"] == "mirror.sync") <= 3
    assert 1 <= peak(lambda event: event["tenantId"] == "globex") <= 2


def test_claims_that_fit_under_every_limit_still_count_against_them(ledger, manual_clock):
    enqueue_many(ledger, 20)
    limit_ops.concurrency_set(ledger, key="type:scan", max=5, reason="test")
    limit_ops.ratelimit_set(ledger, tenant="acme", type="scan", rate=0.001, burst=8, reason="test")
    assert len(claim(ledger, 3)) == 3  # room for all three: one statement, then counted
    assert len(claim(ledger, 3)) == 2  # 2 slots left under the concurrency limit
    assert limit_ops.ratelimit_list(ledger)["rate_limits"][0]["tokens"] == pytest.approx(3.0, abs=0.01)
    limit_ops.concurrency_delete(ledger, key="type:scan", reason="test")
    assert len(claim(ledger, 5)) == 3  # then the bucket's 3 tokens


def test_the_next_job_of_a_group_blocked_as_a_whole_gets_one_throttled_event(ledger, manual_clock):
    ingest = enqueue_many(ledger, 3, queue="ingest")
    flaky = enqueue_many(ledger, 3, type="flaky")
    limit_ops.queue_pause(ledger, queue="ingest", reason="maintenance")
    limit_ops.breaker_set(ledger, key="type:flaky", failures=1, cooldown=60, reason="test")
    lease = claim(ledger, 1, job_type="flaky")[0]
    ops.fail(ledger, lease["job_id"], lease["lease_id"], error="503", no_retry=True)
    for _ in range(3):
        assert claim(ledger, 10) == []

    def throttled(job_id: str) -> list[str]:
        return [e["reason"] for e in ops.show(ledger, job_id)["history"] if e["event_type"] == "job.throttled"]

    assert throttled(ingest[0]) == ["throttled: queue ingest paused; eligible once resumed"]
    assert throttled(ingest[1]) == throttled(ingest[2]) == []  # one report per group, not per job
    next_flaky = sorted(set(flaky) - {lease["job_id"]})
    reopens = clock.iso(manual_clock.current + timedelta(seconds=60))
    reports = [throttled(job_id) for job_id in next_flaky]
    assert sorted(reports, key=len) == [[], [f"throttled: circuit breaker type:flaky open; eligible at {reopens}"]]


def test_quota_show_reports_the_effective_burst_and_dashes_for_unset_fields(cli):
    assert cli("quota", "set", "--tenant", "acme", "--max-per-hour", "60", "--reason", "tier").code == 0
    assert cli("quota", "set", "--tenant", "globex", "--max-active", "3", "--reason", "tier").code == 0
    assert cli("--json", "quota", "show", "--tenant", "acme").json["quotas"][0]["burst"] == 60
    shown = cli("quota", "show").stdout
    assert "None" not in shown
    header, acme, globex = shown.splitlines()
    assert acme.split()[:4] == ["acme", "-", "60", "60"] and globex.split()[:4] == ["globex", "3", "-", "-"]
    assert cli("quota", "set", "--tenant", "acme", "--burst", "5", "--reason", "tighter").code == 0
    assert cli("--json", "quota", "show", "--tenant", "acme").json["quotas"][0]["burst"] == 5
