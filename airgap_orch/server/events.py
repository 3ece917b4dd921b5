"""The event hub behind GET /events: a bounded ring of recent history entries, fed after each commit.

The writer only appends to the ring and pokes the event loop; each SSE client reads at its own pace, so a
slow consumer never blocks the writer. A client that falls more than RING_SIZE events behind (or resumes
from an older Last-Event-ID) is told so with an `event: gap` message and can re-read the ledger's
history with GET /v1/ledger/events.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterable
from typing import Any

from ..orchestrator import events, history

RING_SIZE = 10_000


class EventHub:
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = RING_SIZE):
        self._loop = loop
        self._ring: collections.deque[tuple[int, str, str, str]] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self._changed = asyncio.Event()
        self.counts: collections.Counter[str] = collections.Counter()  # event_type -> committed entries

    # called in the writer thread after each commit
    def publish(self, appended: Iterable[tuple[int, str, str, str]]) -> None:
        appended = list(appended)
        with self._lock:
            self._ring.extend(appended)
        self._loop.call_soon_threadsafe(self._changed.set)

    def since(self, last_seq: int) -> tuple[bool, list[tuple[int, str, str, str]]]:
        """(gap, entries after last_seq still in the ring)."""
        with self._lock:
            if not self._ring:
                return False, []
            oldest = self._ring[0][0]
            gap = last_seq + 1 < oldest and last_seq >= 0
            return gap, [item for item in self._ring if item[0] > last_seq]

    def newest_seq(self) -> int:
        with self._lock:
            return self._ring[-1][0] if self._ring else 0

    async def wait(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


def envelope(item: tuple[int, str, str, str]) -> dict[str, Any]:
    seq, _job_id, text, entry_hash = item
    return events.envelope(history.parse(seq, text, entry_hash))


def matches(envelope_: dict[str, Any], *, tenants: frozenset[str] | None, tenant: str | None, job_type: str | None,
            correlation_id: str | None) -> bool:
    if tenants is not None and envelope_["tenantId"] not in tenants:
        return False
    if tenant is not None and envelope_["tenantId"] != tenant:
        return False
    if job_type is not None and envelope_["job"]["type"] != job_type:
        return False
    return correlation_id is None or envelope_["correlationId"] == correlation_id


class LogHub:
    """Wakes the followers of job logs (GET /v1/jobs/{id}/logs?follow=1) when their job changes: it stored log lines
    (Ledger.log_listeners) or a history entry (Ledger.commit_listeners: a state change, such as its end).

    The writer's thread only looks the committed job ids up in the set of followed jobs (nothing more when nobody
    follows) and pokes the event loop; each follower then reads its job's new lines from a snapshot itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._waiters: dict[str, set[asyncio.Event]] = {}  # job id -> its followers (touched on the loop only)
        self._followed: frozenset[str] = frozenset()  # the keys of _waiters, read by the writer's thread

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set whenever the job changes from now on (clear it before each read); unwatch it when done."""
        waiter = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(waiter)
        self._followed = frozenset(self._waiters)
        return waiter

    def unwatch(self, job_id: str, waiter: asyncio.Event) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[job_id]
        self._followed = frozenset(self._waiters)

    # called in the writer's thread after each commit
    def logs_stored(self, logged: dict[str, int]) -> None:
        self._changed(logged)

    def history_appended(self, appended: Iterable[tuple[int, str, str, str]]) -> None:
        self._changed(item[1] for item in appended)

    def _changed(self, job_ids: Iterable[str]) -> None:
        followed = self._followed
        if not followed:
            return
        touched = [job_id for job_id in job_ids if job_id in followed]
        if touched:
            self._loop.call_soon_threadsafe(self._wake, touched)

    def _wake(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for waiter in self._waiters.get(job_id, ()):
                waiter.set()
