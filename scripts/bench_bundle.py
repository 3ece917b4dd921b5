"""Measure writing and verifying a bundle: size, time, and peak memory of verification; and the pieces of the
import benchmark (scripts/bench.py, section bundle_export) that run outside the benchmark's own process.

    python scripts/bench_bundle.py [--mb 100] [--members 200] [--tables]
    python scripts/bench_bundle.py --import BUNDLE ROOT SITE [--memory-limit 256MB] [--profile-out FILE]

Makes MEMBERS Parquet members of incompressible rows adding up to about MB megabytes, writes the bundle to a
temporary file, then verifies it from the file in a fresh subprocess (so its peak RSS is its own), with the
Parquet footer and page-header checks when --tables is given.

For bench.py (a ledger of N jobs exported, then imported):
- run_import_child(): `bundle import` (operations.bundle_import.import_bundle: private copy, verification, plan,
  the one write transaction) of BUNDLE into a fresh ledger, in a child process that does nothing else, so its
  peak RSS is the import's own. The child reports the seconds of the call, its RSS at start and its peak.
- raw_load(): the raw pipeline's load of the same data: `INSERT INTO t SELECT * FROM read_parquet(f)` for every
  Parquet file the raw export wrote, into a fresh DuckDB file, in one transaction.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import resource
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


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return -1


def _high_water_kib() -> int:
    """This process's peak RSS (VmHWM: per address space, so unlike ru_maxrss not inherited across exec)."""
    return _status_kib("VmHWM")


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _import_child(ledger: str, bundle: str, root: str, site: str, profile_out: str | None,
                  memory_limit: str | None) -> None:
    """The child of run_import_child: open a fresh ledger, import the bundle, report (one JSON line)."""
    from airgap_orch.ledger import Ledger
    from airgap_orch.operations import bundle_import

    rss_start = _status_kib("VmRSS")  # after the imports every CLI process makes, before the ledger opens
    max_start = _max_rss_kib()
    profiler = cProfile.Profile() if profile_out else None
    with Ledger.open(Path(ledger), create=True, site_id=site, lock_timeout=5) as opened:
        if memory_limit:  # an experiment: DuckDB's buffer limit (default 80% of RAM) on this connection
            opened._con.execute(f"SET memory_limit = '{memory_limit}'")
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        result = bundle_import.import_bundle(opened, Path(bundle), trust_root=Path(root).read_bytes(), actor="bench")
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_out)
        jobs = opened._con.execute("SELECT count(*) FROM mirror_jobs").fetchone()[0]
    print(json.dumps({"import_seconds": elapsed, "imported": result["imported"], "mirror_jobs": jobs,
                      "rss_start_kib": rss_start, "max_rss_start_kib": max_start, "max_rss_kib": _max_rss_kib(),
                      "hwm_kib": _status_kib("VmHWM")}))


def run_import_child(ledger: Path, bundle: Path, root: Path, site: str, profile_out: Path | None = None,
                     memory_limit: str | None = None) -> dict[str, float]:
    """Import `bundle` into a fresh ledger at `ledger` (site `site`, pinning `root`) in a child process; returns
    import_seconds and peak_rss_mb: the child's ru_maxrss minus its RSS at start. The child is started by a
    shell that stays its parent: ru_maxrss carries over an exec (Linux keeps the high-water mark of the memory
    it replaces), so a child exec'd straight from a large benchmark process could report that process's RSS."""
    command = [sys.executable, __file__, "--import-child", str(ledger), str(bundle), str(root), site]
    if profile_out is not None:
        command += ["--profile-out", str(profile_out)]
    if memory_limit is not None:
        command += ["--memory-limit", memory_limit]
    done = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the import child failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if not report["imported"]:
        raise RuntimeError(f"the import child imported nothing: {report}")
    inherited = report["max_rss_start_kib"] > report["rss_start_kib"] * 2 + 65536
    return {"import_seconds": report["import_seconds"], "mirror_jobs": report["mirror_jobs"],
            "peak_rss_mb": (report["max_rss_kib"] - report["rss_start_kib"]) / 1024,
            "hwm_rss_mb": (report["hwm_kib"] - report["rss_start_kib"]) / 1024,
            "rss_start_mb": report["rss_start_kib"] / 1024, "inherited_max_rss": inherited}


def raw_load(folder: Path, database: Path) -> int:
    """INSERT ... FROM read_parquet of every Parquet file in `folder` into a fresh DuckDB file, one transaction
    (each table created empty with the file's schema first); returns the rows loaded."""
    import duckdb

    con = duckdb.connect(str(database), config={"threads": 2})
    try:
        rows = 0
        con.execute("BEGIN")
        for file in sorted(folder.glob("*.parquet")):
            name = '"' + file.stem.replace('"', '""') + '"'
            source = "read_parquet('" + str(file).replace("'", "''") + "')"
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {source} LIMIT 0")
            rows += con.execute(f"INSERT INTO {name} SELECT * FROM {source}").fetchone()[0]
        con.execute("COMMIT")
    finally:
        con.close()
    return rows


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
    parser.add_argument("--import-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--import", dest="import_", nargs=3, metavar=("BUNDLE", "ROOT", "SITE"),
                        help="import BUNDLE (pinning ROOT) into a fresh ledger of site SITE in a child process; "
                             "print its time and peak RSS")
    parser.add_argument("--profile-out", help="with --import: write the child's cProfile stats here")
    parser.add_argument("--memory-limit", help="with --import: SET memory_limit on the child's ledger connection")
    args = parser.parse_args()
    if args.import_child:
        _import_child(*args.import_child, profile_out=args.profile_out, memory_limit=args.memory_limit)
        return
    if args.import_:
        bundle, root, site = args.import_
        with tempfile.TemporaryDirectory(dir=Path(bundle).resolve().parent) as directory:
            print(json.dumps(run_import_child(Path(directory, "import.duckdb"), Path(bundle), Path(root), site,
                                              Path(args.profile_out) if args.profile_out else None,
                                              args.memory_limit), indent=1))
        return
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
