"""Child runs: runs of their own, adopted on replay, failures and cancellation reach across."""

from __future__ import annotations

import asyncio

import pytest
from run_helpers import kinds, wait_until

import aruntime
from aruntime import (
    Client,
    RunCancelledError,
    RunFailedError,
    RunStatus,
    Runtime,
    step,
    workflow,
)
from aruntime.errors import NonRetryableError
from aruntime.events import ChildStarted
from aruntime.store import MemoryStore
from aruntime.testing import crash_run


@step
async def double(n: int) -> int:
    return n * 2


@step
async def explode() -> None:
    raise NonRetryableError("boom")


@workflow(name="children_test.child")
async def child(n: int) -> int:
    return await double(n)


@workflow(name="children_test.failing_child")
async def failing_child() -> None:
    await explode()


@workflow(name="children_test.waiting_child")
async def waiting_child() -> str:
    return str(await aruntime.receive())


@workflow(name="children_test.parent")
async def parent(n: int) -> int:
    return await aruntime.run_child(child, n) + 1


@workflow(name="children_test.two_children")
async def two_children() -> list[int]:
    a = await aruntime.start_child(child, 1)
    b = await aruntime.start_child(child, 2, run_id="named-child")
    return [await b, await a]


@workflow(name="children_test.catches")
async def catches() -> str:
    try:
        await aruntime.run_child(failing_child)
    except RunFailedError as exc:
        return f"child failed: {exc.error_message}"
    return "no"


@workflow(name="children_test.waits_on_child")
async def waits_on_child() -> str:
    return await aruntime.run_child(waiting_child)


async def test_a_child_runs_as_a_run_of_its_own() -> None:
    """The child has its own log, names its parent, and its result reaches the parent."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        assert await (await rt.start(parent, 4, run_id="p")).result() == 9
    child_log = await store.events_for("p/1")
    assert child_log[0].parent == "p"  # type: ignore[union-attr]
    assert kinds(await store.events_for("p"))[1:] == ["ChildStarted", "ChildEnded", "RunCompleted"]


async def test_start_child_returns_handles_awaited_later() -> None:
    """Two children run side by side; a child's run id can be chosen."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        assert await (await rt.start(two_children, run_id="tc")).result() == [4, 2]
    assert (await store.get_run("named-child")) is not None


async def test_a_failed_child_raises_run_failed_error_in_the_parent() -> None:
    """The child's failure reaches the parent as RunFailedError, which it may catch."""
    async with Runtime() as rt:
        handle = await rt.start(catches, run_id="c")
        assert await handle.result() == "child failed: boom"


async def test_a_replaying_parent_adopts_its_child() -> None:
    """After a crash, the parent finds the child it started instead of starting another."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(waits_on_child, run_id="wp")
        await wait_until(lambda: _running(store, "wp/1"))
        await crash_run(rt, "wp")
        await client.send("wp/1", "hello")
        assert await handle.result() == "hello"
    runs = [info.run_id for info in await store.list_runs()]
    assert sorted(runs) == ["wp", "wp/1"]


async def _running(store: MemoryStore, run_id: str) -> bool:
    log = await store.events_for(run_id)
    return "ReceiveStarted" in kinds(log)


async def test_cancelling_a_parent_cancels_its_unfinished_child() -> None:
    """The parent's cancellation reaches the child it waits for."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        handle = await rt.start(waits_on_child, run_id="cp")
        await wait_until(lambda: _running(store, "cp/1"))
        await rt.cancel("cp")
        with pytest.raises(RunCancelledError):
            await handle.result()
        await wait_until(lambda: _ended(store, "cp/1"))
        info = await store.get_run("cp/1")
        assert info is not None
        assert info.status is RunStatus.CANCELLED


async def _ended(store: MemoryStore, run_id: str) -> bool:
    info = await store.get_run(run_id)
    return info is not None and info.status.terminal


async def test_run_child_outside_a_workflow_is_refused() -> None:
    """A child needs a parent run."""
    with pytest.raises(LookupError):
        await aruntime.run_child(child, 1)
    await asyncio.sleep(0)


@workflow(name="children_test.race_children")
async def race_children() -> str:
    return str(
        await aruntime.first(aruntime.run_child(waiting_child), aruntime.run_child(child, 5))
    )


async def test_a_child_whose_wait_lost_a_first_is_cancelled() -> None:
    """`first` of two children: the quick one wins, the other child run is cancelled."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        assert await (await rt.start(race_children, run_id="rc")).result() == "10"
        log = await store.events_for("rc")
        children = [e.child for e in log if isinstance(e, ChildStarted)]
        assert sorted(children) == ["rc/1.1", "rc/2.1"]
        await wait_until(lambda: _ended(store, "rc/1.1"))
        info = await store.get_run("rc/1.1")
        assert info is not None
        assert info.status is RunStatus.CANCELLED


async def test_cancelling_a_parent_that_no_runtime_runs_cancels_its_children() -> None:
    """A parent cancelled while parked (nothing runs it) still has its children cancelled."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        await rt.start(waits_on_child, run_id="pp")
        await wait_until(lambda: _running(store, "pp/1"))
    await store.park("pp", "parked by the test")
    async with Runtime(store, workflows=[waiting_child]) as rt:
        assert await rt.cancel("pp") is RunStatus.CANCELLED
        await wait_until(lambda: _ended(store, "pp/1"))
        info = await store.get_run("pp/1")
        assert info is not None
        assert info.status is RunStatus.CANCELLED
