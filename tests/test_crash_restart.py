"""Restarts after crashes: a WAL left by a killed process is folded into the file on the next open, so the
WAL (and what each open replays) does not grow from crash to crash, and no committed write is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from airgap_orch.ledger import Ledger
from airgap_orch.ledger.store import wal_path
from airgap_orch.operations import ledger as ledger_ops

CRASH_WRITER = Path(__file__).parent / "helpers" / "crash_writer.py"
JOBS_PER_CRASH = 300
CRASHES = 4


def write_and_get_killed(ledger_path: Path, prefix: str, jobs: int = JOBS_PER_CRASH) -> dict[str, float]:
    """Run crash_writer.py until it has committed its enqueues, then SIGKILL it; its report as numbers."""
    process = subprocess.Popen([sys.executable, str(CRASH_WRITER), str(ledger_path), str(jobs), prefix],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("wrote "), (line, process.stderr.read() if not line else "")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return {key: float(value) for key, value in (field.split("=") for field in line.split()[2:])}


def test_the_wal_left_by_a_sigkill_does_not_grow_across_crashes_and_no_write_is_lost(ledger_path, cli):
    wal = wal_path(ledger_path)
    left_by_crash = []
    for crash in range(CRASHES):
        report = write_and_get_killed(ledger_path, f"crash-{crash}")
        if crash > 0:
            assert report["wal_at_open"] > 0, report  # the previous crash left its writes in the WAL
            assert report["wal_after_open"] == -1, report  # and the open folded them into the file
        assert wal.exists(), "the kill came before any checkpoint: the WAL must hold this crash's writes"
        left_by_crash.append(wal.stat().st_size)
    # Each WAL holds one crash's writes only (the same number of similar jobs each time), not all of them so far.
    assert max(left_by_crash) < 1.5 * left_by_crash[0], left_by_crash

    with Ledger.open(ledger_path, lock_timeout=5):
        assert not wal.exists()
    verified = cli("ledger", "verify", "--json")
    assert verified.code == 0, verified
    info = cli("ledger", "info", "--json")
    assert info.code == 0, info
    assert info.json["jobs"] == {"queued": CRASHES * JOBS_PER_CRASH}, info.json
    assert not wal.exists()  # a clean close leaves no WAL


def test_a_wal_left_by_a_crash_through_a_symlink_is_folded_in_when_opened_through_it_again(ledger_path, tmp_path):
    link = tmp_path / "current.duckdb"
    link.symlink_to(ledger_path)
    write_and_get_killed(link, "first", jobs=50)
    assert wal_path(ledger_path).exists()  # DuckDB keeps the WAL beside the file the link points to
    report = write_and_get_killed(link, "second", jobs=50)
    assert report["wal_at_open"] > 0 and report["wal_after_open"] == -1, report
    with Ledger.open(link, lock_timeout=5) as ledger:
        assert ledger_ops.info(ledger)["jobs"] == {"queued": 100}
