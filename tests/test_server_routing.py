"""Finding the owning server, and how long the CLI waits for it: a stopped (SIGSTOP) or unreachable server ends a
command with exit 6 after about --lock-timeout, naming it; a symlink to the ledger finds the server that owns the
file; a command whose answer legitimately takes longer than --lock-timeout (a long-poll claim) still gets it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from server_fixtures import init_ledger, run_cli, send, serving

from airgap_orch.cli import remote

ENQUEUE = ("jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan", "--payload", '{"n": 1}')
# Interpreter start-up and imports of a CLI subprocess on a loaded 2-core machine, on top of the bound itself.
STARTUP_ALLOWANCE = 8.0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_stopped_server_ends_a_command_with_exit_6_after_the_lock_timeout_naming_it(tmp_path):
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with serving(ledger, "--no-auth") as server:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            listed = run_cli("--json", "--lock-timeout", "1", "jobs", "list", ledger=ledger, timeout=60)
            listed_seconds = time.monotonic() - started
            started = time.monotonic()
            enqueued = run_cli("--json", "--lock-timeout", "1", *ENQUEUE, ledger=ledger, timeout=60)
            enqueued_seconds = time.monotonic() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        for result, seconds in ((listed, listed_seconds), (enqueued, enqueued_seconds)):
            assert result.code == 6, result
            assert seconds < 1 + STARTUP_ALLOWANCE, (seconds, result)
            error = result.error
            assert error["type"] == "LedgerBusy", error
            assert server.url in error["message"] and f"pid {server.pid}" in error["message"], error
            assert "--lock-timeout" in error["message"], error
        assert "may still apply this command" in enqueued.error["message"], enqueued.error
        assert "may still apply" not in listed.error["message"], listed.error
        resumed = run_cli("--json", "--lock-timeout", "5", "jobs", "list", ledger=ledger)  # it serves again
        assert resumed.code == 0, resumed


def test_a_symlink_to_the_ledger_reaches_the_server_that_owns_the_file(tmp_path):
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    link = tmp_path / "current.duckdb"
    link.symlink_to(ledger)
    with serving(ledger, "--no-auth") as server:
        created = run_cli("--json", "--lock-timeout", "1", *ENQUEUE, ledger=link)
        assert created.code == 0, created
        shown = send(server.url, "GET", f"/v1/jobs/{created.json['job_id']}")
        assert shown.status == 200 and shown.json["history"][0]["actor"] == "http:no-auth", shown
    with serving(link, "--no-auth") as server:  # and a server started through the link is found by the file's name
        listed = run_cli("--json", "--lock-timeout", "1", "jobs", "list", ledger=ledger)
        assert listed.code == 0, listed
        assert [job["job_id"] for job in listed.json["jobs"]] == [created.json["job_id"]]
        assert not (Path(str(link) + ".server.json")).exists()


def test_an_unreachable_server_ends_a_command_with_exit_6_naming_it(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = run_cli("--json", "--server", url, "--lock-timeout", "1", "jobs", "list",
                     ledger=tmp_path / "absent.duckdb", timeout=60)
    seconds = time.monotonic() - started
    assert result.code == 6, result
    assert seconds < 1 + STARTUP_ALLOWANCE, (seconds, result)
    assert result.error["type"] == "LedgerBusy", result.error
    assert f"cannot reach server {url} within 1s" in result.error["message"], result.error
    assert not (tmp_path / "absent.duckdb").exists()


def test_a_malformed_server_url_is_invalid_input(tmp_path):
    result = run_cli("--json", "--server", "127.0.0.1:8080", "jobs", "list", ledger=tmp_path / "absent.duckdb")
    assert result.code == 1, result
    assert "must look like http://127.0.0.1:8080" in result.error["message"], result.error


def test_a_long_poll_claim_waiting_longer_than_the_lock_timeout_gets_its_job(tmp_path):
    """The answer starts only when a job arrives, 2.5 s into a 10 s wait with a 1 s bound: the server's health
    check answers meanwhile, so the CLI's client keeps waiting."""
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with serving(ledger, "--no-auth") as server:
        def enqueue_later() -> None:
            time.sleep(2.5)
            send(server.url, "POST", "/v1/jobs", {"tenant": "acme", "project": "web", "type": "scan", "payload": {}})

        producer = threading.Thread(target=enqueue_later)
        producer.start()
        started = time.monotonic()
        try:
            answer = remote.call(remote.Server(server.url, server.pid, ledger), None, "jobs.claim",
                                 {"worker_id": "w1", "limit": 1, "wait": 10}, bound=1)
        finally:
            producer.join()
        waited = time.monotonic() - started
    assert len(answer["leases"]) == 1, answer
    assert waited >= 2.0, waited
