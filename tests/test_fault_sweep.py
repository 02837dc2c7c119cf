"""Every store operation of a run, made to fail in turn: nothing durable is lost or doubled.

The n-th operation sweep: a five-step run (one step fails once and is retried) is run once
cleanly to count its store operations, then once per operation n and per mode with the
n-th operation failing:

* `before`: the operation raises `StoreError` and does nothing (a failed write);
* `after`: the operation takes effect, then raises `StoreError` (an ambiguous commit: the
  caller cannot tell that its append is durable).

Whatever fails, the run must end completed with the right result, its log dense and
accepted by `replay`, every position completed exactly once, and no step body run after
its completion was durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest
import structlog
from conftest import STORES
from run_helpers import start

from aruntime import (
    RetryPolicy,
    RunParkedError,
    RunStatus,
    Runtime,
    current_step,
    replay,
    step,
    workflow,
)
from aruntime.errors import StoreError
from aruntime.events import Event, RunCompleted, StepCompleted
from aruntime.state import RunState
from aruntime.store import EventStore, MemoryStore
from aruntime.testing import FakeClock, FaultyStore

Mode = Literal["before", "after"]

bodies: list[tuple[str, int, int]] = []
"""(run id, position, attempt) of every body that ran, in order."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every case an empty body record."""
    bodies.clear()


@step(retry=RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0))
async def add(value: int, amount: int) -> int:
    here = current_step()
    bodies.append((here.run_id, here.position, here.attempt))
    if amount == 3 and here.attempt == 1:
        raise ConnectionError("flaky on the first attempt")
    return value + amount


@workflow
async def five_adds(start_at: int) -> int:
    value = start_at
    for amount in range(1, 6):
        value = await add(value, amount)
    return value


EXPECTED = 100 + 1 + 2 + 3 + 4 + 5


async def _run_once(
    inner: EventStore, fail_at: int | None, mode: Mode
) -> tuple[FaultyStore, list[Event]]:
    """Run `five_adds` to its end on a store whose `fail_at`-th operation fails; return
    the wrapper and the log as the store holds it afterwards."""
    store = FaultyStore(
        inner, fail_operations=() if fail_at is None else (fail_at,), ambiguous=mode == "after"
    )
    try:
        result = None
        for session in range(2):
            try:
                result = await _session(store)
                break
            except StoreError:
                # The fault hit the runtime's start-up (its scan for runs to resume):
                # entering again is the application's remedy.
                if session:
                    raise
        assert result == EXPECTED
        return store, await inner.events_for("sweep")
    finally:
        await inner.aclose()


async def _session(store: EventStore) -> int:
    """Start the run (again, if the first start fails) and wait for its result."""
    async with Runtime(store, clock=FakeClock(autojump=True), workflows=[five_adds]) as rt:
        try:
            handle = await start(rt, five_adds, 100, run_id="sweep")
        except StoreError:
            # The start failed; starting again is the caller's remedy, and idempotent.
            handle = await start(rt, five_adds, 100, run_id="sweep")
        try:
            return await handle.result()
        except StoreError:
            return await handle.result()


def _check_log(events: list[Event]) -> RunState:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    state = replay(events)
    assert state.status is RunStatus.COMPLETED
    completions = [e.position for e in events if isinstance(e, StepCompleted)]
    assert completions == [1, 2, 3, 4, 5]
    return state


def _check_bodies(events: list[Event]) -> None:
    """No body ran again after its step's completion was durable."""
    done = {e.position: e.attempt for e in events if isinstance(e, StepCompleted)}
    for _, position, attempt in bodies:
        assert attempt <= done[position]


@pytest.fixture(params=sorted(STORES))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return request.param, tmp_path


async def _sweep(kind: str, directory: Path, mode: Mode) -> list[str]:
    clean, _ = await _run_once(STORES[kind](directory / "clean"), None, mode)
    assert clean.operations >= 8
    failed: list[str] = []
    for n in range(1, clean.operations + 1):
        bodies.clear()
        case = directory / f"{mode}-{n}"
        case.mkdir()
        async with asyncio.timeout(10):  # a stranded run would wait forever
            store, events = await _run_once(STORES[kind](case), n, mode)
        assert len(store.failed) == 1, f"operation {n} was never reached"
        failed += store.failed
        _check_log(events)
        _check_bodies(events)
    return failed


@pytest.mark.parametrize("mode", ["before", "after"])
async def test_any_failed_store_operation_loses_and_doubles_nothing(
    make_store: tuple[str, Path], mode: Mode
) -> None:
    """Failing each store operation of a run in turn, before or after it takes effect,
    still ends the run completed once, with a dense log and every step recorded once."""
    kind, directory = make_store
    (directory / "clean").mkdir()
    failed = await _sweep(kind, directory, mode)
    assert {"list_runs", "append"} <= set(failed)


async def test_retried_start_after_an_ambiguous_commit_runs_the_run() -> None:
    """A start whose RunStarted was committed although the store reported an error: the
    retried start finds the run and this runtime runs it to its end."""
    store = FaultyStore(MemoryStore(), fail_operations=[2], ambiguous=True)  # 1: resume scan
    async with Runtime(store, clock=FakeClock(autojump=True), workflows=[five_adds]) as rt:
        with pytest.raises(StoreError):
            await start(rt, five_adds, 100, run_id="ambiguous")
        assert store.failed == ["append"]
        handle = await start(rt, five_adds, 100, run_id="ambiguous")
        assert await handle.result() == EXPECTED
    _check_log(await store.events_for("ambiguous"))


async def test_failed_final_append_respawns_with_the_store_error_as_cause() -> None:
    """A store error on the RunCompleted append respawns the run; the logged cause is the
    store's error, not the runner's internal unwinding."""
    failed: list[bool] = []

    def once_on_completion(run_id: str, events: Sequence[Event]) -> bool:
        if isinstance(events[-1], RunCompleted) and not failed:
            failed.append(True)
            return True
        return False

    store = FaultyStore(MemoryStore(), fail_append=once_on_completion)
    with structlog.testing.capture_logs() as logs:
        async with Runtime(store, clock=FakeClock(autojump=True), workflows=[five_adds]) as rt:
            handle = await start(rt, five_adds, 100, run_id="final")
            assert await handle.result() == EXPECTED
    respawned = [entry for entry in logs if entry["event"] == "run.respawned"]
    assert [entry["cause"] for entry in respawned] == ["StoreError: injected store fault"]
    _check_log(await store.events_for("final"))


@pytest.mark.parametrize("length", [3, 40], ids=["short", "long"])
async def test_store_outage_ends_completed_or_parked_never_stranded(
    make_store: tuple[str, Path], length: int
) -> None:
    """An outage during a run either is ridden out (the respawns back off) or parks the
    run once the budget is spent; a parked run resumes to the right result, and a run is
    never left unfinished with no task to run it."""
    kind, directory = make_store
    inner = STORES[kind](directory)
    store = FaultyStore(inner, fail_operations=range(4, 4 + length))
    try:
        async with Runtime(store, clock=FakeClock(autojump=True), workflows=[five_adds]) as rt:
            handle = await start(rt, five_adds, 100, run_id="outage")
            async with asyncio.timeout(10):
                try:
                    result = await handle.result()
                except RunParkedError:
                    assert length == 40
                    await rt.resume("outage")
                    result = await handle.result()
                else:
                    assert length == 3
        assert result == EXPECTED
        events = await inner.events_for("outage")
    finally:
        await inner.aclose()
    _check_log(events)
    _check_bodies(events)
