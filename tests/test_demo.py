"""`airgap-orch demo`: the whole scenario through the real CLI, worker subprocesses and SIGKILL."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def test_demo_json_shows_dead_letters_the_recovered_job_and_a_verified_ledger(tmp_path):
    ledger_path = tmp_path / "demo.duckdb"
    result = run_cli(None, "demo", "--ledger", str(ledger_path), "--json", timeout=120)
    assert result.code == 0, result
    report = result.json
    assert report["ledger"] == str(ledger_path) and ledger_path.exists()
    assert Path(report["work_dir"]).parent == tmp_path

    # Everything finished: nothing left queued, leased or running.
    assert set(report["jobs_by_state"]) <= {"succeeded", "dead_letter"}
    assert report["jobs_total"] >= 24
    assert sum(report["jobs_by_state"].values()) == report["jobs_total"]
    assert set(report["jobs_by_tenant"]) == {"acme-corp", "globex"}

    dead = report["dead_letter"]
    assert report["jobs_by_state"]["dead_letter"] == len(dead) == 2
    for job in dead:
        assert job["type"] == "export.mirror"
        assert job["attempts"] == job["max_attempts"] == 3
    assert {job["tenant"] for job in dead} == {"acme-corp", "globex"}

    recovered = report["recovered_job"]
    assert recovered["state"] == "succeeded" and recovered["attempts"] == 2
    assert recovered["attempt_story"] == [
        {"attempt": 1, "worker_id": "worker-A", "outcome": "queued", "reason": "lease_expired"},
        {"attempt": 2, "worker_id": "worker-B", "outcome": "succeeded", "reason": None},
    ]
    assert [entry["event_type"] for entry in recovered["history"]][-1] == "job.succeeded"
    assert recovered["artifacts"] and Path(recovered["artifacts"][0]["uri"].removeprefix("file://")).exists()

    assert report["workers"]["A"]["killed_with"] == "SIGKILL"
    assert report["workers"]["B"]["exit_code"] == 0
    assert report["workers"]["B"]["summary"]["stopped_by"] == "idle"
    assert report["verify"]["ok"] is True
    assert report["verify"]["jobs"] == report["jobs_total"]
    assert report["seconds"] < 60  # ~12 s on an idle 2-core machine


def test_demo_refuses_an_existing_ledger_path(ledger_path):
    before = ledger_path.read_bytes()
    result = run_cli(None, "demo", "--ledger", str(ledger_path))
    assert result.code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "already exists" in line
    assert ledger_path.read_bytes() == before
