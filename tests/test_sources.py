"""Sources and schedules on a real ledger file: ticks enqueued once (also across a reopen), missed ticks
skipped or backfilled per policy with a manual clock, the per-run bound, paused sources' jobs held at claim,
every bad input refused with one line and exit 1 (2 where click reports it) leaving the ledger unchanged,
and the scheduler running inside the ledger's owner (the worker loop, a live server)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import run_cli

from airgap_orch import clock
from airgap_orch.errors import Conflict, InvalidInput, NotFound
from airgap_orch.ledger import Ledger
from airgap_orch.operations import backfills as backfill_ops
from airgap_orch.operations import jobs as job_ops
from airgap_orch.operations import sources as ops
from airgap_orch.orchestrator import sources as core
from airgap_orch.worker.runner import Runner, RunnerConfig

START = datetime(2026, 1, 1, 10, 0, 30)  # half a minute past a tick of '0 * * * *'
HOURLY = "0 * * * *"


@pytest.fixture
def at_start(manual_clock: clock.ManualClock) -> clock.ManualClock:
    manual_clock.current = START
    return manual_clock


def add(ledger: Ledger, name: str = "nvd", **fields) -> dict:
    request = {"tenant": "acme", "name": name, "type": "advisory.ingest", "host": "nvd.nist.gov",
               "schedule": HOURLY, "payload": {"feed": "nvd"}, **fields}
    return ops.add(ledger, **request)


def jobs_of(ledger: Ledger, job_type: str = "advisory.ingest") -> list[dict]:
    found = job_ops.list_jobs(ledger, job_type=job_type, limit=10_000)["jobs"]
    return [job_ops.show(ledger, job["job_id"]) for job in found]


def hours(n: float) -> float:
    return n * 3600


# -- ticks -------------------------------------------------------------------------------------------------

def test_a_due_tick_enqueues_one_job_with_the_source_keys_window_and_tick_key(ledger, at_start):
    add(ledger)
    assert ops.run_due(ledger)["sources"] == []  # no tick since the source was added
    at_start.advance(hours(1))
    (ran,) = ops.run_due(ledger)["sources"]
    assert ran["tick"] == "2026-01-01T11:00:00.000000Z" and ran["created"] and ran["missed"] == 0
    (job,) = jobs_of(ledger)
    assert job["job_id"] == ran["job_id"] and job["state"] == "queued"
    assert job["payload"] == {"feed": "nvd", "tick": "2026-01-01T11:00:00.000000Z",
                              "window": {"start": "2026-01-01T10:00:00.000000Z", "end": "2026-01-01T11:00:00.000000Z"}}
    assert job["idempotency_key"] == "schedule:nvd:2026-01-01T11:00:00.000000Z"
    assert job["keys"] == ["source:nvd", "host:nvd.nist.gov"]
    assert job["correlation_id"] == "source:nvd" and job["project"] == "nvd" and job["queue"] == "default"
    assert ops.show(ledger, name="nvd")["last_tick"] == ran["tick"]
    assert ops.run_due(ledger)["sources"] == []  # the same tick is not due twice


def test_a_tick_is_never_enqueued_twice_across_a_close_and_reopen(ledger_path, at_start):
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        add(ledger)
        at_start.advance(hours(1))
        (first,) = ops.run_due(ledger)["sources"]
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        assert ops.run_due(ledger)["sources"] == []
        # A ledger whose last_tick lags (restored, or an older copy) still resolves the tick to its job.
        ledger.read().con.execute("UPDATE sources SET last_tick = NULL")
        (again,) = ops.run_due(ledger)["sources"]
        assert again["tick"] == first["tick"] and again["job_id"] == first["job_id"] and not again["created"]
        assert len(jobs_of(ledger)) == 1


def test_skip_policy_enqueues_only_the_latest_tick_and_counts_the_skipped(ledger, at_start):
    add(ledger, missed="skip")
    at_start.advance(hours(5))  # ticks 11:00 .. 15:00 are due
    (ran,) = ops.run_due(ledger)["sources"]
    assert (ran["tick"], ran["missed"], ran["skipped"], ran["backfill_id"]) == \
        ("2026-01-01T15:00:00.000000Z", 4, 4, None)
    (job,) = jobs_of(ledger)
    assert job["payload"]["window"] == {"start": "2026-01-01T14:00:00.000000Z", "end": "2026-01-01T15:00:00.000000Z"}
    shown = ops.show(ledger, name="nvd")
    assert shown["skipped_ticks"] == 4 and shown["next_tick"] == "2026-01-01T16:00:00.000000Z"


def test_backfill_policy_turns_missed_ticks_into_one_audited_backfill(ledger, at_start):
    add(ledger, missed="backfill")
    at_start.advance(hours(5))
    (ran,) = ops.run_due(ledger)["sources"]
    assert (ran["missed"], ran["skipped"], ran["truncated"]) == (4, 0, False)
    backfill = backfill_ops.show(ledger, ran["backfill_id"])
    assert backfill["reason"] == "missed ticks: backfill policy of source nvd"
    assert backfill["ticket"] == "schedule:nvd:0 * * * *"
    assert (backfill["from"], backfill["to"], backfill["windows"], backfill["created"]) == \
        ("2026-01-01T10:00:00.000000Z", "2026-01-01T14:00:00.000000Z", 4, 4)
    assert backfill["created_by"] == "scheduler"
    jobs = jobs_of(ledger)
    assert sorted(job["idempotency_key"] for job in jobs) == \
        [f"schedule:nvd:2026-01-01T{hour}:00:00.000000Z" for hour in (11, 12, 13, 14, 15)]
    assert all(job["keys"] == ["source:nvd", "host:nvd.nist.gov"] for job in jobs)
    entry = job_ops_audit(ledger)[-1]
    assert (entry["action"], entry["reason"], entry["ticket"], entry["actor"]) == \
        ("backfill.create", backfill["reason"], backfill["ticket"], "scheduler")
    assert ops.run_due(ledger)["sources"] == []


def job_ops_audit(ledger: Ledger) -> list[dict]:
    from airgap_orch.operations import audit as audit_ops

    return audit_ops.list_entries(ledger, actor="cli", tenants=None)["entries"]


def test_backfill_of_an_irregular_schedule_has_one_window_per_missed_tick(ledger, at_start):
    add(ledger, schedule="0 9,17 * * *", missed="backfill")
    at_start.advance(hours(48))  # 17:00, 09:00, 17:00 missed; 09:00 on Jan 3 is the latest
    (ran,) = ops.run_due(ledger)["sources"]
    assert ran["tick"] == "2026-01-03T09:00:00.000000Z" and ran["missed"] == 3
    windows = sorted((job["payload"]["window"]["start"][:16], job["payload"]["window"]["end"][:16])
                     for job in jobs_of(ledger))
    assert windows == [("2026-01-01T09:00", "2026-01-01T17:00"), ("2026-01-01T17:00", "2026-01-02T09:00"),
                       ("2026-01-02T09:00", "2026-01-02T17:00"), ("2026-01-02T17:00", "2026-01-03T09:00")]


def test_ticks_handled_per_run_are_bounded(ledger, at_start):
    add(ledger, schedule="* * * * *", missed="backfill")
    at_start.advance(hours(72))  # 4,320 ticks due
    (ran,) = ops.run_due(ledger)["sources"]
    assert ran["missed"] == core.MAX_TICKS_PER_RUN - 1 and ran["truncated"]
    assert backfill_ops.show(ledger, ran["backfill_id"])["windows"] == core.MAX_TICKS_PER_RUN - 1
    assert len(job_ops.list_jobs(ledger, limit=10_000)["jobs"]) == core.MAX_TICKS_PER_RUN
    assert ops.run_due(ledger)["sources"] == []  # the older ticks are dropped, not carried to the next run


def test_sources_of_two_tenants_with_one_type_do_not_suppress_each_others_backfills(ledger, at_start):
    add(ledger, "nvd", missed="backfill")
    add(ledger, "osv", tenant="acme", host="osv.dev", missed="backfill")
    at_start.advance(hours(3))
    ran = ops.run_due(ledger)["sources"]
    assert [(item["name"], item["missed"]) for item in ran] == [("nvd", 2), ("osv", 2)]
    assert len(jobs_of(ledger)) == 6


# -- pause and resume ----------------------------------------------------------------------------------------

def claim(ledger: Ledger) -> list[dict]:
    return job_ops.claim(ledger, worker_id="w1", limit=10)["leases"]


def test_a_paused_sources_jobs_stay_queued_until_resume(ledger, at_start):
    add(ledger, missed="skip")
    at_start.advance(hours(1))
    (ran,) = ops.run_due(ledger)["sources"]
    job_ops.enqueue(ledger, {"tenant": "acme", "project": "p", "type": "other"})
    paused = ops.pause(ledger, name="nvd", reason="upstream maintenance", ticket="OPS-7")
    assert paused["paused"]["reason"] == "upstream maintenance"
    assert [lease["type"] for lease in claim(ledger)] == ["other"]  # only the job without the paused key
    assert ops.show(ledger, name="nvd")["paused"]["ticket"] == "OPS-7"
    at_start.advance(hours(2))
    assert ops.run_due(ledger)["sources"] == []  # a paused source's schedule waits
    ops.resume(ledger, name="nvd", reason="back")
    assert [lease["job_id"] for lease in claim(ledger)] == [ran["job_id"]]
    (after,) = ops.run_due(ledger)["sources"]  # ticks missed while paused meet the policy
    assert (after["tick"], after["skipped"]) == ("2026-01-01T13:00:00.000000Z", 1)
    actions = [(entry["action"], entry["target"]) for entry in job_ops_audit(ledger)]
    assert actions == [("source.add", "nvd"), ("key.pause", "source:nvd"), ("key.resume", "source:nvd")]
    from airgap_orch.operations import audit as audit_ops

    seen_by_tenant = audit_ops.list_entries(ledger, tenants=frozenset({"acme"}))["entries"]
    assert [entry["action"] for entry in seen_by_tenant] == ["source.add", "key.pause", "key.resume"]


def test_pausing_twice_is_a_conflict_and_resuming_an_unpaused_source_is_not_found(ledger, at_start):
    add(ledger)
    ops.pause(ledger, name="nvd", reason="r")
    with pytest.raises(Conflict):
        ops.pause(ledger, name="nvd", reason="again")
    ops.resume(ledger, name="nvd")
    with pytest.raises(NotFound):
        ops.resume(ledger, name="nvd")


def test_source_names_are_unique_across_tenants(ledger, at_start):
    add(ledger)
    with pytest.raises(Conflict, match="unique across tenants"):
        add(ledger, tenant="globex")


def test_a_caller_limited_to_tenants_sees_and_touches_only_their_sources(ledger, at_start):
    add(ledger)
    assert ops.list_sources(ledger, tenants=["globex"])["sources"] == []
    with pytest.raises(NotFound):
        ops.pause(ledger, name="nvd", reason="r", tenants=["globex"])
    assert [item["name"] for item in ops.list_sources(ledger, tenants=["acme"])["sources"]] == ["nvd"]


# -- bad input: one line, exit 1 (2 from click), ledger unchanged --------------------------------------------

def snapshot(ledger_path: Path) -> tuple:
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        read = ledger.read()
        return (read.rows("source_list", tenant=None, tenants=None), read.rows("flow_pauses"),
                read.execute("audit_count").fetchall(), job_ops.list_jobs(ledger, limit=10_000)["jobs"])


BAD_INPUTS = {
    "unknown source: show": (("sources", "show", "nosuch"), 1, "no source nosuch"),
    "unknown source: pause": (("sources", "pause", "nosuch", "--reason", "r"), 1, "no source nosuch"),
    "unknown source: resume": (("sources", "resume", "nosuch"), 1, "no source nosuch"),
    "invalid cron: bad minute": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                                  "--schedule", "61 * * * *"), 1, "not a valid cron expression"),
    "invalid cron: six fields": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                                  "--schedule", "0 0 * * * *"), 1, "has 6 fields"),
    "invalid cron: macro": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                             "--schedule", "@hourly"), 1, "has 1 fields"),
    "reason longer than 256: pause": (("sources", "pause", "nvd", "--reason", "r" * 257), 1,
                                      "reason is 257 characters; the limit is 256"),
    "reason longer than 256: resume": (("sources", "resume", "nvd", "--reason", "r" * 257), 1,
                                       "reason is 257 characters"),
    "reason longer than 256: add": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                                     "--reason", "r" * 257), 1, "reason is 257 characters"),
    "pause without a reason": (("sources", "pause", "nvd"), 1, "reason is required"),
    "duplicate name": (("sources", "add", "--tenant", "globex", "--name", "nvd", "--type", "t"), 3,
                       "already exists"),
    "bad source name": (("sources", "add", "--tenant", "acme", "--name", "a/b", "--type", "t"), 1,
                        "source name 'a/b'"),
    "bad host": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t", "--host", "a b"), 1,
                 "host 'a b'"),
    "payload not an object": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                               "--payload", "[1]"), 1, "must be a JSON object"),
    "payload carries tick": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                              "--payload", '{"tick": 1}'), 1, "must not carry `tick`"),
    "unknown missed policy (click)": (("sources", "add", "--tenant", "acme", "--name", "osv", "--type", "t",
                                       "--missed", "later"), 2, "--missed"),
    "missing --tenant (click)": (("sources", "add", "--name", "osv", "--type", "t"), 2, "--tenant"),
}


@pytest.fixture
def ledger_with_source(ledger_path: Path) -> Path:
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        add(ledger)
    return ledger_path


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_with_its_exit_code_and_changes_nothing(ledger_with_source, case):
    args, code, message = BAD_INPUTS[case]
    before = snapshot(ledger_with_source)
    result = run_cli(ledger_with_source, *args)
    assert result.code == code, result
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result
    assert message in result.stderr, result
    assert snapshot(ledger_with_source) == before


@pytest.mark.parametrize("schedule", ["", "* * *", "0 0 30 2 *", "x" * 60, "* * * * MON-XYZ"])
def test_invalid_cron_is_refused_before_the_ledger_is_touched(ledger, schedule):
    with pytest.raises(InvalidInput):
        add(ledger, schedule=schedule)
    assert ops.list_sources(ledger)["sources"] == []


# -- the doors and the ledger's owners -----------------------------------------------------------------------

def test_cli_adds_shows_and_runs_schedules_in_a_subprocess(cli):
    added = cli("sources", "add", "--tenant", "acme", "--name", "nvd", "--type", "advisory.ingest",
                "--host", "nvd.nist.gov", "--schedule", "*/15  * * * *", "--missed", "backfill",
                "--payload", '{"feed": "nvd"}', "--reason", "new feed", "--json")
    assert added.code == 0, added
    assert added.json["schedule"] == "*/15 * * * *" and added.json["missed_policy"] == "backfill"
    shown = cli("sources", "show", "nvd", "--json")
    assert shown.code == 0 and shown.json["keys"] == ["source:nvd", "host:nvd.nist.gov"]
    assert shown.json["next_tick"] is not None and shown.json["paused"] is None
    ran = cli("schedules", "run-due", "--json")
    assert ran.code == 0 and ran.json["sources"] == []  # nothing due yet: the first tick is after the add
    listed = cli("sources", "list")
    assert listed.code == 0 and "nvd" in listed.stdout and "*/15 * * * *" in listed.stdout
    audit = cli("audit", "list", "--json")
    assert [(e["action"], e["reason"]) for e in audit.json["entries"]] == [("source.add", "new feed")]


def test_the_worker_loop_runs_due_schedules_in_its_own_process(ledger, at_start):
    add(ledger)
    at_start.advance(hours(1))
    seen = []

    def handler(ctx):
        seen.append(ctx.payload["tick"])

    runner = Runner(ledger, RunnerConfig(handlers={"advisory.ingest": handler}, worker_id="w-sched",
                                         exit_when_idle=True, lease_seconds=5.0))
    summary = runner.run(handle_signals=False)
    assert summary["stopped_by"] == "idle" and seen == ["2026-01-01T11:00:00.000000Z"]


def test_a_running_server_runs_due_schedules_and_routes_the_sources_commands(ledger_path):
    from server_fixtures import run_cli as server_cli
    from server_fixtures import serving

    clock.set_clock(lambda: datetime(2020, 1, 1, 10, 0, 30))
    try:
        with Ledger.open(ledger_path, lock_timeout=1) as ledger:
            add(ledger, schedule="0 0 1 * *")  # monthly since 2020: many ticks due on the real clock
    finally:
        clock.set_clock(None)
    with serving(ledger_path, "--no-auth") as server:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs = server_cli("jobs", "list", "--json", ledger=ledger_path).json["jobs"]
            if jobs:
                break
            time.sleep(0.2)
        assert [job["type"] for job in jobs] == ["advisory.ingest"], server.stderr()
        paused = server_cli("sources", "pause", "nvd", "--reason", "maintenance", "--json", ledger=ledger_path)
        assert paused.code == 0 and paused.json["paused"]["paused_by"] == "http:no-auth", paused
        bad = server_cli("sources", "resume", "nvd", "--reason", "r" * 257, "--json", ledger=ledger_path)
        assert bad.code == 1 and "reason is 257 characters" in bad.stderr
        ran = server_cli("schedules", "run-due", "--json", ledger=ledger_path)
        assert ran.code == 0 and ran.json["sources"] == [], ran
        shown = json.loads(server_cli("sources", "show", "nvd", "--json", ledger=ledger_path).stdout)
        assert shown["paused"]["reason"] == "maintenance" and shown["last_tick"] is not None
