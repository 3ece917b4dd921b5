"""Assembling a bundle, and adding a signature to one (`bundle sign`).

`write_bundle` hashes every member first (a file object is read once to hash and once to copy, so it must be
seekable and unchanged in between), builds the manifest, signs it (one signature per site key given), signs
the time anchor with the timestamp key(s), and writes the canonical archive:
    envelope.dsse.json, trust/root-<N>.json (ascending N), time-anchor.json, data members (in the order given).
Ed25519 signatures, canonical JSON and the canonical tar make the output a pure function of the inputs: the
same inputs give the same bytes.

`add_signature` returns the bundle with one more envelope signature. The signature covers the manifest
payload only, so the manifest, the bundle id, the Merkle root and the time anchor stay as they were; the
envelope member grows, and since every later header offset moves, the archive is rewritten: the new envelope,
then every other member copied byte for byte.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import InvalidInput
from . import dsse
from .anchor import sign_anchor
from .errors import EnvelopeError, SizeLimitError, TarFormatError
from .limits import DEFAULT_TAR_LIMITS, MAX_ENVELOPE_BYTES, MAX_ENVELOPE_SIGNATURES, TarLimits
from .manifest import (
    ANCHOR_MEMBER,
    ENVELOPE_MEMBER,
    PARQUET_MEDIA_TYPE,
    ROOT_MEDIA_TYPE,
    BundleHeader,
    Manifest,
    ManifestMember,
    build_manifest,
    parse_manifest,
    root_member_path,
)
from .merkle import LEAF_PREFIX, MerkleTree
from .tarfmt import COPY_CHUNK, TarWriter, open_member, read_index, read_member
from .trust import root_version


@dataclass(frozen=True)
class DataMember:
    """A data member to write. `data` is bytes or a seekable binary file read from its current position.
    For a Parquet member, `rows` and `uncompressed_bytes` are read from its footer when not given."""

    path: str
    media_type: str
    data: bytes | BinaryIO
    size: int | None = None
    table: str | None = None
    rows: int | None = None
    uncompressed_bytes: int | None = None


@dataclass(frozen=True)
class WrittenBundle:
    manifest: Manifest
    size: int  # bytes written


def write_bundle(out: BinaryIO, header: BundleHeader, members: Sequence[DataMember], *,
                 roots: Sequence[bytes] = (), signing_keys: Sequence[Ed25519PrivateKey],
                 timestamp_keys: Sequence[Ed25519PrivateKey], limits: TarLimits = DEFAULT_TAR_LIMITS) -> WrittenBundle:
    """Write a bundle to `out` (see the module docstring). InvalidInput for members or roots the format
    cannot hold; ValueError for a manifest the reader would refuse."""
    if not signing_keys:
        raise InvalidInput("a bundle needs at least one signing key of its source site")
    if len(signing_keys) > MAX_ENVELOPE_SIGNATURES:
        raise InvalidInput(f"a bundle carries at most {MAX_ENVELOPE_SIGNATURES} signatures")
    ordered_roots = _ordered_roots(roots)
    listed: list[ManifestMember] = []
    tree = MerkleTree()
    for version, data in ordered_roots:
        sha256, leaf, size = _hash(data, None)
        listed.append(ManifestMember(root_member_path(version), size, sha256, ROOT_MEDIA_TYPE))
        tree.add_leaf_hash(leaf)
    for member in members:
        if member.media_type == ROOT_MEDIA_TYPE:
            raise InvalidInput(f"member {member.path!r}: trust roots go in `roots`, not among the data members")
        sha256, leaf, size = _hash(member.data, member.size)
        rows, uncompressed = member.rows, member.uncompressed_bytes
        if member.media_type == PARQUET_MEDIA_TYPE and (rows is None or uncompressed is None):
            footer_rows, footer_uncompressed = _parquet_declared(member.data)
            rows = footer_rows if rows is None else rows
            uncompressed = footer_uncompressed if uncompressed is None else uncompressed
        listed.append(ManifestMember(member.path, size, sha256, member.media_type, member.table, rows, uncompressed))
        tree.add_leaf_hash(leaf)
    manifest = build_manifest(header, listed, tree.root().hex())
    envelope = dsse.Envelope(manifest.payload, dsse.MANIFEST_PAYLOAD_TYPE, ())
    for key in signing_keys:
        envelope = dsse.add_signature(envelope, key)
    envelope_bytes = envelope.to_json()
    if len(envelope_bytes) > MAX_ENVELOPE_BYTES:
        raise InvalidInput(f"the signed manifest is {len(envelope_bytes)} bytes; the cap is {MAX_ENVELOPE_BYTES} "
                           "(too many members)")
    writer = TarWriter(out, limits)
    writer.add(ENVELOPE_MEMBER, envelope_bytes)
    for version, data in ordered_roots:
        writer.add(root_member_path(version), data)
    writer.add(ANCHOR_MEMBER, sign_anchor(manifest, timestamp_keys))
    for member, entry in zip(members, listed[len(ordered_roots):], strict=True):
        writer.add(member.path, member.data, entry.size)
    return WrittenBundle(manifest, writer.close())


def write_bundle_bytes(header: BundleHeader, members: Sequence[DataMember], *, roots: Sequence[bytes] = (),
                       signing_keys: Sequence[Ed25519PrivateKey],
                       timestamp_keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """`write_bundle` into memory (tests, small bundles)."""
    out = io.BytesIO()
    write_bundle(out, header, members, roots=roots, signing_keys=signing_keys, timestamp_keys=timestamp_keys)
    return out.getvalue()


@dataclass(frozen=True)
class SignedBundle:
    manifest: Manifest  # parsed, NOT verified: what the signer is signing
    envelope: dsse.Envelope
    size: int


def add_signature(source: bytes | BinaryIO, out: BinaryIO, key: Ed25519PrivateKey,
                  limits: TarLimits = DEFAULT_TAR_LIMITS) -> SignedBundle:
    """Write to `out` the bundle `source` with `key`'s signature added to its envelope (replacing an earlier
    signature by the same key, so signing twice changes nothing). The archive and envelope must be canonical
    and the payload a well-formed manifest; signatures are not verified here (`verify_bundle` does that)."""
    index = read_index(source, limits)
    if not index.members or index.members[0].name != ENVELOPE_MEMBER:
        raise TarFormatError("member-order", f"the first member of a bundle is {ENVELOPE_MEMBER}; this is not a bundle")
    first = index.members[0]
    if first.size > MAX_ENVELOPE_BYTES:
        raise SizeLimitError("envelope", f"the envelope is {first.size} bytes; the cap is {MAX_ENVELOPE_BYTES}")
    envelope = dsse.parse_canonical_envelope(read_member(source, first))
    if envelope.payload_type != dsse.MANIFEST_PAYLOAD_TYPE:
        raise EnvelopeError("payload-type", f"the envelope's payload type is {envelope.payload_type[:80]!r}, "
                            f"not {dsse.MANIFEST_PAYLOAD_TYPE!r}")
    manifest = parse_manifest(envelope.payload)
    signed = dsse.add_signature(envelope, key)
    if len(signed.signatures) > MAX_ENVELOPE_SIGNATURES:
        raise InvalidInput(f"the envelope already has {len(envelope.signatures)} signatures; the cap is "
                           f"{MAX_ENVELOPE_SIGNATURES}")
    writer = TarWriter(out, limits)
    writer.add(ENVELOPE_MEMBER, signed.to_json())
    for member in index.members[1:]:
        writer.add(member.name, open_member(source, member), member.size)
    return SignedBundle(manifest, signed, writer.close())


def _ordered_roots(roots: Sequence[bytes]) -> list[tuple[int, bytes]]:
    ordered = sorted(((root_version(bytes(data)), bytes(data)) for data in roots), key=lambda item: item[0])
    versions = [version for version, _ in ordered]
    if len(set(versions)) != len(versions):
        raise InvalidInput(f"two trust roots with the same version among {versions}")
    return ordered


def _hash(data: bytes | BinaryIO, size: int | None) -> tuple[str, bytes, int]:
    """(sha256 hex, RFC 6962 leaf hash, size) of a member, streaming a file and seeking it back."""
    sha, leaf = hashlib.sha256(), hashlib.sha256(LEAF_PREFIX)
    if isinstance(data, bytes | bytearray | memoryview):
        sha.update(data)
        leaf.update(data)
        return sha.hexdigest(), leaf.digest(), len(data)
    start = data.tell()
    total = 0
    while chunk := data.read(COPY_CHUNK):
        sha.update(chunk)
        leaf.update(chunk)
        total += len(chunk)
    data.seek(start)
    if size is not None and size != total:
        raise InvalidInput(f"a member file is {total} bytes, not the {size} given")
    return sha.hexdigest(), leaf.digest(), total


def _parquet_declared(data: bytes | BinaryIO) -> tuple[int, int]:
    """Rows and the sum of column chunk uncompressed sizes from a Parquet footer we wrote ourselves."""
    import pyarrow.parquet as pq  # only writers of table members pay for pyarrow

    source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    start = source.tell()
    if start != 0:
        raise InvalidInput("give rows and uncompressed_bytes for a Parquet member read from the middle of a file")
    try:
        metadata = pq.ParquetFile(source).metadata
    finally:
        source.seek(start)
    uncompressed = sum(metadata.row_group(g).column(c).total_uncompressed_size
                       for g in range(metadata.num_row_groups) for c in range(metadata.num_columns))
    return metadata.num_rows, uncompressed
