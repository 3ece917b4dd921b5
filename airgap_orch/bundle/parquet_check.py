"""A Parquet table member, checked before a single page is decoded, then read in bounded record batches.

`open_parquet` reads metadata only, in this order, and raises at the first problem:
1. The magic bytes and the footer length (capped) from the file's last 8 bytes; an encrypted footer ("PARE")
   is refused.
2. The footer (pyarrow's FileMetaData, thrift limits set): row groups and columns within caps; the schema's
   column names and types equal the table schema the caller expects; every column chunk is zstd-compressed,
   lies inside the file and names no external file; the row count equals the manifest's `rows` and the sum of
   the column chunks' `total_uncompressed_size` equals the manifest's `uncompressed_bytes`; both within caps,
   and every row group's uncompressed size within the row-group cap (what reading one row group holds).
3. Every page header (Thrift compact, parsed here; page data is skipped): each page's declared uncompressed
   size within the page cap, the pages exactly filling their column chunk, and their uncompressed sizes adding
   up to no more than the footer declared. A decoder allocates what a page header declares, so a footer that
   declares little while its pages declare much (a bomb) is refused here, before decoding.
`CheckedParquet.iter_batches` then decodes at most `max_batch_rows` rows at a time with string and binary
columns read as dictionaries: each batch's size with dictionaries expanded is computed from the value
lengths before they are expanded, and is capped per batch and per member (a short dictionary value
repeated a million times is small on disk and large in memory).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import PayloadError, SizeLimitError
from .limits import DEFAULT_PARQUET_LIMITS, MIB, ParquetLimits

MAGIC = b"PAR1"
ENCRYPTED_MAGIC = b"PARE"
_PAGE_TYPES = {0: "data", 1: "index", 2: "dictionary", 3: "data-v2"}


@dataclass(frozen=True)
class ParquetFacts:
    """What the metadata of a checked member declares."""

    rows: int
    uncompressed_bytes: int
    compressed_bytes: int
    row_groups: int
    pages: int
    columns: tuple[str, ...]


class CheckedParquet:
    """A Parquet member whose footer and page headers passed `open_parquet`."""

    def __init__(self, source: BinaryIO, metadata: pq.FileMetaData, schema: pa.Schema, facts: ParquetFacts,
                 limits: ParquetLimits, what: str):
        self._source, self._metadata, self._schema = source, metadata, schema
        self.facts, self._limits, self._what = facts, limits, what

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def iter_batches(self, batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of at most `batch_rows` (capped) rows, in the expected schema. SizeLimitError
        size:decoded-batch or size:decoded when expanding would pass a cap; PayloadError payload:parquet-decode
        when the data does not decode or yields other than the declared rows."""
        rows = min(batch_rows or self._limits.max_batch_rows, self._limits.max_batch_rows)
        as_dictionary = [f.name for f in self._schema if _is_binary_like(f.type)]
        try:
            reader = pq.ParquetFile(self._source, metadata=self._metadata, read_dictionary=as_dictionary,
                                    pre_buffer=False, buffer_size=1 * MIB,
                                    thrift_string_size_limit=self._limits.max_footer_bytes,
                                    thrift_container_size_limit=self._limits.max_footer_bytes)
            batches = reader.iter_batches(batch_size=rows, use_threads=False)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise PayloadError("parquet-decode", f"{self._what} does not decode: {str(exc)[:160]}") from None
        decoded = produced = 0
        while True:
            try:
                batch = next(batches, None)
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise PayloadError("parquet-decode", f"{self._what} does not decode: {str(exc)[:160]}") from None
            if batch is None:
                break
            size = _expanded_size(batch)
            if size > self._limits.max_decoded_batch_bytes:
                raise SizeLimitError("decoded-batch", f"{self._what}: {batch.num_rows} rows would expand to {size} "
                                     f"bytes; the cap per batch is {self._limits.max_decoded_batch_bytes}")
            decoded += size
            if decoded > self._limits.max_decoded_bytes:
                raise SizeLimitError("decoded", f"{self._what} expands to more than "
                                     f"{self._limits.max_decoded_bytes} bytes")
            produced += batch.num_rows
            if produced > self.facts.rows:
                raise PayloadError("parquet-decode", f"{self._what} yields more rows than the {self.facts.rows} "
                                   "its footer declares")
            columns = [column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
                       for column in batch.columns]
            yield pa.RecordBatch.from_arrays(columns, schema=self._schema)
        if produced != self.facts.rows:
            raise PayloadError("parquet-decode", f"{self._what} yields {produced} rows, not the {self.facts.rows} "
                               "its footer declares")


def open_parquet(source: BinaryIO, *, expected_schema: pa.Schema | Sequence[pa.Schema], rows: int,
                 uncompressed_bytes: int,
                 limits: ParquetLimits = DEFAULT_PARQUET_LIMITS, what: str = "the Parquet member") -> CheckedParquet:
    """Check a Parquet member's footer and page headers (see the module docstring) against the manifest's
    `rows` and `uncompressed_bytes`, the caps and `expected_schema` (or one of several accepted layouts, the
    current one first: the member is then read in the layout its footer has); decodes nothing. `source` is a seekable
    file object over the member alone (tarfmt.open_member). SizeLimitError size:parquet-*, PayloadError
    payload:parquet-*."""
    size = source.seek(0, 2)
    footer_length = _footer_length(source, size, limits, what)
    try:
        opened = pq.ParquetFile(source, pre_buffer=False, thrift_string_size_limit=limits.max_footer_bytes,
                                thrift_container_size_limit=limits.max_footer_bytes)
        metadata = opened.metadata
        schema = metadata.schema.to_arrow_schema()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise PayloadError("parquet-footer", f"{what} has no readable Parquet footer: {str(exc)[:160]}") from None
    if metadata.num_row_groups > limits.max_row_groups:
        raise SizeLimitError("parquet-row-groups", f"{what} has {metadata.num_row_groups} row groups; the cap is "
                             f"{limits.max_row_groups}")
    if metadata.num_columns > limits.max_columns:
        raise SizeLimitError("parquet-columns", f"{what} has {metadata.num_columns} columns; the cap is "
                             f"{limits.max_columns}")
    expected_schema = _check_schema(schema, expected_schema, what)
    data_end = size - 8 - footer_length
    total_rows = uncompressed = compressed = pages = 0
    for group_index in range(metadata.num_row_groups):
        group = metadata.row_group(group_index)
        total_rows += group.num_rows
        group_uncompressed = 0
        for column_index in range(group.num_columns):
            chunk = group.column(column_index)
            where = f"{what}, row group {group_index}, column {chunk.path_in_schema!r}"
            if chunk.compression != "ZSTD":
                raise PayloadError("parquet-codec", f"{where} is compressed with {chunk.compression}; bundles use "
                                   "zstd only")
            if chunk.file_path:
                raise PayloadError("parquet-footer", f"{where} refers to another file")
            if chunk.total_uncompressed_size < 0 or chunk.total_compressed_size < 0:
                raise PayloadError("parquet-footer", f"{where} declares a negative size")
            group_uncompressed += chunk.total_uncompressed_size
            uncompressed += chunk.total_uncompressed_size
            compressed += chunk.total_compressed_size
        if group_uncompressed > limits.max_row_group_uncompressed_bytes:
            raise SizeLimitError("parquet-row-group", f"{what}, row group {group_index} declares {group_uncompressed} "
                                 f"uncompressed bytes; the cap is {limits.max_row_group_uncompressed_bytes}")
    if total_rows != metadata.num_rows:
        raise PayloadError("parquet-footer", f"{what}'s row groups hold {total_rows} rows, but its footer says "
                           f"{metadata.num_rows}")
    if metadata.num_rows > limits.max_rows:
        raise SizeLimitError("parquet-rows", f"{what} declares {metadata.num_rows} rows; the cap is {limits.max_rows}")
    if uncompressed > limits.max_uncompressed_bytes:
        raise SizeLimitError("parquet-uncompressed", f"{what} declares {uncompressed} uncompressed bytes; the cap is "
                             f"{limits.max_uncompressed_bytes}")
    if metadata.num_rows != rows:
        raise PayloadError("parquet-rows", f"{what}'s footer declares {metadata.num_rows} rows; the manifest says "
                           f"{rows}")
    if uncompressed != uncompressed_bytes:
        raise PayloadError("parquet-uncompressed", f"{what}'s footer declares {uncompressed} uncompressed bytes; "
                           f"the manifest says {uncompressed_bytes}")
    for group_index in range(metadata.num_row_groups):
        group = metadata.row_group(group_index)
        for column_index in range(group.num_columns):
            chunk = group.column(column_index)
            pages += _walk_pages(source, chunk, data_end, limits, limits.max_pages - pages,
                                 f"{what}, row group {group_index}, column {chunk.path_in_schema!r}")
    facts = ParquetFacts(rows=metadata.num_rows, uncompressed_bytes=uncompressed, compressed_bytes=compressed,
                         row_groups=metadata.num_row_groups, pages=pages, columns=tuple(schema.names))
    return CheckedParquet(source, metadata, expected_schema, facts, limits, what)


# --- footer and schema ------------------------------------------------------------------------------------

def _footer_length(source: BinaryIO, size: int, limits: ParquetLimits, what: str) -> int:
    if size < 12:
        raise PayloadError("parquet-footer", f"{what} is {size} bytes, too short for Parquet")
    source.seek(0)
    head = source.read(4)
    source.seek(size - 8)
    tail = source.read(8)
    if tail[4:] == ENCRYPTED_MAGIC:
        raise PayloadError("parquet-footer", f"{what} has an encrypted footer; bundles carry plain Parquet")
    if head != MAGIC or tail[4:] != MAGIC:
        raise PayloadError("parquet-footer", f"{what} does not start and end with the Parquet magic bytes")
    (length,) = struct.unpack("<I", tail[:4])
    if length > limits.max_footer_bytes:
        raise SizeLimitError("parquet-footer", f"{what}'s footer is {length} bytes; the cap is "
                             f"{limits.max_footer_bytes}")
    if length > size - 12:
        raise PayloadError("parquet-footer", f"{what}'s footer length {length} does not fit the file")
    return length


def _check_schema(actual: pa.Schema, accepted: pa.Schema | Sequence[pa.Schema], what: str) -> pa.Schema:
    """The accepted layout the footer's schema equals; PayloadError (naming the first, current, layout) if none."""
    layouts = (accepted,) if isinstance(accepted, pa.Schema) else tuple(accepted)
    have = [(field.name, field.type) for field in actual]
    for layout in layouts:
        if have == [(field.name, field.type) for field in layout]:
            return layout
    want = [(field.name, field.type) for field in layouts[0]]
    for position, (got, wanted) in enumerate(zip(have, want, strict=False)):
        if got != wanted:
            raise PayloadError("parquet-schema", f"{what}'s column {position} is {got[0]!r} {got[1]}; the table "
                               f"needs {wanted[0]!r} {wanted[1]}")
    raise PayloadError("parquet-schema", f"{what} has {len(have)} columns; the table has {len(want)} "
                       f"({', '.join(name for name, _ in want[:12])})")


def _is_binary_like(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind))


def _expanded_size(batch: pa.RecordBatch) -> int:
    """Bytes the batch takes once its dictionary columns are expanded, computed without expanding them."""
    total = 0
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            lengths = pc.binary_length(column.dictionary)
            values = pc.sum(pc.take(lengths, column.indices)).as_py() or 0
            offsets = 8 if pa.types.is_large_string(column.type.value_type) or pa.types.is_large_binary(
                column.type.value_type) else 4
            total += values + offsets * (len(column) + 1) + (len(column) + 7) // 8
        else:
            total += column.nbytes
    return total


# --- page headers -----------------------------------------------------------------------------------------

def _walk_pages(source: BinaryIO, chunk: Any, data_end: int, limits: ParquetLimits, pages_left: int,
                where: str) -> int:
    """Walk one column chunk's pages by their headers; return how many there are."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
        start = min(start, chunk.dictionary_page_offset)
    end = start + chunk.total_compressed_size
    if start < len(MAGIC) or end > data_end:
        raise PayloadError("parquet-footer", f"{where} lies outside the file's data ({start}..{end})")
    position = start
    declared_uncompressed = 0
    count = 0
    while position < end:
        if count >= pages_left:
            raise SizeLimitError("parquet-pages", f"{where}: the member has more than {limits.max_pages} pages")
        header_length, page_type, page_uncompressed, page_compressed = _read_page_header(
            source, position, min(end - position, limits.max_page_header_bytes), where)
        if page_type not in _PAGE_TYPES or page_uncompressed < 0 or page_compressed < 0:
            raise PayloadError("parquet-pages", f"{where}: the page header at offset {position} is not valid")
        if page_uncompressed > limits.max_page_bytes:
            raise SizeLimitError("parquet-page", f"{where}: a page at offset {position} declares {page_uncompressed} "
                                 f"uncompressed bytes; the cap is {limits.max_page_bytes}")
        declared_uncompressed += header_length + page_uncompressed
        position += header_length + page_compressed
        count += 1
    if position != end:
        raise PayloadError("parquet-pages", f"{where}: its pages run past the column chunk's end ({position} > {end})")
    if declared_uncompressed > chunk.total_uncompressed_size:
        raise PayloadError("parquet-pages", f"{where}: its pages declare {declared_uncompressed} uncompressed bytes, "
                           f"more than the {chunk.total_uncompressed_size} its footer declares")
    return count


def _read_page_header(source: BinaryIO, position: int, limit: int, where: str) -> tuple[int, int, int, int]:
    """(header length, page type, uncompressed size, compressed size) of the PageHeader at `position`."""
    length = min(256, limit)
    while True:
        source.seek(position)
        data = source.read(length)
        try:
            fields, consumed = _CompactReader(data).read_struct()
        except _NeedMore:
            if length >= limit or len(data) < length:
                raise PayloadError("parquet-pages", f"{where}: the page header at offset {position} is truncated or "
                                   "over the header cap") from None
            length = min(limit, length * 4)
            continue
        except _Malformed as exc:
            raise PayloadError("parquet-pages", f"{where}: the page header at offset {position} is malformed "
                               f"({exc})") from None
        if not all(isinstance(fields.get(i), int) for i in (1, 2, 3)):
            raise PayloadError("parquet-pages", f"{where}: the page header at offset {position} lacks its type or "
                               "sizes")
        return consumed, fields[1], fields[2], fields[3]


class _NeedMore(Exception):
    pass


class _Malformed(Exception):
    pass


class _CompactReader:
    """Just enough of the Thrift compact protocol to read a PageHeader's i32 fields and skip everything else."""

    MAX_DEPTH = 16

    def __init__(self, data: bytes):
        self._data, self._position = data, 0

    def _byte(self) -> int:
        if self._position >= len(self._data):
            raise _NeedMore
        value = self._data[self._position]
        self._position += 1
        return value

    def _varint(self) -> int:
        result = shift = 0
        while True:
            byte = self._byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _Malformed("varint too long")

    def _zigzag(self) -> int:
        value = self._varint()
        return (value >> 1) ^ -(value & 1)

    def _skip_bytes(self, count: int) -> None:
        if self._position + count > len(self._data):
            raise _NeedMore
        self._position += count

    def read_struct(self, depth: int = 0) -> tuple[dict[int, int], int]:
        """Top-level i32 fields by id, and the bytes consumed."""
        if depth > self.MAX_DEPTH:
            raise _Malformed("nested too deeply")
        fields: dict[int, int] = {}
        field_id = 0
        while True:
            header = self._byte()
            if header == 0:
                return fields, self._position
            kind, delta = header & 0x0F, header >> 4
            field_id = field_id + delta if delta else self._zigzag()
            if kind == 5 and depth == 0:
                fields[field_id] = self._zigzag()
            else:
                self._skip(kind, depth)

    def _skip(self, kind: int, depth: int, element: bool = False) -> None:
        if depth > self.MAX_DEPTH:
            raise _Malformed("nested too deeply")
        if kind in (1, 2):  # a boolean field lives in its field header; a boolean element takes one byte
            if element:
                self._skip_bytes(1)
            return
        if kind == 3:
            self._skip_bytes(1)
        elif kind in (4, 5, 6):
            self._varint()
        elif kind == 7:
            self._skip_bytes(8)
        elif kind == 8:
            self._skip_bytes(self._varint())
        elif kind in (9, 10):
            header = self._byte()
            count, element_kind = header >> 4, header & 0x0F
            if count == 15:
                count = self._varint()
            for _ in range(count):
                self._skip(element_kind, depth + 1, element=True)
        elif kind == 11:
            count = self._varint()
            if count:
                types = self._byte()
                for _ in range(count):
                    self._skip(types >> 4, depth + 1, element=True)
                    self._skip(types & 0x0F, depth + 1, element=True)
        elif kind == 12:
            self.read_struct(depth + 1)
        else:
            raise _Malformed(f"unknown thrift type {kind}")
