"""One contract: every limit a request schema states is stated once (schemas/), read from there by the code that
enforces it and by the OpenAPI document, and README "Limits" says the same; a refused batch item travels as data
(problem+json `index` and `field`), so the CLI names the file's line without reading the message; the server
accepts what the schemas allow (a whole number written 5.0) and answers a time it cannot hold with 400, not 500."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import SCHEMAS, Keys, assert_problem, init_ledger, run_cli, serving

from airgap_orch import api, schemas, validation
from airgap_orch.errors import InvalidInput
from airgap_orch.ledger import Ledger
from airgap_orch.operations import backfills as backfill_ops
from airgap_orch.operations import jobs as job_ops
from airgap_orch.orchestrator.backfills import MAX_WINDOWS

README = Path(__file__).resolve().parent.parent / "README.md"
SPEC = {"tenant": "acme", "project": "web", "type": "scan"}
DIGEST = "sha256:" + "0" * 64


# -- one source for each limit -----------------------------------------------------------------------------

def _readme_limits() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("what", "---"):
            rows[cells[0]] = cells[1]
    return rows


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _seconds(value: float) -> str:
    return f"{value / 3600:g} h" if value >= 3600 and value % 3600 == 0 else f"{value:g} s"


def test_readme_limits_table_states_the_limits_the_code_reads_from_the_schemas():
    spec = schemas.load("job-spec")["properties"]
    count = schemas.definition("count")
    expected = {
        "job payload (canonical JSON)": f"{validation.MAX_PAYLOAD_BYTES // 1024} KiB",
        "jobs in one batch (`--batch`, `POST /v1/jobs/batch`)": _n(validation.MAX_BATCH_JOBS),
        "HTTP request body": f"{api.MAX_BODY_BYTES // 2**20} MiB (413 beyond)",
        "jobs per claim": _n(validation.MAX_CLAIM_LIMIT),
        "acks in one request (`POST /v1/acks`) / artifacts per ack":
            f"{_n(validation.MAX_ACKS)} / {_n(validation.MAX_ARTIFACTS)}",
        "windows per backfill": _n(MAX_WINDOWS),
        "dead letters per bulk replay": _n(validation.MAX_BULK_REPLAY),
        "lease duration": f"{_seconds(validation.MIN_LEASE_SECONDS)} to {_seconds(validation.MAX_LEASE_SECONDS)} "
                          f"(default {_seconds(validation.DEFAULT_LEASE_SECONDS)})",
        "reason / message / error text": f"{_n(validation.MAX_REASON_CHARS)} / {_n(validation.MAX_MESSAGE_CHARS)} / "
                                         f"{_n(validation.MAX_ERROR_CHARS)} characters",
        "flow keys a job declares (`--key`) / parents (`--depends-on`)":
            f"{spec['keys']['maxItems']} / {spec['depends_on']['maxItems']}",
        "quota, burst, concurrency limit": f"{_n(count['minimum'])} to {_n(validation.MAX_LIMIT_VALUE)}",
        "rate limit": f"above 0, at most {_n(validation.MAX_RATE_PER_SECOND)} jobs/s",
        "circuit breaker failures / cool-down": f"1 to {_n(validation.MAX_BREAKER_FAILURES)} / "
                                                f"{_seconds(validation.MIN_COOLDOWN_SECONDS)} to "
                                                f"{_seconds(validation.MAX_COOLDOWN_SECONDS)}",
        "change ticket": f"{validation.MAX_TICKET_CHARS} characters",
        "source name / cron expression": f"{validation.MAX_SOURCE_NAME_CHARS} / {validation.MAX_CRON_CHARS} "
                                         "characters",
    }
    rows = _readme_limits()
    assert {what: rows.get(what) for what in expected} == expected


# Each limit the code reads, and where the contract states it (one place).
READ_FROM_SCHEMAS = [
    (validation.MAX_PAYLOAD_BYTES, "job-spec", "/properties/payload/x-max-bytes"),
    (validation.MAX_BATCH_JOBS, "enqueue-batch-request", "/properties/jobs/maxItems"),
    (validation.MAX_ACKS, "ack-many-request", "/properties/acks/maxItems"),
    (validation.MAX_ARTIFACTS, "ack-request", "/properties/artifacts/maxItems"),
    (validation.MAX_CLAIM_LIMIT, "claim-request", "/properties/limit/maximum"),
    (validation.MAX_LEASE_SECONDS, "claim-request", "/properties/lease_seconds/maximum"),
    (validation.MAX_RETRY_AFTER_SECONDS, "fail-request", "/properties/retry_after/maximum"),
    (validation.MAX_ERROR_CHARS, "fail-request", "/properties/error/maxLength"),
    (validation.MAX_MESSAGE_CHARS, "heartbeat-request", "/properties/message/maxLength"),
    (validation.MAX_BULK_REPLAY, "deadletter-replay-bulk-request", "/properties/job_ids/maxItems"),
    (validation.MAX_REASON_CHARS, "common", "/definitions/reason/maxLength"),
    (validation.MAX_TICKET_CHARS, "common", "/definitions/ticket/maxLength"),
    (validation.MAX_LIMIT_VALUE, "common", "/definitions/count/maximum"),
    (validation.MAX_NAME_CHARS, "common", "/definitions/name/maxLength"),
    (validation.MAX_FLOW_KEY_CHARS, "common", "/definitions/flow-key/maxLength"),
    (validation.MAX_SOURCE_NAME_CHARS, "common", "/definitions/source-name/maxLength"),
    (validation.MAX_LEASE_ID_CHARS, "common", "/definitions/lease-id/maxLength"),
    (validation.MAX_RATE_PER_SECOND, "ratelimit-set-request", "/properties/rate/maximum"),
    (validation.MAX_BREAKER_FAILURES, "breaker-set-request", "/properties/failures/maximum"),
    (validation.MAX_COOLDOWN_SECONDS, "breaker-set-request", "/properties/cooldown/maximum"),
    (validation.MAX_CRON_CHARS, "source-add-request", "/properties/schedule/maxLength"),
]


@pytest.mark.parametrize(("value", "name", "pointer"), READ_FROM_SCHEMAS,
                         ids=[f"{name}{pointer}" for _, name, pointer in READ_FROM_SCHEMAS])
def test_each_limit_the_code_enforces_is_the_one_its_schema_states(value, name, pointer):
    assert value == schemas.at(name, pointer)


def _nodes(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        found = [(where, node)]
        for key, value in node.items():
            found += _nodes(value, f"{where}/{key}")
        return found
    if isinstance(node, list):
        return [item for index, value in enumerate(node) for item in _nodes(value, f"{where}/{index}")]
    return []


@pytest.mark.parametrize("definition", ["name", "flow-key", "source-name", "duration", "count"])
def test_a_shared_definition_is_stated_once_across_the_schema_files(definition):
    """A name, a flow key, a duration, a flow-control count is written in schemas/common.schema.json and
    referred to ($ref) from every other file: no file restates its pattern (or its bounds)."""
    stated = schemas.definition(definition)
    shape = {key: stated[key] for key in ("type", "pattern", "minimum", "maximum") if key in stated}
    copies = []
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        if path.name == "common.schema.json":
            continue
        for where, node in _nodes(json.loads(path.read_text(encoding="utf-8")), path.name):
            if all(node.get(key) == value for key, value in shape.items()):
                copies.append(where)
    assert copies == []


@pytest.mark.parametrize(("field", "definition"), [("reason", "reason"), ("lease_id", "lease-id")])
def test_every_request_field_of_a_shared_kind_refers_to_its_definition(field, definition):
    """A reason or a lease id has the same bounds in every request: each one is a $ref to common.schema.json."""
    reference = f"common.schema.json#/definitions/{definition}"
    found = []
    for path in sorted(SCHEMAS.glob("*-request.schema.json")):
        for where, node in _nodes(json.loads(path.read_text(encoding="utf-8")), path.name):
            if isinstance(node.get("properties"), dict) and field in node["properties"]:
                found.append((where, node["properties"][field]))
    assert found and all(schema == {"$ref": reference} for _, schema in found), found


def test_the_openapi_document_states_header_and_path_limits_from_the_same_definitions():
    from airgap_orch.server import openapi

    document = openapi.document()
    backfill = document["paths"]["/v1/backfills"]["post"]
    headers = {parameter["name"]: parameter for parameter in backfill["parameters"] if parameter["in"] == "header"}
    assert headers["X-Orch-Reason"]["required"] and headers["X-Orch-Ticket"]["required"]
    assert headers["X-Orch-Reason"]["schema"]["maxLength"] == validation.MAX_REASON_CHARS
    assert headers["X-Orch-Ticket"]["schema"]["maxLength"] == validation.MAX_TICKET_CHARS
    (tenant,) = document["paths"]["/v1/quotas/{tenant}"]["post"]["parameters"][:1]
    assert tenant["schema"] == {"$ref": "#/components/schemas/common/definitions/name"}
    listed = {parameter["name"]: parameter["schema"] for parameter in
              document["paths"]["/v1/backfills"]["get"]["parameters"]}
    assert listed["limit"]["maximum"] == backfill_ops.MAX_LIST


def test_an_ack_with_more_artifacts_than_the_schema_allows_is_refused_locally_as_over_http(ledger: Ledger):
    """Locally (no server) the limit was not checked at all: a CLI ack stored what the server refuses."""
    job_ops.enqueue(ledger, SPEC)
    (lease,) = job_ops.claim(ledger, worker_id="w")["leases"]
    many = [{"uri": f"file:///out/{number}", "digest": DIGEST, "mime": "text/plain"}
            for number in range(validation.MAX_ARTIFACTS + 1)]
    with pytest.raises(InvalidInput, match=f"the limit is {validation.MAX_ARTIFACTS}"):
        job_ops.ack(ledger, lease["job_id"], lease["lease_id"], artifacts=many)
    assert job_ops.show(ledger, lease["job_id"])["state"] == "leased"
    done = job_ops.ack(ledger, lease["job_id"], lease["lease_id"], artifacts=many[:validation.MAX_ARTIFACTS])
    assert done["state"] == "succeeded", done


# -- a live server ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("one-source")
    keys = Keys(root / "keys")
    token = keys.issue("one-source", ["acme"])
    with serving(init_ledger(root / "one.duckdb"), "--token-key", str(keys.public_key)) as server:
        yield {"server": server, "token": token, "root": root}


def _history(served: dict[str, Any]) -> int:
    return served["server"].ledger_info(served["token"])["history_entries"]


@pytest.mark.parametrize(("item", "index", "field", "detail"), [
    ({**SPEC, "prio": 1}, 1, "prio", "job 2 has unknown fields 'prio'"),
    ({**SPEC, "keys": ["host:a", "x"]}, 1, "keys[1]", "job 2.keys[1] must be longer than or equal to 3"),
    ({**SPEC, "payload": "x" * (validation.MAX_PAYLOAD_BYTES + 1)}, 1, "payload", "job 2.payload is 65539 bytes"),
    ({**SPEC, "tenant": "globex"}, 1, None, "this caller may not enqueue for tenant 'globex'"),
], ids=["unknown_field", "bad_key", "payload_over_limit", "foreign_tenant"])
def test_a_refused_batch_item_is_named_by_index_and_field_in_the_problem(served, item, index, field, detail):
    before = _history(served)
    response = served["server"].request("POST", "/v1/jobs/batch", {"jobs": [SPEC, item, SPEC]},
                                        token=served["token"])
    problem = assert_problem(response, 403 if field is None and "tenant" in detail else 400)
    assert problem["detail"].startswith(detail), problem
    assert problem["index"] == index, problem
    assert problem.get("field") == field, problem
    assert _history(served) == before


def test_a_problem_outside_any_batch_names_the_field_and_no_index(served):
    response = served["server"].request("POST", "/v1/jobs", {**SPEC, "priority": 5000}, token=served["token"])
    problem = assert_problem(response, 400, "invalid-input", 1)
    assert (problem.get("index"), problem["field"]) == (None, "priority"), problem


def test_a_refused_batch_names_the_file_line_for_a_refusal_whose_message_names_no_job(served, tmp_path: Path):
    """The line comes from the error's index: a refusal worded without "job N" (here: a tenant the token may not
    enqueue for) is placed on its line too (before, the CLI read the number out of the message)."""
    batch = tmp_path / "mixed.jsonl"
    batch.write_text("\n".join([json.dumps(SPEC), "", json.dumps({**SPEC, "tenant": "globex"})]) + "\n",
                     encoding="utf-8")
    before = _history(served)
    result = run_cli("--server", served["server"].url, "--token", served["token"], "--json", "jobs", "enqueue",
                     "--batch", str(batch))
    assert result.code == 7, result
    assert result.error["message"] == f"{batch} line 3: this caller may not enqueue for tenant 'globex'", result
    assert _history(served) == before


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/concurrency", {"key": "host:whole.example", "max": 66.0}),
    ("/v1/breakers", {"key": "host:whole.example", "failures": 5.0, "cooldown": 30}),
    ("/v1/ratelimits", {"key": "host:whole.example", "rate": 2, "burst": 4.0}),
    ("/v1/quotas/acme", {"max_active": 7.0}),
    ("/v1/jobs/claim", {"worker_id": "w", "limit": 2.0}),
], ids=["concurrency_max", "breaker_failures", "ratelimit_burst", "quota_max_active", "claim_limit"])
def test_a_whole_number_written_with_a_zero_fraction_is_accepted_as_its_schema_allows(tmp_path, path, body):
    """JSON Schema's "integer" is any number without a fraction: the schemas accept 66.0, so the server does."""
    with serving(init_ledger(tmp_path / "whole.duckdb"), "--no-auth") as server:
        response = server.request("POST", path, body, headers={"X-Orch-Reason": "whole numbers"})
        assert response.status == 200, response
        if path == "/v1/concurrency":
            listed = server.request("GET", "/v1/concurrency").json["concurrency_limits"]
            assert [(row["key"], row["max_active"]) for row in listed] == [("host:whole.example", 66)]


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"])
def test_a_time_outside_the_years_a_timestamp_holds_is_400_naming_the_field_not_500(served, moment):
    before = _history(served)
    response = served["server"].request("POST", "/v1/jobs", {**SPEC, "run_at": moment}, token=served["token"])
    problem = assert_problem(response, 400, "invalid-input", 1)
    assert problem["field"] == "run_at" and "ISO 8601" in problem["detail"], problem
    assert served["server"].request("GET", "/healthz").status == 200
    assert _history(served) == before


def test_a_time_without_seconds_or_offset_is_still_read_as_utc(served):
    response = served["server"].request("POST", "/v1/jobs", {**SPEC, "run_at": "2024-03-01T04:00"},
                                        token=served["token"])
    assert response.status == 200, response
    shown = served["server"].request("GET", f"/v1/jobs/{response.json['job_id']}", token=served["token"]).json
    assert re.match(r"^2024-03-01T04:00:00(\.0+)?Z$", shown.get("run_at") or shown["job"]["run_at"]), shown
