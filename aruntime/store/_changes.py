"""A change counter that waiters can sleep on: the loop's side of every store's watcher.

A store bumps the counter after each change it sees committed (the memory store after
each of its own writes, the SQLite watcher after the file's `data_version` moved). A
waiter takes the counter, reads what it waits for, and if that is not there yet sleeps
until the counter passes the value it took: a change committed after its read always
wakes it, and one committed before merely costs it a second read.

The counter lives on the event loop; only `bump` is called from elsewhere, through
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["ChangeSignal"]


class ChangeSignal:
    """A counter of changes, and the futures of those who wait for the next one."""

    __slots__ = ("_on_idle", "_on_waiting", "_waiters", "value")

    def __init__(
        self,
        *,
        on_waiting: Callable[[], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.value = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._on_waiting = on_waiting
        """Called when the first waiter arrives (a watcher starts polling)."""
        self._on_idle = on_idle
        """Called when the last waiter leaves (the watcher may stop polling)."""

    @property
    def waiting(self) -> int:
        """How many waiters sleep on the counter."""
        return len(self._waiters)

    def bump(self) -> None:
        """Count a change and wake every waiter."""
        self.value += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, since: int, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        """Wait until the counter exceeds `since`, or `timeout` seconds pass; the counter."""
        if self.value > since:
            return self.value
        if timeout is not None and timeout <= 0:
            return self.value
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        if len(self._waiters) == 1 and self._on_waiting is not None:
            self._on_waiting()
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait([waiter], timeout=timeout)
        finally:
            self._waiters.discard(waiter)
            if not self._waiters and self._on_idle is not None:
                self._on_idle()
        return self.value

    def close(self) -> None:
        """Wake every waiter (they read again, and find the store closed)."""
        self.bump()
