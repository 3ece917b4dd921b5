"""A small HTTP client for the control plane (stdlib only), shared by the SDK and the CLI's remote mode.

`call(name, params)` sends operation `name` (airgap_orch/api.py) and returns the JSON answer, or raises
the OrchError the server's problem+json stands for. Connection errors and 5xx answers are retried with
capped exponential backoff and jitter; mutating calls carry an Idempotency-Key, so a retry of a request
that was applied returns the original answer instead of applying it twice. A caller that retries a
call itself (after ServerUnavailable) passes the same `idempotency_key` again for the same effect.

One keep-alive connection per thread. `close()` (from any thread) aborts requests in flight, such as a
long-polling claim, and refuses new ones with ServerUnavailable.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from .. import api
from ..errors import OrchError, from_problem


class ServerUnavailable(OrchError):
    """The server could not be reached (after retries)."""


@dataclass(frozen=True)
class PreparedCall:
    """One operation as an HTTP request: the one encoding both transports use (this client's and the CLI's,
    airgap_orch/cli/remote.py). Operational overrides (reason, ticket) travel as X-Orch-Reason/X-Orch-Ticket."""

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
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 5,
                 backoff_cap: float = 5.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL {url!r} must look like http://127.0.0.1:8080")
        self.url = url.rstrip("/")
        self._host, self._port, self._https = parts.hostname, parts.port, parts.scheme == "https"
        self.token = token
        self.timeout = timeout
        self.retries = retries
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
                timeout: float | None = None, extra_headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, Any]]:
        headers = {"Accept": "application/json", **(extra_headers or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        attempt = 0
        while True:
            attempt += 1
            if self._closed.is_set():
                self._drop()
                raise ServerUnavailable(f"client for {self.url} was closed")
            try:
                connection = self._connection()
                wanted = self.timeout if timeout is None else timeout
                if connection.timeout != wanted:  # a long-poll's longer timeout must not stick
                    connection.timeout = wanted
                    if connection.sock is not None:
                        connection.sock.settimeout(wanted)
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    self._drop()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if self._closed.is_set():
                    raise ServerUnavailable(f"client for {self.url} was closed") from None
                if attempt > self.retries:
                    raise ServerUnavailable(f"cannot reach {self.url}: {exc}; is `airgap-orch serve` running?"
                                            ) from None
                self._sleep(attempt)
                continue
            if status >= 500 and status != 503 and attempt <= self.retries:
                self._sleep(attempt)
                continue
            if status == 503 and attempt <= self.retries:
                self._sleep(attempt)
                continue
            return status, parse_body(raw)

    def _sleep(self, attempt: int) -> None:
        ceiling = min(self.backoff_cap, 0.1 * 2 ** (attempt - 1))
        self._closed.wait(ceiling / 2 + random.uniform(0, ceiling / 2))

    # -- operations ----------------------------------------------------------------------------
    def call(self, name: str, params: dict[str, Any] | None = None, *, timeout: float | None = None,
             idempotency_key: str | None = None) -> dict[str, Any]:
        """Run operation `name`; mutating calls carry `idempotency_key` (default: a fresh one)."""
        call = prepare_call(name, params)
        key = (idempotency_key or str(uuid.uuid4())) if call.mutating else None
        status, answer = self.request(call.method, call.path, call.body, idempotency_key=key, timeout=timeout,
                                      extra_headers=call.headers)
        return decode_answer(status, answer)

    def read_pages(self, name: str, params: dict[str, Any] | None = None, *, limit: int) -> dict[str, Any]:
        """Up to `limit` rows of a paged listing (jobs.list, deadletter.list, ledger.events, audit.list), following
        next_cursor page by page (api.read_pages)."""
        return api.read_pages(self.call, name, params or {}, limit)
