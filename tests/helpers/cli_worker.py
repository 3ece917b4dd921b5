"""Child program: a worker that acts only through the CLI, so it holds the ledger only per call.

usage: python cli_worker.py LEDGER WORKER_ID LEASE_SECONDS ARTIFACT

1. `jobs claim --worker WORKER_ID --lease-seconds LEASE_SECONDS --limit 1`
2. "work": wait until SIGCONT arrives (the parent freezes this process with SIGSTOP meanwhile and
   resumes it with SIGCONT); gives up after 60 s
3. `jobs heartbeat JOB --lease LEASE`, then `jobs ack JOB --lease LEASE --artifact ARTIFACT`

After each step it prints one JSON line {"step", "code", "stdout", "stderr"} (claim's is printed before
the wait, so the parent knows the lease). Exits 0 whatever the CLI answered.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

resumed = False


def _on_sigcont(_signum: int, _frame: object) -> None:
    global resumed
    resumed = True


def run_cli(ledger: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "airgap_orch", "--ledger", ledger, "--lock-timeout", "30", "--json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def report(step: str, done: subprocess.CompletedProcess[str]) -> None:
    print(json.dumps({"step": step, "code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}),
          flush=True)


def main() -> None:
    ledger, worker_id, lease_seconds, artifact = sys.argv[1:5]
    # Installed before the claim, so a SIGCONT can never find the default handler and be missed.
    signal.signal(signal.SIGCONT, _on_sigcont)
    claimed = run_cli(ledger, "jobs", "claim", "--worker-id", worker_id, "--lease-seconds", lease_seconds)
    report("claim", claimed)
    if claimed.returncode != 0 or not json.loads(claimed.stdout)["leases"]:
        return
    lease = json.loads(claimed.stdout)["leases"][0]
    give_up = time.monotonic() + 60
    while not resumed and time.monotonic() < give_up:
        time.sleep(0.02)
    report("heartbeat", run_cli(ledger, "jobs", "heartbeat", lease["job_id"], "--lease", lease["lease_id"],
                                "--progress", "0.5", "--message", "still here"))
    report("ack", run_cli(ledger, "jobs", "ack", lease["job_id"], "--lease", lease["lease_id"],
                          "--artifact", artifact))


if __name__ == "__main__":
    main()
