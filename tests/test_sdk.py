"""The Python worker SDK against a real server subprocess on loopback: real HTTP, real tokens, real signals.

One server (with auth) is shared by the tests that do not stop it; each test uses its own job types and
tenants. The restart and embedded-mode tests run their own servers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from airgap_orch import clock
from airgap_orch.auth.keys import generate_key_pair, load_private_key
from airgap_orch.auth.tokens import issue_token
from airgap_orch.errors import Forbidden, NotAuthorized
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.sdk import OrchClient, PermanentError, RetryableError, ServerUnavailable, Worker

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"^airgap-orch serving .+ at (?P<url>http://\S+) \(pid (?P<pid>\d+)\)$")
ALL_SCOPES = ["orch:read", "orch:operate", "orch:worker"]
TENANTS = ["acme", "globex", "initech"]


# -- a real server ---------------------------------------------------------------------------------

class ServerProcess:
    """`airgap-orch --ledger L serve ...` in a subprocess; the URL comes from the first line it prints."""

    def __init__(self, ledger: Path, *args: str, port: int = 0):
        self.ledger = ledger
        self.log = ledger.with_name(f"server-{uuid.uuid4().hex[:8]}.log")  # stderr: read, never a full pipe
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger), "serve", "--port", str(port), *args],
                stdout=subprocess.PIPE, stderr=log, text=True, env=_clean_env())
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        match = SERVING.match(line.strip())
        if match is None:
            self.process.kill()
            raise AssertionError(f"server did not start: {line!r} {self.stderr()}")
        self.url = match["url"]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stderr(self) -> str:
        return self.log.read_text()[-4000:]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AIRGAP_ORCH_TOKEN", "AIRGAP_ORCH_SERVER")}
    return {**env, "PYTHONPATH": str(ROOT), **(extra or {})}


def _new_ledger(directory: Path) -> Path:
    path = directory / "ledger.duckdb"
    ledger_ops.init(path, site_id="site-sdk", lock_timeout=5)
    return path


class Keys:
    def __init__(self, directory: Path):
        pair = generate_key_pair(directory, "sdk")
        self.public = pair.public_key_path
        self._private = load_private_key(pair.private_key_path)

    def token(self, scopes: list[str], tenants: list[str] = TENANTS, subject: str = "sdk-test") -> str:
        return issue_token(self._private, subject=subject, tenants=tenants, scopes=scopes,
                           expires_in=timedelta(hours=1))


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A server with auth on: its URL, an operator client and a worker token."""
    directory = tmp_path_factory.mktemp("sdk-live")
    keys = Keys(directory)
    server = ServerProcess(_new_ledger(directory), "--token-key", str(keys.public))
    try:
        yield {"url": server.url, "server": server, "keys": keys,
               "operator": OrchClient(server.url, keys.token(ALL_SCOPES, subject="operator")),
               "worker_token": keys.token(["orch:worker"], subject="sdk-worker")}
    finally:
        server.stop()


# -- helpers -----------------------------------------------------------------------------------------

def enqueue(client: OrchClient, job_type: str, payloads: list[dict], *, tenant: str = "acme",
            **spec: Any) -> list[str]:
    jobs = [{"tenant": tenant, "project": "sdk", "type": job_type, "payload": payload, **spec}
            for payload in payloads]
    return client.call("jobs.enqueue_batch", {"jobs": jobs})["job_ids"]


def states(client: OrchClient, job_ids: list[str]) -> dict[str, str]:
    return {job_id: client.call("jobs.show", {"job_id": job_id})["state"] for job_id in job_ids}


def all_in(client: OrchClient, job_ids: list[str], wanted: set[str]) -> bool:
    return all(state in wanted for state in states(client, job_ids).values())


def events_of(job: dict) -> list[str]:
    return [entry["event_type"] for entry in job["history"]]


def heartbeated_past_its_claim(job: dict, lease_id: str) -> bool:
    """Whether a heartbeat on `lease_id` was accepted at or after the expiry its claim gave the lease: the attempt
    outlived its first lease, kept only by heartbeats (each sets the expiry to the beat's time + lease_seconds)."""
    if job["lease_id"] != lease_id or job["state"] != "running":
        return False
    held = clock.parse_iso(job["lease_expires_at"]) - clock.parse_iso(job["leased_at"])
    return held.total_seconds() >= 2 * job["lease_seconds"]


def hold_until_heartbeated_past_its_claim(client: OrchClient, ctx, job_id: str, lease_id: str,
                                          timeout: float = 30) -> bool:
    """Keep a handler busy until the server shows that job's lease kept past its claim by heartbeats (True), or
    until the handler is told to stop or `timeout` passes (False). A handshake instead of a sleep that must
    outlast the lease: under load it only takes longer."""
    deadline = time.monotonic() + timeout
    while not ctx.cancelled.wait(0.1):
        if heartbeated_past_its_claim(client.call("jobs.show", {"job_id": job_id}), lease_id):
            return True
        if time.monotonic() > deadline:
            return False
    return False


class RunningWorker:
    """A Worker running in a thread of the test process (stopped by the test)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.worker.run()
        except BaseException as error:  # surfaced by stop()
            self.error = error

    def stop(self, timeout: float = 30) -> dict:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def artifact_for(data: bytes, name: str) -> dict[str, str]:
    return {"uri": f"file:///sdk/{name}", "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "mime": "application/json"}


# -- handlers ----------------------------------------------------------------------------------------

def test_handlers_succeed_with_progress_and_artifacts(live):
    operator = live["operator"]
    job_ids = enqueue(operator, "sdk.ok", [{"n": n} for n in range(8)], tenant="globex")
    finished = []
    worker = Worker(live["url"], live["worker_token"], concurrency=4, claim_wait=2, on_finished=finished.append)

    @worker.handler("sdk.ok")
    def ok(ctx):
        message = f"halfway through {ctx.payload['n']}"
        ctx.progress(0.5, message)
        # Return once a heartbeat (the first goes FIRST_BEAT_SECONDS in) has carried the progress to the server.
        wait_for(lambda: operator.call("jobs.show", {"job_id": ctx.job_id})["progress_message"] == message, 30,
                 f"the progress of {ctx.job_id} to reach the server")
        return [artifact_for(json.dumps(ctx.payload).encode(), f"{ctx.job_id}.json")]

    running = RunningWorker(worker)
    try:
        wait_for(lambda: all_in(operator, job_ids, {"succeeded"}), 30, "every job to succeed")
    finally:
        summary = running.stop()
    assert summary["outcomes"] == {"succeeded": 8}
    assert sorted(result.job_id for result in finished) == sorted(job_ids)
    for job_id in job_ids:
        job = operator.call("jobs.show", {"job_id": job_id})
        payload = json.dumps(job["payload"]).encode()
        assert job["artifacts"] == [artifact_for(payload, f"{job_id}.json")]
        assert job["progress_message"] == f"halfway through {job['payload']['n']}"
        assert job["worker_id"] == worker.worker_id
        assert events_of(job) == ["job.created", "job.leased", "job.started", "job.succeeded"]


def test_retryable_error_is_retried_into_the_dead_letter_queue_and_permanent_error_fails(live):
    operator = live["operator"]
    (flaky,) = enqueue(operator, "sdk.flaky", [{}], max_attempts=3)
    (broken,) = enqueue(operator, "sdk.broken", [{}], max_attempts=3)
    attempts: list[int] = []
    worker = Worker(live["url"], live["worker_token"], concurrency=2, claim_wait=1)

    @worker.handler("sdk.flaky")
    def flaky_handler(ctx):
        attempts.append(ctx.attempt)
        raise RetryableError(f"mirror unreachable on attempt {ctx.attempt}", retry_after=0.05)

    @worker.handler("sdk.broken")
    def broken_handler(ctx):
        raise PermanentError("payload has no advisory_id")

    running = RunningWorker(worker)
    try:
        wait_for(lambda: states(operator, [flaky, broken]) == {flaky: "dead_letter", broken: "failed"}, 30,
                 "dead letter and failed")
    finally:
        running.stop()
    assert attempts == [1, 2, 3]
    job = operator.call("jobs.show", {"job_id": flaky})
    assert events_of(job).count("job.retry_scheduled") == 2 and events_of(job)[-1] == "job.dead_lettered"
    assert "mirror unreachable on attempt 3" in job["last_error"]
    assert operator.call("jobs.show", {"job_id": broken})["attempts"] == 1  # no retry


def test_a_job_retried_at_once_back_to_the_same_worker_is_heartbeated_on_its_new_lease(live):
    """A retry due at once can come back to the worker while its failed attempt is still being reported. The new
    attempt is tracked apart from the old one, so it is heartbeated past its lease and succeeds."""
    operator = live["operator"]
    job_ids = enqueue(operator, "sdk.again", [{"n": n} for n in range(3)], max_attempts=3)
    worker = Worker(live["url"], live["worker_token"], concurrency=3, claim_wait=1, lease_seconds=3)

    kept: list[str] = []

    @worker.handler("sdk.again")
    def again(ctx):
        if ctx.attempt == 1:
            raise RetryableError("try again now", retry_after=0)
        # Busy until heartbeats (every second) on the new lease have kept it past the 3 s its claim gave it.
        if hold_until_heartbeated_past_its_claim(operator, ctx, ctx.job_id, ctx.lease_id):
            kept.append(ctx.job_id)

    running = RunningWorker(worker)
    try:
        wait_for(lambda: all_in(operator, job_ids, {"succeeded", "dead_letter"}), 60, "every job to end")
    finally:
        running.stop()
    assert sorted(kept) == sorted(job_ids)
    for job_id in job_ids:
        job = operator.call("jobs.show", {"job_id": job_id})
        assert (job["state"], job["attempts"]) == ("succeeded", 2), events_of(job)


def test_cancel_reaches_the_running_handler_and_the_job_ends_canceled(live):
    operator = live["operator"]
    (job_id,) = enqueue(operator, "sdk.long", [{}])
    started, saw = threading.Event(), []
    worker = Worker(live["url"], live["worker_token"], concurrency=1, claim_wait=1, lease_seconds=3)

    @worker.handler("sdk.long")
    def long_handler(ctx):
        started.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ctx.cancelled.wait(0.05):
                saw.append(ctx.cancel_reason)
                ctx.check_cancelled()
        return None

    running = RunningWorker(worker)
    try:
        assert started.wait(20)
        wait_for(lambda: states(operator, [job_id])[job_id] == "running", 30, "the first heartbeat")
        asked = time.monotonic()
        operator.call("jobs.cancel", {"job_id": job_id, "reason": "operator changed their mind"})
        wait_for(lambda: states(operator, [job_id])[job_id] == "canceled", 30, "the job to end canceled")
        # A heartbeat (every lease/3 = 1 s) brought it, long before the 60 s the handler would otherwise run.
        assert time.monotonic() - asked < 20
    finally:
        summary = running.stop()
    assert saw == ["cancel_requested"]
    assert summary["outcomes"] == {"canceled": 1}
    history = operator.call("jobs.show", {"job_id": job_id})["history"]
    assert [e["event_type"] for e in history][-2:] == ["job.cancel_requested", "job.canceled"]
    assert history[-1]["reason"].startswith("canceled_by_request")


def test_a_lease_taken_away_stops_the_handler_and_is_never_acked(live):
    operator = live["operator"]
    (job_id,) = enqueue(operator, "sdk.taken", [{}])
    calls: list[tuple[str, str | None]] = []
    first_running = threading.Event()
    worker = Worker(live["url"], live["worker_token"], concurrency=1, claim_wait=1, lease_seconds=3)

    @worker.handler("sdk.taken")
    def taken(ctx):
        if not first_running.is_set():
            first_running.set()
            ctx.cancelled.wait(20)  # ends when a heartbeat is refused as stale
            calls.append(("first", ctx.cancel_reason))
            return [artifact_for(b"first", "first.json")]  # must never be acked
        calls.append(("second", ctx.cancel_reason))
        return [artifact_for(b"second", "second.json")]

    running = RunningWorker(worker)
    try:
        assert first_running.wait(20)
        first_lease = wait_for(lambda: operator.call("jobs.show", {"job_id": job_id})["lease_id"], 5, "lease")
        # Give the lease back behind the worker's back: its next heartbeat is refused as stale.
        operator.call("jobs.release", {"job_id": job_id, "lease_id": first_lease})
        wait_for(lambda: states(operator, [job_id])[job_id] == "succeeded", 20, "the second attempt to succeed")
    finally:
        summary = running.stop()
    job = operator.call("jobs.show", {"job_id": job_id})
    assert calls == [("first", "lease_lost"), ("second", None)]
    assert job["artifacts"] == [artifact_for(b"second", "second.json")]
    succeeded = [e for e in job["history"] if e["event_type"] == "job.succeeded"]
    assert len(succeeded) == 1 and succeeded[0]["lease_id"] != first_lease
    assert summary["outcomes"].get("lost") == 1 and summary["outcomes"].get("succeeded") == 1


def test_prefetched_jobs_are_heartbeated_while_they_wait_and_succeed_on_their_first_lease(live):
    operator = live["operator"]
    job_ids = enqueue(operator, "sdk.prefetch", [{"n": n} for n in range(3)])
    first_started = threading.Event()
    seen_while_first_ran: dict[str, str] = {}
    kept_while_waiting: list[str] = []
    # One handler thread, leases of 3 s. The first handler keeps the thread until each job waiting behind it has
    # been heartbeated past the lease its claim gave it: they wait in this process longer than their lease, and
    # only the heartbeats of waiting jobs keep them.
    worker = Worker(live["url"], live["worker_token"], concurrency=1, prefetch=4, lease_seconds=3, claim_wait=1)

    @worker.handler("sdk.prefetch")
    def slow(ctx):
        if first_started.is_set():
            return
        first_started.set()
        jobs = {job_id: operator.call("jobs.show", {"job_id": job_id}) for job_id in job_ids}
        seen_while_first_ran.update({job_id: job["state"] for job_id, job in jobs.items()})
        for job_id in job_ids:
            if job_id != ctx.job_id and jobs[job_id]["lease_id"] and hold_until_heartbeated_past_its_claim(
                    operator, ctx, job_id, jobs[job_id]["lease_id"]):
                kept_while_waiting.append(job_id)

    running = RunningWorker(worker)
    try:  # longer than the handler's own holds (30 s each), so a lease never kept fails on the assertions below
        wait_for(lambda: all_in(operator, job_ids, {"succeeded"}), 90, "every job to succeed")
    finally:
        summary = running.stop()
    assert "queued" not in seen_while_first_ran.values()  # one claim brought all three
    assert len(kept_while_waiting) == 2, kept_while_waiting
    assert summary["claimed"] == 3 and summary["outcomes"] == {"succeeded": 3}
    for job_id in job_ids:
        job = operator.call("jobs.show", {"job_id": job_id})
        assert job["attempts"] == 1 and events_of(job).count("job.leased") == 1


def test_stop_gives_back_every_prefetched_job(live):
    operator = live["operator"]
    job_ids = enqueue(operator, "sdk.prefetch-stop", [{"n": n} for n in range(12)])
    started = threading.Event()
    worker = Worker(live["url"], live["worker_token"], concurrency=1, prefetch=11, claim_wait=1,
                    grace_seconds=0.5)

    @worker.handler("sdk.prefetch-stop")
    def blocked(ctx):
        started.set()
        ctx.cancelled.wait(20)

    running = RunningWorker(worker)
    try:
        assert started.wait(20)
        wait_for(lambda: worker.stats["claimed"] == 12, 10, "all twelve jobs claimed")
    finally:
        summary = running.stop()
    assert summary["outcomes"] == {"released": 12}
    assert all_in(operator, job_ids, {"queued"})
    for job_id in job_ids:
        assert operator.call("jobs.show", {"job_id": job_id})["attempts"] == 0  # a release uses up no attempt


def test_a_refused_token_stops_the_worker_with_not_authorized(live, tmp_path):
    stranger = Keys(tmp_path).token(["orch:worker"])  # signed by a key the server does not trust
    reader = live["keys"].token(["orch:read"])  # trusted, but without the worker scope
    for token, refused in ((stranger, NotAuthorized), (reader, Forbidden)):
        worker = Worker(live["url"], token, claim_wait=1)
        worker.add_handler("sdk.never", lambda ctx: None)
        started = time.monotonic()
        with pytest.raises(NotAuthorized) as raised:
            worker.run()
        assert raised.type is refused
        assert time.monotonic() - started < 10


# -- shutdown ----------------------------------------------------------------------------------------

SIGTERM_WORKER = """
import json, os, sys, time
from pathlib import Path
from airgap_orch.sdk import Worker

markers = Path(sys.argv[3])
worker = Worker(sys.argv[1], sys.argv[2], concurrency=2, claim_wait=1, grace_seconds=5)

@worker.handler("sdk.term")
def work(ctx):
    (markers / ctx.job_id).write_text(str(os.getpid()))
    if ctx.payload.get("until_told"):  # ends when the test says so: after the SIGTERM, inside the grace period
        while not (markers / "finish").exists():
            time.sleep(0.02)
        return None
    deadline = time.monotonic() + ctx.payload["seconds"]
    while time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.05)
    return None

print(json.dumps(worker.run()), flush=True)
"""


def test_sigterm_mid_job_exits_zero_and_finishes_or_releases_its_jobs(live, tmp_path):
    operator = live["operator"]
    short, long = enqueue(operator, "sdk.term", [{"until_told": True}, {"seconds": 60}])
    script = tmp_path / "worker.py"
    script.write_text(SIGTERM_WORKER)
    markers = tmp_path / "markers"
    markers.mkdir()
    process = subprocess.Popen([sys.executable, str(script), live["url"], live["worker_token"], str(markers)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env())
    try:
        wait_for(lambda: (markers / short).exists() and (markers / long).exists(), 30, "both jobs to start")
        process.send_signal(signal.SIGTERM)
        (markers / "finish").write_text("")  # the short job ends after the signal, within the grace period
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["stopped_by"] == "signal:SIGTERM"
    assert summary["outcomes"] == {"released": 1, "succeeded": 1}
    assert states(operator, [short, long]) == {short: "succeeded", long: "queued"}
    released = operator.call("jobs.show", {"job_id": long})
    assert events_of(released)[-1] == "job.released"
    assert released["attempts"] == 0  # a released lease does not use up the attempt
    operator.call("jobs.cancel", {"job_id": long, "reason": "test cleanup"})


# -- faults ------------------------------------------------------------------------------------------

def _history(client: OrchClient) -> list[dict]:
    events, after = [], 0
    while True:
        page = client.call("ledger.events", {"after_seq": after, "limit": 1000})
        events += page["events"]
        if not page["events"]:
            return events
        after = page["last_seq"]


@pytest.mark.parametrize("prefetch", [0, 50])  # 50: jobs wait in the workers while the server is away
def test_server_sigkilled_under_load_and_restarted_loses_nothing_and_commits_nothing_twice(tmp_path, caplog,
                                                                                          prefetch):
    ledger = _new_ledger(tmp_path)
    server = ServerProcess(ledger, "--no-auth")
    client = OrchClient(server.url, timeout=10)
    acknowledged: list[str] = []
    failures: list[str] = []
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        try:
            enqueue_until_told()
        except BaseException as error:  # shown by the assertion below
            failures.append(repr(error))
            raise

    def enqueue_until_told() -> None:
        batch = 0
        while producing.is_set():
            batch += 1
            key = str(uuid.uuid4())
            jobs = [{"tenant": "acme", "project": "load", "type": "sdk.load", "payload": {"batch": batch, "n": n}}
                    for n in range(5)]
            answer = None
            while answer is None and producing.is_set():  # the same Idempotency-Key until answered
                try:
                    answer = client.call("jobs.enqueue_batch", {"jobs": jobs}, idempotency_key=key)
                except ServerUnavailable:
                    time.sleep(0.2)
            if answer is None:
                return
            acknowledged.extend(answer["job_ids"])
            time.sleep(0.03)

    runs: Counter[str] = Counter()

    def claims_failed(since: int = 0) -> set[str]:
        """The claimer threads that gave up a claim after the client's own retries (and will claim again), as
        logged from record `since` on."""
        return {record.threadName for record in list(caplog.records)[since:] if "claim failed" in record.getMessage()}

    def work(ctx):
        runs[ctx.job_id] += 1
        time.sleep(0.01)
        return [artifact_for(ctx.job_id.encode(), ctx.job_id)]

    workers = []
    for number in range(2):
        worker = Worker(server.url, worker_id=f"load-{number}", concurrency=8, claim_wait=1, lease_seconds=20,
                        prefetch=prefetch)
        worker.add_handler("sdk.load", work)
        workers.append(RunningWorker(worker))
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    restarted = None
    try:
        wait_for(lambda: sum(runs.values()) >= 40, 30, "the workers to get going")
        logged_before_kill = len(caplog.records)
        server.kill()  # SIGKILL under load: claims, acks and enqueues in flight
        killed_at = len(acknowledged)
        # Restart only once both workers' clients have run out of retries: the workers must retry by themselves.
        wait_for(lambda: claims_failed(logged_before_kill) == {"load-0:claimer", "load-1:claimer"}, 60,
                 "both workers to give up a claim on the dead server")
        restarted = ServerProcess(ledger, "--no-auth", port=server.port)
        wait_for(lambda: len(acknowledged) >= killed_at + 40 or failures, 30, "enqueues to be answered again")
        assert not failures, (failures, server.stderr(), restarted.stderr())
        producing.clear()
        producer.join(30)
        wait_for(lambda: all_done(client, acknowledged), 60, "every acknowledged job to succeed", every=0.5)
    finally:
        producing.clear()
        summaries = [running.stop() for running in workers]
        if restarted is not None:
            history = _history(client)
            assert restarted.stop() == 0
        else:
            server.kill()
    succeeded = Counter(e["job"]["id"] for e in history if e["eventType"] == "job.succeeded")
    created = {e["job"]["id"] for e in history if e["eventType"] == "job.created"}
    assert set(acknowledged) <= created  # no acknowledged enqueue lost
    assert len(set(acknowledged)) == len(acknowledged)  # a retried enqueue did not enqueue twice
    assert set(succeeded) == created == set(acknowledged)
    assert max(succeeded.values()) == 1  # one job.succeeded per job
    assert sum(summary["outcomes"].get("succeeded", 0) for summary in summaries) == len(acknowledged), summaries
    # Both workers lost the server and found it again by themselves.
    assert claims_failed() == {"load-0:claimer", "load-1:claimer"}


def all_done(client: OrchClient, job_ids: list[str]) -> bool:
    counts = client.call("ledger.info")["jobs"]
    return counts.get("succeeded", 0) == len(job_ids) and not any(
        counts.get(state) for state in ("queued", "leased", "running"))


# -- embedded mode -----------------------------------------------------------------------------------

def test_serve_with_embedded_workers_processes_jobs_of_every_tenant(tmp_path):
    keys = Keys(tmp_path)
    server = ServerProcess(_new_ledger(tmp_path), "--token-key", str(keys.public),
                           "--handler", "sdk.embedded=airgap_orch.worker.samples:ingest_advisory",
                           "--workers", "2")
    try:
        operator = OrchClient(server.url, keys.token(ALL_SCOPES, subject="operator"))
        out = tmp_path / "out"
        job_ids = []
        for tenant in TENANTS:  # each tenant is new to the server: the workers' token must follow
            job_ids += enqueue(operator, "sdk.embedded", [
                {"advisory_id": f"ADV-{tenant}-{n}", "out_dir": str(out), "steps": 2, "step_seconds": 0.01}
                for n in range(3)], tenant=tenant)
        wait_for(lambda: all_in(operator, job_ids, {"succeeded"}), 40, "embedded workers to run every job")
        jobs = [operator.call("jobs.show", {"job_id": job_id}) for job_id in job_ids]
        assert all(job["worker_id"].startswith("embedded-") for job in jobs)
        for job in jobs:
            (artifact,) = job["artifacts"]
            data = Path(artifact["uri"].removeprefix("file://")).read_bytes()
            assert artifact["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    finally:
        code = server.stop()
    assert code == 0
    assert not Path(str(server.ledger) + ".server.json").exists()


def test_workers_without_handlers_is_a_usage_error(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "airgap_orch", "--ledger", str(tmp_path / "L"), "serve",
                                "--no-auth", "--workers", "2"], capture_output=True, text=True, env=_clean_env(),
                               timeout=60)
    assert completed.returncode == 2
    assert "--handler" in completed.stderr


# -- the README example and the import weight --------------------------------------------------------

def _readme_worker() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing a worker (Python SDK)"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_worker_example_runs_against_a_live_server(live, tmp_path):
    operator = live["operator"]
    script = tmp_path / "worker.py"
    script.write_text(_readme_worker())
    out = tmp_path / "out"
    job_ids = enqueue(operator, "advisory.ingest", [{"advisory_id": f"ADV-{n}"} for n in range(3)], tenant="initech")
    (bad,) = enqueue(operator, "advisory.ingest", [{}], tenant="initech")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_clean_env({"AIRGAP_ORCH_URL": live["url"], "OUT_DIR": str(out),
                                                          "AIRGAP_ORCH_TOKEN": live["worker_token"]}))
    try:
        wait_for(lambda: all_in(operator, job_ids, {"succeeded"}) and all_in(operator, [bad], {"failed"}), 30,
                 "the README worker to run the jobs")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["outcomes"] == {"failed": 1, "succeeded": 3}
    for job_id in job_ids:
        job = operator.call("jobs.show", {"job_id": job_id})
        (artifact,) = job["artifacts"]
        data = (out / f"{job_id}.json").read_bytes()
        assert artifact["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert json.loads(data) == {"id": job["payload"]["advisory_id"], "tenant": "initech", "attempt": 1}
        if "job.started" in events_of(job):  # a heartbeat carried the handler's progress
            assert re.fullmatch(r"ADV-\d: step [1-3] of 3", job["progress_message"])
        lines = operator.call("jobs.logs", {"job_id": job_id})["lines"]  # ctx.log, on heartbeats and the ack
        advisory = job["payload"]["advisory_id"]
        assert [line["message"] for line in lines] == [f"{advisory}: step {n} done" for n in (1, 2, 3)]


def test_importing_the_sdk_loads_neither_duckdb_nor_pyarrow():
    code = ("import sys, airgap_orch.sdk; "
            "assert 'duckdb' not in sys.modules and 'pyarrow' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('duckdb', 'pyarrow', 'airgap_orch')))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(),
                               timeout=60)
    assert completed.returncode == 0, completed.stderr


def test_the_sdk_and_the_in_process_runner_share_one_handler_contract():
    code = ("import airgap_orch.sdk as sdk, airgap_orch.worker as runner; "
            "assert all(getattr(sdk, n) is getattr(runner, n) for n in "
            "('JobContext', 'RetryableError', 'PermanentError', 'JobCanceled', 'HandlerError'))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(),
                               timeout=60)
    assert completed.returncode == 0, completed.stderr
