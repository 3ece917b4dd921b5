"""What the HTTP door refuses before anything runs, on a real server subprocess over loopback:
- text UTF-8 cannot encode (a JSON "\\ud800" escape, a header byte that is not UTF-8) anywhere in a body or a
  header: 400 naming the field, and bad requests mixed into a stream of good ones refuse no good one;
- numbers JSON does not have (NaN, Infinity), a key twice in one object: 400 (a claim waiting NaN seconds
  used never to be answered);
- bodies that are not `Content-Type: application/json` (415), a foreign Origin (403), a Host header that is not
  the server's (421), unless `serve --allow-origin/--allow-host` name them;
and the same text through the CLI on a local ledger exits 1 with one line, no traceback."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from server_fixtures import Response, Server, assert_problem, init_ledger, run_cli, serving

from airgap_orch.errors import PolicyRefused, exit_code_for, from_problem
from airgap_orch.sdk.client import OrchClient
from airgap_orch.server.app import Gate

SPEC = {"tenant": "acme", "project": "door", "type": "scan"}
DIGEST = "sha256:" + "0" * 64
NOT_UTF8 = "\xff"  # http.client sends header text as Latin-1: this is the byte 0xff, which is not UTF-8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("door")
    with serving(init_ledger(root / "door.duckdb"), "--no-auth") as started:
        yield started


def ok(server: Server, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    response = server.request(method, path, body, **kwargs)
    assert response.status == 200, response
    return response.json


def history_entries(server: Server) -> int:
    return ok(server, "GET", "/v1/ledger")["history_entries"]


def leased_job(server: Server, job_type: str) -> dict[str, Any]:
    ok(server, "POST", "/v1/jobs", {**SPEC, "type": job_type})
    (lease,) = ok(server, "POST", "/v1/jobs/claim", {"worker_id": "w", "type": job_type, "lease_seconds": 600}
                  )["leases"]
    return lease


# -- text that is not UTF-8 ----------------------------------------------------------------------------------

def _surrogate(text: str) -> bytes:
    return text.replace("SURROGATE", "\\ud800").encode()


BODY_CASES = {
    # name: (path template, raw body with SURROGATE where "\ud800" goes, the field the answer names)
    "payload_deep": ("/v1/jobs", '{"tenant": "acme", "project": "door", "type": "scan", '
                                 '"payload": {"x": ["ok", "SURROGATE"]}}', "body.payload.x[1]"),
    "payload_key": ("/v1/jobs", '{"tenant": "acme", "project": "door", "type": "scan", '
                                '"payload": {"aSURROGATE": 1}}', "body.payload has a key"),
    "idempotency_key_field": ("/v1/jobs", '{"tenant": "acme", "project": "door", "type": "scan", '
                                          '"idempotency_key": "kSURROGATE"}', "body.idempotency_key"),
    "batch_job": ("/v1/jobs/batch", '{"jobs": [{"tenant": "acme", "project": "door", "type": "scan"}, '
                                    '{"tenant": "acme", "project": "door", "type": "scan", "payload": "SURROGATE"}]}',
                  "body.jobs[1].payload"),
    "heartbeat_message": ("/v1/jobs/{job_id}/heartbeat", '{"lease_id": "{lease_id}", "message": "mSURROGATE"}',
                          "body.message"),
    "fail_error": ("/v1/jobs/{job_id}/fail", '{"lease_id": "{lease_id}", "error": "SURROGATE"}', "body.error"),
    "artifact_uri": ("/v1/jobs/{job_id}/ack", '{"lease_id": "{lease_id}", "artifacts": [{"uri": "file:///SURROGATE", '
                                              f'"digest": "{DIGEST}", "mime": "text/plain"}}]}}',
                     "body.artifacts[0].uri"),
    "worker_id": ("/v1/jobs/claim", '{"worker_id": "wSURROGATE"}', "body.worker_id"),
}


@pytest.mark.parametrize("case", sorted(BODY_CASES))
def test_a_lone_surrogate_anywhere_in_a_body_is_400_naming_the_field_and_changes_nothing(server, case):
    path, body, field = BODY_CASES[case]
    lease = leased_job(server, f"surrogate-{case}")
    path = path.replace("{job_id}", lease["job_id"])
    body = body.replace("{lease_id}", lease["lease_id"])
    before = history_entries(server)
    problem = assert_problem(server.request("POST", path, raw=_surrogate(body)), 400, "invalid-input", 1)
    assert problem["detail"].startswith(field), problem
    assert "UTF-8" in problem["detail"], problem
    assert history_entries(server) == before
    assert ok(server, "GET", f"/v1/jobs/{lease['job_id']}")["state"] == "leased"


@pytest.mark.parametrize("header", ["Idempotency-Key", "X-Orch-Reason", "X-Orch-Ticket", "Last-Event-ID"])
def test_a_header_that_is_not_utf8_is_400_naming_the_header(server, header):
    before = history_entries(server)
    response = server.request("POST", "/v1/quotas/acme", {"max_active": 5},
                              headers={header: f"a{NOT_UTF8}b", "X-Orch-Reason": "ok"} if header != "X-Orch-Reason"
                              else {header: f"a{NOT_UTF8}b"})
    problem = assert_problem(response, 400, "invalid-input", 1)
    assert problem["detail"].startswith(f"header {header} is not UTF-8 text"), problem
    assert history_entries(server) == before


def test_bad_requests_mixed_into_a_stream_of_good_ones_refuse_no_good_one(server):
    """Good producers enqueue with Idempotency-Keys (so every batch of the writer looks keys up) while a bad
    client sends keys and bodies that are not UTF-8 as fast as it can: every good request is answered 200, every
    bad one 400. (Before: a bad key failed the whole writer batch, and good requests in it got 500.)"""
    good_threads, good_each, bad_most = 4, 60, 600
    address = urlsplit(server.url)
    refused: list[tuple[int, bytes]] = []
    bad_statuses: dict[int, int] = {}
    done = threading.Event()

    def good(number: int) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            for count in range(good_each):
                connection.request("POST", "/v1/jobs", json.dumps({**SPEC, "type": "mixed-good"}),
                                   {"Content-Type": "application/json", "Idempotency-Key": f"g{number}-{count}"})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    refused.append((response.status, body[:200]))
        finally:
            connection.close()

    def bad() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        bodies = [json.dumps({**SPEC, "type": "mixed-bad"}).encode(),
                  _surrogate('{"tenant": "acme", "project": "door", "type": "mixed-bad", "payload": "SURROGATE"}')]
        try:
            for count in range(bad_most):
                if done.is_set():
                    break
                headers = {"Content-Type": "application/json", "Idempotency-Key": f"bad-{count}-{NOT_UTF8}"}
                connection.request("POST", "/v1/jobs", bodies[count % 2], headers)
                response = connection.getresponse()
                response.read()
                bad_statuses[response.status] = bad_statuses.get(response.status, 0) + 1
        finally:
            connection.close()

    threads = [threading.Thread(target=good, args=(number,)) for number in range(good_threads)]
    spoiler = threading.Thread(target=bad)
    spoiler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    spoiler.join(60)
    assert refused == [], f"{len(refused)} good requests refused, e.g. {refused[:3]}"
    assert set(bad_statuses) == {400}, bad_statuses
    assert sum(bad_statuses.values()) > 0
    jobs = ok(server, "GET", "/v1/jobs", query={"type": "mixed-good", "limit": 1000})["jobs"]
    assert len(jobs) == good_threads * good_each
    assert ok(server, "GET", "/v1/jobs", query={"type": "mixed-bad"})["jobs"] == []


# -- numbers JSON does not have, keys given twice -----------------------------------------------------------

def test_a_claim_waiting_nan_seconds_is_answered_at_once_with_400(server):
    started = time.monotonic()
    raw = b'{"worker_id": "w", "type": "nothing-queued", "wait": NaN}'  # no job to lease: it would wait for ever
    response = server.request("POST", "/v1/jobs/claim", raw=raw, timeout=10)
    assert time.monotonic() - started < 5
    problem = assert_problem(response, 400, "invalid-input", 1)
    assert "NaN" in problem["detail"], problem


@pytest.mark.parametrize("raw", [b'{"tenant": "acme", "project": "door", "type": "scan", "priority": Infinity}',
                                 b'{"tenant": "acme", "project": "door", "type": "scan", "payload": [-Infinity]}',
                                 b'{"tenant": "acme", "project": "door", "type": "scan", "payload": {"n": NaN}}'],
                         ids=["infinity", "minus_infinity", "nan_in_payload"])
def test_non_finite_numbers_are_refused_by_the_parser(server, raw):
    before = history_entries(server)
    problem = assert_problem(server.request("POST", "/v1/jobs", raw=raw), 400, "invalid-input", 1)
    assert "not a JSON number" in problem["detail"], problem
    assert history_entries(server) == before


def test_a_key_given_twice_in_a_body_is_refused_not_last_one_wins(server):
    before = history_entries(server)
    raw = b'{"tenant": "acme", "project": "door", "type": "scan", "tenant": "globex"}'
    problem = assert_problem(server.request("POST", "/v1/jobs", raw=raw), 400, "invalid-input", 1)
    assert "'tenant' twice" in problem["detail"], problem
    raw = b'{"tenant": "acme", "project": "door", "type": "scan", "payload": {"a": {"b": 1, "b": 2}}}'
    assert_problem(server.request("POST", "/v1/jobs", raw=raw), 400, "invalid-input", 1)
    assert history_entries(server) == before


# -- cross-origin writes: Content-Type, Origin, Host --------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_body_that_is_not_declared_json_is_415_and_changes_nothing(server, content_type):
    """A web page may post these content types (or none) without asking the browser first."""
    before = history_entries(server)
    headers = {} if content_type is None else {"Content-Type": content_type}
    raw = json.dumps({**SPEC, "type": "csrf"}).encode()
    response = _raw_request(server, "POST", "/v1/jobs", raw, headers)
    assert_problem(response, 415, "unsupported-media-type", 1)
    if content_type is not None:  # no body at all: a form post that only wants the side effect
        assert_problem(_raw_request(server, "POST", "/v1/jobs/recover", b"", headers), 415, "unsupported-media-type")
    assert history_entries(server) == before
    assert ok(server, "GET", "/v1/jobs", query={"type": "csrf"})["jobs"] == []


def test_json_with_a_charset_is_accepted(server):
    response = server.request("POST", "/v1/jobs", {**SPEC, "type": "charset"},
                              headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status == 200, response


@pytest.mark.parametrize("method,path,body", [("POST", "/v1/jobs", {**SPEC, "type": "evil"}),
                                              ("POST", "/v1/jobs/claim", {"worker_id": "evil", "type": "evil"}),
                                              ("GET", "/v1/jobs", None)])
def test_a_request_from_a_foreign_web_page_is_403_and_changes_nothing(server, method, path, body):
    before = history_entries(server)
    response = server.request(method, path, body, headers={"Origin": "http://evil.example"})
    problem = assert_problem(response, 403, "policy-refused", 5)
    assert "--allow-origin" in problem["detail"], problem
    assert history_entries(server) == before


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example", "not a host"])
def test_a_host_header_that_is_not_the_servers_is_421_and_changes_nothing(server, host):
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 reaches the server with its
    own name in Host (and no Origin, as the browser sees a same-origin request)."""
    before = history_entries(server)
    host = host.replace("{port}", str(urlsplit(server.url).port))
    response = _raw_request(server, "POST", "/v1/jobs", json.dumps(SPEC).encode(),
                            {"Host": host, "Content-Type": "application/json"})
    problem = assert_problem(response, 421, "policy-refused", 5)
    assert "--allow-host" in problem["detail"], problem
    assert history_entries(server) == before


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "127.0.0.1", "[::1]:{port}"])
def test_the_loopback_names_of_a_loopback_server_are_accepted(server, host):
    host = host.replace("{port}", str(urlsplit(server.url).port))
    response = _raw_request(server, "GET", "/v1/ledger", None, {"Host": host})
    assert response.status == 200, response


def test_allow_host_and_allow_origin_let_the_named_ones_through_and_no_others(tmp_path):
    with serving(init_ledger(tmp_path / "allow.duckdb"), "--no-auth", "--allow-host", "orch.test",
                 "--allow-origin", "https://console.test:8443") as server:
        port = urlsplit(server.url).port
        for host in (f"orch.test:{port}", "ORCH.test", f"127.0.0.1:{port}"):
            assert _raw_request(server, "GET", "/v1/ledger", None, {"Host": host}).status == 200, host
        assert_problem(_raw_request(server, "GET", "/v1/ledger", None, {"Host": "other.test"}), 421)
        response = server.request("POST", "/v1/jobs", SPEC, headers={"Origin": "https://console.test:8443"})
        assert response.status == 200, response
        for origin in ("https://console.test", "http://console.test:8443", "null"):
            assert_problem(server.request("POST", "/v1/jobs", SPEC, headers={"Origin": origin}), 403,
                           "policy-refused", 5)


def test_serve_refuses_an_allow_origin_that_is_not_an_origin(tmp_path):
    result = run_cli("serve", "--port", "0", "--no-auth", "--allow-origin", "console.test/app",
                     ledger=init_ledger(tmp_path / "refused.duckdb"), timeout=60)
    assert result.code == 1, result
    assert result.stderr.strip().splitlines() == [
        "airgap-orch: error: --allow-origin 'console.test/app' must be an origin such as "
        "https://console.example.org (scheme, host and optional port)"], result


def test_the_sdk_client_and_the_cli_keep_working_through_the_checks(server):
    client = OrchClient(server.url)
    created = client.call("jobs.enqueue", {"spec": {**SPEC, "type": "sdk-door"}})
    assert created["created"] is True
    (lease,) = client.call("jobs.claim", {"worker_id": "sdk", "type": "sdk-door"})["leases"]
    assert client.call("jobs.ack", {"job_id": lease["job_id"], "lease_id": lease["lease_id"]})["state"] == \
        "succeeded"
    localhost = OrchClient(server.url.replace("127.0.0.1", "localhost"))
    assert localhost.call("jobs.show", {"job_id": lease["job_id"]})["state"] == "succeeded"
    listed = run_cli("--server", server.url, "jobs", "list", "--type", "sdk-door", "--json")
    assert listed.code == 0, listed
    paused = run_cli("--server", server.url, "queues", "pause", "door-queue", "--reason", "maintenance", "--json")
    assert paused.code == 0, paused


def test_a_host_or_origin_refusal_maps_to_policy_refused_exit_5_on_the_client_side(server):
    for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
        problem = _raw_request(server, "GET", "/v1/ledger", None, headers).json
        error = from_problem(problem["type"], problem["detail"])
        assert isinstance(error, PolicyRefused) and exit_code_for(error) == problem["exit_code"] == 5, problem


# -- the gate's rules for other binds (no server needed) ------------------------------------------------------

@pytest.mark.parametrize("bind,host,allowed", [
    ("0.0.0.0", "10.1.2.3", True), ("0.0.0.0", "127.0.0.1", True), ("0.0.0.0", "localhost", True),
    ("0.0.0.0", "orch.example.org", False), ("::", "fe80::1", True), ("::", "orch.example.org", False),
    ("10.1.2.3", "10.1.2.3", True), ("10.1.2.3", "10.1.2.4", False), ("10.1.2.3", "localhost", False),
    ("127.0.0.1", "127.0.0.5", True), ("127.0.0.1", "10.1.2.3", False), ("localhost", "127.0.0.1", True),
    ("::1", "::1", True), ("::1", "localhost", True), ("orch.example.org", "orch.example.org", True),
])
def test_which_host_names_a_bind_answers(bind, host, allowed):
    assert Gate.of(bind).host_allowed(host) is allowed
    assert Gate.of(bind, ["Orch.Example.org"]).host_allowed("orch.example.org") is True


# -- the CLI on a local ledger -------------------------------------------------------------------------------

@pytest.mark.parametrize("args,field", [
    (("jobs", "list", "--tenant", "acme\udcff"), "tenant"),
    (("jobs", "claim", "--worker", "w", "--type", "scan\udcff"), "type"),
    (("jobs", "claim", "--worker", "w\udcff"), "worker_id"),
    (("jobs", "enqueue", "--tenant", "acme", "--project", "p", "--type", "t", "--payload", '{"x": "\\ud800"}'),
     "--payload.x"),
    (("jobs", "enqueue", "--tenant", "acme", "--project", "p", "--type", "t", "--payload", '{"x": "\udcff"}'),
     "--payload.x"),
    (("jobs", "enqueue", "--tenant", "acme", "--project", "p", "--type", "t", "--payload", '{"x": 1, "x": 2}'),
     "--payload has the key 'x' twice"),
], ids=["list_tenant", "claim_type", "claim_worker", "payload_escape", "payload_byte", "payload_twice"])
def test_cli_text_that_is_not_utf8_exits_1_with_one_line_and_changes_nothing(cli, args, field):
    """Arguments with bytes that are not UTF-8 reach Python as lone surrogates (\\udcff here)."""
    before = cli("ledger", "info", "--json").json
    result = cli(*args)
    assert result.code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"airgap-orch: error: {field}"), result
    assert "Traceback" not in result.stderr
    assert cli("ledger", "info", "--json").json["history_entries"] == before["history_entries"]


def _raw_request(server: Server, method: str, path: str, body: bytes | None, headers: dict[str, str]):
    """One request with exactly these headers (http.client adds Host and Content-Length unless given)."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()}, answer.read())
    finally:
        connection.close()
