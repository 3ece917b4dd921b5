from __future__ import annotations

import duckdb
import pytest

from airgap_orch.errors import InvalidInput
from airgap_orch.ledger import Ledger
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
