"""Memory an open transaction holds: what a statement reads is released when the statement ends, not at COMMIT
(an import of 1M jobs runs in one transaction; issue 15, "Performance")."""

from __future__ import annotations

import gc

import pyarrow as pa
import pytest

from airgap_orch.ledger import Ledger

ROWS = 20_000
ENTRY = "x" * 400  # ~8 MB of entry text per table


def _entries(first_seq: int) -> pa.Table:
    return pa.table({"seq": pa.array(range(first_seq, first_seq + ROWS), pa.int64()),
                     "job_id": [f"job-{n}" for n in range(ROWS)], "entry": [ENTRY] * ROWS,
                     "entry_hash": ["0" * 64] * ROWS})


class _Rollback(Exception):
    pass


def test_an_arrow_table_an_insert_read_is_released_when_the_statement_ends_not_at_commit(ledger: Ledger):
    gc.collect()
    before = pa.total_allocated_bytes()
    held = []
    with pytest.raises(_Rollback), ledger.transaction() as tx:
        for batch in range(5):
            tx.execute_with("history_append", "entries", _entries(1 + batch * ROWS))
            gc.collect()
            held.append(pa.total_allocated_bytes() - before)
        assert tx.con.execute("SELECT count(*) FROM history").fetchone()[0] >= 5 * ROWS
        raise _Rollback  # nothing of this reaches the ledger
    # Each table is ~10 MB of Arrow memory; five kept until COMMIT would be ~50 MB.
    assert max(held) < 2 * 1024 * 1024, f"Arrow memory still held inside the transaction: {held}"
    assert ledger._con.execute("SELECT count(*) FROM history").fetchone()[0] == 0


def _memory_limit(ledger: Ledger) -> str:
    return ledger._con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_a_transactions_memory_cap_holds_while_it_writes_and_is_lifted_before_commit_and_after_rollback(
        ledger: Ledger):
    default = _memory_limit(ledger)
    with ledger.transaction() as tx:
        tx.cap_memory(64 * 1024 * 1024)
        assert _memory_limit(ledger) == "64.0 MiB"
        tx.execute_with("history_append", "entries", _entries(1))
    assert _memory_limit(ledger) == default
    with pytest.raises(_Rollback), ledger.transaction() as tx:
        tx.cap_memory(32 * 1024 * 1024)
        assert _memory_limit(ledger) == "32.0 MiB"
        raise _Rollback
    assert _memory_limit(ledger) == default
