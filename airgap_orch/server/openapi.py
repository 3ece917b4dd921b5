"""The OpenAPI 3.1 document served at /.well-known/openapi, built from api.ROUTES and schemas/.

Bodies reference the JSON Schema files (embedded under components/schemas): one contract, no second
copy of the shapes.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from .. import __version__, api, schemas, validation

_PATH_PARAM = re.compile(r"{([a-z_]+)}")
# Listings answer a page at a time (validation.MAX_PAGE_ROWS, MAX_PAGE_PAYLOAD_BYTES).
_PAGE = (f"One page: at most `limit` rows and at most {validation.MAX_PAGE_ROWS:,} (a page of jobs also ends before "
         f"its payloads pass {validation.MAX_PAGE_PAYLOAD_BYTES // (1024 * 1024)} MiB), each page read in a short "
         "read-only transaction of its own; next_cursor continues after it, null when nothing follows")
_PAGING = {
    "limit": f"Rows wanted (default 1,000); a page holds at most {validation.MAX_PAGE_ROWS:,}: follow next_cursor "
             "for the rest",
    "cursor": "The next_cursor of the previous page, as it was given (opaque); leave out for the first page",
    "after_seq": "Start after this seq (instead of a cursor)",
}


def _component(name: str) -> dict[str, Any]:
    """A schema file rewritten so its $refs point inside the OpenAPI document."""

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in ("$schema", "$id"):
                    continue
                if key == "$ref" and isinstance(value, str):
                    if value.startswith("#/definitions/"):
                        value = f"#/components/schemas/{name}/definitions/" + value.removeprefix("#/definitions/")
                    elif value.endswith(".schema.json"):
                        value = "#/components/schemas/" + value.rsplit("/", 1)[-1].removesuffix(".schema.json")
                out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    return rewrite(schemas.load(name))


def _problem_responses() -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/problem"}}}
    return {str(code): {"description": text, "content": problem} for code, text in (
        (400, "Invalid input: malformed or non-strict JSON (NaN, Infinity, a key twice), text that is not UTF-8 "
              "in a body or header"), (401, "Missing, invalid or expired token"),
        (403, "Token lacks the scope or tenant, or an Origin header serve --allow-origin does not name"),
        (404, "Unknown route or job"), (408, "Body not received within the body timeout"),
        (409, "Stale lease, illegal transition, a replayed job without again, or an idempotency key reused "
               "with another job spec or request"), (413, "Body over the size limit"),
        (415, "Body not sent as Content-Type: application/json"),
        (421, "Host header names neither the server's address nor a serve --allow-host name"),
        (503, "Ledger busy, or a connection over serve --max-connections"))}


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    used = {"problem", "artifact", "job-spec"}
    for route in api.ROUTES:
        operation: dict[str, Any] = {
            "operationId": route.name.replace(".", "_"),
            "summary": route.summary,
            "security": [{"bearer": []}],
            "parameters": [{"name": name, "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}}
                           for name in _PATH_PARAM.findall(route.path)],
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"type": "object"}}}}, **_problem_responses()},
        }
        paged = any(name == "cursor" for name, _ in route.query)
        for name, kind in route.query:
            schema: dict[str, Any] = {"type": kind}
            if kind == "integer":
                schema.update(minimum=0 if name == "after_seq" else 1, maximum=100_000)
            else:
                schema.update(minLength=1, maxLength=512 if name == "cursor" else 128)
            parameter = {"name": name, "in": "query", "required": False, "schema": schema}
            if paged and name in _PAGING:
                parameter["description"] = _PAGING[name]
            operation["parameters"].append(parameter)
        if paged:
            operation["responses"]["200"] = {"description": _PAGE, "content": {"application/json": {"schema": {
                "type": "object", "required": ["next_cursor"], "properties": {"next_cursor": {
                    "type": ["string", "null"], "description": "Pass as ?cursor= for the next page; null: no more"}}}}}}
        for needed, header, limit in ((route.needs_reason, "X-Orch-Reason", 256),
                                      (route.needs_ticket, "X-Orch-Ticket", 128)):
            if needed or route.takes_reason:  # operational overrides carry a reason (and a ticket where asked)
                operation["parameters"].append({"name": header, "in": "header", "required": needed,
                                                "schema": {"type": "string", "minLength": 1, "maxLength": limit}})
        if route.mutating:
            operation["parameters"].append({"name": "Idempotency-Key", "in": "header", "required": False,
                                            "schema": {"type": "string", "minLength": 1, "maxLength": 128}})
        if route.request_schema:
            used.add(route.request_schema)
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.request_schema}"}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/metrics"] = {"get": {"operationId": "metrics", "security": [{"bearer": []}],
                                 "summary": "Prometheus metrics (orch:read: the token's tenants; orch:admin: the site)",
                                 "responses": {"200": {"description": "text/plain exposition",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "airgap-orch control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {name: _component(name) for name in sorted(used)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
