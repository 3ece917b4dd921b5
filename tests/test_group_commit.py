"""Group commit in the server's writer, on a real ledger: claims that arrive together and ask with the same
filters share one claim (claims.claim_shared); each worker gets its own leases, recorded under its own id."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import duckdb
import pytest
from conftest import list_all

from airgap_orch.errors import NotFound, StaleLease
from airgap_orch.ledger import Ledger, Transaction
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations import limits as limit_ops
from airgap_orch.operations.writer import LedgerWriter
from airgap_orch.orchestrator import claims, reports


def enqueue(ledger: Ledger, count: int, **fields) -> list[str]:
    spec = {"tenant": "acme", "project": "feeds", "type": "scan", **fields}
    return ops.enqueue_batch(ledger, [dict(spec) for _ in range(count)])["job_ids"]


def claimed_by(ledger: Ledger, job_ids: list[str]) -> dict[str, str]:
    """worker_id of each job as the ledger holds it, and as its claim history entry records it."""
    owners = {}
    for job_id in job_ids:
        shown = ops.show(ledger, job_id)
        claims = [entry for entry in shown["history"] if entry["event_type"] == "job.leased"]
        assert [entry["worker_id"] for entry in claims] == [shown["worker_id"]]
        assert claims[0]["actor"] == f"worker:{shown['worker_id']}"
        owners[job_id] = shown["worker_id"]
    return owners


def test_a_shared_claim_hands_out_jobs_in_claim_order_first_taker_first(ledger):
    low = enqueue(ledger, 3, priority=0)
    high = enqueue(ledger, 2, priority=5)
    with ledger.transaction() as tx:
        shares = claims.claim_shared(tx, [("w-1", 2), ("w-2", 2), ("w-3", 2)], lease_seconds=60)
    ids = [[lease["job_id"] for lease in share] for share in shares]
    assert ids[0] == sorted(high)  # the first taker gets the most urgent jobs
    assert len(ids[1]) == 2 and len(ids[2]) == 1  # the rest in order; the last taker gets what is left
    assert sorted(ids[1] + ids[2]) == sorted(low)
    assert claimed_by(ledger, low + high) == {job_id: f"w-{n + 1}" for n, share in enumerate(ids) for job_id in share}
    assert len({lease["lease_id"] for share in shares for lease in share}) == 5


def test_each_worker_of_a_shared_claim_reports_under_its_own_lease(ledger):
    enqueue(ledger, 2)
    with ledger.transaction() as tx:
        (mine,), (theirs,) = claims.claim_shared(tx, [("w-1", 1), ("w-2", 1)], lease_seconds=60)
    assert ops.heartbeat(ledger, theirs["job_id"], theirs["lease_id"])["state"] == "running"
    with pytest.raises(StaleLease):
        ops.ack(ledger, theirs["job_id"], mine["lease_id"])
    assert ops.ack(ledger, mine["job_id"], mine["lease_id"])["state"] == "succeeded"
    assert ops.ack(ledger, theirs["job_id"], theirs["lease_id"])["state"] == "succeeded"
    assert ops.show(ledger, theirs["job_id"])["worker_id"] == "w-2"


def test_a_shared_claim_under_a_binding_limit_leases_no_more_than_the_limit(ledger):
    job_ids = enqueue(ledger, 10)
    limit_ops.concurrency_set(ledger, key="type:scan", max=3, reason="test")
    with ledger.transaction() as tx:
        shares = claims.claim_shared(tx, [("w-1", 2), ("w-2", 2)], lease_seconds=60)
    assert [len(share) for share in shares] == [2, 1]
    owners = claimed_by(ledger, [lease["job_id"] for share in shares for lease in share])
    assert Counter(owners.values()) == {"w-1": 2, "w-2": 1}
    assert Counter(job["state"] for job in ops.list_jobs(ledger)["jobs"] if job["job_id"] in job_ids) == {
        "leased": 3, "queued": 7}


@pytest.mark.parametrize("group_commit", [True, False])
def test_claims_arriving_together_get_the_same_answers_with_and_without_group_commit(ledger, group_commit):
    scans = enqueue(ledger, 5, type="scan")
    exports = enqueue(ledger, 2, type="export")
    writer = LedgerWriter(ledger, group_commit=group_commit)
    sizes: list[int] = []
    writer.batch_observers.append(sizes.append)
    caller = dispatch.Caller(actor="test")
    # Submitted before the writer starts, so they are in its queue together.
    futures = [writer.submit("jobs.claim", {"worker_id": worker, "type": job_type, "limit": limit}, caller)
               for worker, job_type, limit in (("w-1", "scan", 2), ("w-2", "export", 5), ("w-3", "scan", 2),
                                               ("w-4", "scan", 4))]
    writer.start()
    try:
        answers = [future.result(timeout=30)["leases"] for future in futures]
    finally:
        writer.stop()
    assert [len(leases) for leases in answers] == [2, 2, 2, 1]
    assert {lease["job_id"] for lease in answers[1]} == set(exports)
    granted = [lease["job_id"] for n in (0, 2, 3) for lease in answers[n]]
    assert sorted(granted) == sorted(scans)
    assert claimed_by(ledger, scans + exports) == {
        lease["job_id"]: f"w-{n + 1}" for n, leases in enumerate(answers) for lease in leases}
    assert sizes == ([4] if group_commit else [1, 1, 1, 1])
    assert ledger_ops.verify(ledger)["ok"] is True


def test_claims_over_the_shared_claim_size_are_served_in_turn(ledger):
    enqueue(ledger, 2_500)
    writer = LedgerWriter(ledger)
    caller = dispatch.Caller(actor="test")
    futures = [writer.submit("jobs.claim", {"worker_id": f"w-{n}", "type": "scan", "limit": 1_000}, caller)
               for n in range(3)]
    writer.start()
    try:
        answers = [future.result(timeout=60)["leases"] for future in futures]
    finally:
        writer.stop()
    assert [len(leases) for leases in answers] == [1_000, 1_000, 500]
    assert ledger_ops.verify(ledger)["ok"] is True
    assert len({lease["job_id"] for leases in answers for lease in leases}) == 2_500
    counts = Counter(job["worker_id"] for job in list_all(ledger, state="leased", limit=5_000)["jobs"])
    assert counts == {"w-0": 1_000, "w-1": 1_000, "w-2": 500}


def test_a_stopped_writer_refuses_a_call_instead_of_leaving_the_caller_waiting(ledger):
    (job_id,) = enqueue(ledger, 1)
    writer = LedgerWriter(ledger)
    writer.start()
    lease = writer.call("jobs.claim", {"worker_id": "w", "limit": 1})["leases"][0]
    writer.stop()
    with pytest.raises(RuntimeError, match="writer has stopped"):  # submit, not call: a regression fails, not hangs
        writer.submit("jobs.ack", {"job_id": job_id, "lease_id": lease["lease_id"]}, dispatch.Caller())
    assert ops.show(ledger, job_id)["state"] == "leased"  # the refused ack changed nothing


def test_a_group_that_breaks_is_retried_in_halves_so_one_broken_request_fails_alone(ledger, monkeypatch):
    """An error that is not a refusal (here an I/O error injected into one job's ack) rolls the whole group
    back; the writer then runs each half on its own, and halves again the half that breaks, so only that
    request fails."""
    good, broken = enqueue(ledger, 2), enqueue(ledger, 1)[0]
    more = enqueue(ledger, 1)
    leases = {lease["job_id"]: lease["lease_id"] for lease in ops.claim(ledger, worker_id="w", limit=3)["leases"]}
    ack_params = reports.ack_params

    def ack_params_that_break_on_one_job(items, tenants):  # every ack statement's parameters come from here
        if any(item["job_id"] == broken for item in items):
            raise duckdb.IOException("injected: the disk went away")
        return ack_params(items, tenants)

    monkeypatch.setattr(reports, "ack_params", ack_params_that_break_on_one_job)
    writer = LedgerWriter(ledger)
    answers = {job_id: writer.submit("jobs.ack", {"job_id": job_id, "lease_id": leases[job_id]}, dispatch.Caller())
               for job_id in [*good, broken]}
    claim = writer.submit("jobs.claim", {"worker_id": "w2", "limit": 1}, dispatch.Caller())
    sizes: list[int] = []
    writer.batch_observers.append(sizes.append)
    writer.start()  # all four were queued before the writer ran: they arrive as one group
    try:
        assert [answers[job_id].result(10)["state"] for job_id in good] == ["succeeded", "succeeded"]
        with pytest.raises(duckdb.IOException, match="injected"):
            answers[broken].result(10)
        assert [lease["job_id"] for lease in claim.result(10)["leases"]] == more
    finally:
        writer.stop()
    assert sizes == [4, 2, 2, 1, 1]  # the group; its good half; the half that broke, halved: [broken], [claim]
    assert [ops.show(ledger, job_id)["state"] for job_id in [*good, broken, *more]] == [
        "succeeded", "succeeded", "leased", "leased"]
    assert ledger_ops.verify(ledger)["ok"] is True


# -- a group's acks and its claim in one statement (claims.ack_and_claim) ---------------------------------------

@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Names of the ledger queries run, in order (the real queries run; this only writes their names down)."""
    names: list[str] = []
    for method in ("execute", "rows", "fetch"):
        real = getattr(Transaction, method)

        def recording(self, name, _real=real, **params):
            names.append(name)
            return _real(self, name, **params)

        monkeypatch.setattr(Transaction, method, recording)
    return names


def _reports_ready(ledger: Ledger) -> dict[str, dict]:
    """Six acme scans, one acme export and three scans of tenant other; four jobs leased to w-0 (tenants take
    turns), one of them running with its cancellation requested. Returns the leases by job id, in claim order."""
    enqueue(ledger, 2, priority=5)
    enqueue(ledger, 4)
    enqueue(ledger, 3, tenant="other")
    enqueue(ledger, 1, type="export")
    leases = {lease["job_id"]: lease for lease in ops.claim(ledger, worker_id="w-0", limit=4)["leases"]}
    running = list(leases)[2]
    ops.heartbeat(ledger, running, leases[running]["lease_id"])
    ops.cancel(ledger, running, reason="operator asked")
    return leases


def _acks(leases: dict[str, dict]) -> list[dict]:
    """Two good acks (one with artifacts), one of a job whose cancellation was requested, one with a lease that
    does not hold its job, one of a job that does not exist."""
    first, second, canceled, stale = leases
    artifact = {"uri": "file:///out/report.json", "digest": "sha256:" + "0" * 64, "mime": "application/json"}
    return [{"job_id": first, "lease_id": leases[first]["lease_id"]},
            {"job_id": second, "lease_id": leases[second]["lease_id"], "artifacts": [artifact]},
            {"job_id": canceled, "lease_id": leases[canceled]["lease_id"]},
            {"job_id": stale, "lease_id": leases[first]["lease_id"]},
            {"job_id": "01000000-0000-7000-8000-000000000000", "lease_id": leases[first]["lease_id"]}]


def _plain(outcome):
    return (type(outcome).__name__, str(outcome)) if isinstance(outcome, Exception) else outcome


@pytest.mark.parametrize("filters, kinds", [({}, {("acme", "scan"), ("acme", "export"), ("other", "scan")}),
                                            ({"job_type": "scan", "tenants": {"acme"}}, {("acme", "scan")})])
def test_acks_and_a_claim_in_one_statement_give_what_ack_then_claim_gives(ledger_path, tmp_path, manual_clock,
                                                                          statements, filters, kinds):
    """Two copies of one ledger: one acks and then claims (two statements), the other runs claims.ack_and_claim
    (one statement). Outcomes, leases, rows and history agree, except for the fresh lease ids."""
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        leases = _reports_ready(ledger)
        start = ledger.head_seq
    copy = tmp_path / "copy.duckdb"
    shutil.copyfile(ledger_path, copy)
    found = {}
    for path, joined in ((ledger_path, False), (copy, True)):
        with Ledger.open(path, lock_timeout=1) as ledger:
            statements.clear()
            with ledger.transaction() as tx:
                takers = [("w-1", 3), ("w-2", 3)]
                if joined:
                    outcomes, shares = claims.ack_and_claim(tx, _acks(leases), takers, lease_seconds=60, **filters)
                else:
                    outcomes = reports.ack(tx, _acks(leases))
                    shares = claims.claim_shared(tx, takers, lease_seconds=60, **filters)
            ran = [name for name in statements if name in ("ack", "claim", "ack_and_claim")]
            assert ran == (["ack_and_claim"] if joined else ["ack", "claim"])
            history = ledger.read().fetch("history_page", after_seq=start, limit=100, tenants=None)
            rows = sorted(ledger.read().rows("jobs_list", state=None, tenant=None, job_type=None, project=None,
                                             queue=None, tenants=None, after_created_at=None, after_job_id=None,
                                             limit=100),
                          key=lambda row: row["job_id"])
            found[joined] = {
                "outcomes": [_plain(outcome) for outcome in outcomes],
                "shares": [[{k: v for k, v in lease.items() if k != "lease_id"} for lease in share]
                           for share in shares],
                "history": [{k: v for k, v in json.loads(entry).items() if k != "lease_id"}
                            for _, entry, _ in history],
                "rows": [{k: v for k, v in row.items() if k != "lease_id"} for row in rows],
            }
            assert ledger_ops.verify(ledger)["ok"] is True
    assert found[True] == found[False]
    states = [outcome[1] if isinstance(outcome, tuple) else outcome["state"] for outcome in found[True]["outcomes"]]
    assert states[:3] == ["succeeded", "succeeded", "canceled"]
    assert "was never issued for job" in states[3] and "no job" in states[4]
    taken = [lease for share in found[True]["shares"] for lease in share]
    assert {(lease["tenant"], lease["type"]) for lease in taken} == kinds  # the claim's filters hold
    assert [entry["event_type"] for entry in found[True]["history"]] == [
        "job.succeeded", "job.succeeded", "job.canceled", *["job.leased"] * len(taken)]


def test_an_ack_that_readies_a_dependent_job_lets_the_same_claim_take_it(ledger, statements):
    """While jobs wait on others, ack_and_claim acks first and claims after, as two statements."""
    (parent,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w-0", limit=1)["leases"]
    (child,) = enqueue(ledger, 1, depends_on=[parent])
    statements.clear()
    with ledger.transaction() as tx:
        outcomes, [taken] = claims.ack_and_claim(tx, [{"job_id": parent, "lease_id": lease["lease_id"]}],
                                                 [("w-1", 5)], lease_seconds=60)
    assert outcomes[0]["state"] == "succeeded"
    assert [job["job_id"] for job in taken] == [child]
    assert "ack_and_claim" not in statements and statements.index("ack") < statements.index("claim")


def test_an_ack_limited_to_other_tenants_is_refused_in_the_joined_statement_and_the_claim_goes_on(ledger,
                                                                                                   statements):
    (mine,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w-0", limit=1)["leases"]
    (next_job,) = enqueue(ledger, 1)
    with ledger.transaction() as tx:
        [refused], [taken] = claims.ack_and_claim(
            tx, [{"job_id": mine, "lease_id": lease["lease_id"], "tenants": frozenset({"other"})}], [("w-1", 1)],
            lease_seconds=60)
    assert "ack_and_claim" in statements
    assert isinstance(refused, NotFound) and [job["job_id"] for job in taken] == [next_job]
    assert ops.show(ledger, mine)["state"] == "leased"


def test_a_groups_acks_are_applied_with_its_claim_in_one_statement(ledger, statements):
    leases = _reports_ready(ledger)
    writer = LedgerWriter(ledger)
    sizes: list[int] = []
    writer.batch_observers.append(sizes.append)
    acks = _acks(leases)
    many = writer.submit("jobs.ack_many", {"acks": acks[:4]},
                         dispatch.Caller(actor="test"))
    single = writer.submit("jobs.ack", acks[4], dispatch.Caller(actor="test"))
    claim = writer.submit("jobs.claim", {"worker_id": "w-1", "limit": 5}, dispatch.Caller(actor="test"))
    statements.clear()
    writer.start()  # all three were queued before the writer ran: they arrive as one group
    try:
        results = many.result(10)["results"]
        with pytest.raises(NotFound):
            single.result(10)
        taken = claim.result(10)["leases"]
    finally:
        writer.stop()
    assert sizes == [3]
    assert [name for name in statements if name in ("ack", "claim", "ack_and_claim")] == ["ack_and_claim"]
    assert [result.get("state") for result in results] == ["succeeded", "succeeded", "canceled", None]
    assert results[3]["error"]["exit_code"] == 3
    assert len(taken) == 5 and {job["worker_id"] for job in ops.list_jobs(ledger, state="leased")["jobs"]} == {
        "w-0", "w-1"}
    assert ledger_ops.verify(ledger)["ok"] is True


def test_a_repeated_ack_of_one_lease_is_refused_and_its_artifacts_are_not_kept(ledger):
    """The first ack of a (job, lease) completes the job; a repeat in the same batch, with other artifacts, is
    refused and changes nothing: the row and its history keep the first ack's artifacts."""
    enqueue(ledger, 3)
    first, second = ops.claim(ledger, worker_id="w-0", limit=2)["leases"]

    def artifact(name):
        return [{"uri": f"file:///out/{name}", "digest": "sha256:" + "1" * 64, "mime": "application/json"}]

    for lease, joined in ((first, False), (second, True)):
        items = [{"job_id": lease["job_id"], "lease_id": lease["lease_id"], "artifacts": artifact(name)}
                 for name in ("1.json", "2.json")]
        with ledger.transaction() as tx:
            outcomes = (claims.ack_and_claim(tx, items, [("w-1", 1)], lease_seconds=60)[0] if joined
                        else reports.ack(tx, items))
        assert outcomes[0]["state"] == "succeeded" and isinstance(outcomes[1], StaleLease)
        shown = ops.show(ledger, lease["job_id"])
        assert [a["uri"] for a in shown["artifacts"]] == ["file:///out/1.json"]
        assert [a["uri"] for a in shown["history"][-1]["artifacts"]] == ["file:///out/1.json"]


def test_the_first_claim_after_opening_moves_finished_jobs_out_of_the_hot_table_through_the_writer(ledger_path):
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        enqueue(ledger, 6)
        for lease in ops.claim(ledger, worker_id="w-0", limit=5)["leases"]:
            ops.ack(ledger, lease["job_id"], lease["lease_id"])
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        def finished_in_hot_table():
            return ledger.read().con.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()[0]

        assert finished_in_hot_table() == 5
        writer = LedgerWriter(ledger)
        writer.start()
        try:
            assert len(writer.call("jobs.claim", {"worker_id": "w-1", "limit": 1})["leases"]) == 1
        finally:
            writer.stop()
        assert finished_in_hot_table() == 0
        assert len(ops.list_jobs(ledger, state="succeeded")["jobs"]) == 5


def test_of_an_ack_and_a_release_of_one_lease_the_ack_wins_whether_or_not_a_claim_shares_the_group(ledger):
    for with_claim in (False, True):
        (job_id,) = enqueue(ledger, 1)
        (lease,) = ops.claim(ledger, worker_id="w-0", limit=1)["leases"]
        writer = LedgerWriter(ledger)
        caller = dispatch.Caller(actor="test")
        acked = writer.submit("jobs.ack", {"job_id": job_id, "lease_id": lease["lease_id"]}, caller)
        released = writer.submit("jobs.release", {"job_id": job_id, "lease_id": lease["lease_id"]}, caller)
        claim = writer.submit("jobs.claim", {"worker_id": "w-1", "limit": 1}, caller) if with_claim else None
        writer.start()  # queued before the writer ran: one group
        try:
            assert acked.result(10)["state"] == "succeeded"
            with pytest.raises(StaleLease):
                released.result(10)
            assert claim is None or claim.result(10)["leases"] == []
        finally:
            writer.stop()
        assert ops.show(ledger, job_id)["state"] == "succeeded"
