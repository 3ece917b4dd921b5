"""The trust root: python-tuf loads and verifies what we write, rotation follows TUF 5.3 with distinct-key
thresholds of the old and the new root, expiry against a reference time, and keys bound to sites."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Signature, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Delegations, Metadata, Role, Root, Targets
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType

from airgap_orch.auth.keys import generate_key_pair, load_private_key, load_public_key
from airgap_orch.bundle import dsse, trust
from airgap_orch.bundle.errors import BundleError
from airgap_orch.bundle.keys import KeyRole, trusted_key, tuf_keyid
from airgap_orch.bundle.limits import MAX_ROOT_BYTES, MAX_ROOTS_PER_BUNDLE
from airgap_orch.errors import InvalidInput, exit_code_for

NOW = datetime(2030, 1, 1, 12, 0, 0)
LATER = NOW + timedelta(days=365)


class Keys:
    """Named private keys: r* root, t targets, ts timestamp, a*/b site keys."""

    def __init__(self):
        self._keys: dict[str, Ed25519PrivateKey] = {}

    def __getitem__(self, name: str) -> Ed25519PrivateKey:
        return self._keys.setdefault(name, Ed25519PrivateKey.generate())

    def role(self, names: str, threshold: int) -> KeyRole:
        return KeyRole.of([self[n].public_key() for n in names.split()], threshold)


@pytest.fixture(scope="module")
def keys():
    return Keys()


def build(keys, *, root="r1 r2 r3", threshold=2, version=1, expires=LATER, sites=None):
    return trust.build_root(
        root=keys.role(root, threshold), targets=keys.role("t", 1), timestamp=keys.role("ts", 1),
        snapshot=keys.role("ts", 1), expires=expires, version=version,
        sites=sites if sites is not None else {"site-a": keys.role("a1 a2", 2), "site-b": keys.role("b", 1)})


def sign(data, keys, names, previous=None):
    for name in names.split():
        data = trust.sign_root(data, keys[name], previous)
    return data


def v1(keys, **kwargs):
    return sign(build(keys, **kwargs), keys, "r1 r2")


def rotated(keys, current, root="r3 r4", signers="r1 r2 r3 r4", **kwargs):
    data = trust.rotate_root(current, root=keys.role(root, 2), expires=kwargs.pop("expires", LATER), **kwargs)
    return sign(data, keys, signers, previous=current)


def reason(call, *args):
    with pytest.raises(BundleError) as caught:
        call(*args)
    return caught.value.reason_code, exit_code_for(caught.value)


def edit(data: bytes, change) -> bytes:
    """A root with `change(document)` applied and the signatures kept (they no longer match if signed changed)."""
    document = json.loads(data)
    change(document)
    return json.dumps(document).encode()


# --- python-tuf interop -----------------------------------------------------------------------------------

def test_a_root_written_here_loads_and_verifies_in_plain_python_tuf(keys):
    data = v1(keys)
    metadata = Metadata.from_bytes(data)
    assert isinstance(metadata.signed, Root) and metadata.signed.version == 1
    metadata.verify_delegate("root", metadata)
    metadata.signed.verify_delegate("root", metadata.signed_bytes, metadata.signatures)
    assert set(metadata.signed.roles) == {"root", "targets", "timestamp", "snapshot"}
    assert metadata.signed.roles["root"].threshold == 2
    assert metadata.signed.keys[trusted_key(keys["r1"].public_key()).keyid] == SSlibKey.from_crypto(
        keys["r1"].public_key())
    TrustedMetadataSet(data, EnvelopeType.METADATA)  # python-tuf's own client accepts it as trusted root
    assert trust.load_trusted_root(data).version == 1


def test_a_rotation_written_here_is_accepted_by_python_tufs_client_workflow(keys):
    first = trust.load_trusted_root(v1(keys))
    second = rotated(keys, first)
    client = TrustedMetadataSet(first.data, EnvelopeType.METADATA)
    assert client.update_root(second).version == 2
    assert trust.verify_root_chain(first, [second], NOW).version == 2


def test_site_bindings_are_tuf_delegations_python_tuf_verifies_a_site_signature_with(keys):
    data = v1(keys)
    raw = Metadata.from_bytes(data).signed.unrecognized_fields[trust.SITES_FIELD]
    delegator = Targets(delegations=Delegations.from_dict(copy.deepcopy(raw)))
    message = dsse.pae(dsse.MANIFEST_PAYLOAD_TYPE, b'{"source_site":"site-b"}')
    b_keyid = trusted_key(keys["b"].public_key()).keyid
    signatures = {b_keyid: Signature(b_keyid, keys["b"].sign(message).hex())}
    delegator.verify_delegate("site-b", message, signatures)
    with pytest.raises(UnsignedMetadataError):
        delegator.verify_delegate("site-a", message, signatures)
    assert delegator.delegations.roles["site-a"].is_delegated_path("site-a/bundle-1")
    assert not delegator.delegations.roles["site-a"].is_delegated_path("site-b/bundle-1")


# --- the pinned root --------------------------------------------------------------------------------------

def test_the_trusted_root_exposes_roles_sites_and_expiry(keys):
    root = trust.load_trusted_root(v1(keys))
    assert root.root.threshold == 2 and len(root.root.keys) == 3
    assert root.expires == LATER
    assert set(root.sites) == {"site-a", "site-b"}
    assert root.site_role("site-a").keyids == tuple(trusted_key(keys[n].public_key()).keyid for n in ("a1", "a2"))
    assert reason(root.site_role, "site-c") == ("dsse:unknown-site", 4)


def test_a_root_below_its_own_threshold_is_refused(keys):
    one_signature = sign(build(keys), keys, "r1")
    assert reason(trust.load_trusted_root, one_signature) == ("rotation:threshold-self", 4)
    unsigned = build(keys)
    assert reason(trust.load_trusted_root, unsigned) == ("rotation:threshold-self", 4)
    by_other_keys = edit(sign(build(keys), keys, "r1"), lambda d: d["signatures"].append(
        {"keyid": trusted_key(keys["t"].public_key()).keyid, "sig": keys["t"].sign(b"x").hex()}))
    assert reason(trust.load_trusted_root, by_other_keys) == ("rotation:threshold-self", 4)


def test_one_key_listed_under_two_keyids_does_not_meet_a_threshold_of_2(keys):
    private = keys["r1"]
    lower = SSlibKey.from_crypto(private.public_key())
    entry = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": lower.keyval["public"].upper()}}
    upper = SSlibKey(tuf_keyid(entry), "ed25519", "ed25519", entry["keyval"])  # its keyid matches its entry
    other = SSlibKey.from_crypto(keys["r2"].public_key())
    single = SSlibKey.from_crypto(keys["t"].public_key())
    signed = Root(expires=LATER.replace(tzinfo=UTC), consistent_snapshot=False,
                  keys={k.keyid: k for k in (lower, upper, other, single)},
                  roles={"root": Role([lower.keyid, upper.keyid, other.keyid], 2),
                         **{name: Role([single.keyid], 1) for name in ("targets", "timestamp", "snapshot")}})
    metadata = Metadata(signed)
    metadata.sign(CryptoSigner(private, lower), append=True)
    metadata.sign(CryptoSigner(private, upper), append=True)
    data = metadata.to_bytes(JSONSerializer())
    Metadata.from_bytes(data).verify_delegate("root", Metadata.from_bytes(data))  # python-tuf counts 2
    assert reason(trust.load_trusted_root, data) == ("rotation:threshold-self", 4)  # one distinct key
    metadata.sign(CryptoSigner(keys["r2"], other), append=True)
    assert trust.load_trusted_root(metadata.to_bytes(JSONSerializer())).version == 1


def test_a_keyid_that_is_not_its_keys_keyid_is_refused(keys):
    data = v1(keys)
    r1, r3 = (trusted_key(keys[n].public_key()) for n in ("r1", "r3"))

    def swap(document):  # r3's key material under r1's keyid: python-tuf does not notice
        document["signed"]["keys"][r1.keyid] = r3.to_tuf()

    forged = edit(data, swap)
    Metadata.from_bytes(forged)
    assert reason(trust.load_trusted_root, forged) == ("rotation:keyid-mismatch", 4)

    def swap_site(document):
        sites = document["signed"][trust.SITES_FIELD]
        b = trusted_key(keys["b"].public_key()).keyid
        sites["keys"][b] = trusted_key(keys["a1"].public_key()).to_tuf()

    assert reason(trust.load_trusted_root, edit(data, swap_site)) == ("rotation:keyid-mismatch", 4)


@pytest.mark.parametrize("change", [
    lambda d: d["signed"].update(extra="unsigned? no, signed but unknown"),
    lambda d: d.update(unsigned="field"),
    lambda d: d["signatures"][0].update(note="x"),
    lambda d: d["signed"]["roles"]["root"].update(note="x"),
    lambda d: d["signed"].update(version="1"),
    lambda d: d["signed"].update(version=True),
    lambda d: d["signed"].update(_type="targets"),
    lambda d: d["signed"]["roles"].pop("snapshot"),
    lambda d: d["signed"]["roles"]["root"].update(threshold=4),
    lambda d: d["signed"]["roles"]["root"]["keyids"].append("ab" * 32),
    lambda d: d["signed"][trust.SITES_FIELD]["roles"][0].update(paths=["*"]),
    lambda d: d["signed"][trust.SITES_FIELD]["roles"][0].update(terminating=False),
    lambda d: d["signed"][trust.SITES_FIELD]["roles"][0].update(name="../x"),
    lambda d: d["signed"][trust.SITES_FIELD]["roles"].append(d["signed"][trust.SITES_FIELD]["roles"][0]),
    lambda d: d["signed"][trust.SITES_FIELD].update(extra={}),
    lambda d: d["signed"].update(expires="2031-01-01T00:00:00.5Z"),
])
def test_malformed_roots_are_refused_before_any_signature_is_checked(keys, change):
    assert reason(trust.load_trusted_root, edit(v1(keys), change)) == ("schema:root", 4)


def test_duplicate_json_keys_and_non_ed25519_keys_are_refused(keys):
    data = v1(keys)
    text = data.decode()
    duplicated = text.replace('"version": 1', '"version": 1, "version": 1', 1).encode()
    assert duplicated != data
    assert reason(trust.load_trusted_root, duplicated) == ("schema:root", 4)
    def first_key(document):
        return document["signed"]["keys"][next(iter(document["signed"]["keys"]))]

    annotated = edit(data, lambda d: first_key(d).update(note="python-tuf keeps this, and it is not in the keyid"))
    Metadata.from_bytes(annotated)
    assert reason(trust.load_trusted_root, annotated) == ("rotation:unsupported-key", 4)
    ecdsa = SSlibKey.from_crypto(ec.generate_private_key(ec.SECP256R1()).public_key())
    with_ecdsa = edit(data, lambda d: d["signed"]["keys"].update({ecdsa.keyid: ecdsa.to_dict()}))
    Metadata.from_bytes(with_ecdsa)
    assert reason(trust.load_trusted_root, with_ecdsa) == ("rotation:unsupported-key", 4)
    assert reason(trust.load_trusted_root, edit(data, lambda d: first_key(d).update(keytype="rsa"))) == (
        "schema:root", 4)  # python-tuf itself refuses rsa/ed25519


def test_root_size_is_capped(keys):
    assert reason(trust.load_trusted_root, v1(keys) + b" " * MAX_ROOT_BYTES) == ("size:root", 4)


# --- rotation ---------------------------------------------------------------------------------------------

def test_rotation_needs_a_threshold_of_the_old_root_keys(keys):
    first = trust.load_trusted_root(v1(keys))
    only_new = rotated(keys, first, signers="r3 r4")  # r3 is also an old key: 1 of 2 old
    assert reason(trust.update_root, first, only_new) == ("rotation:threshold-trusted", 4)


def test_rotation_needs_a_threshold_of_the_new_root_keys(keys):
    first = trust.load_trusted_root(v1(keys))
    only_old = rotated(keys, first, signers="r1 r2 r3")  # r3 is 1 of the 2 new keys
    assert reason(trust.update_root, first, only_old) == ("rotation:threshold-self", 4)
    status = trust.root_signature_status(only_old, first)
    assert (status.by_previous, status.previous_threshold, status.by_self, status.self_threshold) == (3, 2, 1, 2)
    assert not status.complete
    assert trust.root_signature_status(sign(only_old, keys, "r4", first), first).complete


def test_rotation_version_must_be_exactly_one_more(keys):
    first = trust.load_trusted_root(v1(keys))
    second = trust.update_root(first, rotated(keys, first))
    skipping = sign(build(keys, root="r3 r4", version=4), keys, "r3 r4")
    assert reason(trust.update_root, second, skipping) == ("rotation:version-gap", 4)
    replay = sign(build(keys, root="r3 r4", version=2), keys, "r3 r4")
    assert reason(trust.update_root, second, replay) == ("rollback:root-version", 5)
    older = sign(build(keys, root="r3 r4", version=1), keys, "r3 r4")
    assert reason(trust.update_root, second, older) == ("rollback:root-version", 5)


def test_chain_walks_several_rotations_and_skips_roots_already_held(keys):
    first = trust.load_trusted_root(v1(keys))
    second_bytes = rotated(keys, first)
    second = trust.update_root(first, second_bytes)
    third_bytes = rotated(keys, second, root="r4 r5", signers="r3 r4 r5")
    assert trust.verify_root_chain(first, [second_bytes, third_bytes], NOW).version == 3
    assert trust.verify_root_chain(second, [first.data, second_bytes, third_bytes], NOW).version == 3
    assert trust.verify_root_chain(second, [], NOW) is second
    gap = sign(build(keys, version=3), keys, "r1 r2")  # signed by the keys of version 1, but it is version 3
    assert reason(trust.verify_root_chain, first, [gap], NOW) == ("rotation:version-gap", 4)
    assert reason(trust.verify_root_chain, first, [second_bytes] * (MAX_ROOTS_PER_BUNDLE + 1), NOW) == (
        "size:roots", 4)


def test_a_second_root_claiming_the_trusted_version_is_a_fork(keys):
    first = trust.load_trusted_root(v1(keys))
    second = trust.update_root(first, rotated(keys, first))
    other_second = rotated(keys, first, root="r3 r5", signers="r1 r2 r3 r5")
    assert reason(trust.verify_root_chain, second, [other_second], NOW) == ("rotation:fork", 4)
    reformatted = json.dumps(json.loads(second.data), indent=4).encode()  # same signed content
    assert trust.verify_root_chain(second, [reformatted], NOW) is second


def test_site_keys_change_only_through_a_root_rotation(keys):
    first = trust.load_trusted_root(v1(keys))
    sites = dict(first.sites, **{"site-c": keys.role("c", 1)})
    second = trust.update_root(first, rotated(keys, first, root="r1 r2", signers="r1 r2", sites=sites))
    assert set(second.sites) == {"site-a", "site-b", "site-c"}
    forged = edit(first.data, lambda d: d["signed"][trust.SITES_FIELD]["roles"][0].update(threshold=1))
    assert reason(trust.load_trusted_root, forged) == ("rotation:threshold-self", 4)


# --- expiry -----------------------------------------------------------------------------------------------

def test_the_final_root_must_not_be_expired_at_the_reference_time(keys):
    first = trust.load_trusted_root(v1(keys, expires=NOW + timedelta(days=1)))
    assert trust.verify_root_chain(first, [], NOW).version == 1
    at_expiry = NOW + timedelta(days=1)
    assert reason(trust.verify_root_chain, first, [], at_expiry) == ("expiry:root", 5)
    assert reason(trust.verify_root_chain, first, [], at_expiry.replace(tzinfo=UTC)) == ("expiry:root", 5)


def test_an_expired_intermediate_root_still_loads_its_successor(keys):
    old = trust.load_trusted_root(v1(keys, expires=NOW - timedelta(days=30)))
    assert trust.verify_root_chain(old, [rotated(keys, old, expires=LATER)], NOW).version == 2


def test_a_clock_set_back_does_not_revive_an_expired_root(keys):
    root = trust.load_trusted_root(v1(keys, expires=NOW))
    clock_set_back = NOW - timedelta(days=10)
    anchor = NOW + timedelta(hours=1)
    assert trust.reference_time(clock_set_back, None) == clock_set_back
    assert trust.reference_time(clock_set_back, anchor) == anchor
    assert trust.reference_time(anchor.replace(tzinfo=UTC), clock_set_back) == anchor
    trust.check_not_expired(root, trust.reference_time(clock_set_back, None))
    assert reason(trust.check_not_expired, root, trust.reference_time(clock_set_back, anchor)) == ("expiry:root", 5)


# --- signing ----------------------------------------------------------------------------------------------

def test_trust_init_takes_public_pem_keys_and_sign_takes_the_projects_encrypted_private_key(keys, tmp_path):
    pairs = [generate_key_pair(tmp_path, f"root{i}", b"pass phrase" if i else None) for i in range(2)]
    root_role = KeyRole.of([load_public_key(p.public_key_path) for p in pairs], 2)
    data = trust.build_root(root=root_role, targets=keys.role("t", 1), timestamp=keys.role("ts", 1),
                            snapshot=keys.role("t", 1), sites={"site-a": keys.role("a1", 1)}, expires=LATER)
    assert json.loads(data)["signatures"] == [] and json.loads(data)["signed"]["version"] == 1
    data = trust.sign_root(data, load_private_key(pairs[0].private_key_path))
    assert not trust.root_signature_status(data).complete
    data = trust.sign_root(data, load_private_key(pairs[1].private_key_path, b"pass phrase"))
    assert trust.root_signature_status(data).complete
    assert trust.load_trusted_root(data).version == 1


def test_sign_refuses_a_key_that_is_not_a_root_key_and_replaces_a_repeated_signature(keys):
    data = build(keys)
    with pytest.raises(InvalidInput, match="not a root key"):
        trust.sign_root(data, keys["t"])
    twice = trust.sign_root(trust.sign_root(data, keys["r1"]), keys["r1"])
    assert len(json.loads(twice)["signatures"]) == 1
    first = trust.load_trusted_root(v1(keys))
    proposal = trust.rotate_root(first, root=keys.role("r4 r5", 2), expires=LATER)
    with pytest.raises(InvalidInput):
        trust.sign_root(proposal, keys["r1"])  # an old key needs the previous root to be recognized
    assert trust.root_signature_status(trust.sign_root(proposal, keys["r1"], first), first).by_previous == 1


def test_build_refuses_thresholds_that_cannot_be_met_and_bad_site_ids(keys):
    one = keys.role("r1", 1)
    with pytest.raises(ValueError, match="site id"):
        trust.build_root(root=one, targets=one, timestamp=one, snapshot=one, sites={"../x": one}, expires=LATER)
    with pytest.raises(ValueError, match="threshold"):
        trust.build_root(root=KeyRole(one.keys, 2), targets=one, timestamp=one, snapshot=one, sites={},
                         expires=LATER)


# --- sites and envelopes ----------------------------------------------------------------------------------

def test_one_sites_key_never_speaks_for_another_site(keys):
    root = trust.load_trusted_root(v1(keys))
    manifest = b'{"source_site":"site-a"}'
    by_b = dsse.sign_envelope(manifest, keys["b"]).to_json()
    with pytest.raises(BundleError) as caught:
        dsse.verify_canonical_envelope(by_b, root.site_role("site-a"))
    assert caught.value.reason_code == "dsse:unknown-key"
    by_a1_and_b = dsse.add_signature(dsse.sign_envelope(manifest, keys["a1"]), keys["b"]).to_json()
    with pytest.raises(BundleError):
        dsse.verify_canonical_envelope(by_a1_and_b, root.site_role("site-a"))
    by_a1 = dsse.sign_envelope(manifest, keys["a1"])
    with pytest.raises(BundleError) as caught:
        dsse.verify_canonical_envelope(by_a1.to_json(), root.site_role("site-a"))
    assert caught.value.reason_code == "dsse:threshold"
    both = dsse.add_signature(by_a1, keys["a2"]).to_json()
    assert dsse.verify_canonical_envelope(both, root.site_role("site-a")).payload == manifest
    assert dsse.verify_canonical_envelope(by_b, root.site_role("site-b")).payload == manifest
