"""Real keys, real trust roots and real bundles for the bundle tests (no mocks): Ed25519 keys generated per
test module, TUF roots signed by them, Parquet tables written by pyarrow with zstd."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgap_orch.bundle import dsse, trust
from airgap_orch.bundle.anchor import sign_anchor
from airgap_orch.bundle.errors import BundleError
from airgap_orch.bundle.keys import KeyRole
from airgap_orch.bundle.manifest import (
    ANCHOR_MEMBER,
    ENVELOPE_MEMBER,
    PARQUET_MEDIA_TYPE,
    BundleHeader,
    Manifest,
    canonical_json,
)
from airgap_orch.bundle.tarfmt import write_tar
from airgap_orch.bundle.verify import VerifiedBundle, verify_bundle
from airgap_orch.bundle.writer import DataMember, write_bundle_bytes
from airgap_orch.errors import exit_code_for

CREATED = datetime(2030, 1, 1, 12, 0, 0)
NOW = CREATED + timedelta(hours=1)
EXPIRES = CREATED + timedelta(days=365)

JOBS_SCHEMA = pa.schema([("job_id", pa.string()), ("state", pa.string()), ("attempt", pa.int32()),
                         ("created_at", pa.timestamp("us"))])
QUOTAS_SCHEMA = pa.schema([("tenant", pa.string()), ("limit_value", pa.int64())])
TABLE_SCHEMAS = {"jobs": JOBS_SCHEMA, "quotas": QUOTAS_SCHEMA}


class Keys:
    """Named private keys, made on first use: r* root, ts timestamp, a*/b*/c* site keys, x* strangers."""

    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PrivateKey] = {}

    def __getitem__(self, name: str) -> Ed25519PrivateKey:
        return self._keys.setdefault(name, Ed25519PrivateKey.generate())

    def many(self, names: str) -> list[Ed25519PrivateKey]:
        return [self[name] for name in names.split()]

    def role(self, names: str, threshold: int = 1) -> KeyRole:
        return KeyRole.of([self[n].public_key() for n in names.split()], threshold)


def sign_root(data: bytes, keys: Keys, names: str, previous: trust.TrustedRoot | None = None) -> bytes:
    for name in names.split():
        data = trust.sign_root(data, keys[name], previous)
    return data


def root_v1(keys: Keys, *, sites: dict[str, KeyRole] | None = None, expires: datetime = EXPIRES) -> bytes:
    """Version 1: root r1 r2 (threshold 2), timestamp ts; site-a a1 a2 (threshold 1), site-b b1, site-c c1 c2
    (threshold 2)."""
    sites = sites if sites is not None else {"site-a": keys.role("a1 a2", 1), "site-b": keys.role("b1", 1),
                                             "site-c": keys.role("c1 c2", 2)}
    data = trust.build_root(root=keys.role("r1 r2", 2), targets=keys.role("r1"), timestamp=keys.role("ts"),
                            snapshot=keys.role("ts"), sites=sites, expires=expires)
    return sign_root(data, keys, "r1 r2")


def root_v2(keys: Keys, v1: bytes, *, signers: str = "r1 r2 r3 r4", **changes) -> bytes:  # type: ignore[no-untyped-def]
    """Version 2 rotated to root keys r3 r4 (threshold 2); site-a gains key a3."""
    current = trust.load_trusted_root(v1)
    changes.setdefault("sites", {**current.sites, "site-a": keys.role("a1 a2 a3", 1)})
    data = trust.rotate_root(current, root=keys.role("r3 r4", 2), expires=EXPIRES, **changes)
    return sign_root(data, keys, signers, previous=current)


def table(rows: int, *, start: int = 0) -> pa.Table:
    return pa.table({
        "job_id": pa.array([f"job-{i:08d}" for i in range(start, start + rows)], pa.string()),
        "state": pa.array([("queued", "running", "done")[i % 3] for i in range(rows)], pa.string()),
        "attempt": pa.array([i % 5 for i in range(rows)], pa.int32()),
        "created_at": pa.array([CREATED - timedelta(seconds=i) for i in range(rows)], pa.timestamp("us")),
    }, schema=JOBS_SCHEMA)


def parquet_bytes(data: pa.Table, **options) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    options.setdefault("compression", "zstd")
    pq.write_table(data, out, **options)
    return out.getvalue()


def header(**changes) -> BundleHeader:  # type: ignore[no-untyped-def]
    fields = dict(kind="full", source_site="site-a", target_site="site-b", sequence=1, base_sequence=None,
                  created_at=CREATED, tool_version="0.1.0")
    fields.update(changes)
    return BundleHeader(**fields)


def default_members() -> list[DataMember]:
    quotas = pa.table({"tenant": ["acme", "globex"], "limit_value": [10, 20]}, schema=QUOTAS_SCHEMA)
    return [DataMember("data/jobs.parquet", PARQUET_MEDIA_TYPE, parquet_bytes(table(300)), table="jobs"),
            DataMember("data/quotas.parquet", PARQUET_MEDIA_TYPE, parquet_bytes(quotas), table="quotas")]


def make_bundle(keys: Keys, *, roots: Sequence[bytes] = (), members: Sequence[DataMember] | None = None,
                signing: str = "a1", timestamp: str = "ts", **header_changes) -> bytes:  # type: ignore[no-untyped-def]
    return write_bundle_bytes(header(**header_changes), default_members() if members is None else members,
                              roots=roots, signing_keys=keys.many(signing), timestamp_keys=keys.many(timestamp))


def verify(data: bytes, pinned: bytes, **options) -> VerifiedBundle:  # type: ignore[no-untyped-def]
    options.setdefault("target_site", "site-b")
    options.setdefault("now", NOW)
    return verify_bundle(data, pinned_root=pinned, **options)


def refusal(data: bytes, pinned: bytes, **options) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """(reason code, exit code) of the error verifying `data` raises."""
    with pytest.raises(BundleError) as caught:
        verify(data, pinned, **options)
    return caught.value.reason_code, exit_code_for(caught.value)


def signed_manifest_bundle(keys: Keys, document: dict, members: Sequence[tuple[str, bytes]], *,
                           signing: str = "a1", roots: Sequence[tuple[str, bytes]] = (),
                           anchor: bytes | None = None, payload: bytes | None = None) -> bytes:
    """A bundle around an arbitrary manifest document, validly signed by site keys (and, unless `anchor` is
    given, an anchor signed by ts over that payload): what a broken or hostile exporter holding real keys
    could produce."""
    payload = canonical_json(document) if payload is None else payload
    envelope = dsse.Envelope(payload, dsse.MANIFEST_PAYLOAD_TYPE, ())
    for key in keys.many(signing):
        envelope = dsse.add_signature(envelope, key)
    if anchor is None:
        anchor = anchor_for(keys, payload, document)
    return write_tar([(ENVELOPE_MEMBER, envelope.to_json()), *roots, (ANCHOR_MEMBER, anchor), *members])


def anchor_for(keys: Keys, payload: bytes, document: dict, signer: str = "ts") -> bytes:
    """An anchor over a manifest payload that may not parse (built without `parse_manifest`)."""
    fake = Manifest(format_version=1, bundle_id=document.get("bundle_id", "0" * 64), kind="full", source_site="x",
                    target_site="y", sequence=1, base_sequence=None, created_at=CREATED, tool_version="0",
                    row_counts={}, members=(), merkle_root="0" * 64, payload=payload)
    return sign_anchor(fake, [keys[signer]])


def manifest_document(data: bytes) -> dict:
    """The manifest document inside a bundle written by `make_bundle` (read without verifying)."""
    from airgap_orch.bundle.tarfmt import read_index, read_member

    envelope = dsse.parse_canonical_envelope(read_member(data, read_index(data).members[0]))
    return json.loads(envelope.payload)


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    from airgap_orch.bundle.tarfmt import read_index, read_member

    return [(member.name, read_member(data, member)) for member in read_index(data).members]
