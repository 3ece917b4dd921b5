"""One hash chain per owning site (issue 15; docs/bundle-format.md "Site chains" and "Tenant bundles"): an import
checks and mirrors the source's history AND audit chains and records their heads, `ledger verify` checks every
site's chains, and a `--tenant` bundle carries the other tenants' entries as hashes only. Real CLI subprocesses,
real keys, a source ledger (site-a) exporting to a target ledger (site-b)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from export_fixtures import read_table
from test_bundle_cli import cli, export, holders, new_ledger, ok, refused, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import audit_entries, bundle, source, state, target  # noqa: F401 (fixtures)

from airgap_orch.auth import load_private_key
from airgap_orch.bundle import dsse
from airgap_orch.bundle.manifest import ENVELOPE_MEMBER, BundleHeader, parse_manifest
from airgap_orch.bundle.tables import BY_NAME, TABLES, write_table_member
from airgap_orch.bundle.tarfmt import open_member, read_index
from airgap_orch.bundle.writer import DataMember, write_bundle
from airgap_orch.ledger import Ledger
from airgap_orch.orchestrator.history import chain, event_id


def query(ledger: Path, text: str, *params) -> list[tuple]:
    with Ledger.open(ledger, lock_timeout=5) as opened:
        return opened._con.execute(text, list(params)).fetchall()


def execute(ledger: Path, text: str, *params) -> None:
    """Change the DuckDB file behind the ledger's back (what an attacker with the file could do)."""
    with Ledger.open(ledger, lock_timeout=5) as opened:
        opened._con.execute(text, list(params))


def enqueue(ledger: Path, tenant: str) -> str:
    return ok(cli("jobs", "enqueue", "--tenant", tenant, "--project", "web", "--type", "scan", "--json",
                  ledger=ledger))["job_id"]


def imported(path: Path, target: Path, root: Path) -> dict:  # noqa: F811
    return ok(cli("bundle", "import", str(path), "--trust", str(root), "--json", ledger=target))


def source_audit_head_before_last_export(source: Path) -> list:  # noqa: F811
    """The source's audit head as its last export's snapshot saw it (the export's own entry comes after)."""
    seq, entry_hash = query(source, "SELECT seq, entry_hash FROM audit_log WHERE seq = "
                                    "(SELECT max(seq) FROM audit_log WHERE action = 'bundle.export') - 1")[0]
    return [seq, entry_hash]


# --- ledger verify checks every site's chains ---------------------------------------------------------------

def test_ledger_verify_reports_each_sites_chains_after_a_full_and_an_incremental_import(holders, source, target,  # noqa: F811
                                                                                       root_v1, tmp_path):  # noqa: F811
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    enqueue(source, "acme")
    ok(cli("quota", "set", "--tenant", "acme", "--max-active", "4", "--reason", "more", ledger=source))
    second = imported(_incremental(source, holders, tmp_path / "2.bundle"), target, root_v1)
    tables = {table["table"]: table for table in second["plan"]["tables"]}
    assert tables["audit_log"]["action"] == "appended" and tables["audit_log"]["adds"] > 0

    verified = ok(cli("ledger", "verify", "--json", ledger=target))
    mirrored = verified["sites"]["site-a"]
    history_head = query(source, "SELECT seq, entry_hash FROM chain_heads WHERE chain = 'history'")[0]
    assert mirrored["mirror"] is True
    assert (mirrored["history_entries"], mirrored["history_head"]) == (history_head[0], list(history_head))
    audit_head = source_audit_head_before_last_export(source)
    assert (mirrored["audit_entries"], mirrored["audit_head"]) == (audit_head[0], audit_head)
    assert (mirrored["history_hash_only"], mirrored["audit_hash_only"]) == (0, 0)
    own = verified["sites"]["site-b"]
    assert own["mirror"] is False and own["history_entries"] == verified["history_entries"]
    # the mirrors hold exactly the source's chains, entry for entry
    assert query(target, "SELECT seq, entry, entry_hash FROM mirror_audit_log ORDER BY seq") == query(
        source, "SELECT seq, entry, entry_hash FROM audit_log WHERE seq <= ? ORDER BY seq", audit_head[0])


def _incremental(source: Path, holders, out: Path) -> Path:  # noqa: F811
    ok(export(source, out, holders, "--incremental", "--json"))
    return out


def test_ledger_verify_fails_naming_the_site_when_a_mirrored_history_entry_is_altered(holders, source, target,  # noqa: F811
                                                                                     root_v1, tmp_path):  # noqa: F811
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    ok(cli("ledger", "verify", ledger=target))
    execute(target, "UPDATE mirror_history SET entry = replace(entry, 'scan', 'scam') WHERE seq = 2")
    refused(cli("ledger", "verify", ledger=target), 4, "site site-a", "history entry 2")


def test_ledger_verify_fails_naming_the_site_when_a_mirrored_audit_entry_is_altered(holders, source, target,  # noqa: F811
                                                                                   root_v1, tmp_path):  # noqa: F811
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    execute(target, "UPDATE mirror_audit_log SET entry = replace(entry, 'fixture', 'fixtur3') WHERE seq = 1")
    refused(cli("ledger", "verify", ledger=target), 4, "site site-a", "audit entry 1")


def test_ledger_verify_fails_naming_the_site_when_a_mirrored_chain_loses_its_last_entry(holders, source,  # noqa: F811
                                                                                       target, root_v1, tmp_path):  # noqa: F811
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    execute(target, "DELETE FROM mirror_audit_log WHERE seq = (SELECT max(seq) FROM mirror_audit_log)")
    refused(cli("ledger", "verify", ledger=target), 4, "site site-a", "removed from its end")


# --- the import checks the audit chain ----------------------------------------------------------------------

def test_a_bundle_whose_audit_chain_is_broken_is_refused_and_writes_nothing(holders, source, target,  # noqa: F811
                                                                           root_v1, tmp_path):  # noqa: F811
    execute(source, "UPDATE audit_log SET entry = replace(entry, 'fixture', 'fixtur3') WHERE seq = 2")
    out = bundle(source, holders, tmp_path / "a.bundle")
    before = state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target), 4, "audit entry 2")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:audit"


def test_an_incremental_bundle_whose_audit_log_forks_from_the_held_one_is_refused(holders, source, target,  # noqa: F811
                                                                                 root_v1, tmp_path):  # noqa: F811
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    ok(cli("quota", "set", "--tenant", "acme", "--max-active", "4", "--reason", "more", ledger=source))
    imported(_incremental(source, holders, tmp_path / "2.bundle"), target, root_v1)
    # the source rewrites (and re-chains) the audit entry bundle 2 carried, then cuts bundle 3 from base 1 again
    seq = query(target, "SELECT max(seq) FROM mirror_audit_log")[0][0]
    _rewrite_audit_entry(source, seq, "more", "less")
    ok(export(source, tmp_path / "3.bundle", holders, "--base", "1", "--json"))
    before = state(target)
    refused(cli("bundle", "import", str(tmp_path / "3.bundle"), "--trust", str(root_v1), ledger=target), 4,
            f"audit_log entry {seq}", "forked")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:head"


def _rewrite_audit_entry(ledger: Path, seq: int, old: str, new: str) -> None:
    _rechain(ledger, "audit_log", "audit", seq, old, new)


def _rechain(ledger: Path, table: str, head: str, seq: int, old: str, new: str) -> None:
    """Change one entry's text and re-chain it and everything after it (and the recorded head): a consistent
    rewritten chain, as a site that forked it would hold."""
    rows = query(ledger, f"SELECT seq, entry, entry_hash FROM {table} WHERE seq >= ? - 1 ORDER BY seq", seq)
    prev = rows[0][2] if rows[0][0] == seq - 1 else "0" * 64
    with Ledger.open(ledger, lock_timeout=5) as opened:
        for row_seq, entry, _ in rows if rows[0][0] == seq else rows[1:]:
            text = entry.replace(old, new) if row_seq == seq else entry
            assert row_seq != seq or text != entry
            prev = chain(prev, text)
            opened._con.execute(f"UPDATE {table} SET entry = ?, entry_hash = ? WHERE seq = ?", [text, prev, row_seq])
        opened._con.execute("UPDATE chain_heads SET entry_hash = ? WHERE chain = ?", [prev, head])


def test_a_full_bundle_whose_history_forks_from_the_held_one_is_refused(holders, source, target, root_v1,  # noqa: F811
                                                                       tmp_path):
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    _rechain(source, "history", "history", 2, '"scan"', '"scam"')  # the source rewrote its history, consistently
    ok(cli("ledger", "verify", ledger=source))
    out = bundle(source, holders, tmp_path / "2.bundle")
    before = state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target), 4, "forked")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:head"


def test_a_received_job_whose_entry_no_longer_names_the_held_source_entry_fails_ledger_verify(
        holders, source, target, root_v1, tmp_path):  # noqa: F811
    out = tmp_path / "handoff.bundle"
    made = ok(export(source, out, holders, "--handoff", "--json"))
    assert made["handed_off"] > 0
    imported(out, target, root_v1)
    ok(cli("ledger", "verify", ledger=target))
    seq, reason = query(target, "SELECT seq, entry ->> 'reason' FROM history "
                                "WHERE entry ->> 'event_type' = 'job.received' ORDER BY seq LIMIT 1")[0]
    forged = reason[:-1] + ("0" if reason[-1] != "0" else "1")
    _rechain(target, "history", "history", seq, reason, forged)  # consistent chain, wrong link to the source
    refused(cli("ledger", "verify", ledger=target), 4, f"history entry {seq}", "hand-off")


# --- tenant bundles: other tenants' entries as hashes only --------------------------------------------------

def test_a_tenant_bundle_carries_other_tenants_entries_as_hashes_only_and_its_chains_verify_on_import(
        holders, source, target, root_v1, tmp_path):  # noqa: F811
    globex_jobs = [row[0] for row in query(source, "SELECT job_id FROM all_jobs WHERE tenant = 'globex'")]
    out = tmp_path / "acme.bundle"
    ok(export(source, out, holders, "--tenant", "acme", "--json"))

    # the whole chain travels: every entry, each other tenant's as its hash only
    history = read_table(out, "history")
    assert history.column("seq").to_pylist() == list(range(1, history.num_rows + 1))
    assert history.num_rows == query(source, "SELECT count(*) FROM history")[0][0]
    hidden = [row for row in history.to_pylist() if row["hash_only"]]
    assert hidden and all(row["entry"] is None and row["job_id"] is None for row in hidden)
    audit = read_table(out, "audit_log")
    assert audit.column("seq").to_pylist() == list(range(1, audit.num_rows + 1))
    assert any(audit.column("hash_only").to_pylist())
    # ... and reveals nothing of them: not in the raw bytes (footer statistics included), nor in any decoded value
    raw = out.read_bytes()
    assert b"globex" not in raw and not any(job_id.encode() in raw for job_id in globex_jobs)
    for spec in TABLES:
        text = json.dumps(read_table(out, spec.name).to_pylist(), default=str)
        assert "globex" not in text, spec.name
        assert not any(job_id in text for job_id in globex_jobs), spec.name

    planned = ok(cli("bundle", "plan", str(out), "--trust", str(root_v1), "--json", ledger=target))
    assert planned["plan"]["tenant"] == "acme"
    assert planned["plan"]["chains"]["history"]["hash_only"] == len(hidden)
    imported(out, target, root_v1)
    assert query(target, "SELECT count(*) FROM mirror_history WHERE hash_only AND entry IS NULL")[0][0] == len(hidden)
    verified = ok(cli("ledger", "verify", "--json", ledger=target))
    assert verified["sites"]["site-a"]["history_hash_only"] == len(hidden)
    assert verified["sites"]["site-a"]["history_entries"] == history.num_rows - len(hidden)  # counted: with text

    # the next incremental tenant bundle extends the held chains, hashes-only entries included
    enqueue(source, "globex")
    enqueue(source, "acme")
    second = tmp_path / "acme-2.bundle"
    ok(export(source, second, holders, "--tenant", "acme", "--incremental", "--json"))
    imported(second, target, root_v1)
    assert query(target, "SELECT count(*) FROM mirror_history")[0][0] == query(
        source, "SELECT count(*) FROM history")[0][0]
    ok(cli("ledger", "verify", ledger=target))


def test_a_tampered_hashes_only_entry_is_refused_with_a_chain_error(holders, source, target, root_v1,  # noqa: F811
                                                                    tmp_path):
    enqueue(source, "acme")  # an acme entry after the globex ones: its hash binds them
    seq = query(source, "SELECT max(h.seq) FROM history h JOIN all_jobs j ON j.job_id = h.job_id "
                        "WHERE j.tenant = 'globex'")[0][0]
    execute(source, "UPDATE history SET entry_hash = ? WHERE seq = ?", "f" * 64, seq)
    out = tmp_path / "acme.bundle"
    ok(export(source, out, holders, "--tenant", "acme", "--json"))
    assert read_table(out, "history").to_pylist()[seq - 1]["hash_only"] is True
    before = state(target)
    refused(cli("bundle", "import", str(out), "--trust", str(root_v1), ledger=target), 4, "history")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:history"


# --- the migration ------------------------------------------------------------------------------------------

def _back_to_schema_13(ledger: Path) -> None:
    """The ledger as the previous version left it: no mirrored audit log, no recorded mirror heads, no view,
    mirror_history without hash_only."""
    con = duckdb.connect(str(ledger))
    try:
        con.execute("DROP VIEW site_chains")
        con.execute("DROP TABLE mirror_chain_heads")
        con.execute("DROP TABLE mirror_audit_log")
        con.execute("CREATE TABLE old_mirror AS SELECT source_site, seq, job_id, entry, entry_hash FROM mirror_history")
        con.execute("DROP TABLE mirror_history")
        con.execute("CREATE TABLE mirror_history (source_site VARCHAR NOT NULL, seq BIGINT NOT NULL, job_id VARCHAR, "
                    "entry VARCHAR NOT NULL, entry_hash VARCHAR NOT NULL, PRIMARY KEY (source_site, seq))")
        con.execute("INSERT INTO mirror_history SELECT * FROM old_mirror")
        con.execute("DROP TABLE old_mirror")
        con.execute("DELETE FROM schema_migrations WHERE version = 14")
    finally:
        con.close()


def test_migrating_a_ledger_keeps_every_chain_verifying_and_event_ids_unchanged(holders, source, target,  # noqa: F811
                                                                               root_v1, tmp_path):  # noqa: F811
    imported(bundle(source, holders, tmp_path / "1.bundle"), target, root_v1)
    ledgers = (("source", source), ("target", target))
    before = {name: ok(cli("ledger", "events", "--json", ledger=ledger)) for name, ledger in ledgers}
    _back_to_schema_13(target)
    _back_to_schema_13(source)
    events = {name: ok(cli("ledger", "events", "--json", ledger=ledger)) for name, ledger in ledgers}  # migrates
    assert query(target, "SELECT count(*) FROM schema_migrations WHERE version = 14")[0][0] == 1  # applied again
    # the event ids and seqs did not move: they are what the chains' entries are and hash to
    assert events == before
    for ledger, shown in ((source, events["source"]), (target, events["target"])):
        stored = [event_id(row[0]) for row in query(ledger, "SELECT entry_hash FROM history ORDER BY seq")]
        assert [event["eventId"] for event in shown["events"]] == stored
    verified = ok(cli("ledger", "verify", "--json", ledger=target))
    mirrored = verified["sites"]["site-a"]
    assert mirrored["history_entries"] == query(target, "SELECT count(*) FROM mirror_history")[0][0] > 0
    assert (mirrored["audit_entries"], mirrored["audit_head"]) == (0, None)  # not imported before 0014
    ok(cli("ledger", "verify", ledger=source))

    # an incremental bundle extends the migrated history head; the audit log waits for a full bundle
    enqueue(source, "acme")
    second = imported(_incremental(source, holders, tmp_path / "2.bundle"), target, root_v1)
    tables = {table["table"]: table for table in second["plan"]["tables"]}
    assert tables["history"]["action"] == "appended" and tables["history"]["adds"] > 0
    assert tables["audit_log"]["action"].startswith("not imported")
    ok(cli("ledger", "verify", ledger=target))
    imported(bundle(source, holders, tmp_path / "3.bundle"), target, root_v1)
    verified = ok(cli("ledger", "verify", "--json", ledger=target))
    assert verified["sites"]["site-a"]["audit_head"] == source_audit_head_before_last_export(source)


# --- signed bundles whose chain members were changed before signing (a source's exporter gone wrong) ----------

def _resigned(original: Path, out: Path, holders, change, *, tenant: str | None = "same") -> Path:  # noqa: F811
    """`original` rewritten with `change(table name, pa.Table) -> pa.Table` applied to each table member and signed
    again with the source site's key: it verifies, so the import's own checks must find what changed."""
    with original.open("rb") as file:
        index = read_index(file)
        envelope = dsse.parse_envelope(_member_bytes(file, index, ENVELOPE_MEMBER))
        manifest = parse_manifest(envelope.payload)
        members = []
        for member in manifest.table_members:
            table = pq.read_table(open_member(file, index.member(member.path)))
            table = change(member.table, table)
            buffer = io.BytesIO()
            write_table_member(BY_NAME[member.table], table.to_batches(), buffer)
            members.append(DataMember(member.path, member.media_type, buffer.getvalue(), table=member.table))
    header = BundleHeader(kind=manifest.kind, source_site=manifest.source_site, target_site=manifest.target_site,
                          sequence=manifest.sequence, base_sequence=manifest.base_sequence,
                          created_at=manifest.created_at, tool_version=manifest.tool_version,
                          tenant=manifest.tenant if tenant == "same" else tenant)
    with out.open("wb") as written:
        write_bundle(written, header, members, signing_keys=[load_private_key(Path(holders.private("a1")))],
                     timestamp_keys=[load_private_key(Path(holders.private("ts")))])
    return out


def _member_bytes(file, index, name: str) -> bytes:
    with open_member(file, index.member(name)) as member:
        return member.read()


def _hide(seq: int):
    """A change that makes history entry `seq` hashes-only."""
    def change(name: str, table: pa.Table) -> pa.Table:
        if name != "history":
            return table
        rows = table.to_pylist()
        rows[seq - 1].update(job_id=None, entry=None, hash_only=True)
        return pa.Table.from_pylist(rows, schema=table.schema)
    return change


def test_a_tenant_bundles_chain_with_a_changed_hashes_only_hash_is_refused(holders, source, target, root_v1,  # noqa: F811
                                                                          tmp_path):
    out = tmp_path / "acme.bundle"
    ok(export(source, out, holders, "--tenant", "acme", "--json"))
    rows = read_table(out, "history").to_pylist()
    # the last of a run of hashes-only entries: the next entry's hash, computed over its text, binds it (the ones
    # before it in the run are bound by the source's signature only: docs/bundle-format.md, "Tenant bundles")
    seq = next(row["seq"] for row, after in zip(rows, rows[1:], strict=False)
               if row["hash_only"] and not after["hash_only"])

    def change(name: str, table: pa.Table) -> pa.Table:
        if name != "history":
            return table
        rows = table.to_pylist()
        rows[seq - 1]["entry_hash"] = "e" * 64
        return pa.Table.from_pylist(rows, schema=table.schema)

    forged = _resigned(out, tmp_path / "forged.bundle", holders, change)
    before = state(target)
    refused(cli("bundle", "import", str(forged), "--trust", str(root_v1), ledger=target), 4, "history")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:history"


def test_hashes_only_entries_in_a_bundle_that_names_no_tenant_are_refused(holders, source, target, root_v1,  # noqa: F811
                                                                         tmp_path):
    out = bundle(source, holders, tmp_path / "a.bundle")
    forged = _resigned(out, tmp_path / "forged.bundle", holders, _hide(3), tenant=None)
    before = state(target)
    refused(cli("bundle", "import", str(forged), "--trust", str(root_v1), ledger=target), 4, "names no tenant")
    assert state(target) == before
    # the same entry hidden in a bundle that names its tenant: the chain still verifies
    named = _resigned(out, tmp_path / "named.bundle", holders, _hide(3), tenant="acme")
    imported(named, target, root_v1)
    ok(cli("ledger", "verify", ledger=target))


def test_a_hand_off_naming_an_entry_its_history_does_not_hold_is_refused(holders, source, target, root_v1,  # noqa: F811
                                                                        tmp_path):
    out = tmp_path / "handoff.bundle"
    ok(export(source, out, holders, "--handoff", "--json"))

    def change(name: str, table: pa.Table) -> pa.Table:
        if name != "handoffs":
            return table
        rows = table.to_pylist()
        rows[0]["entry_hash"] = "d" * 64
        return pa.Table.from_pylist(rows, schema=table.schema)

    forged = _resigned(out, tmp_path / "forged.bundle", holders, change)
    before = state(target)
    refused(cli("bundle", "import", str(forged), "--trust", str(root_v1), ledger=target), 4, "hand-off")
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "payload:handoff"
