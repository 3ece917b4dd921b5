"""The demo scenario, through the control plane: a server subprocess owns the ledger, SDK workers run the jobs.

1. Create a fresh ledger and start `airgap-orch serve --port 0 --no-auth` on it (loopback only); its first
   stdout line gives the URL. From here on this process talks to the ledger only through that server.
2. Set a concurrency limit (at most SCAN_SLOTS image scans at once, across all workers), then enqueue jobs
   for two tenants over HTTP (OrchClient): advisories, VEX documents, image scans and one export per tenant
   whose target never answers (max_attempts 3), plus one long, low-priority scan; and per tenant a report
   that depends on the export, so it waits and is canceled (dependency_failed) when the export dies.
3. Start worker A (`airgap-orch worker run`, which finds the server through its discovery file and runs as
   an SDK worker) with a short lease. When the long scan writes its start marker, kill worker A with
   SIGKILL: it holds that job's lease and can never report it.
4. Start worker B. The server's once-a-second sweep recovers the expired lease; worker B re-runs the long
   scan (attempt 2) and everything else, and the exports end in the dead-letter queue after 3 attempts.
5. Watch through the server (ledger.info, jobs.show) until every job is final; read the report through it
   (jobs.list, deadletter.list, jobs.show); stop worker B and then the server with SIGTERM (the server
   removes its discovery file and closes the ledger); run `ledger verify` on the ledger it left.

Every subprocess runs in its own session; whatever happens, run_demo() kills their process groups before it
returns or raises, and SIGTERM/SIGHUP to this process are turned into DemoInterrupted so that happens too.
Returns a JSON-ready dict; it never prints (cli/demo.py renders it, `on_step` narrates if given).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import airgap_orch

from .demo_airgap import run_airgap
from .errors import InvalidInput, OrchError
from .ledger import Ledger
from .operations import ledger as ledger_ops
from .orchestrator.states import FINAL_STATES
from .sdk.client import OrchClient
from .server import discovery

SITE_ID = "demo-site"
TENANTS = ("acme-corp", "globex")
HANDLERS = {
    "advisory.ingest": "airgap_orch.worker.samples:ingest_advisory",
    "vex.ingest": "airgap_orch.worker.samples:ingest_vex",
    "scan.image": "airgap_orch.worker.samples:slow_scan",
    "export.mirror": "airgap_orch.worker.samples:flaky_export",
}
LEASE_SECONDS = 3.0  # heartbeats every second; a lost lease is recovered 3-4 s after the kill
LONG_SCAN_SECONDS = 3.0
SERVER_START_TIMEOUT_SECONDS = 30.0
MARKER_TIMEOUT_SECONDS = 30.0
FINISH_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0
POLL_SECONDS = 0.1
SCAN_SLOTS = 2  # concurrency limit on type:scan.image
_FIRST_LINE = re.compile(r" at (?P<url>https?://\S+) \(pid (?P<pid>\d+)\)")


class DemoFailed(OrchError):
    """The scenario did not play out (a process died early, or a step took too long)."""


class DemoInterrupted(DemoFailed):
    """This process got SIGTERM or SIGHUP; the server and workers it started were killed."""


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


class _Children:
    """The subprocesses the demo started. Each leads its own session (and process group); kill_all() ends
    every group whose leader this process has not reaped yet, so a recycled pid is never signalled.

    SIGTERM and SIGHUP raise DemoInterrupted in the main thread (once), except inside `starting()`, where
    they are held until the new child is on the list.
    """

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.started: list[subprocess.Popen[bytes]] = []
        self._holding = False
        self._held: int | None = None
        self._fired = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Children:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.kill_all()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._fired:
            return
        if self._holding:
            self._held = signum
            return
        self._interrupt(signum)

    def _interrupt(self, signum: int) -> None:
        self._fired = True
        raise DemoInterrupted(f"the demo got {signal.Signals(signum).name}; killed the server and workers it "
                              f"started (logs in {self.work_dir})")

    @contextmanager
    def _starting(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held is not None and not self._fired:
            self._interrupt(self._held)

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """`python -m airgap_orch ARGS` with stdout and stderr in work_dir/NAME.out and NAME.err."""
        env = {key: value for key, value in os.environ.items()
               if key not in ("AIRGAP_ORCH_SERVER", "AIRGAP_ORCH_TOKEN")}  # the demo's own server, no token
        # Make the package importable in the child even when it runs from a source checkout.
        package_root = str(Path(airgap_orch.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        with self._starting():
            with open(self.work_dir / f"{name}.out", "wb") as out, open(self.work_dir / f"{name}.err", "wb") as err:
                child = subprocess.Popen([sys.executable, "-m", "airgap_orch", *args], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            self.started.append(child)
        return child

    @staticmethod
    def kill(child: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
        """Send `signum` to the child's process group, unless it was already reaped."""
        if child.returncode is None:
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        for child in self.started:
            self.kill(child)
        for child in self.started:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:  # not expected after SIGKILL; never hang the caller
                pass

    def stop(self, child: subprocess.Popen[bytes], name: str) -> int:
        """SIGTERM, then wait for a clean exit; DemoFailed (the group is killed later) if it takes too long."""
        self.kill(child, signal.SIGTERM)
        try:
            return child.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"{name} did not stop within {STOP_TIMEOUT_SECONDS:g}s of SIGTERM; see "
                             f"{self.work_dir / (name + '.err')}") from None

    def check_alive(self, child: subprocess.Popen[bytes], name: str, doing: str) -> None:
        if child.poll() is not None:
            raise DemoFailed(f"{name} exited ({child.returncode}) {doing}; see {self.work_dir / (name + '.err')}")


def run_demo(ledger_path: Path | None = None, *, work_dir: Path | None = None, lock_timeout: float = 10.0,
             on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the scenario. Its files (ledger, process logs, handler output) go to `work_dir` (kept), or beside
    `ledger_path` (kept), or else to a temporary directory that is removed when the demo succeeds (a failed
    demo keeps it: its error names the log to read)."""
    if ledger_path is not None and ledger_path.exists():
        raise InvalidInput(f"{ledger_path} already exists; the demo needs a fresh ledger path (or none)")
    temporary = work_dir is None and ledger_path is None
    if work_dir is not None:
        if work_dir.exists() and not work_dir.is_dir():
            raise InvalidInput(f"--workdir {work_dir} is not a directory; name a new or empty directory")
        work_dir.mkdir(parents=True, exist_ok=True)
        if any(work_dir.iterdir()):
            raise InvalidInput(f"--workdir {work_dir} is not empty; name a new or empty directory")
        ledger_path = ledger_path or work_dir / "ledger.duckdb"
    elif ledger_path is None:
        work_dir = Path(tempfile.mkdtemp(prefix="airgap-orch-demo-"))
        ledger_path = work_dir / "ledger.duckdb"
    else:  # handler output, markers and process logs go beside the ledger
        ledger_path.parent.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=f"{ledger_path.name}.demo-", dir=ledger_path.parent))
    step = on_step or (lambda _line: None)
    started = time.monotonic()
    result = _run(ledger_path, work_dir, lock_timeout, step)
    airgap = run_airgap(ledger_path, work_dir, step)
    result["airgap"] = airgap
    for key in ("bundles", "trust_root", "source_ledger", "target_ledger", "bundle_public_key", "bundle_signing_key"):
        result[key] = airgap[key]
    result["total_seconds"] = round(time.monotonic() - started, 3)
    result["files_kept"] = not temporary
    if temporary:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _run(ledger_path: Path, work_dir: Path, lock_timeout: float, step: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    ledger_ops.init(ledger_path, site_id=SITE_ID, lock_timeout=lock_timeout)
    step(f"created the ledger {ledger_path} (site {SITE_ID}); logs and handler output in {work_dir}")
    specs = job_specs(work_dir)
    marker = Path(specs[-1]["payload"]["marker"])
    with _Children(work_dir) as children:
        server = children.start("server", ["--ledger", str(ledger_path), "--lock-timeout", str(lock_timeout),
                                           "serve", "--host", "127.0.0.1", "--port", "0", "--no-auth"])
        url = _server_url(server, work_dir / "server.out", children)
        step(f"server pid {server.pid} owns {ledger_path} and listens at {url}")
        client = OrchClient(url, timeout=30.0)
        try:
            client.call("concurrency.set", {"key": "type:scan.image", "max": SCAN_SLOTS,
                                            "reason": "demo: scanners share a few slots"})
            step(f"set a concurrency limit: at most {SCAN_SLOTS} scan.image jobs leased or running at once")
            job_ids = client.call("jobs.enqueue_batch", {"jobs": specs[:-1]})["job_ids"]
            long_scan_id = client.call("jobs.enqueue", {"spec": specs[-1]})["job_id"]
            job_ids.append(long_scan_id)
            reports = [client.call("jobs.enqueue", {"spec": {
                "tenant": spec["tenant"], "project": "mirror", "type": "report.publish",
                "depends_on": [job_id], "payload": {"export": job_id}}})["job_id"]
                for spec, job_id in zip(specs, job_ids, strict=False) if spec["type"] == "export.mirror"]
            job_ids += reports
            step(f"enqueued {len(job_ids)} jobs for {len(TENANTS)} tenants over HTTP, {len(reports)} of them "
                 "reports waiting on their tenant's export")

            def worker(worker_id: str) -> subprocess.Popen[bytes]:
                command = ["--ledger", str(ledger_path), "--json", "worker", "run", "--worker-id", worker_id,
                           "--lease-seconds", str(LEASE_SECONDS), "--concurrency", "4"]
                for job_type, target in HANDLERS.items():
                    command += ["--handler", f"{job_type}={target}"]
                return children.start(worker_id, command)

            worker_a = worker("worker-A")
            step(f"worker-A pid {worker_a.pid} started (an SDK worker against the server, lease "
                 f"{LEASE_SECONDS:g}s)")
            waited = _wait_for_marker(marker, worker_a, server, children)
            marker_record = json.loads(marker.read_text(encoding="utf-8"))
            children.kill(worker_a)  # SIGKILL: no cleanup, no release, the lease is simply abandoned
            worker_a.wait()
            killed_at = time.monotonic()
            step(f"worker-A was killed with SIGKILL {waited:.1f}s in, while it ran the long scan {long_scan_id}")

            worker_b = worker("worker-B")
            step(f"worker-B pid {worker_b.pid} started")
            recovered_after, finished_after = _watch(client, len(job_ids), long_scan_id, worker_b, server,
                                                     children, killed_at, step)
            jobs = client.read_pages("jobs.list", limit=10_000)["jobs"]
            dead = client.read_pages("deadletter.list", limit=10_000)["jobs"]
            recovered = client.call("jobs.show", {"job_id": long_scan_id})
            dependents = [client.call("jobs.show", {"job_id": job_id}) for job_id in reports]
            peak_scans = _peak(client.read_pages("ledger.events", limit=100_000)["events"], "scan.image")
        finally:
            client.close()

        worker_b_code = children.stop(worker_b, "worker-B")
        worker_b_output = (work_dir / "worker-B.out").read_text(encoding="utf-8").strip()
        if worker_b_code != 0:
            raise DemoFailed(f"worker-B exited {worker_b_code} after SIGTERM; see {work_dir / 'worker-B.err'}")
        step(f"worker-B stopped on SIGTERM (exit {worker_b_code})")
        server_code = children.stop(server, "server")
        discovery_file = discovery.path_for(ledger_path)
        if server_code != 0:
            raise DemoFailed(f"the server exited {server_code} after SIGTERM; see {work_dir / 'server.err'}")
        if discovery_file.exists():
            raise DemoFailed(f"the server stopped but left its discovery file {discovery_file}")
        step(f"server stopped on SIGTERM (exit {server_code}); it removed {discovery_file.name}")

    with Ledger.open(ledger_path, lock_timeout=lock_timeout) as ledger:
        verify = ledger_ops.verify(ledger)
    step(f"ledger verify: ok, {verify['history_entries']} history entries")

    return {
        "ledger": str(ledger_path),
        "site_id": SITE_ID,
        "work_dir": str(work_dir),
        "server": {"url": url, "pid": server.pid, "stopped_with": "SIGTERM", "exit_code": server_code,
                   "discovery_file": str(discovery_file), "discovery_file_removed": not discovery_file.exists()},
        "jobs_total": len(jobs),
        "jobs_by_state": dict(sorted(Counter(job["state"] for job in jobs).items())),
        "jobs_by_tenant": {tenant: dict(sorted(Counter(job["state"] for job in jobs if job["tenant"] == tenant)
                                                .items()))
                           for tenant in TENANTS},
        "dead_letter": [{"job_id": job["job_id"], "type": job["type"], "tenant": job["tenant"],
                         "attempts": job["attempts"], "max_attempts": job["max_attempts"],
                         "last_error": job["last_error"]} for job in dead],
        "recovered_job": _recovered(recovered),
        "flow_control": {
            "concurrency_limit": {"key": "type:scan.image", "max": SCAN_SLOTS, "peak_from_history": peak_scans},
            "dependents": [{"job_id": job["job_id"], "tenant": job["tenant"], "depends_on": job["depends_on"],
                            "state": job["state"], "reason": job["history"][-1]["reason"]} for job in dependents],
        },
        "workers": {
            "A": {"worker_id": "worker-A", "pid": worker_a.pid, "killed_with": "SIGKILL",
                  "exit_code": worker_a.returncode, "killed_after_seconds": round(waited, 3),
                  "long_scan_marker": marker_record},
            "B": {"worker_id": "worker-B", "pid": worker_b.pid, "stopped_with": "SIGTERM", "exit_code": worker_b_code,
                  "lease_recovered_after_seconds": recovered_after,
                  "recovery_seconds": round(finished_after, 3),
                  "summary": json.loads(worker_b_output) if worker_b_output else None},
        },
        "verify": verify,
        "seconds": round(time.monotonic() - started, 3),
    }


def _server_url(server: subprocess.Popen[bytes], out: Path, children: _Children) -> str:
    """The URL from the server's first stdout line (`... at http://127.0.0.1:PORT (pid N)`)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while True:
        text = out.read_text(encoding="utf-8", errors="replace")
        if "\n" in text:
            break
        children.check_alive(server, "server", "before it printed its URL")
        if time.monotonic() > deadline:
            raise DemoFailed(f"the server printed no URL within {SERVER_START_TIMEOUT_SECONDS:g}s")
        time.sleep(0.02)
    first = text.splitlines()[0]
    match = _FIRST_LINE.search(first)
    if match is None or int(match["pid"]) != server.pid:
        raise DemoFailed(f"unexpected first line from the server: {first!r}")
    if urlsplit(match["url"]).hostname != "127.0.0.1":
        raise DemoFailed(f"the server listens at {match['url']}, not on loopback")
    return match["url"]


def _wait_for_marker(marker: Path, worker: subprocess.Popen[bytes], server: subprocess.Popen[bytes],
                     children: _Children) -> float:
    """Seconds until `marker` exists; DemoFailed if a process exits first or it takes too long."""
    started = time.monotonic()
    while not marker.exists():
        children.check_alive(worker, "worker-A", "before the long scan started")
        children.check_alive(server, "server", "before the long scan started")
        if time.monotonic() - started > MARKER_TIMEOUT_SECONDS:
            raise DemoFailed(f"the long scan did not start within {MARKER_TIMEOUT_SECONDS:g}s")
        time.sleep(0.02)
    for _ in range(50):  # written with one write_text(): wait until it is complete
        try:
            json.loads(marker.read_text(encoding="utf-8"))
            break
        except ValueError:
            time.sleep(0.01)
    return time.monotonic() - started


def _watch(client: OrchClient, total: int, long_scan_id: str, worker: subprocess.Popen[bytes],
           server: subprocess.Popen[bytes], children: _Children, killed_at: float,
           step: Callable[[str], None]) -> tuple[float | None, float]:
    """Poll the server until all `total` jobs are final. Returns the seconds from the kill until the server
    recovered the long scan's lease (None if it was not seen requeued) and until everything was final."""
    recovered_after: float | None = None
    while True:
        children.check_alive(server, "server", "while the jobs ran")
        children.check_alive(worker, "worker-B", "while the jobs ran")
        counts = client.call("ledger.info")["jobs"]
        now = time.monotonic()
        if recovered_after is None:
            history = client.call("jobs.show", {"job_id": long_scan_id})["history"]
            if any(entry["reason"] == "lease_expired" for entry in history):
                recovered_after = round(now - killed_at, 3)
                step(f"the server recovered the long scan's expired lease {recovered_after:.1f}s after the kill")
        if sum(counts.values()) >= total and all(state in FINAL_STATES for state, n in counts.items() if n):
            step("all jobs final: " + ", ".join(f"{state} {count}" for state, count in sorted(counts.items())))
            return recovered_after, now - killed_at
        if now - killed_at > FINISH_TIMEOUT_SECONDS:
            raise DemoFailed(f"jobs still not final {FINISH_TIMEOUT_SECONDS:g}s after the kill: {counts}")
        time.sleep(POLL_SECONDS)


def _peak(envelopes: list[dict[str, Any]], job_type: str) -> int:
    """The most jobs of `job_type` held under a lease at once, replayed from the event stream."""
    held: set[str] = set()
    peak = 0
    for envelope in envelopes:
        job = envelope["job"]
        if job["type"] != job_type:
            continue
        if job["status"] in ("leased", "running"):
            held.add(job["id"])
        else:
            held.discard(job["id"])
        peak = max(peak, len(held))
    return peak


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
