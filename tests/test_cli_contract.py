"""The CLI contract other tools script against (issue 2, "CLI contract"): JSON shapes, exit codes,
the ledger from --ledger or $AIRGAP_ORCH_LEDGER, and --json before the group or after the command.

Setup that is not under test runs in-process; each CLI call is a real subprocess (~0.4 s), so they are few.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import run_cli

from airgap_orch import clock
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops

ARTIFACT = "s3://reports/2026/scan,final.json,sha256:" + "9a" * 32 + ",application/json"
SPEC = {"tenant": "acme", "project": "web", "type": "scan"}


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def seconds_from_now(text: str) -> float:
    return (clock.parse_iso(text) - utc_now()).total_seconds()


def ok(result) -> dict:
    assert result.code == 0, result
    assert result.stderr == "", result
    return result.json


def enqueue_in_process(path: Path, *specs: dict) -> list[str]:
    with Ledger.open(path, lock_timeout=5) as ledger:
        return [ops.enqueue(ledger, {**SPEC, **spec})["job_id"] for spec in specs]


# -- producers -------------------------------------------------------------------------------------

def test_enqueue_answers_job_id_and_created_and_show_returns_every_field(cli, tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_text('{"image": "nginx:1.27", "tags": ["ü", 1]}', encoding="utf-8")
    flags = ["jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan", "--queue", "fast",
             "--priority", "7", "--payload", f"@{payload}", "--idempotency-key", "scan-nginx",
             "--run-at", "2030-01-31T12:00:00+01:00", "--max-attempts", "4", "--timeout-seconds", "90",
             "--correlation-id", "corr-1"]
    created = ok(cli("--json", *flags))
    assert created["created"] is True
    uuid.UUID(created["job_id"])
    again = ok(cli(*flags, "--json"))
    assert (again["job_id"], again["created"]) == (created["job_id"], False)

    shown = ok(cli("jobs", "show", created["job_id"], "--json"))
    assert (shown["job_id"], shown["state"], shown["attempts"]) == (created["job_id"], "queued", 0)
    assert (shown["tenant"], shown["project"], shown["type"], shown["queue"], shown["priority"]) == (
        "acme", "web", "scan", "fast", 7)
    assert shown["payload"] == {"image": "nginx:1.27", "tags": ["ü", 1]}
    assert (shown["max_attempts"], shown["timeout_seconds"], shown["correlation_id"]) == (4, 90, "corr-1")
    assert clock.parse_iso(shown["run_at"]) == datetime(2030, 1, 31, 11, 0, 0)
    assert [entry["event_type"] for entry in shown["history"]] == ["job.created"]


def test_enqueue_batch_answers_job_ids_created_and_existing(cli, tmp_path):
    lines = [
        {**SPEC, "idempotency_key": "feed-1", "payload": {"n": 1}},
        {**SPEC, "type": "export", "priority": -2},
        {**SPEC, "idempotency_key": "feed-1", "payload": {"n": 1}},  # repeated key and spec: the first job
        {**SPEC, "tenant": "globex", "idempotency_key": "feed-1"},  # same key, other tenant: a new job
    ]
    batch = tmp_path / "jobs.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    result = ok(cli("jobs", "enqueue", "--batch", str(batch), "--json"))
    assert (result["created"], result["existing"]) == (3, 1)
    ids = result["job_ids"]
    assert len(ids) == 4 and ids[0] == ids[2] and len(set(ids)) == 3
    again = ok(cli("--json", "jobs", "enqueue", "--batch", str(batch)))
    assert (again["created"], again["existing"]) == (1, 3)  # only the line without a key is new
    assert [again["job_ids"][i] for i in (0, 2, 3)] == [ids[i] for i in (0, 2, 3)]
    assert again["job_ids"][1] not in ids


# -- workers ---------------------------------------------------------------------------------------

def test_claim_heartbeat_cancel_and_ack_speak_the_documented_json(cli, ledger_path):
    first, second, _other_type = enqueue_in_process(ledger_path, {"priority": 5}, {"priority": 4},
                                                    {"type": "export", "priority": 9})
    claimed = ok(cli("--json", "jobs", "claim", "--worker-id", "w-1", "--type", "scan", "--queue", "default",
                     "--limit", "5", "--lease-seconds", "120"))
    leases = {lease["job_id"]: lease for lease in claimed["leases"]}
    assert set(leases) == {first, second}
    for lease in leases.values():
        assert {"job_id", "lease_id", "lease_expires_at", "attempt"} <= set(lease)
        assert lease["attempt"] == 1
        assert 100 < seconds_from_now(lease["lease_expires_at"]) <= 121
    assert leases[first]["lease_id"] != leases[second]["lease_id"]

    beat = ok(cli("jobs", "heartbeat", first, "--lease", leases[first]["lease_id"], "--progress", "0.5",
                  "--message", "half way", "--json"))
    assert (beat["job_id"], beat["state"], beat["cancel_requested"]) == (first, "running", False)
    canceled = ok(cli("jobs", "cancel", first, "--reason", "operator asked", "--json"))
    assert (canceled["state"], canceled["cancel_requested"]) == ("running", True)
    beat = ok(cli("jobs", "heartbeat", first, "--lease", leases[first]["lease_id"], "--json"))
    assert beat["cancel_requested"] is True
    assert ok(cli("jobs", "ack", first, "--lease", leases[first]["lease_id"], "--json"))["state"] == "canceled"

    acked = ok(cli("jobs", "ack", second, "--lease", leases[second]["lease_id"], "--artifact", ARTIFACT,
                   "--json"))
    assert (acked["job_id"], acked["state"]) == (second, "succeeded")
    shown = ok(cli("--json", "jobs", "show", second))
    assert shown["artifacts"] == [{"uri": "s3://reports/2026/scan,final.json", "digest": "sha256:" + "9a" * 32,
                                   "mime": "application/json"}]
    assert [entry["event_type"] for entry in shown["history"]] == ["job.created", "job.leased",
                                                                   "job.succeeded"]


def test_fail_with_retry_after_requeues_and_no_retry_fails_for_good(cli, ledger_path):
    enqueue_in_process(ledger_path, {}, {})
    leases = ok(cli("jobs", "claim", "--worker-id", "w-2", "--limit", "2", "--json"))["leases"]
    retried, failed = leases
    result = ok(cli("jobs", "fail", retried["job_id"], "--lease", retried["lease_id"], "--error", "503 upstream",
                    "--retry-after", "600", "--json"))
    assert (result["job_id"], result["state"], result["attempt"]) == (retried["job_id"], "queued", 1)
    assert 570 < seconds_from_now(result["run_at"]) <= 601
    result = ok(cli("jobs", "fail", failed["job_id"], "--lease", failed["lease_id"], "--error", "bad schema",
                    "--no-retry", "--json"))
    assert (result["state"], result["run_at"]) == ("failed", None)


def test_reports_from_a_stale_lease_and_illegal_transitions_exit_3(cli, ledger_path):
    job_id, queued = enqueue_in_process(ledger_path, {}, {})
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60, job_type="scan")["leases"]
        ops.ack(ledger, lease["job_id"], lease["lease_id"])
    late = cli("jobs", "ack", lease["job_id"], "--lease", lease["lease_id"])
    assert late.code == 3, late
    assert late.stderr.startswith("airgap-orch: error: ") and len(late.stderr.splitlines()) == 1
    illegal = cli("--json", "jobs", "cancel", lease["job_id"], "--reason", "too late")
    assert illegal.code == 3, illegal
    assert json.loads(illegal.stderr)["error"]["type"] == "IllegalTransition"
    still_queued = queued if lease["job_id"] == job_id else job_id
    replay = cli("deadletter", "replay", still_queued)
    assert replay.code == 3, replay


# -- operators -------------------------------------------------------------------------------------

def test_list_filters_by_state_tenant_and_type(cli, ledger_path):
    wanted, _other_tenant, _other_type, running = enqueue_in_process(
        ledger_path, {}, {"tenant": "globex"}, {"type": "export"}, {"priority": 10})
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
        assert lease["job_id"] == running
    listed = ok(cli("jobs", "list", "--state", "queued", "--tenant", "acme", "--type", "scan", "--json"))
    assert [(job["job_id"], job["state"]) for job in listed["jobs"]] == [(wanted, "queued")]
    every = ok(cli("--json", "jobs", "list", "--limit", "3"))["jobs"]
    assert len(every) == 3 and all({"job_id", "state", "tenant", "type", "attempts"} <= set(j) for j in every)


def test_recover_requeues_jobs_whose_lease_expired(cli, ledger_path):
    clock.set_clock(clock.ManualClock(utc_now() - timedelta(hours=1)))
    try:  # enqueue and lease it an hour ago, so by the system clock its lease is long expired
        (job_id,) = enqueue_in_process(ledger_path, {})
        with Ledger.open(ledger_path, lock_timeout=5) as ledger:
            assert ops.claim(ledger, worker_id="crashed", limit=1, lease_seconds=60)["leases"]
    finally:
        clock.set_clock(None)
    assert ok(cli("jobs", "recover", "--json")) == {"recovered": 1}
    shown = ok(cli("jobs", "show", job_id, "--json"))
    assert (shown["state"], shown["attempts"], shown["history"][-1]["reason"]) == ("queued", 1, "lease_expired")


def test_deadletter_list_and_replay(cli, ledger_path):
    dead, _alive = enqueue_in_process(ledger_path, {"max_attempts": 1, "priority": 3}, {})
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=60)["leases"]
        ops.fail(ledger, dead, lease["lease_id"], error="boom")
    listed = ok(cli("deadletter", "list", "--tenant", "acme", "--json"))
    assert [(job["job_id"], job["state"]) for job in listed["jobs"]] == [(dead, "dead_letter")]
    replayed = ok(cli("--json", "deadletter", "replay", dead))
    ((new_id, replay_of),) = [(r["job_id"], r["replay_of"]) for r in replayed["replays"]]
    assert replay_of == dead and new_id != dead
    shown = ok(cli("jobs", "show", new_id, "--json"))
    assert (shown["state"], shown["replay_of"], shown["attempts"]) == ("queued", dead, 0)


# -- global options --------------------------------------------------------------------------------

def test_ledger_comes_from_the_environment_when_no_flag_is_given(ledger_path, tmp_path):
    (job_id,) = enqueue_in_process(ledger_path, {})
    env = {"AIRGAP_ORCH_LEDGER": str(ledger_path)}
    listed = run_cli(None, "--json", "jobs", "list", env=env)
    assert [job["job_id"] for job in ok(listed)["jobs"]] == [job_id]
    elsewhere = run_cli(ledger_path, "jobs", "list", "--json", env={"AIRGAP_ORCH_LEDGER": str(tmp_path / "x")})
    assert [job["job_id"] for job in ok(elsewhere)["jobs"]] == [job_id]  # --ledger wins over the env


def test_json_is_accepted_before_the_group_and_after_the_command(cli, ledger_path):
    enqueue_in_process(ledger_path, {})
    before = ok(cli("--json", "ledger", "info"))
    after = ok(cli("ledger", "info", "--json"))
    human = cli("ledger", "info")
    assert before == after
    assert human.code == 0 and not human.stdout.lstrip().startswith("{")
    assert before["history_entries"] == 1 and before["jobs"] == {"queued": 1}
    assert len(before["history_head"]) == 64 and before["site_id"] == "site-test"


def test_ledger_init_answers_site_and_schema_version(tmp_path):
    path = tmp_path / "new" / "ledger.duckdb"
    created = ok(run_cli(path, "ledger", "init", "--site-id", "site-b", "--json"))
    assert created["site_id"] == "site-b" and created["schema_version"] >= 1
    assert ok(run_cli(path, "ledger", "verify", "--json"))["ok"] is True


def test_claim_takes_worker_id_and_keeps_worker_as_a_hidden_alias(cli, ledger_path):
    enqueue_in_process(ledger_path, {}, {})
    by_new_name = ok(cli("--json", "jobs", "claim", "--worker-id", "w-new"))["leases"]
    by_old_name = ok(cli("--json", "jobs", "claim", "--worker", "w-old"))["leases"]
    leased = [ok(cli("--json", "jobs", "show", lease["job_id"])) for lease in by_new_name + by_old_name]
    assert [job["worker_id"] for job in leased] == ["w-new", "w-old"]
    shown = cli("jobs", "claim", "--help").stdout
    assert "--worker-id" in shown and "--worker " not in shown and "--worker\n" not in shown
    missing = cli("jobs", "claim")
    assert missing.code == 2 and "--worker-id" in missing.stderr
    assert cli("jobs", "claim", "--worker-id", "a", "--worker", "b").code == 2


def test_enqueue_help_describes_and_marks_the_fields_a_job_needs(cli):
    shown = " ".join(cli("jobs", "enqueue", "--help").stdout.split())
    for option in ("--tenant", "--project", "--type"):
        assert f"{option} TEXT" in shown
    assert shown.count("(required unless --batch)") == 3


def test_jobs_list_marks_an_expired_lease_that_no_sweep_recovered_yet(cli, ledger_path):
    clock.set_clock(clock.ManualClock(utc_now() - timedelta(hours=1)))  # a claim now would sweep the stale one
    try:
        stale, fresh = enqueue_in_process(ledger_path, {"queue": "old"}, {"queue": "new"})
        with Ledger.open(ledger_path, lock_timeout=5) as ledger:
            ops.claim(ledger, worker_id="w-gone", queue="old", lease_seconds=30)
            ops.claim(ledger, worker_id="w-live", queue="new", lease_seconds=86_400)
    finally:
        clock.set_clock(None)
    listed = {job["job_id"]: job for job in ok(cli("--json", "jobs", "list", "--state", "leased"))["jobs"]}
    assert (listed[stale]["state"], listed[stale]["lease_expired"]) == ("leased", True)
    assert (listed[fresh]["state"], listed[fresh]["lease_expired"]) == ("leased", False)
    rows = {line.split()[0]: line for line in cli("jobs", "list").stdout.splitlines()[1:]}
    assert "leased (lease expired)" in rows[stale] and "expired" not in rows[fresh]
