"""Idempotent enqueue under concurrency: threads sharing one ledger, and CLI processes queueing for it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops

THREADS = 8
PROCESSES = 4


def _spec(tenant: str, key: str | None) -> dict:
    spec = {"tenant": tenant, "project": "feeds", "type": "advisory-sync", "payload": {"feed": "nvd"}}
    if key is not None:
        spec["idempotency_key"] = key
    return spec


def _jobs_with_key(ledger: Ledger, tenant: str, key: str) -> list[dict]:
    return [job for job in ops.list_jobs(ledger, tenant=tenant, limit=100_000)["jobs"]
            if job["idempotency_key"] == key]


def _enqueue_from_threads(ledger: Ledger, calls: list) -> list[dict]:
    """Run each call(ledger) on its own thread, all released at once; returns their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index](ledger)
        except BaseException as error:  # reported by the assertion below, with the thread's index
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "an enqueue thread hung"
    errors = [(index, result) for index, result in enumerate(results) if isinstance(result, BaseException)]
    assert not errors, errors
    return results


def test_eight_threads_enqueueing_the_same_key_get_one_job_and_all_see_its_id(ledger):
    for round_number in range(5):
        key = f"nvd-2024-06-01-{round_number}"
        results = _enqueue_from_threads(ledger, [lambda led, key=key: ops.enqueue(led, _spec("acme", key))]
                                        * THREADS)

        job_ids = {result["job_id"] for result in results}
        assert len(job_ids) == 1, results
        assert sorted(result["created"] for result in results) == [False] * (THREADS - 1) + [True]
        (job,) = _jobs_with_key(ledger, "acme", key)
        assert job["job_id"] in job_ids
        assert [entry["event_type"] for entry in ops.show(ledger, job["job_id"])["history"]] == ["job.created"]
    assert ledger_ops.verify(ledger)["jobs"] == 5


def test_threads_mixing_single_and_batch_enqueues_of_one_key_get_one_job(ledger):
    def single(led):
        result = ops.enqueue(led, _spec("acme", "shared"))
        return result["job_id"], result["created"]

    def batch(led):
        # The shared key plus one fresh job each, in one transaction.
        result = ops.enqueue_batch(led, [_spec("acme", "shared"), _spec("acme", None)])
        assert result["created"] + result["existing"] == 2
        return result["job_ids"][0], result["created"] == 2

    results = _enqueue_from_threads(ledger, [single, batch] * (THREADS // 2))

    assert len({job_id for job_id, _ in results}) == 1, results
    assert sum(created for _, created in results) == 1
    (job,) = _jobs_with_key(ledger, "acme", "shared")
    assert job["job_id"] == results[0][0]
    assert len(ops.list_jobs(ledger, tenant="acme")["jobs"]) == 1 + THREADS // 2
    assert ledger_ops.verify(ledger)["ok"]


def test_cli_processes_started_together_with_the_same_key_all_get_the_one_job(ledger_path, cli):
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), "--lock-timeout", "60", "--json",
               "jobs", "enqueue", "--tenant", "acme", "--project", "feeds", "--type", "advisory-sync",
               "--idempotency-key", "nvd-2024-06-01", "--payload", '{"feed": "nvd"}']
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(PROCESSES)]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0] * PROCESSES, outputs
    answers = [json.loads(stdout) for stdout, _ in outputs]
    assert len({answer["job_id"] for answer in answers}) == 1, answers
    assert sorted(answer["created"] for answer in answers) == [False] * (PROCESSES - 1) + [True]
    job_id = answers[0]["job_id"]

    # The same key in another tenant is another job; asked again, each tenant gets its own back.
    other = cli("--json", "jobs", "enqueue", "--tenant", "globex", "--project", "feeds", "--type",
                "advisory-sync", "--idempotency-key", "nvd-2024-06-01", "--payload", '{"feed": "nvd"}')
    assert other.code == 0, other
    assert other.json["created"] is True
    assert other.json["job_id"] != job_id

    with Ledger.open(ledger_path, lock_timeout=10) as ledger:
        for tenant, expected in (("acme", job_id), ("globex", other.json["job_id"])):
            again = ops.enqueue(ledger, _spec(tenant, "nvd-2024-06-01"))
            assert (again["job_id"], again["created"]) == (expected, False)
        assert [job["job_id"] for job in _jobs_with_key(ledger, "acme", "nvd-2024-06-01")] == [job_id]
        assert [job["job_id"] for job in _jobs_with_key(ledger, "globex", "nvd-2024-06-01")] == [
            other.json["job_id"]]
        assert ledger_ops.verify(ledger)["jobs"] == 2


def test_batch_with_one_key_in_two_tenants_returns_the_existing_job_of_the_tenant_that_has_it(ledger):
    existing = ops.enqueue(ledger, _spec("acme", "nightly"))

    result = ops.enqueue_batch(ledger, [_spec("acme", "nightly"), _spec("globex", "nightly")])

    assert result["job_ids"][0] == existing["job_id"]
    assert result["job_ids"][1] != existing["job_id"]
    assert (result["created"], result["existing"]) == (1, 1)
    assert len(_jobs_with_key(ledger, "acme", "nightly")) == 1


def test_two_client_processes_racing_through_a_server_get_one_job_per_key_and_run_each_once(tmp_path):
    """Real parallelism: separate processes share no lock; the server's one writer is what keeps them apart."""
    from pathlib import Path

    from server_fixtures import init_ledger, serving

    keys, racers = 60, ("racer-a", "racer-b")
    path = init_ledger(tmp_path / "race.duckdb")
    helper = Path(__file__).parent / "helpers" / "racing_client.py"
    with serving(path, "--no-auth") as server:
        processes = [subprocess.Popen([sys.executable, str(helper), server.url, name, str(keys)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for name in racers]
        for process in processes:  # both have started and imported everything: then both are told to go
            assert process.stdout.readline() == "ready\n", process.communicate(timeout=60)
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120) for process in processes]
        assert [process.returncode for process in processes] == [0, 0], outputs
        reports = [json.loads(stdout) for stdout, _ in outputs]
        verified = server.request("POST", "/v1/ledger/verify").json
        succeeded = server.request("GET", "/v1/jobs", query={"state": "succeeded", "limit": 1000}).json["jobs"]
    for key in (f"race-{number}" for number in range(keys)):
        answers = [report["enqueued"][key] for report in reports]
        assert answers[0][0] == answers[1][0], (key, answers)  # both racers got the one job of the key
        assert sorted(created for _, created in answers) == [False, True], (key, answers)
    job_ids = {answer[0] for report in reports for answer in report["enqueued"].values()}
    acked = [job_id for report in reports for job_id in report["acked"]]
    assert len(job_ids) == keys and sorted(acked) == sorted(job_ids), "every job ran exactly once"
    assert all(report["refused"] == [] for report in reports), reports
    assert all(report["acked"] for report in reports), "both racers got work: they really raced"
    assert verified["ok"] and verified["jobs"] == keys, verified
    assert sorted(job["job_id"] for job in succeeded) == sorted(job_ids)
