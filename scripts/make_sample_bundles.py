"""Write a set of sample bundles into bundles/: compatibility vectors that every later version must still verify.

    python scripts/make_sample_bundles.py bundles/v1

Runs `airgap-orch demo` in a temporary directory (its air-gap act makes keys, a trust root, a full bundle and an
incremental one with a hand-off) and exports one more bundle from its connected site, of one tenant only (`--tenant`,
for another target site), then keeps only what a verifier needs: the PUBLIC trust root and the bundles.
The private keys are deleted with the temporary directory, so nobody can sign another bundle under this root.
`samples.json` records, per bundle, what tests/test_bundle_samples.py checks it against: the file's sha256, the
manifest's ids, sequence and row counts, and the time to judge it at (the bundles' created_at plus a minute: the
root and the time anchor would expire one day, the samples must not).

The target directory must not exist: samples are never rewritten, only added (a new directory per format).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

JUDGE_AFTER = timedelta(minutes=1)
TENANT_TARGET = "airgapped-tenant-site"


def airgap_orch(*args: str, cwd: Path | None = None) -> dict:
    done = subprocess.run([sys.executable, "-m", "airgap_orch", "--json", *args], capture_output=True, cwd=cwd,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"airgap-orch {' '.join(args)} exited {done.returncode}: {done.stderr.decode().strip()}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new directory, e.g. bundles/v1")
    out: Path = parser.parse_args().out
    if out.exists():
        raise SystemExit(f"{out} exists; samples are never rewritten: name a new directory")
    with tempfile.TemporaryDirectory(prefix="airgap-orch-samples-") as scratch:
        work = Path(scratch) / "demo"
        report = airgap_orch("demo", "--workdir", str(work))
        out.mkdir(parents=True)
        shutil.copyfile(report["trust_root"], out / "root.json")
        # One more kind: a --tenant bundle (one tenant's rows; the other tenants' chain entries as hashes only).
        tenant_bundle = work / "bundles" / "0001-tenant-acme-corp.bundle"
        airgap_orch("--ledger", report["source_ledger"], "bundle", "export", "--out", str(tenant_bundle),
                    "--target", TENANT_TARGET, "--tenant", "acme-corp", "--key", report["bundle_signing_key"],
                    "--timestamp-key", str(Path(report["bundle_signing_key"]).with_name("timestamp.key.pem")))
        samples = []
        for path in [*map(Path, report["bundles"]), tenant_bundle]:
            shutil.copyfile(path, out / path.name)
            manifest = airgap_orch("bundle", "inspect", str(path))["manifest"]
            created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
            samples.append({
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "bundle_id": manifest["bundle_id"],
                "kind": manifest["kind"],
                "tenant": manifest.get("tenant"),
                "source_site": manifest["source_site"],
                "target_site": manifest["target_site"],
                "sequence": manifest["sequence"],
                "base_sequence": manifest["base_sequence"],
                "created_at": manifest["created_at"],
                "row_counts": manifest["row_counts"],
                "members": len(manifest["members"]),
                "tool_version": manifest["tool_version"],
                "judge_at": (created + JUDGE_AFTER).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "handed_over_jobs": (report["airgap"]["handed_over"]["jobs"]
                                     if manifest["kind"] == "incremental" else 0),
            })
        record = {"trust_root": "root.json", "samples": samples}
        (out / "samples.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(samples)} sample bundles and their public trust root to {out}")


if __name__ == "__main__":
    main()
