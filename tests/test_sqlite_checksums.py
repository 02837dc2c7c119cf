"""Checksums in the SQLite file: a changed row fails loudly, a file from before them opens."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlite_helpers import raw

from aruntime.errors import StoreCorruptError
from aruntime.events import Event, RunStarted, StepCompleted, StepStarted
from aruntime.state import RunStatus
from aruntime.store import _sqlite_schema
from aruntime.store._rows import row_checksum
from aruntime.store.sqlite import SqliteConfig, SqliteStore


def paid(run_id: str) -> list[Event]:
    """A run whose one step returned 1234."""
    return [
        RunStarted(sequence=1, at=1.0, run_id=run_id, workflow="flow", args="[[],{}]"),
        StepStarted(sequence=2, at=2.0, position=1, step="charge", attempt=1),
        StepCompleted(sequence=3, at=3.0, position=1, step="charge", attempt=1, result="1234"),
    ]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def version_1_file(path: Path) -> Path:
    """A file of schema version 1 holding run "old" up to its step's completion."""
    with raw(path) as conn:
        # The statements aruntime runs to create a file of version 1, and the meta rows
        # it writes with them: the file as it was before checksums.
        for statement in _sqlite_schema._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('application', 'aruntime'), "
            "('schema_version', '1')"
        )
        conn.executemany(
            "INSERT INTO events (run_id, sequence, type, at, data) VALUES (?, ?, ?, ?, ?)",
            [
                (
                    "old",
                    1,
                    "RunStarted",
                    1.0,
                    '{"run_id":"old","workflow":"flow","args":"[[],{}]"}',
                ),
                ("old", 2, "StepStarted", 2.0, '{"position":1,"step":"charge","attempt":1}'),
                (
                    "old",
                    3,
                    "StepCompleted",
                    3.0,
                    '{"position":1,"step":"charge","attempt":1,"result":"1234"}',
                ),
            ],
        )
        conn.execute(
            "INSERT INTO runs (run_id, workflow, status, version, created_at, updated_at) "
            "VALUES ('old', 'flow', 'running', 3, 1.0, 3.0)"
        )
    return path


async def test_flipped_byte_in_a_stored_result_names_run_sequence_and_file(path: Path) -> None:
    """One byte changed in a result (1234 to 9234) passes SQLite's integrity check but
    raises StoreCorruptError naming the run, the sequence and the file on read."""
    async with SqliteStore(path) as store:
        await store.append("r", paid("r"), 0)
    with raw(path) as conn:
        conn.execute(
            "UPDATE events SET data = replace(data, '1234', '9234') "
            "WHERE run_id = 'r' AND sequence = 3"
        )
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    async with SqliteStore(path) as store:
        with pytest.raises(StoreCorruptError) as caught:
            await store.events_for("r")
        assert await store.events_for("r", after=3) == []
    assert caught.value.run_id == "r"
    message = str(caught.value)
    assert "run 'r'" in message
    assert "event 3 is damaged" in message
    assert str(path) in message


async def test_every_row_is_written_with_the_checksum_of_its_columns(path: Path) -> None:
    """Each row's stored checksum is `row_checksum` of its other columns."""
    async with SqliteStore(path) as store:
        await store.append("r", paid("r")[:2], 0)
        await store.append("r", paid("r")[2:], 2)
    with raw(path) as conn:
        rows = conn.execute(
            "SELECT run_id, sequence, type, at, data, checksum FROM events ORDER BY sequence"
        ).fetchall()
    assert [row[1] for row in rows] == [1, 2, 3]
    for *columns, checksum in rows:
        assert checksum == row_checksum(*columns)


async def test_file_of_schema_version_1_is_migrated_and_its_rows_read(
    version_1_file: Path,
) -> None:
    """A file written before checksums opens, gains the column, and its rows read as before."""
    async with SqliteStore(version_1_file) as store:
        assert await store.events_for("old") == paid("old")
        info = await store.get_run("old")
        assert info is not None
        assert (info.status, info.version) == (RunStatus.RUNNING, 3)
    with raw(version_1_file) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        checksums = conn.execute("SELECT checksum FROM events ORDER BY sequence").fetchall()
    assert version == (str(_sqlite_schema.SCHEMA_VERSION),)
    assert checksums == [(None,), (None,), (None,)]


async def test_read_only_store_reads_a_file_of_schema_version_1_unchanged(
    version_1_file: Path,
) -> None:
    """A read-only store, which cannot migrate, still reads a file from before checksums."""
    async with SqliteStore(version_1_file, SqliteConfig(read_only=True)) as store:
        assert await store.events_for("old") == paid("old")
    with raw(version_1_file) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    assert version == ("1",)
    assert "checksum" not in columns


async def test_run_from_before_checksums_goes_on_with_checksummed_rows(
    version_1_file: Path,
) -> None:
    """Appends to an old run after the migration carry checksums; old and new rows read."""
    async with SqliteStore(version_1_file) as store:
        more = StepStarted(sequence=4, at=4.0, position=2, step="ship", attempt=1)
        await store.append("old", [more], 3)
        assert await store.events_for("old") == [*paid("old"), more]
    with raw(version_1_file) as conn:
        rows = conn.execute("SELECT sequence, checksum IS NULL FROM events ORDER BY sequence")
        assert rows.fetchall() == [(1, 1), (2, 1), (3, 1), (4, 0)]


async def test_changed_row_from_before_checksums_is_not_detected(version_1_file: Path) -> None:
    """A row without a checksum is read as it always was: its change goes unnoticed.

    This is the price of opening old files; rows written since the migration are covered.
    """
    with raw(version_1_file) as conn:
        conn.execute("UPDATE events SET data = replace(data, '1234', '9234') WHERE sequence = 3")
    async with SqliteStore(version_1_file) as store:
        completed = (await store.events_for("old"))[-1]
    assert isinstance(completed, StepCompleted)
    assert completed.result == "9234"
