"""The read path beside the one writer: a few threads that run the operations that change nothing (api.Route with
`mutating=False`: listings, shows, `ledger verify`, ...).

Each read takes snapshots (Ledger.snapshot: a read-only transaction on a read connection of its own), one per page
of a listing or chunk of a chain, so a read never waits for the writer's claims and acks, nor they for it, and no
read transaction stays open long enough to hold back DuckDB's checkpoints. The answer is encoded to JSON here too,
in the reader's thread: a page of large payloads is not encoded on the server's event loop.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import api
from ..ledger import Ledger
from . import dispatch
from .writer import Answer, dumps

# Reads that run at once; more wait for one of these (never for the writer). Two: the machine this is sized for has
# two cores, which the writer and the event loop need too.
READER_THREADS = 2
# Reads are background work next to claims and acks: on a busy machine the OS gives the writer and the event loop the
# CPU first (Linux: a thread's own nice value). On the 2-core reference machine, claims beside a reader paging
# through a 1M-job ledger went from a median of 36-53 ms to 18-28 ms (in-process, load ~6; BENCHMARKS.md 2026-12-06).
READER_NICENESS = 10


def _background() -> None:
    """Run this reader thread at a lower CPU priority than the writer (Linux sets the priority of a thread by its id;
    elsewhere that id could name another process, so the threads keep the process's priority)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + READER_NICENESS)


class LedgerReaders:
    """A pool of reader threads over one open ledger; `stop()` before the ledger is closed."""

    def __init__(self, ledger: Ledger, threads: int = READER_THREADS):
        self.ledger = ledger
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ledger-reader",
                                        initializer=_background)
        self._accepting = threading.Lock()
        self._stopped = False

    def submit(self, name: str, params: dict[str, Any], caller: dispatch.Caller) -> Answer:
        """Run read-only operation `name` on a reader thread; the Answer's `text` is its JSON."""
        route = api.BY_NAME.get(name)
        if route is None or route.mutating:
            raise ValueError(f"{name} is not a read-only operation; the writer runs it")
        answer = Answer()

        def run() -> None:
            if not answer.set_running_or_notify_cancel():
                return  # the caller gave up before it started
            try:
                result = dispatch.run(self.ledger, name, params, caller, text_checked=True)
                answer.text = dumps(result)
            except BaseException as error:
                answer.set_exception(error)
            else:
                answer.set_result(result)

        with self._accepting:
            if self._stopped:
                raise RuntimeError(f"the ledger readers have stopped; {name} was not run")
            self._pool.submit(run)
        return answer

    def run(self, work: Callable[[], Any]) -> Future:
        """Run `work` (a read of its own snapshots, not an operation: GET /metrics) on a reader thread."""
        with self._accepting:
            if self._stopped:
                raise RuntimeError("the ledger readers have stopped; the read was not run")
            return self._pool.submit(work)

    def call(self, name: str, params: dict[str, Any], caller: dispatch.Caller | None = None) -> Any:
        """Blocking form of submit (for threads that are not the event loop)."""
        return self.submit(name, params, caller or dispatch.Caller()).result()

    def stop(self) -> None:
        """Refuse new reads, end the queued and running ones at their next snapshot (Ledger.stop_snapshots: each
        answers LedgerBusy), and wait for the threads."""
        with self._accepting:
            self._stopped = True
        self.ledger.stop_snapshots()
        self._pool.shutdown(wait=True)
