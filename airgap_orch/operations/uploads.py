"""The bundle path beside the one writer: a thread that runs the operations whose body is a bundle (api.Route with
`upload=True`: `bundle plan`, `bundle import`) on the server's ledger.

Copying, verifying and planning a bundle can take minutes for a large ledger; none of it writes, so none of it runs on
the writer thread, where it would hold up every claim and ack. What an import writes, it writes in one transaction at
its end (Ledger.transaction), which takes the ledger's write lock as each of the writer's transactions does: it
commits between two of the writer's group commits, the only time workers wait for it. Bundles run one at a time, so
two imports never race for one source site's floor.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import api
from ..ledger import Ledger
from . import dispatch
from .writer import Answer, dumps


class LedgerUploads:
    """One thread over one open ledger; `stop()` before the ledger is closed."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-bundles")
        self._accepting = threading.Lock()
        self._stopped = False

    def submit(self, name: str, params: dict[str, Any], caller: dispatch.Caller, upload: Path) -> Answer:
        """Run upload operation `name` with `upload` (a temporary file the caller hands over: removed once the
        operation has ended, or when it never starts) as its `bundle` param."""
        route = api.BY_NAME.get(name)
        if route is None or not route.upload:
            with contextlib.suppress(OSError):
                os.unlink(upload)
            raise ValueError(f"{name} takes no bundle upload")
        answer = Answer()

        def run() -> None:
            try:
                if not answer.set_running_or_notify_cancel():
                    return  # the caller gave up before it started
                try:
                    result = dispatch.run(self.ledger, name, {**params, "bundle": str(upload)}, caller,
                                          text_checked=True)
                    answer.text = dumps(result)
                except BaseException as error:
                    answer.set_exception(error)
                else:
                    answer.set_result(result)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(upload)

        with self._accepting:
            if self._stopped:
                with contextlib.suppress(OSError):
                    os.unlink(upload)
                raise RuntimeError(f"the bundle thread has stopped; {name} was not run")
            self._pool.submit(run)
        return answer

    def stop(self) -> None:
        """Refuse new bundles and wait for the one running."""
        with self._accepting:
            self._stopped = True
        self._pool.shutdown(wait=True)
