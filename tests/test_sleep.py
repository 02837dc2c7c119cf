"""Durable sleep: the wake-up is recorded before the run waits, and survives restarts."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from run_helpers import kinds, settled, start, wait_until

import aruntime
from aruntime import (
    ConfigError,
    EventStore,
    MemoryStore,
    NonDeterminismError,
    RunFailedError,
    RunParkedError,
    RunStatus,
    Runtime,
    step,
    workflow,
)
from aruntime.events import Event, SleepStarted
from aruntime.testing import FakeClock, crash_run

T0 = 1_000_000.0
"""Where every test's fake clock starts."""

entered: list[str] = []
gate = asyncio.Event()
sleep_first = True
"""Whether `sleep_or_step` sleeps (True) or calls a step (False) first: changing it
between two runtimes makes the workflow non-deterministic."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty record, a closed gate and the original workflow shape."""
    global gate, sleep_first  # noqa: PLW0603 - per-test state of module-level workflows
    entered.clear()
    gate = asyncio.Event()
    sleep_first = True


def runtime(store: EventStore | None, clock: FakeClock) -> Runtime:
    return Runtime(store, clock=clock)


def sleeps_of(events: list[Event]) -> list[SleepStarted]:
    return [e for e in events if isinstance(e, SleepStarted)]


# -- steps and workflows ------------------------------------------------------------------


@step
async def note(text: str) -> str:
    entered.append(text)
    return text


@step
async def held(text: str) -> str:
    entered.append(text)
    await gate.wait()
    return text


@workflow
async def nap(seconds: float) -> str:
    await aruntime.sleep(seconds)
    return "awake"


@workflow
async def note_nap_note(seconds: float) -> list[str]:
    before = await note("before")
    await aruntime.sleep(seconds)
    return [before, await note("after")]


@workflow
async def nap_then_held(seconds: float) -> str:
    await aruntime.sleep(seconds)
    return await held("after")


@workflow
async def nap_until_datetime(epoch: float) -> str:
    await aruntime.sleep_until(datetime.fromtimestamp(epoch, tz=UTC))
    return "awake"


@workflow
async def nap_until_naive_datetime(epoch: float) -> str:
    await aruntime.sleep_until(datetime.fromtimestamp(epoch))  # local time
    return "awake"


@workflow
async def nap_until_epoch(epoch: float) -> str:
    await aruntime.sleep_until(epoch)
    return "awake"


async def nap_in_branch(seconds: float) -> float:
    await aruntime.sleep(seconds)
    return seconds


@workflow
async def naps_in_branches() -> list[float]:
    return await aruntime.gather(nap_in_branch(10), nap_in_branch(20))


@workflow
async def negative_nap() -> str:
    await aruntime.sleep(-1)
    return "awake"


@workflow
async def sleep_or_step() -> str:
    if sleep_first:
        await aruntime.sleep(5)
    else:
        await held("step")
    return "done"


# -- recording and waiting ----------------------------------------------------------------


async def test_sleep_records_its_wake_up_before_the_run_waits(store: EventStore) -> None:
    """SleepStarted with wake_at = now + s is durable while the run waits."""
    clock = FakeClock(T0)
    async with runtime(store, clock) as rt:
        handle = await start(rt, nap, 30, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
        events = await store.events_for("s")
        assert kinds(events) == ["RunStarted", "SleepStarted"]
        (sleep,) = sleeps_of(events)
        assert (sleep.wake_at, sleep.position, sleep.branch) == (T0 + 30, 1, "")
        clock.advance(30)
        assert await handle.result() == "awake"


async def test_sleep_waits_exactly_its_duration() -> None:
    """The run is still asleep 29.5 s in and wakes at 30 s."""
    clock = FakeClock(T0)
    async with runtime(None, clock) as rt:
        handle = await start(rt, nap, 30, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
        clock.advance(29.5)
        await settled()
        assert (await rt.state("s")).status is RunStatus.RUNNING
        assert clock.sleeping == 1
        clock.advance(0.5)
        assert await handle.result() == "awake"
    assert clock.sleeps == [30.0]


async def test_sleep_of_zero_records_and_goes_on_at_once() -> None:
    """aruntime.sleep(0) is recorded and the run goes on without waiting for the clock."""
    clock = FakeClock(T0)
    async with runtime(None, clock) as rt:
        assert await (await start(rt, nap, 0, run_id="s")).result() == "awake"
        events = await rt.store.events_for("s")
    assert [e.wake_at for e in sleeps_of(events)] == [T0]


async def test_sleep_after_a_restart_waits_only_what_is_left(store: EventStore) -> None:
    """A runtime that opens 10 s into a 30 s sleep waits the remaining 20 s."""
    clock = FakeClock(T0)
    async with runtime(store, clock) as first:
        await start(first, nap, 30, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
        clock.advance(10)
    async with runtime(store, clock) as second:
        await wait_until(lambda: clock.sleeping == 1)
        assert clock.sleeps[-1] == 20.0
        clock.advance(20)
        assert await second.handle("s").result() == "awake"
    assert len(sleeps_of(await store.events_for("s"))) == 1


async def test_sleep_after_a_crash_waits_only_what_is_left() -> None:
    """A run crashed 12 s into a 30 s sleep replays it and waits the remaining 18 s."""
    clock = FakeClock(T0)
    async with runtime(None, clock) as rt:
        handle = await start(rt, nap, 30, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
        clock.advance(12)
        await crash_run(rt, "s")
        await wait_until(lambda: clock.sleeping == 1)
        assert clock.sleeps[-1] == 18.0
        clock.advance(18)
        assert await handle.result() == "awake"
        assert len(sleeps_of(await rt.store.events_for("s"))) == 1


async def test_sleep_that_ended_while_no_runtime_ran_is_not_slept_again(
    store: EventStore,
) -> None:
    """A run resumed after its wake-up time goes straight on; the step before is replayed."""
    clock = FakeClock(T0)
    async with runtime(store, clock) as first:
        await start(first, note_nap_note, 60, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
    clock.advance(100)
    sleeps_before = len(clock.sleeps)
    async with runtime(store, clock) as second:
        assert await second.handle("s").result() == ["before", "after"]
    assert clock.sleeps[sleeps_before:] == []
    assert entered == ["before", "after"]


async def test_sleep_that_ended_is_replayed_without_waiting() -> None:
    """A sleep already over when the run replays it (the step after it in flight) is passed."""
    clock = FakeClock(T0)
    store = MemoryStore()
    async with runtime(store, clock) as first:
        await start(first, nap_then_held, 30, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
        clock.advance(30)
        await wait_until(lambda: entered == ["after"])
    sleeps_before = len(clock.sleeps)
    gate.set()
    async with runtime(store, clock) as second:
        assert await second.handle("s").result() == "after"
    assert clock.sleeps[sleeps_before:] == []
    assert entered == ["after", "after"]


# -- sleep_until ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wf",
    [nap_until_datetime, nap_until_naive_datetime, nap_until_epoch],
    ids=["aware-datetime", "naive-datetime", "epoch"],
)
async def test_sleep_until_records_the_given_wake_up(wf: aruntime.Workflow[..., str]) -> None:
    """sleep_until(datetime) and sleep_until(epoch seconds) wait until that instant."""
    clock = FakeClock(T0)
    async with runtime(None, clock) as rt:
        handle = await start(rt, wf, T0 + 45, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
        assert [e.wake_at for e in sleeps_of(await rt.store.events_for("s"))] == [T0 + 45]
        clock.advance(45)
        assert await handle.result() == "awake"
    assert clock.sleeps == [45.0]


async def test_sleep_until_a_past_instant_goes_on_at_once() -> None:
    """A wake-up time already passed is recorded and not waited for."""
    clock = FakeClock(T0)
    async with runtime(None, clock) as rt:
        assert await (await start(rt, nap_until_epoch, T0 - 60, run_id="s")).result() == "awake"
    assert clock.sleeping == 0


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf, "1", None, True])
async def test_sleep_refuses_what_is_not_a_finite_number_of_seconds(seconds: Any) -> None:
    """sleep() of a negative, NaN, infinite or non-number duration is a ConfigError."""
    with pytest.raises(ConfigError):
        await aruntime.sleep(seconds)


@pytest.mark.parametrize("when", [math.nan, math.inf, "2030-01-01", None, True])
async def test_sleep_until_refuses_what_is_not_an_instant(when: Any) -> None:
    """sleep_until() of NaN, infinity, a string or None is a ConfigError."""
    with pytest.raises(ConfigError):
        await aruntime.sleep_until(when)


async def test_bad_sleep_in_a_workflow_fails_the_run_and_records_no_sleep() -> None:
    """A workflow asking for a negative sleep gets ConfigError; nothing is recorded for it."""
    async with runtime(None, FakeClock(T0)) as rt:
        handle = await start(rt, negative_nap, run_id="s")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        events = await rt.store.events_for("s")
    assert info.value.error_type == "aruntime.ConfigError"
    assert kinds(events) == ["RunStarted", "RunFailed"]


async def test_sleep_outside_a_workflow_is_asyncio_sleep() -> None:
    """Outside a run, sleep and sleep_until just wait, recording nothing."""
    await aruntime.sleep(0.001)
    await aruntime.sleep_until(datetime.now(tz=UTC))


# -- identities ---------------------------------------------------------------------------


async def test_sleeps_in_branches_get_branch_identities() -> None:
    """Sleeps in two gathered branches are "1.1" and "2.1", each with its own wake-up."""
    clock = FakeClock(T0)
    async with runtime(None, clock) as rt:
        handle = await start(rt, naps_in_branches, run_id="s")
        await wait_until(lambda: clock.sleeping == 2)
        clock.advance(10)
        await settled()
        assert clock.sleeping == 1
        clock.advance(10)
        assert await handle.result() == [10, 20]
        state = await rt.state("s")
    assert {i: s.wake_at for i, s in state.sleeps.items()} == {"1.1": T0 + 10, "2.1": T0 + 20}
    assert (state.sleeps["2.1"].branch, state.sleeps["2.1"].position) == ("2", 1)


async def test_sleep_where_the_log_recorded_a_step_is_non_deterministic() -> None:
    """A sleep asked for at identity 1, where a step was recorded, parks the run."""
    global sleep_first  # noqa: PLW0603 - the change between two deployments under test
    store = MemoryStore()
    sleep_first = False
    async with runtime(store, FakeClock(T0)) as first:
        await start(first, sleep_or_step, run_id="s")
        await wait_until(lambda: entered == ["step"])
    log = await store.events_for("s")
    sleep_first = True
    async with runtime(store, FakeClock(T0)) as second:
        with pytest.raises(RunParkedError) as info:
            await second.handle("s").result()
    assert info.value.reason.startswith(NonDeterminismError.__name__)
    assert "at operation 1 the log recorded step 'held' but the workflow asked for a sleep" in (
        info.value.reason
    )
    assert await store.events_for("s") == log


async def test_step_where_the_log_recorded_a_sleep_is_non_deterministic() -> None:
    """A step asked for at identity 1, where a sleep was recorded, parks the run."""
    global sleep_first  # noqa: PLW0603 - the change between two deployments under test
    store = MemoryStore()
    clock = FakeClock(T0)
    async with runtime(store, clock) as first:
        await start(first, sleep_or_step, run_id="s")
        await wait_until(lambda: clock.sleeping == 1)
    log = await store.events_for("s")
    sleep_first = False
    async with runtime(store, clock) as second:
        with pytest.raises(RunParkedError) as info:
            await second.handle("s").result()
    assert "at operation 1 the log recorded a sleep but the workflow asked for step 'held'" in (
        info.value.reason
    )
    assert await store.events_for("s") == log
    assert entered == []
