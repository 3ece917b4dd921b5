#!/usr/bin/env python3
"""airgap-orch benchmark: in-process, against real DuckDB ledger files in a temporary directory.

    python scripts/bench.py                  # full run, readable table with targets
    python scripts/bench.py --json           # one JSON object (see RESULT KEYS below)
    python scripts/bench.py --quick          # short run: smaller N, 200k instead of 1M ledger
    python scripts/bench.py --runs 5         # repeat each measurement 5 times, report medians
    python scripts/bench.py --sections claim_ack_batch100,peer_huey
    python scripts/bench.py --profile claim_ack_batch100   # where the time goes, per batch

Sections live in SECTIONS (name -> function); a later issue adds a benchmark by writing one function
that returns {metric: [one sample per run]} and registering it with @section. Every measured block runs
inside `bench.timed()`, so --profile measures exactly what the figures measure and nothing of the setup.

What is measured (issue 2, "Performance"):
- bulk enqueue: operations.jobs.enqueue_batch (schema validation + one transaction) in batches of 10k
  small job specs, each with an idempotency key (and once without keys).
- claim+ack with batch 1, 10, 100: `claims.claim` in one transaction, then `reports.ack` of those leases in a
  second one; history entries are written by the core, as in production. Joined: the ack of each batch and
  the claim of the next in one transaction, through claims.ack_and_claim (one statement), as the server's group
  commit applies a worker's ack and its next claim when they arrive together.
- claim rate at 10k vs 1M queued jobs: batch-100 claim+ack of 5k jobs in each ledger; the bulk load of
  the large ledger is reported separately.
- DuckDB floor: the ledger's own statements with nothing around them (no validation, no history, no
  bookkeeping), one COMMIT per call as in production: the enqueue inserts on the rows a real enqueue wrote; the
  claim and ack statements of batch 100 (and ack_and_claim), archiving finished rows as the claim path does;
  and a claim+ack on a 3-column table. A target above its floor cannot be reached by any code that runs these
  statements with that durability.
- peer: Huey with SqliteHuey storage; enqueue N tasks, then dequeue + execute them in this thread.
  Our figure for the same work: enqueue the same N, then batch-100 claim + ack until drained (joined; and
  with claim and ack in separate transactions).
- http end to end (issue 3, "Performance"): a real `airgap-orch serve --no-auth` subprocess on loopback
  and BATCHING_FLEET (SDK worker processes with the README's settings for short jobs; handler =
  time.sleep(0.001)); N jobs enqueued through POST /v1/jobs/batch before timing; jobs/s until
  GET /v1/ledger counts N succeeded; claim p50/p99 estimated from the server's /metrics histogram. Same
  again with `--no-group-commit`, and the in-process batch-100 claim+ack of the same N, in the same run.
- bundle export (issue 15): `bundle export` of a ledger of N jobs (half of them claimed and acked: hot and
  finished jobs, 1 or 3 history entries each) with a pinned root, so the export self-checks what it wrote; side
  by side in the same run with the raw pipeline on the same data (DuckDB `COPY (query) TO ... (FORMAT PARQUET,
  COMPRESSION ZSTD)` of the same export queries, plus sha256 of the files). bundle_export_over_raw is the time
  ratio (target <= 2). Then `bundle import` of that bundle (private copy, verification, plan, one write
  transaction) into a fresh ledger, in a child process that does only that (scripts/bench_bundle.py), against
  the raw load of the raw files (`INSERT ... FROM read_parquet` into a fresh DuckDB file):
  bundle_import_over_raw (target <= 3), and bundle_peak_rss_mb, the child's ru_maxrss minus its RSS at start
  (target < 400). 1M jobs; 100k with --quick.
- reads beside claims (issue 14): a large ledger (1M queued jobs; 100k with --quick) behind a real server; claim
  latency (client-side, one claim+ack at a time) while a second client pages through every job and then runs
  `ledger verify`, against the same claims alone; and the WAL's size when the reads end.
- http go fleet (issue 16): one server, the same N jobs of 1 ms for a fleet of Go SDK worker processes
  (sdk/go/internal/testworker) and for the Python SDK fleet of http_end_to_end, with the same settings
  (BATCHING_FLEET), one after the other (order alternating by run): jobs/s of each (go_over_python_fleet) and the
  fleet's CPU seconds per 1,000 jobs (go_over_python_fleet_cpu). Skipped without a Go toolchain.
- http group commit: DEFAULT_FLEET (eight workers with the SDK's default settings: many small concurrent
  requests) against a server with and without group commit; group_commit_speedup is their ratio.
- crash restart: a child process opens the ledger, does single enqueues and is
  SIGKILLed, 20 times; each open (the restart) is timed inside the child, with the WAL size around it. Once as
  the ledger opens (checkpointing a WAL left by a crash), once without that checkpoint (a private switch).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime as dt
import io
import itertools
import json
import os
import platform
import pstats
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from airgap_orch import clock
from airgap_orch.errors import OrchError
from airgap_orch.ledger import Ledger
from airgap_orch.ledger.store import CHECKPOINT_THRESHOLD
from airgap_orch.operations import jobs as jobs_ops
from airgap_orch.orchestrator import claims, recovery, reports
from airgap_orch.orchestrator.states import FINAL_STATES, sources
from airgap_orch.sdk.client import OrchClient

REPO = Path(__file__).resolve().parent.parent
WORKER_ID = "bench-worker-1"
LEASE_SECONDS = 30.0
JOB_TYPES = ("advisory.feed", "vex.ingest", "scan.scheduled", "export.bundle")

# (metric key, label, target as (comparison, value) or None)
TARGETS: dict[str, tuple[str, float]] = {
    "bulk_enqueue_jobs_per_s": (">=", 100_000),
    "claim_ack_batch100_jobs_per_s": (">=", 10_000),
    "ours_vs_huey_ratio": (">=", 2.0),
    "claim_rate_1m_over_10k": (">=", 0.5),
    "http_end_to_end_jobs_per_s": (">=", 2_400),
    "group_commit_speedup": (">=", 3.0),
    "flow_limited_over_plain": (">=", 0.75),
    "bundle_export_over_raw": ("<=", 2.0),
    "bundle_import_over_raw": ("<=", 3.0),
    "bundle_peak_rss_mb": ("<=", 400),
    "go_over_python_fleet": (">=", 1.0),
    "go_over_python_fleet_cpu": ("<=", 1.0),
}


REQUIRED_KEYS = (
    "bulk_enqueue_jobs_per_s", "claim_ack_batch1_jobs_per_s", "claim_ack_batch10_jobs_per_s",
    "claim_ack_batch100_jobs_per_s", "peer_huey_sqlite_jobs_per_s", "ours_vs_huey_ratio",
    "claim_rate_10k_jobs_per_s", "claim_rate_1m_jobs_per_s", "claim_rate_1m_over_10k",
    "http_end_to_end_jobs_per_s", "http_claim_p50_ms", "http_claim_p99_ms", "http_no_group_commit_jobs_per_s",
    "group_commit_speedup", "in_process_jobs_per_s", "flow_plain_jobs_per_s", "flow_limited_jobs_per_s",
    "flow_limited_over_plain", "flow_10_tenants_jobs_per_s", "bundle_export_jobs_per_s", "bundle_export_over_raw",
    "bundle_import_jobs_per_s", "bundle_import_over_raw", "bundle_peak_rss_mb",
    "http_claim_p99_ms_under_reads", "http_claim_p99_ms_quiet", "wal_mb_after_reads",
    "http_go_fleet_jobs_per_s", "http_python_fleet_jobs_per_s", "go_over_python_fleet",
    "http_go_fleet_worker_cpu_s_per_1k_jobs", "http_python_fleet_worker_cpu_s_per_1k_jobs",
)


@dataclass(frozen=True)
class Sizes:
    enqueue_total: int  # jobs per bulk-enqueue run
    enqueue_batch: int  # jobs per enqueue_batch call
    claim_jobs: int  # queued jobs drained by claim+ack batch 10 and 100
    claim_jobs_batch1: int  # batch 1 is capped: ~2-3 ms per statement makes it slow
    rate_small: int  # queued jobs in the "10k" ledger
    rate_large: int  # queued jobs in the "1M" ledger
    rate_measure: int  # jobs claimed+acked per run in each of those ledgers
    load_batch: int  # enqueue_batch size for filling ledgers (validation.MAX_BATCH_JOBS)
    peer_jobs: int  # N for the Huey comparison
    http_jobs: int  # N for the HTTP end-to-end section (each server configuration, and in-process)
    http_small_jobs: int  # N for the HTTP group-commit section (small requests: a few hundred jobs/s at best)
    reads_jobs: int  # queued jobs in the ledger a reader pages through and verifies beside claims
    bundle_jobs: int  # jobs in the ledger the bundle section exports and imports


FULL = Sizes(enqueue_total=100_000, enqueue_batch=10_000, claim_jobs=20_000, claim_jobs_batch1=2_000,
             rate_small=10_000, rate_large=1_000_000, rate_measure=5_000, load_batch=100_000,
             peer_jobs=10_000, http_jobs=20_000, http_small_jobs=3_000, reads_jobs=1_000_000,
             bundle_jobs=1_000_000)
QUICK = Sizes(enqueue_total=20_000, enqueue_batch=10_000, claim_jobs=5_000, claim_jobs_batch1=500,
              rate_small=10_000, rate_large=200_000, rate_measure=2_000, load_batch=100_000,
              peer_jobs=5_000, http_jobs=3_000, http_small_jobs=1_500, reads_jobs=100_000,
              bundle_jobs=100_000)


# -- harness ---------------------------------------------------------------------------------------

_FILE_NUMBERS = itertools.count(1)


@dataclass
class Bench:
    """What a section gets: sizes, run count, fresh ledger files, and the timer every measurement uses."""

    workdir: Path
    sizes: Sizes
    runs: int
    quick: bool
    profiling: bool = False  # --profile: one run, headline variant only
    profiler: cProfile.Profile | None = None
    statements: StatementTimer | None = None
    notes: list[str] = field(default_factory=list)
    measured_seconds: float = 0.0  # sum over timed() blocks (profile mode reports per-batch figures)
    measured_cpu_seconds: float = 0.0  # process CPU time (all threads) inside timed() blocks
    measured_batches: int = 0
    measured_jobs: int = 0

    def new_ledger(self, label: str) -> Ledger:
        return Ledger.open(self.new_path(label, ".duckdb"), create=True, site_id="bench-site", lock_timeout=1)

    def new_path(self, label: str, suffix: str) -> Path:
        return self.workdir / f"{next(_FILE_NUMBERS):03d}-{label}{suffix}"

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @contextlib.contextmanager
    def timed(self) -> Iterator[Timer]:
        timer = Timer()
        if self.statements is not None:
            self.statements.active = True
        if self.profiler is not None:
            self.profiler.enable()
        cpu_started = time.process_time()
        timer.start = time.perf_counter()
        try:
            yield timer
        finally:
            timer.seconds = time.perf_counter() - timer.start
            self.measured_cpu_seconds += time.process_time() - cpu_started
            if self.profiler is not None:
                self.profiler.disable()
            if self.statements is not None:
                self.statements.active = False
            self.measured_seconds += timer.seconds
            self.measured_batches += timer.batches
            self.measured_jobs += timer.jobs


@dataclass
class Timer:
    start: float = 0.0
    seconds: float = 0.0
    batches: int = 0  # round trips inside the block (enqueue calls, or claim+ack pairs)
    jobs: int = 0

    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    def elapsed(self) -> float:
        """Seconds since the timed block started (while it runs)."""
        return time.perf_counter() - self.start


Samples = dict[str, list[float]]
SECTIONS: dict[str, Callable[[Bench], Samples]] = {}
SECTION_HELP: dict[str, str] = {}


def section(name: str, help_text: str) -> Callable[[Callable[[Bench], Samples]], Callable[[Bench], Samples]]:
    def register(function: Callable[[Bench], Samples]) -> Callable[[Bench], Samples]:
        SECTIONS[name] = function
        SECTION_HELP[name] = help_text
        return function
    return register


# -- workload --------------------------------------------------------------------------------------

def job_specs(count: int, *, prefix: str, keyed: bool = True, start: int = 0) -> list[dict[str, Any]]:
    """Small, realistic job specs: 4 tenants, 16 projects, 4 job types, 3 priorities, ~115-byte payload."""
    specs = []
    for i in range(start, start + count):
        spec: dict[str, Any] = {
            "tenant": f"tenant-{i % 4}",
            "project": f"project-{i % 16}",
            "type": JOB_TYPES[i % 4],
            "priority": i % 3,
            "payload": {"source": f"https://mirror.internal/feeds/{i % 97}/delta.json",
                        "since": "2026-11-01T00:00:00Z", "page": i, "format": "csaf"},
            "max_attempts": 3,
            "timeout_seconds": 600,
            "correlation_id": f"{prefix}-corr-{i // 100}",
        }
        if keyed:
            spec["idempotency_key"] = f"{prefix}-{i}"
        specs.append(spec)
    return specs


def fill(ledger: Ledger, count: int, *, prefix: str, batch: int, start: int = 0) -> None:
    """Queue `count` jobs through the real enqueue path (specs built per chunk to bound memory)."""
    done = 0
    while done < count:
        size = min(batch, count - done)
        jobs_ops.enqueue_batch(ledger, job_specs(size, prefix=prefix, start=start + done), actor="bench")
        done += size


def claim_ack(ledger: Ledger, jobs: int, batch: int, timer: Timer) -> None:
    """Claim up to `batch` jobs in one transaction, ack them in the next, until `jobs` are done."""
    while timer.jobs < jobs:
        claim_ack_round(ledger, min(batch, jobs - timer.jobs), timer)


def claim_ack_round(ledger: Ledger, batch: int, timer: Timer) -> None:
    """One round trip: claim up to `batch` jobs in one transaction, ack them in the next."""
    with ledger.transaction() as tx:
        leases = claims.claim(tx, worker_id=WORKER_ID, limit=batch, lease_seconds=LEASE_SECONDS)
    if not leases:
        raise RuntimeError(f"claim returned nothing after {timer.jobs} jobs")
    with ledger.transaction() as tx:
        _ack(tx, leases)
    timer.jobs += len(leases)
    timer.batches += 1


def claim_ack_joined(ledger: Ledger, jobs: int, batch: int, timer: Timer) -> None:
    """The batch worker's loop when the ack of one batch and the claim of the next share a transaction (as
    they do in the server's group commit when a worker's ack and its next claim arrive together, and there
    claims.ack_and_claim makes them one statement): one transaction per batch, plus the first claim."""
    with ledger.transaction() as tx:
        leases = claims.claim(tx, worker_id=WORKER_ID, limit=min(batch, jobs), lease_seconds=LEASE_SECONDS)
    while leases:
        timer.jobs += len(leases)
        timer.batches += 1
        wanted = min(batch, jobs - timer.jobs)
        with ledger.transaction() as tx:
            if wanted:
                outcomes, [leases] = claims.ack_and_claim(tx, _acks(leases), [(WORKER_ID, wanted)],
                                                          lease_seconds=LEASE_SECONDS)
            else:
                outcomes, leases = reports.ack(tx, _acks(leases)), []
            _refused(outcomes)
    if timer.jobs < jobs:
        raise RuntimeError(f"claim returned nothing after {timer.jobs} jobs")


def _ack(tx: Any, leases: list[dict[str, Any]]) -> None:
    _refused(reports.ack(tx, _acks(leases)))


def _acks(leases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"job_id": lease["job_id"], "lease_id": lease["lease_id"]} for lease in leases]


def _refused(outcomes: list[Any]) -> None:
    refused = [outcome for outcome in outcomes if isinstance(outcome, OrchError)]
    if refused:
        raise RuntimeError(f"ack refused {len(refused)} of {len(outcomes)}: {refused[0]}")


# -- sections --------------------------------------------------------------------------------------

@section("bulk_enqueue", "enqueue_batch (validation + one transaction per 10k) into a fresh ledger")
def bench_bulk_enqueue(bench: Bench) -> Samples:
    sizes = bench.sizes
    samples: Samples = {"bulk_enqueue_jobs_per_s": [], "bulk_enqueue_unkeyed_jobs_per_s": []}
    for run in range(bench.runs):
        for keyed, metric in ((True, "bulk_enqueue_jobs_per_s"), (False, "bulk_enqueue_unkeyed_jobs_per_s")):
            if bench.profiling and not keyed:
                continue  # profile the headline (keyed) path only
            chunks = [job_specs(sizes.enqueue_batch, prefix=f"enq{run}", keyed=keyed, start=start)
                      for start in range(0, sizes.enqueue_total, sizes.enqueue_batch)]
            with bench.new_ledger("enqueue") as ledger:
                with bench.timed() as timer:
                    for chunk in chunks:
                        jobs_ops.enqueue_batch(ledger, chunk, actor="bench")
                        timer.jobs += len(chunk)
                        timer.batches += 1
            samples[metric].append(timer.rate())
    bench.note(f"bulk enqueue: {sizes.enqueue_total:,} jobs per run in enqueue_batch calls of "
               f"{sizes.enqueue_batch:,}, validation included; headline with an idempotency key per job")
    return samples


def _claim_ack_section(batch: int) -> Callable[[Bench], Samples]:
    def run_section(bench: Bench) -> Samples:
        sizes = bench.sizes
        jobs = sizes.claim_jobs_batch1 if batch == 1 else sizes.claim_jobs
        loops = {f"claim_ack_batch{batch}_jobs_per_s": claim_ack, f"claim_ack_batch{batch}_joined_jobs_per_s":
                 claim_ack_joined}
        samples: Samples = {metric: [] for metric in loops}
        for run in range(bench.runs):
            for metric in sorted(loops, reverse=run % 2 == 1):  # alternate which loop goes first
                with bench.new_ledger(f"claim{batch}") as ledger:
                    fill(ledger, sizes.claim_jobs, prefix="claim", batch=sizes.load_batch)
                    with bench.timed() as timer:
                        loops[metric](ledger, jobs, batch, timer)
                samples[metric].append(timer.rate())
        cap = ""
        if jobs < sizes.claim_jobs:
            cap = f" (capped at {jobs:,} of the {sizes.claim_jobs:,} queued jobs)"
        bench.note(f"claim+ack batch {batch}: {jobs:,} jobs per run{cap}; claim and ack are separate "
                   "transactions; joined: the ack of each batch and the claim of the next share one; history "
                   "written by the core")
        return samples
    return run_section


for _batch in (1, 10, 100):
    section(f"claim_ack_batch{_batch}", f"claim {_batch} + ack {_batch} per round trip on "
            f"{FULL.claim_jobs:,} queued jobs")(_claim_ack_section(_batch))


@section("claim_rate", "batch-100 claim+ack in a 10k-job ledger vs a 1M-job ledger (load reported apart)")
def bench_claim_rate(bench: Bench) -> Samples:
    sizes = bench.sizes
    samples: Samples = {"claim_rate_10k_jobs_per_s": [], "claim_rate_1m_jobs_per_s": [],
                        "load_large_ledger_jobs_per_s": []}
    with contextlib.ExitStack() as stack:
        ledgers = {}
        for metric, label, count in (("claim_rate_10k_jobs_per_s", "rate-small", sizes.rate_small),
                                     ("claim_rate_1m_jobs_per_s", "rate-large", sizes.rate_large)):
            ledger = stack.enter_context(bench.new_ledger(label))
            started = time.perf_counter()
            fill(ledger, count, prefix=label, batch=sizes.load_batch)
            if count == sizes.rate_large:
                samples["load_large_ledger_jobs_per_s"].append(count / (time.perf_counter() - started))
            # The first claim after open archives finished rows; keep that one-off out of the figure.
            claim_ack(ledger, 100, 100, Timer())
            fill(ledger, 100, prefix=f"{label}-warm", batch=100)
            ledgers[metric] = (ledger, label)
        for run in range(bench.runs):  # interleaved, so drift in machine load hits both alike
            for metric, (ledger, label) in ledgers.items():
                with bench.timed() as timer:
                    claim_ack(ledger, sizes.rate_measure, 100, timer)
                samples[metric].append(timer.rate())
                # Top the ledger back up so every run sees the same queue depth.
                fill(ledger, sizes.rate_measure, prefix=f"{label}-top{run}", batch=sizes.load_batch)
    large = f"{sizes.rate_large:,}"
    bench.note(f"claim rate: batch-100 claim+ack of {sizes.rate_measure:,} jobs per run in ledgers holding "
               f"{sizes.rate_small:,} and {large} queued jobs (topped up after each run)")
    if sizes.rate_large != 1_000_000:
        bench.note(f"--quick: the large ledger holds {large} jobs, not 1M; claim_rate_1m_* keys refer to it")
    return samples


def _set_limits_that_do_not_bind(ledger: Ledger, tenants: list[str]) -> None:
    """A rate limit, a concurrency limit and a quota that every job falls under, none of them binding."""
    from airgap_orch.operations import limits as limit_ops

    high = 1_000_000
    for tenant in tenants:
        limit_ops.quota_set(ledger, tenant=tenant, max_active=high, max_per_hour=high, burst=high, reason="bench")
        for job_type in JOB_TYPES:
            limit_ops.ratelimit_set(ledger, tenant=tenant, type=job_type, rate=high, burst=high, reason="bench")
    for job_type in JOB_TYPES:
        limit_ops.concurrency_set(ledger, key=f"type:{job_type}", max=high, reason="bench")


def fill_tenants(ledger: Ledger, count: int, tenants: int, *, batch: int) -> None:
    """Like fill(), with jobs spread round-robin over `tenants` tenants."""
    done = 0
    while done < count:
        specs = job_specs(min(batch, count - done), prefix="fair", start=done)
        for offset, spec in enumerate(specs):
            spec["tenant"] = f"tenant-{(done + offset) % tenants}"
        jobs_ops.enqueue_batch(ledger, specs, actor="bench")
        done += len(specs)


@section("duckdb_floor", "what DuckDB alone allows: the ledger's own enqueue, claim and ack statements with "
         "nothing around them, and a claim+ack on a 3-column table")
def bench_duckdb_floor(bench: Bench) -> Samples:
    """Ceilings for the issue-2 targets. Each figure times statements and COMMITs only: no validation, no
    history, no Python bookkeeping. A target above its ceiling is out of reach for any code that runs these
    statements with a COMMIT per call (the durability every call promises)."""
    sizes = bench.sizes
    samples: Samples = {"floor_enqueue_jobs_per_s": [], "floor_claim_ack_batch100_jobs_per_s": [],
                        "floor_joined_batch100_jobs_per_s": [], "floor_minimal_claim_ack_batch100_jobs_per_s": []}
    if bench.profiling:
        raise SystemExit("duckdb_floor runs no Python to profile; run it without --profile")
    with bench.new_ledger("floor-source") as source:  # the rows a real enqueue writes, to insert again
        fill(source, sizes.enqueue_total, prefix="floor", batch=sizes.enqueue_batch)
        tables = {name: source.read().con.sql(f"SELECT * FROM {name} ORDER BY {order}").to_arrow_table()
                  for name, order in (("jobs", "job_id"), ("idempotency_keys", "job_id"), ("history", "seq"))}
    for _run in range(bench.runs):
        with bench.new_ledger("floor-enqueue") as ledger, bench.timed() as timer:
            for start in range(0, sizes.enqueue_total, sizes.enqueue_batch):
                chunk = {name: table.slice(start, sizes.enqueue_batch) for name, table in tables.items()}
                with ledger.transaction() as tx:
                    tx.execute_with("idempotency_reserve", "incoming", chunk["idempotency_keys"]).fetchall()
                    tx.execute_with("jobs_insert", "incoming", chunk["jobs"])
                    tx.execute_with("history_append", "entries", chunk["history"])
                timer.jobs += chunk["jobs"].num_rows
        samples["floor_enqueue_jobs_per_s"].append(timer.rate())
        for metric, loop in (("floor_claim_ack_batch100_jobs_per_s", _floor_separate),
                             ("floor_joined_batch100_jobs_per_s", _floor_joined)):
            with bench.new_ledger("floor-claim") as ledger:
                fill(ledger, sizes.claim_jobs, prefix="floor", batch=sizes.load_batch)
                with bench.timed() as timer:
                    loop(ledger, sizes.claim_jobs, timer)
            samples[metric].append(timer.rate())
        samples["floor_minimal_claim_ack_batch100_jobs_per_s"].append(
            _floor_minimal(bench.new_path("floor-minimal", ".duckdb"), sizes.claim_jobs, bench))
    bench.note(f"DuckDB floor: the enqueue statements (idempotency_reserve, jobs_insert, history_append) on the rows "
               f"a real enqueue of {sizes.enqueue_total:,} jobs wrote, {sizes.enqueue_batch:,} per transaction; "
               f"the claim and ack statements (and ack_and_claim, joined) on {sizes.claim_jobs:,} queued jobs, 100 per "
               "statement, one COMMIT each, finished rows archived every "
               f"{recovery.ARCHIVE_AFTER:,} as on the claim path; minimal: the same claim+ack on a table of "
               "(id, state, lease_id)")
    return samples


def _floor_claim(tx: Any, now: dt.datetime, limit: int) -> dict[str, Any]:
    return {"now": now, "site_id": tx.site_id, "queue": None, "job_type": None, "tenants": None, "limit": limit,
            "worker_id": WORKER_ID, "lease_seconds": LEASE_SECONDS,
            "lease_expires_at": now + dt.timedelta(seconds=LEASE_SECONDS)}


def _floor_acks(now: dt.datetime, leased: list[tuple]) -> dict[str, Any]:
    return {"now": now, "job_ids": [row[0] for row in leased], "lease_ids": [row[1] for row in leased],
            "artifacts": ["[]"] * len(leased), "from_states": sources("ack"), "ack_tenants": None}


def _floor_archive(tx: Any, unarchived: int) -> int:
    """The hot table's housekeeping as recovery.maintain() does it on the claim path: finished rows move out once
    ARCHIVE_AFTER have gathered, so the floor's claims scan the table production's would."""
    if unarchived < recovery.ARCHIVE_AFTER:
        return unarchived
    tx.execute("archive_copy", final_states=list(FINAL_STATES))
    tx.execute("archive_delete", final_states=list(FINAL_STATES))
    return 0


def _floor_separate(ledger: Ledger, jobs: int, timer: Timer) -> None:
    """The claim statement in one transaction, the ack statement of its leases in the next."""
    unarchived = 0
    while timer.jobs < jobs:
        now = clock.now()
        with ledger.transaction() as tx:
            unarchived = _floor_archive(tx, unarchived)
            leased = tx.fetch("claim", **_floor_claim(tx, now, 100))
        with ledger.transaction() as tx:
            acked = tx.fetch("ack", **_floor_acks(now, leased))
        if len(acked) != len(leased) or not leased:
            raise RuntimeError(f"floor: {len(leased)} leased, {len(acked)} acked after {timer.jobs} jobs")
        timer.jobs += len(acked)
        unarchived += len(acked)


def _floor_joined(ledger: Ledger, jobs: int, timer: Timer) -> None:
    """The ack_and_claim statement, one transaction per batch (plus the first claim)."""
    with ledger.transaction() as tx:
        leased = tx.fetch("claim", **_floor_claim(tx, clock.now(), 100))
    unarchived = 0
    while leased:
        timer.jobs += len(leased)
        now = clock.now()
        with ledger.transaction() as tx:
            unarchived = _floor_archive(tx, unarchived)
            rows = tx.fetch("ack_and_claim", **{**_floor_claim(tx, now, min(100, jobs - timer.jobs)),
                                                **_floor_acks(now, leased)})
        acked = len(leased)
        leased = [row for row in rows if row[-3] == "leased"]  # RETURNING ends with state, worker_id, started_at
        if len(rows) - len(leased) != acked:
            raise RuntimeError(f"floor: an ack was refused after {timer.jobs} jobs")
        unarchived += acked
    if timer.jobs < jobs:
        raise RuntimeError(f"floor: claim returned nothing after {timer.jobs} jobs")


def _floor_minimal(path: Path, jobs: int, bench: Bench) -> float:
    """Claim 100 by a top-N subquery, then ack them by (id, lease id), each in its own transaction, on a table
    of three columns: what any ledger table in DuckDB costs at the least."""
    con = duckdb.connect(str(path), config={"threads": 2})
    try:
        con.execute("CREATE TABLE q (id BIGINT, state VARCHAR, lease_id VARCHAR)")
        con.execute("INSERT INTO q SELECT i, 'queued', NULL FROM range($n) AS r(i)", {"n": jobs})
        with bench.timed() as timer:
            while timer.jobs < jobs:
                con.execute("BEGIN")
                leased = con.execute("UPDATE q SET state = 'leased', lease_id = uuid()::VARCHAR WHERE rowid IN "
                                     "(SELECT rowid FROM q WHERE state = 'queued' ORDER BY id LIMIT 100) "
                                     "RETURNING id, lease_id").fetchall()
                con.execute("COMMIT")
                con.execute("BEGIN")
                given = {"ids": [row[0] for row in leased], "leases": [row[1] for row in leased]}
                acked = con.execute("UPDATE q SET state = 'succeeded' FROM (SELECT unnest($ids) AS id, "
                                    "unnest($leases) AS lease_id) AS a WHERE q.id = a.id AND q.lease_id = a.lease_id "
                                    "AND q.state = 'leased' RETURNING q.id", given).fetchall()
                con.execute("COMMIT")
                if len(acked) != len(leased) or not leased:
                    raise RuntimeError(f"minimal floor: {len(leased)} leased, {len(acked)} acked")
                timer.jobs += len(leased)
        return timer.rate()
    finally:
        con.close()


@section("flow_control", "batch-100 claim+ack: no limits vs a rate limit, a concurrency limit and a quota on "
         "every job (not binding); and 10 tenants sharing a queue")
def bench_flow_control(bench: Bench) -> Samples:
    sizes = bench.sizes
    samples: Samples = {"flow_plain_jobs_per_s": [], "flow_limited_jobs_per_s": [], "flow_10_tenants_jobs_per_s": []}
    for _ in range(bench.runs):
        with contextlib.ExitStack() as stack:
            ledgers = {}
            for metric in samples:
                ledger = ledgers[metric] = stack.enter_context(bench.new_ledger(metric.removesuffix("_jobs_per_s")))
                if metric == "flow_10_tenants_jobs_per_s":
                    fill_tenants(ledger, sizes.claim_jobs, 10, batch=sizes.load_batch)
                else:
                    fill(ledger, sizes.claim_jobs, prefix="flow", batch=sizes.load_batch)
                if metric == "flow_limited_jobs_per_s":
                    _set_limits_that_do_not_bind(ledger, [f"tenant-{i}" for i in range(4)])
            # The variants take turns round trip by round trip, so load on a shared machine hits them alike.
            totals = {metric: Timer() for metric in samples}
            for _round in range(sizes.claim_jobs // 100):
                for metric, ledger in ledgers.items():
                    with bench.timed() as timer:
                        claim_ack_round(ledger, 100, timer)
                    totals[metric].seconds += timer.seconds
                    totals[metric].jobs += timer.jobs
        for metric, total in totals.items():
            samples[metric].append(total.rate())
    bench.note(f"flow control: {sizes.claim_jobs:,} jobs per run and variant; limited = a quota on each of the 4 "
               "tenants, a rate limit on each tenant and type, a concurrency limit on each type, all far above "
               "what the run uses; 10 tenants: the same jobs spread over 10 tenants, no limits. The three ledgers "
               "take turns one round trip (claim 100 + ack 100) at a time")
    return samples


@section("peer_huey", "Huey/SqliteHuey enqueue+dequeue+execute N vs our enqueue + batch-100 claim+ack of N")
def bench_peer_huey(bench: Bench) -> Samples:
    from huey import SqliteHuey

    sizes = bench.sizes
    n = sizes.peer_jobs
    samples: Samples = {"peer_huey_sqlite_jobs_per_s": [], "peer_huey_enqueue_jobs_per_s": [],
                        "peer_huey_dequeue_execute_jobs_per_s": [], "ours_same_work_jobs_per_s": [],
                        "ours_same_work_enqueue_jobs_per_s": [], "ours_same_work_claim_ack_jobs_per_s": [],
                        "ours_same_work_separate_jobs_per_s": [], "ours_same_work_separate_enqueue_jobs_per_s": [],
                        "ours_same_work_separate_claim_ack_jobs_per_s": []}
    for run in range(bench.runs):
        specs = job_specs(n, prefix=f"peer{run}")
        payloads = [spec["payload"] for spec in specs]

        huey = SqliteHuey(name="bench", filename=str(bench.new_path("huey", ".sqlite")))
        executed: list[int] = []

        @huey.task()
        def ingest(payload: dict[str, Any], done: list[int] = executed) -> None:
            done.append(payload["page"])

        with bench.timed() as enqueue_timer:
            for payload in payloads:
                ingest(payload)
            enqueue_timer.jobs = n
        with bench.timed() as execute_timer:
            while (task := huey.dequeue()) is not None:
                huey.execute(task)
                execute_timer.jobs += 1
        huey.storage.close()
        if len(executed) != n:
            raise RuntimeError(f"huey executed {len(executed)} of {n} tasks")
        huey_seconds = enqueue_timer.seconds + execute_timer.seconds
        samples["peer_huey_sqlite_jobs_per_s"].append(n / huey_seconds)
        samples["peer_huey_enqueue_jobs_per_s"].append(enqueue_timer.rate())
        samples["peer_huey_dequeue_execute_jobs_per_s"].append(execute_timer.rate())

        for loop, suffix in ((claim_ack_joined, ""), (claim_ack, "_separate")):
            with bench.new_ledger("peer-ours") as ledger:
                with bench.timed() as enqueue_timer:
                    for start in range(0, n, sizes.enqueue_batch):
                        jobs_ops.enqueue_batch(ledger, specs[start:start + sizes.enqueue_batch], actor="bench")
                    enqueue_timer.jobs = n
                with bench.timed() as drain_timer:
                    loop(ledger, n, 100, drain_timer)
            samples[f"ours_same_work{suffix}_jobs_per_s"].append(n / (enqueue_timer.seconds + drain_timer.seconds))
            samples[f"ours_same_work{suffix}_enqueue_jobs_per_s"].append(enqueue_timer.rate())
            samples[f"ours_same_work{suffix}_claim_ack_jobs_per_s"].append(drain_timer.rate())
    bench.note(f"peer: {n:,} jobs per run; Huey enqueues one task per call (it has no batch enqueue), then "
               "dequeue()+execute() in this thread; ours: enqueue_batch of "
               f"{sizes.enqueue_batch:,}, then batch-100 claim+ack with the ack of each batch and the claim of the "
               "next in one transaction (ours_same_work_separate_*: claim and ack in separate transactions); both "
               "stores at default durability")
    return samples


# -- http end to end -------------------------------------------------------------------------------

HTTP_JOB_TYPE = "bench.sleep1ms"


@dataclass(frozen=True)
class Fleet:
    """SDK worker processes for an HTTP run, and the Worker settings each one uses."""
    processes: int
    concurrency: int  # handler threads per process
    prefetch: int
    ack_batch: int

    def describe(self) -> str:
        return (f"{self.processes} SDK worker processes x {self.concurrency} handler threads, prefetch "
                f"{self.prefetch:,}, ack batches of up to {self.ack_batch:,}")


# The README's setting for short jobs, on 2 processes (2 cores: the server, the workers and this process share
# them): each claim brings up to 1,000 jobs beyond the free handler threads and acks gather up to 1,000 per
# request, so the workers themselves send few, large requests.
BATCHING_FLEET = Fleet(processes=2, concurrency=16, prefetch=1_000, ack_batch=1_000)
# Eight workers with the SDK's default settings (4 handler threads, no prefetch, acks gathered for 5 ms, at most
# 100): many small requests at once, which is what group commit is for. The server is the bottleneck here (each
# worker process uses ~5% of a core), so the eight add little load of their own.
DEFAULT_FLEET = Fleet(processes=8, concurrency=4, prefetch=0, ack_batch=100)
HTTP_ENQUEUE_CHUNK = 5_000  # jobs per POST /v1/jobs/batch
# GET /v1/ledger while waiting for the last success costs the server's writer ~5 ms a call, so the harness polls
# sparingly: half the time the remaining jobs should take at the rate seen so far, within these bounds.
HTTP_POLL_SECONDS = (0.02, 0.5)
STOP_TIMEOUT_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long
CLAIM_HISTOGRAM = "airgap_orch_claim_latency_ms"
COMMIT_HISTOGRAM = "airgap_orch_group_commit_requests"  # requests applied per ledger transaction

# The worker program (python -c): build the Worker, say "ready", start on the first line of stdin.
WORKER_PROGRAM = """
import sys, time
from airgap_orch.sdk import Worker
url, job_type = sys.argv[1], sys.argv[2]
concurrency, prefetch, ack_batch_size = (int(value) for value in sys.argv[3:6])
worker = Worker(url, concurrency=concurrency, prefetch=prefetch, ack_batch_size=ack_batch_size, claim_wait=2.0,
                grace_seconds=5.0)

@worker.handler(job_type)
def work(ctx):
    time.sleep(0.001)

print("ready", flush=True)
sys.stdin.readline()
worker.run()
"""


def _stop_processes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running, then SIGKILL whichever has not exited after the timeout."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=5)
    for process in processes:
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _poll_pause(done: int, total: int, elapsed: float) -> float:
    """Seconds to wait before asking the server again whether `total` jobs have succeeded."""
    shortest, longest = HTTP_POLL_SECONDS
    if done <= 0 or elapsed <= 0:
        return shortest * 5
    remaining = (total - done) / (done / elapsed)
    return min(longest, max(shortest, remaining / 2))


def _read_line(process: subprocess.Popen, timeout: float, what: str) -> str:
    """The next stdout line of `process` (a text pipe), or RuntimeError after `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"{what} said nothing within {timeout:.0f} s (exit code {process.poll()})")
    return line.rstrip("\n")


def _drain(stream: Any, keep: deque[str]) -> None:
    """Read a pipe to its end (so the child never blocks writing), keeping the last lines."""
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            keep.append(line.rstrip("\n"))


def _http(url: str, body: Any = None, *, timeout: float = 120.0) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return response.read()


def histogram(metrics_text: str, name: str) -> tuple[list[tuple[float, int]], float, int]:
    """(cumulative buckets as (upper bound, count), sum, count) of one histogram in Prometheus text."""
    buckets, total, count = [], 0.0, 0
    pattern = re.compile(rf'^{re.escape(name)}_bucket{{le="([^"]+)"}} (\S+)$')
    for line in metrics_text.splitlines():
        if match := pattern.match(line):
            buckets.append((float(match.group(1)), int(float(match.group(2)))))
        elif line.startswith(f"{name}_sum "):
            total = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = int(float(line.split()[1]))
    return sorted(buckets), total, count


def quantile(buckets: list[tuple[float, int]], q: float) -> float | None:
    """Quantile estimated from cumulative buckets: linear inside the bucket that holds it (as Prometheus'
    histogram_quantile does); in the +Inf bucket, the largest finite bound (an underestimate)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def _http_run(bench: Bench, jobs: int, fleet: Fleet, *, group_commit: bool, label: str) -> dict[str, float]:
    """One end-to-end run against a fresh server subprocess; every child is stopped on the way out."""
    path = bench.new_path(label, ".duckdb")
    Ledger.open(path, create=True, site_id="bench-site", lock_timeout=1).close()
    logs = path.with_suffix(".log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: list[subprocess.Popen] = []
    with open(logs, "w", encoding="utf-8") as log_file:
        try:
            command = [sys.executable, "-m", "airgap_orch", "--ledger", str(path), "serve", "--port", "0",
                       "--no-auth"] + ([] if group_commit else ["--no-group-commit"])
            server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL,
                                      text=True, env=env, cwd=bench.workdir)
            children.append(server)
            first = _read_line(server, 60, "the server")
            match = re.search(r"\bat (http://\S+)", first)
            if match is None:
                raise RuntimeError(f"no URL in the server's first line: {first!r}")
            url = match.group(1)
            threading.Thread(target=_drain, args=(server.stdout, deque(maxlen=50)), daemon=True).start()

            for start in range(0, jobs, HTTP_ENQUEUE_CHUNK):
                specs = job_specs(min(HTTP_ENQUEUE_CHUNK, jobs - start), prefix=label, start=start)
                for spec in specs:
                    spec["type"] = HTTP_JOB_TYPE
                _http(f"{url}/v1/jobs/batch", {"jobs": specs})
            queued = json.loads(_http(f"{url}/v1/ledger"))["jobs"].get("queued", 0)
            if queued != jobs:
                raise RuntimeError(f"{queued} jobs queued after enqueue, expected {jobs}")

            workers = []
            for _ in range(fleet.processes):
                settings = (fleet.concurrency, fleet.prefetch, fleet.ack_batch)
                worker = subprocess.Popen([sys.executable, "-c", WORKER_PROGRAM, url, HTTP_JOB_TYPE,
                                           *map(str, settings)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=log_file, text=True, env=env, cwd=bench.workdir)
                children.append(worker)
                workers.append(worker)
            for worker in workers:
                _read_line(worker, 60, "a worker")
            before_text = _http(f"{url}/metrics").decode()
            before = histogram(before_text, CLAIM_HISTOGRAM)
            commits_before = histogram(before_text, COMMIT_HISTOGRAM)

            deadline = time.monotonic() + max(300.0, jobs / 20)
            with bench.timed() as timer:
                for worker in workers:  # all started; the workers import nothing more from here on
                    assert worker.stdin is not None
                    worker.stdin.write("go\n")
                    worker.stdin.flush()
                while True:
                    counts = json.loads(_http(f"{url}/v1/ledger"))["jobs"]
                    if counts.get("succeeded", 0) >= jobs:
                        break
                    dead = [w.returncode for w in workers if w.poll() is not None]
                    if dead or server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{label}: stuck at {counts} (worker exits {dead}, server exit "
                                           f"{server.poll()}); see {logs}")
                    time.sleep(_poll_pause(counts.get("succeeded", 0), jobs, timer.elapsed()))
                timer.jobs = jobs
            # Read right away: claims long-polling on the now empty queue are still in flight, not counted.
            metrics_text = _http(f"{url}/metrics").decode()
        finally:
            _stop_processes(list(reversed(children)))  # workers first, then the server
    buckets, total, count = histogram(metrics_text, CLAIM_HISTOGRAM)
    base = dict(before[0])
    buckets = [(bound, cumulative - base.get(bound, 0)) for bound, cumulative in buckets]
    count -= before[2]
    result = {"jobs_per_s": timer.rate(), "claims": float(count),
              "claim_mean_ms": (total - before[1]) / count if count else 0.0}
    _, requests, commits = histogram(metrics_text, COMMIT_HISTOGRAM)
    requests, commits = requests - commits_before[1], commits - commits_before[2]
    if commits:
        result["requests_per_commit"] = requests / commits
        result["commits_per_s"] = commits / timer.seconds
    for q, key in ((0.5, "claim_p50_ms"), (0.99, "claim_p99_ms")):
        value = quantile(buckets, q)
        if value is not None:
            result[key] = value
    return result


def _http_pair(bench: Bench, jobs: int, fleet: Fleet, run: int, samples: Samples, on: str, off: str) -> None:
    """The same fleet against a server with group commit (metrics under `on`) and without (`off`)."""
    for group_commit, prefix in ((True, on), (False, off)):
        if bench.profiling and not group_commit:
            continue
        figures = _http_run(bench, jobs, fleet, group_commit=group_commit, label=f"{prefix.replace('_', '-')}{run}")
        for key, value in figures.items():
            name = f"{prefix}_{key}" if key != "jobs_per_s" or prefix != "http" else "http_end_to_end_jobs_per_s"
            samples.setdefault(name, []).append(value)


def _http_notes(bench: Bench, jobs: int, fleet: Fleet, what: str) -> None:
    bench.note(f"{what}: {jobs:,} jobs of 1 ms (time.sleep) per run, enqueued through POST /v1/jobs/batch in chunks "
               f"of {HTTP_ENQUEUE_CHUNK:,} before timing; {fleet.describe()} (2 cores shared with the server); "
               f"timed from 'go' to GET /v1/ledger showing {jobs:,} succeeded (polled every "
               f"{HTTP_POLL_SECONDS[0] * 1000:.0f} to {HTTP_POLL_SECONDS[1] * 1000:.0f} ms, more often near the end)")


@section("http_end_to_end", "server subprocess + SDK worker processes over loopback, 1 ms jobs; also "
         "--no-group-commit and in-process claim+ack of the same N")
def bench_http_end_to_end(bench: Bench) -> Samples:
    n = bench.sizes.http_jobs
    samples: Samples = {"in_process_jobs_per_s": []}
    for run in range(bench.runs):  # interleaved, so drift in machine load hits all three alike
        _http_pair(bench, n, BATCHING_FLEET, run, samples, "http", "http_no_group_commit")
        if bench.profiling:
            continue
        with bench.new_ledger("http-in-process") as ledger:
            fill(ledger, n, prefix="inproc", batch=bench.sizes.load_batch)
            with bench.timed() as timer:
                claim_ack(ledger, n, 100, timer)
        samples["in_process_jobs_per_s"].append(timer.rate())
    _http_notes(bench, n, BATCHING_FLEET, "http end to end")
    bench.note("http claim p50/p99: estimated from the server's /metrics histogram "
               f"{CLAIM_HISTOGRAM} (buckets 1, 2.5, 5, 10, 25, 50, 100, ... ms; linear inside a bucket), "
               "counting claims answered while timing; it includes any long-poll wait")
    bench.note(f"in_process_jobs_per_s: batch-100 claims.claim + reports.ack of the same {n:,} jobs in this process")
    return samples


@section("http_group_commit", "8 SDK workers with default settings (many small requests) against a server with "
         "and without group commit")
def bench_http_group_commit(bench: Bench) -> Samples:
    n = bench.sizes.http_small_jobs
    samples: Samples = {}
    for run in range(bench.runs):
        _http_pair(bench, n, DEFAULT_FLEET, run, samples, "http_default_fleet", "http_default_fleet_no_group_commit")
    _http_notes(bench, n, DEFAULT_FLEET, "http group commit")
    bench.note("group_commit_speedup: the default fleet with group commit over the same fleet without it; the "
               "batching fleet of http_end_to_end sends few large requests, leaving group commit little to merge "
               "(group_commit_speedup_batching_fleet)")
    return samples


# -- the Go SDK fleet beside the Python SDK fleet (issue 16, "Performance") ------------------------------------

GO_DIR = REPO / "sdk" / "go"
GO_FLEET_JOB_TYPES = {"python": "bench.fleet.python", "go": "bench.fleet.go"}


def _go_testworker(bench: Bench) -> Path | None:
    """sdk/go/internal/testworker built into the work directory (standard library only, no network), or None when
    there is no Go toolchain."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = bench.workdir / "go-testworker"
    if not binary.exists():
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "GOWORK": "off",
               "CGO_ENABLED": "0", "GOCACHE": str(Path(tempfile.gettempdir()) / "airgap-orch-go" / "cache")}
        subprocess.run([go, "build", "-o", str(binary), "./internal/testworker"], cwd=GO_DIR, env=env, check=True,
                       capture_output=True, timeout=600)
    return binary


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fleet_run(bench: Bench, url: str, jobs: int, fleet: Fleet, kind: str, binary: Path | None, log_file: Any,
               label: str) -> dict[str, float]:
    """One fleet (`kind` python or go) drains `jobs` fresh jobs of its own type on a running server: jobs/s from
    'go' until the server counts them succeeded, and the fleet's CPU seconds in that time, per 1,000 jobs."""
    job_type = GO_FLEET_JOB_TYPES[kind]
    before = json.loads(_http(f"{url}/v1/ledger"))["jobs"].get("succeeded", 0)
    for start in range(0, jobs, HTTP_ENQUEUE_CHUNK):
        specs = job_specs(min(HTTP_ENQUEUE_CHUNK, jobs - start), prefix=f"{label}-{kind}", start=start)
        for spec in specs:
            spec["type"] = job_type
        _http(f"{url}/v1/jobs/batch", {"jobs": specs})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers: list[subprocess.Popen] = []
    try:
        for number in range(fleet.processes):
            if kind == "go":
                assert binary is not None
                command = [str(binary), "-url", url, "-type", job_type, "-ready", "-sleep", "1ms", "-claim-wait", "2s",
                           "-grace", "5s", "-concurrency", str(fleet.concurrency), "-prefetch", str(fleet.prefetch),
                           "-ack-batch", str(fleet.ack_batch), "-worker-id", f"{label}-go-{number}"]
            else:
                command = [sys.executable, "-c", WORKER_PROGRAM, url, job_type, str(fleet.concurrency),
                           str(fleet.prefetch), str(fleet.ack_batch)]
            workers.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                            text=True, env=env, cwd=bench.workdir))
        for worker in workers:
            _read_line(worker, 60, f"a {kind} worker")
        deadline = time.monotonic() + max(300.0, jobs / 20)
        with bench.timed() as timer:
            cpu_before = sum(_cpu_seconds(worker.pid) for worker in workers)
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            while True:
                done = json.loads(_http(f"{url}/v1/ledger"))["jobs"].get("succeeded", 0) - before
                if done >= jobs:
                    break
                dead = [worker.returncode for worker in workers if worker.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"{label} ({kind}): stuck at {done} of {jobs} (worker exits {dead})")
                time.sleep(_poll_pause(done, jobs, timer.elapsed()))
            cpu = sum(_cpu_seconds(worker.pid) for worker in workers) - cpu_before
            timer.jobs = jobs
    finally:
        _stop_processes(workers)
    return {"jobs_per_s": timer.rate(), "worker_cpu_s_per_1k_jobs": cpu / jobs * 1000}


@section("http_go_fleet", "Go SDK worker processes beside Python SDK worker processes against one server: same "
         "1 ms jobs, same prefetch and ack batches; jobs/s and the workers' CPU per 1,000 jobs")
def bench_http_go_fleet(bench: Bench) -> Samples:
    binary = _go_testworker(bench)
    if binary is None:
        bench.note("http_go_fleet: skipped, no Go toolchain (apt-get install golang-go)")
        return {}
    n = bench.sizes.http_jobs
    samples: Samples = {}
    for run in range(bench.runs):
        path = bench.new_path(f"go-fleet{run}", ".duckdb")
        Ledger.open(path, create=True, site_id="bench-site", lock_timeout=1).close()
        with open(path.with_suffix(".log"), "w", encoding="utf-8") as log_file:
            server, url = _serve(bench, path, log_file)
            try:
                # Alternate which fleet goes first, so that a ledger growing under the second one costs each alike.
                kinds = ("python", "go") if run % 2 == 0 else ("go", "python")
                for kind in kinds:
                    figures = _fleet_run(bench, url, n, BATCHING_FLEET, kind, binary, log_file, f"fleet{run}")
                    for key, value in figures.items():
                        samples.setdefault(f"http_{kind}_fleet_{key}", []).append(value)
            finally:
                _stop_processes([server])
    bench.note(f"http_go_fleet: per run one `serve --no-auth` and {n:,} jobs of 1 ms for each fleet, one fleet after "
               f"the other on the same server (order alternating by run); each fleet is {fleet_text(BATCHING_FLEET)} "
               "(Go: sdk/go/internal/testworker, time.Sleep(1 ms); Python: the http_end_to_end worker); "
               "worker_cpu_s_per_1k_jobs: user+system CPU of the fleet's processes from 'go' to the last success "
               "(/proc/PID/stat), per 1,000 jobs")
    return samples


def fleet_text(fleet: Fleet) -> str:
    return (f"{fleet.processes} processes x {fleet.concurrency} handlers, prefetch {fleet.prefetch:,}, ack batches "
            f"of up to {fleet.ack_batch:,}")


# -- the door under bad requests (issue 13, defect 7) ----------------------------------------------------

DOOR_CLIENTS = 4  # good producer threads, one keep-alive connection each
DOOR_SECONDS = {True: 4.0, False: 10.0}  # each phase's length, by --quick
DOOR_BAD_PER_S = 30.0
DOOR_JOB_TYPE = "bench.door"
# What a bad client sends, in turn: (headers, body). "\xff" in a header is the byte 0xff (http.client sends
# Latin-1), which is not UTF-8; b"\\ud800" in a body is JSON's escape for a lone surrogate.
_DOOR_SPEC = {"tenant": "acme", "project": "door", "type": DOOR_JOB_TYPE}
_BAD_SPEC = json.dumps({**_DOOR_SPEC, "type": "bench.door.bad"}).encode()  # were it accepted, it is not counted
DOOR_BAD_REQUESTS: tuple[tuple[str, dict[str, str], bytes], ...] = (
    ("/v1/jobs", {"Content-Type": "application/json", "Idempotency-Key": "bad-\xff"}, _BAD_SPEC),
    ("/v1/jobs", {"Content-Type": "application/json"},
     b'{"tenant": "acme", "project": "door", "type": "bench.door.bad", "payload": {"x": "\\ud800"}}'),
    ("/v1/jobs/00000000-0000-4000-8000-000000000000/heartbeat", {"Content-Type": "application/json"},
     b'{"lease_id": "l", "message": "\\ud800"}'),
    ("/v1/jobs/claim", {"Content-Type": "application/json"}, b'{"worker_id": "w", "wait": NaN}'),
    ("/v1/jobs", {"Content-Type": "text/plain"}, _BAD_SPEC),
    ("/v1/jobs", {"Content-Type": "application/json", "Origin": "http://evil.example"}, _BAD_SPEC),
    ("/v1/jobs", {"Content-Type": "application/json"},
     b'{"tenant": "acme", "tenant": "globex", "project": "door", "type": "bench.door.bad"}'),
)


def _door_phase(bench: Bench, label: str, bad_per_s: float) -> dict[str, float]:
    """Good producers enqueue (each with its own Idempotency-Key) for a fixed time against a fresh server, while
    a bad client sends `bad_per_s` bad requests a second (0: none)."""
    import http.client

    seconds = DOOR_SECONDS[bench.quick]
    path = bench.new_path(label, ".duckdb")
    Ledger.open(path, create=True, site_id="bench-site", lock_timeout=1).close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: list[subprocess.Popen] = []
    good_counts = [0] * DOOR_CLIENTS
    refused: list[str] = []
    bad_statuses: dict[str, int] = {}
    stop = threading.Event()
    with open(path.with_suffix(".log"), "w", encoding="utf-8") as log_file:
        try:
            server = subprocess.Popen([sys.executable, "-m", "airgap_orch", "--ledger", str(path), "serve", "--port",
                                       "0", "--no-auth"], stdout=subprocess.PIPE, stderr=log_file,
                                      stdin=subprocess.DEVNULL, text=True, env=env, cwd=bench.workdir)
            children.append(server)
            match = re.search(r"\bat http://([^:/]+):(\d+)", _read_line(server, 60, "the server"))
            if match is None:
                raise RuntimeError("no URL in the server's first line")
            host, port = match.group(1), int(match.group(2))
            threading.Thread(target=_drain, args=(server.stdout, deque(maxlen=50)), daemon=True).start()

            def good(number: int) -> None:
                connection = http.client.HTTPConnection(host, port, timeout=30)
                body = json.dumps(_DOOR_SPEC).encode()
                count = 0
                while not stop.is_set():
                    try:
                        connection.request("POST", "/v1/jobs", body, {
                            "Content-Type": "application/json", "Idempotency-Key": f"{label}-{number}-{count}"})
                        response = connection.getresponse()
                        text = response.read()
                        if response.status == 200:
                            good_counts[number] += 1
                        else:
                            refused.append(f"{response.status} {text[:120]!r}")
                    except (OSError, http.client.HTTPException) as exc:
                        refused.append(repr(exc))
                        connection.close()
                        connection = http.client.HTTPConnection(host, port, timeout=30)
                    count += 1
                connection.close()

            def bad() -> None:
                started, sent = time.monotonic(), 0
                while not stop.is_set():
                    pause = started + sent / bad_per_s - time.monotonic()
                    if pause > 0 and stop.wait(pause):
                        break
                    target, headers, body = DOOR_BAD_REQUESTS[sent % len(DOOR_BAD_REQUESTS)]
                    connection = http.client.HTTPConnection(host, port, timeout=30)
                    try:
                        connection.request("POST", target, body, headers)
                        status = str(connection.getresponse().status)
                    except (OSError, http.client.HTTPException) as exc:
                        status = type(exc).__name__
                    finally:
                        connection.close()
                    bad_statuses[status] = bad_statuses.get(status, 0) + 1
                    sent += 1

            threads = [threading.Thread(target=good, args=(number,)) for number in range(DOOR_CLIENTS)]
            if bad_per_s > 0:
                threads.append(threading.Thread(target=bad))
            with bench.timed() as timer:
                for thread in threads:
                    thread.start()
                time.sleep(seconds)
                stop.set()
                for thread in threads:
                    thread.join(60)
                timer.jobs = sum(good_counts)
            listed = OrchClient(f"http://{host}:{port}").read_pages("jobs.list", {"type": DOOR_JOB_TYPE},
                                                                   limit=100_000)["jobs"]
        finally:
            stop.set()
            _stop_processes(children)
    if len(listed) != sum(good_counts):
        raise RuntimeError(f"{label}: {sum(good_counts)} good enqueues answered 200 but {len(listed)} jobs exist")
    wrong = {status: count for status, count in bad_statuses.items() if not status.startswith("4")}
    if wrong or refused:  # counted in the figures, shown here
        bench.note(f"door {label}: bad requests not answered 4xx: {wrong}; good requests refused: {len(refused)}, "
                   f"e.g. {refused[:2]}")
    return {"good_per_s": timer.rate(), "good_refused": float(len(refused)),
            "bad_per_s": sum(bad_statuses.values()) / timer.seconds, "bad_not_4xx": float(sum(wrong.values()))}


@section("door_bad_requests", "good enqueues/s over loopback with and without 30 bad requests/s mixed in "
         "(invalid UTF-8 keys, lone surrogates, NaN, text/plain, foreign Origin, repeated keys)")
def bench_door_bad_requests(bench: Bench) -> Samples:
    samples: Samples = {key: [] for key in (
        "door_good_per_s", "door_good_with_bad_per_s", "door_with_bad_over_without", "door_good_refused",
        "door_bad_per_s", "door_bad_not_4xx")}
    for run in range(bench.runs):
        order = [(0.0, "clean"), (DOOR_BAD_PER_S, "mixed")]
        figures = {name: _door_phase(bench, f"door-{name}{run}", rate)
                   for rate, name in (order if run % 2 == 0 else order[::-1])}  # alternate which goes first
        samples["door_good_per_s"].append(figures["clean"]["good_per_s"])
        samples["door_good_with_bad_per_s"].append(figures["mixed"]["good_per_s"])
        samples["door_with_bad_over_without"].append(figures["mixed"]["good_per_s"] / figures["clean"]["good_per_s"])
        samples["door_good_refused"].append(figures["clean"]["good_refused"] + figures["mixed"]["good_refused"])
        samples["door_bad_per_s"].append(figures["mixed"]["bad_per_s"])
        samples["door_bad_not_4xx"].append(figures["mixed"]["bad_not_4xx"])
    bench.note(f"door bad requests: {DOOR_CLIENTS} producer threads, each POST /v1/jobs with its own Idempotency-Key "
               f"on one keep-alive connection, for {DOOR_SECONDS[bench.quick]:g} s against a fresh `serve --no-auth` "
               f"subprocess; 'with bad' adds one client sending {DOOR_BAD_PER_S:g} bad requests/s (a new connection "
               f"each, {len(DOOR_BAD_REQUESTS)} kinds in turn; every one must get a 4xx); the two phases alternate "
               "which runs first; door_good_refused counts good requests not answered 200 in both phases (must be 0)")
    return samples



# -- reads beside claims (issue 14, "Reads must not stall writes") ----------------------------------------

READS_QUIET_SECONDS = {True: 10.0, False: 30.0}  # claims alone, half before the reads and half after; by --quick


def _serve(bench: Bench, path: Path, log_file: Any) -> tuple[subprocess.Popen, str]:
    """A `serve --no-auth` subprocess on `path`, and its URL."""
    server = subprocess.Popen([sys.executable, "-m", "airgap_orch", "--ledger", str(path), "serve", "--port", "0",
                               "--no-auth"], stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=bench.workdir)
    match = re.search(r"\bat (http://\S+)", _read_line(server, 120, "the server"))
    if match is None:
        raise RuntimeError("no URL in the server's first line")
    threading.Thread(target=_drain, args=(server.stdout, deque(maxlen=50)), daemon=True).start()
    return server, match.group(1)


def _claims_until(url: str, stop: threading.Event, floor_seconds: float) -> list[float]:
    """Claim one job and ack it, over and over on one keep-alive connection, until `stop` is set (and at least
    `floor_seconds` passed); the latency of each claim in ms, measured here (the client's view)."""
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    headers = {"Content-Type": "application/json"}
    claim = json.dumps({"worker_id": "bench-claimer", "limit": 1, "lease_seconds": 600}).encode()
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        while not stop.is_set() or time.perf_counter() - started < floor_seconds:
            sent = time.perf_counter()
            connection.request("POST", "/v1/jobs/claim", claim, headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            latencies.append((time.perf_counter() - sent) * 1000)
            if response.status != 200 or not answer.get("leases"):
                raise RuntimeError(f"claim answered {response.status}: {str(answer)[:200]}")
            lease = answer["leases"][0]
            connection.request("POST", f"/v1/jobs/{lease['job_id']}/ack",
                               json.dumps({"lease_id": lease["lease_id"]}).encode(), headers)
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"ack answered {response.status}: {response.read()[:200]!r}")
            response.read()
    finally:
        connection.close()
    return latencies


# The reading client (python -c), a process of its own so that its JSON decoding does not share a GIL with the
# claimer: page through every job (GET /v1/jobs, next_cursor), then POST /v1/ledger/verify; print the figures.
READER_PROGRAM = """
import json, sys, time
from airgap_orch.sdk.client import OrchClient
client = OrchClient(sys.argv[1])
started = time.perf_counter()
cursor, pages, jobs = None, 0, 0
while True:
    page = client.call("jobs.list", {"limit": 100_000, "cursor": cursor}, timeout=300)
    pages += 1
    jobs += len(page["jobs"])
    cursor = page.get("next_cursor")  # a server from before paging answers everything at once, without one
    if cursor is None:
        break
listed = time.perf_counter()
verified = client.call("ledger.verify", {}, timeout=3_600)
assert verified.get("ok"), verified
print(json.dumps({"pages": pages, "jobs_listed": jobs, "list_s": listed - started,
                  "verify_s": time.perf_counter() - listed}))
"""


def _read_everything(url: str, figures: dict[str, float], log_file: Any) -> None:
    """Run READER_PROGRAM against the server and add its figures."""
    done = subprocess.run([sys.executable, "-c", READER_PROGRAM, url], stdout=subprocess.PIPE, stderr=log_file,
                          text=True, timeout=3_600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the reader exited {done.returncode}; see {log_file.name}")
    figures.update(json.loads(done.stdout.strip().splitlines()[-1]))


def _p(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _reads_run(bench: Bench, source: Path, label: str, quiet_seconds: float) -> dict[str, float]:
    """One server on a copy of the filled ledger: claims alone for `quiet_seconds` / 2, then claims while a reader
    pages through every job and verifies the ledger, then claims alone again as long (quiet before and after, so a
    drift in the machine's load hits both alike); the WAL's size when the reads end."""
    import shutil

    path = bench.new_path(label, ".duckdb")
    shutil.copyfile(source, path)
    figures: dict[str, float] = {}
    quiet_ms: list[float] = []
    with open(path.with_suffix(".log"), "w", encoding="utf-8") as log_file:
        server, url = _serve(bench, path, log_file)
        try:
            done = threading.Event()
            done.set()  # a quiet phase claims for its floor only
            with bench.timed():
                quiet_ms += _claims_until(url, done, quiet_seconds / 2)
            stop = threading.Event()
            claimed: list[list[float]] = []
            claimer = threading.Thread(target=lambda: claimed.append(_claims_until(url, stop, 0.0)))
            with bench.timed():
                started = time.perf_counter()
                claimer.start()
                try:
                    _read_everything(url, figures, log_file)
                finally:
                    stop.set()
                    claimer.join(600)
                figures["reads_s"] = time.perf_counter() - started
            wal = path.with_name(path.name + ".wal")
            figures["wal_mb"] = wal.stat().st_size / 1e6 if wal.exists() else 0.0
            if not claimed:
                raise RuntimeError(f"{label}: the claimer failed; see {log_file.name}")
            with bench.timed():
                quiet_ms += _claims_until(url, done, quiet_seconds / 2)
        finally:
            _stop_processes([server])
    reads_ms = claimed[0]
    return {**figures, "claims_quiet": float(len(quiet_ms)), "claims_under_reads": float(len(reads_ms)),
            "p50_quiet": _p(quiet_ms, 0.5), "p99_quiet": _p(quiet_ms, 0.99), "max_quiet": max(quiet_ms),
            "p50_under_reads": _p(reads_ms, 0.5), "p99_under_reads": _p(reads_ms, 0.99),
            "max_under_reads": max(reads_ms)}


@section("reads_beside_claims", "claim latency while a reader pages through every job of a large ledger and "
         "verifies it, against claims alone; the WAL's size after the reads")
def bench_reads_beside_claims(bench: Bench) -> Samples:
    n = bench.sizes.reads_jobs
    source = bench.new_path("reads-source", ".duckdb")
    with Ledger.open(source, create=True, site_id="bench-site", lock_timeout=1) as ledger:
        fill(ledger, n, prefix="reads", batch=bench.sizes.load_batch)
    samples: Samples = {key: [] for key in (
        "http_claim_p99_ms_under_reads", "http_claim_p99_ms_quiet", "http_claim_p50_ms_under_reads",
        "http_claim_p50_ms_quiet", "http_claim_max_ms_under_reads", "http_claim_max_ms_quiet", "wal_mb_after_reads",
        "claims_under_reads", "claims_quiet", "reads_list_s",
        "reads_verify_s", "claim_p99_under_reads_over_quiet")}
    quiet_seconds = READS_QUIET_SECONDS[bench.quick]
    for run in range(bench.runs):
        figures = _reads_run(bench, source, f"reads{run}", quiet_seconds)
        if figures["jobs_listed"] < n:
            raise RuntimeError(f"the reader listed {figures['jobs_listed']:.0f} jobs of {n}")
        samples["http_claim_p99_ms_under_reads"].append(figures["p99_under_reads"])
        samples["http_claim_p99_ms_quiet"].append(figures["p99_quiet"])
        samples["http_claim_p50_ms_under_reads"].append(figures["p50_under_reads"])
        samples["http_claim_p50_ms_quiet"].append(figures["p50_quiet"])
        samples["http_claim_max_ms_under_reads"].append(figures["max_under_reads"])
        samples["http_claim_max_ms_quiet"].append(figures["max_quiet"])
        samples["wal_mb_after_reads"].append(figures["wal_mb"])
        samples["claims_under_reads"].append(figures["claims_under_reads"])
        samples["claims_quiet"].append(figures["claims_quiet"])
        samples["reads_list_s"].append(figures["list_s"])
        samples["reads_verify_s"].append(figures["verify_s"])
        samples["claim_p99_under_reads_over_quiet"].append(figures["p99_under_reads"] / figures["p99_quiet"])
    bench.note(f"reads beside claims: a fresh `serve --no-auth` per run on a copy of a ledger of {n:,} queued jobs "
               "(~115-byte payloads); one client claims one job and acks it, over and over on one keep-alive "
               "connection, latency of each claim measured by the client. 'under reads': while another client pages "
               "through every job (GET /v1/jobs, 1,000 a page, following next_cursor) and then runs POST "
               "/v1/ledger/verify; 'quiet': the same claims alone, half of them before the reads and half after, "
               f"{READS_QUIET_SECONDS[bench.quick]:g} s in all. "
               "wal_mb_after_reads: the ledger's .wal file when the reads end (the checkpoint threshold is 64 MiB)")
    if n != 1_000_000:
        bench.note(f"--quick: the reads ledger holds {n:,} jobs, not 1M")
    return samples

WRITER_GROUP = 1_000  # acks queued before the writer starts: one group


def _writer_group(bench: Bench, label: str, broken: int | None) -> tuple[float, float]:
    """acks/s of one group of WRITER_GROUP acks through LedgerWriter (request `broken`, if any, from a caller whose
    tenant text DuckDB cannot take, so the shared transaction fails), and the transactions it took."""
    from airgap_orch.operations import dispatch
    from airgap_orch.operations.writer import LedgerWriter

    with bench.new_ledger(label) as ledger:
        fill(ledger, WRITER_GROUP, prefix=label, batch=WRITER_GROUP)
        leases = core_claim(ledger, WRITER_GROUP)
        good = dispatch.Caller(actor="bench")
        poisoned = dispatch.Caller(actor="bench", tenants=frozenset({"acme\udcff"}))
        writer = LedgerWriter(ledger)
        sizes: list[int] = []
        writer.batch_observers.append(sizes.append)
        futures = [writer.submit("jobs.ack", {"job_id": lease["job_id"], "lease_id": lease["lease_id"]},
                                 poisoned if number == broken else good) for number, lease in enumerate(leases)]
        with bench.timed() as timer:
            writer.start()
            failed = 0
            for future in futures:
                if future.exception(120) is not None:
                    failed += 1
            timer.jobs = WRITER_GROUP
        writer.stop()
    if failed != (0 if broken is None else 1):
        raise RuntimeError(f"{label}: {failed} acks failed")
    return timer.rate(), float(len(sizes))


def core_claim(ledger: Ledger, count: int) -> list[dict[str, Any]]:
    with ledger.transaction() as tx:
        return claims.claim(tx, worker_id=WORKER_ID, limit=count, lease_seconds=600)


@section("writer_isolation", "one group of 1,000 acks through the writer, clean and with one ack that breaks "
         "the shared transaction")
def bench_writer_isolation(bench: Bench) -> Samples:
    samples: Samples = {key: [] for key in ("writer_group_acks_per_s", "writer_group_one_broken_acks_per_s",
                                            "writer_group_one_broken_transactions")}
    for run in range(bench.runs):
        clean, _ = _writer_group(bench, f"writer-clean{run}", None)
        broken, transactions = _writer_group(bench, f"writer-broken{run}", WRITER_GROUP * 2 // 3)
        samples["writer_group_acks_per_s"].append(clean)
        samples["writer_group_one_broken_acks_per_s"].append(broken)
        samples["writer_group_one_broken_transactions"].append(transactions)
    bench.note(f"writer isolation: {WRITER_GROUP:,} jobs claimed in one statement, then {WRITER_GROUP:,} jobs.ack "
               "requests queued before LedgerWriter starts, so they reach it as one group; timed from start() to "
               "the last answer. 'one broken': ack number 667 comes from a caller whose tenant text is not UTF-8, "
               "which fails the group's shared statement in DuckDB; transactions = group commits attempted")
    return samples


BUNDLE_FINISHED_SHARE = 2  # 1 in this many jobs is claimed and acked before the export (finished, 3 history entries)


def _bundle_keys_and_root(workdir: Path) -> tuple[dict[str, Any], Path]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from airgap_orch.bundle import trust
    from airgap_orch.bundle.keys import KeyRole

    keys = {name: Ed25519PrivateKey.generate() for name in ("root", "ts", "site")}
    root = trust.build_root(root=KeyRole.of([keys["root"].public_key()], 1),
                            targets=KeyRole.of([keys["root"].public_key()], 1),
                            timestamp=KeyRole.of([keys["ts"].public_key()], 1),
                            snapshot=KeyRole.of([keys["ts"].public_key()], 1),
                            sites={"bench-site": KeyRole.of([keys["site"].public_key()], 1)},
                            expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
    path = workdir / "bench-root.json"
    path.write_bytes(trust.sign_root(root, keys["root"]))
    return keys, path


def _raw_export(ledger: Ledger, folder: Path) -> int:
    """The raw pipeline on the same data: DuckDB COPY of each export query to Parquet zstd, then sha256 of each
    file. Returns the bytes written."""
    import hashlib

    from airgap_orch.bundle.tables import TABLES
    from airgap_orch.ledger import sql

    folder.mkdir()
    total = 0
    for spec in TABLES:
        # The handoffs query names the bundle it belongs to: none here (a bundle without hand-off: no rows).
        text = (sql.queries()[spec.query].replace("$tenant", "NULL::VARCHAR")
                .replace("$target_site", "'bench-target'").replace("$sequence", "0"))
        lines = text.strip().splitlines()
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
            lines.pop()  # a comment that opens the next block of queries.sql ends up after the last one
        query = "\n".join(lines).rstrip().rstrip(";")
        target = folder / f"{spec.name}.parquet"
        ledger._con.execute(f"COPY ({query}) TO '{target}' (FORMAT PARQUET, COMPRESSION ZSTD)")
        digest = hashlib.sha256()
        with target.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        total += target.stat().st_size
    return total


def _bundle_bench() -> Any:
    """scripts/bench_bundle.py (beside this file): the import child and the raw load."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_bundle

    return bench_bundle


@section("bundle_export", "bundle export and import (ledger snapshot -> Parquet zstd members -> signed bundle, "
         "self-checked; then verify + import into a fresh ledger in a child process, with its peak RSS) vs the raw "
         "pipeline (DuckDB COPY of the same queries to Parquet zstd + sha256; INSERT ... FROM read_parquet), same "
         "ledger, same run")
def bench_bundle_export(bench: Bench) -> Samples:
    from airgap_orch.operations import bundle_import
    from airgap_orch.operations import bundles as bundle_ops
    from airgap_orch.operations import trust as trust_ops

    helper = _bundle_bench()
    jobs = bench.sizes.bundle_jobs
    samples: Samples = {"bundle_export_jobs_per_s": [], "bundle_raw_jobs_per_s": [], "bundle_import_jobs_per_s": [],
                        "bundle_raw_load_jobs_per_s": [], "bundle_peak_rss_mb": []}
    keys, root = _bundle_keys_and_root(bench.workdir)
    started = time.perf_counter()
    with bench.new_ledger("bundle-export") as ledger:
        fill(ledger, jobs, prefix="bundle", batch=bench.sizes.load_batch)
        claim_ack(ledger, jobs // BUNDLE_FINISHED_SHARE, 1_000, Timer())
        trust_ops.pin(ledger, [root])
        ledger._con.execute("CHECKPOINT")
        built = time.perf_counter() - started
        sizes = {}
        for run in range(bench.runs):
            # Bundle and raw take turns, so load on a shared machine hits them alike.
            out = bench.new_path(f"export-{run}", ".bundle")
            with bench.timed() as timer:
                written = bundle_ops.export(ledger, out=out, target_site="bench-target",
                                            signing_keys=[bundle_ops.SigningKey("site", keys["site"])],
                                            timestamp_keys=[bundle_ops.SigningKey("ts", keys["ts"])])
                timer.jobs = jobs
            samples["bundle_export_jobs_per_s"].append(timer.rate())
            sizes["bundle"] = written["size"]
            raw = bench.new_path(f"raw-{run}", "")
            with bench.timed() as timer:
                sizes["raw"] = _raw_export(ledger, raw)
                timer.jobs = jobs
            samples["bundle_raw_jobs_per_s"].append(timer.rate())
            target = bench.new_path(f"import-{run}", ".duckdb")
            if bench.profiling:  # in this process, so cProfile and the statement timer see it
                with Ledger.open(target, create=True, site_id="bench-target", lock_timeout=1) as imported:
                    with bench.timed() as timer:
                        bundle_import.import_bundle(imported, out, trust_root=Path(root).read_bytes(), actor="bench")
                        timer.jobs = jobs
                samples["bundle_import_jobs_per_s"].append(timer.rate())
            else:
                child = helper.run_import_child(target, out, root, "bench-target")
                if child["mirror_jobs"] != jobs:
                    raise RuntimeError(f"the import mirrored {child['mirror_jobs']} jobs of {jobs}")
                samples["bundle_import_jobs_per_s"].append(jobs / child["import_seconds"])
                samples["bundle_peak_rss_mb"].append(child["peak_rss_mb"])
                sizes["rss_start_mb"], sizes["hwm_rss_mb"] = child["rss_start_mb"], child["hwm_rss_mb"]
                if child["inherited_max_rss"]:
                    bench.note("bundle import: the child's ru_maxrss at start was far above its RSS (inherited "
                               "over exec); bundle_peak_rss_mb overstates")
            raw_db = bench.new_path(f"raw-load-{run}", ".duckdb")
            with bench.timed() as timer:
                loaded = helper.raw_load(raw, raw_db)
                timer.jobs = jobs
            samples["bundle_raw_load_jobs_per_s"].append(timer.rate())
            for used in (out, target, raw_db, *raw.iterdir()):  # disk: a 1M-job run writes ~1 GB per round
                used.unlink(missing_ok=True)
                Path(f"{used}.wal").unlink(missing_ok=True)
        rows = written["rows"]
    bench.note(f"bundle export: {jobs:,} jobs ({jobs // BUNDLE_FINISHED_SHARE:,} finished), {rows:,} rows in all "
               f"tables (ledger built in {built:.0f} s, outside the figures); bundle {sizes['bundle'] / 1e6:.1f} MB "
               f"(self-checked against the pinned root), raw Parquet {sizes['raw'] / 1e6:.1f} MB; jobs/s = jobs in "
               "the ledger / seconds for the whole export")
    if "rss_start_mb" in sizes:
        bench.note(f"bundle import: `import_bundle` (private copy, verification against the root, plan with the "
                   f"history chain recomputed, one write transaction) into a fresh ledger, in a child process "
                   f"started for it and timed inside it; bundle_peak_rss_mb = its ru_maxrss minus its RSS at start "
                   f"({sizes['rss_start_mb']:.0f} MB, after its imports, before the ledger opens; VmHWM gives "
                   f"{sizes['hwm_rss_mb']:.0f} MB above it). Raw load: INSERT ... FROM read_parquet of the raw "
                   f"Parquet files ({loaded:,} rows) into a fresh DuckDB file, one transaction")
    return samples


# -- crash restart ---------------------------------------------------------------------------------

CRASH_CYCLES = 20
CRASH_JOBS_PER_CYCLE = {False: 1_500, True: 300}  # by --quick; 20 x 1,500 = 30k, the issue's 29k single enqueues
# The crash program (python -c): open the ledger (timed, WAL sizes around it), say "opened", enqueue COUNT jobs one
# transaction each, say "wrote", then wait for SIGKILL. CHECKPOINT=0 opens as before the fix (no checkpoint of a
# recovered WAL) through the ledger's private switch.
CRASH_PROGRAM = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from bench import job_specs
from airgap_orch.ledger import Ledger, store
from airgap_orch.operations import jobs as jobs_ops
from airgap_orch.operations import ledger as ledger_ops
path, count, prefix, checkpoint = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
store._RECOVER_WITHOUT_CHECKPOINT = not checkpoint
wal = store.wal_path(path)
size = lambda: wal.stat().st_size if wal.exists() else 0
wal_before = size()
started = time.perf_counter()
ledger = Ledger.open(path, lock_timeout=30)
seconds = time.perf_counter() - started
jobs = sum(ledger_ops.info(ledger)["jobs"].values())
print(f"opened {seconds:.6f} {wal_before} {size()} {jobs}", flush=True)
for spec in job_specs(count, prefix=prefix):
    jobs_ops.enqueue(ledger, spec)
print("wrote", flush=True)
sys.stdin.readline()
"""


def _crash_cycle(path: Path, count: int, prefix: str, checkpoint: bool) -> tuple[float, int, int, int]:
    """One process life: open (the restart), `count` single enqueues, SIGKILL. Returns (open seconds, WAL bytes
    before the open, WAL bytes after it, jobs in the ledger at the open)."""
    process = subprocess.Popen([sys.executable, "-c", CRASH_PROGRAM, str(path), str(count), prefix,
                                "1" if checkpoint else "0", str(Path(__file__).resolve().parent)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _, seconds, wal_before, wal_after, jobs = _read_line(process, 300, "the crash program").split()
        if count:
            _read_line(process, 600, "the crash program")
    finally:
        process.kill()  # SIGKILL: no close, no checkpoint
        process.wait(30)
        _stop_processes([process])
    return float(seconds), int(wal_before), int(wal_after), int(jobs)


@section("crash_restart", f"restart (ledger open) after each of {CRASH_CYCLES} SIGKILLs of a process doing single "
         "enqueues, with and without the checkpoint of the recovered WAL")
def bench_crash_restart(bench: Bench) -> Samples:
    count = CRASH_JOBS_PER_CYCLE[bench.quick]
    samples: Samples = {}
    # per variant: [run][crash] -> (open s, WAL bytes before the open, after it)
    cycles: dict[str, list[list[tuple[float, int, int]]]] = {"checkpoint": [], "no_checkpoint": []}
    for run in range(bench.runs):
        for variant in cycles:  # interleaved, so drift in machine load hits both alike
            path = bench.new_path(f"crash-{variant}", ".duckdb")
            Ledger.open(path, create=True, site_id="bench-site", lock_timeout=1).close()
            seen = []
            for crash in range(CRASH_CYCLES + 1):  # the last open is the restart after the last crash
                opened = _crash_cycle(path, count if crash < CRASH_CYCLES else 0, f"crash{run}-{crash}",
                                      variant == "checkpoint")
                if opened[3] != crash * count:
                    raise RuntimeError(f"{variant}: {opened[3]} jobs after {crash} crashes, expected {crash * count}")
                seen.append(opened[:3])
            cycles[variant].append(seen)
            Ledger.open(path, lock_timeout=1).close()  # a clean close: the next open finds no WAL
            started = time.perf_counter()
            Ledger.open(path, lock_timeout=1).close()
            clean_seconds = time.perf_counter() - started
            suffix = "" if variant == "checkpoint" else "_no_checkpoint"
            restarts = seen[1:]  # the opens after a crash (the first open of all finds a clean ledger)
            for metric, value in (
                    (f"restart_after_1_crash{suffix}_s", restarts[0][0]),
                    (f"restart_median_of_{CRASH_CYCLES}_crashes{suffix}_s", statistics.median(r[0] for r in restarts)),
                    (f"restart_slowest_of_{CRASH_CYCLES}_crashes{suffix}_s", max(r[0] for r in restarts)),
                    (f"wal_largest_at_restart{suffix}_bytes", max(r[1] for r in restarts)),
                    (f"wal_largest_after_restart{suffix}_bytes", max(r[2] for r in restarts)),
                    (f"clean_open_{CRASH_CYCLES * count}_jobs{suffix}_s", clean_seconds)):
                samples.setdefault(metric, []).append(value)
    print(f"crash_restart: {count:,} single enqueues per process life, then SIGKILL; medians of {bench.runs} "
          "run(s) per crash", file=sys.stderr)
    print(f"{'crashes':>7} | {'WAL at open':>12} {'open s':>8} {'WAL after':>10} | {'WAL at open':>12} "
          f"{'open s':>8} {'WAL after':>10}   (checkpoint | no checkpoint)", file=sys.stderr)
    for crash in range(1, CRASH_CYCLES + 1):
        row = []
        for variant in cycles:
            opened, before, after = (statistics.median(seen[crash][i] for seen in cycles[variant]) for i in range(3))
            row.append(f"{before:>12,.0f} {opened:>8.3f} {after:>10,.0f}")
        print(f"{crash:>7} | {row[0]} | {row[1]}", file=sys.stderr)
    bench.note(f"crash_restart: a child process opens the ledger (timed inside it: Ledger.open only, not the "
               f"interpreter start), enqueues {count:,} jobs one transaction each (bench specs with idempotency "
               f"keys), and is SIGKILLed; {CRASH_CYCLES} times, then one more open. no_checkpoint opens as before the "
               f"fix: its WAL grows until a commit passes the ledger's checkpoint threshold ({CHECKPOINT_THRESHOLD}) "
               "and DuckDB checkpoints on its own. clean open: the same ledger opened again after a clean close")
    return samples


def derive(medians: dict[str, float]) -> dict[str, float]:
    """Ratios from medians (ratio of medians, not median of per-run ratios)."""
    out = {}
    ratios = (("claim_rate_1m_over_10k", "claim_rate_1m_jobs_per_s", "claim_rate_10k_jobs_per_s"),
              ("ours_vs_huey_ratio", "ours_same_work_jobs_per_s", "peer_huey_sqlite_jobs_per_s"),
              ("ours_separate_vs_huey_ratio", "ours_same_work_separate_jobs_per_s", "peer_huey_sqlite_jobs_per_s"),
              ("group_commit_speedup", "http_default_fleet_jobs_per_s",
               "http_default_fleet_no_group_commit_jobs_per_s"),
              ("group_commit_speedup_batching_fleet", "http_end_to_end_jobs_per_s", "http_no_group_commit_jobs_per_s"),
              ("http_over_in_process", "http_end_to_end_jobs_per_s", "in_process_jobs_per_s"),
              ("go_over_python_fleet", "http_go_fleet_jobs_per_s", "http_python_fleet_jobs_per_s"),
              ("go_over_python_fleet_cpu", "http_go_fleet_worker_cpu_s_per_1k_jobs",
               "http_python_fleet_worker_cpu_s_per_1k_jobs"),
              ("flow_limited_over_plain", "flow_limited_jobs_per_s", "flow_plain_jobs_per_s"),
              ("bulk_enqueue_over_floor", "bulk_enqueue_jobs_per_s", "floor_enqueue_jobs_per_s"),
              ("claim_ack_batch100_over_floor", "claim_ack_batch100_jobs_per_s",
               "floor_claim_ack_batch100_jobs_per_s"),
              # export time / raw time (rates: raw over ours)
              ("bundle_export_over_raw", "bundle_raw_jobs_per_s", "bundle_export_jobs_per_s"),
              # verify + import time / raw load time
              ("bundle_import_over_raw", "bundle_raw_load_jobs_per_s", "bundle_import_jobs_per_s"))
    for ratio, top, bottom in ratios:
        if medians.get(bottom) and top in medians:
            out[ratio] = medians[top] / medians[bottom]
    return out


# -- machine ---------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                            "duckdb": duckdb.__version__, "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(Exception):
        import pyarrow

        info["pyarrow"] = pyarrow.__version__
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["huey"] = version("huey")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "airgap_orch"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["core_commit"] = head + ("+uncommitted" if dirty else "")
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


# -- profile ---------------------------------------------------------------------------------------

class StatementTimer:
    """Wall time per named ledger query, and BEGIN/COMMIT, by wrapping the ledger's methods for one run.

    Only used by --profile and only counted inside measured blocks; the real methods run underneath.
    Times are taken around the call into DuckDB: for `rows*` the fetch is included, for `execute*`
    fetching from the returned cursor is not (DuckDB has run the statement by then)."""

    def __init__(self) -> None:
        self.active = False
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._local = threading.local()
        self._saved: list[tuple[type, str, Any]] = []

    def _add(self, key: str, seconds: float) -> None:
        if self.active:
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds
            self.calls[key] = self.calls.get(key, 0) + 1

    def _wrap(self, owner: type, attribute: str, label: str) -> None:
        original = owner.__dict__.get(attribute)
        if original is None:  # the core changed shape; time what still exists
            return
        timer = self

        def wrapper(this: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            if getattr(timer._local, "depth", 0):
                return original(this, name, *args, **kwargs)
            timer._local.depth = 1
            started = time.perf_counter()
            try:
                return original(this, name, *args, **kwargs)
            finally:
                timer._local.depth = 0
                timer._add(f"{label}:{name}", time.perf_counter() - started)

        self._saved.append((owner, attribute, original))
        setattr(owner, attribute, wrapper)

    def install(self) -> None:
        from airgap_orch.ledger import Transaction

        self._wrap(Transaction, "execute", "sql")
        self._wrap(Transaction, "execute_with", "sql+arrow")
        self._wrap(Transaction, "rows", "sql+fetch")
        self._wrap(Transaction, "append", "appender")
        original = Ledger.__dict__["transaction"]
        timer = self

        @contextlib.contextmanager
        def transaction(this: Ledger) -> Iterator[Any]:
            manager = original(this)
            started = time.perf_counter()
            tx = manager.__enter__()
            timer._add("tx:BEGIN", time.perf_counter() - started)
            try:
                yield tx
                tx.write_history()  # timed as its own statement, not as part of the COMMIT
            except BaseException:
                if not manager.__exit__(*sys.exc_info()):
                    raise
            else:
                started = time.perf_counter()
                manager.__exit__(None, None, None)
                timer._add("tx:COMMIT", time.perf_counter() - started)

        self._saved.append((Ledger, "transaction", original))
        Ledger.transaction = transaction  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for owner, attribute, original in reversed(self._saved):
            setattr(owner, attribute, original)
        self._saved.clear()


def _function_table(stats: pstats.Stats, sort_index: int, top: int, trips: int) -> list[str]:
    """pstats rows as ms per round trip. sort_index: 3 = cumulative, 2 = own time."""
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][sort_index])[:top]  # type: ignore[attr-defined]
    header = "function (cProfile inflates Python-heavy rows)"
    lines = [f"{header:64} {'calls/trip':>10} {'cum ms/trip':>11} {'own ms/trip':>11}"]
    for (filename, line, function), (_, calls, own, cumulative, _) in rows:
        where = f"{'/'.join(Path(filename).parts[-2:])}:{line}({function})" if line else function
        lines.append(f"{where[:64]:64} {calls / trips:>10.2f} {cumulative * 1000 / trips:>11.3f} "
                     f"{own * 1000 / trips:>11.3f}")
    return lines


def profile(name: str, sizes: Sizes, workdir: Path, out: io.TextIOBase, dump: Path | None = None) -> None:
    function = SECTIONS[name]
    # Pass 1 without cProfile: wall time per round trip and per statement (cProfile inflates Python code).
    statements = StatementTimer()
    plain = Bench(workdir=workdir, sizes=sizes, runs=1, quick=False, profiling=True, statements=statements)
    statements.install()
    try:
        function(plain)
    finally:
        statements.uninstall()
    # Pass 2 under cProfile, enabled only inside the measured blocks.
    profiler = cProfile.Profile()
    profiled = Bench(workdir=workdir, sizes=sizes, runs=1, quick=False, profiling=True, profiler=profiler)
    function(profiled)
    if dump is not None:
        profiler.dump_stats(str(dump))

    trips = max(plain.measured_batches, 1)
    rate = plain.measured_jobs / plain.measured_seconds
    print(f"== profile {name}: {plain.measured_jobs:,} jobs in {plain.measured_batches:,} round trips, "
          f"{plain.measured_seconds:.3f} s measured ({rate:,.0f} jobs/s), "
          f"{plain.measured_seconds * 1000 / trips:.3f} ms per round trip; process CPU "
          f"{plain.measured_cpu_seconds:.3f} s; load average {_loadavg()}", file=out)
    print("   (a round trip = one enqueue_batch call, or one claim + ack of a batch; the claim_ack sections run the "
          "separate and the joined loop, so their figures average the two)", file=out)
    print("\n-- pass 1, no cProfile: wall time per ledger call --", file=out)
    print(f"{'statement':44} {'calls':>7} {'total s':>8} {'ms/call':>8} {'ms/trip':>9} {'share':>6}", file=out)
    accounted = 0.0
    for key, seconds in sorted(statements.seconds.items(), key=lambda item: -item[1]):
        accounted += seconds
        calls = statements.calls[key]
        print(f"{key:44} {calls:>7,} {seconds:>8.3f} {seconds * 1000 / calls:>8.3f} "
              f"{seconds * 1000 / trips:>9.3f} {seconds / plain.measured_seconds:>6.1%}", file=out)
    rest = plain.measured_seconds - accounted
    print(f"{'python outside ledger calls':44} {'':>7} {rest:>8.3f} {'':>8} {rest * 1000 / trips:>9.3f} "
          f"{rest / plain.measured_seconds:>6.1%}", file=out)

    ptrips = max(profiled.measured_batches, 1)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    print(f"\n-- pass 2, cProfile ({profiled.measured_seconds:.3f} s measured, "
          f"{profiled.measured_seconds * 1000 / ptrips:.3f} ms per round trip with profiler overhead): "
          "top 25 by cumulative time --", file=out)
    print("\n".join(_function_table(stats, 3, 25, ptrips)), file=out)
    print("\n-- pass 2, cProfile: top 15 by own time --", file=out)
    print("\n".join(_function_table(stats, 2, 15, ptrips)), file=out)


# -- report ----------------------------------------------------------------------------------------

ROWS = (
    ("bulk_enqueue_jobs_per_s", "bulk enqueue, keyed (jobs/s)"),
    ("bulk_enqueue_unkeyed_jobs_per_s", "bulk enqueue, no idempotency key (jobs/s)"),
    ("claim_ack_batch1_jobs_per_s", "claim+ack batch 1 (jobs/s)"),
    ("claim_ack_batch1_joined_jobs_per_s", "  joined: ack + next claim in one tx (jobs/s)"),
    ("claim_ack_batch10_jobs_per_s", "claim+ack batch 10 (jobs/s)"),
    ("claim_ack_batch10_joined_jobs_per_s", "  joined: ack + next claim in one tx (jobs/s)"),
    ("claim_ack_batch100_jobs_per_s", "claim+ack batch 100 (jobs/s)"),
    ("claim_ack_batch100_joined_jobs_per_s", "  joined: ack + next claim in one tx (jobs/s)"),
    ("claim_rate_10k_jobs_per_s", "claim+ack b100, 10k-job ledger (jobs/s)"),
    ("claim_rate_1m_jobs_per_s", "claim+ack b100, large ledger (jobs/s)"),
    ("claim_rate_1m_over_10k", "claim rate large / 10k"),
    ("load_large_ledger_jobs_per_s", "large ledger bulk load (jobs/s)"),
    ("floor_enqueue_jobs_per_s", "DuckDB floor: enqueue statements only (jobs/s)"),
    ("floor_claim_ack_batch100_jobs_per_s", "DuckDB floor: claim, ack statements b100 (jobs/s)"),
    ("floor_joined_batch100_jobs_per_s", "  joined: ack_and_claim statement (jobs/s)"),
    ("floor_minimal_claim_ack_batch100_jobs_per_s", "  3-column table, claim+ack b100 (jobs/s)"),
    ("bulk_enqueue_over_floor", "bulk enqueue / its DuckDB floor"),
    ("claim_ack_batch100_over_floor", "claim+ack b100 / its DuckDB floor"),
    ("peer_huey_sqlite_jobs_per_s", "Huey/SQLite enq+deq+exec (jobs/s)"),
    ("peer_huey_enqueue_jobs_per_s", "  Huey enqueue only (jobs/s)"),
    ("peer_huey_dequeue_execute_jobs_per_s", "  Huey dequeue+execute only (jobs/s)"),
    ("ours_same_work_jobs_per_s", "ours, same N: enq + b100 claim+ack, joined (jobs/s)"),
    ("ours_same_work_enqueue_jobs_per_s", "  ours enqueue only (jobs/s)"),
    ("ours_same_work_claim_ack_jobs_per_s", "  ours claim+ack only (jobs/s)"),
    ("ours_same_work_separate_jobs_per_s", "ours, claim and ack in separate tx (jobs/s)"),
    ("ours_vs_huey_ratio", "ours / Huey"),
    ("ours_separate_vs_huey_ratio", "ours, separate tx / Huey"),
    ("http_end_to_end_jobs_per_s", "HTTP end to end, group commit (jobs/s)"),
    ("http_claim_p50_ms", "  claim latency p50 (ms, /metrics histogram)"),
    ("http_claim_p99_ms", "  claim latency p99 (ms, /metrics histogram)"),
    ("http_claim_mean_ms", "  claim latency mean (ms)"),
    ("http_claims", "  claim requests while timing"),
    ("http_requests_per_commit", "  requests per ledger transaction (mean)"),
    ("http_commits_per_s", "  ledger transactions per s"),
    ("http_no_group_commit_jobs_per_s", "HTTP end to end, --no-group-commit (jobs/s)"),
    ("http_no_group_commit_claim_p50_ms", "  claim latency p50 (ms)"),
    ("http_no_group_commit_claim_p99_ms", "  claim latency p99 (ms)"),
    ("http_no_group_commit_requests_per_commit", "  requests per ledger transaction (mean)"),
    ("http_no_group_commit_commits_per_s", "  ledger transactions per s"),
    ("group_commit_speedup_batching_fleet", "group commit / no group commit (batching fleet)"),
    ("http_default_fleet_jobs_per_s", "HTTP, 8 default SDK workers, group commit (jobs/s)"),
    ("http_default_fleet_claim_p50_ms", "  claim latency p50 (ms)"),
    ("http_default_fleet_claim_p99_ms", "  claim latency p99 (ms)"),
    ("http_default_fleet_requests_per_commit", "  requests per ledger transaction (mean)"),
    ("http_default_fleet_no_group_commit_jobs_per_s", "HTTP, 8 default SDK workers, --no-group-commit (jobs/s)"),
    ("http_default_fleet_no_group_commit_claim_p50_ms", "  claim latency p50 (ms)"),
    ("http_default_fleet_no_group_commit_claim_p99_ms", "  claim latency p99 (ms)"),
    ("group_commit_speedup", "group commit / no group commit (default fleet)"),
    ("in_process_jobs_per_s", "in-process b100 claim+ack, same N (jobs/s)"),
    ("http_over_in_process", "HTTP end to end / in-process"),
    ("flow_plain_jobs_per_s", "claim+ack b100, no limits (jobs/s)"),
    ("flow_limited_jobs_per_s", "claim+ack b100, rate+concurrency+quota on every job (jobs/s)"),
    ("flow_limited_over_plain", "with limits / without"),
    ("flow_10_tenants_jobs_per_s", "claim+ack b100, 10 tenants sharing a queue (jobs/s)"),
    ("door_good_per_s", "HTTP good enqueues, 4 clients (requests/s)"),
    ("door_good_with_bad_per_s", "  with 30 bad requests/s mixed in (requests/s)"),
    ("door_with_bad_over_without", "  with bad / without"),
    ("door_good_refused", "  good requests refused (must be 0)"),
    ("door_bad_per_s", "  bad requests sent (per s)"),
    ("door_bad_not_4xx", "  bad requests not answered 4xx (must be 0)"),
    ("writer_group_acks_per_s", "writer: one group of 1,000 acks (acks/s)"),
    ("writer_group_one_broken_acks_per_s", "  with one ack that breaks the group (acks/s)"),
    ("writer_group_one_broken_transactions", "  transactions attempted for it"),
    ("bundle_export_jobs_per_s", "bundle export, full (jobs/s)"),
    ("bundle_raw_jobs_per_s", "  raw: DuckDB COPY to Parquet zstd + sha256 (jobs/s)"),
    ("bundle_export_over_raw", "bundle export time / raw time"),
    ("bundle_import_jobs_per_s", "bundle verify + import, full (jobs/s)"),
    ("bundle_raw_load_jobs_per_s", "  raw: INSERT ... FROM read_parquet (jobs/s)"),
    ("bundle_import_over_raw", "bundle verify + import time / raw load time"),
    ("bundle_peak_rss_mb", "bundle import peak RSS above its start (MB)"),
    ("restart_after_1_crash_s", "ledger open after the 1st SIGKILL (s)"),
    ("restart_median_of_20_crashes_s", "  median of the opens after 20 SIGKILLs (s)"),
    ("restart_slowest_of_20_crashes_s", "  slowest of those 20 (s)"),
    ("restart_slowest_of_20_crashes_no_checkpoint_s", "  slowest, without the recovery checkpoint (s)"),
    ("wal_largest_at_restart_bytes", "largest WAL found at those opens (bytes)"),
    ("wal_largest_at_restart_no_checkpoint_bytes", "  without the recovery checkpoint (bytes)"),
    ("http_claim_p99_ms_quiet", "claim p99, claims alone (ms, client-side)"),
    ("http_claim_p99_ms_under_reads", "claim p99 beside a reader listing + verifying (ms)"),
    ("claim_p99_under_reads_over_quiet", "  under reads / quiet (per run)"),
    ("http_claim_p50_ms_quiet", "claim p50, claims alone (ms)"),
    ("http_claim_p50_ms_under_reads", "claim p50 beside the reader (ms)"),
    ("http_claim_max_ms_quiet", "slowest claim, claims alone (ms)"),
    ("http_claim_max_ms_under_reads", "slowest claim beside the reader (ms)"),
    ("claims_quiet", "  claims in the quiet phase"),
    ("claims_under_reads", "  claims while the reader read"),
    ("reads_list_s", "  reader: every job, page by page (s)"),
    ("reads_verify_s", "  reader: ledger verify (s)"),
    ("wal_mb_after_reads", "WAL after the reads (MB)"),
)


def _number(value: float) -> str:
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def render_table(result: dict[str, Any]) -> str:
    lines = [f"airgap-orch benchmark  {result['date']}  ({'quick' if result['quick'] else 'full'} run, "
             f"medians of {result['runs']}, {result['elapsed_s']:.0f} s)"]
    m = result["machine"]
    lines.append(f"machine: {m.get('nproc')} cpu ({m.get('cpu_model', '?')}), "
                 f"{m.get('memory_gib', '?')} GiB, python {m['python']}, duckdb {m['duckdb']}, "
                 f"core {m.get('core_commit', '?')}")
    lines.append("")
    lines.append(f"{'metric':46} {'median':>12} {'target':>10} {'status':>8}   runs")
    samples = result["samples"]
    for key, label in ROWS:
        if result.get(key) is None:
            continue
        target = TARGETS.get(key)
        target_text, status = "", ""
        if target:
            target_text = f"{target[0]} {_number(target[1])}"
            status = "met" if _meets(result[key], *target) else "NOT MET"
        runs = " / ".join(_number(value) for value in samples.get(key, []))
        lines.append(f"{label:46} {_number(result[key]):>12} {target_text:>10} {status:>8}   {runs}")
    lines.append("")
    lines.append(f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}; "
                 f"process CPU s per wall s while measuring: {result['cpu_over_wall']}")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


def _meets(value: float, op: str, target: float) -> bool:
    return value <= target if op == "<=" else value >= target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="short run: smaller N, 200k-job large ledger")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--sections", help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--profile", metavar="SECTION", choices=sorted(SECTIONS),
                        help="run one section once under cProfile and print where the time goes")
    parser.add_argument("--profile-out", type=Path, metavar="FILE",
                        help="with --profile: also write the raw cProfile stats (for pstats/snakeviz)")
    parser.add_argument("--bundle-jobs", type=int, metavar="N",
                        help="jobs in the bundle section's ledger (default 1M; 100k with --quick)")
    parser.add_argument("--workdir", type=Path, help="directory for ledger files (default: a fresh temp dir)")
    parser.add_argument("--list", action="store_true", help="list sections and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, text in SECTION_HELP.items():
            print(f"{name:22} {text}")
        return 0
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    chosen = list(SECTIONS) if not args.sections else [name.strip() for name in args.sections.split(",")]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    sizes = QUICK if args.quick else FULL
    if args.bundle_jobs:
        sizes = dataclasses.replace(sizes, bundle_jobs=args.bundle_jobs)
    # SIGTERM unwinds like Ctrl-C, so finally blocks stop child processes (http_end_to_end) and temp dirs go.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))

    with contextlib.ExitStack() as stack:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="airgap-bench-", dir=args.workdir))
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airgap-bench-")))
        if args.profile:
            profile(args.profile, sizes, workdir, sys.stdout, args.profile_out)
            return 0
        bench = Bench(workdir=workdir, sizes=sizes, runs=args.runs, quick=args.quick)
        samples: Samples = {}
        cpu_over_wall: dict[str, float] = {}
        load_before = _loadavg()
        machine_info = machine()  # before the run: the core commit it started on
        started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        started = time.perf_counter()
        for name in chosen:
            section_started = time.perf_counter()
            wall, cpu = bench.measured_seconds, bench.measured_cpu_seconds
            samples.update(SECTIONS[name](bench))
            if bench.measured_seconds > wall:
                cpu_over_wall[name] = round((bench.measured_cpu_seconds - cpu) / (bench.measured_seconds - wall), 2)
            if not args.json:
                print(f"[{name} done in {time.perf_counter() - section_started:.1f} s]", file=sys.stderr)
    medians = {key: statistics.median(values) for key, values in samples.items() if values}
    result: dict[str, Any] = {
        "date": started_at,  # when the run started; elapsed_s says how long it took
        "quick": args.quick, "runs": args.runs, "sections": chosen,
        **{key: round(value, 3) for key, value in medians.items()},
        **{key: round(value, 4) for key, value in derive(medians).items()},
        "targets": {key: f"{op} {value:g}" for key, (op, value) in TARGETS.items()},
        "sizes": sizes.__dict__,
        "machine": machine_info,
        "samples": {key: [round(value, 3) for value in values] for key, values in samples.items()},
        "notes": bench.notes,
        # CPU seconds of this process per wall second while measuring: well below 1 means waiting
        # (fsync, or other processes on the shared machine); loadavg says how busy the machine was.
        "cpu_over_wall": cpu_over_wall,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    for key in REQUIRED_KEYS:  # stable shape for scripts, also when --sections skipped some
        result.setdefault(key, None)
    result["targets_met"] = {key: _meets(result[key], op, value)
                             for key, (op, value) in TARGETS.items() if result.get(key) is not None}
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=None))
    else:
        print(render_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
