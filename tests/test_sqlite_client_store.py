"""An SQLite file shared by its owner's store and a client's store (`owner=False`)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aruntime.errors import StoreCorruptError, StoreNotOwnerError
from aruntime.events import RunCompleted, RunStarted
from aruntime.store import Request, RequestKind
from aruntime.store import _sqlite_schema as schema
from aruntime.store.sqlite import SqliteConfig, SqliteStore


def started(run_id: str) -> RunStarted:
    return RunStarted(sequence=1, at=1.0, run_id=run_id, workflow="flow", args="[[],{}]")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
async def owner(path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(path) as store:
        yield store


@pytest.fixture
async def client(owner: SqliteStore, path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(path, SqliteConfig(owner=False)) as store:
        yield store


async def test_client_store_opens_while_the_owner_holds_the_file(
    owner: SqliteStore, client: SqliteStore
) -> None:
    """A client's store takes no lock: it opens beside the owner and reads its runs."""
    await owner.append("a", [started("a")], 0)
    assert [i.run_id for i in await client.list_runs()] == ["a"]
    assert (owner.owner, client.owner) == (True, False)


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.append("a", [started("a")], 0),
        lambda s: s.park("a", "why"),
        lambda s: s.unpark("a"),
        lambda s: s.consume(1),
        lambda s: s.consume(1, "a", [started("a")], 0),
        lambda s: s.set_owner_info(None),
    ],
    ids=["append", "park", "unpark", "consume", "consume-with-events", "owner-info"],
)
async def test_client_store_refuses_the_owners_writes(client: SqliteStore, write: object) -> None:
    """Appends, parks and consumption raise StoreNotOwnerError naming the Client way."""
    with pytest.raises(StoreNotOwnerError, match="inbox"):
        await write(client)  # type: ignore[operator]


async def test_request_posted_by_a_client_reaches_the_owner(
    owner: SqliteStore, client: SqliteStore
) -> None:
    """The owner sees the client's request and consumes it with the run it starts."""
    seen = owner.change_counter()
    waiting = asyncio.ensure_future(owner.wait_changed(seen, timeout=5.0))
    await asyncio.sleep(0.01)
    request_id = await client.post(Request(kind=RequestKind.START, run_id="a", at=1.0))
    await asyncio.wait_for(waiting, 2.0)
    (request,) = await owner.pending()
    assert request.id == request_id
    await owner.consume(request_id, "a", [started("a")], 0)
    assert await client.pending() == []
    assert await client.get_run("a") is not None


async def test_client_waiting_for_a_change_wakes_soon_after_the_owners_commit(
    owner: SqliteStore, client: SqliteStore
) -> None:
    """A client asleep on the change counter wakes within a few polls of the commit."""
    await owner.append("a", [started("a")], 0)
    await client.wait_changed(client.change_counter(), timeout=0.05)  # the first look
    seen = client.change_counter()
    waiting = asyncio.ensure_future(client.wait_changed(seen))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    committed = time.monotonic()
    await owner.append("a", [RunCompleted(sequence=2, at=2.0, result="1")], 1)
    await asyncio.wait_for(waiting, 2.0)
    assert time.monotonic() - committed < 0.5


async def test_client_store_creates_the_file_its_requests_wait_in(path: Path) -> None:
    """With no runtime ever opened, a client's request waits in a new file for one."""
    async with SqliteStore(path, SqliteConfig(owner=False)) as client:
        await client.post(Request(kind=RequestKind.RESUME, run_id="a", at=1.0))
    async with SqliteStore(path) as owner:
        assert [r.run_id for r in await owner.pending()] == ["a"]


async def test_damaged_request_is_refused_on_read(owner: SqliteStore, path: Path) -> None:
    """A request changed after it was posted raises StoreCorruptError, naming it."""
    await owner.post(Request(kind=RequestKind.START, run_id="a", at=1.0, workflow="flow"))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("UPDATE inbox SET data = replace(data, 'flow', 'flaw')")
    finally:
        conn.close()
    with pytest.raises(StoreCorruptError, match="inbox request 1 is damaged"):
        await owner.pending()


async def test_version_2_file_gains_the_inbox(path: Path) -> None:
    """A file of schema version 2 is migrated to the inbox's version on open."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for migration in schema._MIGRATIONS[:2]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('application', 'aruntime'), ('schema_version', '2')")
    finally:
        conn.close()
    async with SqliteStore(path, SqliteConfig(read_only=True)) as reader:
        assert await reader.pending() == []
    async with SqliteStore(path) as owner:
        await owner.post(Request(kind=RequestKind.RESUME, run_id="a", at=1.0))
        assert len(await owner.pending()) == 1
