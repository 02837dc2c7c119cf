"""End-to-end behaviour of the runtime on the in-memory store."""

from __future__ import annotations

import asyncio

import pytest
from run_helpers import kinds, start, wait_until

import aruntime
from aruntime import (
    EventStore,
    RetryPolicy,
    RunContext,
    RunIdConflictError,
    RunStatus,
    Runtime,
    StepContext,
    StepStatus,
    current_run,
    current_step,
    replay,
    step,
    workflow,
)
from aruntime.events import RunStarted, StepCompleted, StepStarted
from aruntime.testing import FakeClock


def runtime() -> Runtime:
    """A runtime on a fresh memory store whose retries never really sleep."""
    return Runtime(clock=FakeClock(autojump=True))


# -- shared, per-test state -------------------------------------------------------------

bodies: list[str] = []
run_contexts: list[RunContext] = []
step_contexts: list[StepContext] = []
gate = asyncio.Event()
stores: list[EventStore] = []
seen: list[list[str]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test empty records and a closed gate."""
    global gate  # noqa: PLW0603 - the gate must belong to the test's own event loop
    bodies.clear()
    run_contexts.clear()
    step_contexts.clear()
    stores.clear()
    seen.clear()
    gate = asyncio.Event()


# -- steps and workflows ------------------------------------------------------------------


@step
async def add_one(x: int) -> int:
    bodies.append("add_one")
    return x + 1


@step
async def double(x: int) -> int:
    bodies.append("double")
    return 2 * x


@step
async def to_text(x: int) -> str:
    bodies.append("to_text")
    return f"<{x}>"


@workflow
async def add_then_double(x: int) -> int:
    return await double(await add_one(x))


chain = aruntime.sequence("test_runtime.chain", [add_one, double, to_text])


@workflow
async def double_once(x: int) -> int:
    return await double(x)


@workflow
async def other_workflow(x: int) -> int:
    return await add_one(x)


@step
async def gated(x: int) -> int:
    bodies.append("gated")
    await gate.wait()
    return x


@workflow
async def gated_workflow(x: int) -> int:
    return await gated(x)


@step
async def record_step() -> str:
    step_contexts.append(current_step())
    run_contexts.append(current_run())
    return "recorded"


@workflow
async def record_contexts() -> str:
    run_contexts.append(current_run())
    return await record_step()


@workflow
async def step_context_outside_step() -> str:
    try:
        current_step()
    except LookupError:
        return "no step"
    return "a step"


@step(retry=RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0))
async def flaky_recorder() -> str:
    ctx = current_step()
    step_contexts.append(ctx)
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.idempotency_key


@workflow
async def flaky_keys() -> str:
    return await flaky_recorder()


@step
async def wait_for_all_three(x: int) -> int:
    bodies.append(f"entered {x}")
    if len(bodies) == 3:
        gate.set()
    await gate.wait()
    return x * 10


@workflow
async def fan_out() -> list[int]:
    return list(await aruntime.gather(*(wait_for_all_three(x) for x in (1, 2, 3))))


@workflow
async def raw_fan_out() -> list[int]:
    return list(await asyncio.gather(*(wait_for_all_three(x) for x in (1, 2, 3))))


@step
async def outer_step(x: int) -> int:
    return await double(x) + 1


@workflow
async def nested_steps(x: int) -> int:
    return await outer_step(x)


@step
async def look_at_log() -> str:
    store = stores[0]
    events = await store.events_for(current_run().run_id)
    seen.append(kinds(events))
    return "looked"


@workflow
async def observe_log() -> str:
    value = await look_at_log()
    seen.append(kinds(await stores[0].events_for(current_run().run_id)))
    await look_at_log()
    return value


# -- tests ---------------------------------------------------------------------------------


async def test_workflow_with_steps_returns_its_result() -> None:
    """A workflow that calls two steps returns the value computed by them."""
    async with runtime() as rt:
        handle = await start(rt, add_then_double, 4, run_id="calc")
        assert await handle.result() == 10
    assert bodies == ["add_one", "double"]


async def test_step_started_is_durable_before_the_body_runs() -> None:
    """The body finds its own StepStarted already in the store when it begins."""
    async with runtime() as rt:
        stores.append(rt.store)
        await (await start(rt, observe_log, run_id="wa")).result()
    assert seen[0] == ["RunStarted", "StepStarted"]


async def test_step_outcome_is_durable_before_the_next_step_body_runs() -> None:
    """A step's StepCompleted goes out without a wait of its own, but it is stored, with the
    next StepStarted, before the next body runs: one durable commit per step."""
    async with runtime() as rt:
        stores.append(rt.store)
        await (await start(rt, observe_log, run_id="wa")).result()
        events = await rt.store.events_for("wa")
    assert seen[1] == ["RunStarted", "StepStarted"]
    assert seen[2] == ["RunStarted", "StepStarted", "StepCompleted", "StepStarted"]
    assert kinds(events)[-2:] == ["StepCompleted", "RunCompleted"]


async def test_sequence_feeds_each_step_the_previous_result() -> None:
    """`aruntime.sequence` passes the run's argument to the first step and each result on."""
    async with runtime() as rt:
        handle = await start(rt, chain, 3, run_id="chain")
        assert await handle.result() == "<8>"
        events = await rt.store.events_for("chain")
    results = [e.result for e in events if isinstance(e, StepCompleted)]
    assert results == ["4", "8", '"<8>"']


async def test_error_in_the_runtime_block_propagates_unwrapped() -> None:
    """An exception raised inside `async with Runtime()` comes out as itself, not wrapped
    in an ExceptionGroup by the runtime's task group."""

    async def conflicting_starts() -> None:
        async with runtime() as rt:
            await start(rt, gated_workflow, 1, run_id="g")
            await start(rt, gated_workflow, 2, run_id="g")

    with pytest.raises(RunIdConflictError):
        await conflicting_starts()


async def test_replay_of_stored_log_is_the_completed_state() -> None:
    """Folding the stored log gives a completed state holding every step and the result."""
    async with runtime() as rt:
        handle = await start(rt, add_then_double, 1, run_id="folded")
        await handle.result()
        events = await rt.store.events_for("folded")
        state = await handle.state()
    folded = replay(events)
    assert folded == state
    assert folded.status is RunStatus.COMPLETED
    assert folded.version == len(events) == 6
    assert folded.result == "4"
    assert [(s.step, s.status, s.result) for s in folded.steps.values()] == [
        ("add_one", StepStatus.COMPLETED, "2"),
        ("double", StepStatus.COMPLETED, "4"),
    ]


async def test_start_twice_while_running_returns_the_same_run_run_once() -> None:
    """Starting a running run's id again returns a handle on it and does not run it twice."""
    async with runtime() as rt:
        first = await start(rt, gated_workflow, 7, run_id="dup")
        await wait_until(lambda: bodies == ["gated"])
        second = await start(rt, gated_workflow, 7, run_id="dup")
        gate.set()
        assert second.run_id == first.run_id == "dup"
        assert await first.result() == await second.result() == 7
        events = await rt.store.events_for("dup")
    assert bodies == ["gated"]
    assert sum(isinstance(e, RunStarted) for e in events) == 1


async def test_start_again_after_completion_returns_recorded_result() -> None:
    """Starting a finished run's id again returns its recorded result without re-running it."""
    async with runtime() as rt:
        await (await start(rt, double_once, 5, run_id="done")).result()
        again = await start(rt, double_once, 5, run_id="done")
        assert await again.result() == 10
        events = await rt.store.events_for("done")
    assert bodies == ["double"]
    assert len(events) == 4


async def test_same_run_id_with_other_arguments_conflicts() -> None:
    """A run id reused with other arguments raises RunIdConflictError and appends nothing."""
    async with runtime() as rt:
        await (await start(rt, double_once, 5, run_id="taken")).result()
        before = await rt.store.events_for("taken")
        with pytest.raises(RunIdConflictError) as info:
            await start(rt, double_once, 6, run_id="taken")
        assert info.value.run_id == "taken"
        assert await rt.store.events_for("taken") == before


@workflow
async def echo_untyped(value):  # type: ignore[no-untyped-def]
    return value


async def test_same_run_id_with_arguments_equal_only_in_python_conflicts() -> None:
    """`True` is another argument than `1` (they differ in the log), so the id conflicts."""
    async with runtime() as rt:
        await (await start(rt, echo_untyped, 1, run_id="taken")).result()
        with pytest.raises(RunIdConflictError):
            await start(rt, echo_untyped, True, run_id="taken")


async def test_an_argument_that_cannot_become_its_annotated_type_is_refused_at_start() -> None:
    """`True` for a parameter annotated `int` is refused before anything is recorded."""
    async with runtime() as rt:
        with pytest.raises(aruntime.SerializationError, match=r"'x'.*cannot become int"):
            await start(rt, double_once, True, run_id="typed")
        assert await rt.store.events_for("typed") == []


async def test_same_run_id_with_another_workflow_conflicts() -> None:
    """A run id reused for another workflow raises RunIdConflictError and appends nothing."""
    async with runtime() as rt:
        await (await start(rt, double_once, 5, run_id="taken")).result()
        before = await rt.store.events_for("taken")
        with pytest.raises(RunIdConflictError, match="double_once"):
            await start(rt, other_workflow, 5, run_id="taken")
        assert await rt.store.events_for("taken") == before


async def test_current_run_names_the_run_in_workflow_and_step() -> None:
    """`current_run()` gives the run id and workflow name inside the workflow and its steps."""
    async with runtime() as rt:
        await (await start(rt, record_contexts, run_id="ctx")).result()
    expected = RunContext("ctx", record_contexts.name)
    assert run_contexts == [expected, expected]


async def test_current_step_names_step_position_and_attempt() -> None:
    """`current_step()` inside a body gives the run, step name, position and attempt."""
    async with runtime() as rt:
        await (await start(rt, record_contexts, run_id="ctx")).result()
    assert step_contexts == [StepContext("ctx", "record_step", 1, 1)]


async def test_current_step_outside_a_step_body_raises_lookup_error() -> None:
    """Workflow code outside a step body has no current step."""
    async with runtime() as rt:
        assert await (await start(rt, step_context_outside_step, run_id="ws")).result() == (
            "no step"
        )


def test_current_run_outside_a_run_raises_lookup_error() -> None:
    """Code outside any run has no current run."""
    with pytest.raises(LookupError):
        current_run()


async def test_idempotency_key_is_stable_across_attempts() -> None:
    """Every attempt of a retried step sees the same idempotency key."""
    async with runtime() as rt:
        key = await (await start(rt, flaky_keys, run_id="keys")).result()
    assert [c.attempt for c in step_contexts] == [1, 2, 3]
    assert {c.idempotency_key for c in step_contexts} == {key}
    assert "keys" in key


async def test_parallel_steps_with_gather_run_concurrently_and_are_recorded() -> None:
    """Steps gathered in a workflow run at the same time and each outcome is journaled."""
    async with runtime() as rt:
        handle = await start(rt, fan_out, run_id="fan")
        assert await handle.result() == [10, 20, 30]
        events = await rt.store.events_for("fan")
    # Each body waits until all three have entered, so they can only finish together.
    assert sorted(bodies) == ["entered 1", "entered 2", "entered 3"]
    assert sorted(e.branch for e in events if isinstance(e, StepStarted)) == ["1", "2", "3"]
    completed = {e.branch: e.result for e in events if isinstance(e, StepCompleted)}
    assert completed == {"1": "10", "2": "20", "3": "30"}
    state = replay(events)
    assert sorted(state.steps) == ["1.1", "2.1", "3.1"]
    assert [s.status for s in state.steps.values()] == [StepStatus.COMPLETED] * 3


async def test_steps_under_raw_asyncio_gather_are_refused_and_park_the_run() -> None:
    """A step called from a task aruntime did not create gets no identity: the run is
    parked with an error naming aruntime.gather, and no step is recorded."""
    async with runtime() as rt:
        handle = await start(rt, raw_fan_out, run_id="raw")
        with pytest.raises(aruntime.RunParkedError, match=r"UntrackedTaskError.*aruntime\.gather"):
            await handle.result()
        events = await rt.store.events_for("raw")
    assert kinds(events) == ["RunStarted"]


async def test_step_called_outside_a_workflow_just_runs() -> None:
    """A step awaited outside any run runs its body and records nothing."""
    assert await double(21) == 42
    assert bodies == ["double"]


async def test_step_called_inside_a_step_body_is_not_journaled() -> None:
    """A step called from another step's body runs as a plain call, not as a journaled step."""
    async with runtime() as rt:
        assert await (await start(rt, nested_steps, 3, run_id="nest")).result() == 7
        events = await rt.store.events_for("nest")
    assert [e.step for e in events if isinstance(e, StepStarted)] == ["outer_step"]
    assert bodies == ["double"]


async def test_result_of_a_run_another_runtime_would_run_wakes_on_the_store_change(
    store: EventStore,
) -> None:
    """Waiting on a run this runtime does not run ends when the store says the run ended,
    not after the poll interval."""
    await store.append(
        "x",
        [RunStarted(sequence=1, at=1.0, run_id="x", workflow="elsewhere.job", args="[[],{}]")],
        0,
    )
    slow_poll = aruntime.RuntimeConfig(result_poll_interval=60.0)
    async with Runtime(store, config=slow_poll) as rt:
        waiting = asyncio.create_task(rt.handle("x").result())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await rt.cancel("x", reason="not wanted")
        async with asyncio.timeout(5):
            with pytest.raises(aruntime.RunCancelledError, match="not wanted"):
                await waiting
