"""The in-process worker runner: handlers' outcomes, heartbeats, cancellation, signals and crashes.

Worker processes are real `airgap-orch worker run` subprocesses over a real ledger file; tests that
must act on the ledger while a worker runs (cancel, lease loss) run the Runner in a thread of this
process, since only one process may open the ledger.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import run_cli

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.worker import RetryableError, Runner, RunnerConfig, load_handlers
from airgap_orch.worker.samples import slow_scan

SAMPLES = "airgap_orch.worker.samples"


def _enqueue(ledger_path: Path, specs: list[dict]) -> list[str]:
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        return ops.enqueue_batch(ledger, specs, actor="test")["job_ids"]


def _show(ledger_path: Path, job_id: str) -> dict:
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        return ops.show(ledger, job_id)


def _events(job: dict) -> list[str]:
    return [entry["event_type"] for entry in job["history"]]


def _worker(ledger_path: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), "--lock-timeout", "10",
               "--json", "worker", "run", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, dict, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, json.loads(stdout) if stdout.strip() else {}, stderr


def _wait_for_file(path: Path, process: subprocess.Popen[str] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"worker exited {process.returncode} early: {process.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _artifact_bytes(artifact: dict) -> bytes:
    return Path(unquote(urlparse(artifact["uri"]).path)).read_bytes()


# -- one worker process over a mix of jobs ----------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A worker subprocess with --exit-when-idle over good, always-retryable and permanently bad jobs."""
    root = tmp_path_factory.mktemp("mixed")
    ledger_path = root / "ledger.duckdb"
    ledger_ops.init(ledger_path, site_id="site-test", lock_timeout=5)
    out = root / "out"
    # The good jobs finish only once a heartbeat was answered (hold_until_running: a handshake, not a long sleep),
    # and leases are long enough that no load makes one lapse: nothing here races the wall clock.
    ids = _enqueue(ledger_path, [
        {"tenant": "acme", "project": "feeds", "type": "advisory.ingest",
         "payload": {"advisory_id": "ADV-1", "out_dir": str(out), "hold_until_running": True}},
        {"tenant": "globex", "project": "feeds", "type": "advisory.ingest",
         "payload": {"advisory_id": "ADV-2", "out_dir": str(out), "hold_until_running": True}},
        {"tenant": "acme", "project": "mirror", "type": "export.mirror", "max_attempts": 3,
         "payload": {"retry_after": 0.05}},
        {"tenant": "acme", "project": "feeds", "type": "advisory.ingest", "payload": {"out_dir": str(out)}},
    ])
    worker = _worker(ledger_path, "--handler", f"advisory.ingest={SAMPLES}:ingest_advisory",
                     "--handler", f"export.mirror={SAMPLES}:flaky_export", "--lease-seconds", "30",
                     "--exit-when-idle", "--worker-id", "w-mixed")
    code, summary, stderr = _finish(worker)
    jobs = {name: _show(ledger_path, job_id)
            for name, job_id in zip(("good1", "good2", "flaky", "bad"), ids, strict=True)}
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        verify = ledger_ops.verify(ledger)
    return {"code": code, "summary": summary, "stderr": stderr, "jobs": jobs, "verify": verify, "out": out}


def test_worker_exits_when_idle_with_a_json_summary(mixed_run):
    assert mixed_run["code"] == 0, mixed_run["stderr"]
    summary = mixed_run["summary"]
    assert summary["stopped_by"] == "idle"
    assert summary["worker_id"] == "w-mixed"
    # 2 successes, 1 permanent failure, the flaky export: 2 retries then its dead letter.
    assert summary["outcomes"] == {"succeeded": 2, "failed": 1, "queued": 2, "dead_letter": 1}
    assert mixed_run["verify"]["ok"] is True


def test_handler_success_acks_its_artifacts_with_real_digests(mixed_run):
    for name in ("good1", "good2"):
        job = mixed_run["jobs"][name]
        assert job["state"] == "succeeded"
        assert job["attempts"] == 1
        assert job["progress"] == 1.0
        # The handler held on until its first heartbeat (FIRST_BEAT_SECONDS) was answered, which moved the job to
        # running before the ack (the worker process owns the ledger, so the handshake is the handler's own).
        assert _events(job) == ["job.created", "job.leased", "job.started", "job.succeeded"]
        (artifact,) = job["artifacts"]
        assert artifact["mime"] == "application/json"
        content = _artifact_bytes(artifact)
        assert artifact["digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
        assert json.loads(content)["tenant"] == job["tenant"]
        assert job["history"][-1]["worker_id"] == "w-mixed"


def test_retryable_failure_is_retried_until_dead_letter(mixed_run):
    job = mixed_run["jobs"]["flaky"]
    assert job["state"] == "dead_letter"
    assert job["attempts"] == job["max_attempts"] == 3
    # The handler fails at once, before its first heartbeat (FIRST_BEAT_SECONDS) in all but a very slow run:
    # each attempt goes from leased to its failure.
    assert [event for event in _events(job) if event != "job.started"] == [
        "job.created", "job.leased", "job.retry_scheduled", "job.leased", "job.retry_scheduled",
        "job.leased", "job.dead_lettered"]
    assert "RetryableError" in job["last_error"] and "unreachable" in job["last_error"]


def test_permanent_error_fails_the_job_without_retry(mixed_run):
    job = mixed_run["jobs"]["bad"]
    assert job["state"] == "failed"
    assert job["attempts"] == 1 and job["max_attempts"] == 3
    assert _events(job)[-1] == "job.failed"
    assert job["history"][-1]["reason"].startswith("no_retry")
    assert "PermanentError" in job["last_error"] and "advisory_id" in job["last_error"]
    assert job["artifacts"] == []


def test_worker_on_a_terminal_prints_a_line_per_finished_job(ledger_path, tmp_path):
    (job_id,) = _enqueue(ledger_path, [_spec("advisory.ingest", {"advisory_id": "ADV-9",
                                                                 "out_dir": str(tmp_path / "out")})])
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), "worker", "run",
               "--handler", f"advisory.ingest={SAMPLES}:ingest_advisory", "--exit-when-idle"]
    worker = subprocess.Popen(command, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the worker closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert worker.wait(timeout=30) == 0, worker.stderr.read()
    lines = output.decode().splitlines()
    assert any(line.startswith("succeeded") and job_id in line and "attempt 1" in line for line in lines), lines
    assert "stopped_by: idle" in lines


def test_exit_when_idle_is_refused_on_a_ledger_owned_by_a_live_server(ledger_path):
    from airgap_orch.server import discovery

    discovery.write(ledger_path, "http://127.0.0.1:9")  # this test process plays the live server
    try:
        worker = _worker(ledger_path, "--handler", f"scan={SAMPLES}:slow_scan", "--exit-when-idle")
        code, _summary, stderr = _finish(worker)
    finally:
        discovery.path_for(ledger_path).unlink()
    assert code == 1
    assert "http://127.0.0.1:9" in stderr and "SIGTERM" in stderr


def test_worker_run_works_through_the_server_that_owns_the_ledger(ledger_path, tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), "serve",
                               "--port", "0", "--no-auth"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert "serving" in server.stdout.readline()
        ids = [run_cli(ledger_path, "--json", "jobs", "enqueue", "--tenant", "t", "--project", "p", "--type",
                       "advisory.ingest", "--payload",
                       json.dumps({"advisory_id": f"A-{n}", "out_dir": str(tmp_path)})).json["job_id"]
               for n in range(3)]
        worker = subprocess.Popen([sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), "--json",
                                   "worker", "run", "--handler", f"advisory.ingest={SAMPLES}:ingest_advisory"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        states: list[str] = []
        while time.monotonic() < deadline:
            states = [run_cli(ledger_path, "--json", "jobs", "show", job_id).json["state"] for job_id in ids]
            if all(state == "succeeded" for state in states):
                break
            time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.stderr.read()
        assert states == ["succeeded"] * 3
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_bad_handler_spec_is_a_one_line_error(ledger_path):
    worker = _worker(ledger_path, "--handler", "scan.image=airgap_orch.worker.samples:no_such_function",
                     "--exit-when-idle")
    code, _summary, stderr = _finish(worker)
    assert code == 1
    (line,) = stderr.strip().splitlines()
    assert "no_such_function" in line


# -- in-process runner: the test acts on the ledger while handlers run -----------------------------

class _RunnerThread:
    def __init__(self, ledger: Ledger, handlers: dict, **config):
        # Long enough that no lease lapses however loaded the machine; the tests about lapses pass 1 s and
        # move the ledger's clock (manual_clock) themselves.
        config.setdefault("lease_seconds", 30.0)
        self.runner = Runner(ledger, RunnerConfig(handlers=handlers, worker_id="w-inproc", **config))
        self.summary: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.summary = self.runner.run(handle_signals=False)

    def join(self, timeout: float = 20) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the runner did not stop"
        assert self.summary is not None
        return self.summary


def _wait_for_state(ledger: Ledger, job_id: str, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while ops.show(ledger, job_id)["state"] != state:
        assert time.monotonic() < deadline, f"job {job_id} never became {state}"
        time.sleep(0.02)


def _spec(job_type: str, payload: dict | None = None, **fields) -> dict:
    return {"tenant": "acme", "project": "p", "type": job_type, "payload": payload or {}, **fields}


def test_progress_reported_by_a_running_handler_reaches_the_ledger(ledger):
    (job_id,) = ops.enqueue_batch(ledger, [_spec("report")])["job_ids"]
    reported, release = threading.Event(), threading.Event()

    def handler(ctx):
        ctx.progress(0.4, "halfway-ish")
        reported.set()
        release.wait(10)
        return None

    runner = _RunnerThread(ledger, {"report": handler}, max_jobs=1)
    assert reported.wait(10)
    deadline = time.monotonic() + 30
    while ops.show(ledger, job_id)["progress"] != 0.4:
        assert time.monotonic() < deadline, "progress never reached the ledger"
        time.sleep(0.02)
    running = ops.show(ledger, job_id)
    assert running["state"] == "running"
    assert running["progress_message"] == "halfway-ish"
    release.set()
    assert runner.join()["outcomes"] == {"succeeded": 1}
    assert ops.show(ledger, job_id)["state"] == "succeeded"


def test_cancel_of_a_running_job_stops_the_handler_and_ends_it_canceled(ledger, tmp_path):
    marker = tmp_path / "started"
    (job_id,) = ops.enqueue_batch(ledger, [_spec("scan", {"seconds": 60, "marker": str(marker),
                                                          "out_dir": str(tmp_path / "out")})])["job_ids"]
    runner = _RunnerThread(ledger, {"scan": slow_scan}, max_jobs=1)
    _wait_for_file(marker)
    _wait_for_state(ledger, job_id, "running", timeout=30)  # the first heartbeat goes out FIRST_BEAT_SECONDS in
    started = time.monotonic()
    requested = ops.cancel(ledger, job_id, reason="operator changed their mind")
    assert requested["cancel_requested"] is True and requested["state"] == "running"
    summary = runner.join(timeout=30)
    # The next heartbeat (with the scan's progress, every 0.25 s) brought it, long before the 60 s scan would end.
    assert time.monotonic() - started < 20, "the handler did not stop on cancellation"
    assert summary["outcomes"] == {"canceled": 1}
    job = ops.show(ledger, job_id)
    assert job["state"] == "canceled"
    assert _events(job)[-2:] == ["job.cancel_requested", "job.canceled"]
    assert job["history"][-1]["reason"].startswith("canceled_by_request")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_handler_ignoring_a_cancel_loses_its_lease_and_the_job_ends_canceled(ledger, manual_clock, caplog):
    (job_id,) = ops.enqueue_batch(ledger, [_spec("stubborn")])["job_ids"]
    started, let_go = threading.Event(), threading.Event()

    def handler(ctx):  # never looks at ctx.cancelled
        started.set()
        let_go.wait(60)
        return None

    # The ledger's clock stands still (manual_clock): the lease lapses only when the test moves it, never because
    # a loaded machine delayed a heartbeat.
    runner = _RunnerThread(ledger, {"stubborn": handler}, max_jobs=1, lease_seconds=1.0)
    assert started.wait(10)
    ops.cancel(ledger, job_id, reason="stop it")
    # Heartbeats continue for one lease period after the cancel is seen, then stop (the worker says so).
    deadline = time.monotonic() + 30
    while not any("ignored its cancel request" in record.getMessage() for record in list(caplog.records)):
        assert time.monotonic() < deadline, "the worker never stopped heartbeating the stubborn job"
        time.sleep(0.02)
    manual_clock.advance(0.5)  # from now on a heartbeat would move the lease's expiry
    expires = ops.show(ledger, job_id)["lease_expires_at"]
    time.sleep(1.0)  # three heartbeat periods of the 1 s lease
    assert ops.show(ledger, job_id)["lease_expires_at"] == expires, "the job was heartbeated after all"
    manual_clock.advance(5)  # past the lease: it lapses
    ops.recover(ledger)
    assert ops.show(ledger, job_id)["state"] == "canceled"
    let_go.set()
    assert runner.join()["outcomes"] == {"lost": 1}
    job = ops.show(ledger, job_id)
    assert job["state"] == "canceled" and job["history"][-1]["actor"] == "orchestrator"
    assert "job.succeeded" not in _events(job)


def test_stale_lease_on_heartbeat_stops_the_handler_and_is_never_acked(ledger, manual_clock):
    (job_id,) = ops.enqueue_batch(ledger, [_spec("work")])["job_ids"]
    started, saw_cancel = threading.Event(), threading.Event()

    def handler(ctx):
        started.set()
        if ctx.cancelled.wait(10):
            saw_cancel.set()
        # A stubborn handler that returns a result anyway: the runner must not ack it.
        return [{"uri": "file:///tmp/x", "digest": "sha256:" + "0" * 64, "mime": "text/plain"}]

    runner = _RunnerThread(ledger, {"work": handler}, max_jobs=1, lease_seconds=1.0)
    assert started.wait(10)
    manual_clock.advance(5)  # past the 1 s lease: the next heartbeat is refused
    summary = runner.join()
    assert saw_cancel.is_set()
    assert summary["outcomes"] == {"lost": 1}
    ops.recover(ledger)
    job = ops.show(ledger, job_id)
    assert job["state"] == "queued"
    assert "job.succeeded" not in _events(job)
    assert job["history"][-1]["reason"] == "lease_expired"


def test_max_jobs_stops_after_that_many_finished_jobs(ledger):
    ids = ops.enqueue_batch(ledger, [_spec("quick") for _ in range(5)])["job_ids"]
    summary = _RunnerThread(ledger, {"quick": lambda ctx: None}, max_jobs=2, concurrency=4).join()
    assert summary["stopped_by"] == "max_jobs"
    assert summary["outcomes"] == {"succeeded": 2}
    states = sorted(ops.show(ledger, job_id)["state"] for job_id in ids)
    assert states == ["queued", "queued", "queued", "succeeded", "succeeded"]


def test_reports_of_concurrent_handlers_share_transactions(ledger):
    """Each job needs a claim and an ack; alone that is more than one commit per job. Through the
    group-commit writer, reports and claims made at the same time share one, so 8 handlers that finish
    together need far fewer."""
    jobs = 80
    ids = ops.enqueue_batch(ledger, [_spec("quick") for _ in range(jobs)])["job_ids"]
    commits: list[int] = []
    ledger.commit_listeners.append(lambda rows: commits.append(len(rows)))
    both_in = threading.Barrier(8, timeout=10)

    def quick(ctx) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_in.wait()  # the first eight start together, so their reports arrive together

    summary = _RunnerThread(ledger, {"quick": quick}, concurrency=8, lease_seconds=30.0,
                            exit_when_idle=True).join(60)
    assert summary["outcomes"] == {"succeeded": jobs}
    assert {ops.show(ledger, job_id)["state"] for job_id in ids} == {"succeeded"}
    entries = sum(len(ops.show(ledger, job_id)["history"]) - 1 for job_id in ids)  # all but the enqueue
    assert sum(commits) == entries  # every entry written once
    assert len(commits) < jobs, f"{len(commits)} commits for {jobs} jobs"


def test_a_handlers_slot_is_free_while_its_outcome_is_reported(ledger):
    """The runner claims for a slot as soon as its handler returns, not once the report has committed, so the
    claim can share the report's transaction. The slots still bound how many handlers run at once."""
    ids = ops.enqueue_batch(ledger, [_spec("quick") for _ in range(3)])["job_ids"]
    report_held, claimed_meanwhile, let_go = threading.Event(), threading.Event(), threading.Event()
    running, most, count = [0], [0], threading.Lock()

    class HeldReports(Runner):
        def _call(self, name: str, **params):
            if name == "jobs.ack" and not let_go.is_set():
                report_held.set()
                let_go.wait(10)
            elif name == "jobs.claim" and report_held.is_set() and not let_go.is_set():
                claimed_meanwhile.set()
            return super()._call(name, **params)

    def quick(ctx) -> None:
        with count:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with count:
            running[0] -= 1

    runner = HeldReports(ledger, RunnerConfig(handlers={"quick": quick}, worker_id="w-held", concurrency=1,
                                              exit_when_idle=True))
    summary: dict = {}
    thread = threading.Thread(target=lambda: summary.update(runner.run(handle_signals=False)), daemon=True)
    thread.start()
    try:
        assert claimed_meanwhile.wait(10), "the runner did not claim while the first job's ack was held"
    finally:
        let_go.set()
    thread.join(20)
    assert not thread.is_alive(), "the runner did not stop"
    assert summary["outcomes"] == {"succeeded": 3}
    assert most[0] == 1
    assert {ops.show(ledger, job_id)["state"] for job_id in ids} == {"succeeded"}


def test_a_job_retried_at_once_to_the_same_runner_is_one_slot_and_one_job(ledger):
    """A retry due at once can come back to this runner while the failed attempt's report is in flight: the
    new attempt takes a slot of its own, and reaping the old attempt does not drop the new one."""
    ids = ops.enqueue_batch(ledger, [_spec("flaky", max_attempts=3) for _ in range(4)])["job_ids"]
    running, most, count = [0], [0], threading.Lock()
    attempts: dict[str, int] = {}

    def flaky(ctx) -> None:
        with count:
            running[0] += 1
            most[0] = max(most[0], running[0])
            attempts[ctx.job_id] = attempts.get(ctx.job_id, 0) + 1
            first = attempts[ctx.job_id] == 1
        try:
            if first:
                raise RetryableError("try again now", retry_after=0)
            time.sleep(0.05)
        finally:
            with count:
                running[0] -= 1

    summary = _RunnerThread(ledger, {"flaky": flaky}, concurrency=1, lease_seconds=30.0,
                            exit_when_idle=True).join(60)
    assert most[0] == 1
    assert summary["outcomes"] == {"queued": 4, "succeeded": 4}
    assert {ops.show(ledger, job_id)["state"] for job_id in ids} == {"succeeded"}


def test_invalid_artifacts_from_a_handler_fail_the_job_for_good(ledger):
    (job_id,) = ops.enqueue_batch(ledger, [_spec("bad-artifacts")])["job_ids"]
    summary = _RunnerThread(ledger, {"bad-artifacts": lambda ctx: [{"uri": "x", "digest": "md5:1"}]},
                            max_jobs=1).join()
    assert summary["outcomes"] == {"failed": 1}
    job = ops.show(ledger, job_id)
    assert job["state"] == "failed" and "invalid artifacts" in job["last_error"]


def test_load_handlers_refuses_malformed_specs():
    from airgap_orch.errors import InvalidInput

    for spec in ("no-equals", "t=module-without-colon", "t=json:no_such_function", "t=no_such_module_xyz:f"):
        with pytest.raises(InvalidInput):
            load_handlers([spec])
    assert load_handlers([f"scan={SAMPLES}:slow_scan"]) == {"scan": slow_scan}


# -- signals and crashes ----------------------------------------------------------------------------

def test_sigterm_mid_job_releases_the_job_and_exits_zero(ledger_path, tmp_path):
    marker = tmp_path / "started"
    (job_id,) = _enqueue(ledger_path, [_spec("scan", {"seconds": 60, "marker": str(marker)})])
    worker = _worker(ledger_path, "--handler", f"scan={SAMPLES}:slow_scan", "--lease-seconds", "30",
                     "--grace-seconds", "0.3")
    _wait_for_file(marker, worker)
    signaled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code, summary, stderr = _finish(worker, timeout=30)
    assert code == 0, stderr
    # It kept the 0.3 s grace: neither the 10 s default nor the 60 s scan.
    assert time.monotonic() - signaled < 8
    assert summary["stopped_by"] == "signal:SIGTERM"
    assert summary["released"] == [job_id]
    job = _show(ledger_path, job_id)
    assert job["state"] == "queued"
    assert job["history"][-1]["event_type"] == "job.released"
    assert job["history"][-1]["reason"] == "worker_shutdown"
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        assert ledger_ops.verify(ledger)["ok"] is True


def test_sigterm_waits_for_a_handler_that_finishes_within_the_grace_period(ledger_path, tmp_path):
    marker = tmp_path / "started"
    (job_id,) = _enqueue(ledger_path, [_spec("scan", {"seconds": 1.0, "marker": str(marker),
                                                      "out_dir": str(tmp_path / "out")})])
    worker = _worker(ledger_path, "--handler", f"scan={SAMPLES}:slow_scan", "--lease-seconds", "30",
                     "--grace-seconds", "15")
    _wait_for_file(marker, worker)
    worker.send_signal(signal.SIGTERM)
    code, summary, stderr = _finish(worker, timeout=20)
    assert code == 0, stderr
    assert summary["outcomes"] == {"succeeded": 1} and summary["released"] == []
    assert _show(ledger_path, job_id)["state"] == "succeeded"


def test_job_of_a_sigkilled_worker_is_recovered_and_completed_by_the_next(ledger_path, tmp_path):
    marker = tmp_path / "started"
    (job_id,) = _enqueue(ledger_path, [_spec("scan", {"seconds": 1.5, "marker": str(marker),
                                                      "out_dir": str(tmp_path / "out")})])
    handler = f"scan={SAMPLES}:slow_scan"
    worker_a = _worker(ledger_path, "--handler", handler, "--lease-seconds", "1", "--worker-id", "w-a")
    _wait_for_file(marker, worker_a)
    os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.communicate(timeout=10)
    assert worker_a.returncode == -signal.SIGKILL

    # w-a's 1 s lease must lapse; w-b's is long, so its scan cannot lose it to a slow heartbeat.
    worker_b = _worker(ledger_path, "--handler", handler, "--lease-seconds", "30", "--worker-id", "w-b",
                       "--exit-when-idle")
    code, summary, stderr = _finish(worker_b, timeout=30)
    assert code == 0, stderr
    assert summary["outcomes"] == {"succeeded": 1}

    job = _show(ledger_path, job_id)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    story = [(entry["event_type"], entry["attempt"], entry["worker_id"], entry["reason"])
             for entry in job["history"]]
    # w-a was killed soon after its handler started: before or after its first heartbeat (FIRST_BEAT_SECONDS).
    first_start = ("job.started", 1, "w-a", None)
    if first_start in story:
        story.remove(first_start)
    assert story == [
        ("job.created", 0, None, None),
        ("job.leased", 1, "w-a", None),
        ("job.retry_scheduled", 1, "w-a", "lease_expired"),
        ("job.leased", 2, "w-b", None),
        ("job.started", 2, "w-b", None),
        ("job.succeeded", 2, "w-b", None),
    ]
    (artifact,) = job["artifacts"]
    assert json.loads(_artifact_bytes(artifact))["scanned_by"] == "w-b"
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        assert ledger_ops.verify(ledger)["ok"] is True


def test_a_queue_worker_is_not_idle_while_its_queue_has_a_job_behind_a_page_of_other_queues(ledger):
    """Found in review: idleness read one page of jobs (at most 1,000); a job of the worker's queue behind 1,000
    jobs of other queues went unseen, so `--exit-when-idle --queue Q` could stop with work left."""
    ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": "scan", "queue": "other"}] * 1_001)
    runner = Runner(ledger, RunnerConfig(handlers={"scan": lambda ctx: None}, worker_id="w-idle", queue="mine"))
    assert runner._site_idle() is True
    ops.enqueue(ledger, {"tenant": "acme", "project": "p", "type": "scan", "queue": "mine"})
    assert runner._site_idle() is False
