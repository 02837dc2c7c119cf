"""PostgreSQL for the tests: where it is, whether it runs, a fresh schema per store.

The server is `ARUNTIME_TEST_PG` (default: the local one on 127.0.0.1:5432, database
`test`). Without a reachable server the PostgreSQL tests skip, except in CI (`CI=true`),
where they fail loudly: CI must test the fleet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

PG_URL = os.environ.get("ARUNTIME_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

_T = TypeVar("_T")

_available: bool | None = None
_created: list[str] = []
"""Every schema the tests made, dropped at the end of the session."""


def postgres_available() -> bool:
    """Whether the test server answers (asked once)."""
    global _available  # noqa: PLW0603 - one look per session
    if _available is None:
        _available = run_aside(_answers())
    return _available


async def _answers() -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_URL, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


def require_postgres() -> None:
    """Skip the test without a server; in CI, fail it."""
    if postgres_available():
        return
    message = f"PostgreSQL is not reachable at {PG_URL}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI must run the PostgreSQL tests", pytrace=False)
    pytest.skip(message)


def new_schema() -> str:
    """A schema name of its own for one store, dropped at the end of the session."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _created.append(name)
    return name


def pg_url(schema: str, **options: object) -> str:
    """The store URL of `schema` on the test server, with aruntime's options."""
    query = "&".join(f"{key}={value}" for key, value in {"schema": schema, **options}.items())
    return f"{PG_URL}?{query}"


def drop_created_schemas() -> None:
    """Drop the schemas the tests made."""
    if not _created or not postgres_available():
        return
    names, _created[:] = list(_created), []
    run_aside(drop_schemas(names))


def run_aside(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to its end on a loop of its own, in a thread (callable from a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def drop_schemas(names: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        for name in names:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await conn.close()
