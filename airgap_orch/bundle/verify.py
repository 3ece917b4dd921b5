"""THE bundle verification sequence: bytes and a pinned trust root in, a `VerifiedBundle` out.

Like python-tuf's TrustedMetadataSet, the steps run in one fixed order, each raises one typed error from
bundle/errors.py, and no step reads anything an earlier step has not verified:

 1. size        the archive is within the size cap.
 2. structure   strict canonical tar (tarfmt.read_index), member order envelope.dsse.json,
                trust/root-<N>.json (ascending N), time-anchor.json, data members; envelope, root and anchor
                members within their caps (their sizes come from verified headers, before reading them).
 3. trust-root  the chain from the PINNED root through the bundle's roots (trust.verify_root_chain: each
                rotation signed by the old and the new root threshold, version exactly +1); the final root not
                expired at max(now, latest anchor). A root that only travels in the bundle is never trusted
                on its own, and each root member's name must match its version.
 4. signature   the canonical envelope; every signature verifies under a key of ONE site's role in the
                verified root and reaches that site's threshold (distinct keys, keyids recomputed), and no key
                signs twice. The sites whose role accepts the signatures are the candidate source sites.
 5. manifest    the verified payload against schemas/bundle-manifest.schema.json and its rules.
 6. source-site the manifest's source_site is one of the candidate sites: the claim is read only after the
                signatures verified, and a key of site A never makes a bundle claiming site B verify.
 7. members     the archive holds exactly the manifest's members in manifest order (plus envelope and anchor),
                each of the listed size and sha256 (streamed in bounded chunks), and the RFC 6962 Merkle root.
 8. time-anchor signed by the verified root's timestamp role, bound to this manifest, time == created_at.
 9. staleness   anchor.assess_time / enforce_time; then the root must not be expired at the anchor's time.
10. target      the manifest's target_site is the expected one (skipped when none is given: `--trust`).
11. tables      (only when table schemas are given) every Parquet member's footer and page headers against
                the manifest, the caps and the table schema; no page is decoded.

The bundle is read through bounded positional reads (bytes or a seekable file); reading the same bytes again
later (to import them) is only safe if nobody can change the file in between: verify a private copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from . import trust
from .anchor import (
    DEFAULT_STALENESS,
    StalenessPolicy,
    TimeAnchor,
    TimeVerdict,
    assess_time,
    enforce_time,
    verify_anchor,
)
from .dsse import MANIFEST_PAYLOAD_TYPE, Envelope, VerifiedEnvelope, parse_canonical_envelope, verify_envelope
from .errors import (
    BundleError,
    EnvelopeError,
    MerkleError,
    PayloadError,
    RotationError,
    SizeLimitError,
    TarFormatError,
    TargetError,
)
from .keys import KeyRole
from .limits import (
    DEFAULT_PARQUET_LIMITS,
    DEFAULT_TAR_LIMITS,
    MAX_ENVELOPE_BYTES,
    MAX_ROOT_BYTES,
    MAX_ROOTS_PER_BUNDLE,
    MAX_TIME_ANCHOR_BYTES,
    ParquetLimits,
    TarLimits,
)
from .manifest import ANCHOR_MEMBER, ENVELOPE_MEMBER, ROOT_MEMBER, Manifest, ManifestMember, format_time, parse_manifest
from .merkle import LEAF_PREFIX, MerkleTree
from .tarfmt import TarIndex, TarMember, iter_member_chunks, open_member, read_index, read_member
from .trust import TrustedRoot

if TYPE_CHECKING:
    import pyarrow as pa

    from .parquet_check import ParquetFacts

T = TypeVar("T")
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One step's outcome, for `bundle verify` to print."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifiedMember:
    """A manifest member whose bytes matched its size and sha256. Read it with `tarfmt.open_member(source,
    member.tar)` or `iter_member_chunks`."""

    entry: ManifestMember
    tar: TarMember

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def data_offset(self) -> int:
        return self.tar.data_offset

    @property
    def size(self) -> int:
        return self.tar.size


@dataclass(frozen=True)
class VerifiedBundle:
    bundle_id: str  # content id from the manifest: the "already imported?" key (signatures do not change it)
    payload_sha256: str  # SHA-256 of the signed manifest payload
    manifest: Manifest
    root: TrustedRoot  # the newest verified root (rotated from the pinned one when the bundle carried roots)
    new_roots: tuple[bytes, ...]  # verified root documents newer than the pinned one, ascending: store them
    source_site: str
    signers: tuple[str, ...]  # keyids of the distinct source-site keys that signed
    anchor: TimeAnchor
    time: TimeVerdict
    members: tuple[VerifiedMember, ...]  # every manifest member, in manifest order
    archive_size: int
    checks: tuple[Check, ...]
    tables: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # path -> ParquetFacts
    # False only with verify_bundle(require_threshold=False) (`bundle sign`) when the source site's threshold is
    # not met yet: such a bundle is NOT verified for import.
    threshold_met: bool = True
    site_threshold: int = 1  # the source site's threshold in `root`

    @property
    def data_members(self) -> tuple[VerifiedMember, ...]:
        return tuple(member for member in self.members if not member.entry.is_trust_root)

    def member(self, path: str) -> VerifiedMember:
        for member in self.members:
            if member.path == path:
                return member
        raise KeyError(path)


def verify_bundle(source: bytes | BinaryIO, *, pinned_root: bytes, target_site: str | None, now: datetime,
                  staleness: StalenessPolicy = DEFAULT_STALENESS, latest_anchor: datetime | None = None,
                  table_schemas: Mapping[str, pa.Schema | Sequence[pa.Schema]] | None = None,
                  limits: TarLimits = DEFAULT_TAR_LIMITS,
                  parquet_limits: ParquetLimits = DEFAULT_PARQUET_LIMITS,
                  require_threshold: bool = True) -> VerifiedBundle:
    """Run the verification sequence (module docstring). `now` is the local clock (naive UTC);
    `latest_anchor` the latest verified anchor time this site stored. Raises the first failing step's
    BundleError with `checks` set to the steps so far, the failed one last.

    `require_threshold=False` is for `bundle sign` only: every step runs as usual, every signature must still
    verify under a key of one site, but fewer than that site's threshold may have signed (the result says
    `threshold_met`), so a key holder can check a bundle before adding the next signature. Never import such
    a result."""
    return _Verification(source, limits, require_threshold).run(
        pinned_root=pinned_root, target_site=target_site, now=now, staleness=staleness,
        latest_anchor=latest_anchor, table_schemas=table_schemas, parquet_limits=parquet_limits)


class _Verification:
    def __init__(self, source: bytes | BinaryIO, limits: TarLimits, require_threshold: bool = True):
        self.source, self.limits, self.require_threshold = source, limits, require_threshold
        self.checks: list[Check] = []
        self.signed_manifest: dict[str, Any] | None = None  # once the source-site step passed (BundleError)

    def step(self, name: str, action: Callable[[], tuple[T, str]]) -> T:
        try:
            result, detail = action()
        except BundleError as exc:
            self.checks.append(Check(name, False, str(exc)))
            exc.checks = tuple(self.checks)
            exc.signed_manifest = self.signed_manifest
            raise
        self.checks.append(Check(name, True, detail))
        return result

    def run(self, *, pinned_root: bytes, target_site: str | None, now: datetime, staleness: StalenessPolicy,
            latest_anchor: datetime | None, table_schemas: Mapping[str, pa.Schema | Sequence[pa.Schema]] | None,
            parquet_limits: ParquetLimits) -> VerifiedBundle:
        self.step("size", self._size)
        index = self.step("structure", self._structure)
        roots = _root_members(index)
        root, new_roots = self.step("trust-root", lambda: self._trust(pinned_root, roots, now, latest_anchor))
        by_site = self.step("signature", lambda: self._signature(index.members[0], root))
        manifest = self.step("manifest", lambda: _manifest(next(iter(by_site.values())).payload))
        site, signed = self.step("source-site", lambda: _source_site(manifest, by_site))
        self.signed_manifest = {"source_site": site, "sequence": manifest.sequence, "bundle_id": manifest.bundle_id,
                                "payload_sha256": manifest.payload_sha256}
        members = self.step("members", lambda: self._members(index, manifest))
        anchor = self.step("time-anchor", lambda: self._anchor(index, root, manifest))
        verdict = self.step("staleness", lambda: _staleness(anchor, root, now, latest_anchor, staleness))
        self.step("target", lambda: _target(manifest, target_site))
        tables: dict[str, Any] = {}
        if table_schemas is not None:
            tables = self.step("tables", lambda: self._tables(members, table_schemas, parquet_limits))
        return VerifiedBundle(
            bundle_id=manifest.bundle_id, payload_sha256=manifest.payload_sha256, manifest=manifest, root=root,
            new_roots=new_roots, source_site=site, signers=tuple(key.keyid for key in signed.signers),
            anchor=anchor, time=verdict, members=members, archive_size=index.archive_size,
            checks=tuple(self.checks), tables=MappingProxyType(tables),
            threshold_met=len(signed.signers) >= root.sites[site].threshold, site_threshold=root.sites[site].threshold)

    # --- 1. size, 2. structure ------------------------------------------------------------------------------

    def _size(self) -> tuple[int, str]:
        if isinstance(self.source, bytes | bytearray | memoryview):
            size = len(self.source)
        else:
            size = self.source.seek(0, 2)
        if size > self.limits.max_archive_bytes:
            raise SizeLimitError("archive", f"the bundle is {size} bytes; the cap is {self.limits.max_archive_bytes}")
        return size, f"{size} bytes (cap {self.limits.max_archive_bytes})"

    def _structure(self) -> tuple[TarIndex, str]:
        index = read_index(self.source, self.limits)
        names = index.names
        if not names or names[0] != ENVELOPE_MEMBER:
            raise TarFormatError("member-order", f"the first member must be {ENVELOPE_MEMBER}, not "
                                 f"{(names or ('nothing',))[0]!r}")
        position, versions = 1, []
        while position < len(names) and names[position].startswith("trust/"):
            match = ROOT_MEMBER.fullmatch(names[position])
            if match is None:
                raise TarFormatError("member-order", f"member {names[position]!r}: the trust/ folder holds only "
                                     "root-<N>.json")
            versions.append(int(match.group(1)))
            position += 1
        if any(later <= earlier for earlier, later in zip(versions, versions[1:], strict=False)):
            raise TarFormatError("member-order", f"trust roots must come in increasing versions, not {versions[:10]}")
        if position >= len(names) or names[position] != ANCHOR_MEMBER:
            raise TarFormatError("member-order", f"{ANCHOR_MEMBER} must follow the envelope and the trust roots")
        for name in names[position + 1:]:
            if name in (ENVELOPE_MEMBER, ANCHOR_MEMBER) or name.startswith("trust/"):
                raise TarFormatError("member-order", f"member {name!r} is out of place: data members come last")
        if len(versions) > MAX_ROOTS_PER_BUNDLE:
            raise SizeLimitError("roots", f"the bundle carries {len(versions)} trust roots; the cap is "
                                 f"{MAX_ROOTS_PER_BUNDLE}")
        _cap(index.members[0], MAX_ENVELOPE_BYTES, "envelope")
        for member in index.members[1:position]:
            _cap(member, MAX_ROOT_BYTES, "root")
        _cap(index.members[position], MAX_TIME_ANCHOR_BYTES, "time-anchor")
        return index, f"{len(names)} members in canonical order, {len(versions)} trust root(s)"

    # --- 3. trust root --------------------------------------------------------------------------------------

    def _trust(self, pinned_root: bytes, roots: tuple[TarMember, ...], now: datetime,
               latest_anchor: datetime | None) -> tuple[tuple[TrustedRoot, tuple[bytes, ...]], str]:
        pinned = trust.load_trusted_root(pinned_root)
        documents = [read_member(self.source, member) for member in roots]
        versions = [trust.root_version(data) for data in documents]
        for member, version in zip(roots, versions, strict=True):
            match = ROOT_MEMBER.fullmatch(member.name)
            assert match is not None
            if version != int(match.group(1)):
                raise RotationError("root-name", f"member {member.name!r} holds trust root version {version}")
        root = trust.verify_root_chain(pinned, documents, trust.reference_time(now, latest_anchor))
        newer = tuple(data for data, version in zip(documents, versions, strict=True) if version > pinned.version)
        moved = f"pinned version {pinned.version}" + (f" -> version {root.version}" if newer else "")
        return (root, newer), f"{moved}, expires {format_time(root.expires)}"

    # --- 4. signature ---------------------------------------------------------------------------------------

    def _signature(self, member: TarMember, root: TrustedRoot) -> tuple[dict[str, VerifiedEnvelope], str]:
        envelope = parse_canonical_envelope(read_member(self.source, member))
        by_site = verify_site_envelope(envelope, root, require_threshold=self.require_threshold)
        sites = ", ".join(sorted(by_site))
        some = next(iter(by_site.values()))
        if self.require_threshold:
            return by_site, f"{len(some.signers)} distinct key(s) meeting the threshold of site {sites}"
        thresholds = ", ".join(f"{root.sites[site].threshold} for {site}" for site in sorted(by_site))
        return by_site, (f"{len(some.signers)} distinct valid key(s) of site {sites} (threshold {thresholds}; not "
                         "required when signing)")

    # --- 7. members -----------------------------------------------------------------------------------------

    def _members(self, index: TarIndex, manifest: Manifest) -> tuple[tuple[VerifiedMember, ...], str]:
        expected, actual = manifest.archive_order, index.names
        if actual != expected:
            listed = set(expected)
            unlisted = [name for name in actual if name not in listed]
            missing = [name for name in expected if name not in set(actual)]
            if unlisted:
                raise MerkleError("unlisted-member", f"member {unlisted[0]!r} is not listed in the manifest"
                                  + (f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""))
            if missing:
                raise MerkleError("missing-member", f"the manifest lists {missing[0]!r}, which the bundle lacks"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            raise MerkleError("member-order", "the bundle's members are not in manifest order")
        tree = MerkleTree()
        verified = []
        total = 0
        by_name = {member.name: member for member in index.members}
        for entry in manifest.members:
            tar = by_name[entry.path]
            if tar.size != entry.size:
                raise MerkleError("size-mismatch", f"member {entry.path!r} is {tar.size} bytes; the manifest says "
                                  f"{entry.size}")
            sha, leaf = hashlib.sha256(), hashlib.sha256(LEAF_PREFIX)
            for chunk in iter_member_chunks(self.source, tar, HASH_CHUNK):
                sha.update(chunk)
                leaf.update(chunk)
            if sha.hexdigest() != entry.sha256:
                raise MerkleError("hash-mismatch", f"member {entry.path!r} has SHA-256 {sha.hexdigest()[:16]}..., not "
                                  f"the manifest's {entry.sha256[:16]}...; it was altered or damaged")
            tree.add_leaf_hash(leaf.digest())
            verified.append(VerifiedMember(entry, tar))
            total += tar.size
        root = tree.root().hex()
        if root != manifest.merkle_root:
            raise MerkleError("root-mismatch", f"the members' Merkle root is {root[:16]}..., but the manifest says "
                              f"{manifest.merkle_root[:16]}...; the exporter that wrote it is broken")
        return tuple(verified), f"{len(verified)} members, {total} bytes hashed; Merkle root {root[:16]}..."

    # --- 8. time anchor -------------------------------------------------------------------------------------

    def _anchor(self, index: TarIndex, root: TrustedRoot, manifest: Manifest) -> tuple[TimeAnchor, str]:
        anchor = verify_anchor(read_member(self.source, index.member(ANCHOR_MEMBER)), root, manifest)
        return anchor, f"{format_time(anchor.time)}, signed by {len(anchor.signers)} timestamp key(s)"

    # --- 11. tables -----------------------------------------------------------------------------------------

    def _tables(self, members: tuple[VerifiedMember, ...], table_schemas: Mapping[str, pa.Schema | Sequence[pa.Schema]],
                limits: ParquetLimits) -> tuple[dict[str, ParquetFacts], str]:
        from .parquet_check import open_parquet  # pyarrow only for callers that check tables

        facts = {}
        for member in members:
            entry = member.entry
            if not entry.is_table:
                continue
            assert entry.table is not None and entry.rows is not None and entry.uncompressed_bytes is not None
            schema = table_schemas.get(entry.table)
            if schema is None:
                raise PayloadError("unknown-table", f"member {entry.path!r} holds table {entry.table!r}, which this "
                                   "site does not import")
            checked = open_parquet(open_member(self.source, member.tar), expected_schema=schema, rows=entry.rows,
                                   uncompressed_bytes=entry.uncompressed_bytes, limits=limits,
                                   what=f"member {entry.path!r}")
            facts[entry.path] = checked.facts
        rows = sum(f.rows for f in facts.values())
        return facts, f"{len(facts)} Parquet member(s), {rows} rows declared; footers and page headers checked"


def verify_site_envelope(envelope: Envelope, root: TrustedRoot, *,
                         require_threshold: bool = True) -> dict[str, VerifiedEnvelope]:
    """The sites of `root` whose role accepts every signature of `envelope` and whose threshold it meets, with
    the verified envelope for each (usually one site). EnvelopeError dsse:payload-type, dsse:no-signatures,
    dsse:unknown-key (a key bound to no site), dsse:mixed-sites (keys of different sites), dsse:duplicate-
    signature (one key signs twice, under any keyid), or the first candidate's dsse:* error.
    `require_threshold=False` (`bundle sign`): one valid signature of a site's key is enough."""
    if envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
        raise EnvelopeError("payload-type", f"the envelope's payload type is {envelope.payload_type[:80]!r}, "
                            f"not {MANIFEST_PAYLOAD_TYPE!r}")
    if not envelope.signatures:
        raise EnvelopeError("no-signatures", "the envelope carries no signature")
    keyids = {signature.keyid for signature in envelope.signatures}
    candidates = sorted(site for site, role in root.sites.items() if keyids <= set(role.keyids))
    if not candidates:
        bound = {keyid for role in root.sites.values() for keyid in role.keyids}
        unknown = sorted(keyids - bound)
        if unknown:
            raise EnvelopeError("unknown-key", f"the envelope is signed by key {unknown[0][:16]}..., which trust root "
                                f"version {root.version} binds to no site")
        raise EnvelopeError("mixed-sites", "the envelope is signed by keys of different sites; a bundle is signed by "
                            "keys of its source site only")
    verified: dict[str, VerifiedEnvelope] = {}
    first_error: EnvelopeError | None = None
    for site in candidates:
        try:
            role = root.sites[site] if require_threshold else KeyRole(root.sites[site].keys, 1)
            verified[site] = verify_envelope(envelope, role)
        except EnvelopeError as exc:
            first_error = first_error or exc
    if not verified:
        assert first_error is not None
        raise first_error
    some = next(iter(verified.values()))
    if len(some.signers) != len(envelope.signatures):
        raise EnvelopeError("duplicate-signature", f"the envelope has {len(envelope.signatures)} signatures by "
                            f"{len(some.signers)} distinct key(s); each key signs once")
    return verified


def _manifest(payload: bytes) -> tuple[Manifest, str]:
    manifest = parse_manifest(payload)
    return manifest, (f"{manifest.kind} bundle {manifest.bundle_id[:16]}..., sequence {manifest.sequence}, "
                      f"{manifest.source_site} -> {manifest.target_site}, created {format_time(manifest.created_at)}")


def _source_site(manifest: Manifest, by_site: dict[str, VerifiedEnvelope]) -> tuple[tuple[str, VerifiedEnvelope], str]:
    envelope = by_site.get(manifest.source_site)
    if envelope is None:
        raise EnvelopeError("site-mismatch", f"the manifest claims source site {manifest.source_site!r}, but it is "
                            f"signed by keys of {', '.join(sorted(by_site))}")
    return (manifest.source_site, envelope), f"{manifest.source_site} (its keys signed the manifest)"


def _staleness(anchor: TimeAnchor, root: TrustedRoot, now: datetime, latest_anchor: datetime | None,
               policy: StalenessPolicy) -> tuple[TimeVerdict, str]:
    verdict = assess_time(anchor.time, local_now=now, latest_anchor=latest_anchor, policy=policy)
    enforce_time(verdict)
    trust.check_not_expired(root, max(verdict.best_known_time, anchor.time))
    return verdict, verdict.message


def _target(manifest: Manifest, target_site: str | None) -> tuple[None, str]:
    if target_site is None:
        return None, f"not checked (no target site given); the bundle is for {manifest.target_site}"
    if manifest.target_site != target_site:
        raise TargetError("wrong-site", f"the bundle is addressed to site {manifest.target_site!r}, not to this "
                          f"site ({target_site!r})")
    return None, target_site


def _root_members(index: TarIndex) -> tuple[TarMember, ...]:
    return tuple(member for member in index.members if member.name.startswith("trust/"))


def _cap(member: TarMember, cap: int, what: str) -> None:
    if member.size > cap:
        raise SizeLimitError(what, f"member {member.name!r} is {member.size} bytes; the cap is {cap}")
