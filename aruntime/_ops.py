"""The workflow vocabulary beyond steps: branches and durable sleep.

Each of these behaves like its asyncio counterpart outside a run (or inside a step body),
so code that uses them runs unchanged in a plain test. Inside a workflow they give every
operation a structural identity and record what must survive a crash.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Coroutine
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from aruntime._context import Branch, current_branch
from aruntime.errors import ConfigError

__all__ = ["TaskGroup", "gather", "sleep", "sleep_until"]

T = TypeVar("T")


async def gather(*awaitables: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
    """Run `awaitables` concurrently and return their results in argument order.

    The contract of `asyncio.gather`. Inside a workflow each awaitable runs as a branch of
    its own, numbered in argument order, so that the operations it calls keep the same
    identity whatever order they finish in, and a replay returns the same results.
    """
    branch = current_branch()
    if branch is None:
        return await asyncio.gather(*awaitables, return_exceptions=return_exceptions)
    runner = branch.runner
    tasks = [runner.spawn(branch, aw) for aw in awaitables]
    return await asyncio.gather(*tasks, return_exceptions=return_exceptions)


class TaskGroup:
    """`asyncio.TaskGroup` whose tasks are branches of the run, numbered by creation.

    Example:
        async with aruntime.TaskGroup() as tg:
            a = tg.create_task(fetch("a"))
            b = tg.create_task(fetch("b"))
        return a.result() + b.result()
    """

    __slots__ = ("_branch", "_group")

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._branch: Branch | None = None

    async def __aenter__(self) -> TaskGroup:
        branch = current_branch()
        if branch is not None:
            branch.runner.check_owner(branch, "aruntime.TaskGroup")
        self._branch = branch
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._group.__aexit__(exc_type, exc, tb)

    def create_task(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Start `coro` as the group's next task (inside a workflow: the next branch)."""
        branch = self._branch
        if branch is None:
            return self._group.create_task(coro, name=name)
        return branch.runner.spawn(branch, coro, self._group.create_task, name)


def _check_seconds(seconds: object) -> float:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        raise ConfigError(f"sleep needs a number of seconds, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"sleep needs a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


async def sleep(seconds: float) -> None:
    """Sleep durably: the wake-up time is recorded before the run waits.

    After a restart the run waits only what is left; a sleep that already ended is not
    slept again. A sleeping run holds no more than a suspended one. Outside a workflow,
    `asyncio.sleep`.

    Raises:
        ConfigError: `seconds` is not a finite number >= 0.
    """
    seconds = _check_seconds(seconds)
    branch = current_branch()
    if branch is None:
        await asyncio.sleep(seconds)
        return
    await branch.runner.sleep_until(branch.runner.now() + seconds)


async def sleep_until(when: datetime | float) -> None:
    """Sleep durably until `when`: a datetime, or seconds since the epoch.

    A naive datetime is local time, as `datetime.timestamp()` reads it.

    Raises:
        ConfigError: `when` is neither a datetime nor a finite number.
    """
    if isinstance(when, datetime):
        wake_at = when.timestamp()
    elif isinstance(when, int | float) and not isinstance(when, bool) and math.isfinite(when):
        wake_at = float(when)
    else:
        raise ConfigError(f"sleep_until needs a datetime or epoch seconds, got {when!r}")
    branch = current_branch()
    if branch is None:
        await asyncio.sleep(max(0.0, wake_at - time.time()))
        return
    await branch.runner.sleep_until(wake_at)
