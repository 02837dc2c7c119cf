"""The files beside an SQLite database: read-only files, directories and leftovers.

The permission tests run the store in a child process that permissions bind (see
`unprivileged`); the tests of the immutable fallback itself run here, with the
permission checks or SQLite's refusal simulated.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from unprivileged import beside, read_only, run

from aruntime.errors import StoreReadOnlyError
from aruntime.events import RunStarted
from aruntime.store import _sqlite_files, _sqlite_schema
from aruntime.store.sqlite import SqliteConfig, SqliteStore

CHILD = """
import asyncio, json, sys
from aruntime.events import RunStarted
from aruntime.store.sqlite import SqliteConfig, SqliteStore

async def main(path, mode):
    store = SqliteStore(path, SqliteConfig(read_only=mode == "ro"))
    try:
        await store.open()
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    try:
        if mode == "rw":
            event = RunStarted(sequence=1, at=1.0, run_id="w", workflow="f", args="[[],{}]")
            await store.append("w", [event], 0)
        print(json.dumps({"runs": [i.run_id for i in await store.list_runs()]}))
    finally:
        await store.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def started(run_id: str) -> RunStarted:
    return RunStarted(sequence=1, at=1.0, run_id=run_id, workflow="f", args="[[],{}]")


def store_in_child(path: Path, mode: str) -> dict[str, Any]:
    """Open the store of `path` (`rw` appends run `w`, `ro` reads) in a bound child."""
    done = run(["-c", CHILD, path, mode])
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return outcome


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A database in a directory of its own, holding run `r`, closed cleanly."""
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "runs.db"

    async def make() -> None:
        async with SqliteStore(db) as store:
            await store.append("r", [started("r")], 0)

    asyncio.run(make())
    (folder / "runs.db.lock").unlink()
    return db


def test_writer_refuses_a_read_only_file_and_creates_nothing_beside_it(path: Path) -> None:
    """Opening a 0444 database for writing names it, and leaves no -wal or -shm at 0444."""
    with read_only(path):
        outcome = store_in_child(path, "rw")
    assert outcome["error"] == "StoreReadOnlyError"
    assert outcome["message"].startswith(f"{path} cannot be written (mode 0444)")
    assert "runs.db-wal" not in beside(path)
    assert "runs.db-shm" not in beside(path)


def test_writer_takes_the_file_once_its_permissions_are_fixed(path: Path) -> None:
    """After a refused open, making the file writable is all it takes to write again."""
    with read_only(path):
        store_in_child(path, "rw")
    assert store_in_child(path, "rw") == {"runs": ["r", "w"]}


def test_writer_names_a_leftover_shm_file_it_cannot_write(path: Path) -> None:
    """A -shm file at 0444 beside a writable database is the file the error names."""
    shm = path.with_name("runs.db-shm")
    shm.write_bytes(b"")
    with read_only(shm):
        outcome = store_in_child(path, "rw")
    assert outcome["error"] == "StoreReadOnlyError"
    assert outcome["message"].startswith(f"{shm} cannot be written (mode 0444)")
    assert "delete it" in outcome["message"]


def test_writer_names_a_read_only_directory(path: Path) -> None:
    """A directory where the -wal file cannot be created is the one the error names."""
    with read_only(path.parent):
        outcome = store_in_child(path, "rw")
    assert outcome["error"] == "StoreReadOnlyError"
    assert outcome["message"].startswith(f"the directory {path.parent} cannot be written")
    assert beside(path) == ["runs.db"]


def test_reader_of_a_read_only_file_leaves_nothing_beside_it(path: Path) -> None:
    """Reading a 0444 database in a writable directory creates no -wal or -shm file."""
    with read_only(path):
        assert store_in_child(path, "ro") == {"runs": ["r"]}
    assert beside(path) == ["runs.db"]
    assert store_in_child(path, "rw") == {"runs": ["r", "w"]}


def test_reader_reads_in_a_read_only_directory(path: Path) -> None:
    """A database in a 0555 directory (as on a read-only mount) is read all the same."""
    with read_only(path.parent, path):
        assert store_in_child(path, "ro") == {"runs": ["r"]}
    assert beside(path) == ["runs.db"]


def _snapshot_with_wal(path: Path, into: Path, *, shm: bool) -> Path:
    """Copy `path` while a connection holds a commit (run `late`) in the WAL only."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(
            "INSERT INTO runs (run_id, workflow, status, version, created_at, updated_at) "
            "VALUES ('late', 'f', 'running', 1, 1.0, 1.0)"
        )
        into.mkdir()
        for suffix in ("", "-wal", "-shm") if shm else ("", "-wal"):
            shutil.copy(f"{path}{suffix}", into / f"runs.db{suffix}")
    finally:
        conn.close()
    return into / "runs.db"


def test_reader_reads_the_wal_of_a_read_only_copy(path: Path, tmp_path: Path) -> None:
    """A read-only copy of a live database, -wal and -shm included, shows the WAL's commits."""
    copy = _snapshot_with_wal(path, tmp_path / "copy", shm=True)
    files = [copy.with_name(f"runs.db{s}") for s in ("", "-wal", "-shm")]
    with read_only(copy.parent, *files):
        assert store_in_child(copy, "ro") == {"runs": ["r", "late"]}


def test_reader_refuses_a_wal_it_cannot_read(path: Path, tmp_path: Path) -> None:
    """A -wal with commits but no -shm in a read-only directory is refused, never skipped."""
    copy = _snapshot_with_wal(path, tmp_path / "copy", shm=False)
    with read_only(copy.parent, copy, copy.with_name("runs.db-wal")):
        outcome = store_in_child(copy, "ro")
    assert outcome["error"] == "StoreReadOnlyError"
    assert f"{copy}-wal holds commits" in outcome["message"]
    assert "runs.db-shm, which is missing" in outcome["message"]


# -- the immutable fallback, in this process -------------------------------------------------


async def test_reader_opens_immutable_when_no_shm_can_be_made(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told the file and directory cannot be written, a reader opens immutable and reads."""
    monkeypatch.setattr(_sqlite_files, "_writable", lambda _: False)
    assert _sqlite_files.reader_mode(path) == _sqlite_files.IMMUTABLE
    async with SqliteStore(path, SqliteConfig(read_only=True)) as store:
        assert [i.run_id for i in await store.list_runs()] == ["r"]
        assert (await store.pragmas())["journal_mode"] == "delete"  # immutable: no WAL
    assert beside(path) == ["runs.db"]


async def test_reader_falls_back_to_immutable_when_sqlite_cannot_make_the_shm(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `mode=ro` open that SQLite refuses for want of a -shm is retried immutable."""
    opened: list[str] = []
    real = _sqlite_schema._open_reader

    def refuse_plain(path: Path, mode: str, busy_timeout: float) -> sqlite3.Connection:
        opened.append(mode)
        if mode != _sqlite_files.IMMUTABLE:
            exc = sqlite3.OperationalError("attempt to write a readonly database")
            exc.sqlite_errorcode = sqlite3.SQLITE_READONLY_DIRECTORY
            raise exc
        return real(path, mode, busy_timeout)

    monkeypatch.setattr(_sqlite_schema, "_open_reader", refuse_plain)
    async with SqliteStore(path, SqliteConfig(read_only=True, readers=1)) as store:
        assert [i.run_id for i in await store.list_runs()] == ["r"]
    assert opened == ["mode=ro", _sqlite_files.IMMUTABLE]


def test_reader_never_falls_back_to_immutable_over_a_wal(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With commits in the -wal, an immutable reader would miss them: no fallback."""
    copy = _snapshot_with_wal(path, tmp_path / "copy", shm=False)
    assert not _sqlite_files.immutable_allowed(copy)
    monkeypatch.setattr(_sqlite_files, "_writable", lambda _: False)
    with pytest.raises(StoreReadOnlyError, match="holds commits"):
        _sqlite_files.reader_mode(copy)


def test_writer_on_a_read_only_mount_says_so(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only mount the error says so, rather than quoting a writable mode."""
    monkeypatch.setattr(_sqlite_files, "_writable", lambda _: False)
    monkeypatch.setattr(os, "statvfs", lambda _: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(
        StoreReadOnlyError, match=r"runs\.db cannot be written \(it is on a read-only mount\)"
    ):
        _sqlite_files.check_writable(path)
