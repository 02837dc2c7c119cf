"""Where run logs live: the store protocol and its backends.

`open_store` turns a URL into a store: `memory://`, `sqlite:///path/runs.db` (the
embedded default) or a `postgresql://` URL. Backends import their drivers only when used.
"""

from __future__ import annotations

from aruntime.errors import ConfigError
from aruntime.store._base import EventStore as EventStore
from aruntime.store._base import RunInfo as RunInfo
from aruntime.store.memory import MemoryStore as MemoryStore

__all__ = ["EventStore", "MemoryStore", "RunInfo", "open_store"]


def open_store(url: str) -> EventStore:
    """The store a URL names; not opened yet (the runtime opens it).

    Raises:
        ConfigError: the URL's scheme is not one aruntime knows.
    """
    if not isinstance(url, str):
        raise ConfigError(f"a store URL must be a string, got {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(
            f"store URL {url!r} has no scheme; use memory://, sqlite:///path.db or postgresql://"
        )
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from aruntime.store.sqlite import SqliteStore  # noqa: PLC0415 - driver loaded on use

        return SqliteStore.from_url(url)
    raise ConfigError(f"unknown store scheme {scheme!r} in {url!r}; use memory:// or sqlite:///")
