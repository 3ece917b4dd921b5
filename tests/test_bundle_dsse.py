"""DSSE envelopes: PAE against the spec's vector, canonical form, threshold over distinct trusted keys, and
interop both ways with securesystemslib's DSSE."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from airgap_orch.bundle import dsse
from airgap_orch.bundle.errors import EnvelopeError, SizeLimitError
from airgap_orch.bundle.keys import KeyRole, key_from_tuf, trusted_key, tuf_keyid
from airgap_orch.bundle.limits import MAX_ENVELOPE_BYTES, MAX_ENVELOPE_SIGNATURES
from airgap_orch.errors import exit_code_for

PAYLOAD = b'{"merkle_root":"5dc9","source_site":"site-a"}'


@pytest.fixture(scope="module")
def privates():
    return [Ed25519PrivateKey.generate() for _ in range(4)]


def role_of(privates, threshold):
    return KeyRole.of([p.public_key() for p in privates], threshold)


def signed(payload, *privates, payload_type=dsse.MANIFEST_PAYLOAD_TYPE):
    envelope = dsse.Envelope(payload, payload_type, ())
    for private in privates:
        envelope = dsse.add_signature(envelope, private)
    return envelope


def reason(call, *args):
    with pytest.raises((EnvelopeError, SizeLimitError)) as caught:
        call(*args)
    assert exit_code_for(caught.value) == 4
    return caught.value.reason_code


# --- PAE --------------------------------------------------------------------------------------------------

def test_pae_matches_the_dsse_spec_vector_and_its_signature_verifies():
    # protocol.md "Test Vectors": ECDSA P-256/SHA-256 key and the raw r||s signature over the PAE
    message = dsse.pae("http://example.com/HelloWorld", b"hello world")
    assert message == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    x = 46950820868899156662930047687818585632848591499744589407958293238635476079160
    y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raw = base64.b64decode("A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, message, ec.ECDSA(SHA256()))  # raises if our PAE differed by a byte


def test_pae_counts_bytes_not_characters():
    assert dsse.pae("tÿpe", b"\x00\xff") == "DSSEv1 5 tÿpe 2 ".encode() + b"\x00\xff"
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


# --- canonical form ---------------------------------------------------------------------------------------

def test_signed_envelope_round_trips_through_the_canonical_form(privates):
    envelope = signed(PAYLOAD, privates[1], privates[0])
    data = envelope.to_json()
    assert dsse.parse_canonical_envelope(data) == dsse.Envelope(
        PAYLOAD, dsse.MANIFEST_PAYLOAD_TYPE, tuple(sorted(envelope.signatures, key=lambda s: s.keyid)))
    verified = dsse.verify_canonical_envelope(data, role_of(privates[:3], 2))
    assert verified.payload == PAYLOAD
    assert {k.keyid for k in verified.signers} == {trusted_key(p.public_key()).keyid for p in privates[:2]}
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()


def test_every_flipped_byte_of_a_canonical_envelope_is_refused(privates):
    role = role_of(privates[:3], 2)
    data = signed(PAYLOAD, privates[0], privates[1]).to_json()
    dsse.verify_canonical_envelope(data, role)
    reasons = set()
    for offset in range(len(data)):
        for mask in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            with pytest.raises((EnvelopeError, SizeLimitError)) as caught:
                dsse.verify_canonical_envelope(bytes(damaged), role)
            reasons.add(caught.value.reason_code)
    assert reasons <= {"dsse:malformed", "dsse:not-canonical", "dsse:bad-signature", "dsse:unknown-key",
                       "dsse:payload-type", "dsse:keyid-mismatch"}


@pytest.mark.parametrize("rewrite", [
    lambda d: json.dumps(d, sort_keys=True).encode(),  # spaces
    lambda d: json.dumps(d, separators=(",", ":")).encode() + b"\n",  # trailing newline
    lambda d: json.dumps({"signatures": d["signatures"], "payload": d["payload"], "payloadType": d["payloadType"]},
                         separators=(",", ":")).encode(),  # key order
    lambda d: json.dumps({**d, "signatures": d["signatures"][::-1]}, sort_keys=True, separators=(",", ":")).encode(),
    lambda d: json.dumps({**d, "payload": d["payload"].rstrip("=")}, sort_keys=True, separators=(",", ":")).encode(),
])
def test_a_re_encoded_envelope_with_the_same_meaning_is_refused(privates, rewrite):
    data = signed(PAYLOAD + b"!", privates[0], privates[1]).to_json()  # 47 bytes: base64 with padding
    assert json.loads(data)["payload"].endswith("=")
    changed = rewrite(json.loads(data))
    assert changed != data
    assert dsse.parse_envelope(changed).to_json() == data  # same meaning...
    assert reason(dsse.parse_canonical_envelope, changed) in {"dsse:not-canonical", "dsse:malformed"}


def test_base64_with_non_zero_trailing_bits_is_refused_in_bundles(privates):
    # a 64-byte signature ends "X==" where X carries 2 data bits and 4 unused bits; Python's decoder ignores
    # the unused bits, so only the canonical comparison sees the change
    data = signed(PAYLOAD, privates[0]).to_json()
    document = json.loads(data)
    sig = document["signatures"][0]["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(sig[-3])
    document["signatures"][0]["sig"] = sig[:-3] + alphabet[last | 0b0001] + "=="
    changed = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert changed != data
    assert base64.b64decode(document["signatures"][0]["sig"]) == base64.b64decode(sig)
    assert reason(dsse.verify_canonical_envelope, changed, role_of(privates[:1], 1)) == "dsse:not-canonical"
    assert reason(dsse.parse_envelope, changed) == "dsse:malformed"  # the lenient reader refuses it too


@pytest.mark.parametrize("document", [
    b'{"payload":"e30=","payload":"e30=","payloadType":"x","signatures":[]}',
    b'{"payload":"e30=","payloadType":"x","signatures":[{"keyid":"' + b"0" * 64 + b'","sig":"e30=","x":1}]}',
    b'{"extra":1,"payload":"e30=","payloadType":"x","signatures":[{"keyid":"' + b"0" * 64 + b'","sig":"e30="}]}',
    b'{"payload":"e30=","payloadType":"x","signatures":[]}',
    b'{"payload":"e30=","payloadType":"x","signatures":[{"keyid":"AB","sig":"e30="}]}',
    b'{"payload":"e30","payloadType":"x","signatures":[{"keyid":"' + b"0" * 64 + b'","sig":"e30="}]}',
    b'[1]', b'{"payload": NaN}', b'\xff', b'',
])
def test_malformed_canonical_envelopes_are_refused(document):
    assert reason(dsse.parse_canonical_envelope, document) == "dsse:malformed"


def test_envelope_size_and_signature_count_are_capped(privates):
    assert reason(dsse.parse_canonical_envelope, b" " * (MAX_ENVELOPE_BYTES + 1)) == "size:envelope"
    assert reason(dsse.parse_envelope, b" " * (MAX_ENVELOPE_BYTES + 1)) == "size:envelope"
    many = dsse.Envelope(PAYLOAD, dsse.MANIFEST_PAYLOAD_TYPE,
                         tuple(dsse.Signature(f"{i:064x}", b"\x00" * 64) for i in range(MAX_ENVELOPE_SIGNATURES + 1)))
    assert reason(dsse.parse_canonical_envelope, many.to_json()) == "size:signatures"
    assert reason(dsse.verify_envelope, many, role_of(privates[:1], 1)) == "size:signatures"


# --- threshold and keys -----------------------------------------------------------------------------------

def test_threshold_counts_distinct_keys_and_a_repeated_signature_counts_once(privates):
    role = role_of(privates[:3], 2)
    one = signed(PAYLOAD, privates[0])
    assert reason(dsse.verify_canonical_envelope, one.to_json(), role) == "dsse:threshold"
    twice = dsse.Envelope(one.payload, one.payload_type, one.signatures * 2)
    assert reason(dsse.verify_canonical_envelope, twice.to_json(), role) == "dsse:threshold"
    assert dsse.verify_canonical_envelope(twice.to_json(), role_of(privates[:3], 1)).signers == (
        trusted_key(privates[0].public_key()),)


def test_one_key_listed_under_two_keyids_does_not_meet_a_threshold_of_2(privates):
    key = trusted_key(privates[0].public_key())
    upper = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": key.public_hex.upper()}}
    twin = key_from_tuf(tuf_keyid(upper), upper)
    role = KeyRole((key, twin), 2)
    sig = privates[0].sign(dsse.pae(dsse.MANIFEST_PAYLOAD_TYPE, PAYLOAD))
    envelope = dsse.Envelope(PAYLOAD, dsse.MANIFEST_PAYLOAD_TYPE,
                             (dsse.Signature(key.keyid, sig), dsse.Signature(twin.keyid, sig)))
    assert reason(dsse.verify_canonical_envelope, envelope.to_json(), role) == "dsse:threshold"


def test_a_signature_by_an_untrusted_key_is_refused_even_when_the_threshold_is_met(privates):
    role = role_of(privates[:2], 1)
    envelope = signed(PAYLOAD, privates[0], privates[3])
    assert reason(dsse.verify_canonical_envelope, envelope.to_json(), role) == "dsse:unknown-key"


def test_a_keyid_that_names_another_trusted_key_is_refused(privates):
    role = role_of(privates[:2], 1)
    sig = privates[0].sign(dsse.pae(dsse.MANIFEST_PAYLOAD_TYPE, PAYLOAD))
    wrong = dsse.Envelope(PAYLOAD, dsse.MANIFEST_PAYLOAD_TYPE,
                          (dsse.Signature(trusted_key(privates[1].public_key()).keyid, sig),))
    assert reason(dsse.verify_canonical_envelope, wrong.to_json(), role) == "dsse:keyid-mismatch"


def test_a_signature_over_other_bytes_is_refused(privates):
    role = role_of(privates[:2], 1)
    good = signed(PAYLOAD, privates[0])
    swapped = dsse.Envelope(PAYLOAD + b" ", good.payload_type, good.signatures)
    assert reason(dsse.verify_canonical_envelope, swapped.to_json(), role) == "dsse:bad-signature"
    retyped = dsse.Envelope(PAYLOAD, "application/vnd.other+json", good.signatures)
    assert reason(dsse.verify_envelope, retyped, role, "application/vnd.other+json") == "dsse:bad-signature"


def test_the_payload_type_must_be_the_manifest_type(privates):
    other = signed(PAYLOAD, privates[0], payload_type="application/vnd.in-toto+json")
    assert reason(dsse.verify_canonical_envelope, other.to_json(), role_of(privates[:1], 1)) == "dsse:payload-type"


def test_add_signature_replaces_the_same_keys_earlier_signature(privates):
    envelope = dsse.add_signature(signed(PAYLOAD, privates[0]), privates[0])
    assert len(envelope.signatures) == 1


# --- foreign envelopes and securesystemslib interop -------------------------------------------------------

def sslib_signer(private):
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def test_our_envelope_verifies_in_securesystemslib(privates):
    data = signed(PAYLOAD, privates[0], privates[1]).to_json()
    as_dict = json.loads(data)
    theirs = SslibEnvelope.from_dict(copy.deepcopy(as_dict))  # from_dict rewrites each sig to hex in place
    keys = [SSlibKey.from_crypto(p.public_key()) for p in privates[:2]]
    assert set(theirs.verify(keys, 2)) == {k.keyid for k in keys}
    assert theirs.payload == PAYLOAD and theirs.pae() == dsse.pae(dsse.MANIFEST_PAYLOAD_TYPE, PAYLOAD)
    mutated = copy.deepcopy(as_dict)
    SslibEnvelope.from_dict(mutated)
    assert mutated != as_dict  # why every call above passes a copy


def test_a_securesystemslib_envelope_verifies_here_and_its_sorted_compact_json_is_canonical(privates):
    theirs = SslibEnvelope(PAYLOAD, dsse.MANIFEST_PAYLOAD_TYPE, {})
    for private in sorted(privates[:2], key=lambda p: trusted_key(p.public_key()).keyid):
        theirs.sign(sslib_signer(private))  # in keyid order, as our canonical form lists them
    as_dict = theirs.to_dict()
    loose = json.dumps(as_dict).encode()
    role = role_of(privates[:2], 2)
    assert dsse.verify_envelope(dsse.parse_envelope(loose), role).payload == PAYLOAD
    compact = json.dumps(as_dict, sort_keys=True, separators=(",", ":")).encode()
    ours = signed(PAYLOAD, privates[0], privates[1]).to_json()  # Ed25519 is deterministic
    assert compact == ours
    assert dsse.parse_envelope(loose).to_json() == ours
    assert dsse.verify_canonical_envelope(ours, role).payload == PAYLOAD


def url_safe_signed(private, payload_base):
    """An envelope whose signature's base64 uses '+' or '/', so its URL-safe spelling differs."""
    for counter in range(200):
        envelope = signed(payload_base + b"%d" % counter, private)
        encoded = base64.standard_b64encode(envelope.signatures[0].sig).decode()
        if "+" in encoded or "/" in encoded:
            return envelope
    raise AssertionError("no signature with + or / in 200 tries")


def test_url_safe_unpadded_base64_is_accepted_for_foreign_envelopes_but_not_in_bundles(privates):
    envelope = url_safe_signed(privates[0], b"\xfb\xff payload ")
    document = json.loads(envelope.to_json())
    document["payload"] = base64.urlsafe_b64encode(envelope.payload).decode().rstrip("=")
    document["signatures"][0]["sig"] = base64.urlsafe_b64encode(envelope.signatures[0].sig).decode().rstrip("=")
    foreign = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    role = role_of(privates[:1], 1)
    assert dsse.parse_envelope(foreign) == envelope
    assert dsse.verify_envelope(dsse.parse_envelope(foreign), role).payload == envelope.payload
    assert dsse.parse_envelope(foreign).to_json() == envelope.to_json()  # canonicalizing keeps it valid
    assert reason(dsse.verify_canonical_envelope, foreign, role) == "dsse:malformed"
    padded = copy.deepcopy(document)
    padded["signatures"][0]["sig"] = base64.urlsafe_b64encode(envelope.signatures[0].sig).decode()
    assert SslibEnvelope.from_dict(copy.deepcopy(padded)).verify([SSlibKey.from_crypto(privates[0].public_key())], 1)


def test_foreign_envelopes_may_omit_keyid_and_carry_unknown_fields(privates):
    envelope = signed(PAYLOAD, privates[1])
    document = json.loads(envelope.to_json())
    del document["signatures"][0]["keyid"]
    document["signatures"][0]["note"] = "from elsewhere"
    document["extension"] = {"any": 1}
    parsed = dsse.parse_envelope(json.dumps(document, indent=2).encode())
    assert parsed.signatures[0].keyid == ""
    verified = dsse.verify_envelope(parsed, role_of(privates[:2], 1))
    assert verified.signers == (trusted_key(privates[1].public_key()),)
    assert reason(dsse.verify_envelope, parsed, role_of([privates[0]], 1)) == "dsse:bad-signature"


@pytest.mark.parametrize("text", ["QQ===", "QQ=", "QUJD====", "QR==", "Q", "ab+c-d__", "QQ==QQ==", "é"])
def test_lenient_base64_still_refuses_ambiguous_spellings(text):
    document = {"payload": text, "payloadType": "t", "signatures": []}
    assert reason(dsse.parse_envelope, json.dumps(document).encode()) == "dsse:malformed"


@pytest.mark.parametrize(("text", "decoded"),
                         [("QQ==", b"A"), ("QQ", b"A"), ("-_8", b"\xfb\xff"), ("+/8=", b"\xfb\xff")])
def test_lenient_base64_accepts_both_alphabets_with_or_without_padding(text, decoded):
    document = {"payload": text, "payloadType": "t", "signatures": []}
    assert dsse.parse_envelope(json.dumps(document).encode()).payload == decoded


def test_the_envelope_schema_is_valid_draft_7_and_accepts_what_we_write(privates):
    from jsonschema import Draft7Validator

    from airgap_orch import schemas

    schema = schemas.load(dsse.ENVELOPE_SCHEMA)
    Draft7Validator.check_schema(schema)
    Draft7Validator(schema).validate(json.loads(signed(PAYLOAD, privates[0], privates[1]).to_json()))


def test_parsing_an_envelope_near_the_cap_costs_memory_in_proportion_to_its_size(privates):
    # found measuring a bundle with 5,000 members: the schema's grouped base64 pattern made the regex engine
    # hold ~40 bytes per payload character (54 MB for a 1.7 MB envelope)
    import tracemalloc

    payload = b"x" * (MAX_ENVELOPE_BYTES * 3 // 4 - 1024)
    data = signed(payload, privates[0]).to_json()
    assert len(data) <= MAX_ENVELOPE_BYTES
    tracemalloc.start()
    try:
        dsse.parse_canonical_envelope(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(data)
