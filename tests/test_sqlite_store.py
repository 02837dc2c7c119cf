"""What only the SQLite store promises: durability on disk, locking, typed failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from sqlite_helpers import raw

from aruntime.errors import (
    ConcurrencyError,
    ConfigError,
    InvalidRunIdError,
    SerializationError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreVersionError,
)
from aruntime.events import Event, RunCompleted, RunStarted, StepCompleted, StepStarted
from aruntime.state import RunStatus
from aruntime.store import _sqlite_schema, open_store
from aruntime.store.sqlite import SqliteConfig, SqliteStore


def started(run_id: str) -> RunStarted:
    return RunStarted(sequence=1, at=1.0, run_id=run_id, workflow="flow", args="[[],{}]")


def step(sequence: int) -> StepStarted:
    return StepStarted(sequence=sequence, at=2.0, position=sequence - 1, step="s", attempt=1)


def log(run_id: str, length: int) -> list[Event]:
    return [started(run_id), *(step(sequence) for sequence in range(2, length + 1))]


async def python(*args: str) -> str:
    """Run a Python child process and return what it printed."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    return out.decode().strip()


def writable_through_permissions(path: Path) -> bool:
    """Make `path` read-only; True if this user (root) can write it all the same."""
    path.chmod(0o444)
    try:
        path.open("r+b").close()
    except PermissionError:
        return False
    return True


@contextlib.asynccontextmanager
async def writer_paused(store: SqliteStore) -> AsyncIterator[None]:
    """Keep the writer busy inside a commit, so that appends made meanwhile form one batch."""
    loop = asyncio.get_running_loop()
    entered, gate = asyncio.Event(), threading.Event()

    def pause(conn: sqlite3.Connection) -> None:
        loop.call_soon_threadsafe(entered.set)
        gate.wait(10)

    paused = asyncio.create_task(store._write(None, pause))
    await entered.wait()
    try:
        yield
    finally:
        gate.set()
        await paused


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def garbage(path: Path) -> Path:
    """A file where the database should be that is no SQLite database."""
    path.write_bytes(b"these are not the pages you are looking for" * 200)
    return path


async def test_data_survives_close_and_reopen(path: Path) -> None:
    """What was appended before close reads back, index included, after reopening."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 3), 0)
        await store.park("r", "why")
    async with SqliteStore(path) as store:
        assert await store.events_for("r") == log("r", 3)
        info = await store.get_run("r")
        assert info is not None
        assert (info.version, info.parked_reason) == (3, "why")
        await store.append("r", [step(4)], 3)


async def test_new_process_reads_acknowledged_appends_while_the_writer_is_open(
    path: Path,
) -> None:
    """Another process opening the file read-only sees every acknowledged append."""
    reader = (
        "import asyncio, sys\n"
        "from aruntime.store.sqlite import SqliteStore, SqliteConfig\n"
        "async def main():\n"
        "    async with SqliteStore(sys.argv[1], SqliteConfig(read_only=True)) as s:\n"
        "        print(len(await s.events_for('r')), (await s.get_run('r')).version)\n"
        "asyncio.run(main())\n"
    )
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 2), 0)
        await store.append("r", [step(3)], 2)
        assert await python(reader, str(path)) == "3 3"


async def test_closing_removes_the_wal(path: Path) -> None:
    """A clean close checkpoints the log into the database and leaves no -wal file."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 2), 0)
    assert not path.with_name(path.name + "-wal").exists()


async def test_file_that_is_not_a_database_is_corrupt(garbage: Path) -> None:
    """Opening a file that is not SQLite raises StoreCorruptError naming the file."""
    with pytest.raises(StoreCorruptError, match=str(garbage)):
        await SqliteStore(garbage).open()


async def test_database_of_another_application_is_refused(path: Path) -> None:
    """A SQLite file with tables of its own raises StoreCorruptError and stays untouched."""
    with raw(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StoreCorruptError, match="not an aruntime store"):
        await SqliteStore(path).open()
    with raw(path) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    assert tables == [("users",)]


async def test_newer_schema_version_is_refused(path: Path) -> None:
    """A file written by a newer schema raises StoreVersionError and is left as it was."""
    async with SqliteStore(path):
        pass
    with raw(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match="newer aruntime"):
        await SqliteStore(path).open()
    with raw(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == ("99",)


async def test_older_schema_version_is_migrated(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a file of an older schema runs the missing migrations and keeps the data."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 2), 0)
    migrations = (*_sqlite_schema._MIGRATIONS, ("CREATE TABLE added_in_v2 (x INTEGER)",))
    monkeypatch.setattr(_sqlite_schema, "_MIGRATIONS", migrations)
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", len(migrations))
    async with SqliteStore(path) as store:
        assert await store.events_for("r") == log("r", 2)
    with raw(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        added = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'added_in_v2'")
        assert (version, added.fetchone()) == ((str(len(migrations)),), (1,))


async def test_corrupt_event_payload_names_run_and_sequence(path: Path) -> None:
    """A damaged payload raises StoreCorruptError naming the run and the event's sequence."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 3), 0)
        with raw(path) as conn:
            conn.execute("UPDATE events SET data = '{\"position\": 1' WHERE sequence = 2")
        with pytest.raises(StoreCorruptError, match="event 2 is damaged") as caught:
            await store.events_for("r")
        assert caught.value.run_id == "r"
        assert str(path) in str(caught.value)
        assert await store.events_for("r", after=2) == [step(3)]


async def test_mistyped_event_field_is_corrupt(path: Path) -> None:
    """A payload whose field has the wrong JSON type raises StoreCorruptError, checksum or not."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 2), 0)
        with raw(path) as conn:
            conn.execute(
                'UPDATE events SET data = \'{"position":1,"step":"s","attempt":"1"}\', '
                "checksum = NULL WHERE sequence = 2"
            )
        with pytest.raises(StoreCorruptError, match="'attempt'"):
            await store.events_for("r")


async def test_unknown_event_type_is_corrupt(path: Path) -> None:
    """A row naming an event type this aruntime does not know raises StoreCorruptError."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 2), 0)
        with raw(path) as conn:
            conn.execute(
                "UPDATE events SET type = 'StepTeleported', checksum = NULL WHERE sequence = 2"
            )
        with pytest.raises(StoreCorruptError, match="StepTeleported"):
            await store.events_for("r")


async def test_second_writer_on_the_same_file_is_locked_out(path: Path) -> None:
    """Opening a file another open store writes raises StoreLockedError saying what to do."""
    async with SqliteStore(path):
        with pytest.raises(StoreLockedError, match=r"aruntime\.Client") as caught:
            await SqliteStore(path).open()
    assert str(path) in str(caught.value)
    assert str(os.getpid()) in str(caught.value)


async def test_second_writer_in_another_process_is_locked_out(path: Path) -> None:
    """A writer in another process gets StoreLockedError while this one is open."""
    writer = (
        "import asyncio, sys\n"
        "from aruntime.errors import StoreLockedError\n"
        "from aruntime.store.sqlite import SqliteStore\n"
        "async def main():\n"
        "    try:\n"
        "        await SqliteStore(sys.argv[1]).open()\n"
        "    except StoreLockedError:\n"
        "        print('locked')\n"
        "asyncio.run(main())\n"
    )
    async with SqliteStore(path):
        assert await python(writer, str(path)) == "locked"


async def test_lock_timeout_waits_for_the_holder_to_close(path: Path) -> None:
    """With lock_timeout, a second writer opens once the first one has closed."""
    first = SqliteStore(path)
    await first.open()
    second = SqliteStore(path, SqliteConfig(lock_timeout=5.0))
    opening = asyncio.create_task(second.open())
    await asyncio.sleep(0.05)
    assert not opening.done()
    await first.aclose()
    await opening
    await second.append("r", log("r", 1), 0)
    await second.aclose()


async def test_read_only_store_refuses_writes(path: Path) -> None:
    """A store opened with mode=ro reads, and refuses appends and parks with StoreReadOnlyError."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 2), 0)
    async with SqliteStore.from_url(f"sqlite:///{path}?mode=ro") as store:
        assert await store.events_for("r") == log("r", 2)
        with pytest.raises(StoreReadOnlyError, match="read-only"):
            await store.append("r", [step(3)], 2)
        with pytest.raises(StoreReadOnlyError):
            await store.park("r", "why")


async def test_read_only_store_reads_while_another_store_writes(path: Path) -> None:
    """A read-only store needs no lock and sees what the writer commits."""
    async with SqliteStore(path) as writer:
        await writer.append("r", log("r", 1), 0)
        async with SqliteStore(path, SqliteConfig(read_only=True)) as reader:
            await writer.append("r", [step(2)], 1)
            assert await reader.events_for("r") == log("r", 2)


async def test_write_refused_by_sqlite_is_read_only_error(path: Path) -> None:
    """SQLite refusing a write (`query_only` binds root too) raises StoreReadOnlyError."""
    async with SqliteStore(path) as store:
        await store._write(None, lambda conn: conn.execute("PRAGMA query_only = 1"))
        with pytest.raises(StoreReadOnlyError, match=str(path)) as caught:
            await store.append("r", log("r", 1), 0)
        assert caught.value.run_id == "r"
        assert await store.get_run("r") is None


async def test_read_only_file_is_refused_for_writing(path: Path) -> None:
    """A database file without write permission cannot be opened for writing."""
    async with SqliteStore(path):
        pass
    if writable_through_permissions(path):
        pytest.skip("this user writes through file permissions (root)")
    with pytest.raises(StoreReadOnlyError, match=str(path)):
        await SqliteStore(path).open()


async def test_database_held_by_another_connection_is_locked(path: Path) -> None:
    """A write lock held past busy_timeout gives StoreLockedError; the store recovers."""
    async with SqliteStore(path, SqliteConfig(busy_timeout=0.05)) as store:
        with raw(path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreLockedError, match="busy_timeout"):
                await store.append("r", log("r", 1), 0)
            conn.execute("ROLLBACK")
        await store.append("r", log("r", 1), 0)
        assert await store.events_for("r") == log("r", 1)


async def test_reads_do_not_wait_for_a_blocked_write(path: Path) -> None:
    """While an append waits for the database, reads of committed data still answer."""
    async with SqliteStore(path, SqliteConfig(busy_timeout=10.0)) as store:
        await store.append("r", log("r", 1), 0)
        with raw(path) as conn:
            conn.execute("BEGIN IMMEDIATE")
            blocked = asyncio.create_task(store.append("r", [step(2)], 1))
            await asyncio.sleep(0.02)
            assert await asyncio.wait_for(store.events_for("r"), 2.0) == log("r", 1)
            assert not blocked.done()
            conn.execute("ROLLBACK")
        await blocked
        assert await store.events_for("r") == log("r", 2)


async def test_full_database_keeps_earlier_data_intact(path: Path) -> None:
    """An append past max_bytes raises StoreFullError; earlier data reads back and checks ok."""
    async with SqliteStore(path, SqliteConfig(max_bytes=64 * 1024)) as store:
        await store.append("r", log("r", 2), 0)
        huge = StepCompleted(
            sequence=3, at=3.0, position=1, step="s", attempt=1, result="x" * 10**5
        )
        with pytest.raises(StoreFullError, match=str(path)) as caught:
            await store.append("r", [huge], 2)
        assert caught.value.run_id == "r"
        assert await store.events_for("r") == log("r", 2)
        await store.append("r", [step(3)], 2)
        assert store.stats.failed_batches == 1
    with raw(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    async with SqliteStore(path) as store:
        await store.append("r", [msgspec.structs.replace(huge, sequence=4)], 3)


async def test_wal_and_synchronous_full_are_in_force(path: Path) -> None:
    """By default the write connection runs in WAL mode with synchronous=FULL."""
    async with SqliteStore(path) as store:
        pragmas = await store.pragmas()
    assert (pragmas["journal_mode"], pragmas["synchronous"]) == ("wal", 2)


async def test_synchronous_normal_is_in_force_when_configured(path: Path) -> None:
    """synchronous=NORMAL is applied to the write connection when asked for."""
    async with SqliteStore.from_url(f"sqlite:///{path}?synchronous=normal") as store:
        pragmas = await store.pragmas()
    assert (pragmas["journal_mode"], pragmas["synchronous"]) == ("wal", 1)


async def test_concurrent_appends_share_commits(path: Path) -> None:
    """Appends made at the same time are group-committed: far fewer commits than appends."""
    runs = 200
    async with SqliteStore(path) as store:
        before = store.stats
        await asyncio.gather(*(store.append(f"r{i}", log(f"r{i}", 1), 0) for i in range(runs)))
        stats = store.stats
    assert (stats.appends - before.appends, stats.events - before.events) == (runs, runs)
    assert stats.commits - before.commits <= runs // 10


async def test_appends_queued_during_a_commit_share_the_next_one(path: Path) -> None:
    """Every append made while the writer commits is committed by its next transaction."""
    async with SqliteStore(path) as store:
        async with writer_paused(store):
            appends = [
                asyncio.create_task(store.append(f"r{i}", log(f"r{i}", 2), 0)) for i in range(30)
            ]
            await asyncio.sleep(0)
            before = store.stats
        await asyncio.gather(*appends)
        after = store.stats
    assert (after.commits - before.commits, after.appends - before.appends) == (2, 30)


async def test_failed_batch_fails_every_append_in_it(path: Path) -> None:
    """When a batch's transaction fails, each of its appends gets the error; none is durable."""
    async with SqliteStore(path, SqliteConfig(max_bytes=96 * 1024)) as store:
        big = "x" * 30_000  # each append fits alone; four together do not

        def first(run_id: str) -> list[Event]:
            return [RunStarted(sequence=1, at=1.0, run_id=run_id, workflow="flow", args=big)]

        async with writer_paused(store):
            appends = [
                asyncio.create_task(store.append(f"r{i}", first(f"r{i}"), 0)) for i in range(4)
            ]
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        assert [type(o) for o in outcomes] == [StoreFullError] * 4
        assert [getattr(o, "run_id", None) for o in outcomes] == ["r0", "r1", "r2", "r3"]
        assert await store.list_runs() == []
        await store.append("r0", first("r0"), 0)
        assert await store.events_for("r0") == first("r0")


async def test_cancelled_append_may_still_commit(path: Path) -> None:
    """An append cancelled after it was queued is committed; the log stays consistent."""
    async with SqliteStore(path) as store:
        async with writer_paused(store):
            append = asyncio.create_task(store.append("r", log("r", 1), 0))
            await asyncio.sleep(0)
            append.cancel()
            await asyncio.sleep(0)  # the cancellation reaches the append while it is queued
        with pytest.raises(asyncio.CancelledError):
            await append  # returns once the writer, released, has committed it
        await store.append("r", [step(2)], 1)
        assert await store.events_for("r") == log("r", 2)


async def test_cancelled_close_still_stops_everything(path: Path) -> None:
    """Cancelling aclose halfway still joins every thread and releases the file."""
    before = _store_threads()
    store = SqliteStore(path)
    await store.open()
    closing = asyncio.create_task(store.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert _store_threads() - before == set()
    async with SqliteStore(path) as again:
        assert await again.list_runs() == []


async def test_stale_append_fails_alone_in_its_batch(path: Path) -> None:
    """A stale append among concurrent good ones fails; the good ones all commit."""
    async with SqliteStore(path) as store:
        await store.append("stale", log("stale", 2), 0)
        good = [store.append(f"r{i}", log(f"r{i}", 2), 0) for i in range(20)]
        outcomes = await asyncio.gather(
            *good, store.append("stale", [step(2)], 1), return_exceptions=True
        )
        assert outcomes[:-1] == [None] * 20
        assert isinstance(outcomes[-1], ConcurrencyError)
        assert len(await store.list_runs()) == 21


async def test_unencodable_append_fails_alone_in_its_batch(path: Path) -> None:
    """An append whose field has the wrong type fails with SerializationError; its batch
    commits, and the run's log is left as it was."""
    async with SqliteStore(path) as store:
        await store.append("bad", log("bad", 1), 0)
        mistyped = StepStarted(sequence=2, at=2.0, position=1, step=42, attempt=1)  # type: ignore[arg-type]
        async with writer_paused(store):
            pending = [
                asyncio.ensure_future(store.append(f"r{i}", log(f"r{i}", 2), 0)) for i in range(5)
            ]
            pending.append(asyncio.ensure_future(store.append("bad", [mistyped], 1)))
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        assert outcomes[:-1] == [None] * 5
        assert isinstance(outcomes[-1], SerializationError)
        assert outcomes[-1].run_id == "bad"
        assert store.stats.commits == 3  # the first append, the paused call, the batch
        assert [e.sequence for e in await store.events_for("bad")] == [1]
        await store.append("bad", [step(2)], 1)


async def test_append_whose_time_overflows_a_float_fails_alone(path: Path) -> None:
    """A time too large for a float column is that append's SerializationError; the
    batch it shares commits."""
    async with SqliteStore(path) as store:
        huge = RunStarted(sequence=1, at=10**400, run_id="huge", workflow="flow", args="[]")
        async with writer_paused(store):
            good = asyncio.ensure_future(store.append("good", log("good", 1), 0))
            bad = asyncio.ensure_future(store.append("huge", [huge], 0))
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(good, bad, return_exceptions=True)
        assert outcomes[0] is None
        assert isinstance(outcomes[1], SerializationError)
        assert [info.run_id for info in await store.list_runs()] == ["good"]


@pytest.mark.parametrize(
    ("index_too", "error"), [(True, ConcurrencyError), (False, StoreCorruptError)]
)
async def test_row_written_behind_the_stores_back_fails_only_that_append(
    path: Path, index_too: bool, error: type[Exception]
) -> None:
    """If another tool appended to a run, the unique key refuses that append alone."""
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 1), 0)
        await store.append("other", log("other", 1), 0)
        with raw(path) as conn:
            conn.execute(
                "INSERT INTO events (run_id, sequence, type, at, data) VALUES "
                '(\'r\', 2, \'StepStarted\', 2.0, \'{"position":1,"step":"s","attempt":1}\')'
            )
            if index_too:
                conn.execute("UPDATE runs SET version = 2 WHERE run_id = 'r'")
        async with writer_paused(store):
            stale = asyncio.create_task(store.append("r", [step(2)], 1))
            good = asyncio.create_task(store.append("other", [step(2)], 1))
            await asyncio.sleep(0)
        with pytest.raises(error, match="'r'"):
            await stale
        await good
        assert await store.events_for("other") == log("other", 2)


async def test_consecutive_appends_to_one_run_in_one_batch_all_land(path: Path) -> None:
    """Appends to one run committed together leave the index at the last one's state."""
    async with SqliteStore(path) as store:
        async with writer_paused(store):
            appends = [
                asyncio.create_task(store.append("r", log("r", 1), 0)),
                asyncio.create_task(store.append("r", [step(2)], 1)),
                asyncio.create_task(
                    store.append("r", [RunCompleted(sequence=3, at=3.5, result="1")], 2)
                ),
                asyncio.create_task(store.append("r", [step(3)], 2)),
            ]
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        assert outcomes[:3] == [None, None, None]
        assert isinstance(outcomes[3], ConcurrencyError)
        info = await store.get_run("r")
        assert info is not None
        assert (info.status, info.version, info.created_at, info.updated_at) == (
            RunStatus.COMPLETED,
            3,
            1.0,
            3.5,
        )


async def test_appends_queued_before_close_are_committed(path: Path) -> None:
    """Closing the store commits every append that was already made."""
    store = SqliteStore(path)
    await store.open()
    tasks = [asyncio.create_task(store.append(f"r{i}", log(f"r{i}", 1), 0)) for i in range(50)]
    await asyncio.sleep(0)
    await store.aclose()
    await asyncio.gather(*tasks)
    async with SqliteStore(path) as store:
        assert len(await store.list_runs()) == 50


async def test_append_after_close_raises_store_error(path: Path) -> None:
    """A closed store refuses appends and reads with a StoreError saying it is not open."""
    async with SqliteStore(path) as store:
        pass
    with pytest.raises(StoreError, match="not open"):
        await store.append("r", log("r", 1), 0)
    with pytest.raises(StoreError, match="not open"):
        await store.events_for("r")


async def test_close_joins_every_thread(path: Path) -> None:
    """After aclose no thread of the store is left running."""
    before = _store_threads()
    async with SqliteStore(path) as store:
        await store.append("r", log("r", 1), 0)
        await store.wait_changed(store.change_counter(), timeout=0.02)  # the watcher too
    assert _store_threads() - before == set()


async def test_failed_open_leaves_no_thread(garbage: Path) -> None:
    """An open that fails stops whatever it had started."""
    before = _store_threads()
    with pytest.raises(StoreCorruptError):
        await SqliteStore(garbage).open()
    assert _store_threads() - before == set()


def _store_threads() -> set[threading.Thread]:
    """The live threads of SQLite stores (other tests' daemon threads may linger a while)."""
    return {t for t in threading.enumerate() if t.name.startswith("aruntime-sqlite")}


async def test_run_id_with_a_lone_surrogate_is_invalid(path: Path) -> None:
    """A run id that cannot be stored as UTF-8 raises InvalidRunIdError before any write."""
    async with SqliteStore(path) as store:
        with pytest.raises(InvalidRunIdError):
            await store.append("r\udcff", log("r\udcff", 1), 0)
        await store.append("r", log("r", 1), 0)


def test_open_store_makes_an_sqlite_store_from_a_url(tmp_path: Path) -> None:
    """sqlite:///relative and sqlite:////absolute URLs name the file; parameters set config."""
    relative = open_store("sqlite:///data/runs.db?busy_timeout=2.5&lock_timeout=1")
    absolute = SqliteStore.from_url(f"sqlite:///{tmp_path}/runs.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == Path.cwd() / "data" / "runs.db"
    assert (relative.config.busy_timeout, relative.config.lock_timeout) == (2.5, 1.0)
    assert absolute.path == tmp_path / "runs.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/runs.db",
        "sqlite:///:memory:",
        "sqlite:///runs.db?journal=off",
        "sqlite:///runs.db?synchronous=OFF",
        "sqlite:///runs.db?busy_timeout=soon",
    ],
)
def test_bad_url_raises_config_error(url: str) -> None:
    """A URL that names no file, or sets an unknown or invalid option, raises ConfigError."""
    with pytest.raises(ConfigError):
        SqliteStore.from_url(url)


@pytest.mark.parametrize(
    "options",
    [{"busy_timeout": -1.0}, {"max_batch": 0}, {"readers": 0}, {"max_bytes": 10}],
)
def test_invalid_config_raises_config_error(options: dict[str, float]) -> None:
    """Settings outside their range raise ConfigError when the config is made."""
    with pytest.raises(ConfigError):
        SqliteConfig(**options)  # type: ignore[arg-type]
