"""Replays through the real CLI: `jobs replay JOB_ID [--reason]` and `deadletter replay` by ids or in bulk
(`--tenant --type --since [--dry-run] [--reason]`). A replay is a new queued job with replay_of and priority
100, recorded in history and in the audit log; a dry run or a refusal changes nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from airgap_orch import clock
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops

SPEC = {"tenant": "acme", "project": "feeds", "type": "advisory.ingest"}


def dead_letter(ledger: Ledger, **fields) -> str:
    """Enqueue one job with a single attempt, claim it and fail it: it ends dead-lettered."""
    spec = {**SPEC, "max_attempts": 1, **fields}
    job_id = ops.enqueue(ledger, spec)["job_id"]
    (lease,) = ops.claim(ledger, worker_id="w-1", job_type=spec["type"], limit=1)["leases"]
    assert lease["job_id"] == job_id
    assert ops.fail(ledger, job_id, lease["lease_id"], error="mirror down")["state"] == "dead_letter"
    return job_id


def snapshot(path: Path) -> dict:
    """What a refusal or a dry run must leave alone: ledger info, the audit log, and every job row."""
    with Ledger.open(path, lock_timeout=5) as ledger:
        info = ledger_ops.info(ledger)
        audit = ledger.read().rows("audit_scan")
        jobs = ops.list_jobs(ledger, limit=100_000)["jobs"]
    return {"history_entries": info["history_entries"], "history_head": info["history_head"],
            "jobs_by_state": info["jobs"], "audit": audit, "jobs": jobs}


def audit_entries(path: Path) -> list[dict]:
    from airgap_orch.operations import audit as audit_ops

    with Ledger.open(path, lock_timeout=5) as ledger:
        return audit_ops.list_entries(ledger)["entries"]


def test_jobs_replay_clones_the_payload_with_replay_of_high_priority_and_an_audit_entry(ledger_path, cli):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        original = dead_letter(ledger, payload={"advisory_id": "CVE-2024-1"}, priority=-5)
    result = cli("jobs", "replay", original, "--reason", "mirror is back", "--json")
    assert result.code == 0, result
    assert result.json["replay_of"] == original and result.json["priority"] == 100
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        new, old = ops.show(ledger, result.json["job_id"]), ops.show(ledger, original)
        assert ledger_ops.verify(ledger)["ok"]
    assert (new["state"], new["replay_of"], new["priority"]) == ("queued", original, 100)
    assert new["payload"] == {"advisory_id": "CVE-2024-1"}
    assert [entry["event_type"] for entry in new["history"]] == ["job.created"]
    assert old["state"] == "dead_letter"
    assert old["history"][-1]["event_type"] == "job.replayed"
    assert old["history"][-1]["reason"] == f"replayed_as:{new['job_id']}"
    (entry,) = audit_entries(ledger_path)
    assert (entry["action"], entry["actor"], entry["reason"], entry["target"]) == (
        "job.replay", "cli", "mirror is back", original)
    assert entry["details"]["replays"] == [{"job_id": new["job_id"], "replay_of": original}]


def test_bulk_dead_letter_replay_dry_run_names_them_and_the_real_run_replays_them_in_one_go(
        ledger_path, cli, manual_clock):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        too_old = dead_letter(ledger)
        manual_clock.advance(3600)
        since = clock.iso(manual_clock.current - timedelta(seconds=1))
        wanted = [dead_letter(ledger, payload={"n": n}) for n in range(3)]
        other_type = dead_letter(ledger, type="vex.ingest")
        other_tenant = dead_letter(ledger, tenant="globex")
        ops.enqueue(ledger, {**SPEC, "payload": {"still": "queued"}})
    bulk = ("deadletter", "replay", "--tenant", "acme", "--type", SPEC["type"], "--since", since)
    before = snapshot(ledger_path)
    dry = cli(*bulk, "--dry-run", "--json")
    assert dry.code == 0, dry
    assert dry.json["dry_run"] is True and dry.json["count"] == 3
    assert sorted(dry.json["job_ids"]) == sorted(wanted) and dry.json["replays"] == []
    assert snapshot(ledger_path) == before, "a dry run must change nothing"

    done = cli(*bulk, "--reason", "feed restored", "--json")
    assert done.code == 0, done
    assert done.json["count"] == 3 and sorted(done.json["job_ids"]) == sorted(wanted)
    assert sorted(r["replay_of"] for r in done.json["replays"]) == sorted(wanted)
    after = snapshot(ledger_path)
    assert after["history_entries"] == before["history_entries"] + 6  # a created and a replayed entry each
    replays = {job["replay_of"]: job for job in after["jobs"] if job["replay_of"]}
    assert set(replays) == set(wanted)
    assert all(job["state"] == "queued" and job["priority"] == 100 for job in replays.values())
    for original in (too_old, other_type, other_tenant):
        assert original not in replays
    (entry,) = [e for e in audit_entries(ledger_path) if e["action"] == "job.replay"]
    assert entry["reason"] == "feed restored" and entry["details"]["count"] == 3

    again = cli(*bulk, "--json")
    assert again.code == 0, again
    assert again.json["count"] == 0, "dead letters that already have a replay are not replayed twice"
    assert snapshot(ledger_path)["history_entries"] == after["history_entries"]


def test_deadletter_replay_by_ids_still_works_and_takes_a_reason_or_a_dry_run(ledger_path, cli):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        first, second = dead_letter(ledger), dead_letter(ledger)
    plain = cli("deadletter", "replay", first, "--json")
    assert plain.code == 0, plain
    assert [r["replay_of"] for r in plain.json["replays"]] == [first]
    before = snapshot(ledger_path)
    dry = cli("deadletter", "replay", second, "--dry-run", "--json")
    assert (dry.code, dry.json["count"], dry.json["job_ids"]) == (0, 1, [second])
    assert snapshot(ledger_path) == before
    reasoned = cli("deadletter", "replay", second, "--reason", "retry after fix", "--json")
    assert reasoned.code == 0 and reasoned.json["count"] == 1, reasoned
    assert [e["reason"] for e in audit_entries(ledger_path)] == [None, "retry after fix"]


def _refusals(ids: dict[str, str]) -> list[tuple[tuple[str, ...], tuple[int, ...], str]]:
    long_reason = "r" * 257
    return [
        (("jobs", "replay", ids["missing"]), (1,), "no job"),
        (("jobs", "replay", "job-42"), (1,), "not a UUID"),
        (("jobs", "replay", ids["queued"]), (3,), "cannot replay"),
        (("jobs", "replay", ids["dead"], "--reason", long_reason), (1,), "257"),
        (("deadletter", "replay", ids["missing"], "--dry-run"), (1,), "no job"),
        (("deadletter", "replay", "--tenant", "acme", "--type", "x", "--since", "yesterday"), (1,), "ISO 8601"),
        (("deadletter", "replay", "--tenant", "acme", "--type", "x", "--since", "2024-01-01",
          "--reason", long_reason), (1,), "257"),
        (("deadletter", "replay", "--tenant", "acme", "--type", "x"), (2,), "--since"),
        (("deadletter", "replay", ids["dead"], "--tenant", "acme"), (2,), "not both"),
    ]


def test_bad_replays_exit_1_2_or_3_with_one_line_and_change_nothing(ledger_path):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        ids = {"dead": dead_letter(ledger), "queued": ops.enqueue(ledger, SPEC)["job_id"],
               "missing": str(uuid.uuid4())}
    before = snapshot(ledger_path)
    refusals = _refusals(ids)
    for (args, codes, text), result in zip(refusals, run_parallel(ledger_path, [r[0] for r in refusals]),
                                           strict=True):
        assert result.code in codes, (args, result)
        assert result.stdout == "", (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, result)
    assert snapshot(ledger_path) == before


def run_parallel(ledger_path: Path, commands: list[tuple[str, ...]]) -> list:
    """The real CLI, several at once (each waits its turn for the ledger)."""
    from server_fixtures import run_cli_parallel

    return run_cli_parallel([("--lock-timeout", "60", *args) for args in commands], ledger=ledger_path, timeout=120)


def test_replays_over_http_match_the_cli(ledger_path, tmp_path):
    from server_fixtures import assert_problem, serving

    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        dead = [dead_letter(ledger) for _ in range(3)]
        since = clock.iso(clock.now() - timedelta(hours=1))
    with serving(ledger_path, "--no-auth") as server:
        one = server.request("POST", f"/v1/jobs/{dead[0]}/replay", {"reason": "by hand"})
        assert one.status == 200, one
        assert one.json["replay_of"] == dead[0] and one.json["priority"] == 100
        assert_problem(server.request("POST", f"/v1/jobs/{dead[0]}/replay", {"why": "x"}), 400, "invalid-input", 1)
        assert_problem(server.request("POST", f"/v1/jobs/{uuid.uuid4()}/replay", {}), 404, "not-found", 1)
        body = {"tenant": "acme", "type": SPEC["type"], "since": since}
        dry = server.request("POST", "/v1/deadletter/replay-bulk", {**body, "dry_run": True})
        assert dry.status == 200 and dry.json["count"] == 2 and sorted(dry.json["job_ids"]) == sorted(dead[1:])
        done = server.request("POST", "/v1/deadletter/replay-bulk", {**body, "reason": "bulk"})
        assert done.status == 200 and done.json["count"] == 2, done
        audit = server.request("GET", "/v1/audit").json["entries"]
    assert [(e["action"], e["actor"], e["reason"]) for e in audit] == [
        ("job.replay", "http:no-auth", "by hand"), ("job.replay", "http:no-auth", "bulk")]


def test_a_second_replay_of_one_dead_letter_needs_again_and_the_output_has_one_shape(ledger_path, cli):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        dead = dead_letter(ledger)
    plain = cli("deadletter", "replay", dead, "--json")
    assert plain.code == 0, plain
    before = snapshot(ledger_path)
    for args in (("deadletter", "replay", dead), ("deadletter", "replay", dead, "--reason", "again please"),
                 ("deadletter", "replay", dead, "--dry-run"), ("jobs", "replay", dead)):
        refused = cli(*args)
        assert refused.code == 3, (args, refused)
        assert f"already replayed as {plain.json['replays'][0]['job_id']}" in refused.stderr
        assert "--again" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert snapshot(ledger_path) == before
    twice = cli("deadletter", "replay", dead, "--again", "--reason", "second run", "--json")
    assert twice.code == 0, twice
    assert set(twice.json) == set(plain.json) == {"dry_run", "count", "job_ids", "replays"}
    assert twice.json["replays"][0]["replay_of"] == dead
    assert twice.json["replays"][0]["job_id"] != plain.json["replays"][0]["job_id"]
    assert cli("jobs", "replay", dead, "--again").code == 0
    assert cli("deadletter", "replay", "--tenant", "acme", "--type", "x", "--since", "2024-01-01",
               "--again").code == 2


def test_a_second_replay_over_http_is_409_unless_again(ledger_path):
    from server_fixtures import assert_problem, serving

    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        dead = dead_letter(ledger)
    with serving(ledger_path, "--no-auth") as server:
        assert server.request("POST", f"/v1/jobs/{dead}/replay", {}).status == 200
        assert_problem(server.request("POST", f"/v1/jobs/{dead}/replay", {}), 409, exit_code=3)
        assert_problem(server.request("POST", "/v1/deadletter/replay", {"job_ids": [dead]}), 409, exit_code=3)
        assert_problem(server.request("POST", "/v1/deadletter/replay-bulk", {"job_ids": [dead]}), 409, exit_code=3)
        again = server.request("POST", "/v1/deadletter/replay", {"job_ids": [dead], "again": True})
        assert again.status == 200 and again.json["replays"][0]["replay_of"] == dead, again
        assert_problem(server.request("POST", f"/v1/jobs/{dead}/replay", {"again": "yes"}), 400, exit_code=1)
