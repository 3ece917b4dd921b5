"""Authentication and scopes as the server enforces them: a refused token is 401, a missing scope 403, another
tenant's job 404 (never 403), an enqueue for a tenant the token does not name 403; the CLI turns each into
exit 7; none of them changes the ledger, and no token reaches the server's logs."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid

import pytest
from server_fixtures import (
    ALL_SCOPES,
    Keys,
    SseStream,
    assert_problem,
    init_ledger,
    run_cli,
    run_cli_parallel,
    serving,
)

from airgap_orch.ledger import Ledger
from airgap_orch.server import discovery

WORK = ("orch:read", "orch:operate", "orch:worker")
SPEC_ACME = {"tenant": "acme", "project": "web", "type": "scan"}
SPEC_GLOBEX = {"tenant": "globex", "project": "feeds", "type": "vex"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def tampered(token: str) -> str:
    """The same signature over claims that now name one more tenant."""
    prefix, _claims_part, signature = token.split(".")
    claims = _claims(token)
    claims["tenants"] = [*claims["tenants"], "globex"]
    return ".".join([prefix, _b64(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()), signature])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One server that trusts one key; tokens for every case; a job in each tenant, the globex one leased."""
    root = tmp_path_factory.mktemp("auth")
    keys = Keys(root / "keys", "ops")
    stranger = Keys(root / "other-keys", "stranger")
    tokens = keys.issue_many({
        "short": {"tenants": ["acme"], "scopes": ["orch:read"], "expires": "1s"},
        "admin": {"tenants": ["acme", "globex"]},
        "acme": {"tenants": ["acme"], "scopes": WORK},
        "globex": {"tenants": ["globex"], "scopes": WORK},
        "reader": {"tenants": ["acme"], "scopes": ["orch:read"]},
        "worker": {"tenants": ["acme"], "scopes": ["orch:worker"]},
        "operator": {"tenants": ["acme"], "scopes": ["orch:operate"]},
        "probe": {"tenants": ["acme"], "scopes": ["orch:read"]},
    })
    probe = tokens.pop("probe")  # kept apart: the log-leak test below sends it in a malformed header
    tokens["foreign"] = stranger.issue("mallory", ["acme", "globex"], ALL_SCOPES)
    tokens["tampered"] = tampered(tokens["acme"])
    ledger = init_ledger(root / "auth.duckdb")
    with serving(ledger, "--token-key", str(keys.public_key)) as server:
        acme_job = server.request("POST", "/v1/jobs", SPEC_ACME, token=tokens["acme"]).json["job_id"]
        globex_job = server.request("POST", "/v1/jobs", SPEC_GLOBEX, token=tokens["globex"]).json["job_id"]
        claimed = server.request("POST", "/v1/jobs/claim", {"worker_id": "w-globex", "lease_seconds": 3600},
                                 token=tokens["globex"])
        (lease,) = claimed.json["leases"]
        assert lease["job_id"] == globex_job
        expires = _claims(tokens["short"])["exp"]
        time.sleep(max(0.0, expires + 0.5 - time.time()))
        yield {"server": server, "tokens": tokens, "probe": probe, "acme_job": acme_job,
               "globex_job": globex_job, "globex_lease": lease["lease_id"]}


def history_entries(world) -> int:
    return world["server"].ledger_info(world["tokens"]["admin"])["history_entries"]


@pytest.mark.parametrize("case", ["missing", "garbage", "untrusted_key", "tampered", "expired", "not_bearer"])
def test_refused_token_is_401_problem_and_changes_nothing(world, case):
    server, tokens = world["server"], world["tokens"]
    headers = {
        "missing": {},
        "garbage": {"Authorization": "Bearer not-a-token"},
        "untrusted_key": {"Authorization": f"Bearer {tokens['foreign']}"},
        "tampered": {"Authorization": f"Bearer {tokens['tampered']}"},
        "expired": {"Authorization": f"Bearer {tokens['short']}"},
        "not_bearer": {"Authorization": f"Basic {tokens['admin']}"},
    }[case]
    before = history_entries(world)
    requests = [("GET", "/v1/jobs", None), ("GET", f"/v1/jobs/{world['acme_job']}", None),
                ("POST", "/v1/jobs", SPEC_ACME), ("POST", "/v1/jobs/claim", {"worker_id": "w-x"}),
                ("POST", f"/v1/jobs/{world['acme_job']}/cancel", {"reason": "r"}), ("GET", "/v1/ledger", None)]
    for method, path, body in requests:
        response = server.request(method, path, body, headers=headers)
        problem = assert_problem(response, 401, "not-authorized", 7)
        assert response.headers.get("www-authenticate", "").startswith("Bearer"), response.headers
        for token in tokens.values():
            assert token.split(".")[-1] not in response.body.decode(), problem
    with SseStream(server.url, headers=headers) as stream:
        assert stream.status == 401
    assert history_entries(world) == before


@pytest.mark.parametrize(("who", "method", "path", "body"), [
    ("reader", "POST", "/v1/jobs", SPEC_ACME),
    ("reader", "POST", "/v1/jobs/claim", {"worker_id": "w-r"}),
    ("reader", "POST", "/v1/jobs/{acme_job}/cancel", {"reason": "r"}),
    ("worker", "GET", "/v1/jobs", None),
    ("worker", "GET", "/v1/jobs/{acme_job}", None),
    ("worker", "POST", "/v1/jobs", SPEC_ACME),
    ("worker", "POST", "/v1/jobs/recover", None),
    ("operator", "GET", "/v1/ledger", None),
    ("operator", "POST", "/v1/jobs/claim", {"worker_id": "w-o"}),
], ids=["reader-enqueue", "reader-claim", "reader-cancel", "worker-list", "worker-show", "worker-enqueue",
        "worker-recover", "operator-ledger_info", "operator-claim"])
def test_missing_scope_is_403_problem_and_changes_nothing(world, who, method, path, body):
    before = history_entries(world)
    response = world["server"].request(method, path.format(acme_job=world["acme_job"]), body,
                                       token=world["tokens"][who])
    problem = assert_problem(response, 403, "forbidden", 7)
    assert "scope" in problem["detail"]
    assert history_entries(world) == before


def test_metrics_need_a_token_with_the_read_scope(world):
    server = world["server"]
    assert_problem(server.request("GET", "/metrics"), 401, "not-authorized", 7)
    assert_problem(server.request("GET", "/metrics", token=world["tokens"]["worker"]), 403, "forbidden", 7)
    scraped = server.request("GET", "/metrics", token=world["tokens"]["admin"])
    assert scraped.status == 200 and b"airgap_orch_jobs" in scraped.body


def test_event_stream_needs_the_read_scope(world):
    with SseStream(world["server"].url, token=world["tokens"]["worker"]) as stream:
        assert stream.status == 403


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/jobs/{job}", None),
    ("POST", "/v1/jobs/{job}/ack", {"lease_id": "{lease}"}),
    ("POST", "/v1/jobs/{job}/heartbeat", {"lease_id": "{lease}", "progress": 0.5}),
    ("POST", "/v1/jobs/{job}/fail", {"lease_id": "{lease}", "error": "x"}),
    ("POST", "/v1/jobs/{job}/release", {"lease_id": "{lease}"}),
    ("POST", "/v1/jobs/{job}/cancel", {"reason": "not yours"}),
    ("POST", "/v1/deadletter/replay", {"job_ids": ["{job}"]}),
], ids=["show", "ack", "heartbeat", "fail", "release", "cancel", "replay"])
def test_another_tenants_job_is_404_not_403_and_changes_nothing(world, method, path, body):
    job, lease = world["globex_job"], world["globex_lease"]
    if body is not None:
        body = json.loads(json.dumps(body).replace("{job}", job).replace("{lease}", lease))
    before = history_entries(world)
    owner_view = world["server"].request("GET", f"/v1/jobs/{job}", token=world["tokens"]["globex"]).json
    response = world["server"].request(method, path.format(job=job), body, token=world["tokens"]["acme"])
    assert_problem(response, 404, "not-found", 1)
    assert history_entries(world) == before
    assert world["server"].request("GET", f"/v1/jobs/{job}", token=world["tokens"]["globex"]).json == owner_view


def test_another_tenants_jobs_are_not_listed(world):
    server, tokens = world["server"], world["tokens"]
    listed = {job["job_id"] for job in server.request("GET", "/v1/jobs", token=tokens["acme"]).json["jobs"]}
    assert world["acme_job"] in listed and world["globex_job"] not in listed
    asked_for = server.request("GET", "/v1/jobs", token=tokens["acme"], query={"tenant": "globex"})
    assert asked_for.status == 200 and asked_for.json["jobs"] == []
    leased = server.request("GET", "/v1/jobs", token=tokens["acme"], query={"state": "leased"}).json["jobs"]
    assert world["globex_job"] not in {job["job_id"] for job in leased}
    everything = {job["job_id"] for job in server.request("GET", "/v1/jobs", token=tokens["admin"]).json["jobs"]}
    assert {world["acme_job"], world["globex_job"]} <= everything


def test_another_tenants_jobs_are_not_claimed(world):
    server, tokens = world["server"], world["tokens"]
    queued = server.request("POST", "/v1/jobs", {**SPEC_GLOBEX, "type": "only-globex"}, token=tokens["globex"])
    claimed = server.request("POST", "/v1/jobs/claim", {"worker_id": "w-acme", "type": "only-globex"},
                             token=tokens["acme"])
    assert claimed.status == 200 and claimed.json["leases"] == []
    shown = server.request("GET", f"/v1/jobs/{queued.json['job_id']}", token=tokens["globex"]).json
    assert shown["state"] == "queued"


@pytest.mark.parametrize("route", ["one", "batch"])
def test_enqueue_for_a_tenant_the_token_does_not_name_is_403(world, route):
    before = history_entries(world)
    if route == "one":
        response = world["server"].request("POST", "/v1/jobs", SPEC_GLOBEX, token=world["tokens"]["acme"])
    else:
        response = world["server"].request("POST", "/v1/jobs/batch", {"jobs": [SPEC_ACME, SPEC_GLOBEX]},
                                           token=world["tokens"]["acme"])
    problem = assert_problem(response, 403, "forbidden", 7)
    assert "globex" in problem["detail"]
    assert history_entries(world) == before


def test_ledger_event_log_shows_only_the_tokens_tenants(world):
    response = world["server"].request("GET", "/v1/ledger/events", token=world["tokens"]["acme"],
                                       query={"limit": 100_000})
    assert response.status == 200, response
    assert {event["tenantId"] for event in response.json["events"]} == {"acme"}


def test_cli_with_a_refused_token_or_scope_exits_7_and_changes_nothing(world, tmp_path):
    server, tokens = world["server"], world["tokens"]
    before = history_entries(world)
    nowhere = tmp_path / "nowhere.duckdb"
    ledger = server.ledger
    enqueue = ("jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan")
    results = run_cli_parallel([
        ("--json", "--server", server.url, "--token", "not-a-token", "jobs", "list"),
        ("--json", "--server", server.url, "--token", tokens["short"], "jobs", "list"),
        ("--json", "--server", server.url, "--token", tokens["foreign"], *enqueue),
        ("--json", "--server", server.url, *enqueue),
        ("--json", "--server", server.url, "--token", tokens["reader"], *enqueue),
        ("--json", "--server", server.url, "--token", tokens["acme"], "jobs", "enqueue", "--tenant", "globex",
         "--project", "feeds", "--type", "vex"),
    ], ledger=nowhere)
    # Through the discovery file, with the token in $AIRGAP_ORCH_TOKEN.
    results += run_cli_parallel([("--json", "--lock-timeout", "0", *enqueue)], ledger=ledger,
                                env={"AIRGAP_ORCH_TOKEN": tokens["tampered"]})
    for result in results:
        assert result.code == 7, result
        assert result.stdout == ""
        assert result.error["exit_code"] == 7
        for token in tokens.values():
            assert token not in result.stderr
    assert history_entries(world) == before
    allowed = run_cli("--json", "--lock-timeout", "0", "jobs", "list", ledger=ledger,
                      env={"AIRGAP_ORCH_TOKEN": tokens["reader"]})
    assert allowed.code == 0, allowed
    assert {job["tenant"] for job in allowed.json["jobs"]} == {"acme"}


def test_serve_refuses_no_auth_off_loopback_and_auth_without_keys(tmp_path):
    ledger = init_ledger(tmp_path / "refused.duckdb")
    everywhere = run_cli("--json", "serve", "--no-auth", "--host", "0.0.0.0", "--port", "0", ledger=ledger,
                         timeout=60)
    assert everywhere.code == 5, everywhere
    assert "--no-auth" in everywhere.error["message"]
    keyless = run_cli("--json", "serve", "--port", "0", ledger=ledger, timeout=60)
    assert keyless.code == 1, keyless
    assert "--token-key" in keyless.error["message"]
    assert not discovery.path_for(ledger).exists()
    with Ledger.open(ledger, lock_timeout=5) as opened:
        assert opened.head_seq == 0


def test_no_token_reaches_the_server_log(world):
    """Every case above sent tokens (good, expired, tampered, untrusted) to this server."""
    server, tokens = world["server"], world["tokens"]
    assert server.request("GET", "/v1/jobs", token=tokens["admin"]).status == 200
    logs = server.stderr() + server.stdout()
    for name, token in tokens.items():
        claims, signature = token.split(".")[1:]
        assert token not in logs, name
        assert signature not in logs, name
        assert claims not in logs, name


def test_a_malformed_authorization_header_does_not_log_the_token(world):
    server, token = world["server"], world["probe"]
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() +
                           b"\x01\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.")
    assert server.request("GET", "/healthz").status == 200
    assert token.split(".")[-1] not in server.stderr()


def test_a_request_with_an_unknown_job_id_and_no_token_does_not_tell_whether_it_exists(world):
    """401 comes before any lookup: no token learns nothing, not even 404 against 200."""
    server = world["server"]
    for job in (world["acme_job"], str(uuid.UUID(int=7))):
        assert_problem(server.request("GET", f"/v1/jobs/{job}"), 401, "not-authorized", 7)


def test_a_cli_without_a_token_is_told_to_pass_token_or_set_the_variable(world, tmp_path):
    server = world["server"]
    result = run_cli("--server", server.url, "jobs", "list", ledger=tmp_path / "nowhere.duckdb")
    assert result.code == 7, result
    assert "--token" in result.stderr and "$AIRGAP_ORCH_TOKEN" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_limit_change_through_a_server_without_a_reason_names_reason(world, tmp_path):
    server, tokens = world["server"], world["tokens"]
    result = run_cli("--server", server.url, "--token", tokens["admin"], "concurrency", "set", "--key", "host:x",
                     "--max", "1", ledger=tmp_path / "nowhere.duckdb")
    assert result.code == 1, result
    assert "reason is required" in result.stderr and "--reason" in result.stderr, result.stderr
