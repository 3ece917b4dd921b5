"""`airgap-orch demo`: the whole scenario through the real CLI, a server subprocess, SDK worker subprocesses
and SIGKILL; and that no process the demo started outlives it, also when it is stopped midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import run_cli

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find processes")


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose command line contains `text`, except this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if text in cmdline and "\nState:\tZ" not in status:
            found.append((int(entry.name), cmdline.strip()))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone meanwhile
        return False


def test_demo_json_shows_dead_letters_the_recovered_job_and_a_verified_ledger(tmp_path):
    ledger_path = tmp_path / "demo.duckdb"
    started = time.monotonic()
    result = run_cli(None, "demo", "--ledger", str(ledger_path), "--json", timeout=120)
    took = time.monotonic() - started
    assert result.code == 0, result
    report = result.json
    assert report["ledger"] == str(ledger_path) and ledger_path.exists()
    work_dir = Path(report["work_dir"])
    assert work_dir.parent == tmp_path

    # The server: on loopback, announced by its first line, stopped cleanly, discovery file gone.
    server = report["server"]
    url = urlsplit(server["url"])
    assert url.scheme == "http" and url.hostname == "127.0.0.1" and url.port
    first_line = (work_dir / "server.out").read_text().splitlines()[0]
    assert f"at {server['url']} (pid {server['pid']})" in first_line
    assert server["stopped_with"] == "SIGTERM" and server["exit_code"] == 0
    assert server["discovery_file_removed"] is True
    assert not Path(server["discovery_file"]).exists() and Path(server["discovery_file"]).parent == tmp_path

    # Everything finished: nothing left waiting, queued, leased or running.
    assert set(report["jobs_by_state"]) <= {"succeeded", "dead_letter", "canceled"}
    assert report["jobs_total"] >= 24
    assert sum(report["jobs_by_state"].values()) == report["jobs_total"]
    assert set(report["jobs_by_tenant"]) == {"acme-corp", "globex"}

    dead = report["dead_letter"]
    assert report["jobs_by_state"]["dead_letter"] == len(dead) == 2
    for job in dead:
        assert job["type"] == "export.mirror"
        assert job["attempts"] == job["max_attempts"] == 3
        # The third attempt failed in the handler, or worker A was killed holding it and its lease expired.
        assert "unreachable (attempt 3 of 3)" in job["last_error"] or job["last_error"] == "lease_expired"
    assert {job["tenant"] for job in dead} == {"acme-corp", "globex"}

    # Flow control: the scan limit held across both workers; each report waited on its tenant's export and
    # was canceled when that export was dead-lettered.
    flow = report["flow_control"]
    assert 1 <= flow["concurrency_limit"]["peak_from_history"] <= flow["concurrency_limit"]["max"] == 2
    assert report["jobs_by_state"]["canceled"] == len(flow["dependents"]) == 2
    dead_ids = {job["job_id"] for job in dead}
    for job in flow["dependents"]:
        assert (job["state"], job["reason"]) == ("canceled", "dependency_failed")
        assert set(job["depends_on"]) <= dead_ids

    # The long scan: its lease expired under the killed worker A, then worker B ran it to success.
    recovered = report["recovered_job"]
    assert recovered["state"] == "succeeded" and recovered["attempts"] == 2
    assert recovered["attempt_story"] == [
        {"attempt": 1, "worker_id": "worker-A", "outcome": "queued", "reason": "lease_expired"},
        {"attempt": 2, "worker_id": "worker-B", "outcome": "succeeded", "reason": None},
    ]
    history = [(entry["event_type"], entry["attempt"], entry["worker_id"], entry["reason"])
               for entry in recovered["history"]]
    expired = next(i for i, entry in enumerate(history) if entry[3] == "lease_expired")
    assert history[expired][1] == 1
    assert history[-1][:3] == ("job.succeeded", 2, "worker-B")
    assert recovered["history"][expired]["actor"] == "orchestrator"  # recovered in the server, no worker said so
    assert recovered["artifacts"] and Path(recovered["artifacts"][0]["uri"].removeprefix("file://")).exists()

    worker_a, worker_b = report["workers"]["A"], report["workers"]["B"]
    assert worker_a["killed_with"] == "SIGKILL" and worker_a["exit_code"] == -signal.SIGKILL
    # The long scan ran inside worker A's own process (an SDK worker: the server held the ledger).
    assert worker_a["long_scan_marker"]["pid"] == worker_a["pid"]
    assert worker_a["long_scan_marker"] == {"job_id": recovered["job_id"], "attempt": 1, "worker_id": "worker-A",
                                            "pid": worker_a["pid"]}
    assert worker_b["stopped_with"] == "SIGTERM" and worker_b["exit_code"] == 0
    assert worker_b["summary"]["worker_id"] == "worker-B"
    assert worker_b["summary"]["stopped_by"] == "signal:SIGTERM"
    assert worker_b["summary"]["outcomes"].get("succeeded", 0) >= 1
    assert worker_b["lease_recovered_after_seconds"] is not None
    assert 0 < worker_b["lease_recovered_after_seconds"] <= worker_b["recovery_seconds"]

    assert report["verify"]["ok"] is True
    assert report["verify"]["jobs"] == report["jobs_total"]
    assert report["seconds"] < 60 and took < 120  # the first act ~15 s, both ~25 s on an idle 2-core machine

    # The second act: the site's state crossed an air gap in a full and an incremental bundle with a hand-off.
    airgap = report["airgap"]
    assert report["source_ledger"] == str(ledger_path) and Path(report["target_ledger"]).exists()
    assert [made["kind"] for made in airgap["exports"]] == ["full", "incremental"]
    assert [made["sequence"] for made in airgap["exports"]] == [1, 2]
    assert len(report["bundles"]) == 2 and all(Path(path).is_file() for path in report["bundles"])
    assert Path(report["bundle_public_key"]).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert Path(report["bundle_signing_key"]).stat().st_mode & 0o777 == 0o600
    handed = airgap["handed_over"]
    assert handed["jobs"] == 9  # six backfill windows and three queued advisories
    assert handed["at_source"] == {"handed_off": 9} and handed["at_target"] == {"succeeded": 9}
    for path in report["bundles"]:  # an auditor re-checks each bundle offline with the trust root alone
        checked = run_cli(None, "bundle", "verify", path, "--trust", report["trust_root"], "--target",
                          airgap["target_site"], "--json")
        assert checked.code == 0, checked
        assert all(check["ok"] for check in checked.json["checks"])
    target_verify = run_cli(Path(report["target_ledger"]), "ledger", "verify", "--json")
    assert target_verify.code == 0, target_verify
    listed = run_cli(Path(report["target_ledger"]), "bundle", "list", "--json")
    assert [row["sequence"] for row in listed.json["imports"]] == [1, 2]

    # No process the demo started is still alive, and the ledger is free to open.
    for pid in (server["pid"], worker_a["pid"], worker_b["pid"]):
        assert not alive(pid), pid
    assert processes_mentioning(str(ledger_path)) == []
    verify = run_cli(ledger_path, "ledger", "verify", "--json")
    assert verify.code == 0, verify
    # the air-gap act added to the connected site's chain: each handed-over job's creation and its hand-off
    assert verify.json["history_entries"] == report["airgap"]["verify"]["connected"]["history_entries"]
    assert verify.json["history_entries"] == report["verify"]["history_entries"] + 2 * handed["jobs"]


def test_demo_human_output_tells_the_same_story(tmp_path):
    ledger_path = tmp_path / "human.duckdb"
    result = run_cli(None, "--ledger", str(ledger_path), "demo", timeout=120)  # global --ledger, same meaning
    assert result.code == 0, result
    out = result.stdout
    assert f"ledger {ledger_path} (site demo-site)" in out
    assert "server http://127.0.0.1:" in out and "stopped on SIGTERM (exit 0)" in out
    assert "was killed with SIGKILL" in out
    assert "dead letters (2):" in out
    assert out.count("canceled (dependency_failed)") == 2
    assert out.count("export.mirror") == 2 and out.count("attempts 3/3") == 2
    assert "attempt 1: leased by worker-A -> requeued (lease_expired)" in out
    assert "attempt 2: leased by worker-B -> succeeded" in out
    assert "ledger verify: ok" in out
    assert "9 jobs handed over: at the connected site handed_off 9; at the air-gapped site succeeded 9" in out
    # The steps are narrated on stderr as they happen, in order.
    steps = ["listens at http://127.0.0.1:", "enqueued", "worker-A pid", "worker-A was killed with SIGKILL",
             "worker-B pid", "recovered the long scan's expired lease", "all jobs final", "worker-B stopped on SIGTERM",
             "server stopped on SIGTERM", "ledger verify: ok", "trust root version 1 written",
             "full bundle exported", "verified offline", "imported under that plan", "hand-off",
             "runs the handed-over jobs", "ledger verify at the air-gapped site: ok"]
    positions = [result.stderr.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), result.stderr
    assert processes_mentioning(str(ledger_path)) == []


def test_demo_stopped_midway_leaves_no_process_behind(tmp_path):
    ledger_path = tmp_path / "stopped.duckdb"
    demo = subprocess.Popen([sys.executable, "-m", "airgap_orch", "demo", "--ledger", str(ledger_path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("stopped.duckdb.demo-*/worker-A.err")):  # server up, worker A starting
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline, "worker A never started"
            time.sleep(0.02)
        started = processes_mentioning(str(ledger_path))
        assert started  # at least the server (and soon worker A) run with this ledger on their command line
        server_pid = json.loads(Path(f"{ledger_path}.server.json").read_text())["pid"]
        demo.send_signal(signal.SIGTERM)
        stdout, stderr = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 1, (stdout, stderr)
    assert stdout == ""
    error = json.loads(stderr.strip().splitlines()[-1])["error"]
    assert error["type"] == "DemoInterrupted" and "SIGTERM" in error["message"]
    assert not alive(server_pid)
    for pid, _ in started:
        assert not alive(pid), pid
    assert processes_mentioning(str(ledger_path)) == []
    # The server was killed, not stopped: its discovery file is stale and ignored; the ledger verifies.
    verify = run_cli(ledger_path, "ledger", "verify", "--json")
    assert verify.code == 0, verify


def test_demo_refuses_an_existing_ledger_path(ledger_path):
    before = ledger_path.read_bytes()
    siblings = sorted(ledger_path.parent.iterdir())
    result = run_cli(None, "demo", "--ledger", str(ledger_path))
    assert result.code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "already exists" in line
    assert ledger_path.read_bytes() == before
    assert sorted(ledger_path.parent.iterdir()) == siblings  # no work dir, no server discovery file


def test_demo_without_a_workdir_removes_its_temporary_files(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_cli(None, "demo", timeout=120, env={"TMPDIR": str(scratch)})
    assert result.code == 0, result
    assert "now removed (--workdir DIR keeps them)" in result.stdout
    assert list(scratch.iterdir()) == [], "the demo left files behind"


def test_demo_workdir_keeps_every_file_there_and_refuses_a_non_empty_one(tmp_path):
    work_dir = tmp_path / "demo-files"
    result = run_cli(None, "demo", "--workdir", str(work_dir), "--json", timeout=120)
    assert result.code == 0, result
    report = result.json
    assert report["files_kept"] is True and report["work_dir"] == str(work_dir)
    assert report["ledger"] == str(work_dir / "ledger.duckdb") and Path(report["ledger"]).exists()
    kept = {path.name for path in work_dir.iterdir()}
    assert {"server.out", "server.err", "worker-A.err", "worker-B.out", "out"} <= kept, kept
    assert any((work_dir / "out").iterdir()), "handler output is kept too"
    again = run_cli(None, "demo", "--workdir", str(work_dir))
    assert again.code == 1 and "is not empty" in again.stderr and len(again.stderr.splitlines()) == 1
