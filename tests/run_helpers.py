"""Helpers shared by the runtime behaviour tests: a typed `start`, waits, and log readers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from aruntime import RunHandle, Runtime, Workflow
from aruntime.events import Event, StepFailed

R = TypeVar("R")

CANCELLED_MID_STEP = [
    "RunStarted",
    "StepStarted",
    "CancelRequested",
    "OperationCancelled",
    "RunCancelled",
]
"""The event kinds of a one-step run cancelled while its step was in flight."""


async def start(rt: Runtime, wf: Workflow[..., R], *args: Any, run_id: str) -> RunHandle[R]:
    """`rt.start(wf, *args, run_id=...)`, typed loosely.

    mypy rejects `run_id=` on a workflow whose signature has no such parameter, because
    `Runtime.start` takes `**kwargs: P.kwargs`; going through `Workflow[..., R]` keeps
    the call itself exactly what a user writes.
    """
    return await rt.start(wf, *args, run_id=run_id)


async def wait_until(pred: Callable[[], bool | Awaitable[bool]]) -> None:
    """Poll `pred` on the event loop until it holds; fail after a few seconds."""
    async with asyncio.timeout(5):
        while True:
            value = pred()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.001)


def kinds(events: list[Event]) -> list[str]:
    """The event type names of a log, in order."""
    return [type(e).__name__ for e in events]


def failures(events: Sequence[object]) -> list[StepFailed]:
    """The failed attempts of a log, in order."""
    return [e for e in events if isinstance(e, StepFailed)]


async def settled() -> None:
    """Let every task that can run, run (a sleeper that should not wake gets its chance)."""
    for _ in range(20):
        await asyncio.sleep(0)


def most_at_once(moves: Iterable[tuple[float, int]]) -> int:
    """The most things open at one instant, from `(time, +1 or -1)` moves (at a tie, an
    end counts before a start)."""
    running = most = 0
    for _, change in sorted(moves):
        running += change
        most = max(most, running)
    return most
