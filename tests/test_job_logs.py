"""Job logs (issue 17): ctx.log lines ride on heartbeats and acks, are stored per job in the ledger with a sequence
number and the job's provenance, bounded per job (a marker says how many went) and by a retention window, refused
with a stale report, hidden from other tenants, and served as pages, as an SSE stream (`?follow=1`, resumable with
Last-Event-ID) and by `jobs logs [--follow]`.

Real components: a server subprocess on loopback, the SDK worker over HTTP, CLI subprocesses, the in-process runner
on a real ledger file."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from server_fixtures import (
    Keys,
    SseStream,
    _cli_command,
    assert_problem,
    cli_env,
    init_ledger,
    run_cli,
    send,
    serving,
)
from test_lease_tracker import SettableClock

from airgap_orch import clock
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.operations.writer import LedgerWriter
from airgap_orch.orchestrator import joblogs
from airgap_orch.sdk import Worker
from airgap_orch.worker import Runner, RunnerConfig

FLUSH_DEADLINE = 1.0  # README: a line is flushed within a second


def _enqueue(url: str, *, tenant: str = "acme", job_type: str = "logs.demo", token: str | None = None,
             correlation_id: str | None = "corr-17") -> str:
    spec = {"tenant": tenant, "project": "web", "type": job_type, "payload": {}}
    if correlation_id is not None:
        spec["correlation_id"] = correlation_id
    response = send(url, "POST", "/v1/jobs", spec, token=token)
    assert response.status == 200, response
    return response.json["job_id"]


def _claim(url: str, job_type: str = "logs.demo", token: str | None = None) -> dict[str, Any]:
    response = send(url, "POST", "/v1/jobs/claim", {"worker_id": "w-test", "type": job_type, "lease_seconds": 30},
                    token=token)
    assert response.status == 200 and response.json["leases"], response
    return response.json["leases"][0]


def _heartbeat(url: str, lease: dict[str, Any], lines: list[str], token: str | None = None):
    return send(url, "POST", f"/v1/jobs/{lease['job_id']}/heartbeat",
                {"lease_id": lease["lease_id"], "logs": [{"message": line} for line in lines]}, token=token)


def _logs(url: str, job_id: str, token: str | None = None, **query: Any) -> dict[str, Any]:
    response = send(url, "GET", f"/v1/jobs/{job_id}/logs", token=token, query=query or None)
    assert response.status == 200, response
    return response.json


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    with serving(init_ledger(tmp_path / "logs.duckdb"), "--no-auth", "--job-log-lines", "10") as started:
        yield started


class RunningWorker:
    def __init__(self, worker: Worker, job_type: str, handler: Any):
        worker.add_handler(job_type, handler)
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(30)


# -- the SDK over HTTP ----------------------------------------------------------------------------------------

def test_handler_log_lines_are_stored_in_order_with_job_attempt_lease_tenant_project_and_correlation_id(server):
    job_id = _enqueue(server.url)
    seen: dict[str, Any] = {}

    def handler(ctx):
        seen["lease_id"] = ctx.lease_id
        ctx.log("fetching feed")
        ctx.log("parsed 3 advisories", level="debug")
        ctx.log("one advisory had no CVE id", level="warning")
        return None

    running = RunningWorker(Worker(server.url, None, concurrency=1, claim_wait=1), "logs.demo", handler)
    try:
        page = wait_for(lambda: (p := _logs(server.url, job_id))["final"] and p, 20, "the job to end")
    finally:
        running.stop()
    assert page["state"] == "succeeded"
    assert [line["message"] for line in page["lines"]] == [
        "fetching feed", "parsed 3 advisories", "one advisory had no CVE id"]
    assert [line["seq"] for line in page["lines"]] == [1, 2, 3]
    assert [line["level"] for line in page["lines"]] == ["info", "debug", "warning"]
    for line in page["lines"]:
        assert (line["job_id"], line["attempt"], line["lease_id"], line["tenant"], line["project"],
                line["correlation_id"]) == (job_id, 1, seen["lease_id"], "acme", "web", "corr-17")
        assert line["at"] and line["stored_at"] and line["dropped"] is None


def test_a_running_jobs_lines_reach_the_server_within_a_second(server):
    job_id = _enqueue(server.url)
    logged_at: list[float] = []
    release = threading.Event()

    def handler(ctx):
        time.sleep(0.3)  # past the first heartbeat: the line needs a beat of its own
        logged_at.append(time.monotonic())
        ctx.log("still working")
        release.wait(30)
        return None

    running = RunningWorker(Worker(server.url, None, concurrency=1, claim_wait=1, lease_seconds=30), "logs.demo",
                            handler)
    try:
        page = wait_for(lambda: (p := _logs(server.url, job_id))["lines"] and p, 20, "the line", every=0.02)
        arrived = time.monotonic()
        assert page["state"] == "running"  # stored while the job runs, not with its ack
        assert arrived - logged_at[0] < FLUSH_DEADLINE + 0.5, arrived - logged_at[0]
        release.set()
        wait_for(lambda: _logs(server.url, job_id)["final"], 20, "the job to end")
    finally:
        release.set()
        running.stop()


# -- bounds ---------------------------------------------------------------------------------------------------

def test_a_job_logging_past_its_buffer_keeps_the_newest_lines_after_a_marker_that_counts_the_dropped(server):
    job_id = _enqueue(server.url)
    lease = _claim(server.url)
    for start in (0, 8, 16):
        assert _heartbeat(server.url, lease, [f"line {n}" for n in range(start, start + 8)]).status == 200
    lines = _logs(server.url, job_id)["lines"]
    assert len(lines) == 10  # serve --job-log-lines 10: the marker and the 9 newest
    marker, kept = lines[0], lines[1:]
    assert marker["seq"] == 15 and marker["dropped"] == 15 and marker["level"] == "warning"
    assert "15 earlier lines dropped" in marker["message"]
    assert [line["message"] for line in kept] == [f"line {n}" for n in range(15, 24)]
    assert [line["seq"] for line in kept] == list(range(16, 25))


def test_a_too_long_line_or_too_many_lines_are_refused_with_400_and_store_nothing(server, tmp_path):
    job_id = _enqueue(server.url)
    lease = _claim(server.url)
    long_line = _heartbeat(server.url, lease, ["x" * 2049])
    problem = assert_problem(long_line, 400, exit_code=1)
    assert "2048" in problem["detail"]
    too_many = _heartbeat(server.url, lease, ["y"] * 201)
    problem = assert_problem(too_many, 400, exit_code=1)
    assert "200" in problem["detail"]
    cli = run_cli("--server", server.url, "jobs", "heartbeat", job_id, "--lease", lease["lease_id"],
                  "--log", "z" * 2049)
    assert cli.code == 1, cli
    assert len(cli.stderr.strip().splitlines()) == 1 and "2048" in cli.stderr
    assert _logs(server.url, job_id)["lines"] == []


def test_lines_stored_before_the_retention_window_are_pruned(tmp_path, manual_clock):
    ledger = Ledger.open(init_ledger(tmp_path / "retention.duckdb"))
    try:
        ledger.job_log_limits = joblogs.Limits(lines=100, retention_seconds=3600)
        job_id = dispatch.run(ledger, "jobs.enqueue", {"spec": {"tenant": "acme", "project": "web", "type": "t",
                                                                "payload": {}}})["job_id"]
        lease = dispatch.run(ledger, "jobs.claim", {"worker_id": "w", "lease_seconds": 7200})["leases"][0]
        ids = {"job_id": job_id, "lease_id": lease["lease_id"]}
        dispatch.run(ledger, "jobs.heartbeat", {**ids, "logs": [{"message": "old"}]})
        manual_clock.advance(3000)
        dispatch.run(ledger, "jobs.heartbeat", {**ids, "logs": [{"message": "newer"}]})
        manual_clock.advance(1000)  # "old" is 4000 s old now, "newer" 1000 s
        writer = LedgerWriter(ledger)  # a writer prunes at its first batch
        writer.start()
        try:
            writer.call("jobs.heartbeat", {**ids, "logs": [{"message": "newest"}]})
        finally:
            writer.stop()
        lines = dispatch.run(ledger, "jobs.logs", {"job_id": job_id})["lines"]
        assert [(line["seq"], line["message"]) for line in lines] == [(2, "newer"), (3, "newest")]
    finally:
        ledger.close()


# -- refusals -------------------------------------------------------------------------------------------------

def test_log_lines_from_a_stale_lease_are_refused_with_it_and_nothing_is_stored(server):
    job_id = _enqueue(server.url)
    lease = _claim(server.url)
    acked = send(server.url, "POST", f"/v1/jobs/{job_id}/ack", {"lease_id": lease["lease_id"],
                                                                 "logs": [{"message": "done"}]})
    assert acked.status == 200, acked
    stale = _heartbeat(server.url, lease, ["after the end"])
    assert_problem(stale, 409, exit_code=3)
    late_fail = send(server.url, "POST", f"/v1/jobs/{job_id}/fail", {"lease_id": lease["lease_id"], "error": "x",
                                                                     "logs": [{"message": "late fail"}]})
    assert_problem(late_fail, 409, exit_code=3)
    assert [line["message"] for line in _logs(server.url, job_id)["lines"]] == ["done"]


def test_another_tenants_job_logs_are_not_found_in_a_page_or_a_stream(tmp_path):
    keys = Keys(tmp_path)
    tokens = keys.issue_many({"acme": {"tenants": ["acme"]}, "globex": {"tenants": ["globex"]}})
    with serving(init_ledger(tmp_path / "tenants.duckdb"), "--token-key", str(keys.public_key)) as server:
        job_id = _enqueue(server.url, token=tokens["acme"])
        lease = _claim(server.url, token=tokens["acme"])
        assert _heartbeat(server.url, lease, ["secret-free line"], token=tokens["acme"]).status == 200
        assert len(_logs(server.url, job_id, token=tokens["acme"])["lines"]) == 1
        other = send(server.url, "GET", f"/v1/jobs/{job_id}/logs", token=tokens["globex"])
        assert_problem(other, 404, exit_code=1)
        with SseStream(server.url, token=tokens["globex"], path=f"/v1/jobs/{job_id}/logs",
                       query={"follow": "1"}) as stream:
            assert stream.status == 404
        cli = run_cli("--server", server.url, "jobs", "logs", job_id, env={"AIRGAP_ORCH_TOKEN": tokens["globex"]})
        assert cli.code == 1 and "no job" in cli.stderr, cli


# -- following ------------------------------------------------------------------------------------------------

def test_follow_streams_lines_live_and_resumes_with_last_event_id_without_duplicates(server):
    job_id = _enqueue(server.url)
    lease = _claim(server.url)
    path = f"/v1/jobs/{job_id}/logs"
    with SseStream(server.url, path=path, query={"follow": "1"}) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        assert _heartbeat(server.url, lease, ["one", "two"]).status == 200
        first = [stream.next(10), stream.next(10)]
    assert [(event["id"], event["event"], event["data"]["message"]) for event in first] == [
        ("1", "line", "one"), ("2", "line", "two")]
    assert _heartbeat(server.url, lease, ["three", "four"]).status == 200  # while nobody follows
    with SseStream(server.url, path=path, query={"follow": "1"}, last_event_id=2) as stream:
        resumed = [stream.next(10), stream.next(10)]
        assert [(event["id"], event["data"]["message"]) for event in resumed] == [("3", "three"), ("4", "four")]
        acked = send(server.url, "POST", f"/v1/jobs/{job_id}/ack", {"lease_id": lease["lease_id"],
                                                                     "logs": [{"message": "five"}]})
        assert acked.status == 200, acked
        last = stream.next(10)
        end = stream.next(10)
    assert (last["id"], last["data"]["message"]) == ("5", "five")
    assert end["event"] == "end" and end["data"] == {"job_id": job_id, "state": "succeeded", "last_seq": 5}


def test_jobs_logs_follow_prints_lines_live_and_exits_when_the_job_ends(server):
    job_id = _enqueue(server.url)
    lease = _claim(server.url)
    assert _heartbeat(server.url, lease, ["before"]).status == 200
    process = subprocess.Popen(_cli_command(None, ["--server", server.url, "jobs", "logs", job_id, "--follow",
                                                   "--json"]),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert json.loads(process.stdout.readline())["message"] == "before"  # type: ignore[union-attr]
        assert _heartbeat(server.url, lease, ["while following"]).status == 200
        assert json.loads(process.stdout.readline())["message"] == "while following"  # type: ignore[union-attr]
        assert process.poll() is None  # the job still runs: the command waits
        acked = send(server.url, "POST", f"/v1/jobs/{job_id}/ack", {"lease_id": lease["lease_id"]})
        assert acked.status == 200, acked
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"end": {"job_id": job_id, "state": "succeeded", "last_seq": 2}}]
    listed = run_cli("--server", server.url, "jobs", "logs", job_id)
    assert listed.code == 0, listed
    assert ["before", "while following"] == [line.split("  ")[-1] for line in listed.stdout.splitlines()]


# -- worker run (in-process, on the ledger) -------------------------------------------------------------------

def test_worker_run_handlers_log_through_heartbeats_and_the_ack(tmp_path):
    ledger = Ledger.open(init_ledger(tmp_path / "runner.duckdb"))
    release = threading.Event()
    try:
        job_id = dispatch.run(ledger, "jobs.enqueue", {"spec": {"tenant": "acme", "project": "web", "type": "t",
                                                                "payload": {}}})["job_id"]

        def handler(ctx):
            ctx.log("begun")
            release.wait(30)
            ctx.log("ending", level="error")
            return None

        runner = Runner(ledger, RunnerConfig(handlers={"t": handler}, worker_id="runner-1", concurrency=1,
                                             max_jobs=1, poll_seconds=0.05,
                                             job_log_limits=joblogs.Limits(lines=50)))
        thread = threading.Thread(target=runner.run, kwargs={"handle_signals": False}, daemon=True)
        thread.start()
        page = wait_for(lambda: (p := dispatch.run(ledger, "jobs.logs", {"job_id": job_id}))["lines"] and p, 10,
                        "the first line")
        assert page["state"] == "running" and page["lines"][0]["message"] == "begun"
        release.set()
        thread.join(30)
        lines = dispatch.run(ledger, "jobs.logs", {"job_id": job_id})["lines"]
        assert [(line["seq"], line["message"], line["level"]) for line in lines] == [
            (1, "begun", "info"), (2, "ending", "error")]
        assert lines[1]["lease_id"] == lines[0]["lease_id"] and lines[0]["tenant"] == "acme"
    finally:
        release.set()
        ledger.close()


def test_stored_log_lines_use_the_servers_time_for_retention_and_the_workers_for_at(tmp_path, manual_clock):
    ledger = Ledger.open(init_ledger(tmp_path / "times.duckdb"))
    try:
        job_id = dispatch.run(ledger, "jobs.enqueue", {"spec": {"tenant": "acme", "project": "web", "type": "t",
                                                                "payload": {}}})["job_id"]
        lease = dispatch.run(ledger, "jobs.claim", {"worker_id": "w"})["leases"][0]
        dispatch.run(ledger, "jobs.ack", {"job_id": job_id, "lease_id": lease["lease_id"],
                                          "logs": [{"message": "m", "at": "2026-01-31T12:00:00Z"}]})
        (line,) = dispatch.run(ledger, "jobs.logs", {"job_id": job_id})["lines"]
        assert line["at"] == "2026-01-31T12:00:00.000000Z"
        assert line["stored_at"] == clock.iso(manual_clock.current)
    finally:
        ledger.close()


# -- the lease tracker's rules (settable clock; answers handed in as a transport would) ---------------------------

def _tracked(clock_: SettableClock) -> tuple[Any, Any]:
    from airgap_orch.worker.leases import LeaseTracker

    tracker = LeaseTracker(30.0, clock=clock_)
    lease = {"job_id": "job-1", "lease_id": "lease-1", "attempt": 1, "max_attempts": 3, "payload": {},
             "tenant": "acme", "project": "p", "type": "work", "queue": "default"}
    job = tracker.track(lease, lambda ctx: None, "w")
    assert tracker.start(job)
    beats, _ = tracker.due_beats()
    assert beats == []
    clock_.advance(0.25)  # the first beat (0.2 s) goes, with no line yet
    (first,) = tracker.due_beats()[0]
    assert tracker.beat_wanted(first) and "logs" not in first.params
    tracker.beat_sent(first, {"state": "running", "cancel_requested": False})
    return tracker, job


def test_a_logged_line_makes_a_heartbeat_due_within_half_a_second_that_carries_it():
    from airgap_orch.worker.leases import LOG_FLUSH_SECONDS

    clock_ = SettableClock()
    tracker, job = _tracked(clock_)
    assert tracker.due_beats()[1] > 9  # nothing logged: the next beat is lease/3 away
    job.ctx.log("hello")
    beats, wait = tracker.due_beats()
    assert beats == [] and wait == pytest.approx(LOG_FLUSH_SECONDS)
    clock_.advance(LOG_FLUSH_SECONDS)
    (beat,) = tracker.due_beats()[0]
    assert tracker.beat_wanted(beat)
    assert [line["message"] for line in beat.params["logs"]] == ["hello"]


def test_the_report_takes_back_the_lines_of_a_beat_not_sent_yet_and_keeps_their_order():
    from airgap_orch.worker.leases import report_request

    clock_ = SettableClock()
    tracker, job = _tracked(clock_)
    job.ctx.log("one")
    clock_.advance(0.5)
    (beat,) = tracker.due_beats()[0]  # taken, not sent yet (queued behind other requests)
    job.ctx.log("two")
    tracker.handler_returned(job)
    from airgap_orch.worker.context import Outcome

    name, params = report_request(job, Outcome("ack"), tracker.final_logs(job))
    assert name == "jobs.ack" and [line["message"] for line in params["logs"]] == ["one", "two"]
    assert tracker.beat_wanted(beat) and "logs" not in beat.params  # the beat goes without them


def test_a_failed_heartbeat_gives_its_lines_back_and_a_refused_one_drops_them():
    from airgap_orch.errors import StaleLease

    clock_ = SettableClock()
    tracker, job = _tracked(clock_)
    job.ctx.log("kept")
    clock_.advance(0.5)
    (beat,) = tracker.due_beats()[0]
    assert tracker.beat_wanted(beat)
    tracker.beat_sent(beat, ConnectionError("server away"))
    clock_.advance(1.0)
    (again,) = tracker.due_beats()[0]
    assert tracker.beat_wanted(again) and [line["message"] for line in again.params["logs"]] == ["kept"]
    tracker.beat_sent(again, StaleLease("lease lost"))
    assert job.ctx.cancel_reason == "lease_lost"
    job.ctx.log("after the lease was lost")
    assert tracker.final_logs(job) == []


def test_a_handler_logging_faster_than_a_report_carries_keeps_the_newest_lines_after_a_marker():
    from airgap_orch import validation

    clock_ = SettableClock()
    tracker, job = _tracked(clock_)
    for n in range(validation.MAX_LOG_LINES + 50):
        job.ctx.log(f"line {n}")
    job.ctx.log("x" * (validation.MAX_LOG_LINE_CHARS + 10))
    lines = tracker.final_logs(job)
    assert len(lines) == validation.MAX_LOG_LINES
    assert lines[0]["level"] == "warning" and "52 lines dropped by the worker" in lines[0]["message"]
    assert lines[-1]["message"].endswith("…") and len(lines[-1]["message"]) == validation.MAX_LOG_LINE_CHARS
    assert validation.log_lines(lines)  # what the worker sends, the server takes
