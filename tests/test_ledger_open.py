from __future__ import annotations

import duckdb
import pytest

from airgap_orch.errors import InvalidInput
from airgap_orch.ledger import Ledger, sql
from airgap_orch.operations import ledger as ledger_ops


def test_a_duckdb_file_that_is_not_a_ledger_is_refused_and_left_untouched(tmp_path, cli):
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE sales (id INTEGER)")
    result = cli("--ledger", str(other), "ledger", "info")
    assert result.code == 1, result
    assert "not an airgap-orch ledger" in result.stderr
    with duckdb.connect(str(other)) as con:
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables == {"sales"}


def test_init_leaves_no_temporary_files_and_refuses_an_existing_ledger(tmp_path):
    path = tmp_path / "site.duckdb"
    created = ledger_ops.init(path, site_id="site-a", lock_timeout=1)
    assert created["site_id"] == "site-a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.duckdb"]
    with pytest.raises(InvalidInput, match="already exists"):
        ledger_ops.init(path, site_id="site-b", lock_timeout=1)
    assert ledger_ops.info(Ledger.open(path))["site_id"] == "site-a"


def test_queries_include_their_shared_fragments_and_a_bad_queries_file_is_refused():
    queries = sql.queries()
    assert not [name for name, text in queries.items() if "{{" in text or "}}" in text]
    for name in ("claim", "claim_candidates", "blocked_candidates"):  # one definition of a ready job, three users
        assert "state = 'queued' AND run_at <= $now AND site_id = $site_id" in queries[name]
    text = "-- fragment: due\n-- a comment\nrun_at <= $now\n\n-- name: due_jobs\nSELECT * FROM jobs WHERE {{due}};\n"
    assert sql.parse(text) == {"due_jobs": "SELECT * FROM jobs WHERE run_at <= $now;"}
    with pytest.raises(ValueError, match="unknown fragment"):
        sql.parse("-- name: q\nSELECT {{missing}};\n")
    with pytest.raises(ValueError, match="defines the name q twice"):
        sql.parse("-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n")
