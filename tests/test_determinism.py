"""Determinism is checked (DESIGN §2.7): changed workflow code parks the run, appends nothing.

Each test records a run with one version of a workflow in a first runtime, closes it while
the run is blocked mid-step, and resumes the run in a second runtime that knows the
workflow's name only with changed code, as after a deployment.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from run_helpers import start, wait_until

from aruntime import (
    MemoryStore,
    RunParkedError,
    RunStatus,
    Runtime,
    Workflow,
    step,
    workflow,
)
from aruntime.events import Event
from aruntime.testing import FakeClock

entered: list[str] = []
gate = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty record and a closed gate."""
    global gate  # noqa: PLW0603 - the gate must belong to the test's own event loop
    entered.clear()
    gate = asyncio.Event()


@step
async def charge(x: int) -> int:
    entered.append("charge")
    return x


@step
async def ship(x: int) -> int:
    entered.append("ship")
    await gate.wait()
    return x


@step
async def refund(x: int) -> int:
    entered.append("refund")
    return -x


NAME = "test_determinism.order"


async def _order_v1(x: int) -> int:
    return await ship(await charge(x))


async def _order_v2_other_step(x: int) -> int:
    return await refund(await charge(x))


async def _order_v2_swallowing(x: int) -> int:
    value = await charge(x)
    try:
        return await refund(value)
    except Exception:
        return await refund(value + 1)


async def _order_v2_returns_early(x: int) -> int:
    return await charge(x)


async def _order_v2_raises_early(x: int) -> int:
    await charge(x)
    raise LookupError("the new code gives up before shipping")


# The same workflow name with five bodies; each runtime is given one of them. One process
# registers one function per name (`@workflow` refuses a second), so the versions after a
# deployment are made as `Workflow` objects, which registers nothing.
order_v1 = workflow(name=NAME)(_order_v1)
order_v2_other_step = Workflow(_order_v2_other_step, name=NAME)
order_v2_swallowing = Workflow(_order_v2_swallowing, name=NAME)
order_v2_returns_early = Workflow(_order_v2_returns_early, name=NAME)
order_v2_raises_early = Workflow(_order_v2_raises_early, name=NAME)


async def is_settled(store: MemoryStore, run_id: str) -> bool:
    """Parked, or (wrongly, for these tests) finished."""
    info = await store.get_run(run_id)
    return info is not None and (info.parked or info.status.terminal)


async def record_with_v1(store: MemoryStore) -> list[Event]:
    """Run `order_v1` until `ship` (position 2) is in flight, close the runtime, return the log."""
    async with Runtime(store, workflows=[order_v1], clock=FakeClock(autojump=True)) as rt:
        await start(rt, order_v1, 5, run_id="o")
        await wait_until(lambda: entered == ["charge", "ship"])
    gate.set()
    return list(await store.events_for("o"))


async def resume_with(store: MemoryStore, changed: Workflow[..., Any]) -> str:
    """Resume the run under `changed` code; return the reason it was parked for."""
    async with Runtime(store, workflows=[changed], clock=FakeClock(autojump=True)) as rt:
        await wait_until(lambda: is_settled(store, "o"))
        with pytest.raises(RunParkedError) as info:
            await rt.handle("o").result()
    return info.value.reason


async def test_other_step_at_a_recorded_position_raises_non_determinism_error() -> None:
    """The reason names the error, the position, the recorded and the requested step."""
    store = MemoryStore()
    await record_with_v1(store)
    reason = await resume_with(store, order_v2_other_step)
    assert reason.startswith("NonDeterminismError")
    assert "operation 2" in reason
    assert "recorded step 'ship'" in reason
    assert "asked for step 'refund'" in reason


async def test_non_deterministic_run_is_parked_and_stays_running() -> None:
    """A non-deterministic run is listed as parked, neither failed nor completed."""
    store = MemoryStore()
    await record_with_v1(store)
    await resume_with(store, order_v2_other_step)
    parked = await store.list_runs(parked=True)
    assert [(i.run_id, i.status) for i in parked] == [("o", RunStatus.RUNNING)]


async def test_non_deterministic_run_appends_nothing() -> None:
    """The log after the mismatch is exactly the log before it."""
    store = MemoryStore()
    log = await record_with_v1(store)
    await resume_with(store, order_v2_other_step)
    assert await store.events_for("o") == log
    # `charge` was replayed from the log; `refund` never ran.
    assert entered == ["charge", "ship"]


async def test_workflow_catching_exception_cannot_append_after_a_mismatch() -> None:
    """`except Exception` around the mismatched step neither catches it nor lets it append."""
    store = MemoryStore()
    log = await record_with_v1(store)
    reason = await resume_with(store, order_v2_swallowing)
    assert reason.startswith("NonDeterminismError")
    assert await store.events_for("o") == log
    assert entered == ["charge", "ship"]


async def test_workflow_returning_before_its_recorded_steps_is_non_deterministic() -> None:
    """A workflow that returns while the log holds a later step is parked, not completed."""
    store = MemoryStore()
    log = await record_with_v1(store)
    reason = await resume_with(store, order_v2_returns_early)
    assert reason.startswith("NonDeterminismError")
    assert "operation 2" in reason
    assert "recorded step 'ship'" in reason
    assert await store.events_for("o") == log


async def test_workflow_raising_before_its_recorded_steps_is_non_deterministic() -> None:
    """A workflow that raises while the log holds a later step is parked, not failed."""
    store = MemoryStore()
    log = await record_with_v1(store)
    reason = await resume_with(store, order_v2_raises_early)
    assert reason.startswith("NonDeterminismError")
    assert "operation 2" in reason
    assert "recorded step 'ship'" in reason
    assert await store.events_for("o") == log
