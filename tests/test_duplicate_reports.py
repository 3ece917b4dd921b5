"""One report per lease step (DESIGN invariant 11): of several heartbeats, acks, fails or releases for one lease,
the first wins and the rest get what they would get one transaction later, whether they arrive one by one or
in one group commit. A repeated heartbeat answers ok but starts the job once; a repeated ack, fail or release
is a stale lease (exit 3). Requests that carry the same Idempotency-Key share the first one's answer.

Tested on the core batch functions (a real ledger and the settable clock), through the writer with and without
group commit, and through a real server with concurrent requests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import Response, init_ledger, serving

from airgap_orch.errors import OrchError, StaleLease, exit_code_for
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations import limits as limit_ops
from airgap_orch.operations.writer import LedgerWriter
from airgap_orch.orchestrator import reports

ITEMS = {  # what each kind of report carries besides its job and lease
    "heartbeat": {"progress": 0.5, "message": "half"},
    "ack": {"artifacts": []},
    "fail": {"error": "feed unreachable", "retry_after": 5.0},  # retry_after: no random backoff to compare
    "release": {},
}


def enqueue(ledger: Ledger, count: int, **fields: Any) -> list[str]:
    spec = {"tenant": "acme", "project": "feeds", "type": "scan", "max_attempts": 3, **fields}
    return ops.enqueue_batch(ledger, [dict(spec) for _ in range(count)])["job_ids"]


def item(kind: str, lease: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": lease["job_id"], "lease_id": lease["lease_id"], "tenants": None, **ITEMS[kind]}


def events(ledger: Ledger, job_id: str) -> list[str]:
    return [entry["event_type"] for entry in ops.show(ledger, job_id)["history"]]


def comparable(outcome: dict[str, Any] | OrchError, lease: dict[str, Any]) -> tuple:
    """An outcome with the job and lease ids taken out, so outcomes for two jobs can be compared."""
    def plain(text: str) -> str:
        return text.replace(lease["job_id"], "JOB").replace(lease["lease_id"], "LEASE")

    if isinstance(outcome, OrchError):
        return type(outcome).__name__, plain(str(outcome)), exit_code_for(outcome)
    return "ok", {key: value for key, value in outcome.items() if key != "job_id"}


@pytest.mark.parametrize("kind", ["heartbeat", "ack", "fail", "release"])
def test_a_report_repeated_in_one_batch_gets_what_it_would_get_one_transaction_later(ledger, manual_clock, kind):
    """The same report twice in one core batch (as a group commit hands it over) and the same report twice in two
    transactions give the same answers, the same rows and the same history."""
    enqueue(ledger, 2)
    batched, serial = ops.claim(ledger, worker_id="w", limit=2, lease_seconds=60)["leases"]
    apply = ops.BATCHED[kind][1]
    with ledger.transaction() as tx:
        together = apply(tx, [item(kind, batched), item(kind, batched)])
    apart = []
    for _ in range(2):
        with ledger.transaction() as tx:
            apart += apply(tx, [item(kind, serial)])
    assert [comparable(outcome, batched) for outcome in together] == [
        comparable(outcome, serial) for outcome in apart]
    assert not isinstance(together[0], OrchError)
    if kind == "heartbeat":
        assert together[1]["state"] == "running"  # a repeated heartbeat answers ok ...
        assert events(ledger, batched["job_id"]).count("job.started") == 1  # ... and starts the job once
    else:
        assert isinstance(together[1], StaleLease) and exit_code_for(together[1]) == 3
    assert events(ledger, batched["job_id"]) == events(ledger, serial["job_id"])
    rows = {row["job_id"]: row for row in ops.list_jobs(ledger)["jobs"]}
    different = {"job_id", "lease_id", "created_at"}
    assert ({k: v for k, v in rows[batched["job_id"]].items() if k not in different}
            == {k: v for k, v in rows[serial["job_id"]].items() if k not in different})
    assert ledger_ops.verify(ledger)["ok"] is True


def test_a_repeated_fail_in_one_batch_counts_once_toward_a_circuit_breaker(ledger, manual_clock):
    enqueue(ledger, 1, type="flaky")
    limit_ops.breaker_set(ledger, key="type:flaky", failures=2, cooldown=30, reason="test")
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
    with ledger.transaction() as tx:
        outcomes = reports.fail(tx, [item("fail", lease) for _ in range(3)])
    assert [type(outcome).__name__ for outcome in outcomes] == ["dict", "StaleLease", "StaleLease"]
    (breaker,) = limit_ops.breaker_list(ledger)["breakers"]
    assert (breaker["state"], breaker["consecutive_failures"]) == ("closed", 1)


def test_a_fail_and_a_release_of_one_lease_in_one_batch_let_only_the_first_end_the_lease(ledger, manual_clock):
    """Fail, then release, of one lease: the release meets the job the fail requeued (stale); the attempt stays
    used up."""
    (job_id,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
    with ledger.transaction() as tx:
        failed = reports.fail(tx, [item("fail", lease)])
        released = reports.release(tx, [item("release", lease), item("release", lease)])
    assert failed[0]["state"] == "queued"
    assert [type(outcome) for outcome in released] == [StaleLease, StaleLease]
    assert events(ledger, job_id) == ["job.created", "job.leased", "job.retry_scheduled"]
    assert ops.show(ledger, job_id)["attempts"] == 1


# -- through the writer: one group commit, or one transaction per request -------------------------------------

@pytest.mark.parametrize("group_commit", [True, False], ids=["group", "one-by-one"])
@pytest.mark.parametrize("kind", ["fail", "release", "ack"])
def test_repeated_reports_of_one_lease_in_one_writer_batch_are_answered_ok_once(ledger, group_commit, kind):
    (job_id,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
    writer = LedgerWriter(ledger, group_commit=group_commit)
    sizes: list[int] = []
    writer.batch_observers.append(sizes.append)
    params = {key: value for key, value in item(kind, lease).items() if key != "tenants"}
    futures = [writer.submit(f"jobs.{kind}", dict(params), dispatch.Caller(actor="test")) for _ in range(6)]
    writer.start()  # queued before the writer ran: one batch
    try:
        answers = [future.exception(10) or future.result(10) for future in futures]
    finally:
        writer.stop()
    assert sizes == ([6] if group_commit else [1] * 6)
    assert not isinstance(answers[0], BaseException)
    assert all(isinstance(answer, StaleLease) for answer in answers[1:]), answers
    ending = {"fail": "job.retry_scheduled", "release": "job.released", "ack": "job.succeeded"}[kind]
    assert events(ledger, job_id).count(ending) == 1
    assert ledger_ops.verify(ledger)["ok"] is True


@pytest.mark.parametrize("group_commit", [True, False], ids=["group", "one-by-one"])
def test_repeated_heartbeats_in_one_writer_batch_all_answer_ok_and_start_the_job_once(ledger, group_commit):
    (job_id,) = enqueue(ledger, 1)
    (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
    writer = LedgerWriter(ledger, group_commit=group_commit)
    futures = [writer.submit("jobs.heartbeat", {"job_id": job_id, "lease_id": lease["lease_id"]},
                             dispatch.Caller(actor="test")) for _ in range(5)]
    writer.start()
    try:
        answers = [future.result(10) for future in futures]
    finally:
        writer.stop()
    assert {answer["state"] for answer in answers} == {"running"}
    assert events(ledger, job_id) == ["job.created", "job.leased", "job.started"]


# -- through a real server, concurrent requests --------------------------------------------------------------

CONCURRENT = 12


BUSY_JOBS = 10_000


def concurrently(server, requests: list[tuple[str, str, dict[str, Any], dict[str, str]]]) -> list[Response]:
    """Send the requests at once (one thread each, released together) and return the answers in order.

    An enqueue of BUSY_JOBS jobs goes first, so the writer is busy while the requests arrive: they wait in its
    queue and (with group commit) reach it as one group, the case where repeated reports used to be applied."""
    answers: list[Response | None] = [None] * len(requests)
    start = threading.Barrier(len(requests) + 1)

    def send(index: int) -> None:
        method, path, body, headers = requests[index]
        start.wait()
        answers[index] = server.request(method, path, body, headers=headers, timeout=120)

    busy = threading.Thread(target=server.request, args=("POST", "/v1/jobs/batch", {"jobs": [
        {"tenant": "acme", "project": "bulk", "type": "other"}] * BUSY_JOBS}), kwargs={"timeout": 120})
    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    busy.start()
    time.sleep(0.3)  # the batch reaches the writer first (were it late, the test would only be weaker)
    start.wait()
    for thread in [*threads, busy]:
        thread.join(120)
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


def prepared(path: Path, **fields: Any) -> tuple[str, dict[str, Any]]:
    """A ledger with one leased job (and a breaker on type:flaky that opens after 2 failures)."""
    init_ledger(path)
    with Ledger.open(path, lock_timeout=5) as ledger:
        (job_id,) = enqueue(ledger, 1, type="flaky", **fields)
        limit_ops.breaker_set(ledger, key="type:flaky", failures=2, cooldown=30, reason="test")
        (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=300)["leases"]
    return job_id, lease


@pytest.mark.parametrize("serve_options", [(), ("--no-group-commit",)], ids=["group-commit", "no-group-commit"])
@pytest.mark.parametrize("kind", ["fail", "release"])
def test_concurrent_reports_of_one_lease_get_exactly_one_ok_answer(tmp_path, serve_options, kind):
    path = tmp_path / "ledger.duckdb"
    job_id, lease = prepared(path)
    body = {"lease_id": lease["lease_id"], **({"error": "feed unreachable"} if kind == "fail" else {})}
    with serving(path, "--no-auth", *serve_options) as server:
        answers = concurrently(server, [("POST", f"/v1/jobs/{job_id}/{kind}", body, {})] * CONCURRENT)
    assert Counter(answer.status for answer in answers) == {200: 1, 409: CONCURRENT - 1}, answers
    assert {answer.json["exit_code"] for answer in answers if answer.status == 409} == {3}
    with Ledger.open(path, lock_timeout=5) as ledger:
        ending = "job.retry_scheduled" if kind == "fail" else "job.released"
        assert events(ledger, job_id).count(ending) == 1
        (breaker,) = limit_ops.breaker_list(ledger)["breakers"]
        assert breaker["state"] == "closed"  # one failed attempt, not one per request
        assert breaker["consecutive_failures"] == (1 if kind == "fail" else 0)
        assert ops.show(ledger, job_id)["attempts"] == (1 if kind == "fail" else 0)
        assert ledger_ops.verify(ledger)["ok"] is True


@pytest.mark.parametrize("serve_options", [(), ("--no-group-commit",)], ids=["group-commit", "no-group-commit"])
def test_concurrent_heartbeats_of_one_lease_all_answer_ok_and_start_the_job_once(tmp_path, serve_options):
    path = tmp_path / "ledger.duckdb"
    job_id, lease = prepared(path)
    request = ("POST", f"/v1/jobs/{job_id}/heartbeat", {"lease_id": lease["lease_id"]}, {})
    with serving(path, "--no-auth", *serve_options) as server:
        answers = concurrently(server, [request] * CONCURRENT)
    assert {answer.status for answer in answers} == {200}, answers
    with Ledger.open(path, lock_timeout=5) as ledger:
        assert events(ledger, job_id) == ["job.created", "job.leased", "job.started"]


@pytest.mark.parametrize("serve_options", [(), ("--no-group-commit",)], ids=["group-commit", "no-group-commit"])
def test_requests_with_one_idempotency_key_share_the_first_answer(tmp_path, serve_options):
    """A worker's retried fail carries the same Idempotency-Key: every copy, concurrent or later, gets the answer
    of the one that was applied; a different key for the same lease is stale."""
    path = tmp_path / "ledger.duckdb"
    job_id, lease = prepared(path)
    request = ("POST", f"/v1/jobs/{job_id}/fail", {"lease_id": lease["lease_id"], "error": "feed unreachable"},
               {"Idempotency-Key": "fail-attempt-1"})
    with serving(path, "--no-auth", *serve_options) as server:
        answers = concurrently(server, [request] * CONCURRENT)
        later = server.request(*request[:3], headers=request[3])
        other_key = server.request(*request[:3], headers={"Idempotency-Key": "fail-attempt-1-again"})
    assert {answer.status for answer in answers} == {200}, answers
    assert {answer.body for answer in [*answers, later]} == {answers[0].body}
    assert answers[0].json["state"] == "queued" and answers[0].json["attempt"] == 1
    assert other_key.status == 409 and other_key.json["exit_code"] == 3
    with Ledger.open(path, lock_timeout=5) as ledger:
        assert events(ledger, job_id).count("job.retry_scheduled") == 1
        assert limit_ops.breaker_list(ledger)["breakers"][0]["consecutive_failures"] == 1
