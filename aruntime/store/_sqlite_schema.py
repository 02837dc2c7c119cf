"""The SQLite file: schema and migrations, queries, connections, the writer's lock, errors.

Everything here runs on the store's own threads, never on the event loop.

Schema (version 4)::

    meta   (key PRIMARY KEY, value)             application name, schema version, owner
    runs   (id INTEGER PRIMARY KEY, run_id UNIQUE, workflow, status, version,
            created_at, updated_at, parked_reason, queue, priority, partition_key,
            admitted_at, admit_turn)
    events (id INTEGER PRIMARY KEY, run_id, sequence, type, at, data, checksum)
            UNIQUE (run_id, sequence)
    inbox  (id INTEGER PRIMARY KEY AUTOINCREMENT, kind, run_id, at, data, checksum)
    queues (name PRIMARY KEY, last_turn)
    queue_partitions (queue, partition_key, turn) PRIMARY KEY (queue, partition_key)
    queue_admissions (queue, at)

`runs` is the index of runs, written in the same transaction as the events it summarises
so that listing runs never replays a log; `id` keeps creation order. Events are stored in
commit order (`id`) with a unique index on (run_id, sequence), rather than clustered by
run: a batch of appends to a thousand runs then adds rows at the end of one b-tree and
touches a thousand small index entries, instead of a thousand scattered table pages,
which halves what every commit writes to the WAL. The unique index is the last line of
defence against two writers numbering the same event: whatever the writer's own
bookkeeping says, SQLite refuses the second row. `checksum` (version 2) is the CRC-32 of
the rest of the row, checked on every read (see `aruntime.store._rows`); rows written at
version 1 have none (NULL) and read as they always did. `inbox` (version 3) holds the
requests that clients post (start, cancel, resume a run) until the owning runtime consumes
them, in `id` order; AUTOINCREMENT keeps an id from ever being given twice, so the order
holds across deletions. Its rows carry a checksum too (`aruntime.store._request_rows`).
The queue columns of `runs` and the queue tables (version 4) hold each queued run's
place and admission, each queue's last turn, its partitions' latest turns and its
admission times inside its rate's window (`aruntime._admission`); the last two outlive
the runs they came from, so removing ended runs changes no queue's standing.

A file records its schema version in `meta`. Opening a file of an older version for
writing migrates it in one transaction; a newer version raises `StoreVersionError` and
leaves the file untouched. A read-only store cannot migrate, so it reads a version-1 file
through a temporary view that gives its events a NULL checksum.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from aruntime.errors import (
    RunNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreVersionError,
)
from aruntime.events import Event
from aruntime.state import RunStatus
from aruntime.store import _sqlite_files as files
from aruntime.store._base import RunInfo
from aruntime.store._rows import RUN_COLUMNS, decode_events, decode_run

__all__ = [
    "INSERT_EVENTS",
    "INSERT_RUNS",
    "MOVE_RUNS",
    "MOVE_RUNS_STATUS",
    "SCHEMA_VERSION",
    "BulkStatement",
    "acquire_lock",
    "check_readable",
    "connect",
    "map_error",
    "map_errors",
    "migrate",
    "park_run",
    "pragmas",
    "read_events",
    "read_run",
    "read_runs",
    "release_lock",
    "schema_version",
    "stored_version",
]

_APPLICATION = "aruntime"

_INBOX_TABLE = """CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    run_id TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL,
    checksum INTEGER NOT NULL
)"""

_QUEUES_TABLE = (
    "CREATE TABLE {name} (name TEXT PRIMARY KEY, last_turn INTEGER NOT NULL) WITHOUT ROWID"
)
_RUNS_AS_CURRENT = (
    "CREATE TEMP VIEW runs AS SELECT *, NULL AS queue, 0 AS priority, NULL AS partition_key, "
    "NULL AS admitted_at, NULL AS admit_turn FROM main.runs"
)
"""How a read-only connection reads the runs of a file older than queues."""

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,
            workflow TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            parked_reason TEXT
        )""",
        "CREATE INDEX runs_by_status ON runs (status)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE UNIQUE INDEX events_by_run ON events (run_id, sequence)",
    ),
    # 1 -> 2: a checksum in every event row; rows written before it keep NULL. Adding a
    # nullable column rewrites no row, so the migration is instant on any file.
    ("ALTER TABLE events ADD COLUMN checksum INTEGER",),
    # 2 -> 3: the inbox of requests from other processes; a new table, so instant too.
    (_INBOX_TABLE.format(name="inbox"), "CREATE INDEX inbox_by_run ON inbox (run_id)"),
    # 3 -> 4: queues. Nullable columns and partial indexes over rows that no older file
    # has (their queue is NULL), so this one is instant too.
    (
        "ALTER TABLE runs ADD COLUMN queue TEXT",
        "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN partition_key TEXT",
        "ALTER TABLE runs ADD COLUMN admitted_at REAL",
        "ALTER TABLE runs ADD COLUMN admit_turn INTEGER",
        "CREATE INDEX runs_by_queue ON runs (queue, status, admitted_at) WHERE queue IS NOT NULL",
        "CREATE INDEX runs_waiting ON runs (queue, priority, partition_key, created_at, run_id) "
        "WHERE queue IS NOT NULL AND admitted_at IS NULL AND status = 'running'",
        "CREATE TABLE queue_partitions (queue TEXT NOT NULL, partition_key TEXT NOT NULL, "
        "turn INTEGER NOT NULL, PRIMARY KEY (queue, partition_key)) WITHOUT ROWID",
        "CREATE TABLE queue_admissions (queue TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX queue_admissions_by_time ON queue_admissions (queue, at)",
        _QUEUES_TABLE.format(name="queues"),
    ),
)
"""`_MIGRATIONS[v]` takes a file from schema version `v` to `v + 1`."""

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this aruntime writes."""


class BulkStatement:
    """A statement that takes many rows of parameters in a few executions of a VALUES list.

    One execution per row (`executemany`) costs a round trip through the driver and a
    release of the GIL per row; a VALUES list of up to 128 rows costs one. Row counts
    are split into powers of two so that SQLite's statement cache holds every variant.
    A lone row, the common case when appends come one at a time, goes through `single`
    (by default the one-row VALUES form) without the splitting.
    """

    __slots__ = ("_single", "_sql", "_width")

    _SIZES = (128, 64, 32, 16, 8, 4, 2, 1)

    def __init__(self, template: str, width: int, single: str | None = None) -> None:
        row = "(" + ", ".join("?" * width) + ")"
        self._sql = {size: template.format(values=", ".join([row] * size)) for size in self._SIZES}
        self._single = single if single is not None else self._sql[1]
        self._width = width

    def run(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Execute the statement over `rows`, each a row of parameters."""
        if len(rows) == 1:
            conn.execute(self._single, rows[0])
            return
        params = list(itertools.chain.from_iterable(rows))
        width, start, left = self._width, 0, len(rows)
        for size in self._SIZES:
            while left >= size:
                end = start + size * width
                conn.execute(self._sql[size], params[start:end])
                start, left = end, left - size


INSERT_EVENTS = BulkStatement(
    "INSERT INTO events (run_id, sequence, type, at, data, checksum) VALUES {values}", 6
)
INSERT_RUNS = BulkStatement(
    "INSERT INTO runs (run_id, workflow, status, version, created_at, updated_at, queue, "
    "priority, partition_key) VALUES {values}",
    9,
)
MOVE_RUNS = BulkStatement(
    "WITH moved (version, updated_at, run_id) AS (VALUES {values}) "
    "UPDATE runs SET version = moved.version, updated_at = moved.updated_at "
    "FROM moved WHERE runs.run_id = moved.run_id",
    3,
    single="UPDATE runs SET version = ?, updated_at = ? WHERE run_id = ?",
)
"""Follow appends that leave the status alone (and so the status index untouched)."""
MOVE_RUNS_STATUS = BulkStatement(
    "WITH moved (status, version, updated_at, run_id) AS (VALUES {values}) "
    "UPDATE runs SET status = moved.status, version = moved.version, "
    "updated_at = moved.updated_at FROM moved WHERE runs.run_id = moved.run_id",
    4,
    single="UPDATE runs SET status = ?, version = ?, updated_at = ? WHERE run_id = ?",
)
_PARK_RUN = "UPDATE runs SET parked_reason = ? WHERE run_id = ?"


def stored_version(conn: sqlite3.Connection, run_id: str) -> int:
    """The run's last sequence according to the index; 0 for a run that does not exist."""
    row = conn.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return 0 if row is None else int(row[0])


def read_events(conn: sqlite3.Connection, path: Path, run_id: str, after: int) -> list[Event]:
    """The run's events after sequence `after`, in order, each checked against its checksum.

    Raises:
        StoreCorruptError: a row changed after it was written, or is not an event.
    """
    rows = conn.execute(
        "SELECT sequence, type, at, data, checksum FROM events WHERE run_id = ? AND sequence > ? "
        "ORDER BY sequence",
        (run_id, after),
    ).fetchall()
    return decode_events(str(path), run_id, rows)


def read_run(conn: sqlite3.Connection, run_id: str) -> RunInfo | None:
    """The run's index row, or None."""
    row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else decode_run(row)


def read_runs(  # noqa: PLR0917 - called with positional arguments by the reader threads
    conn: sqlite3.Connection,
    status: RunStatus | None,
    parked: bool | None,
    limit: int | None,
    workflow: str | None = None,
    since: float | None = None,
) -> list[RunInfo]:
    """Index rows in creation order, filtered."""
    clauses: list[str] = []
    params: list[Any] = []
    if workflow is not None:
        clauses.append("workflow = ?")
        params.append(workflow)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(float(since))
    if status is not None:
        clauses.append("status = ?")
        params.append(status.value)
    if parked is not None:
        clauses.append("parked_reason IS NOT NULL" if parked else "parked_reason IS NULL")
    sql = f"SELECT {RUN_COLUMNS} FROM runs"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(0, limit))
    return [decode_run(row) for row in conn.execute(sql, params)]


def park_run(conn: sqlite3.Connection, run_id: str, reason: str | None) -> None:
    """Set, or with None clear, the run's parked reason.

    Raises:
        RunNotFoundError: no such run.
    """
    if conn.execute(_PARK_RUN, (reason, run_id)).rowcount == 0:
        raise RunNotFoundError(run_id)


def pragmas(conn: sqlite3.Connection) -> dict[str, Any]:
    """The settings in force on `conn`."""
    names = ("journal_mode", "synchronous", "busy_timeout", "max_page_count", "page_size")
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


def connect(
    path: Path,
    *,
    read_only: bool,
    busy_timeout: float,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    max_bytes: int | None = None,
) -> sqlite3.Connection:
    """A connection in autocommit mode, in WAL mode unless `read_only`.

    A read-only connection needs nothing written beside the file (see `_sqlite_files`).
    The caller owns the connection (it is bound to the calling thread) and closes it.
    """
    if read_only:
        return _connect_reader(path, busy_timeout)
    uri = f"{path.as_uri()}?mode=rwc"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (journal_mode is {mode!r})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_reader(path: Path, busy_timeout: float) -> sqlite3.Connection:
    mode = files.reader_mode(path)
    try:
        return _open_reader(path, mode, busy_timeout)
    except sqlite3.OperationalError as exc:
        # A directory or mount that access(2) called writable, and SQLite found otherwise.
        code = exc.sqlite_errorcode & 0xFF
        retry = code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)
        if mode == files.IMMUTABLE or not retry or not files.immutable_allowed(path):
            raise
    return _open_reader(path, files.IMMUTABLE, busy_timeout)


def _open_reader(path: Path, mode: str, busy_timeout: float) -> sqlite3.Connection:
    uri = f"{path.as_uri()}?{mode}"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
    try:
        # Reading the header now turns "not a database" into an error at open.
        conn.execute("PRAGMA schema_version").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; 0 for a file without tables.

    Raises:
        StoreCorruptError: the file holds tables but is not an aruntime store.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return 0
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    version = meta.get("schema_version", "")
    if meta.get("application") != _APPLICATION or not version.isdigit():
        raise StoreCorruptError(
            f"{path} is an SQLite database but not an aruntime store (it holds the tables "
            f"{', '.join(sorted(tables))}); give aruntime a file of its own"
        )
    return int(version)


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the file to `SCHEMA_VERSION` in one transaction; returns the version found.

    Raises:
        StoreVersionError: a newer aruntime wrote the file; nothing was changed.
        StoreCorruptError: the file is not an aruntime store.
        sqlite3.Error: SQLite refused (a read-only or damaged file, ...); see `map_error`.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn, path)
        if found > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{path} has schema version {found}, written by a newer aruntime; this one "
                f"reads up to version {SCHEMA_VERSION}, so upgrade aruntime to open it"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        # Writes nothing, but SQLite checks that the file can be written only when a
        # statement writes: a read-only file is refused here rather than at the first append.
        conn.execute("DELETE FROM meta WHERE 0")
        if found < SCHEMA_VERSION:
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


_READ_AS_CURRENT: dict[int, tuple[str, ...]] = {
    # A temporary object shadows the file's own of the same name for this connection only,
    # so the queries above read a version-1 file unchanged, and nothing is written to it.
    1: (
        "CREATE TEMP VIEW events AS SELECT id, run_id, sequence, type, at, data, "
        "NULL AS checksum FROM main.events",
        _INBOX_TABLE.format(name="temp.inbox"),
        _RUNS_AS_CURRENT,
    ),
    2: (_INBOX_TABLE.format(name="temp.inbox"), _RUNS_AS_CURRENT),  # nothing was posted
    3: (_RUNS_AS_CURRENT,),
}
"""For each older version a read-only connection can read: how it reads it as current."""


def check_readable(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file that a read-only store cannot interpret; adapt `conn` to an older one.

    Raises:
        StoreCorruptError: the file holds no aruntime store.
        StoreVersionError: the file's schema is not one this aruntime reads.
    """
    found = schema_version(conn, path)
    if found == 0:
        raise StoreCorruptError(f"{path} holds no aruntime store (it has no tables)")
    if found in _READ_AS_CURRENT:
        for statement in _READ_AS_CURRENT[found]:
            conn.execute(statement)
    elif found != SCHEMA_VERSION:
        newer = (
            "a newer aruntime; upgrade aruntime"
            if found > SCHEMA_VERSION
            else ("an older aruntime; open it once for writing to migrate it")
        )
        raise StoreVersionError(f"{path} has schema version {found}, written by {newer} to read it")


def acquire_lock(path: Path, timeout: float, stop: threading.Event) -> int:
    """Take the exclusive writer's lock of the database at `path`; returns its descriptor.

    The lock is an advisory `flock` on `<database>.lock`, held for as long as the store is
    open for writing: it is what makes the writer's cached run versions authoritative. It
    waits up to `timeout` seconds (or until `stop` is set) for another holder to let go.

    Raises:
        StoreLockedError: another store, in this process or another, holds the lock.
        StoreReadOnlyError: the lock file cannot be created.
    """
    lock_path = path.with_name(path.name + ".lock")
    with map_errors(lock_path):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or stop.wait(min(remaining, 0.02)):
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    raise StoreLockedError(
                        f"{path} is open for writing by another store "
                        f"({'process ' + holder if holder else 'see ' + str(lock_path)}); "
                        "one Runtime owns a store at a time: close that one first or raise "
                        "lock_timeout to wait for it; to start, wait for, cancel or list runs "
                        "from this process while it runs, use aruntime.Client(url)"
                    ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_lock(fd: int) -> None:
    """Let go of the lock `acquire_lock` took (closing the descriptor releases it)."""
    os.close(fd)


def map_error(exc: BaseException, path: Path, run_id: str | None = None) -> StoreError:
    """The `StoreError` that says what a driver or file error means for the store.

    This is the only place where sqlite3 and OS errors become aruntime errors.
    """
    if isinstance(exc, StoreError):
        return exc
    detail = str(exc) or type(exc).__name__
    code = getattr(exc, "sqlite_errorcode", None)
    kind = _KINDS.get(code & 0xFF) if isinstance(code, int) else None
    if kind is None and isinstance(exc, OSError):
        kind = _OS_KINDS.get(exc.errno or 0)
    if kind is None and isinstance(exc, sqlite3.Error):
        lowered = detail.lower()
        kind = next((k for hint, k in _HINTS if hint in lowered), None)
    if kind is None:
        return StoreError(f"{path}: {detail}", run_id=run_id)
    cls, advice = kind
    return cls(f"{path}: {detail}; {advice}", run_id=run_id)


@contextlib.contextmanager
def map_errors(path: Path, run_id: str | None = None) -> Iterator[None]:
    """Raise what `map_error` makes of a sqlite3 or OS error inside the block."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise map_error(exc, path, run_id) from exc


_Kind = tuple[type[StoreError], str]
_CORRUPT: _Kind = (
    StoreCorruptError,
    "the file is not an aruntime database or is damaged; restore it from a backup "
    "(`PRAGMA integrity_check` tells what is wrong)",
)
_READ_ONLY: _Kind = (
    StoreReadOnlyError,
    "the database cannot be written; check the permissions of the file and its directory "
    "and the mount, or open it with read_only=True to inspect it",
)
_FULL: _Kind = (
    StoreFullError,
    "the disk or the store's max_bytes is full; free space or raise the limit (everything "
    "acknowledged before is intact)",
)
_LOCKED: _Kind = (
    StoreLockedError,
    "another connection held the database for longer than busy_timeout; find the process "
    "that keeps it busy, or raise busy_timeout",
)
_KINDS: dict[int, _Kind] = {
    sqlite3.SQLITE_CORRUPT: _CORRUPT,
    sqlite3.SQLITE_NOTADB: _CORRUPT,
    sqlite3.SQLITE_READONLY: _READ_ONLY,
    sqlite3.SQLITE_FULL: _FULL,
    sqlite3.SQLITE_BUSY: _LOCKED,
    sqlite3.SQLITE_LOCKED: _LOCKED,
}
_OS_KINDS: dict[int, _Kind] = {
    errno.EROFS: _READ_ONLY,
    errno.EACCES: _READ_ONLY,
    errno.EPERM: _READ_ONLY,
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
}
_HINTS: tuple[tuple[str, _Kind], ...] = (
    ("not a database", _CORRUPT),
    ("malformed", _CORRUPT),
    ("readonly", _READ_ONLY),
    ("disk is full", _FULL),
    ("locked", _LOCKED),
    ("busy", _LOCKED),
)
"""Message fragments, for the errors that reach us without an SQLite error code."""
