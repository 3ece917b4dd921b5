"""Child program: the ledger-owning process, writing as fast as it can until it is killed.

usage: python burst_writer.py LEDGER KEY_PREFIX SEED [CHECKPOINT_THRESHOLD]

Imports everything, prints "imported" and waits for a line on stdin (so the parent can start the next
child while it checks the previous crash); then opens the ledger, prints "ready", and loops: single
enqueues and small batches (1-5 jobs) with idempotency keys KEY_PREFIX-N over two tenants, and now and
then a claim + ack of a few jobs. After each enqueue call has returned (= committed) it prints one line
per job: "KEY TENANT JOB_ID". Nothing is printed before the call returns, so every printed line is an
acknowledged enqueue.

CHECKPOINT_THRESHOLD (e.g. "16KB") makes DuckDB checkpoint often, so kills also land mid-checkpoint.
"""

from __future__ import annotations

import random
import sys

from airgap_orch.ledger import Ledger
from airgap_orch.operations import jobs as ops

MAX_BATCH = 5
TENANTS = ("tenant-a", "tenant-b")


def main() -> None:
    path, prefix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    print("imported", flush=True)
    if not sys.stdin.readline():
        return
    ledger = Ledger.open(path, lock_timeout=30)
    if len(sys.argv) > 4:
        # Test-only tuning of the storage engine; the ledger exposes no setting for it.
        ledger._con.execute(f"SET checkpoint_threshold = '{sys.argv[4]}'")
    print("ready", flush=True)
    counter = 0
    for step in range(10**9):
        size = 1 if step % 2 == 0 else rng.randint(1, MAX_BATCH)
        specs = []
        for _ in range(size):
            counter += 1
            specs.append({"tenant": TENANTS[counter % 2], "project": "burst", "type": "crash-test",
                          "payload": {"n": counter, "pad": "x" * rng.randint(0, 200)},
                          "idempotency_key": f"{prefix}-{counter}"})
        if size == 1 and step % 4 == 0:
            job_ids = [ops.enqueue(ledger, specs[0])["job_id"]]
        else:
            job_ids = ops.enqueue_batch(ledger, specs)["job_ids"]
        sys.stdout.write("".join(f"{spec['idempotency_key']} {spec['tenant']} {job_id}\n"
                                 for spec, job_id in zip(specs, job_ids, strict=True)))
        sys.stdout.flush()
        if step % 5 == 4:
            for lease in ops.claim(ledger, worker_id="burst-worker", limit=3, lease_seconds=60)["leases"]:
                ops.ack(ledger, lease["job_id"], lease["lease_id"])


if __name__ == "__main__":
    main()
