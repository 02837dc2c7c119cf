"""Edges of cancellation, deadlines, resume, TaskGroup branches and supervision: a cancel
from the run's own body or racing a step's outcome or the supervisor's replay, a deadline
whose cancel the store refuses once, the retry budget after a resume, a parked run
cancelled twice, a body that cancels its own task."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from run_helpers import start, wait_until

import aruntime
from aruntime import (
    MemoryStore,
    RunCancelledError,
    RunParkedError,
    RunStatus,
    Runtime,
    current_step,
    step,
    workflow,
)
from aruntime.events import CancelRequested, Event
from aruntime.testing import FakeClock, FaultyStore

T0 = 1_000_000.0

entered: list[str] = []
gates: dict[str, asyncio.Event] = {}
rts: dict[str, Runtime] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    entered.clear()
    gates.clear()
    rts.clear()


def gate(key: str) -> asyncio.Event:
    return gates.setdefault(key, asyncio.Event())


@step
async def rv_value(key: str) -> str:
    entered.append(key)
    return key


@step
async def rv_held(key: str) -> str:
    entered.append(key)
    await gate(key).wait()
    return key


# -- 1. an unidentifiable operation inside an aruntime.TaskGroup branch -----------------


@workflow
async def rv_raw_gather_in_group() -> str:
    async def branch() -> list[str]:
        return list(await asyncio.gather(rv_value("x"), rv_value("y")))

    async with aruntime.TaskGroup() as tg:
        tg.create_task(branch())
    return "unreachable"


async def test_untracked_task_in_a_task_group_branch_parks_at_once() -> None:
    """UntrackedTaskError parks at once, as it does outside a TaskGroup, naming itself."""
    async with Runtime(clock=FakeClock(T0, autojump=True)) as rt:
        handle = await start(rt, rv_raw_gather_in_group, run_id="g")
        with pytest.raises(RunParkedError) as info:
            await handle.result()
        respawned = rt.stats.respawned
    assert respawned == 0
    assert info.value.reason.startswith("UntrackedTaskError")


# -- 2. a step body that cancels its own run --------------------------------------------


@step
async def rv_cancels_own_run() -> str:
    entered.append("body")
    await rts["rt"].cancel(current_step().run_id, reason="abort from inside")
    await asyncio.sleep(0)
    entered.append("after cancel")
    return "done"


@workflow
async def rv_self_cancelling() -> str:
    value = await rv_cancels_own_run()
    await rv_value("next")
    return value


async def test_a_run_cancelled_from_its_own_step_body_ends_cancelled() -> None:
    """The request is durable first, so the run must end CANCELLED, not COMPLETED."""
    async with Runtime(clock=FakeClock(T0, autojump=True)) as rt:
        rts["rt"] = rt
        handle = await start(rt, rv_self_cancelling, run_id="s")
        with pytest.raises(RunCancelledError):
            await handle.result()
    assert "next" not in entered


# -- 3. a run deadline whose CancelRequested the store refuses once ---------------------


def _refuse_cancel(run_id: str, events: Sequence[Event]) -> bool:
    refused = any(isinstance(e, CancelRequested) for e in events) and not _refused
    if refused:
        _refused.append(True)
    return refused


_refused: list[bool] = []


async def test_deadline_survives_a_refused_cancel_request() -> None:
    """A transient store error at the deadline must not cancel the deadline itself."""
    _refused.clear()
    clock = FakeClock(T0)
    store = FaultyStore(MemoryStore(), fail_append=_refuse_cancel)
    async with Runtime(store, clock=clock) as rt:
        handle = await rt.start(rv_held_wf, run_id="d", timeout=10)
        await wait_until(lambda: entered == ["slow"])
        clock.advance(11)
        await wait_until(lambda: bool(_refused))
        for _ in range(50):
            clock.advance(1)
            await asyncio.sleep(0.001)
        try:
            async with asyncio.timeout(1):
                with pytest.raises(RunCancelledError, match="timeout"):
                    await handle.result()
        finally:
            gate("slow").set()


@workflow
async def rv_held_wf() -> str:
    return await rv_held("slow")


# -- 4. a step outcome folded while the CancelRequested append is in flight -------------


class SlowCancel(MemoryStore):
    """A memory store whose append of CancelRequested waits until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelling = asyncio.Event()
        self.go = asyncio.Event()

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        if any(isinstance(e, CancelRequested) for e in events):
            self.cancelling.set()
            await self.go.wait()
        await super().append(run_id, events, expected_sequence)


@workflow
async def rv_two_steps() -> str:
    first = await rv_held("first")
    return first + await rv_value("second")


async def test_cancel_racing_a_step_outcome_neither_raises_nor_kills_the_runner() -> None:
    """The body finishes while CancelRequested is being committed: cancel() returns,
    the run ends CANCELLED (the request was durable first) without a respawn."""
    store = SlowCancel()
    async with Runtime(store, clock=FakeClock(T0, autojump=True)) as rt:
        handle = await start(rt, rv_two_steps, run_id="r")
        await wait_until(lambda: entered == ["first"])
        cancelling = asyncio.ensure_future(rt.cancel("r", reason="late"))
        await store.cancelling.wait()
        gate("first").set()  # the body returns; its StepCompleted is folded meanwhile
        for _ in range(5):
            await asyncio.sleep(0)
        store.go.set()
        status = await cancelling  # raised CorruptLogError ("duplicate")
        with pytest.raises(RunCancelledError, match="late"):
            await handle.result()
        respawned = rt.stats.respawned
    assert status is RunStatus.RUNNING
    assert respawned == 0


# -- 5. attempts set aside by RunResumed still count in the retry policy ----------------


class Meltdown(BaseException):
    """A BaseException from a body: the run is respawned, then parked."""


fixed: list[bool] = []


@step(retry=aruntime.RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0))
async def rv_flaky_after_fix() -> str:
    attempt = current_step().attempt
    entered.append(f"attempt {attempt}")
    if not fixed:
        raise Meltdown("reactor core")
    if attempt == 3:
        raise ConnectionError("first try after the fix fails; the policy allows a retry")
    return "cool"


@workflow
async def rv_resumed_then_flaky() -> str:
    return await rv_flaky_after_fix()


async def test_resume_gives_the_step_its_whole_retry_budget_again() -> None:
    """After RunResumed, the two attempts the park cut short no longer count: the first
    failure after the fix is retried (max_attempts=2), not final."""
    fixed.clear()
    store = MemoryStore()
    budget = aruntime.RuntimeConfig(restart_budget=aruntime.RestartBudget(max_restarts=3))
    async with Runtime(store, clock=FakeClock(T0, autojump=True), config=budget) as rt:
        with pytest.raises(RunParkedError):
            await (await start(rt, rv_resumed_then_flaky, run_id="m")).result()
    fixed.append(True)
    async with Runtime(store, clock=FakeClock(T0, autojump=True)) as again:
        await again.resume("m")
        assert await again.handle("m").result() == "cool"  # raised RunFailedError
    assert entered == ["attempt 1", "attempt 2", "attempt 3", "attempt 4"]


# -- 6. a cancel recorded while the supervisor is replaying the run's log ---------------


@workflow
async def rv_sleeper() -> str:
    await aruntime.sleep(3600)
    return "slept"


async def test_cancel_during_start_up_replay_reaches_a_sleeping_run(tmp_path: Path) -> None:
    """A run resumed at start-up and cancelled at once is cancelled, not left to sleep
    out its hour because its runner was built from a log read before the request."""
    from aruntime.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "runs.db")
    await store.open()
    try:
        clock = FakeClock(T0)
        async with Runtime(store, clock=clock) as first:
            await start(first, rv_sleeper, run_id="c")
            await wait_until(lambda: clock.sleeping == 1)
        clock = FakeClock(T0 + 1)
        async with Runtime(store, clock=clock) as rt:
            assert await rt.cancel("c", reason="stop") is RunStatus.RUNNING
            async with asyncio.timeout(1):  # the fake clock never moves: no wake-up
                with pytest.raises(RunCancelledError, match="stop"):
                    await rt.handle("c").result()
    finally:
        await store.aclose()


# -- 7. a parked run whose log already holds CancelRequested can never be cancelled -----


@workflow
async def rv_cleanup_parks() -> str:
    try:
        return await rv_held("reserve")
    except asyncio.CancelledError:
        # cleanup that the runtime refuses (UntrackedTaskError): the run is parked
        await asyncio.gather(rv_value("x"), rv_value("y"))
        raise


async def test_cancel_of_a_parked_run_that_was_cancelled_before_ends_it() -> None:
    """ "Parked runs can be cancelled": a run parked during its cleanup ends CANCELLED when
    cancelled again, instead of staying parked with every later cancel a no-op."""
    async with Runtime(clock=FakeClock(T0, autojump=True)) as rt:
        handle = await start(rt, rv_cleanup_parks, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await rt.cancel("c", reason="first")
        with pytest.raises(RunParkedError):
            await handle.result()
        status = await rt.cancel("c", reason="give up")
        info = await rt.store.get_run("c")
    assert status is RunStatus.CANCELLED  # was RUNNING
    assert info is not None
    assert (info.status, info.parked) == (RunStatus.CANCELLED, False)


# -- 8. a CancelledError with the run task's cancel count raised is taken for shutdown ---


@step(retry=aruntime.RetryPolicy(max_attempts=2))
async def rv_cancels_its_task() -> str:
    entered.append(f"attempt {current_step().attempt}")
    task = asyncio.current_task()
    assert task is not None
    task.cancel()  # a bug in a body (or a library it calls): nothing cancelled the run
    await asyncio.sleep(0)
    return "unreachable"


@workflow
async def rv_stray_task_cancel() -> str:
    return await rv_cancels_its_task()


async def test_stray_task_cancel_is_respawned_or_parked_never_dropped() -> None:
    """The runtime is not closing, so the run task must not just end: the run would be
    RUNNING, unparked and supervised by nobody, and result() would wait forever."""
    budget = aruntime.RuntimeConfig(restart_budget=aruntime.RestartBudget(max_restarts=2))
    async with Runtime(clock=FakeClock(T0, autojump=True), config=budget) as rt:
        handle = await start(rt, rv_stray_task_cancel, run_id="s")
        async with asyncio.timeout(2):
            with pytest.raises(RunParkedError):
                await handle.result()
