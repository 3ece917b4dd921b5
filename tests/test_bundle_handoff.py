"""Incremental bundles, `bundle export --reissue` and hand-off, as an operator runs them: real CLI subprocesses,
real keys (the fixtures of test_bundle_cli.py), real ledgers: site-a exports, site-b imports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for_marker
from export_fixtures import copy_ledger, read_table
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import source  # noqa: F401 (fixture: site-a, filled, version 1 pinned)

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as job_ops

TARGET_STATE = {
    "jobs": "SELECT list((job_id, state, site_id) ORDER BY job_id) FROM all_jobs",
    "history": "SELECT count(*) FROM history",
    "keys": "SELECT count(*) FROM idempotency_keys",
    "floors": "SELECT list((source_site, sequence) ORDER BY source_site, sequence) FROM bundle_imports",
    "mirror_jobs": "SELECT count(*) FROM mirror_jobs",
    "mirror_history": "SELECT list((seq, entry_hash) ORDER BY seq) FROM mirror_history",
    "backfill_windows": "SELECT count(*) FROM backfill_windows",
}


def query(ledger: Path, sql: str, *params):
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return opened._con.execute(sql, list(params)).fetchall()


def state(ledger: Path) -> dict:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return {name: opened._con.execute(sql).fetchone()[0] for name, sql in TARGET_STATE.items()}


def last_audit(ledger: Path, action: str = "bundle.import") -> dict:
    rows = query(ledger, "SELECT entry FROM audit_log WHERE action = ? ORDER BY seq DESC LIMIT 1", action)
    return json.loads(rows[0][0])


@pytest.fixture
def target(tmp_path, root_v1) -> Path:  # noqa: F811
    """site-b's ledger, with a job of its own and version 1 pinned."""
    ledger = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(cli("jobs", "enqueue", "--tenant", "local", "--project", "p", "--type", "t", "--json", ledger=ledger))
    ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    return ledger


def bundle(source: Path, holders, path: Path, *extra: str, **kwargs) -> dict:  # noqa: F811
    return ok(export(source, path, holders, *extra, "--json", **kwargs))


def work(ledger: Path, *, enqueue: int = 2, ack: int = 1) -> None:
    """The source goes on working: new jobs, a job finished."""
    with Ledger.open(ledger, lock_timeout=5) as opened:
        for n in range(enqueue):
            job_ops.enqueue(opened, {"tenant": "acme", "project": "web", "type": "later", "payload": {"n": n}})
        if ack:
            for lease in job_ops.claim(opened, worker_id="w2", limit=ack, job_type="scan")["leases"]:
                job_ops.ack(opened, lease["job_id"], lease["lease_id"])


def source_chain(ledger: Path) -> list:
    return query(ledger, "SELECT list((seq, entry_hash) ORDER BY seq) FROM history")[0][0]


# --- incremental bundles ------------------------------------------------------------------------------------

def test_an_incremental_bundle_carries_what_changed_since_its_base_and_extends_the_mirror(holders, source, target,  # noqa: F811
                                                                                          tmp_path):
    first = bundle(source, holders, tmp_path / "1.bundle")
    assert (first["kind"], first["base_sequence"]) == ("full", None)
    ok(cli("bundle", "import", str(tmp_path / "1.bundle"), ledger=target))
    history_before, audit_before = query(source, "SELECT history_seq, audit_seq FROM bundle_exports")[0]
    assert history_before == query(source, "SELECT max(seq) FROM history")[0][0]
    work(source)
    second = bundle(source, holders, tmp_path / "2.bundle", "--incremental")
    assert (second["kind"], second["base_sequence"], second["sequence"]) == ("incremental", 1, 2)
    assert "site-b #2 incremental (base 1)" in ok(cli("bundle", "list", ledger=source))
    changed = {row[0] for row in query(source, "SELECT DISTINCT job_id FROM history WHERE seq > ?", history_before)}
    jobs = read_table(tmp_path / "2.bundle", "jobs")
    assert set(jobs.column("job_id").to_pylist()) == changed and len(changed) == 3  # 2 new, 1 acked
    assert read_table(tmp_path / "2.bundle", "history").column("seq").to_pylist() == [
        row[0] for row in query(source, "SELECT seq FROM history WHERE seq > ? ORDER BY seq", history_before)]
    # the audit entries after the base's snapshot: from the base's own `bundle.export` entry on
    audited = read_table(tmp_path / "2.bundle", "audit_log").to_pylist()
    assert audited[0]["seq"] == audit_before + 1 and audited[0]["action"] == "bundle.export"
    assert read_table(tmp_path / "2.bundle", "quotas").num_rows == 2  # policy tables travel whole
    # the plan says what it adds and updates
    planned = ok(cli("bundle", "plan", str(tmp_path / "2.bundle"), "--json", ledger=target))["plan"]
    tables = {table["table"]: table for table in planned["tables"]}
    assert (planned["kind"], planned["base_sequence"]) == ("incremental", 1)
    assert (tables["jobs"]["adds"], tables["jobs"]["updates"]) == (2, 1)
    assert tables["history"]["adds"] == tables["history"]["rows"] > 0
    shown = ok(cli("bundle", "plan", str(tmp_path / "2.bundle"), ledger=target))
    assert "on base 1" in shown and "(adds 2, updates 1)" in shown
    ok(cli("bundle", "import", str(tmp_path / "2.bundle"), ledger=target))
    after = state(target)
    assert after["mirror_history"] == source_chain(source)  # the chain as the source holds it
    assert after["mirror_jobs"] == query(source, "SELECT count(*) FROM all_jobs")[0][0]
    acked = query(source, "SELECT job_id FROM all_jobs WHERE worker_id = 'w2'")[0][0]
    assert query(target, "SELECT state FROM mirror_jobs WHERE job_id = ?", acked) == [("succeeded",)]
    assert after["floors"] == [("site-a", 1), ("site-a", 2)]


def test_an_incremental_bundle_whose_base_is_missing_is_refused_with_exit_5_naming_it(holders, source, target,  # noqa: F811
                                                                                     tmp_path):
    bundle(source, holders, tmp_path / "1.bundle")
    work(source)
    bundle(source, holders, tmp_path / "2.bundle")
    work(source)
    third = bundle(source, holders, tmp_path / "3.bundle", "--incremental")
    assert third["base_sequence"] == 2
    ok(cli("bundle", "import", str(tmp_path / "1.bundle"), ledger=target))
    before = state(target)
    line = refused(cli("bundle", "import", str(tmp_path / "3.bundle"), ledger=target), 5, "sequence 2")
    assert "has not imported" in line
    assert state(target) == before
    assert last_audit(target)["details"]["reason_code"] == "rollback:base-missing"
    reason = (Path(f"{target}.quarantine") / f"{hashlib.sha256((tmp_path / '3.bundle').read_bytes()).hexdigest()}"
              ".reason")
    assert reason.read_text() == "rollback:base-missing\n"
    refused(cli("bundle", "plan", str(tmp_path / "3.bundle"), ledger=target), 5, "sequence 2")


def test_an_incremental_bundle_cut_from_an_earlier_base_overlaps_what_the_target_holds(holders, source, target,  # noqa: F811
                                                                                      tmp_path):
    bundle(source, holders, tmp_path / "1.bundle")
    work(source)
    bundle(source, holders, tmp_path / "2.bundle", "--incremental")
    work(source)
    third = bundle(source, holders, tmp_path / "3.bundle", "--base", "1")
    assert (third["kind"], third["base_sequence"], third["sequence"]) == ("incremental", 1, 3)
    for n in (1, 2):
        ok(cli("bundle", "import", str(tmp_path / f"{n}.bundle"), ledger=target))
    planned = ok(cli("bundle", "plan", str(tmp_path / "3.bundle"), "--json", ledger=target))["plan"]
    history = next(table for table in planned["tables"] if table["table"] == "history")
    assert history["already_held"] > 0 and history["adds"] > 0
    ok(cli("bundle", "import", str(tmp_path / "3.bundle"), ledger=target))
    assert state(target)["mirror_history"] == source_chain(source)


def test_an_incremental_bundle_that_does_not_chain_onto_the_held_head_is_refused_with_exit_4(holders, source,  # noqa: F811
                                                                                            target, tmp_path):
    bundle(source, holders, tmp_path / "1.bundle")
    twin = tmp_path / "twin" / "site-a.duckdb"  # a copy of site-a's ledger that goes another way
    twin.parent.mkdir()
    copy_ledger(source, twin)
    work(source, enqueue=1, ack=0)
    bundle(source, holders, tmp_path / "2.bundle", "--incremental")
    work(twin, enqueue=1, ack=0)  # the same seq numbers, other entries
    bundle(twin, holders, tmp_path / "2-twin.bundle", "--incremental")
    work(twin, enqueue=1, ack=0)
    bundle(twin, holders, tmp_path / "3-twin.bundle", "--incremental")
    for name in ("1", "2"):
        ok(cli("bundle", "import", str(tmp_path / f"{name}.bundle"), ledger=target))
    before = state(target)
    refused(cli("bundle", "import", str(tmp_path / "3-twin.bundle"), ledger=target), 4, "does not extend the chain")
    assert state(target) == before
    assert last_audit(target)["details"]["reason_code"] == "chain:history"


def test_incremental_without_an_earlier_export_and_an_unknown_base_are_refused(holders, source, tmp_path):  # noqa: F811
    refused(export(source, tmp_path / "x.bundle", holders, "--incremental"), 1, "no earlier export to site-b")
    bundle(source, holders, tmp_path / "1.bundle")
    refused(export(source, tmp_path / "y.bundle", holders, "--base", "7"), 1, "no export 7", "holds 1")
    assert not (tmp_path / "x.bundle").exists() and not (tmp_path / "y.bundle").exists()


# --- reissue ------------------------------------------------------------------------------------------------

def test_a_reissued_bundle_is_byte_identical_to_the_first_after_the_ledger_moved_on(holders, source, tmp_path):  # noqa: F811
    first = bundle(source, holders, tmp_path / "1.bundle")
    work(source)
    bundle(source, holders, tmp_path / "2.bundle", "--incremental")
    again = ok(cli("bundle", "export", "--reissue", "1", "--target", "site-b", "--out", str(tmp_path / "again.bundle"),
                   "--json", ledger=source))  # no keys needed: the bytes are the ones written
    assert (tmp_path / "again.bundle").read_bytes() == (tmp_path / "1.bundle").read_bytes()
    assert again["file_sha256"] == first["file_sha256"] == hashlib.sha256(
        (tmp_path / "1.bundle").read_bytes()).hexdigest()
    assert last_audit(source, "bundle.reissue")["details"]["sequence"] == 1


def test_a_reissue_of_an_unknown_sequence_is_refused_naming_what_exists(holders, source, tmp_path):  # noqa: F811
    bundle(source, holders, tmp_path / "1.bundle")
    bundle(source, holders, tmp_path / "2.bundle")
    out = tmp_path / "again.bundle"
    refused(cli("bundle", "export", "--reissue", "5", "--target", "site-b", "--out", str(out), ledger=source), 1,
            "no bundle 5", "holds 1, 2")
    refused(cli("bundle", "export", "--reissue", "1", "--target", "site-c", "--out", str(out), ledger=source), 1,
            "nothing was exported to site-c")
    assert not out.exists()


def test_a_reissue_from_an_altered_stored_copy_is_refused_with_exit_4(holders, source, tmp_path):  # noqa: F811
    bundle(source, holders, tmp_path / "1.bundle")
    stored = Path(f"{source}.exports") / "site-b" / "1.bundle"
    data = bytearray(stored.read_bytes())
    data[-2000] ^= 1
    stored.write_bytes(bytes(data))
    out = tmp_path / "again.bundle"
    refused(cli("bundle", "export", "--reissue", "1", "--target", "site-b", "--out", str(out), ledger=source), 4,
            "does not match the sha256 recorded")
    assert not out.exists()


# --- hand-off -----------------------------------------------------------------------------------------------

def pending(ledger: Path) -> list[str]:
    """Jobs a hand-off takes: queued, never started, no waiting child."""
    return [row[0] for row in query(ledger, """
        SELECT j.job_id FROM jobs j WHERE j.state = 'queued' AND j.attempts = 0
          AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs c ON c.job_id = d.job_id
                          WHERE d.parent_id = j.job_id AND c.state = 'waiting')
        ORDER BY j.job_id""")]


def test_handoff_without_a_target_is_refused_as_usage(holders, source, tmp_path):  # noqa: F811
    before = state(source)
    result = cli("bundle", "export", "--handoff", "--out", str(tmp_path / "h.bundle"), "--key", holders.private("a1"),
                 "--timestamp-key", holders.private("ts"), ledger=source)
    assert result.code == 2 and "--target" in result.stderr, result
    assert state(source) == before and not (tmp_path / "h.bundle").exists()


def test_handed_off_jobs_end_at_the_source_and_run_at_the_target_with_their_history_and_keys(
        holders, source, target, tmp_path):  # noqa: F811
    handed = pending(source)
    waiting_parents = query(source, "SELECT DISTINCT parent_id FROM job_dependencies")
    assert handed and not {row[0] for row in waiting_parents} & set(handed)  # a parent with a waiting child stays
    made = bundle(source, holders, tmp_path / "h.bundle", "--handoff")
    assert made["handed_off"] == len(handed) and made["sequence"] == 1
    assert f"hands over {len(handed)} jobs" in ok(cli("bundle", "list", ledger=source))
    assert read_table(tmp_path / "h.bundle", "handoffs").column("job_id").to_pylist() == handed
    # at the source: handed_off, with a history entry naming the target; never claimed again
    states = dict(query(source, "SELECT job_id, state FROM all_jobs"))
    assert {states[job_id] for job_id in handed} == {"handed_off"}
    last = {job_id: (seq, json.loads(entry), entry_hash) for job_id, seq, entry, entry_hash in query(
        source, "SELECT job_id, max(seq), arg_max(entry, seq), arg_max(entry_hash, seq) FROM history GROUP BY job_id")}
    assert {last[job_id][1]["event_type"] for job_id in handed} == {"job.handed_off"}
    assert last[handed[0]][1]["reason"] == "handed_off_to:site-b#1"
    claimed = ok(cli("jobs", "claim", "--worker-id", "w", "--limit", "100", "--json", ledger=source))
    assert not {lease["job_id"] for lease in claimed["leases"]} & set(handed)
    ok(cli("ledger", "verify", ledger=source))
    # at the target: local, claimable jobs whose history goes on from the source's last entry
    shown = ok(cli("bundle", "plan", str(tmp_path / "h.bundle"), ledger=target))
    assert f"hands over {len(handed)} jobs as local jobs here" in shown
    done = ok(cli("bundle", "import", str(tmp_path / "h.bundle"), "--json", ledger=target))
    assert done["plan"]["handoff"]["jobs"] == len(handed)
    local = dict(query(target, "SELECT job_id, state || '/' || site_id || '/' || attempts FROM jobs"))
    assert {local[job_id] for job_id in handed} == {"queued/site-b/0"}
    for job_id in handed:
        [(entry,)] = query(target, "SELECT entry FROM history WHERE job_id = ?", job_id)
        entry = json.loads(entry)
        seq, _, entry_hash = last[job_id]
        assert (entry["event_type"], entry["reason"]) == ("job.received", f"handed_off_from:site-a#{seq}:{entry_hash}")
    keyed = query(source, "SELECT tenant, idempotency_key, job_id FROM idempotency_keys WHERE list_contains(?, job_id)",
                  handed)
    assert keyed
    tenant, key, job_id = keyed[0]
    again = ok(cli("jobs", "enqueue", "--tenant", tenant, "--project", "web", "--type", "scan", "--idempotency-key",
                   key, "--payload", json.dumps({"n": int(key.rsplit("-", 1)[1])}), "--key", f"host:{tenant}.example",
                   "--json", ledger=target))
    assert again["job_id"] == job_id  # the key moved with its job: the same work is not enqueued twice
    claimed = ok(cli("jobs", "claim", "--worker-id", "w", "--limit", "100", "--json", ledger=target))
    assert set(handed) <= {lease["job_id"] for lease in claimed["leases"]}
    for lease in claimed["leases"]:
        ok(cli("jobs", "ack", lease["job_id"], "--lease", lease["lease_id"], ledger=target))
    assert {state for job_id, state in query(target, "SELECT job_id, state FROM all_jobs") if job_id in handed} == {
        "succeeded"}
    ok(cli("ledger", "verify", ledger=target))


def test_a_handoff_imported_twice_or_followed_by_later_bundles_makes_one_local_job_each(holders, source, target,  # noqa: F811
                                                                                       tmp_path):
    handed = pending(source)
    bundle(source, holders, tmp_path / "h.bundle", "--handoff")
    ok(cli("bundle", "import", str(tmp_path / "h.bundle"), ledger=target))
    after = state(target)
    assert "already imported" in ok(cli("bundle", "import", str(tmp_path / "h.bundle"), ledger=target))
    assert state(target) == after
    bundle(source, holders, tmp_path / "2.bundle", "--incremental")
    bundle(source, holders, tmp_path / "3.bundle")  # full: the jobs show as handed_off in it
    for name in ("2", "3"):
        ok(cli("bundle", "import", str(tmp_path / f"{name}.bundle"), ledger=target))
    counted = dict(query(target, "SELECT job_id, count(*) FROM all_jobs GROUP BY job_id"))
    assert {counted[job_id] for job_id in handed} == {1}
    assert state(target)["jobs"] == after["jobs"]
    mirrored = dict(query(target, "SELECT job_id, state FROM mirror_jobs"))
    assert {mirrored[job_id] for job_id in handed} == {"handed_off"}


def test_a_backfills_pending_windows_are_handed_over_and_become_local(holders, source, target, tmp_path):  # noqa: F811
    [(backfill_id,)] = query(source, "SELECT backfill_id FROM backfills")
    windows = query(source, "SELECT window_index, job_id FROM backfill_windows ORDER BY window_index")
    made = bundle(source, holders, tmp_path / "h.bundle", "--handoff", "--backfill", backfill_id)
    assert made["handed_off"] == len(windows) == 3
    handoffs = read_table(tmp_path / "h.bundle", "handoffs").to_pylist()
    assert [(row["window_index"], row["job_id"]) for row in handoffs] == sorted(
        windows, key=lambda window: window[1])  # by job_id (uuid7: window order here)
    ok(cli("bundle", "import", str(tmp_path / "h.bundle"), ledger=target))
    assert query(target, "SELECT window_index, job_id FROM backfill_windows ORDER BY window_index") == windows
    assert query(target, "SELECT site_id, tenant FROM backfills WHERE backfill_id = ?", backfill_id) == [
        ("site-b", "globex")]
    shown = ok(cli("backfill", "show", backfill_id, "--json", ledger=target))
    assert shown["backfill_id"] == backfill_id
    # the other pending jobs stayed at the source
    assert query(source, "SELECT count(*) FROM jobs WHERE state = 'queued'")[0][0] > 0


def test_a_refused_handoff_changes_nothing(holders, source, tmp_path):  # noqa: F811
    before = state(source)
    refused(export(source, tmp_path / "h.bundle", holders, "--handoff", "--backfill", "nope"), 1, "no backfill nope")
    refused(export(source, tmp_path / "h.bundle", holders, "--handoff", target="site-a"), 1, "is this site")
    refused(export(source, tmp_path / "h.bundle", holders, "--queue", "default"), 1, "add --handoff")
    refused(export(source, tmp_path / "h.bundle", holders, "--reissue", "1", "--handoff"), 1, "drop --handoff")
    assert state(source) == before and not (tmp_path / "h.bundle").exists()
    assert query(source, "SELECT count(*) FROM bundle_handoffs") == [(0,)]


def test_a_job_whose_key_a_local_job_holds_is_not_received_twice(holders, source, target, tmp_path):  # noqa: F811
    handed = pending(source)
    tenant, key, job_id = query(source, "SELECT tenant, idempotency_key, job_id FROM idempotency_keys "
                                "WHERE list_contains(?, job_id) ORDER BY job_id LIMIT 1", handed)[0]
    mine = ok(cli("jobs", "enqueue", "--tenant", tenant, "--project", "web", "--type", "scan", "--idempotency-key",
                  key, "--json", ledger=target))
    bundle(source, holders, tmp_path / "h.bundle", "--handoff")
    done = ok(cli("bundle", "import", str(tmp_path / "h.bundle"), "--json", ledger=target))
    assert done["plan"]["handoff"]["key_held"] == [{"job_id": job_id, "held_by": mine["job_id"]}]
    assert query(target, "SELECT count(*) FROM all_jobs WHERE job_id = ?", job_id) == [(0,)]
    assert done["plan"]["handoff"]["jobs"] == len(handed) - 1


def paused_handoff_export(source: Path, holders, out: Path, marker: Path) -> subprocess.Popen:  # noqa: F811
    """`bundle export --handoff` in a subprocess, paused once its hand-off committed (until `marker` is gone)."""
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(source), "bundle", "export", "--out", str(out),
               "--target", "site-b", "--key", holders.private("a1"), "--timestamp-key", holders.private("ts"),
               "--handoff"]
    env = {**os.environ, "AIRGAP_ORCH_TEST_EXPORT_PAUSE": f"handed-off:{marker}"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_marker(process, marker, "the export never reached its hand-off", timeout=60)
    return process


def test_an_export_failing_after_its_hand_off_committed_says_how_to_write_the_bundle(holders, source, target,  # noqa: F811
                                                                                     tmp_path):
    handed = pending(source)
    out, marker = tmp_path / "h.bundle", tmp_path / "paused"
    process = paused_handoff_export(source, holders, out, marker)
    try:
        out.write_bytes(b"someone else's file")  # --out taken while the bundle was being written
        marker.unlink()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    [line] = stderr.strip().splitlines()
    assert "appeared while it was being written" in line and "committed as sequence 1" in line
    assert "bundle export --reissue 1 --target site-b" in line
    assert out.read_bytes() == b"someone else's file"
    assert query(source, "SELECT count(*) FROM bundle_exports") == [(0,)]
    written = tmp_path / "written.bundle"
    made = ok(export(source, written, holders, "--reissue", "1", "--json"))
    assert (made["sequence"], made["handed_off"]) == (1, len(handed))
    ok(cli("bundle", "import", str(written), ledger=target))
    assert query(target, "SELECT count(*) FROM jobs WHERE list_contains(?, job_id)", handed) == [(len(handed),)]


def test_a_handoff_commits_before_the_file_and_reissue_writes_the_lost_bundle(holders, source, target,  # noqa: F811
                                                                            tmp_path):
    handed = pending(source)
    marker = tmp_path / "paused"
    out = tmp_path / "lost.bundle"
    process = paused_handoff_export(source, holders, out, marker)
    try:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not out.exists()
    # the hand-off committed: the jobs are handed_off, sequence 1 is reserved, no export recorded
    assert {state for job_id, state in query(source, "SELECT job_id, state FROM all_jobs") if job_id in handed} == {
        "handed_off"}
    assert query(source, "SELECT count(*) FROM bundle_exports") == [(0,)]
    refused(cli("bundle", "export", "--reissue", "2", "--target", "site-b", "--out", str(out), ledger=source), 1,
            "1 (handed-off, not exported)")
    made = ok(export(source, out, holders, "--reissue", "1", "--json"))
    assert (made["sequence"], made["handed_off"], made["reissued"]) == (1, len(handed), True)
    again = tmp_path / "again.bundle"
    ok(cli("bundle", "export", "--reissue", "1", "--target", "site-b", "--out", str(again), ledger=source))
    assert again.read_bytes() == out.read_bytes()
    ok(cli("bundle", "import", str(out), ledger=target))
    assert query(target, "SELECT count(*) FROM jobs WHERE list_contains(?, job_id) AND state = 'queued'",
                 handed) == [(len(handed),)]
    shutil.rmtree(Path(f"{source}.exports"))  # the store lost: a reissue says so
    refused(cli("bundle", "export", "--reissue", "1", "--target", "site-b", "--out", str(tmp_path / "x.bundle"),
                ledger=source), 1, "stored copy")


def test_a_full_bundle_written_before_hand_offs_without_the_handoffs_member_verifies_and_imports(  # noqa: F811
        holders, source, target, root_v1, tmp_path):  # noqa: F811
    """The format change is additive: a version 1 bundle of 13 data members (as written before member 14 existed),
    signed with real keys, still verifies and imports as a full bundle."""
    import contextlib

    from test_bundle_cli import CREATED_AT

    from airgap_orch.auth import load_private_key
    from airgap_orch.bundle.manifest import BundleHeader
    from airgap_orch.bundle.writer import write_bundle_bytes
    from airgap_orch.operations import bundles

    with Ledger.open(source, lock_timeout=5) as ledger, contextlib.ExitStack() as stack:
        members, _, _, _ = bundles._read_tables(ledger, tmp_path, "site-b", None, stack, None, None, None)
        old = [member for member in members if member.table != "handoffs"]
        assert len(old) == 13
        header = BundleHeader(kind="full", source_site="site-a", target_site="site-b", sequence=1,
                              base_sequence=None, created_at=CREATED_AT.replace(tzinfo=None), tool_version="0.1.0")
        data = write_bundle_bytes(header, old, signing_keys=[load_private_key(Path(holders.private("a1")))],
                                  timestamp_keys=[load_private_key(Path(holders.private("ts")))])
    path = tmp_path / "old.bundle"
    path.write_bytes(data)
    ok(cli("bundle", "verify", str(path), "--trust", str(root_v1), "--target", "site-b"))
    done = ok(cli("bundle", "import", str(path), "--json", ledger=target))
    assert done["plan"]["handoff"] is None
    assert "handoffs" not in {table["table"] for table in done["plan"]["tables"]}
    assert state(target)["mirror_jobs"] == query(source, "SELECT count(*) FROM all_jobs")[0][0]


def test_a_handoff_bundle_addressed_to_another_site_is_refused_and_makes_no_job(holders, source, target,  # noqa: F811
                                                                               tmp_path):
    handed = pending(source)
    made = bundle(source, holders, tmp_path / "c.bundle", "--handoff", target="site-c")
    assert made["handed_off"] == len(handed)
    before = state(target)
    refused(cli("bundle", "import", str(tmp_path / "c.bundle"), ledger=target), 5, "site-c")
    assert state(target) == before
    assert last_audit(target)["details"]["reason_code"] == "target:wrong-site"


def test_handoff_of_a_queue_takes_its_due_and_scheduled_jobs_only(holders, source, target, tmp_path):  # noqa: F811
    due = ok(cli("jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan", "--queue", "away",
                 "--json", ledger=source))["job_id"]
    later = ok(cli("jobs", "enqueue", "--tenant", "acme", "--project", "web", "--type", "scan", "--queue", "away",
                   "--run-at", "2099-01-01T00:00:00Z", "--json", ledger=source))["job_id"]
    others = set(pending(source)) - {due, later}
    made = bundle(source, holders, tmp_path / "h.bundle", "--handoff", "--queue", "away")
    assert made["handed_off"] == 2
    assert read_table(tmp_path / "h.bundle", "handoffs").column("job_id").to_pylist() == sorted([due, later])
    assert set(pending(source)) == others  # the other queues' jobs stay
    ok(cli("bundle", "import", str(tmp_path / "h.bundle"), ledger=target))
    rows = dict(query(target, "SELECT job_id, run_at FROM jobs WHERE queue = 'away'"))
    assert set(rows) == {due, later} and rows[later].year == 2099  # still scheduled
    claimed = ok(cli("jobs", "claim", "--worker-id", "w", "--queue", "away", "--limit", "10", "--json",
                     ledger=target))
    assert [lease["job_id"] for lease in claimed["leases"]] == [due]
