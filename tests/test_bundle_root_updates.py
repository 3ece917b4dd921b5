"""Root updates on import follow TUF's client workflow (issue 15 "Trust"): a rotation carried in a bundle replaces an
expired pinned root when each step verifies, and expiry is judged against the later of the clock and the latest
verified time anchor. Real keys and CLI (the fixtures of test_bundle_cli.py); the import runs in this process with
its clock set two days ahead, past version 1's expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from export_fixtures import populate
from test_bundle_cli import cli, export, holders, new_ledger, ok  # noqa: F401 (fixtures)
from test_bundle_import import state

from airgap_orch import clock
from airgap_orch.bundle.errors import ExpiredError
from airgap_orch.ledger import Ledger
from airgap_orch.operations import bundle_import


@pytest.fixture
def short_lived(holders, tmp_path):  # noqa: F811
    """Version 1 expires in a day; version 2 (a2 replaces a1 for site-a) in a year."""
    v1 = tmp_path / "root-v1.json"
    ok(cli("trust", "init", "--out", str(v1), "--root-key", holders.public("r1"), "--timestamp-key",
           holders.public("ts"), "--site", f"site-a={holders.public('a1')}", "--expires", "1d"))
    holders.sign_root(v1, "r1")
    v2 = tmp_path / "root-v2.json"
    ok(cli("trust", "rotate", str(v1), "--out", str(v2), "--site", f"site-a={holders.public('a2')}",
           "--expires", "365d"))
    holders.sign_root(v2, "r1", previous=v1)
    return v1, v2


def test_a_rotation_in_the_bundle_replaces_an_expired_pinned_root(holders, short_lived, tmp_path):  # noqa: F811
    v1, v2 = short_lived
    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(source)
    ok(cli("trust", "pin", str(v1), str(v2), ledger=source))
    bare, carrying = tmp_path / "bare.bundle", tmp_path / "carrying.bundle"
    ok(export(source, bare, holders, "--json", key="a2"))
    ok(export(source, carrying, holders, "--trust", str(v2), "--json", key="a2"))
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(cli("trust", "pin", str(v1), ledger=target))
    later = clock.now() + timedelta(days=2)  # version 1 has expired
    before = state(target)
    with Ledger.open(target, lock_timeout=5) as ledger:
        with pytest.raises(ExpiredError) as refused:  # a PolicyRefused: exit 5
            bundle_import.import_bundle(ledger, bare, now=later)
        assert refused.value.reason_code == "expiry:root" and "expired" in str(refused.value)
    assert state(target) == before
    with Ledger.open(target, lock_timeout=5) as ledger:
        done = bundle_import.import_bundle(ledger, carrying, now=later)
    assert done["imported"] is True and done["trust_roots_stored"] == [2]
    assert state(target)["trust_roots"] == [1, 2]
