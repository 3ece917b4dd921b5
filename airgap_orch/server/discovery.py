"""The discovery file beside the ledger: tells other processes that a server owns it, and where.

`<ledger>.server.json` = {"pid", "url", "started_at", "ledger"}; written when the server is listening,
removed on clean exit. A file whose pid is no longer alive is stale and ignored. It sits beside the ledger file
itself (symlinks resolved), so every name for the same ledger finds the same server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import clock


def path_for(ledger_path: Path) -> Path:
    ledger_file = Path(ledger_path).resolve()
    return ledger_file.with_name(ledger_file.name + ".server.json")


def write(ledger_path: Path, url: str) -> Path:
    target = path_for(ledger_path)
    temporary = target.with_name(target.name + f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "url": url, "started_at": clock.iso(clock.now()),
                                     "ledger": str(ledger_path.resolve())}))
    os.replace(temporary, target)
    return target


def remove(ledger_path: Path) -> None:
    target = path_for(ledger_path)
    try:
        if json.loads(target.read_text()).get("pid") == os.getpid():
            target.unlink()
    except (OSError, ValueError):
        pass


def live_server(ledger_path: Path) -> dict[str, Any] | None:
    """The discovery record if a live process wrote it, else None."""
    try:
        record = json.loads(path_for(ledger_path).read_text())
        pid = int(record["pid"])
        url = str(record["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    return {"pid": pid, "url": url, "started_at": record.get("started_at"), "ledger": record.get("ledger")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
