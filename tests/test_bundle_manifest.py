"""The manifest: its schema is the contract (valid draft 7, accepts what the writer writes), one canonical
spelling, a content-derived bundle id, and the rules the schema cannot say."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest
from jsonschema import Draft7Validator

from airgap_orch import schemas
from airgap_orch.bundle.errors import BundleError, SchemaError
from airgap_orch.bundle.manifest import (
    PARQUET_MEDIA_TYPE,
    ROOT_MEDIA_TYPE,
    BundleHeader,
    ManifestMember,
    build_manifest,
    bundle_id_of,
    canonical_json,
    parse_manifest,
)

HEADER = BundleHeader("incremental", "site-a", "site-b", 7, 5, datetime(2030, 1, 1, 12, 0, 0, 123456), "0.1.0")
MEMBERS = [
    ManifestMember("trust/root-2.json", 4000, "1" * 64, ROOT_MEDIA_TYPE),
    ManifestMember("trust/root-3.json", 4100, "2" * 64, ROOT_MEDIA_TYPE),
    ManifestMember("data/jobs-0.parquet", 900, "3" * 64, PARQUET_MEDIA_TYPE, "jobs", 10, 5000),
    ManifestMember("data/jobs-1.parquet", 800, "4" * 64, PARQUET_MEDIA_TYPE, "jobs", 5, 2500),
    ManifestMember("data/quotas.parquet", 300, "5" * 64, PARQUET_MEDIA_TYPE, "quotas", 0, 100),
]


def manifest():
    return build_manifest(HEADER, MEMBERS, "f" * 64)


def reparse(change) -> str:  # type: ignore[no-untyped-def]
    document = json.loads(manifest().payload)
    change(document)
    document["bundle_id"] = bundle_id_of(document)
    with pytest.raises(BundleError) as caught:
        parse_manifest(canonical_json(document))
    return caught.value.reason_code


def test_the_schema_is_valid_draft_7_and_accepts_what_the_writer_writes():
    schema = schemas.load("bundle-manifest")
    Draft7Validator.check_schema(schema)
    Draft7Validator(schema).validate(json.loads(manifest().payload))
    Draft7Validator.check_schema(schemas.load("time-anchor"))


def test_a_built_manifest_parses_back_to_itself():
    built = manifest()
    parsed = parse_manifest(built.payload)
    assert parsed == built
    assert dict(parsed.row_counts) == {"jobs": 15, "quotas": 0}
    assert parsed.created_at == HEADER.created_at
    assert [m.root_version for m in parsed.trust_roots] == [2, 3]
    assert parsed.archive_order == ("envelope.dsse.json", "trust/root-2.json", "trust/root-3.json",
                                    "time-anchor.json", "data/jobs-0.parquet", "data/jobs-1.parquet",
                                    "data/quotas.parquet")


def test_the_bundle_id_is_the_digest_of_the_content_without_the_id():
    built = manifest()
    document = json.loads(built.payload)
    del document["bundle_id"]
    import hashlib

    assert built.bundle_id == hashlib.sha256(canonical_json(document)).hexdigest()
    assert build_manifest(replace(HEADER, sequence=8), MEMBERS, "f" * 64).bundle_id != built.bundle_id
    assert build_manifest(HEADER, MEMBERS, "f" * 64).payload == built.payload  # deterministic


def test_only_the_canonical_spelling_is_accepted():
    document = json.loads(manifest().payload)
    for spelling in (json.dumps(document).encode(), json.dumps(document, sort_keys=True, indent=1).encode(),
                     canonical_json(document) + b"\n"):
        with pytest.raises(SchemaError) as caught:
            parse_manifest(spelling)
        assert caught.value.reason_code == "schema:manifest-not-canonical"


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["members"].append(d["members"][2]), "schema:manifest-rules"),  # a path twice
    (lambda d: d["members"].append(d["members"].pop(0)), "schema:manifest-rules"),  # a root after data
    (lambda d: d["members"].insert(0, d["members"].pop(1)), "schema:manifest-rules"),  # roots out of order
    (lambda d: d.update(base_sequence=7), "schema:manifest-rules"),
    (lambda d: d.update(base_sequence=None), "schema:manifest"),  # incremental needs a base
    (lambda d: d.update(kind="full"), "schema:manifest"),  # full must not have one
    (lambda d: d["row_counts"].update(audit=0), "schema:manifest-rules"),
    (lambda d: d["members"][2].update(media_type=ROOT_MEDIA_TYPE), "schema:manifest"),
    (lambda d: d["members"][0].update(path="trust/root-02.json"), "schema:manifest"),
    (lambda d: d["members"][2].update(path="trust/jobs.parquet"), "schema:manifest"),
    (lambda d: d["members"][2].update(path="time-anchor.json"), "schema:manifest"),
    (lambda d: d["members"][2].update(path="data/../x"), "schema:manifest"),
    (lambda d: d["members"][0].update(rows=1), "schema:manifest"),
    (lambda d: d["members"][2].update(media_type="application/zstd"), "schema:manifest"),
    (lambda d: d.update(created_at="2030-02-30T00:00:00.000000Z"), "schema:manifest"),
    (lambda d: d.update(created_at="2030-01-01T12:00:00Z"), "schema:manifest"),
    (lambda d: d.update(source_site="../a"), "schema:manifest"),
    (lambda d: d.update(sequence=0), "schema:manifest"),
    (lambda d: d.update(format_version=2), "schema:format-version"),
    (lambda d: d["members"][2].update(size=1.5), "schema:manifest"),
])
def test_manifest_rules(change, reason):
    assert reparse(change) == reason


def test_a_wrong_bundle_id_is_refused():
    document = json.loads(manifest().payload)
    document["bundle_id"] = "0" * 64
    with pytest.raises(SchemaError) as caught:
        parse_manifest(canonical_json(document))
    assert caught.value.reason_code == "schema:bundle-id"


@pytest.mark.parametrize("payload", [b"", b"[]", b"\xff", b'{"a":1,"a":2}', b'{"sequence": NaN}'])
def test_a_payload_that_is_not_a_json_object_is_refused(payload):
    with pytest.raises(SchemaError) as caught:
        parse_manifest(payload)
    assert caught.value.reason_code == "schema:manifest"


def test_the_builder_refuses_what_the_reader_would_refuse():
    with pytest.raises(ValueError, match="would be refused"):
        build_manifest(replace(HEADER, kind="full"), MEMBERS, "f" * 64)
    with pytest.raises(ValueError, match="would be refused"):
        build_manifest(HEADER, MEMBERS[2:] + MEMBERS[:2], "f" * 64)
