"""The policy authority (issue 15): a site applies the quotas, rate limits and concurrency limits of a bundle only
when it designated the bundle's source site its policy authority (`airgap authority set SITE --reason R`, audited);
otherwise it keeps them as mirrors it can show (`airgap policies`). Real CLI subprocesses, real keys and trust
roots (the fixtures of test_bundle_cli.py), real DuckDB ledgers: site-a and site-c export, site-b imports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import kill_import_at, source  # noqa: F401 (fixture: site-a, filled, version 1 pinned)

from airgap_orch.auth import load_private_key
from airgap_orch.bundle.dsse import parse_canonical_envelope
from airgap_orch.bundle.manifest import ENVELOPE_MEMBER, PARQUET_MEDIA_TYPE, BundleHeader, parse_manifest
from airgap_orch.bundle.tables import BY_NAME, TableSpec, write_table_member
from airgap_orch.bundle.tarfmt import open_member, read_index
from airgap_orch.bundle.writer import DataMember, write_bundle
from airgap_orch.ledger import Ledger
from airgap_orch.operations import dispatch

POLICY_TABLES = ("quotas", "rate_limits", "concurrency_limits", "circuit_breakers", "pauses")
APPLIED_TABLES = ("quotas", "rate_limits", "concurrency_limits")
ISSUED = "SELECT {key}, issuer_site, issuer_version, revision FROM {table} ORDER BY {key}"
KEYS = {"quotas": "tenant", "rate_limits": "scope", "concurrency_limits": "limit_key"}


# --- helpers ------------------------------------------------------------------------------------------------

def policy_state(ledger: Path) -> dict:
    """Every policy row, the token bucket levels and the authority: what a refused import must leave alone."""
    with Ledger.open(ledger, lock_timeout=5) as opened:
        con = opened._con
        found = {table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
                 for table in (*POLICY_TABLES, "bucket_levels", "policy_authority")}
        found["mirror_policies"] = con.execute("SELECT count(*) FROM mirror_policies").fetchone()[0]
        found["audit"] = con.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        return found


def issued(ledger: Path, table: str) -> dict[str, tuple]:
    """{key: (issuer_site, issuer_version, revision)} of an applied policy table."""
    with Ledger.open(ledger, lock_timeout=5) as opened:
        rows = opened._con.execute(ISSUED.format(key=KEYS[table], table=table)).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def quota(ledger: Path, tenant: str) -> int | None:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        row = opened._con.execute("SELECT max_active FROM quotas WHERE tenant = ?", [tenant]).fetchone()
    return None if row is None else row[0]


def audit_entries(ledger: Path, action: str) -> list[dict]:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        rows = opened._con.execute("SELECT entry FROM audit_log WHERE action = ? ORDER BY seq", [action]).fetchall()
    return [json.loads(row[0]) for row in rows]


def run(ledger: Path, operation: str, params: dict) -> dict:
    """Setup that is not under test, in-process through the one operations door."""
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return dispatch.run(opened, operation, params)


def bundle(source: Path, holders, path: Path, *extra: str, key: str = "a1", target: str = "site-b") -> Path:  # noqa: F811
    ok(export(source, path, holders, *extra, "--json", key=key, target=target))
    return path


def plan_tables(result: dict) -> dict[str, dict]:
    return {table["table"]: table for table in result["plan"]["tables"]}


@pytest.fixture
def target(tmp_path) -> Path:
    """site-b, with limits of its own: quota acme 2 (a key site-a also issues), quota local-only 4 (a key only
    site-b has), concurrency type:scan 1 (site-a issues it too)."""
    ledger = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    run(ledger, "quotas.set", {"tenant": "acme", "max_active": 2, "reason": "local"})
    run(ledger, "quotas.set", {"tenant": "local-only", "max_active": 4, "reason": "local"})
    run(ledger, "concurrency.set", {"key": "type:scan", "max": 1, "reason": "local"})
    return ledger


# --- not the authority: mirrored only -----------------------------------------------------------------------

@pytest.mark.parametrize("authority", [None, "site-c"], ids=["no-authority", "another-site-is-the-authority"])
def test_from_a_site_that_is_not_the_policy_authority_policies_are_mirrored_only_and_local_limits_stay(
        holders, source, target, root_v1, tmp_path, authority):  # noqa: F811
    if authority is not None:
        ok(cli("airgap", "authority", "set", authority, "--reason", "site-c issues our limits", ledger=target))
    out = bundle(source, holders, tmp_path / "a.bundle")
    before = policy_state(target)
    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    tables = plan_tables(planned)
    assert planned["plan"]["policy_authority"] == authority
    for name in APPLIED_TABLES:
        assert tables[name]["action"] == "mirrored, not applied"
        assert tables[name]["note"] == ("site-a is not the policy authority; "
                                        "`airgap authority set site-a --reason R`")
    shown = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), ledger=target))
    assert "mirrored, not applied (site-a is not the policy authority; `airgap authority set site-a --reason R`)" \
        in shown

    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest", planned["plan_digest"],
           ledger=target))
    after = policy_state(target)
    for name in (*POLICY_TABLES, "bucket_levels", "policy_authority"):
        assert after[name] == before[name], name  # local limits unchanged, nothing applied
    assert after["mirror_policies"] == sum(tables[name]["rows"] for name in POLICY_TABLES) > 0
    assert audit_entries(target, "policy.apply") == []
    # ... and kept as mirrors it can show
    mirrors = ok(cli("airgap", "policies", "--source", "site-a", "--json", ledger=target))
    acme = [item for item in mirrors["policies"] if (item["table"], item["key"]) == ("quotas", "acme")]
    assert len(acme) == 1 and acme[0]["row"]["max_active"] == 5 and acme[0]["applied"] is False
    assert (acme[0]["issuer_site"], acme[0]["issuer_version"]) == ("site-a", 1)
    assert len(mirrors["policies"]) == after["mirror_policies"]
    assert "quotas" in ok(cli("airgap", "policies", ledger=target))
    status = ok(cli("airgap", "status", "--json", ledger=target))["policy_authority"]
    assert (status["site"] if status else None) == authority


# --- the authority: applied and audited -------------------------------------------------------------------

def test_the_policy_authoritys_policies_are_applied_on_import_and_audited(holders, source, target, root_v1,  # noqa: F811
                                                                          tmp_path):
    out = bundle(source, holders, tmp_path / "a.bundle")
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central ops sets our limits", ledger=target))
    shown = ok(cli("airgap", "authority", "show", "--json", ledger=target))
    assert (shown["policy_authority"]["site"], shown["policy_authority"]["reason"]) == (
        "site-a", "central ops sets our limits")
    designated = audit_entries(target, "policy.authority.set")[-1]
    assert (designated["actor"], designated["reason"], designated["target"]) == (
        "cli", "central ops sets our limits", "site-a")
    assert designated["details"] == {"from": None, "to": "site-a"}

    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    tables = plan_tables(planned)
    assert planned["plan"]["policy_authority"] == "site-a"
    assert tables["quotas"]["action"] == "applied"
    assert tables["quotas"]["changes"] == {"added": 1, "replaced": 1, "kept": 0, "issued_here": 0}
    assert tables["concurrency_limits"]["changes"] == {"added": 1, "replaced": 1, "kept": 0, "issued_here": 0}
    assert tables["rate_limits"]["changes"] == {"added": 2, "replaced": 0, "kept": 0, "issued_here": 0}
    assert tables["circuit_breakers"]["action"] == tables["pauses"]["action"] == "mirrored, not applied"

    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest", planned["plan_digest"],
           ledger=target))
    # the authority's rows win for keys it issues; local rows stay for keys only this site has
    assert issued(target, "quotas") == {"acme": ("site-a", 1, 2), "globex": ("site-a", 1, 1),
                                        "local-only": ("site-b", 1, 1)}
    assert (quota(target, "acme"), quota(target, "globex"), quota(target, "local-only")) == (5, 7, 4)
    assert issued(target, "concurrency_limits") == {"tenant:globex": ("site-a", 1, 1), "type:scan": ("site-a", 1, 2)}
    assert set(issued(target, "rate_limits")) == {"tenant:acme/type:scan", "host:nvd.example"}
    state = policy_state(target)
    assert state["circuit_breakers"] == [] and state["pauses"] == []  # mirrored only
    listed = ok(cli("quota", "list", "--json", ledger=target))["quotas"]
    assert {row["tenant"]: row["issuer_site"] for row in listed} == {
        "acme": "site-a", "globex": "site-a", "local-only": "site-b"}

    entry = audit_entries(target, "policy.apply")[-1]
    assert (entry["actor"], entry["target"]) == ("cli", "site-a#1")
    assert entry["details"]["summary"] == {"added": 4, "replaced": 2, "kept": 0, "issued_here": 0}
    changes = {(c["table"], c["key"]): c for c in entry["details"]["changes"]}
    assert changes[("quotas", "acme")]["change"] == "replaced"
    assert changes[("quotas", "acme")]["before"] == {"issuer_site": "site-b", "issuer_version": 1}
    assert changes[("quotas", "globex")]["change"] == "added"
    assert audit_entries(target, "bundle.import")[-1]["details"]["policy_rows_applied"] == 6
    mirrors = ok(cli("airgap", "policies", "--json", ledger=target))["policies"]
    assert {(m["table"], m["key"]) for m in mirrors if m["applied"]} == {
        ("quotas", "acme"), ("quotas", "globex"), ("concurrency_limits", "tenant:globex"),
        ("concurrency_limits", "type:scan"), ("rate_limits", "tenant:acme/type:scan"),
        ("rate_limits", "host:nvd.example")}
    status = ok(cli("airgap", "status", "--json", ledger=target))
    assert status["policy_authority"]["site"] == "site-a"
    assert "policy authority: site-a" in ok(cli("airgap", "status", ledger=target))

    # a local change still works: it is issued here again, at a version above every earlier one of the row
    ok(cli("quota", "set", "--tenant", "acme", "--max-active", "3", "--reason", "local override", ledger=target))
    assert issued(target, "quotas")["acme"] == ("site-b", 3, 3)


def test_an_older_per_issuer_version_does_not_overwrite_a_newer_one(holders, source, target, root_v1,  # noqa: F811
                                                                    tmp_path):
    # site-c applies site-a's policies and so holds acme as issued by site-a at version 1
    site_c = new_ledger(tmp_path / "site-c.duckdb", "site-c")
    ok(cli("trust", "pin", str(root_v1), ledger=site_c))
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "relay", ledger=site_c))
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "a-to-c.bundle", target="site-c")),
           ledger=site_c))
    assert issued(site_c, "quotas")["acme"] == ("site-a", 1, 1)
    # site-a then changes acme (version 2), and site-b gets that version straight from site-a
    run(source, "quotas.set", {"tenant": "acme", "max_active": 8, "reason": "more"})
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central", ledger=target))
    ok(cli("bundle", "import", str(bundle(source, holders, tmp_path / "a-to-b.bundle")), "--trust", str(root_v1),
           ledger=target))
    assert issued(target, "quotas")["acme"] == ("site-a", 2, 2) and quota(target, "acme") == 8
    # site-b's authority becomes site-c, whose bundle relays site-a's older version 1: it does not overwrite 2
    ok(cli("airgap", "authority", "set", "site-c", "--reason", "regional relay", ledger=target))
    relayed = bundle(site_c, holders, tmp_path / "c-to-b.bundle", "--key", holders.private("c2"), key="c1")
    planned = ok(cli("bundle", "plan", str(relayed), "--json", ledger=target))
    assert plan_tables(planned)["quotas"]["changes"] == {"added": 0, "replaced": 0, "kept": 2, "issued_here": 0}
    before = issued(target, "quotas")
    ok(cli("bundle", "import", str(relayed), ledger=target))
    assert issued(target, "quotas") == before and quota(target, "acme") == 8
    entry = audit_entries(target, "policy.apply")[-1]
    acme = next(c for c in entry["details"]["changes"] if (c["table"], c["key"]) == ("quotas", "acme"))
    assert (acme["change"], acme["issuer_version"], acme["before"]) == (
        "kept (held version is the same or newer)", 1, {"issuer_site": "site-a", "issuer_version": 2})


# --- refusals -------------------------------------------------------------------------------------------------

def test_authority_set_or_clear_without_a_reason_is_refused_in_one_line_and_changes_nothing(target):
    before = policy_state(target)
    refused(cli("airgap", "authority", "set", "site-a", ledger=target), 1, "--reason")
    assert policy_state(target) == before
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central", ledger=target))
    designated = policy_state(target)
    refused(cli("airgap", "authority", "set", "site-c", ledger=target), 1, "--reason")
    refused(cli("airgap", "authority", "clear", ledger=target), 1, "--reason")
    refused(cli("airgap", "authority", "set", "site-b", "--reason", "self", ledger=target), 1, "this site")
    refused(cli("airgap", "authority", "set", "no such site", "--reason", "x", ledger=target), 1, "site id")
    assert policy_state(target) == designated
    assert ok(cli("airgap", "authority", "show", "--json", ledger=target))["policy_authority"]["site"] == "site-a"
    ok(cli("airgap", "authority", "clear", "--reason", "back to local limits", ledger=target))
    assert ok(cli("airgap", "authority", "show", "--json", ledger=target))["policy_authority"] is None
    cleared = audit_entries(target, "policy.authority.clear")[-1]
    assert (cleared["reason"], cleared["details"]) == ("back to local limits", {"from": "site-a", "to": None})
    refused(cli("airgap", "authority", "clear", "--reason", "again", ledger=target), 1, "no policy authority")


def test_a_plan_reviewed_before_the_authority_was_set_no_longer_matches_and_the_import_changes_nothing(
        holders, source, target, root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central", ledger=target))
    before = policy_state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), "--plan-digest", planned["plan_digest"],
                ledger=target), 3, "plan changed")
    assert policy_state(target) == before


def test_a_tampered_bundle_from_the_authority_is_refused_and_changes_no_policy(holders, source, target, root_v1,  # noqa: F811
                                                                               tmp_path):
    out = bundle(source, holders, tmp_path / "a.bundle")
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central", ledger=target))
    data = bytearray(out.read_bytes())
    with out.open("rb") as file:
        member = read_index(file).member(BY_NAME["quotas"].path)
    data[member.data_offset + member.size // 2] ^= 0x01
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    before = policy_state(target)
    refused(cli("bundle", "import", str(tampered), "--trust", str(root_v1), ledger=target), 4)
    after = policy_state(target)
    assert after["audit"] == before["audit"] + 1  # the refusal's bundle.import entry, nothing else
    assert {k: v for k, v in after.items() if k != "audit"} == {k: v for k, v in before.items() if k != "audit"}


def test_sigkill_after_policies_are_applied_but_before_commit_leaves_them_as_they_were(
        holders, source, target, root_v1, tmp_path):  # noqa: F811
    out = bundle(source, holders, tmp_path / "a.bundle")
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central", ledger=target))
    before = policy_state(target)
    kill_import_at("before-commit", target, out, root_v1, tmp_path / "paused")
    assert policy_state(target) == before
    ok(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target))
    assert quota(target, "acme") == 5


# --- the migration and earlier bundles ----------------------------------------------------------------------

def test_the_migration_gives_existing_limits_the_local_site_and_their_revision(tmp_path):
    ledger = new_ledger(tmp_path / "old.duckdb", "site-b")
    run(ledger, "quotas.set", {"tenant": "acme", "max_active": 2, "reason": "one"})
    run(ledger, "quotas.set", {"tenant": "acme", "max_active": 3, "reason": "two"})
    run(ledger, "ratelimits.set", {"key": "host:x", "rate": 1, "burst": 1, "reason": "one"})
    run(ledger, "concurrency.set", {"key": "type:scan", "max": 1, "reason": "one"})
    # back to the schema before migration 0013 (as a ledger written by the previous version has it)
    con = duckdb.connect(str(ledger))
    for table in APPLIED_TABLES:
        con.execute(f"ALTER TABLE {table} DROP COLUMN issuer_site")
        con.execute(f"ALTER TABLE {table} DROP COLUMN issuer_version")
    con.execute("DROP TABLE policy_authority")
    con.execute("DELETE FROM schema_migrations WHERE version = 13")
    con.close()
    assert issued(ledger, "quotas") == {"acme": ("site-b", 2, 2)}  # opening migrates
    assert issued(ledger, "rate_limits") == {"host:x": ("site-b", 1, 1)}
    assert issued(ledger, "concurrency_limits") == {"type:scan": ("site-b", 1, 1)}
    run(ledger, "quotas.set", {"tenant": "acme", "max_active": 4, "reason": "three"})
    assert issued(ledger, "quotas") == {"acme": ("site-b", 3, 3)}


def _in_the_earlier_layout(bundle_path: Path, out: Path, holders) -> Path:  # noqa: F811
    """The same ledger bundle as a writer before migration 0013 made it: its quotas, rate_limits and
    concurrency_limits members lack issuer_site and issuer_version; every other member is copied byte for byte;
    signed by a1 and ts like the original."""
    with bundle_path.open("rb") as original:
        index = read_index(original)
        manifest = parse_manifest(parse_canonical_envelope(
            open_member(original, index.member(ENVELOPE_MEMBER)).read()).payload)
        members = []
        for entry in manifest.data_members:
            raw = open_member(original, index.member(entry.path)).read()
            if entry.table in APPLIED_TABLES:
                spec = BY_NAME[entry.table]
                earlier = spec.accepted_schemas[-1]
                assert earlier.names == spec.schema.names[:-2]
                buffer = io.BytesIO()
                write_table_member(TableSpec(spec.name, spec.source, spec.order, spec.tenant_rows, earlier),
                                   pq.read_table(io.BytesIO(raw)).select(earlier.names).to_batches(), buffer)
                raw = buffer.getvalue()
            members.append(DataMember(entry.path, PARQUET_MEDIA_TYPE, raw, table=entry.table))
    header = BundleHeader(kind="full", source_site=manifest.source_site, target_site=manifest.target_site,
                          sequence=manifest.sequence, base_sequence=None, created_at=manifest.created_at,
                          tool_version=manifest.tool_version)
    with out.open("wb") as file:
        write_bundle(file, header, members, signing_keys=[load_private_key(Path(holders.private("a1")))],
                     timestamp_keys=[load_private_key(Path(holders.private("ts")))])
    return out


def test_a_bundle_without_the_issuer_columns_verifies_and_its_rows_count_as_issued_by_its_source(
        holders, source, target, root_v1, tmp_path):  # noqa: F811
    run(source, "quotas.set", {"tenant": "acme", "max_active": 6, "reason": "revision 2"})
    earlier = _in_the_earlier_layout(bundle(source, holders, tmp_path / "a.bundle"), tmp_path / "earlier.bundle",
                                     holders)
    with earlier.open("rb") as file:
        member = read_index(file).member(BY_NAME["quotas"].path)
        names = pq.read_schema(open_member(file, member)).names
    assert "issuer_site" not in names
    checks = ok(cli("bundle", "verify", str(earlier), "--trust", str(root_v1), "--target", "site-b", "--json"))
    assert checks["ok"] is True
    ok(cli("airgap", "authority", "set", "site-a", "--reason", "central", ledger=target))
    ok(cli("bundle", "import", str(earlier), "--trust", str(root_v1), ledger=target))
    # issued by the bundle's source site at the row's revision there
    assert issued(target, "quotas") == {"acme": ("site-a", 2, 2), "globex": ("site-a", 1, 1),
                                        "local-only": ("site-b", 1, 1)}
    assert quota(target, "acme") == 6
