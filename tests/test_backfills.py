"""Backfills: one job per window, covered windows suppressed, 10,000 windows in one transaction (all or
nothing), progress and watermark derived from the jobs, cancel, the audit entry, every bad input refused
with the ledger unchanged, the HTTP header rules (X-Orch-Reason, X-Orch-Ticket) and the terminal progress bar.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pytest
from conftest import list_all, run_cli_on_a_terminal

from airgap_orch.ledger import Ledger
from airgap_orch.operations import audit as audit_ops
from airgap_orch.operations import backfills as backfill_ops
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.orchestrator import backfills as core

REQUEST = {"tenant": "acme", "project": "feeds", "type": "advisory.ingest", "from": "2024-03-01",
           "to": "2024-03-02", "step": "1h"}
CREATE = ("backfill", "create", "--tenant", "acme", "--project", "feeds", "--type", "advisory.ingest",
          "--from", "2024-03-01", "--to", "2024-03-02", "--step", "1h")
AUDITED = ("--reason", "mirror outage", "--ticket", "OPS-1234")


def snapshot(path: Path) -> dict:
    """What a refusal must leave alone: ledger info (history count and head), audit log, backfills, jobs."""
    with Ledger.open(path, lock_timeout=5) as ledger:
        read = ledger.read()
        info = ledger_ops.info(ledger)
        return {"history_entries": info["history_entries"], "history_head": info["history_head"],
                "jobs": info["jobs"], "audit": read.rows("audit_scan"),
                "backfills": read.rows("backfill_list", tenant=None, job_type=None, state=None, limit=1000,
                                       tenants=None),
                "windows": read.con.execute("SELECT count(*) FROM backfill_windows").fetchone()[0]}


def jobs_by_window(ledger: Ledger, job_type: str = "advisory.ingest") -> dict[str, dict]:
    """{window start: job} for the jobs of `job_type`."""
    return {job["payload"]["window"]["start"]: job
            for job in ops.list_jobs(ledger, job_type=job_type, limit=100_000)["jobs"] if "window" in job["payload"]}


def test_one_job_per_window_carries_the_window_and_the_backfill_is_audited(ledger_path, cli):
    result = cli(*CREATE[:-4], "--to", "2024-03-01T02:30", "--step", "1h", *AUDITED,
                 "--payload", '{"feed": "nvd"}', "--priority", "-3", "--json")
    assert result.code == 0, result
    created = result.json
    assert (created["windows"], created["created"], created["suppressed"]) == (3, 3, 0)
    assert (created["reason"], created["ticket"], created["state"]) == ("mirror outage", "OPS-1234", "active")
    assert created["progress"] == {"total": 3, "done": 0, "by_state": {"queued": 3}}
    assert created["watermark"] is None and created["complete"] is False
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        jobs = jobs_by_window(ledger)
        entries = audit_ops.list_entries(ledger)["entries"]
        assert ledger_ops.verify(ledger)["ok"]
    assert sorted((job["payload"]["window"]["start"], job["payload"]["window"]["end"]) for job in jobs.values()) == [
        ("2024-03-01T00:00:00.000000Z", "2024-03-01T01:00:00.000000Z"),
        ("2024-03-01T01:00:00.000000Z", "2024-03-01T02:00:00.000000Z"),
        ("2024-03-01T02:00:00.000000Z", "2024-03-01T02:30:00.000000Z"),  # the last window ends at --to
    ]
    for job in jobs.values():
        assert job["payload"]["feed"] == "nvd" and job["priority"] == -3 and job["state"] == "queued"
        assert job["correlation_id"] == f"backfill:{created['backfill_id']}"
        window = job["payload"]["window"]
        assert job["idempotency_key"] == f"backfill:advisory.ingest:{window['start']}:{window['end']}"
    (entry,) = entries
    assert (entry["action"], entry["actor"], entry["reason"], entry["ticket"], entry["target"]) == (
        "backfill.create", "cli", "mirror outage", "OPS-1234", created["backfill_id"])
    assert entry["details"]["windows"] == 3 and entry["details"]["created"] == 3
    listed = cli("backfill", "list", "--json").json["backfills"]
    assert [b["backfill_id"] for b in listed] == [created["backfill_id"]]


def test_rerun_and_overlapping_backfills_suppress_covered_windows(ledger):
    first = backfill_ops.create(ledger, dict(REQUEST), reason="r", ticket="T-1")
    assert (first["created"], first["suppressed"]) == (24, 0)
    history_before = ledger.head_seq
    again = backfill_ops.create(ledger, dict(REQUEST), reason="r", ticket="T-1")
    assert (again["windows"], again["created"], again["suppressed"]) == (24, 0, 24)
    assert again["progress"]["total"] == 0
    assert ledger.head_seq == history_before, "a re-run enqueues nothing"
    # Overlapping: 12:00 on the 1st to 12:00 on the 2nd: the first 12 windows exist, 12 are new.
    overlap = backfill_ops.create(ledger, {**REQUEST, "from": "2024-03-01T12:00", "to": "2024-03-02T12:00"},
                                  reason="r", ticket="T-2")
    assert (overlap["created"], overlap["suppressed"]) == (12, 12)
    # A job enqueued by hand whose payload window contains hours of the 3rd covers them too.
    ops.enqueue(ledger, {"tenant": "acme", "project": "feeds", "type": "advisory.ingest",
                         "payload": {"window": {"start": "2024-03-03T05:00:00+00:00", "end": "2024-03-03T10:00Z"}}})
    third = backfill_ops.create(ledger, {**REQUEST, "from": "2024-03-03", "to": "2024-03-04"}, reason="r",
                                ticket="T-3")
    assert (third["created"], third["suppressed"]) == (19, 5)
    # Not covered: another tenant, another type, or a window larger than any existing one.
    assert backfill_ops.create(ledger, {**REQUEST, "tenant": "globex"}, reason="r", ticket="T")["created"] == 24
    assert backfill_ops.create(ledger, {**REQUEST, "type": "vex.ingest"}, reason="r", ticket="T")["created"] == 24
    assert backfill_ops.create(ledger, {**REQUEST, "step": "1d"}, reason="r", ticket="T")["created"] == 1
    windows = [(job["payload"]["window"]["start"], job["payload"]["window"]["end"])
               for job in ops.list_jobs(ledger, tenant="acme", job_type="advisory.ingest")["jobs"]]
    assert len(windows) == len(set(windows)) == 24 + 12 + 1 + 19 + 1, "no window of acme/advisory.ingest twice"
    assert ledger_ops.verify(ledger)["ok"]


def test_10000_windows_are_created_in_one_transaction_quickly(ledger):
    request = {**REQUEST, "from": "2024-01-01", "to": "2024-01-07T22:40", "step": "1m"}
    history_before = ledger.head_seq
    started = time.perf_counter()
    created = backfill_ops.create(ledger, request, reason="replay a week of feeds", ticket="OPS-10000")
    seconds = time.perf_counter() - started
    print(f"\n10,000 windows created in {seconds:.2f}s")
    assert (created["windows"], created["created"]) == (10_000, 10_000)
    assert ledger.head_seq == history_before + 10_000
    assert list_all(ledger)["jobs"].__len__() == 10_000
    assert seconds < 30, f"10,000 windows took {seconds:.1f}s"
    started = time.perf_counter()
    again = backfill_ops.create(ledger, request, reason="again", ticket="OPS-10000")
    print(f"re-run (all 10,000 suppressed) in {time.perf_counter() - started:.2f}s")
    assert (again["created"], again["suppressed"]) == (0, 10_000)


def test_one_bad_record_among_10000_leaves_nothing_behind(ledger_path, ledger):
    before = snapshot(ledger_path) | {"head_seq": ledger.head_seq}
    request = {**REQUEST, "from": "2024-01-01", "to": "2024-01-07T22:40", "step": "1m"}
    plan = backfill_ops.plan(request, reason="r", ticket="T")
    records = backfill_ops.job_records(plan, {})
    assert len(records) == 10_000
    records[7_777] = {**records[7_777], "project": None}  # the jobs table refuses it inside the transaction
    # duckdb.Error: store.execute_with currently reports the aborted transaction, not the constraint itself.
    with pytest.raises(duckdb.Error), ledger.transaction() as tx:
        core.create(tx, plan, records, actor="test")
    assert snapshot(ledger_path) | {"head_seq": ledger.head_seq} == before
    assert ledger_ops.verify(ledger)["ok"]


def test_progress_and_watermark_follow_the_jobs(ledger):
    created = backfill_ops.create(ledger, {**REQUEST, "to": "2024-03-01T06:00", "max_attempts": 1},
                                  reason="r", ticket="T")
    backfill = created["backfill_id"]
    jobs = jobs_by_window(ledger)
    starts = sorted(jobs)
    leases = {lease["job_id"]: lease["lease_id"]
              for lease in ops.claim(ledger, worker_id="w", limit=10, lease_seconds=600)["leases"]}
    assert len(leases) == 6

    def finish(index: int, *, ok: bool = True) -> None:
        job_id = jobs[starts[index]]["job_id"]
        if ok:
            ops.ack(ledger, job_id, leases[job_id])
        else:
            ops.fail(ledger, job_id, leases[job_id], error="upstream 500")

    finish(0), finish(1), finish(3)
    shown = backfill_ops.show(ledger, backfill)
    assert shown["progress"] == {"total": 6, "done": 3, "by_state": {"leased": 3, "succeeded": 3}}
    assert shown["watermark"] == "2024-03-01T02:00:00.000000Z", "window 3 succeeded but window 2 has not"
    finish(2, ok=False)
    shown = backfill_ops.show(ledger, backfill)
    assert shown["progress"]["by_state"] == {"dead_letter": 1, "leased": 2, "succeeded": 3}
    assert shown["watermark"] == "2024-03-01T02:00:00.000000Z"
    (replay,) = ops.replay(ledger, [jobs[starts[2]]["job_id"]])["replays"]
    (lease,) = ops.claim(ledger, worker_id="w", limit=1)["leases"]
    assert lease["job_id"] == replay["job_id"], "a replay runs first (priority 100)"
    ops.ack(ledger, lease["job_id"], lease["lease_id"])
    assert backfill_ops.show(ledger, backfill)["watermark"] == "2024-03-01T04:00:00.000000Z"
    finish(4), finish(5)
    shown = backfill_ops.show(ledger, backfill)
    assert shown["watermark"] == shown["to"] == "2024-03-01T06:00:00.000000Z" and shown["complete"] is True
    assert shown["progress"]["done"] == 6


def test_cancel_cancels_queued_jobs_requests_running_ones_and_is_audited(ledger_path, cli):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        backfill = backfill_ops.create(ledger, {**REQUEST, "to": "2024-03-01T04:00"}, reason="r",
                                       ticket="T")["backfill_id"]
        (lease,) = ops.claim(ledger, worker_id="w", limit=1, lease_seconds=600)["leases"]
        ops.heartbeat(ledger, lease["job_id"], lease["lease_id"])
    result = cli("backfill", "cancel", backfill, "--reason", "wrong feed", "--ticket", "OPS-9", "--json")
    assert result.code == 0, result
    assert result.json == {"backfill_id": backfill, "state": "canceled", "canceled": 3, "cancel_requested": 1}
    again = cli("backfill", "cancel", backfill, "--reason", "twice")
    assert again.code == 3 and "already canceled" in again.stderr, again
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        shown = backfill_ops.show(ledger, backfill)
        running = ops.show(ledger, lease["job_id"])
        heartbeat = ops.heartbeat(ledger, lease["job_id"], lease["lease_id"])
        entries = audit_ops.list_entries(ledger)["entries"]
        assert ledger_ops.verify(ledger)["ok"]
    assert (shown["state"], shown["canceled_by"], shown["cancel_reason"]) == ("canceled", "cli", "wrong feed")
    assert shown["progress"]["by_state"] == {"canceled": 3, "running": 1}
    assert running["cancel_requested"] is True and heartbeat["cancel_requested"] is True
    assert [(e["action"], e["actor"], e["reason"], e["ticket"]) for e in entries] == [
        ("backfill.create", "cli", "r", "T"), ("backfill.cancel", "cli", "wrong feed", "OPS-9")]
    assert entries[1]["details"]["canceled"] == 3 and entries[1]["details"]["cancel_requested"] == 1


BAD = [
    ("unknown_backfill_show", ("backfill", "show", "{missing}"), (1,), "no backfill"),
    ("unknown_backfill_cancel", ("backfill", "cancel", "{missing}", "--reason", "r"), (1,), "no backfill"),
    ("non_uuid_backfill", ("backfill", "show", "bf-1"), (1,), "not a UUID"),
    ("from_after_to", (*CREATE[:-6], "--from", "2024-03-02", "--to", "2024-03-01", "--step", "1h", *AUDITED),
     (1,), "must be before"),
    ("from_equals_to", (*CREATE[:-6], "--from", "2024-03-01", "--to", "2024-03-01", "--step", "1h", *AUDITED),
     (1,), "must be before"),
    ("zero_step", (*CREATE[:-2], "--step", "0h", *AUDITED), (1,), "step"),
    ("negative_step", (*CREATE[:-2], "--step", "-1h", *AUDITED), (1, 2), "step"),
    ("garbage_step", (*CREATE[:-2], "--step", "hourly", *AUDITED), (1,), "step"),
    ("too_many_windows", (*CREATE[:-6], "--from", "2000-01-01", "--to", "2024-01-01", "--step", "1m", *AUDITED),
     (1,), str(core.MAX_WINDOWS)),
    ("garbage_date", (*CREATE[:-6], "--from", "March 2024", "--to", "2024-03-02", "--step", "1h", *AUDITED),
     (1,), "ISO 8601"),
    ("reason_over_256", (*CREATE, "--reason", "r" * 257, "--ticket", "T"), (1,), "257"),
    ("ticket_over_128", (*CREATE, "--reason", "r", "--ticket", "T" * 129), (1,), "129"),
    ("missing_reason", (*CREATE, "--ticket", "T"), (1,), "reason is required"),
    ("missing_ticket", (*CREATE, "--reason", "r"), (1,), "ticket is required"),
    ("payload_not_object", (*CREATE, *AUDITED, "--payload", "[1]"), (1,), "payload must be object"),
    ("payload_with_window", (*CREATE, *AUDITED, "--payload", '{"window": 1}'), (1,), "window"),
    ("cancel_without_reason", ("backfill", "cancel", "{existing}"), (1,), "reason is required"),
]


def test_every_bad_backfill_input_exits_1_or_2_with_one_line_and_changes_nothing(ledger_path):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        existing = backfill_ops.create(ledger, {**REQUEST, "to": "2024-03-01T03:00"}, reason="r",
                                       ticket="T")["backfill_id"]
    values = {"missing": str(uuid.uuid4()), "existing": existing}
    before = snapshot(ledger_path)
    commands = [tuple(values.get(arg[1:-1], arg) if arg.startswith("{") else arg for arg in args)
                for _, args, _, _ in BAD]
    for (name, _, codes, text), result in zip(BAD, run_parallel(ledger_path, commands), strict=True):
        assert result.code in codes, (name, result)
        assert result.stdout == "", (name, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (name, result)
    assert snapshot(ledger_path) == before


def run_parallel(ledger_path: Path, commands: list[tuple[str, ...]]) -> list:
    """The real CLI, several at once (each waits its turn for the ledger)."""
    from server_fixtures import run_cli_parallel

    return run_cli_parallel([("--lock-timeout", "60", *args) for args in commands], ledger=ledger_path, timeout=120)


def test_http_backfills_need_reason_and_ticket_headers_and_refusals_change_nothing(ledger_path):
    from server_fixtures import assert_problem, serving

    body = dict(REQUEST)
    with serving(ledger_path, "--no-auth") as server:
        def state() -> tuple:
            info = server.ledger_info()
            return (info["history_entries"], info["history_head"],
                    len(server.request("GET", "/v1/audit").json["entries"]),
                    len(server.request("GET", "/v1/backfills").json["backfills"]))

        before = state()
        for headers, missing in (({}, "X-Orch-Reason"), ({"X-Orch-Reason": "outage"}, "X-Orch-Ticket"),
                                 ({"X-Orch-Ticket": "OPS-1"}, "X-Orch-Reason"),
                                 ({"X-Orch-Reason": " ", "X-Orch-Ticket": "OPS-1"}, "X-Orch-Reason")):
            problem = assert_problem(server.request("POST", "/v1/backfills", body, headers=headers), 400,
                                     "invalid-input", 1)
            assert missing in problem["detail"], problem
        both = {"X-Orch-Reason": "outage", "X-Orch-Ticket": "OPS-1"}
        assert_problem(server.request("POST", "/v1/backfills", {**body, "reason": "in the body"}, headers=both),
                       400, "invalid-input", 1)
        assert_problem(server.request("POST", "/v1/backfills", {**body, "step": "0m"}, headers=both),
                       400, "invalid-input", 1)
        assert_problem(server.request("POST", "/v1/backfills", body,
                                      headers={**both, "X-Orch-Reason": "r" * 257}), 400, "invalid-input", 1)
        assert state() == before

        created = server.request("POST", "/v1/backfills", body, headers=both)
        assert created.status == 200, created
        backfill = created.json["backfill_id"]
        assert (created.json["reason"], created.json["ticket"], created.json["created"]) == ("outage", "OPS-1", 24)
        shown = server.request("GET", f"/v1/backfills/{backfill}").json
        assert shown["progress"]["total"] == 24
        assert_problem(server.request("GET", f"/v1/backfills/{uuid.uuid4()}"), 404, "not-found", 1)
        after_create = state()
        assert_problem(server.request("POST", f"/v1/backfills/{backfill}/cancel"), 400, "invalid-input", 1)
        assert state() == after_create
        canceled = server.request("POST", f"/v1/backfills/{backfill}/cancel", headers={"X-Orch-Reason": "stop"})
        assert canceled.status == 200 and canceled.json["canceled"] == 24, canceled
        # The CLI finds the live server that owns the ledger and sends the headers itself.
        routed = subprocess.run([sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), *CREATE[:-6],
                                 "--from", "2024-03-05", "--to", "2024-03-06", "--step", "6h", *AUDITED, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert routed.returncode == 0, routed
        assert json.loads(routed.stdout)["created"] == 4
        entries = server.request("GET", "/v1/audit").json["entries"]
    assert [(e["action"], e["actor"], e["reason"], e["ticket"]) for e in entries] == [
        ("backfill.create", "http:no-auth", "outage", "OPS-1"), ("backfill.cancel", "http:no-auth", "stop", None),
        ("backfill.create", "http:no-auth", "mirror outage", "OPS-1234")]


def test_create_shows_a_progress_bar_on_a_terminal_and_nothing_otherwise(ledger_path):
    result, shown = run_cli_on_a_terminal(ledger_path, *CREATE[:-6], "--from", "2024-01-01", "--to",
                                          "2024-01-02T12:00", "--step", "1m", *AUDITED)
    assert result.code == 0, shown
    assert b"building window jobs" in shown and b"2160/2160" in shown, shown[-500:]
    assert "windows: 2160" in result.stdout
    quiet = subprocess.run([sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), *CREATE[:-6],
                            "--from", "2024-01-03", "--to", "2024-01-04", "--step", "1m", *AUDITED],
                           capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet


def test_http_backfills_need_the_backfill_scope_and_stay_within_the_tokens_tenants(ledger_path, tmp_path):
    from server_fixtures import Keys, assert_problem, serving

    keys = Keys(tmp_path / "keys")
    tokens = keys.issue_many({
        "reader": {"tenants": ["acme"], "scopes": ["orch:read"]},
        "alice": {"tenants": ["acme"], "scopes": ["orch:backfill", "orch:read"]},
        "globex": {"tenants": ["globex"], "scopes": ["orch:backfill", "orch:read"]},
    })
    headers = {"X-Orch-Reason": "outage", "X-Orch-Ticket": "OPS-7"}
    with serving(ledger_path, "--token-key", str(keys.public_key)) as server:
        assert_problem(server.request("POST", "/v1/backfills", REQUEST, headers=headers, token=tokens["reader"]),
                       403, "forbidden", 7)
        assert_problem(server.request("POST", "/v1/backfills", REQUEST, headers=headers, token=tokens["globex"]),
                       403, "forbidden", 7)
        assert server.request("GET", "/v1/audit", token=tokens["reader"]).json["entries"] == []
        created = server.request("POST", "/v1/backfills", REQUEST, headers=headers, token=tokens["alice"])
        assert created.status == 200, created
        backfill = created.json["backfill_id"]
        assert created.json["created_by"] == "token:alice"
        assert server.request("GET", f"/v1/backfills/{backfill}", token=tokens["reader"]).status == 200
        assert_problem(server.request("GET", f"/v1/backfills/{backfill}", token=tokens["globex"]), 404, "not-found")
        assert server.request("GET", "/v1/backfills", token=tokens["globex"]).json["backfills"] == []
        assert_problem(server.request("POST", f"/v1/backfills/{backfill}/cancel", headers=headers,
                                      token=tokens["reader"]), 403, "forbidden", 7)
        assert_problem(server.request("POST", f"/v1/backfills/{backfill}/cancel", headers=headers,
                                      token=tokens["globex"]), 404, "not-found", 1)
        (entry,) = server.request("GET", "/v1/audit", token=tokens["reader"]).json["entries"]
        assert server.request("GET", "/v1/audit", token=tokens["globex"]).json["entries"] == [], \
            "a token sees the audit entries of its own tenants only"
    assert (entry["action"], entry["actor"], entry["reason"], entry["ticket"]) == (
        "backfill.create", "token:alice", "outage", "OPS-7")


def test_a_step_that_reaches_past_year_9999_makes_one_window_ending_at_to(ledger):
    """The schema allows any step up to 999999999 units; one reaching past the calendar's end is still one window
    [from, to) (found by schemathesis: it was a 500 from a date overflow)."""
    request = {**REQUEST, "from": "0188-11-22T14:46:11Z", "to": "0404-01-24T02:15:07Z", "step": "951719991h"}
    created = backfill_ops.create(ledger, request, reason="far", ticket="T-9999")
    assert (created["windows"], created["created"]) == (1, 1), created
    (job,) = [job for job in ops.list_jobs(ledger, job_type="advisory.ingest")["jobs"]]
    assert job["payload"]["window"] == {"start": "0188-11-22T14:46:11.000000Z", "end": "0404-01-24T02:15:07.000000Z"}
