"""Where run logs live: the store protocol and its backends.

`open_store` turns a URL into a store: `memory://`, `sqlite:///path/runs.db` (the
embedded default), or `postgresql://user@host/database` (a fleet of workers sharing one
database). Backends import their drivers only when used.
"""

from __future__ import annotations

import os
import urllib.parse

from aruntime.errors import ConfigError
from aruntime.store._base import CONTROL_KINDS as CONTROL_KINDS
from aruntime.store._base import EventStore as EventStore
from aruntime.store._base import OwnerInfo as OwnerInfo
from aruntime.store._base import Request as Request
from aruntime.store._base import RequestKind as RequestKind
from aruntime.store._base import RunInfo as RunInfo
from aruntime.store.memory import MemoryStore as MemoryStore

__all__ = [
    "CONTROL_KINDS",
    "EventStore",
    "MemoryStore",
    "OwnerInfo",
    "Request",
    "RequestKind",
    "RunInfo",
    "open_store",
]

_SCHEMES = "memory://, sqlite:///path.db and postgresql://user@host/database"
"""The store URLs that exist, for the errors that name them."""


def open_store(url: str, *, owner: bool = True) -> EventStore:
    """The store a URL names; not opened yet (the runtime opens it).

    `owner=False` opens it as a client's store (reads, inbox requests, removal of ended
    runs), which works beside the runtime that owns the file in another process.

    Raises:
        ConfigError: the URL has no scheme (a bare path is told its `sqlite:///` URL), or
            a scheme aruntime has no store for, or options the store refuses.
    """
    if isinstance(url, os.PathLike):
        raise ConfigError(
            f"a store URL must be a string, got the path {os.fspath(url)!r}; for an SQLite "
            f"file write {_sqlite_url(os.fspath(url))!r}"
        )
    if not isinstance(url, str):
        raise ConfigError(f"a store URL must be a string, got {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        if not url.strip():
            raise ConfigError(f"the store URL is empty; the stores are {_SCHEMES}")
        raise ConfigError(
            f"store URL {url!r} has no scheme; for an SQLite file write {_sqlite_url(url)} "
            f"(the stores are {_SCHEMES})"
        )
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from aruntime.store.sqlite import SqliteStore  # noqa: PLC0415 - driver loaded on use

        return SqliteStore.from_url(url, owner=owner)
    if scheme in ("postgresql", "postgres"):
        try:
            from aruntime.store.postgres import PostgresStore  # noqa: PLC0415 - driver loaded on use
        except ImportError as exc:
            raise ConfigError(
                f"the PostgreSQL store needs asyncpg ({exc}); install it with "
                "pip install 'aruntime[postgres]'"
            ) from None
        return PostgresStore.from_url(url, owner=owner)
    raise ConfigError(f"no store for the scheme {scheme!r} of {url!r}; the stores are {_SCHEMES}")


def _sqlite_url(path: str | bytes) -> str:
    """The `sqlite:///` URL of a file's path (absolute paths get four slashes)."""
    return "sqlite:///" + urllib.parse.quote(path, safe="/")
