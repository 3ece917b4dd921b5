"""The HTTP contract: /.well-known/openapi is OpenAPI 3.1 whose request bodies are the schemas/ files; a
schemathesis run against the live server finds no 5xx and no request the document allows refused as invalid
(positive_data_acceptance); bad bodies and routes get problem+json (413, 400, 404, 405) with a stable type and
the CLI's exit code, change nothing, and the server stays up."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from jsonschema import Draft7Validator
from server_fixtures import SCHEMAS, Keys, assert_problem, init_ledger, serving

from airgap_orch import api

PROBLEM_BASE = "https://airgap-orch.dev/problems/"
SPEC = {"tenant": "acme", "project": "web", "type": "scan"}
# Bounded run: a few examples per operation and phase, a wall-clock cap for the whole subprocess.
SCHEMATHESIS_MAX_EXAMPLES = 5
SCHEMATHESIS_TIMEOUT = 240

# A long-poll claim may legitimately hold a request for up to 60 s (its `wait`); the hook below caps the
# generated wait so the run stays short. Two rules JSON Schema cannot state, which the schemas say in words, it
# makes generated bodies keep: a backfill's `to` comes after its `from`, at most 100,000 steps on; a source's
# cron expression names times that exist (ranges upwards, days a month has). It changes nothing else: every
# operation and every phase runs, and every other value is schemathesis's own, except a listing's `cursor`: the
# server's own opaque text, which no generator can guess, is left out; and an upload's `trust_bytes`, which says the
# body's first bytes are a trust root that a generated body is not (test_airgap_server_trust.py sends real ones).
HOOKS = textwrap.dedent('''
    import math
    from datetime import timedelta

    import schemathesis

    from airgap_orch import clock, validation
    from airgap_orch.errors import InvalidInput
    from airgap_orch.orchestrator.backfills import MAX_WINDOWS

    def _backfill_range(body):
        if not all(isinstance(body.get(field), str) for field in ("from", "to", "step")):
            return
        try:
            start, end = clock.parse_iso(body["from"]), clock.parse_iso(body["to"])
            step = validation.duration_seconds(body["step"], "step")
        except (ValueError, InvalidInput):
            return
        if start == end:
            try:
                end = start + timedelta(days=1)
            except OverflowError:
                start = end - timedelta(days=1)
        start, end = min(start, end), max(start, end)
        body["from"], body["to"] = clock.iso(start), clock.iso(end)
        span = (end - start).total_seconds()
        if span / step > MAX_WINDOWS:
            body["step"] = f"{math.ceil(span / MAX_WINDOWS)}s"

    def _cron_that_exists(body):
        if isinstance(body.get("schedule"), str):
            try:
                validation.cron(body["schedule"])
            except InvalidInput:
                body["schedule"] = "0 * * * *"

    @schemathesis.hook
    def before_call(context, case, **kwargs):
        if isinstance(case.query, dict):
            case.query.pop("cursor", None)  # opaque: only a page makes one (test_reads_beside_writes.py tests them)
            case.query.pop("trust_bytes", None)  # frames the body: only a real trust root fills it
        body = case.body
        if not isinstance(body, dict):
            return
        if case.operation.path == "/v1/jobs/claim":
            wait = body.get("wait")
            if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0.2:
                body["wait"] = 0.2
        elif case.operation.path == "/v1/backfills" and case.method == "POST":
            _backfill_range(body)
        elif case.operation.path == "/v1/sources" and case.method == "POST":
            _cron_that_exists(body)
''')


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("contract")
    keys = Keys(root / "keys")
    token = keys.issue("contract", ["acme", "globex"])
    with serving(init_ledger(root / "contract.duckdb"), "--token-key", str(keys.public_key)) as server:
        # The first request: the document as the server builds it before any body has been validated.
        document = server.request("GET", "/.well-known/openapi")
        assert document.status == 200, document
        yield {"server": server, "token": token, "document": document.json, "root": root}


def _pointer(document: dict, reference: str) -> Any:
    assert reference.startswith("#/"), reference
    node: Any = document
    for part in reference[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    return []


def _as_component(name: str) -> Any:
    """schemas/<name>.schema.json as the document should embed it: no $schema/$id, refs inside the document."""

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in ("$schema", "$id"):
                    continue
                if key == "$ref" and value.startswith("#/definitions/"):
                    value = f"#/components/schemas/{name}/definitions/" + value.removeprefix("#/definitions/")
                elif key == "$ref" and ".schema.json" in value:  # a sibling file, or one of its definitions
                    target, _, fragment = value.partition("#")
                    value = "#/components/schemas/" + target.rsplit("/", 1)[-1].removesuffix(".schema.json") + fragment
                out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    return rewrite(json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8")))


def assert_self_contained(document: dict) -> None:
    unresolved = []
    for reference in _references(document):
        try:
            _pointer(document, reference)
        except (AssertionError, KeyError, TypeError):
            unresolved.append(reference)
    assert not unresolved, sorted(set(unresolved))


def test_openapi_document_is_3_1_and_request_bodies_are_the_schema_files(served):
    document = served["document"]
    assert document["openapi"].startswith("3.1")
    validate_spec = pytest.importorskip("openapi_spec_validator").validate
    validate_spec(document)
    operations = {(method.upper(), path): operation for path, item in document["paths"].items()
                  for method, operation in item.items()}
    for route in api.ROUTES:
        operation = operations[(route.method, route.path)]
        if route.upload:  # the body is a bundle file, streamed (issue 15): no JSON schema
            assert route.request_schema is None, route.name
            assert list(operation["requestBody"]["content"]) == ["application/octet-stream"], route.name
            continue
        if route.request_schema is None:
            assert "requestBody" not in operation, route.name
            continue
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{route.request_schema}"}, route.name
    components = document["components"]["schemas"]
    for name, component in components.items():
        assert (SCHEMAS / f"{name}.schema.json").exists(), name
        assert component == _as_component(name), name
    assert_self_contained(document)
    for name in components:
        Draft7Validator.check_schema(_pointer(document, f"#/components/schemas/{name}"))


def test_openapi_document_built_after_traffic_still_resolves_its_refs(tmp_path):
    with serving(init_ledger(tmp_path / "late.duckdb"), "--no-auth") as server:
        assert server.request("POST", "/v1/jobs", SPEC).status == 200
        assert server.request("POST", "/v1/jobs/ack/x", {}).status == 404
        document = server.request("GET", "/.well-known/openapi").json
    assert_self_contained(document)
    assert document["components"]["schemas"]["job-spec"] == _as_component("job-spec")


def test_schemathesis_finds_no_server_error_and_no_allowed_request_refused(served):
    server, root = served["server"], served["root"]
    (root / "contract_hooks.py").write_text(HOOKS, encoding="utf-8")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "contract_hooks",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
               "run", f"{server.url}/.well-known/openapi",
               "--checks", "not_a_server_error,positive_data_acceptance",
               "--header", f"Authorization: Bearer {served['token']}",
               "--max-examples", str(SCHEMATHESIS_MAX_EXAMPLES), "--seed", "20260101", "--workers", "1",
               "--request-timeout", "20", "--generation-database", "none", "--no-color",
               "--report", "junit", "--report-junit-path", str(root / "schemathesis.xml")]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=SCHEMATHESIS_TIMEOUT, env=env,
                                   cwd=root)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis did not finish in {SCHEMATHESIS_TIMEOUT}s: {exc.stdout!r}")
    output = completed.stdout + completed.stderr
    assert server.alive() and server.request("GET", "/healthz").status == 200
    operations = len(api.ROUTES) + 1  # and GET /metrics
    assert f"{operations} selected / {operations} total" in output, output[-3000:]
    assert completed.returncode == 0, output[-6000:]


AIRGAP_PATHS = r"^/v1/(trust|bundles|airgap)(/|$)"


def test_schemathesis_finds_no_server_error_on_the_air_gap_routes(tmp_path):
    """The air-gap routes (trust, bundles, airgap) with a token that holds orch:airgap, on a ledger of their own:
    no generated request gets a 5xx. Only that check: a generated root, bundle body or site is refused by design
    (a bundle that is not signed is not one the document could describe as acceptable)."""
    keys = Keys(tmp_path / "keys")
    token = keys.issue("contract", ["acme"], ("orch:read", "orch:airgap"))
    (tmp_path / "contract_hooks.py").write_text(HOOKS, encoding="utf-8")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "contract_hooks",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with serving(init_ledger(tmp_path / "airgap.duckdb"), "--token-key", str(keys.public_key)) as server:
        command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
                   "run", f"{server.url}/.well-known/openapi", "--include-path-regex", AIRGAP_PATHS,
                   "--phases", "examples,coverage,fuzzing", "--checks", "not_a_server_error",
                   "--header", f"Authorization: Bearer {token}",
                   "--max-examples", str(SCHEMATHESIS_MAX_EXAMPLES), "--seed", "20260101", "--workers", "1",
                   "--request-timeout", "20", "--generation-database", "none", "--no-color"]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=SCHEMATHESIS_TIMEOUT,
                                       env=env, cwd=tmp_path)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"schemathesis did not finish in {SCHEMATHESIS_TIMEOUT}s: {exc.stdout!r}")
        output = completed.stdout + completed.stderr
        assert server.alive() and server.request("GET", "/healthz").status == 200
    selected = sum(1 for route in api.ROUTES if re.match(AIRGAP_PATHS, route.path))
    assert selected >= 12 and f"{selected} selected / " in output, output[-3000:]
    assert completed.returncode == 0, output[-6000:]


# The operations that create jobs, sources and backfills, and what the operations their links lead to need besides
# the id (a body; every override header is sent).
CREATIONS = {
    "jobs_enqueue": ("/v1/jobs", SPEC),
    "sources_add": ("/v1/sources", {"tenant": "acme", "name": "links-feed", "type": "feed.pull"}),
    "backfills_create": ("/v1/backfills", {**SPEC, "from": "2024-01-01", "to": "2024-01-02", "step": "6h"}),
}
LINKED_BODIES = {"jobs_cancel": {"reason": "links"}, "jobs_replay": {}, "jobs_heartbeat": {"lease_id": "none"},
                 "jobs_ack": {"lease_id": "none"}, "jobs_fail": {"lease_id": "none", "error": "e"},
                 "jobs_release": {"lease_id": "none"}}
OVERRIDES = {"X-Orch-Reason": "links", "X-Orch-Ticket": "T-1"}


def test_openapi_links_lead_from_created_ids_to_the_operations_that_take_them(served):
    """Each link's expression, read from a real answer, names the thing just made to the linked operation: a show
    finds it, an action answers for it (200, or 409 when its state forbids the action), none answers 404."""
    server, token, document = served["server"], served["token"], served["document"]
    operations = {operation["operationId"]: (method.upper(), path, operation)
                  for path, item in document["paths"].items() for method, operation in item.items()}
    expected = {"jobs_enqueue": {"jobs_show", "jobs_cancel", "jobs_replay", "jobs_heartbeat", "jobs_ack",
                                 "jobs_fail", "jobs_release"},
                "sources_add": {"sources_show", "sources_pause", "sources_resume"},
                "backfills_create": {"backfills_show", "backfills_cancel"}}
    for creator, (path, body) in CREATIONS.items():
        created = server.request("POST", path, body, token=token, headers=OVERRIDES)
        assert created.status == 200, created
        links = operations[creator][2]["responses"]["200"]["links"]
        assert set(links) == expected[creator], links
        for name, link in links.items():
            method, target, operation = operations[link["operationId"]]
            ((parameter, expression),) = link["parameters"].items()
            assert f"{{{parameter}}}" in target, (name, target)
            assert expression.startswith("$response.body#/"), expression
            value = _pointer(created.json, "#/" + expression.removeprefix("$response.body#/"))
            answer = server.request(method, target.replace(f"{{{parameter}}}", str(value)),
                                    LINKED_BODIES.get(name, {}) if method == "POST" else None, token=token,
                                    headers=OVERRIDES)
            assert answer.status in ((200,) if method == "GET" else (200, 409)), (name, answer)
            if method == "GET":
                assert value in answer.json.values(), (name, answer.json)


@pytest.mark.parametrize("limit", [-1, 10**20], ids=["negative", "past_int64"])
def test_event_log_limit_out_of_range_is_400_not_500(served, limit):
    response = served["server"].request("GET", "/v1/ledger/events", token=served["token"], query={"limit": limit})
    assert_problem(response, 400, "invalid-input", 1)


def history_entries(served) -> int:
    return served["server"].ledger_info(served["token"])["history_entries"]


def test_oversized_body_is_413_and_the_server_stays_up(served):
    server, token = served["server"], served["token"]
    before = history_entries(served)
    big = json.dumps({**SPEC, "payload": "x" * (api.MAX_BODY_BYTES + 1024)}).encode()
    for path in ("/v1/jobs", "/v1/jobs/batch", "/v1/jobs/claim"):
        assert_problem(server.request("POST", path, raw=big, token=token), 413, "payload-too-large", 1)
    assert history_entries(served) == before
    assert server.request("POST", "/v1/jobs", SPEC, token=token).status == 200


@pytest.mark.parametrize("raw", [b"{", b'{"tenant": "acme",', b"\xff\xfe", b"[1, 2", b"{'tenant': 'acme'}",
                                 b"[" * 100_000 + b"]" * 100_000, b"NaN-ish"],
                         ids=["open_brace", "truncated", "not_utf8", "open_list", "single_quotes", "deep_nesting",
                              "bare_word"])
def test_malformed_json_is_400_and_changes_nothing(served, raw):
    server, token = served["server"], served["token"]
    before = history_entries(served)
    for path in ("/v1/jobs", "/v1/jobs/batch", "/v1/jobs/claim", "/v1/acks"):
        assert_problem(server.request("POST", path, raw=raw, token=token), 400, "invalid-input", 1)
    assert history_entries(served) == before
    assert server.request("GET", "/healthz").status == 200


@pytest.mark.parametrize("body", [[], "text", 42, None, {"tenant": "acme"}, {**SPEC, "extra": 1},
                                  {**SPEC, "priority": "high"}], ids=["list", "string", "number", "null",
                                                                      "missing_fields", "unknown_field",
                                                                      "wrong_type"])
def test_body_that_breaks_its_schema_is_400_and_changes_nothing(served, body):
    server, token = served["server"], served["token"]
    before = history_entries(served)
    response = server.request("POST", "/v1/jobs", raw=json.dumps(body).encode(), token=token)
    assert_problem(response, 400, "invalid-input", 1)
    assert history_entries(served) == before


@pytest.mark.parametrize(("method", "path", "status", "slug"), [
    ("GET", "/v1/nothing-here", 404, "unknown-route"),
    ("POST", "/v2/jobs", 404, "unknown-route"),
    ("GET", "/", 404, "unknown-route"),
    ("DELETE", "/v1/jobs", 405, "method-not-allowed"),
    ("PUT", "/v1/jobs/claim", 405, "method-not-allowed"),
    ("GET", "/v1/jobs/not-a-uuid", 400, "invalid-input"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-00000000002a", 404, "not-found"),
])
def test_unknown_routes_and_jobs_are_problems(served, method, path, status, slug):
    response = served["server"].request(method, path, token=served["token"])
    problem = assert_problem(response, status, slug, 7 if status in (401, 403) else 1)
    assert Draft7Validator(json.loads((SCHEMAS / "problem.schema.json").read_text())).is_valid(problem)


def test_unknown_query_parameter_and_bad_idempotency_key_are_400(served):
    server, token = served["server"], served["token"]
    assert_problem(server.request("GET", "/v1/jobs", token=token, query={"colour": "red"}), 400, "invalid-input", 1)
    assert_problem(server.request("GET", "/v1/jobs", token=token, query={"limit": "ten"}), 400, "invalid-input", 1)
    assert_problem(server.request("POST", "/v1/jobs", SPEC, token=token, headers={"Idempotency-Key": "k" * 129}),
                   400, "invalid-input", 1)


def test_server_answers_after_a_connection_dropped_mid_body(served):
    server = served["server"]
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Authorization: Bearer " + served["token"].encode() +
                               b"\r\nContent-Length: 500\r\n\r\n{\"tenant\": \"ac")
    assert server.request("GET", "/healthz").status == 200
    assert server.request("GET", "/v1/jobs", token=served["token"]).status == 200
