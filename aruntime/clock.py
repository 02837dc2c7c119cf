"""Time, injected: the pure core never reads a clock, and tests substitute their own."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Where the runtime gets time and how it waits."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch; persisted in events (retry due times)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go back (restart budgets)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (zero or less returns at once, after a checkpoint)."""
        ...


class SystemClock:
    """The real clock: `time.time`, `time.monotonic` and `asyncio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
