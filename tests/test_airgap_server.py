"""The trust, bundle and airgap commands while `serve` owns the ledger (issue 15, "Commands"): they go through the
server (scope orch:airgap), a bundle streams to it as the request body under its own size cap, and verifying and
planning run off the writer thread, so workers keep claiming and acking while an import is verified. Real server
subprocesses on loopback, the real CLI, real keys (the fixtures of test_bundle_cli.py)."""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import wait_for_marker
from export_fixtures import populate
from server_fixtures import ALL_SCOPES, Keys, Server, assert_problem, claim_and_ack, cli_env, serving
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import audit_entries, state

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as job_ops

AIRGAP_SCOPES = (*ALL_SCOPES, "orch:airgap")


@pytest.fixture
def source(tmp_path, root_v1) -> Path:  # noqa: F811
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(ledger, jobs_per_tenant=2)
    ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    return ledger


@pytest.fixture
def target(tmp_path) -> Path:
    """site-b's ledger with ten queued jobs of its own, nothing pinned."""
    ledger = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    with Ledger.open(ledger, lock_timeout=5) as opened:
        job_ops.enqueue_batch(opened, [{"tenant": "local", "project": "p", "type": "t"} for _ in range(10)])
    return ledger


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("server-keys"))


def bundle_of(source: Path, holders, path: Path) -> Path:  # noqa: F811
    ok(export(source, path, holders, "--json"))
    return path


def run(ledger: Path, token: str, *args: str):
    return cli("--token", token, *args, ledger=ledger)


def uploads_left(ledger: Path) -> list[Path]:
    return list(ledger.parent.glob(f".{ledger.name}.upload-*")) + list(ledger.parent.glob(f".{ledger.name}.import-*"))


def test_trust_bundle_and_airgap_commands_go_through_the_server_that_owns_the_ledger(holders, source, target,  # noqa: F811
                                                                                     root_v1, keys, tmp_path):  # noqa: F811
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    token = keys.issue("operator", ["local"], AIRGAP_SCOPES)
    with serving(target, "--token-key", str(keys.public_key)):
        # Pin first (through the server), then plan and import without --trust (test_airgap_server_trust.py: with it).
        pinned = ok(run(target, token, "trust", "pin", str(root_v1), "--reason", "first root", "--json"))
        assert pinned["pinned"] is True and pinned["version"] == 1
        assert ok(run(target, token, "trust", "show", "--json"))["fingerprint"] == pinned["fingerprint"]
        # bundle verify without --trust verifies with the root the server's ledger pinned, for this site.
        verified = ok(run(target, token, "bundle", "verify", str(out), "--json"))
        assert (verified["source_site"], verified["target_site"]) == ("site-a", "site-b")
        planned = ok(run(target, token, "bundle", "plan", str(out), "--json"))
        assert ok(run(target, token, "bundle", "list", "--json"))["imports"] == []  # a dry run writes nothing
        assert planned["plan"]["source_site"] == "site-a" and planned["plan"]["sequence"] == 1
        done = ok(run(target, token, "bundle", "import", str(out), "--plan-digest", planned["plan_digest"], "--json"))
        assert done["imported"] is True and done["plan_digest"] == planned["plan_digest"]
        again = ok(run(target, token, "bundle", "import", str(out), "--json"))
        assert again["already_imported"] is True
        listed = ok(run(target, token, "bundle", "list", "--json"))
        assert [(row["source_site"], row["sequence"]) for row in listed["imports"]] == [("site-a", 1)]
        status = ok(run(target, token, "airgap", "status", "--json"))
        assert status["trust_root"]["version"] == 1 and status["floors"][0]["sequence"] == 1
        assert ok(run(target, token, "airgap", "staleness", "strict", "--reason", "policy", "--json")) == {
            "staleness": "strict", "previous": "warn"}
        # The people's output goes through the same answers.
        assert "plan digest:" not in run(target, token, "bundle", "plan", str(out)).stdout  # already imported
        assert "site-a #1" in ok(run(target, token, "bundle", "list"))
    after = state(target)
    assert after["floors"] == [("site-a", 1)] and after["trust_roots"] == [1]
    tables = {table["table"]: table for table in planned["plan"]["tables"]}
    assert after["mirror_jobs"] == tables["jobs"]["rows"] > 0
    entries = audit_entries(target)
    assert [entry["details"]["outcome"] for entry in entries] == ["imported", "already-imported"]
    assert {entry["actor"] for entry in entries} == {"token:operator"}
    assert audit_entries(target, "trust.pin")[0]["actor"] == "token:operator"
    assert not uploads_left(target)  # the uploaded copy is removed once the import ended


def test_a_token_without_orch_airgap_gets_exit_7_and_changes_nothing(holders, source, target, root_v1, keys,  # noqa: F811
                                                                    tmp_path):
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    token = keys.issue("reader", ["local"], ALL_SCOPES)  # every other scope
    before = state(target)
    with serving(target, "--token-key", str(keys.public_key)):
        for args in (("trust", "pin", str(root_v1)), ("trust", "show"), ("bundle", "list"), ("airgap", "status"),
                     ("airgap", "staleness", "strict"), ("bundle", "plan", str(out)), ("bundle", "import", str(out))):
            refused(run(target, token, *args), 7, "orch:airgap")
    assert state(target) == before
    assert audit_entries(target) == [] and not uploads_left(target)


def test_a_bundle_over_the_servers_cap_is_refused_with_413_and_the_ledger_is_unchanged(holders, source, target,  # noqa: F811
                                                                                      root_v1, keys, tmp_path):  # noqa: F811
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    size = out.stat().st_size
    token = keys.issue("operator", ["local"], AIRGAP_SCOPES)
    ok(cli("trust", "pin", str(root_v1), ledger=target))
    before = state(target)
    cap = size // 2
    with serving(target, "--token-key", str(keys.public_key), "--max-bundle-bytes", str(cap)) as server:
        # The CLI declares the size: refused before the bundle is sent (Expect: 100-continue), in one line.
        refused(run(target, token, "bundle", "import", str(out)), 1, f"bundle over the limit of {cap} bytes")
        # A client that streams without declaring a size is cut off once it passes the cap.
        answer = _chunked_upload(server.url, token, out.read_bytes(), piece=4096)
        assert_problem(answer, 413, "payload-too-large", 1)
        assert server.request("GET", "/healthz").status == 200
        # A bundle is octet-stream, and its options are the route's query parameters only (never a path).
        assert_problem(server.request("POST", "/v1/bundles/plan", {"bundle": str(out)}, token=token), 415,
                       "unsupported-media-type", 1)
        assert_problem(server.request("POST", "/v1/bundles/plan", raw=b"x", token=token, query={"bundle": str(out)},
                                      headers={"Content-Type": "application/octet-stream"}), 400, None, 1)
    # The same bundle, within the cap of the next server, is planned.
    with serving(target, "--token-key", str(keys.public_key), "--max-bundle-bytes", str(size)):
        ok(run(target, token, "bundle", "plan", str(out), "--json"))
    assert state(target) == before
    assert audit_entries(target) == []  # refused at the door: nothing was imported, so nothing to audit
    assert not uploads_left(target)


def _chunked_upload(url: str, token: str, data: bytes, *, piece: int):
    from server_fixtures import Response

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", "/v1/bundles/import")
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        try:
            for start in range(0, len(data), piece):
                chunk = data[start:start + piece]
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            connection.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close once it has refused: its answer is already on the way
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()}, answer.read())
    finally:
        connection.close()


def test_workers_claim_and_ack_while_an_import_is_verified_and_planned_off_the_writer(holders, source, target,  # noqa: F811
                                                                                     root_v1, keys, tmp_path,  # noqa: F811
                                                                                     monkeypatch):
    """The server's import stops (test hook) once the bundle is verified and planned, before its transaction: every
    claim and ack of a worker still completes meanwhile, and nothing of the import is committed."""
    out = bundle_of(source, holders, tmp_path / "a.bundle")
    ok(cli("trust", "pin", str(root_v1), ledger=target))
    before = state(target)
    token = keys.issue("operator", ["local"], AIRGAP_SCOPES)
    marker = tmp_path / "verified"
    monkeypatch.setenv("AIRGAP_ORCH_TEST_IMPORT_PAUSE", f"verified:{marker}")  # read by the server's import
    server = Server(target, ("--token-key", str(keys.public_key))).start()  # killed at the end, not stopped
    importing = subprocess.Popen(
        [*_cli(target, token), "bundle", "import", str(out), "--json"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=cli_env({"AIRGAP_ORCH_TEST_IMPORT_PAUSE": ""}))
    try:
        wait_for_marker(importing, marker, "the import never reached its verified point")
        done = claim_and_ack(server, token, 10)
        assert importing.poll() is None  # all ten ran while the import was still under way
        assert len(set(done)) == 10
    finally:
        importing.kill()
        importing.wait(30)
        server.kill()  # its import thread sleeps at the hook; the ledger keeps what was committed
    after = state(target)
    assert (after["floors"], after["mirror_jobs"], after["trust_roots"]) == (before["floors"], 0, [1])
    with Ledger.open(target, lock_timeout=5) as opened:
        states = opened._con.execute("SELECT state, count(*) FROM all_jobs GROUP BY state").fetchall()
    assert dict(states) == {"succeeded": 10}


def _cli(ledger: Path, token: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger), "--token", token]


def test_bundle_export_with_the_clis_keys_is_refused_at_once_while_a_server_owns_the_ledger(holders, source, keys,  # noqa: F811
                                                                                          tmp_path):
    """bundle export goes through the server now, signing with the keys serve holds (test_airgap_server_export.py):
    the CLI's own keys never travel, so they are refused in one line before anything is sent (exit 1; it was exit 6
    while export did not go through a server), and a server started without keys refuses the export (exit 5)."""
    token = keys.issue("operator", ["local"], (*AIRGAP_SCOPES, "orch:admin"))
    with serving(source, "--token-key", str(keys.public_key)):
        line = refused(export(source, tmp_path / "x.bundle", holders), 1, "--key and --timestamp-key stay off a server",
                       "the server that owns the ledger signs")
        refused(run(source, token, "bundle", "export", "--out", str(tmp_path / "x.bundle"), "--target", "site-b"), 5,
                "--bundle-key")
    assert json.dumps(line)  # one line, printable
    assert not (tmp_path / "x.bundle").exists()


def test_the_airgap_limits_have_one_source():
    """The upload cap is the bundle format's cap on a file; the pin request's root size is the format's root cap."""
    from airgap_orch import api, schemas
    from airgap_orch.bundle import limits

    assert api.MAX_BUNDLE_BYTES == limits.MAX_ARCHIVE_BYTES
    roots = schemas.load("trust-pin-request")["properties"]["roots"]
    assert roots["items"]["maxLength"] == limits.MAX_ROOT_BYTES
    assert schemas.definition("trust-bytes")["maximum"] == limits.MAX_ROOT_BYTES  # a root ahead of an upload
    assert roots["maxItems"] * limits.MAX_ROOT_BYTES <= api.MAX_BODY_BYTES  # a full request fits in a body


def test_a_bundle_larger_than_any_json_body_streams_to_the_server_and_is_planned(holders, target, root_v1, keys,  # noqa: F811
                                                                                tmp_path):
    """A bundle over api.MAX_BODY_BYTES (the cap on a JSON body, which the server reads whole) still reaches the
    server: it is streamed to a file, not read into memory."""
    import base64
    import os

    from airgap_orch import api

    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    with Ledger.open(source, lock_timeout=5) as opened:  # incompressible payloads: the bundle stays large
        for start in range(0, 240, 60):
            job_ops.enqueue_batch(opened, [{"tenant": "big", "project": "p", "type": "t",
                                            "payload": {"blob": base64.b64encode(os.urandom(45_000)).decode()}}
                                           for _ in range(start, start + 60)])
    ok(cli("trust", "pin", str(root_v1), ledger=source))
    out = bundle_of(source, holders, tmp_path / "big.bundle")
    assert out.stat().st_size > api.MAX_BODY_BYTES
    ok(cli("trust", "pin", str(root_v1), ledger=target))
    token = keys.issue("operator", ["local"], AIRGAP_SCOPES)
    with serving(target, "--token-key", str(keys.public_key)):
        planned = ok(run(target, token, "bundle", "plan", str(out), "--json"))
    assert {table["table"]: table["rows"] for table in planned["plan"]["tables"]}["jobs"] == 240
    assert not uploads_left(target)
