"""The PostgreSQL store: one database shared by a fleet of worker processes.

Group commit
------------
As on SQLite, appends are not written by the task that makes them: `append` checks its
events, queues them and waits. One writer task with a connection of its own takes
whatever is queued and writes it all in **one statement** (`_pg_schema.Statements.append`,
a data-modifying CTE), which PostgreSQL runs as one transaction with one WAL flush: one
round trip and one commit for a thousand appends. Appends that arrive during a commit
form the next batch, so batches grow with load.

Fencing
-------
On PostgreSQL a run is owned by whichever worker holds its lease (see `aruntime._fleet`).
The store keeps, for every run this worker holds, the fencing epoch its claim got, and
every append carries it: the statement updates the run's index row only where both the
version (the expected sequence) and the epoch are what the writer holds, and inserts the
events only for the rows that update returned. A worker whose claim was taken over (the
epoch moved) commits nothing; its append raises `LeaseLostError` and the store tells the
fleet (`on_lost`), which stops the run here at once. An append for a run this worker does
not hold (epoch 0: a cancel of a run nobody runs, a resume) claims it in the same
statement, and only if no live lease holds it. A run created by an append is held by its
creator if it runs the run's workflow, unless the append consumes an inbox request (a
`Client`'s start): that run is left to the fleet's claims, which share runs out.

Queues
------
A run started on a queue is held by nobody and claimed by nobody until its queue admits
it (`admit`, see `aruntime.store._pg_queues`); an append to it by a worker that does not
hold it commits only while no lease holds it, as for any run, and leaves it unheld unless
it ends it. Once admitted it is claimed, kept and taken over like any other run.

Outages
-------
Reads are idempotent and are retried while the server is unreachable, for up to
`reconnect_timeout` seconds; appends queued during an outage wait for the writer to
reconnect. Only the batch in flight when a connection broke fails, with
`StoreConnectionError`: it may or may not have been committed, and the runs that made it
are respawned from their logs, which say which.

Wake-ups
--------
A connection of its own LISTENs on the schema's channel: commits that change the set of
runs, a run's status, its parked mark or the inbox NOTIFY it, which moves the change
counter that waiters sleep on and wakes the fleet's claim loop (which also admits: an
admission and the end of a run that held a place in its queue wake it too). If
notifications are lost (the listening connection broke), a poll of the `changes` sequence
every `poll_interval` seconds catches up, and every reconnection counts as a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import asyncpg

from aruntime._admission import Admission
from aruntime.errors import (
    AruntimeError,
    ConcurrencyError,
    ConfigError,
    LeaseLostError,
    RunActiveError,
    RunNotFoundError,
    SerializationError,
    StoreError,
    StoreNotOwnerError,
)
from aruntime.events import Event, RunStarted
from aruntime.queues import MAX_PRIORITY, Queue
from aruntime.state import RunStatus
from aruntime.store._base import (
    OwnerInfo,
    Request,
    RequestKind,
    RunInfo,
    check_batch,
    check_prune_status,
    status_after,
)
from aruntime.store._changes import ChangeSignal
from aruntime.store._pg_queues import QueueStatements, admit_queue
from aruntime.store._pg_schema import (
    Statements,
    check_schema_name,
    is_connection_error,
    map_error,
    migrate,
)
from aruntime.store._request_rows import decode_request, encode_request
from aruntime.store._rows import (
    EventRow,
    decode_events,
    decode_run,
    encode_events,
    storable_text,
)

__all__ = ["PostgresConfig", "PostgresStats", "PostgresStore"]

_T = TypeVar("_T")

_TERMINAL = frozenset(s.value for s in RunStatus if s.terminal)


_STATEMENT_LEASES = 6
"""A statement that runs longer than this many leases is cancelled by the server (see
`PostgresStore._session_settings`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresConfig:
    """How a `PostgresStore` talks to its database, and the fleet's lease settings."""

    schema: str = "aruntime"
    """The PostgreSQL schema that holds aruntime's tables (created on first open)."""
    owner: bool = True
    """A worker's store (appends, claims, consumes requests); False: a client's store,
    which reads, posts requests and removes ended runs."""
    lease: float = 5.0
    """Seconds a claim lasts on the database's clock unless renewed. A worker that stops
    renewing (killed, frozen, cut off) loses its runs to the fleet this long after its
    last renewal."""
    heartbeat: float = 1.0
    """Seconds between two renewals of all of a worker's leases (one statement)."""
    poll_interval: float = 0.5
    """Seconds between two looks for runnable runs and changes when no notification came
    (the fallback of LISTEN/NOTIFY, and the grain of due sleeps' claims)."""
    idle_release: float = 2.0
    """A run that waits this many seconds or more (a sleep, a retry's backoff) gives up
    its lease and is claimed again when due."""
    max_runs: int = 10_000
    """The most runs one worker holds at once."""
    pool_size: int = 4
    """Connections for reads and lease statements (the writer and listener have one each)."""
    max_batch: int = 2000
    """The most appends written in one statement."""
    reconnect_timeout: float = 30.0
    """Seconds reads and queued appends wait for an unreachable server before failing."""
    connect_timeout: float = 10.0
    """Seconds one connection attempt may take."""

    def __post_init__(self) -> None:
        check_schema_name(self.schema)
        for name in ("lease", "heartbeat", "poll_interval", "idle_release", "connect_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < 1e9):
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        if not (isinstance(self.reconnect_timeout, int | float) and self.reconnect_timeout >= 0):
            raise ConfigError(
                f"reconnect_timeout must be >= 0 seconds, not {self.reconnect_timeout!r}"
            )
        if self.heartbeat * 2 > self.lease:
            raise ConfigError(
                f"heartbeat ({self.heartbeat:g}s) must be at most half the lease "
                f"({self.lease:g}s), or a lease expires between two renewals"
            )
        for name in ("max_runs", "pool_size", "max_batch"):
            count = getattr(self, name)
            if not (isinstance(count, int) and count >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, not {count!r}")


@dataclass(frozen=True, slots=True)
class PostgresStats:
    """What the writer did since the store opened."""

    appends: int = 0
    events: int = 0
    commits: int = 0
    """Statements committed, each holding one batch of appends."""
    failed_batches: int = 0
    refused: int = 0
    """Appends refused as stale (version or fencing epoch)."""


_OPTIONS: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "lease": float,
    "heartbeat": float,
    "poll_interval": float,
    "idle_release": float,
    "max_runs": int,
    "pool_size": int,
    "max_batch": int,
    "reconnect_timeout": float,
    "connect_timeout": float,
}


class PostgresStore:
    """Run logs in a PostgreSQL database, shared by any number of worker processes.

    Use it as `async with PostgresStore("postgresql://user@host/db") as store:`, or
    through `open_store("postgresql://...")`; `Runtime("postgresql://...")` makes the
    process one worker of the fleet.
    """

    def __init__(self, dsn: str, config: PostgresConfig | None = None) -> None:
        self._dsn = dsn
        self._config = config if config is not None else PostgresConfig()
        self._sql = Statements(self._config.schema)
        self._queue_sql = QueueStatements(self._config.schema)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This store's name in the fleet: who holds the leases it claims."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: asyncpg.Pool | None = None
        self._writer: _Writer | None = None
        self._listener: asyncio.Task[None] | None = None
        self._signal = ChangeSignal()
        self._runnable = asyncio.Event()
        self._room = asyncio.Event()
        """Set when a run this worker held ended: a claim limited by its share may take more."""
        self._epochs: dict[str, int] = {}
        """The fencing epoch of every run this worker holds."""
        self._fenced: dict[str, int] = {}
        """The runs this worker lost while it ran them, with the epoch it held, until
        their tasks here have ended (`forget_lost`): whatever they still append is sent
        under that epoch, and refused, never as an append of a run not held (which
        would claim the run and commit a stale write)."""
        self._workflows: frozenset[str] | None = None
        """The workflows this worker runs (None until its runtime says)."""
        self.on_lost: Callable[[str], None] | None = None
        """Told the run id of every run whose claim this worker lost."""
        self._final_stats = PostgresStats()
        self._claiming: asyncio.Future[list[Any]] | None = None

    @classmethod
    def from_url(cls, url: str, *, owner: bool = True) -> PostgresStore:
        """The store of `postgresql://user:password@host:port/database?schema=aruntime`.

        aruntime's own query parameters (`schema`, `lease`, `heartbeat`, `poll_interval`,
        `idle_release`, `max_runs`, `pool_size`, `max_batch`, `reconnect_timeout`,
        `connect_timeout`) set the config; the others go to the driver.

        Raises:
            ConfigError: the URL is not a PostgreSQL URL, or a parameter is invalid.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                f"{url!r} is not a PostgreSQL store URL; use postgresql://user@host/database"
            )
        options: dict[str, Any] = {"owner": owner}
        kept: list[tuple[str, str]] = []
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            convert = _OPTIONS.get(key)
            if convert is None:
                kept.append((key, value))
                continue
            try:
                options[key] = convert(value)
            except ValueError:
                raise ConfigError(f"{url!r}: {key} must be a number, not {value!r}") from None
        dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        return cls(dsn, PostgresConfig(**options))

    @property
    def config(self) -> PostgresConfig:
        return self._config

    @property
    def schema(self) -> str:
        return self._config.schema

    @property
    def owner(self) -> bool:
        return self._config.owner

    @property
    def workflows(self) -> frozenset[str]:
        """The workflows this worker runs, as its runtime recorded them (`set_owner_info`)."""
        return self._workflows or frozenset()

    @property
    def stats(self) -> PostgresStats:
        writer = self._writer
        return writer.stats if writer is not None else self._final_stats

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r}, worker={self.worker_id!r})"

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the writer and the listener.

        Raises:
            StoreConnectionError: the server cannot be reached.
            StoreVersionError: a newer aruntime wrote the schema.
            StoreCorruptError: the schema is not aruntime's.
        """
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._runnable = asyncio.Event()
        try:
            conn = await self._connect()
            try:
                await conn.execute("SET statement_timeout = 0")  # an index on a large table
                await migrate(conn, self.schema)
                await conn.execute("RESET statement_timeout")
            except StoreError:
                await conn.close()
                raise
            except Exception as exc:
                await conn.close()
                raise map_error(exc, self._where()) from exc
            self._pool = await self._create_pool()
            self._writer = _Writer(self, conn)
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="aruntime postgres listener"
            )
        except BaseException:
            await self.aclose()
            raise

    async def _create_pool(self) -> asyncpg.Pool:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,  # no refilling in the background while the server is away
                max_size=self._config.pool_size,
                timeout=self._config.connect_timeout,
                server_settings=self._session_settings(),
            )
        except Exception as exc:
            raise map_error(exc, self._where()) from exc
        return pool

    async def _connect(self) -> asyncpg.Connection:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._dsn,
                timeout=self._config.connect_timeout,
                server_settings=self._session_settings(),
            )
        except Exception as exc:
            raise map_error(exc, self._where()) from exc
        return conn

    def _session_settings(self) -> dict[str, str]:
        """A session whose process stopped inside a transaction (frozen by SIGSTOP, a
        stalled VM) is ended by the server, so the row locks it holds do not keep the
        others from taking its runs over for as long as it is frozen: after a lease when
        it stopped between two statements, and after `_STATEMENT_LEASES` leases when it
        stopped inside one (between the messages of one statement, where the server
        waits for it as a statement in progress). Its leases have run out by then, so
        nothing it wrote could commit anyway. Pruning and migrations lift the statement
        limit for themselves."""
        lease = max(1000, round(self._config.lease * 1000))
        return {
            "idle_in_transaction_session_timeout": str(lease),
            "statement_timeout": str(lease * _STATEMENT_LEASES),
        }

    async def aclose(self) -> None:
        """Commit what is queued, then close every connection; idempotent."""
        if self._loop is None:
            return
        self._loop = None
        writer, self._writer = self._writer, None
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        try:
            if writer is not None:
                await writer.close()
                self._final_stats = writer.stats
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener
            if pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.close(), 5.0)
                if not pool._closed:  # a connection that hangs on close
                    pool.terminate()
            self._signal.close()
            self._runnable.set()

    def _where(self) -> str:
        parts = urllib.parse.urlsplit(self._dsn)
        host = parts.hostname or "localhost"
        return f"postgresql://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    # -- appends -------------------------------------------------------------------------

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        await self._append(run_id, events, expected_sequence, None)

    async def _append(
        self, run_id: str, events: Sequence[Event], expected_sequence: int, consume: int | None
    ) -> None:
        check_batch(run_id, events, expected_sequence)
        writer = self._owners_writer("append to a run's log")
        first = events[0]
        status = status_after(RunStatus.PENDING, events)
        job = _Append(
            future=writer.loop.create_future(),
            run_id=run_id,
            expected=expected_sequence,
            events=tuple(events),
            status=None if status is RunStatus.PENDING else status.value,
            workflow=first.workflow if isinstance(first, RunStarted) else "",
            queue=first.queue if isinstance(first, RunStarted) else None,
            priority=first.priority if isinstance(first, RunStarted) else 0,
            partition_key=first.partition_key if isinstance(first, RunStarted) else None,
            created_at=first.at,
            last=events[-1].sequence,
            last_at=events[-1].at,
            consume=consume,
            # The claim this append is made under, taken now: a loss learned while it
            # waits in the queue must not turn it into an append of a run not held (0),
            # which would claim the run and commit a stale write.
            epoch=self._epochs.get(run_id) or self._fenced.get(run_id, 0),
        )
        writer.put(job)
        future = job.future
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            # The writer may still commit it: let the caller learn nothing false.
            if not future.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait([future])
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: its waiter is gone
            raise

    # -- reads ---------------------------------------------------------------------------

    async def _read(self, run_id: str | None, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run `fn(connection)` on a pooled connection, again while the server is away."""
        deadline = time.monotonic() + self._config.reconnect_timeout
        delay = 0.05
        while True:
            pool = self._pool
            if pool is None:
                raise StoreError(f"the store of {self._where()} is not open; await open() first")
            try:
                async with pool.acquire() as conn:
                    return await fn(conn)
            except AruntimeError:
                raise
            except Exception as exc:
                if not is_connection_error(exc) or time.monotonic() + delay > deadline:
                    raise map_error(exc, self._where(), run_id) from exc
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        rows = await self._read(run_id, lambda c: c.fetch(self._sql.events, run_id, after))
        return decode_events(self._where(), run_id, rows)

    async def get_run(self, run_id: str) -> RunInfo | None:
        row = await self._read(run_id, lambda c: c.fetchrow(self._sql.run, run_id))
        return None if row is None else decode_run(row)

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunInfo]:
        ids = list(dict.fromkeys(run_ids))
        rows = await self._read(None, lambda c: c.fetch(self._sql.runs_by_id, ids))
        return [decode_run(row) for row in rows]

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        clauses: list[str] = []
        params: list[Any] = []
        if workflow is not None:
            params.append(workflow)
            clauses.append(f"workflow = ${len(params)}")
        if since is not None:
            params.append(float(since))
            clauses.append(f"created_at >= ${len(params)}")
        if status is not None:
            params.append(status.value)
            clauses.append(f"status = ${len(params)}")
        if parked is not None:
            clauses.append("parked_reason IS NOT NULL" if parked else "parked_reason IS NULL")
        sql = self._sql.list_runs
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id"
        if limit is not None:
            params.append(max(0, limit))
            sql += f" LIMIT ${len(params)}"
        rows = await self._read(None, lambda c: c.fetch(sql, *params))
        return [decode_run(row) for row in rows]

    # -- the index -----------------------------------------------------------------------

    async def park(self, run_id: str, reason: str) -> None:
        self._owners_writer("park a run")
        await self._set_parked(run_id, reason, self._epochs.get(run_id, 0))
        self._epochs.pop(run_id, None)  # a parked run holds no lease

    async def unpark(self, run_id: str) -> None:
        self._owners_writer("unpark a run")
        await self._set_parked(run_id, None, None)

    async def _set_parked(self, run_id: str, reason: str | None, epoch: int | None) -> None:
        """Set or clear the parked mark; a park is fenced like an append (`epoch`: the
        claim this worker holds, 0 for none), an unpark (None) is not."""

        async def park(conn: Any) -> Any:
            async with conn.transaction():
                row = await conn.fetchrow(self._sql.park, run_id, reason, epoch, self.worker_id)
                if row is not None and row["done"]:
                    await self._notify(conn, "r" if reason is None else "c")
                return row

        row = await self._read(run_id, park)
        if row is None:
            raise RunNotFoundError(run_id)
        if not row["done"]:
            self._epochs.pop(run_id, None)
            raise LeaseLostError(run_id, epoch or 0, row["epoch"])

    # -- the inbox -----------------------------------------------------------------------

    async def post(self, request: Request) -> int:
        row = encode_request(request)

        async def post(conn: Any) -> int:
            async with conn.transaction():
                request_id: int = await conn.fetchval(self._sql.post, *row)
                await self._notify(conn, "r")
            return request_id

        return await self._read(request.run_id, post)

    async def pending(
        self,
        *,
        run_id: str | None = None,
        limit: int | None = None,
        kinds: Collection[RequestKind] | None = None,
        after: int = 0,
    ) -> list[Request]:
        count = 1 << 62 if limit is None else max(0, limit)
        kind_values = None if kinds is None else sorted(RequestKind(k).value for k in kinds)
        if run_id is None and self.owner and self._workflows is not None:
            workflows = sorted(self._workflows)
            rows = await self._read(
                None,
                lambda c: c.fetch(
                    self._sql.pending_for, self.worker_id, workflows, count, after, kind_values
                ),
            )
        else:
            sql = self._sql.pending + " WHERE id > $1"
            params: list[Any] = [after]
            if run_id is not None:
                params.append(run_id)
                sql += f" AND run_id = ${len(params)}"
            if kind_values is not None:
                params.append(kind_values)
                sql += f" AND kind = ANY(${len(params)}::text[])"
            params.append(count)
            sql += f" ORDER BY id LIMIT ${len(params)}"
            rows = await self._read(run_id, lambda c: c.fetch(sql, *params))
        return [decode_request(self._where(), row) for row in rows]

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

        async def consume(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(self._sql.consume, request_id)
                await self._notify(conn, "c")

        await self._read(run_id, consume)

    # -- removal -------------------------------------------------------------------------

    async def delete_run(self, run_id: str) -> None:
        async def delete(conn: Any) -> None:
            async with conn.transaction():
                if await conn.fetchval(self._sql.delete_run, run_id):
                    await self._notify(conn, "c")
                    return
                status = await conn.fetchval(self._sql.status_of, run_id)
            if status is None:
                raise RunNotFoundError(run_id)
            raise RunActiveError(run_id, status)

        await self._read(run_id, delete)

    async def prune(self, *, older_than: float, status: RunStatus | None = None) -> int:
        check_prune_status(status)
        statuses = sorted(_TERMINAL) if status is None else [status.value]

        async def prune(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = 0")  # a long history
                removed: int = await conn.fetchval(self._sql.prune, statuses, float(older_than))
                if removed:
                    await self._notify(conn, "c")
            return removed

        return await self._read(None, prune)

    # -- queues --------------------------------------------------------------------------

    async def admit(
        self, queues: Mapping[str, Queue], workflows: Collection[str], now: Callable[[], float]
    ) -> Admission:
        """Admit what `queues` let in now, for the whole fleet: each queue's admissions are
        serialized by a lock in the database, and timed by its clock (`now` is unused).
        See `aruntime.store._pg_queues`."""
        self._owners_writer("admit runs to their queues")
        admission = Admission()
        names = sorted(queues)
        wanted = sorted(workflows)
        if not names or not wanted:
            return admission
        sql = self._queue_sql
        waiting = await self._read(None, lambda c: c.fetch(sql.waiting, names, wanted))
        for name in sorted(row[0] for row in waiting):
            queue = queues[name]

            async def admit(conn: Any, name: str = name, queue: Queue = queue) -> Admission:
                async with conn.transaction(isolation="read_committed"):
                    decided = await admit_queue(conn, sql, name, queue, wanted)
                    if decided.admitted:
                        await self._notify(conn, "r")
                return decided

            admission.merge(await self._read(None, admit))
        return admission

    # -- the owner -----------------------------------------------------------------------

    async def set_owner_info(self, info: OwnerInfo | None) -> None:
        self._owners_writer("record the owner")
        if info is None:
            await self._read(None, lambda c: c.execute(self._sql.unregister, self.worker_id))
            return
        self._workflows = frozenset(info.workflows)
        host = socket.gethostname()
        workflows = list(info.workflows)
        await self._read(
            None,
            lambda c: c.execute(self._sql.register, self.worker_id, info.pid, host, workflows),
        )

    async def owner_info(self) -> OwnerInfo | None:
        """What the live workers of the fleet run: the pid of the one seen last, and the
        workflows of them all."""
        rows = await self._read(
            None, lambda c: c.fetch(self._sql.live_workers, 3 * self._config.lease)
        )
        if not rows:
            return None
        workflows = sorted({name for row in rows for name in row["workflows"]})
        return OwnerInfo(pid=rows[0]["pid"], workflows=tuple(workflows))

    # -- changes -------------------------------------------------------------------------

    def change_counter(self) -> int:
        return self._signal.value

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        if self._loop is None:
            raise StoreError(f"the store of {self._where()} is not open; await open() first")
        return await self._signal.wait(since, timeout)

    async def _notify(self, conn: Any, payload: str) -> None:
        await conn.execute(self._sql.notify, self._sql.channel, payload, self._sql.changes_name)

    def _notified(self, payload: str) -> None:
        self._signal.bump()
        if payload == "r":
            self._runnable.set()

    async def _listen(self) -> None:
        """LISTEN for changes, reconnecting while the store is open; poll as a fallback."""
        delay = 0.05
        last: tuple[int, bool] | None = None
        moved_before = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._config.connect_timeout)
                await conn.add_listener(
                    self._sql.channel, lambda _c, _pid, _channel, payload: self._notified(payload)
                )
                # Whatever happened while nobody listened counts as a change.
                self._notified("r")
                delay = 0.05
                while not conn.is_closed():
                    row = await conn.fetchrow(self._sql.changes)
                    now = (row[0], row[1])
                    moved = last is not None and now != last
                    if moved or moved_before:
                        # Twice: the change may have been counted before it committed.
                        self._notified("r")
                    moved_before, last = moved, now
                    await asyncio.sleep(self._config.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1.0)
                    if not conn.is_closed():
                        conn.terminate()

    # -- leases (the fleet's side: aruntime._fleet) -------------------------------------

    def holds(self, run_id: str) -> bool:
        """Whether this worker holds the run's lease."""
        return run_id in self._epochs

    def held(self) -> dict[str, int]:
        """The runs this worker holds, with their epochs."""
        return dict(self._epochs)

    async def claim(self, limit: int, *, lookahead: float = 0.0) -> list[str]:
        """Claim up to `limit` runnable runs of the workflows this worker runs."""
        workflows = sorted(self._workflows or ())
        if limit <= 0 or not workflows:
            return []
        config = self._config

        async def claim() -> list[Any]:
            rows: list[Any] = await self._read(
                None,
                lambda c: c.fetch(
                    self._sql.claim, self.worker_id, workflows, limit, lookahead, config.lease
                ),
            )
            for row in rows:
                self._epochs[row["run_id"]] = row["epoch"]
                self._fenced.pop(row["run_id"], None)
            return rows

        # A claim the server committed must be known here even if the caller is cancelled
        # meanwhile (a shutdown): otherwise nobody releases it, and the run waits a lease.
        task = self._claiming = asyncio.ensure_future(claim())
        rows = await asyncio.shield(task)
        if rows:
            # Requests waiting for these runs are this worker's to apply now: wake its inbox.
            self._signal.bump()
        return [row["run_id"] for row in rows]

    async def settle_claims(self) -> None:
        """Wait for a claim in flight (its runs are then in `held`)."""
        task = self._claiming
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait([task])

    def forget_lost(self, run_id: str) -> None:
        """Nothing of this worker runs `run_id` any more since it lost it: an append for
        it is again one of a run not held (a cancel, a resume), claiming it if free."""
        self._fenced.pop(run_id, None)

    async def renew(self) -> list[str]:
        """Renew every lease this worker holds; the runs it lost (taken over, ended)."""
        held = dict(self._epochs)
        ids, epochs = list(held), list(held.values())
        rows = await self._read(
            None,
            lambda c: c.fetch(self._sql.renew, self.worker_id, ids, epochs, self._config.lease),
        )
        kept = {row[0] for row in rows}
        lost = [run_id for run_id in held if run_id not in kept]
        for run_id in lost:
            if self._epochs.get(run_id) == held[run_id]:
                del self._epochs[run_id]
                self._fenced[run_id] = held[run_id]
        return lost

    async def release(self, runs: Sequence[tuple[str, float | None]]) -> None:
        """Let go of runs this worker holds: claimable at once (None) or at a due time."""
        items = [(r, self._epochs.pop(r), due) for r, due in runs if r in self._epochs]
        if not items:
            return
        ids = [i[0] for i in items]
        epochs = [i[1] for i in items]
        dues = [i[2] for i in items]

        async def release(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(self._sql.release, self.worker_id, ids, epochs, dues)
                if any(due is None for due in dues):
                    await self._notify(conn, "r")

        await self._read(None, release)

    async def release_all(self) -> int:
        """Let go of every run the database says this worker holds, claimable at once;
        how many. Also those whose claim committed while its answer was lost."""
        self._epochs.clear()

        async def release(conn: Any) -> int:
            async with conn.transaction():
                rows = await conn.fetch(self._sql.release_all, self.worker_id)
                if rows:
                    await self._notify(conn, "r")
                return len(rows)

        released: int = await self._read(None, release)
        return released

    async def next_due(self) -> float | None:
        """Seconds until the next unheld run of this worker's workflows is due."""
        workflows = sorted(self._workflows or ())
        if not workflows:
            return None
        due: float | None = await self._read(
            None, lambda c: c.fetchval(self._sql.next_due, workflows)
        )
        return due

    def wake_claims(self) -> None:
        """End the current `wait_runnable` now."""
        self._runnable.set()

    async def wait_runnable(self, timeout: float, *, room: bool = False) -> None:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        """Wait until a notification says runs may be claimable (or, with `room`, a run
        held here ended), or `timeout` seconds."""
        waits = [asyncio.ensure_future(self._runnable.wait())]
        if room:
            self._room.clear()
            waits.append(asyncio.ensure_future(self._room.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        self._runnable.clear()

    def _lost(self, run_id: str) -> None:
        epoch = self._epochs.pop(run_id, None)
        if epoch is not None:
            self._fenced[run_id] = epoch
        if self.on_lost is not None:
            self.on_lost(run_id)

    # -- helpers -------------------------------------------------------------------------

    def _owners_writer(self, what: str) -> _Writer:
        writer = self._writer
        if writer is None:
            raise StoreError(f"the store of {self._where()} is not open; await open() first")
        if not self._config.owner:
            raise StoreNotOwnerError(
                f"{self._where()} is open as a client's store (owner=False), which cannot "
                f"{what}: only a Runtime (a worker) does; post a request to the inbox "
                "(aruntime.Client does) instead"
            )
        return writer


@dataclass(slots=True, kw_only=True)
class _Append:
    future: asyncio.Future[None]
    run_id: str
    expected: int
    events: tuple[Event, ...]
    status: str | None
    workflow: str
    queue: str | None
    """A new run's queue (see `aruntime.queues`), with its priority and partition key."""
    priority: int
    partition_key: str | None
    created_at: float
    last: int
    last_at: float
    consume: int | None
    epoch: int


@dataclass(slots=True)
class _Chain:
    """Consecutive appends to one run within a batch, written as one."""

    first: _Append
    jobs: list[_Append]
    rows: list[EventRow]
    last: int
    last_at: float
    status: str | None
    consume: int | None


class _Writer:
    """The writer task: group-commits queued appends on a connection of its own."""

    def __init__(self, store: PostgresStore, conn: asyncpg.Connection) -> None:
        self.store = store
        self.loop = asyncio.get_running_loop()
        self._conn: asyncpg.Connection | None = conn
        self._jobs: list[_Append] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.stats = PostgresStats()
        self._task = self.loop.create_task(self._serve(), name="aruntime postgres writer")

    def put(self, job: _Append) -> None:
        if self._closing:
            job.future.set_exception(StoreError("the store is closing"))
            return
        self._jobs.append(job)
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
                if not conn.is_closed():
                    conn.terminate()

    async def _serve(self) -> None:
        limit = self.store.config.max_batch
        while True:
            if not self._jobs:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._jobs = self._jobs[:limit], self._jobs[limit:]
            try:
                await self._write(batch)
            except BaseException as exc:  # never leave a waiter hanging
                error = exc if isinstance(exc, Exception) else StoreError("the writer stopped")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(map_error(error, self.store._where(), job.run_id))
                if not isinstance(exc, Exception):
                    for job in self._jobs:
                        if not job.future.done():
                            job.future.set_exception(StoreError("the writer stopped"))
                    raise

    async def _connection(self) -> asyncpg.Connection:
        """The writer's connection, reconnecting while the server is away."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        store = self.store
        deadline = time.monotonic() + store.config.reconnect_timeout
        delay = 0.05
        while True:
            try:
                conn = self._conn = await store._connect()
                return conn
            except StoreError:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def _write(self, batch: list[_Append]) -> None:
        """Write `batch` in one statement and settle every append's future."""
        store = self.store
        chains = self._chains(batch)
        if not chains:
            return
        args, owned, changes = self._arguments(chains)
        payload = "c"
        conn: asyncpg.Connection | None = None
        result: list[Any] | None = None
        for tries in range(3):
            conn = await self._connection()
            try:
                async with conn.transaction():
                    result = await conn.fetch(store._sql.append, *args)
                    # A run nobody claimed, or the end of one that held a place in its
                    # queue (another may be admitted now), wakes the claim loops.
                    freed = any(row["freed"] for row in result)
                    payload = "c" if all(owned) and not freed else "r"
                    if changes and result:
                        await store._notify(conn, payload)
                break
            except Exception as exc:
                if is_connection_error(exc):
                    self._conn = None
                    conn.terminate()
                if getattr(exc, "sqlstate", None) == "40P01" and tries < 2:
                    continue  # a deadlock with a stale writer: nothing committed, again
                self.stats = replace(self.stats, failed_batches=self.stats.failed_batches + 1)
                for chain in chains.values():
                    for job in chain.jobs:
                        if not job.future.done():
                            job.future.set_exception(map_error(exc, store._where(), job.run_id))
                return
        assert result is not None
        assert conn is not None
        accepted = {row["run_id"]: row for row in result}
        refused = [run_id for run_id in chains if run_id not in accepted]
        lost = await self._refuse(conn, chains, refused, dict(zip(args[0], args[5], strict=True)))
        appends = events = 0
        epochs = store._epochs
        for run_id, row in accepted.items():
            chain = chains[run_id]
            if row["held"]:
                epochs[run_id] = row["epoch"]
                store._fenced.pop(run_id, None)
            elif epochs.pop(run_id, None) is not None:
                store._room.set()  # a run ended here: there is room to claim another
            appends += len(chain.jobs)
            events += len(chain.rows)
            for job in chain.jobs:
                if not job.future.done():
                    job.future.set_result(None)
        self.stats = PostgresStats(
            self.stats.appends + appends,
            self.stats.events + events,
            self.stats.commits + 1,
            self.stats.failed_batches,
            self.stats.refused + len(refused),
        )
        if changes:
            store._notified(payload)
        for run_id in lost:
            store._lost(run_id)

    def _chains(self, batch: list[_Append]) -> dict[str, _Chain]:
        """Group the batch's appends by run, each run's consecutive appends as one; refuse
        (settle) the ones that cannot follow the run's earlier appends of the batch."""
        chains: dict[str, _Chain] = {}
        deferred: list[_Append] = []
        for job in batch:
            try:
                rows = _encoded(job)
            except AruntimeError as exc:
                job.future.set_exception(exc)
                continue
            chain = chains.get(job.run_id)
            if chain is None:
                chains[job.run_id] = _Chain(
                    job, [job], rows, job.last, job.last_at, job.status, job.consume
                )
            elif job.expected != chain.last:
                job.future.set_exception(ConcurrencyError(job.run_id, job.expected, chain.last))
            elif job.consume is not None and chain.consume is not None:
                deferred.append(job)  # one request consumed per run and statement
            elif job.epoch != chain.first.epoch:
                deferred.append(job)  # made under another claim: its own statement
            else:
                chain.jobs.append(job)
                chain.rows += rows
                chain.last, chain.last_at = job.last, job.last_at
                chain.status = job.status if job.status is not None else chain.status
                chain.consume = job.consume if job.consume is not None else chain.consume
        if deferred:
            self._jobs[:0] = deferred
            self._wake.set()
        return chains

    def _arguments(self, chains: dict[str, _Chain]) -> tuple[tuple[Any, ...], list[bool], bool]:
        """The append statement's arguments; which new runs this worker holds; whether the
        batch changes something that waiters care for (new runs, statuses, published
        values, consumed requests)."""
        store = self.store
        workflows = store._workflows
        moved: list[_Chain] = []
        created: list[_Chain] = []
        for chain in chains.values():
            (created if chain.first.expected == 0 else moved).append(chain)
        # A run started here is held here, if this worker runs its workflow; one started
        # from the inbox is left to the fleet's claims, which spread runs over workers;
        # one started on a queue waits for its admission, held by nobody.
        owned = [
            c.status not in _TERMINAL
            and c.consume is None
            and c.first.queue is None
            and (workflows is None or c.first.workflow in workflows)
            for c in created
        ]
        changes = (
            bool(created)
            or any(c.status is not None or c.consume is not None for c in moved)
            or any(row[2] == "ValuePublished" for c in moved for row in c.rows)
        )
        rows = [row for chain in chains.values() for row in chain.rows]
        columns = list(zip(*rows, strict=True))
        args = (
            [c.first.run_id for c in moved],
            [c.first.expected for c in moved],
            [c.last for c in moved],
            [c.status for c in moved],
            [c.last_at for c in moved],
            [c.first.epoch for c in moved],
            [c.consume for c in moved],
            [c.first.run_id for c in created],
            [c.first.workflow for c in created],
            [c.status or RunStatus.RUNNING.value for c in created],
            [c.last for c in created],
            [c.first.created_at for c in created],
            [c.last_at for c in created],
            owned,
            [c.consume for c in created],
            *(list(column) for column in columns),
            store.worker_id,
            store.config.lease,
            [c.first.queue for c in created],
            [c.first.priority for c in created],
            [None if c.first.queue is None else c.first.partition_key or "" for c in created],
        )
        return args, owned, changes

    async def _refuse(
        self,
        conn: asyncpg.Connection,
        chains: dict[str, _Chain],
        refused: list[str],
        sent_epochs: dict[str, int],
    ) -> list[str]:
        """Settle the refused appends with the reason; the runs whose lease was lost."""
        if not refused:
            return []
        store = self.store
        try:
            reasons = {
                row["run_id"]: row for row in await conn.fetch(store._sql.why_refused, refused)
            }
        except Exception as exc:
            for run_id in refused:
                for job in chains[run_id].jobs:
                    job.future.set_exception(map_error(exc, store._where(), run_id))
            return []
        lost: list[str] = []
        for run_id in refused:
            chain = chains[run_id]
            reason = reasons.get(run_id)
            actual = 0 if reason is None else reason["version"]
            held = sent_epochs.get(run_id, 0)
            error: ConcurrencyError
            if held and reason is not None and reason["epoch"] != held:
                error = LeaseLostError(run_id, held, reason["epoch"])  # taken over
                lost.append(run_id)
            elif reason is not None and actual == chain.first.expected and chain.first.expected:
                # The version was right: another worker's live lease holds the run.
                error = LeaseLostError(run_id, held, reason["epoch"])
            else:
                error = ConcurrencyError(run_id, chain.first.expected, actual)
            for position, job in enumerate(chain.jobs):
                if not job.future.done():
                    job.future.set_exception(
                        error
                        if position == 0
                        else ConcurrencyError(run_id, job.expected, chain.first.expected)
                    )
        return lost


def _encoded(job: _Append) -> list[EventRow]:
    """The rows of an append; whatever goes wrong is that append's own error (never the
    batch's: a value the index's columns refuse would fail every append written with it)."""
    try:
        rows = encode_events(job.run_id, job.events)
    except AruntimeError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"the events cannot be encoded: {type(exc).__name__}: {exc}", run_id=job.run_id
        ) from exc
    texts = [text for text in (job.queue, job.partition_key) if text is not None]
    if not (
        all(isinstance(text, str) and storable_text(text) for text in texts)
        and type(job.priority) is int
        and -MAX_PRIORITY <= job.priority <= MAX_PRIORITY
    ):
        raise SerializationError(
            f"the run's place in its queue cannot be stored: queue {job.queue!r:.80}, "
            f"priority {job.priority!r:.40}, partition key {job.partition_key!r:.80}",
            run_id=job.run_id,
        )
    return rows
