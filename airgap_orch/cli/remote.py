"""The CLI's HTTP client: one command sent to the server that owns the ledger, its waits bounded by --lock-timeout.

The rule (README "Control plane"): the server must show it is alive within the bound B (--lock-timeout, at least
MIN_BOUND_SECONDS) at every step: accept the connection, take each piece of the request, start its answer and
keep sending it. While an answer takes longer to start (a long-poll claim, a large verify), the CLI asks the
server's GET /healthz every B/2 seconds and waits on as long as that answers within B/2. A server that does none
of these (stopped with SIGSTOP, hung, gone, nothing listening at the address) ends the command with LedgerBusy
(exit 6) about B seconds after it last showed life, naming the server.

The request is sent once: unlike the SDK's client, the CLI never resends (an operator retries on exit 6).

A bundle (`upload`) is streamed from its file in pieces, never read whole, after the server has answered
`Expect: 100-continue`: a refusal (no token or scope, a bad option, a bundle over its cap) comes before any of it is
sent.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ..errors import InvalidInput, LedgerBusy, OrchError

# Below this the first answer of a healthy server (an interpreter's worth of work away) could miss the bound.
MIN_BOUND_SECONDS = 1.0
SEND_CHUNK_BYTES = 64 * 1024  # the request body goes out in pieces; each must be taken within the bound
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Server:
    """Where a command goes: a URL, and for a server found through the discovery file its pid and ledger."""

    url: str
    pid: int | None = None
    ledger: Path | None = None

    def describe(self) -> str:
        if self.pid is None:
            return f"server {self.url}"
        return f"server {self.url} (pid {self.pid}, which owns {self.ledger})"


def call(server: Server, token: str | None, name: str, params: dict[str, Any], *, bound: float) -> dict[str, Any]:
    """Run operation `name` on `server`; raises the OrchError its problem+json stands for, or LedgerBusy when it
    does not show life within `bound`."""
    from ..sdk.client import decode_answer, parse_body, prepare_call  # the one request encoding

    prepared = prepare_call(name, params)
    headers = {"Accept": "application/json", **prepared.headers}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if prepared.mutating:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    body = None
    if prepared.body is not None:
        body = json.dumps(prepared.body).encode()
        headers["Content-Type"] = "application/json"
    status, raw = request(server, prepared.method, prepared.path, body, headers, bound=bound,
                          mutating=prepared.mutating)
    return decode_answer(status, parse_body(raw))


def upload(server: Server, token: str | None, name: str, params: dict[str, Any], bundle: Path, *,
           bound: float, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run upload operation `name` (api.Route.upload) on `server` with the file `bundle` as its body;
    `progress(sent, size)` hears how much of it has gone."""
    from ..operations.files import open_readable
    from ..sdk.client import decode_answer, parse_body, prepare_call

    prepared = prepare_call(name, params)
    headers = {"Accept": "application/json", **prepared.headers, "Content-Type": "application/octet-stream",
               "Expect": "100-continue"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with open_readable(bundle, "bundle") as source:
        status, raw = request(server, prepared.method, prepared.path, source, headers, bound=bound, mutating=True,
                              progress=progress)
    return decode_answer(status, parse_body(raw))


def request(server: Server, method: str, path: str, body: bytes | BinaryIO | None, headers: dict[str, str], *,
            bound: float, mutating: bool = False, progress: Callable[[int, int], None] | None = None
            ) -> tuple[int, bytes]:
    """(status, body) of one request, each wait bounded as the module docstring says. A file body goes out in pieces
    once the server has answered Expect: 100-continue (and not at all when it answers with a refusal)."""
    bound = max(bound, MIN_BOUND_SECONDS)
    parts = urlsplit(server.url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise InvalidInput(f"server URL {server.url!r} must look like http://127.0.0.1:8080; check --server or "
                           "$AIRGAP_ORCH_SERVER")
    connection = _connect(server, parts.scheme, parts.hostname, port, bound)
    sent = False
    try:
        try:
            if body is not None and not isinstance(body, bytes):
                sent = _send_file(server, connection, method, path, body, headers, bound, progress)
            else:
                if body is not None:
                    headers = {**headers, "Content-Length": str(len(body))}
                connection.request(method, path, body=_pieces(body) if body is not None else None, headers=headers)
                sent = True
            _wait_for_answer(server, connection, bound, mutating)
            response = connection.getresponse()  # the socket's timeout is the bound for every read from here on
            return response.status, response.read()
        except TimeoutError:
            what = "stopped sending its answer" if sent else "stopped taking the request"
            raise _busy(server, f"{what} for {bound:g}s", mutating and sent) from None
        except (OSError, http.client.HTTPException) as exc:
            later = "; it may have applied the command: check before retrying" if mutating else "; retry"
            raise LedgerBusy(f"{server.describe()} closed the connection before answering ({_reason(exc)}): it may "
                             f"have stopped{later}", holder_pid=server.pid) from None
    finally:
        connection.close()


def _connect(server: Server, scheme: str, host: str, port: int | None, bound: float) -> http.client.HTTPConnection:
    """An open connection, retrying a refused or failed connect until `bound` has passed (a server that is
    starting or restarting gets that long), then LedgerBusy."""
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    deadline = time.monotonic() + bound
    delay = 0.02
    while True:
        connection = kind(host, port, timeout=max(0.01, deadline - time.monotonic()))
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            if time.monotonic() + delay >= deadline:
                hint = ("is it running? check the server, retry, or raise --lock-timeout" if server.pid is not None
                        else "is `airgap-orch serve` running there? check --server / $AIRGAP_ORCH_SERVER, retry, "
                             "or raise --lock-timeout")
                raise LedgerBusy(f"cannot reach {server.describe()} within {bound:g}s ({_reason(exc)}); {hint}",
                                 holder_pid=server.pid) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)
            continue
        assert connection.sock is not None
        connection.sock.settimeout(bound)  # each send and each read from now on
        return connection


def _send_file(server: Server, connection: http.client.HTTPConnection, method: str, path: str, body: BinaryIO,
               headers: dict[str, str], bound: float, progress: Callable[[int, int], None] | None) -> bool:
    """Send the head; once the server answers 100 Continue, the file in pieces (True). False: the server answered
    with its final answer instead (a refusal), and nothing of the file was sent."""
    size = os.fstat(body.fileno()).st_size
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(size)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    _wait_for_answer(server, connection, bound, False)
    if not _continues(connection):
        return False
    sent = 0
    while piece := body.read(SEND_CHUNK_BYTES):
        connection.send(piece)
        sent += len(piece)
        if progress is not None:
            progress(sent, size)
    return True


def _continues(connection: http.client.HTTPConnection) -> bool:
    """Whether the answer waiting on the socket is a 100 Continue; if so it is read off the socket (so that the wait
    for the final answer starts afresh), else left there for getresponse."""
    assert connection.sock is not None
    sock = connection.sock
    while True:
        head = sock.recv(4096, socket.MSG_PEEK)
        if not head:
            return False  # closed: getresponse says so
        if len(head) >= 12 and head[9:12] != b"100":
            return False
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            sock.recv(end + 4)
            return True
        time.sleep(0.005)  # the rest of a head that came in pieces


def _pieces(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), SEND_CHUNK_BYTES):
        yield body[start:start + SEND_CHUNK_BYTES]


def _wait_for_answer(server: Server, connection: http.client.HTTPConnection, bound: float, mutating: bool) -> None:
    """Return once the answer's first byte can be read; while it has not come, check every bound/2 that the
    server still answers its health check within bound/2."""
    assert connection.sock is not None
    half = bound / 2
    while True:
        readable, _, _ = select.select([connection.sock], [], [], half)
        if readable:
            return
        if not _answers_health_check(connection, half):
            raise _busy(server, f"did not answer within {bound:g}s, nor did its health check", mutating)


def _answers_health_check(connection: http.client.HTTPConnection, within: float) -> bool:
    deadline = time.monotonic() + within
    kind = type(connection)
    probe = kind(connection.host, connection.port, timeout=within)
    try:
        probe.connect()
        assert probe.sock is not None
        probe.sock.settimeout(max(0.01, deadline - time.monotonic()))
        probe.request("GET", HEALTH_PATH, headers={"Accept": "application/json"})
        response = probe.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        probe.close()


def _busy(server: Server, what: str, may_apply: bool) -> OrchError:
    later = "; if it resumes it may still apply this command" if may_apply else ""
    return LedgerBusy(f"{server.describe()} {what}: it may be stopped or hung; check it, then retry or raise "
                      f"--lock-timeout{later}", holder_pid=server.pid)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)
