"""Totals a token reads count only its tenants (DESIGN invariant 10): `ledger verify`, `ledger info`, `audit verify`
and `/metrics` through a real server with real tokens. A token that also carries `orch:admin` reads them for the
whole site. A verify always checks the whole ledger; a failure in another tenant's record is told without that
record's details (job id, tenant, state, action) nor the site's totals.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import duckdb
import pytest
from server_fixtures import Keys, assert_problem, init_ledger, metric, run_cli, serving, total

READ = ["orch:read"]
SITE = ["orch:read", "orch:admin"]
WORK = ["orch:read", "orch:operate", "orch:worker"]
ACME = {"tenant": "acme", "project": "web", "type": "scan"}
GLOBEX = {"tenant": "globex", "project": "feeds", "type": "vex"}


def call(server, method: str, path: str, token: str, body: Any = None, **kwargs: Any) -> Any:
    response = server.request(method, path, body, token=token, **kwargs)
    assert response.status == 200, response
    return response.json


def work(server, tokens: dict[str, str]) -> dict[str, list[str]]:
    """acme: 2 jobs (one leased and acked, one canceled); globex: 3 jobs (two leased, one canceled)."""
    ids: dict[str, list[str]] = {}
    for tenant, spec, count, claims in (("acme", ACME, 2, 1), ("globex", GLOBEX, 3, 2)):
        token = tokens[f"{tenant}_work"]
        ids[tenant] = call(server, "POST", "/v1/jobs/batch", token, {"jobs": [spec] * count})["job_ids"]
        leases = call(server, "POST", "/v1/jobs/claim", token, {"worker_id": f"w-{tenant}", "limit": claims,
                                                                "lease_seconds": 3600})["leases"]
        assert len(leases) == claims
        if tenant == "acme":
            call(server, "POST", f"/v1/jobs/{leases[0]['job_id']}/ack", token, {"lease_id": leases[0]["lease_id"]})
        queued = next(job for job in ids[tenant] if job not in {lease["job_id"] for lease in leases})
        call(server, "POST", f"/v1/jobs/{queued}/cancel", token, {"reason": f"{tenant} changed its mind"})
    return ids


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("totals")
    keys = Keys(root / "keys")
    tokens = keys.issue_many({
        "acme_reader": {"tenants": ["acme"], "scopes": READ},
        "acme_site": {"tenants": ["acme"], "scopes": SITE},
        "admin_only": {"tenants": ["acme"], "scopes": ["orch:admin"]},
        "acme_work": {"tenants": ["acme"], "scopes": WORK},
        "globex_work": {"tenants": ["globex"], "scopes": WORK},
        "both": {"tenants": ["acme", "globex"], "scopes": READ},
    })
    ledger = init_ledger(root / "totals.duckdb")
    with serving(ledger, "--token-key", str(keys.public_key)) as server:
        ids = work(server, tokens)
        events = call(server, "GET", "/v1/ledger/events", tokens["both"], query={"limit": 1000})["events"]
        yield {"server": server, "tokens": tokens, "ids": ids, "ledger": ledger,
               "history": Counter(event["tenantId"] for event in events),
               "leased": Counter(event["tenantId"] for event in events if event["eventType"] == "job.leased")}


def test_a_tenant_readers_ledger_verify_counts_only_its_tenants(world):
    server, tokens, history = world["server"], world["tokens"], world["history"]
    mine = call(server, "POST", "/v1/ledger/verify", tokens["acme_reader"])
    assert (mine["jobs"], mine["history_entries"]) == (2, history["acme"]), mine  # before: 5 and every tenant's
    assert (mine["ok"], mine["jobs"], mine["history_entries"], mine["audit_entries"], mine["counts_of"]) == (
        True, 2, history["acme"], 1, ["acme"])
    site = call(server, "POST", "/v1/ledger/verify", tokens["acme_site"])
    assert (site["jobs"], site["history_entries"], site["audit_entries"], site["counts_of"]) == (
        5, history["acme"] + history["globex"], 2, "site")


def test_a_tenant_readers_ledger_info_counts_its_history_and_gives_no_site_head(world):
    server, tokens, history = world["server"], world["tokens"], world["history"]
    mine = call(server, "GET", "/v1/ledger", tokens["acme_reader"])
    assert (mine["jobs"], mine["history_entries"], mine["history_head"]) == (
        {"succeeded": 1, "canceled": 1}, history["acme"], None)
    site = call(server, "GET", "/v1/ledger", tokens["acme_site"])
    assert site["history_entries"] == history["acme"] + history["globex"] and len(site["history_head"]) == 64
    assert sum(site["jobs"].values()) == 5


def test_a_tenant_readers_audit_verify_counts_its_entries_and_gives_no_site_head(world):
    server, tokens = world["server"], world["tokens"]
    mine = call(server, "POST", "/v1/audit/verify", tokens["acme_reader"])
    assert (mine["audit_entries"], mine["audit_head"]) == (1, None)
    site = call(server, "POST", "/v1/audit/verify", tokens["acme_site"])
    assert site["audit_entries"] == 2 and len(site["audit_head"]) == 64


def test_metrics_for_a_tenant_reader_count_its_tenants_and_leave_out_server_wide_series(world):
    server, tokens, leased = world["server"], world["tokens"], world["leased"]
    mine = server.metrics(tokens["acme_reader"])
    jobs = {dict(labels)["state"]: value for (name, labels), value in mine.items() if name == "airgap_orch_jobs"}
    assert jobs == {"succeeded": 1, "canceled": 1}
    assert total(mine, "airgap_orch_claims_total") == leased["acme"] == 1
    assert total(mine, "airgap_orch_acks_total") == 1
    assert metric(mine, "airgap_orch_transitions_total", event_type="job.canceled") == 1
    assert metric(mine, "airgap_orch_transitions_total", event_type="job.created") == 2
    assert not [name for name, _ in mine if name.startswith(("airgap_orch_http_requests", "airgap_orch_claim_latency",
                                                            "airgap_orch_group_commit", "process_", "airgap_staleness",
                                                            "airgap_drift"))]
    assert {dict(labels)["tenant"] for _, labels in mine if "tenant" in dict(labels)} <= {"acme", "other"}
    site = server.metrics(tokens["acme_site"])
    assert sum(value for (name, _), value in site.items() if name == "airgap_orch_jobs") == 5
    assert total(site, "airgap_orch_claims_total") == leased["acme"] + leased["globex"] == 3
    assert metric(site, "airgap_orch_transitions_total", event_type="job.created") == 5
    assert metric(site, "airgap_orch_http_requests_total", route="jobs.claim", status="200") == 2
    assert metric(site, "airgap_orch_claim_latency_ms_count") == 2


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/ledger/verify"), ("GET", "/v1/ledger"),
                                               ("POST", "/v1/audit/verify"), ("GET", "/metrics")])
def test_orch_admin_alone_allows_nothing(world, method, path):
    problem = assert_problem(world["server"].request(method, path, token=world["tokens"]["admin_only"]), 403,
                             "forbidden", 7)
    assert "orch:read" in problem["detail"]


def test_the_cli_through_the_server_verifies_with_the_tokens_tenants(world):
    server, tokens = world["server"], world["tokens"]
    for name, counts_of, jobs in (("acme_reader", ["acme"], 2), ("acme_site", "site", 5)):
        result = run_cli("--server", server.url, "--token", tokens[name], "--json", "ledger", "verify")
        assert result.code == 0, result
        assert (result.json["counts_of"], result.json["jobs"]) == (counts_of, jobs), name


# -- failures: the whole ledger is checked, another tenant's record is not described ---------------------------

@pytest.fixture
def tampered(tmp_path):
    """A ledger with work in both tenants; `refusals(statement)` tampers with it behind the server's back and
    returns the problem detail each token gets from POST /v1/ledger/verify on a fresh server."""
    keys = Keys(tmp_path / "keys")
    tokens = keys.issue_many({"acme_reader": {"tenants": ["acme"], "scopes": READ},
                              "acme_site": {"tenants": ["acme"], "scopes": SITE},
                              "acme_work": {"tenants": ["acme"], "scopes": WORK},
                              "globex_work": {"tenants": ["globex"], "scopes": WORK}})
    ledger = init_ledger(tmp_path / "tampered.duckdb")
    options = ("--token-key", str(keys.public_key))
    with serving(ledger, *options) as server:
        ids = work(server, tokens)

    def refusals(statement: str, params: list | None = None) -> dict[str, str]:
        with duckdb.connect(str(ledger)) as con:
            con.execute(statement, params or [])
        with serving(ledger, *options) as server:
            return {name: assert_problem(server.request("POST", "/v1/ledger/verify", token=tokens[name]), 422,
                                         "verification-failed", 4)["detail"]
                    for name in ("acme_reader", "acme_site")}

    return {"ids": ids, "ledger": ledger, "refusals": refusals}


def test_another_tenants_tampered_job_fails_a_tenant_readers_verify_without_its_details(tampered):
    globex_job = tampered["ids"]["globex"][0]
    told = tampered["refusals"]("UPDATE jobs SET state = 'succeeded' WHERE job_id = ?", [globex_job])
    assert globex_job in told["acme_site"] and "'succeeded'" in told["acme_site"], told
    assert globex_job not in told["acme_reader"] and "globex" not in told["acme_reader"], told
    assert "succeeded" not in told["acme_reader"] and "outside your tenants" in told["acme_reader"], told


def test_a_tenant_reader_is_told_the_details_of_its_own_tampered_job(tampered):
    acme_job = tampered["ids"]["acme"][0]
    told = tampered["refusals"](f"UPDATE jobs_finished SET attempts = 9 WHERE job_id = '{acme_job}'; "
                                f"UPDATE jobs SET attempts = 9 WHERE job_id = '{acme_job}'")
    assert acme_job in told["acme_reader"] and told["acme_reader"] == told["acme_site"], told


def test_another_tenants_altered_audit_entry_is_told_by_seq_only(tampered):
    told = tampered["refusals"]("UPDATE audit_log SET entry = replace(entry, 'globex changed', 'acme changed') "
                                "WHERE seq = 2")
    assert told["acme_site"].startswith("audit entry 2 (job.cancel): hash does not match"), told
    assert told["acme_reader"].startswith("audit entry 2 (outside your tenants): hash does not match"), told


def test_a_cut_off_end_is_told_to_a_tenant_reader_without_the_site_total(tampered):
    with duckdb.connect(str(tampered["ledger"])) as con:
        (last,) = con.execute("SELECT max(seq) FROM history").fetchone()
    told = tampered["refusals"]("DELETE FROM history WHERE seq = ?", [last])
    assert told["acme_site"].startswith(f"history ends at seq {last - 1} but the recorded head is seq {last}"), told
    assert told["acme_reader"].startswith(f"history ends at seq {last - 1} but the recorded head is later"), told
    assert str(last) not in told["acme_reader"].replace(str(last - 1), ""), told


def test_local_cli_verify_is_site_wide(tampered):
    # The local operator owns the file: every tenant (no token, no server).
    result = run_cli("--ledger", str(tampered["ledger"]), "--json", "ledger", "verify")
    assert result.code == 0, result
    assert (result.json["counts_of"], result.json["jobs"], result.json["audit_entries"]) == ("site", 5, 2)


def test_jobs_recover_counts_only_the_callers_tenants(ledger, manual_clock):
    from airgap_orch.operations import jobs as ops

    ops.enqueue_batch(ledger, [ACME, GLOBEX, GLOBEX])
    assert len(ops.claim(ledger, worker_id="w", limit=3, lease_seconds=30)["leases"]) == 3
    manual_clock.advance(60)  # every lease expired; recover sweeps them all, site-wide
    assert ops.recover(ledger, tenants=frozenset({"acme"})) == {"recovered": 1}
    assert len(ops.list_jobs(ledger, state="queued")["jobs"]) == 3
    manual_clock.advance(600)  # past the retry backoff
    assert len(ops.claim(ledger, worker_id="w", limit=3, lease_seconds=30)["leases"]) == 3
    manual_clock.advance(60)
    assert ops.recover(ledger) == {"recovered": 3}
