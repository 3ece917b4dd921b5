"""Bundle operations: export (the ledger to a signed file), inspect, verify and sign (files).

Export, step by step (nothing is recorded until the file is complete; a refused export leaves the ledger as it
was and no file at --out):
1. Check the request: target site id, tenant, created_at, --out free; the trust roots to carry form a chain from
   the pinned root (or from the first carried one when none is pinned). With a root known, every signing key
   must be a key of this site in the newest root and the timestamp keys must meet the timestamp threshold.
2. Read: ONE read-only transaction on a cursor of its own (Ledger.snapshot). DuckDB's MVCC gives it one
   snapshot, so every member shows the same commit, the next sequence for the target is read in it too, and
   writers (a worker's acks in the same process) are neither blocked nor seen. No write lock is held while
   reading. Each table streams in record batches into its Parquet member (bundle/tables.py), one temporary
   file per member beside --out.
3. Write the bundle (bundle/writer.py) to a hidden partial file beside --out.
4. Self-check: with a root known and the site threshold met by the keys given, verify the written file with
   the verifier an importer runs (target site, every table footer; staleness not judged), so a bundle that
   would be refused never leaves the site.
5. Publish: the partial file gets its name (never replacing a file), then one transaction records the export
   (bundle_exports: the target's next sequence, ids, digests) and an audit entry `bundle.export`.

Determinism: the bytes are a function of the ledger's rows, the target, the sequence, the tenant, created_at,
the keys and the carried roots (same tool and library versions): two copies of one ledger exported with the same
--created-at give the same file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import __version__, clock, validation
from ..bundle import dsse, trust
from ..bundle._json import StrictJSONError, loads_strict
from ..bundle.anchor import MODES, StalenessPolicy
from ..bundle.errors import SizeLimitError, TarFormatError
from ..bundle.keys import trusted_key
from ..bundle.limits import MAX_ENVELOPE_BYTES, MAX_TIME_ANCHOR_BYTES
from ..bundle.manifest import ANCHOR_MEMBER, ENVELOPE_MEMBER, ROOT_MEMBER, BundleHeader, format_time
from ..bundle.tables import READ_BATCH_ROWS, TABLE_SCHEMAS, TABLES, TableSpec, write_table_member
from ..bundle.tarfmt import read_index, read_member
from ..bundle.verify import VerifiedBundle, verify_bundle
from ..bundle.writer import DataMember, add_signature, write_bundle
from ..errors import Conflict, InvalidInput
from ..ledger import Ledger
from ..orchestrator import audit
from . import files
from . import trust as trust_ops

Progress = Callable[[int, int], None]  # (rows written, rows in all)
PROGRESS_EVERY_ROWS = 65_536


@dataclass(frozen=True)
class SigningKey:
    """A private key and what to call it in messages (its file name; never its material)."""

    label: str
    key: Ed25519PrivateKey


# --- export -------------------------------------------------------------------------------------------------

def export(ledger: Ledger, *, out: Path, target_site: str, signing_keys: Sequence[SigningKey],
           timestamp_keys: Sequence[SigningKey], tenant: str | None = None, created_at: str | None = None,
           root_paths: Sequence[Path] = (), actor: str = "cli", progress: Progress | None = None) -> dict[str, Any]:
    """Export a full bundle of the ledger to `out` (module docstring). Returns what was written."""
    try:
        return _export(ledger, out=out, target_site=target_site, signing_keys=signing_keys,
                       timestamp_keys=timestamp_keys, tenant=tenant, created_at=created_at, root_paths=root_paths,
                       actor=actor, progress=progress)
    except OSError as exc:  # the folder of --out: not writable, full, gone
        raise InvalidInput(f"cannot write the bundle {out}: {exc.strerror or exc}") from None


def _export(ledger: Ledger, *, out: Path, target_site: str, signing_keys: Sequence[SigningKey],
            timestamp_keys: Sequence[SigningKey], tenant: str | None, created_at: str | None,
            root_paths: Sequence[Path], actor: str, progress: Progress | None) -> dict[str, Any]:
    trust_ops.check_site_id(target_site, "--target")
    if tenant is not None:
        tenant = validation.name(tenant, "--tenant")
    created = validation.timestamp(created_at, "--created-at") if created_at is not None else clock.now()
    files.refuse_existing(out, "bundle export")
    if not signing_keys:
        raise InvalidInput("give at least one --key: a private key of this site that signs the bundle")
    if not timestamp_keys:
        raise InvalidInput("give --timestamp-key: a private key of the trust root's timestamp role")
    carried = [trust_ops.read_root(path) for path in root_paths]
    start, newest = _root_chain(ledger, carried, created)
    threshold = _check_keys(newest, ledger.site_id, signing_keys, timestamp_keys) if newest else None

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.name}.tables-",
                                                                        dir=out.parent)))
        members, sequence, counts = _read_tables(ledger, workdir, target_site, tenant, stack, progress)
        header = BundleHeader(kind="full", source_site=ledger.site_id, target_site=target_site, sequence=sequence,
                              base_sequence=None, created_at=created, tool_version=__version__)
        partial, file = stack.enter_context(files.partial_file(out))
        try:
            written = write_bundle(file, header, members, roots=carried,
                                   signing_keys=[k.key for k in signing_keys],
                                   timestamp_keys=[k.key for k in timestamp_keys])
        except ValueError as exc:  # a manifest the reader would refuse: an exporter bug, not bad input
            raise InvalidInput(f"the bundle cannot be written: {exc}") from None
        file.flush()
        os.fsync(file.fileno())
        self_check = _self_check(file, start, target_site, created, threshold, len(signing_keys))
        files.publish(partial, out)
    manifest = written.manifest
    try:
        with ledger.transaction() as tx:
            taken = tx.fetch("bundle_export_next_sequence", target_site=target_site)[0][0]
            if taken != sequence:
                raise Conflict(f"another export to {target_site} took sequence {sequence} meanwhile; export again")
            tx.execute("bundle_export_record", target_site=target_site, sequence=sequence, kind=manifest.kind,
                       base_sequence=None, tenant=tenant, bundle_id=manifest.bundle_id,
                       payload_sha256=manifest.payload_sha256, merkle_root=manifest.merkle_root,
                       created_at=created, size_bytes=written.size, exported_at=clock.now(), exported_by=actor)
            details: dict[str, Any] = {"bundle_id": manifest.bundle_id, "payload_sha256": manifest.payload_sha256,
                                       "target_site": target_site, "sequence": sequence, "kind": manifest.kind,
                                       "size": written.size}
            if tenant is not None:
                details["tenant"] = tenant
            audit.append(tx, "bundle.export", actor=actor, reason=None, target=f"{target_site}#{sequence}",
                         details=details)
    except BaseException:
        out.unlink(missing_ok=True)  # ours: published above, a moment ago
        raise
    return {
        "bundle": str(out), "bundle_id": manifest.bundle_id, "payload_sha256": manifest.payload_sha256,
        "kind": manifest.kind, "source_site": manifest.source_site, "target_site": target_site,
        "sequence": sequence, "tenant": tenant, "created_at": format_time(created), "size": written.size,
        "row_counts": dict(manifest.row_counts), "tables": len(TABLES),
        "trust_roots": [member.root_version for member in manifest.trust_roots],
        "signatures": len(signing_keys), "site_threshold": threshold, "self_check": self_check,
        "rows": sum(counts.values()),
    }


def _root_chain(ledger: Ledger, carried: list[bytes], now: datetime
                ) -> tuple[bytes | None, trust.TrustedRoot | None]:
    """(the root a receiver starts from: the pinned one, else the lowest carried one; the newest root) after
    checking that the carried roots chain from it and the newest is not expired at `now`; (None, None) when no
    root is known."""
    pinned = trust_ops.pinned(ledger)
    ordered = sorted(carried, key=trust.root_version)
    if pinned is None and not ordered:
        return None, None
    start = pinned if pinned is not None else trust.load_trusted_root(ordered[0])
    newest = trust.verify_root_chain(start, ordered, now)
    return start.data, newest


def _check_keys(root: trust.TrustedRoot, site: str, signing_keys: Sequence[SigningKey],
                timestamp_keys: Sequence[SigningKey]) -> int:
    """InvalidInput unless every signing key is one of `site`'s in `root` and the timestamp keys meet the
    timestamp threshold (a time anchor cannot be signed again later); returns the site's threshold."""
    role = root.sites.get(site)
    if role is None:
        raise InvalidInput(f"trust root version {root.version} binds no keys to this site ({site}); a bundle from "
                           "it cannot verify anywhere: rotate the trust root to bind this site's keys")
    for signing in signing_keys:
        if trusted_key(signing.key.public_key()).public_bytes not in {k.public_bytes for k in role.keys}:
            raise InvalidInput(f"--key {signing.label} is not a key of site {site} in trust root version "
                               f"{root.version}")
    signers = {trusted_key(k.key.public_key()) for k in timestamp_keys}
    for signing in timestamp_keys:
        if trusted_key(signing.key.public_key()) not in root.timestamp.keys:
            raise InvalidInput(f"--timestamp-key {signing.label} is not a key of the timestamp role in trust root "
                               f"version {root.version}")
    if not root.timestamp.is_met_by(signers):
        raise InvalidInput(f"the time anchor needs {root.timestamp.threshold} distinct timestamp keys; "
                           f"{len(signers)} given")
    return role.threshold


def _read_tables(ledger: Ledger, workdir: Path, target_site: str, tenant: str | None, stack: contextlib.ExitStack,
                 progress: Progress | None) -> tuple[list[DataMember], int, dict[str, int]]:
    """Every table member, written from one snapshot; the target's next sequence is read in it too."""
    members = []
    with ledger.snapshot() as snapshot:
        sequence = int(snapshot.fetch("bundle_export_next_sequence", target_site=target_site)[0][0])
        counts_row = snapshot.fetch("bundle_export_counts", tenant=tenant)[0]
        counts = dict(zip([spec.name for spec in TABLES], counts_row, strict=True))
        total = sum(counts.values())
        done = 0
        for spec in TABLES:
            path = workdir / f"{spec.name}.parquet"
            file: BinaryIO = stack.enter_context(path.open("w+b"))
            batches = _counted(snapshot.batches(spec.query, READ_BATCH_ROWS, tenant=tenant), spec, progress, done,
                               total)
            written = write_table_member(spec, batches, file)
            done += written.rows
            file.seek(0)
            members.append(DataMember(spec.path, spec.media_type, file, table=spec.name, rows=written.rows,
                                      uncompressed_bytes=written.uncompressed_bytes))
    if progress is not None:
        progress(total, total)
    return members, sequence, counts


def _counted(reader: pa.RecordBatchReader, spec: TableSpec, progress: Progress | None, start: int, total: int
             ) -> Iterator[pa.RecordBatch]:
    done = start
    reported = start
    for batch in reader:
        yield batch
        done += batch.num_rows
        if progress is not None and done - reported >= PROGRESS_EVERY_ROWS:
            progress(min(done, total), total)
            reported = done


def _self_check(file: BinaryIO, start: bytes | None, target_site: str, created: datetime, threshold: int | None,
                signatures: int) -> str:
    if start is None or threshold is None:
        return "skipped: no trust root pinned or given (--trust); the signing keys were not checked"
    if signatures < threshold:
        return (f"skipped: {signatures} of the {threshold} signatures site keys must give; add the others with "
                "`bundle sign`, then `bundle verify`")
    file.seek(0)
    verified = verify_bundle(file, pinned_root=start, target_site=target_site, now=created,
                             staleness=StalenessPolicy(mode="disabled"), table_schemas=TABLE_SCHEMAS)
    return f"verified against trust root version {verified.root.version} ({len(verified.checks)} checks)"


# --- inspect ------------------------------------------------------------------------------------------------

def inspect(path: Path) -> dict[str, Any]:
    """What a bundle says about itself, NOT verified: its members, the manifest payload and the signature and
    anchor keyids, read with the verifier's caps (headers, the envelope and the anchor only)."""
    with files.open_readable(path, "bundle") as source:
        index = read_index(source)
        if not index.members or index.members[0].name != ENVELOPE_MEMBER:
            raise TarFormatError("member-order", f"the first member of a bundle is {ENVELOPE_MEMBER}; this is not a "
                                 "bundle")
        envelope = _lenient_envelope(source, index.members[0], MAX_ENVELOPE_BYTES, "envelope")
        anchor_member = next((m for m in index.members if m.name == ANCHOR_MEMBER), None)
        anchor = (_lenient_envelope(source, anchor_member, MAX_TIME_ANCHOR_BYTES, "time-anchor")
                  if anchor_member is not None else None)
    try:
        manifest: Any = loads_strict(envelope.payload)
    except StrictJSONError as exc:
        manifest = {"unreadable": str(exc)}
    anchor_document: Any = None
    if anchor is not None:
        try:
            anchor_document = loads_strict(anchor.payload)
        except StrictJSONError as exc:
            anchor_document = {"unreadable": str(exc)}
    return {
        "verified": False,
        "warning": "UNVERIFIED: what the file says about itself; run `bundle verify` before trusting any of it",
        "bundle": str(path), "size": index.archive_size,
        "members": [{"name": member.name, "size": member.size} for member in index.members],
        "trust_roots": [int(m.group(1)) for m in (ROOT_MEMBER.fullmatch(n) for n in index.names) if m],
        "payload_type": envelope.payload_type,
        "signature_keyids": [signature.keyid for signature in envelope.signatures],
        "manifest": manifest,
        "time_anchor": anchor_document,
        "time_anchor_keyids": [signature.keyid for signature in anchor.signatures] if anchor else [],
    }


def _lenient_envelope(source: BinaryIO, member: Any, cap: int, what: str) -> dsse.Envelope:
    if member.size > cap:
        raise SizeLimitError(what, f"member {member.name!r} is {member.size} bytes; the cap is {cap}")
    return dsse.parse_envelope(read_member(source, member))


# --- verify -------------------------------------------------------------------------------------------------

def staleness_policy(mode: str) -> StalenessPolicy:
    if mode not in MODES:
        raise InvalidInput(f"--staleness {mode!r} must be one of {', '.join(MODES)}")
    return StalenessPolicy(mode=mode)  # type: ignore[arg-type]


def verify(path: Path, *, pinned_root: bytes, target_site: str | None, now: datetime, staleness: str = "warn",
           require_threshold: bool = True) -> VerifiedBundle:
    """Run the verification sequence on the file (every table's footer checked too); the BundleError of the
    first failing step carries the checks so far."""
    policy = staleness_policy(staleness)
    if target_site is not None:
        trust_ops.check_site_id(target_site, "--target")
    with files.open_readable(path, "bundle") as source:
        return verify_bundle(source, pinned_root=pinned_root, target_site=target_site, now=now, staleness=policy,
                             table_schemas=TABLE_SCHEMAS, require_threshold=require_threshold)


def verified_summary(verified: VerifiedBundle) -> dict[str, Any]:
    manifest = verified.manifest
    return {
        "ok": True, "bundle_id": verified.bundle_id, "payload_sha256": verified.payload_sha256,
        "kind": manifest.kind, "source_site": verified.source_site, "target_site": manifest.target_site,
        "sequence": manifest.sequence, "base_sequence": manifest.base_sequence,
        "created_at": format_time(manifest.created_at), "trust_root_version": verified.root.version,
        "new_trust_roots": [trust.root_version(data) for data in verified.new_roots],
        "signers": list(verified.signers), "site_threshold": verified.site_threshold,
        "threshold_met": verified.threshold_met, "row_counts": dict(manifest.row_counts),
        "staleness": {"state": verified.time.state, "mode": verified.time.mode, "warning": verified.time.warning,
                      "message": verified.time.message},
        "checks": checks(verified.checks),
    }


def checks(found: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": check.name, "ok": check.ok, "detail": check.detail} for check in found]


# --- sign ---------------------------------------------------------------------------------------------------

def sign(path: Path, out: Path, *, key: SigningKey, pinned_root: bytes, now: datetime) -> dict[str, Any]:
    """Verify the bundle (all but the site threshold), check `key` is a key of its source site, and write it to
    `out` with the key's signature added; the result is verified again before it gets its name."""
    files.refuse_existing(out, "bundle sign")
    before = verify(path, pinned_root=pinned_root, target_site=None, now=now, require_threshold=False)
    role = before.root.sites[before.source_site]
    mine = trusted_key(key.key.public_key())
    if mine.public_bytes not in {k.public_bytes for k in role.keys}:
        raise InvalidInput(f"--key {key.label} is not a key of site {before.source_site}, which this bundle comes "
                           f"from (trust root version {before.root.version})")
    already = mine.keyid in before.signers
    with files.open_readable(path, "bundle") as source, files.partial_file(out) as (partial, file):
        add_signature(source, file, key.key)
        file.flush()
        os.fsync(file.fileno())
        file.seek(0)
        after = verify_bundle(file, pinned_root=pinned_root, target_site=None, now=now,
                              staleness=staleness_policy("warn"), table_schemas=TABLE_SCHEMAS,
                              require_threshold=False)
        files.publish(partial, out)
    return {"bundle": str(out), "bundle_id": after.bundle_id, "source_site": after.source_site,
            "signed_by": mine.keyid, "already_signed": already, "signatures": len(after.signers),
            "site_threshold": after.site_threshold, "threshold_met": after.threshold_met}
