"""`ledger verify` catches a chain cut short at its end: each commit records the chain's head (seq and hash) in the
same transaction, verify checks each chain ends there, and checks every audited job action against history.

Tampering opens the DuckDB file directly, after the Ledger is closed, as an attacker with file access would:
deleting the newest history row and putting its job back as it was, then (knowing about heads) also moving the
recorded head back, which leaves the audit entry of that action as the witness.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from conftest import run_cli
from server_fixtures import assert_problem, serving

from airgap_orch.ledger import Ledger
from airgap_orch.operations import audit as audit_ops
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops

SPEC = {"tenant": "acme", "project": "web", "type": "scan"}


def sql(path: Path, statement: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(path)) as con:
        return con.execute(statement, params or []).fetchall()


def last_history(path: Path) -> tuple[int, str, dict]:
    seq, job_id, entry = sql(path, "SELECT seq, job_id, entry FROM history ORDER BY seq DESC LIMIT 1")[0]
    return seq, job_id, json.loads(entry)


def cancel_last(path: Path) -> str:
    """Some work, then an operator cancels a queued job: the newest history entry is that cancel."""
    with Ledger.open(path, lock_timeout=1) as ledger:
        ops.enqueue_batch(ledger, [dict(SPEC) for _ in range(3)])
        (lease,) = ops.claim(ledger, worker_id="w-1", limit=1, lease_seconds=300)["leases"]
        ops.ack(ledger, lease["job_id"], lease["lease_id"])
        victim = ops.enqueue(ledger, {**SPEC, "type": "feed"})["job_id"]
        ops.cancel(ledger, victim, reason="not needed")
    seq, job_id, entry = last_history(path)
    assert (job_id, entry["event_type"], entry["from_state"]) == (victim, "job.canceled", "queued")
    return victim


def delete_last_cancel_and_revert(path: Path, job_id: str) -> int:
    """Remove the newest history row (the cancel) and put its job back to queued; returns the removed seq."""
    seq, removed_job, _ = last_history(path)
    assert removed_job == job_id
    sql(path, "DELETE FROM history WHERE seq = ?", [seq])
    sql(path, "UPDATE jobs SET state = 'queued', finished_at = NULL WHERE job_id = ?", [job_id])
    return seq


def rewind_history_head(path: Path) -> None:
    """What a tamperer who knows about recorded heads does next: point the head at the new last row."""
    seq, entry_hash = sql(path, "SELECT seq, entry_hash FROM history ORDER BY seq DESC LIMIT 1")[0]
    sql(path, "UPDATE chain_heads SET seq = ?, entry_hash = ? WHERE chain = 'history'", [seq, entry_hash])


def refused_line(path: Path, *args: str) -> str:
    result = run_cli(path, *args)
    assert result.code == 4, result
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    return line


def test_deleted_newest_history_row_with_its_job_reverted_fails_verify_naming_the_recorded_head(ledger_path):
    victim = cancel_last(ledger_path)
    assert run_cli(ledger_path, "ledger", "verify").code == 0
    removed = delete_last_cancel_and_revert(ledger_path, victim)
    line = refused_line(ledger_path, "ledger", "verify")
    assert f"history ends at seq {removed - 1} but the recorded head is seq {removed}" in line, line


def test_audited_cancel_without_its_transition_fails_verify_naming_the_audit_entry(ledger_path):
    victim = cancel_last(ledger_path)
    delete_last_cancel_and_revert(ledger_path, victim)
    rewind_history_head(ledger_path)
    ((audit_seq,),) = sql(ledger_path, "SELECT seq FROM audit_log WHERE action = 'job.cancel'")
    line = refused_line(ledger_path, "ledger", "verify")
    assert (f"audit entry {audit_seq} records job.cancel of job {victim} but history has no cancel transition "
            f"for {victim}") in line, line
    as_json = run_cli(ledger_path, "--json", "ledger", "verify")
    assert as_json.code == 4 and json.loads(as_json.stderr)["error"]["exit_code"] == 4, as_json


def test_audited_replay_without_its_transition_fails_verify(ledger_path):
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        dead = ops.enqueue(ledger, {**SPEC, "max_attempts": 1})["job_id"]
        (lease,) = ops.claim(ledger, worker_id="w-1", limit=1)["leases"]
        ops.fail(ledger, dead, lease["lease_id"], error="boom")
        ops.replay(ledger, [dead])
    seq, job_id, entry = last_history(ledger_path)
    assert (job_id, entry["event_type"]) == (dead, "job.replayed")
    sql(ledger_path, "DELETE FROM history WHERE seq = ?", [seq])  # replay keeps the job's state: nothing to revert
    rewind_history_head(ledger_path)
    line = refused_line(ledger_path, "ledger", "verify")
    assert f"records job.replay of job {dead} but history has no replay transition for {dead}" in line, line


def test_a_cut_off_end_stays_a_gap_after_more_work_is_committed(ledger_path):
    """The ledger goes on from the recorded head, not from the last row left, so new commits do not hide it."""
    victim = cancel_last(ledger_path)
    removed = delete_last_cancel_and_revert(ledger_path, victim)
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        ops.enqueue(ledger, SPEC)
    line = refused_line(ledger_path, "ledger", "verify")
    assert f"history entry {removed}: found seq {removed + 1}; entries are missing" in line, line


def test_deleted_newest_audit_entry_fails_audit_verify_and_ledger_verify(ledger_path):
    victim = cancel_last(ledger_path)
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        ops.cancel(ledger, ops.list_jobs(ledger, state="queued", limit=1)["jobs"][0]["job_id"], reason="second")
    assert victim
    sql(ledger_path, "DELETE FROM audit_log WHERE seq = 2")
    for command in (("audit", "verify"), ("ledger", "verify")):
        line = refused_line(ledger_path, *command)
        assert "audit log ends at seq 1 but the recorded head is seq 2" in line, (command, line)


def test_a_clean_ledger_verifies_with_its_heads_recorded(ledger_path):
    victim = cancel_last(ledger_path)
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        dead = ops.enqueue(ledger, {**SPEC, "type": "once", "max_attempts": 1})["job_id"]
        (lease,) = ops.claim(ledger, worker_id="w-1", limit=1, job_type="once")["leases"]
        ops.fail(ledger, dead, lease["lease_id"], error="boom")
        ops.replay(ledger, [dead])
        verified = ledger_ops.verify(ledger)
        assert audit_ops.verify(ledger)["audit_entries"] == verified["audit_entries"] == 2
    heads = dict((chain, (seq, entry_hash)) for chain, seq, entry_hash in
                 sql(ledger_path, "SELECT chain, seq, entry_hash FROM chain_heads"))
    assert heads["history"] == sql(ledger_path, "SELECT seq, entry_hash FROM history ORDER BY seq DESC LIMIT 1")[0]
    assert heads["audit"] == sql(ledger_path, "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")[0]
    result = run_cli(ledger_path, "--json", "ledger", "verify")
    assert result.code == 0 and result.json["ok"] is True, result
    assert result.json["history_entries"] == verified["history_entries"] == heads["history"][0]
    assert victim


def test_a_ledger_from_before_recorded_heads_takes_them_from_its_chains_and_verifies(ledger_path):
    cancel_last(ledger_path)
    # As a ledger written before migration 0008 looks: no chain_heads table, the migration not applied.
    sql(ledger_path, "DROP TABLE chain_heads")
    sql(ledger_path, "DELETE FROM schema_migrations WHERE version = 8")
    result = run_cli(ledger_path, "--json", "ledger", "verify")
    assert result.code == 0, result
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        assert (ledger.head_seq, ledger.head_hash) == tuple(
            sql_in(ledger, "SELECT seq, entry_hash FROM history ORDER BY seq DESC LIMIT 1"))


def sql_in(ledger: Ledger, statement: str) -> tuple:
    return ledger._con.execute(statement).fetchone()


@pytest.mark.parametrize("rewind", [False, True], ids=["deleted_end", "deleted_end_and_head"])
def test_verify_through_the_server_refuses_a_cut_off_end(ledger_path, rewind):
    victim = cancel_last(ledger_path)
    removed = delete_last_cancel_and_revert(ledger_path, victim)
    if rewind:
        rewind_history_head(ledger_path)
    with serving(ledger_path, "--no-auth") as server:
        problem = assert_problem(server.request("POST", "/v1/ledger/verify"), 422, "verification-failed", 4)
        routed = run_cli(ledger_path, "ledger", "verify")  # the CLI sends it to the server that owns the ledger
    expected = (f"records job.cancel of job {victim} but history has no cancel transition" if rewind
                else f"history ends at seq {removed - 1} but the recorded head is seq {removed}")
    assert expected in problem["detail"], problem
    assert routed.code == 4 and expected in routed.stderr, routed
