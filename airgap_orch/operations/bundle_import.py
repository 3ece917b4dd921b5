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
from collections.abc import Callable, Iterator
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
from ..bundle.tables import BY_NAME, INCREMENTAL_TABLES, TABLE_SCHEMAS
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
    return IMPORT_MEMORY_BASE + IMPORT_MEMORY_PER_ROW * sum(counts.get(name, 0) for name in INDEXED_TABLES)
QUARANTINE_CAP = 64 * 1024 * 1024  # bytes of a refused file kept as evidence
REFUSALS_LISTED = 20  # refused imports `bundle list` answers (the latest; the audit log keeps them all)
POLICY_TABLES = ("quotas", "rate_limits", "concurrency_limits", "circuit_breakers", "pauses")
# The other tables mirrored row by row into mirror_rows (migration 0016): kind = the table, key = its order columns.
ROW_TABLES = ("idempotency_keys", "job_dependencies", "sources", "backfills", "backfill_windows")
# The tables that can be large (their mirror rows' primary-key index entries count in import_memory_cap).
INDEXED_TABLES = ("jobs", "history", "idempotency_keys", "job_dependencies")
# Where each table of a full bundle goes: (action, mirror table).
DESTINATIONS: dict[str, tuple[str, str | None]] = {
    "jobs": ("mirrored", "mirror_jobs"),
    "history": ("mirrored", "mirror_history"),
    **{name: ("mirrored, not applied", "mirror_policies") for name in POLICY_TABLES},
    **{name: ("mirrored", "mirror_rows") for name in ROW_TABLES},
    "audit_log": ("mirrored", "mirror_audit_log"),
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
def private_copy(path: Path, ledger: Ledger, cap: int, progress: files.Progress | None = None
                 ) -> Iterator[tuple[BinaryIO, str, int]]:
    """(an unlinked temporary copy of the file's first cap+1 bytes, their sha256, their count) in the ledger's
    folder. `progress(done, total)` hears the copy as the first half of copying and verifying."""
    with files.open_readable(path, "bundle") as source:
        expected = min(os.fstat(source.fileno()).st_size, cap + 1)
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
                if progress is not None:
                    progress(min(total, expected), 2 * expected)
            copy.flush()
            copy.seek(0)
            yield copy, digest.hexdigest(), total


# --- trust --------------------------------------------------------------------------------------------------

def _start_root(ledger: Ledger, trust_root: bytes | None) -> tuple[trust.TrustedRoot, trust.TrustedRoot | None]:
    """(the root to verify from, the root to pin with the import: only when nothing is pinned). `trust_root`: the
    --trust document's bytes (the CLI read its file; a server got them ahead of the bundle in the body)."""
    pinned = trust_ops.pinned(ledger)
    if pinned is None:
        if trust_root is None:
            raise NotFound("no trust root is pinned in this ledger; pass --trust ROOT.json (pinned by a successful "
                           "import) or pin one with `trust pin`")
        given = trust.load_trusted_root(trust_root)
        return given, given
    if trust_root is not None:
        given = trust.load_trusted_root(trust_root)
        if given.version > pinned.version:
            raise InvalidInput(f"--trust is version {given.version}, newer than the pinned version {pinned.version}; "
                               "pin it with `trust pin` or let the bundle carry it")
        stored = dict(ledger.read().fetch("trust_root_versions"))
        if stored.get(given.version) != trust_ops.fingerprint(given):
            raise RotationError("fork", f"--trust version {given.version} is not the root this ledger pinned as "
                                f"version {given.version}")
    return pinned, None


# --- plan ---------------------------------------------------------------------------------------------------

def _latest_anchor(tx: Transaction) -> datetime | None:
    return tx.fetch("bundle_import_latest_anchor")[0][0]


def _rows(copy: BinaryIO, verified: VerifiedBundle, table: str, columns: list[str] | None = None
          ) -> Iterator[pa.RecordBatch]:
    """The rows of a verified table member (only `columns`, when given), decoded (a signed member whose pages do not
    decode: payload:decode).

    One row group at a time: pyarrow's reader over a whole file keeps the pages of every row group it has read
    until it is done (~200 MB for the history of 1M jobs), a reader per row group only that group's."""
    member = verified.member(BY_NAME[table].path)
    with open_member(copy, member.tar) as file:
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise PayloadError("decode", f"table {table} does not decode: {str(exc)[:160]}") from None
        for group in range(parquet.metadata.num_row_groups):
            batches = parquet.iter_batches(batch_size=READ_ROWS, row_groups=[group], columns=columns)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError, ValueError) as exc:
                    raise PayloadError("decode", f"table {table} does not decode: {str(exc)[:160]}") from None
                yield batch


@dataclass(frozen=True)
class _ChainTable:
    """A bundle table that is a source site's hash chain, and where this site keeps it."""

    table: str  # the bundle table: history | audit_log
    chain: str  # its name in mirror_chain_heads: history | audit
    key: str  # the key column: job_id | action
    mirror: str  # mirror_history | mirror_audit_log
    hashes_query: str  # the held entries' hashes in a range of seqs
    verify: Callable[..., history.ChainCheck]


HISTORY_CHAIN = _ChainTable("history", "history", "job_id", "mirror_history", "mirror_history_hashes",
                            history.verify_chain)
AUDIT_CHAIN = _ChainTable("audit_log", "audit", "action", "mirror_audit_log", "mirror_audit_hashes",
                          audit.verify_chain)
CHAIN_TABLES = (HISTORY_CHAIN, AUDIT_CHAIN)


def _chain_batches(copy: BinaryIO, verified: VerifiedBundle, spec: _ChainTable) -> Iterator[pa.RecordBatch]:
    """The chain member's batches with a `hash_only` column (false for a member written before it existed), each
    checked: a hashes-only entry has no text and no key, every other entry has its text, and only a bundle whose
    manifest names a tenant carries hashes-only entries (ChainError chain:<chain>)."""
    site = verified.source_site
    for batch in _rows(copy, verified, spec.table):
        if "hash_only" not in batch.schema.names:
            batch = batch.append_column("hash_only", pa.array([False] * batch.num_rows, pa.bool_()))
        flags = batch.column("hash_only")
        if not pc.all(pc.fill_null(pc.equal(flags, pc.is_null(batch.column("entry"))), False)).as_py():
            raise ChainError(spec.chain, f"the bundle's {spec.table} from {site} has an entry whose hash_only flag "
                             "does not say whether its text is there")
        if verified.manifest.tenant is None and pc.any(flags).as_py():
            raise ChainError(spec.chain, f"the bundle's {spec.table} from {site} carries entries as hashes only, but "
                             "its manifest names no tenant (only a --tenant bundle leaves other tenants' entries out)")
        yield batch


def _chain_rows(copy: BinaryIO, verified: VerifiedBundle, spec: _ChainTable) -> Iterator[tuple[int, str, str, str]]:
    for batch in _chain_batches(copy, verified, spec):
        columns = [batch.column(name).to_pylist() for name in ("seq", spec.key, "entry", "entry_hash")]
        yield from zip(*columns, strict=True)


@dataclass(frozen=True)
class _Chained:
    """What the chain check of one chain member found: its entries, how many are new here, how many are hashes
    only, and the head this site holds for the source's chain once it is imported (None: not imported)."""

    entries: int
    new: int
    hash_only: int
    head: tuple[int, str] | None

    def plan(self) -> dict[str, Any]:
        return {"entries": self.entries, "new": self.new, "hash_only": self.hash_only,
                "head_seq": None if self.head is None else self.head[0],
                "head_hash": None if self.head is None else self.head[1]}


def _check_history(copy: BinaryIO, verified: VerifiedBundle, spec: _ChainTable = HISTORY_CHAIN) -> _Chained:
    """Recompute a chain member (history or audit log) from genesis over the bundle's rows; ChainError
    chain:<chain> when it breaks."""
    try:
        check = spec.verify(_chain_rows(copy, verified, spec), hash_only=True)
    except history.Broken as broken:
        raise ChainError(spec.chain, f"the bundle's {spec.table} from {verified.source_site} is broken: "
                         f"{broken}") from None
    return _Chained(check.entries, check.entries, check.hash_only, (check.entries, check.head_hash))


def _check_extends_held(copy: BinaryIO, verified: VerifiedBundle, read: Transaction, spec: _ChainTable,
                        checked: _Chained) -> None:
    """A full bundle's chain (checked from genesis) must extend the head this site holds for its source: the held
    chain is a prefix of it, i.e. its entry at the held head's seq has the held hash (hashes chain, so that entry
    binds every one before it). ChainError chain:head when the source's chain is shorter or forked."""
    site = verified.source_site
    recorded = read.fetch("mirror_chain_head", source_site=site, chain=spec.chain)
    if not recorded or int(recorded[0][0]) == 0:
        return
    held_seq, held_hash = int(recorded[0][0]), recorded[0][1]
    if checked.entries < held_seq:
        raise ChainError("head", f"the bundle's {spec.table} from {site} ends at entry {checked.entries}, but this "
                         f"site holds it up to entry {held_seq}: the source's chain lost entries")
    found = checked.head[1] if checked.head is not None and checked.entries == held_seq else None
    if found is None:
        wanted = pa.array([held_seq], pa.int64())
        for batch in _rows(copy, verified, spec.table, ["seq", "entry_hash"]):
            picked = batch.filter(pc.is_in(batch.column("seq"), wanted))
            if picked.num_rows:
                found = picked.column("entry_hash")[0].as_py()
                break
    if found != held_hash:
        raise ChainError("head", f"{spec.table} entry {held_seq} from {site} differs from the head this site holds: "
                         "the source's chain forked")


def _check_increment(copy: BinaryIO, verified: VerifiedBundle, read: Transaction,
                     spec: _ChainTable = HISTORY_CHAIN) -> _Chained:
    """An incremental bundle's chain member must extend the chain this site holds for its source (the head the
    import that brought it recorded): its first entry chains onto the held entry before it, entries this site
    holds already must be the same (by hash: either may be hashes only), the rest follow on. A chain this site
    holds no head for (an audit log mirrored before migration 0014) is not imported (head None) until a full
    bundle brings it whole."""
    site = verified.source_site
    recorded = read.fetch("mirror_chain_head", source_site=site, chain=spec.chain)
    if not recorded:
        return _Chained(verified.manifest.row_counts.get(spec.table, 0), 0, 0, None)
    held_seq, held_hash = int(recorded[0][0]), recorded[0][1]
    rows = _chain_rows(copy, verified, spec)
    first = next(rows, None)
    if first is None:
        return _Chained(0, 0, 0, (held_seq, held_hash))
    start = int(first[0])
    if start < 1 or start - 1 > held_seq:
        raise ChainError("head", f"the bundle's {spec.table} from {site} starts at entry {start}, but this site "
                         f"holds it up to entry {held_seq}: it does not chain onto the held head")
    held = dict(read.fetch(spec.hashes_query, source_site=site, from_seq=start - 1, to_seq=held_seq))
    held[held_seq] = held_hash  # the recorded head is what the chain goes on from
    prev = history.GENESIS if start == 1 else held.get(start - 1)
    if prev is None:
        raise ChainError("head", f"this site's mirror of {site}'s {spec.table} lacks entry {start - 1}; run "
                         "`ledger verify`")

    def checked() -> Iterator[tuple[int, str, str, str]]:
        for row in itertools.chain([first], rows):
            if row[0] <= held_seq and held.get(row[0]) != row[3]:
                raise ChainError("head", f"{spec.table} entry {row[0]} from {site} differs from the entry this site "
                                 "holds: the source's chain forked")
            yield row

    try:
        check = spec.verify(checked(), start=history.ChainCheck(start - 1, prev, 0), hash_only=True)
    except history.Broken as broken:
        raise ChainError(spec.chain, f"the bundle's {spec.table} from {site} does not extend the chain held here: "
                         f"{broken}") from None
    head = (check.entries, check.head_hash) if check.entries > held_seq else (held_seq, held_hash)
    return _Chained(check.entries - (start - 1), max(0, check.entries - held_seq), check.hash_only, head)


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
    _check_handoff_entries(copy, verified, handoffs)
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


def _check_handoff_entries(copy: BinaryIO, verified: VerifiedBundle, handoffs: list[dict[str, Any]]) -> None:
    """Each hand-off must name its job's entry in the bundle's (verified) history: the entry at `history_seq` has
    that hash and is of that job, so the `job.received` entry here, which names it, continues the source's chain.
    PayloadError payload:handoff otherwise."""
    named = {row["history_seq"]: row for row in handoffs}
    held: dict[int, dict[str, Any]] = {}
    wanted = pa.array(list(named), pa.int64())
    for batch in _rows(copy, verified, "history", ["seq", "job_id", "entry_hash"]):
        held.update((row["seq"], row) for row in batch.filter(pc.is_in(batch.column("seq"), wanted)).to_pylist())
    for seq, handed in named.items():
        entry = held.get(seq)
        if entry is None or entry["entry_hash"] != handed["entry_hash"] or entry["job_id"] != handed["job_id"]:
            raise PayloadError("handoff", f"the hand-off of job {handed['job_id']} names history entry {seq} of "
                               f"{verified.source_site}, which is not that job's entry in the bundle's history")


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


def _plan(ledger: Ledger, copy: BinaryIO, verified: VerifiedBundle, start: trust.TrustedRoot,
          to_pin: trust.TrustedRoot | None, force: bool) -> dict[str, Any]:
    """The canonical plan (no time-dependent field: its digest only changes when the outcome would)."""
    manifest = verified.manifest
    if verified.source_site == ledger.site_id:
        raise TargetError("own-site", f"the bundle comes from this site ({ledger.site_id}); a site never imports "
                          "its own bundles")
    read = ledger.read()
    floor = int(read.fetch("bundle_import_floor", source_site=verified.source_site)[0][0])
    resets = _resets(read, verified, start)
    fresh = verified.source_site in {reset["site"] for reset in resets}
    if fresh:
        floor = 0  # the bundle's rotation replaces its site's keys: that floor starts again (fast-forward recovery)
    if manifest.sequence <= floor:
        raise RollbackError("sequence", f"bundle sequence {manifest.sequence} from {verified.source_site} is not "
                            f"above the floor {floor} (the latest imported); a replayed or older bundle is refused")
    incremental = manifest.kind == "incremental"
    if incremental:
        base = manifest.base_sequence
        if fresh or not read.fetch("bundle_import_has", source_site=verified.source_site, sequence=base)[0][0]:
            raise RollbackError("base-missing", f"incremental bundle {manifest.sequence} from "
                                f"{verified.source_site} applies on sequence {base}, which this site has not "
                                f"imported: import bundle {base} first, or ask {verified.source_site} for a full "
                                "bundle or one cut with --base from a sequence imported here")
        chains = {spec.chain: _check_increment(copy, verified, read, spec) for spec in CHAIN_TABLES}
    else:
        chains = {spec.chain: _check_history(copy, verified, spec) for spec in CHAIN_TABLES}
        for spec in CHAIN_TABLES:
            if floor:  # with no import of the site standing (none yet, or reset by a key rotation), chains start afresh
                _check_extends_held(copy, verified, read, spec, chains[spec.chain])
    chained = chains["history"].entries
    jobs, entries, policies, audit_entries = read.fetch("mirror_counts", source_site=verified.source_site)[0]
    policy_counts = dict(read.fetch("mirror_policy_counts", source_site=verified.source_site))
    row_counts = dict(read.fetch("mirror_rows_counts", source_site=verified.source_site))
    before = {"jobs": jobs, "history": entries, "audit_log": audit_entries,
              **{name: policy_counts.get(name, 0) for name in POLICY_TABLES},
              **{name: row_counts.get(name, 0) for name in ROW_TABLES}}
    known = {"jobs": _known_jobs(copy, verified, read)} if incremental else {}
    if incremental:
        known.update({name: _known_rows(copy, verified, read, name) for name in ROW_TABLES
                      if name in INCREMENTAL_TABLES and _has(verified, name)})
    tables = []
    for name, rows in sorted(manifest.row_counts.items()):
        action, mirror = DESTINATIONS.get(name, ("not imported", None))
        entry = {"table": name, "rows": rows, "action": action, "mirror": mirror,
                 "replaces": before.get(name, 0) if mirror and not (incremental and name in INCREMENTAL_TABLES)
                 else 0}
        if name in known:
            entry.update(action="merged", adds=rows - known[name], updates=known[name])
        if incremental and name in ("history", "audit_log"):
            found = chains["history" if name == "history" else "audit"]
            if found.head is None:
                entry.update(action="not imported: this site holds no audit chain of the source yet (mirrored "
                             "before migration 0014); its next full bundle brings it", mirror=None)
            else:
                entry.update(action="appended", adds=found.new, already_held=rows - found.new)
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
        "tenant": manifest.tenant, "chains": {name: found.plan() for name, found in chains.items()},
        "trust_root_version": verified.root.version, "pin_trust_root": pin, "store_trust_roots": new_versions,
        "forced": force, "tables": tables, "policy_authority": policies["authority"], "floors_reset": resets,
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


def _known_rows(copy: BinaryIO, verified: VerifiedBundle, read: Transaction, name: str) -> int:
    """How many of an incremental bundle's rows of a mirror_rows table the mirror of its source holds already."""
    known = 0
    for batch in _rows(copy, verified, name):
        known += int(read.fetch("mirror_rows_known", source_site=verified.source_site, kind=name,
                                keys=_row_keys(batch, name).to_pylist())[0][0])
    return known


def plan_digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(plan)).hexdigest()


# --- the shared front half of plan and import ---------------------------------------------------------------

class _Run:
    def __init__(self, ledger: Ledger, path: Path, trust_root: bytes | None, staleness: str | None, force: bool,
                 reason: str | None, now: datetime | None, actor: str):
        if force and not reason:
            raise InvalidInput("--force needs --reason R: overriding staleness is audited with its reason")
        self.ledger, self.path, self.trust_root, self.force, self.actor = ledger, path, trust_root, force, actor
        self.reason = validation.text(reason, validation.MAX_REASON_CHARS, "--reason")
        self.policy = (StalenessPolicy(mode="disabled", allow_future_anchor=True) if force
                       else staleness_policy(staleness_mode(ledger, staleness)))
        self.now = now or clock.now()
        self.verified: VerifiedBundle | None = None
        self.start: trust.TrustedRoot | None = None  # the root verification starts from (pinned, or --trust)

    def verify(self, copy: BinaryIO, size: int, progress: files.Progress | None = None
               ) -> tuple[VerifiedBundle, trust.TrustedRoot | None]:
        self.start, to_pin = _start_root(self.ledger, self.trust_root)
        if progress is not None:  # the second half of copying and verifying
            copy = files.Watched(copy, progress, start=size, total=2 * size)
        # A file over the cap was copied up to cap+1 bytes: verify_bundle's size step refuses it.
        self.verified = verify_bundle(copy, pinned_root=self.start.data, target_site=self.ledger.site_id, now=self.now,
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
        elif error is not None and error.signed_manifest is not None:  # refused after its signed manifest verified
            details.update(error.signed_manifest)
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

def plan(ledger: Ledger, path: Path, *, trust_root: bytes | None = None, staleness: str | None = None,
         force: bool = False, reason: str | None = None, now: datetime | None = None,
         progress: files.Progress | None = None) -> dict[str, Any]:
    """The dry run: verify fully, then what `bundle import` would do, with its digest. Writes nothing."""
    run = _Run(ledger, path, trust_root, staleness, force, reason or ("plan" if force else None), now, "cli")
    with private_copy(path, ledger, DEFAULT_TAR_LIMITS.max_archive_bytes, progress) as (copy, file_sha256, size):
        verified, to_pin = run.verify(copy, size, progress)
        done = run.already()
        if done is not None:
            return {"already_imported": True, **done, "payload_sha256": verified.payload_sha256,
                    "message": f"bundle {verified.bundle_id} is already imported; importing it again does nothing"}
        found = _plan(ledger, copy, verified, run.start, to_pin, force)
    return {"already_imported": False, "plan": found, "plan_digest": plan_digest(found), "file_sha256": file_sha256,
            "staleness": _verdict(verified), "checks": check_list(verified.checks)}


def import_bundle(ledger: Ledger, path: Path, *, trust_root: bytes | None = None,
                  plan_digest_expected: str | None = None, staleness: str | None = None, force: bool = False,
                  reason: str | None = None, now: datetime | None = None, actor: str = "cli",
                  progress: files.Progress | None = None) -> dict[str, Any]:
    run = _Run(ledger, path, trust_root, staleness, force, reason, now, actor)
    with private_copy(path, ledger, DEFAULT_TAR_LIMITS.max_archive_bytes, progress) as (copy, file_sha256, size):
        _pause("copied")
        try:
            verified, to_pin = run.verify(copy, size, progress)
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
            found = _plan(ledger, copy, verified, run.start, to_pin, force)
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
                _record_heads(tx, verified.source_site, found)
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
                    trust_ops.store_roots(tx, None, [to_pin], now=run.now,
                                          pinned_by=f"{actor} (bundle import --trust)")
                    stored.append(to_pin.version)
                rotations = [trust.load_trusted_root(data) for data in verified.new_roots]  # each verified
                details["floors_reset"] = trust_ops.store_roots(tx, run.start, rotations,
                                                                now=run.now, pinned_by=f"{actor} (bundle import)")
                stored += [root.version for root in rotations]
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
    if details["floors_reset"]:
        messages.append(trust_ops.floors_reset_message(details["floors_reset"]))
    return {"imported": True, "already_imported": False, "bundle_id": verified.bundle_id,
            "payload_sha256": verified.payload_sha256, "source_site": verified.source_site,
            "sequence": verified.manifest.sequence, "plan_digest": digest, "plan": found,
            "pinned_trust_root": to_pin.version if to_pin is not None else None, "trust_roots_stored": stored,
            "staleness": _verdict(verified), "messages": messages}


def _resets(read: Transaction, verified: VerifiedBundle, start: trust.TrustedRoot) -> list[dict[str, Any]]:
    """The floors the bundle's rotations (from `start`, the root verification started from) would reset
    (trust_ops.store_roots), site by site, as the plan shows them."""
    previous, resets = start, []
    for data in verified.new_roots:
        root = trust.load_trusted_root(data)
        for site in trust_ops.replaced_sites(previous, root):
            floor = int(read.fetch("bundle_import_floor", source_site=site)[0][0])
            resets.append({"site": site, "root_version": root.version, "floor_before": floor})
        previous = root
    return resets


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
    for name in ("mirror_jobs", "mirror_history", "mirror_audit_log", "mirror_policies"):
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
    for spec in CHAIN_TABLES:
        _write_chain_mirror(tx, copy, verified, spec, incremental)
    _write_row_mirrors(tx, copy, verified, incremental)
    for name in POLICY_TABLES:
        order = BY_NAME[name].order
        for batch in _rows(copy, verified, name):
            rows = batch.to_pylist()
            table = pa.table({"kind": [name] * len(rows),
                              "key": ["/".join(str(r[column]) for column in order) for r in rows],
                              "row_json": _json_rows(batch)}, schema=pa.schema(
                                  [("kind", pa.string()), ("key", pa.string()), ("row_json", pa.string())]))
            tx.execute_with("mirror_policies_insert", "rows", table, source_site=site)


def _row_keys(batch: pa.RecordBatch, name: str) -> pa.Array:
    """Each row's mirror key: its table's order columns joined by '/' (only the last of them may hold a '/': ids,
    tenants and site ids cannot)."""
    columns = [pc.cast(batch.column(column), pa.string()) for column in BY_NAME[name].order]
    if len(columns) == 1:
        return columns[0]
    return pc.binary_join_element_wise(*columns, _text("/"))


def _write_row_mirrors(tx: Transaction, copy: BinaryIO, verified: VerifiedBundle, incremental: bool) -> None:
    """Write ROW_TABLES into mirror_rows: a full bundle replaces the source's rows; an incremental one replaces the
    tables that travel whole and merges the incremental ones (idempotency keys, job dependencies) by key. Bounded
    batches, as the jobs."""
    site = verified.source_site
    if not incremental:
        tx.execute("mirror_rows_delete", source_site=site)
    for name in ROW_TABLES:
        if not _has(verified, name):
            continue
        merged = incremental and name in INCREMENTAL_TABLES
        if incremental and not merged:
            tx.execute("mirror_rows_delete_kind", source_site=site, kind=name)
        for group in _grouped(_rows(copy, verified, name)):
            table = pa.Table.from_batches([pa.RecordBatch.from_arrays(
                [_row_keys(batch, name), _json_rows(batch)], names=["key", "row_json"]) for batch in group])
            if merged:
                tx.execute_with("mirror_rows_delete_listed", "rows", table, source_site=site, kind=name)
            tx.execute_with("mirror_rows_insert", "rows", table, source_site=site, kind=name)
            del table
            _ARROW_POOL.release_unused()


def _write_chain_mirror(tx: Transaction, copy: BinaryIO, verified: VerifiedBundle, spec: _ChainTable,
                        incremental: bool) -> None:
    """Append a chain member's entries past the held head to its mirror (a full bundle's mirror was emptied; an
    incremental bundle's entries up to the held head were checked equal to the held ones). An incremental bundle
    of a chain this site holds no head for writes nothing (_check_increment)."""
    site = verified.source_site
    held_seq = 0
    if incremental:
        recorded = tx.fetch("mirror_chain_head", source_site=site, chain=spec.chain)
        if not recorded:
            return
        held_seq = int(recorded[0][0])
    for group in _grouped(_chain_batches(copy, verified, spec)):
        table = pa.Table.from_batches(group)
        if held_seq:
            table = table.filter(pc.greater(table.column("seq"), held_seq))
        tx.execute_with(f"{spec.mirror}_insert", "rows", table, source_site=site)
        del table
        _ARROW_POOL.release_unused()


def _record_heads(tx: Transaction, site: str, found: dict[str, Any]) -> None:
    """Record the head of each chain of `site` that the import brought (from its plan's chain checks): the next
    import extends it and `ledger verify` matches the mirror against it."""
    for chain, checked in found["chains"].items():
        if checked["head_seq"] is not None:
            tx.execute("mirror_chain_head_put", source_site=site, chain=chain, seq=checked["head_seq"],
                       entry_hash=checked["head_hash"])


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
    # Each import's checks, from its audit entry (the import row keeps none): [] if the entry holds none.
    checks: dict[str, Any] = {}
    for digest, found in read.fetch("bundle_import_checks",
                                    payload_digests=[row["payload_digest"] for row in imports]):
        checks.setdefault(digest, json.loads(found) if found else [])
    for row in imports:
        row["checks"] = checks.get(row["payload_digest"], [])
    exports = [{**row, "created_at": clock.iso(row["created_at"]), "exported_at": clock.iso(row["exported_at"])}
               for row in read.rows("bundle_export_list")]
    mirrors = {}
    for row in read.fetch("bundle_import_floors"):
        jobs, entries, policies, audit_entries = read.fetch("mirror_counts", source_site=row[0])[0]
        rows = dict(read.fetch("mirror_rows_counts", source_site=row[0]))
        mirrors[row[0]] = {"jobs": jobs, "history": entries, "policies": policies, "audit_log": audit_entries,
                           **{name: rows.get(name, 0) for name in ROW_TABLES}}
    superseded = [{**row, "superseded_at": clock.iso(row["superseded_at"])}
                  for row in read.rows("bundle_import_superseded_list")]
    refused, refused_total = _refused_imports(read)
    return {"imports": imports, "exports": exports, "mirrors": mirrors, "superseded_imports": superseded,
            "refused_imports": refused, "refused_imports_total": refused_total}


def _refused_imports(read: Transaction) -> tuple[list[dict[str, Any]], int]:
    """The latest REFUSALS_LISTED refused imports, newest first, from their audit entries, and how many there are:
    when, by whom, the reason code and message, the source and sequence when the manifest verified (else None),
    each check up to the failed one, and the quarantine copy's file name (beside the ledger, in
    `<ledger>.quarantine/`)."""
    refused, total = [], 0
    for row in read.rows("bundle_import_refusals", limit=REFUSALS_LISTED):
        details = json.loads(row["details"]) if row["details"] else {}
        file_sha256 = details.get("file_sha256")
        refused.append({"audit_seq": row["seq"], "at": row["at"], "actor": row["actor"],
                        "reason_code": details.get("reason_code"), "message": details.get("message"),
                        "source_site": details.get("source_site"), "sequence": details.get("sequence"),
                        "bundle_id": details.get("bundle_id"), "bundle": details.get("bundle"),
                        "file_sha256": file_sha256, "checks": details.get("checks", []),
                        "quarantine_file": f"{file_sha256}.bundle" if file_sha256 else None})
        total = row["total"]
    return refused, total


def list_mirrors(ledger: Ledger, *, source_site: str | None = None, kind: str | None = None,
                 limit: Any = validation.MAX_PAGE_ROWS, cursor: Any = None) -> dict[str, Any]:
    """`bundle mirrors`, one page: the mirrored idempotency keys, dependencies, sources, backfills and windows
    (mirror_rows) by source site, table and key, at most `limit` rows (and at most validation.MAX_PAGE_ROWS), with
    each source's count per table; `next_cursor` continues after the page (None: nothing follows). One snapshot.
    Policies are shown by `airgap policies`."""
    if source_site is not None:
        validation.site_id(source_site, "--source")
    if kind is not None and kind not in ROW_TABLES:
        raise InvalidInput(f"--kind must be one of {', '.join(ROW_TABLES)}, not {str(kind)[:40]!r} (policies: "
                           "`airgap policies`)")
    wanted = min(validation.list_limit(limit), validation.MAX_PAGE_ROWS)
    after = [None, None, None] if cursor is None else validation.cursor(cursor, "mirrors", (str, str, str))
    counts: dict[str, dict[str, int]] = {}
    with ledger.snapshot() as read:
        for site, table, count in read.fetch("mirror_rows_totals", source_site=source_site, kind=kind):
            counts.setdefault(site, {})[table] = count
        found = read.fetch("mirror_rows_list", source_site=source_site, kind=kind, after_site=after[0],
                           after_kind=after[1], after_key=after[2], limit=wanted + 1)
    page = found[:wanted]
    rows = [{"source_site": site, "table": table, "key": key, "row": json.loads(row_json)}
            for site, table, key, row_json in page]
    more = len(found) > wanted
    return {"site_id": ledger.site_id, "counts": counts, "rows": rows,
            "next_cursor": validation.page_cursor("mirrors", list(page[-1][:3])) if more else None}


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
