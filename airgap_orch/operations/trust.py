"""Trust root operations: init, sign, rotate (files only), pin and show (the ledger).

The documents are TUF roots (bundle/trust.py builds, signs and verifies them). Each key holder signs on their own
machine: `init` and `rotate` write an unsigned root from PUBLIC keys, `sign` adds one signature per call.
`pin` stores a root in the ledger only after it verified: the first one against its own root threshold (the
operator compares the printed fingerprint with the issuer's, out of band), each later one as a rotation from
the pinned one (a threshold of the old root keys and of its own). Nothing here prints or prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .. import auth, clock, validation
from ..auth.keys import MAX_KEY_FILE_BYTES
from ..bundle import trust
from ..bundle.errors import RollbackError, RotationError
from ..bundle.keys import KeyRole
from ..bundle.limits import MAX_ROOT_BYTES
from ..errors import InvalidInput, NotFound, VerificationFailed
from ..ledger import Ledger, Transaction
from ..orchestrator import audit
from . import files

MAX_ROOT_LIFETIME = timedelta(days=3660)
ROLE_NAMES = trust.TOP_LEVEL_ROLES


# --- reading keys and roots ---------------------------------------------------------------------------------

def public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 PUBLIC key file; a private key file is refused without reading it as a key (a trust root is
    written from public keys only, so private keys never need to leave their holders' machines)."""
    data = files.read_capped(path, MAX_KEY_FILE_BYTES, "public key", hint="not a PEM key")
    if b"PRIVATE KEY-----" in data:
        raise InvalidInput(f"{path} holds a PRIVATE key; give the PUBLIC key (the .pub.pem beside it): trust roots "
                           "are written from public keys only")
    key = auth.load_public_key(data)
    return key


def role_of(paths: Sequence[Path], threshold: int, what: str) -> KeyRole:
    keys = [public_key(path) for path in paths]
    try:
        return KeyRole.of(keys, threshold)
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def read_root(path: Path) -> bytes:
    return files.read_capped(path, MAX_ROOT_BYTES, "trust root")


def trusted_root_file(path: Path) -> trust.TrustedRoot:
    """A root file that meets its own root threshold (exit 4 otherwise)."""
    return trust.load_trusted_root(read_root(path))


def fingerprint(root: trust.TrustedRoot) -> str:
    """SHA-256 of the root's canonical signed part: what its keys signed, whatever signatures it carries."""
    return hashlib.sha256(root.signed_bytes).hexdigest()


def expiry(text: str, now: datetime) -> datetime:
    """'365d'-style lifetime from now, or an ISO 8601 time; in the future and at most ~10 years away."""
    text = text.strip()
    if text[:1].isdigit() and text[-1:] in "smhd" and text[:-1].isdigit():
        moment = now + timedelta(seconds=validation.duration_seconds(text, "--expires", example="365d, 90d"))
    else:
        try:
            moment = clock.parse_iso(text)
        except ValueError:
            raise InvalidInput(f"--expires {text!r} is neither a lifetime like 365d nor an ISO 8601 time") from None
    if moment <= now:
        raise InvalidInput(f"--expires {text!r} is not in the future")
    if moment - now > MAX_ROOT_LIFETIME:
        raise InvalidInput(f"--expires {text!r} is more than {MAX_ROOT_LIFETIME.days} days away")
    return moment.replace(microsecond=0)


def site_roles(sites: Sequence[str], thresholds: Sequence[str]) -> dict[str, tuple[list[Path] | None, int | None]]:
    """--site SITE=PUB[,PUB] and --site-threshold SITE=N options as {site: (key paths or None, threshold or None)}."""
    found: dict[str, tuple[list[Path] | None, int | None]] = {}
    for text in sites:
        site, _, keys = text.partition("=")
        check_site_id(site, "--site")
        if not keys or any(not part for part in keys.split(",")):
            raise InvalidInput(f"--site {text!r} must be SITE=PUBLIC.pem[,PUBLIC.pem...]")
        if site in found:
            raise InvalidInput(f"--site {site} is given twice; list all its keys in one option, comma-separated")
        found[site] = ([Path(part) for part in keys.split(",")], None)
    for text in thresholds:
        site, _, number = text.partition("=")
        check_site_id(site, "--site-threshold")
        if not number.isdigit() or not 1 <= int(number) <= 32:
            raise InvalidInput(f"--site-threshold {text!r} must be SITE=N with N from 1 to 32")
        keys, previous = found.get(site, (None, None))
        if previous is not None:
            raise InvalidInput(f"--site-threshold {site} is given twice")
        found[site] = (keys, int(number))
    return found


def check_site_id(site: str, option: str) -> str:
    if not trust.SITE_ID.fullmatch(site):
        raise InvalidInput(f"{option}: site id {site[:70]!r} must be 1-64 letters, digits, '.', '_' or '-', starting "
                           "with a letter or digit")
    return site


# --- init, sign, rotate (files) -----------------------------------------------------------------------------

def init(out: Path, *, roles: Mapping[str, tuple[Sequence[Path], int]],
         sites: Mapping[str, tuple[list[Path] | None, int | None]], expires: str) -> dict[str, Any]:
    """Write version 1, unsigned, from public keys. `roles` maps each of root, targets, timestamp, snapshot to
    (public key paths, threshold)."""
    files.refuse_existing(out, "trust init")
    built = {name: role_of(paths, threshold, f"the {name} role") for name, (paths, threshold) in roles.items()}
    bound = {}
    for site, (paths, threshold) in sites.items():
        if paths is None:
            raise InvalidInput(f"--site-threshold {site}: no --site {site}=KEY.pub.pem gives that site's keys")
        bound[site] = role_of(paths, threshold or 1, f"site {site}")
    try:
        data = trust.build_root(root=built["root"], targets=built["targets"], timestamp=built["timestamp"],
                                snapshot=built["snapshot"], sites=bound, expires=expiry(expires, clock.now()))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    files.write_file(out, data)
    return {"root": str(out), **describe_document(data)}


def sign(path: Path, key: Ed25519PrivateKey, *, previous: Path | None = None, out: Path | None = None
         ) -> dict[str, Any]:
    """Add `key`'s signature to the root at `path` (written back to `path`, or to `out`)."""
    data = read_root(path)
    previous_root = trusted_root_file(previous) if previous is not None else None
    version = trust.root_version(data)
    if previous_root is not None and version != previous_root.version + 1:
        raise InvalidInput(f"{path} is version {version}; --previous {previous} is version {previous_root.version}, "
                           f"not {version - 1}")
    try:
        signed = trust.sign_root(data, key, previous_root)
    except InvalidInput as exc:
        hint = "" if previous is not None or version == 1 else (
            f"; to sign a rotation with a key of version {version - 1}, pass --previous ROOT-v{version - 1}.json")
        raise InvalidInput(f"{exc}{hint}") from None
    if out is None:
        files.write_file(path, signed, replace=True)
    else:
        files.write_file(out, signed)
    return {"root": str(out or path), **describe_document(signed, previous_root)}


def rotate(path: Path, out: Path, *, roles: Mapping[str, tuple[Sequence[Path] | None, int | None]],
           sites: Mapping[str, tuple[list[Path] | None, int | None]], remove_sites: Sequence[str],
           expires: str) -> dict[str, Any]:
    """Write version N+1, unsigned, from the trusted version N at `path`: the roles and sites given replace
    theirs (keys, threshold or both), the rest carry over; `remove_sites` unbinds sites."""
    files.refuse_existing(out, "trust rotate")
    current = trusted_root_file(path)
    changed: dict[str, KeyRole] = {}
    for name, (paths, threshold) in roles.items():
        if paths is None and threshold is None:
            continue
        old: KeyRole = getattr(current, name)
        changed[name] = (role_of(paths, threshold or old.threshold, f"the {name} role") if paths is not None
                         else _rethreshold(old, threshold or old.threshold, f"the {name} role"))
    bound = dict(current.sites)
    for site in remove_sites:
        check_site_id(site, "--remove-site")
        if site not in bound:
            raise InvalidInput(f"--remove-site {site}: trust root version {current.version} binds no such site")
        del bound[site]
    for site, (paths, threshold) in sites.items():
        if paths is not None:
            bound[site] = role_of(paths, threshold or 1, f"site {site}")
        elif site in bound:
            bound[site] = _rethreshold(bound[site], threshold or 1, f"site {site}")
        else:
            raise InvalidInput(f"--site-threshold {site}: no such site in version {current.version}; bind its keys "
                               f"with --site {site}=KEY.pub.pem")
    try:
        data = trust.rotate_root(current, expires=expiry(expires, clock.now()), sites=bound, **changed)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    files.write_file(out, data)
    return {"root": str(out), "rotates": current.version, **describe_document(data, current)}


def _rethreshold(role: KeyRole, threshold: int, what: str) -> KeyRole:
    changed = KeyRole(role.keys, threshold)
    try:
        changed.check()
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    return changed


# --- pin and show (the ledger) ------------------------------------------------------------------------------

def pinned(ledger: Ledger) -> trust.TrustedRoot | None:
    """The newest pinned root, checked again against its own root threshold (a row altered in the ledger file
    fails here, exit 4); None when nothing is pinned."""
    rows = ledger.read().fetch("trust_root_latest")
    if not rows:
        return None
    root = trust.load_trusted_root(rows[0][1].encode("utf-8"))
    if root.version != rows[0][0] or fingerprint(root) != rows[0][2]:
        raise VerificationFailed(f"the pinned trust root row for version {rows[0][0]} does not match its document; "
                                 "the ledger's trust_roots table was altered")
    return root


def pin(ledger: Ledger, paths: Sequence[Path | bytes], *, reason: str | None = None, actor: str = "cli",
        now: datetime | None = None) -> dict[str, Any]:
    """Verify and pin the roots in `paths` (files, or documents as bytes: one, or a chain of rotations in any order)
    and audit it. With a root
    pinned already, each must be the next version, signed by a threshold of the pinned root keys and of its own;
    otherwise the lowest version must meet its own threshold and the rest rotate from it. The newest must not be
    expired. A root already pinned is a no-op; an older one is refused (exit 5)."""
    reason = validation.text(reason, validation.MAX_REASON_CHARS, "--reason")
    now = now or clock.now()
    documents = sorted(((trust.root_version(data), data)
                        for data in (path if isinstance(path, bytes) else read_root(path) for path in paths)),
                       key=lambda item: item[0])
    current = before = pinned(ledger)
    new: list[trust.TrustedRoot] = []
    for version, data in documents:
        if current is None:
            current = trust.load_trusted_root(data)
            new.append(current)
            continue
        if version < current.version:
            raise RollbackError("root-version", f"trust root version {version} is older than the pinned version "
                                f"{current.version}; a pinned root is never replaced by an older one")
        if version == current.version:
            if trust.load_trusted_root(data).signed_bytes != current.signed_bytes:
                raise RotationError("fork", f"trust root version {version} differs from the version {version} "
                                    "already pinned; two different roots claim one version")
            continue
        current = trust.update_root(current, data)
        new.append(current)
    assert current is not None
    trust.check_not_expired(current, now)
    result = describe(current)
    if not new:
        return {**result, "pinned": False, "message": f"trust root version {current.version} is already pinned"}
    with ledger.transaction() as tx:
        resets = store_roots(tx, before, new, now=now, pinned_by=actor)
        audit.append(tx, "trust.pin", actor=actor, reason=reason, target=f"trust-root-{current.version}",
                     details={"versions": [root.version for root in new], "fingerprint": fingerprint(current),
                              "expires": clock.iso(current.expires), "floors_reset": resets})
    message = (f"pinned trust root version {current.version}; compare its fingerprint with the issuer's out of "
               "band")
    if resets:
        message += "; " + floors_reset_message(resets)
    return {**result, "pinned": True, "pinned_versions": [root.version for root in new], "floors_reset": resets,
            "message": message}


def replaced_sites(before: trust.TrustedRoot | None, after: trust.TrustedRoot) -> list[str]:
    """The source sites whose bundle keys the rotation from `before` to `after` replaced: a key of the site's
    binding in `before` is gone in `after` (or the site is). Keys only added replace nothing."""
    if before is None:
        return []
    replaced = []
    for site, role in sorted(before.sites.items()):
        kept = after.sites.get(site)
        if kept is None or not {key.public_bytes for key in role.keys} <= {key.public_bytes for key in kept.keys}:
            replaced.append(site)
    return replaced


def store_roots(tx: Transaction, before: trust.TrustedRoot | None, roots: Sequence[trust.TrustedRoot], *,
                now: datetime, pinned_by: str) -> list[dict[str, Any]]:
    """Pin `roots` (each verified: a chain of rotations from `before`, or a first root) and recover from a
    fast-forward attack as TUF's client workflow does (specification 5.3.11): for each source site whose keys a
    rotation replaced, the imports that set its anti-rollback floor move to bundle_imports_superseded, so its
    floor starts again from 0 under the new keys (the replaced keys may have signed a bundle with a sequence far
    ahead of the site's real one). Returns one entry per reset: site, root version, the floor it had."""
    resets = []
    previous = before
    for root in roots:
        tx.execute("trust_root_insert", version=root.version, root_json=root.data.decode("utf-8"),
                   fingerprint=fingerprint(root), expires_at=root.expires, pinned_at=now, pinned_by=pinned_by)
        for site in replaced_sites(previous, root):
            floor = int(tx.fetch("bundle_import_floor", source_site=site)[0][0])
            if floor:
                tx.execute("bundle_import_supersede", source_site=site, root_version=root.version,
                           superseded_at=now)
                tx.execute("bundle_import_supersede_delete", source_site=site)
            resets.append({"site": site, "root_version": root.version, "floor_before": floor})
        previous = root
    return resets


def floors_reset_message(resets: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"trust root version {reset['root_version']} replaced the keys of site {reset['site']}: its "
                     f"sequence floor {reset['floor_before']} is reset to 0 (fast-forward recovery)"
                     for reset in resets)


def show(ledger: Ledger, *, now: datetime | None = None) -> dict[str, Any]:
    """The pinned root: version, fingerprint, expiry, roles and sites."""
    root = pinned(ledger)
    if root is None:
        raise NotFound("no trust root is pinned in this ledger; pin one with `airgap-orch trust pin ROOT.json`")
    row = ledger.read().fetch("trust_root_latest")[0]
    moment = now or clock.now()
    return {**describe(root), "expired": root.is_expired(moment), "pinned_at": clock.iso(row[4]),
            "pinned_by": row[5]}


def describe(root: trust.TrustedRoot) -> dict[str, Any]:
    return {
        "version": root.version,
        "fingerprint": fingerprint(root),
        "expires": clock.iso(root.expires),
        "roles": {name: _role(getattr(root, name)) for name in ROLE_NAMES},
        "sites": {site: _role(role) for site, role in sorted(root.sites.items())},
    }


def describe_document(data: bytes, previous: trust.TrustedRoot | None = None) -> dict[str, Any]:
    """What a root file holds and how far it is signed (its signatures checked, nothing trusted)."""
    status = trust.root_signature_status(data, previous)
    metadata_root = trust.inspect_root(data)
    signatures: dict[str, Any] = {"by_own_root_keys": status.by_self, "own_threshold": status.self_threshold}
    if status.by_previous is not None:
        signatures.update(by_previous_root_keys=status.by_previous, previous_threshold=status.previous_threshold)
    return {**describe(metadata_root), "signatures": signatures, "complete": status.complete}


def _role(role: KeyRole) -> dict[str, Any]:
    return {"threshold": role.threshold, "keyids": list(role.keyids)}

