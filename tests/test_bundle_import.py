"""`bundle plan | import | list` and `airgap status` as an operator runs them: real CLI subprocesses, real keys
(the fixtures of test_bundle_cli.py), a source ledger (site-a) exporting to a target ledger (site-b)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for_marker
from export_fixtures import populate
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)

from airgap_orch.bundle.tarfmt import read_index
from airgap_orch.ledger import Ledger

STATE_QUERIES = {
    "jobs": "SELECT count(*) FROM all_jobs",
    "history": "SELECT count(*) FROM history",
    "quotas": "SELECT count(*) FROM quotas",
    "trust_roots": "SELECT list(version ORDER BY version) FROM trust_roots",
    "floors": "SELECT list((source_site, sequence) ORDER BY source_site, sequence) FROM bundle_imports",
    "mirror_jobs": "SELECT count(*) FROM mirror_jobs",
    "mirror_history": "SELECT count(*) FROM mirror_history",
    "mirror_audit_log": "SELECT count(*) FROM mirror_audit_log",
    "mirror_policies": "SELECT count(*) FROM mirror_policies",
    "mirror_chain_heads": "SELECT list((source_site, chain, seq) ORDER BY source_site, chain) FROM mirror_chain_heads",
    "mirror_rows": "SELECT list((source_site, kind, key) ORDER BY source_site, kind, key) FROM mirror_rows",
}


def state(ledger: Path) -> dict:
    """What an import may change, besides the audit log."""
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return {name: opened._con.execute(query).fetchone()[0] for name, query in STATE_QUERIES.items()}


def audit_entries(ledger: Path, action: str = "bundle.import") -> list[dict]:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        rows = opened._con.execute("SELECT entry FROM audit_log WHERE action = ? ORDER BY seq", [action]).fetchall()
    return [json.loads(row[0]) for row in rows]


def source_counts(ledger: Path) -> tuple[int, int]:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return (opened._con.execute("SELECT count(*) FROM all_jobs").fetchone()[0],
                opened._con.execute("SELECT count(*) FROM history").fetchone()[0])


@pytest.fixture
def source(tmp_path, root_v1) -> Path:  # noqa: F811
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(ledger)
    ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    return ledger


@pytest.fixture
def target(tmp_path) -> Path:
    """site-b's ledger, with a job of its own, nothing pinned."""
    ledger = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(cli("jobs", "enqueue", "--tenant", "local", "--project", "p", "--type", "t", "--json", ledger=ledger))
    return ledger


def bundle(source: Path, holders, path: Path, **kwargs) -> Path:  # noqa: F811
    ok(export(source, path, holders, "--json", **kwargs))
    return path


def test_a_full_bundle_is_planned_then_imported_as_mirrors_and_pins_the_trust_root(holders, source, target,  # noqa: F811
                                                                                  root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    before = state(target)
    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    assert state(target) == before  # a dry run writes nothing
    plan = planned["plan"]
    jobs, entries = source_counts(source)
    tables = {table["table"]: table for table in plan["tables"]}
    assert (tables["jobs"]["rows"], tables["jobs"]["mirror"]) == (jobs, "mirror_jobs")
    assert (tables["history"]["rows"], plan["history_entries"]) == (entries, entries)
    assert tables["quotas"]["action"] == "mirrored, not applied"
    assert (plan["source_site"], plan["sequence"], plan["floor"], plan["pin_trust_root"]) == ("site-a", 1, 0, 1)
    assert planned["plan_digest"] == hashlib.sha256(
        json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    done = ok(cli("bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest", planned["plan_digest"],
                  "--json", ledger=target))
    assert done["imported"] is True and done["pinned_trust_root"] == 1
    after = state(target)
    assert (after["mirror_jobs"], after["mirror_history"]) == (jobs, entries)
    assert after["mirror_policies"] == sum(tables[name]["rows"] for name in
                                           ("quotas", "rate_limits", "concurrency_limits", "circuit_breakers",
                                            "pauses"))
    assert (after["jobs"], after["history"], after["quotas"]) == (before["jobs"], before["history"], 0)
    assert after["floors"] == [("site-a", 1)] and after["trust_roots"] == [1]
    listed = ok(cli("bundle", "list", "--json", ledger=target))
    assert [(row["source_site"], row["sequence"]) for row in listed["imports"]] == [("site-a", 1)]
    assert listed["mirrors"]["site-a"] == {"jobs": jobs, "history": entries, "policies": after["mirror_policies"],
                                           "audit_log": tables["audit_log"]["rows"],
                                           **{name: tables[name]["rows"] for name in
                                              ("idempotency_keys", "job_dependencies", "sources", "backfills",
                                               "backfill_windows")}}
    status = ok(cli("airgap", "status", "--json", ledger=target))
    assert status["trust_root"]["version"] == 1 and status["floors"][0]["sequence"] == 1
    assert status["staleness"]["state"] == "fresh"
    assert audit_entries(target)[-1]["details"]["outcome"] == "imported"
    # the source's export is listed at the source
    assert len(ok(cli("bundle", "list", "--json", ledger=source))["exports"]) == 1


def test_importing_the_same_bundle_again_is_a_no_op_that_says_so(holders, source, target, root_v1,  # noqa: F811
                                                                 tmp_path):
    out = bundle(source, holders, tmp_path / "a.bundle")
    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target))
    before = state(target)
    again = cli("bundle", "import", str(out), ledger=target)
    assert again.code == 0 and "already imported" in again.stdout, again
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["outcome"] == "already-imported"


def test_a_replayed_older_bundle_is_refused_with_exit_5_and_quarantined(holders, source, target, root_v1,  # noqa: F811
                                                                        tmp_path):
    first = bundle(source, holders, tmp_path / "1.bundle")
    second = bundle(source, holders, tmp_path / "2.bundle")
    ok(cli("bundle", "import", str(second), "--trust", str(root_v1), ledger=target))
    before = state(target)
    audits = len(audit_entries(target))
    line = refused(cli("bundle", "import", str(first), ledger=target), 5, "floor 2")
    assert "sequence 1" in line
    assert state(target) == before
    entries = audit_entries(target)
    assert len(entries) == audits + 1
    details = entries[-1]["details"]
    assert (details["outcome"], details["reason_code"], details["sequence"]) == ("refused", "rollback:sequence", 1)
    assert all(check["ok"] for check in details["checks"])
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    quarantine = Path(f"{target}.quarantine")
    assert (quarantine / f"{digest}.bundle").read_bytes() == first.read_bytes()
    assert (quarantine / f"{digest}.reason").read_text() == "rollback:sequence\n"


def test_a_tampered_copy_of_an_imported_bundle_is_refused_not_already_imported(holders, source, target,  # noqa: F811
                                                                               root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target))
    with out.open("rb") as file:
        jobs = read_index(file).member("data/jobs.parquet")
    data = bytearray(out.read_bytes())
    data[jobs.data_offset + jobs.size // 2] ^= 0x01
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    before = state(target)
    result = cli("bundle", "import", str(tampered), ledger=target)
    assert result.code == 4 and "already" not in result.stdout + result.stderr, result
    assert state(target) == before
    digest = hashlib.sha256(bytes(data)).hexdigest()
    assert (Path(f"{target}.quarantine") / f"{digest}.reason").read_text() == "merkle:hash-mismatch\n"
    assert audit_entries(target)[-1]["details"]["reason_code"] == "merkle:hash-mismatch"


def test_a_bundle_for_another_target_is_refused_and_pins_nothing(holders, source, target, root_v1,  # noqa: F811
                                                                 tmp_path):
    out = bundle(source, holders, tmp_path / "c.bundle", target="site-c")
    before = state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target), 5, "site-c")
    assert state(target) == before and before["trust_roots"] is None
    refused(cli("trust", "show", ledger=target), 1, "no trust root is pinned")
    assert audit_entries(target)[-1]["details"]["reason_code"] == "target:wrong-site"


def test_import_with_nothing_pinned_and_no_trust_root_is_refused_in_one_line(holders, source, target,  # noqa: F811
                                                                             tmp_path):
    out = bundle(source, holders, tmp_path / "a.bundle")
    refused(cli("bundle", "import", str(out), ledger=target), 1, "--trust")


def test_a_stale_plan_digest_is_refused_with_exit_3(holders, source, target, root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    before = state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest", "0" * 64, ledger=target),
            3, "plan changed")
    assert state(target) == before


def test_a_broken_history_chain_in_a_signed_bundle_is_refused_with_exit_4(holders, source, target,  # noqa: F811
                                                                          root_v1, tmp_path):  # noqa: F811
    with Ledger.open(source, lock_timeout=5) as opened:  # the source site's own history was altered
        opened._con.execute("UPDATE history SET entry = replace(entry, 'scan', 'scam') WHERE seq = 2")
    out = bundle(source, holders, tmp_path / "a.bundle")
    before = state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target), 4, "history entry 2")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:history"


def test_a_later_full_bundle_replaces_the_mirror_of_its_source(holders, source, target, root_v1,  # noqa: F811
                                                               tmp_path):
    first = bundle(source, holders, tmp_path / "1.bundle")
    ok(cli("bundle", "import", str(first), "--trust", str(root_v1), ledger=target))
    ok(cli("jobs", "enqueue", "--tenant", "acme", "--project", "p", "--type", "t", "--json", ledger=source))
    second = bundle(source, holders, tmp_path / "2.bundle")
    ok(cli("bundle", "import", str(second), ledger=target))
    jobs, entries = source_counts(source)
    after = state(target)
    assert (after["mirror_jobs"], after["mirror_history"], after["floors"]) == (
        jobs, entries, [("site-a", 1), ("site-a", 2)])


def kill_import_at(point: str, target: Path, out: Path, root: Path, marker: Path) -> None:
    """Run `bundle import` in a real subprocess, held at pause `point` (bundle_import.PAUSE_POINTS), and SIGKILL it
    there."""
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(target), "bundle", "import", str(out),
               "--trust", str(root)]
    env = {**os.environ, "AIRGAP_ORCH_TEST_IMPORT_PAUSE": f"{point}:{marker}"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_marker(process, marker, f"the import never reached {point}", timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("point", ["copied", "verified", "mirrors-written", "before-commit", "committed"])
def test_sigkill_during_an_import_leaves_the_ledger_before_or_after_never_between(holders, source, target,  # noqa: F811
                                                                                  root_v1, tmp_path, point):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    before = state(target)
    kill_import_at(point, target, out, root_v1, tmp_path / "paused")
    after = state(target)
    if point == "committed":
        assert after["floors"] == [("site-a", 1)] and after["trust_roots"] == [1]
        assert after["mirror_jobs"] == source_counts(source)[0]
    else:
        assert after == before
        # and the import still runs to the end afterwards
        ok(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target))
        assert state(target)["floors"] == [("site-a", 1)]
    assert not list(target.parent.glob(f".{target.name}.import-*"))  # the private copy was never named


def test_a_rotation_the_bundle_carries_is_stored_and_a_newer_trust_option_is_refused(holders, root_v1, source,  # noqa: F811
                                                                                     target, tmp_path):
    v2 = tmp_path / "root-v2.json"
    ok(cli("trust", "rotate", str(root_v1), "--out", str(v2), "--site", f"site-a={holders.public('a2')}", "--json"))
    holders.sign_root(v2, "r1", "r2", previous=root_v1)
    ok(cli("trust", "pin", str(v2), ledger=source))
    out = bundle(source, holders, tmp_path / "rotated.bundle", key="a2")
    ok(cli("trust", "pin", str(root_v1), ledger=target))
    # --trust may name the pinned root or an older one, never a newer one
    refused(cli("bundle", "import", str(out), "--trust", str(v2), ledger=target), 1, "newer than the pinned")
    assert state(target)["trust_roots"] == [1]
    # that bundle does not carry v2: a2 is bound to no site in v1
    refused(cli("bundle", "import", str(out), ledger=target), 4, "binds to no site")
    with_root = tmp_path / "with-root.bundle"
    ok(export(source, with_root, holders, "--trust", str(v2), "--json", key="a2"))
    done = ok(cli("bundle", "import", str(with_root), "--trust", str(root_v1), "--json", ledger=target))
    assert done["trust_roots_stored"] == [2]
    assert state(target)["trust_roots"] == [1, 2]
    assert ok(cli("trust", "show", "--json", ledger=target))["version"] == 2


def test_a_stale_bundle_is_refused_in_strict_mode_and_forced_with_a_reason_is_audited(holders, source,  # noqa: F811
                                                                                      target, root_v1, tmp_path):  # noqa: F811
    from datetime import UTC, datetime, timedelta
    old = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0).isoformat()
    stale = tmp_path / "stale.bundle"
    ok(export(source, stale, holders, "--created-at", old, "--json"))
    fresh = bundle(source, holders, tmp_path / "fresh.bundle")
    before = state(target)
    refused(cli("bundle", "import", str(stale), "--trust", str(root_v1), "--staleness", "strict", ledger=target), 5)
    assert state(target) == before
    refused(cli("bundle", "import", str(stale), "--trust", str(root_v1), "--force", ledger=target), 1, "--reason")
    done = ok(cli("bundle", "import", str(stale), "--trust", str(root_v1), "--staleness", "strict", "--force",
                  "--reason", "site was offline", "--json", ledger=target))
    assert done["imported"] is True
    entry = audit_entries(target)[-1]
    assert (entry["reason"], entry["details"]["outcome"], entry["details"]["forced"]) == (
        "site was offline", "forced", True)
    status = cli("airgap", "status", "--staleness", "strict", "--json", ledger=target)
    assert status.code == 5, status  # the latest anchor this site holds is past the budget
    ok(cli("bundle", "import", str(fresh), ledger=target))
    shown = ok(cli("airgap", "status", "--staleness", "strict", "--json", ledger=target))
    assert shown["staleness"]["state"] == "fresh"


def test_the_ledgers_staleness_setting_is_the_default_mode_and_is_audited(holders, source, target,  # noqa: F811
                                                                          root_v1, tmp_path):  # noqa: F811
    from datetime import UTC, datetime, timedelta
    old = (datetime.now(UTC) - timedelta(days=10)).replace(microsecond=0).isoformat()
    stale = tmp_path / "stale.bundle"
    ok(export(source, stale, holders, "--created-at", old, "--json"))
    ok(cli("airgap", "staleness", "strict", "--reason", "policy", ledger=target))
    assert audit_entries(target, "airgap.staleness")[-1]["details"] == {"from": "warn", "to": "strict"}
    refused(cli("bundle", "import", str(stale), "--trust", str(root_v1), ledger=target), 5, "strict")
    done = ok(cli("bundle", "import", str(stale), "--trust", str(root_v1), "--staleness", "warn", "--json",
                  ledger=target))
    assert done["staleness"]["state"] == "stale" and done["staleness"]["warning"] is True


def test_a_site_never_imports_a_bundle_it_exported_to_itself(holders, source, root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "self.bundle", target="site-a")
    before = state(source)
    refused(cli("bundle", "import", str(out), ledger=source), 5, "comes from this site")
    assert state(source) == before


def test_plan_list_and_status_print_for_people(holders, source, target, root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    shown = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), ledger=target))
    assert "into mirror_jobs (replacing 0)" in shown and "plan digest: " in shown
    assert "pins trust root version 1 (from --trust)" in shown
    shown = ok(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target))
    assert "imported bundle" in shown and "pinned trust root version 1" in shown
    assert "already imported" in ok(cli("bundle", "plan", str(out), ledger=target))
    listed = ok(cli("bundle", "list", ledger=target))
    assert "imports: 1" in listed and "mirror of site-a:" in listed
    status = ok(cli("airgap", "status", ledger=target))
    assert "version 1" in status and "floor site-a: sequence 1" in status and "staleness: fresh" in status
