"""Importing bundles (full and incremental) into the local ledger: `bundle plan` (dry run) and `bundle import`,
`bundle list`, `airgap status`. docs/bundle-format.md ("Import", "Hand-off") states the rules; in order, an import:

 1. copies the file into a private, size-capped temporary file beside the ledger (unlinked at once; nobody else
    can change it), hashing it on the way: verification and every later read use that copy only;
 2. verifies it with verify_bundle against the PINNED root (or, with nothing pinned, `--trust`), this ledger's
    site as the target, and the latest anchor this site imported;
 3. answers "already imported" (same payload digest or bundle id): exit 0, nothing but an audit entry;
 4. refuses a sequence at or below the source site's floor (rollback:sequence, exit 5), and an incremental
    bundle whose base this site has not imported (rollback:base-missing, exit 5);
 5. checks the source's history: from genesis for a full bundle, as an extension of the chain held here for an
    incremental one (chain:*, exit 4); counts what each table gives and what a hand-off makes local;
 6. writes everything in ONE transaction (DuckDB's memory capped while the mirror rows go in: import_memory_cap;
    members read a row group at a time): the source's mirror rows replaced (full) or merged (incremental), the
    handed-over jobs made local (orchestrator/handoff.py), when the source is this site's policy authority its
    policies applied (operations/bundle_policies.py), the bundle's newer trust roots (and a `--trust` root when
    nothing was pinned), the floor row, the audit entry.
A refusal writes one audit entry and a capped quarantine copy `<ledger>.quarantine/<sha256 of the file>.bundle`
with a `.reason` file beside it; nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import clock, validation
from ..bundle import trust
from ..bundle.anchor import StalenessPolicy, assess_time
from ..bundle.errors import BundleError, ChainError, PayloadError, RollbackError, RotationError, TargetError
from ..bundle.limits import DEFAULT_TAR_LIMITS
from ..bundle.manifest import canonical_json, format_time
from ..bundle.tables import BY_NAME, TABLE_SCHEMAS
from ..bundle.tarfmt import open_member
from ..bundle.verify import VerifiedBundle, verify_bundle
from ..errors import Conflict, InvalidInput, NotFound, PolicyRefused
from ..ledger import Ledger, Transaction
from ..orchestrator import audit, history
from ..orchestrator import handoff as handoff_ops
from . import bundle_policies, files
from . import trust as trust_ops
from .bundles import checks as check_list
from .bundles import staleness_policy

COPY_CHUNK = 1024 * 1024
READ_ROWS = 8192  # rows per record batch read from a member
# DuckDB's buffer pool while an import writes (Transaction.cap_memory): a base plus room for the primary-key
# index entries of the rows it inserts, which DuckDB keeps in memory (~27 bytes a row measured at 1M jobs: 82 MB
# for 3M rows; 48 MB was too little there, 128 MB enough). At the default (80% of RAM) a 1M-job import held
# ~2 GB of DuckDB's memory.
IMPORT_MEMORY_BASE = 64 * 1024 * 1024
IMPORT_MEMORY_PER_ROW = 32


def import_memory_cap(verified: VerifiedBundle) -> int:
    """DuckDB's memory cap while writing this bundle's mirror rows (jobs and history carry the indexed keys)."""
    counts = verified.manifest.row_counts
    return IMPORT_MEMORY_BASE + IMPORT_MEMORY_PER_ROW * (counts.get("jobs", 0) + counts.get("history", 0))
QUARANTINE_CAP = 64 * 1024 * 1024  # bytes of a refused file kept as evidence
POLICY_TABLES = ("quotas", "rate_limits", "concurrency_limits", "circuit_breakers", "pauses")
# Where each table of a full bundle goes: (action, mirror table).
DESTINATIONS: dict[str, tuple[str, str | None]] = {
    "jobs": ("mirrored", "mirror_jobs"),
    "history": ("mirrored", "mirror_history"),
    **{name: ("mirrored, not applied", "mirror_policies") for name in POLICY_TABLES},
    "idempotency_keys": ("not imported", None),
    "job_dependencies": ("not imported", None),
    "sources": ("not imported", None),
    "backfills": ("not imported", None),
    "backfill_windows": ("not imported", None),
    "audit_log": ("not imported", None),
    "handoffs": ("handed over: become local jobs (see handoff)", None),
}
# Test-only: "point:marker-file" makes an import write the marker and sleep at that point (SIGKILL tests).
PAUSE_ENV = "AIRGAP_ORCH_TEST_IMPORT_PAUSE"
PAUSE_POINTS = ("copied", "verified", "mirrors-written", "before-commit", "committed")


def _pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    name, _, marker = spec.partition(":")
    if name == point:
        Path(marker).write_text(point)
        time.sleep(3600)


# --- the private copy ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def private_copy(path: Path, ledger: Ledger, cap: int) -> Iterator[tuple[BinaryIO, str, int]]:
    """(an unlinked temporary copy of the file's first cap+1 bytes, their sha256, their count) in the ledger's
    folder."""
    with files.open_readable(path, "bundle") as source:
        folder = Path(ledger.path).resolve().parent
        try:
            copy = tempfile.TemporaryFile(dir=folder, prefix=f".{Path(ledger.path).name}.import-")
        except OSError as exc:
            raise InvalidInput(f"cannot create a private copy in {folder}: {exc.strerror}") from None
        with copy:
            digest, total = hashlib.sha256(), 0
            while total <= cap:
                chunk = source.read(min(COPY_CHUNK, cap + 1 - total))
                if not chunk:
                    break
                copy.write(chunk)
                digest.update(chunk)
                total += len(chunk)
            copy.flush()
            copy.seek(0)
            yield copy, digest.hexdigest(), total


# --- trust --------------------------------------------------------------------------------------------------

def _start_root(ledger: Ledger, trust_path: Path | None) -> tuple[bytes, trust.TrustedRoot | None]:
    """(the root to verify from, the root to pin with the import: only when nothing is pinned)."""
    pinned = trust_ops.pinned(ledger)
    if pinned is None:
        if trust_path is None:
            raise NotFound("no trust root is pinned in this ledger; pass --trust ROOT.json (pinned by a successful "
                           "import) or pin one with `trust pin`")
        data = trust_ops.read_root(trust_path)
        return data, trust.load_trusted_root(data)
    if trust_path is not None:
        given = trust.load_trusted_root(trust_ops.read_root(trust_path))
        if given.version > pinned.version:
            raise InvalidInput(f"--trust is version {given.version}, newer than the pinned version {pinned.version}; "
                               "pin it with `trust pin` or let the bundle carry it")
        stored = dict(ledger.read().fetch("trust_root_versions"))
        if stored.get(given.version) != trust_ops.fingerprint(given):
            raise RotationError("fork", f"--trust version {given.version} is not the root this ledger pinned as "
                                f"version {given.version}")
    return pinned.data, None


# --- plan ---------------------------------------------------------------------------------------------------

def _latest_anchor(tx: Transaction) -> datetime | None:
    return tx.fetch("bundle_import_latest_anchor")[0][0]


def _rows(copy: BinaryIO, verified: VerifiedBundle, table: str) -> Iterator[pa.RecordBatch]:
    """The rows of a verified table member, decoded (a signed member whose pages do not decode: payload:decode).

    One row group at a time: pyarrow's reader over a whole file keeps the pages of every row group it has read
    until it is done (~200 MB for the history of 1M jobs), a reader per row group only that group's."""
    member = verified.member(BY_NAME[table].path)
    with open_member(copy, member.tar) as file:
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise PayloadError("decode", f"table {table} does not decode: {str(exc)[:160]}") from None
        for group in range(parquet.metadata.num_row_groups):
            batches = parquet.iter_batches(batch_size=READ_ROWS, row_groups=[group])
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError, ValueError) as exc:
                    raise PayloadError("decode", f"table {table} does not decode: {str(exc)[:160]}") from None
                yield batch


def _history_rows(copy: BinaryIO, verified: VerifiedBundle) -> Iterator[tuple[int, str, str, str]]:
    for batch in _rows(copy, verified, "history"):
        columns = [batch.column(name).to_pylist() for name in ("seq", "job_id", "entry", "entry_hash")]
        yield from zip(*columns, strict=True)


def _check_history(copy: BinaryIO, verified: VerifiedBundle) -> int:
    """Recompute the history chain from genesis over the bundle's rows; ChainError chain:* when it breaks."""
    try:
        return history.verify_chain(_history_rows(copy, verified)).entries
    except history.Broken as broken:
        raise ChainError("history", f"the bundle's history from {verified.source_site} is broken: {broken}") from None


def _check_increment(copy: BinaryIO, verified: VerifiedBundle, read: Transaction) -> tuple[int, int, int]:
    """An incremental bundle's history must extend the chain this site holds for its source: its first entry
    chains onto the held entry before it, entries this site holds already must be the same, the rest follow on.
    Returns (entries in the bundle, entries new here, the last seq held before)."""
    site = verified.source_site
    held_seq = int(read.fetch("mirror_history_head", source_site=site)[0][0])
    rows = _history_rows(copy, verified)
    first = next(rows, None)
    if first is None:
        return 0, 0, held_seq
    start = int(first[0])
    if start < 1 or start - 1 > held_seq:
        raise ChainError("head", f"the bundle's history from {site} starts at entry {start}, but this site holds "
                         f"that history up to entry {held_seq}: it does not chain onto the held head")
    held = dict(read.fetch("mirror_history_hashes", source_site=site, from_seq=start - 1, to_seq=held_seq))
    prev = history.GENESIS if start == 1 else held[start - 1]

    def checked() -> Iterator[tuple[int, str, str, str]]:
        for row in itertools.chain([first], rows):
            if row[0] <= held_seq and held.get(row[0]) != row[3]:
                raise ChainError("head", f"history entry {row[0]} from {site} differs from the entry this site "
                                 "holds: the source's history forked")
            yield row

    try:
        check = history.verify_chain(checked(), start=history.ChainCheck(start - 1, prev, 0))
    except history.Broken as broken:
        raise ChainError("history", f"the bundle's history from {site} does not extend the chain held here: "
                         f"{broken}") from None
    entries = check.entries - (start - 1)
    return entries, max(0, check.entries - held_seq), held_seq


@dataclass
class _Handoff:
    """What a bundle hands over: its handoffs rows and, of the other members, the rows they need."""

    handoffs: list[dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    keys: list[dict[str, Any]]
    backfills: dict[str, dict[str, Any]]
    windows: dict[tuple[str, int], dict[str, Any]]


def _handoff(copy: BinaryIO, verified: VerifiedBundle) -> _Handoff | None:
    """The bundle's hand-off (None: none; bundles written before hand-offs have no handoffs member)."""
    if not _has(verified, "handoffs") or not verified.manifest.row_counts.get("handoffs"):
        return None
    handoffs = [row for batch in _rows(copy, verified, "handoffs") for row in batch.to_pylist()]
    wanted = {row["job_id"] for row in handoffs}
    backfill_ids = {row["backfill_id"] for row in handoffs if row["backfill_id"] is not None}

    def rows_of(table: str, keep: Any) -> list[dict[str, Any]]:
        return [row for batch in _rows(copy, verified, table) for row in batch.to_pylist() if keep(row)]

    return _Handoff(
        handoffs=handoffs,
        jobs={row["job_id"]: row for row in rows_of("jobs", lambda row: row["job_id"] in wanted)},
        keys=rows_of("idempotency_keys", lambda row: row["job_id"] in wanted),
        backfills={row["backfill_id"]: row for row in rows_of("backfills",
                                                               lambda row: row["backfill_id"] in backfill_ids)},
        windows={(row["backfill_id"], row["window_index"]): row for row in
                 rows_of("backfill_windows", lambda row: row["backfill_id"] in backfill_ids)})


def _receive(tx: Transaction, verified: VerifiedBundle, handed: _Handoff, actor: str, write: bool
             ) -> dict[str, Any]:
    return handoff_ops.receive(tx, source_site=verified.source_site, handoffs=handed.handoffs, jobs=handed.jobs,
                               keys=handed.keys, backfills=handed.backfills, windows=handed.windows, actor=actor,
                               write=write)


def _handoff_plan(summary: dict[str, Any]) -> dict[str, Any]:
    """The plan's view of a hand-off (counts, and the first ids of each kind)."""
    return {"jobs": len(summary["received"]), "job_ids": summary["received"][:100],
            "already_local": len(summary["already_local"]), "key_held": summary["key_held"][:100],
            "backfill_windows": summary["windows"]}


def _has(verified: VerifiedBundle, table: str) -> bool:
    return any(member.path == BY_NAME[table].path for member in verified.members)


def _plan(ledger: Ledger, copy: BinaryIO, verified: VerifiedBundle, to_pin: trust.TrustedRoot | None,
          force: bool) -> dict[str, Any]:
    """The canonical plan (no time-dependent field: its digest only changes when the outcome would)."""
    manifest = verified.manifest
    if verified.source_site == ledger.site_id:
        raise TargetError("own-site", f"the bundle comes from this site ({ledger.site_id}); a site never imports "
                          "its own bundles")
    read = ledger.read()
    floor = int(read.fetch("bundle_import_floor", source_site=verified.source_site)[0][0])
    if manifest.sequence <= floor:
        raise RollbackError("sequence", f"bundle sequence {manifest.sequence} from {verified.source_site} is not "
                            f"above the floor {floor} (the latest imported); a replayed or older bundle is refused")
    incremental = manifest.kind == "incremental"
    if incremental:
        base = manifest.base_sequence
        if not read.fetch("bundle_import_has", source_site=verified.source_site, sequence=base)[0][0]:
            raise RollbackError("base-missing", f"incremental bundle {manifest.sequence} from "
                                f"{verified.source_site} applies on sequence {base}, which this site has not "
                                f"imported: import bundle {base} first, or ask {verified.source_site} for a full "
                                "bundle or one cut with --base from a sequence imported here")
        chained, new_entries, _ = _check_increment(copy, verified, read)
    else:
        chained = new_entries = _check_history(copy, verified)
    jobs, entries, policies = read.fetch("mirror_counts", source_site=verified.source_site)[0]
    policy_counts = dict(read.fetch("mirror_policy_counts", source_site=verified.source_site))
    before = {"jobs": jobs, "history": entries, **{name: policy_counts.get(name, 0) for name in POLICY_TABLES}}
    known = _known_jobs(copy, verified, read) if incremental else 0
    tables = []
    for name, rows in sorted(manifest.row_counts.items()):
        action, mirror = DESTINATIONS.get(name, ("not imported", None))
        entry = {"table": name, "rows": rows, "action": action, "mirror": mirror,
                 "replaces": before.get(name, 0) if mirror and not (incremental and name in ("jobs", "history"))
                 else 0}
        if incremental and name == "jobs":
            entry.update(action="merged", adds=rows - known, updates=known)
        if incremental and name == "history":
            entry.update(action="appended", adds=new_entries, already_held=rows - new_entries)
        tables.append(entry)
    policies = bundle_policies.plan(read, ledger.site_id, verified.source_site, _policy_rows(copy, verified))
    for table in tables:  # applied when the source is this site's policy authority (operations/bundle_policies.py)
        if table["table"] in policies["tables"]:
            table.update(policies["tables"][table["table"]])
    handed = _handoff(copy, verified)
    pin = to_pin.version if to_pin is not None else None
    new_versions = [trust.root_version(data) for data in verified.new_roots]
    return {
        "bundle_id": verified.bundle_id, "payload_sha256": verified.payload_sha256, "kind": manifest.kind,
        "base_sequence": manifest.base_sequence, "source_site": verified.source_site,
        "target_site": manifest.target_site, "sequence": manifest.sequence,
        "floor": floor, "created_at": format_time(manifest.created_at), "history_entries": chained,
        "trust_root_version": verified.root.version, "pin_trust_root": pin, "store_trust_roots": new_versions,
        "forced": force, "tables": tables, "policy_authority": policies["authority"],
        "handoff": None if handed is None else _handoff_plan(_receive(read, verified, handed, "plan", False)),
    }


def _policy_rows(copy: BinaryIO, verified: VerifiedBundle) -> bundle_policies.RowsOf:
    """The rows of a policy table member as dicts (none when the bundle has no such member)."""
    def rows_of(table: str) -> Iterator[dict[str, Any]]:
        if BY_NAME[table].path not in {member.path for member in verified.members}:
            return
        for batch in _rows(copy, verified, table):
            yield from batch.to_pylist()
    return rows_of


def _known_jobs(copy: BinaryIO, verified: VerifiedBundle, read: Transaction) -> int:
    """How many of an incremental bundle's jobs the mirror of its source holds already (updates, not adds)."""
    known = 0
    for batch in _rows(copy, verified, "jobs"):
        known += int(read.fetch("mirror_jobs_known", source_site=verified.source_site,
                                job_ids=batch.column("job_id").to_pylist())[0][0])
    return known


def plan_digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(plan)).hexdigest()


# --- the shared front half of plan and import ---------------------------------------------------------------

class _Run:
    def __init__(self, ledger: Ledger, path: Path, trust_path: Path | None, staleness: str | None, force: bool,
                 reason: str | None, now: datetime | None, actor: str):
        if force and not reason:
            raise InvalidInput("--force needs --reason R: overriding staleness is audited with its reason")
        self.ledger, self.path, self.trust_path, self.force, self.actor = ledger, path, trust_path, force, actor
        self.reason = validation.text(reason, validation.MAX_REASON_CHARS, "--reason")
        self.policy = (StalenessPolicy(mode="disabled", allow_future_anchor=True) if force
                       else staleness_policy(staleness_mode(ledger, staleness)))
        self.now = now or clock.now()
        self.verified: VerifiedBundle | None = None

    def verify(self, copy: BinaryIO, size: int) -> tuple[VerifiedBundle, trust.TrustedRoot | None]:
        start, to_pin = _start_root(self.ledger, self.trust_path)
        # A file over the cap was copied up to cap+1 bytes: verify_bundle's size step refuses it.
        self.verified = verify_bundle(copy, pinned_root=start, target_site=self.ledger.site_id, now=self.now,
                                      staleness=self.policy, latest_anchor=_latest_anchor(self.ledger.read()),
                                      table_schemas=TABLE_SCHEMAS)
        return self.verified, to_pin

    def already(self) -> dict[str, Any] | None:
        assert self.verified is not None
        found = self.ledger.read().fetch("bundle_import_find", payload_digest=self.verified.payload_sha256,
                                         bundle_id=self.verified.bundle_id)
        if not found:
            return None
        site, sequence, _, _, imported_at, _ = found[0]
        return {"source_site": site, "sequence": sequence, "imported_at": clock.iso(imported_at)}

    def evidence(self, outcome: str, error: BundleError | None, file_sha256: str) -> dict[str, Any]:
        details: dict[str, Any] = {"outcome": outcome, "file_sha256": file_sha256, "bundle": str(self.path)[:300]}
        verified = self.verified
        if verified is not None:
            details.update(payload_sha256=verified.payload_sha256, bundle_id=verified.bundle_id,
                           source_site=verified.source_site, sequence=verified.manifest.sequence,
                           checks=check_list(verified.checks))
        if error is not None:
            details.update(reason_code=getattr(error, "reason_code", type(error).__name__),
                           message=str(error)[:300])
            if error.checks:
                details["checks"] = check_list(error.checks)
        if self.force:
            details["forced"] = True
        return details

    def refuse(self, error: BundleError, copy: BinaryIO, file_sha256: str) -> None:
        """Evidence of a refusal: the quarantine copy and one audit entry; nothing else is written."""
        code = getattr(error, "reason_code", "bundle:refused")
        _quarantine(self.ledger, copy, file_sha256, code)
        details = self.evidence("refused", error, file_sha256)
        with self.ledger.transaction() as tx:
            audit.append(tx, "bundle.import", actor=self.actor, reason=self.reason,
                         target=_target(details), details=details)


def _target(details: dict[str, Any]) -> str:
    if "source_site" in details:
        return f"{details['source_site']}#{details['sequence']}"
    return f"file:{details['file_sha256'][:16]}"


def _quarantine(ledger: Ledger, copy: BinaryIO, file_sha256: str, reason_code: str) -> None:
    """`<ledger>.quarantine/<sha256>.bundle` (at most QUARANTINE_CAP bytes) and `<sha256>.reason`; named by the
    digest of the bytes only."""
    folder = Path(f"{ledger.path}.quarantine")
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / f"{file_sha256}.bundle"
    if not target.exists():
        copy.seek(0)
        with files.partial_file(target) as (partial, out):
            left = QUARANTINE_CAP
            while left > 0 and (chunk := copy.read(min(COPY_CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
            files.publish(partial, target, replace=True)
    files.write_file(folder / f"{file_sha256}.reason", f"{reason_code}\n".encode(), replace=True)


# --- plan and import ----------------------------------------------------------------------------------------

def plan(ledger: Ledger, path: Path, *, trust_path: Path | None = None, staleness: str | None = None,
         force: bool = False, reason: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The dry run: verify fully, then what `bundle import` would do, with its digest. Writes nothing."""
    run = _Run(ledger, path, trust_path, staleness, force, reason or ("plan" if force else None), now, "cli")
    with private_copy(path, ledger, DEFAULT_TAR_LIMITS.max_archive_bytes) as (copy, file_sha256, size):
        verified, to_pin = run.verify(copy, size)
        done = run.already()
        if done is not None:
            return {"already_imported": True, **done, "payload_sha256": verified.payload_sha256,
                    "message": f"bundle {verified.bundle_id} is already imported; importing it again does nothing"}
        found = _plan(ledger, copy, verified, to_pin, force)
    return {"already_imported": False, "plan": found, "plan_digest": plan_digest(found), "file_sha256": file_sha256,
            "staleness": _verdict(verified), "checks": check_list(verified.checks)}


def import_bundle(ledger: Ledger, path: Path, *, trust_path: Path | None = None,
                  plan_digest_expected: str | None = None, staleness: str | None = None, force: bool = False,
                  reason: str | None = None, now: datetime | None = None, actor: str = "cli") -> dict[str, Any]:
    run = _Run(ledger, path, trust_path, staleness, force, reason, now, actor)
    with private_copy(path, ledger, DEFAULT_TAR_LIMITS.max_archive_bytes) as (copy, file_sha256, size):
        _pause("copied")
        try:
            verified, to_pin = run.verify(copy, size)
            done = run.already()
            if done is not None:
                details = {**run.evidence("already-imported", None, file_sha256), "first_import": done}
                with ledger.transaction() as tx:
                    audit.append(tx, "bundle.import", actor=actor, reason=run.reason, target=_target(details),
                                 details=details)
                return {"imported": False, "already_imported": True, **done, "bundle_id": verified.bundle_id,
                        "payload_sha256": verified.payload_sha256,
                        "message": f"bundle {verified.bundle_id} from {done['source_site']} sequence "
                                   f"{done['sequence']} is already imported; nothing to do"}
            found = _plan(ledger, copy, verified, to_pin, force)
        except BundleError as error:
            run.refuse(error, copy, file_sha256)
            raise
        digest = plan_digest(found)
        if plan_digest_expected is not None and plan_digest_expected != digest:
            raise Conflict(f"the plan changed since digest {plan_digest_expected[:16]}... (now {digest[:16]}...); "
                           "run `bundle plan` again and review it")
        _pause("verified")
        details = {**run.evidence("forced" if force else "imported", None, file_sha256), "plan_digest": digest}
        try:  # a member that does not decode is refused like any other verification failure
            with ledger.transaction() as tx:
                tx.cap_memory(import_memory_cap(verified))
                _write_mirrors(tx, copy, verified)
                applied = bundle_policies.apply(tx, verified.source_site, verified.manifest.sequence,
                                                _policy_rows(copy, verified), actor=actor)
                details["policy_rows_applied"] = sum(1 for change in applied if change["change"] in
                                                     (bundle_policies.ADDED, bundle_policies.REPLACED))
                handed = _handoff(copy, verified)
                if handed is not None:
                    details["handoff"] = _handoff_plan(_receive(tx, verified, handed, actor, True))
                _pause("mirrors-written")
                stored = []
                if to_pin is not None:
                    _store_root(tx, to_pin, run.now, f"{actor} (bundle import --trust)")
                    stored.append(to_pin.version)
                for data in verified.new_roots:  # each verified as a rotation from the one before it
                    _store_root(tx, trust.load_trusted_root(data), run.now, f"{actor} (bundle import)")
                    stored.append(trust.root_version(data))
                tx.execute("bundle_import_record", source_site=verified.source_site,
                           sequence=verified.manifest.sequence, kind=verified.manifest.kind,
                           bundle_id=verified.bundle_id, payload_digest=verified.payload_sha256,
                           created_at=verified.anchor.time, imported_at=clock.now(), imported_by=actor,
                           outcome="forced" if force else "imported")
                details["trust_roots_stored"] = stored
                audit.append(tx, "bundle.import", actor=actor, reason=run.reason, target=_target(details),
                             details=details)
                _pause("before-commit")
        except BundleError as error:
            run.refuse(error, copy, file_sha256)
            raise
        _pause("committed")
    messages = []
    if to_pin is not None:
        messages.append(f"pinned trust root version {to_pin.version} (from --trust) with this import")
    if len(stored) > (1 if to_pin is not None else 0):
        messages.append("stored trust root versions " + ", ".join(map(str, stored)))
    return {"imported": True, "already_imported": False, "bundle_id": verified.bundle_id,
            "payload_sha256": verified.payload_sha256, "source_site": verified.source_site,
            "sequence": verified.manifest.sequence, "plan_digest": digest, "plan": found,
            "pinned_trust_root": to_pin.version if to_pin is not None else None, "trust_roots_stored": stored,
            "staleness": _verdict(verified), "messages": messages}


def _store_root(tx: Transaction, root: trust.TrustedRoot, now: datetime, pinned_by: str) -> None:
    tx.execute("trust_root_insert", version=root.version, root_json=root.data.decode("utf-8"),
               fingerprint=trust_ops.fingerprint(root), expires_at=root.expires, pinned_at=now, pinned_by=pinned_by)


def _verdict(verified: VerifiedBundle) -> dict[str, Any]:
    verdict = verified.time
    return {"state": verdict.state, "mode": verdict.mode, "warning": verdict.warning, "message": verdict.message}


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


# A mirror row's `row_json`: json.dumps(row, default=_json_default, separators=(",", ":"), ensure_ascii=False).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default).encode
_NEEDS_PYTHON = "[\\x00-\\x1f]"  # control characters (escaped by json.dumps as \\n, \\u0001, ...): left to it


@functools.cache
def _text(value: str) -> pa.StringScalar:
    """A string scalar for Arrow compute, made once (converting a Python str, pyarrow tries to import dateutil
    every time: a search of sys.path per call when it is not installed)."""
    return pa.scalar(value, pa.string())


def _json_strings(values: pa.Array) -> pa.Array:
    """Each string as json.dumps writes it (ensure_ascii=False: only backslash, quote and control characters are
    escaped); nulls stay null."""
    if pc.any(pc.match_substring_regex(values, _NEEDS_PYTHON)).as_py():
        return pa.array([None if value is None else _encode(value) for value in values.to_pylist()], pa.string())
    escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise(_text('"'), escaped, _text('"'), _text(""))


def _json_values(values: pa.Array) -> pa.Array:
    """Each value of a column as json.dumps (with _json_default) writes it inside a row; "null" for nulls. Strings,
    integers, flags, times and lists of strings in Arrow compute; anything else value by value in Python."""
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        out = _json_strings(values)
    elif pa.types.is_integer(kind):
        out = pc.cast(values, pa.string())
    elif pa.types.is_boolean(kind):
        out = pc.if_else(values, _text("true"), _text("false"))
    elif pa.types.is_timestamp(kind) and kind.tz is None and kind.unit == "us":
        # "YYYY-MM-DD HH:MM:SS.ffffff" as datetime.isoformat() writes it: a T, microseconds only when not zero
        text = pc.replace_substring(pc.cast(values, pa.string()), " ", "T", max_replacements=1)
        out = pc.binary_join_element_wise(_text('"'), pc.replace_substring(text, ".000000", ""), _text('"'),
                                          _text(""))
    elif pa.types.is_float64(kind) and pc.all(pc.is_finite(values)).as_py() is not False:
        out = pa.array([None if value is None else float.__repr__(value) for value in values.to_pylist()],
                       pa.string())  # as json.dumps writes a finite float
    elif pa.types.is_list(kind) and pa.types.is_string(kind.value_type):
        items = pa.ListArray.from_arrays(values.offsets, pc.fill_null(_json_strings(values.values), _text("null")))
        joined = pc.binary_join_element_wise(_text("["), pc.binary_join(items, _text(",")), _text("]"), _text(""))
        out = pc.if_else(values.is_null(), pa.scalar(None, pa.string()), joined)
    else:
        out = pa.array([_encode(value) for value in values.to_pylist()], pa.string())
    return pc.fill_null(out, _text("null"))


def _json_rows(batch: pa.RecordBatch) -> pa.Array:
    """Each row of the batch as its `row_json` (keys in column order), built column by column."""
    pieces: list[Any] = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        pieces += [_text(("{" if not pieces else ",") + f"{_encode(name)}:"), _json_values(column)]
    return pc.binary_join_element_wise(*pieces, _text("}"), _text(""))


# Arrow's allocator (mimalloc) keeps freed memory for reuse; handed back after each INSERT, it is not counted
# on top of DuckDB's.
_ARROW_POOL = pa.default_memory_pool()
INSERT_ROWS = 16_384  # mirror rows per INSERT (a fixed cost per statement; ~25 MB of Arrow for the jobs)


def _grouped(batches: Iterator[pa.RecordBatch]) -> Iterator[list[pa.RecordBatch]]:
    """Consecutive batches, INSERT_ROWS rows or more at a time (the last group less)."""
    group: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        group.append(batch)
        rows += batch.num_rows
        if rows >= INSERT_ROWS:
            yield group
            group, rows = [], 0
    if group:
        yield group


def _write_mirrors(tx: Transaction, copy: BinaryIO, verified: VerifiedBundle) -> None:
    """Write the bundle into the source site's mirror rows (inside the caller's transaction): a full bundle
    replaces them all; an incremental one replaces the rows of the jobs it carries and appends the history
    entries after the held head (its chain was checked against it). Policies travel whole either way."""
    site = verified.source_site
    incremental = verified.manifest.kind == "incremental"
    held_seq = int(tx.fetch("mirror_history_head", source_site=site)[0][0]) if incremental else 0
    for name in ("mirror_jobs", "mirror_history", "mirror_policies"):
        if not incremental or name == "mirror_policies":
            tx.execute(f"{name}_delete", source_site=site)
    for group in _grouped(_rows(copy, verified, "jobs")):
        table = pa.Table.from_batches([pa.RecordBatch.from_arrays(
            [batch.column("job_id"), batch.column("tenant"), batch.column("state"), _json_rows(batch)],
            names=["job_id", "tenant", "state", "row_json"]) for batch in group])
        if incremental:
            tx.execute_with("mirror_jobs_delete_listed", "rows", table, source_site=site)
        tx.execute_with("mirror_jobs_insert", "rows", table, source_site=site)
        del table
        _ARROW_POOL.release_unused()
    for group in _grouped(_rows(copy, verified, "history")):
        table = pa.Table.from_batches(group)
        if held_seq:
            table = table.filter(pc.greater(table.column("seq"), held_seq))
        tx.execute_with("mirror_history_insert", "rows", table, source_site=site)
        del table
        _ARROW_POOL.release_unused()
    for name in POLICY_TABLES:
        order = BY_NAME[name].order
        for batch in _rows(copy, verified, name):
            rows = batch.to_pylist()
            table = pa.table({"kind": [name] * len(rows),
                              "key": ["/".join(str(r[column]) for column in order) for r in rows],
                              "row_json": _json_rows(batch)}, schema=pa.schema(
                                  [("kind", pa.string()), ("key", pa.string()), ("row_json", pa.string())]))
            tx.execute_with("mirror_policies_insert", "rows", table, source_site=site)


# --- the staleness setting ---------------------------------------------------------------------------------

STALENESS_SETTING = "airgap.staleness"


def staleness_mode(ledger: Ledger, flag: str | None) -> str:
    """The --staleness flag, else the ledger's setting (`airgap staleness MODE`), else warn."""
    if flag is not None:
        return flag
    rows = ledger.read().fetch("meta_get", key=STALENESS_SETTING)
    return rows[0][0] if rows else "warn"


def set_staleness(ledger: Ledger, mode: str, *, reason: str | None, actor: str = "cli") -> dict[str, Any]:
    staleness_policy(mode)
    reason = validation.text(reason, validation.MAX_REASON_CHARS, "--reason")
    before = staleness_mode(ledger, None)
    with ledger.transaction() as tx:
        tx.execute("meta_put", key=STALENESS_SETTING, value=mode)
        audit.append(tx, "airgap.staleness", actor=actor, reason=reason, target=STALENESS_SETTING,
                     details={"from": before, "to": mode})
    return {"staleness": mode, "previous": before}


# --- list and status ----------------------------------------------------------------------------------------

def list_bundles(ledger: Ledger) -> dict[str, Any]:
    read = ledger.read()
    imports = [{**row, "created_at": clock.iso(row["created_at"]), "imported_at": clock.iso(row["imported_at"])}
               for row in read.rows("bundle_import_list")]
    exports = [{**row, "created_at": clock.iso(row["created_at"]), "exported_at": clock.iso(row["exported_at"])}
               for row in read.rows("bundle_export_list")]
    mirrors = {}
    for row in read.fetch("bundle_import_floors"):
        jobs, entries, policies = read.fetch("mirror_counts", source_site=row[0])[0]
        mirrors[row[0]] = {"jobs": jobs, "history": entries, "policies": policies}
    return {"imports": imports, "exports": exports, "mirrors": mirrors}


def status(ledger: Ledger, *, staleness: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The pinned root, the latest verified time anchor and its staleness, the floor of each source site.
    `refused` is True when staleness mode strict finds the site past its budget."""
    moment = now or clock.now()
    policy = staleness_policy(staleness_mode(ledger, staleness))
    root = trust_ops.pinned(ledger)
    read = ledger.read()
    latest = _latest_anchor(read)
    result: dict[str, Any] = {
        "site_id": ledger.site_id,
        "trust_root": None if root is None else {"version": root.version, "expires": clock.iso(root.expires),
                                                 "expired": root.is_expired(moment)},
        "latest_anchor": None, "staleness": None, "refused": False,
        "policy_authority": bundle_policies.authority(read),
        "floors": [{"source_site": site, "sequence": sequence, "created_at": clock.iso(created), "imports": count}
                   for site, sequence, created, count in read.fetch("bundle_import_floors")],
    }
    if latest is not None:
        verdict = assess_time(latest, local_now=moment, latest_anchor=latest, policy=policy)
        result["latest_anchor"] = clock.iso(latest)
        result["staleness"] = {"mode": verdict.mode, "state": verdict.state, "age_seconds": verdict.age.total_seconds(),
                               "drift_seconds": verdict.drift.total_seconds(),
                               "budget_left_seconds": verdict.budget_left.total_seconds(), "message": verdict.message}
        result["refused"] = verdict.refused
    return result


def status_refusal(result: dict[str, Any]) -> PolicyRefused:
    return PolicyRefused(f"this site's latest time anchor is past its staleness budget (mode strict): "
                         f"{result['staleness']['message']}")
