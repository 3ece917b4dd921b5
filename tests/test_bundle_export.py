"""Bundle export, in-process: the table members' declared columns against the ledger, one snapshot for every
member, deterministic Parquet, and a refused export that changes nothing. (The CLI flow: test_bundle_cli.py.)"""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from export_fixtures import populate, read_table

from airgap_orch.bundle import tables, trust
from airgap_orch.bundle.keys import KeyRole
from airgap_orch.bundle.parquet_check import open_parquet
from airgap_orch.errors import InvalidInput
from airgap_orch.ledger import Ledger, sql
from airgap_orch.operations import bundles as bundle_ops
from airgap_orch.operations import jobs as job_ops
from airgap_orch.operations import trust as trust_ops

CREATED = "2030-01-01T12:00:00Z"


def test_every_ledger_table_and_column_is_exported_or_listed_as_local(ledger):
    """A migration that adds a table or a column must say whether it travels (bundle/tables.py and its
    bundle_export_* query) or stays (tables.LOCAL_TABLES)."""
    read = ledger.read()
    found = read.fetch("bundle_export_counts", tenant=None)  # the query runs on this schema
    assert len(found[0]) == len(tables.TABLES)
    columns: dict[str, list[str]] = {}
    for table, column in ledger._con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
            "ORDER BY table_name, ordinal_position").fetchall():
        columns.setdefault(table, []).append(column)
    exported = {spec.source: spec for spec in tables.TABLES}
    exported.update(jobs=exported["all_jobs"], jobs_finished=exported["all_jobs"])  # the view's two tables
    for table, names in columns.items():
        if table in tables.LOCAL_TABLES or table == "all_jobs":
            continue
        assert table in exported, f"ledger table {table} is neither exported nor listed in tables.LOCAL_TABLES"
        stored = [name for name in exported[table].schema.names if name not in exported[table].computed]
        assert stored == names, (
            f"table {table}: the ledger has columns {names}; bundle/tables.py declares "
            f"{exported[table].schema.names}: update it and bundle_export_{exported[table].name}, or list the "
            "column as local")


def test_each_export_query_returns_its_members_columns_in_a_type_that_casts(ledger_path):
    populate(ledger_path)
    with Ledger.open(ledger_path, lock_timeout=5) as ledger, ledger.snapshot() as snapshot:
        for spec in tables.TABLES:
            reader = snapshot.batches(spec.query, 1000, tenant=None, **{name: None for name in spec.scope_params})
            assert reader.schema.names == spec.schema.names, spec.name
            for batch in reader:
                assert batch.cast(spec.schema).schema == spec.schema
            assert f"ORDER BY {', '.join(spec.order)}" in sql.queries()[spec.query], spec.name
        for name in tables.INCREMENTAL_TABLES:  # an incremental bundle's queries: the same columns and order
            spec, query = tables.BY_NAME[name], f"bundle_export_since_{name}"
            mark = "after_audit_seq" if name == "audit_log" else "after_history_seq"
            reader = snapshot.batches(query, 1000, tenant=None, **{mark: 0})
            assert reader.schema.names == spec.schema.names, query
            for batch in reader:
                assert batch.cast(spec.schema).schema == spec.schema
            assert f"ORDER BY {', '.join(spec.order)}" in sql.queries()[query], query


def test_a_snapshot_does_not_see_a_commit_made_while_it_reads(ledger):
    job_ops.enqueue(ledger, {"tenant": "acme", "project": "web", "type": "scan"})
    with ledger.snapshot() as snapshot:
        before = snapshot.fetch("bundle_export_counts", tenant=None)[0]
        job_ops.enqueue(ledger, {"tenant": "acme", "project": "web", "type": "scan"})  # the writer is not blocked
        assert snapshot.fetch("bundle_export_counts", tenant=None)[0] == before
        assert sum(batch.num_rows for batch in snapshot.batches("bundle_export_jobs", 10, tenant=None)) == 1
    with ledger.snapshot() as snapshot:
        assert sum(batch.num_rows for batch in snapshot.batches("bundle_export_jobs", 10, tenant=None)) == 2


def _rows(count: int, payload_bytes: int = 10) -> pa.Table:
    spec = tables.BY_NAME["history"]
    return pa.table({"seq": pa.array(range(1, count + 1), pa.int64()),
                     "job_id": [f"job-{n:06d}" for n in range(count)],
                     "entry": ["x" * payload_bytes] * count,
                     "entry_hash": [f"{n:064x}" for n in range(count)],
                     "hash_only": [False] * count}, schema=spec.schema)


def _write(batches: list[pa.RecordBatch], **bounds: int) -> tuple[bytes, tables.WrittenTable]:
    out = io.BytesIO()
    written = tables.write_table_member(tables.BY_NAME["history"], batches, out, **bounds)
    return out.getvalue(), written


def test_row_groups_depend_on_the_rows_not_on_how_the_ledger_batched_them():
    rows = _rows(150_000)
    whole, written = _write(rows.to_batches(max_chunksize=150_000))
    small, _ = _write(rows.to_batches(max_chunksize=777))
    uneven, _ = _write(rows.slice(0, 1).to_batches() + rows.slice(1, 70_000).to_batches(max_chunksize=50_000)
                       + rows.slice(70_001).to_batches(max_chunksize=65_536))
    assert whole == small == uneven
    assert (written.rows, written.row_groups) == (150_000, 3)  # 65,536 + 65,536 + 18,928
    metadata = pq.ParquetFile(io.BytesIO(whole)).metadata
    assert [metadata.row_group(g).num_rows for g in range(3)] == [65_536, 65_536, 18_928]
    assert {metadata.row_group(0).column(c).compression for c in range(metadata.num_columns)} == {"ZSTD"}


def test_large_rows_end_a_row_group_before_its_byte_budget():
    # Each row is estimated at 10,000 bytes of entry + 4 x 4 offsets + 64 + 6 + 10 characters + 8 for seq:
    # 10,104 bytes; a 64 KiB budget holds 6 of them.
    rows = _rows(40, payload_bytes=10_000)
    data, written = _write(rows.to_batches(max_chunksize=7), row_group_bytes=65_536)
    again, _ = _write(rows.to_batches(max_chunksize=40), row_group_bytes=65_536)
    assert data == again
    assert (written.rows, written.row_groups) == (40, 7)
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert [metadata.row_group(g).num_rows for g in range(7)] == [6, 6, 6, 6, 6, 6, 4]
    checked = open_parquet(io.BytesIO(data), expected_schema=tables.BY_NAME["history"].schema, rows=40,
                           uncompressed_bytes=written.uncompressed_bytes)
    assert checked.facts.row_groups == 7


def test_a_row_larger_than_the_budget_gets_a_row_group_of_its_own():
    _, written = _write(_rows(3, payload_bytes=100_000).to_batches(), row_group_bytes=65_536)
    assert (written.rows, written.row_groups) == (3, 3)


def _keys_and_root(site: str) -> tuple[dict[str, Ed25519PrivateKey], bytes]:
    keys = {name: Ed25519PrivateKey.generate() for name in ("root", "ts", "site", "stranger")}
    data = trust.build_root(root=KeyRole.of([keys["root"].public_key()], 1),
                            targets=KeyRole.of([keys["root"].public_key()], 1),
                            timestamp=KeyRole.of([keys["ts"].public_key()], 1),
                            snapshot=KeyRole.of([keys["ts"].public_key()], 1),
                            sites={site: KeyRole.of([keys["site"].public_key()], 1)},
                            expires=datetime(2031, 1, 1))
    return keys, trust.sign_root(data, keys["root"])


def test_a_refused_export_records_nothing_and_writes_no_file(ledger_path, tmp_path):
    populate(ledger_path, jobs_per_tenant=2)
    keys, root = _keys_and_root("site-test")
    (tmp_path / "root.json").write_bytes(root)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "refused.bundle"
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        trust_ops.pin(ledger, [tmp_path / "root.json"], now=datetime(2030, 1, 1))
        audit_before = ledger.read().fetch("audit_count")
        with pytest.raises(InvalidInput, match="is not a key of site site-test"):
            bundle_ops.export(ledger, out=out, target_site="site-b", created_at=CREATED,
                              signing_keys=[bundle_ops.SigningKey("stranger.key.pem", keys["stranger"])],
                              timestamp_keys=[bundle_ops.SigningKey("ts.key.pem", keys["ts"])])
        assert ledger.read().fetch("audit_count") == audit_before
        assert ledger._con.execute("SELECT count(*) FROM bundle_exports").fetchone() == (0,)
    assert list((tmp_path / "out").iterdir()) == []  # no bundle, no partial file, no table files


def test_an_export_carrying_a_root_that_is_not_utf8_text_is_refused_naming_it_and_records_nothing(ledger_path,
                                                                                                 tmp_path):
    """The roots an export carries are checked like those `trust pin` takes: a lone surrogate (not UTF-8 text) is
    a one-line InvalidInput naming the root, not an encoding error; nothing is recorded, no file written."""
    from airgap_orch.operations import airgap as airgap_ops

    (tmp_path / "out").mkdir()
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        audit_before = ledger.read().fetch("audit_count")
        with pytest.raises(InvalidInput, match="trust root 2 is not UTF-8 text"):
            airgap_ops.bundles_export(ledger, out=str(tmp_path / "out" / "b.bundle"), target="site-b",
                                      roots=["{}", "\ud800"])
        assert ledger.read().fetch("audit_count") == audit_before
        assert ledger._con.execute("SELECT count(*) FROM bundle_exports").fetchone() == (0,)
    assert list((tmp_path / "out").iterdir()) == []


def test_each_export_to_a_target_takes_the_next_sequence_and_is_audited(ledger_path, tmp_path):
    populate(ledger_path, jobs_per_tenant=2)
    keys, root = _keys_and_root("site-test")
    signing = [bundle_ops.SigningKey("site", keys["site"])]
    stamp = [bundle_ops.SigningKey("ts", keys["ts"])]
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        results = [bundle_ops.export(ledger, out=tmp_path / f"{n}.bundle", target_site=target, created_at=CREATED,
                                     signing_keys=signing, timestamp_keys=stamp)
                   for n, target in enumerate(("site-b", "site-b", "site-c", "site-b"))]
        audited = ledger.read().rows("audit_page", after_seq=0, since=None, action=None, by=None, limit=1000)
    assert [result["sequence"] for result in results] == [1, 2, 1, 3]
    exports = [row for row in audited if row["action"] == "bundle.export"]
    assert len(exports) == 4 and '"sequence":3' in exports[-1]["entry"]
    # No root pinned or given: the keys could not be checked, and the result says so.
    assert results[0]["self_check"].startswith("skipped: no trust root")
    # 2 tenants x (2 scans + 1 report) + 3 backfill windows.
    assert read_table(tmp_path / "0.bundle", "jobs").num_rows == results[0]["row_counts"]["jobs"] == 9


def test_export_from_an_expired_trust_root_is_refused(ledger_path, tmp_path):
    keys, root = _keys_and_root("site-test")
    (tmp_path / "root.json").write_bytes(root)
    with Ledger.open(ledger_path, lock_timeout=5) as ledger:
        trust_ops.pin(ledger, [tmp_path / "root.json"], now=datetime(2030, 1, 1))
        with pytest.raises(Exception) as caught:
            bundle_ops.export(ledger, out=tmp_path / "late.bundle", target_site="site-b",
                              created_at=(datetime(2031, 1, 1) + timedelta(days=1)).isoformat(),
                              signing_keys=[bundle_ops.SigningKey("site", keys["site"])],
                              timestamp_keys=[bundle_ops.SigningKey("ts", keys["ts"])])
    assert getattr(caught.value, "reason_code", None) == "expiry:root"
    assert not (tmp_path / "late.bundle").exists()


def test_the_format_document_lists_every_members_columns_and_row_order():
    text = " ".join((Path(__file__).parent.parent / "docs" / "bundle-format.md").read_text().split())
    kinds = {"list<item: string>": "list<string>"}
    for number, spec in enumerate(tables.TABLES, 1):
        columns = ", ".join(f"{field.name} {kinds.get(str(field.type), str(field.type))}" for field in spec.schema)
        assert f"- `{spec.name}`: {columns}" in text, spec.name
        row = re.search(rf"\| {number} \| `{re.escape(spec.path)}` \| `{spec.name}` \| [^|]+ \| ([^|]+) \|", text)
        assert row is not None and row.group(1).strip() == ", ".join(spec.order), spec.name
