"""Supervision (DESIGN §2.5): respawn from the log, restart budget, parking, start-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
import structlog
from run_helpers import kinds, start, wait_until

import aruntime
from aruntime import (
    EventStore,
    MemoryStore,
    RestartBudget,
    RetryPolicy,
    RunParkedError,
    RunStatus,
    Runtime,
    RuntimeConfig,
    Workflow,
    current_step,
    step,
    workflow,
)
from aruntime.errors import ConfigError, StoreError
from aruntime.events import (
    Event,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from aruntime.testing import FakeClock, FaultyStore, crash_run

entered: list[str] = []
gate = asyncio.Event()
explode = True


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty record, a closed gate and exploding steps."""
    global gate, explode  # noqa: PLW0603 - per-test state of module-level steps
    entered.clear()
    gate = asyncio.Event()
    explode = True


class Meltdown(BaseException):
    """An unexpected BaseException from a step body, not an error of the step."""


BUDGET = RuntimeConfig(restart_budget=RestartBudget(max_restarts=2, window=60))


def runtime(
    store: EventStore | None = None,
    *,
    config: RuntimeConfig | None = None,
    workflows: list[Workflow[..., Any]] | None = None,
) -> Runtime:
    """A runtime on a fake clock, on `store` (default: a fresh memory store)."""
    return Runtime(store, workflows=workflows, clock=FakeClock(autojump=True), config=config)


# -- steps and workflows ------------------------------------------------------------------


@step
async def quick(x: int) -> int:
    entered.append("quick")
    return x + 1


@step
async def gated(x: int) -> int:
    entered.append(f"gated {x}")
    await gate.wait()
    return x * 10


@workflow
async def quick_then_gated(x: int) -> int:
    return await gated(await quick(x))


@step(retry=RetryPolicy(max_attempts=10))
async def melts_down() -> str:
    entered.append(f"attempt {current_step().attempt}")
    if explode:
        raise Meltdown("reactor")
    return "cool"


@workflow
async def meltdown() -> str:
    return await melts_down()


@step
async def awaits_a_cancelled_future() -> str:
    entered.append(f"attempt {current_step().attempt}")
    if current_step().attempt == 1:
        # Awaiting a future someone else cancelled raises CancelledError in this task,
        # although nobody cancelled the task: a BaseException from the body, not a shutdown.
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
    return "ok"


@workflow
async def stray_cancellation() -> str:
    return await awaits_a_cancelled_future()


@workflow
async def gathered() -> list[int]:
    return list(await aruntime.gather(gated(1), gated(2), gated(3)))


@workflow
async def two_quick(x: int) -> int:
    return await quick(await quick(x))


@workflow
async def unrelated() -> None:
    return None


class CrashAfterFirstCompletion(FaultyStore):
    """Kills the writing task right after the first StepCompleted became durable."""

    crashed = False

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        await super().append(run_id, events, expected_sequence)
        if not self.crashed and any(isinstance(e, StepCompleted) for e in events):
            self.crashed = True
            raise Meltdown("process died after the commit")


def one_outcome_per_position(events: Sequence[Event]) -> bool:
    outcomes = [e for e in events if isinstance(e, StepCompleted | StepFailed)]
    positions = [(e.branch, e.position) for e in outcomes]
    return len(positions) == len(set(positions))


async def is_parked(store: MemoryStore, run_id: str) -> bool:
    return await parked_reason(store, run_id) is not None


async def parked_reason(store: MemoryStore, run_id: str) -> str | None:
    info = await store.get_run(run_id)
    assert info is not None
    return info.parked_reason


# -- respawn -------------------------------------------------------------------------------


async def test_crash_run_replays_the_lost_state_and_the_run_completes() -> None:
    """A crashed run's replayed state equals the state it lost, and it runs to the end."""
    async with runtime() as rt:
        handle = await start(rt, quick_then_gated, 1, run_id="c")
        await wait_until(lambda: "gated 2" in entered)
        before, after = await crash_run(rt, "c")
        assert before == after
        assert before.version == 4
        gate.set()
        assert await handle.result() == 20
        assert rt.stats.respawned == 1
    # The step in flight at the crash ran again (at-least-once); the completed one did not.
    assert entered == ["quick", "gated 2", "gated 2"]


async def test_crash_with_parallel_steps_in_flight_replays_and_reruns_them_all() -> None:
    """Steps gathered in parallel and cut off by a crash all run again and complete once."""
    async with runtime() as rt:
        handle = await start(rt, gathered, run_id="g")
        await wait_until(lambda: len(entered) == 3)
        before, after = await crash_run(rt, "g")
        assert before == after
        await wait_until(lambda: len(entered) == 6)
        gate.set()
        assert await handle.result() == [10, 20, 30]
        events = await rt.store.events_for("g")
    assert sorted(entered) == sorted(["gated 1", "gated 2", "gated 3"] * 2)
    assert kinds(list(events)).count("StepCompleted") == 3
    assert one_outcome_per_position(events)


async def test_restarts_older_than_the_budget_window_are_forgotten() -> None:
    """With RestartBudget(max_restarts=1, window=60), two crashes 61 s apart do not park."""
    clock = FakeClock()
    config = RuntimeConfig(restart_budget=RestartBudget(max_restarts=1, window=60))
    async with Runtime(clock=clock, config=config) as rt:
        handle = await start(rt, quick_then_gated, 1, run_id="w")
        for crashes in (1, 2):
            await wait_until(lambda: len(entered) == crashes + 1)  # noqa: B023 - awaited at once
            await crash_run(rt, "w")
            clock.advance(61)
        await wait_until(lambda: len(entered) == 4)
        gate.set()
        assert await handle.result() == 20
        assert (rt.stats.respawned, rt.stats.parked) == (2, 0)


async def test_step_completed_durably_is_not_rerun_after_a_crash() -> None:
    """A crash right after StepCompleted is durable replays that step instead of rerunning it.

    The completion goes out with the next step's StepStarted; the process dies once both
    are durable, before the second body begins, so that one starts again as attempt 2."""
    store = CrashAfterFirstCompletion(MemoryStore())
    async with runtime(store) as rt:
        handle = await start(rt, two_quick, 1, run_id="d")
        assert await handle.result() == 3
        events = await store.events_for("d")
        assert rt.stats.respawned == 1
    assert store.crashed
    assert entered == ["quick", "quick"]
    assert kinds(list(events)) == [
        "RunStarted",
        "StepStarted",
        "StepCompleted",
        "StepStarted",
        "StepStarted",
        "StepCompleted",
        "RunCompleted",
    ]
    assert [e.position for e in events if isinstance(e, StepStarted)] == [1, 2, 2]


async def test_step_raising_base_exception_is_respawned_not_recorded_as_failure() -> None:
    """A BaseException from a body kills the task: no failure is logged, the run respawns."""
    async with runtime(config=BUDGET) as rt:
        handle = await start(rt, meltdown, run_id="m")
        with pytest.raises(RunParkedError):
            await handle.result()
        events = await rt.store.events_for("m")
        assert rt.stats.respawned == 2
    assert entered == ["attempt 1", "attempt 2", "attempt 3"]
    assert kinds(list(events)) == ["RunStarted"] + ["StepStarted"] * 3


async def test_step_raising_a_stray_cancelled_error_is_respawned_not_dropped() -> None:
    """A CancelledError from a body, while nobody cancelled the run, respawns the run."""
    async with runtime() as rt:
        handle = await start(rt, stray_cancellation, run_id="s")
        try:
            async with asyncio.timeout(2):
                result = await handle.result()
        except TimeoutError:
            info = await rt.store.get_run("s")
            pytest.fail(f"run dropped: neither respawned nor parked ({info}, {rt.stats})")
        events = await rt.store.events_for("s")
    assert result == "ok"
    assert entered == ["attempt 1", "attempt 2"]
    assert "StepFailed" not in kinds(list(events))


async def test_run_is_parked_after_the_restart_budget_with_a_visible_reason() -> None:
    """Past RestartBudget(max_restarts=2) the run is parked, listed with the reason."""
    store = MemoryStore()
    async with runtime(store, config=BUDGET) as rt:
        handle = await start(rt, meltdown, run_id="m")
        with pytest.raises(RunParkedError) as info:
            await handle.result()
        parked = await store.list_runs(parked=True)
    assert [(p.run_id, p.status) for p in parked] == [("m", RunStatus.RUNNING)]
    reason = parked[0].parked_reason
    assert reason is not None
    assert "restart budget exhausted" in reason
    assert "Meltdown: reactor" in reason
    assert info.value.run_id == "m"
    assert info.value.reason == reason


async def test_repeated_respawns_back_off_exponentially() -> None:
    """The first respawn in the window is immediate; each later one waits twice as long."""
    clock = FakeClock(autojump=True)
    budget = RestartBudget(max_restarts=4, window=60, initial_delay=0.5, max_delay=1.5)
    async with Runtime(clock=clock, config=RuntimeConfig(restart_budget=budget)) as rt:
        handle = await start(rt, meltdown, run_id="m")
        with pytest.raises(RunParkedError):
            await handle.result()
        assert rt.stats.respawned == 4
    assert clock.sleeps == [0.5, 1.0, 1.5]


class ParkRefused(FaultyStore):
    """A store that refuses the first `refusals` parks, as during an outage."""

    def __init__(
        self, inner: EventStore, refusals: int, error: type[Exception] = StoreError
    ) -> None:
        super().__init__(inner)
        self.refusals = refusals
        self.parks = 0
        self.refusal = error

    async def park(self, run_id: str, reason: str) -> None:
        self.parks += 1
        if self.parks <= self.refusals:
            raise self.refusal("database is locked")
        await super().park(run_id, reason)


@pytest.mark.parametrize("error", [StoreError, OSError], ids=["store-error", "other-error"])
async def test_run_whose_parking_fails_stays_supervised_until_it_is_parked(
    error: type[Exception],
) -> None:
    """A run past its budget whose park the store refuses is not dropped: the supervisor
    keeps it and tries again, backing off, until the park is durable."""
    store = ParkRefused(MemoryStore(), refusals=3, error=error)
    clock = FakeClock(autojump=True)
    with structlog.testing.capture_logs() as logs:
        async with Runtime(store, clock=clock, config=BUDGET) as rt:
            handle = await start(rt, meltdown, run_id="m")
            with pytest.raises(RunParkedError):
                await handle.result()
    assert store.parks == 4
    refused = [entry["retry_in"] for entry in logs if entry["event"] == "run.park_failed"]
    assert refused == [0.1, 0.2, 0.4]
    assert [p.run_id for p in await store.list_runs(parked=True)] == ["m"]


@pytest.mark.parametrize(
    "options",
    [
        {"initial_delay": -1.0},
        {"initial_delay": 2.0, "max_delay": 1.0},
        {"max_delay": float("inf")},
        {"window": 0},
        {"max_restarts": -1},
    ],
    ids=["negative-delay", "max-below-initial", "infinite-max", "empty-window", "negative-max"],
)
def test_invalid_restart_budget_is_a_config_error(options: dict[str, float]) -> None:
    """A restart budget that cannot be honoured is refused when it is made."""
    with pytest.raises(ConfigError):
        RestartBudget(**options)  # type: ignore[arg-type]


async def test_repeat_start_in_a_second_runtime_leaves_the_run_to_its_writer() -> None:
    """Starting, from a second runtime on the same store, a run the first one is running
    returns the run without a second writer: the step body runs once."""
    store = MemoryStore()
    async with runtime(store) as first:
        handle = await start(first, quick_then_gated, 1, run_id="one")
        await wait_until(lambda: entered == ["quick", "gated 2"])
        second = Runtime(
            store, clock=FakeClock(autojump=True), config=RuntimeConfig(resume_on_start=False)
        )
        async with second:
            again = await start(second, quick_then_gated, 1, run_id="one")
            assert again.run_id == "one"
            assert second.stats.spawned == 0
            gate.set()
            assert await handle.result() == 20
            assert (first.stats.respawned, second.stats.spawned) == (0, 0)
    assert entered == ["quick", "gated 2"]


async def test_start_finishing_while_the_runtime_closes_spawns_nothing() -> None:
    """A start whose append completes after the runtime began to close does not hold the
    shutdown up: it says so with ConfigError, and the run stays durable for the next
    start-up."""
    release = asyncio.Event()

    class SlowStarts(MemoryStore):
        async def append(self, run_id: str, events: Sequence[Event], expected: int) -> None:
            if run_id == "late":
                await release.wait()
            await super().append(run_id, events, expected)

    store = SlowStarts()
    late: asyncio.Task[Any] | None = None

    async def body_fails() -> None:
        nonlocal late
        async with runtime(store) as rt:
            late = asyncio.ensure_future(start(rt, quick_then_gated, 1, run_id="late"))
            await asyncio.sleep(0)
            asyncio.get_running_loop().call_soon(release.set)
            raise ValueError("the application's own error")

    async with asyncio.timeout(5):
        with pytest.raises(ValueError, match="own error"):
            await body_fails()
        assert late is not None
        with pytest.raises(ConfigError, match="resumes when a runtime opens this store"):
            await late
    assert entered == []
    assert [info.run_id for info in await store.list_runs(status=RunStatus.RUNNING)] == ["late"]


async def test_start_that_failed_uncommitted_leaves_no_run_and_can_be_retried() -> None:
    """A start whose append failed without committing leaves nothing behind: the task that
    checks the log ends, and the start made again runs the run once."""
    store = FaultyStore(MemoryStore(), fail_appends=[1])
    async with runtime(store) as rt:
        with pytest.raises(StoreError):
            await start(rt, two_quick, 1, run_id="t")
        await wait_until(lambda: not rt._supervisor.supervising("t"))  # type: ignore[union-attr]
        assert await store.get_run("t") is None
        assert await (await start(rt, two_quick, 1, run_id="t")).result() == 3
    assert entered == ["quick", "quick"]


async def test_crash_while_parking_finds_no_live_runner() -> None:
    """While a run waits for the store to take its park, it has no runner to crash, and
    it stays with its task until it is parked."""
    inner = MemoryStore()
    await inner.append(
        "u",
        (
            RunStarted(sequence=1, at=0.0, run_id="u", workflow=two_quick.name, args="[[1],{}]"),
            StepStarted(sequence=2, at=0.0, position=1, step="renamed.step", attempt=1),
        ),
        0,
    )
    store = ParkRefused(inner, refusals=1)
    clock = FakeClock()
    async with Runtime(store, clock=clock, workflows=[two_quick]) as rt:
        await wait_until(lambda: clock.sleeping == 1)  # non-deterministic: the park refused
        with pytest.raises(LookupError):
            await crash_run(rt, "u")
        clock.advance(1.0)
        with pytest.raises(RunParkedError):
            await rt.handle("u").result()
    assert store.parks == 2
    assert entered == []


STORE_FAULTS: dict[str, tuple[type[Event], list[str], int]] = {
    # the first append holding an event of this type fails: (log at the end, how many
    # times a `quick` body ran). A step's outcome goes out with the next append.
    "StepStarted": (
        StepStarted,
        ["RunStarted", *["StepStarted", "StepCompleted"] * 2, "RunCompleted"],
        2,
    ),
    "StepCompleted": (
        StepCompleted,
        ["RunStarted", "StepStarted", *["StepStarted", "StepCompleted"] * 2, "RunCompleted"],
        3,
    ),
    "RunCompleted": (
        RunCompleted,
        [
            *["RunStarted", "StepStarted", "StepCompleted", "StepStarted"],
            *["StepStarted", "StepCompleted", "RunCompleted"],
        ],
        3,
    ),
}


@pytest.mark.parametrize("failing", list(STORE_FAULTS), ids=list(STORE_FAULTS))
async def test_store_error_on_one_append_respawns_without_duplicate_events(failing: str) -> None:
    """A store failure on one append kills the task; the respawn finishes with a clean log."""
    kind, expected_log, bodies = STORE_FAULTS[failing]
    failed: list[Event] = []

    def fail_first(run_id: str, events: Sequence[Event]) -> bool:
        if not failed and any(isinstance(e, kind) for e in events):
            failed.extend(events)
            return True
        return False

    store = FaultyStore(MemoryStore(), fail_append=fail_first)
    async with runtime(store) as rt:
        handle = await start(rt, two_quick, 1, run_id="f")
        assert await handle.result() == 3
        events = await store.events_for("f")
        assert rt.stats.respawned == 1
    assert failed
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert kinds(list(events)) == expected_log
    assert one_outcome_per_position(events)
    assert entered == ["quick"] * bodies


async def test_resume_clears_a_park_and_runs_the_run_again() -> None:
    """`rt.resume(run_id)` unparks a parked run and runs it from its log to the end."""
    global explode  # noqa: PLW0603 - the "deployed fix" of this test
    store = MemoryStore()
    async with runtime(store, config=BUDGET) as rt:
        handle = await start(rt, meltdown, run_id="m")
        with pytest.raises(RunParkedError):
            await handle.result()
        explode = False
        await rt.resume("m")
        assert await handle.result() == "cool"
        assert await store.list_runs(parked=True) == []


# -- start-up and shutdown ---------------------------------------------------------------


async def test_start_up_resumes_runs_a_closed_runtime_left_unfinished() -> None:
    """A second runtime on the same store finishes the runs the first left mid-step."""
    store = MemoryStore()
    async with runtime(store) as first:
        await start(first, quick_then_gated, 1, run_id="a")
        await start(first, quick_then_gated, 2, run_id="b")
        await wait_until(lambda: {"gated 2", "gated 3"} <= set(entered))
    assert {i.run_id for i in await store.list_runs(status=RunStatus.RUNNING)} == {"a", "b"}
    gate.set()
    async with runtime(store) as second:
        assert await second.handle("a").result() == 20
        assert await second.handle("b").result() == 30
        assert second.stats.spawned == 2
    # Only the steps in flight ran again; `quick` had completed and was replayed.
    assert entered.count("quick") == 2


async def test_closing_the_runtime_marks_no_run_failed() -> None:
    """Runs cut off by closing the runtime stay running and unparked, with no RunFailed."""
    store = MemoryStore()
    async with runtime(store) as rt:
        await start(rt, quick_then_gated, 1, run_id="a")
        await wait_until(lambda: "gated 2" in entered)
    info = await store.get_run("a")
    assert info is not None
    assert (info.status, info.parked) == (RunStatus.RUNNING, False)
    assert kinds(await store.events_for("a")) == [
        "RunStarted",
        "StepStarted",
        "StepCompleted",
        "StepStarted",
    ]


async def test_cancelling_the_task_that_holds_the_runtime_marks_no_run_failed() -> None:
    """Cancelling the whole runtime from outside records nothing for its runs."""
    store = MemoryStore()

    async def application() -> None:
        async with runtime(store) as rt:
            await start(rt, quick_then_gated, 1, run_id="a")
            await start(rt, quick_then_gated, 2, run_id="b")
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(application())
    await wait_until(lambda: {"gated 2", "gated 3"} <= set(entered))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    for info in await store.list_runs():
        assert (info.status, info.parked) == (RunStatus.RUNNING, False)
        assert "RunFailed" not in kinds(await store.events_for(info.run_id))


@pytest.mark.parametrize("workflows", [[], [unrelated]], ids=["no-workflows", "other-workflows"])
async def test_unknown_workflow_at_resume_leaves_the_run_alone(
    workflows: list[Workflow[..., Any]],
) -> None:
    """A run whose workflow the new runtime does not know is neither parked nor changed,
    and a runtime that knows the workflow finishes it afterwards."""
    store = MemoryStore()
    async with runtime(store) as first:
        await start(first, quick_then_gated, 1, run_id="u")
        await wait_until(lambda: "gated 2" in entered)
    log = list(await store.events_for("u"))
    gate.set()
    async with runtime(store, workflows=workflows) as second:
        await second.resume("u")  # a resume does not run it either
        await asyncio.sleep(0.05)
        assert second.stats.spawned == 0
    info = await store.get_run("u")
    assert info is not None
    assert (info.status, info.parked) == (RunStatus.RUNNING, False)
    assert await store.events_for("u") == log
    assert entered == ["quick", "gated 2"]
    async with runtime(store) as third:
        await third.handle("u").result()
