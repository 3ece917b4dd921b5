"""The one transition table. Every state change anywhere goes through `next_state()`.

| from              | event          | to           | when                                            |
|-------------------|----------------|--------------|-------------------------------------------------|
| (new)             | create         | queued       | enqueue, replay                                 |
| (new)             | create_waiting | waiting      | enqueue with parents that have not all succeeded|
| waiting           | unblock        | queued       | the last parent succeeded                       |
| queued            | throttle       | (unchanged)  | ready, but a limit holds it back (flow.py)      |
| queued            | claim          | leased       | a worker takes the job under a new lease        |
| leased            | start          | running      | first heartbeat                                 |
| leased, running   | ack            | succeeded    | the current lease completes the job             |
| leased, running   | retry          | queued       | fail / lease expiry / timeout, attempts left    |
| leased, running   | fail           | failed       | fail --no-retry                                 |
| leased, running   | exhaust        | dead_letter  | fail or lease expiry with no attempts left      |
| leased, running   | time_out       | timed_out    | timeout exceeded on the last attempt            |
| leased, running   | request_cancel | (unchanged)  | cancel_requested set; seen on next heartbeat    |
| waiting, queued, leased, running | cancel | canceled | canceled by an operator or a failed parent,  |
|                   |                |              | or a requested cancel met the lease's end (ack, |
|                   |                |              | fail, release or lease expiry)                  |
| leased, running   | release        | queued       | graceful worker shutdown; attempt not consumed  |
|                   |                |              | (cancel requested: `cancel` instead, canceled)  |
| dead_letter, failed, timed_out | replay | (unchanged) | a new queued job is created with replay_of  |
| queued (attempts 0) | hand_off     | handed_off   | `bundle export --handoff`: the job moves to the |
|                   |                |              | target site; never claimed here again           |
| (new)             | receive        | queued       | `bundle import` of a hand-off: the job, handed  |
|                   |                |              | over by its source site, is local here          |
"""

from __future__ import annotations

from ..errors import IllegalTransition

WAITING, QUEUED, LEASED, RUNNING = "waiting", "queued", "leased", "running"
SUCCEEDED, FAILED, DEAD_LETTER, TIMED_OUT, CANCELED, HANDED_OFF = (
    "succeeded", "failed", "dead_letter", "timed_out", "canceled", "handed_off"
)
ACTIVE_STATES = (WAITING, QUEUED, LEASED, RUNNING)
HELD_STATES = (LEASED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, DEAD_LETTER, TIMED_OUT, CANCELED, HANDED_OFF)
REPLAYABLE_STATES = (DEAD_LETTER, FAILED, TIMED_OUT)
ALL_STATES = ACTIVE_STATES + FINAL_STATES
_SAME = None  # marker: the event leaves the state unchanged

TRANSITIONS: dict[str, dict[str | None, str | None]] = {
    "create": {None: QUEUED},
    "create_waiting": {None: WAITING},
    "unblock": {WAITING: QUEUED},
    "throttle": {QUEUED: _SAME},
    "claim": {QUEUED: LEASED},
    "start": {LEASED: RUNNING},
    "ack": {LEASED: SUCCEEDED, RUNNING: SUCCEEDED},
    "retry": {LEASED: QUEUED, RUNNING: QUEUED},
    "fail": {LEASED: FAILED, RUNNING: FAILED},
    "exhaust": {LEASED: DEAD_LETTER, RUNNING: DEAD_LETTER},
    "time_out": {LEASED: TIMED_OUT, RUNNING: TIMED_OUT},
    "request_cancel": {LEASED: _SAME, RUNNING: _SAME},
    "cancel": {WAITING: CANCELED, QUEUED: CANCELED, LEASED: CANCELED, RUNNING: CANCELED},
    "release": {LEASED: QUEUED, RUNNING: QUEUED},
    "replay": {DEAD_LETTER: _SAME, FAILED: _SAME, TIMED_OUT: _SAME},
    "hand_off": {QUEUED: HANDED_OFF},
    "receive": {None: QUEUED},
}

# History/event type recorded for each transition event.
EVENT_TYPES: dict[str, str] = {
    "create": "job.created",
    "create_waiting": "job.created",
    "unblock": "job.ready",
    "throttle": "job.throttled",
    "claim": "job.leased",
    "start": "job.started",
    "ack": "job.succeeded",
    "retry": "job.retry_scheduled",
    "fail": "job.failed",
    "exhaust": "job.dead_lettered",
    "time_out": "job.timed_out",
    "request_cancel": "job.cancel_requested",
    "cancel": "job.canceled",
    "release": "job.released",
    "replay": "job.replayed",
    "hand_off": "job.handed_off",
    "receive": "job.received",
}


def next_state(state: str | None, event: str) -> str:
    """The state after `event` in `state`, or IllegalTransition."""
    edges = TRANSITIONS[event]
    if state not in edges:
        verb = "cancel" if event == "request_cancel" else event.replace("_", " ")
        allowed = sources("cancel" if event == "request_cancel" else event)
        if not allowed:  # create: a job that exists already
            raise IllegalTransition(f"cannot {verb} a job that is {state}")
        listed = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise IllegalTransition(f"cannot {verb} a job that is {state}; {verb} applies only to jobs that are "
                                f"{listed}")
    target = edges[state]
    return state if target is _SAME else target  # type: ignore[return-value]


def sources(event: str) -> list[str]:
    """States from which `event` is legal (for SQL filters that must agree with the table)."""
    return [state for state in TRANSITIONS[event] if state is not None]
