"""Cancellation: recorded first, delivered once, cleanup recorded normally, ends CANCELLED."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from run_helpers import CANCELLED_MID_STEP, kinds, start, wait_until

import aruntime
from aruntime import (
    EventStore,
    MemoryStore,
    NonRetryableError,
    RetryPolicy,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunParkedError,
    RunStatus,
    Runtime,
    StepStatus,
    StoreError,
    current_step,
    step,
    workflow,
)
from aruntime.events import (
    CancelRequested,
    Event,
    OperationCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    StepFailed,
)
from aruntime.testing import FakeClock, FaultyStore, crash_run

T0 = 1_000_000.0

entered: list[str] = []
"""The key of every body that began, in order."""
interrupted: list[str] = []
"""The key of every body that got CancelledError."""
handlers: list[str] = []
"""The workflow's cleanup blocks that ran, in order."""
held: set[str] = set()
gates: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test empty records and no held bodies."""
    entered.clear()
    interrupted.clear()
    handlers.clear()
    held.clear()
    gates.clear()


def gate(key: str) -> asyncio.Event:
    return gates.setdefault(key, asyncio.Event())


def runtime(store: EventStore | None = None, clock: FakeClock | None = None) -> Runtime:
    return Runtime(store, clock=clock or FakeClock(T0, autojump=True))


def count(events: Sequence[Event], kind: type[Event]) -> int:
    return sum(1 for e in events if isinstance(e, kind))


async def cancel_when(
    rt: Runtime,
    wf: aruntime.Workflow[[], Any],
    ready: Callable[[], bool],
    reason: str | None = None,
) -> RunCancelledError:
    """Start `wf` as run "c", cancel it once `ready()` holds, and return the
    RunCancelledError its result raises."""
    handle = await start(rt, wf, run_id="c")
    await wait_until(ready)
    await rt.cancel("c", reason=reason)
    with pytest.raises(RunCancelledError) as info:
        await handle.result()
    return info.value


# -- steps and workflows ------------------------------------------------------------------


@step
async def work(key: str) -> str:
    entered.append(key)
    try:
        if key in held:
            await gate(key).wait()
    except asyncio.CancelledError:
        interrupted.append(key)
        raise
    return key


@step(retry=RetryPolicy(max_attempts=3, initial_delay=100.0, jitter=0.0))
async def fails_first() -> str:
    entered.append(f"attempt {current_step().attempt}")
    if current_step().attempt == 1:
        raise ConnectionError("try later")
    return "ok"


@step
async def refuse() -> str:
    raise NonRetryableError("no")


@workflow
async def compensated() -> str:
    """Reserve; on cancellation release, and audit in any case."""
    try:
        return await work("reserve")
    except asyncio.CancelledError:
        handlers.append("except")
        await work("release")
        raise
    finally:
        handlers.append("finally")
        await work("audit")


@workflow
async def refusing() -> str:
    return await refuse()


@workflow
async def plain() -> str:
    return await work("reserve")


@workflow
async def swallows() -> str:
    try:
        await work("reserve")
    except asyncio.CancelledError:
        return await work("instead")
    return "not cancelled"


@workflow
async def sleeper() -> str:
    try:
        await aruntime.sleep(3600)
    except asyncio.CancelledError:
        await work("woken")
        raise
    return "slept"


@workflow
async def backing_off() -> str:
    return await fails_first()


@workflow
async def raw_gather() -> list[str]:
    return list(await asyncio.gather(work("a"), work("b")))


@workflow
async def branches() -> list[str]:
    try:
        return await aruntime.gather(work("a"), work("b"), work("c"))
    except asyncio.CancelledError:
        await work("cleanup")
        raise


@workflow
async def returns_while_a_branch_cleans_up() -> str:
    """Returns after a gather failed, while the other branch is still in flight."""
    try:
        await aruntime.gather(slow_to_stop("left"), refuse())
    except aruntime.StepFailedError:
        return "returned"
    return "unreachable"


@step
async def slow_to_stop(key: str) -> str:
    entered.append(key)
    try:
        await gate(key).wait()
    except asyncio.CancelledError:
        interrupted.append(key)
        await gate(f"{key} stopped").wait()  # a body whose cleanup takes a while
        raise
    return key


class SlowFinish(MemoryStore):
    """A memory store whose append of RunCompleted waits until `finish` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.finishing = asyncio.Event()
        self.finish = asyncio.Event()

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        if any(isinstance(e, RunCompleted) for e in events):
            self.finishing.set()
            await self.finish.wait()
        await super().append(run_id, events, expected_sequence)


# -- a step in flight ---------------------------------------------------------------------


async def test_cancel_delivers_cancelled_error_to_the_step_body_in_flight() -> None:
    """The body running when the run is cancelled gets CancelledError."""
    held.add("reserve")
    async with runtime() as rt:
        await cancel_when(rt, plain, lambda: entered == ["reserve"], "customer left")
    assert interrupted == ["reserve"]


async def test_cancel_records_the_request_then_the_cancelled_operation() -> None:
    """The log holds CancelRequested, then OperationCancelled for the step, then RunCancelled."""
    held.add("reserve")
    async with runtime() as rt:
        await cancel_when(rt, plain, lambda: entered == ["reserve"], "customer left")
        events = await rt.store.events_for("c")
        state = await rt.state("c")
    assert kinds(events) == CANCELLED_MID_STEP
    assert state.steps["1"].status is StepStatus.CANCELLED
    assert (state.status, state.cancel_reason) == (RunStatus.CANCELLED, "customer left")


async def test_cancelled_run_result_raises_run_cancelled_error_with_the_reason(
    store: EventStore,
) -> None:
    """handle.result() of a cancelled run raises RunCancelledError naming the reason."""
    held.add("reserve")
    async with runtime(store) as rt:
        handle = await start(rt, plain, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await handle.cancel("customer left")
        with pytest.raises(RunCancelledError) as info:
            await handle.result()
    assert (info.value.run_id, info.value.reason) == ("c", "customer left")
    async with runtime(store) as later:
        with pytest.raises(RunCancelledError, match="customer left"):
            await later.handle("c").result()


async def test_cleanup_blocks_run_and_their_steps_are_recorded_normally() -> None:
    """except CancelledError and finally run once each; the steps they call complete."""
    held.add("reserve")
    async with runtime() as rt:
        await cancel_when(rt, compensated, lambda: entered == ["reserve"])
        state = await rt.state("c")
    assert handlers == ["except", "finally"]
    assert entered == ["reserve", "release", "audit"]
    assert {i: s.status for i, s in state.steps.items()} == {
        "1": StepStatus.CANCELLED,
        "2": StepStatus.COMPLETED,
        "3": StepStatus.COMPLETED,
    }
    assert state.status is RunStatus.CANCELLED


async def test_cancel_without_reason_records_cancelled() -> None:
    """A cancellation without a reason is recorded with the reason "cancelled"."""
    held.add("reserve")
    async with runtime() as rt:
        error = await cancel_when(rt, plain, lambda: entered == ["reserve"])
    assert error.reason == "cancelled"


async def test_workflow_that_swallows_the_cancellation_completes() -> None:
    """A workflow catching CancelledError and returning ends COMPLETED with its value."""
    held.add("reserve")
    async with runtime() as rt:
        handle = await start(rt, swallows, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await rt.cancel("c")
        assert await handle.result() == "instead"
        state = await rt.state("c")
    assert state.status is RunStatus.COMPLETED
    assert state.cancel_reason == "cancelled"


# -- other places a run waits -------------------------------------------------------------


async def test_cancel_of_a_sleeping_run_cuts_the_sleep_short() -> None:
    """A run in a durable sleep is cancelled at once; its sleep is recorded cancelled."""
    clock = FakeClock(T0)
    async with runtime(clock=clock) as rt:
        await cancel_when(rt, sleeper, lambda: clock.sleeping == 1)
        state = await rt.state("c")
        events = await rt.store.events_for("c")
    assert state.sleeps["1"].cancelled
    assert entered == ["woken"]
    assert count(events, OperationCancelled) == 1


async def test_cancel_of_a_run_waiting_for_a_retry_ends_the_step_without_retrying() -> None:
    """A run in a retry's backoff is cancelled without another attempt."""
    clock = FakeClock(T0)
    async with runtime(clock=clock) as rt:
        await cancel_when(rt, backing_off, lambda: clock.sleeping == 1)
        state = await rt.state("c")
    assert entered == ["attempt 1"]
    assert state.steps["1"].status is StepStatus.CANCELLED
    assert state.steps["1"].retry_at is None


async def test_cancel_of_a_parked_run_ends_it_cancelled_and_unparked() -> None:
    """A parked run is cancelled at once: CANCELLED, no longer parked."""
    async with runtime() as rt:
        handle = await start(rt, raw_gather, run_id="c")
        with pytest.raises(RunParkedError):
            await handle.result()
        assert await rt.cancel("c", reason="give up") is RunStatus.CANCELLED
        info = await rt.store.get_run("c")
        events = await rt.store.events_for("c")
        with pytest.raises(RunCancelledError, match="give up"):
            await handle.result()
    assert info is not None
    assert (info.status, info.parked) == (RunStatus.CANCELLED, False)
    assert kinds(events) == ["RunStarted", "CancelRequested", "RunCancelled"]


@pytest.mark.parametrize(
    ("wf", "status"),
    [(plain, RunStatus.COMPLETED), (refusing, RunStatus.FAILED)],
    ids=["completed", "failed"],
)
async def test_cancel_of_an_ended_run_returns_its_status_and_changes_nothing(
    wf: aruntime.Workflow[[], str], status: RunStatus
) -> None:
    """Cancelling a completed or failed run returns its status and appends nothing."""
    async with runtime() as rt:
        handle = await start(rt, wf, run_id="c")
        with contextlib.suppress(RunFailedError):
            await handle.result()
        before = await rt.store.events_for("c")
        assert await rt.cancel("c") is status
        assert await rt.store.events_for("c") == before


async def test_cancel_of_an_unknown_run_raises_run_not_found() -> None:
    """Cancelling a run id the store does not hold raises RunNotFoundError."""
    async with runtime() as rt:
        with pytest.raises(RunNotFoundError):
            await rt.cancel("nobody")


async def test_second_cancel_changes_nothing() -> None:
    """A run cancelled twice records one CancelRequested, with the first reason."""
    held.update({"reserve", "release"})
    async with runtime() as rt:
        handle = await start(rt, compensated, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await rt.cancel("c", reason="first")
        await wait_until(lambda: entered == ["reserve", "release"])
        await rt.cancel("c", reason="second")
        gate("release").set()
        with pytest.raises(RunCancelledError) as info:
            await handle.result()
        events = await rt.store.events_for("c")
        assert await rt.cancel("c", reason="third") is RunStatus.CANCELLED
        assert await rt.store.events_for("c") == events
    assert info.value.reason == "first"
    assert count(events, CancelRequested) == 1
    assert handlers == ["except", "finally"]


async def test_cancel_reaches_every_branch_in_flight() -> None:
    """Cancelling a run with three branches in flight cancels each of them."""
    held.update({"a", "b", "c"})
    async with runtime() as rt:
        await cancel_when(rt, branches, lambda: len(entered) == 3)
        state = await rt.state("c")
        events = await rt.store.events_for("c")
    assert sorted(interrupted) == ["a", "b", "c"]
    assert {i: s.status for i, s in state.steps.items()} == {
        "1.1": StepStatus.CANCELLED,
        "2.1": StepStatus.CANCELLED,
        "3.1": StepStatus.CANCELLED,
        "1": StepStatus.COMPLETED,
    }
    assert count(events, OperationCancelled) == 3


# -- races with completion ----------------------------------------------------------------


async def test_cancel_recorded_after_the_workflow_returned_but_before_it_ended_wins() -> None:
    """A cancel durable while the returned workflow's branches stop ends the run CANCELLED."""
    async with runtime() as rt:
        handle = await start(rt, returns_while_a_branch_cleans_up, run_id="c")
        await wait_until(lambda: interrupted == ["left"])
        await rt.cancel("c", reason="late")
        gate("left stopped").set()
        with pytest.raises(RunCancelledError, match="late"):
            await handle.result()
        events = await rt.store.events_for("c")
    assert kinds(events)[-2:] == ["CancelRequested", "RunCancelled"]


async def test_cancel_while_run_completed_is_being_appended_leaves_it_completed() -> None:
    """A cancel that arrives while RunCompleted is being committed changes nothing."""
    store = SlowFinish()
    async with runtime(store) as rt:
        handle = await start(rt, plain, run_id="c")
        await store.finishing.wait()
        cancelling = asyncio.ensure_future(rt.cancel("c"))
        await asyncio.sleep(0)
        store.finish.set()
        assert await cancelling is RunStatus.COMPLETED
        assert await handle.result() == "reserve"
        events = await store.events_for("c")
    assert count(events, CancelRequested) == 0


# -- crashes and restarts -----------------------------------------------------------------


async def test_crash_during_cleanup_finishes_the_cancellation_and_replays_cleanup_steps() -> None:
    """After a crash in the finally block, the run ends CANCELLED; "release" is not rerun."""
    held.update({"reserve", "audit"})
    async with runtime() as rt:
        handle = await start(rt, compensated, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await rt.cancel("c", reason="stop")
        await wait_until(lambda: entered == ["reserve", "release", "audit"])
        before, after = await crash_run(rt, "c")
        assert before == after
        await wait_until(lambda: entered.count("audit") == 2)
        gate("audit").set()
        with pytest.raises(RunCancelledError, match="stop"):
            await handle.result()
        events = await rt.store.events_for("c")
    assert entered == ["reserve", "release", "audit", "audit"]
    assert count(events, CancelRequested) == count(events, OperationCancelled) == 1


async def test_crash_as_the_cancellation_is_delivered_reruns_no_finished_step() -> None:
    """A run crashed while its cancellation is delivered ends CANCELLED after recovery; the
    cancelled step and the cleanup step that completed are not run again."""
    held.add("reserve")
    async with runtime() as rt:
        handle = await start(rt, compensated, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await rt.cancel("c", reason="stop")
        await crash_run(rt, "c")
        with pytest.raises(RunCancelledError, match="stop"):
            await handle.result()
        state = await rt.state("c")
        events = await rt.store.events_for("c")
    assert entered.count("reserve") == entered.count("release") == 1
    assert state.steps["1"].status is StepStatus.CANCELLED
    assert count(events, CancelRequested) == count(events, OperationCancelled) == 1


def fail_cancel_requested(run_id: str, events: Sequence[Event]) -> bool:
    return any(isinstance(e, CancelRequested) for e in events)


async def test_cancel_whose_append_fails_raises_store_error() -> None:
    """A store failure while recording the cancellation reaches the caller as StoreError."""
    held.add("reserve")
    store = FaultyStore(MemoryStore(), fail_append=fail_cancel_requested)
    async with runtime(store) as rt:
        await start(rt, plain, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        try:
            await rt.cancel("c")
        except StoreError:
            pass
        except BaseException as exc:  # the defect under test: report what escaped
            pytest.fail(f"cancel raised {type(exc).__module__}.{type(exc).__name__}")
        finally:
            gate("reserve").set()  # else closing waits for the body (see below)


async def test_closing_the_runtime_after_a_failed_cancel_ends_the_run_task() -> None:
    """A runtime closes promptly, running no body again, after a cancel the store refused."""
    held.add("reserve")
    store = FaultyStore(MemoryStore(), fail_append=fail_cancel_requested)
    rt = await runtime(store).open()
    try:
        await start(rt, plain, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        with contextlib.suppress(StoreError, BaseException):  # see the test above
            await rt.cancel("c")
        async with asyncio.timeout(0.5):
            await rt.aclose()
    finally:
        gate("reserve").set()
        await rt.aclose()
    assert entered == ["reserve"]


async def test_cancel_committed_despite_a_store_error_is_delivered_after_recovery() -> None:
    """A CancelRequested that committed though the store raised ends the run CANCELLED,
    without waiting for the body in flight."""
    held.add("reserve")
    store = FaultyStore(MemoryStore(), fail_append=fail_cancel_requested, ambiguous=True)
    async with runtime(store) as rt:
        handle = await start(rt, compensated, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        with contextlib.suppress(StoreError, BaseException):  # see the test above
            await rt.cancel("c", reason="stop")
        try:
            async with asyncio.timeout(0.5):
                with pytest.raises(RunCancelledError, match="stop"):
                    await handle.result()
        finally:
            gate("reserve").set()
    assert interrupted == ["reserve"]
    assert entered.count("release") == 1


async def test_new_runtime_finishes_a_cancellation_the_closed_one_left_in_cleanup(
    store: EventStore,
) -> None:
    """A run closed mid-cleanup ends CANCELLED in the next runtime; done cleanup is replayed."""
    held.update({"reserve", "audit"})
    async with runtime(store) as first:
        await start(first, compensated, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
        await first.cancel("c", reason="stop")
        await wait_until(lambda: entered == ["reserve", "release", "audit"])
    held.clear()
    async with runtime(store) as second:
        with pytest.raises(RunCancelledError, match="stop"):
            await second.handle("c").result()
    assert entered == ["reserve", "release", "audit", "audit"]


async def test_cancel_of_a_run_no_runtime_runs_ends_it_at_once(store: EventStore) -> None:
    """A run left unfinished by a closed runtime is cancelled at once by another that does
    not resume it."""
    held.add("reserve")
    async with runtime(store) as first:
        await start(first, plain, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
    config = aruntime.RuntimeConfig(resume_on_start=False)
    async with Runtime(store, clock=FakeClock(T0, autojump=True), config=config) as second:
        assert await second.cancel("c") is RunStatus.CANCELLED
        with pytest.raises(RunCancelledError):
            await second.handle("c").result()
    assert kinds(await store.events_for("c"))[-2:] == ["CancelRequested", "RunCancelled"]


# -- shutdown is not cancellation ---------------------------------------------------------


async def test_closing_the_runtime_records_no_cancellation() -> None:
    """A runtime closed with a step in flight records neither CancelRequested nor RunCancelled."""
    store = MemoryStore()
    held.add("reserve")
    async with runtime(store) as rt:
        await start(rt, plain, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
    assert kinds(await store.events_for("c")) == ["RunStarted", "StepStarted"]


async def test_closing_the_runtime_runs_and_records_no_cleanup_step() -> None:
    """Shutting down mid-step runs no compensation step and leaves a log that resumes."""
    store = MemoryStore()
    held.add("reserve")
    async with runtime(store) as rt:
        await start(rt, compensated, run_id="c")
        await wait_until(lambda: entered == ["reserve"])
    assert kinds(await store.events_for("c")) == ["RunStarted", "StepStarted"]
    assert entered == ["reserve"]
    gate("reserve").set()
    async with runtime(store) as again:
        assert await again.handle("c").result() == "reserve"


# -- cancellations and BaseExceptions nobody asked for --------------------------------------


class Meltdown(BaseException):
    """A BaseException from a step body that is neither an error of the step nor a request."""


@step(retry=RetryPolicy(max_attempts=2))
async def melts_down() -> str:
    entered.append(f"attempt {current_step().attempt}")
    raise Meltdown("reactor core")


@step(retry=RetryPolicy(max_attempts=2))
async def stray_cancellation() -> str:
    entered.append(f"attempt {current_step().attempt}")
    # A future someone else cancelled raises CancelledError here, though nobody cancelled
    # the run.
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future
    return "unreachable"


@workflow
async def meltdown() -> str:
    return await melts_down()


@workflow
async def stray() -> str:
    return await stray_cancellation()


SMALL_BUDGET = aruntime.RuntimeConfig(restart_budget=aruntime.RestartBudget(max_restarts=3))
"""More respawns than the steps above have attempts, so the attempts run out first."""


@pytest.mark.parametrize(
    ("wf", "cause"),
    [
        (meltdown, "Meltdown: reactor core"),
        (stray, "CancelledError raised inside the run, although nothing cancelled it"),
    ],
    ids=["base-exception", "stray-cancelled-error"],
)
async def test_base_exception_from_a_body_parks_the_run_with_its_cause_never_fails_it(
    wf: aruntime.Workflow[[], str], cause: str
) -> None:
    """A body that keeps raising a BaseException respawns the run until it is parked with
    the exception's type and message; its attempts are never recorded as interrupted."""
    clock = FakeClock(T0, autojump=True)
    async with Runtime(clock=clock, config=SMALL_BUDGET) as rt:
        handle = await start(rt, wf, run_id="m")
        with pytest.raises(RunParkedError) as info:
            await handle.result()
        state = await rt.state("m")
        events = await rt.store.events_for("m")
    assert cause in info.value.reason
    assert state.status is RunStatus.RUNNING
    assert entered == ["attempt 1", "attempt 2"]
    assert kinds(events) == ["RunStarted", "StepStarted", "StepStarted"]


async def test_resumed_run_parked_for_a_base_exception_is_not_failed_as_interrupted() -> None:
    """Resuming a run parked for a body's BaseException never fails it as interrupted."""
    async with Runtime(clock=FakeClock(T0, autojump=True), config=SMALL_BUDGET) as rt:
        handle = await start(rt, meltdown, run_id="m")
        with pytest.raises(RunParkedError):
            await handle.result()
        await rt.resume("m")
        with contextlib.suppress(RunParkedError, RunFailedError):
            await handle.result()
        events = await rt.store.events_for("m")
    recorded = [e.error_type for e in events if isinstance(e, StepFailed | RunFailed)]
    assert "aruntime.AttemptInterrupted" not in recorded


@step(retry=RetryPolicy(max_attempts=2))
async def melts_down_until_fixed() -> str:
    entered.append(f"attempt {current_step().attempt}")
    if "fixed" not in held:
        raise Meltdown("reactor core")
    return "cool"


@workflow
async def meltdown_until_fixed() -> str:
    return await melts_down_until_fixed()


async def test_resume_in_a_new_runtime_gives_the_step_its_attempts_again() -> None:
    """A run parked for a body's BaseException, resumed by a later runtime once the body
    is fixed, runs the step again and completes: its log says the lost attempts were set
    aside (RunResumed), so no runtime mistakes them for crashes."""
    store = MemoryStore()
    async with Runtime(store, clock=FakeClock(T0, autojump=True), config=SMALL_BUDGET) as rt:
        with pytest.raises(RunParkedError):
            await (await start(rt, meltdown_until_fixed, run_id="m")).result()
    held.add("fixed")
    async with Runtime(store, clock=FakeClock(T0, autojump=True)) as again:
        await again.resume("m")
        assert await again.handle("m").result() == "cool"
    events = await store.events_for("m")
    assert entered == ["attempt 1", "attempt 2", "attempt 3"]
    assert kinds(events) == [
        "RunStarted",
        "StepStarted",
        "StepStarted",
        "RunResumed",
        "StepStarted",
        "StepCompleted",
        "RunCompleted",
    ]
    resumed = events[3]
    assert isinstance(resumed, RunResumed)
    assert "Meltdown: reactor core" in resumed.reason
