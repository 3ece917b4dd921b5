"""DSSE envelopes (secure-systems-lab/dsse v1.0): PAE, canonical serialization, signing, verification.

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body    (LEN: decimal byte count)

Signatures are Ed25519 over PAE(UTF8(payloadType), payload); each carries the TUF keyid of its key.

Canonical serialization (what `Envelope.to_json` writes and a bundle must contain byte for byte):
JSON with keys sorted, no whitespace, no trailing newline, ASCII only (other characters escaped); payload and
sig in standard base64 with padding; signatures sorted by keyid, then sig. This is the JSON
securesystemslib's `Envelope.to_dict()` produces, dumped with sort_keys and compact separators.

Two readers, one rule for signatures:
- `parse_canonical_envelope` (bundles): size-capped, schemas/dsse-envelope.schema.json, then the bytes must
  equal the canonical serialization of what was parsed. So no byte of the envelope is free: not the JSON
  layout, not the base64 alphabet, padding or trailing bits, not the signature order.
- `parse_envelope` (foreign envelopes, interop): the DSSE parsing rules. Standard or URL-safe base64 (the
  spec says verifiers MUST accept either), padding optional, unknown fields ignored, keyid optional. Its
  result can be re-serialized canonically (`to_json`); signatures stay valid, as they cover PAE only.
  Accepting URL-safe base64 in bundles would make one envelope spellable several ways; so a bundle must be
  canonical and URL-safe input is accepted where the DSSE spec asks for it: when reading foreign envelopes.
- `verify_envelope`, for both: the payload type must be the expected one; EVERY signature must verify against
  a trusted key of the given role under the keyid it claims (unknown keys and bad signatures are refused,
  not skipped: a bundle carries nothing unverified); the threshold counts distinct public keys, so a key's
  second signature, or the same key under a second keyid, adds nothing. A signature without keyid (foreign
  envelopes only) must verify under some key of the role.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import fastjsonschema
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import schemas
from ._json import StrictJSONError, loads_strict
from .errors import EnvelopeError, SizeLimitError
from .keys import KeyRole, TrustedKey, distinct_count, trusted_key
from .limits import MAX_ENVELOPE_BYTES, MAX_ENVELOPE_SIGNATURES

MANIFEST_PAYLOAD_TYPE = "application/vnd.airgap-orch.manifest+json"
ENVELOPE_SCHEMA = "dsse-envelope"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's Pre-Authentication Encoding: what a signature covers."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str  # "" only in a foreign envelope that left it unset
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A parsed, not yet verified, envelope."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_json(self) -> bytes:
        """The canonical serialization (see the module docstring)."""
        signatures = sorted(self.signatures, key=lambda s: (s.keyid, s.sig))
        document = {
            "payload": _b64(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": _b64(s.sig)} for s in signatures],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An envelope whose signatures all verified and met the threshold. `payload` is the very byte string the
    signatures cover (never re-read from the envelope)."""

    payload: bytes
    payload_type: str
    signers: tuple[TrustedKey, ...]  # one per distinct public key, sorted by keyid


def sign_envelope(payload: bytes, private_key: Ed25519PrivateKey,
                  payload_type: str = MANIFEST_PAYLOAD_TYPE) -> Envelope:
    """A new envelope with one signature."""
    return add_signature(Envelope(payload, payload_type, ()), private_key)


def add_signature(envelope: Envelope, private_key: Ed25519PrivateKey) -> Envelope:
    """The envelope with `private_key`'s signature added (replacing an earlier one under the same keyid)."""
    keyid = trusted_key(private_key.public_key()).keyid
    signature = Signature(keyid, private_key.sign(envelope.pae()))
    others = tuple(s for s in envelope.signatures if s.keyid != keyid)
    return Envelope(envelope.payload, envelope.payload_type, others + (signature,))


def parse_canonical_envelope(data: bytes) -> Envelope:
    """Parse a bundle's envelope: capped in size, schema-valid, and byte-identical to its canonical
    serialization; SizeLimitError size:envelope / EnvelopeError dsse:malformed or dsse:not-canonical."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SizeLimitError("envelope", f"the envelope is {len(data)} bytes; the cap is {MAX_ENVELOPE_BYTES}")
    document = _load(data)
    _check_signature_count(document)
    try:
        schemas.validator(ENVELOPE_SCHEMA)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = exc.name.replace("data", "envelope", 1) if exc.name else "envelope"
        raise EnvelopeError("malformed", f"{where} must {exc.message.split(' must ', 1)[-1]}") from None
    envelope = Envelope(
        _b64_standard(document["payload"], "payload"),
        document["payloadType"],
        tuple(Signature(s["keyid"], _b64_standard(s["sig"], "sig")) for s in document["signatures"]),
    )
    if envelope.to_json() != data:
        raise EnvelopeError("not-canonical", "the envelope is not in this tool's canonical form (key order, "
                            "whitespace, base64 padding or signature order differ); it was altered")
    return envelope


def parse_envelope(data: bytes) -> Envelope:
    """Parse any DSSE JSON envelope by the spec's rules (see the module docstring); EnvelopeError
    dsse:malformed, SizeLimitError size:envelope."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SizeLimitError("envelope", f"the envelope is {len(data)} bytes; the cap is {MAX_ENVELOPE_BYTES}")
    document = _load(data)
    _check_signature_count(document)
    for field, kind in (("payload", str), ("payloadType", str), ("signatures", list)):
        if not isinstance(document.get(field), kind):
            raise EnvelopeError("malformed", f"envelope field {field} is missing or not a {kind.__name__}")
    signatures = []
    for position, item in enumerate(document["signatures"]):
        if not isinstance(item, dict) or not isinstance(item.get("sig"), str):
            raise EnvelopeError("malformed", f"envelope signature {position} has no sig string")
        keyid = item.get("keyid") or ""
        if not isinstance(keyid, str):
            raise EnvelopeError("malformed", f"envelope signature {position} has a keyid that is not a string")
        signatures.append(Signature(keyid, _b64_any(item["sig"], f"signature {position} sig")))
    return Envelope(_b64_any(document["payload"], "payload"), document["payloadType"], tuple(signatures))


def verify_envelope(envelope: Envelope, role: KeyRole, payload_type: str = MANIFEST_PAYLOAD_TYPE) -> VerifiedEnvelope:
    """Check the payload type and every signature against `role`; EnvelopeError dsse:payload-type,
    dsse:no-signatures, dsse:unknown-key, dsse:keyid-mismatch, dsse:bad-signature or dsse:threshold."""
    if envelope.payload_type != payload_type:
        raise EnvelopeError("payload-type", f"the envelope's payload type is {envelope.payload_type[:80]!r}, "
                            f"not {payload_type!r}")
    if not envelope.signatures:
        raise EnvelopeError("no-signatures", "the envelope carries no signature")
    if len(envelope.signatures) > MAX_ENVELOPE_SIGNATURES:
        raise SizeLimitError("signatures", f"the envelope has {len(envelope.signatures)} signatures; the cap is "
                             f"{MAX_ENVELOPE_SIGNATURES}")
    message = envelope.pae()
    signers: dict[bytes, TrustedKey] = {}
    for position, signature in enumerate(envelope.signatures):
        key = _signing_key(role, signature, message, position)
        signers.setdefault(key.public_bytes, key)
    if distinct_count(signers.values()) < role.threshold:
        raise EnvelopeError("threshold", f"the envelope is signed by {len(signers)} distinct trusted key(s); "
                            f"{role.threshold} are required")
    return VerifiedEnvelope(envelope.payload, envelope.payload_type,
                            tuple(sorted(signers.values(), key=lambda k: k.keyid)))


def verify_canonical_envelope(data: bytes, role: KeyRole,
                              payload_type: str = MANIFEST_PAYLOAD_TYPE) -> VerifiedEnvelope:
    """A bundle's envelope: `parse_canonical_envelope` then `verify_envelope`."""
    return verify_envelope(parse_canonical_envelope(data), role, payload_type)


def _signing_key(role: KeyRole, signature: Signature, message: bytes, position: int) -> TrustedKey:
    claimed = role.key(signature.keyid) if signature.keyid else None
    if claimed is not None and claimed.verifies(signature.sig, message):
        return claimed
    actual = next((key for key in role.keys if key.verifies(signature.sig, message)), None)
    if actual is not None and signature.keyid:
        raise EnvelopeError("keyid-mismatch", f"signature {position} is by key {actual.keyid[:16]}... but claims "
                            f"keyid {signature.keyid[:16]}...")
    if actual is not None:
        return actual
    if signature.keyid and claimed is None:
        raise EnvelopeError("unknown-key", f"signature {position} is by key {signature.keyid[:16]}..., which is "
                            "not trusted to sign this")
    raise EnvelopeError("bad-signature", f"signature {position} does not verify against the payload")


def _load(data: bytes) -> dict[str, Any]:
    try:
        document = loads_strict(data)
    except StrictJSONError as exc:
        raise EnvelopeError("malformed", f"the envelope is not valid: {exc}") from None
    if not isinstance(document, dict):
        raise EnvelopeError("malformed", "the envelope is not a JSON object")
    return document


def _check_signature_count(document: dict[str, Any]) -> None:
    signatures = document.get("signatures")
    if isinstance(signatures, list) and len(signatures) > MAX_ENVELOPE_SIGNATURES:
        raise SizeLimitError("signatures", f"the envelope has {len(signatures)} signatures; the cap is "
                             f"{MAX_ENVELOPE_SIGNATURES}")


def _b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def _b64_standard(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("malformed", f"envelope {what} is not standard base64") from None


def _b64_any(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, padding optional; one alphabet per string, no stray bits."""
    if not text.isascii():
        raise EnvelopeError("malformed", f"envelope {what} is not base64")
    url_safe = "-" in text or "_" in text
    if url_safe and ("+" in text or "/" in text):
        raise EnvelopeError("malformed", f"envelope {what} mixes the standard and URL-safe base64 alphabets")
    unpadded = text.rstrip("=")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    if "=" in unpadded or len(unpadded) % 4 == 1 or text not in (unpadded, padded):
        raise EnvelopeError("malformed", f"envelope {what} is not base64 (bad length or padding)")
    try:
        data = base64.b64decode(padded, altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("malformed", f"envelope {what} is not base64") from None
    again = base64.urlsafe_b64encode(data) if url_safe else base64.standard_b64encode(data)
    if again.decode("ascii").rstrip("=") != unpadded:
        raise EnvelopeError("malformed", f"envelope {what} is not base64 (non-zero trailing bits)")
    return data
