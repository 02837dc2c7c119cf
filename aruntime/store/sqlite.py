"""The SQLite store: the embedded default, one file per store.

Group commit
------------
A durable append costs one fsync, and an fsync costs the same for one row as for a
thousand. So appends are not written by the task that makes them: `append` checks its
events on the event loop, puts them on a queue and waits on a future. One writer thread owns
the only write connection. It takes whatever is queued (up to `max_batch` jobs), writes it
all in one `BEGIN IMMEDIATE ... COMMIT` (one fsync at `synchronous=FULL`), and only then
settles every future of the batch, with one `call_soon_threadsafe` for the whole batch.
There is no waiting for company: a lone append is committed as soon as the thread wakes,
and appends that arrive during a commit form the next batch, so batches grow with load.
Rows go in through multi-row VALUES statements, so a batch of a thousand appends is a
handful of statements, and the writer rarely gives up the GIL halfway through a batch.

An append is acknowledged only after the commit that holds it. If the transaction fails
(disk full, I/O error), every job of the batch gets the typed error and nothing of the
batch is durable. After an error that may have damaged the connection the writer opens a
new one for the next batch, so the store takes later appends once the cause is gone.

Stale writers
-------------
The writer keeps the version (last sequence) of every live run it has seen and checks an
append's `expected_sequence` against it before writing: a stale append fails alone with
`ConcurrencyError` and the rest of the batch commits. The cache is authoritative because
the store holds an exclusive lock on the file while open for writing, so no other aruntime
writes behind its back. A run enters the cache on first use (one indexed lookup) and
leaves it when it ends. The unique (run_id, sequence) key stays the backstop: if SQLite
refuses a row anyway (someone wrote with another tool), the writer forgets its cache and
redoes the batch with one SAVEPOINT per append, so that only the culprit fails.

Reads
-----
`events_for`, `get_run` and `list_runs` run on reader threads with read-only connections
of their own. In WAL mode readers never wait for the writer, so a read does not queue
behind a long batch, and it sees every append acknowledged before it started.

Owners and clients
------------------
A store opened with `owner=False` (what `aruntime.Client` opens) takes no lock and never
appends, parks or consumes: its writer thread only posts inbox requests and removes
ended runs, which the owner never writes again, so the owner's cache stays authoritative.
Both kinds run a watcher (`_sqlite_watch`) that wakes those who wait for a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

from aruntime._admission import Admission
from aruntime.errors import (
    AruntimeError,
    ConcurrencyError,
    ConfigError,
    SerializationError,
    StoreCorruptError,
    StoreError,
    StoreNotOwnerError,
    StoreReadOnlyError,
)
from aruntime.events import Event, RunStarted
from aruntime.queues import Queue
from aruntime.state import RunStatus
from aruntime.store import _sqlite_inbox as inbox
from aruntime.store import _sqlite_queues as queue_admission
from aruntime.store import _sqlite_schema as schema
from aruntime.store._base import (
    OwnerInfo,
    Request,
    RequestKind,
    RunInfo,
    check_batch,
    check_prune_status,
    status_after,
)
from aruntime.store._request_rows import encode_request
from aruntime.store._rows import EventRow, encode_events, placement
from aruntime.store._sqlite_files import check_writable
from aruntime.store._sqlite_watch import Watcher

__all__ = ["SqliteConfig", "SqliteStats", "SqliteStore"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class SqliteConfig:
    """How a `SqliteStore` opens its file."""

    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """FULL: an acknowledged append survives power loss (one fsync per batch). NORMAL:
    it survives a process crash, but may lose the last commits on power loss."""
    busy_timeout: float = 5.0
    """Seconds to wait for a database lock that another connection (another tool) holds."""
    lock_timeout: float = 0.0
    """Seconds `open` waits for another store to release the file for writing."""
    read_only: bool = False
    """Open for inspection: no lock, no writes, works while another process writes, and
    on a read-only file, directory or mount (where it creates nothing beside the file)."""
    max_batch: int = 1000
    """The most appends and parks written in one transaction."""
    max_bytes: int | None = None
    """Refuse to grow the database past about this size (`StoreFullError`); None: no limit."""
    readers: int = 2
    """Reader threads, each with a connection of its own."""
    owner: bool = True
    """Open as the file's owner (a Runtime's store: the lock, appends, the inbox's
    consumer). False: a client's store, which works beside an owner in another process,
    reads runs, posts inbox requests and removes ended runs, and writes nothing else."""
    watch_interval: float = 0.005
    """Seconds between two looks at the file's change counter while somebody waits."""

    def __post_init__(self) -> None:
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"synchronous must be 'FULL' or 'NORMAL', not {self.synchronous!r}")
        if not (isinstance(self.watch_interval, int | float) and 0 < self.watch_interval <= 1):
            raise ConfigError(
                f"watch_interval must be in (0, 1] seconds, not {self.watch_interval!r}"
            )
        for name in ("busy_timeout", "lock_timeout"):
            seconds = getattr(self, name)
            if not (isinstance(seconds, int | float) and seconds >= 0):
                raise ConfigError(f"{name} must be a number of seconds >= 0, not {seconds!r}")
        for name, least in (("max_batch", 1), ("readers", 1), ("max_bytes", 4096)):
            count = getattr(self, name)
            if count is None and name == "max_bytes":
                continue
            if not (isinstance(count, int) and count >= least):
                raise ConfigError(f"{name} must be an integer >= {least}, not {count!r}")


@dataclass(frozen=True, slots=True)
class SqliteStats:
    """What the writer did since the store opened."""

    appends: int = 0
    """Appends committed."""
    events: int = 0
    """Events committed."""
    commits: int = 0
    """Transactions committed, each holding one batch of appends and parks."""
    failed_batches: int = 0
    """Batches that failed as a whole (disk full, I/O error, ...)."""


class SqliteStore:
    """Run logs in one SQLite file in WAL mode, with appends group-committed.

    Use it as `async with SqliteStore("runs.db") as store:`, or through
    `open_store("sqlite:///runs.db")`. While it is open for writing it holds an exclusive
    lock on the file: another store that opens the same file for writing, in this process
    or another, gets `StoreLockedError`. A store opened with `read_only=True` takes no lock.

    An append cancelled while it waits for its commit may still be committed; a writer
    that was cancelled learns what happened by reading the log.
    """

    def __init__(self, path: str | PathLike[str], config: SqliteConfig | None = None) -> None:
        self._path = Path(path).absolute()
        self._config = config if config is not None else SqliteConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: _Writer | None = None
        self._readers: list[_Reader] = []
        self._reads: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._final_stats = SqliteStats()
        self._watcher: Watcher | None = None

    @classmethod
    def from_url(cls, url: str, *, owner: bool = True) -> SqliteStore:
        """The store of `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.

        Query parameters set the config: `synchronous=NORMAL`, `busy_timeout=10`,
        `lock_timeout=2`, `mode=ro` (or `read_only=1`). `owner=False` opens it as a
        client's store (see `SqliteConfig.owner`).

        Raises:
            ConfigError: the URL names no file, or a parameter is unknown or invalid.
        """
        scheme, sep, rest = url.partition("://")
        location, _, query = rest.partition("?")
        if scheme != "sqlite" or not sep or not location.startswith("/") or location == "/":
            raise ConfigError(
                f"{url!r} is not an SQLite store URL; use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        path = urllib.parse.unquote(location[1:])
        if path == ":memory:":
            raise ConfigError("an SQLite store needs a file; use memory:// for a store in memory")
        options: dict[str, Any] = {"owner": owner}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key == "synchronous":
                options[key] = value.upper()
            elif key in ("busy_timeout", "lock_timeout"):
                options[key] = _seconds(url, key, value)
            elif key == "mode" and value in ("ro", "rw", "rwc"):
                options["read_only"] = value == "ro"
            elif key == "read_only" and value.lower() in _FLAGS:
                options["read_only"] = _FLAGS[value.lower()]
            else:
                raise ConfigError(
                    f"{url!r}: unknown or invalid parameter {key}={value!r}; the SQLite store "
                    "takes synchronous, busy_timeout, lock_timeout and mode=ro"
                )
        return cls(path, SqliteConfig(**options))

    @property
    def path(self) -> Path:
        """The database file, made absolute."""
        return self._path

    @property
    def config(self) -> SqliteConfig:
        return self._config

    @property
    def owner(self) -> bool:
        """Whether this store owns the file (appends, parks, consumes requests)."""
        return self._config.owner and not self._config.read_only

    @property
    def stats(self) -> SqliteStats:
        """A snapshot of the writer's counters."""
        writer = self._writer
        return writer.stats() if writer is not None else self._final_stats

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Lock the file, create or migrate its schema and start the threads; idempotent.

        Raises:
            StoreLockedError: another store holds the file for writing.
            StoreVersionError: a newer aruntime wrote the file.
            StoreCorruptError: the file is not an aruntime database, or is damaged.
            StoreReadOnlyError: the file cannot be written (and `read_only` is not set).
        """
        if self._loop is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        config = self._config
        self._reads = queue.SimpleQueue()  # fresh: a failed open may leave stop markers
        try:
            if not config.read_only:
                self._writer = _Writer(self._path, config, loop)
                await self._writer.start_and_wait()
            for index in range(config.readers):
                reader = _Reader(self._path, config, loop, self._reads, index)
                self._readers.append(reader)
                await reader.start_and_wait()
            self._watcher = Watcher(
                self._path,
                loop,
                interval=config.watch_interval,
                busy_timeout=config.busy_timeout,
            )
            self._watcher.start()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Commit what is queued, then stop and join every thread; idempotent."""
        if self._loop is None:
            return
        writer, readers, watcher = self._writer, self._readers, self._watcher
        self._writer, self._readers, self._loop, self._watcher = None, [], None, None
        if watcher is not None:
            watcher.stop()
            watcher.signal.close()
            # It wakes at once when stopped and holds no lock: joining it blocks the loop
            # for no longer than one PRAGMA, and cannot be cut short by a cancellation.
            watcher.join()
        for _ in readers:
            self._reads.put(None)
        absorbed = [await reader.wait_exited() for reader in readers]
        # The writer closes last: the last connection to close checkpoints the WAL into
        # the database and removes it, which a read-only connection cannot do.
        if writer is not None:
            writer.jobs.put(None)
            absorbed.append(await writer.wait_exited())
            self._final_stats = writer.stats()
        for cancelled in absorbed:
            if cancelled is not None:
                raise cancelled

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        await self._append(run_id, events, expected_sequence, None)

    async def _append(
        self, run_id: str, events: Sequence[Event], expected_sequence: int, consume: int | None
    ) -> None:
        check_batch(run_id, events, expected_sequence)
        writer = self._owners_writer("append to a run's log")
        first, last = events[0], events[-1]
        status = status_after(RunStatus.PENDING, events)
        job = _Append(
            writer.loop.create_future(),
            run_id,
            expected_sequence,
            tuple(events),
            None if status is RunStatus.PENDING else status.value,
            first.workflow if isinstance(first, RunStarted) else "",
            first.at,
            last.sequence,
            last.at,
            consume,
            placement(first),
        )
        writer.jobs.put(job)
        future = job.future
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                await _settled(future)
            raise

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        return await self._read(run_id, schema.read_events, self._path, run_id, after)

    async def get_run(self, run_id: str) -> RunInfo | None:
        return await self._read(run_id, schema.read_run, run_id)

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunInfo]:
        return await self._read(None, inbox.read_runs_by_id, list(run_ids))

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        return await self._read(None, schema.read_runs, status, parked, limit, workflow, since)

    async def park(self, run_id: str, reason: str) -> None:
        self._owners_writer("park a run")
        await self._write(run_id, schema.park_run, run_id, reason)

    async def unpark(self, run_id: str) -> None:
        self._owners_writer("unpark a run")
        await self._write(run_id, schema.park_run, run_id, None)

    async def post(self, request: Request) -> int:
        row = encode_request(request)
        request_id: int = await self._write(request.run_id, inbox.insert_request, row)
        return request_id

    async def pending(
        self,
        *,
        run_id: str | None = None,
        limit: int | None = None,
        kinds: Collection[RequestKind] | None = None,
        after: int = 0,
    ) -> list[Request]:
        kind_values = None if kinds is None else sorted(RequestKind(k).value for k in kinds)
        return await self._read(
            run_id,
            functools.partial(inbox.read_pending, kinds=kind_values, after=after),
            self._path,
            run_id,
            limit,
        )

    async def consume(
        self,
        request_id: int,
        run_id: str | None = None,
        events: Sequence[Event] = (),
        expected_sequence: int = 0,
    ) -> None:
        if events:
            assert run_id is not None, "events need the run they belong to"
            await self._append(run_id, events, expected_sequence, request_id)
            return
        self._owners_writer("consume an inbox request")
        await self._write(run_id, inbox.delete_request, request_id)

    async def delete_run(self, run_id: str) -> None:
        await self._write(run_id, inbox.delete_run, run_id)

    async def prune(self, *, older_than: float, status: RunStatus | None = None) -> int:
        check_prune_status(status)
        removed: int = await self._write(None, inbox.prune_runs, float(older_than), status)
        return removed

    async def admit(
        self, queues: Mapping[str, Queue], workflows: Collection[str], now: Callable[[], float]
    ) -> Admission:
        self._owners_writer("admit queued runs")
        if not queues:
            return Admission()
        return await self._write(None, queue_admission.admit, dict(queues), set(workflows), now)

    async def set_owner_info(self, info: OwnerInfo | None) -> None:
        self._owners_writer("record the owner")
        await self._write(None, inbox.write_owner, info)

    async def owner_info(self) -> OwnerInfo | None:
        return await self._read(None, inbox.read_owner)

    def change_counter(self) -> int:
        watcher = self._watcher
        return 0 if watcher is None else watcher.signal.value

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        watcher = self._watcher
        if watcher is None:
            raise self._not_open()
        return await watcher.signal.wait(since, timeout)

    async def pragmas(self) -> dict[str, Any]:
        """The SQLite settings in force on the write connection (a reader's if read-only)."""
        if self._writer is not None:
            return await self._write(None, schema.pragmas)
        return await self._read(None, schema.pragmas)

    async def _write(self, run_id: str | None, fn: Callable[..., _T], *args: Any) -> _T:
        writer = self._writer
        if writer is None:
            raise self._not_writable()
        job = _Call(writer.loop.create_future(), run_id, fn, args)
        writer.jobs.put(job)
        result: _T = await job.future
        return result

    async def _read(self, run_id: str | None, fn: Callable[..., _T], *args: Any) -> _T:
        if self._loop is None:
            raise self._not_open()
        job = _Call(self._loop.create_future(), run_id, fn, args)
        self._reads.put(job)
        result: _T = await job.future
        return result

    def _owners_writer(self, what: str) -> _Writer:
        """The writer, if this store owns the file.

        Raises:
            StoreNotOwnerError: it does not (a client's store).
            StoreReadOnlyError, StoreError: it is read-only, or not open.
        """
        writer = self._writer
        if writer is None:
            raise self._not_writable()
        if not self._config.owner:
            raise StoreNotOwnerError(
                f"{self._path} is open as a client's store (owner=False), which cannot "
                f"{what}: only the Runtime that owns the file does; post a request to its "
                "inbox (aruntime.Client does) instead"
            )
        return writer

    def _not_writable(self) -> StoreError:
        if self._config.read_only and self._loop is not None:
            return StoreReadOnlyError(
                f"{self._path} is open read-only (read_only=True); open a store without "
                "read_only to write"
            )
        return self._not_open()

    def _not_open(self) -> StoreError:
        return StoreError(f"the store of {self._path} is not open; await open() first")


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _seconds(url: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{url!r}: {key} must be a number of seconds, not {value!r}") from None


# Jobs: what the event loop hands to the threads. Each carries the future that its thread
# settles on the loop when the job is done.


class _Append(NamedTuple):
    future: asyncio.Future[Any]
    run_id: str
    expected: int
    events: tuple[Event, ...]
    """Encoded into rows by the writer: the event loop's time is the scarcer."""
    status: str | None
    """The status the events give the run, None if they leave it alone."""
    workflow: str
    created_at: float
    last_sequence: int
    last_at: float
    consume: int | None = None
    """The inbox request this append consumes in its transaction, if any."""
    placement: tuple[str | None, int, str | None] = (None, 0, None)
    """A new run's `(queue, priority, partition_key)` columns."""


class _Call(NamedTuple):
    """Call `fn(connection, *args)` on the thread; `run_id` names the run it concerns."""

    future: asyncio.Future[Any]
    run_id: str | None
    fn: Callable[..., Any]
    args: tuple[Any, ...]


_Job: TypeAlias = _Append | _Call


def _encoded(job: _Append) -> list[EventRow]:
    """The rows of an append; whatever goes wrong is that append's own error."""
    try:
        return encode_events(job.run_id, job.events)
    except AruntimeError:
        raise
    except Exception as exc:  # an event field that even its type's converter chokes on
        raise SerializationError(
            f"the events cannot be encoded: {type(exc).__name__}: {exc}", run_id=job.run_id
        ) from exc


def _merged(earlier: _Append, later: _Append) -> _Append:
    """One append standing for two consecutive appends to a run, for its index row."""
    return later._replace(
        expected=earlier.expected,
        workflow=earlier.workflow,
        created_at=earlier.created_at,
        placement=earlier.placement,
        status=later.status if later.status is not None else earlier.status,
    )


_SETTLED = object()

_orphans: dict[asyncio.Future[Any], Any] = {}
"""Appends whose waiter was cancelled: the future that waits for their batch, or
`_SETTLED` when the batch settled before the waiter asked. Touched on the loop only."""


def _resolve(future: asyncio.Future[Any], outcome: object) -> None:
    """On the loop: an exception is raised to the waiter, anything else returned."""
    if future.done():  # its waiter was cancelled
        if future.cancelled():
            waiter = _orphans.pop(future, None)
            if waiter is None:
                _orphans[future] = _SETTLED
            elif not waiter.done():
                waiter.set_result(None)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait until the batch holding a cancelled append has committed or failed.

    A cancelled append must not let its cancellation through while the writer may still
    commit it: the caller would then replay a log that grows behind its back. The wait
    ends when the batch settles, or when the store closes (every queued job settles).
    """
    if _orphans.pop(future, None) is _SETTLED:
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _orphans[future] = waiter
    try:
        await asyncio.shield(waiter)
    except asyncio.CancelledError:
        _orphans.pop(future, None)  # cancelled again: give up waiting, as asked
        raise


def _settle(jobs: Sequence[_Job], outcomes: Sequence[object]) -> None:
    """On the loop: hand every job of a batch its outcome."""
    for job, outcome in zip(jobs, outcomes, strict=True):
        _resolve(job.future, outcome)


class _Thread(threading.Thread):
    """A store thread: opens its connection, serves jobs until told to stop, closes it."""

    def __init__(
        self, name: str, path: Path, config: SqliteConfig, loop: asyncio.AbstractEventLoop
    ) -> None:
        # Daemon, so that a store nobody closed cannot keep the interpreter alive; `aclose`
        # joins it. A transaction cut off at exit is rolled back by SQLite.
        super().__init__(name=name, daemon=True)
        self.path = path
        self.config = config
        self.loop = loop
        self.stopping = threading.Event()
        self._ready: asyncio.Future[None] = loop.create_future()
        self._exited: asyncio.Future[None] = loop.create_future()

    async def start_and_wait(self) -> None:
        """Start the thread and wait until it is ready to serve."""
        self.start()
        await self._ready

    async def wait_exited(self) -> asyncio.CancelledError | None:
        """Wait until the thread has finished, even through a cancellation.

        Returns the cancellation that arrived meanwhile, for the caller to raise once it
        has finished its own cleanup.
        """
        self.stopping.set()
        cancelled: asyncio.CancelledError | None = None
        if self.ident is None:  # never started
            return cancelled
        while not self._exited.done():
            try:
                await asyncio.shield(self._exited)
            except asyncio.CancelledError as exc:
                cancelled = exc
        self.join()  # settling `_exited` was the thread's last act
        return cancelled

    def run(self) -> None:
        try:
            try:
                self.setup()
            except BaseException as exc:
                self._call_on_loop(_resolve, self._ready, schema.map_error(exc, self.path))
                return
            self._call_on_loop(_resolve, self._ready, None)
            self.serve()
        finally:
            self.teardown()
            self._call_on_loop(_resolve, self._exited, None)

    def setup(self) -> None:
        raise NotImplementedError

    def serve(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(fn, *args)


class _Reader(_Thread):
    """Serves reads on a read-only connection, a few queued ones at a time."""

    def __init__(
        self,
        path: Path,
        config: SqliteConfig,
        loop: asyncio.AbstractEventLoop,
        jobs: queue.SimpleQueue[_Job | None],
        index: int,
    ) -> None:
        super().__init__(f"aruntime-sqlite-reader-{index}", path, config, loop)
        self._jobs = jobs
        self._conn: sqlite3.Connection | None = None

    def setup(self) -> None:
        self._conn = conn = schema.connect(
            self.path, read_only=True, busy_timeout=self.config.busy_timeout
        )
        if self.config.read_only:
            schema.check_readable(conn, self.path)

    def serve(self) -> None:
        # Reads queued together are answered together, with one wake-up of the loop; the
        # stop marker of this reader ends the batch (the next ones are other readers').
        jobs, limit = self._jobs, _READ_BATCH
        stop = False
        while not stop:
            batch: list[_Call] = []
            job = jobs.get()
            while job is not None:
                assert isinstance(job, _Call)
                batch.append(job)
                if len(batch) == limit:
                    break
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
            else:
                stop = True
            if batch:
                self._call_on_loop(_settle, batch, [self._read(job) for job in batch])

    def _read(self, job: _Call) -> object:
        try:
            return job.fn(self._conn, *job.args)
        except (sqlite3.Error, OSError) as exc:
            return schema.map_error(exc, self.path, job.run_id)
        except Exception as exc:  # handed to the waiter, never lost on this thread
            return exc

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()


_READ_BATCH = 16
"""The most reads a reader answers with one wake-up of the loop."""

_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeEncodeError)
"""Errors that one append's rows cause, as opposed to errors of the whole transaction."""

_BROKEN = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
"""Primary error codes after which the writer does not trust its connection any more."""

_TERMINAL = frozenset(s.value for s in RunStatus if s.terminal)


class _Writer(_Thread):
    """Owns the write connection and the file lock; writes batches of jobs."""

    def __init__(self, path: Path, config: SqliteConfig, loop: asyncio.AbstractEventLoop):
        super().__init__("aruntime-sqlite-writer", path, config, loop)
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._versions: dict[str, int] = {}
        """Last sequence of the live runs seen; authoritative while the lock is held."""
        self._ended: list[str] = []
        """Runs that ended in the current transaction: they leave the cache on commit."""
        self._written = (0, 0)
        """Appends and events the current transaction holds."""
        self._appends = self._events = self._commits = self._failed = 0

    def stats(self) -> SqliteStats:
        return SqliteStats(self._appends, self._events, self._commits, self._failed)

    def setup(self) -> None:
        check_writable(self.path)  # before anything is created beside the file
        if self.config.owner:
            self._lock = schema.acquire_lock(self.path, self.config.lock_timeout, self.stopping)
        self._conn = self._connect()
        schema.migrate(self._conn, self.path)

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock is not None:
            schema.release_lock(self._lock)
            self._lock = None

    def _connect(self) -> sqlite3.Connection:
        config = self.config
        return schema.connect(
            self.path,
            read_only=False,
            busy_timeout=config.busy_timeout,
            synchronous=config.synchronous,
            max_bytes=config.max_bytes,
        )

    def serve(self) -> None:
        jobs, limit = self.jobs, self.config.max_batch
        while True:
            batch = [jobs.get()]
            while len(batch) < limit:
                try:
                    batch.append(jobs.get_nowait())
                except queue.Empty:
                    break
            # Nothing is queued after the stop marker, so it can only come last.
            stop = batch[-1] is None
            work: list[_Job] = batch[:-1] if stop else batch  # type: ignore[assignment]
            if work:
                self._call_on_loop(_settle, work, self._write(work))
            if stop:
                return

    def _write(self, jobs: list[_Job]) -> list[object]:
        """Commit `jobs` in one transaction; the outcome of each (None, a value or an error)."""
        try:
            try:
                outcomes = self._transaction(jobs, self._apply_batch)
            except _ROW_ERRORS:
                # The cache let through a row that SQLite refused: redo it one by one.
                self._versions.clear()
                outcomes = self._transaction(jobs, self._apply_one_by_one)
        except Exception as exc:  # the batch fails as a whole; the writer goes on
            self._versions.clear()
            self._failed += 1
            code = getattr(exc, "sqlite_errorcode", None)
            if not isinstance(exc, sqlite3.Error) or (code is not None and code & 0xFF in _BROKEN):
                self._discard_connection()
            return [schema.map_error(exc, self.path, job.run_id) for job in jobs]
        appends, events = self._written
        self._appends += appends
        self._events += events
        self._commits += 1
        for run_id in self._ended:
            self._versions.pop(run_id, None)
        return outcomes

    def _transaction(
        self, jobs: list[_Job], apply: Callable[[sqlite3.Connection, list[_Job]], list[object]]
    ) -> list[object]:
        if self._conn is None:  # discarded after an error that may have damaged it
            self._conn = self._connect()
        conn = self._conn
        self._ended.clear()
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = apply(conn, jobs)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._discard_connection()
            raise
        return outcomes

    def _apply_batch(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[object]:
        """Check every append against the cache, then write the accepted ones at once."""
        versions = self._versions
        outcomes: list[object] = [None] * len(jobs)
        rows: list[EventRow] = []
        runs: dict[str, _Append] = {}
        calls: list[int] = []
        consumed: list[tuple[int]] = []
        accepted = 0
        for position, job in enumerate(jobs):
            if type(job) is not _Append:
                calls.append(position)
                continue
            run_id = job.run_id
            try:
                job_rows = _encoded(job)
            except AruntimeError as exc:  # this append's own fault: it fails alone
                outcomes[position] = exc
                continue
            actual = versions.get(run_id)
            if actual is None:
                actual = schema.stored_version(conn, run_id)
            if actual != job.expected:
                outcomes[position] = ConcurrencyError(run_id, job.expected, actual)
                continue
            versions[run_id] = job.last_sequence
            rows += job_rows
            accepted += 1
            if job.consume is not None:
                consumed.append((job.consume,))
            earlier = runs.get(run_id)
            runs[run_id] = job if earlier is None else _merged(earlier, job)
        schema.INSERT_EVENTS.run(conn, rows)
        self._write_runs(conn, runs.values())
        if consumed:
            conn.executemany("DELETE FROM inbox WHERE id = ?", consumed)
        for position in calls:
            outcomes[position] = self._call(conn, jobs[position])
        self._written = (accepted, len(rows))
        return outcomes

    def _apply_one_by_one(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[object]:
        """Write each append under a savepoint of its own, so that a refused one fails alone."""
        outcomes: list[object] = []
        appends = events = 0
        for job in jobs:
            if type(job) is not _Append:
                outcomes.append(self._call(conn, job))
                continue
            try:
                job_rows = _encoded(job)
            except AruntimeError as exc:
                outcomes.append(exc)
                continue
            actual = schema.stored_version(conn, job.run_id)
            if actual != job.expected:
                outcomes.append(ConcurrencyError(job.run_id, job.expected, actual))
                continue
            conn.execute("SAVEPOINT append")
            try:
                schema.INSERT_EVENTS.run(conn, job_rows)
                self._write_runs(conn, (job,))
                if job.consume is not None:
                    inbox.delete_request(conn, job.consume)
            except _ROW_ERRORS as exc:
                conn.execute("ROLLBACK TO append")
                conn.execute("RELEASE append")
                outcomes.append(self._refused(conn, job, exc))
                continue
            conn.execute("RELEASE append")
            self._versions[job.run_id] = job.last_sequence
            appends += 1
            events += len(job_rows)
            outcomes.append(None)
        self._written = (appends, events)
        return outcomes

    def _write_runs(self, conn: sqlite3.Connection, appends: Iterable[_Append]) -> None:
        """Bring the index rows of the appended runs up to date."""
        created: list[tuple[Any, ...]] = []
        moved: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        for job in appends:
            status = job.status
            if job.expected == 0:
                created.append(
                    (
                        job.run_id,
                        job.workflow,
                        status,
                        job.last_sequence,
                        job.created_at,
                        job.last_at,
                        *job.placement,
                    )
                )
            elif status is None:
                moved.append((job.last_sequence, job.last_at, job.run_id))
            else:
                changed.append((status, job.last_sequence, job.last_at, job.run_id))
            if status in _TERMINAL:
                self._ended.append(job.run_id)
        if created:
            schema.INSERT_RUNS.run(conn, created)
        if moved:
            schema.MOVE_RUNS.run(conn, moved)
        if changed:
            schema.MOVE_RUNS_STATUS.run(conn, changed)

    def _call(self, conn: sqlite3.Connection, job: _Job) -> object:
        assert isinstance(job, _Call)
        try:
            return job.fn(conn, *job.args)
        except (sqlite3.Error, OSError):
            raise  # a failed write fails the batch
        except Exception as exc:  # the job's own outcome (RunNotFoundError, ...)
            return exc

    def _refused(
        self, conn: sqlite3.Connection, job: _Append, exc: BaseException
    ) -> StoreError | ConcurrencyError:
        """The error of an append whose rows SQLite refused."""
        if not isinstance(exc, sqlite3.IntegrityError):
            return schema.map_error(exc, self.path, job.run_id)
        actual = schema.stored_version(conn, job.run_id)
        if actual != job.expected:
            return ConcurrencyError(job.run_id, job.expected, actual)
        return StoreCorruptError(
            f"{self.path}: the index says the log ends at {actual} but sequence "
            f"{job.expected + 1} exists; the file was written by something other than "
            "aruntime",
            run_id=job.run_id,
        )

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
