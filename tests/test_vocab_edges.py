"""Edges of messages, child runs, first-of and fork: a fork of a run with children, a send
to a child just started or a fork not applied yet, a losing receive, a taken child id, a
fork made after its origin's deadline, a parent cancelled while no runner runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from run_helpers import kinds, wait_until

import aruntime
from aruntime import (
    Client,
    RunStatus,
    Runtime,
    step,
    workflow,
)
from aruntime.clock import SystemClock
from aruntime.errors import NonRetryableError
from aruntime.store import MemoryStore

bug = {"on": True}


@pytest.fixture(autouse=True)
def _reset() -> None:
    bug["on"] = True


@step
async def after_child(n: int) -> int:
    if bug["on"]:
        raise NonRetryableError("bug after the child")
    return n + 100


@workflow(name="findings.small_child")
async def small_child(n: int) -> int:
    return n * 2


@workflow(name="findings.parent_then_step")
async def parent_then_step(n: int) -> int:
    got = await aruntime.run_child(small_child, n)
    return await after_child(got)


@workflow(name="findings.listener")
async def listener() -> str:
    return str(await aruntime.receive())


@workflow(name="findings.talks_to_child")
async def talks_to_child() -> str:
    handle = await aruntime.start_child(listener)
    await aruntime.send(handle.run_id, "hello child")
    return str(await handle)


@workflow(name="findings.waits_on_listener")
async def waits_on_listener() -> str:
    return await aruntime.run_child(listener)


@workflow(name="findings.two_topics")
async def two_topics() -> list[Any]:
    won = await aruntime.first(aruntime.receive("a"), aruntime.receive("b"))
    other = await aruntime.receive("b" if won == "A" else "a", timeout=1.0)
    return [won, other]


@workflow(name="findings.other_workflow")
async def other_workflow() -> str:
    return "I am someone else"


@workflow(name="findings.str_child")
async def str_child() -> Any:
    return "the child"


@workflow(name="findings.adopts_by_name")
async def adopts_by_name() -> str:
    return str(await aruntime.run_child(str_child, run_id="taken"))


@workflow(name="findings.two_receives")
async def two_receives() -> list[Any]:
    return [await aruntime.receive(), await aruntime.receive()]


async def _ended(store: MemoryStore, run_id: str) -> bool:
    info = await store.get_run(run_id)
    return info is not None and info.status.terminal


async def test_fork_of_a_run_that_started_a_child_replays_the_child() -> None:
    """A fork copies the origin's ChildStarted (child 'p/1'); the fork's replay asks for
    its default child id ('fork/1') and must adopt the recorded child, not park."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(parent_then_step, 1, run_id="p")
        with pytest.raises(aruntime.RunFailedError):
            await handle.result()
        bug["on"] = False
        fork = await client.fork("p", from_step="2", run_id="p-fix")
        assert await fork.result(timeout=5) == 102


async def test_a_workflow_can_send_to_the_child_it_just_started() -> None:
    """The child's start waits in the inbox when the parent sends: the send must not be
    refused (and recorded refused) as RunNotFoundError."""
    async with Runtime() as rt:
        handle = await rt.start(talks_to_child, run_id="tc")
        assert await asyncio.wait_for(handle.result(), 5) == "hello child"


async def test_cancelling_a_parent_no_runner_runs_cancels_its_child() -> None:
    """A runtime that does not run the parent's workflow cancels it from its log; its
    unfinished child must be cancelled too."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        await rt.start(waits_on_listener, run_id="par")
        await wait_until(lambda: _has(store, "par/1", "ReceiveStarted"))
    async with Runtime(store, workflows=[listener]) as rt2:
        assert await rt2.cancel("par") is RunStatus.CANCELLED
        await wait_until(lambda: _ended(store, "par/1"))
        info = await store.get_run("par/1")
        assert info is not None
        assert info.status is RunStatus.CANCELLED


async def _has(store: MemoryStore, run_id: str, kind: str) -> bool:
    return kind in kinds(await store.events_for(run_id))


async def test_a_losing_receive_does_not_swallow_its_message() -> None:
    """first(receive('a'), receive('b')) with both messages waiting: the loser must not
    consume (and lose) message 'b', which the workflow receives next."""
    store = MemoryStore()
    async with Runtime(store), Client(store) as client:
        await client.start(two_topics, run_id="tt")
        await client.send("tt", "A", topic="a")
        await client.send("tt", "B", topic="b")
        assert await client.handle("tt").result(timeout=5) == ["A", "B"]


async def test_a_message_to_a_fork_waiting_in_the_inbox_is_kept() -> None:
    """A fork requested while no runtime runs waits in the inbox, as a start does: a
    message sent to it is kept, not refused with RunNotFoundError."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        await client.start(two_receives, run_id="w")
        await client.send("w", "one")
        await client.send("w", "two")
        assert await client.handle("w").result(timeout=5) == ["one", "two"]
    async with Client(store) as client:
        fork = await client.fork("w", from_step="2", run_id="w-fork")
        await client.send(fork.run_id, "three")  # RunNotFoundError before the fix
    async with Runtime(store) as rt, Client(store) as client:
        got: list[Any] = await client.handle("w-fork").result(timeout=5)
        left = [m.payload or "" for m in await client.messages("w-fork")]
        assert got[0] == "one"
        assert sorted([f'"{got[1]}"', *left]) == ['"three"', '"two"']
        del rt


async def test_a_child_run_id_taken_by_another_workflow_is_refused() -> None:
    """run_child(..., run_id=X) where X is a run of another workflow must not adopt that
    run's result as the child's."""
    async with Runtime() as rt:
        await (await rt.start(other_workflow, run_id="taken")).result()
        handle = await rt.start(adopts_by_name, run_id="ab")
        with pytest.raises(aruntime.RunFailedError, match="RunIdConflictError"):
            await asyncio.wait_for(handle.result(), 5)


@step
async def fixed_later() -> str:
    if bug["on"]:
        raise NonRetryableError("bug")
    return "fixed"


@workflow(name="findings.timed")
async def timed() -> str:
    return await fixed_later()


class _LateClock(SystemClock):
    offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset


async def test_a_fork_made_after_the_origins_deadline_is_not_cancelled_at_once() -> None:
    """A run started with timeout=60 fails; the bug is fixed an hour later and the run
    forked: the fork must run the fixed step, not inherit the long-past wall-clock
    deadline and end cancelled 'timeout' at once."""
    store = MemoryStore()
    clock = _LateClock()
    async with Runtime(store, clock=clock) as rt, Client(store) as client:
        with pytest.raises(aruntime.RunFailedError):
            await (await rt.start(timed, run_id="t", timeout=60)).result()
        bug["on"] = False
        clock.offset = 3600.0
        fork = await client.fork("t", from_step="1", run_id="t-fix")
        assert await fork.result(timeout=5) == "fixed"
