"""One HTTP client (issue 14, "One policy, one place"): the SDK's OrchClient and the CLI's remote mode send through
the same transport, OrchClient.request. A command from the CLI reaches the wire as the same bytes as the same call
from the SDK (a second transport would set its own headers, in its own order), and a silent server ends both the
same way: the CLI's exit-6 message is the shared transport's, with the CLI's advice after it."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from server_fixtures import init_ledger, run_cli, serving

from airgap_orch.sdk.client import OrchClient, Server, ServerUnavailable
from airgap_orch.server import discovery

ENQUEUE = ("jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan", "--payload", '{"n": 1}')
JOB_ID = "job-recorded"


class RecordingPeer:
    """A loopback listener that records each request it gets (head and body, as bytes) and answers every one
    with `answer`: whatever sent a request, it sees exactly what went over the wire."""

    def __init__(self, answer: dict) -> None:
        self.answer = json.dumps(answer).encode()
        self.requests: list[tuple[list[bytes], bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                head, _, body = received.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in lines
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += connection.recv(65536)
                self.requests.append((lines, body))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                   + str(len(self.answer)).encode() + b"\r\nConnection: close\r\n\r\n" + self.answer)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.fixture
def peer():
    recording = RecordingPeer({"job_id": JOB_ID, "created": True, "state": "queued"})
    yield recording
    recording.close()


def _without_key_value(lines: list[bytes]) -> list[bytes]:
    """The request head with the Idempotency-Key's value (a fresh uuid per request) blanked."""
    return [b"Idempotency-Key: *" if line.lower().startswith(b"idempotency-key:") else line for line in lines]


def test_the_cli_and_the_sdk_send_a_command_as_the_same_bytes(peer):
    enqueued = run_cli("--json", "--server", peer.url, "--token", "t0ken", *ENQUEUE)
    assert enqueued.code == 0 and enqueued.json["job_id"] == JOB_ID, enqueued
    shown = run_cli("--json", "--server", peer.url, "--token", "t0ken", "jobs", "show", JOB_ID)
    assert shown.code == 0, shown
    (cli_enqueue, cli_show) = peer.requests
    peer.requests.clear()

    client = OrchClient(peer.url, "t0ken")
    client.call("jobs.enqueue", {"spec": json.loads(cli_enqueue[1])})  # the spec the CLI built from its options
    client.call("jobs.show", {"job_id": JOB_ID})
    (sdk_enqueue, sdk_show) = peer.requests

    assert any(line.lower().startswith(b"idempotency-key:") for line in cli_enqueue[0]), cli_enqueue
    assert _without_key_value(cli_enqueue[0]) == _without_key_value(sdk_enqueue[0])
    assert cli_enqueue[1] == sdk_enqueue[1]
    assert cli_show == sdk_show


def test_a_stopped_server_ends_an_sdk_call_in_bounded_mode_as_it_ends_a_cli_command(tmp_path):
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with serving(ledger, "--no-auth") as server:
        record = discovery.live_server(ledger)  # the server as the CLI finds it
        client = OrchClient(Server(record["url"], record["pid"], Path(record["ledger"])), bound=1)
        assert client.call("jobs.list", {})["jobs"] == []
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(ServerUnavailable) as silent:
                client.call("jobs.enqueue", {"spec": {"tenant": "acme", "project": "web", "type": "scan",
                                                      "payload": {}}})
            sdk_seconds = time.monotonic() - started
            cli = run_cli("--json", "--lock-timeout", "1", *ENQUEUE, ledger=ledger, timeout=60)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert sdk_seconds < 1 + 5, sdk_seconds  # about the bound; sent once, never resent
        error = silent.value
        assert (error.stage, error.may_have_applied) == ("silent", True), error
        assert str(error) == (f"server {server.url} (pid {server.pid}, which owns {record['ledger']}) did not "
                              "answer within 1s, nor did its health check"), error
        assert cli.code == 6 and cli.error["type"] == "LedgerBusy", cli
        assert cli.error["message"].startswith(str(error) + ": "), (cli.error, str(error))
        assert "jobs" in client.call("jobs.list", {})  # it serves again
