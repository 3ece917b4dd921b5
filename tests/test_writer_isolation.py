"""The group-commit writer isolates requests: on a real ledger, one request that fails (at the Idempotency-Key
lookup, inside the shared transaction, or because its caller gave up) never turns another request's answer
into an error. Every request here is queued before the writer starts, so they all reach it as one batch."""

from __future__ import annotations

import pytest

from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations.writer import LedgerWriter

SPEC = {"tenant": "acme", "project": "isolation", "type": "scan"}
# Text DuckDB cannot take: a lone surrogate, as a JSON "\ud800" escape or a byte that is not UTF-8 decodes to.
NOT_UTF8 = "\udcff"


def enqueue(ledger: Ledger, count: int) -> list[str]:
    return ops.enqueue_batch(ledger, [dict(SPEC) for _ in range(count)])["job_ids"]


def run_all(writer: LedgerWriter, futures: list) -> list:
    """Start the writer on what is queued; each future's answer, or the exception it was failed with."""
    writer.start()
    try:
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(30))
            except Exception as exc:  # noqa: BLE001 (the outcome under test)
                outcomes.append(exc)
        return outcomes
    finally:
        writer.stop()


def test_a_key_the_ledger_cannot_look_up_fails_only_its_own_request(ledger):
    caller = dispatch.Caller(actor="token:producer")
    writer = LedgerWriter(ledger)
    futures = [writer.submit("jobs.enqueue", {"spec": {**SPEC, "payload": {"n": n}}}, caller, f"key-{n}")
               for n in range(5)]
    futures.insert(2, writer.submit("jobs.enqueue", {"spec": dict(SPEC)}, caller, f"key-{NOT_UTF8}"))
    (job_id,) = enqueue(ledger, 1)
    lease = ops.claim(ledger, worker_id="w", limit=1)["leases"][0]
    futures.append(writer.submit("jobs.heartbeat", {"job_id": job_id, "lease_id": lease["lease_id"]}, caller,
                                 "beat-1"))
    outcomes = run_all(writer, futures)
    bad = outcomes.pop(2)
    assert isinstance(bad, Exception) and "UTF-8" in str(bad), bad
    assert [isinstance(outcome, dict) for outcome in outcomes] == [True] * 6, outcomes
    assert all(outcome["created"] for outcome in outcomes[:5])
    assert outcomes[5]["state"] == "running"
    assert len(ops.list_jobs(ledger, state="queued")["jobs"]) == 5
    assert ledger_ops.verify(ledger)["ok"] is True


def test_a_request_that_breaks_the_shared_transaction_fails_alone(ledger):
    """A caller whose tenant list holds text DuckDB cannot take breaks the statement its ack shares with the
    others: the group is rolled back and retried, and only that ack fails."""
    job_ids = enqueue(ledger, 12)
    leases = {lease["job_id"]: lease["lease_id"] for lease in ops.claim(ledger, worker_id="w", limit=12)["leases"]}
    good = dispatch.Caller(actor="token:worker")
    broken = dispatch.Caller(actor="token:broken", tenants=frozenset({"acme", f"acme{NOT_UTF8}"}))
    writer = LedgerWriter(ledger)
    futures = [writer.submit("jobs.ack", {"job_id": job_id, "lease_id": leases[job_id]},
                             broken if number == 7 else good) for number, job_id in enumerate(job_ids)]
    outcomes = run_all(writer, futures)
    assert isinstance(outcomes[7], Exception), outcomes[7]
    assert [outcome["state"] for number, outcome in enumerate(outcomes) if number != 7] == ["succeeded"] * 11
    assert ops.show(ledger, job_ids[7])["state"] == "leased"
    assert ledger_ops.verify(ledger)["ok"] is True


def test_one_broken_request_in_a_large_group_costs_a_few_transactions_not_one_per_request(ledger):
    """DuckDB has no savepoints: the writer retries a broken group in halves, so one broken request among 64
    costs about 2·log2(64) transactions more, where retrying request by request cost 64."""
    job_ids = enqueue(ledger, 64)
    leases = {lease["job_id"]: lease["lease_id"] for lease in ops.claim(ledger, worker_id="w", limit=64)["leases"]}
    good = dispatch.Caller(actor="token:worker")
    broken = dispatch.Caller(actor="token:broken", tenants=frozenset({f"acme{NOT_UTF8}"}))
    writer = LedgerWriter(ledger)
    sizes: list[int] = []
    writer.batch_observers.append(sizes.append)
    futures = [writer.submit("jobs.ack", {"job_id": job_id, "lease_id": leases[job_id]},
                             broken if number == 40 else good) for number, job_id in enumerate(job_ids)]
    outcomes = run_all(writer, futures)
    assert isinstance(outcomes[40], Exception)
    assert sum(isinstance(outcome, dict) and outcome["state"] == "succeeded" for outcome in outcomes) == 63
    assert sizes[0] == 64
    assert len(sizes) <= 1 + 2 * 6, sizes  # the group, then two halves per halving down to the broken request
    assert sum(size for size in sizes[1:] if size > 1) < 2 * 64


def test_a_request_whose_caller_gave_up_is_not_run_and_does_not_fail_the_others(ledger):
    """The HTTP door cancels a request's future when its client is gone before the writer ran it: that claim
    must not lease a job to nobody, and the requests around it get their answers."""
    enqueue(ledger, 3)
    caller = dispatch.Caller(actor="token:worker")
    writer = LedgerWriter(ledger)
    first = writer.submit("jobs.claim", {"worker_id": "w-1", "limit": 1}, caller)
    abandoned = writer.submit("jobs.claim", {"worker_id": "w-gone", "limit": 1}, caller)
    last = writer.submit("jobs.claim", {"worker_id": "w-3", "limit": 1}, caller)
    assert abandoned.cancel()
    outcomes = run_all(writer, [first, last])
    assert [len(outcome["leases"]) for outcome in outcomes] == [1, 1], outcomes
    workers = {job["worker_id"] for job in ops.list_jobs(ledger, state="leased")["jobs"]}
    assert workers == {"w-1", "w-3"}
    assert len(ops.list_jobs(ledger, state="queued")["jobs"]) == 1


@pytest.mark.parametrize("group_commit", [True, False])
def test_the_same_key_twice_in_a_batch_beside_a_broken_key_answers_both_alike(ledger, group_commit):
    caller = dispatch.Caller(actor="token:producer")
    writer = LedgerWriter(ledger, group_commit=group_commit)
    spec = {"spec": dict(SPEC)}
    futures = [writer.submit("jobs.enqueue", spec, caller, "same"),
               writer.submit("jobs.enqueue", spec, caller, f"bad-{NOT_UTF8}"),
               writer.submit("jobs.enqueue", spec, caller, "same")]
    first, bad, again = run_all(writer, futures)
    assert isinstance(bad, Exception)
    assert first == again and first["created"] is True
    assert len(ops.list_jobs(ledger)["jobs"]) == 1


def test_one_key_on_two_different_requests_in_one_batch_is_a_conflict_not_the_first_answer(ledger):
    """Found by review: the second request was chained to the first and got job A's answer for job B's ack."""
    from airgap_orch.errors import Conflict

    caller = dispatch.Caller(actor="token:worker")
    first, second = enqueue(ledger, 2)
    leases = {lease["job_id"]: lease["lease_id"] for lease in ops.claim(ledger, worker_id="w", limit=2)["leases"]}
    writer = LedgerWriter(ledger)
    futures = [writer.submit("jobs.ack", {"job_id": job_id, "lease_id": leases[job_id]}, caller, "one-key")
               for job_id in (first, second)]
    futures.append(writer.submit("jobs.ack", {"job_id": first, "lease_id": leases[first]}, caller, "one-key"))
    acked, refused, repeated = run_all(writer, futures)
    assert acked["job_id"] == first and acked["state"] == "succeeded"
    assert isinstance(refused, Conflict) and "different request" in str(refused), refused
    assert repeated == acked  # the same request again shares the first answer
    assert {job["job_id"]: job["state"] for job in ops.list_jobs(ledger)["jobs"]}[second] == "leased"
