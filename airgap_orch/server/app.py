"""The HTTP door (aiohttp): authenticate, parse, validate, hand to the writer (operations that change the ledger) or
to the readers (operations that do not), answer JSON.

Errors are application/problem+json with a stable `type` (errors.HTTP_PROBLEMS) and the CLI's exit code.

What reaches the writer has passed the door's checks, in this order (the connection limits are
connections.py's):
- the Host header names this server (a browser led here by DNS rebinding sends another name): else 421;
- no Origin header, or one `serve --allow-origin` names (a web page in a browser on this machine): else 403;
- every header, query and path parameter is text UTF-8 can encode (validation.utf8_text): else 400;
- a body is `Content-Type: application/json` (a page can post text/plain without asking the browser first):
  else 415; it arrives within the body deadline: else 408; it is one strict JSON document
  (validation.parse_json: UTF-8, no NaN or Infinity, no key twice, no lone surrogate): else 400.
- a bundle export (api.Route.download) takes a JSON body as above and answers the bundle itself, streamed from a
  private temporary file beside the ledger that the bundle thread wrote (the server's own keys sign it);
- except a bundle upload (api.Route.upload): `Content-Type: application/octet-stream` (a page cannot send that
  unasked either), else 415; written piece by piece to a temporary file beside the ledger, never held whole in
  memory, each piece arriving within the body deadline (else 408) and all of it within the bundle cap (else 413,
  refused as soon as Content-Length or the bytes received pass it); a trust root ahead of it (query trust_bytes=N,
  api.UPLOAD_ROOT_LENGTH: 1 to the root cap, else 400) is held in memory and handed to the operation as bytes (a
  body that ends inside it: 400); then run on the bundle thread (operations/uploads.py), not the writer's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import ipaddress
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .. import api, schemas, validation
from ..errors import PROBLEM_BASE, Forbidden, InvalidInput, NotAuthorized, OrchError, exit_code_for, http_problem
from ..operations import telemetry
from ..operations.dispatch import Caller
from ..operations.readers import LedgerReaders
from ..operations.uploads import LedgerUploads
from ..operations.writer import Answer, LedgerWriter, dumps
from . import connections, console, openapi
from .events import EventHub, LogHub, envelope, matches
from .metrics import Metrics

MAX_IDEMPOTENCY_KEY = 128
MAX_CLAIM_WAIT = 60.0
UPLOAD_WRITE_BYTES = 1024 * 1024  # an upload is written to its file in pieces of about this size, off the event loop


def problem(status: int, slug_or_type: str, detail: str, exit_code: int | None = None, *, index: int | None = None,
            field: str | None = None) -> web.Response:
    """A problem+json answer; `index` and `field` say where a refused request went wrong (OrchError), as data."""
    problem_type = slug_or_type if slug_or_type.startswith("http") else PROBLEM_BASE + slug_or_type
    body: dict[str, Any] = {"type": problem_type, "title": problem_type.rsplit("/", 1)[-1].replace("-", " "),
                            "status": status, "detail": detail}
    if exit_code is not None:
        body["exit_code"] = exit_code
    if index is not None:
        body["index"] = index
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, content_type="application/problem+json")


def error_response(error: OrchError) -> web.Response:
    from ..auth.scopes import ScopeMissing

    if isinstance(error, ScopeMissing) and not isinstance(error, Forbidden):
        error = Forbidden(str(error))
    status, problem_type = http_problem(error)
    response = problem(status, problem_type, str(error).splitlines()[0] if str(error) else type(error).__name__,
                       exit_code_for(error), index=error.index, field=error.field)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="airgap-orch"'
    return response


class Refusal(Exception):
    """A request the door refuses before any operation runs, with its own status and problem type."""

    def __init__(self, status: int, slug: str, detail: str, exit_code: int, *, close: bool = False):
        super().__init__(detail)
        self.status, self.slug, self.detail, self.exit_code, self.close = status, slug, detail, exit_code, close

    async def answer(self, request: web.Request) -> web.Response:
        response = problem(self.status, self.slug, self.detail, self.exit_code)
        if self.close:
            # The rest of the body may never come (or is not wanted): send the answer now and close, instead of
            # letting aiohttp linger reading the rest of the body.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()  # closes the transport once what is written is sent
        return response


@web.middleware
async def problems(request: web.Request, handler):
    try:
        return await handler(request)
    except Refusal as refusal:
        return await refusal.answer(request)
    except OrchError as error:
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "payload-too-large", f"body over the limit of {api.MAX_BODY_BYTES} bytes", 1)
    except web.HTTPNotFound:
        return problem(404, "unknown-route", f"no route {request.method} {request.path}; see /.well-known/openapi", 1)
    except web.HTTPMethodNotAllowed:
        return problem(405, "method-not-allowed", f"{request.method} is not allowed on {request.path}", 1)
    except web.HTTPException as exc:
        return problem(exc.status, "http-error", exc.reason or "request refused")
    except asyncio.CancelledError:
        raise
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return problem(500, "internal", "internal error; the server log has the details")


@dataclass(frozen=True)
class Gate:
    """Which Host and Origin headers this server answers (see the module docstring). A Host names the server
    when it is the address it listens on, `localhost` or a loopback address for a loopback bind, any address
    for a bind to every interface (an address cannot be re-pointed by DNS; a name can), or a name given with
    `serve --allow-host`. Only the host part is compared, not the port."""

    bind: str
    allowed_hosts: frozenset[str] = frozenset()
    allowed_origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, bind: str, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> Gate:
        return cls(_host_name(bind) or bind.lower(), frozenset(_allowed_host(host) for host in hosts),
                   frozenset(origin_text(origin) for origin in origins))

    def host_allowed(self, name: str) -> bool:
        if name in self.allowed_hosts or name == self.bind:
            return True
        address = _address(name)
        bind_address = _address(self.bind)
        if bind_address is not None and bind_address.is_unspecified:  # 0.0.0.0 or ::, every interface
            return address is not None or name == "localhost"
        if self.bind == "localhost" or (bind_address is not None and bind_address.is_loopback):
            return name == "localhost" or (address is not None and address.is_loopback)
        return False

    def check(self, request: web.BaseRequest) -> None:
        host = request.headers.get("Host")
        if host is not None:
            name = _host_name(host)
            if name is None or not self.host_allowed(name):
                raise Refusal(421, "policy-refused", f"this server does not answer for Host {host[:100]!r}; "
                              "use the address it listens on, or start it with --allow-host NAME", 5)
        origin = request.headers.get("Origin")
        # The server's own origin (the Host just allowed, on the scheme it answers): a page it served, the console.
        own = origin_text(f"{request.scheme}://{host}", strict=False) if host is not None else None
        if origin is not None and origin_text(origin, strict=False) not in self.allowed_origins and \
                origin_text(origin, strict=False) != own:
            raise Refusal(403, "policy-refused", f"requests from web pages (Origin {origin[:100]!r}) are refused; "
                          "start the server with --allow-origin ORIGIN to accept that one", 5)


def _host_name(host: str) -> str | None:
    """The host part of a Host header (or a bind address), lowercased, without brackets or port."""
    try:
        parts = urlsplit("//" + host.strip())
        _ = parts.port  # a malformed port raises
    except ValueError:
        return None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname.rstrip(".") if parts.hostname else None


def _allowed_host(text: str) -> str:
    name = _host_name(text)
    if name is None:
        raise InvalidInput(f"--allow-host {text!r} must be a host name or address, e.g. orch.example.org")
    return name


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def origin_text(origin: str, *, strict: bool = True) -> str:
    """An origin as browsers send it: scheme://host[:port], lowercased. `strict`: refuse anything else
    (for --allow-origin); otherwise return the text as it is, which then matches no allowed origin."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port, parts = None, parts._replace(scheme="")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or \
            parts.query or parts.fragment or parts.username is not None:
        if strict:
            raise InvalidInput(f"--allow-origin {origin!r} must be an origin such as https://console.example.org "
                               "(scheme, host and optional port)")
        return origin
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def check_text(request: web.BaseRequest) -> None:
    """Every header, query and path parameter is text UTF-8 can encode (aiohttp decodes bytes that are not
    UTF-8 to lone surrogates, which the ledger cannot store): else 400 naming it."""
    for name, value in request.headers.items():
        validation.utf8_text(value, f"header {name}")
    for name, value in request.query.items():
        validation.utf8_text(value, f"query parameter {name}")
    for name, value in request.match_info.items():
        validation.utf8_text(value, f"path parameter {name}")


def gate_middleware(gate: Gate | None) -> Any:
    @web.middleware
    async def gatekeeper(request: web.Request, handler):
        if gate is not None:
            gate.check(request)
        check_text(request)
        return await handler(request)

    return gatekeeper


OVERRIDE_HEADERS = (("reason", "X-Orch-Reason"), ("ticket", "X-Orch-Ticket"))


def override_headers(request: web.Request, route: api.Route) -> dict[str, str]:
    """reason/ticket of an operational override from X-Orch-Reason/X-Orch-Ticket (DESIGN invariant 8); a
    header the route needs but the request lacks is InvalidInput (400) before anything runs."""
    found = {}
    for field, header in OVERRIDE_HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            found[field] = value
        elif route.needs_reason if field == "reason" else route.needs_ticket:
            raise InvalidInput(f"{field} is required: say why in the {header} header (CLI: --{field}); it goes to "
                               "the audit log")
    return found


def _short_of_root(received: int, wanted: int) -> InvalidInput:
    return InvalidInput(f"the body ends after {received} bytes, inside the {wanted} bytes of trust root that query "
                        "parameter trust_bytes names; send the root.json document's bytes, then the bundle")


class Door:
    """Handlers bound to one server's writer, readers, auth and event hub."""

    def __init__(self, writer: LedgerWriter, readers: LedgerReaders, *, verifier: Any | None, hub: EventHub,
                 metrics: Metrics, limits: connections.ConnectionLimits | None = None,
                 uploads: LedgerUploads | None = None, log_hub: LogHub | None = None):
        self.writer = writer
        self.readers = readers
        self.uploads = uploads or LedgerUploads(writer.ledger)
        self.verifier = verifier  # auth.tokens.TokenVerifier, or None with --no-auth
        self.hub = hub
        self.log_hub = log_hub or LogHub(asyncio.get_event_loop())
        self.metrics = metrics
        self.limits = limits or connections.ConnectionLimits()
        self.gate: Gate | None = None  # create_app's: the expect handler runs before the middlewares

    def caller(self, request: web.Request, operation: str) -> Caller:
        if self.verifier is None:
            return Caller(actor="http:no-auth")
        from ..auth import scopes

        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise NotAuthorized("this server needs a token: pass --token or set $AIRGAP_ORCH_TOKEN (over HTTP: "
                                "Authorization: Bearer <token>)")
        principal = self.verifier.verify(header[7:].strip())
        scopes.require(principal, scopes.scope_for(operation))
        return Caller(actor=f"token:{principal.subject}", tenants=scopes.tenant_reach(principal, operation),
                      scopes=frozenset(principal.scopes))

    async def operation(self, request: web.Request) -> web.Response:
        route: api.Route = request.match_info.route.resource_route  # type: ignore[attr-defined]
        started = time.monotonic()
        status = 200
        try:
            caller = self.caller(request, route.name)
            params = await self._params(request, route)
            if route.needs_reason or route.needs_ticket or route.takes_reason:
                params.update(override_headers(request, route))
            key = request.headers.get("Idempotency-Key")
            request_key = None
            if key is not None and route.mutating:
                if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
                    raise InvalidInput(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
                request_key = f"{caller.actor} {route.name} {key}"
            if route.name == "jobs.logs" and params.get("follow") is not None:
                if _follows(params.pop("follow")):
                    return await self._follow_logs(request, params, caller)
            if route.name == "jobs.claim":
                answer = await self._claim(request, params, caller, request_key)
                self.metrics.claim_latency_ms.observe((time.monotonic() - started) * 1000)
            elif route.download:  # a bundle back: written on the bundle thread, then streamed from its file
                return await self._download(request, route, params, caller)
            elif route.upload:  # a bundle: to a file, then on the bundle thread (its transaction: the write lock)
                upload, root = await self._upload(request, params.pop(api.UPLOAD_ROOT_LENGTH, None))
                if root is not None:
                    params[api.UPLOAD_ROOT] = root
                answer = self.uploads.submit(route.name, params, caller, upload)
                await asyncio.wrap_future(answer)
            elif route.mutating:
                answer = self.writer.submit(route.name, params, caller, request_key)
                await asyncio.wrap_future(answer)
            else:  # a read: on a reader thread, never queued behind the writer's work
                answer = self.readers.submit(route.name, params, caller)
                await asyncio.wrap_future(answer)
            return web.Response(text=answer.text or dumps(answer.result()), content_type="application/json")
        except OrchError as error:
            status = http_problem(error)[0]
            raise
        except Refusal as refusal:
            status = refusal.status
            raise
        finally:
            self.metrics.count_request(route.name, status, time.monotonic() - started)

    async def _params(self, request: web.Request, route: api.Route) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.match_info)
        if route.method == "GET" or route.upload:  # an upload's body is the bundle: its params are the query's
            allowed = dict(route.query)
            for name, value in request.query.items():
                if name not in allowed:
                    raise InvalidInput(f"unknown query parameter {name!r}; allowed: {', '.join(allowed) or 'none'}")
                if allowed[name] == "integer":
                    try:
                        params[name] = int(value)
                    except ValueError:
                        raise InvalidInput(f"query parameter {name} must be a whole number") from None
                elif allowed[name] == "boolean":
                    if value not in ("true", "false"):
                        raise InvalidInput(f"query parameter {name} must be true or false")
                    params[name] = value == "true"
                else:
                    params[name] = value
            return params
        body: Any = {}
        content_type = request.headers.get("Content-Type")
        if content_type is not None and request.content_type != "application/json":
            raise Refusal(415, "unsupported-media-type", f"request bodies are JSON: send Content-Type: "
                          f"application/json, not {content_type[:100]!r}", 1, close=True)
        if route.request_schema is not None or request.can_read_body:
            raw = await self._body(request)
            if raw:
                if content_type is None:
                    raise Refusal(415, "unsupported-media-type", "request bodies are JSON: send Content-Type: "
                                  "application/json", 1)
                body = validation.parse_json(raw, "body", hint="send one JSON document")
            elif route.request_schema is not None:
                raise InvalidInput("request body is required (JSON)")
        if route.request_schema is not None:
            schemas.validate(route.request_schema, body, "body")
        elif body not in ({}, None):
            raise InvalidInput(f"{route.name} takes no request body")
        if route.name == "jobs.enqueue":
            params["spec"] = body
        else:
            params.update(body)
        return params

    async def expect_upload(self, request: web.Request) -> web.StreamResponse | None:
        """Answer `Expect: 100-continue` on an upload route: the checks that need no body (token and scope, query,
        override headers, content type, declared size) first, so a refused bundle is never sent; 100 Continue
        when they pass. The handler runs them again on the request itself."""
        route: api.Route = request.match_info.route.resource_route  # type: ignore[attr-defined]
        try:
            if self.gate is not None:
                self.gate.check(request)
            check_text(request)
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise InvalidInput("the only Expect this server answers is 100-continue")
            self.caller(request, route.name)
            params = await self._params(request, route)
            if route.needs_reason or route.needs_ticket or route.takes_reason:
                override_headers(request, route)
            self._check_upload_head(request, params.get(api.UPLOAD_ROOT_LENGTH))
        except Refusal as refusal:
            response = problem(refusal.status, refusal.slug, refusal.detail, refusal.exit_code)
        except OrchError as error:
            response = error_response(error)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            response = problem(500, "internal", "internal error; the server log has the details")
        else:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
            return None
        self.metrics.count_request(route.name, response.status)
        response.force_close()  # the body will not come
        return response

    def _check_upload_head(self, request: web.BaseRequest, root_length: int | None) -> None:
        """The checks of an upload that need no body: its content type, the length of a trust root ahead of the
        bundle (api.UPLOAD_ROOT_LENGTH: 1 to the root cap, within a declared body), the declared size."""
        cap = self.limits.max_bundle_bytes
        if request.headers.get("Content-Type") is None or request.content_type != "application/octet-stream":
            raise Refusal(415, "unsupported-media-type", "a bundle is sent as the body with Content-Type: "
                          "application/octet-stream", 1, close=True)
        if root_length is not None:
            validation.upload_root_length(root_length)
            if request.content_length is not None and request.content_length < root_length:
                raise _short_of_root(request.content_length, root_length)
        if request.content_length is not None and request.content_length > cap + (root_length or 0):
            raise self._too_large()

    def _too_large(self) -> Refusal:
        return Refusal(413, "payload-too-large", f"bundle over the limit of {self.limits.max_bundle_bytes} bytes "
                       "(serve --max-bundle-bytes); nothing was imported", 1, close=True)

    async def _upload(self, request: web.Request, root_length: int | None) -> tuple[Path, bytes | None]:
        """(the body's bundle in a new temporary file beside the ledger (mode 0600), read and written a piece at a
        time, which the caller hands to the bundle thread, which removes it; the trust root ahead of it, when
        `root_length` (api.UPLOAD_ROOT_LENGTH) names one: its bytes, held in memory, at most the root cap). Refused
        (and removed) when it is not application/octet-stream, ends inside the root, passes the bundle cap, or a piece
        does not arrive within the body deadline."""
        cap = self.limits.max_bundle_bytes
        self._check_upload_head(request, root_length)
        wanted = root_length or 0
        ledger_path = Path(self.writer.ledger.path)
        descriptor, name = tempfile.mkstemp(dir=ledger_path.parent, prefix=f".{ledger_path.name}.upload-",
                                            suffix=".bundle")
        loop = asyncio.get_running_loop()
        try:
            with os.fdopen(descriptor, "wb") as out:
                root, received, pending = bytearray(), 0, bytearray()
                while True:
                    try:
                        piece = await asyncio.wait_for(request.content.readany(), self.limits.body_timeout)
                    except TimeoutError:
                        raise Refusal(408, "request-timeout", f"the bundle stopped arriving for "
                                      f"{self.limits.body_timeout:g} s", 1, close=True) from None
                    ended = not piece
                    if len(root) < wanted:  # the trust root comes first
                        if ended:
                            raise _short_of_root(len(root), wanted)
                        taken = wanted - len(root)
                        root += piece[:taken]
                        piece = piece[taken:]
                        if not piece:
                            continue
                    received += len(piece)
                    if received > cap:
                        raise self._too_large()
                    pending += piece
                    if pending and (ended or len(pending) >= UPLOAD_WRITE_BYTES):
                        await loop.run_in_executor(None, out.write, bytes(pending))
                        pending.clear()
                    if ended:
                        break
            return Path(name), bytes(root) if root_length is not None else None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise

    async def _download(self, request: web.Request, route: api.Route, params: dict[str, Any],
                        caller: Caller) -> web.StreamResponse:
        """Run download operation `route` on the bundle thread, then answer its bundle as the body
        (application/octet-stream with Content-Length), read and sent a piece at a time, never whole in memory, each
        piece taken by the client within the body deadline; the operation's result (less the server's path of the
        file) rides in the api.DOWNLOAD_RESULT_HEADER header as base64url JSON. The file's folder is removed after."""
        answer, folder = self.uploads.export(route.name, params, caller)
        try:
            result = dict(await asyncio.wrap_future(answer))
            path = Path(result.pop("bundle"))
            loop = asyncio.get_running_loop()
            source = await loop.run_in_executor(None, path.open, "rb")
            try:
                size = os.fstat(source.fileno()).st_size
                summary = base64.urlsafe_b64encode(dumps(result).encode()).rstrip(b"=").decode()
                response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                                       api.DOWNLOAD_RESULT_HEADER: summary})
                response.content_length = size
                await response.prepare(request)
                while piece := await loop.run_in_executor(None, source.read, UPLOAD_WRITE_BYTES):
                    try:
                        await asyncio.wait_for(response.write(piece), self.limits.body_timeout)
                    except (TimeoutError, ConnectionError):  # the client stopped taking the bundle, or left
                        request.protocol.force_close()  # it sees a body shorter than Content-Length
                        return response
                await response.write_eof()
                return response
            finally:
                source.close()
        finally:
            self.uploads.discard(answer, folder)

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, within the body deadline from the start of the handler."""
        try:
            return await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except TimeoutError:
            raise Refusal(408, "request-timeout", f"the request body did not arrive within "
                          f"{self.limits.body_timeout:g} s", 1, close=True) from None

    async def _claim(self, request: web.Request, params: dict[str, Any], caller: Caller,
                     request_key: str | None) -> Answer:
        wait = validation.number_in(float(params.get("wait") or 0), 0, MAX_CLAIM_WAIT, "wait")
        deadline = time.monotonic() + wait
        while True:
            if request.transport is None or request.transport.is_closing():
                # The client is gone: leasing to it now would strand jobs until their leases expire.
                raise web.HTTPRequestTimeout()
            answer = self.writer.submit("jobs.claim", params, caller, request_key)
            result = await asyncio.wrap_future(answer)
            remaining = deadline - time.monotonic()
            if result["leases"] or remaining <= 0:
                return answer
            await self.hub.wait(min(remaining, 0.25))

    async def _follow_logs(self, request: web.Request, params: dict[str, Any], caller: Caller) -> web.StreamResponse:
        """GET /v1/jobs/{id}/logs?follow=1: the job's lines as Server-Sent Events (`event: line`, `id:` its seq, the
        line as JSON data), from after Last-Event-ID (else after_seq, else the first), as they are stored, then one
        `event: end` (data: job_id, state, last_seq) once the job is in a final state and every line is sent. A
        comment line every api.LOG_FOLLOW_KEEPALIVE_SECONDS while nothing happens. Each read is a page on a reader
        thread, taken when the log hub says the job changed; a job the caller may not see is a 404 before the stream
        starts."""
        if params.get("cursor") is not None:
            raise InvalidInput("follow resumes with after_seq or the Last-Event-ID header, not a cursor")
        after = params.get("after_seq") or 0
        last_header = request.headers.get("Last-Event-ID")
        if last_header:
            try:
                after = int(last_header)
            except ValueError:
                raise InvalidInput("Last-Event-ID must be the id (seq) of a line this stream sent") from None
        job_id = params["job_id"]
        waiter = self.log_hub.watch(job_id)
        response: web.StreamResponse | None = None
        try:
            while True:
                waiter.clear()  # before the read: a change committed after its snapshot sets it again
                page = await asyncio.wrap_future(self.readers.submit(
                    "jobs.logs", {"job_id": job_id, "after_seq": after, "limit": validation.MAX_PAGE_ROWS}, caller))
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
                    await response.prepare(request)
                text = "".join(f"id: {line['seq']}\nevent: line\ndata: {dumps(line)}\n\n" for line in page["lines"])
                after = page["last_seq"]
                ended = page["final"] and page["next_cursor"] is None
                if ended:
                    end = {"job_id": job_id, "state": page["state"], "last_seq": after}
                    text += f"event: end\ndata: {dumps(end)}\n\n"
                if text:
                    await response.write(text.encode())
                if ended:
                    await response.write_eof()
                    return response
                if page["next_cursor"] is not None:
                    continue
                try:
                    await asyncio.wait_for(waiter.wait(), api.LOG_FOLLOW_KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
        except ConnectionError:  # the client left
            if response is None:
                raise
            return response
        except OrchError as error:  # e.g. the server is stopping (LedgerBusy): once streaming, say so as an event
            if response is None:
                raise
            with contextlib.suppress(ConnectionError):
                await response.write(f"event: error\ndata: {dumps({'message': str(error)})}\n\n".encode())
            return response
        finally:
            self.log_hub.unwatch(job_id, waiter)

    async def openapi_document(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        caller = self.caller(request, "metrics")  # orch:read; the whole site's with orch:admin, else its tenants'
        counted = self.metrics.counted()  # first: the snapshot then shows the state of every counted transition
        # The whole site's figures (they rank the tenants that get a label of their own); render keeps the caller's.
        snapshot = await asyncio.wrap_future(self.readers.run(functools.partial(telemetry.snapshot,
                                                                                self.readers.ledger)))
        return web.Response(text=self.metrics.render(snapshot, tenants=caller.tenants, counted=counted),
                            content_type="text/plain", charset="utf-8")

    async def event_stream(self, request: web.Request) -> web.StreamResponse:
        caller = self.caller(request, "events")
        filters = {name: request.query.get(name) for name in ("tenant", "type", "correlation_id")}
        unknown = set(request.query) - set(filters)
        if unknown:
            raise InvalidInput(f"unknown query parameter {sorted(unknown)[0]!r}; allowed: tenant, type, correlation_id")
        last_header = request.headers.get("Last-Event-ID")
        try:
            last = int(last_header) if last_header else self.hub.newest_seq()
        except ValueError:
            raise InvalidInput("Last-Event-ID must be the id of an event this server sent") from None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        while True:
            gap, items = self.hub.since(last)
            if gap:
                await response.write(f"event: gap\ndata: {json.dumps({'after': last})}\n\n".encode())
            for item in items:
                last = item[0]
                event = envelope(item)
                if matches(event, tenants=caller.tenants, tenant=filters["tenant"], job_type=filters["type"],
                           correlation_id=filters["correlation_id"]):
                    await response.write(f"id: {last}\nevent: {event['eventType']}\ndata: {dumps(event)}\n\n"
                                         .encode())
            if not items and not gap:
                await self.hub.wait(15.0)
                if self.hub.newest_seq() <= last:
                    await response.write(b": keep-alive\n\n")




def _follows(value: str) -> bool:
    """?follow=1 (or true) streams a job's log; follow=0 (or false) answers a page."""
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise InvalidInput("query parameter follow must be 1 or 0 (true or false)")


def create_app(door: Door, *, gate: Gate | None = None, guards: connections.Guards | None = None
               ) -> web.Application:
    app = web.Application(middlewares=[connections.track(guards), problems, gate_middleware(gate)],
                          client_max_size=api.MAX_BODY_BYTES)
    door.gate = gate
    for route in api.ROUTES:
        resource = app.router.add_route(route.method, route.path, door.operation,
                                        expect_handler=door.expect_upload if route.upload else None)
        resource.resource_route = route  # type: ignore[attr-defined]
    app.router.add_get("/.well-known/openapi", door.openapi_document)
    app.router.add_get("/healthz", door.health)
    app.router.add_get("/metrics", door.metrics_text)
    app.router.add_get("/events", door.event_stream)
    console.add_routes(app)
    return app
