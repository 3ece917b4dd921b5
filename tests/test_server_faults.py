"""Faults at the HTTP door: silent and half-sent connections do not hold up other clients; a retried request
with the same Idempotency-Key gets the original answer; a long-poll claim answers as soon as work arrives;
concurrent acks are group-committed; a server killed with SIGKILL under load loses no acknowledged job and
commits none twice."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from server_fixtures import Server, assert_problem, histogram, init_ledger, run_cli, send, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    # A head deadline longer than any test here: silent connections must outlive the requests sent beside them
    # (tests/test_server_connections.py tests the deadline itself).
    with serving(init_ledger(root / "faults.duckdb"), "--no-auth", "--header-timeout", "300",
                 "--body-timeout", "300", "--keepalive-timeout", "300") as started:
        yield started


def call(server: Server, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    response = server.request(method, path, body, **kwargs)
    assert response.status == 200, response
    return response.json


def enqueue_and_claim(server: Server, job_type: str, count: int, lease_seconds: float = 300) -> list[dict]:
    specs = [{"tenant": "acme", "project": "faults", "type": job_type} for _ in range(count)]
    call(server, "POST", "/v1/jobs/batch", {"jobs": specs})
    leases = call(server, "POST", "/v1/jobs/claim", {"worker_id": f"w-{job_type}", "type": job_type, "limit": count,
                                                     "lease_seconds": lease_seconds})["leases"]
    assert len(leases) == count
    return leases


def history_of(server: Server, job_id: str) -> list[str]:
    return [entry["event_type"] for entry in call(server, "GET", f"/v1/jobs/{job_id}")["history"]]


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _open_and_unanswered(connection: socket.socket) -> bool:
    """True while the server has neither answered nor closed this connection (a peek that does not wait)."""
    connection.setblocking(False)
    try:
        connection.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:  # reset
        return False
    return False  # an answer, or b"": closed


def test_silent_and_half_sent_connections_do_not_delay_other_clients(server):
    address = _address(server)
    idle = []
    host = f"Host: {address[0]}:{address[1]}".encode()  # the server's own address: a foreign Host is answered 421
    partial = [
        b"GET /v1/jobs HTTP/1.1\r\n" + host + b"\r\n",  # headers never finished
        b"POST /v1/jobs HTTP/1.1\r\n" + host + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 400\r\n\r\n{\"ten",
        b"POST /v1/jobs/claim HTTP/1.1\r\n" + host + b"\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"worker",
        b"GE",
    ]
    try:
        for _ in range(16):  # open a connection, send nothing
            idle.append(socket.create_connection(address, timeout=10))
        for data in partial * 3:  # send part of a request, then nothing
            connection = socket.create_connection(address, timeout=10)
            connection.sendall(data)
            idle.append(connection)
        for number in range(30):
            if number % 3 == 0:
                assert server.request("GET", "/healthz", timeout=10).status == 200
            elif number % 3 == 1:
                call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "faults", "type": "idle-check"},
                     timeout=10)
            else:
                call(server, "GET", "/v1/jobs", query={"type": "idle-check", "limit": 5}, timeout=10)
        # Every request above was answered (each within its 10 s timeout; milliseconds when nothing is wrong) while
        # all the silent and half-sent connections were still open and unanswered: the server did not finish,
        # time out or drop them first. A server serving connections one at a time would hang on the first one.
        assert all(_open_and_unanswered(connection) for connection in idle)
    finally:
        for connection in idle:
            connection.close()
    assert server.request("GET", "/healthz").status == 200


def test_retried_ack_with_the_same_idempotency_key_gets_the_original_answer(server):
    (lease,) = enqueue_and_claim(server, "idem-ack", 1)
    job_id, body = lease["job_id"], {"lease_id": lease["lease_id"]}
    key = {"Idempotency-Key": f"ack-{uuid.uuid4()}"}
    first = server.request("POST", f"/v1/jobs/{job_id}/ack", body, headers=key)
    assert first.status == 200, first
    for _ in range(2):  # the worker did not see the answer and sends the same request again
        again = server.request("POST", f"/v1/jobs/{job_id}/ack", body, headers=key)
        assert (again.status, again.json) == (200, first.json)
    other_key = server.request("POST", f"/v1/jobs/{job_id}/ack", body, headers={"Idempotency-Key": "another"})
    assert_problem(other_key, 409, exit_code=3)
    assert_problem(server.request("POST", f"/v1/jobs/{job_id}/ack", body), 409, exit_code=3)
    assert Counter(history_of(server, job_id))["job.succeeded"] == 1


def test_an_idempotency_key_reused_for_a_different_request_is_refused(server):
    key = {"Idempotency-Key": f"reuse-{uuid.uuid4()}"}
    first = call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "faults", "type": "reuse-a"}, headers=key)
    other = server.request("POST", "/v1/jobs", {"tenant": "acme", "project": "faults", "type": "reuse-b"},
                           headers=key)
    assert_problem(other, 409, exit_code=3)
    assert call(server, "GET", "/v1/jobs", query={"type": "reuse-b"})["jobs"] == []
    assert call(server, "GET", f"/v1/jobs/{first['job_id']}")["type"] == "reuse-a"


def test_same_idempotency_key_sent_concurrently_is_applied_once(server):
    (lease,) = enqueue_and_claim(server, "idem-race", 1)
    job_id, body = lease["job_id"], {"lease_id": lease["lease_id"]}
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.request("POST", f"/v1/jobs/{job_id}/ack", body, headers=key),
                                range(8)))
    assert {answer.status for answer in answers} == {200}, answers
    assert len({answer.body for answer in answers}) == 1
    assert Counter(history_of(server, job_id))["job.succeeded"] == 1


def test_retried_enqueue_and_claim_with_the_same_key_get_the_original_answer(server):
    key = {"Idempotency-Key": f"enq-{uuid.uuid4()}"}
    spec = {"tenant": "acme", "project": "faults", "type": "idem-claim"}
    first = call(server, "POST", "/v1/jobs", spec, headers=key)
    assert call(server, "POST", "/v1/jobs", spec, headers=key) == first
    call(server, "POST", "/v1/jobs", spec)  # a second job that a replayed claim must not take
    claim = {"worker_id": "w-idem", "type": "idem-claim", "limit": 1}
    claim_key = {"Idempotency-Key": f"claim-{uuid.uuid4()}"}
    leased = call(server, "POST", "/v1/jobs/claim", claim, headers=claim_key)
    assert call(server, "POST", "/v1/jobs/claim", claim, headers=claim_key) == leased
    assert len(leased["leases"]) == 1
    states = Counter(job["state"] for job in call(server, "GET", "/v1/jobs", query={"type": "idem-claim"})["jobs"])
    assert states == {"leased": 1, "queued": 1}


def _claim_attempts(server: Server) -> int:
    """Claims the server's writer has run: a waiting long-poll adds one each time it looks for work again (nothing
    else in this module claims, heartbeats or acks while the long-poll tests run)."""
    return histogram(server.metrics(), "airgap_orch_group_commit_requests")["count"]


def test_long_poll_claim_returns_as_soon_as_a_job_is_enqueued(server):
    answer: dict[str, Any] = {}
    wait = 30

    def claim() -> None:
        answer["response"] = server.request("POST", "/v1/jobs/claim",
                                            {"worker_id": "w-poll", "type": "long-poll", "wait": wait},
                                            timeout=wait + 30)
        answer["returned"] = time.monotonic()

    before = _claim_attempts(server)
    poller = threading.Thread(target=claim)
    poller.start()
    # Handshake: the server has looked for work and found none at least twice, so the long-poll is waiting.
    deadline = time.monotonic() + 30
    while _claim_attempts(server) < before + 2:
        assert poller.is_alive(), answer  # nothing to claim yet: it must not answer
        assert time.monotonic() < deadline, "the long-poll never reached the server"
        time.sleep(0.05)
    assert poller.is_alive(), answer  # it waits
    enqueued_at = time.monotonic()
    job_id = call(server, "POST", "/v1/jobs", {"tenant": "acme", "project": "faults", "type": "long-poll"})["job_id"]
    poller.join(wait + 40)
    assert not poller.is_alive()
    assert answer["response"].status == 200, answer
    assert [lease["job_id"] for lease in answer["response"].json["leases"]] == [job_id]
    # As soon as the job arrives (milliseconds when nothing is wrong), not at the end of the 30 s it would wait.
    assert answer["returned"] - enqueued_at < wait / 3, answer


def test_long_poll_claim_with_nothing_to_do_answers_empty_after_its_wait(server):
    started = time.monotonic()
    empty = call(server, "POST", "/v1/jobs/claim", {"worker_id": "w-poll", "type": "never-enqueued", "wait": 1})
    waited = time.monotonic() - started
    assert empty == {"leases": []}
    # The 1 s it was told, not the server's longest (60 s); a loaded machine only adds to the lower bound.
    assert 0.9 <= waited < 15, waited


def test_concurrent_acks_are_group_committed(server):
    leases = enqueue_and_claim(server, "group-commit", 240)
    before = histogram(server.metrics(), "airgap_orch_group_commit_requests")
    entries_before = call(server, "GET", "/v1/ledger")["history_entries"]
    host, port = _address(server)

    def ack_all(mine: list[dict]) -> list[int]:
        connection = http.client.HTTPConnection(host, port, timeout=30)  # one keep-alive connection per worker
        statuses = []
        try:
            for lease in mine:
                connection.request("POST", f"/v1/jobs/{lease['job_id']}/ack",
                                   body=json.dumps({"lease_id": lease["lease_id"]}),
                                   headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            connection.close()
        return statuses

    workers = 24
    with ThreadPoolExecutor(workers) as pool:
        statuses = [status for chunk in pool.map(ack_all, [leases[i::workers] for i in range(workers)])
                    for status in chunk]
    assert statuses == [200] * len(leases)
    jobs = call(server, "GET", "/v1/jobs", query={"type": "group-commit"})["jobs"]
    assert Counter(job["state"] for job in jobs) == {"succeeded": len(leases)}
    assert call(server, "GET", "/v1/ledger")["history_entries"] - entries_before == len(leases)
    after = histogram(server.metrics(), "airgap_orch_group_commit_requests")
    batches = after["count"] - before["count"]
    single = after["1"] - before["1"]
    assert after["sum"] - before["sum"] >= len(leases)  # every ack went through the group path
    assert batches - single >= 1, (before, after)  # and at least one commit carried more than one request
    assert batches < len(leases), (before, after)
    assert call(server, "POST", "/v1/ledger/verify")["ok"] is True


def test_sigkill_under_load_loses_no_acknowledged_job_and_commits_none_twice(tmp_path):
    ledger = init_ledger(tmp_path / "killed.duckdb")
    first = Server(ledger, ("--no-auth",)).start()
    specs = [{"tenant": "acme", "project": "faults", "type": "kill"} for _ in range(400)]
    try:
        call(first, "POST", "/v1/jobs/batch", {"jobs": specs})
    except BaseException:
        first.kill()
        raise
    acked: set[str] = set()
    unsure: dict[str, tuple[str, str]] = {}  # job id -> (lease id, Idempotency-Key) of an ack with no answer
    refused: list[Any] = []  # answers other than 200 before the kill (there should be none)
    lock = threading.Lock()
    stop = threading.Event()

    def work(number: int) -> None:
        while not stop.is_set():
            try:
                response = send(first.url, "POST", "/v1/jobs/claim", {"worker_id": f"w-kill-{number}", "type": "kill",
                                                                       "limit": 5, "lease_seconds": 120}, timeout=10)
            except OSError:
                return
            if response.status != 200:
                refused.append(response)
                return
            if not response.json["leases"]:
                return
            for lease in response.json["leases"]:
                key = f"kill-{uuid.uuid4()}"
                try:
                    answer = send(first.url, "POST", f"/v1/jobs/{lease['job_id']}/ack",
                                  {"lease_id": lease["lease_id"]}, headers={"Idempotency-Key": key}, timeout=10)
                except OSError:
                    with lock:
                        unsure[lease["job_id"]] = (lease["lease_id"], key)
                    continue
                if answer.status != 200:
                    refused.append(answer)
                    continue
                with lock:
                    acked.add(lease["job_id"])

    threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        first.kill()  # SIGKILL in the middle of the claims and acks
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not refused, refused[:3]
    assert len(acked) >= 60, len(acked)

    # The killed server's discovery file names a dead pid: the CLI ignores it and opens the ledger itself.
    assert first.discovery()["pid"] == first.pid
    listed = run_cli("--json", "--lock-timeout", "10", "jobs", "list", "--state", "succeeded", "--limit", "1000",
                     ledger=ledger)
    assert listed.code == 0, listed
    assert acked <= {job["job_id"] for job in listed.json["jobs"]}

    with serving(ledger, "--no-auth") as second:
        # A worker whose connection dropped retries with the same key: the original answer, or the ack now.
        for job_id, (lease_id, key) in unsure.items():
            retried = second.request("POST", f"/v1/jobs/{job_id}/ack", {"lease_id": lease_id},
                                     headers={"Idempotency-Key": key})
            assert retried.status == 200, (job_id, retried)
            acked.add(job_id)
        jobs = {job["job_id"]: job for job in
                call(second, "GET", "/v1/jobs", query={"type": "kill", "limit": 1000})["jobs"]}
        assert len(jobs) == 400
        assert all(jobs[job_id]["state"] == "succeeded" for job_id in acked)
        events = call(second, "GET", "/v1/ledger/events", query={"limit": 100_000})["events"]
        succeeded = Counter(event["job"]["id"] for event in events if event["eventType"] == "job.succeeded")
        assert set(succeeded) >= acked
        assert max(succeeded.values()) == 1, succeeded.most_common(3)
        assert call(second, "POST", "/v1/ledger/verify")["ok"] is True
