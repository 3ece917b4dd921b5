"""The bundle manifest: the signed payload of `envelope.dsse.json` (schemas/bundle-manifest.schema.json).

It lists every archive member except the envelope (which carries it) and the time anchor (which is signed
after it and binds it): the trust roots the bundle carries, then the data members, each with path, size,
sha256 and media type, and for a Parquet member its table, declared row count and declared uncompressed
size (what its footer must say). `merkle_root` is the RFC 6962 tree hash over those members' raw bytes in
manifest order; `row_counts` sums the table members' rows per table.

Canonical form: JSON with keys sorted, no whitespace, ASCII only, no trailing newline (`canonical_json`);
every value is a string, an integer or null. A manifest is accepted only if its bytes equal the canonical
serialization of what was parsed, so one manifest has one spelling.

Bundle id: the SHA-256 (hex) of the canonical manifest WITHOUT the `bundle_id` field. It names the content
(what was exported, from and to whom, when): adding a signature (`bundle sign`) changes neither, and the
same content always gets the same id. `Manifest.payload_sha256` (SHA-256 of the whole signed payload) is what
the time anchor binds; both are functions of the manifest alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .. import schemas
from ._json import StrictJSONError, loads_strict
from .errors import SchemaError, SizeLimitError
from .limits import MAX_BUNDLE_UNCOMPRESSED_BYTES, MAX_MEMBERS

FORMAT_VERSION = 1
MANIFEST_SCHEMA = "bundle-manifest"
ENVELOPE_MEMBER = "envelope.dsse.json"
ANCHOR_MEMBER = "time-anchor.json"
ROOT_MEDIA_TYPE = "application/vnd.airgap-orch.tuf-root+json"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
KINDS = ("full", "incremental")
ROOT_MEMBER = re.compile(r"trust/root-([1-9][0-9]{0,8})\.json")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def canonical_json(document: Any) -> bytes:
    """Keys sorted, no whitespace, ASCII only: the one spelling of a signed document."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def format_time(moment: datetime) -> str:
    """UTC as YYYY-MM-DDTHH:MM:SS.ffffffZ (naive datetimes are UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The naive UTC datetime of a `format_time` string; ValueError otherwise."""
    moment = datetime.strptime(text, _TIME_FORMAT)
    if format_time(moment) != text:
        raise ValueError(f"{text!r} is not in canonical form")
    return moment


def root_member_path(version: int) -> str:
    return f"trust/root-{version}.json"


@dataclass(frozen=True)
class ManifestMember:
    """One listed member. `table`, `rows` and `uncompressed_bytes` are set exactly for Parquet members."""

    path: str
    size: int
    sha256: str
    media_type: str
    table: str | None = None
    rows: int | None = None
    uncompressed_bytes: int | None = None

    @property
    def is_trust_root(self) -> bool:
        return self.media_type == ROOT_MEDIA_TYPE

    @property
    def is_table(self) -> bool:
        return self.media_type == PARQUET_MEDIA_TYPE

    @property
    def root_version(self) -> int | None:
        match = ROOT_MEMBER.fullmatch(self.path) if self.is_trust_root else None
        return int(match.group(1)) if match else None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256,
                                    "media_type": self.media_type}
        if self.is_table:
            document.update(table=self.table, rows=self.rows, uncompressed_bytes=self.uncompressed_bytes)
        return document


@dataclass(frozen=True)
class BundleHeader:
    """What the exporter decides about a bundle; the rest of the manifest follows from its members."""

    kind: str  # "full" | "incremental"
    source_site: str
    target_site: str
    sequence: int
    base_sequence: int | None  # None exactly for a full bundle
    created_at: datetime  # naive UTC; microseconds are kept
    tool_version: str
    tenant: str | None = None  # a --tenant bundle's tenant (the manifest has the field only then)


@dataclass(frozen=True)
class Manifest:
    """A manifest that matched its schema and rules. `payload` is its canonical serialization."""

    format_version: int
    bundle_id: str
    kind: str
    source_site: str
    target_site: str
    sequence: int
    base_sequence: int | None
    created_at: datetime
    tool_version: str
    row_counts: Mapping[str, int]  # read-only
    members: tuple[ManifestMember, ...]
    merkle_root: str
    payload: bytes = field(repr=False)
    # The tenant a `--tenant` bundle covers (None: every tenant); its history and audit_log members carry the other
    # tenants' entries as hashes only.
    tenant: str | None = None

    @property
    def payload_sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    @property
    def trust_roots(self) -> tuple[ManifestMember, ...]:
        return tuple(member for member in self.members if member.is_trust_root)

    @property
    def data_members(self) -> tuple[ManifestMember, ...]:
        return tuple(member for member in self.members if not member.is_trust_root)

    @property
    def table_members(self) -> tuple[ManifestMember, ...]:
        return tuple(member for member in self.members if member.is_table)

    @property
    def archive_order(self) -> tuple[str, ...]:
        """Member names as the archive must hold them: envelope, trust roots, time anchor, data members."""
        return (ENVELOPE_MEMBER, *(m.path for m in self.trust_roots), ANCHOR_MEMBER,
                *(m.path for m in self.data_members))

    def member(self, path: str) -> ManifestMember:
        for member in self.members:
            if member.path == path:
                return member
        raise KeyError(path)


def build_manifest(header: BundleHeader, members: Sequence[ManifestMember], merkle_root: str) -> Manifest:
    """The manifest of `members` (trust roots first, then data members, in archive order) with the id and
    row counts computed; ValueError for anything `parse_manifest` would refuse, so a writer never makes a
    manifest the reader refuses."""
    row_counts: dict[str, int] = {}
    for member in members:
        if member.is_table and member.table is not None and member.rows is not None:
            row_counts[member.table] = row_counts.get(member.table, 0) + member.rows
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": header.kind,
        "source_site": header.source_site,
        "target_site": header.target_site,
        "sequence": header.sequence,
        "base_sequence": header.base_sequence,
        "created_at": format_time(header.created_at),
        "tool_version": header.tool_version,
        "row_counts": row_counts,
        "members": [member.to_document() for member in members],
        "merkle_root": merkle_root,
    }
    if header.tenant is not None:  # only then: every other bundle's manifest is as before
        document["tenant"] = header.tenant
    document["bundle_id"] = bundle_id_of(document)
    try:
        return parse_manifest(canonical_json(document))
    except (SchemaError, SizeLimitError) as exc:
        raise ValueError(f"the manifest would be refused: {exc}") from None


def bundle_id_of(document: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical manifest without its bundle_id field."""
    return hashlib.sha256(canonical_json({k: v for k, v in document.items() if k != "bundle_id"})).hexdigest()


def parse_manifest(payload: bytes) -> Manifest:
    """Parse and check a manifest payload (already verified as signed); SchemaError schema:manifest,
    schema:format-version, schema:manifest-rules, schema:bundle-id, schema:manifest-not-canonical, or
    SizeLimitError size:members / size:uncompressed."""
    try:
        document = loads_strict(payload)
    except StrictJSONError as exc:
        raise SchemaError("manifest", f"the manifest is not valid: {exc}") from None
    if not isinstance(document, dict):
        raise SchemaError("manifest", "the manifest is not a JSON object")
    version = document.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != FORMAT_VERSION:
        raise SchemaError("format-version", f"the bundle has format version {version}; this tool reads version "
                          f"{FORMAT_VERSION} (use the airgap-orch release that wrote it, or a newer one)")
    members = document.get("members")
    if isinstance(members, list) and len(members) > MAX_MEMBERS:
        raise SizeLimitError("members", f"the manifest lists {len(members)} members; the cap is {MAX_MEMBERS}")
    message = schemas.problem(MANIFEST_SCHEMA, document, "manifest")
    if message is not None:
        raise SchemaError("manifest", message)
    manifest = Manifest(
        format_version=document["format_version"],
        bundle_id=document["bundle_id"],
        kind=document["kind"],
        source_site=document["source_site"],
        target_site=document["target_site"],
        sequence=document["sequence"],
        base_sequence=document["base_sequence"],
        created_at=_created_at(document["created_at"]),
        tool_version=document["tool_version"],
        row_counts=MappingProxyType(dict(document["row_counts"])),
        members=tuple(ManifestMember(
            path=m["path"], size=m["size"], sha256=m["sha256"], media_type=m["media_type"],
            table=m.get("table"), rows=m.get("rows"), uncompressed_bytes=m.get("uncompressed_bytes"),
        ) for m in document["members"]),
        merkle_root=document["merkle_root"],
        payload=bytes(payload),
        tenant=document.get("tenant"),
    )
    _check_rules(manifest)
    if bundle_id_of(document) != manifest.bundle_id:
        raise SchemaError("bundle-id", f"the manifest's bundle_id {manifest.bundle_id[:16]}... is not the SHA-256 "
                          "of its content; the exporter that wrote it is broken")
    if canonical_json(document) != payload:
        raise SchemaError("manifest-not-canonical", "the manifest is not in canonical form (key order, whitespace "
                          "or escapes differ)")
    return manifest


def _created_at(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise SchemaError("manifest", f"manifest.created_at {text[:40]!r} is not a valid UTC time") from None


def _check_rules(manifest: Manifest) -> None:
    """What the schema cannot say."""
    def refuse(message: str) -> SchemaError:
        return SchemaError("manifest-rules", message)

    paths = [member.path for member in manifest.members]
    duplicate = next((path for position, path in enumerate(paths) if path in paths[:position]), None)
    if duplicate is not None:
        raise refuse(f"the manifest lists member {duplicate!r} twice")
    versions = [member.root_version or 0 for member in manifest.trust_roots]
    if manifest.members[:len(versions)] != manifest.trust_roots:
        raise refuse("the manifest must list its trust roots before every data member")
    if any(later <= earlier for earlier, later in zip(versions, versions[1:], strict=False)):
        raise refuse(f"the manifest's trust roots must have increasing versions, not {versions[:10]}")
    if manifest.base_sequence is not None and manifest.base_sequence >= manifest.sequence:
        raise refuse(f"an incremental bundle's base_sequence ({manifest.base_sequence}) must be below its "
                     f"sequence ({manifest.sequence})")
    sums: dict[str, int] = {}
    for member in manifest.table_members:
        assert member.table is not None and member.rows is not None
        sums[member.table] = sums.get(member.table, 0) + member.rows
    if sums != dict(manifest.row_counts):
        raise refuse(f"the manifest's row_counts {dict(sorted(manifest.row_counts.items())[:8])} are not the sums "
                     f"of its table members' rows {dict(sorted(sums.items())[:8])}")
    declared = sum(member.uncompressed_bytes or 0 for member in manifest.table_members)
    if declared > MAX_BUNDLE_UNCOMPRESSED_BYTES:
        raise SizeLimitError("uncompressed", f"the manifest declares {declared} uncompressed bytes of tables; the cap "
                             f"is {MAX_BUNDLE_UNCOMPRESSED_BYTES}")
