"""Child program: open a ledger, enqueue jobs one transaction each, then wait to be killed.

usage: python crash_writer.py LEDGER COUNT KEY_PREFIX

Opens the ledger (timing the open), enqueues COUNT jobs one by one (idempotency keys KEY_PREFIX-N), then prints
one line `wrote COUNT open_seconds=S wal_at_open=B wal_after_open=A` (B, A: the WAL's size in bytes just before
and just after the open, -1 when absent) and sleeps until it is killed. Every enqueue has committed when the
line is printed; the ledger's checkpoint threshold is far above what it writes, so a SIGKILL leaves the WAL.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from airgap_orch.ledger import Ledger
from airgap_orch.ledger.store import wal_path
from airgap_orch.operations import jobs as ops


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def main() -> None:
    path, count, prefix = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    wal = wal_path(path.resolve())  # where DuckDB keeps it, also when LEDGER is a symlink
    wal_at_open = _size(wal)
    started = time.perf_counter()
    ledger = Ledger.open(path, lock_timeout=30)
    open_seconds = time.perf_counter() - started
    wal_after_open = _size(wal)
    for n in range(count):
        ops.enqueue(ledger, {"tenant": "acme", "project": "crash", "type": "crash-test", "payload": {"n": n},
                             "idempotency_key": f"{prefix}-{n}"})
    print(f"wrote {count} open_seconds={open_seconds:.4f} wal_at_open={wal_at_open} "
          f"wal_after_open={wal_after_open}", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
