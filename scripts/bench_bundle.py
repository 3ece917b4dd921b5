"""Measure writing and verifying a bundle: size, time, and peak memory of verification.

    python scripts/bench_bundle.py [--mb 100] [--members 200] [--tables]

Makes MEMBERS Parquet members of incompressible rows adding up to about MB megabytes, writes the bundle to a
temporary file, then verifies it from the file in a fresh subprocess (so its peak RSS is its own), with the
Parquet footer and page-header checks when --tables is given.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap_orch.bundle import trust
from airgap_orch.bundle.keys import KeyRole
from airgap_orch.bundle.manifest import PARQUET_MEDIA_TYPE, BundleHeader
from airgap_orch.bundle.writer import DataMember, write_bundle

CREATED = datetime(2030, 1, 1, 12, 0, 0)
SCHEMA = pa.schema([("job_id", pa.string()), ("payload", pa.binary()), ("attempt", pa.int64())])


def _high_water_kib() -> int:
    """This process's peak RSS (VmHWM: per address space, so unlike ru_maxrss not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def _verify_child(bundle: str, root: str, tables: bool) -> None:
    from airgap_orch.bundle.verify import verify_bundle

    before = _high_water_kib()
    started = time.perf_counter()
    with open(bundle, "rb") as source:
        verified = verify_bundle(source, pinned_root=Path(root).read_bytes(), target_site="site-b",
                                 now=CREATED + timedelta(hours=1), table_schemas={"jobs": SCHEMA} if tables else None)
    elapsed = time.perf_counter() - started
    after = _high_water_kib()
    print(json.dumps({"verify_seconds": round(elapsed, 3), "rss_peak_before_kib": before, "rss_peak_after_kib": after,
                      "members": len(verified.members), "checks": [c.name for c in verified.checks]}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--tables", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _verify_child(args.child[0], args.child[1], args.child[2] == "1")
        return
    keys = {name: Ed25519PrivateKey.generate() for name in ("r1", "ts", "a1", "b1")}

    def role(name: str) -> KeyRole:
        return KeyRole.of([keys[name].public_key()], 1)

    root = trust.build_root(root=role("r1"), targets=role("r1"), timestamp=role("ts"), snapshot=role("ts"),
                            sites={"site-a": role("a1"), "site-b": role("b1")}, expires=CREATED + timedelta(days=90))
    root = trust.sign_root(root, keys["r1"])
    per_member = args.mb * 1024 * 1024 // args.members
    rows = max(1, per_member // 1100)
    members = []
    started = time.perf_counter()
    for index in range(args.members):
        table = pa.table({"job_id": [f"job-{index}-{i}" for i in range(rows)],
                          "payload": [os.urandom(1024) for _ in range(rows)],
                          "attempt": pa.array(range(rows), pa.int64())}, schema=SCHEMA)
        out = io.BytesIO()
        pq.write_table(table, out, compression="zstd", row_group_size=50_000)
        members.append(DataMember(f"data/jobs-{index:05d}.parquet", PARQUET_MEDIA_TYPE, out.getvalue(), table="jobs"))
    made = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        bundle_path, root_path = Path(directory, "b.bundle"), Path(directory, "root.json")
        root_path.write_bytes(root)
        started = time.perf_counter()
        with bundle_path.open("wb") as out:
            header = BundleHeader("full", "site-a", "site-b", 1, None, CREATED, "bench")
            write_bundle(out, header, members, roots=[root], signing_keys=[keys["a1"]], timestamp_keys=[keys["ts"]])
        written = time.perf_counter() - started
        del members
        child = subprocess.run([sys.executable, __file__, "--child", str(bundle_path), str(root_path),
                                "1" if args.tables else "0"], capture_output=True, text=True, check=True)
        result = json.loads(child.stdout)
        result.update(bundle_bytes=bundle_path.stat().st_size, tables_seconds=round(made, 3),
                      write_seconds=round(written, 3))
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
