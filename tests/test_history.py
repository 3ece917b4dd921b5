"""The hash-chained history and `ledger verify`: a busy ledger verifies; any edit made behind the
ledger's back (history row altered or deleted, job state or payload changed without history) fails.

Tampering opens the DuckDB file directly, after the Ledger is closed, as an attacker with file access would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from conftest import run_cli, run_cli_on_a_terminal

from airgap_orch.errors import VerificationFailed, exit_code_for
from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.orchestrator import claims, recovery, reports

ARTIFACT = {"uri": "s3://bucket/out,with,commas.json", "digest": "sha256:" + "cd" * 32, "mime": "application/json"}


def build_busy_ledger(path: Path) -> dict[str, str]:
    """Jobs in every kind of state, two tenants, non-ASCII payloads, artifacts, a replay and an archive.

    Returns job ids by role."""
    roles: dict[str, str] = {}
    with Ledger.open(path, lock_timeout=1) as ledger:
        def enqueue(role: str, **fields) -> str:
            spec = {"tenant": "acme", "project": "web", "type": "scan", **fields}
            roles[role] = ops.enqueue(ledger, spec)["job_id"]
            return roles[role]

        def lease(job_id: str) -> str:
            leases = ops.claim(ledger, worker_id="w-1", limit=1, lease_seconds=300)["leases"]
            assert leases and leases[0]["job_id"] == job_id, leases
            return leases[0]["lease_id"]

        succeeded = enqueue("succeeded", payload={"städte": ["Zürich", "東京"], "n": 1.5},
                            correlation_id="corr-ü")
        lease_id = lease(succeeded)
        ops.heartbeat(ledger, succeeded, lease_id, progress=0.5, message="halfway ✓")
        ops.ack(ledger, succeeded, lease_id, artifacts=[ARTIFACT])
        failed = enqueue("failed", tenant="globex")
        ops.fail(ledger, failed, lease(failed), error="schema mismatch", no_retry=True)
        dead = enqueue("dead_letter", max_attempts=1, payload={"x": None})
        ops.fail(ledger, dead, lease(dead), error="boom")
        canceled = enqueue("canceled")
        ops.cancel(ledger, canceled, reason="not needed")
        roles["replay"] = ops.replay(ledger, [dead])["replays"][0]["job_id"]
        with ledger.transaction() as tx:
            recovery.maintain(tx, force=True)  # finished jobs move to jobs_finished
        enqueue("queued", tenant="globex", idempotency_key="k-1")
        running = enqueue("running", priority=1000)
        ops.heartbeat(ledger, running, lease(running))
        assert ledger_ops.verify(ledger)["ok"] is True
    return roles


@pytest.fixture
def busy(ledger_path: Path) -> dict[str, str]:
    return build_busy_ledger(ledger_path)


def verify(path: Path) -> dict:
    with Ledger.open(path, lock_timeout=1) as ledger:
        return ledger_ops.verify(ledger)


def history_rows(path: Path) -> list[tuple[int, str, str, str]]:
    with duckdb.connect(str(path)) as con:
        return con.execute("SELECT seq, job_id, entry, entry_hash FROM history ORDER BY seq").fetchall()


def tamper(path: Path, sql: str, params: list | None = None) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute(sql, params or [])


def rewrite_entry(path: Path, seq: int, change: Callable[[dict], None], *, rehash: bool = False) -> None:
    """Edit the stored JSON of history entry `seq`; with rehash, also recompute its own entry_hash."""
    rows = {row[0]: row for row in history_rows(path)}
    entry = json.loads(rows[seq][2])
    change(entry)
    text = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
    new_hash = rows[seq][3]
    if rehash:
        prev = rows[seq - 1][3] if seq > 1 else "0" * 64
        new_hash = hashlib.sha256(f"{prev}{text}".encode()).hexdigest()
    tamper(path, "UPDATE history SET entry = ?, entry_hash = ? WHERE seq = ?", [text, new_hash, seq])


def seq_of(path: Path, job_id: str, event_type: str) -> int:
    for seq, row_job, text, _ in history_rows(path):
        if row_job == job_id and json.loads(text)["event_type"] == event_type:
            return seq
    raise AssertionError(f"no {event_type} for {job_id}")


def refused(path: Path) -> str:
    with pytest.raises(VerificationFailed) as failure:
        verify(path)
    assert exit_code_for(failure.value) == 4
    message = str(failure.value)
    assert "\n" not in message
    return message


# -- a healthy ledger ------------------------------------------------------------------------------

def test_verify_passes_on_a_busy_ledger_after_reopening(ledger_path, busy):
    result = verify(ledger_path)
    rows = history_rows(ledger_path)
    assert result["ok"] is True
    assert result["history_entries"] == len(rows) == rows[-1][0]
    assert result["jobs"] == len(busy)


def test_history_is_one_chain_from_genesis(ledger_path, busy):
    prev = "0" * 64
    for seq, _job_id, text, stored in history_rows(ledger_path):
        assert stored == hashlib.sha256(f"{prev}{text}".encode()).hexdigest(), seq
        prev = stored


def test_each_transition_appends_exactly_one_history_entry(ledger_path, busy):
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        shown = ops.show(ledger, busy["succeeded"])
        before = ledger_ops.info(ledger)["history_entries"]
        ops.cancel(ledger, busy["queued"], reason="operator")
        after = ledger_ops.info(ledger)["history_entries"]
    assert [entry["event_type"] for entry in shown["history"]] == [
        "job.created", "job.leased", "job.started", "job.succeeded"]
    assert after == before + 1


# -- tampering with history ------------------------------------------------------------------------

def test_altered_history_reason_fails_verification_naming_the_entry(ledger_path, busy):
    seq = seq_of(ledger_path, busy["canceled"], "job.canceled")
    rewrite_entry(ledger_path, seq, lambda entry: entry.update(reason="nothing to see"))
    assert f"history entry {seq}" in refused(ledger_path)


def test_altered_history_entry_with_its_own_hash_recomputed_breaks_the_next_link(ledger_path, busy):
    seq = seq_of(ledger_path, busy["succeeded"], "job.succeeded")
    rewrite_entry(ledger_path, seq, lambda entry: entry.update(worker_id="someone-else"), rehash=True)
    assert f"history entry {seq + 1}" in refused(ledger_path)


def test_deleted_history_entry_fails_verification_naming_the_gap(ledger_path, busy):
    seq = seq_of(ledger_path, busy["failed"], "job.leased")
    tamper(ledger_path, "DELETE FROM history WHERE seq = ?", [seq])
    assert f"history entry {seq}" in refused(ledger_path)


def test_deleted_last_history_entry_fails_against_the_head_recorded_at_commit(ledger_path, busy):
    # Before the head was recorded this failed only as the job's state without history (naming the job); the
    # chain's end is checked before the states now, so the message names what was removed.
    last_seq, _job_id, _, _ = history_rows(ledger_path)[-1]
    tamper(ledger_path, "DELETE FROM history WHERE seq = ?", [last_seq])
    assert refused(ledger_path).startswith(
        f"history ends at seq {last_seq - 1} but the recorded head is seq {last_seq}")


def test_history_row_moved_to_another_job_fails_verification(ledger_path, busy):
    seq = seq_of(ledger_path, busy["queued"], "job.created")
    tamper(ledger_path, "UPDATE history SET job_id = ? WHERE seq = ?", [busy["running"], seq])
    assert f"history entry {seq}" in refused(ledger_path)


# -- state tables against history ------------------------------------------------------------------

@pytest.mark.parametrize("role", ["queued", "running", "succeeded", "dead_letter"])
def test_job_state_changed_without_history_fails_verification(ledger_path, busy, role):
    table = "jobs_finished" if role in ("succeeded", "dead_letter") else "jobs"
    new_state = "queued" if role != "queued" else "succeeded"
    tamper(ledger_path, f"UPDATE {table} SET state = ? WHERE job_id = ?", [new_state, busy[role]])
    assert busy[role] in refused(ledger_path)


def test_job_attempts_changed_without_history_fails_verification(ledger_path, busy):
    tamper(ledger_path, "UPDATE jobs SET attempts = attempts + 5 WHERE job_id = ?", [busy["running"]])
    assert busy["running"] in refused(ledger_path)


def test_job_row_without_any_history_fails_verification(ledger_path, busy):
    forged = "01900000-0000-7000-8000-000000000001"
    tamper(ledger_path, "INSERT INTO jobs SELECT * REPLACE (? AS job_id) FROM jobs WHERE job_id = ?",
           [forged, busy["queued"]])
    assert forged in refused(ledger_path)


@pytest.mark.parametrize("role", ["queued", "succeeded"])
def test_altered_payload_fails_the_digest_check(ledger_path, busy, role):
    table = "jobs_finished" if role == "succeeded" else "jobs"
    tamper(ledger_path, f"UPDATE {table} SET payload = ? WHERE job_id = ?", ['{"image":"evil"}', busy[role]])
    message = refused(ledger_path)
    assert busy[role] in message and "digest" in message


def test_payload_rewritten_with_a_matching_digest_fails_against_history(ledger_path, busy):
    text = '{"image":"evil"}'
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    tamper(ledger_path, "UPDATE jobs SET payload = ?, payload_digest = ? WHERE job_id = ?",
           [text, digest, busy["queued"]])
    assert busy["queued"] in refused(ledger_path)


# -- the CLI door ----------------------------------------------------------------------------------

def _alter_reason(path: Path, roles: dict[str, str]) -> None:
    rewrite_entry(path, seq_of(path, roles["canceled"], "job.canceled"), lambda e: e.update(reason="x"))


def _delete_entry(path: Path, roles: dict[str, str]) -> None:
    tamper(path, "DELETE FROM history WHERE seq = 2")


def _change_state(path: Path, roles: dict[str, str]) -> None:
    tamper(path, "UPDATE jobs SET state = 'succeeded' WHERE job_id = ?", [roles["running"]])


def _change_payload(path: Path, roles: dict[str, str]) -> None:
    tamper(path, "UPDATE jobs SET payload = '[]' WHERE job_id = ?", [roles["queued"]])


@pytest.mark.parametrize("damage", [_alter_reason, _delete_entry, _change_state, _change_payload],
                         ids=["reason", "deleted_entry", "state", "payload"])
def test_cli_ledger_verify_exits_4_with_one_line(cli, ledger_path, busy, damage):
    assert cli("ledger", "verify").code == 0
    damage(ledger_path, busy)
    result = cli("ledger", "verify")
    assert result.code == 4, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("airgap-orch: error: ")


def test_cli_ledger_verify_json_reports_the_failure_as_an_object(cli, ledger_path, busy):
    _change_state(ledger_path, busy)
    result = cli("--json", "ledger", "verify")
    assert result.code == 4, result
    error = json.loads(result.stderr)["error"]
    assert (error["type"], error["exit_code"]) == ("VerificationFailed", 4)
    assert busy["running"] in error["message"]


@pytest.mark.parametrize("jobs", [3, 1_500], ids=["appender", "arrow"])  # store.APPEND_ARROW_FROM = 1,000
def test_history_appended_in_a_transaction_that_rolls_back_is_gone_and_the_chain_goes_on(ledger_path, jobs):
    spec = {"tenant": "acme", "project": "p", "type": "scan"}
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        ops.enqueue_batch(ledger, [dict(spec) for _ in range(jobs)])
        before = ledger_ops.info(ledger)
        with pytest.raises(RuntimeError), ledger.transaction() as tx:
            assert len(claims.claim(tx, worker_id="w", limit=jobs, lease_seconds=60)) == jobs
            tx.write_history()  # what COMMIT would do first: the rows reach the table, then the abort undoes them
            raise RuntimeError("abort after the claim's history entries were written")
        assert ledger_ops.info(ledger)["history_entries"] == before["history_entries"]
        with ledger.transaction() as tx:
            assert len(claims.claim(tx, worker_id="w", limit=jobs, lease_seconds=60)) == jobs
    with Ledger.open(ledger_path, lock_timeout=1) as reopened:
        assert ledger_ops.info(reopened)["history_entries"] == before["history_entries"] + jobs
        assert ledger_ops.verify(reopened)["ok"] is True


def test_ledger_verify_shows_progress_on_a_terminal_and_nothing_otherwise(ledger_path):
    jobs = ledger_ops.PROGRESS_EVERY + 2_000  # two reports and the last one
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": "scan"} for _ in range(jobs)])
    result, shown = run_cli_on_a_terminal(ledger_path, "ledger", "verify")
    assert result.code == 0, shown
    assert b"verifying hash chains" in shown, shown[-500:]
    assert f"{ledger_ops.PROGRESS_EVERY}/{jobs}".encode() in shown and f"{jobs}/{jobs}".encode() in shown
    assert f"history_entries: {jobs}" in result.stdout
    piped = run_cli(ledger_path, "ledger", "verify")
    assert piped.code == 0 and piped.stderr == "", piped
    with_json, shown_with_json = run_cli_on_a_terminal(ledger_path, "--json", "ledger", "verify")
    assert with_json.code == 0 and with_json.json["ok"] is True, shown_with_json
    assert b"verifying" not in shown_with_json


def test_verify_reports_progress_in_order_up_to_every_chain_entry(ledger_path):
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": "scan"}
                                   for _ in range(ledger_ops.PROGRESS_EVERY * 2 + 5)])
        ops.cancel(ledger, ops.list_jobs(ledger, limit=1)["jobs"][0]["job_id"], reason="one audited action")
        heard: list[tuple[int, int]] = []
        result = ledger_ops.verify(ledger, progress=lambda done, total: heard.append((done, total)))
    total = result["history_entries"] + result["audit_entries"]
    assert result["audit_entries"] == 1
    assert heard == [(ledger_ops.PROGRESS_EVERY, total), (ledger_ops.PROGRESS_EVERY * 2, total), (total, total)]


def test_an_ack_and_the_next_claim_in_one_transaction_write_their_entries_once_in_order(ledger_path):
    """History rows are held by the transaction and written just before COMMIT: all of them, in chain order,
    once, and the commit listeners (the server's event stream) get exactly those rows."""
    with Ledger.open(ledger_path, lock_timeout=1) as ledger:
        ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": "scan"} for _ in range(6)])
        first = ops.claim(ledger, worker_id="w", limit=3, lease_seconds=60)["leases"]
        heard: list[list[tuple]] = []
        ledger.commit_listeners.append(heard.append)
        before = ledger.head_seq
        with ledger.transaction() as tx:
            acked = reports.ack(tx, [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]} for lease in first])
            second = claims.claim(tx, worker_id="w", limit=3, lease_seconds=60)
        assert [outcome["state"] for outcome in acked] == ["succeeded"] * 3 and len(second) == 3
        stored = ledger.read().fetch("history_page", after_seq=before, limit=100, tenants=None)
        assert [seq for seq, _, _ in stored] == list(range(before + 1, before + 7))
        events = [(json.loads(entry)["event_type"], json.loads(entry)["job_id"]) for _, entry, _ in stored]
        assert events == [*(("job.succeeded", lease["job_id"]) for lease in first),
                          *(("job.leased", lease["job_id"]) for lease in second)]
        assert [[(seq, entry, entry_hash) for seq, _, entry, entry_hash in rows] for rows in heard] == [stored]
        assert ledger_ops.verify(ledger)["ok"] is True
