"""Keys as the trust root names them: TUF keyids recomputed from key material, distinct-key thresholds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import SSlibKey

from airgap_orch.bundle.keys import KeyFormatError, KeyRole, key_from_tuf, trusted_key, tuf_keyid


def new_public():
    return Ed25519PrivateKey.generate().public_key()


def test_keyid_is_the_one_securesystemslib_and_python_tuf_compute():
    public = new_public()
    ours = trusted_key(public)
    theirs = SSlibKey.from_crypto(public)
    assert ours.keyid == theirs.keyid
    assert ours.to_tuf() == theirs.to_dict()
    assert key_from_tuf(ours.keyid, theirs.to_dict()) == ours


def test_keyid_differs_from_what_keys_generate_prints():
    from airgap_orch.auth.keys import key_id as token_key_id

    public = new_public()
    assert trusted_key(public).keyid != token_key_id(public)


def test_a_keyid_that_is_not_its_keys_keyid_is_refused():
    a, b = trusted_key(new_public()), trusted_key(new_public())
    with pytest.raises(KeyFormatError) as caught:
        key_from_tuf(a.keyid, b.to_tuf())
    assert caught.value.detail == "keyid-mismatch"


@pytest.mark.parametrize("mutate", [
    lambda e: e.update(keytype="rsa"),
    lambda e: e.update(scheme="ecdsa-sha2-nistp256"),
    lambda e: e.update(extra="field"),
    lambda e: e["keyval"].update(private="00" * 32),
    lambda e: e["keyval"].update(public="00" * 31),
    lambda e: e["keyval"].update(public="zz" * 32),
    lambda e: e.pop("scheme"),
])
def test_only_plain_ed25519_entries_are_accepted(mutate):
    entry = trusted_key(new_public()).to_tuf()
    mutate(entry)
    keyid = tuf_keyid(entry) if {"keytype", "scheme", "keyval"} <= set(entry) else "0" * 64
    with pytest.raises(KeyFormatError) as caught:
        key_from_tuf(keyid, entry)
    assert caught.value.detail == "unsupported-key"


def test_one_key_under_two_keyids_counts_once():
    private = Ed25519PrivateKey.generate()
    key = trusted_key(private.public_key())
    upper = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": key.public_hex.upper()}}
    twin = key_from_tuf(tuf_keyid(upper), upper)  # a valid entry: its keyid matches its own spelling
    assert twin.keyid != key.keyid and twin.public_bytes == key.public_bytes
    role = KeyRole((key, twin), threshold=2)
    message = b"payload"
    signature = private.sign(message)
    signers = role.verified_signers(message, [(key.keyid, signature), (twin.keyid, signature)])
    assert signers == {key, twin}  # both keyids verify...
    assert not role.is_met_by(signers)  # ...but they are one key
    with pytest.raises(ValueError, match="distinct"):
        role.check()


def test_threshold_counts_only_valid_signatures_of_role_keys():
    privates = [Ed25519PrivateKey.generate() for _ in range(3)]
    role = KeyRole.of([p.public_key() for p in privates[:2]], threshold=2)
    outsider = trusted_key(privates[2].public_key())
    message = b"payload"
    sig = [p.sign(message) for p in privates]
    ids = [trusted_key(p.public_key()).keyid for p in privates]
    assert role.is_met_by(role.verified_signers(message, [(ids[0], sig[0]), (ids[1], sig[1])]))
    assert not role.is_met_by(role.verified_signers(message, [(ids[0], sig[0]), (ids[0], sig[0])]))
    assert not role.is_met_by(role.verified_signers(message, [(ids[0], sig[0]), (ids[1], sig[0])]))
    assert not role.is_met_by(role.verified_signers(message, [(ids[0], sig[0]), (ids[2], sig[2])]))
    assert not role.is_met_by({role.keys[0], outsider})


def test_role_construction_refuses_unreachable_thresholds_and_repeated_keys():
    public = new_public()
    with pytest.raises(ValueError):
        KeyRole.of([public], 2)
    with pytest.raises(ValueError):
        KeyRole.of([public], 0)
    with pytest.raises(ValueError, match="twice"):
        KeyRole.of([public, public], 1)
