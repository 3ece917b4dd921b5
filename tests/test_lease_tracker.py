"""The lease tracker both workers share (airgap_orch/worker/leases.py): when heartbeats fall due, how two
attempts of one job stay apart, when an attempt is dropped as lost, and what is reported for each way a
handler ends.

The schedule tests drive the tracker with a settable clock and hand it answers as a transport would; the
report tests send its requests to a real ledger file (operations/dispatch, as the runner's writer does).
"""

from __future__ import annotations

import pytest

from airgap_orch.errors import OrchError, StaleLease
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as ops
from airgap_orch.worker import JobCanceled, PermanentError, RetryableError
from airgap_orch.worker.context import CANCEL_REQUESTED, FIRST_BEAT_SECONDS, LEASE_LOST, SHUTDOWN
from airgap_orch.worker.leases import (
    CANCELED_MESSAGE,
    DONE,
    ERROR,
    LOST,
    RELEASED,
    REPORTING,
    RETRY_BEAT_SECONDS,
    RUNNING,
    LeaseTracker,
)

LEASE = 30.0  # heartbeats every 10 s


class SettableClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock()


def tracker_on(clock: SettableClock, **options) -> LeaseTracker:
    return LeaseTracker(LEASE, clock=clock, **options)


def lease(job_id: str = "job-1", lease_id: str = "lease-1", attempt: int = 1) -> dict:
    return {"job_id": job_id, "lease_id": lease_id, "attempt": attempt, "max_attempts": 3, "payload": {},
            "tenant": "acme", "project": "p", "type": "work", "queue": "default"}


def nothing(ctx) -> None:
    return None


def due_lease_ids(tracker: LeaseTracker) -> list[str]:
    beats, _wait = tracker.due_beats()
    for beat in beats:
        tracker.beat_sent(beat, {"state": "running"})
    return [beat.job.lease_id for beat in beats]


# -- when heartbeats fall due ---------------------------------------------------------------------------

def test_the_first_heartbeat_is_due_first_beat_seconds_after_the_handler_starts_then_every_third_of_the_lease(
        clock):
    tracker = tracker_on(clock)
    job = tracker.track(lease(), nothing, "w-1")
    assert tracker.start(job) and job.phase == RUNNING
    beats, wait = tracker.due_beats()
    assert beats == [] and wait == pytest.approx(FIRST_BEAT_SECONDS)
    clock.advance(FIRST_BEAT_SECONDS - 0.01)
    assert due_lease_ids(tracker) == []
    clock.advance(0.01)
    assert due_lease_ids(tracker) == ["lease-1"]
    clock.advance(LEASE / 3 - 0.01)
    assert due_lease_ids(tracker) == []
    clock.advance(0.01)
    assert due_lease_ids(tracker) == ["lease-1"]


def test_a_claimed_job_waiting_for_a_thread_is_heartbeated_after_a_third_of_its_lease(clock):
    tracker = tracker_on(clock)
    tracker.track(lease(), nothing, "w-1")
    clock.advance(FIRST_BEAT_SECONDS)
    assert due_lease_ids(tracker) == []  # no first beat before a handler starts
    clock.advance(LEASE / 3 - FIRST_BEAT_SECONDS)
    assert due_lease_ids(tracker) == ["lease-1"]


def test_an_attempt_has_one_heartbeat_in_flight_at_a_time(clock):
    tracker = tracker_on(clock)
    tracker.start(tracker.track(lease(), nothing, "w-1"))
    clock.advance(FIRST_BEAT_SECONDS)
    beats, _wait = tracker.due_beats()
    assert len(beats) == 1
    clock.advance(5.0)  # the answer is slow to come
    assert tracker.due_beats()[0] == []
    tracker.beat_sent(beats[0], {"state": "running"})
    clock.advance(LEASE / 3 - 5.01)
    assert tracker.due_beats()[0] == []
    clock.advance(0.01)  # a third of a lease after the beat was taken, not after its answer came
    assert [beat.job.lease_id for beat in tracker.due_beats()[0]] == ["lease-1"]


def test_progress_goes_with_a_beat_no_sooner_than_the_first_and_then_at_most_every_progress_interval(clock):
    tracker = tracker_on(clock, progress_interval=1.0)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    job.ctx.progress(0.1, "x" * 5_000)
    assert tracker.due_beats()[0] == []  # before the first beat is due: it waits for it
    clock.advance(FIRST_BEAT_SECONDS)
    (beat,), _wait = tracker.due_beats()
    assert (beat.params["progress"], len(beat.params["message"])) == (0.1, 1_024)  # the message is clipped
    tracker.beat_sent(beat, {"state": "running"})
    job.ctx.progress(0.2)
    clock.advance(0.99)
    assert tracker.due_beats()[0] == []
    clock.advance(0.01)
    (beat,), _wait = tracker.due_beats()
    assert (beat.progress, beat.message) == (0.2, None)


# -- attempts by lease ----------------------------------------------------------------------------------

def test_two_attempts_of_one_job_are_kept_apart_by_their_leases(clock):
    """A retry due at once brings the job back while its first attempt's report is in flight: finishing the
    first attempt must not drop the second, which keeps its slot and its heartbeats."""
    tracker = tracker_on(clock)
    first = tracker.track(lease("job-1", "lease-1", attempt=1), nothing, "w-1")
    tracker.start(first)
    assert tracker.handler_returned(first) is None  # its fail is being reported
    second = tracker.track(lease("job-1", "lease-2", attempt=2), nothing, "w-1")
    tracker.start(second)
    assert (tracker.handling, tracker.reporting, len(tracker)) == (1, 1, 2)
    finished = tracker.finish(first, "queued", "RetryableError: try again now")
    assert (finished.job_id, finished.attempt, finished.outcome) == ("job-1", 1, "queued")
    assert tracker.jobs() == [second] and (tracker.handling, tracker.reporting) == (1, 0)
    clock.advance(FIRST_BEAT_SECONDS)
    assert due_lease_ids(tracker) == ["lease-2"]
    assert tracker.finish(first, "queued", None) is None  # an attempt finishes once


def test_a_finished_attempt_stays_counted_until_forgotten_when_the_worker_says_so(clock):
    tracker = tracker_on(clock, forget_done=False)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    tracker.handler_returned(job)
    tracker.finish(job, "succeeded", None)
    assert len(tracker) == 1 and job.phase == DONE and tracker.due_beats()[0] == []
    tracker.forget(job)
    assert len(tracker) == 0


# -- dropping an attempt ----------------------------------------------------------------------------------

def test_a_heartbeat_refused_as_stale_drops_the_attempt_and_tells_its_handler(clock):
    tracker = tracker_on(clock)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    clock.advance(FIRST_BEAT_SECONDS)
    (beat,), _wait = tracker.due_beats()
    tracker.beat_sent(beat, StaleLease("lease lease-1 is not the current lease"))
    assert job.lost and job.ctx.cancel_reason == LEASE_LOST and job.ctx.cancelled.is_set()
    clock.advance(LEASE)
    assert tracker.due_beats()[0] == []  # never heartbeated again
    assert tracker.handler_returned(job) == LOST  # nor reported
    assert len(tracker) == 0


def test_a_stale_heartbeat_while_the_outcome_is_reported_leaves_it_to_the_report(clock):
    tracker = tracker_on(clock)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    clock.advance(LEASE / 3)
    assert tracker.handler_returned(job) is None
    (beat,), _wait = tracker.due_beats()  # a report that waits keeps its lease
    tracker.beat_sent(beat, StaleLease("the ack got there first"))
    assert not job.lost and not job.ctx.cancelled.is_set() and job.phase == REPORTING


def test_a_failed_heartbeat_goes_again_within_a_second_and_keeps_its_progress(clock):
    tracker = tracker_on(clock)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    job.ctx.progress(0.5, "half")
    clock.advance(FIRST_BEAT_SECONDS)
    (beat,), _wait = tracker.due_beats()
    tracker.beat_sent(beat, OrchError("server unavailable"))
    assert not job.lost
    clock.advance(RETRY_BEAT_SECONDS - 0.01)
    assert tracker.due_beats()[0] == []
    clock.advance(0.01)
    (again,), _wait = tracker.due_beats()
    assert (again.progress, again.message) == (0.5, "half")


def test_a_cancel_request_reaches_the_handler_and_one_ignored_for_a_lease_stops_the_heartbeats(clock):
    tracker = tracker_on(clock)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    clock.advance(FIRST_BEAT_SECONDS)
    (beat,), _wait = tracker.due_beats()
    tracker.beat_sent(beat, {"state": "running", "cancel_requested": True})
    assert job.ctx.cancel_reason == CANCEL_REQUESTED
    clock.advance(LEASE / 3)
    assert due_lease_ids(tracker) == ["lease-1"]  # still heartbeated while the handler may be stopping
    clock.advance(LEASE - LEASE / 3 + 0.01)
    assert tracker.due_beats()[0] == []  # ignored for a lease period: let the lease lapse
    clock.advance(LEASE)
    assert tracker.due_beats()[0] == []


def test_a_job_given_back_while_it_waits_is_done_and_its_handler_never_starts(clock):
    tracker = tracker_on(clock)
    waiting = tracker.track(lease("job-1", "lease-1"), nothing, "w-1")
    running = tracker.track(lease("job-2", "lease-2"), nothing, "w-1")
    tracker.start(running)
    assert tracker.release(waiting) and tracker.release(running)
    assert not tracker.release(running)  # once
    assert waiting.ctx.cancel_reason == SHUTDOWN and not tracker.start(waiting)
    assert tracker.jobs() == [running] and tracker.handling == 1
    assert tracker.handler_returned(running) == RELEASED
    assert len(tracker) == 0


# -- what is reported (to a real ledger) ------------------------------------------------------------------

def claimed(ledger: Ledger, tracker: LeaseTracker, handler, *, job_type: str = "work", **spec) -> object:
    ops.enqueue_batch(ledger, [{"tenant": "acme", "project": "p", "type": job_type, "payload": {}, **spec}])
    (granted,) = ops.claim(ledger, worker_id="w-1", lease_seconds=LEASE, job_type=job_type)["leases"]
    job = tracker.track(granted, handler, "w-1")
    tracker.start(job)
    return job


def run_and_report(ledger: Ledger, tracker: LeaseTracker, job):
    outcome = tracker.run(job)
    assert tracker.handler_returned(job) is None
    return tracker.report(job, outcome, lambda name, params: dispatch.run(ledger, name, params))


def test_each_way_a_handler_ends_is_reported_with_its_state_and_error_text(ledger, clock):
    tracker = tracker_on(clock)

    def retry(ctx):
        raise RetryableError("feed is down", retry_after=120)

    def permanent(ctx):
        raise PermanentError("bad payload")

    def bug(ctx):
        return {}["missing"]

    def not_a_list(ctx):
        return "done"

    expected = {
        "retry": ("queued", "RetryableError: feed is down"),
        "permanent": ("failed", "PermanentError: bad payload"),
        "bug": ("queued", "KeyError: 'missing'"),
        "not-a-list": ("failed", "handler returned str; it must return a list of artifacts or None"),
        "ok": ("succeeded", None),
    }
    handlers = {"retry": retry, "permanent": permanent, "bug": bug, "not-a-list": not_a_list, "ok": nothing}
    for job_type, handler in handlers.items():
        job = claimed(ledger, tracker, handler, job_type=job_type)
        finished = run_and_report(ledger, tracker, job)
        assert (finished.outcome, finished.error) == expected[job_type], job_type
        shown = ops.show(ledger, job.job_id)
        assert shown["state"] == expected[job_type][0], job_type
        if expected[job_type][1] is not None:
            assert shown["last_error"] == expected[job_type][1], job_type
    assert len(tracker) == 0


def test_artifacts_the_ledger_refuses_fail_the_job_for_good(ledger, clock):
    tracker = tracker_on(clock)
    job = claimed(ledger, tracker, lambda ctx: [{"uri": "x", "digest": "md5:1"}], max_attempts=3)
    finished = run_and_report(ledger, tracker, job)
    assert finished.outcome == "failed"
    shown = ops.show(ledger, job.job_id)
    assert shown["state"] == "failed" and shown["last_error"].startswith("invalid artifacts: ")
    assert shown["attempts"] == 1


def test_a_handler_stopped_on_a_cancel_request_ends_its_job_canceled(ledger, clock):
    tracker = tracker_on(clock)

    def stops(ctx):
        ctx.check_cancelled()
        raise AssertionError("the cancel request did not reach the handler")

    job = claimed(ledger, tracker, stops)
    ops.cancel(ledger, job.job_id, reason="operator changed their mind")
    clock.advance(FIRST_BEAT_SECONDS)
    (beat,), _wait = tracker.due_beats()
    tracker.beat_sent(beat, dispatch.run(ledger, "jobs.heartbeat", beat.params))
    finished = run_and_report(ledger, tracker, job)
    assert finished.outcome == "canceled"
    shown = ops.show(ledger, job.job_id)
    assert shown["state"] == "canceled" and shown["last_error"] == CANCELED_MESSAGE


def test_a_handler_that_stops_by_itself_is_retried(ledger, clock):
    tracker = tracker_on(clock)

    def gives_up(ctx):
        raise JobCanceled("not today")

    finished = run_and_report(ledger, tracker, claimed(ledger, tracker, gives_up))
    assert (finished.outcome, finished.error) == ("queued", "not today")


def test_a_report_refused_as_stale_is_a_lost_attempt_and_commits_nothing(ledger, clock):
    tracker = tracker_on(clock)
    artifact = {"uri": "file:///tmp/x", "digest": "sha256:" + "0" * 64, "mime": "text/plain"}
    job = claimed(ledger, tracker, lambda ctx: [artifact])
    ops.release(ledger, job.job_id, job.lease_id)  # the lease is taken away behind the worker's back
    finished = run_and_report(ledger, tracker, job)
    assert finished.outcome == LOST and job.lost
    shown = ops.show(ledger, job.job_id)
    assert shown["state"] == "queued" and shown["artifacts"] in ([], None)


def test_a_report_the_transport_cannot_deliver_is_an_error_and_the_attempt_is_done(clock):
    tracker = tracker_on(clock)
    job = tracker.track(lease(), nothing, "w-1")
    tracker.start(job)
    tracker.handler_returned(job)

    def unreachable(name, params):
        raise OrchError("cannot reach http://127.0.0.1:1")

    finished = tracker.report(job, tracker.run(job), unreachable)
    assert (finished.outcome, finished.error) == (ERROR, "cannot reach http://127.0.0.1:1")
    assert len(tracker) == 0
