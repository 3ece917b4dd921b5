"""A ledger with something in every exported table, for the bundle export tests (real operations, no mocks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from airgap_orch.bundle.tables import BY_NAME
from airgap_orch.bundle.tarfmt import open_member, read_index
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.operations import jobs as job_ops


def populate(path: Path, *, jobs_per_tenant: int = 5) -> dict[str, list[str]]:
    """Jobs of two tenants (queued, succeeded, with keys, a dependency), limits of every kind, a pause, a
    source, a backfill and the audit entries they leave. Returns the job ids per tenant."""
    ids: dict[str, list[str]] = {}
    with Ledger.open(path, lock_timeout=5) as ledger:
        for tenant in ("acme", "globex"):
            specs = [{"tenant": tenant, "project": "web", "type": "scan", "idempotency_key": f"{tenant}-{n}",
                      "payload": {"n": n}, "keys": [f"host:{tenant}.example"]} for n in range(jobs_per_tenant)]
            ids[tenant] = job_ops.enqueue_batch(ledger, specs)["job_ids"]
            child = job_ops.enqueue(ledger, {"tenant": tenant, "project": "web", "type": "report",
                                             "depends_on": [ids[tenant][0]]})
            ids[tenant].append(child["job_id"])
        leases = job_ops.claim(ledger, worker_id="w1", limit=3, job_type="scan")["leases"]
        for lease in leases:
            job_ops.ack(ledger, lease["job_id"], lease["lease_id"])
        run = dispatch.run
        run(ledger, "quotas.set", {"tenant": "acme", "max_active": 5, "reason": "fixture"})
        run(ledger, "quotas.set", {"tenant": "globex", "max_active": 7, "reason": "fixture"})
        run(ledger, "ratelimits.set", {"tenant": "acme", "type": "scan", "rate": 5, "burst": 2, "reason": "fixture"})
        run(ledger, "ratelimits.set", {"key": "host:nvd.example", "rate": 1, "burst": 1, "reason": "fixture"})
        run(ledger, "concurrency.set", {"key": "tenant:globex", "max": 3, "reason": "fixture"})
        run(ledger, "concurrency.set", {"key": "type:scan", "max": 9, "reason": "fixture"})
        run(ledger, "breakers.set", {"key": "host:nvd.example", "failures": 3, "cooldown": 60, "reason": "fixture"})
        run(ledger, "queues.pause", {"queue": "slow", "reason": "fixture"})
        run(ledger, "sources.add", {"tenant": "acme", "name": "nvd", "type": "advisory.feed", "reason": "fixture"})
        run(ledger, "backfills.create", {"tenant": "globex", "project": "web", "type": "replay", "from": "2030-01-01",
                                         "to": "2030-01-01T03:00:00", "step": "1h", "payload": {},
                                         "reason": "fixture", "ticket": "T-1"})
    return ids


def copy_ledger(source: Path, target: Path) -> None:
    """A byte copy of a closed ledger (and its WAL, if any)."""
    shutil.copyfile(source, target)
    wal = source.with_name(source.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, target.with_name(target.name + ".wal"))


def read_table(bundle: Path, table: str) -> pa.Table:
    """A table member of a bundle file, read back with pyarrow (the test reads what it checks)."""
    with bundle.open("rb") as source:
        member = read_index(source).member(BY_NAME[table].path)
        return pq.read_table(open_member(source, member))


def tampered_copy(bundle: Path, out: Path, member: str = "data/jobs.parquet") -> Path:
    """`bundle` with one bit flipped in the middle of `member`'s data, written to `out`: still signed, its members'
    hashes no longer match (an import refuses it with merkle:hash-mismatch)."""
    with bundle.open("rb") as file:
        found = read_index(file).member(member)
    data = bytearray(bundle.read_bytes())
    data[found.data_offset + found.size // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out
