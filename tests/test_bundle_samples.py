"""The sample bundles in bundles/ are compatibility vectors: this version (and every later one) must verify and import
them exactly as the version that wrote them did. They were written by scripts/make_sample_bundles.py (the demo's
air-gap act); their private keys no longer exist. Times are judged at each sample's `judge_at` (a settable clock),
so the samples stay valid after their trust root and time anchor would have expired."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from conftest import run_cli

from airgap_orch.ledger import Ledger
from airgap_orch.operations import bundle_import
from airgap_orch.operations import ledger as ledger_ops

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SETS = sorted(path.parent for path in BUNDLES.glob("*/samples.json"))


def samples(folder: Path) -> list[dict]:
    return json.loads((folder / "samples.json").read_text(encoding="utf-8"))["samples"]


def judged(sample: dict) -> datetime:
    return datetime.fromisoformat(sample["judge_at"].replace("Z", "+00:00")).replace(tzinfo=None)


def test_bundles_holds_at_least_one_sample_set_with_its_public_root_and_no_private_key():
    assert SETS, f"no sample sets (*/samples.json) in {BUNDLES}"
    for folder in SETS:
        assert (folder / "root.json").is_file()
        assert not [path for path in folder.rglob("*") if "PRIVATE KEY" in path.read_bytes().decode(errors="ignore")]


@pytest.mark.parametrize("folder", SETS, ids=[folder.name for folder in SETS])
def test_every_sample_bundle_is_unchanged_and_verifies_offline_with_its_root(folder):
    for sample in samples(folder):
        path = folder / sample["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sample["sha256"], f"{path} changed"
        result = run_cli(None, "bundle", "verify", str(path), "--trust", str(folder / "root.json"), "--target",
                         sample["target_site"], "--now", sample["judge_at"], "--staleness", "strict", "--json")
        assert result.code == 0, result
        assert all(check["ok"] for check in result.json["checks"]), result.json["checks"]
        assert (result.json["bundle_id"], result.json["sequence"]) == (sample["bundle_id"], sample["sequence"])
        manifest = run_cli(None, "bundle", "inspect", str(path), "--json").json["manifest"]
        assert (manifest["kind"], manifest.get("tenant"), manifest["row_counts"]) == (
            sample["kind"], sample.get("tenant"), sample["row_counts"])


@pytest.mark.parametrize("folder", SETS, ids=[folder.name for folder in SETS])
def test_the_samples_import_in_order_and_the_handed_over_jobs_are_claimable_here(folder, tmp_path):
    targets = sorted({sample["target_site"] for sample in samples(folder)})
    for target in targets:  # each target site's series into a fresh ledger of that site, in order
        ledger_path = tmp_path / f"{target}.duckdb"
        ledger_ops.init(ledger_path, site_id=target, lock_timeout=5)
        handed = 0
        with Ledger.open(ledger_path, lock_timeout=5) as ledger:
            for number, sample in enumerate(s for s in samples(folder) if s["target_site"] == target):
                done = bundle_import.import_bundle(
                    ledger, folder / sample["file"],
                    trust_root=(folder / "root.json").read_bytes() if number == 0 else None,
                    staleness="strict", now=judged(sample))
                assert done["imported"] is True and done["sequence"] == sample["sequence"]
                handed += sample["handed_over_jobs"]
            verified = ledger_ops.verify(ledger)
        assert verified["ok"] is True
        jobs = run_cli(ledger_path, "jobs", "list", "--json").json["jobs"]
        assert len(jobs) == handed and {job["state"] for job in jobs} <= {"queued"}  # local and claimable here
        if handed:
            claimed = run_cli(ledger_path, "jobs", "claim", "--worker-id", "w", "--limit", "100", "--json")
            assert claimed.code == 0 and len(claimed.json["leases"]) == handed, claimed


@pytest.mark.parametrize("folder", SETS, ids=[folder.name for folder in SETS])
def test_a_sample_with_one_byte_flipped_is_refused(folder, tmp_path):
    sample = samples(folder)[-1]
    copy = tmp_path / sample["file"]
    shutil.copyfile(folder / sample["file"], copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    result = run_cli(None, "bundle", "verify", str(copy), "--trust", str(folder / "root.json"), "--target",
                     sample["target_site"], "--now", sample["judge_at"])
    assert result.code == 4, result
