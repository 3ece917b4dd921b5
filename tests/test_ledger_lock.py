"""One writer: while a process holds the ledger, others wait up to --lock-timeout, then exit 6 naming the
holder, and leave the file untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airgap_orch import clock
from airgap_orch.errors import LedgerBusy
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops

HOLD_LEDGER = Path(__file__).parent / "helpers" / "hold_ledger.py"
ENQUEUE = ("jobs", "enqueue", "--tenant", "acme", "--project", "scans", "--type", "image-scan",
           "--payload", '{"image": "nginx:1.27"}')


class Holder:
    """A child process holding the ledger open until released (or until hold_seconds pass)."""

    def __init__(self, ledger_path: Path, hold_seconds: float):
        self.process = subprocess.Popen([sys.executable, str(HOLD_LEDGER), str(ledger_path), str(hold_seconds)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        assert line.startswith("held "), (line, self.process.stderr.read() if not line else "")
        self.pid = int(line.split()[1])
        assert self.pid == self.process.pid

    def wait_released(self, timeout: float = 30) -> str:
        """Wait until it closed the ledger and exited; returns the time it closed the ledger at."""
        line = self.process.stdout.readline()
        assert line.startswith("released "), line
        assert self.process.wait(timeout=timeout) == 0
        return line.split()[1]

    def release(self) -> str:
        self.process.stdin.write("release\n")
        self.process.stdin.flush()
        return self.wait_released()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            stream.close()


@pytest.fixture
def holder_factory():
    holders: list[Holder] = []

    def start(ledger_path: Path, hold_seconds: float = 60) -> Holder:
        holders.append(Holder(ledger_path, hold_seconds))
        return holders[-1]

    yield start
    for holder in holders:
        holder.stop()


def _content(ledger_path: Path) -> tuple[dict, dict]:
    """Everything a reader can see: info (counts, history head) and every job row."""
    with Ledger.open(ledger_path, lock_timeout=10) as ledger:
        return ledger_ops.info(ledger), ops.list_jobs(ledger, limit=100_000)


def _file_digests(ledger_path: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(ledger_path.parent.glob(ledger_path.name + "*"))}


def _seed(ledger_path: Path) -> None:
    with Ledger.open(ledger_path, lock_timeout=10) as ledger:
        for number in range(3):
            ops.enqueue(ledger, {"tenant": "acme", "project": "scans", "type": "image-scan",
                                 "payload": {"n": number}, "idempotency_key": f"seed-{number}"})
        ops.claim(ledger, worker_id="w-seed", limit=1, lease_seconds=300)


def test_busy_ledger_gives_exit_6_naming_the_holder_after_the_lock_timeout_and_leaves_the_file_intact(
        ledger_path, cli, holder_factory):
    _seed(ledger_path)
    before = _content(ledger_path)
    holder = holder_factory(ledger_path)
    held_bytes = _file_digests(ledger_path)

    started = time.monotonic()
    refused = cli("--lock-timeout", "0.5", *ENQUEUE)
    elapsed = time.monotonic() - started
    assert refused.code == 6, refused
    assert refused.stdout == ""
    assert refused.stderr.endswith("\n") and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("airgap-orch: error: ")
    assert str(holder.pid) in refused.stderr
    assert 0.5 <= elapsed < 15, f"it waited {elapsed:.2f}s with --lock-timeout 0.5"

    refused_json = cli("--lock-timeout", "0.5", "--json", "jobs", "list")
    assert refused_json.code == 6, refused_json
    assert refused_json.stdout == ""
    error = json.loads(refused_json.stderr)["error"]
    assert (error["type"], error["exit_code"]) == ("LedgerBusy", 6)
    assert str(holder.pid) in error["message"]

    # The core says the same to in-process callers, with the holder's PID as a field.
    started = time.monotonic()
    with pytest.raises(LedgerBusy) as busy:
        Ledger.open(ledger_path, lock_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert busy.value.holder_pid == holder.pid

    assert _file_digests(ledger_path) == held_bytes, "a refused opener touched the ledger file"
    holder.release()

    verified = cli("--json", "ledger", "verify")
    assert verified.code == 0, verified
    assert verified.json["jobs"] == 3
    assert _content(ledger_path) == before


def test_busy_ledger_with_lock_timeout_zero_fails_at_once_naming_this_process(ledger, ledger_path, cli):
    started = time.monotonic()
    refused = cli("--lock-timeout", "0", "--json", *ENQUEUE)
    elapsed = time.monotonic() - started
    assert refused.code == 6, refused
    error = json.loads(refused.stderr)["error"]
    assert f"process {os.getpid()}" in error["message"]
    assert elapsed < 10
    assert ops.list_jobs(ledger)["jobs"] == []


def test_command_with_a_longer_lock_timeout_waits_for_the_holder_and_then_succeeds(
        ledger_path, holder_factory):
    holder = holder_factory(ledger_path, hold_seconds=3)
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), "--lock-timeout", "30",
               "--json", *ENQUEUE]
    started = time.monotonic()
    waiting = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    released_at = holder.wait_released()
    stdout, stderr = waiting.communicate(timeout=60)
    elapsed = time.monotonic() - started

    assert waiting.returncode == 0, stderr
    assert elapsed < 30
    job_id = json.loads(stdout)["job_id"]
    with Ledger.open(ledger_path, lock_timeout=10) as ledger:
        job = ops.show(ledger, job_id)
        assert ledger_ops.verify(ledger)["jobs"] == 1
    # Its write happened after the holder let go, not before: it really waited.
    assert clock.parse_iso(job["created_at"]) > clock.parse_iso(released_at)
