"""The import checks a bundle's chains while it writes its mirrors (operations/bundle_import.py, _write_mirrors and
_ChainChecks): each batch of entries is written once every entry of it is checked, in the one transaction. Here
in-process imports with small batches (READ_ROWS, INSERT_ROWS), so that a small bundle goes through many of them:
a chain that breaks after some of its entries were written leaves the ledger as it was; an import that passes
writes every entry as the source holds it, with the plan the dry run showed."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_fixtures import populate
from test_bundle_cli import cli, holders, new_ledger, ok, root_v1  # noqa: F401 (fixtures)
from test_bundle_import import audit_entries, bundle, state

from airgap_orch.bundle.errors import ChainError
from airgap_orch.errors import Conflict
from airgap_orch.ledger import Ledger
from airgap_orch.operations import bundle_import

JOBS_PER_TENANT = 60  # ~250 history entries: dozens of batches of 8


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(bundle_import, "READ_ROWS", 8)
    monkeypatch.setattr(bundle_import, "INSERT_ROWS", 16)


@pytest.fixture
def written(monkeypatch) -> list[tuple[str, int]]:
    """(mirror, rows) of each chain INSERT the import makes."""
    found: list[tuple[str, int]] = []
    insert = bundle_import._insert_chain

    def counted(tx, site, spec, batches, held_seq):
        found.append((spec.mirror, sum(batch.num_rows for batch in batches)))
        insert(tx, site, spec, batches, held_seq)
    monkeypatch.setattr(bundle_import, "_insert_chain", counted)
    return found


def make_source(path: Path, root: Path) -> Path:
    source = new_ledger(path, "site-a")
    populate(source, jobs_per_tenant=JOBS_PER_TENANT)
    ok(cli("trust", "pin", str(root), ledger=source))
    return source


def test_a_chain_that_breaks_after_some_of_its_entries_were_written_is_refused_and_nothing_stays_written(
        holders, root_v1, tmp_path, small_batches, written):  # noqa: F811
    source = make_source(tmp_path / "site-a.duckdb", root_v1)
    with Ledger.open(source, lock_timeout=5) as opened:  # the source's last history entry altered behind its back
        last = opened._con.execute("SELECT max(seq) FROM history").fetchone()[0]
        opened._con.execute("UPDATE history SET entry = replace(entry, '\"seq\":', '\"seq\": ') WHERE seq = ?", [last])
    out = bundle(source, holders, tmp_path / "a.bundle")
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    before = state(target)
    with Ledger.open(target, lock_timeout=5) as opened, pytest.raises(ChainError, match=f"history entry {last}"):
        bundle_import.import_bundle(opened, out, trust_path=root_v1)
    assert sum(rows for mirror, rows in written if mirror == "mirror_history") > 0  # written, then rolled back
    assert state(target) == before
    assert audit_entries(target)[-1]["details"]["reason_code"] == "chain:history"


def test_an_import_in_small_batches_writes_the_entries_as_the_source_holds_them_with_the_dry_runs_plan(
        holders, root_v1, tmp_path, small_batches, written):  # noqa: F811
    source = make_source(tmp_path / "site-a.duckdb", root_v1)
    out = bundle(source, holders, tmp_path / "a.bundle")
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    with Ledger.open(target, lock_timeout=5) as opened:
        planned = bundle_import.plan(opened, out, trust_path=root_v1)
        done = bundle_import.import_bundle(opened, out, trust_path=root_v1, plan_digest_expected=planned["plan_digest"])
    assert done["plan"] == planned["plan"]
    assert len([mirror for mirror, _ in written if mirror == "mirror_history"]) > 3
    query = "SELECT seq, {key}, entry, entry_hash FROM {table} ORDER BY seq"
    with Ledger.open(source, lock_timeout=5) as opened:
        held = {table: opened._con.execute(query.format(key=key, table=table)).fetchall()
                for table, key in (("history", "job_id"), ("audit_log", "action"))}
    with Ledger.open(target, lock_timeout=5) as opened:
        mirrored = {table: opened._con.execute(query.format(key=key, table=mirror)).fetchall()
                    for table, key, mirror in (("history", "job_id", "mirror_history"),
                                               ("audit_log", "action", "mirror_audit_log"))}
    assert mirrored["history"] == held["history"]
    # the source's audit log as exported: the entries up to the export's own
    assert mirrored["audit_log"] == held["audit_log"][:len(mirrored["audit_log"])]
    assert len(mirrored["audit_log"]) == done["plan"]["chains"]["audit"]["entries"]


def test_a_stale_plan_digest_found_after_the_mirrors_were_written_leaves_nothing_written(
        holders, root_v1, tmp_path, small_batches):  # noqa: F811
    source = make_source(tmp_path / "site-a.duckdb", root_v1)
    out = bundle(source, holders, tmp_path / "a.bundle")
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    before = state(target)
    with Ledger.open(target, lock_timeout=5) as opened, pytest.raises(Conflict, match="plan changed"):
        bundle_import.import_bundle(opened, out, trust_path=root_v1, plan_digest_expected="0" * 64)
    assert state(target) == before
