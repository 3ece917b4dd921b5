"""`bundle export` and the policy authority while `serve` owns the ledger (issue 15, "Commands"): the server signs
with the online keys it was started with (serve --bundle-key, --timestamp-key), runs the export on its bundle
thread (off the writer) and streams the bundle back; the CLI writes it to --out. Real server subprocesses on
loopback, the real CLI, real keys (the fixtures of test_bundle_cli.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for_marker
from export_fixtures import populate
from server_fixtures import ALL_SCOPES, Keys, Server, claim_and_ack, cli_env, serving
from test_bundle_cli import cli, exports_recorded, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import audit_entries

from airgap_orch.ledger import Ledger

AIRGAP_SCOPES = (*ALL_SCOPES, "orch:airgap")
CREATED = "2026-12-01T03:04:05Z"


@pytest.fixture
def source(tmp_path, root_v1) -> Path:  # noqa: F811
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(ledger, jobs_per_tenant=3)
    ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    return ledger


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("server-keys"))


def with_keys(keys: Keys, holders) -> tuple[str, ...]:  # noqa: F811
    return ("--token-key", str(keys.public_key), "--bundle-key", holders.private("a1"), "--timestamp-key",
            holders.private("ts"))


def run(ledger: Path, token: str, *args: str, **kwargs):
    return cli("--token", token, *args, ledger=ledger, **kwargs)


def exports_left(ledger: Path) -> list[Path]:
    return list(ledger.parent.glob(f".{ledger.name}.export-*"))


def job_states(ledger: Path) -> dict[str, int]:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return dict(opened._con.execute("SELECT state, count(*) FROM all_jobs GROUP BY state").fetchall())


def test_an_export_through_the_server_is_byte_identical_to_a_local_export_of_the_same_ledger(
        holders, source, root_v1, keys, tmp_path):  # noqa: F811
    copy = tmp_path / "copy" / "site-a.duckdb"
    copy.parent.mkdir()
    shutil.copyfile(source, copy)
    local = ok(cli("bundle", "export", "--out", str(tmp_path / "local.bundle"), "--target", "site-b", "--key",
                   holders.private("a1"), "--timestamp-key", holders.private("ts"), "--created-at", CREATED,
                   "--trust", str(root_v1), "--json", ledger=copy))
    token = keys.issue("operator", ["acme"], (*AIRGAP_SCOPES, "orch:admin"))
    out = tmp_path / "served.bundle"
    with serving(source, *with_keys(keys, holders)):
        # --trust travels as text (the server never gets a path): the bundle carries the same root.
        served = ok(run(source, token, "bundle", "export", "--out", str(out), "--target", "site-b", "--created-at",
                        CREATED, "--trust", str(root_v1), "--json"))
        # --reissue through the server: the same bytes again, from the server's export store.
        again = ok(run(source, token, "bundle", "export", "--out", str(tmp_path / "again.bundle"), "--target",
                       "site-b", "--reissue", "1", "--json"))
        # --out is never replaced: refused before the request is sent, so the server exports nothing.
        refused(run(source, token, "bundle", "export", "--out", str(out), "--target", "site-b"), 1, "already exists")
        listed = ok(run(source, token, "bundle", "list", "--json"))
        people = ok(run(source, token, "bundle", "export", "--out", str(tmp_path / "people.bundle"), "--target",
                        "site-c", "--created-at", CREATED))
    assert out.read_bytes() == (tmp_path / "local.bundle").read_bytes()
    assert {**served, "bundle": None} == {**local, "bundle": None} and served["bundle"] == str(out)
    assert served["trust_roots"] == [1]
    assert served["row_counts"]["jobs"] > 0 and served["self_check"].startswith("verified against trust root")
    assert (tmp_path / "again.bundle").read_bytes() == out.read_bytes()
    assert again["reissued"] is True and again["file_sha256"] == served["file_sha256"]
    assert [(row["target_site"], row["sequence"]) for row in listed["exports"]] == [("site-b", 1)]
    assert f"wrote {tmp_path / 'people.bundle'}" in people and "site-a -> site-c, sequence 1" in people
    verified = ok(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b", "--json"))
    assert verified["row_counts"] == served["row_counts"]
    assert [entry["actor"] for entry in audit_entries(source, "bundle.export")] == ["token:operator"] * 2
    assert not exports_left(source)  # the server's temporary copies are gone


def test_a_server_without_bundle_keys_refuses_export_in_one_line_and_writes_nothing(holders, source, keys,  # noqa: F811
                                                                                    tmp_path):
    token = keys.issue("operator", ["acme"], (*AIRGAP_SCOPES, "orch:admin"))
    out = tmp_path / "x.bundle"
    with serving(source, "--token-key", str(keys.public_key)):
        refused(run(source, token, "bundle", "export", "--out", str(out), "--target", "site-b"), 5,
                "start `serve` with --bundle-key", "or stop the server")
        # The CLI's own keys never travel to a server: refused before anything is sent or asked.
        refused(run(source, token, "bundle", "export", "--out", str(out), "--target", "site-b", "--key",
                    holders.private("a1"), "--timestamp-key", holders.private("ts")), 1,
                "--key and --timestamp-key stay off a server")
    assert not out.exists() and exports_recorded(source) == 0 and not exports_left(source)
    assert audit_entries(source, "bundle.export") == []


def test_serve_refuses_an_online_key_others_can_read(holders, source, keys, tmp_path):  # noqa: F811
    shared = tmp_path / "a1-shared.key.pem"
    shutil.copyfile(holders.private("a1"), shared)
    shared.chmod(0o640)
    started = cli("serve", "--port", "0", "--token-key", str(keys.public_key), "--bundle-key", str(shared),
                  "--timestamp-key", holders.private("ts"), ledger=source)
    refused(started, 1, "readable by others", "chmod 600")
    refused(cli("serve", "--port", "0", "--token-key", str(keys.public_key), "--bundle-key", holders.private("a1"),
                ledger=source), 2, "go together")


def test_export_authority_and_policies_need_orch_airgap_and_a_full_export_needs_orch_admin(holders, source, keys,  # noqa: F811
                                                                                           tmp_path):
    out = tmp_path / "x.bundle"
    without = keys.issue("reader", ["acme"], (*ALL_SCOPES, "orch:admin"))  # every scope but orch:airgap
    tenant_only = keys.issue("acme-operator", ["acme"], AIRGAP_SCOPES)
    with serving(source, *with_keys(keys, holders)):
        for args in (("bundle", "export", "--out", str(out), "--target", "site-b"),
                     ("airgap", "authority", "set", "site-c", "--reason", "r"), ("airgap", "authority", "show"),
                     ("airgap", "authority", "clear", "--reason", "r"), ("airgap", "policies")):
            refused(run(source, without, *args), 7, "orch:airgap")
        # A token limited to tenants exports one of them, never the whole site nor another tenant.
        refused(run(source, tenant_only, "bundle", "export", "--out", str(out), "--target", "site-b"), 7,
                "orch:admin")
        refused(run(source, tenant_only, "bundle", "export", "--out", str(out), "--target", "site-b", "--tenant",
                    "globex"), 1, "globex")
        assert not out.exists()
        mine = ok(run(source, tenant_only, "bundle", "export", "--out", str(out), "--target", "site-b", "--tenant",
                      "acme", "--json"))
    assert mine["tenant"] == "acme" and out.exists()
    assert audit_entries(source, "policy.authority.set") == [] and exports_recorded(source) == 1


def test_a_handoff_through_the_server_commits_at_the_source_and_the_bundle_arrives(holders, source, root_v1, keys,  # noqa: F811
                                                                                  tmp_path):
    queued = job_states(source)["queued"]
    token = keys.issue("operator", ["acme"], (*AIRGAP_SCOPES, "orch:admin"))
    out = tmp_path / "handoff.bundle"
    with serving(source, *with_keys(keys, holders)):
        done = ok(run(source, token, "bundle", "export", "--out", str(out), "--target", "site-b", "--handoff",
                      "--reason", "site-b runs them now", "--json"))
    assert done["handed_off"] == queued > 0
    assert job_states(source).get("handed_off") == queued and "queued" not in job_states(source)
    (entry,) = audit_entries(source, "bundle.handoff")
    assert (entry["actor"], entry["reason"], entry["details"]["jobs"]) == ("token:operator", "site-b runs them now",
                                                                          queued)
    verified = ok(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b", "--json"))
    assert verified["row_counts"]["handoffs"] == queued


def test_workers_claim_and_ack_while_an_export_runs_off_the_writer(holders, source, keys, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    """The server's export stops (test hook) once its hand-off of queue `slow` committed, before the bundle is
    written: a worker's claims and acks of the other jobs all complete meanwhile, then the export completes."""
    with Ledger.open(source, lock_timeout=5) as opened:
        from airgap_orch.operations import jobs as job_ops

        job_ops.enqueue_batch(opened, [{"tenant": "acme", "project": "p", "type": "t", "queue": "slow"}
                                       for _ in range(3)])
        job_ops.enqueue_batch(opened, [{"tenant": "acme", "project": "p", "type": "t", "queue": "fast"}
                                       for _ in range(5)])
    ok(cli("queues", "resume", "slow", ledger=source))  # populate paused it; the jobs handed over are its own
    token = keys.issue("operator", ["acme", "globex"], (*AIRGAP_SCOPES, "orch:admin"))
    marker = tmp_path / "handed-off"
    monkeypatch.setenv("AIRGAP_ORCH_TEST_EXPORT_PAUSE", f"handed-off:{marker}")  # read by the server's export
    out = tmp_path / "during.bundle"
    server = Server(source, with_keys(keys, holders)).start()
    exporting = subprocess.Popen(
        [sys.executable, "-m", "airgap_orch", "--ledger", str(source), "--token", token, "bundle", "export", "--out",
         str(out), "--target", "site-b", "--handoff", "--queue", "slow", "--json"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=cli_env({"AIRGAP_ORCH_TEST_EXPORT_PAUSE": ""}))
    try:
        wait_for_marker(exporting, marker, "the export never reached its hand-off")
        done = claim_and_ack(server, token, 5, queue="fast")
        assert exporting.poll() is None  # all five ran while the export was still under way
        marker.unlink()  # let the export go on
        stdout, stderr = exporting.communicate(timeout=120)
        assert exporting.returncode == 0, stderr
    finally:
        if exporting.poll() is None:
            exporting.kill()
            exporting.wait(30)
        server.stop()
    assert len(set(done)) == 5
    import json

    result = json.loads(stdout)
    assert result["handed_off"] == 3 and out.stat().st_size == result["size"]
    assert job_states(source)["handed_off"] == 3


def test_authority_set_show_clear_and_policies_go_through_the_server(holders, source, keys):  # noqa: F811
    token = keys.issue("operator", ["acme"], AIRGAP_SCOPES)
    with serving(source, *with_keys(keys, holders)):
        refused(run(source, token, "airgap", "authority", "set", "site-c"), 1, "reason is required")
        done = ok(run(source, token, "airgap", "authority", "set", "site-c", "--reason", "site-c issues quotas",
                      "--json"))
        assert done["policy_authority"]["site"] == "site-c" and done["previous"] is None
        shown = ok(run(source, token, "airgap", "authority", "show", "--json"))
        assert (shown["site_id"], shown["policy_authority"]["set_by"]) == ("site-a", "token:operator")
        assert "policy authority: site-c" in ok(run(source, token, "airgap", "authority", "show"))
        mirrored = ok(run(source, token, "airgap", "policies", "--source", "site-c", "--json"))
        assert mirrored["policies"] == [] and mirrored["policy_authority"]["site"] == "site-c"
        cleared = ok(run(source, token, "airgap", "authority", "clear", "--reason", "back to mirrors", "--json"))
        assert cleared == {"policy_authority": None, "previous": "site-c"}
    actions = [(entry["actor"], entry["reason"]) for action in ("policy.authority.set", "policy.authority.clear")
               for entry in audit_entries(source, action)]
    assert actions == [("token:operator", "site-c issues quotas"), ("token:operator", "back to mirrors")]


def test_an_export_through_the_server_shows_progress_on_a_terminal_only(holders, source, keys, tmp_path):  # noqa: F811
    from conftest import run_cli_on_a_terminal

    token = keys.issue("operator", ["acme"], (*AIRGAP_SCOPES, "orch:admin"))
    with serving(source, *with_keys(keys, holders)):
        result, shown = run_cli_on_a_terminal(source, "--token", token, "bundle", "export", "--out",
                                              str(tmp_path / "t.bundle"), "--target", "site-b")
        assert result.code == 0, result
        assert b"receiving bundle" in shown
        piped = run(source, token, "bundle", "export", "--out", str(tmp_path / "p.bundle"), "--target", "site-c")
    assert piped.code == 0 and "receiving bundle" not in piped.stderr


def test_a_bundle_larger_than_any_json_body_streams_back_from_the_server(holders, root_v1, keys, tmp_path):  # noqa: F811
    """An export over api.MAX_BODY_BYTES comes back whole: the server sends it from its file a piece at a time, the
    CLI writes it as it arrives and checks it against the size and sha256 the summary states."""
    import base64
    import os

    from airgap_orch import api
    from airgap_orch.operations import jobs as job_ops

    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    with Ledger.open(source, lock_timeout=5) as opened:  # incompressible payloads: the bundle stays large
        for _ in range(4):
            job_ops.enqueue_batch(opened, [{"tenant": "big", "project": "p", "type": "t",
                                            "payload": {"blob": base64.b64encode(os.urandom(45_000)).decode()}}
                                           for _ in range(60)])
    ok(cli("trust", "pin", str(root_v1), ledger=source))
    token = keys.issue("operator", ["big"], (*AIRGAP_SCOPES, "orch:admin"))
    out = tmp_path / "big.bundle"
    with serving(source, *with_keys(keys, holders)):
        done = ok(run(source, token, "bundle", "export", "--out", str(out), "--target", "site-b", "--json"))
    assert out.stat().st_size == done["size"] > api.MAX_BODY_BYTES
    verified = ok(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b", "--json"))
    assert verified["row_counts"]["jobs"] == 240
    assert not exports_left(source) and not list(tmp_path.glob(".big.bundle.partial-*"))


def test_a_handoff_export_failing_after_its_commit_through_the_server_says_reissue_without_keys(
        holders, source, keys, tmp_path, monkeypatch):  # noqa: F811
    """The server's export stops (test hook) once its hand-off committed; a file then takes the server's own output
    name, so writing the bundle fails. The advice says how to write it through the server: --reissue, no --key or
    --timestamp-key (the server signs with its own); and following it writes the bundle that hands the jobs over."""
    with Ledger.open(source, lock_timeout=5) as opened:
        from airgap_orch.operations import jobs as job_ops

        job_ops.enqueue_batch(opened, [{"tenant": "acme", "project": "p", "type": "t", "queue": "handed"}
                                       for _ in range(3)])
    token = keys.issue("operator", ["acme", "globex"], (*AIRGAP_SCOPES, "orch:admin"))
    marker = tmp_path / "handed-off"
    monkeypatch.setenv("AIRGAP_ORCH_TEST_EXPORT_PAUSE", f"handed-off:{marker}")  # read by the server's export
    server = Server(source, with_keys(keys, holders)).start()
    exporting = subprocess.Popen(
        [sys.executable, "-m", "airgap_orch", "--ledger", str(source), "--token", token, "bundle", "export", "--out",
         str(tmp_path / "h.bundle"), "--target", "site-b", "--handoff", "--queue", "handed"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=cli_env({"AIRGAP_ORCH_TEST_EXPORT_PAUSE": ""}))
    try:
        wait_for_marker(exporting, marker, "the export never reached its hand-off")
        [folder] = exports_left(source)
        (folder / "export.bundle").write_bytes(b"someone else's file")  # the server's output name, taken
        marker.unlink()
        _, stderr = exporting.communicate(timeout=120)
        assert exporting.returncode == 1, stderr
        [line] = stderr.strip().splitlines()
        assert "committed as sequence 1" in line, line
        assert line.endswith("write its bundle with `bundle export --reissue 1 --target site-b --out FILE`"), line
        assert "--key" not in line and "--timestamp-key" not in line
        assert ".export-" not in line and str(folder) not in line and "the server's output file" in line, line
        written = tmp_path / "written.bundle"
        made = ok(run(source, token, "bundle", "export", "--reissue", "1", "--target", "site-b", "--out",
                      str(written), "--json"))
        assert (made["sequence"], made["handed_off"], made["reissued"]) == (1, 3, True)
    finally:
        if exporting.poll() is None:
            exporting.kill()
            exporting.wait(30)
        server.stop()
    assert job_states(source)["handed_off"] == 3
