"""The watcher: notices commits that any connection makes to an SQLite file.

`PRAGMA data_version` on a connection changes whenever another connection, in this
process or another, has committed to the file since the last time it was asked; asking
costs a few microseconds and reads no table. One watcher thread per open store asks it
on a connection of its own every `interval` seconds, but only while somebody waits for a
change (a client waiting for a result, the runtime waiting for inbox requests), and bumps
the store's `ChangeSignal` when it moved. The waiters then read what they wait for, once
each: there is no read per waiter per poll, and a result or a request is seen within one
interval of its commit, plus the wake-up and the read.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

from aruntime.store import _sqlite_schema as schema
from aruntime.store._changes import ChangeSignal

__all__ = ["Watcher"]

_ERROR_PAUSE = 0.1
"""Seconds between polls while the file cannot be read."""


class Watcher(threading.Thread):
    """Polls the file's data version while someone waits; bumps `signal` on each change."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float,
        busy_timeout: float,
    ) -> None:
        super().__init__(name="aruntime-sqlite-watcher", daemon=True)
        self._path = path
        self._loop = loop
        self._interval = interval
        self._busy_timeout = busy_timeout
        self._active = threading.Event()
        self._stopping = threading.Event()
        self.signal = ChangeSignal(on_waiting=self._active.set, on_idle=self._active.clear)

    def stop(self) -> None:
        """Ask the thread to end (join it after)."""
        self._stopping.set()
        self._active.set()

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        last: int | None = None
        try:
            while True:
                self._active.wait()
                if self._stopping.wait(self._interval):
                    return
                fresh = conn is None
                conn, version = self._version(conn)
                if version is None:
                    # The waiters' own reads will say what is wrong; keep them reading,
                    # slowly, and try a new connection next time.
                    self._bump()
                    if self._stopping.wait(_ERROR_PAUSE):
                        return
                elif fresh or version != last:
                    # A new connection has no earlier version to compare with: a commit
                    # may have come after the waiter's read, so it reads once more.
                    last = version
                    self._bump()
        finally:
            if conn is not None:
                conn.close()

    def _version(
        self, conn: sqlite3.Connection | None
    ) -> tuple[sqlite3.Connection | None, int | None]:
        """The file's data version on `conn` (connected if None); None on failure."""
        try:
            if conn is None:
                conn = schema.connect(self._path, read_only=True, busy_timeout=self._busy_timeout)
            return conn, int(conn.execute("PRAGMA data_version").fetchone()[0])
        except (sqlite3.Error, OSError):
            if conn is not None:
                conn.close()
            return None, None

    def _bump(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self.signal.bump)
