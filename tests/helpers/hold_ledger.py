"""Child program: open a ledger read-write (taking its one-writer lock), hold it, then close it.

usage: python hold_ledger.py LEDGER HOLD_SECONDS

Prints "held PID" once the ledger is open, holds it until HOLD_SECONDS pass or stdin gets a line
(or closes), then closes the ledger, prints "released AT" (AT: the ledger clock's ISO time just before
closing, so the parent can order later writes after it) and exits 0.
"""

from __future__ import annotations

import os
import select
import sys

from airgap_orch import clock
from airgap_orch.ledger import Ledger


def main() -> None:
    path, hold_seconds = sys.argv[1], float(sys.argv[2])
    ledger = Ledger.open(path, lock_timeout=30)
    print(f"held {os.getpid()}", flush=True)
    select.select([sys.stdin], [], [], hold_seconds)
    released_at = clock.iso(clock.now())
    ledger.close()
    print(f"released {released_at}", flush=True)


if __name__ == "__main__":
    main()
