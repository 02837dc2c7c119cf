"""`Runtime.aclose(grace=...)`: the step bodies running at the close finish, recorded; no
operation starts after them; what outlives the grace runs again in the next runtime."""

from __future__ import annotations

import asyncio

import pytest
from run_helpers import kinds, start, wait_until

import aruntime
from aruntime import ConfigError, Runtime, step, workflow
from aruntime.store import EventStore, MemoryStore

entered: list[str] = []
gates: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    entered.clear()
    gates.clear()


def gate(key: str) -> asyncio.Event:
    return gates.setdefault(key, asyncio.Event())


@step
async def slow(key: str) -> str:
    entered.append(key)
    await gate(key).wait()
    return key


@workflow
async def two_steps() -> list[str]:
    return [await slow("first"), await slow("second")]


@workflow
async def naps() -> str:
    await aruntime.sleep(3600)
    return "rested"


async def test_body_in_flight_finishes_recorded_and_the_next_step_waits_for_the_next_runtime(
    store: EventStore,
) -> None:
    rt = await Runtime(store).open()
    await start(rt, two_steps, run_id="g")
    await wait_until(lambda: entered == ["first"])
    closing = asyncio.create_task(rt.aclose(grace=5))
    await asyncio.sleep(0.05)
    assert not closing.done()  # waits for the body
    gate("first").set()
    async with asyncio.timeout(5):
        await closing
    assert entered == ["first"]  # the second step did not start
    assert kinds(await store.events_for("g")) == ["RunStarted", "StepStarted", "StepCompleted"]
    gate("second").set()
    async with Runtime(store) as again:
        assert await again.handle("g").result() == ["first", "second"]
    assert entered == ["first", "second"]  # the first body did not run again


async def test_body_that_outlives_the_grace_runs_again_in_the_next_runtime() -> None:
    store = MemoryStore()
    rt = await Runtime(store).open()
    await start(rt, two_steps, run_id="g")
    await wait_until(lambda: entered == ["first"])
    async with asyncio.timeout(5):
        await rt.aclose(grace=0.05)
    assert kinds(await store.events_for("g")) == ["RunStarted", "StepStarted"]
    gate("first").set()
    gate("second").set()
    async with Runtime(store) as again:
        assert await again.handle("g").result() == ["first", "second"]
    assert entered == ["first", "first", "second"]


async def test_sleeping_runs_do_not_hold_the_close_for_the_grace() -> None:
    store = MemoryStore()
    rt = await Runtime(store).open()
    await start(rt, naps, run_id="z")
    await wait_until(lambda: rt._require_supervisor().active == 1)
    await asyncio.sleep(0.01)
    async with asyncio.timeout(1):
        await rt.aclose(grace=30)
    assert kinds(await store.events_for("z")) == ["RunStarted", "SleepStarted"]


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), "5", True])
async def test_invalid_grace_is_a_config_error_and_closes_nothing(grace: object) -> None:
    async with Runtime() as rt:
        with pytest.raises(ConfigError, match="grace"):
            await rt.aclose(grace=grace)  # type: ignore[arg-type]
        assert rt._group is not None  # still open
