"""docs/runbooks (issue 17): every command in a runbook's ```sh blocks runs, in order, against a real ledger (and a
real `serve` subprocess where the runbook's first line says `<!-- runbook-test: server -->`), with the runbook's
<PLACEHOLDERS> filled from the state each test sets up first. The conventions are docs/runbooks/README.md's."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_fixtures import cli_env, init_ledger, run_cli, serving
from test_bundle_cli import export, holders, new_ledger, ok, root_v1  # noqa: F401 (fixtures)

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as job_ops

RUNBOOKS = Path(__file__).resolve().parent.parent / "docs" / "runbooks"
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
_MODE = re.compile(r"^<!-- runbook-test: (?P<mode>ledger|server|needs serve (?P<flags>[^>]*?)) -->")
_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")


def commands_of(runbook: Path) -> str:
    """The runbook's sh blocks, in order, as one script."""
    blocks = _BLOCK.findall(runbook.read_text())
    assert blocks, f"{runbook.name} has no ```sh block"
    return "\n".join(blocks)


def mode_of(runbook: Path) -> re.Match:
    first = runbook.read_text().splitlines()[0]
    mode = _MODE.match(first)
    assert mode, f"{runbook.name}: the first line must say how the test runs it (docs/runbooks/README.md): {first!r}"
    return mode


def fill(script: str, values: dict[str, str], runbook: Path) -> str:
    wanted = set(_PLACEHOLDER.findall(script))
    assert wanted <= set(values), f"{runbook.name}: no value for {sorted(wanted - set(values))}"
    listed = runbook.read_text().split("\n#", 1)[1]  # the placeholders are named under the title
    for name in wanted:
        assert f"<{name}>" in listed.split("```", 1)[0], f"{runbook.name} does not say what <{name}> is"
    return _PLACEHOLDER.sub(lambda match: values[match[1]], script)


def run_runbook(name: str, ledger: Path, values: dict[str, str], tmp_path: Path, *,
                runbooks: Path = RUNBOOKS) -> subprocess.CompletedProcess:
    """Run the runbook's commands with `airgap-orch` on PATH (this Python's CLI) and $AIRGAP_ORCH_LEDGER set."""
    runbook = runbooks / name
    script = fill(commands_of(runbook), values, runbook)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    cli = bin_dir / "airgap-orch"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m airgap_orch "$@"\n')
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    env = cli_env({"AIRGAP_ORCH_LEDGER": str(ledger), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, (f"{name} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                                  f"{done.stderr[-3000:]}")
    return done


def run_with_mode(name: str, ledger: Path, values: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    mode = mode_of(RUNBOOKS / name)
    if mode["mode"] == "server":
        with serving(ledger, "--no-auth") as server:
            done = run_runbook(name, ledger, values, tmp_path)
            assert server.alive()
        return done
    return run_runbook(name, ledger, values, tmp_path)


def test_every_runbook_is_tested_and_says_how():
    tested = {"job-recovery.md", "rate-limits-and-leases.md", "quotas-and-backfills.md", "refused-imports.md",
              "job-logs.md"}
    found = {path.name for path in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert found == tested
    for name in found:
        mode_of(RUNBOOKS / name)
        assert name in (RUNBOOKS / "README.md").read_text(), name


def test_the_job_recovery_runbook_recovers_a_stuck_lease_and_replays_dead_letters(tmp_path):
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with Ledger.open(ledger, lock_timeout=5) as opened:
        job_ops.enqueue_batch(opened, [{"tenant": "acme", "project": "feeds", "type": "nvd", "max_attempts": 1}
                                       for _ in range(3)])
        (dead,) = job_ops.claim(opened, worker_id="w1", limit=1, job_type="nvd")["leases"]
        job_ops.fail(opened, dead["job_id"], dead["lease_id"], error="feed answered 503")
        (stuck,) = job_ops.claim(opened, worker_id="w2", limit=1, job_type="nvd", lease_seconds=1)["leases"]
    time.sleep(1.2)  # the lease runs out; no server is sweeping
    done = run_with_mode("job-recovery.md", ledger, {
        "JOB_ID": stuck["job_id"], "DEAD_JOB_ID": dead["job_id"], "TENANT": "acme", "TYPE": "nvd",
        "SINCE": "2020-01-01T00:00:00Z"}, tmp_path)
    assert "leased (lease expired)" in done.stdout and "recovered: 1" in done.stdout
    with Ledger.open(ledger, lock_timeout=5) as opened:
        states = dict(opened._con.execute("SELECT job_id, state FROM all_jobs").fetchall())
        replays = dict(opened._con.execute("SELECT replay_of, count(*) FROM all_jobs WHERE replay_of IS NOT NULL "
                                           "GROUP BY replay_of").fetchall())
    assert states[stuck["job_id"]] == "dead_letter"  # max_attempts 1: recovered into the dead-letter queue
    assert states[dead["job_id"]] == "dead_letter"  # a replay leaves the original as it was
    assert replays == {stuck["job_id"]: 1, dead["job_id"]: 2}  # the bulk replay took each once; then one --again


def test_the_rate_limit_and_lease_runbook_changes_limits_through_a_running_server(tmp_path):
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with Ledger.open(ledger, lock_timeout=5) as opened:
        job_ops.enqueue_batch(opened, [{"tenant": "acme", "project": "feeds", "type": "nvd", "queue": "feeds",
                                        "keys": ["host:nvd.example"]} for _ in range(3)])
    done = run_with_mode("rate-limits-and-leases.md", ledger, {
        "TENANT": "acme", "TYPE": "nvd", "QUEUE": "feeds", "KEY": "host:nvd.example", "TICKET": "OPS-42"}, tmp_path)
    assert "[default: 30.0]" in done.stdout
    actions = [entry["action"] for entry in ok(run_cli("--json", "audit", "list", ledger=ledger))["entries"]]
    assert actions == ["ratelimit.set", "concurrency.set", "queue.pause", "queue.resume", "ratelimit.delete",
                       "concurrency.delete"], actions


def test_the_quota_and_backfill_runbook_records_each_change_with_its_reason_and_ticket(tmp_path):
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with serving(ledger, "--no-auth") as server:
        created = server.request("POST", "/v1/backfills", {
            "tenant": "acme", "project": "feeds", "type": "nvd", "from": "2030-02-01", "to": "2030-02-02",
            "step": "1d"}, headers={"X-Orch-Reason": "setup", "X-Orch-Ticket": "OPS-1"})
        assert created.status == 200, created
    done = run_with_mode("quotas-and-backfills.md", ledger, {
        "TENANT": "acme", "PROJECT": "feeds", "TYPE": "nvd", "TICKET": "OPS-7",
        "BACKFILL_ID": created.json["backfill_id"]}, tmp_path)
    assert "ok: True" in done.stdout
    entries = ok(run_cli("--json", "audit", "list", ledger=ledger))["entries"]
    changes = [(entry["action"], entry["ticket"]) for entry in entries[1:]]
    assert changes == [("quota.set", "OPS-7"), ("quota.set", "OPS-7"), ("backfill.create", "OPS-7"),
                       ("backfill.cancel", "OPS-7")], changes
    assert all(entry["reason"] for entry in entries)


def test_the_refused_import_runbook_reads_the_quarantine_and_the_audit_entry(tmp_path, holders, root_v1):  # noqa: F811
    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    with Ledger.open(source, lock_timeout=5) as opened:
        job_ops.enqueue(opened, {"tenant": "acme", "project": "p", "type": "t"})
    ok(run_cli("trust", "pin", str(root_v1), ledger=source))
    bundle = tmp_path / "a.bundle"
    ok(export(source, bundle, holders, "--json"))
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(run_cli("trust", "pin", str(root_v1), ledger=target))
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    refused = run_cli("bundle", "import", str(tampered), ledger=target)
    assert refused.code == 4, refused
    done = run_with_mode("refused-imports.md", target, {"BUNDLE": str(bundle)}, tmp_path)
    assert "refused" in done.stdout and ".reason" in done.stdout
    quarantined = list(Path(f"{target}.quarantine").glob("*.reason"))
    assert len(quarantined) == 1 and quarantined[0].read_text().strip() in done.stdout


def test_the_job_log_runbook_shows_the_serve_flags_and_a_jobs_lines(tmp_path):
    mode = mode_of(RUNBOOKS / "job-logs.md")
    assert mode["flags"], "job-logs.md names the serve flags it needs"
    help_text = run_cli("serve", "--help").stdout
    assert all(flag in help_text for flag in mode["flags"].split()), help_text
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    with Ledger.open(ledger, lock_timeout=5) as opened:
        job_id = job_ops.enqueue(opened, {"tenant": "acme", "project": "p", "type": "t"})["job_id"]
        lease_id = job_ops.claim(opened, worker_id="w1")["leases"][0]["lease_id"]
        job_ops.heartbeat(opened, job_id, lease_id, logs=[{"message": "fetched the feed"},
                                                          {"message": "no CVE id in one advisory", "level": "warning"}])
    with serving(ledger, "--no-auth"):
        done = run_runbook("job-logs.md", ledger, {"JOB_ID": job_id}, tmp_path)
    assert "--job-log-lines" in done.stdout and "fetched the feed" in done.stdout
    assert "no CVE id in one advisory" in done.stdout


def test_a_runbook_command_that_fails_fails_the_test(tmp_path):
    """The harness itself: `set -euo pipefail` stops at the first failing command, and the test says which."""
    ledger = init_ledger(tmp_path / "ledger.duckdb")
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "broken.md").write_text("<!-- runbook-test: ledger -->\n# Broken\n\nPlaceholders: `<JOB_ID>`.\n\n"
                                      "```sh\nairgap-orch jobs show <JOB_ID>\necho after\n```\n")
    with pytest.raises(AssertionError, match="broken.md failed") as failed:
        run_runbook("broken.md", ledger, {"JOB_ID": "no-such-job"}, tmp_path, runbooks=folder)
    assert "is not a UUID" in str(failed.value)
    assert "\nafter\n" not in str(failed.value).split("failed (exit 1):", 1)[1]  # stdout: nothing ran after it
