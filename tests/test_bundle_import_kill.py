"""Import rule 3 (issue 15): SIGKILL at ANY moment of a `bundle import` leaves the target as it was or as a
completed import leaves it, never between. test_bundle_import.py kills the import at its named pause points;
here a real CLI subprocess, unpaused, is killed after a random delay (seeded) that falls anywhere from the
interpreter's start to the end of the import, several times over. After each kill the ledger must reopen, hold
exactly the state before or the state after, and take the import to its end."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from export_fixtures import copy_ledger, populate
from test_bundle_cli import cli, export, holders, new_ledger, ok, root_v1  # noqa: F401 (fixtures)

from airgap_orch.ledger import Ledger
from airgap_orch.operations import bundle_import

SEED = 1515
KILLS = 7
JOBS_PER_TENANT = 1_500  # a bundle large enough that the import's own work is a good part of the process's life

# What an import may change, row by row (times of the import itself left out: a second import is another moment).
STATE_QUERIES = {
    "jobs": "SELECT * FROM all_jobs ORDER BY job_id",
    "history": "SELECT * FROM history ORDER BY seq",
    "quotas": "SELECT * FROM quotas ORDER BY ALL",
    "rate_limits": "SELECT * FROM rate_limits ORDER BY ALL",
    "concurrency_limits": "SELECT * FROM concurrency_limits ORDER BY ALL",
    "circuit_breakers": "SELECT * FROM circuit_breakers ORDER BY ALL",
    "pauses": "SELECT * FROM pauses ORDER BY ALL",
    "mirror_jobs": "SELECT * FROM mirror_jobs ORDER BY ALL",
    "mirror_history": "SELECT * FROM mirror_history ORDER BY ALL",
    "mirror_policies": "SELECT * FROM mirror_policies ORDER BY ALL",
    "floors": "SELECT source_site, sequence, kind, bundle_id, payload_digest, created_at, outcome FROM bundle_imports "
              "ORDER BY ALL",
    "trust_roots": "SELECT version, root_json, fingerprint, expires_at FROM trust_roots ORDER BY version",
}
AUDIT_QUERY = "SELECT count(*) FROM audit_log WHERE action = 'bundle.import'"


def state(ledger: Path) -> dict[str, tuple[int, str]]:
    """(rows, sha256 of the rows) per table an import may change; opening the ledger is part of the check."""
    with Ledger.open(ledger, lock_timeout=10) as opened:
        found = {}
        for name, query in STATE_QUERIES.items():
            rows = opened._con.execute(query).fetchall()
            found[name] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        found["import_audit_entries"] = opened._con.execute(AUDIT_QUERY).fetchone()[0]
    return found


def import_command(ledger: Path, bundle: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger), "bundle", "import", str(bundle),
            "--trust", str(root)]


def test_sigkill_at_random_moments_of_an_import_leaves_the_state_before_or_after_and_the_import_then_completes(
        holders, root_v1, tmp_path):  # noqa: F811
    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(source, jobs_per_tenant=JOBS_PER_TENANT)
    ok(cli("trust", "pin", str(root_v1), ledger=source))
    bundle = tmp_path / "a.bundle"
    ok(export(source, bundle, holders, "--json"))
    pristine = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(cli("jobs", "enqueue", "--tenant", "local", "--project", "p", "--type", "t", "--json", ledger=pristine))
    before = state(pristine)

    # The state after a completed import, and how long a whole import process lives (interpreter start included).
    reference = tmp_path / "reference.duckdb"
    copy_ledger(pristine, reference)
    started = time.monotonic()
    done = subprocess.run(import_command(reference, bundle, root_v1), capture_output=True, text=True, timeout=120)
    lifetime = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    after = state(reference)
    with Ledger.open(source, lock_timeout=10) as opened:
        source_jobs = opened._con.execute("SELECT count(*) FROM all_jobs").fetchone()[0]
    assert after["mirror_jobs"][0] == source_jobs > 2 * JOBS_PER_TENANT and after["floors"][0] == 1
    assert after != before and after["import_audit_entries"] == before["import_audit_entries"] + 1

    # The interpreter's start with the CLI's imports: kills before it ends hit nothing of the import's own work.
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import airgap_orch.cli.main, airgap_orch.operations.bundle_import"],
                   capture_output=True, timeout=120, check=True)
    startup = min(time.monotonic() - started, 0.6 * lifetime)

    chooser = random.Random(SEED)
    seen = []
    for kill in range(KILLS):
        target = tmp_path / f"kill-{kill}.duckdb"
        copy_ledger(pristine, target)
        delay = chooser.uniform(0.9 * startup, 1.05 * lifetime)  # from the end of the start to past the end
        process = subprocess.Popen(import_command(target, bundle, root_v1), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=dict(os.environ))
        try:
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        found = state(target)  # the ledger reopens after the kill
        outcome = "before" if found == before else "after" if found == after else "PARTIAL"
        seen.append((round(delay, 2), process.returncode, outcome))
        assert outcome != "PARTIAL", (seen, {name: "before" if found[name] == before[name] else "after"
                                             if found[name] == after[name] else "neither" for name in found})
        assert not list(tmp_path.glob(f".{target.name}.import-*")), seen  # the private copy was never named
        # ... and the import runs to its end afterwards (an import the kill let commit: "already imported").
        with Ledger.open(target, lock_timeout=10) as ledger:
            result = bundle_import.import_bundle(ledger, bundle, trust_root=root_v1.read_bytes())
        assert result["imported"] == (outcome == "before") and result["already_imported"] == (outcome == "after")
        final = state(target)
        audits = final.pop("import_audit_entries")
        assert final == {name: value for name, value in after.items() if name != "import_audit_entries"}, seen
        assert audits == after["import_audit_entries"] + (outcome == "after"), seen
    print(f"kills (delay s, exit code, state found); start {startup:.2f} s, whole import {lifetime:.2f} s: {seen}")
