"""Dependency chains: a child waits until every parent succeeded; a parent that ends any other way cancels its
waiting descendants (dependency_failed); unknown parents, dead parents and cycles are refused at enqueue with
the ledger unchanged."""

from __future__ import annotations

import pytest
from server_fixtures import Keys, init_ledger, run_cli, serving

from airgap_orch.errors import InvalidInput, NotFound
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops


def enqueue(ledger: Ledger, **fields) -> str:
    return ops.enqueue(ledger, {"tenant": "acme", "project": "feeds", "type": "ingest", **fields})["job_id"]


def run(ledger: Ledger, job_id: str, *, fail: bool = False) -> None:
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=30)["leases"]
    assert lease["job_id"] == job_id
    if fail:
        ops.fail(ledger, job_id, lease["lease_id"], error="bad feed", no_retry=True)
    else:
        ops.ack(ledger, job_id, lease["lease_id"])


def state_of(ledger: Ledger, job_id: str) -> str:
    return ops.show(ledger, job_id)["state"]


def last_entry(ledger: Ledger, job_id: str) -> dict:
    return ops.show(ledger, job_id)["history"][-1]


def test_a_child_waits_until_its_parent_succeeded(ledger):
    parent = enqueue(ledger)
    child = enqueue(ledger, depends_on=[parent], type="export")
    assert state_of(ledger, child) == "waiting"
    assert ops.show(ledger, child)["depends_on"] == [parent]
    assert ops.show(ledger, child)["history"][0]["reason"] == f"depends_on:{parent}"  # edges are in history too
    run(ledger, parent)  # the claim sees only the parent
    assert state_of(ledger, child) == "queued"
    entry = last_entry(ledger, child)
    assert (entry["event_type"], entry["from_state"], entry["to_state"]) == ("job.ready", "waiting", "queued")
    run(ledger, child)
    assert ledger_ops.verify(ledger)["ok"] is True


def test_a_child_of_two_parents_waits_for_both(ledger):
    first, second = enqueue(ledger), enqueue(ledger)
    child = enqueue(ledger, depends_on=[first, second])
    run(ledger, first)
    assert state_of(ledger, child) == "waiting"
    run(ledger, second)
    assert state_of(ledger, child) == "queued"


def test_a_failed_parent_cancels_every_waiting_descendant_with_dependency_failed(ledger):
    parent = enqueue(ledger)
    child = enqueue(ledger, depends_on=[parent])
    grandchild = enqueue(ledger, depends_on=[child])
    bystander = enqueue(ledger)
    run(ledger, parent, fail=True)
    for job_id in (child, grandchild):
        entry = last_entry(ledger, job_id)
        assert (entry["event_type"], entry["to_state"], entry["reason"]) == ("job.canceled", "canceled",
                                                                             "dependency_failed")
    assert state_of(ledger, bystander) == "queued"
    events = ledger_ops.event_log(ledger)["events"]
    canceled = [event for event in events if event["eventType"] == "job.canceled"]
    assert {event["job"]["id"] for event in canceled} == {child, grandchild}
    assert {event["job"]["reason"] for event in canceled} == {"dependency_failed"}


def test_a_parent_dead_lettered_by_lease_expiry_cancels_its_children(ledger, manual_clock):
    parent = enqueue(ledger, max_attempts=1)
    child = enqueue(ledger, depends_on=[parent])
    ops.claim(ledger, worker_id="w", limit=1, lease_seconds=5)
    manual_clock.advance(6)
    ops.recover(ledger)
    assert state_of(ledger, parent) == "dead_letter"
    assert (state_of(ledger, child), last_entry(ledger, child)["reason"]) == ("canceled", "dependency_failed")


def test_an_operator_cancel_of_a_parent_cancels_its_children_and_a_waiting_job_can_be_canceled(ledger):
    parent, other = enqueue(ledger), enqueue(ledger)
    child = enqueue(ledger, depends_on=[parent])
    waiting = enqueue(ledger, depends_on=[other])
    ops.cancel(ledger, waiting, reason="not needed")
    assert state_of(ledger, waiting) == "canceled"
    ops.cancel(ledger, parent, reason="feed retired")
    assert (state_of(ledger, child), last_entry(ledger, child)["reason"]) == ("canceled", "dependency_failed")


def test_a_parent_that_already_succeeded_makes_the_child_queued_at_once(ledger):
    parent = enqueue(ledger)
    run(ledger, parent)
    child = enqueue(ledger, depends_on=[parent])
    assert state_of(ledger, child) == "queued"


def snapshot(ledger: Ledger) -> tuple:
    info = ledger_ops.info(ledger)
    return info["history_entries"], info["history_head"], info["jobs"]


def test_unknown_and_dead_parents_and_cycles_are_refused_with_the_ledger_unchanged(ledger):
    dead = enqueue(ledger)
    run(ledger, dead, fail=True)
    keyed = enqueue(ledger, idempotency_key="nightly-1")
    before = snapshot(ledger)
    with pytest.raises(NotFound, match="does not exist"):
        enqueue(ledger, depends_on=["01a21a93-8cff-7544-bbc6-ed2eb8cf05bc"])
    with pytest.raises(InvalidInput, match="is failed"):
        enqueue(ledger, depends_on=[dead])
    with pytest.raises(InvalidInput, match="cannot depend on itself"):
        enqueue(ledger, idempotency_key="nightly-1", depends_on=[keyed])
    with pytest.raises(InvalidInput):
        enqueue(ledger, depends_on=["not-a-uuid"])
    with pytest.raises(InvalidInput):
        ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": "t"},
                                   {"tenant": "acme", "project": "p", "type": "t", "depends_on": [dead]}])
    assert snapshot(ledger) == before


def test_cli_depends_on_is_repeatable_and_unknown_parents_exit_1(cli):
    first = cli("--json", "jobs", "enqueue", "--tenant", "a", "--project", "p", "--type", "t").json["job_id"]
    second = cli("--json", "jobs", "enqueue", "--tenant", "a", "--project", "p", "--type", "t").json["job_id"]
    child = cli("--json", "jobs", "enqueue", "--tenant", "a", "--project", "p", "--type", "t",
                "--depends-on", first, "--depends-on", second)
    assert child.code == 0, child
    shown = cli("--json", "jobs", "show", child.json["job_id"]).json
    assert (shown["state"], sorted(shown["depends_on"])) == ("waiting", sorted([first, second]))
    refused = cli("jobs", "enqueue", "--tenant", "a", "--project", "p", "--type", "t", "--depends-on",
                  "01a21a93-8cff-7544-bbc6-ed2eb8cf05bc")
    assert refused.code == 1 and len(refused.stderr.splitlines()) == 1 and "does not exist" in refused.stderr
    assert len(cli("--json", "jobs", "list").json["jobs"]) == 3


# -- tenants never meet: a parent is resolved within the child's tenant ---------------------------------------

@pytest.mark.parametrize("caller_tenants", [None, ["acme"], ["acme", "globex"]], ids=["unrestricted", "acme",
                                                                                      "acme-and-globex"])
def test_a_parent_of_another_tenant_is_not_found_and_nothing_is_written(ledger, caller_tenants):
    """Whoever asks (a caller limited to acme, one that sees both tenants, or the local CLI), an acme job cannot
    wait on a globex job: the parent is "not found" in acme, its state is not told, and the ledger is unchanged."""
    globex = {"tenant": "globex", "project": "feeds", "type": "ingest"}
    queued = ops.enqueue(ledger, globex)["job_id"]
    dead = ops.enqueue(ledger, globex)["job_id"]
    run(ledger, queued)  # the claim takes the oldest: `queued` succeeds ...
    run(ledger, dead, fail=True)  # ... and `dead` fails
    ops.enqueue(ledger, globex)  # and one stays queued
    before = snapshot(ledger)
    for parent in (queued, dead):
        spec = {"tenant": "acme", "project": "feeds", "type": "export", "depends_on": [parent]}
        with pytest.raises(NotFound) as refused:
            ops.enqueue(ledger, spec, tenants=caller_tenants)
        assert str(refused.value).startswith(f"parent job {parent} does not exist in tenant acme;")
        assert "succeeded" not in str(refused.value) and "failed" not in str(refused.value)
        with pytest.raises(NotFound):  # in a batch too, next to a spec that is fine
            ops.enqueue_batch(ledger, [{**spec, "depends_on": []}, spec], tenants=caller_tenants)
    assert snapshot(ledger) == before


def test_a_parent_of_the_same_tenant_is_still_found_in_a_batch_of_two_tenants(ledger):
    acme_parent = enqueue(ledger)
    globex_parent = ops.enqueue(ledger, {"tenant": "globex", "project": "feeds", "type": "ingest"})["job_id"]
    children = ops.enqueue_batch(ledger, [
        {"tenant": "acme", "project": "feeds", "type": "export", "depends_on": [acme_parent]},
        {"tenant": "globex", "project": "feeds", "type": "export", "depends_on": [globex_parent]}])["job_ids"]
    assert [state_of(ledger, child) for child in children] == ["waiting", "waiting"]


def test_a_token_limited_to_one_tenant_naming_another_tenants_job_as_parent_exits_1(tmp_path):
    """Through a real server, with the CLI routed to it: `jobs enqueue --depends-on` and `jobs show` agree that
    a globex job does not exist for an acme token (exit 1, HTTP 404), and nothing is written."""
    keys = Keys(tmp_path / "keys")
    tokens = keys.issue_many({"acme": {"tenants": ["acme"]}, "globex": {"tenants": ["globex"]},
                              "admin": {"tenants": ["acme", "globex"]}})
    path = init_ledger(tmp_path / "ledger.duckdb")
    with serving(path, "--token-key", str(keys.public_key)) as server:
        parent = server.request("POST", "/v1/jobs", {"tenant": "globex", "project": "feeds", "type": "ingest"},
                                token=tokens["globex"]).json["job_id"]
        before = server.ledger_info(tokens["admin"])

        def as_acme(*args: str):
            return run_cli("--server", server.url, "--token", tokens["acme"], *args)

        shown = as_acme("jobs", "show", parent)
        refused = as_acme("jobs", "enqueue", "--tenant", "acme", "--project", "feeds", "--type", "export",
                          "--depends-on", parent)
        answer = server.request("POST", "/v1/jobs", {"tenant": "acme", "project": "feeds", "type": "export",
                                                     "depends_on": [parent]}, token=tokens["acme"])
        after = server.ledger_info(tokens["admin"])
    assert shown.code == 1, shown
    assert refused.code == 1, refused
    assert len(refused.stderr.strip().splitlines()) == 1 and "does not exist in tenant acme" in refused.stderr
    assert "queued" not in refused.stderr and "waiting" not in refused.stdout
    assert answer.status == 404 and answer.json["exit_code"] == 1, answer
    assert (after["jobs"], after["history_entries"], after["history_head"]) == (
        before["jobs"], before["history_entries"], before["history_head"])
