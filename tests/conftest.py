"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aruntime.store import EventStore, MemoryStore


def _sqlite(tmp_path: Path) -> EventStore:
    from aruntime.store.sqlite import SqliteStore

    return SqliteStore(tmp_path / "runs.db")


STORES: dict[str, Callable[[Path], EventStore]] = {
    "memory": lambda _: MemoryStore(),
    "sqlite": _sqlite,
}
"""Every store backend by fixture id; the contract suite runs on each."""


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """An opened store of each backend, closed after the test."""
    opened = STORES[request.param](tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
