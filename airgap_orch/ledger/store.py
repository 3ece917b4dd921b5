"""Opening the ledger file (one writer, bounded wait for the lock), migrations, transactions, snapshots.

Within a process every write transaction goes through one lock on one connection (the writer's).
Reads that change nothing take a snapshot instead: a read-only transaction on a connection of their own
(DuckDB MVCC: it sees what was committed when it began, and neither waits for the writer nor makes it wait),
kept short, one page of a listing each, because an open transaction stops DuckDB from checkpointing.
Across processes DuckDB's file lock admits one read-write opener; we wait for it up to
`lock_timeout` seconds and then raise LedgerBusy naming the holder's PID.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .. import clock
from ..errors import InvalidInput, LedgerBusy, NotFound
from ..validation import DEFAULT_LOCK_TIMEOUT_SECONDS
from . import sql

DEFAULT_LOCK_TIMEOUT = DEFAULT_LOCK_TIMEOUT_SECONDS
GENESIS_HASH = "0" * 64
# WAL size that triggers a checkpoint (DuckDB's default is 16 MiB). Each checkpoint rewrites the tables' open
# row groups and the idempotency-key index, so fewer, larger ones cost less in total: enqueueing 100k jobs spent
# ~4.2 s in COMMITs at 16 MiB and ~2.4 s in COMMITs plus a final CHECKPOINT at 64 MiB. Commits stay durable: the
# WAL is synced at every commit whatever this is; it only bounds the WAL replayed after a crash.
CHECKPOINT_THRESHOLD = "64MiB"
# History rows are written once per transaction, just before COMMIT: one append however many parts of the
# transaction changed jobs (the server's group commit, an ack with the next claim). Measured with its 4
# VARCHAR/BIGINT columns: DuckDB's appender takes 100 rows in half the time of an INSERT reading an Arrow
# table, 1,000 in about the same, 10,000 in twice the time.
APPEND_ARROW_FROM = 1_000
_HISTORY_SCHEMA = pa.schema([("seq", pa.int64()), ("job_id", pa.string()), ("entry", pa.string()),
                             ("entry_hash", pa.string())])
_HOLDER_PID = re.compile(r"PID (\d+)")
# Test and benchmark switch only (scripts/bench.py): open after a crash the way the ledger did before it
# checkpointed recovered WALs, to measure what that costs. Never set in production code.
_RECOVER_WITHOUT_CHECKPOINT = False


def wal_path(ledger_path: Path) -> Path:
    """Where DuckDB keeps the write-ahead log of the ledger at `ledger_path` (present only while the file is open
    or after a process holding it died)."""
    return ledger_path.with_name(ledger_path.name + ".wal")


class Ledger:
    """An open ledger file. Use `Ledger.open()`; close it (or use it as a context manager)."""

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection):
        self.path = path
        self._con = connection
        self._lock = threading.RLock()
        self.site_id = ""
        self.head_seq = 0
        self.head_hash = GENESIS_HASH
        self.unarchived = 0  # finished rows still in the hot table
        self.last_sweep = 0.0  # monotonic time of the last expired-lease sweep
        self._open_tx: Transaction | None = None
        self.schema_version = 0  # set at open, after the migrations (nothing migrates an open ledger)
        # Read connections (DuckDB cursors of the writer's connection: same database, own transactions), idle
        # ones here; one is taken per snapshot, so there are as many as snapshots were ever open at once.
        self._idle_readers: list[duckdb.DuckDBPyConnection] = []
        self._readers: list[duckdb.DuckDBPyConnection] = []
        self._readers_lock = threading.Lock()
        self._snapshots_stopped = False
        # State derived from the ledger that orchestrator modules keep between transactions (flow-control
        # limits, fairness turns), by module name. Cleared on rollback: it is rebuilt from the ledger.
        self.cache: dict[str, Any] = {}
        # Called after each commit with the history entries it appended: [(seq, job_id, entry, hash)].
        self.commit_listeners: list = []
        # Called after each commit that stored job log lines, with {job_id: its last seq} (orchestrator/joblogs.py).
        self.log_listeners: list = []
        # The job log bounds of the process that opened the ledger (serve, worker run flags; orchestrator/joblogs.py
        # Limits), None: the defaults.
        self.job_log_limits: Any = None
        # Called after each commit with those entries and {job_id: queue} of their jobs (history entries carry no
        # queue; the metrics label counts by it).
        self.commit_observers: list = []

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        create: bool = False,
        site_id: str | None = None,
    ) -> Ledger:
        # The file itself, not a symlink to it: DuckDB keeps the WAL beside the file a link points to, and the
        # check for a WAL left by a crash (below) must look there too.
        ledger_path = Path(path).resolve()
        if create:
            _create(ledger_path, site_id or "", lock_timeout)
        elif not ledger_path.exists():
            raise NotFound(f"no ledger at {ledger_path}; create one with `airgap-orch ledger init`")
        connection = _connect_waiting(ledger_path, lock_timeout)
        ledger = cls(ledger_path, connection)
        try:
            ledger._migrate()
            ledger._load_state()
            if not _RECOVER_WITHOUT_CHECKPOINT and wal_path(ledger_path).exists():
                ledger._checkpoint_recovered()
        except BaseException:
            connection.close()
            raise
        return ledger

    def _checkpoint_recovered(self) -> None:
        """Fold a WAL left by a process that did not close the ledger (killed, crashed) into the file.

        DuckDB replays that WAL into memory on open but leaves it on disk and appends new commits to it, so
        without this every crash adds its writes to what the next open replays: 29k single enqueues across
        crashes made an open take 7.2 s. A clean close checkpoints and removes the WAL, so a WAL here means a
        crash (or migrations just applied); folding it in costs about what replaying it did (BENCHMARKS.md)."""
        with self._lock:
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:
                raise InvalidInput(f"cannot fold the WAL left by a crash into {self.path}: "
                                   f"{str(exc).splitlines()[0]}; check free disk space and permissions, then retry"
                                   ) from None

    def _migrate(self, *, new: bool = False) -> None:
        """Apply pending numbered migrations, each in its own transaction. Refuses (writing nothing) a
        file that is not a ledger, unless `new`."""
        con = self._con
        known = con.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name = 'schema_migrations'").fetchone()[0]
        if not known and not new:
            raise InvalidInput(f"{self.path} is not an airgap-orch ledger (no schema); "
                               "point --ledger at a ledger or create one with `ledger init`")
        con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
        applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, text in sql.migrations():
            if version in applied:
                continue
            con.execute("BEGIN")
            try:
                con.execute(text)
                con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, clock.now()])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _load_state(self) -> None:
        row = self._con.execute(sql.queries()["meta_get"], {"key": "site_id"}).fetchone()
        if row is None:
            raise InvalidInput(f"{self.path} has no site identity; it was not created by `ledger init`")
        self.site_id = row[0]
        # The head recorded at commit (migration 0008), not the last history row: a chain whose end was removed
        # behind the ledger's back goes on from where it really ended, so `ledger verify` still sees the gap.
        head = self._con.execute(sql.queries()["chain_head"], {"chain": "history"}).fetchone()
        if head is not None:
            self.head_seq, self.head_hash = int(head[0]), head[1]
        self.unarchived = -1  # unknown after open: archive on the next claim
        self.schema_version = int(self._con.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] or 0)

    # -- use -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic unit. Nested use in the same thread joins the open transaction: the outermost
        commits or rolls back everything (the server wraps an operation and its idempotency record)."""
        with self._lock:
            if self._open_tx is not None:
                yield self._open_tx
                return
            tx = Transaction(self)
            self._open_tx = tx
            self._con.execute("BEGIN")
            try:
                yield tx
                for hook in tx.before_commit:  # e.g. the job log lines the transaction's reports staged
                    hook(tx)
                tx.write_history()
                tx.restore_memory_limit()  # the COMMIT runs under the database's own limit (see cap_memory)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                self.cache.clear()
                raise
            finally:
                self._open_tx = None
                tx.restore_memory_limit()
            self.head_seq, self.head_hash = tx.head_seq, tx.head_hash
            self.unarchived = tx.unarchived
            if tx.appended:
                for listener in self.commit_listeners:
                    listener(tx.appended)
                for observer in self.commit_observers:
                    observer(tx.appended, tx.queue_of)
            if tx.logged:
                for listener in self.log_listeners:
                    listener(tx.logged)

    def read(self) -> Transaction:
        """Queries on the writer's connection outside an explicit transaction, each statement on its own (for the
        writer between its transactions; read-only operations take a snapshot())."""
        return Transaction(self)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A read-only transaction on a read connection of its own: what was committed when it began, however
        long it runs, without waiting for the writer or making it wait. Any thread may hold one. Keep it short
        (one page of a listing): DuckDB does not checkpoint while a transaction is open, so the WAL would grow."""
        if self._snapshots_stopped:
            raise LedgerBusy(f"ledger {self.path} is closing (the server is stopping); retry once it is back")
        connection = self._reader()
        try:
            connection.execute("BEGIN TRANSACTION READ ONLY")
            yield Snapshot(self, connection)
        except BaseException:
            self._retire(connection)
            raise
        try:
            connection.execute("COMMIT")
        except BaseException:
            self._retire(connection)
            raise
        with self._readers_lock:
            self._idle_readers.append(connection)

    def stop_snapshots(self) -> None:
        """Refuse new snapshots from now on (LedgerBusy): reads in progress end at their next page or chunk."""
        self._snapshots_stopped = True

    def _reader(self) -> duckdb.DuckDBPyConnection:
        with self._readers_lock:
            if self._idle_readers:
                return self._idle_readers.pop()
        with self._lock:  # a cursor is made from the writer's connection: not while another thread uses it
            connection = self._con.cursor()
        with self._readers_lock:
            self._readers.append(connection)
        return connection

    def _retire(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Close a read connection whose snapshot failed (its transaction may still be open)."""
        with self._readers_lock:
            if connection in self._readers:
                self._readers.remove(connection)
        with contextlib.suppress(duckdb.Error):
            connection.close()

    def close(self) -> None:
        """Close the read connections, then the writer's (stop the threads that take snapshots first)."""
        with self._lock:
            with self._readers_lock:
                readers, self._readers, self._idle_readers = self._readers, [], []
            for connection in readers:
                with contextlib.suppress(duckdb.Error):
                    connection.close()
            self._con.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transaction:
    """Named-query access inside one transaction; carries the history chain head and the history rows it
    appended (written at commit) until commit."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.con = ledger._con
        self.site_id = ledger.site_id
        self.head_seq = ledger.head_seq
        self.head_hash = ledger.head_hash
        self.unarchived = ledger.unarchived
        self.appended: list[tuple[int, str, str, str]] = []  # (seq, job_id, entry, entry_hash), chained
        self.queue_of: dict[str, str] = {}  # job_id -> queue, for the appended entries whose job row named one
        self._written = 0  # how many of them are in the history table
        # Work staged by orchestrator modules for the end of the transaction: `before_commit` hooks run (in order)
        # just before the history is written and COMMIT; `staged` holds what they write, by module.
        self.before_commit: list[Callable[[Transaction], None]] = []
        self.staged: dict[str, Any] = {}
        self.logged: dict[str, int] = {}  # job id -> last job log seq this transaction stored (for log_listeners)
        self._memory_capped = False  # cap_memory holds

    def cap_memory(self, limit: int) -> None:
        """Cap DuckDB's buffer pool at `limit` bytes until this transaction ends, for bulk writes (a bundle import).

        Under its default limit (80% of RAM) DuckDB keeps what a large transaction writes in memory up to that
        limit; under a cap it writes it out to the ledger file (or spills to `<ledger>.tmp`) as it goes, at little
        cost in time. The cap must hold the transaction's new primary-key index entries (DuckDB keeps them in
        memory: ~30 bytes a row), or an INSERT fails for want of memory. It is lifted before COMMIT, which needs
        the indexes whole and fails FATALLY (the database unusable until reopened) when it lacks memory, and
        after a rollback. The setting is the database's, so reads running meanwhile (snapshots) work under the
        cap too: they page and stream, and spill past it. Setting a cap below what DuckDB holds makes it evict or
        spill the rest; should that fail, the error aborts the transaction (DuckDB does so for any failed
        statement in one), so this is called first, before anything is written."""
        with self.ledger._lock:
            self.con.execute(sql.queries()["memory_limit_set"], {"limit": f"{max(1, limit // 1024)}KiB"})
            self._memory_capped = True

    def restore_memory_limit(self) -> None:
        """Lift cap_memory's cap: back to DuckDB's default, the limit the ledger runs at (no-op without a cap).
        Not in an aborted transaction: the ledger calls it before COMMIT and after ROLLBACK."""
        if self._memory_capped:
            with self.ledger._lock:
                self.con.execute(sql.queries()["memory_limit_reset"])
            self._memory_capped = False

    @property
    def cache(self) -> dict[str, Any]:
        """State derived from the ledger that orchestrator modules keep between the writer's transactions."""
        return self.ledger.cache

    def write_history(self) -> None:
        """Write the history rows appended since the last write (the ledger does it before COMMIT)."""
        rows = self.appended[self._written:]
        if not rows:
            return
        if len(rows) < APPEND_ARROW_FROM:
            self.append("history", rows)
        else:
            self.execute_with("history_append", "entries", pa.table(list(zip(*rows, strict=True)),
                                                                    schema=_HISTORY_SCHEMA))
        # The head, durably in the same transaction: `ledger verify` checks the chain ends there.
        self.execute("chain_head_record", chain="history", seq=rows[-1][0], entry_hash=rows[-1][3])
        self._written = len(self.appended)

    def execute(self, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
        with self.ledger._lock:
            return self.con.execute(sql.queries()[name], params or None)

    def fetch(self, name: str, **params: Any) -> list[tuple]:
        """All result tuples of a named query, fetched under the lock: a read outside a transaction may share
        the connection with another thread's transaction, so execute and fetch must not be split."""
        with self.ledger._lock:
            return self.con.execute(sql.queries()[name], params or None).fetchall()

    def rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        with self.ledger._lock:
            cursor = self.con.execute(sql.queries()[name], params or None)
            columns = [d[0] for d in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def execute_with(self, name: str, relation: str, table: pa.Table, **params: Any):
        """Run a named query that reads the Arrow `table` under the name `relation`.

        The table is found by DuckDB's replacement scan (a local variable of that name in the frame that runs
        the statement), not registered as a view: inside a transaction DuckDB drops a registered view only at
        COMMIT, and keeps each Arrow table registered under it alive until then (an import of 1M jobs held
        ~2.4 GB of them). Read this way, a table is released when the statement ends."""
        with self.ledger._lock:
            return _reading(relation)(self.con, sql.queries()[name], params or None, table)

    def append(self, table: str, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows (every column of `table`, in order) through DuckDB's appender, inside this transaction.
        For append-only logs in small batches: twice as fast as an INSERT reading an Arrow table of 100 rows,
        half as fast for 10,000."""
        with self.ledger._lock, self.con.appender(table) as appender:
            appender.append_rows(rows)


@functools.cache
def _reading(relation: str) -> Callable[[duckdb.DuckDBPyConnection, str, Any, pa.Table], duckdb.DuckDBPyConnection]:
    """A function (con, query, params, table) that runs the query with `table` in a local variable named
    `relation`, where DuckDB's replacement scan finds it (it looks in the frame calling execute: this one's)."""
    if not relation.isidentifier() or relation in ("con", "query", "params"):
        raise ValueError(f"not a relation name for execute_with: {relation!r}")
    scope: dict[str, Any] = {}
    exec(f"def run(con, query, params, {relation}):\n    return con.execute(query, params)\n", scope)
    return scope["run"]


class Snapshot:
    """Named-query access inside one read-only transaction on a read connection (Ledger.snapshot()): the same
    reading methods as a Transaction, no lock (one thread uses it), and nothing that writes."""

    def __init__(self, ledger: Ledger, connection: duckdb.DuckDBPyConnection):
        self.ledger = ledger
        self.con = connection
        self.site_id = ledger.site_id
        # Derived state (e.g. flow-control limits) is loaded from this snapshot, never shared with the writer's
        # cache, which may hold what its open transaction has not committed.
        self.cache: dict[str, Any] = {}

    def execute(self, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
        return self.con.execute(sql.queries()[name], params or None)

    def fetch(self, name: str, **params: Any) -> list[tuple]:
        return self.con.execute(sql.queries()[name], params or None).fetchall()

    def rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql.queries()[name], params or None)
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def batches(self, name: str, batch_rows: int, **params: Any) -> pa.RecordBatchReader:
        """The rows of a named query as Arrow record batches of about `batch_rows` rows (DuckDB decides the
        exact sizes), streamed: memory stays bounded by a few batches whatever the table's size."""
        return self.con.sql(sql.queries()[name], params=params or None).to_arrow_reader(batch_rows)


def _connect_waiting(path: Path, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + max(0.0, lock_timeout)
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), config={"threads": 2, "checkpoint_threshold": CHECKPOINT_THRESHOLD})
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" not in message.lower():
                raise InvalidInput(f"cannot open ledger {path}: {message.splitlines()[0]}") from None
            if time.monotonic() >= deadline:
                found = _HOLDER_PID.search(message)
                pid = int(found.group(1)) if found else None
                holder = f"process {pid}" if pid else "another process"
                raise LedgerBusy(
                    f"ledger {path} is held by {holder} (waited {lock_timeout:g}s); retry, raise "
                    "--lock-timeout, or send the command to the server that owns it",
                    holder_pid=pid,
                ) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.2)
        except duckdb.Error as exc:
            raise InvalidInput(f"cannot open ledger {path}: {str(exc).splitlines()[0]}") from None


def _create(path: Path, site_id: str, lock_timeout: float) -> None:
    """Build a new ledger under a temporary name and move it into place only when complete, so a
    killed `ledger init` leaves either no ledger or a whole one. Never replaces an existing file."""
    if path.exists():
        raise InvalidInput(f"a file already exists at {path} and a new ledger never replaces one; pick another "
                           "path (if it is a ledger, use it as it is)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.init-{os.getpid()}")
    for leftover in (partial, partial.with_name(partial.name + ".wal")):
        leftover.unlink(missing_ok=True)
    connection = _connect_waiting(partial, lock_timeout)
    try:
        ledger = Ledger(partial, connection)
        ledger._migrate(new=True)
        with ledger.transaction() as tx:
            tx.execute("meta_put", key="site_id", value=site_id)
            tx.execute("meta_put", key="created_at", value=clock.iso(clock.now()))
        connection.execute("CHECKPOINT")
    finally:
        connection.close()
    try:
        os.link(partial, path)  # fails if `path` appeared meanwhile: never overwrite a ledger
    except FileExistsError:
        raise InvalidInput(f"a file already exists at {path}: it appeared while the ledger was being created; "
                           "pick another path (if it is a ledger, use it as it is)") from None
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".wal").unlink(missing_ok=True)
