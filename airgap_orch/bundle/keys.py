"""Ed25519 public keys as the trust root names them, and threshold counting over DISTINCT keys.

A key's id is TUF's: the SHA-256 hex of the canonical JSON of {"keytype", "scheme", "keyval"} (what
python-tuf and securesystemslib compute for an `SSlibKey`), whatever `keys generate` prints for the same key.

Neither python-tuf nor securesystemslib checks that a keyid belongs to its key, and both count a threshold by
keyid. Here every keyid is recomputed from the key material it names (`key_from_tuf`), and thresholds count
distinct raw public keys (`distinct_count`), so one key listed under two keyids (say its hex in upper and in
lower case, each with its own correct keyid) still counts once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.formats import encode_canonical

from .limits import MAX_KEYS_PER_ROLE

ED25519 = "ed25519"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_KEYID = re.compile(r"[0-9a-f]{64}")


class KeyFormatError(ValueError):
    """A key entry this format does not accept; `detail` is a reason-code detail for the caller's family."""

    def __init__(self, detail: str, message: str):
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class TrustedKey:
    """An Ed25519 public key whose keyid was computed from its own TUF key entry."""

    keyid: str
    public_bytes: bytes  # the raw 32-byte key: what "distinct keys" compares
    public_hex: str  # keyval.public exactly as the entry spells it (the keyid covers this spelling)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_bytes)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_tuf(self) -> dict[str, Any]:
        """The key entry as it sits in a TUF `keys` map (value of `keyid`)."""
        return {"keytype": ED25519, "scheme": ED25519, "keyval": {"public": self.public_hex}}


def tuf_keyid(key_entry: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of the entry's keytype, scheme and keyval (TUF's default keyid)."""
    canonical = encode_canonical({"keytype": key_entry["keytype"], "scheme": key_entry["scheme"],
                                  "keyval": key_entry["keyval"]})
    assert isinstance(canonical, str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def trusted_key(public_key: Ed25519PublicKey) -> TrustedKey:
    """The TUF form of a public key (lower-case hex), with its keyid."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    entry = {"keytype": ED25519, "scheme": ED25519, "keyval": {"public": raw.hex()}}
    return TrustedKey(tuf_keyid(entry), raw, raw.hex())


def key_from_tuf(keyid: str, entry: Any) -> TrustedKey:
    """Accept a TUF key entry only if it is an Ed25519 key of exactly the expected shape and `keyid` is the
    keyid of that entry; KeyFormatError (detail "unsupported-key" or "keyid-mismatch") otherwise."""
    if not isinstance(entry, dict) or set(entry) != {"keytype", "scheme", "keyval"}:
        raise KeyFormatError("unsupported-key", f"key {str(keyid)[:16]} must have exactly keytype, scheme and "
                             "keyval")
    if entry["keytype"] != ED25519 or entry["scheme"] != ED25519:
        raise KeyFormatError("unsupported-key", f"key {str(keyid)[:16]} is {entry['keytype']!s:.20}/"
                             f"{entry['scheme']!s:.20}; only ed25519/ed25519 keys are accepted")
    keyval = entry["keyval"]
    if (not isinstance(keyval, dict) or set(keyval) != {"public"} or not isinstance(keyval["public"], str)
            or not _HEX_KEY.fullmatch(keyval["public"])):
        raise KeyFormatError("unsupported-key", f"key {str(keyid)[:16]} must have keyval.public as 64 hex digits")
    if not isinstance(keyid, str) or not _KEYID.fullmatch(keyid) or keyid != tuf_keyid(entry):
        raise KeyFormatError("keyid-mismatch", f"keyid {str(keyid)[:16]}... is not the keyid of its key "
                             f"({tuf_keyid(entry)[:16]}...)")
    raw = bytes.fromhex(keyval["public"])
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFormatError("unsupported-key", f"key {keyid[:16]} is not a valid Ed25519 public key") from None
    return TrustedKey(keyid, raw, keyval["public"])


def distinct_count(keys: Iterable[TrustedKey]) -> int:
    """How many different public keys are among `keys` (keyids do not matter)."""
    return len({key.public_bytes for key in keys})


@dataclass(frozen=True)
class KeyRole:
    """Keys and the number of distinct ones that must sign: a TUF role, a site, a DSSE verifier."""

    keys: tuple[TrustedKey, ...]
    threshold: int

    @classmethod
    def of(cls, public_keys: Iterable[Ed25519PublicKey], threshold: int) -> KeyRole:
        """A role from public keys; ValueError unless 1 <= threshold <= number of distinct keys."""
        keys = tuple(trusted_key(key) for key in public_keys)
        if distinct_count(keys) != len(keys):
            raise ValueError("the same public key is given twice")
        role = cls(keys, threshold)
        role.check()
        return role

    def check(self) -> None:
        """ValueError if the threshold can never be met or the role is oversized."""
        if len(self.keys) > MAX_KEYS_PER_ROLE:
            raise ValueError(f"a role has at most {MAX_KEYS_PER_ROLE} keys, not {len(self.keys)}")
        if not 1 <= self.threshold <= distinct_count(self.keys):
            raise ValueError(f"threshold {self.threshold} needs 1 to {distinct_count(self.keys)} "
                             f"(the number of distinct keys)")

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(key.keyid for key in self.keys)

    def key(self, keyid: str) -> TrustedKey | None:
        for key in self.keys:
            if key.keyid == keyid:
                return key
        return None

    def verified_signers(self, message: bytes, signatures: Iterable[tuple[str, bytes]]) -> frozenset[TrustedKey]:
        """The role's keys with a valid signature over `message` among (keyid, signature) pairs; signatures
        by keys outside the role and invalid ones are skipped (TUF's rule for metadata)."""
        signers = set()
        for keyid, signature in signatures:
            key = self.key(keyid)
            if key is not None and key.verifies(signature, message):
                signers.add(key)
        return frozenset(signers)

    def is_met_by(self, signers: Iterable[TrustedKey]) -> bool:
        """Whether the distinct public keys among `signers` that belong to this role reach the threshold."""
        return distinct_count(key for key in signers if key in self.keys) >= self.threshold
