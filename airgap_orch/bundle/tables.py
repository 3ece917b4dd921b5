"""The table members of a bundle: which ledger tables travel, each one's columns (its Arrow/Parquet schema) and
row order, and the Parquet writer that makes a member deterministically from record batches.

One member per table, `data/<table>.parquet`, in TABLES order (docs/bundle-format.md, "Table members").
The ledger side (operations/bundles.py) reads each table with the named query `bundle_export_<table>` from
ledger/queries.sql, which lists exactly these columns in this order and sorts by `order`.

Parquet as written here (`write_table_member`):
- zstd for every column chunk; dictionary encoding; statistics; format version 2.6; data page version 1;
  the Arrow schema stored in the footer (so readers get these exact types back).
- Row groups end after ROW_GROUP_ROWS rows or once the rows' estimated size reaches ROW_GROUP_BYTES, so no row
  group comes near the reader's cap (limits.ParquetLimits.max_row_group_uncompressed_bytes) however large the
  payloads. Where a row group ends depends on the rows alone, never on how the ledger handed out its batches,
  and each row group is written from one contiguous buffer, so page boundaries do not depend on them either:
  the same rows give the same bytes (with the same pyarrow version, which the footer names).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import PayloadError
from .manifest import PARQUET_MEDIA_TYPE

ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 64 * 1024 * 1024  # estimated (see _row_sizes); the reader's cap per row group is 512 MiB
READ_BATCH_ROWS = ROW_GROUP_ROWS  # what the exporter asks the ledger for at a time
_FIXED_WIDTH_BYTES = 8  # estimate for a number, time or flag
_LIST_ITEM_BYTES = 136  # estimate for one item of a list of strings (limit keys are short)

_S, _I32, _I64, _F64, _B, _T = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_(), pa.timestamp("us")


@dataclass(frozen=True)
class TableSpec:
    """One table member: its manifest table name, the ledger table it comes from (all_jobs: the view over jobs
    and jobs_finished), its row order, which rows a `--tenant` export keeps (for the docs), and its columns."""

    name: str
    source: str
    order: tuple[str, ...]
    tenant_rows: str
    schema: pa.Schema
    # Trailing columns added to the table after its first layout: a member without them (an earlier writer's)
    # still verifies, and the importer fills them in (operations/bundle_policies.py).
    added: tuple[str, ...] = ()

    @property
    def accepted_schemas(self) -> tuple[pa.Schema, ...]:
        """The footers the verifier accepts: the current layout, then each earlier one (fewer trailing columns)."""
        layouts = [self.schema]
        for count in range(1, len(self.added) + 1):
            layouts.append(pa.schema(list(self.schema)[:len(self.schema) - count]))
        return tuple(layouts)

    # Parameters its query takes besides $tenant (the hand-off list: the bundle's target site and sequence).
    scope_params: tuple[str, ...] = ()
    # Columns the export query computes that the ledger table does not store (hash_only of the chains).
    computed: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"data/{self.name}.parquet"

    @property
    def query(self) -> str:
        return f"bundle_export_{self.name}"

    media_type = PARQUET_MEDIA_TYPE


def _schema(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, kind) for name, kind in columns])


# The policy rows' issuing site and per-issuer version (migration 0013), added after version 1's first layout.
_ISSUER = (("issuer_site", _S), ("issuer_version", _I32))
_ISSUED = ("issuer_site", "issuer_version")
# The chains' hashes-only flag (a --tenant bundle's other tenants' entries: entry and key NULL), added after version
# 1's first layout; a member without it has every entry's text.
_HASH_ONLY = ("hash_only",)

TABLES: tuple[TableSpec, ...] = (
    TableSpec("jobs", "all_jobs", ("job_id",), "tenant = T", _schema(
        ("job_id", _S), ("site_id", _S), ("tenant", _S), ("project", _S), ("job_type", _S), ("queue", _S),
        ("priority", _I32), ("payload", _S), ("payload_digest", _S), ("idempotency_key", _S), ("state", _S),
        ("run_at", _T), ("attempts", _I32), ("max_attempts", _I32), ("timeout_seconds", _I32),
        ("correlation_id", _S), ("lease_id", _S), ("worker_id", _S), ("lease_seconds", _F64), ("leased_at", _T),
        ("lease_expires_at", _T), ("started_at", _T), ("progress", _F64), ("progress_message", _S),
        ("artifacts", _S), ("last_error", _S), ("cancel_requested", _B), ("replay_of", _S), ("created_at", _T),
        ("updated_at", _T), ("finished_at", _T), ("limit_keys", pa.list_(_S)), ("fair_seq", _I64))),
    TableSpec("history", "history", ("seq",), "every entry; other tenants' as hashes only", _schema(
        ("seq", _I64), ("job_id", _S), ("entry", _S), ("entry_hash", _S), ("hash_only", _B)), _HASH_ONLY,
        computed=_HASH_ONLY),
    TableSpec("idempotency_keys", "idempotency_keys", ("site_id", "tenant", "idempotency_key"), "tenant = T",
              _schema(("site_id", _S), ("tenant", _S), ("idempotency_key", _S), ("job_id", _S),
                      ("spec_digest", _S))),
    TableSpec("job_dependencies", "job_dependencies", ("job_id", "parent_id"), "edges of T's jobs", _schema(
        ("job_id", _S), ("parent_id", _S))),
    TableSpec("quotas", "quotas", ("tenant",), "tenant = T", _schema(
        ("tenant", _S), ("record_version", _I32), ("revision", _I32), ("max_active", _I32), ("max_per_hour", _I32),
        ("burst", _I32), ("reason", _S), ("ticket", _S), ("updated_at", _T), ("updated_by", _S), *_ISSUER),
        _ISSUED),
    TableSpec("rate_limits", "rate_limits", ("scope",), "tenant = T, or limit_key = 'tenant:T'", _schema(
        ("scope", _S), ("record_version", _I32), ("revision", _I32), ("tenant", _S), ("job_type", _S),
        ("limit_key", _S), ("rate_per_second", _F64), ("burst", _I32), ("reason", _S), ("ticket", _S),
        ("updated_at", _T), ("updated_by", _S), *_ISSUER), _ISSUED),
    TableSpec("concurrency_limits", "concurrency_limits", ("limit_key",), "limit_key = 'tenant:T'", _schema(
        ("limit_key", _S), ("record_version", _I32), ("revision", _I32), ("max_active", _I32), ("reason", _S),
        ("ticket", _S), ("updated_at", _T), ("updated_by", _S), *_ISSUER), _ISSUED),
    TableSpec("circuit_breakers", "circuit_breakers", ("limit_key",), "limit_key = 'tenant:T'", _schema(
        ("limit_key", _S), ("record_version", _I32), ("revision", _I32), ("failure_threshold", _I32),
        ("cooldown_seconds", _F64), ("reason", _S), ("ticket", _S), ("state", _S), ("consecutive_failures", _I32),
        ("opened_at", _T), ("probe_job_id", _S), ("updated_at", _T), ("updated_by", _S))),
    TableSpec("pauses", "pauses", ("kind", "name"), "kind 'key', name 'tenant:T'", _schema(
        ("kind", _S), ("name", _S), ("record_version", _I32), ("reason", _S), ("ticket", _S), ("paused_at", _T),
        ("paused_by", _S))),
    TableSpec("sources", "sources", ("name",), "tenant = T", _schema(
        ("name", _S), ("record_version", _I32), ("revision", _I32), ("site_id", _S), ("tenant", _S), ("project", _S),
        ("job_type", _S), ("queue", _S), ("host", _S), ("schedule", _S), ("missed_policy", _S), ("payload", _S),
        ("last_tick", _T), ("skipped_ticks", _I64), ("created_at", _T), ("created_by", _S), ("updated_at", _T),
        ("updated_by", _S))),
    TableSpec("backfills", "backfills", ("backfill_id",), "tenant = T", _schema(
        ("backfill_id", _S), ("record_version", _I32), ("site_id", _S), ("tenant", _S), ("project", _S),
        ("job_type", _S), ("queue", _S), ("priority", _I32), ("payload", _S), ("window_from", _T),
        ("window_to", _T), ("step", _S), ("step_seconds", _I64), ("reason", _S), ("ticket", _S), ("state", _S),
        ("windows_total", _I32), ("windows_created", _I32), ("windows_suppressed", _I32), ("created_at", _T),
        ("created_by", _S), ("canceled_at", _T), ("canceled_by", _S), ("cancel_reason", _S))),
    TableSpec("backfill_windows", "backfill_windows", ("backfill_id", "window_index"), "windows of T's backfills",
              _schema(("backfill_id", _S), ("record_version", _I32), ("window_index", _I32), ("window_start", _T),
                      ("window_end", _T), ("job_id", _S), ("created", _B))),
    TableSpec("audit_log", "audit_log", ("seq",), "every entry; those whose details.tenant is not T as hashes only",
              _schema(("seq", _I64), ("action", _S), ("entry", _S), ("entry_hash", _S), ("hash_only", _B)),
              _HASH_ONLY, computed=_HASH_ONLY),
    # The jobs this bundle hands over to its target (`bundle export --handoff`; empty otherwise). Bundles written
    # before hand-offs existed lack this member: readers take its absence as no hand-off.
    TableSpec("handoffs", "bundle_handoffs", ("job_id",), "hand-offs of T's jobs", _schema(
        ("job_id", _S), ("backfill_id", _S), ("window_index", _I32), ("history_seq", _I64), ("entry_hash", _S)),
        scope_params=("target_site", "sequence")),
)
BY_NAME: dict[str, TableSpec] = {spec.name: spec for spec in TABLES}
# An incremental bundle carries these tables' rows changed since its base (the query
# `bundle_export_since_<table>`: history and audit entries after the base's high-water marks, the jobs those history
# entries name, their keys and edges); every other table travels whole (they are small).
INCREMENTAL_TABLES: frozenset[str] = frozenset({"jobs", "history", "idempotency_keys", "job_dependencies",
                                                "audit_log"})
# What the verifier's table step (verify_bundle(table_schemas=...)) checks each member's footer against: one of
# the table's accepted layouts (the current one first).
TABLE_SCHEMAS: dict[str, tuple[pa.Schema, ...]] = {spec.name: spec.accepted_schemas for spec in TABLES}
# Ledger tables that stay at their site, and why (tests check every ledger table is exported or listed here).
LOCAL_TABLES: dict[str, str] = {
    "ledger_meta": "this site's identity",
    "schema_migrations": "this file's schema history",
    "request_log": "answers to this server's HTTP requests",
    "bucket_levels": "token bucket levels: runtime state, refilled from the limits",
    "chain_heads": "derived from history and audit_log",
    "trust_roots": "what this site pinned",
    "bundle_exports": "this site's export series",
    "bundle_handoffs": "the jobs this site handed off (each bundle's handoffs member carries its own)",
    "bundle_imports": "what this site imported: its floors and time anchors",
    "bundle_imports_superseded": "imports whose floor a key rotation reset (fast-forward recovery)",
    "mirror_jobs": "other sites' jobs, mirrored from their bundles",
    "mirror_history": "other sites' history, mirrored from their bundles",
    "mirror_audit_log": "other sites' audit logs, mirrored from their bundles",
    "mirror_chain_heads": "the head of each mirrored chain, recorded by the import that brought it",
    "site_chains": "a view: every chain this site holds (its own and the mirrors) by site, chain and sequence",
    "mirror_policies": "other sites' policies, mirrored from their bundles",
    "mirror_rows": "other sites' idempotency keys, dependencies, sources, backfills and windows, mirrored",
    "policy_authority": "the site whose policies this site applies: this site's own designation",
    "job_logs": "the lines handlers logged here: a bounded, pruned buffer per job (README \"Job logs\")",
}


@dataclass(frozen=True)
class WrittenTable:
    rows: int
    row_groups: int
    uncompressed_bytes: int  # the sum of the column chunks' total_uncompressed_size (the manifest's figure)


def write_table_member(spec: TableSpec, batches: Iterable[pa.RecordBatch], out: BinaryIO, *,
                       row_group_rows: int = ROW_GROUP_ROWS, row_group_bytes: int = ROW_GROUP_BYTES) -> WrittenTable:
    """Write `batches` (the table's rows, in its order, in any batch sizes) to `out` as the Parquet member of
    `spec` (see the module docstring). Each batch must have the spec's column names in order; its types are cast
    to the spec's (PayloadError payload:parquet-schema when they cannot be). The row group bounds are part of
    what makes the bytes (tests pass smaller ones)."""
    writer = pq.ParquetWriter(out, spec.schema, compression="zstd", use_dictionary=True, write_statistics=True,
                              version="2.6", data_page_version="1.0", store_schema=True)
    groups = _RowGroups(writer, row_group_rows, row_group_bytes)
    try:
        for batch in batches:
            if batch.schema.names != spec.schema.names:
                raise PayloadError("parquet-schema", f"table {spec.name}: the ledger returned columns "
                                   f"{batch.schema.names[:8]}, not {spec.schema.names[:8]}")
            try:
                batch = batch.cast(spec.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise PayloadError("parquet-schema", f"table {spec.name}: {str(exc)[:160]}") from None
            groups.add(batch)
        groups.flush()
    finally:
        writer.close()
    metadata = writer.writer.metadata
    uncompressed = sum(metadata.row_group(g).column(c).total_uncompressed_size
                       for g in range(metadata.num_row_groups) for c in range(metadata.num_columns))
    return WrittenTable(metadata.num_rows, metadata.num_row_groups, uncompressed)


class _RowGroups:
    """Buffers rows and writes one row group per `max_rows` rows or `max_bytes` estimated bytes."""

    def __init__(self, writer: pq.ParquetWriter, max_rows: int, max_bytes: int):
        self.writer, self.max_rows, self.max_bytes = writer, max_rows, max_bytes
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0
        self.bytes = 0

    def add(self, batch: pa.RecordBatch) -> None:
        sizes = _row_sizes(batch)
        offset = 0
        while offset < batch.num_rows:
            rest = sizes.slice(offset)
            room = self.max_bytes - self.bytes
            fitting = pc.sum(pc.less_equal(pc.cumulative_sum(rest), room)).as_py() or 0
            take = min(self.max_rows - self.rows, fitting, batch.num_rows - offset)
            if take == 0 and self.rows == 0:
                take = 1  # one row larger than a whole group still gets a group of its own
            if take:
                self.pending.append(batch.slice(offset, take))
                self.rows += take
                self.bytes += pc.sum(rest.slice(0, take)).as_py() or 0
                offset += take
            if offset < batch.num_rows or self.rows >= self.max_rows:
                self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_batches(self.pending).combine_chunks()
        self.writer.write_table(table, row_group_size=self.rows)
        self.pending, self.rows, self.bytes = [], 0, 0


def _row_sizes(batch: pa.RecordBatch) -> pa.Array:
    """An estimate of each row's size in bytes, from its values alone (int64 array)."""
    total = pa.repeat(pa.scalar(0, pa.int64()), batch.num_rows)
    fixed = 0
    for column in batch.columns:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_binary(kind):
            length = pc.fill_null(pc.binary_length(column), 0).cast(pa.int64())
            total = pc.add(total, pc.add(length, 4))
        elif pa.types.is_list(kind):
            items = pc.fill_null(pc.list_value_length(column), 0).cast(pa.int64())
            total = pc.add(total, pc.add(pc.multiply(items, _LIST_ITEM_BYTES), 4))
        else:
            fixed += _FIXED_WIDTH_BYTES
    return pc.add(total, fixed)
