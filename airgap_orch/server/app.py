"""The HTTP door (aiohttp): authenticate, parse, validate, hand to the writer, answer JSON.

Errors are application/problem+json with a stable `type` (errors.HTTP_PROBLEMS) and the CLI's exit code.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from typing import Any

from aiohttp import web

from .. import api, schemas
from ..errors import PROBLEM_BASE, Forbidden, InvalidInput, NotAuthorized, OrchError, exit_code_for, http_problem
from ..operations.dispatch import Caller
from ..operations.writer import Answer, LedgerWriter, dumps
from . import openapi
from .events import EventHub, envelope, matches
from .metrics import Metrics

MAX_IDEMPOTENCY_KEY = 128
MAX_CLAIM_WAIT = 60.0


def problem(status: int, slug_or_type: str, detail: str, exit_code: int | None = None) -> web.Response:
    problem_type = slug_or_type if slug_or_type.startswith("http") else PROBLEM_BASE + slug_or_type
    body = {"type": problem_type, "title": problem_type.rsplit("/", 1)[-1].replace("-", " "), "status": status,
            "detail": detail}
    if exit_code is not None:
        body["exit_code"] = exit_code
    return web.json_response(body, status=status, content_type="application/problem+json")


def error_response(error: OrchError) -> web.Response:
    from ..auth.scopes import ScopeMissing

    if isinstance(error, ScopeMissing) and not isinstance(error, Forbidden):
        error = Forbidden(str(error))
    status, problem_type = http_problem(error)
    response = problem(status, problem_type, str(error).splitlines()[0] if str(error) else type(error).__name__,
                       exit_code_for(error))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="airgap-orch"'
    return response


@web.middleware
async def problems(request: web.Request, handler):
    try:
        return await handler(request)
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
            raise InvalidInput(f"{route.name} needs the {header} header (the {field} for the audit log)")
    return found


class Door:
    """Handlers bound to one server's writer, auth and event hub."""

    def __init__(self, writer: LedgerWriter, *, verifier: Any | None, hub: EventHub, metrics: Metrics):
        self.writer = writer
        self.verifier = verifier  # auth.tokens.TokenVerifier, or None with --no-auth
        self.hub = hub
        self.metrics = metrics

    def caller(self, request: web.Request, scope_of: str) -> Caller:
        if self.verifier is None:
            return Caller(actor="http:no-auth")
        from ..auth import scopes

        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise NotAuthorized("missing bearer token; send Authorization: Bearer <token>")
        principal = self.verifier.verify(header[7:].strip())
        scopes.require(principal, scopes.scope_for(scope_of))
        return Caller(actor=f"token:{principal.subject}", tenants=scopes.tenant_reach(principal, scope_of))

    async def operation(self, request: web.Request) -> web.Response:
        route: api.Route = request.match_info.route.resource_route  # type: ignore[attr-defined]
        started = time.monotonic()
        status = 200
        try:
            caller = self.caller(request, route.scope_of)
            params = await self._params(request, route)
            if route.needs_reason or route.needs_ticket or route.takes_reason:
                params.update(override_headers(request, route))
            key = request.headers.get("Idempotency-Key")
            request_key = None
            if key is not None and route.mutating:
                if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
                    raise InvalidInput(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
                request_key = f"{caller.actor} {route.name} {key}"
            if route.name == "jobs.claim":
                answer = await self._claim(request, params, caller, request_key)
                self.metrics.claim_latency_ms.observe((time.monotonic() - started) * 1000)
            else:
                answer = self.writer.submit(route.name, params, caller, request_key)
                await asyncio.wrap_future(answer)
            return web.Response(text=answer.text or dumps(answer.result()), content_type="application/json")
        except OrchError as error:
            status = http_problem(error)[0]
            raise
        finally:
            self.metrics.count_request(route.name, status)

    async def _params(self, request: web.Request, route: api.Route) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.match_info)
        if route.method == "GET":
            allowed = dict(route.query)
            for name, value in request.query.items():
                if name not in allowed:
                    raise InvalidInput(f"unknown query parameter {name!r}; allowed: {', '.join(allowed) or 'none'}")
                if allowed[name] == "integer":
                    try:
                        params[name] = int(value)
                    except ValueError:
                        raise InvalidInput(f"query parameter {name} must be a whole number") from None
                else:
                    params[name] = value
            return params
        body: Any = {}
        if route.request_schema is not None or request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    raise InvalidInput("request body is not valid JSON") from None
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

    async def _claim(self, request: web.Request, params: dict[str, Any], caller: Caller,
                     request_key: str | None) -> Answer:
        wait = min(float(params.get("wait") or 0), MAX_CLAIM_WAIT)
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

    async def openapi_document(self, _request: web.Request) -> web.Response:
        return web.json_response(openapi.document())

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        caller = self.caller(request, "metrics")  # orch:read; the whole site's with orch:admin, else its tenants'
        info = await asyncio.wrap_future(self.writer.submit("ledger.info", {"history_count": False}, caller))
        return web.Response(text=self.metrics.render(info["jobs"], tenants=caller.tenants), content_type="text/plain",
                            charset="utf-8")

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




def create_app(door: Door) -> web.Application:
    app = web.Application(middlewares=[problems], client_max_size=api.MAX_BODY_BYTES)
    for route in api.ROUTES:
        resource = app.router.add_route(route.method, route.path, door.operation)
        resource.resource_route = route  # type: ignore[attr-defined]
    app.router.add_get("/.well-known/openapi", door.openapi_document)
    app.router.add_get("/healthz", door.health)
    app.router.add_get("/metrics", door.metrics_text)
    app.router.add_get("/events", door.event_stream)
    return app
