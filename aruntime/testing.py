"""Tools for testing code that uses aruntime: a fake clock, crash injection, a faulty store.

Example:
    clock = FakeClock()
    async with Runtime(clock=clock) as rt:
        handle = await rt.start(checkout, "o-1")
        before, after = await crash_run(rt, handle.run_id)
        assert before == after   # the replayed state is the state the crash threw away
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TypeVar

from aruntime._admission import Admission
from aruntime.errors import StoreError
from aruntime.events import Event
from aruntime.queues import Queue
from aruntime.runtime import Runtime
from aruntime.state import RunState, RunStatus
from aruntime.store import EventStore, OwnerInfo, Request, RequestKind, RunInfo

__all__ = ["FakeClock", "FaultyStore", "StoreWrapper", "crash_run"]

_T = TypeVar("_T")


class FakeClock:
    """A clock that moves only when told to, or by itself with `autojump=True`.

    `sleep(d)` waits until `advance()` moves the clock `d` seconds on. With `autojump`,
    a sleep instead jumps the clock straight to its deadline, so retries with long
    backoffs finish at once while every persisted due time stays exact. Every requested
    sleep is recorded in `sleeps`.
    """

    def __init__(self, start: float = 1_000_000.0, *, autojump: bool = False) -> None:
        self._now = start
        self._mono = 0.0
        self.autojump = autojump
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        if self.autojump or seconds == 0:
            self._move(seconds)
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._ids), waiter))
        await waiter

    def advance(self, seconds: float) -> None:
        """Move the clock on and wake the sleepers whose deadline has come."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._move(seconds)

    def _move(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock to move."""
        return sum(1 for _, _, w in self._sleepers if not w.done())


async def crash_run(runtime: Runtime, run_id: str) -> tuple[RunState, RunState]:
    """Kill the run's task as a crash would, throwing its in-memory state away.

    The supervisor respawns it from the log. Returns the state the task held before the
    crash and the state the respawned task replayed from the log; with every append
    folded as soon as it is durable, the two are equal.

    Raises:
        LookupError: the run has no live task in this runtime.
    """
    return await runtime._require_supervisor().crash(run_id)


class StoreWrapper:
    """A store that hands every call to `inner`: subclass it to watch or break some calls."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner

    @property
    def owner(self) -> bool:
        return self.inner.owner

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        await self.inner.append(run_id, events, expected_sequence)

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        return await self.inner.events_for(run_id, after)

    async def get_run(self, run_id: str) -> RunInfo | None:
        return await self.inner.get_run(run_id)

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunInfo]:
        return await self.inner.get_runs(run_ids)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        return await self.inner.list_runs(
            status=status, parked=parked, limit=limit, workflow=workflow, since=since
        )

    async def park(self, run_id: str, reason: str) -> None:
        await self.inner.park(run_id, reason)

    async def unpark(self, run_id: str) -> None:
        await self.inner.unpark(run_id)

    async def post(self, request: Request) -> int:
        return await self.inner.post(request)

    async def pending(
        self,
        *,
        run_id: str | None = None,
        limit: int | None = None,
        kinds: Collection[RequestKind] | None = None,
        after: int = 0,
    ) -> list[Request]:
        return await self.inner.pending(run_id=run_id, limit=limit, kinds=kinds, after=after)

    async def consume(
        self,
        request_id: int,
        run_id: str | None = None,
        events: Sequence[Event] = (),
        expected_sequence: int = 0,
    ) -> None:
        await self.inner.consume(request_id, run_id, events, expected_sequence)

    async def delete_run(self, run_id: str) -> None:
        await self.inner.delete_run(run_id)

    async def prune(self, *, older_than: float, status: RunStatus | None = None) -> int:
        return await self.inner.prune(older_than=older_than, status=status)

    async def admit(
        self, queues: Mapping[str, Queue], workflows: Collection[str], now: Callable[[], float]
    ) -> Admission:
        return await self.inner.admit(queues, workflows, now)

    async def set_owner_info(self, info: OwnerInfo | None) -> None:
        await self.inner.set_owner_info(info)

    async def owner_info(self) -> OwnerInfo | None:
        return await self.inner.owner_info()

    def change_counter(self) -> int:
        return self.inner.change_counter()

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        return await self.inner.wait_changed(since, timeout)


class FaultyStore(StoreWrapper):
    """Wraps a store and makes chosen calls fail, for fault-injection tests.

    Every call is counted from 1 across the store (`operations`); a call fails with
    `error()` when its number is in `fail_operations`, or, for appends, when its number
    among the appends is in `fail_appends` or `fail_append(run_id, events)` says so.
    With `ambiguous=True` a failing call first takes effect and then raises, as a commit
    whose acknowledgement is lost: the caller cannot tell that its append is durable.
    `failed` names the calls that failed, in order. The inbox, the removal of runs and
    the change counter pass through uncounted.

    Example:
        store = FaultyStore(MemoryStore(), fail_operations=range(5, 15))   # an outage
    """

    def __init__(
        self,
        inner: EventStore,
        *,
        fail_operations: Iterable[int] = (),
        fail_appends: Iterable[int] = (),
        fail_append: Callable[[str, Sequence[Event]], bool] | None = None,
        ambiguous: bool = False,
        error: Callable[[], BaseException] = lambda: StoreError("injected store fault"),
    ) -> None:
        super().__init__(inner)
        self.operations = 0
        self.appends = 0
        self.failed: list[str] = []
        self._fail_operations = frozenset(fail_operations)
        self._fail_appends = frozenset(fail_appends)
        self._fail_append = fail_append
        self._ambiguous = ambiguous
        self._error = error

    async def _call(self, name: str, call: Callable[[], Awaitable[_T]], fails: bool = False) -> _T:
        self.operations += 1
        if not (fails or self.operations in self._fail_operations):
            return await call()
        self.failed.append(name)
        if self._ambiguous:
            await call()
        raise self._error()

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        self.appends += 1
        fails = self.appends in self._fail_appends or (
            self._fail_append is not None and self._fail_append(run_id, events)
        )
        await self._call(
            "append", lambda: self.inner.append(run_id, events, expected_sequence), fails
        )

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        return await self._call("events_for", lambda: self.inner.events_for(run_id, after))

    async def get_run(self, run_id: str) -> RunInfo | None:
        return await self._call("get_run", lambda: self.inner.get_run(run_id))

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        return await self._call(
            "list_runs",
            lambda: self.inner.list_runs(
                status=status, parked=parked, limit=limit, workflow=workflow, since=since
            ),
        )

    async def park(self, run_id: str, reason: str) -> None:
        await self._call("park", lambda: self.inner.park(run_id, reason))

    async def unpark(self, run_id: str) -> None:
        await self._call("unpark", lambda: self.inner.unpark(run_id))
