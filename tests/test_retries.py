"""Bounded retries that survive crashes (DESIGN §2.4), on a fake clock: no real sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from run_helpers import failures, kinds, start, wait_until

from aruntime import (
    MemoryStore,
    NonRetryableError,
    RestartBudget,
    RetryAfter,
    RetryPolicy,
    RunFailedError,
    Runtime,
    RuntimeConfig,
    Step,
    StepFailedError,
    StepStatus,
    current_step,
    replay,
    step,
    workflow,
)
from aruntime.events import StepStarted
from aruntime.testing import FakeClock, crash_run

attempts: list[int] = []
never = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty attempt record and its own never-set event."""
    global never  # noqa: PLW0603 - the event must belong to the test's own event loop
    attempts.clear()
    never = asyncio.Event()


class TransientError(Exception):
    """A failure worth retrying."""


def qualified(cls: type[BaseException]) -> str:
    """The error type the runtime records for an exception class of this module."""
    return f"{cls.__module__}.{cls.__qualname__}"


def attempt_started(n: int) -> Callable[[], bool]:
    """A predicate: attempt `n` of the step under test has entered its body."""
    return lambda: len(attempts) == n


# -- steps and workflows ------------------------------------------------------------------


@step(retry=RetryPolicy(max_attempts=4, initial_delay=1.0, backoff=3.0, jitter=0.0))
async def fails_twice() -> str:
    attempt = current_step().attempt
    attempts.append(attempt)
    if attempt < 3:
        raise TransientError(f"attempt {attempt} failed")
    return "ok"


@workflow
async def retry_until_ok() -> str:
    return await fails_twice()


@step(retry=RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0))
async def always_fails() -> str:
    attempt = current_step().attempt
    attempts.append(attempt)
    raise TransientError(f"boom on attempt {attempt}")


@step(retry=RetryPolicy(max_attempts=2, initial_delay=2.0, jitter=0.5))
async def fails_once_with_jitter() -> str:
    if current_step().attempt == 1:
        raise TransientError("jittered")
    return "ok"


@workflow
async def jittered_retry() -> str:
    return await fails_once_with_jitter()


@workflow
async def exhaust_retries() -> str:
    return await always_fails()


@workflow
async def catch_and_raise() -> str:
    try:
        await always_fails()
    except StepFailedError:
        raise ValueError("gave up on my own") from None
    return "unreachable"


@step
async def refuses() -> None:
    attempts.append(current_step().attempt)
    raise NonRetryableError("card declined")


@step(retry=RetryPolicy(max_attempts=5, jitter=0.0, non_retryable=(KeyError,)))
async def listed_non_retryable() -> None:
    attempts.append(current_step().attempt)
    raise KeyError("no such account")


@step(retry=RetryPolicy(max_attempts=5, jitter=0.0, retry_if=lambda e: isinstance(e, OSError)))
async def rejected_by_retry_if() -> None:
    attempts.append(current_step().attempt)
    raise ValueError("malformed request")


ONE_SHOT: dict[str, tuple[Step[[], None], str]] = {
    "NonRetryableError": (refuses, "aruntime.NonRetryableError"),
    "non_retryable": (listed_non_retryable, "KeyError"),
    "retry_if": (rejected_by_retry_if, "ValueError"),
}


@workflow
async def run_one_shot(kind: str) -> None:
    await ONE_SHOT[kind][0]()


@step(retry=RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=60.0, jitter=0.0))
async def asks_to_wait() -> str:
    attempt = current_step().attempt
    attempts.append(attempt)
    if attempt == 1:
        raise RetryAfter(7.5, "rate limited")
    return "ok"


@workflow
async def retry_after() -> str:
    return await asks_to_wait()


@step
async def fallback() -> str:
    return "fallback"


@workflow
async def catch_and_continue() -> list[object]:
    try:
        await refuses()
    except StepFailedError as exc:
        return [exc.step, exc.identity, exc.attempt, exc.error_type, await fallback()]
    return ["not reached"]


@step(retry=RetryPolicy(max_attempts=3, initial_delay=10.0, jitter=0.0))
async def fails_once_slowly() -> str:
    attempt = current_step().attempt
    attempts.append(attempt)
    if attempt == 1:
        raise TransientError("try again in 10 s")
    return "ok"


@workflow
async def slow_retry() -> str:
    return await fails_once_slowly()


@step(retry=RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0))
async def hangs() -> str:
    attempts.append(current_step().attempt)
    await never.wait()
    return "unreachable"


@workflow
async def crash_every_attempt() -> str:
    return await hangs()


# -- tests ---------------------------------------------------------------------------------


async def test_transient_failure_is_retried_with_the_policy_delays() -> None:
    """Failed attempts persist their due time and the runner sleeps exactly the backoff."""
    clock = FakeClock(autojump=True)
    async with Runtime(clock=clock) as rt:
        assert await (await start(rt, retry_until_ok, run_id="r")).result() == "ok"
        events = await rt.store.events_for("r")
    assert attempts == [1, 2, 3]
    failed = failures(events)
    assert [e.retry_at - e.at for e in failed if e.retry_at is not None] == [1.0, 3.0]
    assert clock.sleeps == [1.0, 3.0]
    started = [e for e in events if isinstance(e, StepStarted)]
    assert [s.at for s in started[1:]] == [f.retry_at for f in failed]


async def test_jitter_draws_from_the_runtime_random_source() -> None:
    """With jitter 0.5 and random() == 0.0 the 2 s backoff becomes exactly 1 s."""
    clock = FakeClock(autojump=True)
    async with Runtime(clock=clock, random=lambda: 0.0) as rt:
        assert await (await start(rt, jittered_retry, run_id="j")).result() == "ok"
    assert clock.sleeps == [1.0]


async def test_exhausted_retries_fail_the_run_with_the_last_error() -> None:
    """After max_attempts failures the run is failed and keeps the last attempt's error."""
    async with Runtime(clock=FakeClock(autojump=True)) as rt:
        handle = await start(rt, exhaust_retries, run_id="x")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        state = await handle.state()
    assert attempts == [1, 2, 3]
    assert info.value.error_type == qualified(TransientError)
    assert info.value.error_message == "boom on attempt 3"
    step_state = state.steps["1"]
    assert (step_state.status, step_state.attempts, step_state.retry_at) == (
        StepStatus.FAILED,
        3,
        None,
    )


async def test_run_failed_error_names_the_step_that_ended_the_run() -> None:
    """The error of a run ended by a step names the step, its position and its attempts,
    whether it ended in this runtime or is read back from the store later."""
    store = MemoryStore()
    async with Runtime(store, clock=FakeClock(autojump=True)) as rt:
        with pytest.raises(RunFailedError) as here:
            await (await start(rt, exhaust_retries, run_id="x")).result()
    async with Runtime(store, clock=FakeClock(autojump=True)) as later:
        with pytest.raises(RunFailedError) as read_back:
            await later.handle("x").result()
    for info in (here, read_back):
        assert (info.value.step, info.value.identity, info.value.attempts) == (
            always_fails.name,
            "1",
            3,
        )
        assert f"(step {always_fails.name!r} at 1, after 3 attempts)" in str(info.value)


async def test_run_failed_by_the_workflow_itself_names_no_step() -> None:
    """A workflow that catches a step's failure and raises its own error: no step is named."""
    async with Runtime(clock=FakeClock(autojump=True)) as rt:
        with pytest.raises(RunFailedError) as info:
            await (await start(rt, catch_and_raise, run_id="own")).result()
    assert info.value.error_message == "gave up on my own"
    assert (info.value.step, info.value.identity, info.value.attempts) == (None, None, None)


@pytest.mark.parametrize("kind", list(ONE_SHOT), ids=list(ONE_SHOT))
async def test_non_retryable_errors_fail_the_step_at_once(kind: str) -> None:
    """NonRetryableError, a listed non_retryable type and a retry_if refusal get one attempt."""
    clock = FakeClock(autojump=True)
    async with Runtime(clock=clock) as rt:
        handle = await start(rt, run_one_shot, kind, run_id="once")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        events = await rt.store.events_for("once")
    assert attempts == [1]
    assert info.value.error_type == ONE_SHOT[kind][1]
    assert [e.retry_at for e in failures(events)] == [None]
    assert clock.sleeps == []


async def test_retry_after_sets_the_next_attempts_due_time() -> None:
    """A body raising RetryAfter(7.5) has its next attempt due 7.5 s later, not the backoff."""
    clock = FakeClock(autojump=True)
    async with Runtime(clock=clock) as rt:
        assert await (await start(rt, retry_after, run_id="ra")).result() == "ok"
        events = await rt.store.events_for("ra")
    (failed,) = failures(events)
    assert failed.retry_at is not None
    assert failed.retry_at - failed.at == 7.5
    assert failed.error_message == "rate limited"
    assert clock.sleeps == [7.5]


async def test_workflow_may_catch_step_failed_error_and_continue() -> None:
    """A workflow that catches StepFailedError goes on to later steps and completes."""
    async with Runtime(clock=FakeClock(autojump=True)) as rt:
        handle = await start(rt, catch_and_continue, run_id="c")
        result = await handle.result()
        state = await handle.state()
    assert result == ["refuses", "1", 1, "aruntime.NonRetryableError", "fallback"]
    assert [s.status for s in state.steps.values()] == [StepStatus.FAILED, StepStatus.COMPLETED]


async def test_crash_during_backoff_waits_only_the_remaining_time() -> None:
    """A run crashed 4 s into a 10 s backoff sleeps the remaining 6 s after its respawn."""
    clock = FakeClock()
    async with Runtime(clock=clock) as rt:
        handle = await start(rt, slow_retry, run_id="b")
        await wait_until(lambda: clock.sleeping == 1)
        clock.advance(4.0)
        log_before = list(await rt.store.events_for("b"))
        before, after = await crash_run(rt, "b")
        assert before == after
        await wait_until(lambda: clock.sleeping == 1)
        assert clock.sleeps == [10.0, 6.0]
        assert await rt.store.events_for("b") == log_before
        clock.advance(6.0)
        assert await handle.result() == "ok"
        events = await rt.store.events_for("b")
    (failed,) = failures(events)
    second = [e for e in events if isinstance(e, StepStarted)][1]
    assert second.at == failed.retry_at
    assert attempts == [1, 2]


async def test_runtime_restarted_during_backoff_waits_only_the_remaining_time() -> None:
    """A new runtime on the same store resumes a backoff from its persisted due time."""
    clock = FakeClock()
    store = MemoryStore()
    async with Runtime(store, clock=clock) as first:
        await start(first, slow_retry, run_id="b")
        await wait_until(lambda: clock.sleeping == 1)
    clock.advance(7.5)
    async with Runtime(store, clock=clock) as second:
        await wait_until(lambda: clock.sleeping == 1)
        assert clock.sleeps == [10.0, 2.5]
        clock.advance(2.5)
        assert await second.handle("b").result() == "ok"
    assert attempts == [1, 2]


async def test_attempts_killed_by_crashes_count_toward_max_attempts() -> None:
    """A step whose every attempt dies in a crash fails as interrupted after max_attempts."""
    config = RuntimeConfig(restart_budget=RestartBudget(max_restarts=10, window=60))
    async with Runtime(clock=FakeClock(autojump=True), config=config) as rt:
        handle = await start(rt, crash_every_attempt, run_id="k")
        for attempt in (1, 2, 3):
            await wait_until(attempt_started(attempt))
            await crash_run(rt, "k")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        events = await rt.store.events_for("k")
    assert attempts == [1, 2, 3]
    assert info.value.error_type == "aruntime.AttemptInterrupted"
    assert kinds(list(events)) == [
        "RunStarted",
        "StepStarted",
        "StepStarted",
        "StepStarted",
        "StepFailed",
        "RunFailed",
    ]
    step_state = replay(events).steps["1"]
    assert (step_state.status, step_state.attempts) == (StepStatus.FAILED, 3)
