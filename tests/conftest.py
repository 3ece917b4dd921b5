"""Shared fixtures: a real ledger file per test, a settable clock, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airgap_orch import clock
from airgap_orch.ledger import Ledger
from airgap_orch.operations import ledger as ledger_ops


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.duckdb"
    ledger_ops.init(path, site_id="site-test", lock_timeout=1)
    return path


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_path, lock_timeout=1)
    yield opened
    opened.close()


@pytest.fixture
def manual_clock() -> Iterator[clock.ManualClock]:
    fake = clock.ManualClock()
    clock.set_clock(fake)
    yield fake
    clock.set_clock(None)


class CliResult:
    def __init__(self, completed: subprocess.CompletedProcess[str]):
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    @property
    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, stdout={self.stdout[-500:]!r}, stderr={self.stderr[-500:]!r})"


def run_cli(ledger_path: Path | None, *args: str, timeout: float = 60, env: dict | None = None,
            input: str | None = None) -> CliResult:
    command = [sys.executable, "-m", "airgap_orch"]
    if ledger_path is not None:
        command += ["--ledger", str(ledger_path)]
    completed = subprocess.run(command + list(args), capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})}, input=input)
    return CliResult(completed)


@pytest.fixture
def cli(ledger_path: Path):
    """Run the real CLI against this test's ledger: cli("jobs", "list", "--json")."""

    def run(*args: str, **kwargs) -> CliResult:
        return run_cli(ledger_path, *args, **kwargs)

    return run


def run_cli_on_a_terminal(ledger_path: Path, *args: str, timeout: float = 60) -> tuple[CliResult, bytes]:
    """Run the real CLI with its stderr on a pseudo-terminal (as an operator at a shell would see it): the
    result (stdout captured; stderr empty in it) and everything the terminal showed."""
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path), *args]
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, text=True)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        os.close(controller)
    return CliResult(subprocess.CompletedProcess(command, process.returncode, stdout, "")), shown


def list_all(ledger: Ledger, name: str = "jobs.list", limit: int = 100_000, **params: object) -> dict:
    """Every row of a paged listing (jobs.list, ledger.events, ...) run on `ledger` in this process, up to `limit`:
    a page holds at most validation.MAX_PAGE_ROWS, so this follows next_cursor as the CLI does."""
    from airgap_orch import api
    from airgap_orch.operations import dispatch

    return api.read_pages(lambda operation, given: dispatch.run(ledger, operation, given), name, params, limit)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """The first true value of condition(), asked every `every` seconds for up to `timeout` seconds; past that an
    AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_for_marker(process: subprocess.Popen, marker: Path, what: str, timeout: float = 120) -> None:
    """Wait until `process` (a real subprocess held at a test pause point) writes `marker`; fail with its output if
    it exits first, or with `what` if `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{what} within {timeout:g}s"
        time.sleep(0.05)
