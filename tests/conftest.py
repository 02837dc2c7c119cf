"""Fixtures shared by the test modules."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pg_helpers import drop_created_schemas, new_schema, pg_url, require_postgres

from aruntime.store import EventStore, MemoryStore


def _sqlite(tmp_path: Path) -> EventStore:
    from aruntime.store.sqlite import SqliteStore

    return SqliteStore(tmp_path / "runs.db")


def _postgres(_: Path) -> EventStore:
    """A store in a schema of its own on the test server (skips without one, but in CI)."""
    require_postgres()
    from aruntime.store.postgres import PostgresStore

    return PostgresStore.from_url(pg_url(new_schema()))


STORES: dict[str, Callable[[Path], EventStore]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": _sqlite,
    "postgres": _postgres,
}
"""Every store backend by fixture id; the contract suite runs on each."""


@pytest.fixture(scope="session", autouse=True)
def _drop_test_schemas() -> Iterator[None]:
    """Drop the PostgreSQL schemas the tests made."""
    yield
    drop_created_schemas()


@pytest.fixture
def schema() -> str:
    """A fresh PostgreSQL schema on the test server (skips without one, but in CI)."""
    require_postgres()
    return new_schema()


@pytest.fixture
def url(schema: str) -> str:
    """The URL of a fleet's store in `schema`, with leases short enough for tests."""
    from fleet_helpers import FAST_LEASES

    return pg_url(schema, **FAST_LEASES)


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """An opened store of each backend, closed after the test."""
    opened = STORES[request.param](tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


def _store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("aruntime-sqlite")]


@pytest.fixture(autouse=True)
def _no_store_left_open() -> Iterator[None]:
    """Fail the test that leaves a SQLite store's threads running, not a later one."""
    before = set(_store_threads())
    yield
    deadline = time.monotonic() + 2.0
    leaked = [n for n in _store_threads() if n not in before]
    while leaked and time.monotonic() < deadline:
        time.sleep(0.01)
        leaked = [n for n in _store_threads() if n not in before]
    assert not leaked, f"the test left a SQLite store open: threads {leaked} still run"
