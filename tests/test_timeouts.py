"""Step timeouts (a failed attempt, retried by policy) and run deadlines (a cancellation)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from run_helpers import CANCELLED_MID_STEP, failures, kinds, settled, wait_until

from aruntime import (
    ConfigError,
    EventStore,
    RetryPolicy,
    RunCancelledError,
    RunFailedError,
    RunStatus,
    Runtime,
    StepFailedError,
    StepTimeout,
    current_step,
    step,
    workflow,
)
from aruntime.events import RunStarted
from aruntime.testing import FakeClock

T0 = 1_000_000.0
"""Where every test's fake clock starts."""

STEP_TIMEOUT = 0.05
"""A step timeout in real seconds: attempt timeouts run on the event loop's clock."""

attempts: list[int] = []
cleaned_up: list[int] = []
gate = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test empty records and a closed gate."""
    global gate  # noqa: PLW0603 - the gate must belong to the test's own event loop
    attempts.clear()
    cleaned_up.clear()
    gate = asyncio.Event()


def fast_retries() -> Runtime:
    """A runtime on a fresh memory store whose retry backoffs pass at once."""
    return Runtime(clock=FakeClock(T0, autojump=True))


async def start_with_timeout(rt: Runtime, wf: Any, *, run_id: str, seconds: Any) -> Any:
    """`rt.start(wf, run_id=..., timeout=seconds)`, typed loosely (see run_helpers.start)."""
    return await rt.start(wf, run_id=run_id, timeout=seconds)


async def result_after_deadline_passed_while_down(store: EventStore) -> RunCancelledError:
    """Start a run with a 30 s deadline, close its runtime once the step is in, open
    another 40 s later and return the RunCancelledError the run's result raises there."""
    clock = FakeClock(T0)
    async with Runtime(store, clock=clock) as first:
        await start_with_timeout(first, waits_on_held, run_id="d", seconds=30)
        await wait_until(lambda: attempts == [1])
    clock.advance(40)
    async with Runtime(store, clock=clock) as second:
        with pytest.raises(RunCancelledError) as info:
            await second.handle("d").result()
    return info.value


# -- steps and workflows ------------------------------------------------------------------


@step(timeout=STEP_TIMEOUT, retry=RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0))
async def slow_first_time() -> str:
    attempt = current_step().attempt
    attempts.append(attempt)
    if attempt == 1:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.append(attempt)
    return "ok"


@step(timeout=STEP_TIMEOUT, retry=RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0))
async def always_slow() -> str:
    attempts.append(current_step().attempt)
    await asyncio.sleep(10)
    return "never"


@step(timeout=10.0)
async def fast() -> str:
    attempts.append(current_step().attempt)
    await asyncio.sleep(0)
    return "fast"


@step
async def held() -> str:
    attempts.append(current_step().attempt)
    await gate.wait()
    return "released"


@workflow
async def slow_once() -> str:
    return await slow_first_time()


@workflow
async def slow_always() -> str:
    return await always_slow()


@workflow
async def slow_always_caught() -> str:
    try:
        return await always_slow()
    except StepFailedError as exc:
        return exc.error_type


@workflow
async def quick() -> str:
    return await fast()


@workflow
async def waits_on_held() -> str:
    return await held()


# -- step timeouts -------------------------------------------------------------------------


async def test_attempt_past_its_timeout_is_recorded_failed_as_step_timeout() -> None:
    """The cut-off attempt is a StepFailed of type aruntime.StepTimeout with a retry due."""
    async with fast_retries() as rt:
        handle = await rt.start(slow_once, run_id="t")
        assert await handle.result() == "ok"
        events = await rt.store.events_for("t")
    (failed,) = failures(events)
    assert (failed.attempt, failed.error_type) == (1, "aruntime.StepTimeout")
    assert f"{STEP_TIMEOUT:g}s" in failed.error_message
    assert failed.retry_at == failed.at + 1.0
    assert attempts == [1, 2]


async def test_attempt_past_its_timeout_is_cancelled_and_its_cleanup_runs() -> None:
    """The body of a timed-out attempt gets CancelledError, so its finally block runs."""
    async with fast_retries() as rt:
        await (await rt.start(slow_once, run_id="t")).result()
    assert cleaned_up == [1]


async def test_step_past_its_timeout_every_time_fails_the_run_with_step_timeout() -> None:
    """After max_attempts timeouts the run fails with error type aruntime.StepTimeout."""
    async with fast_retries() as rt:
        handle = await rt.start(slow_always, run_id="t")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        events = await rt.store.events_for("t")
    assert info.value.error_type == "aruntime.StepTimeout"
    assert (info.value.step, info.value.attempts) == ("always_slow", 3)
    assert [f.error_type for f in failures(events)] == ["aruntime.StepTimeout"] * 3
    assert [f.retry_at is None for f in failures(events)] == [False, False, True]


async def test_workflow_sees_a_timed_out_step_as_step_failed_error() -> None:
    """A workflow catching StepFailedError learns the step timed out from its error type."""
    async with fast_retries() as rt:
        result = await (await rt.start(slow_always_caught, run_id="t")).result()
    assert result == "aruntime.StepTimeout"


async def test_fast_body_is_unaffected_by_its_timeout() -> None:
    """A body that returns within its timeout completes at the first attempt."""
    async with fast_retries() as rt:
        assert await (await rt.start(quick, run_id="t")).result() == "fast"
        events = await rt.store.events_for("t")
    assert kinds(events) == ["RunStarted", "StepStarted", "StepCompleted", "RunCompleted"]


def test_step_timeout_is_a_timeout_error() -> None:
    """StepTimeout is a TimeoutError, so code that catches timeouts catches it too."""
    assert issubclass(StepTimeout, TimeoutError)


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, "1", True])
def test_invalid_step_timeout_is_a_config_error(timeout: Any) -> None:
    """@step(timeout=...) refuses zero, negative, NaN, infinite, bool and non-number timeouts."""
    with pytest.raises(ConfigError):
        step(timeout=timeout)


# -- run deadlines ----------------------------------------------------------------------------


async def test_run_deadline_is_recorded_in_run_started(store: EventStore) -> None:
    """start(..., seconds=30) records the deadline now + 30 with the run."""
    async with Runtime(store, clock=FakeClock(T0)) as rt:
        await start_with_timeout(rt, waits_on_held, run_id="d", seconds=30)
        first = (await store.events_for("d"))[0]
        assert isinstance(first, RunStarted)
        assert first.deadline == T0 + 30
        assert (await rt.state("d")).deadline == T0 + 30
        gate.set()


async def test_run_past_its_deadline_ends_cancelled_with_reason_timeout() -> None:
    """When the deadline passes the step in flight is cancelled and the run ends CANCELLED."""
    clock = FakeClock(T0)
    async with Runtime(clock=clock) as rt:
        handle = await start_with_timeout(rt, waits_on_held, run_id="d", seconds=30)
        await wait_until(lambda: attempts == [1])
        clock.advance(29.5)
        await settled()
        assert (await rt.state("d")).status is RunStatus.RUNNING
        clock.advance(0.5)
        with pytest.raises(RunCancelledError) as info:
            await handle.result()
        events = await rt.store.events_for("d")
    assert info.value.reason == "timeout"
    assert kinds(events) == CANCELLED_MID_STEP


async def test_run_finished_before_its_deadline_stays_completed() -> None:
    """A run that completed before its deadline is not cancelled when the deadline passes."""
    clock = FakeClock(T0)
    async with Runtime(clock=clock) as rt:
        handle = await start_with_timeout(rt, quick, run_id="d", seconds=30)
        assert await handle.result() == "fast"
        clock.advance(60)
        await settled()
        state = await rt.state("d")
    assert state.status is RunStatus.COMPLETED
    assert state.cancel_reason is None


async def test_deadline_passed_while_no_runtime_ran_cancels_the_run_at_once(
    store: EventStore,
) -> None:
    """A runtime opening after the run's deadline ends it CANCELLED with reason timeout."""
    error = await result_after_deadline_passed_while_down(store)
    assert error.reason == "timeout"
    info_after = await store.get_run("d")
    assert info_after is not None
    assert info_after.status is RunStatus.CANCELLED


async def test_deadline_passed_while_no_runtime_ran_starts_no_new_attempt(
    store: EventStore,
) -> None:
    """A runtime opening after the run's deadline cancels it before any body runs again."""
    await result_after_deadline_passed_while_down(store)
    assert attempts == [1]
    assert kinds(await store.events_for("d")) == CANCELLED_MID_STEP


async def test_deadline_holds_across_a_restart_before_it_passed(store: EventStore) -> None:
    """A runtime opening 10 s into a 30 s deadline cancels the run 20 s later, not 30."""
    clock = FakeClock(T0)
    async with Runtime(store, clock=clock) as first:
        await start_with_timeout(first, waits_on_held, run_id="d", seconds=30)
        await wait_until(lambda: attempts == [1])
        clock.advance(10)
    async with Runtime(store, clock=clock) as second:
        await wait_until(lambda: attempts == [1, 2])
        await wait_until(lambda: clock.sleeping == 1)
        clock.advance(20)
        with pytest.raises(RunCancelledError, match="timeout"):
            await second.handle("d").result()


@pytest.mark.parametrize("seconds", [0, -5, math.nan, math.inf, "30", True])
async def test_invalid_run_timeout_is_a_config_error_and_records_nothing(seconds: Any) -> None:
    """start(..., timeout=...) refuses zero, negative, NaN, infinite, bool and non-number values."""
    async with Runtime(clock=FakeClock(T0)) as rt:
        with pytest.raises(ConfigError):
            await start_with_timeout(rt, quick, run_id="d", seconds=seconds)
        assert await rt.runs() == []
