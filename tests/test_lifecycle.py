"""The job lifecycle: every edge of orchestrator/states.py, lease fencing, claims, idempotency, archiving.

Tests drive the operations layer (and the core where an operation has no door) against a real ledger
file, and move time with the manual clock instead of sleeping.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from conftest import list_all

from airgap_orch import clock
from airgap_orch.errors import Conflict, IllegalTransition, NotFound, StaleLease, exit_code_for
from airgap_orch.ledger import Ledger
from airgap_orch.operations import audit as audit_ops
from airgap_orch.operations import jobs as ops
from airgap_orch.operations import ledger as ledger_ops
from airgap_orch.orchestrator import backoff, handoff, recovery, reports
from airgap_orch.orchestrator.states import FINAL_STATES, TRANSITIONS

LEASE = 60.0
ARTIFACT = {"uri": "file:///out/report.json", "digest": "sha256:" + "ab" * 32, "mime": "application/json"}


# -- helpers ---------------------------------------------------------------------------------------

def enqueue(ledger: Ledger, **fields: Any) -> str:
    spec = {"tenant": "acme", "project": "web", "type": "scan", **fields}
    return ops.enqueue(ledger, spec)["job_id"]


def claim_one(ledger: Ledger, worker: str = "w1", lease_seconds: float = LEASE, **filters: Any) -> dict:
    leases = ops.claim(ledger, worker_id=worker, limit=1, lease_seconds=lease_seconds, **filters)["leases"]
    assert len(leases) == 1, leases
    return leases[0]


def job(ledger: Ledger, job_id: str) -> dict[str, Any]:
    (row,) = ledger.read().rows("job_any", job_id=job_id)
    return row


def history(ledger: Ledger, job_id: str) -> list[dict[str, Any]]:
    return ops.show(ledger, job_id)["history"]


def event_types(ledger: Ledger, job_id: str) -> list[str]:
    return [entry["event_type"] for entry in history(ledger, job_id)]


def history_count(ledger: Ledger) -> int:
    return ledger_ops.info(ledger)["history_entries"]


def snapshot(ledger: Ledger, job_id: str) -> tuple[dict[str, Any], int, str]:
    """The job row and the history head: a refused call must change neither."""
    info = ledger_ops.info(ledger)
    return job(ledger, job_id), info["history_entries"], info["history_head"]


def requeue_and_wait(ledger: Ledger, manual_clock: clock.ManualClock, job_id: str) -> None:
    """Advance the clock past a retried job's run_at so it can be claimed again."""
    row = job(ledger, job_id)
    assert row["state"] == "queued"
    manual_clock.current = max(manual_clock.current, row["run_at"]) + timedelta(milliseconds=1)


def finish(ledger: Ledger, manual_clock: clock.ManualClock, state: str) -> str:
    """A job that ended in `state` (one of FINAL_STATES)."""
    job_id = enqueue(ledger, max_attempts=1, timeout_seconds=10)
    if state == "handed_off":  # a hand-off takes never-started jobs (tests/test_bundle_handoff.py)
        with ledger.transaction() as tx:
            assert handoff.hand_off(tx, target_site="site-b", sequence=1, tenant=None, queues=[], backfills=[],
                                    actor="test") == [job_id]
        assert job(ledger, job_id)["state"] == state
        return job_id
    lease = claim_one(ledger)
    if state == "succeeded":
        ops.ack(ledger, job_id, lease["lease_id"])
    elif state == "failed":
        ops.fail(ledger, job_id, lease["lease_id"], error="bad input", no_retry=True)
    elif state == "dead_letter":
        ops.fail(ledger, job_id, lease["lease_id"], error="boom")
    elif state == "timed_out":
        manual_clock.advance(11)
        ops.recover(ledger)
    elif state == "canceled":
        ops.cancel(ledger, job_id, reason="operator")
        ops.ack(ledger, job_id, lease["lease_id"])
    assert job(ledger, job_id)["state"] == state
    return job_id


# -- the transition table --------------------------------------------------------------------------

def test_every_event_in_the_transition_table_has_a_test_below():
    # A new edge in states.py should come with a new test in this file.
    assert set(TRANSITIONS) == {"create", "claim", "start", "ack", "retry", "fail", "exhaust", "time_out",
                                "request_cancel", "cancel", "release", "replay", "create_waiting", "unblock",
                                "throttle", "hand_off", "receive"}
    # create_waiting, unblock: tests/test_dependencies.py; throttle: test_flow_control.py; hand_off, receive:
    # tests/test_bundle_handoff.py (and a handed_off job in the final-state tests below).


def test_enqueue_creates_a_queued_job_with_one_history_entry(ledger, manual_clock):
    job_id = enqueue(ledger, payload={"image": "nginx"})
    row = job(ledger, job_id)
    assert (row["state"], row["attempts"], row["run_at"]) == ("queued", 0, manual_clock.current)
    assert [(e["event_type"], e["from_state"], e["to_state"]) for e in history(ledger, job_id)] == [
        ("job.created", None, "queued")]


def test_job_ids_of_a_batch_are_distinct_uuid7s_that_carry_the_enqueue_time(ledger):
    job_ids = ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": "scan"}] * 2_000)["job_ids"]
    parsed = [uuid.UUID(job_id) for job_id in job_ids]
    assert len(set(job_ids)) == len(job_ids) == 2_000
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    assert all(str(u) == job_id for u, job_id in zip(parsed, job_ids, strict=True))  # lowercase, canonical form
    moments = {u.int >> 80 for u in parsed}  # 48-bit Unix milliseconds
    assert len(moments) == 1 and abs(moments.pop() - time.time_ns() // 1_000_000) < 60_000
    assert len({u.int & ((1 << 62) - 1) for u in parsed}) == 2_000  # the random bits differ, not just the order


def test_claim_leases_a_queued_job_until_lease_expiry(ledger, manual_clock):
    job_id = enqueue(ledger)
    lease = claim_one(ledger, worker="w1", lease_seconds=45)
    row = job(ledger, job_id)
    assert lease["job_id"] == job_id
    assert (row["state"], row["lease_id"], row["worker_id"], row["attempts"]) == (
        "leased", lease["lease_id"], "w1", 1)
    assert row["lease_expires_at"] == manual_clock.current + timedelta(seconds=45)
    assert lease["lease_expires_at"] == clock.iso(row["lease_expires_at"])
    last = history(ledger, job_id)[-1]
    assert (last["event_type"], last["from_state"], last["to_state"], last["lease_id"], last["worker_id"]) == (
        "job.leased", "queued", "leased", lease["lease_id"], "w1")


def test_first_heartbeat_starts_the_job_and_later_ones_only_extend_the_lease(ledger, manual_clock):
    job_id = enqueue(ledger)
    lease = claim_one(ledger, lease_seconds=30)
    manual_clock.advance(10)
    first = ops.heartbeat(ledger, job_id, lease["lease_id"], progress=0.25, message="downloading")
    assert (first["state"], first["cancel_requested"]) == ("running", False)
    manual_clock.advance(20)
    second = ops.heartbeat(ledger, job_id, lease["lease_id"], progress=0.5)
    row = job(ledger, job_id)
    assert second["state"] == "running"
    assert row["lease_expires_at"] == manual_clock.current + timedelta(seconds=30)
    assert (row["progress"], row["progress_message"]) == (0.5, "downloading")
    assert event_types(ledger, job_id) == ["job.created", "job.leased", "job.started"]


@pytest.mark.parametrize("started", [False, True], ids=["from_leased", "from_running"])
def test_ack_completes_the_job_with_its_artifacts(ledger, manual_clock, started):
    job_id = enqueue(ledger)
    lease = claim_one(ledger)
    if started:
        ops.heartbeat(ledger, job_id, lease["lease_id"])
    result = ops.ack(ledger, job_id, lease["lease_id"], artifacts=[ARTIFACT])
    row = job(ledger, job_id)
    assert result["state"] == row["state"] == "succeeded"
    assert row["finished_at"] == manual_clock.current
    assert row["progress"] == 1.0
    last = history(ledger, job_id)[-1]
    assert (last["event_type"], last["from_state"], last["to_state"]) == (
        "job.succeeded", "running" if started else "leased", "succeeded")
    assert ops.show(ledger, job_id)["artifacts"] == [ARTIFACT]


def test_fail_with_attempts_left_requeues_with_capped_exponential_backoff(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=12)
    for attempt in range(1, 12):
        lease = claim_one(ledger)
        assert lease["attempt"] == attempt
        result = ops.fail(ledger, job_id, lease["lease_id"], error=f"flaky {attempt}")
        row = job(ledger, job_id)
        delay = (row["run_at"] - manual_clock.current).total_seconds()
        ceiling = min(backoff.CAP_SECONDS, backoff.BASE_SECONDS * 2 ** (attempt - 1))
        assert result["state"] == row["state"] == "queued"
        assert ceiling / 2 <= delay <= ceiling <= backoff.CAP_SECONDS, (attempt, delay)
        assert (row["lease_id"], row["worker_id"], row["last_error"]) == (None, None, f"flaky {attempt}")
        assert ops.claim(ledger, worker_id="early", limit=1, lease_seconds=LEASE)["leases"] == []
        requeue_and_wait(ledger, manual_clock, job_id)
    assert event_types(ledger, job_id).count("job.retry_scheduled") == 11


@pytest.mark.parametrize("retry_after", [0.0, 7.5, 3600.0])
def test_explicit_retry_after_wins_over_backoff(ledger, manual_clock, retry_after):
    job_id = enqueue(ledger)
    lease = claim_one(ledger)
    result = ops.fail(ledger, job_id, lease["lease_id"], error="rate limited", retry_after=retry_after)
    row = job(ledger, job_id)
    assert row["run_at"] == manual_clock.current + timedelta(seconds=retry_after)
    assert result["run_at"] == clock.iso(row["run_at"])


def test_fail_no_retry_fails_the_job_for_good_even_with_attempts_left(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=5)
    lease = claim_one(ledger)
    result = ops.fail(ledger, job_id, lease["lease_id"], error="schema mismatch", no_retry=True)
    row = job(ledger, job_id)
    assert result["state"] == row["state"] == "failed"
    assert row["finished_at"] == manual_clock.current
    assert history(ledger, job_id)[-1]["reason"].startswith("no_retry")
    manual_clock.advance(3600)
    assert ops.claim(ledger, worker_id="w2", limit=10, lease_seconds=LEASE)["leases"] == []


def test_fail_on_the_last_attempt_dead_letters_the_job(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=2)
    ops.fail(ledger, job_id, claim_one(ledger)["lease_id"], error="boom 1")
    requeue_and_wait(ledger, manual_clock, job_id)
    result = ops.fail(ledger, job_id, claim_one(ledger)["lease_id"], error="boom 2")
    row = job(ledger, job_id)
    assert result["state"] == row["state"] == "dead_letter"
    assert row["attempts"] == 2 and row["last_error"] == "boom 2"
    assert event_types(ledger, job_id)[-1] == "job.dead_lettered"
    assert [j["job_id"] for j in ops.deadletter_list(ledger)["jobs"]] == [job_id]


def test_expired_lease_is_recovered_to_queued_then_dead_lettered_on_the_last_attempt(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=2)
    claim_one(ledger, lease_seconds=10)
    manual_clock.advance(9)
    assert ops.recover(ledger) == {"recovered": 0}
    manual_clock.advance(1)
    assert ops.recover(ledger) == {"recovered": 1}
    row = job(ledger, job_id)
    assert (row["state"], row["lease_id"]) == ("queued", None)
    assert row["run_at"] > manual_clock.current
    assert history(ledger, job_id)[-1]["reason"] == "lease_expired"
    requeue_and_wait(ledger, manual_clock, job_id)
    claim_one(ledger, lease_seconds=10)
    manual_clock.advance(10)
    assert ops.recover(ledger) == {"recovered": 1}
    assert job(ledger, job_id)["state"] == "dead_letter"
    assert event_types(ledger, job_id) == ["job.created", "job.leased", "job.retry_scheduled", "job.leased",
                                           "job.dead_lettered"]


def test_claim_sweeps_expired_leases(ledger, manual_clock, monkeypatch):
    monkeypatch.setattr(recovery, "SWEEP_EVERY_SECONDS", 0.0)
    job_id = enqueue(ledger)
    claim_one(ledger, lease_seconds=5)
    manual_clock.advance(6)
    ops.claim(ledger, worker_id="w2", limit=1, lease_seconds=LEASE)
    assert job(ledger, job_id)["state"] == "queued"


def test_timeout_requeues_then_times_out_on_the_last_attempt(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=2, timeout_seconds=10)
    lease = claim_one(ledger, lease_seconds=LEASE)
    manual_clock.advance(5)
    ops.heartbeat(ledger, job_id, lease["lease_id"])  # lease is live; only the timeout runs out
    manual_clock.advance(5)
    assert ops.recover(ledger) == {"recovered": 1}
    assert job(ledger, job_id)["state"] == "queued"
    assert history(ledger, job_id)[-1]["reason"] == "timeout"
    requeue_and_wait(ledger, manual_clock, job_id)
    claim_one(ledger, lease_seconds=LEASE)
    manual_clock.advance(10)
    ops.recover(ledger)
    row = job(ledger, job_id)
    assert row["state"] == "timed_out" and row["finished_at"] == manual_clock.current
    assert event_types(ledger, job_id)[-1] == "job.timed_out"


def test_cancel_of_a_queued_job_cancels_it_now(ledger, manual_clock):
    job_id = enqueue(ledger)
    result = ops.cancel(ledger, job_id, reason="not needed")
    assert result == {"job_id": job_id, "state": "canceled", "cancel_requested": False}
    assert job(ledger, job_id)["state"] == "canceled"
    assert history(ledger, job_id)[-1]["reason"] == "not needed"
    assert ops.claim(ledger, worker_id="w1", limit=10, lease_seconds=LEASE)["leases"] == []


@pytest.mark.parametrize("ending", ["ack", "fail", "release", "lease_expiry"])
def test_cancel_of_a_running_job_is_requested_seen_on_heartbeat_then_ends_canceled(ledger, manual_clock,
                                                                                    ending):
    job_id = enqueue(ledger, max_attempts=5)
    lease = claim_one(ledger, lease_seconds=30)
    ops.heartbeat(ledger, job_id, lease["lease_id"])
    requested = ops.cancel(ledger, job_id, reason="operator asked")
    assert requested == {"job_id": job_id, "state": "running", "cancel_requested": True}
    assert job(ledger, job_id)["state"] == "running"
    assert ops.heartbeat(ledger, job_id, lease["lease_id"])["cancel_requested"] is True
    if ending == "ack":
        ops.ack(ledger, job_id, lease["lease_id"])
    elif ending == "fail":
        ops.fail(ledger, job_id, lease["lease_id"], error="stopped")
    elif ending == "release":
        ops.release(ledger, job_id, lease["lease_id"])
    else:
        manual_clock.advance(31)
        ops.recover(ledger)
    assert job(ledger, job_id)["state"] == "canceled"
    assert event_types(ledger, job_id)[-2:] == ["job.cancel_requested", "job.canceled"]


def test_cancel_of_a_leased_job_before_its_first_heartbeat_is_requested(ledger, manual_clock):
    job_id = enqueue(ledger)
    lease = claim_one(ledger)
    assert ops.cancel(ledger, job_id, reason="operator")["state"] == "leased"
    assert ops.heartbeat(ledger, job_id, lease["lease_id"])["cancel_requested"] is True
    assert ops.ack(ledger, job_id, lease["lease_id"])["state"] == "canceled"


def test_a_second_cancel_request_before_the_worker_answers_adds_no_history_and_is_audited(ledger, manual_clock):
    job_id = enqueue(ledger)
    claim_one(ledger)
    ops.cancel(ledger, job_id, reason="first")
    entries = len(history(ledger, job_id))
    again = ops.cancel(ledger, job_id, reason="second")
    assert again == {"job_id": job_id, "state": "leased", "cancel_requested": True}
    assert len(history(ledger, job_id)) == entries
    assert history(ledger, job_id)[-1]["reason"] == "first"
    audited = [entry for entry in audit_ops.list_entries(ledger)["entries"] if entry["target"] == job_id]
    assert [(entry["reason"], entry["details"].get("already_requested")) for entry in audited] == [
        ("first", None), ("second", True)]


@pytest.mark.parametrize("final_state", ["dead_letter", "failed", "timed_out"])
def test_replay_creates_a_new_queued_job_with_replay_of(ledger, manual_clock, final_state):
    original = finish(ledger, manual_clock, final_state)
    result = ops.replay(ledger, [original])
    ((replayed,),) = [[r["job_id"] for r in result["replays"]]]
    assert result["replays"][0]["replay_of"] == original
    new, old = job(ledger, replayed), job(ledger, original)
    assert (new["state"], new["attempts"], new["replay_of"]) == ("queued", 0, original)
    assert (new["tenant"], new["job_type"], new["payload_digest"]) == (
        old["tenant"], old["job_type"], old["payload_digest"])
    assert old["state"] == final_state
    assert event_types(ledger, original)[-1] == "job.replayed"
    assert claim_one(ledger)["job_id"] == replayed


def test_release_requeues_the_job_at_once(ledger, manual_clock):
    job_id = enqueue(ledger)
    lease = claim_one(ledger)
    assert ops.release(ledger, job_id, lease["lease_id"])["state"] == "queued"
    row = job(ledger, job_id)
    assert (row["lease_id"], row["run_at"]) == (None, manual_clock.current)
    assert event_types(ledger, job_id)[-1] == "job.released"
    assert claim_one(ledger, worker="w2")["job_id"] == job_id


def test_release_does_not_consume_an_attempt(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=1)
    ops.release(ledger, job_id, claim_one(ledger)["lease_id"])
    assert job(ledger, job_id)["attempts"] == 0
    assert ledger_ops.verify(ledger)["ok"] is True  # the state table still agrees with history
    lease = claim_one(ledger)
    assert lease["attempt"] == 1
    assert ops.fail(ledger, job_id, lease["lease_id"], error="x")["state"] == "dead_letter"


@pytest.mark.parametrize("started", [False, True], ids=["leased", "running"])
def test_release_of_a_cancel_requested_job_ends_it_canceled(ledger, manual_clock, started):
    """A worker shutting down gives back a job the operator asked to cancel: the job ends canceled, as
    after fail or lease expiry, and no other worker gets it."""
    job_id = enqueue(ledger, max_attempts=3)
    lease = claim_one(ledger)
    if started:
        ops.heartbeat(ledger, job_id, lease["lease_id"])
    ops.cancel(ledger, job_id, reason="operator asked")
    assert ops.release(ledger, job_id, lease["lease_id"]) == {"job_id": job_id, "state": "canceled"}
    row = job(ledger, job_id)
    assert (row["state"], row["attempts"]) == ("canceled", 1)
    last = history(ledger, job_id)[-1]
    assert (last["event_type"], last["from_state"], last["to_state"], last["reason"]) == (
        "job.canceled", "running" if started else "leased", "canceled", "canceled_by_request")
    assert ops.claim(ledger, worker_id="w2", limit=10, lease_seconds=LEASE)["leases"] == []
    assert ledger_ops.verify(ledger)["ok"] is True


# -- illegal transitions ---------------------------------------------------------------------------

@pytest.mark.parametrize("final_state", FINAL_STATES)
@pytest.mark.parametrize("archived", [False, True], ids=["hot", "archived"])
def test_cancel_of_a_finished_job_is_an_illegal_transition(ledger, manual_clock, final_state, archived):
    job_id = finish(ledger, manual_clock, final_state)
    if archived:
        with ledger.transaction() as tx:
            recovery.maintain(tx, force=True)
    before = snapshot(ledger, job_id)
    with pytest.raises(IllegalTransition) as refused:
        ops.cancel(ledger, job_id, reason="too late")
    assert exit_code_for(refused.value) == 3
    assert snapshot(ledger, job_id) == before


@pytest.mark.parametrize("state", ["queued", "leased", "running", "succeeded", "canceled"])
def test_replay_of_a_job_that_is_not_dead_failed_or_timed_out_is_refused(ledger, manual_clock, state):
    if state in FINAL_STATES:
        job_id = finish(ledger, manual_clock, state)
    else:
        job_id = enqueue(ledger)
        if state != "queued":
            lease = claim_one(ledger)
            if state == "running":
                ops.heartbeat(ledger, job_id, lease["lease_id"])
    before = snapshot(ledger, job_id)
    jobs_before = len(ops.list_jobs(ledger)["jobs"])
    with pytest.raises(Conflict) as refused:
        ops.replay(ledger, [job_id])
    assert exit_code_for(refused.value) == 3
    assert snapshot(ledger, job_id) == before
    assert len(ops.list_jobs(ledger)["jobs"]) == jobs_before


def test_replay_of_several_jobs_is_all_or_nothing(ledger, manual_clock):
    dead = finish(ledger, manual_clock, "dead_letter")
    queued = enqueue(ledger)
    count = history_count(ledger)
    with pytest.raises(IllegalTransition):
        ops.replay(ledger, [dead, queued])
    assert history_count(ledger) == count
    assert len(ops.list_jobs(ledger)["jobs"]) == 2


@pytest.mark.parametrize("operation", ["heartbeat", "ack", "fail", "cancel", "show"])
def test_unknown_job_id_is_not_found(ledger, manual_clock, operation):
    missing = str(uuid.uuid4())
    count = history_count(ledger)
    calls = {
        "heartbeat": lambda: ops.heartbeat(ledger, missing, str(uuid.uuid4())),
        "ack": lambda: ops.ack(ledger, missing, str(uuid.uuid4())),
        "fail": lambda: ops.fail(ledger, missing, str(uuid.uuid4()), error="x"),
        "cancel": lambda: ops.cancel(ledger, missing, reason="x"),
        "show": lambda: ops.show(ledger, missing),
    }
    with pytest.raises(NotFound) as refused:
        calls[operation]()
    assert exit_code_for(refused.value) == 1
    assert history_count(ledger) == count


# -- lease fencing ---------------------------------------------------------------------------------

def _report(ledger: Ledger, operation: str, job_id: str, lease_id: str) -> None:
    if operation == "heartbeat":
        ops.heartbeat(ledger, job_id, lease_id, progress=0.9, message="late")
    elif operation == "ack":
        ops.ack(ledger, job_id, lease_id, artifacts=[ARTIFACT])
    elif operation == "fail":
        ops.fail(ledger, job_id, lease_id, error="late", no_retry=True)
    else:
        ops.release(ledger, job_id, lease_id)


OPERATIONS = ["heartbeat", "ack", "fail", "release"]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_report_from_an_expired_lease_is_refused(ledger, manual_clock, operation):
    job_id = enqueue(ledger)
    lease = claim_one(ledger, lease_seconds=10)
    manual_clock.advance(10)  # lease_expires_at == now: already expired
    before = snapshot(ledger, job_id)
    with pytest.raises(StaleLease) as refused:
        _report(ledger, operation, job_id, lease["lease_id"])
    assert exit_code_for(refused.value) == 3
    assert snapshot(ledger, job_id) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_report_just_before_lease_expiry_is_accepted(ledger, manual_clock, operation):
    job_id = enqueue(ledger)
    lease = claim_one(ledger, lease_seconds=10)
    manual_clock.advance(9.999)
    _report(ledger, operation, job_id, lease["lease_id"])
    assert history_count(ledger) == 3


@pytest.mark.parametrize("operation", OPERATIONS)
def test_report_from_a_superseded_lease_after_reclaim_is_refused(ledger, manual_clock, operation):
    job_id = enqueue(ledger)
    old = claim_one(ledger, worker="frozen", lease_seconds=10)
    manual_clock.advance(11)
    ops.recover(ledger)
    requeue_and_wait(ledger, manual_clock, job_id)
    new = claim_one(ledger, worker="second", lease_seconds=LEASE)
    assert new["job_id"] == job_id and new["lease_id"] != old["lease_id"]
    before = snapshot(ledger, job_id)
    with pytest.raises(StaleLease):
        _report(ledger, operation, job_id, old["lease_id"])
    assert snapshot(ledger, job_id) == before
    ops.ack(ledger, job_id, new["lease_id"])  # the current lease still commits
    row = job(ledger, job_id)
    assert (row["state"], row["worker_id"]) == ("succeeded", "second")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_report_with_a_random_lease_id_is_refused(ledger, manual_clock, operation):
    job_id = enqueue(ledger)
    claim_one(ledger)
    before = snapshot(ledger, job_id)
    with pytest.raises(StaleLease):
        _report(ledger, operation, job_id, str(uuid.uuid4()))
    assert snapshot(ledger, job_id) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_report_on_a_queued_job_is_refused(ledger, manual_clock, operation):
    job_id = enqueue(ledger)
    before = snapshot(ledger, job_id)
    with pytest.raises(StaleLease):
        _report(ledger, operation, job_id, str(uuid.uuid4()))
    assert snapshot(ledger, job_id) == before


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("archived", [False, True], ids=["hot", "archived"])
def test_report_after_the_job_finished_is_refused(ledger, manual_clock, operation, archived):
    job_id = enqueue(ledger)
    lease = claim_one(ledger)
    ops.ack(ledger, job_id, lease["lease_id"])
    if archived:
        with ledger.transaction() as tx:
            recovery.maintain(tx, force=True)
    before = snapshot(ledger, job_id)
    with pytest.raises(StaleLease):
        _report(ledger, operation, job_id, lease["lease_id"])
    assert snapshot(ledger, job_id) == before


def test_batch_of_acks_refuses_only_the_stale_item(ledger, manual_clock):
    fresh_id, stale_id = enqueue(ledger), enqueue(ledger)
    leases = ops.claim(ledger, worker_id="w1", limit=2, lease_seconds=LEASE)["leases"]
    by_job = {lease["job_id"]: lease["lease_id"] for lease in leases}
    with ledger.transaction() as tx:
        outcomes = reports.ack(tx, [{"job_id": fresh_id, "lease_id": by_job[fresh_id]},
                                    {"job_id": stale_id, "lease_id": str(uuid.uuid4())}])
    assert outcomes[0]["state"] == "succeeded"
    assert isinstance(outcomes[1], StaleLease)
    assert job(ledger, stale_id)["state"] == "leased"
    assert ledger_ops.verify(ledger)["ok"] is True


# -- claims ----------------------------------------------------------------------------------------

def test_batch_claim_gives_each_job_a_fresh_distinct_lease(ledger, manual_clock):
    job_ids = {enqueue(ledger) for _ in range(5)}
    leases = ops.claim(ledger, worker_id="w1", limit=10, lease_seconds=LEASE)["leases"]
    assert {lease["job_id"] for lease in leases} == job_ids
    assert len({lease["lease_id"] for lease in leases}) == 5
    for lease in leases:
        assert job(ledger, lease["job_id"])["lease_id"] == lease["lease_id"]
        uuid.UUID(lease["lease_id"])
    assert ops.claim(ledger, worker_id="w2", limit=10, lease_seconds=LEASE)["leases"] == []


def test_reclaim_gets_a_new_lease_id_and_the_next_attempt(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=3)
    first = claim_one(ledger, lease_seconds=10)
    ops.fail(ledger, job_id, first["lease_id"], error="x", retry_after=0)
    second = claim_one(ledger)
    assert second["lease_id"] != first["lease_id"]
    assert (first["attempt"], second["attempt"]) == (1, 2)


def test_claim_takes_higher_priority_first_then_earlier_run_at(ledger, manual_clock):
    start = manual_clock.current
    at = lambda seconds: clock.iso(start - timedelta(seconds=seconds))  # noqa: E731
    low_old = enqueue(ledger, priority=0, run_at=at(50))
    high_new = enqueue(ledger, priority=5, run_at=at(10))
    high_old = enqueue(ledger, priority=5, run_at=at(40))
    low_new = enqueue(ledger, priority=0, run_at=at(5))
    negative = enqueue(ledger, priority=-3, run_at=at(100))
    top_two = ops.claim(ledger, worker_id="w1", limit=2, lease_seconds=LEASE)["leases"]
    assert {lease["job_id"] for lease in top_two} == {high_old, high_new}
    order = [claim_one(ledger)["job_id"] for _ in range(3)]
    assert order == [low_old, low_new, negative]


def test_claim_respects_queue_and_type_filters(ledger, manual_clock):
    scan_fast = enqueue(ledger, type="scan", queue="fast")
    scan_slow = enqueue(ledger, type="scan", queue="slow")
    export_fast = enqueue(ledger, type="export", queue="fast")
    assert claim_one(ledger, queue="slow")["job_id"] == scan_slow
    assert claim_one(ledger, job_type="export")["job_id"] == export_fast
    assert ops.claim(ledger, worker_id="w", limit=5, lease_seconds=LEASE, queue="fast",
                     job_type="export")["leases"] == []
    assert claim_one(ledger, queue="fast", job_type="scan")["job_id"] == scan_fast


def test_claim_skips_jobs_whose_run_at_is_in_the_future(ledger, manual_clock):
    later = enqueue(ledger, run_at=clock.iso(manual_clock.current + timedelta(seconds=60)))
    assert ops.claim(ledger, worker_id="w1", limit=5, lease_seconds=LEASE)["leases"] == []
    manual_clock.advance(59.9)
    assert ops.claim(ledger, worker_id="w1", limit=5, lease_seconds=LEASE)["leases"] == []
    manual_clock.advance(0.1)
    assert claim_one(ledger)["job_id"] == later


def test_claimed_jobs_carry_attempt_retry_hint_and_provenance(ledger, manual_clock):
    job_id = enqueue(ledger, max_attempts=4, correlation_id="corr-1", payload={"k": [1, 2]})
    first = claim_one(ledger, lease_seconds=30)
    ops.fail(ledger, job_id, first["lease_id"], error="x", retry_after=0)
    lease = claim_one(ledger, lease_seconds=30)
    assert (lease["attempt"], lease["max_attempts"]) == (2, 4)
    assert lease["retry_hint"]["backoff_seconds_if_failed"] == backoff.hint(2)
    assert 0 < lease["retry_hint"]["heartbeat_every_seconds"] < 30
    assert (lease["tenant"], lease["project"], lease["type"], lease["correlation_id"], lease["payload"]) == (
        "acme", "web", "scan", "corr-1", {"k": [1, 2]})


# -- idempotent enqueue ----------------------------------------------------------------------------

def test_same_idempotency_key_returns_the_existing_job(ledger, manual_clock):
    spec = {"tenant": "acme", "project": "web", "type": "scan", "idempotency_key": "feed-2026-01-31"}
    first = ops.enqueue(ledger, spec)
    again = ops.enqueue(ledger, dict(spec))
    assert first["created"] is True
    assert again == {**first, "created": False}
    with pytest.raises(Conflict, match="feed-2026-01-31"):  # another spec: tests/test_idempotency_conflicts.py
        ops.enqueue(ledger, {**spec, "payload": {"different": True}})
    assert len(ops.list_jobs(ledger)["jobs"]) == 1


def test_same_idempotency_key_in_another_tenant_is_a_different_job(ledger, manual_clock):
    spec = {"project": "web", "type": "scan", "idempotency_key": "shared-key"}
    acme = ops.enqueue(ledger, {**spec, "tenant": "acme"})
    globex = ops.enqueue(ledger, {**spec, "tenant": "globex"})
    assert acme["created"] is globex["created"] is True
    assert acme["job_id"] != globex["job_id"]


def test_idempotency_key_outlives_the_job_moving_to_the_archive(ledger, manual_clock):
    spec = {"tenant": "acme", "project": "web", "type": "scan", "idempotency_key": "once"}
    first = ops.enqueue(ledger, spec)["job_id"]
    ops.ack(ledger, first, claim_one(ledger)["lease_id"])
    with ledger.transaction() as tx:
        recovery.maintain(tx, force=True)
    assert ops.enqueue(ledger, spec) == {"job_id": first, "created": False, "tenant": "acme", "type": "scan"}


def test_batch_with_a_repeated_key_creates_one_job(ledger, manual_clock):
    spec = {"tenant": "acme", "project": "web", "type": "scan"}
    existing = ops.enqueue(ledger, {**spec, "idempotency_key": "old"})["job_id"]
    result = ops.enqueue_batch(ledger, [{**spec, "idempotency_key": "new"}, {**spec, "idempotency_key": "old"},
                                        {**spec, "idempotency_key": "new"}, spec])
    ids = result["job_ids"]
    assert (result["created"], result["existing"]) == (2, 2)
    assert ids[1] == existing and ids[0] == ids[2] and len(set(ids)) == 3
    assert len(ops.list_jobs(ledger)["jobs"]) == 3


def test_batch_with_one_key_in_two_tenants_keeps_the_existing_job_of_each(ledger, manual_clock):
    spec = {"project": "web", "type": "scan", "idempotency_key": "K"}
    existing = ops.enqueue(ledger, {**spec, "tenant": "globex"})["job_id"]
    result = ops.enqueue_batch(ledger, [{**spec, "tenant": "acme"}, {**spec, "tenant": "globex"}])
    assert result["job_ids"][1] == existing
    assert (result["created"], result["existing"]) == (1, 1)
    assert len(ops.list_jobs(ledger, tenant="globex")["jobs"]) == 1


# -- archiving -------------------------------------------------------------------------------------

def _hot_finished(ledger: Ledger) -> int:
    states = ", ".join(f"'{state}'" for state in FINAL_STATES)
    return ledger.read().con.execute(f"SELECT count(*) FROM jobs WHERE state IN ({states})").fetchone()[0]


def test_finished_jobs_stay_queryable_after_forced_archiving(ledger, manual_clock):
    done = {state: finish(ledger, manual_clock, state) for state in FINAL_STATES}
    active = enqueue(ledger)
    with ledger.transaction() as tx:
        recovery.maintain(tx, force=True)
    assert _hot_finished(ledger) == 0
    listed = {row["job_id"]: row["state"] for row in ops.list_jobs(ledger)["jobs"]}
    assert listed == {**{job_id: state for state, job_id in done.items()}, active: "queued"}
    for state, job_id in done.items():
        shown = ops.show(ledger, job_id)
        assert (shown["state"], shown["history"][0]["event_type"]) == (state, "job.created")
    assert [row["job_id"] for row in ops.list_jobs(ledger, state="succeeded")["jobs"]] == [done["succeeded"]]
    assert ledger_ops.verify(ledger)["ok"] is True


def test_claims_archive_once_more_than_archive_after_jobs_finished(ledger, manual_clock):
    count = recovery.ARCHIVE_AFTER + 1
    spec = {"tenant": "acme", "project": "web", "type": "bulk"}
    job_ids = ops.enqueue_batch(ledger, [spec] * count)["job_ids"]
    leases = []
    while len(leases) < count:
        leases += ops.claim(ledger, worker_id="w", limit=1000, lease_seconds=LEASE)["leases"]
    items = [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]} for lease in leases]
    with ledger.transaction() as tx:
        reports.ack(tx, items[: recovery.ARCHIVE_AFTER - 1])
    assert ops.claim(ledger, worker_id="w", limit=1, lease_seconds=LEASE)["leases"] == []
    assert _hot_finished(ledger) == recovery.ARCHIVE_AFTER - 1  # below the threshold: still hot
    with ledger.transaction() as tx:
        reports.ack(tx, items[recovery.ARCHIVE_AFTER - 1:])
    assert ops.claim(ledger, worker_id="w", limit=1, lease_seconds=LEASE)["leases"] == []
    assert _hot_finished(ledger) == 0
    assert len(list_all(ledger, state="succeeded")["jobs"]) == count
    assert ops.show(ledger, job_ids[-1])["state"] == "succeeded"
    assert ledger_ops.verify(ledger)["history_entries"] == 3 * count


def test_the_same_ack_twice_in_one_batch_completes_the_job_once(ledger):
    job_id = ops.enqueue(ledger, {"tenant": "t", "project": "p", "type": "scan"})["job_id"]
    (lease,) = ops.claim(ledger, worker_id="w")["leases"]
    item = {"job_id": job_id, "lease_id": lease["lease_id"]}
    with ledger.transaction() as tx:
        first, second = reports.ack(tx, [dict(item), dict(item)])
    assert first["state"] == "succeeded"
    assert isinstance(second, StaleLease)
    events = [entry["event_type"] for entry in ops.show(ledger, job_id)["history"]]
    assert events.count("job.succeeded") == 1


def test_stale_and_current_ack_of_one_job_in_one_batch_credit_the_current_lease(ledger, manual_clock):
    """The server's group commit can put a late ack from an expired lease and the new owner's ack of the
    same job in one batch: only the current lease completes it, whatever the order."""
    from airgap_orch.errors import StaleLease
    from airgap_orch.orchestrator import reports

    job_id = enqueue(ledger)
    (old,) = ops.claim(ledger, worker_id="w-old", limit=1, lease_seconds=5)["leases"]
    manual_clock.advance(10)
    ops.recover(ledger)
    manual_clock.advance(600)  # past the retry backoff
    (new,) = ops.claim(ledger, worker_id="w-new", limit=1, lease_seconds=30)["leases"]
    artifact = {"uri": "file:///out/x.json", "digest": "sha256:" + "a" * 64, "mime": "application/json"}
    with ledger.transaction() as tx:
        stale, current = reports.ack(tx, [{"job_id": job_id, "lease_id": old["lease_id"]},
                                          {"job_id": job_id, "lease_id": new["lease_id"], "artifacts": [artifact]}])
    assert isinstance(stale, StaleLease)
    assert current == {"job_id": job_id, "state": "succeeded", "attempt": 2}
    shown = ops.show(ledger, job_id)
    assert shown["artifacts"] == [artifact]
    assert shown["history"][-1]["worker_id"] == "w-new"


def test_a_report_with_a_lease_never_issued_says_so_and_a_superseded_one_names_the_newer_lease(ledger,
                                                                                                manual_clock):
    job_id = enqueue(ledger, max_attempts=3)
    first = claim_one(ledger, lease_seconds=30)
    before = snapshot(ledger, job_id)
    with pytest.raises(StaleLease, match="was never issued for job"):
        ops.ack(ledger, job_id, str(uuid.uuid4()))
    assert snapshot(ledger, job_id) == before
    manual_clock.advance(31)  # the first lease expires; the sweep of the next claim requeues the job
    ops.recover(ledger)
    requeue_and_wait(ledger, manual_clock, job_id)
    second = claim_one(ledger, lease_seconds=30)
    assert second["lease_id"] != first["lease_id"]
    with pytest.raises(StaleLease, match="a newer lease holds it now"):
        ops.heartbeat(ledger, job_id, first["lease_id"])
    with pytest.raises(StaleLease, match="was never issued"):
        ops.fail(ledger, job_id, str(uuid.uuid4()), error="x")
