"""Connection limits of the HTTP door, with raw sockets against real server subprocesses on loopback (the
limits set small with the `serve` flags): an idle connection is closed after the keep-alive timeout, a client
sending its request head one byte at a time is cut off after the header timeout, a body that does not arrive
gets 408, the connection over the cap gets 503 and is closed; long-poll claims and SSE streams, which hold a
connection much longer than any of these timeouts while a request is being handled, keep working."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
from server_fixtures import SseStream, init_ledger, serving

from airgap_orch.sdk.client import OrchClient

SPEC = {"tenant": "acme", "project": "conn", "type": "scan"}


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory):
    """Short keep-alive and header timeouts, for the tests of what must outlive them."""
    root = tmp_path_factory.mktemp("idle")
    with serving(init_ledger(root / "idle.duckdb"), "--no-auth", "--keepalive-timeout", "1",
                 "--header-timeout", "1") as started:
        yield started


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """Long keep-alive, short header and body timeouts: a cut-off here is the header or body deadline's."""
    root = tmp_path_factory.mktemp("slow")
    with serving(init_ledger(root / "slow.duckdb"), "--no-auth", "--keepalive-timeout", "60",
                 "--header-timeout", "1.5", "--body-timeout", "1.5") as started:
        yield started


def connect(server) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=20)


def closed_after(connection: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes the connection (reading whatever it sends first), at most `limit`."""
    started = time.monotonic()
    received = b""
    connection.settimeout(limit)
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {limit} s (received {received[:200]!r})") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


def request_bytes(server, path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n\r\n".encode()


def test_idle_connections_are_closed_after_the_keepalive_timeout(idle_server):
    fresh = [connect(idle_server) for _ in range(20)]  # connected, nothing sent
    used = connect(idle_server)
    used.sendall(request_bytes(idle_server))
    used.settimeout(10)
    first = used.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first
    try:
        waited, received = closed_after(used, 10)
        assert received == b"" and 0.5 <= waited < 6, (waited, received)
        for connection in fresh:
            _, received = closed_after(connection, 6)
            assert received == b""
    finally:
        for connection in [used, *fresh]:
            connection.close()


def test_a_client_sending_its_request_head_a_byte_a_second_is_cut_off_after_the_header_timeout(slow_server):
    head = request_bytes(slow_server)
    with connect(slow_server) as connection:
        started = time.monotonic()
        sent = 0
        try:
            for byte in head[:-1]:  # never the last byte: the head must not complete
                connection.sendall(bytes([byte]))
                sent += 1
                time.sleep(1.0)
                if time.monotonic() - started > 12:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        waited, received = closed_after(connection, 12 - (time.monotonic() - started) + 1)
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408") or received == b"", received
    assert 1.4 <= elapsed < 6, (elapsed, sent)
    assert sent < len(head) - 1


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed(slow_server):
    host = urlsplit(slow_server.url).netloc
    with connect(slow_server) as connection:
        connection.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: 200\r\n\r\n{{\"tenant\": \"ac".encode())
        started = time.monotonic()
        waited, received = closed_after(connection, 10)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"request-timeout" in received and b"1.5 s" in received, received
    assert 1.2 <= time.monotonic() - started < 6
    assert slow_server.request("GET", "/v1/jobs").json["jobs"] == []


def test_the_connection_over_the_cap_gets_503_and_is_closed_and_a_freed_slot_serves_again(tmp_path):
    with serving(init_ledger(tmp_path / "cap.duckdb"), "--no-auth", "--max-connections", "4") as server:
        held = [connect(server) for _ in range(4)]
        try:
            time.sleep(0.3)  # the server has accepted all four
            with connect(server) as over:
                _, received = closed_after(over, 10)
            assert received.startswith(b"HTTP/1.1 503"), received
            assert b"too-many-connections" in received
            held.pop().close()
            deadline = time.monotonic() + 10
            while True:  # the server notices the close on its next loop turn
                try:
                    response = server.request("GET", "/healthz", timeout=5)
                except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                    response = None
                if response is not None and response.status == 200:
                    break
                assert time.monotonic() < deadline, response
                time.sleep(0.1)
        finally:
            for connection in held:
                connection.close()


def test_a_long_poll_claim_outlives_the_keepalive_and_header_timeouts(idle_server):
    started = time.monotonic()
    response = idle_server.request("POST", "/v1/jobs/claim", {"worker_id": "w", "type": "none-yet", "wait": 3},
                                   timeout=20)
    assert response.status == 200, response
    assert response.json == {"leases": []}
    assert time.monotonic() - started >= 2.5


def test_an_event_stream_outlives_the_keepalive_timeout(idle_server):
    with SseStream(idle_server.url, timeout=20) as stream:
        assert stream.status == 200
        time.sleep(2.5)  # 2.5 keep-alive timeouts with nothing sent
        created = idle_server.request("POST", "/v1/jobs", {**SPEC, "type": "sse-late"}).json
        messages = stream.until(lambda m: m["event"] == "job.created" and m["data"]["job"]["id"] == created["job_id"],
                                timeout=15)
    assert messages[-1]["data"]["job"]["type"] == "sse-late"


def test_the_sdk_client_carries_on_after_the_server_closed_its_idle_connection(idle_server):
    client = OrchClient(idle_server.url, retries=3)
    first = client.call("jobs.enqueue", {"spec": {**SPEC, "type": "sdk-idle"}})
    time.sleep(2)  # the server closes the client's keep-alive connection meanwhile
    second = client.call("jobs.enqueue", {"spec": {**SPEC, "type": "sdk-idle"}})
    assert first["created"] and second["created"] and first["job_id"] != second["job_id"]
