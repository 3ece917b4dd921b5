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
import hashlib
import os
import tempfile
import time
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
from ..bundle.tables import (
    INCREMENTAL_TABLES,
    READ_BATCH_ROWS,
    TABLE_SCHEMAS,
    TABLES,
    TableSpec,
    write_table_member,
)
from ..bundle.tarfmt import read_index, read_member
from ..bundle.verify import VerifiedBundle, verify_bundle
from ..bundle.writer import DataMember, add_signature, write_bundle
from ..errors import Conflict, InvalidInput, NotFound, OrchError, VerificationFailed
from ..ledger import Ledger
from ..orchestrator import audit
from ..orchestrator import handoff as handoff_ops
from . import files
from . import trust as trust_ops

Progress = Callable[[int, int], None]  # (rows written, rows in all)
# Test-only: "handed-off:marker-file" makes an export with --handoff write the marker once its hand-off committed,
# before the bundle is written, and wait until the marker is removed (tests of lost media: SIGKILL meanwhile, or a
# file put at --out meanwhile).
PAUSE_ENV = "AIRGAP_ORCH_TEST_EXPORT_PAUSE"


def _pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if spec and spec.partition(":")[0] == point:
        marker = Path(spec.partition(":")[2])
        marker.write_text(point)
        deadline = time.monotonic() + 3600
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
PROGRESS_EVERY_ROWS = 65_536


@dataclass(frozen=True)
class SigningKey:
    """A private key and what to call it in messages (its file name; never its material)."""

    label: str
    key: Ed25519PrivateKey


# --- export -------------------------------------------------------------------------------------------------

def export(ledger: Ledger, *, out: Path, target_site: str, signing_keys: Sequence[SigningKey],
           timestamp_keys: Sequence[SigningKey], tenant: str | None = None, created_at: str | None = None,
           root_paths: Sequence[Path] = (), actor: str = "cli", progress: Progress | None = None,
           incremental: bool = False, base_sequence: int | None = None, handoff: bool = False,
           handoff_backfills: Sequence[str] = (), handoff_queues: Sequence[str] = (),
           reissue: int | None = None, roots: Sequence[bytes] = (), reason: str | None = None,
           server_keys: bool = False) -> dict[str, Any]:
    """Export a bundle of the ledger to `out` (module docstring): full, or with `incremental` / `base_sequence`
    what changed since that export to the target; `handoff` hands pending jobs over first (`reason` goes to its audit
    entry); `reissue` writes the bundle of that sequence again. The trust roots to carry are the files `root_paths`
    and the documents `roots` (a server gets them as text). `server_keys`: the keys are those `serve` holds, so the
    advice after a failed hand-off export names no --key. Returns what was written."""
    carried = [*roots, *(trust_ops.read_root(path) for path in root_paths)]
    if reason is not None:
        reason, _ = validation.reason_and_ticket(reason, None)
    try:
        if reissue is not None:
            if handoff or handoff_backfills or handoff_queues:
                raise InvalidInput("--reissue writes a bundle already cut (its hand-off included); drop --handoff, "
                                   "--queue and --backfill")
            return _reissue(ledger, out=out, target_site=target_site, sequence=reissue, signing_keys=signing_keys,
                            timestamp_keys=timestamp_keys, tenant=tenant, created_at=created_at,
                            carried=carried, actor=actor, progress=progress, incremental=incremental,
                            base_sequence=base_sequence, server_keys=server_keys)
        if (handoff_backfills or handoff_queues) and not handoff:
            raise InvalidInput("--backfill and --queue choose the jobs --handoff hands over; add --handoff")
        return _export(ledger, out=out, target_site=target_site, signing_keys=signing_keys,
                       timestamp_keys=timestamp_keys, tenant=tenant, created_at=created_at, carried=carried,
                       actor=actor, progress=progress, incremental=incremental, base_sequence=base_sequence,
                       handoff=(handoff_backfills, handoff_queues) if handoff else None, reserved=None,
                       reason=reason, server_keys=server_keys)
    except OSError as exc:  # the folder of --out: not writable, full, gone
        raise InvalidInput(f"cannot write the bundle {out}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class _Base:
    """The export an incremental bundle is cut from, and its high-water marks."""

    sequence: int
    history_seq: int
    audit_seq: int


def _base(ledger: Ledger, target_site: str, tenant: str | None, incremental: bool,
          base_sequence: int | None) -> _Base | None:
    """None for a full bundle; else the base export (InvalidInput/NotFound when there is none to cut from)."""
    if base_sequence is None and not incremental:
        return None
    read = ledger.read()
    if base_sequence is None:
        base_sequence = read.fetch("bundle_export_latest", target_site=target_site, tenant=tenant)[0][0]
        if base_sequence is None:
            raise InvalidInput(f"no earlier export to {target_site}" + (f" of tenant {tenant}" if tenant else "")
                               + " to cut an incremental bundle from; export a full bundle first")
    found = read.rows("bundle_export_get", target_site=target_site, sequence=base_sequence)
    if not found:
        raise NotFound(f"no export {base_sequence} to {target_site} to cut an incremental bundle from; "
                       f"{_series(ledger, target_site)}")
    row = found[0]
    if row["tenant"] != tenant:
        raise InvalidInput(f"export {base_sequence} to {target_site} covers "
                           f"{'tenant ' + row['tenant'] if row['tenant'] else 'every tenant'}; an incremental bundle "
                           "covers what its base covers (give the same --tenant)")
    if row["history_seq"] is None or row["audit_seq"] is None:
        raise InvalidInput(f"export {base_sequence} to {target_site} predates incremental bundles (no high-water "
                           "marks recorded); export a full bundle")
    return _Base(base_sequence, int(row["history_seq"]), int(row["audit_seq"]))


def _series(ledger: Ledger, target_site: str) -> str:
    """What a target's series holds, for messages."""
    found = ledger.read().fetch("bundle_export_sequences", target_site=target_site)
    if not found:
        return f"nothing was exported to {target_site} yet"
    return f"the series to {target_site} holds " + ", ".join(
        f"{sequence}" if status == "exported" else f"{sequence} ({status})" for sequence, status in found)


def export_store(ledger: Ledger) -> Path:
    """Where each exported bundle's bytes are kept for `--reissue`: `<ledger>.exports/`."""
    return Path(f"{ledger.path}.exports")


def _stored(ledger: Ledger, target_site: str, sequence: int) -> Path:
    return export_store(ledger) / target_site / f"{sequence}.bundle"


def _export(ledger: Ledger, *, out: Path, target_site: str, signing_keys: Sequence[SigningKey],
            timestamp_keys: Sequence[SigningKey], tenant: str | None, created_at: str | None,
            carried: list[bytes], actor: str, progress: Progress | None, incremental: bool,
            base_sequence: int | None, handoff: tuple[Sequence[str], Sequence[str]] | None,
            reserved: int | None, reason: str | None = None, server_keys: bool = False) -> dict[str, Any]:
    trust_ops.check_site_id(target_site, "--target")
    if tenant is not None:
        tenant = validation.name(tenant, "--tenant")
    created = validation.timestamp(created_at, "--created-at") if created_at is not None else clock.now()
    files.refuse_existing(out, "bundle export")
    if not signing_keys:
        raise InvalidInput("give at least one --key: a private key of this site that signs the bundle")
    if not timestamp_keys:
        raise InvalidInput("give --timestamp-key: a private key of the trust root's timestamp role")
    if target_site == ledger.site_id and handoff is not None:
        raise InvalidInput(f"--handoff hands jobs to another site; {target_site} is this site")
    start, newest = _root_chain(ledger, carried, created)
    threshold = _check_keys(newest, ledger.site_id, signing_keys, timestamp_keys) if newest else None
    base = _base(ledger, target_site, tenant, incremental, base_sequence)
    if base is not None and reserved is not None and base.sequence >= reserved:
        raise InvalidInput(f"--base {base.sequence} is not below the sequence {reserved} being written")
    handed: list[str] = []
    if handoff is not None:  # commits BEFORE the file is written: lost media are recovered with --reissue
        backfills, queues = handoff
        with ledger.transaction() as tx:
            reserved = int(tx.fetch("bundle_export_next_sequence", target_site=target_site)[0][0])
            handed = handoff_ops.hand_off(tx, target_site=target_site, sequence=reserved, tenant=tenant,
                                          queues=[validation.name(q, "--queue") for q in queues],
                                          backfills=list(backfills), actor=actor, reason=reason)
        if not handed:
            reserved = None  # nothing was handed off: an ordinary export
        _pause("handed-off")
    try:
        return _write(ledger, out=out, target_site=target_site, signing_keys=signing_keys,
                      timestamp_keys=timestamp_keys, tenant=tenant, created=created, carried=carried, start=start,
                      threshold=threshold, actor=actor, progress=progress, base=base, reserved=reserved)
    except BaseException as error:
        if handed and reserved is not None and not isinstance(error, KeyboardInterrupt):
            raise _unfinished(error, target_site, reserved, len(handed), server_keys, out) from error
        raise


def _unfinished(error: BaseException, target_site: str, sequence: int, jobs: int, server_keys: bool,
                out: Path) -> Exception:
    """The error of an export whose hand-off committed: it says how to write the bundle that carries them (with
    the keys again locally; through a server, which signs with its own, with none, and whose private output file
    the caller is not told the path of)."""
    keys = "" if server_keys else " --key ... --timestamp-key ..."
    cause = str(error).replace(str(out), "the server's output file") if server_keys else str(error)
    message = (f"{cause}; the hand-off of {jobs} jobs to {target_site} committed as sequence {sequence}: write its "
               f"bundle with `bundle export --reissue {sequence} --target {target_site} --out FILE{keys}`")
    if isinstance(error, OrchError):
        made = type(error).__new__(type(error))
        made.__dict__.update(error.__dict__)
        made.args = (message,)
        return made
    return InvalidInput(message)


def _write(ledger: Ledger, *, out: Path, target_site: str, signing_keys: Sequence[SigningKey],
           timestamp_keys: Sequence[SigningKey], tenant: str | None, created: datetime, carried: list[bytes],
           start: bytes | None, threshold: int | None, actor: str, progress: Progress | None, base: _Base | None,
           reserved: int | None) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.name}.tables-",
                                                                        dir=out.parent)))
        members, sequence, counts, marks = _read_tables(ledger, workdir, target_site, tenant, stack, progress, base,
                                                        reserved)
        header = BundleHeader(kind="full" if base is None else "incremental", source_site=ledger.site_id,
                              target_site=target_site, sequence=sequence,
                              base_sequence=None if base is None else base.sequence, created_at=created,
                              tool_version=__version__, tenant=tenant)
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
        file_sha256 = _keep(ledger, file, target_site, sequence)
        files.publish(partial, out)
    manifest = written.manifest
    handed = counts.get("handoffs", 0)
    try:
        with ledger.transaction() as tx:
            taken = tx.rows("bundle_export_get", target_site=target_site, sequence=sequence)
            if taken or (reserved is None
                         and tx.fetch("bundle_export_next_sequence", target_site=target_site)[0][0] != sequence):
                raise Conflict(f"another export to {target_site} took sequence {sequence} meanwhile; export again")
            tx.execute("bundle_export_record", target_site=target_site, sequence=sequence, kind=manifest.kind,
                       base_sequence=manifest.base_sequence, tenant=tenant, bundle_id=manifest.bundle_id,
                       payload_sha256=manifest.payload_sha256, merkle_root=manifest.merkle_root,
                       created_at=created, size_bytes=written.size, exported_at=clock.now(), exported_by=actor,
                       history_seq=marks[0], audit_seq=marks[1], file_sha256=file_sha256, handed_off=handed)
            details: dict[str, Any] = {"bundle_id": manifest.bundle_id, "payload_sha256": manifest.payload_sha256,
                                       "target_site": target_site, "sequence": sequence, "kind": manifest.kind,
                                       "size": written.size, "file_sha256": file_sha256}
            if manifest.base_sequence is not None:
                details["base_sequence"] = manifest.base_sequence
            if handed:
                details["handed_off"] = handed
            if tenant is not None:
                details["tenant"] = tenant
            audit.append(tx, "bundle.export", actor=actor, reason=None, target=f"{target_site}#{sequence}",
                         details=details)
    except BaseException:
        out.unlink(missing_ok=True)  # ours: published above, a moment ago
        raise
    return {
        "bundle": str(out), "bundle_id": manifest.bundle_id, "payload_sha256": manifest.payload_sha256,
        "kind": manifest.kind, "base_sequence": manifest.base_sequence, "source_site": manifest.source_site,
        "target_site": target_site, "sequence": sequence, "tenant": tenant, "created_at": format_time(created),
        "size": written.size, "file_sha256": file_sha256,
        "row_counts": dict(manifest.row_counts), "tables": len(TABLES),
        "trust_roots": [member.root_version for member in manifest.trust_roots],
        "signatures": len(signing_keys), "site_threshold": threshold, "self_check": self_check,
        "rows": sum(counts.values()), "handed_off": handed, "reissued": False,
    }


def _keep(ledger: Ledger, file: BinaryIO, target_site: str, sequence: int) -> str:
    """Copy the written bundle into the export store (replacing a copy an unfinished export left); its sha256."""
    target = _stored(ledger, target_site, sequence)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256()
    file.seek(0)
    with files.partial_file(target) as (partial, copy):
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
            copy.write(chunk)
        copy.flush()
        os.fsync(copy.fileno())
        files.publish(partial, target, replace=True)
    return digest.hexdigest()


def _reissue(ledger: Ledger, *, out: Path, target_site: str, sequence: int, signing_keys: Sequence[SigningKey],
             timestamp_keys: Sequence[SigningKey], tenant: str | None, created_at: str | None,
             carried: list[bytes], actor: str, progress: Progress | None, incremental: bool,
             base_sequence: int | None, server_keys: bool = False) -> dict[str, Any]:
    """The bundle of `sequence` to `target_site` again: the stored bytes, checked against the sha256 recorded at
    export (byte-identical to the first file). A sequence a hand-off reserved whose export never finished is
    written now (its first file), with the given keys."""
    trust_ops.check_site_id(target_site, "--target")
    files.refuse_existing(out, "bundle export --reissue")
    found = ledger.read().rows("bundle_export_get", target_site=target_site, sequence=sequence)
    if not found:
        if ledger.read().fetch("bundle_export_handoff_reserved", target_site=target_site, sequence=sequence)[0][0]:
            return {**_export(ledger, out=out, target_site=target_site, signing_keys=signing_keys,
                              timestamp_keys=timestamp_keys, tenant=tenant, created_at=created_at,
                              carried=carried, actor=actor, progress=progress, incremental=incremental,
                              base_sequence=base_sequence, handoff=None, reserved=sequence,
                              server_keys=server_keys),
                    "reissued": True, "first_file": True}
        raise NotFound(f"no bundle {sequence} was exported to {target_site}; {_series(ledger, target_site)}")
    row = found[0]
    stored = _stored(ledger, target_site, sequence)
    if row["file_sha256"] is None:
        raise NotFound(f"bundle {sequence} to {target_site} was exported before bundles were kept for reissue; "
                       "export a new one")
    if not stored.exists():
        raise NotFound(f"the stored copy of bundle {sequence} to {target_site} is gone ({stored}); export a new one")
    with files.open_readable(stored, "stored bundle") as source, files.partial_file(out) as (partial, copy):
        digest = hashlib.sha256()
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
            copy.write(chunk)
        if digest.hexdigest() != row["file_sha256"]:
            raise VerificationFailed(f"the stored copy of bundle {sequence} to {target_site} ({stored}) does not "
                                     f"match the sha256 recorded at export; it was altered: export a new one")
        copy.flush()
        os.fsync(copy.fileno())
        files.publish(partial, out)
    with ledger.transaction() as tx:
        audit.append(tx, "bundle.reissue", actor=actor, reason=None, target=f"{target_site}#{sequence}",
                     details={"target_site": target_site, "sequence": sequence, "bundle_id": row["bundle_id"],
                              "file_sha256": row["file_sha256"]})
    return {"bundle": str(out), "bundle_id": row["bundle_id"], "kind": row["kind"],
            "base_sequence": row["base_sequence"], "source_site": ledger.site_id, "target_site": target_site,
            "sequence": sequence, "tenant": row["tenant"], "created_at": format_time(row["created_at"]),
            "size": row["size_bytes"], "file_sha256": row["file_sha256"], "reissued": True, "first_file": False}


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
                 progress: Progress | None, base: _Base | None, reserved: int | None
                 ) -> tuple[list[DataMember], int, dict[str, int], tuple[int, int]]:
    """Every table member, written from one snapshot; the target's next sequence (unless a hand-off reserved
    one) and the high-water marks are read in it too."""
    members = []
    with ledger.snapshot() as snapshot:
        sequence = (reserved if reserved is not None
                    else int(snapshot.fetch("bundle_export_next_sequence", target_site=target_site)[0][0]))
        marks = tuple(int(mark) for mark in snapshot.fetch("bundle_export_marks")[0])
        counts_row = snapshot.fetch("bundle_export_counts", tenant=tenant)[0]
        counts = dict(zip([spec.name for spec in TABLES], counts_row, strict=True))
        total = sum(counts.values())
        done = 0
        for spec in TABLES:
            path = workdir / f"{spec.name}.parquet"
            file: BinaryIO = stack.enter_context(path.open("w+b"))
            query, params = _query(spec, tenant, base, target_site, sequence)
            batches = _counted(snapshot.batches(query, READ_BATCH_ROWS, **params), spec, progress, done, total)
            written = write_table_member(spec, batches, file)
            done += written.rows
            counts[spec.name] = written.rows
            file.seek(0)
            members.append(DataMember(spec.path, spec.media_type, file, table=spec.name, rows=written.rows,
                                      uncompressed_bytes=written.uncompressed_bytes))
    if progress is not None:
        progress(done, done)
    return members, sequence, counts, (marks[0], marks[1])


def _query(spec: TableSpec, tenant: str | None, base: _Base | None, target_site: str, sequence: int
           ) -> tuple[str, dict[str, Any]]:
    """The named query of a member and its parameters (full, incremental or the hand-off list)."""
    if spec.name == "handoffs":
        return spec.query, {"tenant": tenant, "target_site": target_site, "sequence": sequence}
    if base is None or spec.name not in INCREMENTAL_TABLES:
        return spec.query, {"tenant": tenant}
    mark = ({"after_audit_seq": base.audit_seq} if spec.name == "audit_log"
            else {"after_history_seq": base.history_seq})
    return f"bundle_export_since_{spec.name}", {"tenant": tenant, **mark}


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
           require_threshold: bool = True, progress: Progress | None = None) -> VerifiedBundle:
    """Run the verification sequence on the file (every table's footer checked too); the BundleError of the
    first failing step carries the checks so far. `progress(done, total)` hears how far into the file it got."""
    policy = staleness_policy(staleness)
    if target_site is not None:
        trust_ops.check_site_id(target_site, "--target")
    with files.open_readable(path, "bundle") as opened:
        source = opened if progress is None else files.Watched(opened, progress)
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
