"""The OpenAPI 3.1 document served at /.well-known/openapi, built from api.ROUTES and schemas/.

Bodies reference the JSON Schema files (embedded under components/schemas): one contract, no second
copy of the shapes. Path, query and header parameters reference the same definitions (schemas/common.schema.json)
or the limits validation.py reads from them, so the document describes what the server accepts: a request the
document allows is not refused as invalid (tests/test_server_contract.py runs schemathesis's
positive_data_acceptance check against a live server). Links lead from the operations that create jobs, sources
and backfills to the operations that take their ids.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from .. import __version__, api, schemas, validation
from ..operations import audit
from ..operations import backfills as backfill_ops
from ..orchestrator import backfills
from ..orchestrator.states import ALL_STATES

_PATH_PARAM = re.compile(r"{([a-z_]+)}")
_COMMON = "#/components/schemas/common/definitions/"
_UUID = {"type": "string", "format": "uuid"}

# Path parameters by name: ids are UUIDs; a tenant or queue is a name; a source is a source name.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "job_id": _UUID, "backfill_id": _UUID, "tenant": {"$ref": _COMMON + "name"},
    "queue": {"$ref": _COMMON + "name"}, "name": {"$ref": _COMMON + "source-name"},
}
# Query parameters by name, as the list operations read them; (route, name) overrides one route's.
_PAGE = {"type": "integer", "minimum": 1, "maximum": audit.MAX_LIST}
QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "tenant": {"$ref": _COMMON + "name"}, "type": {"$ref": _COMMON + "name"},
    "state": {"enum": list(ALL_STATES)}, "since": {"$ref": _COMMON + "timestamp"},
    "limit": _PAGE, "after_seq": {"type": "integer", "minimum": 0, "maximum": 2**62},
    "staleness": {"enum": ["strict", "warn", "disabled"]}, "force": {"type": "boolean"},
    "plan_digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    api.UPLOAD_ROOT_LENGTH: {"$ref": _COMMON + "trust-bytes"},
}
# A page's next_cursor, passed back as given: opaque (base64url of the last row's key); one the server did not
# give out is refused (400).
QUERY_PARAMETERS["cursor"] = {"type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[A-Za-z0-9_-]+$",
                              "description": "The next_cursor of the previous page, as it was given (opaque); leave "
                                             "out for the first page"}
QUERY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("backfills.list", "state"): {"enum": [backfills.ACTIVE, backfills.CANCELED]},
    ("backfills.list", "limit"): {**_PAGE, "maximum": backfill_ops.MAX_LIST},
    ("jobs.logs", "follow"): {"enum": ["1", "0", "true", "false"]},  # 1: a Server-Sent Events stream, not a page
}
# A header value is visible ASCII with no space at either end (HTTP drops such spaces; the server trims them).
_HEADER_TEXT = "^[!-~]([ -~]*[!-~])?$"
HEADERS = {"X-Orch-Reason": validation.MAX_REASON_CHARS, "X-Orch-Ticket": validation.MAX_TICKET_CHARS}

# Links: from an operation's answer to the operations that take the id it made (OpenAPI "links").
LINKS: dict[str, dict[str, tuple[str, str]]] = {
    # creating operation: {linked operation: (its path parameter, where the value comes from)}
    "jobs.enqueue": {name: ("job_id", "$response.body#/job_id") for name in (
        "jobs.show", "jobs.cancel", "jobs.replay", "jobs.heartbeat", "jobs.ack", "jobs.fail", "jobs.release")},
    "sources.add": {name: ("name", "$response.body#/name") for name in (
        "sources.show", "sources.pause", "sources.resume")},
    "backfills.create": {name: ("backfill_id", "$response.body#/backfill_id") for name in (
        "backfills.show", "backfills.cancel")},
}


def _operation_id(route_name: str) -> str:
    return route_name.replace(".", "_")


def _rewrite_refs(node: Any, name: str) -> Any:
    """A schema file's $refs, pointed inside the OpenAPI document: `#/definitions/x` of file `name`, a sibling
    file `other.schema.json`, or one of its definitions `other.schema.json#/definitions/x`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("$schema", "$id"):
                continue
            if key == "$ref" and isinstance(value, str):
                target, _, fragment = value.partition("#")
                if target.endswith(".schema.json"):
                    value = "#/components/schemas/" + target.rsplit("/", 1)[-1].removesuffix(".schema.json") + fragment
                elif not target and fragment.startswith("/definitions/"):
                    value = f"#/components/schemas/{name}{fragment}"
            out[key] = _rewrite_refs(value, name)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, name) for item in node]
    return node


def _component(name: str) -> dict[str, Any]:
    """A schema file rewritten so its $refs point inside the OpenAPI document."""
    return _rewrite_refs(schemas.load(name), name)


def _referenced(node: Any) -> set[str]:
    """The schema files a component refers to."""
    if isinstance(node, dict):
        found = set()
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.removeprefix("#/components/schemas/").split("/", 1)[0])
        return found.union(*(_referenced(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_referenced(item) for item in node))
    return set()


def _problem_responses() -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/problem"}}}
    return {str(code): {"description": text, "content": problem} for code, text in (
        (400, "Invalid input: malformed or non-strict JSON (NaN, Infinity, a key twice), text that is not UTF-8 "
              "in a body or header, a value its schema refuses; in a batch, `index` names the item refused and "
              "`field` the field"), (401, "Missing, invalid or expired token"),
        (403, "Token lacks the scope or tenant, or an Origin header serve --allow-origin does not name"),
        (404, "Unknown route or job"), (408, "Body not received within the body timeout"),
        (409, "Stale lease, illegal transition, a replayed job without again, or an idempotency key reused "
               "with another job spec or request"), (413, "Body over the size limit"),
        (415, "Body not sent as Content-Type: application/json (a bundle: application/octet-stream)"),
        (421, "Host header names neither the server's address nor a serve --allow-host name"),
        (503, "Ledger busy, or a connection over serve --max-connections"))}


def _query_schema(route: api.Route, name: str, kind: str) -> dict[str, Any]:
    if (route.name, name) in QUERY_OVERRIDES:
        return QUERY_OVERRIDES[(route.name, name)]
    if name in QUERY_PARAMETERS:
        return QUERY_PARAMETERS[name]
    return {"type": kind, "minimum": 0} if kind == "integer" else {"type": kind, "minLength": 1, "maxLength": 128}


def _parameters(route: api.Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [{"name": name, "in": "path", "required": True,
                                         "schema": PATH_PARAMETERS.get(name, {"type": "string", "minLength": 1})}
                                        for name in _PATH_PARAM.findall(route.path)]
    for name, kind in route.query:
        parameters.append({"name": name, "in": "query", "required": False,
                           "schema": _query_schema(route, name, kind)})
    for needed, header in ((route.needs_reason, "X-Orch-Reason"), (route.needs_ticket, "X-Orch-Ticket")):
        if needed or route.takes_reason:  # operational overrides carry a reason (and a ticket where asked)
            parameters.append({"name": header, "in": "header", "required": needed, "schema": {
                "type": "string", "minLength": 1, "maxLength": HEADERS[header], "pattern": _HEADER_TEXT}})
    if route.mutating:
        from .app import MAX_IDEMPOTENCY_KEY

        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False, "schema": {
            "type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": _HEADER_TEXT}})
    return parameters


def _links(route: api.Route) -> dict[str, Any]:
    return {_operation_id(target): {"operationId": _operation_id(target), "parameters": {parameter: source}}
            for target, (parameter, source) in LINKS.get(route.name, {}).items()}


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    used = {"problem"}
    for route in api.ROUTES:
        answer: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
        if links := _links(route):
            answer["links"] = links
        operation: dict[str, Any] = {
            "operationId": _operation_id(route.name),
            "summary": route.summary,
            # OpenAPI 3.1: the role (scope) a token needs; an empty list: a valid token, no role (api.ANY_TOKEN)
            "security": [{"bearer": [route.scope] if route.scope else []}],
            "parameters": _parameters(route),
            "responses": {"200": answer, **_problem_responses()},
        }
        if route.download:  # the bundle file itself, streamed back; the operation's result in a header
            operation["responses"]["200"] = {
                "description": "The bundle, streamed (Content-Length set); the export's result is the JSON object "
                               f"in the {api.DOWNLOAD_RESULT_HEADER} header, base64url-encoded without padding",
                "headers": {api.DOWNLOAD_RESULT_HEADER: {"required": True, "schema": {
                    "type": "string", "pattern": "^[A-Za-z0-9_-]+$"}}},
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                                    "maxLength": api.MAX_BUNDLE_BYTES}}}}
        if route.upload:  # the bundle file itself, streamed (api.MAX_BUNDLE_BYTES, or serve --max-bundle-bytes)
            operation["requestBody"] = {"required": True, "description": (
                f"The bundle file; with query parameter {api.UPLOAD_ROOT_LENGTH}=N, the N bytes of a trust root "
                "(root.json) first, then the bundle"), "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary",
                               "maxLength": api.MAX_BUNDLE_BYTES + validation.MAX_UPLOAD_ROOT_BYTES}}}}
        if route.request_schema:
            used.add(route.request_schema)
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.request_schema}"}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/metrics"] = {"get": {"operationId": "metrics", "security": [{"bearer": [api.READ]}],
                                 "summary": "Prometheus metrics (orch:read: the token's tenants; orch:admin: the site)",
                                 "responses": {"200": {"description": "text/plain exposition",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    used |= _referenced(paths)
    components: dict[str, Any] = {}
    while missing := sorted(used - set(components)):  # and the files those refer to, until none is missing
        for name in missing:
            components[name] = _component(name)
            used |= _referenced(components[name])
    return {
        "openapi": "3.1.0",
        "info": {"title": "airgap-orch control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
