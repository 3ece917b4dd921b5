"""The one HTTP client for the control plane (stdlib only): the SDK's workers and the CLI's remote mode both send
through OrchClient.request().

`call(name, params)` sends operation `name` (airgap_orch/api.py) and returns the JSON answer, or raises the
OrchError the server's problem+json stands for. Mutating calls carry an Idempotency-Key. A client waits in one of
two ways:

- Resending (the SDK's default): one keep-alive connection per thread, each wait bounded by `timeout`; connection
  errors and 5xx answers are retried `retries` times with capped exponential backoff and jitter, under the same
  Idempotency-Key, so a retry of a request that was applied returns the original answer instead of applying it
  twice. A caller that retries a call itself (after ServerUnavailable) passes the same `idempotency_key` again.
- Bounded (`bound=B`, the CLI's --lock-timeout; README "Control plane"): each request is sent once, on a fresh
  connection, and the server must show it is alive within B (at least MIN_BOUND_SECONDS) at every step: accept
  the connection (a refused connect is tried again until B has passed: a server that is starting gets that
  long), take each piece of the request, start its answer and keep sending it. While an answer takes longer to
  start (a long-poll claim, a large verify), the client asks the server's GET /healthz every B/2 seconds and
  waits on as long as that answers within B/2. A server that does none of these raises ServerUnavailable about
  B seconds after it last showed life, naming the server (`Server.describe`) and saying how it failed (`stage`)
  and whether it may still apply the request (`may_have_applied`).

`upload(name, params, file)` streams a file as the request body (bundle plan, import), after the bytes of a
`trust_root` param when there is one (api.UPLOAD_ROOT_LENGTH says how many); `download(name, params, sink)`
writes a file the server answers (bundle export) into `sink` as it arrives and returns the operation's result (the
X-Orch-Export header); a download is sent once, never resent, in either mode: an export may hand jobs off.

`close()` (from any thread) aborts requests in flight, such as a long-polling claim, and refuses new ones with
ServerUnavailable.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import random
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlencode, urlsplit

from .. import api
from ..errors import OrchError, from_problem

# Below this the first answer of a healthy server (an interpreter's worth of work away) could miss the bound.
MIN_BOUND_SECONDS = 1.0
SEND_CHUNK_BYTES = 64 * 1024  # a body goes out in pieces; in bounded mode each must be taken within the bound
HEALTH_PATH = "/healthz"

Stage = Literal["unreachable", "silent", "closed"]


class ServerUnavailable(OrchError):
    """The server could not be reached (after retries), or did not show life within a client's bound.

    `stage`: "unreachable" (no connection), "silent" (it stopped taking the request, or did not answer, nor its
    health check, within the bound) or "closed" (it closed the connection before answering). `may_have_applied`:
    the request was a change that reached the server, which may still apply it."""

    def __init__(self, message: str, *, stage: Stage = "unreachable", may_have_applied: bool = False):
        super().__init__(message)
        self.stage = stage
        self.may_have_applied = may_have_applied


@dataclass(frozen=True)
class Server:
    """Where requests go: a URL, and for a server found through its discovery file its pid and ledger."""

    url: str
    pid: int | None = None
    ledger: Path | None = None

    def describe(self) -> str:
        if self.pid is None:
            return f"server {self.url}"
        return f"server {self.url} (pid {self.pid}, which owns {self.ledger})"


@dataclass(frozen=True)
class PreparedCall:
    """One operation as an HTTP request: the one encoding, for the one transport (OrchClient.request).
    Operational overrides (reason, ticket) travel as X-Orch-Reason/X-Orch-Ticket."""

    method: str
    path: str
    body: Any  # JSON value for POST, None for GET
    headers: dict[str, str]
    mutating: bool


def prepare_call(name: str, params: dict[str, Any] | None) -> PreparedCall:
    route = api.BY_NAME[name]
    path, rest = api.path_for(route, {k: v for k, v in (params or {}).items() if v is not None})
    headers = {}
    if route.takes_reason or route.needs_reason or route.needs_ticket:
        headers = {header: str(rest.pop(field)) for field, header in api.OVERRIDE_HEADERS if field in rest}
    body = None
    if route.method == "GET" or route.upload:  # an upload's body is its file: the params go in the query
        if rest:
            path += "?" + urlencode({key: str(value).lower() if isinstance(value, bool) else value
                                     for key, value in rest.items()})
    else:
        body = rest["spec"] if name == "jobs.enqueue" else rest
    return PreparedCall(route.method, path, body, headers, route.mutating)


def decode_answer(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    """The answer, or the OrchError its problem+json stands for."""
    if status >= 400:
        raise from_problem(answer.get("type", ""), answer.get("detail") or answer.get("title") or f"HTTP {status}",
                           index=answer.get("index"), field=answer.get("field"))
    return answer


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        return json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"title": raw[:200].decode(errors="replace")}


class OrchClient:
    def __init__(self, url: str | Server, token: str | None = None, *, timeout: float = 30.0, retries: int = 5,
                 backoff_cap: float = 5.0, bound: float | None = None):
        """A client of the server at `url` (or a Server, whose description then names it in errors). `bound`: send
        each request once and bound every wait by it (module docstring); `timeout` and `retries` are then unused."""
        self.server = url if isinstance(url, Server) else Server(url)
        parts = urlsplit(self.server.url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise ValueError(f"server URL {self.server.url!r} must look like http://127.0.0.1:8080")
        self.url = self.server.url.rstrip("/")
        self._host, self._port, self._https = parts.hostname, port, parts.scheme == "https"
        self.token = token
        self.bound = None if bound is None else max(bound, MIN_BOUND_SECONDS)
        self.timeout = timeout if self.bound is None else self.bound
        self.retries = retries if self.bound is None else 0  # bounded: sent once
        self.backoff_cap = backoff_cap
        self._local = threading.local()  # one keep-alive connection per thread
        self._open: set[http.client.HTTPConnection] = set()  # every thread's connection, for close()
        self._open_lock = threading.Lock()
        self._closed = threading.Event()

    # -- transport -----------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self.timeout)
            self._local.connection = connection
            with self._open_lock:
                self._open.add(connection)
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
            with self._open_lock:
                self._open.discard(connection)

    def close(self) -> None:
        """Abort requests in flight in every thread and refuse new ones (ServerUnavailable)."""
        self._closed.set()
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading the answer
                except OSError:
                    pass

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def request(self, method: str, path: str, body: Any = None, *, idempotency_key: str | None = None,
                timeout: float | None = None, extra_headers: dict[str, str] | None = None,
                stream: BinaryIO | None = None, head: bytes = b"",
                progress: Callable[[int, int], None] | None = None, sink: BinaryIO | None = None,
                resend: bool = True) -> tuple[int, dict[str, Any]]:
        """(status, parsed body) of one request, waiting as the module docstring says. A request with an
        Idempotency-Key is a change (api.Route.mutating). `timeout` (resending mode): this request's wait, e.g. a
        long-poll's. `stream`: a file sent as the body (application/octet-stream) from its current position, after
        the bytes `head`, in pieces, once the server has answered `Expect: 100-continue` (none of it when the server
        refuses at once); `progress(sent, size)` hears how much has gone. `sink`: a successful answer's body is
        written there in pieces (never held whole; `progress(received, size)` hears how much has come, each piece
        within the wait) and the answer is {"headers": {lowercased name: value}, "received": bytes}; a broken answer
        is never resent.
        `resend=False`: once the connection is made, the request is not sent again (in resending mode too)."""
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(data))
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        start = stream.tell() if stream is not None else 0
        wanted = self.timeout if timeout is None or self.bound is not None else timeout
        connect_deadline = None if self.bound is None else time.monotonic() + self.bound
        attempt = 0
        while True:
            attempt += 1
            if self._closed.is_set():
                self._drop()
                raise ServerUnavailable(f"client for {self.url} was closed")
            connected = sent = False
            try:
                connection = self._connection()
                if connection.sock is None:
                    connection.timeout = wanted if connect_deadline is None else \
                        max(0.01, connect_deadline - time.monotonic())
                    connection.connect()
                connected = True
                if connection.sock.gettimeout() != wanted:  # each send and read from here; a long-poll's must not stick
                    connection.timeout = wanted
                    connection.sock.settimeout(wanted)
                if stream is not None:
                    stream.seek(start)
                    sent = self._send_stream(connection, method, path, headers, head, stream, progress, wanted)
                else:
                    connection.request(method, path, body=_pieces(data) if data is not None else None,
                                       headers=headers)
                    sent = True
                if self.bound is not None:
                    self._wait_for_answer(connection)
                response = connection.getresponse()
                status = response.status
                if sink is not None and status < 400:
                    return status, self._receive(response, sink, progress, idempotency_key is not None)
                raw = response.read()
                # Bounded: a fresh connection per request, since a kept one the server closed meanwhile fails after
                # the request went out, and a request is not sent twice.
                if self.bound is not None or response.getheader("Connection", "").lower() == "close":
                    self._drop()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if self._closed.is_set():
                    raise ServerUnavailable(f"client for {self.url} was closed") from None
                pause = (None if connected and not resend
                         else self._pause_before_retry(attempt, connected, connect_deadline))
                if pause is None:
                    raise self._unavailable(exc, connected, sent, idempotency_key is not None) from None
                self._closed.wait(pause)
                continue
            if status >= 500 and attempt <= self.retries and resend:
                self._closed.wait(self._backoff(attempt, 0.1, self.backoff_cap))
                continue
            return status, parse_body(raw)

    def _send_stream(self, connection: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str],
                     head: bytes, stream: BinaryIO, progress: Callable[[int, int], None] | None,
                     wanted: float) -> bool:
        """Send the request's head; once the server answers 100 Continue, the body: the bytes `head`, then the file,
        in pieces (True). False: the server answered with its final answer instead (a refusal), and nothing of the
        body was sent."""
        size = len(head) + os.fstat(stream.fileno()).st_size - stream.tell()
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Type": "application/octet-stream", "Expect": "100-continue",
                            "Content-Length": str(size)}.items():
            connection.putheader(name, value)
        connection.endheaders()
        if self.bound is not None:
            self._wait_for_answer(connection)
        elif not select.select([connection.sock], [], [], wanted)[0]:
            raise TimeoutError("no answer to Expect: 100-continue")
        if not _continues(connection):
            return False
        sent = 0
        for piece in itertools.chain(_pieces(head), iter(lambda: stream.read(SEND_CHUNK_BYTES), b"")):
            connection.send(piece)
            sent += len(piece)
            if progress is not None:
                progress(sent, size)
        return True

    def _receive(self, response: http.client.HTTPResponse, sink: BinaryIO,
                 progress: Callable[[int, int], None] | None, mutating: bool) -> dict[str, Any]:
        """Copy the answer's body into `sink` a piece at a time. An answer that breaks off is not asked for again
        (it may have been a change, such as an export's hand-off): ServerUnavailable, the connection dropped."""
        size = response.length or 0
        received = 0
        try:
            while piece := response.read(SEND_CHUNK_BYTES):
                sink.write(piece)
                received += len(piece)
                if progress is not None:
                    progress(received, max(size, received))
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise self._unavailable(exc, True, True, True) from None
        if self.bound is not None or response.getheader("Connection", "").lower() == "close":
            self._drop()
        return {"headers": {name.lower(): value for name, value in response.getheaders()}, "received": received}

    @staticmethod
    def _backoff(attempt: int, first: float, cap: float) -> float:
        ceiling = min(cap, first * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _pause_before_retry(self, attempt: int, connected: bool, connect_deadline: float | None) -> float | None:
        """How long to wait before sending again after a failed attempt, or None to give up."""
        if connect_deadline is None:
            return self._backoff(attempt, 0.1, self.backoff_cap) if attempt <= self.retries else None
        if connected:
            return None  # bounded: the request may have gone out; it is not sent twice
        pause = self._backoff(attempt, 0.02, 0.25)
        return pause if time.monotonic() + pause < connect_deadline else None

    def _unavailable(self, exc: BaseException, connected: bool, sent: bool, mutating: bool) -> ServerUnavailable:
        if self.bound is None:
            return ServerUnavailable(f"cannot reach {self.url}: {exc}; is `airgap-orch serve` running?")
        server, bound = self.server.describe(), f"{self.bound:g}s"
        if not connected:
            return ServerUnavailable(f"cannot reach {server} within {bound} ({_reason(exc)})")
        if isinstance(exc, TimeoutError):
            if isinstance(exc, _NoLifeSign):
                what = f"did not answer within {bound}, nor did its health check"
            else:
                what = f"stopped sending its answer for {bound}" if sent else f"stopped taking the request for {bound}"
            return ServerUnavailable(f"{server} {what}", stage="silent", may_have_applied=mutating and sent)
        return ServerUnavailable(f"{server} closed the connection before answering ({_reason(exc)})",
                                 stage="closed", may_have_applied=mutating)

    def _wait_for_answer(self, connection: http.client.HTTPConnection) -> None:
        """Return once the answer's first byte can be read; while it has not come, check every bound/2 that the
        server still answers its health check within bound/2."""
        assert connection.sock is not None and self.bound is not None
        half = self.bound / 2
        while True:
            readable, _, _ = select.select([connection.sock], [], [], half)
            if readable:
                return
            if not _answers_health_check(connection, half):
                raise _NoLifeSign

    # -- operations ----------------------------------------------------------------------------
    def call(self, name: str, params: dict[str, Any] | None = None, *, timeout: float | None = None,
             idempotency_key: str | None = None) -> dict[str, Any]:
        """Run operation `name`; mutating calls carry `idempotency_key` (default: a fresh one)."""
        call = prepare_call(name, params)
        key = (idempotency_key or str(uuid.uuid4())) if call.mutating else None
        status, answer = self.request(call.method, call.path, call.body, idempotency_key=key, timeout=timeout,
                                      extra_headers=call.headers)
        return decode_answer(status, answer)

    def upload(self, name: str, params: dict[str, Any] | None, stream: BinaryIO, *,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Run upload operation `name` (api.Route.upload: bundle plan and import) with the file `stream` as its
        body; its params travel in the query string, except a `trust_root` (api.UPLOAD_ROOT: a root.json document's
        bytes), which goes ahead of the file in the body, its length in the query (api.UPLOAD_ROOT_LENGTH)."""
        params = dict(params or {})
        root = params.pop(api.UPLOAD_ROOT, None)
        if root is not None:
            params[api.UPLOAD_ROOT_LENGTH] = len(root)
        call = prepare_call(name, params)
        status, answer = self.request(call.method, call.path, extra_headers=call.headers, stream=stream,
                                      head=root or b"", progress=progress)
        return decode_answer(status, answer)

    def download(self, name: str, params: dict[str, Any] | None, sink: BinaryIO, *,
                 progress: Callable[[int, int], None] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Run download operation `name` (api.Route.download: bundle export): its answer, a file, is written to
        `sink` in pieces as it arrives (`progress(received, size)`); returns the operation's result, which the server
        sends in the api.DOWNLOAD_RESULT_HEADER header. Sent once, in either mode: an export is not repeated.
        `timeout` (resending mode): the wait for the answer to start, which comes once the bundle is written."""
        call = prepare_call(name, params)
        status, answer = self.request(call.method, call.path, call.body, extra_headers=call.headers, sink=sink,
                                      progress=progress, resend=False, timeout=timeout)
        if status >= 400:
            return decode_answer(status, answer)
        encoded = answer["headers"].get(api.DOWNLOAD_RESULT_HEADER.lower(), "")
        try:
            result = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        except (ValueError, UnicodeDecodeError):
            raise ServerUnavailable(f"{self.server.describe()} sent a bundle without a readable "
                                    f"{api.DOWNLOAD_RESULT_HEADER} header", stage="closed") from None
        if not isinstance(result, dict):
            raise ServerUnavailable(f"{self.server.describe()} sent an unreadable {api.DOWNLOAD_RESULT_HEADER} header",
                                    stage="closed")
        return {**result, "received": answer["received"]}

    def events(self, name: str, params: dict[str, Any] | None = None, *, last_event_id: int | str | None = None,
               idle: float | None = None) -> Iterator[dict[str, str]]:
        """The Server-Sent Events a streaming GET answers (jobs.logs with follow=1), as they come: {"id", "event",
        "data"} (comments skipped), until the server ends the stream. `last_event_id` resumes after that event.
        Opened on a connection of its own, sent once; `idle`: how long the stream may stay silent (the server sends a
        comment line now and then) before ServerUnavailable (stage "silent")."""
        call = prepare_call(name, params)
        headers = {"Accept": "text/event-stream", **call.headers}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        wait = idle if idle is not None else self.timeout
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.bound or wait)
        with self._open_lock:
            self._open.add(connection)
        connected = False
        try:
            try:
                connection.connect()
                connected = True
                connection.request("GET", call.path, headers=headers)
                if self.bound is not None:
                    self._wait_for_answer(connection)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise self._unavailable(exc, connected, True, False) from None
            if response.status >= 400:
                decode_answer(response.status, parse_body(response.read()))
            assert connection.sock is not None
            connection.sock.settimeout(wait)
            message: dict[str, str] = {}
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise ServerUnavailable(f"{self.server.describe()} stopped sending the stream ({_reason(exc)})",
                                            stage="silent") from None
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    if message:
                        yield message
                    message = {}
                elif not text.startswith(":"):
                    field, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    message[field] = message[field] + "\n" + value if field == "data" and field in message else value
        finally:
            connection.close()
            with self._open_lock:
                self._open.discard(connection)

    def read_pages(self, name: str, params: dict[str, Any] | None = None, *, limit: int) -> dict[str, Any]:
        """Up to `limit` rows of a paged listing (jobs.list, deadletter.list, ledger.events, audit.list), following
        next_cursor page by page (api.read_pages)."""
        return api.read_pages(self.call, name, params or {}, limit)


class _NoLifeSign(TimeoutError):
    """The answer had not started and the health check did not answer in time."""


def _pieces(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), SEND_CHUNK_BYTES):
        yield body[start:start + SEND_CHUNK_BYTES]


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


def _answers_health_check(connection: http.client.HTTPConnection, within: float) -> bool:
    deadline = time.monotonic() + within
    probe = type(connection)(connection.host, connection.port, timeout=within)
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)
