"""The `row_json` of a mirrored job or policy is the bundle row as json.dumps writes it (keys in column order,
compact separators, non-ASCII kept, times in isoformat, anything else by str). The import builds it column by
column in Arrow compute for speed (issue 15, "Performance"); these tests pin that it stays that exact text."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pyarrow as pa
from export_fixtures import populate, read_table
from test_bundle_cli import cli, export, holders, new_ledger, ok, root_v1  # noqa: F401 (fixtures)

from airgap_orch.bundle.tables import BY_NAME
from airgap_orch.ledger import Ledger
from airgap_orch.operations.bundle_import import _json_rows


def as_json_dumps(row: dict) -> str:
    return json.dumps(row, default=lambda value: value.isoformat() if isinstance(value, datetime) else str(value),
                      separators=(",", ":"), ensure_ascii=False)


def test_row_json_of_awkward_values_is_what_json_dumps_writes():
    strings = ['plain', 'quote " and backslash \\', 'control \x00 \x01 \n \t \x1f', 'ünïcødé 😀 \u2028', '', None]
    times = [datetime(2026, 12, 6, 7, 16, 17, 123456), datetime(2026, 1, 1), None, datetime(999, 1, 2, 3, 4, 5, 6),
             datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)]
    lists = [["a", 'b"\\'], [], None, ["x", None], ["\x02"], ["é"]]
    floats = [0.1, 1.0, None, 1e16, -2.5e-7, 123456789.125]
    batch = pa.RecordBatch.from_pydict({
        "text": pa.array(strings, pa.string()),
        "clean_text": pa.array(["a", "b\\", 'c"', None, "d", "e"], pa.string()),
        "small": pa.array([1, -2, None, 2**31 - 1, 0, 7], pa.int32()),
        "big": pa.array([2**62, -(2**63), None, 0, 1, 2], pa.int64()),
        "flag": pa.array([True, False, None, True, False, True], pa.bool_()),
        "at": pa.array(times, pa.timestamp("us")),
        "keys": pa.array(lists, pa.list_(pa.string())),
        "ratio": pa.array(floats, pa.float64()),
        "odd_ratio": pa.array([math.nan, math.inf, -math.inf, None, 0.0, -0.0], pa.float64()),
        "day": pa.array([None, 1, 2, 3, 4, 5], pa.int16()),
    })
    assert _json_rows(batch).to_pylist() == [as_json_dumps(row) for row in batch.to_pylist()]


def test_mirrored_jobs_and_policies_carry_each_bundle_row_as_json_dumps_writes_it(holders, root_v1,  # noqa: F811
                                                                                  tmp_path):
    source = new_ledger(tmp_path / "site-a.duckdb", "site-a")
    populate(source)
    ok(cli("trust", "pin", str(root_v1), ledger=source))
    bundle = tmp_path / "a.bundle"
    ok(export(source, bundle, holders, "--json"))
    target = new_ledger(tmp_path / "site-b.duckdb", "site-b")
    ok(cli("bundle", "import", str(bundle), "--trust", str(root_v1), ledger=target))
    with Ledger.open(target, lock_timeout=10) as opened:
        jobs = dict(opened._con.execute("SELECT job_id, row_json FROM mirror_jobs").fetchall())
        policies = dict(((kind, key), text) for kind, key, text in opened._con.execute(
            "SELECT kind, key, row_json FROM mirror_policies").fetchall())
    rows = read_table(bundle, "jobs").to_pylist()
    assert rows and jobs == {row["job_id"]: as_json_dumps(row) for row in rows}
    expected = {}
    for kind in ("quotas", "rate_limits", "concurrency_limits", "circuit_breakers", "pauses"):
        for row in read_table(bundle, kind).to_pylist():
            expected[(kind, "/".join(str(row[column]) for column in BY_NAME[kind].order))] = as_json_dumps(row)
    assert len(expected) >= 5 and policies == expected
