"""A ledger with something on every console page, made through a real server (tests/test_console.py and
scripts/console_screenshots.py use it).

`seed(client_t1, client_t2)` sends every change through the HTTP API with OrchClient, as operators and workers
would: two tenants' jobs (some hostile: markup in payloads, error texts and artifact URIs), dead letters, a
succeeded job with artifacts, a running job with progress, a backfill, a quota, a rate limit, a concurrency limit,
a breaker, a paused queue and a paused source.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch
from airgap_orch.sdk.client import OrchClient

T1, T2 = "acme-corp", "globex"
HOSTILE_PAYLOAD = {"note": "<img src=x onerror=alert('payload')>", "close": "</script><script>alert(2)</script>"}
HOSTILE_ERROR = "<img src=x onerror=alert('error')> upstream said </script>"
HOSTILE_URI = "javascript:alert('artifact')"
SAFE_URI = "https://mirror.example.org/reports/advisories.json"
DIGEST = "sha256:" + "ab" * 32
RUNNING_LOG = [  # the running job's log lines, sent on its heartbeat as a worker would (README "Job logs")
    {"message": "pulling registry/app:1.2 (7 layers)"},
    {"message": "layer 1 of 7: 12.4 MiB, no findings"},
    {"message": "layer 2 of 7: unchanged since the last scan, skipped", "level": "debug"},
    {"message": "layer 3 of 7: digest mismatch on the first read, read again", "level": "warning"},
]


@dataclass
class Seeded:
    dead_t1: list[str]  # dead-lettered job ids of tenant t1
    dead_t2: list[str]
    succeeded_t1: str  # a succeeded job with a hostile and a safe artifact
    running_t1: str  # a leased job with progress
    t2_job: str  # a queued job only t2 may see
    backfill_t1: str
    running_lease: str


def spec(tenant: str, job_type: str, **extra: Any) -> dict[str, Any]:
    return {"tenant": tenant, "project": "feeds", "type": job_type, **extra}


def _claim_one(client: OrchClient, job_type: str, worker: str = "worker-1", lease_seconds: float = 600) -> dict:
    (lease,) = client.call("jobs.claim", {"worker_id": worker, "type": job_type, "limit": 1,
                                          "lease_seconds": lease_seconds})["leases"]
    return lease


def seed_site(ledger_path: Path) -> None:
    """What only a local operator (or an unrestricted caller) may change: a queue pause and a breaker on a host;
    run on the ledger before a server owns it."""
    with Ledger.open(ledger_path) as ledger:
        dispatch.run(ledger, "queues.pause", {"queue": "bulk", "reason": "disk full on the bulk workers"})
        dispatch.run(ledger, "breakers.set", {"key": "host:mirror.example.org", "failures": 3, "cooldown": 120,
                                              "reason": "protect the mirror"})


def seed(t1: OrchClient, t2: OrchClient) -> Seeded:
    """t1, t2: clients whose tokens carry every scope for tenant T1 and T2."""
    dead: dict[str, list[str]] = {T1: [], T2: []}
    for client, tenant in ((t1, T1), (t2, T2)):
        for index in range(2):
            job = client.call("jobs.enqueue", {"spec": spec(tenant, "export.mirror", max_attempts=1,
                                                            payload={**HOSTILE_PAYLOAD, "n": index})})
            lease = _claim_one(client, "export.mirror", worker=f"worker-{tenant}")
            client.call("jobs.fail", {"job_id": job["job_id"], "lease_id": lease["lease_id"],
                                      "error": HOSTILE_ERROR + f" #{index}"})
            dead[tenant].append(job["job_id"])
    done = t1.call("jobs.enqueue", {"spec": spec(T1, "advisory.ingest", payload=HOSTILE_PAYLOAD)})
    lease = _claim_one(t1, "advisory.ingest")
    t1.call("jobs.ack", {"job_id": done["job_id"], "lease_id": lease["lease_id"], "artifacts": [
        {"uri": HOSTILE_URI, "digest": DIGEST, "mime": "text/html"},
        {"uri": SAFE_URI, "digest": DIGEST, "mime": "application/json"}]})
    running = t1.call("jobs.enqueue", {"spec": spec(T1, "scan.image", payload={"image": "registry/app:1.2"})})
    lease = _claim_one(t1, "scan.image", worker="scanner-7")
    t1.call("jobs.heartbeat", {"job_id": running["job_id"], "lease_id": lease["lease_id"], "progress": 0.4,
                               "message": "layer 3 of 7", "logs": RUNNING_LOG})
    for index in range(3):
        t1.call("jobs.enqueue", {"spec": spec(T1, "vex.ingest", payload={"doc": index})})
    t2_job = t2.call("jobs.enqueue", {"spec": spec(T2, "globex.secret", payload={"only": "globex"})})
    backfill = t1.call("backfills.create", {"tenant": T1, "project": "feeds", "type": "advisory.backfill",
                                            "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T04:00:00Z",
                                            "step": "1h", "reason": "missed feed window", "ticket": "OPS-101"})
    t1.call("quotas.set", {"tenant": T1, "max_active": 1, "reason": "baseline"})  # the queued jobs: throttled
    t1.call("ratelimits.set", {"tenant": T1, "type": "vex.ingest", "rate": 5, "burst": 10, "reason": "upstream cap"})
    t1.call("concurrency.set", {"key": f"tenant:{T1}", "max": 2, "reason": "mirror is small"})
    t1.call("breakers.set", {"key": f"tenant:{T1}", "failures": 3, "cooldown": 60,
                             "reason": "protect mirror"})
    t1.call("sources.add", {"tenant": T1, "name": "nvd-feed", "type": "advisory.ingest", "schedule": "0 * * * *"})
    t1.call("sources.pause", {"name": "nvd-feed", "reason": "upstream maintenance"})
    t2.call("sources.add", {"tenant": T2, "name": "globex-feed", "type": "globex.ingest"})
    return Seeded(dead_t1=dead[T1], dead_t2=dead[T2], succeeded_t1=done["job_id"], running_t1=running["job_id"],
                  t2_job=t2_job["job_id"], backfill_t1=backfill["backfill_id"], running_lease=lease["lease_id"])


# -- a browser (Debian's chromium driven by Playwright) -----------------------------------------------------------
CHROMIUM = os.environ.get("AIRGAP_ORCH_CHROMIUM", "/usr/bin/chromium")


def launch_browser(playwright: Any) -> Any:
    """Chromium from the system (.ci/run installs Debian's `chromium`; Playwright's own download is never used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])


def browser_missing() -> str | None:
    """Why no browser test can run here (None: they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


FULL_SCOPES = ("orch:read", "orch:operate", "orch:quota", "orch:backfill", "orch:worker", "orch:airgap")
TOKENS = {"t1": {"subject": "alice", "tenants": [T1], "scopes": FULL_SCOPES},
          "t2": {"subject": "bob", "tenants": [T2], "scopes": FULL_SCOPES},
          "reader": {"subject": "auditor", "tenants": [T1], "scopes": ("orch:read", "orch:airgap")},
          "worker": {"subject": "runner", "tenants": [T1], "scopes": ("orch:worker",)},
          "airgap": {"subject": "courier", "tenants": [T1], "scopes": ("orch:airgap",)}}


@dataclass
class Site:
    server: Any  # server_fixtures.Server
    tokens: dict[str, str]
    seeded: Seeded

    def client(self, name: str) -> OrchClient:
        return OrchClient(self.server.url, self.tokens[name])


# -- an air gap: a pinned root, an imported bundle and a refused one ------------------------------------------------
AIRGAP_SOURCE = "site-a"


def seed_airgap(ledger: Path, work: Path) -> dict[str, Any]:
    """Run before a server owns `ledger`, with the CLI as operators would (the helpers of test_bundle_cli.py):
    keys and a trust root for AIRGAP_SOURCE, a filled source ledger that pins it and exports a full bundle to
    `ledger`'s site, imported with `--trust` (which pins the root here), then a tampered copy of it, refused
    (merkle:hash-mismatch, quarantined). Returns the files and the refused copy's sha256."""
    import hashlib

    from export_fixtures import populate, tampered_copy
    from test_bundle_cli import Holders, cli, export, new_ledger, ok

    with Ledger.open(ledger) as opened:
        site_id = opened.site_id
    work.mkdir(parents=True, exist_ok=True)
    holders = Holders(work / "keys")
    for name in ("r1", "ts", "a1"):
        ok(cli("keys", "generate", "--out", str(holders.folder(name)), "--name", name, "--json"))
    root = work / "root.json"
    ok(cli("trust", "init", "--out", str(root), "--root-key", holders.public("r1"), "--timestamp-key",
           holders.public("ts"), "--site", f"{AIRGAP_SOURCE}={holders.public('a1')}", "--expires", "365d", "--json"))
    holders.sign_root(root, "r1")
    source = new_ledger(work / f"{AIRGAP_SOURCE}.duckdb", AIRGAP_SOURCE)
    populate(source)
    ok(cli("trust", "pin", str(root), ledger=source))
    bundle = work / "0001-full.bundle"
    ok(export(source, bundle, holders, "--json", target=site_id))
    ok(cli("bundle", "import", str(bundle), "--trust", str(root), "--json", ledger=ledger))
    tampered = tampered_copy(bundle, work / "0001-full-tampered.bundle")
    refused = cli("bundle", "import", str(tampered), "--json", ledger=ledger)
    assert refused.code == 4, refused
    return {"root": root, "bundle": bundle, "tampered": tampered,
            "tampered_sha256": hashlib.sha256(tampered.read_bytes()).hexdigest()}


@contextlib.contextmanager
def console_site(directory: Path, *, airgap: bool = False) -> Iterator[Site]:
    """A seeded ledger owned by a real server that checks tokens; tokens t1 and t2 (every scope, one tenant each)
    reader (orch:read and orch:airgap on t1), worker (orch:worker alone) and airgap (orch:airgap alone). With
    `airgap`, the ledger also pinned a root, imported a bundle and refused a tampered one (seed_airgap)."""
    from server_fixtures import Keys, init_ledger, serving

    keys = Keys(directory / "keys")
    ledger = init_ledger(directory / "console.duckdb", site_id="console-site")
    seed_site(ledger)
    if airgap:
        seed_airgap(ledger, directory / "airgap")
    tokens = keys.issue_many(TOKENS)
    with serving(ledger, "--token-key", str(keys.public_key)) as server:
        seeded = seed(OrchClient(server.url, tokens["t1"]), OrchClient(server.url, tokens["t2"]))
        yield Site(server, tokens, seeded)
