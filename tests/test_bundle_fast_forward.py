"""Recovery from a fast-forward attack (issue 15 "Trust"; TUF specification 5.3.11): a compromised site key can sign
a bundle whose sequence runs far ahead of the site's own, and the target's anti-rollback floor would then refuse
every genuine bundle of that site. A trust root rotation that replaces the site's keys resets that site's floor,
whether the rotation is pinned with `trust pin` or travels in a bundle; a rotation that only adds keys does not.
Real CLI subprocesses and keys (the fixtures of test_bundle_cli.py)."""

from __future__ import annotations

from pathlib import Path

from export_fixtures import populate
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import state


def rogue_floor(holders, root_v1, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    """site-b imported sequence 3 of site-a, signed with a1, the key that leaked: (site-b's ledger, an old
    a1-signed bundle)."""
    rogue = new_ledger(tmp_path / "rogue.duckdb", "site-a")
    populate(rogue)
    ok(cli("trust", "pin", str(root_v1), ledger=rogue))
    bundles = [tmp_path / f"rogue-{number}.bundle" for number in (1, 2, 3)]
    for path in bundles:
        ok(export(rogue, path, holders, "--json"))
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(cli("bundle", "import", str(bundles[-1]), "--trust", str(root_v1), ledger=target))
    assert state(target)["floors"] == [("site-a", 3)]
    return target, bundles[0]


def rotated(holders, root_v1, tmp_path: Path, keys: str) -> Path:  # noqa: F811
    v2 = tmp_path / "root-v2.json"
    ok(cli("trust", "rotate", str(root_v1), "--out", str(v2), "--site", f"site-a={keys}", "--json"))
    holders.sign_root(v2, "r1", "r2", previous=root_v1)
    return v2


def rebuilt_site_a(root_v1, v2: Path, tmp_path: Path) -> Path:  # noqa: F811
    """site-a after the compromise: a fresh ledger whose own series to site-b starts at 1, signing with a2."""
    fresh = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(fresh)
    ok(cli("trust", "pin", str(root_v1), str(v2), ledger=fresh))
    return fresh


def test_a_rotation_carried_in_a_bundle_that_replaces_a_sites_keys_resets_its_floor(holders, root_v1,  # noqa: F811
                                                                                    tmp_path):
    target, old = rogue_floor(holders, root_v1, tmp_path)
    v2 = rotated(holders, root_v1, tmp_path, holders.public("a2"))
    fresh = rebuilt_site_a(root_v1, v2, tmp_path)
    first = tmp_path / "genuine-1.bundle"
    assert ok(export(fresh, first, holders, "--trust", str(v2), "--json", key="a2"))["sequence"] == 1

    planned = ok(cli("bundle", "plan", str(first), "--json", ledger=target))
    assert planned["plan"]["floors_reset"] == [{"site": "site-a", "root_version": 2, "floor_before": 3}]
    done = ok(cli("bundle", "import", str(first), "--plan-digest", planned["plan_digest"], "--json",
                  ledger=target))
    assert any("its sequence floor 3 is reset to 0" in message for message in done["messages"])
    after = state(target)
    assert after["floors"] == [("site-a", 1)] and after["trust_roots"] == [1, 2]
    listed = ok(cli("bundle", "list", "--json", ledger=target))
    assert [(row["source_site"], row["sequence"], row["superseded_by_root"])
            for row in listed["superseded_imports"]] == [("site-a", 3, 2)]
    # The leaked key no longer speaks for site-a: its old bundles are refused on their signature.
    refused(cli("bundle", "import", str(old), ledger=target), 4)
    assert state(target) == after


def test_pinning_a_rotation_that_replaces_a_sites_keys_resets_its_floor(holders, root_v1, tmp_path):  # noqa: F811
    target, _ = rogue_floor(holders, root_v1, tmp_path)
    v2 = rotated(holders, root_v1, tmp_path, holders.public("a2"))
    fresh = rebuilt_site_a(root_v1, v2, tmp_path)
    first = tmp_path / "genuine-1.bundle"
    ok(export(fresh, first, holders, "--json", key="a2"))
    pinned = ok(cli("trust", "pin", str(v2), "--json", ledger=target))
    assert pinned["floors_reset"] == [{"site": "site-a", "root_version": 2, "floor_before": 3}]
    assert "is reset to 0 (fast-forward recovery)" in pinned["message"]
    assert state(target)["floors"] is None  # list() of no rows
    ok(cli("bundle", "import", str(first), ledger=target))
    assert state(target)["floors"] == [("site-a", 1)]


def test_a_rotation_that_only_adds_a_key_keeps_the_floor(holders, root_v1, tmp_path):  # noqa: F811
    target, _ = rogue_floor(holders, root_v1, tmp_path)
    v2 = rotated(holders, root_v1, tmp_path, f"{holders.public('a1')},{holders.public('a2')}")
    fresh = rebuilt_site_a(root_v1, v2, tmp_path)
    first = tmp_path / "genuine-1.bundle"
    ok(export(fresh, first, holders, "--trust", str(v2), "--json", key="a2"))
    refused(cli("bundle", "plan", str(first), ledger=target), 5, "floor 3")
    refused(cli("bundle", "import", str(first), ledger=target), 5, "floor 3")
    assert state(target)["floors"] == [("site-a", 3)] and state(target)["trust_roots"] == [1]
