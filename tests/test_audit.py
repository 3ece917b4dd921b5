"""The audit log through the real CLI and HTTP: `audit list [--since] [--limit] [--json]` shows operator
actions (cancel, replay, dead-letter replay, backfill create and cancel) with actor, time, reason and ticket;
`audit verify` recomputes the hash chain and exits 4 naming the first bad entry when a row was altered,
removed or reordered."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import duckdb

from airgap_orch import clock
from airgap_orch.ledger import Ledger
from airgap_orch.operations import audit as audit_ops
from airgap_orch.operations import backfills as backfill_ops
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops

SPEC = {"tenant": "acme", "project": "feeds", "type": "advisory.ingest"}
BACKFILL = {**SPEC, "from": "2024-03-01", "to": "2024-03-01T04:00", "step": "1h"}


def operator_actions(ledger: Ledger, manual_clock) -> dict[str, str]:
    """One of each audited action, a minute apart: cancel, replay, dead-letter replay, backfill, its cancel."""
    queued = ops.enqueue(ledger, SPEC)["job_id"]
    ops.cancel(ledger, queued, reason="duplicate feed")
    manual_clock.advance(60)
    dead = ops.enqueue(ledger, {**SPEC, "type": "vex.ingest", "max_attempts": 1})["job_id"]
    (lease,) = ops.claim(ledger, worker_id="w", job_type="vex.ingest")["leases"]
    ops.fail(ledger, dead, lease["lease_id"], error="boom")
    ops.replay(ledger, [dead])
    manual_clock.advance(60)
    backfill = backfill_ops.create(ledger, dict(BACKFILL), reason="mirror outage", ticket="OPS-1")["backfill_id"]
    manual_clock.advance(60)
    backfill_ops.cancel(ledger, backfill, reason="wrong range", ticket="OPS-2")
    return {"queued": queued, "dead": dead, "backfill": backfill}


def test_audit_list_shows_each_operator_action_with_actor_time_reason_and_ticket(ledger_path, cli, manual_clock):
    start = manual_clock.current
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        ids = operator_actions(ledger, manual_clock)
    listed = cli("audit", "list", "--json")
    assert listed.code == 0, listed
    entries = listed.json["entries"]
    assert [(e["seq"], e["action"], e["actor"], e["reason"], e["ticket"], e["target"]) for e in entries] == [
        (1, "job.cancel", "cli", "duplicate feed", None, ids["queued"]),
        (2, "job.replay", "cli", None, None, ids["dead"]),
        (3, "backfill.create", "cli", "mirror outage", "OPS-1", ids["backfill"]),
        (4, "backfill.cancel", "cli", "wrong range", "OPS-2", ids["backfill"]),
    ]
    assert [e["at"] for e in entries] == [clock.iso(start + timedelta(minutes=n)) for n in range(4)]
    assert all(len(e["entry_hash"]) == 64 for e in entries)
    since = cli("audit", "list", "--since", entries[2]["at"], "--json").json["entries"]
    assert [e["seq"] for e in since] == [3, 4]
    assert [e["seq"] for e in cli("audit", "list", "--limit", "2", "--json").json["entries"]] == [1, 2]
    human = cli("audit", "list")
    assert human.code == 0 and len(human.stdout.splitlines()) == 4, human
    assert "backfill.create" in human.stdout and "ticket='OPS-1'" in human.stdout
    verified = cli("audit", "verify", "--json")
    assert verified.code == 0 and verified.json["audit_entries"] == 4, verified


def tamper(path: Path, statement: str) -> None:
    """Change the ledger file behind the orchestrator's back (as an attacker with file access would)."""
    connection = duckdb.connect(str(path))
    try:
        connection.execute(statement)
    finally:
        connection.close()


def test_audit_verify_exits_4_naming_the_first_altered_entry(ledger_path, cli, manual_clock):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        operator_actions(ledger, manual_clock)
    tamper(ledger_path, "UPDATE audit_log SET entry = replace(entry, 'mirror outage', 'routine') WHERE seq = 3")
    result = cli("audit", "verify")
    assert result.code == 4, result
    (line,) = result.stderr.strip().splitlines()
    assert "audit entry 3 (backfill.create)" in line and "altered" in line, line
    assert result.stdout == ""
    as_json = cli("audit", "verify", "--json")
    assert as_json.code == 4 and "audit entry 3" in as_json.stderr, as_json
    assert cli("ledger", "verify").code == 4, "ledger verify checks the audit chain too"


def test_audit_verify_names_a_removed_entry(ledger_path, cli, manual_clock):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        operator_actions(ledger, manual_clock)
    tamper(ledger_path, "DELETE FROM audit_log WHERE seq = 2")
    result = cli("audit", "verify")
    assert result.code == 4, result
    assert "audit entry 2: found seq 3" in result.stderr, result


def test_bad_audit_list_input_exits_1_or_2_and_changes_nothing(ledger_path, cli, manual_clock):
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        operator_actions(ledger, manual_clock)
        before = (ledger_ops.info(ledger), audit_ops.list_entries(ledger))
    for args, code, text in ((("--since", "last tuesday"), 1, "ISO 8601"), (("--limit", "0"), 1, "limit"),
                             (("--limit", "many"), 2, "many")):
        result = cli("audit", "list", *args)
        assert result.code == code and result.stdout == "", (args, result)
        (line,) = result.stderr.strip().splitlines()
        assert text in line, (args, result)
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        assert (ledger_ops.info(ledger), audit_ops.list_entries(ledger)) == before


def test_audit_over_http_lists_with_since_and_limit_and_verify_answers_422_when_altered(ledger_path, manual_clock):
    from server_fixtures import assert_problem, serving

    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        operator_actions(ledger, manual_clock)
    with serving(ledger_path, "--no-auth") as server:
        entries = server.request("GET", "/v1/audit").json["entries"]
        assert [e["action"] for e in entries] == ["job.cancel", "job.replay", "backfill.create", "backfill.cancel"]
        page = server.request("GET", "/v1/audit", query={"since": entries[1]["at"], "limit": 2}).json
        assert [e["seq"] for e in page["entries"]] == [2, 3] and page["last_seq"] == 3
        assert [e["seq"] for e in server.request("GET", "/v1/audit", query={"after_seq": 3}).json["entries"]] == [4]
        for query in ({"limit": -1}, {"limit": 10**20}, {"since": "soon"}, {"after_seq": -5}, {"tenant": "acme"}):
            assert_problem(server.request("GET", "/v1/audit", query=query), 400, "invalid-input", 1)
        verified = server.request("POST", "/v1/audit/verify")
        assert verified.status == 200 and verified.json["audit_entries"] == 4, verified
        assert verified.json["audit_head"] == entries[-1]["entry_hash"]
    tamper(ledger_path, "UPDATE audit_log SET entry_hash = repeat('0', 64) WHERE seq = 1")
    with serving(ledger_path, "--no-auth") as server:
        problem = assert_problem(server.request("POST", "/v1/audit/verify"), 422, "verification-failed", 4)
    assert "audit entry 1 (job.cancel)" in problem["detail"]


def test_unknown_targets_are_refused_before_anything_is_audited(ledger_path, cli):
    missing = str(uuid.uuid4())
    for args in (("jobs", "cancel", missing, "--reason", "r"), ("jobs", "replay", missing, "--reason", "r"),
                 ("backfill", "cancel", missing, "--reason", "r")):
        result = cli(*args)
        assert result.code == 1 and "no " in result.stderr, (args, result)
    assert cli("audit", "list", "--json").json == {"entries": [], "last_seq": 0}
