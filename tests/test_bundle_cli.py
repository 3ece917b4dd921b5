"""The trust and bundle commands as an operator runs them: real CLI subprocesses, real keys from `keys generate`
(each in its holder's own folder, standing for its own machine), real ledgers. Setup that is not under test
(filling a ledger) runs in-process."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest
from conftest import run_cli, run_cli_on_a_terminal
from export_fixtures import copy_ledger, populate, read_table
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, Role, Root
from tuf.api.serialization.json import JSONSerializer

from airgap_orch import clock
from airgap_orch.auth import load_private_key
from airgap_orch.bundle.keys import tuf_keyid
from airgap_orch.bundle.tables import TABLES
from airgap_orch.bundle.tarfmt import read_index
from airgap_orch.ledger import Ledger
from airgap_orch.operations import ledger as ledger_ops

KEY_NAMES = ("r1", "r2", "r3", "r4", "ts", "a1", "a2", "c1", "c2", "x")
CHECKS = ["size", "structure", "trust-root", "signature", "manifest", "source-site", "members", "time-anchor",
          "staleness", "target", "tables"]
# Within the trust roots' lifetime (365 days from now): one fixed value for the whole module.
CREATED_AT = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
CREATED = CREATED_AT.isoformat()


# --- helpers ------------------------------------------------------------------------------------------------

def ok(result) -> dict | str:
    assert result.code == 0, result
    return result.json if result.stdout.startswith("{") else result.stdout


def refused(result, code: int, *fragments: str) -> str:
    """The command failed with `code` and said so in exactly one line naming `fragments`."""
    assert result.code == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    for fragment in fragments:
        assert fragment in lines[0], result
    return lines[0]


def cli(*args: str, ledger: Path | None = None, **kwargs):
    return run_cli(ledger, *args, **kwargs)


class Holders:
    """Key pairs made with `keys generate`, one folder per holder: keys/<name>/<name>.{key,pub}.pem."""

    def __init__(self, base: Path):
        self.base = base

    def folder(self, name: str) -> Path:
        return self.base / name

    def public(self, name: str) -> str:
        return str(self.base / name / f"{name}.pub.pem")

    def private(self, name: str) -> str:
        return str(self.base / name / f"{name}.key.pem")

    def sign_root(self, root: Path, *names: str, previous: Path | None = None) -> dict:
        """Each holder signs on their own machine: the file travels to their folder and back."""
        result: dict = {}
        for name in names:
            copy = self.folder(name) / root.name
            shutil.copyfile(root, copy)
            args = ["trust", "sign", str(copy), "--key", self.private(name), "--json"]
            if previous is not None:
                args += ["--previous", str(previous)]
            result = ok(cli(*args))
            shutil.copyfile(copy, root)
            copy.unlink()
        return result


@pytest.fixture(scope="module")
def holders(tmp_path_factory) -> Holders:
    base = tmp_path_factory.mktemp("keys")
    for name in KEY_NAMES:
        ok(cli("keys", "generate", "--out", str(base / name), "--name", name, "--json"))
    return Holders(base)


@pytest.fixture(scope="module")
def root_v1(holders, tmp_path_factory) -> Path:
    """Version 1: root r1 r2 (threshold 2), timestamp ts; site-a: a1; site-c: c1 c2 (threshold 2)."""
    root = tmp_path_factory.mktemp("trust") / "root-v1.json"
    made = ok(cli("trust", "init", "--out", str(root), "--root-key", holders.public("r1"),
                  "--root-key", holders.public("r2"), "--root-threshold", "2", "--timestamp-key", holders.public("ts"),
                  "--site", f"site-a={holders.public('a1')}",
                  "--site", f"site-c={holders.public('c1')},{holders.public('c2')}", "--site-threshold", "site-c=2",
                  "--expires", "365d", "--json"))
    assert (made["version"], made["complete"], made["signatures"]["by_own_root_keys"]) == (1, False, 0)
    signed = holders.sign_root(root, "r1", "r2")
    assert signed["complete"] is True
    return root


def new_ledger(path: Path, site: str) -> Path:
    ledger_ops.init(path, site_id=site, lock_timeout=5)
    return path


def export(ledger: Path, out: Path, holders: Holders, *extra: str, key: str = "a1", target: str = "site-b"):
    return cli("bundle", "export", "--out", str(out), "--target", target, "--key", holders.private(key),
               "--timestamp-key", holders.private("ts"), *extra, ledger=ledger)


def exports_recorded(ledger: Path) -> int:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return opened._con.execute("SELECT count(*) FROM bundle_exports").fetchone()[0]


@pytest.fixture
def source(tmp_path, root_v1) -> Path:
    """site-a's ledger, filled, with version 1 pinned."""
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(ledger)
    ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    return ledger


# --- the whole flow -----------------------------------------------------------------------------------------

def test_a_root_signed_by_each_holder_is_pinned_and_a_bundle_exported_under_it_verifies(holders, root_v1, tmp_path):
    data = root_v1.read_bytes()
    metadata = Metadata.from_bytes(data)  # plain python-tuf loads and verifies what `trust` wrote
    metadata.verify_delegate("root", metadata)
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(ledger)

    pinned = ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    fingerprint = hashlib.sha256(metadata.signed_bytes).hexdigest()
    assert f"fingerprint {fingerprint}" in pinned
    shown = ok(cli("trust", "show", "--json", ledger=ledger))
    assert (shown["version"], shown["fingerprint"], shown["expired"]) == (1, fingerprint, False)
    assert shown["roles"]["root"]["threshold"] == 2 and len(shown["roles"]["root"]["keyids"]) == 2
    assert shown["sites"]["site-c"]["threshold"] == 2 and len(shown["sites"]["site-a"]["keyids"]) == 1
    assert ok(cli("trust", "pin", str(root_v1), "--json", ledger=ledger))["pinned"] is False  # again: no-op

    out = tmp_path / "full.bundle"
    made = ok(export(ledger, out, holders, "--json"))
    assert made["self_check"].startswith("verified against trust root version 1")
    assert (made["sequence"], made["kind"], made["source_site"], made["target_site"]) == (1, "full", "site-a",
                                                                                          "site-b")
    assert set(made["row_counts"]) == {spec.name for spec in TABLES} and made["row_counts"]["jobs"] == 15
    with out.open("rb") as bundle:
        names = read_index(bundle).names
    assert names == ("envelope.dsse.json", "time-anchor.json", *(spec.path for spec in TABLES))

    verified = ok(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b", "--json"))
    assert [check["name"] for check in verified["checks"]] == CHECKS
    assert all(check["ok"] for check in verified["checks"])
    assert (verified["bundle_id"], verified["sequence"]) == (made["bundle_id"], 1)
    shown_human = ok(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b"))
    assert all(f"ok    {name}" in shown_human for name in CHECKS) and "verified: full bundle" in shown_human
    # Without --trust, the pinned root and this site's id (so a bundle for site-b is refused here).
    refused(cli("bundle", "verify", str(out), ledger=ledger), 5, "addressed to site 'site-b'", "not to this site")

    inspected = ok(cli("bundle", "inspect", str(out)))
    assert inspected.startswith("UNVERIFIED") and '"target_site": "site-b"' in inspected
    assert ok(cli("bundle", "inspect", str(out), "--json"))["verified"] is False

    second = ok(export(ledger, tmp_path / "second.bundle", holders, "--json"))
    other = ok(export(ledger, tmp_path / "other.bundle", holders, "--json", target="site-c"))
    assert (second["sequence"], other["sequence"]) == (2, 1)


def test_a_root_below_its_threshold_is_not_pinned(holders, root_v1, tmp_path):
    half = tmp_path / "half.json"
    ok(cli("trust", "init", "--out", str(half), "--root-key", holders.public("r1"), "--root-key",
           holders.public("r2"), "--root-threshold", "2", "--timestamp-key", holders.public("ts"), "--json"))
    status = holders.sign_root(half, "r1")
    assert (status["signatures"]["by_own_root_keys"], status["complete"]) == (1, False)
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    refused(cli("trust", "pin", str(half), ledger=ledger), 4, "not signed by a threshold of its own root keys",
            "1 of 2")
    refused(cli("trust", "show", ledger=ledger), 1, "no trust root is pinned")


def test_one_key_under_two_keyids_does_not_meet_a_threshold_of_two(holders, tmp_path):
    r1 = load_private_key(Path(holders.private("r1")))
    lower = SSlibKey.from_crypto(r1.public_key())
    entry = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": lower.keyval["public"].upper()}}
    upper = SSlibKey(tuf_keyid(entry), "ed25519", "ed25519", entry["keyval"])  # a correct keyid for its entry
    r2 = SSlibKey.from_crypto(load_private_key(Path(holders.private("r2"))).public_key())
    ts = SSlibKey.from_crypto(load_private_key(Path(holders.private("ts"))).public_key())
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    metadata = Metadata(Root(expires=expires, consistent_snapshot=False,
                             keys={k.keyid: k for k in (lower, upper, r2, ts)},
                             roles={"root": Role([lower.keyid, upper.keyid, r2.keyid], 2),
                                    **{name: Role([ts.keyid], 1) for name in ("targets", "timestamp", "snapshot")}}))
    metadata.sign(CryptoSigner(r1, lower), append=True)
    metadata.sign(CryptoSigner(r1, upper), append=True)
    root = tmp_path / "one-key-twice.json"
    root.write_bytes(metadata.to_bytes(JSONSerializer()))
    Metadata.from_bytes(root.read_bytes()).verify_delegate("root", metadata)  # python-tuf counts two keyids
    ledger = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    refused(cli("trust", "pin", str(root), ledger=ledger), 4, "not signed by a threshold", "1 of 2 distinct keys")
    refused(cli("trust", "show", ledger=ledger), 1, "no trust root is pinned")


def test_rotation_a_bundle_signed_under_v2_verifies_with_only_v1_pinned_when_it_carries_v2(
        holders, root_v1, source, tmp_path):
    v2 = tmp_path / "root-v2.json"
    rotated = ok(cli("trust", "rotate", str(root_v1), "--out", str(v2), "--root-key", holders.public("r3"),
                     "--root-key", holders.public("r4"), "--root-threshold", "2",
                     "--site", f"site-a={holders.public('a2')}", "--json"))
    assert (rotated["version"], rotated["rotates"], rotated["complete"]) == (2, 1, False)
    new_only = tmp_path / "root-v2-new-keys-only.json"
    shutil.copyfile(v2, new_only)
    holders.sign_root(new_only, "r3", "r4")
    holders.sign_root(v2, "r1", "r2", previous=root_v1)
    status = holders.sign_root(v2, "r3", "r4", previous=root_v1)
    assert status["signatures"] == {"by_own_root_keys": 2, "own_threshold": 2, "by_previous_root_keys": 2,
                                    "previous_threshold": 2}

    # A rotation signed only by the new keys is refused; the signed one advances the pin.
    refused(cli("trust", "pin", str(new_only), ledger=source), 4, "not signed by a threshold of the root keys of "
            "trusted version 1")
    assert ok(cli("trust", "pin", str(v2), "--json", ledger=source))["pinned_versions"] == [2]

    carried = tmp_path / "carried.bundle"
    made = ok(export(source, carried, holders, "--trust", str(v2), "--json", key="a2"))
    assert made["trust_roots"] == [2] and made["self_check"].startswith("verified against trust root version 2")
    verified = ok(cli("bundle", "verify", str(carried), "--trust", str(root_v1), "--json"))
    trust_check = next(check for check in verified["checks"] if check["name"] == "trust-root")
    assert trust_check["detail"].startswith("pinned version 1 -> version 2")
    assert (verified["trust_root_version"], verified["new_trust_roots"]) == (2, [2])

    # The same bundle without v2: a2 is bound to no site in v1, the only root the receiver holds.
    bare = tmp_path / "bare.bundle"
    ok(export(source, bare, holders, "--json", key="a2"))
    refused(cli("bundle", "verify", str(bare), "--trust", str(root_v1)), 4, "binds to no site")

    # A bundle carrying the rotation signed by the new keys only: refused at the receiver that pinned v1.
    elsewhere = new_ledger(tmp_path / "unpinned.duckdb", "site-a")
    forged = tmp_path / "forged.bundle"
    ok(export(elsewhere, forged, holders, "--trust", str(new_only), "--json", key="a2"))
    refused(cli("bundle", "verify", str(forged), "--trust", str(root_v1)), 4, "not signed by a threshold of the "
            "root keys of trusted version 1")


def test_two_copies_of_one_ledger_export_byte_identical_bundles(holders, source, tmp_path):
    twin = tmp_path / "twin.duckdb"
    copy_ledger(source, twin)
    first, second = tmp_path / "first.bundle", tmp_path / "second.bundle"
    ok(export(source, first, holders, "--created-at", CREATED, "--json"))
    ok(export(twin, second, holders, "--created-at", CREATED, "--json"))
    assert first.read_bytes() == second.read_bytes()
    later = tmp_path / "later.bundle"
    ok(export(twin, later, holders, "--created-at", (CREATED_AT + timedelta(seconds=1)).isoformat(), "--json"))
    assert later.read_bytes() != second.read_bytes()


def test_a_tenant_export_holds_that_tenants_rows_only(holders, source, tmp_path):
    with Ledger.open(source, lock_timeout=5) as ledger:
        found = ledger._con.execute("SELECT job_id FROM all_jobs WHERE tenant = 'acme'").fetchall()
    acme_jobs = {row[0] for row in found}
    out = tmp_path / "acme.bundle"
    made = ok(export(source, out, holders, "--tenant", "acme", "--json"))
    assert made["tenant"] == "acme" and made["self_check"].startswith("verified")
    jobs = read_table(out, "jobs")
    assert set(jobs.column("tenant").to_pylist()) == {"acme"} and set(jobs.column("job_id").to_pylist()) == acme_jobs
    history = read_table(out, "history")  # the whole chain; other tenants' entries as hashes only
    shown = history.filter(pc.invert(history.column("hash_only")))
    assert shown.num_rows > 0 and set(shown.column("job_id").to_pylist()) <= acme_jobs
    hidden = history.filter(history.column("hash_only"))
    assert hidden.num_rows > 0 and set(hidden.column("job_id").to_pylist()) == {None}
    assert set(hidden.column("entry").to_pylist()) == {None}
    assert read_table(out, "quotas").column("tenant").to_pylist() == ["acme"]
    assert read_table(out, "rate_limits").column("scope").to_pylist() == ["tenant:acme/type:scan"]
    assert read_table(out, "concurrency_limits").num_rows == 0  # 'tenant:globex' and 'type:scan' are not acme's
    assert read_table(out, "idempotency_keys").column("tenant").to_pylist() == ["acme"] * 5
    assert read_table(out, "sources").column("tenant").to_pylist() == ["acme"]
    assert read_table(out, "backfills").num_rows == read_table(out, "backfill_windows").num_rows == 0
    audited = [json.loads(entry) for entry in read_table(out, "audit_log").column("entry").to_pylist()
               if entry is not None]
    assert audited and {entry["details"]["tenant"] for entry in audited} == {"acme"}


def test_bundle_sign_adds_the_second_signature_a_site_threshold_of_two_needs(holders, root_v1, tmp_path):
    ledger = new_ledger(tmp_path / "site-c.duckdb", "site-c")
    populate(ledger, jobs_per_tenant=1)
    ok(cli("trust", "pin", str(root_v1), ledger=ledger))
    once = tmp_path / "once.bundle"
    made = ok(export(ledger, once, holders, "--json", key="c1"))
    assert made["self_check"].startswith("skipped: 1 of the 2 signatures")
    refused(cli("bundle", "verify", str(once), "--trust", str(root_v1)), 4, "1 distinct trusted key", "2 are required")
    refused(cli("bundle", "sign", str(once), "--key", holders.private("a1"), "--out", str(tmp_path / "bad.bundle"),
                "--trust", str(root_v1)), 1, "is not a key of site site-c")
    twice = tmp_path / "twice.bundle"
    signed = ok(cli("bundle", "sign", str(once), "--key", holders.private("c2"), "--out", str(twice), "--trust",
                    str(root_v1), "--json"))
    assert (signed["signatures"], signed["site_threshold"], signed["threshold_met"]) == (2, 2, True)
    verified = ok(cli("bundle", "verify", str(twice), "--trust", str(root_v1), "--json"))
    assert verified["bundle_id"] == made["bundle_id"] and verified["signers"] and len(verified["signers"]) == 2
    assert not (tmp_path / "bad.bundle").exists()


def test_export_shows_progress_on_a_terminal_only(holders, source, tmp_path):
    result, shown = run_cli_on_a_terminal(source, "bundle", "export", "--out", str(tmp_path / "tty.bundle"),
                                          "--target", "site-b", "--key", holders.private("a1"),
                                          "--timestamp-key", holders.private("ts"))
    assert result.code == 0, result
    assert b"exporting rows" in shown
    quiet = export(source, tmp_path / "pipe.bundle", holders, "--json")
    assert quiet.code == 0 and quiet.stderr == ""


def test_keys_generate_says_its_keys_sign_tokens_and_bundles():
    text = ok(cli("keys", "generate", "--help"))
    assert "bearer tokens" in text and "bundles" in text and "trust roots" in text


# --- bad input: one line, a documented exit code, nothing changed -------------------------------------------

def test_a_missing_key_file_is_refused_in_one_line(holders, source, tmp_path):
    out = tmp_path / "none.bundle"
    result = cli("bundle", "export", "--out", str(out), "--target", "site-b", "--key", str(tmp_path / "gone.key.pem"),
                 "--timestamp-key", holders.private("ts"), ledger=source)
    refused(result, 1, "cannot read private key", "gone.key.pem")
    assert not out.exists() and exports_recorded(source) == 0


def test_a_wrong_passphrase_is_refused_in_one_line(root_v1, tmp_path):
    (tmp_path / "right").write_text("correct horse\n")
    (tmp_path / "wrong").write_text("battery staple\n")
    ok(cli("keys", "generate", "--out", str(tmp_path / "k"), "--name", "locked", "--passphrase-file",
           str(tmp_path / "right"), "--json"))
    copy = tmp_path / "root.json"
    shutil.copyfile(root_v1, copy)
    result = cli("trust", "sign", str(copy), "--key", str(tmp_path / "k" / "locked.key.pem"), "--passphrase-file",
                 str(tmp_path / "wrong"))
    refused(result, 1, "cannot decrypt private key", "wrong passphrase")
    assert "battery" not in result.stderr + result.stdout
    assert copy.read_bytes() == root_v1.read_bytes()
    refused(cli("trust", "sign", str(copy), "--key", str(tmp_path / "k" / "locked.key.pem")), 1, "is encrypted",
            "--passphrase-file")


def test_trust_init_refuses_a_private_key(holders, tmp_path):
    out = tmp_path / "root.json"
    result = cli("trust", "init", "--out", str(out), "--root-key", holders.private("r1"), "--timestamp-key",
                 holders.public("ts"))
    line = refused(result, 1, "holds a PRIVATE key", "PUBLIC key")
    assert "BEGIN" not in line and not out.exists()


def test_verify_refuses_a_bundle_under_an_expired_root_with_exit_5(holders, source, root_v1, tmp_path):
    out = tmp_path / "b.bundle"
    ok(export(source, out, holders, "--json"))
    expires = clock.parse_iso(json.loads(root_v1.read_text())["signed"]["expires"])
    after = (expires + timedelta(days=1)).isoformat() + "Z"
    refused(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--now", after), 5, "expired")
    result = cli("bundle", "verify", str(out), "--trust", str(root_v1), "--now", after, "--json")
    assert result.code == 5 and json.loads(result.stdout)["reason_code"] == "expiry:root"
    assert json.loads(result.stderr)["error"]["exit_code"] == 5


def test_verify_refuses_a_tampered_bundle_with_exit_4(holders, source, root_v1, tmp_path):
    out = tmp_path / "b.bundle"
    ok(export(source, out, holders, "--json"))
    with out.open("rb") as bundle:
        jobs = read_index(bundle).member("data/jobs.parquet")
    data = bytearray(out.read_bytes())
    data[jobs.data_offset + jobs.size // 2] ^= 0x01  # one bit inside the jobs table
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    result = cli("bundle", "verify", str(tampered), "--trust", str(root_v1), "--json")
    assert result.code == 4, result
    shown = json.loads(result.stdout)
    assert shown["reason_code"] == "merkle:hash-mismatch"
    assert [check["name"] for check in shown["checks"]] == CHECKS[:7] and not shown["checks"][-1]["ok"]
    refused(cli("bundle", "verify", str(tampered), "--trust", str(root_v1)), 4, "data/jobs.parquet",
            "altered or damaged")
    data = bytearray(out.read_bytes())
    data[jobs.data_offset - 512 + 200] ^= 0x20  # a byte of the member's tar header (linkname field)
    tampered.write_bytes(bytes(data))
    refused(cli("bundle", "verify", str(tampered), "--trust", str(root_v1)), 4)


def test_verify_refuses_a_bundle_for_another_target_with_exit_5(holders, source, root_v1, tmp_path):
    out = tmp_path / "b.bundle"
    ok(export(source, out, holders, "--json", target="site-c"))
    refused(cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b"), 5,
            "addressed to site 'site-c'")


def test_a_key_bound_to_no_site_is_refused_at_export_and_at_verify(holders, source, root_v1, tmp_path):
    out = tmp_path / "stranger.bundle"
    refused(export(source, out, holders, key="x"), 1, "is not a key of site site-a in trust root version 1")
    assert not out.exists() and exports_recorded(source) == 0
    # From a ledger with no root pinned the key cannot be checked at export; the receiver refuses it.
    unpinned = new_ledger(tmp_path / "unpinned.duckdb", "site-a")
    made = ok(export(unpinned, out, holders, "--json", key="x"))
    assert made["self_check"].startswith("skipped: no trust root")
    refused(cli("bundle", "verify", str(out), "--trust", str(root_v1)), 4, "binds to no site")
    refused(export(source, out, holders), 1, "already exists")  # never replaces a file


def test_a_ledger_a_server_owns_refuses_the_clis_signing_keys_at_once(holders, source, root_v1, tmp_path):
    from server_fixtures import serving

    with serving(source, "--no-auth"):  # "owns the ledger": found from the server's record, not the file lock
        # bundle export goes through the server (issue 15, "Commands"), which signs with its own keys: the CLI's
        # --key/--timestamp-key are refused at once, in one line (it was exit 6 before export went through servers).
        refused(export(source, tmp_path / "x.bundle", holders), 1, "--key and --timestamp-key stay off a server",
                "serve --bundle-key")
        # trust pin goes through the server now (issue 15, "Commands"): the root pinned already is a no-op there.
        assert ok(cli("trust", "pin", str(root_v1), "--json", ledger=source))["pinned"] is False
    assert not (tmp_path / "x.bundle").exists()
    # --trust needs no ledger: verifying works whoever owns it.
    ok(export(source, tmp_path / "y.bundle", holders, "--json"))
    with serving(source, "--no-auth"):
        ok(cli("bundle", "verify", str(tmp_path / "y.bundle"), "--trust", str(root_v1), "--json", ledger=source))


def test_verify_plan_and_import_show_progress_on_a_terminal_only(holders, source, root_v1, tmp_path):
    out = tmp_path / "for-b.bundle"
    ok(export(source, out, holders, "--json"))
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    result, shown = run_cli_on_a_terminal(target, "bundle", "verify", str(out), "--trust", str(root_v1), "--target",
                                          "site-b")
    assert result.code == 0, result
    size = out.stat().st_size
    assert b"verifying bundle" in shown and f"{size}/{size}".encode() in shown  # every byte of it read
    for command in ("plan", "import"):
        result, shown = run_cli_on_a_terminal(target, "bundle", command, str(out), "--trust", str(root_v1))
        assert result.code == 0, result
        assert b"copying and verifying bundle" in shown and f"{2 * size}/{2 * size}".encode() in shown
    # --json on a terminal, or no terminal at all: nothing on stderr
    result, shown = run_cli_on_a_terminal(target, "--json", "bundle", "verify", str(out), "--trust", str(root_v1),
                                          "--target", "site-b")
    assert result.code == 0 and b"verifying bundle" not in shown
    quiet = cli("bundle", "verify", str(out), "--trust", str(root_v1), "--target", "site-b")
    assert quiet.code == 0 and quiet.stderr == ""
