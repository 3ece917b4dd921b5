"""Connection limits of the HTTP door, below aiohttp: a cap on open connections, a deadline for each request
head and a keep-alive (idle) timeout. The body deadline is the door's (app.Door reads every body).

aiohttp has a keep-alive timeout, but nothing bounds the time a request head takes (a client that sends one
header byte a second holds its connection, and a slot of the server, for ever) and nothing caps connections.
So every accepted connection gets a Guard: an asyncio protocol in front of aiohttp's own, which counts the
connection, starts a clock when a request head begins and closes the transport when a deadline passes. The
app's outermost middleware (`track`) tells the guard when a request's handler starts (its head is complete)
and when it ends (the connection is idle again). A handler that runs long (a claim long-polling for 60 s, an
SSE stream) has no deadline here: the guard only times connections on which no request is being handled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import api
from ..errors import PROBLEM_BASE

# What a connection over the cap gets before it is closed: the SDK retries a 503 with backoff.
_BUSY = json.dumps({"type": PROBLEM_BASE + "too-many-connections", "title": "too many connections", "status": 503,
                    "detail": "the server has as many open connections as it allows; retry later", "exit_code": 6})
REFUSAL = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nConnection: close\r\n"
           f"Retry-After: 1\r\nContent-Length: {len(_BUSY)}\r\n\r\n{_BUSY}").encode()
HEAD_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
CLOSE_GRACE_SECONDS = 5.0  # a closed transport that still holds unsent bytes is aborted after this long


@dataclass(frozen=True)
class ConnectionLimits:
    """Documented in README "Limits"; `serve --header-timeout/--body-timeout/--keepalive-timeout/
    --max-connections` set them."""

    header_timeout: float = 10.0  # from the first byte of a request head to its last
    body_timeout: float = 60.0  # from the start of a request's handler to the last byte of its body (a bundle
    # upload, which may take longer: between two pieces of it)
    keepalive_timeout: float = 30.0  # silence allowed on a connection with no request being handled
    max_connections: int = 1024  # open connections; the next one gets 503 and is closed
    max_bundle_bytes: int = api.MAX_BUNDLE_BYTES  # a bundle uploaded to bundle plan/import; larger: 413


class Guards:
    """The protocol factory for loop.create_server: one Guard per accepted connection, in front of a handler
    that `make_handler` makes (aiohttp's web server object, runner.server, set once the runner is set up)."""

    def __init__(self, limits: ConnectionLimits, make_handler: Callable[[], asyncio.Protocol] | None = None):
        self.limits = limits
        self.make_handler = make_handler
        self.open: dict[asyncio.BaseTransport, Guard] = {}
        self.refused = 0  # connections closed at once for the cap
        self.expired = 0  # connections closed for a deadline (idle or slow head)

    def __call__(self) -> Guard:
        return Guard(self)

    def of(self, request: web.BaseRequest) -> Guard | None:
        transport = request.transport
        return self.open.get(transport) if transport is not None else None


class Guard(asyncio.Protocol):
    IDLE, HEAD, HANDLING = "idle", "head", "handling"

    def __init__(self, guards: Guards):
        self.guards = guards
        self.inner: Any = None  # aiohttp's RequestHandler; None for a connection refused at the cap
        self.transport: asyncio.Transport | None = None
        self.state = self.IDLE
        self.handling = 0  # requests of this connection whose handler runs (pipelining can make it > 1)
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol, passed on to aiohttp's handler ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.guards.open) >= self.guards.limits.max_connections:
            self.guards.refused += 1
            self.transport.write(REFUSAL)  # type: ignore[union-attr]
            self._close()
            return
        self.guards.open[transport] = self
        assert self.guards.make_handler is not None, "a connection before the runner was set up"
        self.inner = self.guards.make_handler()
        self.inner.connection_made(transport)
        self._arm(self.guards.limits.keepalive_timeout)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.state == self.IDLE and data:
            self.state = self.HEAD
            self._arm(self.guards.limits.header_timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.inner is None:
            return
        self.guards.open.pop(self.transport, None)  # type: ignore[arg-type]
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- told by the middleware --------------------------------------------------------------------------
    def handler_started(self) -> None:
        self.handling += 1
        self.state = self.HANDLING
        self._disarm()

    def handler_ended(self) -> None:
        self.handling -= 1
        if self.handling == 0:
            self.state = self.IDLE
            self._arm(self.guards.limits.keepalive_timeout)

    # -- deadlines -----------------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        self.guards.expired += 1
        if self.state == self.HEAD:  # a head started and did not end in time: say so, then close
            self.transport.write(HEAD_TIMEOUT)
        self._close()

    def _close(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.close()  # sends what is buffered first; a peer that reads nothing is cut off below
        asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, transport.abort)


def track(guards: Guards | None) -> Callable:
    """The outermost middleware: a request's handler runs while its connection is not timed."""

    @web.middleware
    async def tracking(request: web.Request, handler: Callable) -> web.StreamResponse:
        guard = guards.of(request) if guards is not None else None
        if guard is None:
            return await handler(request)
        guard.handler_started()
        try:
            return await handler(request)
        finally:
            guard.handler_ended()

    return tracking
