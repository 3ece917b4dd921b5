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
