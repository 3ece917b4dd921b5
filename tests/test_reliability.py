"""Reliability with real processes and real signals: a frozen worker is fenced, and a ledger owner
killed mid-burst loses no acknowledged enqueue."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from airgap_orch import clock
from airgap_orch.errors import OrchError
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops

HELPERS = Path(__file__).parent / "helpers"
W1_ARTIFACT = "file:///out/w1/report.json,sha256:" + "1" * 64 + ",application/json"
W2_ARTIFACT = "file:///out/w2/report.json,sha256:" + "2" * 64 + ",application/json"


class LineReader:
    """Reads a child's stdout on a thread, so the parent can wait for a line with a timeout."""

    def __init__(self, stream):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.all: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            if line.endswith("\n"):  # a line cut short by a kill was never acknowledged
                self.all.append(line[:-1])
                self.lines.put(line[:-1])
        self.lines.put(None)

    def next(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the child printed nothing for {timeout}s") from None
        if line is None:
            self.lines.put(None)
            raise AssertionError("the child closed its stdout (exited?) before printing the expected line")
        return line

    def finish(self, timeout: float = 10) -> list[str]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the child's stdout did not close"
        return list(self.all)


def _process_state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) S ..."; comm may hold spaces, so split after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for_state(pid: int, wanted: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while _process_state(pid) != wanted:
        assert time.monotonic() < deadline, f"process {pid} never reached state {wanted}"
        time.sleep(0.01)


def _seconds_until(iso_time: str) -> float:
    return (clock.parse_iso(iso_time) - clock.now()).total_seconds()


# -- a frozen worker is fenced -----------------------------------------------------------------------

def _open(ledger_path: Path) -> Ledger:
    return Ledger.open(ledger_path, lock_timeout=10)


def _snapshot(ledger_path: Path, job_id: str) -> tuple[dict, dict]:
    with _open(ledger_path) as ledger:
        return ops.show(ledger, job_id), ledger_ops.info(ledger)


def _claim_as_worker2(cli, ledger_path: Path, job_id: str) -> dict:
    """Claim with the CLI until the job comes back (claims sweep expired leases; then retry backoff). The deadline
    only stops a test that would never end: each CLI call costs an interpreter start, seconds on a loaded machine."""
    deadline = time.monotonic() + 60
    while True:
        claimed = cli("--json", "jobs", "claim", "--worker", "w2", "--lease-seconds", "60")
        assert claimed.code == 0, claimed
        if claimed.json["leases"]:
            (lease,) = claimed.json["leases"]
            assert lease["job_id"] == job_id
            return lease
        assert time.monotonic() < deadline, "the expired lease was never recovered"
        job, _ = _snapshot(ledger_path, job_id)
        if job["state"] == "queued":
            time.sleep(min(5.0, max(0.0, _seconds_until(job["run_at"]))) + 0.05)


@pytest.mark.parametrize("resumed_when", [
    "after_worker2_acked",  # the job is finished: worker 1 finds a succeeded job
    "while_worker2_runs_it",  # only the lease id tells worker 1 from the current holder
    "before_anyone_recovered_it",  # the job still names worker 1's lease: only its expiry fences it
])
def test_worker_frozen_past_its_lease_cannot_heartbeat_or_ack_and_the_job_keeps_worker2s_result(
        ledger_path, cli, resumed_when):
    with _open(ledger_path) as ledger:
        job_id = ops.enqueue(ledger, {"tenant": "acme", "project": "feeds", "type": "vex-ingest",
                                      "payload": {"feed": "osv"}})["job_id"]

    worker1 = subprocess.Popen(
        [sys.executable, str(HELPERS / "cli_worker.py"), str(ledger_path), "w1", "2", W1_ARTIFACT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease2 = None
    try:
        reader = LineReader(worker1.stdout)
        claimed = json.loads(reader.next(timeout=30))
        assert claimed["step"] == "claim" and claimed["code"] == 0, claimed
        (lease1,) = json.loads(claimed["stdout"])["leases"]
        assert lease1["job_id"] == job_id

        # Freeze worker 1 mid-job (it holds no ledger handle: each CLI call opened and closed it).
        os.kill(worker1.pid, signal.SIGSTOP)
        _wait_for_state(worker1.pid, "T")
        time.sleep(max(0.0, _seconds_until(lease1["lease_expires_at"])) + 0.2)

        if resumed_when != "before_anyone_recovered_it":
            lease2 = _claim_as_worker2(cli, ledger_path, job_id)
            if resumed_when == "while_worker2_runs_it":
                beat = cli("--json", "jobs", "heartbeat", job_id, "--lease", lease2["lease_id"])
                assert (beat.code, beat.json["state"]) == (0, "running"), beat
            else:
                acked = cli("--json", "jobs", "ack", job_id, "--lease", lease2["lease_id"],
                            "--artifact", W2_ARTIFACT)
                assert (acked.code, acked.json["state"]) == (0, "succeeded"), acked
        assert _process_state(worker1.pid) == "T", "worker 1 must still be frozen"
        before = _snapshot(ledger_path, job_id)

        os.kill(worker1.pid, signal.SIGCONT)
        heartbeat = json.loads(reader.next(timeout=30))
        ack = json.loads(reader.next(timeout=30))
        assert worker1.wait(timeout=30) == 0
    finally:
        if worker1.poll() is None:
            worker1.kill()
            worker1.wait()

    assert heartbeat["step"] == "heartbeat" and heartbeat["code"] == 3, heartbeat
    assert ack["step"] == "ack" and ack["code"] == 3, ack
    for refused in (heartbeat, ack):
        assert refused["stdout"] == ""
        error = json.loads(refused["stderr"])["error"]
        assert error["type"] == "StaleLease" and error["exit_code"] == 3
        assert lease1["lease_id"] in error["message"]
    # The refused calls changed nothing: same job row, same history head.
    assert _snapshot(ledger_path, job_id) == before

    if resumed_when == "before_anyone_recovered_it":
        lease2 = _claim_as_worker2(cli, ledger_path, job_id)
    if resumed_when != "after_worker2_acked":
        acked = cli("--json", "jobs", "ack", job_id, "--lease", lease2["lease_id"], "--artifact", W2_ARTIFACT)
        assert (acked.code, acked.json["state"]) == (0, "succeeded"), acked
    assert lease2["lease_id"] != lease1["lease_id"]
    assert lease2["attempt"] == 2

    shown = cli("--json", "jobs", "show", job_id)
    assert shown.code == 0, shown
    job = shown.json
    assert job["state"] == "succeeded"
    assert job["lease_id"] == lease2["lease_id"]
    assert job["worker_id"] == "w2"
    assert job["attempts"] == 2
    assert job["artifacts"] == [{"uri": "file:///out/w2/report.json", "digest": "sha256:" + "2" * 64,
                                 "mime": "application/json"}]
    assert job["progress_message"] is None, "worker 1's heartbeat message must not have landed"
    worker2_steps = [("job.leased", "queued", "leased", "w2", lease2["lease_id"], None)]
    if resumed_when == "while_worker2_runs_it":
        worker2_steps += [("job.started", "leased", "running", "w2", lease2["lease_id"], None),
                          ("job.succeeded", "running", "succeeded", "w2", lease2["lease_id"], None)]
    else:
        worker2_steps += [("job.succeeded", "leased", "succeeded", "w2", lease2["lease_id"], None)]
    steps = [(entry["event_type"], entry["from_state"], entry["to_state"], entry["worker_id"],
              entry["lease_id"], entry["reason"]) for entry in job["history"]]
    assert steps == [
        ("job.created", None, "queued", None, None, None),
        ("job.leased", "queued", "leased", "w1", lease1["lease_id"], None),
        ("job.retry_scheduled", "leased", "queued", "w1", lease1["lease_id"], "lease_expired"),
        *worker2_steps,
    ]
    final_artifacts = job["history"][-1]["artifacts"]
    if isinstance(final_artifacts, str):  # history keeps the artifacts column's JSON text as it was hashed
        final_artifacts = json.loads(final_artifacts)
    assert final_artifacts == job["artifacts"]
    with _open(ledger_path) as ledger:
        assert ledger_ops.verify(ledger)["ok"]


# -- the ledger owner killed mid-burst -----------------------------------------------------------------

ROUNDS = 20
MAX_BATCH = 5  # burst_writer.MAX_BATCH: at most this many jobs can be committed but not yet acknowledged


class BurstWriter:
    """One burst_writer.py child, started ahead of time: it imports while the previous round is checked."""

    def __init__(self, ledger_path: Path, prefix: str, seed: int, checkpoint_threshold: str | None):
        command = [sys.executable, str(HELPERS / "burst_writer.py"), str(ledger_path), prefix, str(seed)]
        if checkpoint_threshold:
            command.append(checkpoint_threshold)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.reader = LineReader(self.process.stdout)

    def go(self) -> None:
        assert self.next_line() == "imported"
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def next_line(self) -> str:
        try:
            return self.reader.next(timeout=30)
        except AssertionError as problem:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            raise AssertionError(f"{problem}; exit code {self.process.returncode}, stderr:\n"
                                 f"{self.process.stderr.read()}") from None

    def kill(self) -> tuple[list[str], str]:
        """SIGKILL it; returns the complete lines it printed after "imported", and its stderr."""
        self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(timeout=30)
        lines = self.reader.finish()
        stderr = self.process.stderr.read()
        for stream in (self.process.stdin, self.process.stderr):
            stream.close()
        assert code == -signal.SIGKILL, f"the writer exited by itself ({code}):\n{stderr}"
        return lines[1:], stderr


def test_ledger_owner_killed_during_a_burst_of_writes_loses_no_acknowledged_enqueue(ledger_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    acknowledged: dict[str, tuple[str, str]] = {}  # job id -> (tenant, idempotency key)
    seen: set[str] = set()
    killed_while_writing = 0
    expected_at_least = 0

    def start(round_number: int) -> BurstWriter:
        # Odd rounds make DuckDB checkpoint every few writes, so some kills land mid-checkpoint.
        return BurstWriter(ledger_path, f"r{round_number}", rng.randrange(2**32),
                           "16KB" if round_number % 2 else None)

    writer = start(0)
    following = None
    try:
        for round_number in range(ROUNDS):
            context = f"seed {seed}, round {round_number}"
            writer.go()
            if round_number + 1 < ROUNDS:
                following = start(round_number + 1)  # imports while this round writes and is checked
            if round_number % 6 == 5:
                # Now and then kill it while it opens the ledger or has only begun to write.
                time.sleep(rng.uniform(0.0, 0.15))
            else:
                assert writer.next_line() == "ready", context
                # Let it acknowledge a random number of jobs (so the kill lands mid-burst however
                # loaded the machine is), then a random few milliseconds more.
                target = rng.randint(0, 25)
                for _ in range(target):
                    writer.next_line()
                time.sleep(rng.uniform(0.0, 0.05))
                expected_at_least += target
            lines, stderr = writer.kill()
            writer, following = following, None

            assert "Traceback" not in stderr, f"{context}: the writer failed before it was killed:\n{stderr}"
            if lines and lines[0] == "ready":
                lines = lines[1:]
                killed_while_writing += 1
            acked_now = {}
            for line in lines:
                key, tenant, job_id = line.split()
                acked_now[job_id] = (tenant, key)
            acknowledged.update(acked_now)

            with Ledger.open(ledger_path, lock_timeout=10) as ledger:
                result = ledger_ops.verify(ledger)
                assert result["ok"], context
                jobs = ops.list_jobs(ledger, limit=100_000)["jobs"]
            counts = Counter(job["job_id"] for job in jobs)
            assert max(counts.values(), default=1) == 1, f"{context}: a job appears twice"
            missing = set(acknowledged) - set(counts)
            assert not missing, f"{context}: {len(missing)} acknowledged job(s) lost, e.g. {sorted(missing)[:3]}"
            for job in jobs:
                if job["job_id"] in acknowledged:
                    assert (job["tenant"], job["idempotency_key"]) == acknowledged[job["job_id"]], context
            unacknowledged = set(counts) - seen - set(acked_now)
            assert len(unacknowledged) <= MAX_BATCH, f"{context}: {len(unacknowledged)} jobs nobody enqueued"
            seen |= set(counts)
            assert result["jobs"] == len(jobs)
    finally:
        for child in (writer, following):
            if child is not None and child.process.poll() is None:
                child.process.kill()
                child.process.wait()

    assert killed_while_writing >= ROUNDS // 2, "most kills must land while the child is writing"
    assert len(acknowledged) >= expected_at_least >= ROUNDS, "the writers wrote too little to mean anything"

    # Every acknowledged idempotency key still resolves to its job after all those crashes (sent again with the
    # spec the writer sent: the same key with another spec is refused).
    payloads = {job["job_id"]: job["payload"] for job in jobs}
    specs = [{"tenant": tenant, "project": "burst", "type": "crash-test", "payload": payloads[job_id],
              "idempotency_key": key} for job_id, (tenant, key) in acknowledged.items()]
    with Ledger.open(ledger_path, lock_timeout=10) as ledger:
        again = ops.enqueue_batch(ledger, specs)
        assert again["created"] == 0
        assert again["job_ids"] == list(acknowledged)
        assert ledger_ops.verify(ledger)["ok"]


# -- ledger creation killed midway ---------------------------------------------------------------------

_INIT_CHILD = """
import sys
from pathlib import Path
from airgap_orch.operations import ledger
print("imported", flush=True)
sys.stdin.readline()
ledger.init(Path(sys.argv[1]), site_id="site-crash", lock_timeout=5)
print("created", flush=True)
"""


def test_ledger_init_killed_midway_leaves_no_ledger_or_a_usable_one(tmp_path):
    attempts = 8
    rng = random.Random()
    # All children import at once (the slow part); then each is told to create its ledger and killed.
    children = [subprocess.Popen([sys.executable, "-c", _INIT_CHILD, str(tmp_path / f"ledger-{n}.duckdb")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True) for n in range(attempts)]
    stuck = []
    try:
        for n, child in enumerate(children):
            assert child.stdout.readline() == "imported\n"
            child.stdin.write("go\n")
            child.stdin.flush()
            time.sleep(rng.uniform(0.01, 0.06))
            child.kill()
            child.wait()
            path = tmp_path / f"ledger-{n}.duckdb"
            if not path.exists():
                continue
            try:
                with Ledger.open(path, lock_timeout=5) as ledger:
                    assert ledger_ops.verify(ledger)["ok"]
                continue
            except OrchError as opening:
                try:  # a half-made ledger is acceptable only if init can finish the job
                    ledger_ops.init(path, site_id="site-crash", lock_timeout=5)
                except OrchError as initializing:
                    stuck.append(f"{path.name}: open: {opening}; init: {initializing}")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdin.close()
            child.stdout.close()
    assert not stuck, "\n".join(stuck)
