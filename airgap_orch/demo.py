"""The demo scenario: two tenants, a few dozen jobs, a dead letter, and a worker killed mid-job.

1. Create a fresh ledger and enqueue jobs for two tenants: advisories, VEX documents, image scans and
   one export per tenant whose target never answers (max_attempts 3), plus one long scan.
2. Start worker A as a subprocess with a short lease. When the long scan writes its start marker,
   kill worker A with SIGKILL: it holds that job's lease and can never report it.
3. Start worker B with --exit-when-idle. Its claims sweep the expired leases; it re-runs the long scan
   (attempt 2) and everything else, and the exports end in the dead-letter queue after 3 attempts.
4. Read the ledger back: jobs by tenant and state, the dead letters, the killed job's history, and
   `ledger verify`.

Only one process may open the ledger, so this process closes it before each worker starts.
Returns a JSON-ready dict; it never prints (cli/demo.py renders it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import airgap_orch

from .errors import InvalidInput, OrchError
from .ledger import Ledger
from .operations import jobs as job_ops
from .operations import ledger as ledger_ops

SITE_ID = "demo-site"
TENANTS = ("acme-corp", "globex")
HANDLERS = {
    "advisory.ingest": "airgap_orch.worker.samples:ingest_advisory",
    "vex.ingest": "airgap_orch.worker.samples:ingest_vex",
    "scan.image": "airgap_orch.worker.samples:slow_scan",
    "export.mirror": "airgap_orch.worker.samples:flaky_export",
}
LEASE_SECONDS = 2.0
LONG_SCAN_SECONDS = 3.0
MARKER_TIMEOUT_SECONDS = 30.0
WORKER_TIMEOUT_SECONDS = 90.0


class DemoFailed(OrchError):
    """The scenario did not play out (a worker died early or never reached the long scan)."""


def job_specs(work_dir: Path) -> list[dict[str, Any]]:
    """The demo's jobs; the last one is the long scan that worker A is killed in."""
    out_dir = str(work_dir / "out")
    specs: list[dict[str, Any]] = []
    for tenant in TENANTS:
        for number in range(6):
            specs.append({"tenant": tenant, "project": "feeds", "type": "advisory.ingest",
                          "idempotency_key": f"advisory-{tenant}-{number}",
                          "payload": {"advisory_id": f"ADV-2025-{number:04d}", "source": "osv",
                                      "out_dir": out_dir}})
        for number in range(4):
            specs.append({"tenant": tenant, "project": "feeds", "type": "vex.ingest",
                          "payload": {"document_id": f"VEX-{tenant}-{number}", "out_dir": out_dir}})
        for number in range(4):
            specs.append({"tenant": tenant, "project": "registry", "type": "scan.image",
                          "payload": {"image": f"registry.local/{tenant}/service-{number}:1.0",
                                      "seconds": 0.3, "out_dir": out_dir}})
        specs.append({"tenant": tenant, "project": "mirror", "type": "export.mirror", "max_attempts": 3,
                      "payload": {"target": f"mirror.{tenant}.internal", "retry_after": 0.2}})
    # Lowest priority so worker A does some other work first.
    specs.append({"tenant": TENANTS[1], "project": "registry", "type": "scan.image", "priority": -10,
                  "correlation_id": "demo-long-scan",
                  "payload": {"image": f"registry.local/{TENANTS[1]}/monolith:7.3", "seconds": LONG_SCAN_SECONDS,
                              "marker": str(work_dir / "long-scan.started"), "out_dir": out_dir}})
    return specs


def run_demo(ledger_path: Path | None = None, *, lock_timeout: float = 10.0) -> dict[str, Any]:
    started = time.monotonic()
    if ledger_path is not None and ledger_path.exists():
        raise InvalidInput(f"{ledger_path} already exists; the demo needs a fresh ledger path (or none)")
    if ledger_path is None:
        work_dir = Path(tempfile.mkdtemp(prefix="airgap-orch-demo-"))
        ledger_path = work_dir / "ledger.duckdb"
    else:  # handler output, markers and worker logs go beside the ledger
        ledger_path.parent.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=f"{ledger_path.name}.demo-", dir=ledger_path.parent))

    ledger_ops.init(ledger_path, site_id=SITE_ID, lock_timeout=lock_timeout)
    specs = job_specs(work_dir)
    with Ledger.open(ledger_path, lock_timeout=lock_timeout) as ledger:
        job_ids = job_ops.enqueue_batch(ledger, specs, actor="demo")["job_ids"]
    long_scan_id = job_ids[-1]
    marker = Path(specs[-1]["payload"]["marker"])

    worker_a = _start_worker(ledger_path, work_dir, "worker-A", lock_timeout)
    try:
        waited = _wait_for(marker, worker_a)
    finally:
        worker_a.kill()  # SIGKILL: no cleanup, no release, the lease is simply abandoned
        worker_a.wait()
    killed_at = time.monotonic()

    worker_b = _start_worker(ledger_path, work_dir, "worker-B", lock_timeout, "--exit-when-idle")
    try:
        worker_b.wait(timeout=WORKER_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        worker_b.kill()
        worker_b.wait()
        raise DemoFailed(f"worker B did not finish within {WORKER_TIMEOUT_SECONDS:g}s; see {work_dir}") from None
    worker_b_output = (work_dir / "worker-B.out").read_text(encoding="utf-8").strip()
    if worker_b.returncode != 0:
        raise DemoFailed(f"worker B exited {worker_b.returncode}; see {work_dir / 'worker-B.err'}")
    recovery_seconds = time.monotonic() - killed_at

    with Ledger.open(ledger_path, lock_timeout=lock_timeout) as ledger:
        jobs = job_ops.list_jobs(ledger, limit=10_000)["jobs"]
        dead = job_ops.deadletter_list(ledger)["jobs"]
        recovered = job_ops.show(ledger, long_scan_id)
        verify = ledger_ops.verify(ledger)

    return {
        "ledger": str(ledger_path),
        "site_id": SITE_ID,
        "work_dir": str(work_dir),
        "jobs_total": len(jobs),
        "jobs_by_state": dict(sorted(Counter(job["state"] for job in jobs).items())),
        "jobs_by_tenant": {tenant: dict(sorted(Counter(job["state"] for job in jobs if job["tenant"] == tenant)
                                                .items()))
                           for tenant in TENANTS},
        "dead_letter": [{"job_id": job["job_id"], "type": job["type"], "tenant": job["tenant"],
                         "attempts": job["attempts"], "max_attempts": job["max_attempts"],
                         "last_error": job["last_error"]} for job in dead],
        "recovered_job": _recovered(recovered),
        "workers": {
            "A": {"worker_id": "worker-A", "pid": worker_a.pid, "killed_with": "SIGKILL",
                  "killed_after_seconds": round(waited, 3)},
            "B": {"worker_id": "worker-B", "pid": worker_b.pid, "exit_code": worker_b.returncode,
                  "recovery_seconds": round(recovery_seconds, 3),
                  "summary": json.loads(worker_b_output) if worker_b_output else None},
        },
        "verify": verify,
        "seconds": round(time.monotonic() - started, 3),
    }


def _start_worker(ledger_path: Path, work_dir: Path, worker_id: str, lock_timeout: float,
                  *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "airgap_orch", "--ledger", str(ledger_path),
               "--lock-timeout", str(lock_timeout), "--json", "worker", "run", "--worker-id", worker_id,
               "--lease-seconds", str(LEASE_SECONDS), "--concurrency", "4", *extra]
    for job_type, target in HANDLERS.items():
        command += ["--handler", f"{job_type}={target}"]
    # Make the package importable in the child even when it runs from a source checkout.
    package_root = str(Path(airgap_orch.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with open(work_dir / f"{worker_id}.out", "wb") as out, open(work_dir / f"{worker_id}.err", "wb") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)


def _wait_for(marker: Path, worker: subprocess.Popen[bytes]) -> float:
    """Seconds until `marker` exists; DemoFailed if the worker exits first or it takes too long."""
    started = time.monotonic()
    while not marker.exists():
        if worker.poll() is not None:
            raise DemoFailed(f"worker A exited ({worker.returncode}) before the long scan started; see "
                             f"{marker.parent / 'worker-A.err'}")
        if time.monotonic() - started > MARKER_TIMEOUT_SECONDS:
            raise DemoFailed(f"the long scan did not start within {MARKER_TIMEOUT_SECONDS:g}s")
        time.sleep(0.02)
    return time.monotonic() - started


def _recovered(job: dict[str, Any]) -> dict[str, Any]:
    """The killed job with its history, and per attempt which worker held it and how it ended."""
    attempts: dict[int, dict[str, Any]] = {}
    for entry in job["history"]:
        if entry["attempt"] == 0:
            continue
        attempt = attempts.setdefault(entry["attempt"], {"attempt": entry["attempt"], "worker_id": None,
                                                         "outcome": None, "reason": None})
        if entry["event_type"] == "job.leased":
            attempt["worker_id"] = entry["worker_id"]
        elif entry["event_type"] not in ("job.started", "job.cancel_requested"):
            attempt["outcome"], attempt["reason"] = entry["to_state"], entry["reason"]
    return {
        "job_id": job["job_id"], "type": job["type"], "tenant": job["tenant"], "state": job["state"],
        "attempts": job["attempts"], "artifacts": job["artifacts"],
        "attempt_story": [attempts[number] for number in sorted(attempts)],
        "history": [{key: entry[key] for key in ("seq", "event_type", "from_state", "to_state", "attempt",
                                                 "worker_id", "actor", "reason", "occurred_at")}
                    for entry in job["history"]],
    }
