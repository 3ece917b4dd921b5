"""The bundle path beside the one writer: a thread that runs the operations whose body is a bundle (api.Route with
`upload=True`: `bundle plan`, `bundle import`) or whose answer is one (`download=True`: `bundle export`) on the
server's ledger.

Copying, verifying and planning a bundle can take minutes for a large ledger; none of it writes, so none of it runs on
the writer thread, where it would hold up every claim and ack. What an import writes, it writes in one transaction at
its end (Ledger.transaction), which takes the ledger's write lock as each of the writer's transactions does: it
commits between two of the writer's group commits, the only time workers wait for it. Bundles run one at a time, so
two imports never race for one source site's floor.

An export reads its tables in one snapshot (Ledger.snapshot) and writes the bundle to a private temporary folder
beside the ledger (mode 0700), which the door streams back and then removes (`discard`). What it writes to the ledger
(a hand-off, before the file; the export record, after) it writes in transactions of its own, as an import does.
It signs with the keys `serve` was given (--bundle-key, --timestamp-key: online keys, as TUF's timestamp role's are),
never with a request's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import api
from ..errors import PolicyRefused
from ..ledger import Ledger
from . import dispatch
from .writer import Answer, dumps


class LedgerUploads:
    """One thread over one open ledger; `stop()` before the ledger is closed."""

    def __init__(self, ledger: Ledger, *, signing_keys: Sequence[Any] = (), timestamp_keys: Sequence[Any] = ()):
        self.ledger = ledger
        self._keys = {"signing_keys": tuple(signing_keys), "timestamp_keys": tuple(timestamp_keys)}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-bundles")
        self._accepting = threading.Lock()
        self._stopped = False

    def submit(self, name: str, params: dict[str, Any], caller: dispatch.Caller, upload: Path) -> Answer:
        """Run upload operation `name` with `upload` (a temporary file the caller hands over: removed once the
        operation has ended, or when it never starts) as its `bundle` param."""
        route = api.BY_NAME.get(name)
        if route is None or not route.upload:
            _remove(upload)
            raise ValueError(f"{name} takes no bundle upload")
        return self._submit(name, {**params, "bundle": str(upload)}, caller, lambda: _remove(upload), encode=True)

    def export(self, name: str, params: dict[str, Any], caller: dispatch.Caller) -> tuple[Answer, Path]:
        """Run download operation `name` (api.Route.download: `bundles.export`) with the keys this server holds; its
        bundle is written into the new private folder returned, which the caller streams from and then removes
        (`discard`), also when the operation fails or never starts. Refused (PolicyRefused, exit 5) at once when the
        server holds no bundle keys, unless the export only writes again a bundle already written (--reissue)."""
        route = api.BY_NAME.get(name)
        if route is None or not route.download:
            raise ValueError(f"{name} answers no bundle")
        if not self._keys["signing_keys"] and params.get("reissue") is None:
            raise PolicyRefused("this server holds no bundle signing keys: start `serve` with --bundle-key KEY "
                                "--timestamp-key KEY, or stop the server and export with --key and --timestamp-key")
        ledger_path = Path(self.ledger.path)
        folder = Path(tempfile.mkdtemp(dir=ledger_path.parent, prefix=f".{ledger_path.name}.export-"))
        try:
            answer = self._submit(name, {**params, **self._keys, "server_keys": True,
                                         "out": str(folder / "export.bundle")}, caller, lambda: None, encode=False)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return answer, folder

    @staticmethod
    def discard(answer: Answer, folder: Path) -> None:
        """Remove an export's temporary folder and the bundle in it, once its operation has ended (at once if it
        has; else when it does: a caller that gave up never pulls the folder from under a running export)."""
        answer.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))

    def _submit(self, name: str, params: dict[str, Any], caller: dispatch.Caller, cleanup: Callable[[], Any], *,
                encode: bool) -> Answer:
        answer = Answer()

        def run() -> None:
            try:
                if not answer.set_running_or_notify_cancel():
                    return  # the caller gave up before it started
                try:
                    result = dispatch.run(self.ledger, name, params, caller, text_checked=True)
                    if encode:
                        answer.text = dumps(result)
                except BaseException as error:
                    answer.set_exception(error)
                else:
                    answer.set_result(result)
            finally:
                cleanup()

        with self._accepting:
            if self._stopped:
                cleanup()
                raise RuntimeError(f"the bundle thread has stopped; {name} was not run")
            self._pool.submit(run)
        return answer

    def stop(self) -> None:
        """Refuse new bundles and wait for the one running."""
        with self._accepting:
            self._stopped = True
        self._pool.shutdown(wait=True)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
