"""The bundle verification sequence end to end: a bundle the writer made verifies, and every bad input of
issue 15 at this layer is refused by the step that owns it, with its reason code and exit code."""

from __future__ import annotations

import copy
import io
import json
from datetime import timedelta

import pyarrow as pa
import pytest
from bundle_fixtures import (
    CREATED,
    NOW,
    TABLE_SCHEMAS,
    Keys,
    anchor_for,
    default_members,
    header,
    make_bundle,
    manifest_document,
    members_of,
    parquet_bytes,
    refusal,
    root_v1,
    root_v2,
    sign_root,
    signed_manifest_bundle,
    table,
    verify,
)

from airgap_orch.bundle import dsse, trust
from airgap_orch.bundle.anchor import StalenessPolicy, sign_anchor
from airgap_orch.bundle.errors import BundleError, BundleVerificationError, StalenessError
from airgap_orch.bundle.keys import key_from_tuf, trusted_key, tuf_keyid
from airgap_orch.bundle.limits import MAX_ENVELOPE_BYTES
from airgap_orch.bundle.manifest import ANCHOR_MEMBER, ENVELOPE_MEMBER, PARQUET_MEDIA_TYPE, bundle_id_of, parse_manifest
from airgap_orch.bundle.parquet_check import open_parquet
from airgap_orch.bundle.tarfmt import BLOCK, END_OF_ARCHIVE, _render, open_member, padding, read_index, write_tar
from airgap_orch.bundle.writer import DataMember, add_signature, write_bundle, write_bundle_bytes
from airgap_orch.errors import exit_code_for

STEPS = ["size", "structure", "trust-root", "signature", "manifest", "source-site", "members", "time-anchor",
         "staleness", "target"]


@pytest.fixture(scope="module")
def keys():
    return Keys()


@pytest.fixture(scope="module")
def v1(keys):
    return root_v1(keys)


@pytest.fixture(scope="module")
def v2(keys, v1):
    return root_v2(keys, v1)


@pytest.fixture(scope="module")
def bundle(keys, v2):
    """Carries the rotation to version 2; signed by site-a's a1."""
    return make_bundle(keys, roots=[v2])


# --- the good path ----------------------------------------------------------------------------------------

def test_a_written_bundle_verifies_through_every_step_in_order(keys, v1, v2, bundle):
    verified = verify(bundle, v1, table_schemas=TABLE_SCHEMAS)
    assert [c.name for c in verified.checks] == STEPS + ["tables"]
    assert all(c.ok for c in verified.checks)
    manifest = verified.manifest
    assert (manifest.source_site, manifest.target_site, manifest.kind, manifest.sequence) == ("site-a", "site-b",
                                                                                              "full", 1)
    assert verified.source_site == "site-a"
    assert verified.signers == (trusted_key(keys["a1"].public_key()).keyid,)
    assert verified.root.version == 2 and verified.new_roots == (v2,)
    assert verified.bundle_id == manifest.bundle_id == bundle_id_of(json.loads(manifest.payload))
    assert dict(manifest.row_counts) == {"jobs": 300, "quotas": 2}
    assert [m.path for m in verified.members] == ["trust/root-2.json", "data/jobs.parquet", "data/quotas.parquet"]
    assert verified.anchor.time == CREATED and verified.time.state == "fresh"
    assert verified.time.latest_anchor == CREATED
    assert verified.tables["data/jobs.parquet"].rows == 300


def test_verified_members_decode_to_the_exported_rows(keys, v1, bundle):
    verified = verify(bundle, v1)
    member = verified.member("data/jobs.parquet")
    checked = open_parquet(open_member(bundle, member.tar), expected_schema=TABLE_SCHEMAS["jobs"],
                           rows=member.entry.rows, uncompressed_bytes=member.entry.uncompressed_bytes)
    assert pa.Table.from_batches(list(checked.iter_batches(batch_rows=64))).equals(table(300))


def test_the_writer_is_deterministic_and_reads_files_like_bytes(keys, v2):
    first = make_bundle(keys, roots=[v2])
    assert make_bundle(keys, roots=[v2]) == first
    out = io.BytesIO()
    files = [DataMember(m.path, m.media_type, io.BytesIO(m.data), table=m.table) for m in default_members()]
    write_bundle(out, header(), files, roots=[v2], signing_keys=[keys["a1"]], timestamp_keys=[keys["ts"]])
    assert out.getvalue() == first


def test_a_file_object_verifies_like_bytes(keys, v1, bundle, tmp_path):
    path = tmp_path / "b.bundle"
    path.write_bytes(bundle)
    with path.open("rb") as handle:
        assert verify(handle, v1).bundle_id == verify(bundle, v1).bundle_id


def test_bundle_verify_without_a_target_site_skips_only_the_target_check(keys, v1, bundle):
    verified = verify(bundle, v1, target_site=None)
    assert verified.checks[-1].name == "target" and verified.checks[-1].ok
    assert "not checked" in verified.checks[-1].detail


def test_a_bundle_without_roots_verifies_against_the_current_pinned_root(keys, v1, v2):
    data = make_bundle(keys, signing="a3")  # a3 exists only in version 2
    assert verify(data, v2).root.version == 2
    assert verify(data, v2).new_roots == ()
    assert refusal(data, v1) == ("dsse:unknown-key", 4)


def test_carried_roots_the_target_already_holds_are_skipped(keys, v1, v2):
    data = make_bundle(keys, roots=[v1, v2], signing="a3")
    verified = verify(data, v2)
    assert verified.root.version == 2 and verified.new_roots == ()


# --- bundle sign ------------------------------------------------------------------------------------------

def test_add_signature_meets_a_threshold_of_two_without_changing_the_content(keys, v1):
    once = make_bundle(keys, signing="c1", source_site="site-c")
    assert refusal(once, v1) == ("dsse:threshold", 4)
    out = io.BytesIO()
    signed = add_signature(once, out, keys["c2"])
    twice = out.getvalue()
    verified = verify(twice, v1)
    assert len(verified.signers) == 2 and signed.manifest.bundle_id == verified.bundle_id
    assert verified.bundle_id == parse_manifest(dsse.parse_canonical_envelope(members_of(once)[0][1]).payload).bundle_id
    assert members_of(twice)[1:] == members_of(once)[1:]  # every member but the envelope, byte for byte
    again = io.BytesIO()
    add_signature(twice, again, keys["c2"])
    assert again.getvalue() == twice  # signing twice with one key changes nothing


# --- flipped bytes, truncation, members added or removed --------------------------------------------------

def _regions(data: bytes) -> list[tuple[str, range, int]]:
    """(what, offsets, stride): every header, padding and end-marker byte; member data sampled."""
    index = read_index(data)
    regions = []
    for member in index.members:
        regions.append(("header", range(member.header_offset, member.data_offset), 1))
        end = member.data_offset + member.size
        stride = {ENVELOPE_MEMBER: 3, ANCHOR_MEMBER: 3}.get(member.name, 11 if member.name.startswith("trust/") else 17)
        regions.append((member.name, range(member.data_offset, end), stride))
        regions.append(("padding", range(end, end + len(padding(member.size))), 1))
    regions.append(("end-marker", range(index.archive_size - len(END_OF_ARCHIVE), index.archive_size), 1))
    return regions


EXPECTED_FAMILIES = {
    "header": {"tar", "size"}, "padding": {"tar"}, "end-marker": {"tar"},
    ENVELOPE_MEMBER: {"dsse", "size"},
    "trust/root-2.json": {"schema", "rotation", "rollback"},
    ANCHOR_MEMBER: {"anchor"},
    "data/jobs.parquet": {"merkle"}, "data/quotas.parquet": {"merkle"},
}


def test_a_flipped_byte_anywhere_is_refused_by_the_step_that_owns_that_byte(keys, v1, bundle):
    seen: dict[str, set[str]] = {}
    for what, offsets, stride in _regions(bundle):
        picks = sorted(set(offsets[::stride]) | {offsets[0], offsets[-1]}) if len(offsets) else []
        for offset in picks:
            damaged = bytearray(bundle)
            damaged[offset] ^= 0x01 if offset % 2 else 0x40
            with pytest.raises(BundleVerificationError) as caught:
                verify(bytes(damaged), v1)
            assert caught.value.family in EXPECTED_FAMILIES[what], (what, offset, caught.value.reason_code)
            seen.setdefault(what, set()).add(caught.value.reason_code)
    assert seen["padding"] == {"tar:padding"}
    assert seen["data/jobs.parquet"] == {"merkle:hash-mismatch"}


def test_a_flipped_byte_in_a_carried_copy_of_the_pinned_root_is_caught_by_the_manifest_hash(keys, v1):
    data = make_bundle(keys, roots=[v1])
    member = read_index(data).member("trust/root-1.json")
    damaged = bytearray(data)
    # one hex digit of a signature: the signed content is unchanged, so the chain step skips this copy of the
    # version it already trusts; the manifest's hash still covers it
    offset = data.index(b'"sig": "', member.data_offset) + len(b'"sig": "') + 5
    damaged[offset] = ord("0") if damaged[offset] != ord("0") else ord("1")
    assert refusal(bytes(damaged), v1) == ("merkle:hash-mismatch", 4)


@pytest.mark.parametrize("cut", [0, 1, 511, 512, 700, 1024, 2048, -1025, -1024, -513, -512, -1])
def test_a_truncated_bundle_is_refused(keys, v1, bundle, cut):
    assert refusal(bundle[:cut], v1)[0].startswith("tar:")


def test_trailing_data_is_refused(keys, v1, bundle):
    assert refusal(bundle + b"\x00" * BLOCK, v1) == ("tar:trailing-data", 4)
    assert refusal(bundle + b"x", v1) == ("tar:trailing-data", 4)


def test_a_member_appended_or_inserted_is_refused(keys, v1, bundle):
    members = members_of(bundle)
    assert refusal(write_tar(members + [("data/extra.parquet", b"PAR1")]), v1) == ("merkle:unlisted-member", 4)
    assert refusal(write_tar(members[:3] + [("data/extra", b"x")] + members[3:]), v1) == ("merkle:unlisted-member", 4)
    assert refusal(write_tar(members + [("trust/root-9.json", b"{}")]), v1) == ("tar:member-order", 4)


def test_a_member_removed_or_reordered_is_refused(keys, v1, bundle):
    members = members_of(bundle)
    names = [name for name, _ in members]
    assert names == [ENVELOPE_MEMBER, "trust/root-2.json", ANCHOR_MEMBER, "data/jobs.parquet", "data/quotas.parquet"]
    assert refusal(write_tar(members[:-1]), v1) == ("merkle:missing-member", 4)
    assert refusal(write_tar(members[:1] + members[2:]), v1) == ("merkle:missing-member", 4)  # the root
    assert refusal(write_tar(members[:2] + members[3:]), v1) == ("tar:member-order", 4)  # the anchor
    assert refusal(write_tar(members[1:]), v1) == ("tar:member-order", 4)  # the envelope
    assert refusal(write_tar(members[:3] + members[3:][::-1]), v1) == ("merkle:member-order", 4)


def test_a_member_named_outside_the_bundle_is_refused(keys, v1, bundle):
    members = members_of(bundle)
    traversal = _render(b"../../etc/cron.d/x", 3) + b"abc" + padding(3)
    tar = write_tar(members)
    assert refusal(tar[:-len(END_OF_ARCHIVE)] + traversal + END_OF_ARCHIVE, v1) == ("tar:name", 4)
    absolute = _render(b"/etc/passwd", 0)
    assert refusal(tar[:-len(END_OF_ARCHIVE)] + absolute + END_OF_ARCHIVE, v1) == ("tar:name", 4)


def test_a_manifest_listing_a_traversing_path_is_refused_by_its_schema(keys, v1, bundle):
    document = manifest_document(bundle)
    document["members"][1]["path"] = "../jobs.parquet"
    document["bundle_id"] = bundle_id_of(document)
    data = signed_manifest_bundle(keys, document, members_of(bundle)[3:])
    assert refusal(data, v1) == ("schema:manifest", 4)


def test_a_root_member_named_for_another_version_is_refused(keys, v1, v2, bundle):
    members = members_of(bundle)
    renamed = [members[0], ("trust/root-3.json", members[1][1])] + members[2:]
    assert refusal(write_tar(renamed), v1) == ("rotation:root-name", 4)


# --- sizes ------------------------------------------------------------------------------------------------

def test_an_oversized_envelope_is_refused_before_it_is_read(keys, v1, bundle):
    members = members_of(bundle)
    huge = [(ENVELOPE_MEMBER, b" " * (MAX_ENVELOPE_BYTES + 1))] + members[1:]
    code, exit_code = refusal(write_tar(huge), v1)
    assert (code, exit_code) == ("size:envelope", 4)


def test_archive_size_cap_is_the_first_step(keys, v1, bundle):
    from airgap_orch.bundle.limits import TarLimits

    with pytest.raises(BundleError) as caught:
        verify(bundle, v1, limits=TarLimits(max_archive_bytes=len(bundle) - 1))
    assert caught.value.reason_code == "size:archive"
    assert [(c.name, c.ok) for c in caught.value.checks] == [("size", False)]


# --- signatures and sites ---------------------------------------------------------------------------------

def test_a_bundle_signed_by_a_key_no_site_holds_is_refused(keys, v1):
    assert refusal(make_bundle(keys, signing="x1"), v1) == ("dsse:unknown-key", 4)
    assert refusal(make_bundle(keys, signing="r1"), v1) == ("dsse:unknown-key", 4)  # a root key is no site key
    assert refusal(make_bundle(keys, signing="ts"), v1) == ("dsse:unknown-key", 4)


def test_a_key_of_site_a_cannot_sign_a_bundle_claiming_site_b(keys, v1):
    data = make_bundle(keys, signing="a1", source_site="site-b", target_site="site-c")
    assert refusal(data, v1, target_site="site-c") == ("dsse:site-mismatch", 4)


def test_keys_of_two_sites_cannot_sign_one_bundle(keys, v1):
    assert refusal(make_bundle(keys, signing="a1 b1"), v1) == ("dsse:mixed-sites", 4)


def test_a_duplicate_signature_is_refused(keys, v1, bundle):
    members = members_of(bundle)
    envelope = dsse.parse_canonical_envelope(members[0][1])
    doubled = dsse.Envelope(envelope.payload, envelope.payload_type, envelope.signatures * 2)
    assert refusal(write_tar([(ENVELOPE_MEMBER, doubled.to_json())] + members[1:]), v1) == (
        "dsse:duplicate-signature", 4)
    site_c = make_bundle(keys, signing="c1", source_site="site-c")
    members = members_of(site_c)
    envelope = dsse.parse_canonical_envelope(members[0][1])
    doubled = dsse.Envelope(envelope.payload, envelope.payload_type, envelope.signatures * 2)
    assert refusal(write_tar([(ENVELOPE_MEMBER, doubled.to_json())] + members[1:]), v1) == ("dsse:threshold", 4)


def test_one_key_under_two_keyids_counts_once(keys):
    a1 = trusted_key(keys["a1"].public_key())
    upper = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": a1.public_hex.upper()}}
    twin = key_from_tuf(tuf_keyid(upper), upper)

    def with_twin(threshold):
        document = json.loads(trust.build_root(
            root=keys.role("r1 r2", 2), targets=keys.role("r1"), timestamp=keys.role("ts"),
            snapshot=keys.role("ts"), sites={"site-a": keys.role("a1"), "site-b": keys.role("b1")},
            expires=CREATED.replace(year=2031)))
        sites = document["signed"][trust.SITES_FIELD]
        sites["keys"][twin.keyid] = upper
        role = next(r for r in sites["roles"] if r["name"] == "site-a")
        role["keyids"].append(twin.keyid)
        role["threshold"] = threshold
        return json.dumps(document).encode()

    # threshold 2 over one key listed twice: the root itself is refused (it can never be met honestly)
    with pytest.raises(BundleError) as caught:
        trust.load_trusted_root(with_twin(2))
    assert caught.value.reason_code == "schema:root"
    # threshold 1: the same key signing under both keyids is one key signing twice
    pinned = sign_root(with_twin(1), keys, "r1 r2")
    data = make_bundle(keys, signing="a1")
    members = members_of(data)
    envelope = dsse.parse_canonical_envelope(members[0][1])
    sig = envelope.signatures[0]
    both = dsse.Envelope(envelope.payload, envelope.payload_type, (sig, dsse.Signature(twin.keyid, sig.sig)))
    assert refusal(write_tar([(ENVELOPE_MEMBER, both.to_json())] + members[1:]), pinned) == (
        "dsse:duplicate-signature", 4)


# --- trust root chain -------------------------------------------------------------------------------------

def test_an_expired_root_is_refused_by_policy(keys):
    expired = root_v1(keys, expires=NOW.replace(hour=0))
    data = make_bundle(keys)
    with pytest.raises(BundleError) as caught:
        verify(data, expired)
    assert (caught.value.reason_code, exit_code_for(caught.value)) == ("expiry:root", 5)
    assert [c.name for c in caught.value.checks] == ["size", "structure", "trust-root"]


def test_a_clock_set_back_does_not_revive_an_expired_root(keys):
    pinned = root_v1(keys, expires=NOW.replace(year=2030, month=6))
    data = make_bundle(keys)
    verify(data, pinned)
    assert refusal(data, pinned, latest_anchor=NOW.replace(month=7)) == ("expiry:root", 5)


def test_a_rotation_signed_only_by_the_new_keys_is_refused(keys, v1):
    rogue = root_v2(keys, v1, signers="r3 r4")
    assert refusal(make_bundle(keys, roots=[rogue], signing="a3"), v1) == ("rotation:threshold-trusted", 4)


def test_a_root_that_only_travels_in_the_bundle_is_never_trusted(keys, v1):
    stranger = Keys()
    their_v1 = root_v1(stranger)
    their_v2 = root_v2(stranger, their_v1)
    data = make_bundle(stranger, roots=[their_v1, their_v2])
    assert refusal(data, v1) == ("rotation:fork", 4)
    data = make_bundle(stranger, roots=[their_v2])
    assert refusal(data, v1) == ("rotation:threshold-trusted", 4)


def test_a_rotation_that_adds_a_site_key_lets_that_key_sign(keys, v1, v2):
    data = make_bundle(keys, roots=[v2], signing="a3")
    verified = verify(data, v1)
    assert verified.root.version == 2 and verified.signers == (trusted_key(keys["a3"].public_key()).keyid,)


# --- manifest ---------------------------------------------------------------------------------------------

def test_a_validly_signed_manifest_that_fails_its_schema_is_refused(keys, v1, bundle):
    document = manifest_document(bundle)
    document["kind"] = "partial"
    document["bundle_id"] = bundle_id_of(document)
    data = signed_manifest_bundle(keys, document, members_of(bundle)[3:], roots=[members_of(bundle)[1]])
    code, exit_code = refusal(data, v1)
    assert (code, exit_code) == ("schema:manifest", 4)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.update(bundle_id="0" * 64), "schema:bundle-id"),
    (lambda d: d.update(format_version=2), "schema:format-version"),
    (lambda d: d["row_counts"].update(jobs=301), "schema:manifest-rules"),
    (lambda d: d.update(kind="incremental", base_sequence=1), "schema:manifest-rules"),
    (lambda d: d.update(extra=1), "schema:manifest"),
    (lambda d: d["members"][1].pop("rows"), "schema:manifest"),
])
def test_manifest_rules_beyond_the_signature(keys, v1, bundle, change, reason):
    document = manifest_document(bundle)
    change(document)
    if reason != "schema:bundle-id":
        document["bundle_id"] = bundle_id_of(document)
    data = signed_manifest_bundle(keys, document, members_of(bundle)[3:], roots=[members_of(bundle)[1]])
    assert refusal(data, v1) == (reason, 4)


def test_a_manifest_in_non_canonical_form_is_refused(keys, v1, bundle):
    document = manifest_document(bundle)
    payload = json.dumps(document, sort_keys=True, indent=1).encode()
    data = signed_manifest_bundle(keys, document, members_of(bundle)[3:], roots=[members_of(bundle)[1]],
                                  payload=payload)
    assert refusal(data, v1) == ("schema:manifest-not-canonical", 4)


def test_a_manifest_whose_merkle_root_is_wrong_is_refused(keys, v1, bundle):
    document = manifest_document(bundle)
    document["merkle_root"] = "ab" * 32
    document["bundle_id"] = bundle_id_of(document)
    data = signed_manifest_bundle(keys, document, members_of(bundle)[3:], roots=[members_of(bundle)[1]])
    assert refusal(data, v1) == ("merkle:root-mismatch", 4)


# --- time anchor and staleness ----------------------------------------------------------------------------

def test_an_anchor_moved_from_another_bundle_is_refused(keys, v1):
    first = members_of(make_bundle(keys, sequence=1))
    second = members_of(make_bundle(keys, sequence=2))
    swapped = second[:1] + [first[1]] + second[2:]
    assert refusal(write_tar(swapped), v1) == ("anchor:wrong-bundle", 4)


def test_an_anchor_must_be_signed_by_the_timestamp_role(keys, v1):
    assert refusal(make_bundle(keys, timestamp="a1"), v1) == ("anchor:unknown-key", 4)
    assert refusal(make_bundle(keys, timestamp="r1"), v1) == ("anchor:unknown-key", 4)


def test_an_anchor_must_carry_the_creation_time(keys, v1, bundle):
    members = members_of(bundle)
    manifest = parse_manifest(dsse.parse_canonical_envelope(members[0][1]).payload)
    lying = copy.copy(manifest)
    object.__setattr__(lying, "created_at", CREATED.replace(hour=13))
    anchor = sign_anchor(lying, [keys["ts"]])
    assert refusal(write_tar(members[:2] + [(ANCHOR_MEMBER, anchor)] + members[3:]), v1) == ("anchor:time-mismatch", 4)


def test_a_manifest_envelope_cannot_stand_in_for_the_anchor(keys, v1, bundle):
    members = members_of(bundle)
    assert refusal(write_tar(members[:2] + [(ANCHOR_MEMBER, members[0][1])] + members[3:]), v1)[0] == (
        "anchor:payload-type")


def test_a_stale_bundle_is_refused_in_strict_mode_and_accepted_with_a_warning_in_warn_mode(keys, v1, bundle):
    later = CREATED.replace(day=9, hour=12, second=1)  # 8 days and 1 second
    with pytest.raises(StalenessError) as caught:
        verify(bundle, v1, now=later)
    assert (caught.value.reason_code, exit_code_for(caught.value)) == ("staleness:stale", 5)
    assert caught.value.verdict.age.days == 8 and caught.value.checks[-1].name == "staleness"
    verified = verify(bundle, v1, now=later, staleness=StalenessPolicy(mode="warn"))
    assert verified.time.state == "stale" and verified.time.warning


def test_a_bundle_from_the_future_is_refused_unless_forced(keys, v1, bundle):
    early = CREATED - timedelta(minutes=6)
    assert refusal(bundle, v1, now=early) == ("staleness:future", 5)
    forced = verify(bundle, v1, now=early, staleness=StalenessPolicy(allow_future_anchor=True))
    assert forced.time.state == "future" and forced.time.latest_anchor == CREATED


# --- target -----------------------------------------------------------------------------------------------

def test_a_bundle_for_another_target_is_refused_by_policy(keys, v1, bundle):
    with pytest.raises(BundleError) as caught:
        verify(bundle, v1, target_site="site-c")
    assert (caught.value.reason_code, exit_code_for(caught.value)) == ("target:wrong-site", 5)
    assert [c.name for c in caught.value.checks] == STEPS
    assert [c.ok for c in caught.value.checks] == [True] * (len(STEPS) - 1) + [False]


# --- table members ----------------------------------------------------------------------------------------

def test_a_table_bomb_in_a_validly_signed_bundle_verifies_but_is_refused_before_it_expands(keys, v1):
    """Signed with a test-only site key, so the bomb passes every signature, hash and footer check and reaches
    the decoder: one 64 KiB string repeated 20,000 times, dictionary-encoded (1.3 GB expanded, ~100 KB on
    disk, an honest footer). The first batch is refused from its dictionary's value lengths, unexpanded."""
    from airgap_orch.bundle.errors import SizeLimitError
    from airgap_orch.bundle.limits import ParquetLimits

    tenants = pa.DictionaryArray.from_arrays(pa.array([0] * 20_000, pa.int32()), pa.array(["x" * 65536]))
    big = pa.table({"tenant": tenants, "limit_value": pa.array(range(20_000), pa.int64())})
    bomb = parquet_bytes(big, row_group_size=20_000, store_schema=False)
    assert len(bomb) < 200_000
    data = make_bundle(keys, members=[DataMember("data/quotas.parquet", PARQUET_MEDIA_TYPE, bomb, table="quotas")])
    verified = verify(data, v1, table_schemas=TABLE_SCHEMAS)  # authentic, and its footer is honest
    member = verified.member("data/quotas.parquet")
    checked = open_parquet(open_member(data, member.tar), expected_schema=TABLE_SCHEMAS["quotas"],
                           rows=member.entry.rows, uncompressed_bytes=member.entry.uncompressed_bytes,
                           limits=ParquetLimits(max_decoded_batch_bytes=64 * 1024 * 1024))
    with pytest.raises(SizeLimitError) as caught:
        next(checked.iter_batches())
    assert caught.value.reason_code == "size:decoded-batch"
    assert "8192 rows would expand to 536" in str(caught.value)  # 8192 x 64 KiB, computed, not allocated


def test_a_table_member_for_a_table_this_site_does_not_import_is_refused(keys, v1, bundle):
    assert refusal(bundle, v1, table_schemas={"jobs": TABLE_SCHEMAS["jobs"]}) == ("payload:unknown-table", 4)


def test_a_bundle_with_no_data_members_verifies(keys, v1):
    data = write_bundle_bytes(header(), [], signing_keys=[keys["a1"]], timestamp_keys=[keys["ts"]])
    verified = verify(data, v1)
    assert verified.members == () and verified.manifest.merkle_root == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_anchor_fixture_helper_signs_with_the_timestamp_key(keys, v1, bundle):
    # the helper other tests use to forge bundles around arbitrary manifests makes valid anchors
    members = members_of(bundle)
    payload = dsse.parse_canonical_envelope(members[0][1]).payload
    anchor = anchor_for(keys, payload, json.loads(payload))
    assert anchor == members[2][1]
