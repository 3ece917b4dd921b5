"""Parquet table members: footer and page headers checked against the manifest, the caps and the table schema
before any page is decoded; decoding in bounded batches with dictionaries measured before they expand."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bundle_fixtures import JOBS_SCHEMA, parquet_bytes, table

from airgap_orch.bundle.errors import BundleError
from airgap_orch.bundle.limits import MIB, ParquetLimits
from airgap_orch.bundle.parquet_check import open_parquet
from airgap_orch.errors import exit_code_for

HELPERS = Path(__file__).parent / "helpers"


def declared(data: bytes) -> tuple[int, int]:
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    return metadata.num_rows, sum(metadata.row_group(g).column(c).total_uncompressed_size
                                  for g in range(metadata.num_row_groups) for c in range(metadata.num_columns))


def check(data: bytes, schema: pa.Schema = JOBS_SCHEMA, rows: int | None = None, uncompressed: int | None = None,
          **limits):  # type: ignore[no-untyped-def]
    footer_rows, footer_uncompressed = declared(data) if rows is None or uncompressed is None else (0, 0)
    return open_parquet(io.BytesIO(data), expected_schema=schema, rows=footer_rows if rows is None else rows,
                        uncompressed_bytes=footer_uncompressed if uncompressed is None else uncompressed,
                        limits=ParquetLimits(**limits))


def reason(call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BundleError) as caught:
        call(*args, **kwargs)
    assert exit_code_for(caught.value) == 4
    return caught.value.reason_code


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def patch_footer_i64(data: bytes, old: int, new: int) -> bytes:
    """Replace every Thrift compact encoding of `old` (zigzag varint) in the footer by `new`, same length."""
    old_bytes, new_bytes = varint(old << 1), varint(new << 1)
    assert len(old_bytes) == len(new_bytes)
    (length,) = struct.unpack("<I", data[-8:-4])
    start = len(data) - 8 - length
    footer = data[start:-8]
    assert old_bytes in footer
    return data[:start] + footer.replace(old_bytes, new_bytes) + data[-8:]


@pytest.fixture(scope="module")
def plain_zeros() -> bytes:
    """1M int64 zeros, plain-encoded (no dictionary): 8 MB uncompressed in 1 MiB pages, a few KB on disk."""
    zeros = pa.table({"n": pa.array([0] * 1_000_000, pa.int64())})
    return parquet_bytes(zeros, use_dictionary=False, row_group_size=1_000_000)


ZEROS = pa.schema([("n", pa.int64())])


# --- the good path ----------------------------------------------------------------------------------------

def test_a_table_written_by_pyarrow_passes_and_decodes_in_bounded_batches():
    data = parquet_bytes(table(5000), row_group_size=2000)
    checked = check(data, max_batch_rows=700)
    assert (checked.facts.rows, checked.facts.row_groups) == (5000, 3)
    assert checked.facts.pages >= 3 * 4
    batches = list(checked.iter_batches(batch_rows=10**9))
    assert max(b.num_rows for b in batches) <= 700
    assert all(b.schema == JOBS_SCHEMA for b in batches)  # dictionaries decoded back to strings
    assert pa.Table.from_batches(batches).equals(table(5000))


def test_a_table_written_by_duckdb_passes(tmp_path):
    import duckdb

    path = tmp_path / "t.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT 'job-' || range AS job_id, 'queued' AS state, (range % 5)::INTEGER AS attempt, "
                    f"TIMESTAMP '2030-01-01' AS created_at FROM range(50000)) TO '{path}' "
                    "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 20000)")
    data = path.read_bytes()
    checked = check(data)
    assert sum(b.num_rows for b in checked.iter_batches()) == 50000


# --- footer against the manifest, the schema and the codec ------------------------------------------------

def test_the_footer_must_declare_the_manifest_rows_and_uncompressed_size():
    data = parquet_bytes(table(100))
    rows, uncompressed = declared(data)
    assert reason(check, data, rows=rows + 1, uncompressed=uncompressed) == "payload:parquet-rows"
    assert reason(check, data, rows=rows, uncompressed=uncompressed - 1) == "payload:parquet-uncompressed"


@pytest.mark.parametrize("schema", [
    pa.schema([("job_id", pa.string()), ("state", pa.string()), ("attempt", pa.int64()),
               ("created_at", pa.timestamp("us"))]),
    pa.schema([("job_id", pa.string()), ("status", pa.string()), ("attempt", pa.int32()),
               ("created_at", pa.timestamp("us"))]),
    pa.schema([("job_id", pa.string()), ("state", pa.string()), ("attempt", pa.int32())]),
    JOBS_SCHEMA.append(pa.field("extra", pa.string())),
])
def test_columns_must_have_the_expected_names_and_types(schema):
    assert reason(check, parquet_bytes(table(10)), schema=schema) == "payload:parquet-schema"


@pytest.mark.parametrize("codec", ["snappy", "gzip", "none"])
def test_only_zstd_is_accepted(codec):
    assert reason(check, parquet_bytes(table(10), compression=codec)) == "payload:parquet-codec"


@pytest.mark.parametrize("damage, expected", [
    (lambda d: b"garbage", "payload:parquet-footer"),
    (lambda d: b"XXXX" + d[4:], "payload:parquet-footer"),
    (lambda d: d[:-4] + b"PARE", "payload:parquet-footer"),
    (lambda d: d[:-8] + struct.pack("<I", 17 * MIB) + b"PAR1", "size:parquet-footer"),
    (lambda d: d[:-8] + struct.pack("<I", len(d)) + b"PAR1", "payload:parquet-footer"),
    (lambda d: d[:len(d) // 2] + d[-8:], "payload:parquet-footer"),
])
def test_a_damaged_file_is_refused_at_its_footer(damage, expected):
    data = parquet_bytes(table(10))
    assert reason(check, damage(data), rows=10, uncompressed=1) == expected


def test_a_malformed_page_header_is_refused_before_decoding():
    data = bytearray(parquet_bytes(table(10)))
    data[4] = 0xFF  # the first page header's first field header: an unknown Thrift type
    assert reason(check, bytes(data)) == "payload:parquet-pages"


# --- bombs ------------------------------------------------------------------------------------------------

def test_a_footer_declaring_less_than_its_pages_is_refused_before_decoding(plain_zeros):
    """The footer says half of what the page headers say: a decoder would allocate what the pages declare."""
    _rows, uncompressed = declared(plain_zeros)
    lying = patch_footer_i64(plain_zeros, uncompressed, uncompressed // 2)
    assert declared(lying)[1] == uncompressed // 2
    assert reason(check, lying, schema=ZEROS) == "payload:parquet-pages"


def test_a_column_chunk_declaring_a_huge_uncompressed_size_is_refused_by_the_caps(plain_zeros):
    _rows, uncompressed = declared(plain_zeros)
    inflated = patch_footer_i64(plain_zeros, uncompressed, uncompressed * 3)
    assert reason(check, inflated, schema=ZEROS, max_uncompressed_bytes=16 * MIB) == "size:parquet-uncompressed"
    assert reason(check, plain_zeros, schema=ZEROS, max_row_group_uncompressed_bytes=4 * MIB) == (
        "size:parquet-row-group")
    assert reason(check, plain_zeros, schema=ZEROS, max_page_bytes=64 * 1024) == "size:parquet-page"
    assert reason(check, plain_zeros, schema=ZEROS, max_rows=999_999) == "size:parquet-rows"
    assert reason(check, plain_zeros, schema=ZEROS, max_pages=3) == "size:parquet-pages"


def test_decoding_stops_at_the_total_decoded_cap(plain_zeros):
    checked = check(plain_zeros, schema=ZEROS, max_decoded_bytes=2 * MIB)
    with pytest.raises(BundleError) as caught:
        for _batch in checked.iter_batches():
            pass
    assert caught.value.reason_code == "size:decoded"


def _peak(tmp_path: Path, data: bytes, *args: str) -> dict:
    path = tmp_path / "bomb.parquet"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, str(HELPERS / "arrow_peak.py"), str(path), *args], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_a_dictionary_bomb_is_refused_before_it_expands(tmp_path):
    """One 16 KiB string repeated 8,192 times: 60 KB on disk with an honest footer, 128 MiB once expanded.
    Plain pyarrow allocates the 128 MiB for the first batch; the checked reader refuses that batch from its
    dictionary's value lengths and allocates almost nothing."""
    tenants = pa.DictionaryArray.from_arrays(pa.array([0] * 8192, pa.int32()), pa.array(["x" * 16384]))
    bomb = parquet_bytes(pa.table({"tenant": tenants, "limit_value": pa.array(range(8192), pa.int64())}),
                         store_schema=False)
    assert len(bomb) < 100_000
    rows, uncompressed = declared(bomb)
    plain = _peak(tmp_path, bomb, "plain")
    checked = _peak(tmp_path, bomb, "checked", str(rows), str(uncompressed), str(16 * MIB))
    assert plain["peak"] > 128 * MIB
    assert checked["reason"] == "size:decoded-batch"
    assert checked["peak"] < 8 * MIB
