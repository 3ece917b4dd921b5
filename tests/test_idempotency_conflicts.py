"""An idempotency key names one job spec: the same spec again is a no-op that answers with the first job; a different
spec under the same key (in the ledger, or earlier in the same batch) is refused as a conflict naming the key
(exit 3, HTTP 409) with the ledger unchanged. A field left out and the same field sent with its default are the
same spec. Keys reserved before the spec was recorded (ledgers made before migration 0007) accept any spec.
Backfill windows and schedule ticks, whose keys name a window, keep resolving to the job that holds the key."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_cli
from server_fixtures import serving

from airgap_orch.errors import Conflict, exit_code_for
from airgap_orch.ledger import Ledger
from airgap_orch.operations import backfills as backfill_ops
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.operations import sources as source_ops

SPEC = {"tenant": "acme", "project": "feeds", "type": "advisory.ingest", "payload": {"feed": "nvd", "page": 1},
        "idempotency_key": "nvd-2026-01-31"}


def snapshot(ledger: Ledger) -> tuple:
    """What a refused enqueue must leave alone: history head, job counts, and the reserved keys."""
    info = ledger_ops.info(ledger)
    keys = ledger.read().con.execute("SELECT * FROM idempotency_keys ORDER BY ALL").fetchall()
    return info["history_entries"], info["history_head"], info["jobs"], keys


@pytest.mark.parametrize("change", [
    {"payload": {"feed": "nvd", "page": 2}}, {"priority": 5}, {"type": "vex.ingest"}, {"project": "other"},
    {"queue": "slow"}, {"run_at": "2030-01-01T00:00:00Z"}, {"max_attempts": 7}, {"timeout_seconds": 60},
    {"correlation_id": "corr-2"}, {"keys": ["host:nvd.nist.gov"]},
], ids=lambda change: next(iter(change)))
def test_the_same_key_with_a_different_spec_is_a_conflict_naming_the_key(ledger, change):
    first = ops.enqueue(ledger, SPEC)
    before = snapshot(ledger)
    with pytest.raises(Conflict) as refused:
        ops.enqueue(ledger, {**SPEC, **change})
    assert exit_code_for(refused.value) == 3
    assert "idempotency key 'nvd-2026-01-31'" in str(refused.value) and first["job_id"] in str(refused.value)
    assert snapshot(ledger) == before


def test_the_same_spec_again_is_a_no_op_whether_defaults_are_sent_or_left_out(ledger):
    spec = {**SPEC, "run_at": "2030-01-31T12:00:00Z", "keys": ["host:nvd.nist.gov", "source:nvd"]}
    first = ops.enqueue(ledger, spec)
    before = snapshot(ledger)
    same = {**spec, "priority": 0, "queue": "default", "max_attempts": 3,  # the defaults, sent
            "payload": {"page": 1, "feed": "nvd"},  # another order of the same object
            "run_at": "2030-01-31T13:00:00+01:00",  # the same instant
            "keys": ["source:nvd", "host:nvd.nist.gov"]}  # a set: order does not count
    assert ops.enqueue(ledger, same) == {**first, "created": False}
    assert ops.enqueue(ledger, spec) == {**first, "created": False}
    assert snapshot(ledger) == before


def test_a_parent_given_with_the_key_is_part_of_the_spec(ledger):
    parent = ops.enqueue(ledger, {"tenant": "acme", "project": "feeds", "type": "mirror"})["job_id"]
    other = ops.enqueue(ledger, {"tenant": "acme", "project": "feeds", "type": "mirror"})["job_id"]
    first = ops.enqueue(ledger, {**SPEC, "depends_on": [parent, other]})
    assert ops.enqueue(ledger, {**SPEC, "depends_on": [other, parent]})["job_id"] == first["job_id"]
    with pytest.raises(Conflict):
        ops.enqueue(ledger, {**SPEC, "depends_on": [parent]})


def test_a_batch_with_one_key_and_two_specs_is_refused_whole(ledger):
    unkeyed = {"tenant": "acme", "project": "feeds", "type": "other"}
    before = snapshot(ledger)
    with pytest.raises(Conflict, match="'nvd-2026-01-31'.*job 1 of this batch"):
        ops.enqueue_batch(ledger, [SPEC, unkeyed, {**SPEC, "priority": 9}])
    assert snapshot(ledger) == before
    # The same spec twice in a batch is still one job.
    result = ops.enqueue_batch(ledger, [SPEC, unkeyed, dict(SPEC)])
    assert (result["created"], result["existing"]) == (2, 1) and result["job_ids"][0] == result["job_ids"][2]


def test_a_batch_naming_a_stored_key_with_another_spec_is_refused_whole(ledger):
    ops.enqueue(ledger, SPEC)
    before = snapshot(ledger)
    with pytest.raises(Conflict, match="'nvd-2026-01-31'"):
        ops.enqueue_batch(ledger, [{**SPEC, "idempotency_key": "fresh-key"}, {**SPEC, "priority": 1}])
    assert snapshot(ledger) == before


def test_the_cli_exits_3_and_the_server_answers_409_naming_the_key(ledger_path, tmp_path):
    flags = ("jobs", "enqueue", "--tenant", "acme", "--project", "feeds", "--type", "advisory.ingest",
             "--idempotency-key", "nvd-2026-01-31")
    created = run_cli(ledger_path, "--json", *flags, "--payload", '{"page": 1}')
    assert created.code == 0, created
    refused = run_cli(ledger_path, *flags, "--payload", '{"page": 2}')
    assert refused.code == 3, refused
    assert len(refused.stderr.strip().splitlines()) == 1 and "'nvd-2026-01-31'" in refused.stderr
    with serving(ledger_path, "--no-auth") as server:
        spec = {"tenant": "acme", "project": "feeds", "type": "advisory.ingest", "idempotency_key": "nvd-2026-01-31"}
        same = server.request("POST", "/v1/jobs", {**spec, "payload": {"page": 1}})
        other = server.request("POST", "/v1/jobs", {**spec, "payload": {"page": 2}})
    assert same.status == 200 and same.json["job_id"] == created.json["job_id"] and same.json["created"] is False
    assert other.status == 409 and other.json["exit_code"] == 3 and "'nvd-2026-01-31'" in other.json["detail"]


def test_a_key_reserved_before_spec_digests_were_kept_accepts_any_spec(ledger_path):
    """A ledger made before migration 0007: opening it adds the column, its existing keys have no digest (what their
    callers sent is not known), and they keep answering with their job whatever the spec; new keys are checked."""
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        old = ops.enqueue(ledger, SPEC)
        with ledger.transaction() as tx:  # back to the schema before 0007, as an older version left it
            tx.con.execute("ALTER TABLE idempotency_keys DROP COLUMN spec_digest")
            tx.con.execute("DELETE FROM schema_migrations WHERE version = 7")
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:  # migrates
        assert ledger.schema_version >= 7  # 0007 applied again (later migrations may follow)
        assert ops.enqueue(ledger, {**SPEC, "priority": 4}) == {**old, "created": False}
        new = ops.enqueue(ledger, {**SPEC, "idempotency_key": "after-upgrade"})
        with pytest.raises(Conflict):
            ops.enqueue(ledger, {**SPEC, "idempotency_key": "after-upgrade", "priority": 4})
        assert ops.enqueue(ledger, {**SPEC, "idempotency_key": "after-upgrade"}) == {**new, "created": False}
        assert ledger_ops.verify(ledger)["ok"] is True


# -- keys the orchestrator makes: a window's or a tick's key names the window, whatever the spec ------------------

def test_a_backfill_window_whose_key_holds_a_job_keeps_that_job(ledger):
    start, end = "2024-03-01T00:00:00.000000Z", "2024-03-01T01:00:00.000000Z"
    held = ops.enqueue(ledger, {"tenant": "acme", "project": "feeds", "type": "advisory.ingest",
                                "idempotency_key": f"backfill:advisory.ingest:{start}:{end}"})["job_id"]
    created = backfill_ops.create(ledger, {"tenant": "acme", "project": "feeds", "type": "advisory.ingest",
                                           "from": "2024-03-01T00:00", "to": "2024-03-01T02:00", "step": "1h"},
                                  reason="mirror outage", ticket="OPS-1")
    assert (created["windows"], created["created"], created["suppressed"]) == (2, 1, 1)
    assert held in {job["job_id"] for job in ops.list_jobs(ledger)["jobs"]}
    assert len(ops.list_jobs(ledger)["jobs"]) == 2


def test_a_schedule_tick_whose_key_holds_a_job_keeps_that_job(ledger, manual_clock):
    from datetime import datetime

    manual_clock.current = datetime(2026, 1, 1, 10, 0, 30)
    source_ops.add(ledger, tenant="acme", name="nvd", type="advisory.ingest", schedule="0 * * * *",
                   payload={"feed": "nvd"})
    held = ops.enqueue(ledger, {"tenant": "acme", "project": "nvd", "type": "advisory.ingest",
                                "payload": {"by": "hand"},
                                "idempotency_key": "schedule:nvd:2026-01-01T11:00:00.000000Z"})["job_id"]
    manual_clock.advance(3600)
    (ran,) = source_ops.run_due(ledger)["sources"]
    assert (ran["job_id"], ran["created"]) == (held, False)


def digest_of(spec: dict[str, Any]) -> str:
    from airgap_orch import validation

    return validation.job_spec(spec)["spec_digest"]


def test_a_spec_without_a_key_gets_no_digest_and_with_a_key_one_per_spec():
    unkeyed = dict(SPEC)
    unkeyed.pop("idempotency_key")
    assert digest_of(unkeyed) is None
    assert digest_of(SPEC) == digest_of({**SPEC, "priority": 0}) != digest_of({**SPEC, "priority": 1})
