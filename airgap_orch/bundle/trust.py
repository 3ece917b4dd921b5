"""The trust root: a TUF root.json (python-tuf's Metadata API), its rotation, and which keys speak for which site.

Document. A trust root is plain TUF root metadata, loadable with `Metadata.from_bytes` and verifiable with
`verify_delegate("root", ...)` in python-tuf:
- top-level roles `root` (signs roots), `targets` (delegator of the site roles below), `timestamp` (signs
  time anchors) and `snapshot` (TUF requires it; it may share keys), each with keyids and a threshold;
- `keys`: Ed25519 keys only, each under the keyid TUF computes for its entry (`keys.tuf_keyid`);
- `version`, `expires`, `consistent_snapshot: false` (no TUF repository sits behind it);
- `x-airgap-orch-sites` (inside `signed`, so covered by the root signatures): the site bindings, written as a
  TUF `delegations` object, i.e. one delegated targets role per source site:
      {"keys": {keyid: key, ...},
       "roles": [{"name": "<site>", "keyids": [...], "threshold": n, "terminating": true,
                  "paths": ["<site>/*"]}, ...]}
  python-tuf reads it with `Delegations.from_dict`, and `Targets(delegations=...).verify_delegate(site, ...)`
  checks a site's signatures with it. A bundle from source site S must be signed by S's threshold of S's
  keys, and by no other key (dsse.verify_envelope), so one site's key never speaks for another site.
  The bindings ride in root rather than in a separate targets.json so the one document that bundles
  already carry (trust/root-<N>.json) and the one ceremony (sign, rotate) cover them: binding a key to a
  site takes the root keys' threshold, old and new.

Verification follows TUF's client workflow for root (specification section 5.3) on bytes, with no I/O:
- `load_trusted_root`: the pinned root must be well formed and meet its own root threshold (5.2). Its expiry
  is not judged here: an expired trusted root may still load its successors.
- `update_root`: one rotation step. The new root must meet the TRUSTED root's root threshold (5.3.4), have
  version exactly trusted + 1 (5.3.5; lower is a rollback, higher a gap) and meet its OWN root threshold.
- `verify_root_chain`: applies the steps in order and then judges the final root's expiry (5.3.10, the
  freeze check) against `now`, which the caller sets to the later of the local clock and the latest
  verified time anchor (`reference_time`).
Every threshold counts distinct public keys, every keyid is recomputed from its key entry (python-tuf counts
keyids and trusts them as written; see keys.py), and anything python-tuf would drop or re-spell (unknown
fields, duplicate JSON keys, signed content that does not round-trip) is refused.

Writing: `build_root` (version 1 from PUBLIC keys), `rotate_root` (version N+1 from a trusted root), and
`sign_root`, which adds one signature per call so each key holder signs on their own machine.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.exceptions import FormatError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Delegations, Metadata, Role, Root
from tuf.api.serialization import SerializationError
from tuf.api.serialization.json import JSONSerializer

from ..errors import InvalidInput
from ._json import StrictJSONError, loads_strict
from .errors import EnvelopeError, ExpiredError, RollbackError, RotationError, SchemaError, SizeLimitError
from .keys import KeyFormatError, KeyRole, TrustedKey, key_from_tuf, trusted_key
from .limits import MAX_ROOT_BYTES, MAX_ROOTS_PER_BUNDLE, MAX_SITES

TOP_LEVEL_ROLES = ("root", "targets", "timestamp", "snapshot")
SITES_FIELD = "x-airgap-orch-sites"
SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SERIALIZER = JSONSerializer(compact=False)  # sorted keys, one-space indent: stable and readable


@dataclass(frozen=True)
class TrustedRoot:
    """A root whose structure checked out and whose signatures met its thresholds (see the module docstring
    for which thresholds). `expires` is naive UTC, like every time in this project."""

    version: int
    expires: datetime
    root: KeyRole
    targets: KeyRole
    timestamp: KeyRole
    snapshot: KeyRole
    sites: Mapping[str, KeyRole]  # read-only
    signed_bytes: bytes  # the canonical JSON the signatures cover
    data: bytes  # the document exactly as verified (what to store as root-<version>.json)

    def site_role(self, site_id: str) -> KeyRole:
        """The keys and threshold that may sign bundles from `site_id`; EnvelopeError dsse:unknown-site."""
        role = self.sites.get(site_id)
        if role is None:
            raise EnvelopeError("unknown-site", f"the trust root (version {self.version}) binds no keys to "
                                f"source site {site_id[:64]!r}; its bundles cannot be verified")
        return role

    def is_expired(self, now: datetime) -> bool:
        return _naive_utc(now) >= self.expires


@dataclass(frozen=True)
class RootSignatures:
    """How far a root is signed: distinct valid signatures of the previous root's root keys (for a rotation)
    and of its own root keys, against the thresholds."""

    version: int
    by_previous: int | None  # None for a root without a previous one (version 1 or a pinned root)
    previous_threshold: int | None
    by_self: int
    self_threshold: int

    @property
    def complete(self) -> bool:
        previous_ok = self.by_previous is None or self.by_previous >= (self.previous_threshold or 0)
        return previous_ok and self.by_self >= self.self_threshold


# --- writing ----------------------------------------------------------------------------------------------

def build_root(*, root: KeyRole, targets: KeyRole, timestamp: KeyRole, snapshot: KeyRole,
               sites: Mapping[str, KeyRole], expires: datetime, version: int = 1) -> bytes:
    """An unsigned root.json from public keys; ValueError for a threshold that cannot be met, an oversized
    role or a bad site id."""
    roles = {"root": root, "targets": targets, "timestamp": timestamp, "snapshot": snapshot}
    for name, role in roles.items():
        _check_role(role, name)
    if len(sites) > MAX_SITES:
        raise ValueError(f"a trust root binds at most {MAX_SITES} sites")
    site_keys: dict[str, Any] = {}
    site_roles = []
    for site_id in sorted(sites):
        if not SITE_ID.fullmatch(site_id):
            raise ValueError(f"site id {site_id!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit")
        role = sites[site_id]
        _check_role(role, f"site {site_id}")
        site_keys.update({key.keyid: key.to_tuf() for key in role.keys})
        site_roles.append({"name": site_id, "keyids": list(role.keyids), "threshold": role.threshold,
                           "terminating": True, "paths": [f"{site_id}/*"]})
    keys = {key.keyid: SSlibKey(key.keyid, "ed25519", "ed25519", {"public": key.public_hex})
            for role in roles.values() for key in role.keys}
    signed = Root(version=version, expires=_aware_utc(expires), keys=keys,
                  roles={name: Role(list(role.keyids), role.threshold) for name, role in roles.items()},
                  consistent_snapshot=False,
                  unrecognized_fields={SITES_FIELD: {"keys": site_keys, "roles": site_roles}})
    return Metadata(signed).to_bytes(_SERIALIZER)


def rotate_root(current: TrustedRoot, *, expires: datetime, root: KeyRole | None = None,
                targets: KeyRole | None = None, timestamp: KeyRole | None = None,
                snapshot: KeyRole | None = None, sites: Mapping[str, KeyRole] | None = None) -> bytes:
    """Unsigned version current + 1: the given roles and sites replace the current ones, the rest carry over.
    It becomes valid once a threshold of the CURRENT root keys and one of its OWN root keys have signed it."""
    return build_root(root=root or current.root, targets=targets or current.targets,
                      timestamp=timestamp or current.timestamp, snapshot=snapshot or current.snapshot,
                      sites=current.sites if sites is None else sites, expires=expires,
                      version=current.version + 1)


def sign_root(data: bytes, private_key: Ed25519PrivateKey, previous: TrustedRoot | None = None) -> bytes:
    """`data` with one more signature, by `private_key`, which must be a root key of this root or of
    `previous` (the root it rotates from); InvalidInput otherwise. A key's earlier signature is replaced."""
    metadata, parsed = _parse(data)
    wanted = trusted_key(private_key.public_key()).public_bytes
    candidates = [*parsed.root.keys, *(previous.root.keys if previous else ())]
    key = next((k for k in candidates if k.public_bytes == wanted), None)
    if key is None:
        versions = f"version {parsed.version}" + (f" or {previous.version}" if previous else "")
        raise InvalidInput(f"this key is not a root key of trust root {versions}; it cannot sign it")
    signer = CryptoSigner(private_key, SSlibKey(key.keyid, "ed25519", "ed25519", {"public": key.public_hex}))
    metadata.sign(signer, append=True)
    return metadata.to_bytes(_SERIALIZER)


# --- verifying --------------------------------------------------------------------------------------------

def load_trusted_root(data: bytes) -> TrustedRoot:
    """The pinned root: well formed and signed by a threshold of its own root keys (RotationError
    rotation:threshold-self otherwise). Expiry is not judged (see verify_root_chain)."""
    metadata, root = _parse(data)
    _require_threshold(root.root, metadata, root.signed_bytes, "threshold-self",
                       f"trust root version {root.version} is not signed by a threshold of its own root keys")
    return root


def update_root(trusted: TrustedRoot, data: bytes) -> TrustedRoot:
    """One rotation step from `trusted` (TUF 5.3.4-5.3.5): signed by a threshold of the trusted root keys,
    version exactly trusted + 1, signed by a threshold of its own root keys."""
    metadata, new = _parse(data)
    _require_threshold(trusted.root, metadata, new.signed_bytes, "threshold-trusted",
                       f"trust root version {new.version} is not signed by a threshold of the root keys of "
                       f"trusted version {trusted.version}")
    if new.version <= trusted.version:
        raise RollbackError("root-version", f"trust root version {new.version} is not newer than trusted "
                            f"version {trusted.version}")
    if new.version != trusted.version + 1:
        raise RotationError("version-gap", f"trust root version {new.version} does not follow trusted version "
                            f"{trusted.version}; version {trusted.version + 1} is missing")
    _require_threshold(new.root, metadata, new.signed_bytes, "threshold-self",
                       f"trust root version {new.version} is not signed by a threshold of its own root keys")
    return new


def verify_root_chain(pinned: TrustedRoot, new_roots: Sequence[bytes], now: datetime) -> TrustedRoot:
    """Walk `new_roots` (ascending versions, as a bundle carries them) from `pinned` and return the newest
    trusted root, which must not be expired at `now` (ExpiredError expiry:root).

    Roots not newer than the trusted one are skipped, except that a root with the trusted version must have
    the same signed content (RotationError rotation:fork: two different roots claim one version)."""
    if len(new_roots) > MAX_ROOTS_PER_BUNDLE:
        raise SizeLimitError("roots", f"{len(new_roots)} trust roots; a bundle carries at most "
                             f"{MAX_ROOTS_PER_BUNDLE}")
    trusted = pinned
    for data in new_roots:
        _metadata, candidate = _parse(data)
        if candidate.version < trusted.version:
            continue
        if candidate.version == trusted.version:
            if candidate.signed_bytes != trusted.signed_bytes:
                raise RotationError("fork", f"a trust root claims version {candidate.version} but differs from "
                                    "the trusted root of that version")
            continue
        trusted = update_root(trusted, data)
    check_not_expired(trusted, now)
    return trusted


def check_not_expired(root: TrustedRoot, now: datetime) -> None:
    """ExpiredError expiry:root when `now` (naive or aware UTC) is at or past the root's expiry."""
    if root.is_expired(now):
        raise ExpiredError("root", f"trust root version {root.version} expired at {root.expires.isoformat()}Z "
                           f"(reference time {_naive_utc(now).isoformat()}Z); rotate the trust root")


def reference_time(local_now: datetime, latest_anchor: datetime | None) -> datetime:
    """The time expiry is judged against: the later of the local clock and the latest verified time anchor,
    so winding the local clock back does not revive expired metadata. Naive UTC."""
    local = _naive_utc(local_now)
    return local if latest_anchor is None else max(local, _naive_utc(latest_anchor))


def root_signature_status(data: bytes, previous: TrustedRoot | None = None) -> RootSignatures:
    """How many distinct valid root-key signatures `data` carries, of its own keys and of `previous`'s."""
    metadata, root = _parse(data)
    pairs = _signature_pairs(metadata)
    by_self = len({k.public_bytes for k in root.root.verified_signers(root.signed_bytes, pairs)})
    by_previous = None
    if previous is not None:
        by_previous = len({k.public_bytes for k in previous.root.verified_signers(root.signed_bytes, pairs)})
    return RootSignatures(root.version, by_previous, previous.root.threshold if previous else None,
                          by_self, root.root.threshold)


def inspect_root(data: bytes) -> TrustedRoot:
    """A root's structure with its signatures NOT checked: for showing a root that is being signed (next to
    `root_signature_status`), never for trusting it. SchemaError, RotationError or SizeLimitError as `_parse`."""
    return _parse(data)[1]


def root_version(data: bytes) -> int:
    """The version a well-formed root document claims (its signatures are not checked); SchemaError or
    SizeLimitError for a document that is not a trust root."""
    return _parse(data)[1].version


# --- parsing ----------------------------------------------------------------------------------------------

def _parse(data: bytes) -> tuple[Metadata[Root], TrustedRoot]:
    """Structure only (no signature checks): size, strict JSON, python-tuf's model, our stricter rules."""
    if len(data) > MAX_ROOT_BYTES:
        raise SizeLimitError("root", f"a trust root is {len(data)} bytes; the cap is {MAX_ROOT_BYTES}")
    try:
        document = loads_strict(data)
    except StrictJSONError as exc:
        raise SchemaError("root", f"the trust root is not valid: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"signed", "signatures"}:
        raise SchemaError("root", "a trust root has exactly the fields signed and signatures")
    try:
        metadata: Metadata[Root] = Metadata.from_dict(copy.deepcopy(document))
        signed_bytes = metadata.signed_bytes
        canonical = encode_canonical(document["signed"])
    except (ValueError, KeyError, TypeError, AttributeError, FormatError, SerializationError) as exc:
        raise SchemaError("root", f"the trust root is not TUF root metadata: {str(exc)[:160]}") from None
    if not isinstance(metadata.signed, Root):
        raise SchemaError("root", f"the document is TUF {metadata.signed.type} metadata, not root")
    if canonical is None or canonical.encode("utf-8") != signed_bytes:
        raise SchemaError("root", "the trust root's signed part does not round-trip through python-tuf "
                          "(a field it drops or re-spells)")
    signed = metadata.signed
    if not isinstance(document["signed"].get("version"), int) or isinstance(document["signed"]["version"], bool):
        raise SchemaError("root", "the trust root's version must be an integer")
    unknown = set(signed.unrecognized_fields) - {SITES_FIELD}
    if unknown:
        raise SchemaError("root", f"the trust root has unknown fields {sorted(unknown)[:5]}")
    if any(sig.unrecognized_fields for sig in metadata.signatures.values()):
        raise SchemaError("root", "a trust root signature has fields other than keyid and sig")
    keys = {keyid: _key(keyid, key.to_dict()) for keyid, key in signed.keys.items()}
    roles = {}
    for name in TOP_LEVEL_ROLES:
        role = signed.roles[name]
        if role.unrecognized_fields:
            raise SchemaError("root", f"the {name} role has unknown fields")
        roles[name] = _role(role.keyids, role.threshold, keys, f"the {name} role")
    return metadata, TrustedRoot(
        version=signed.version, expires=_naive_utc(signed.expires), sites=MappingProxyType(_sites(signed)),
        signed_bytes=signed_bytes,
        data=bytes(data), **roles)


def _sites(signed: Root) -> dict[str, KeyRole]:
    raw = signed.unrecognized_fields.get(SITES_FIELD)
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) != {"keys", "roles"}:
        raise SchemaError("root", f"{SITES_FIELD} must be a TUF delegations object with keys and roles")
    try:
        Delegations.from_dict(copy.deepcopy(raw))  # python-tuf must read it as delegations too
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SchemaError("root", f"{SITES_FIELD} is not TUF delegations: {str(exc)[:160]}") from None
    if not isinstance(raw["keys"], dict) or not isinstance(raw["roles"], list) or len(raw["roles"]) > MAX_SITES:
        raise SchemaError("root", f"{SITES_FIELD} must hold a keys map and at most {MAX_SITES} roles")
    keys = {keyid: _key(keyid, entry) for keyid, entry in raw["keys"].items()}
    sites: dict[str, KeyRole] = {}
    for entry in raw["roles"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not SITE_ID.fullmatch(name) or name in sites:
            raise SchemaError("root", f"site role name {str(name)[:64]!r} is not a valid, unique site id")
        expected = {"name", "keyids", "threshold", "terminating", "paths"}
        if set(entry) != expected or entry["terminating"] is not True or entry["paths"] != [f"{name}/*"]:
            raise SchemaError("root", f"site role {name!r} must have exactly {sorted(expected)}, terminating true "
                              f"and paths [\"{name}/*\"]")
        sites[name] = _role(entry["keyids"], entry["threshold"], keys, f"site {name}")
    return sites


def _key(keyid: str, entry: Any) -> TrustedKey:
    try:
        return key_from_tuf(keyid, entry)
    except KeyFormatError as exc:
        raise RotationError(exc.detail, f"trust root {exc}") from None


def _role(keyids: Any, threshold: Any, keys: Mapping[str, TrustedKey], what: str) -> KeyRole:
    if not isinstance(keyids, list) or not all(isinstance(k, str) for k in keyids) or len(set(keyids)) != len(keyids):
        raise SchemaError("root", f"{what} must list distinct keyids")
    missing = [keyid for keyid in keyids if keyid not in keys]
    if missing:
        raise SchemaError("root", f"{what} names keyid {missing[0][:16]}..., which the trust root does not define")
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise SchemaError("root", f"{what} threshold must be an integer")
    role = KeyRole(tuple(keys[keyid] for keyid in keyids), threshold)
    try:
        role.check()
    except ValueError as exc:
        raise SchemaError("root", f"{what}: {exc}") from None
    return role


def _check_role(role: KeyRole, what: str) -> None:
    try:
        role.check()
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _signature_pairs(metadata: Metadata[Root]) -> list[tuple[str, bytes]]:
    pairs = []
    for keyid, signature in metadata.signatures.items():
        try:
            pairs.append((keyid, bytes.fromhex(signature.signature)))
        except ValueError:
            continue  # not hex: no key verifies it, as TUF treats an invalid signature
    return pairs


def _require_threshold(role: KeyRole, metadata: Metadata[Root], signed_bytes: bytes, detail: str,
                       message: str) -> None:
    signers = role.verified_signers(signed_bytes, _signature_pairs(metadata))
    if not role.is_met_by(signers):
        count = len({k.public_bytes for k in signers})
        raise RotationError(detail, f"{message} ({count} of {role.threshold} distinct keys)")


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _aware_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
