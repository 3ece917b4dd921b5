"""The demo's second act: the connected site's state crosses an air gap in signed bundles.

It runs after the first act (airgap_orch/demo.py) has stopped the connected site's server, on the ledger that
act left, and every step is the `airgap-orch` command an operator would type, run as a subprocess:

1. Keys and trust: one root key holder, one timestamp key, one bundle signing key bound to the connected site.
   `trust init` takes the public keys only; the root key holder signs with `trust sign`; the connected site
   pins the root (`trust pin`).
2. The connected site queues work meant for the air-gapped site: a backfill of hourly windows and a few jobs in
   the OFFLINE_QUEUE queue. No worker runs them there.
3. Full bundle: `bundle export` to the air-gapped site; at the air-gapped site `bundle verify --trust` (no
   ledger, no network), then `bundle plan` and `bundle import --plan-digest` into a fresh ledger, which pins the
   root as part of the import.
4. Incremental bundle with a hand-off: `bundle export --handoff --backfill ID --queue OFFLINE_QUEUE` hands the
   pending windows and jobs over (they become `handed_off` at the connected site, in its ledger, before the file
   is written); the air-gapped site verifies, plans and imports it; a worker there runs the handed-over jobs.
5. `ledger verify` on both ledgers.

Returns a JSON-ready dict (cli/demo.py renders it); `step` narrates.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import airgap_orch

from .errors import OrchError

TARGET_SITE = "airgapped-site"
OFFLINE_QUEUE = "offline"
HANDOFF_JOBS = 3
BACKFILL_FROM, BACKFILL_TO, BACKFILL_STEP = "2026-11-01T00:00:00Z", "2026-11-01T06:00:00Z", "1h"
COMMAND_TIMEOUT_SECONDS = 120.0
HANDLERS = {
    "advisory.ingest": "airgap_orch.worker.samples:ingest_advisory",
    "vex.ingest": "airgap_orch.worker.samples:ingest_vex",
}


class AirgapDemoFailed(OrchError):
    """A command of the air-gap act failed; the message names it and its error."""


class _Shell:
    """Runs `airgap-orch ARGS` as a subprocess (the package importable from a source checkout too), narrating
    each command as an operator would type it."""

    def __init__(self, work_dir: Path, step: Callable[[str], None]):
        self.work_dir = work_dir
        self.step = step
        env = {key: value for key, value in os.environ.items()
               if key not in ("AIRGAP_ORCH_SERVER", "AIRGAP_ORCH_TOKEN", "AIRGAP_ORCH_LEDGER")}
        package_root = str(Path(airgap_orch.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.env = env

    def run(self, *args: str, ledger: Path | None = None,
            say: str | Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
        """The command's JSON answer; AirgapDemoFailed with its error line when it exits non-zero. `say`
        narrates the step (a function of the answer, or a text) with the command line under it."""
        command = [*(["--ledger", str(ledger)] if ledger is not None else []), "--json", *args]
        shown = "airgap-orch " + " ".join(shlex.quote(self._short(arg)) for arg in command if arg != "--json")
        try:
            done = subprocess.run([sys.executable, "-m", "airgap_orch", *command], capture_output=True,
                                  stdin=subprocess.DEVNULL, env=self.env, cwd=self.work_dir,
                                  timeout=COMMAND_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AirgapDemoFailed(f"`{shown}` took more than {COMMAND_TIMEOUT_SECONDS:g}s") from None
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip().splitlines()
            raise AirgapDemoFailed(f"`{shown}` exited {done.returncode}: {error[-1] if error else 'no message'}")
        text = done.stdout.decode().strip()
        answer = json.loads(text) if text else {}
        if say:
            self.step(f"{say(answer) if callable(say) else say}\n           $ {shown}")
        return answer

    def _short(self, arg: str) -> str:
        """Paths inside the work directory are shown relative to it (the commands run there)."""
        if arg.startswith(str(self.work_dir) + os.sep):
            return os.path.relpath(arg, self.work_dir)
        return arg


def run_airgap(source_ledger: Path, work_dir: Path, step: Callable[[str], None]) -> dict[str, Any]:
    """The second act on `source_ledger` (closed, site demo-site); its files go under `work_dir`."""
    shell = _Shell(work_dir, step)
    keys = _keys(shell, work_dir / "keys")
    root = work_dir / "trust" / "root.json"
    root.parent.mkdir()
    shell.run("trust", "init", "--out", str(root), "--root-key", keys["root"]["public_key"],
              "--timestamp-key", keys["timestamp"]["public_key"],
              "--site", f"{_source_site(shell, source_ledger)}={keys['bundle']['public_key']}", "--expires", "365d",
              say="trust root version 1 written from PUBLIC keys only: root, timestamp, and the connected site's "
                  "bundle key")
    shell.run("trust", "sign", str(root), "--key", keys["root"]["private_key"],
              say="the root key holder signs it (on their own machine)")
    pinned = shell.run("trust", "pin", str(root), ledger=source_ledger,
                       say="the connected site pins it; the fingerprint is read out for an out-of-band check")
    queued = _queue_offline_work(shell, source_ledger, str(work_dir / "out"))

    bundles_dir = work_dir / "bundles"
    bundles_dir.mkdir()
    target_ledger = work_dir / "airgapped.duckdb"
    shell.run("ledger", "init", "--site-id", TARGET_SITE, ledger=target_ledger,
              say=f"the air-gapped site has its own ledger (site {TARGET_SITE})")
    sign = ["--key", keys["bundle"]["private_key"], "--timestamp-key", keys["timestamp"]["private_key"]]

    full = bundles_dir / "0001-full.bundle"
    exported_full = shell.run("bundle", "export", "--out", str(full), "--target", TARGET_SITE, *sign,
                              ledger=source_ledger, say="full bundle exported for the air-gapped site")
    full_import = _cross(shell, full, root, target_ledger, first=True)

    handoff = bundles_dir / "0002-handoff.bundle"
    exported_handoff = shell.run(
        "bundle", "export", "--out", str(handoff), "--target", TARGET_SITE, *sign, "--incremental", "--handoff",
        "--backfill", queued["backfill_id"], "--queue", OFFLINE_QUEUE, ledger=source_ledger,
        say=f"incremental bundle with a hand-off: the backfill's pending windows and the {OFFLINE_QUEUE} queue's "
            "pending jobs are handed to the air-gapped site (committed at the connected site first)")
    handoff_import = _cross(shell, handoff, root, target_ledger, first=False)

    handlers = [arg for job_type, target in HANDLERS.items() for arg in ("--handler", f"{job_type}={target}")]
    worked = shell.run("worker", "run", "--worker-id", "airgapped-worker", "--exit-when-idle", *handlers,
                       ledger=target_ledger, say="a worker at the air-gapped site runs the handed-over jobs")
    target_jobs = _jobs(shell, target_ledger)
    source_jobs = _jobs(shell, source_ledger)
    handed = set(queued["job_ids"])
    verified = {name: shell.run("ledger", "verify", ledger=path, say=f"ledger verify at the {name} site: ok")
                for name, path in (("connected", source_ledger), ("air-gapped", target_ledger))}
    status = shell.run("airgap", "status", ledger=target_ledger)
    return {
        "source_ledger": str(source_ledger),
        "target_ledger": str(target_ledger),
        "target_site": TARGET_SITE,
        "trust_root": str(root),
        "trust_root_fingerprint": pinned.get("fingerprint"),
        "bundle_public_key": str(work_dir / keys["bundle"]["public_key"]),
        "bundle_signing_key": str(work_dir / keys["bundle"]["private_key"]),
        "bundles": [str(full), str(handoff)],
        "exports": [_export_summary(exported_full), _export_summary(exported_handoff)],
        "imports": [full_import, handoff_import],
        "handed_over": {
            "backfill_id": queued["backfill_id"],
            "jobs": len(handed),
            "at_source": dict(Counter(job["state"] for job in source_jobs if job["job_id"] in handed)),
            "at_target": dict(Counter(job["state"] for job in target_jobs if job["job_id"] in handed)),
        },
        "worker": worked,
        "verify": verified,
        "airgap_status": status,
    }


def _keys(shell: _Shell, keys_dir: Path) -> dict[str, dict[str, Any]]:
    made = {}
    for name in ("root", "timestamp", "bundle"):
        made[name] = shell.run("keys", "generate", "--out", os.path.relpath(keys_dir, shell.work_dir), "--name", name)
    shell.step(f"generated three Ed25519 key pairs in {keys_dir} (root, timestamp, the connected site's bundle "
               "key); private keys are 0600")
    return made


def _source_site(shell: _Shell, ledger: Path) -> str:
    return shell.run("ledger", "info", ledger=ledger)["site_id"]


def _queue_offline_work(shell: _Shell, ledger: Path, out_dir: str) -> dict[str, Any]:
    """A backfill and a few jobs in the offline queue, left pending at the connected site."""
    backfill = shell.run("backfill", "create", "--tenant", "acme-corp", "--project", "feeds", "--type", "vex.ingest",
                         "--from", BACKFILL_FROM, "--to", BACKFILL_TO, "--step", BACKFILL_STEP,
                         "--queue", OFFLINE_QUEUE,
                         "--payload", json.dumps({"document_id": "VEX-backfill", "out_dir": out_dir}),
                         "--reason", "re-ingest VEX for the air-gapped site", "--ticket", "OPS-1207",
                         ledger=ledger, say="a backfill of hourly VEX windows, queued for the air-gapped site")
    for number in range(HANDOFF_JOBS):
        shell.run("jobs", "enqueue", "--tenant", "globex", "--project", "feeds", "--type", "advisory.ingest",
                         "--queue", OFFLINE_QUEUE,
                         "--payload", json.dumps({"advisory_id": f"ADV-OFFLINE-{number}", "out_dir": out_dir}),
                         ledger=ledger)
    shell.step(f"{HANDOFF_JOBS} advisory jobs queued in {OFFLINE_QUEUE!r} for the air-gapped site")
    job_ids = [job["job_id"] for job in _jobs(shell, ledger) if job["queue"] == OFFLINE_QUEUE]
    return {"backfill_id": backfill["backfill_id"], "job_ids": job_ids}


def _cross(shell: _Shell, bundle: Path, root: Path, target_ledger: Path, *, first: bool) -> dict[str, Any]:
    """At the air-gapped site: verify offline against the root, plan, import with the plan's digest."""
    checked = shell.run("bundle", "verify", str(bundle), "--trust", str(root), "--target", TARGET_SITE,
                        say=f"{bundle.name}: verified offline with the trust root only (no ledger, no network)")
    trust = ["--trust", str(root)] if first else []
    planned = shell.run("bundle", "plan", str(bundle), *trust, ledger=target_ledger,
                        say=lambda plan: f"{bundle.name}: dry-run plan, digest {plan['plan_digest'][:16]}...")
    done = shell.run("bundle", "import", str(bundle), *trust, "--plan-digest", planned["plan_digest"],
                     ledger=target_ledger, say=f"{bundle.name}: imported under that plan" +
                     (" (and the trust root pinned with it)" if first else ""))
    return {"bundle": str(bundle), "checks": len(checked.get("checks", [])), "plan_digest": planned["plan_digest"],
            "imported": done}


def _jobs(shell: _Shell, ledger: Path) -> list[dict[str, Any]]:
    return shell.run("jobs", "list", "--limit", "100000", ledger=ledger)["jobs"]


def _export_summary(made: dict[str, Any]) -> dict[str, Any]:
    return {key: made.get(key) for key in ("sequence", "kind", "base_sequence", "bundle_id", "row_counts")}


def describe(result: dict[str, Any]) -> Sequence[str]:
    """The second act's lines of the human summary."""
    handed = result["handed_over"]
    lines = ["", f"air gap: {len(result['bundles'])} bundles from the connected site to {result['target_site']}, "
                 f"verified offline with {result['trust_root']} and imported:"]
    for path, made in zip(result["bundles"], result["exports"], strict=True):
        lines.append(f"  {Path(path).name:<22} {made['kind']:<12} sequence {made['sequence']}")
    lines.append(f"  {handed['jobs']} jobs handed over: at the connected site "
                 + ", ".join(f"{state} {n}" for state, n in sorted(handed["at_source"].items()))
                 + "; at the air-gapped site " + ", ".join(f"{state} {n}" for state, n in
                                                        sorted(handed["at_target"].items())))
    lines.append(f"  trust root {result['trust_root']}; bundle signing key {result['bundle_signing_key']} (public "
                 f"{result['bundle_public_key']}); air-gapped ledger {result['target_ledger']}")
    return lines
