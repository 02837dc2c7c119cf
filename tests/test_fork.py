"""Fork: a new run that copies an old one up to an operation and goes on with today's code."""

from __future__ import annotations

import pytest
from run_helpers import kinds

import aruntime
from aruntime import (
    Client,
    ConfigError,
    RunFailedError,
    RunIdConflictError,
    RunNotFoundError,
    RunStatus,
    Runtime,
    step,
    workflow,
)
from aruntime.errors import NonRetryableError
from aruntime.events import RunStarted
from aruntime.store import MemoryStore

bodies: list[str] = []
bug = {"on": True}


@step
async def fetch(order: str) -> str:
    bodies.append("fetch")
    return f"{order}-data"


@step
async def process(data: str) -> str:
    bodies.append("process")
    if bug["on"]:
        raise NonRetryableError("bug in process")
    return data.upper()


@workflow(name="fork_test.pipeline")
async def pipeline(order: str) -> str:
    data = await fetch(order)
    return await process(data)


@workflow(name="fork_test.with_message")
async def with_message() -> str:
    note = await aruntime.receive()
    return await process(str(note))


@pytest.fixture(autouse=True)
def _reset() -> None:
    bodies.clear()
    bug["on"] = True


async def test_a_fork_of_a_failed_run_finishes_after_the_fix() -> None:
    """The fork keeps the first step's result and runs the fixed step again."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        with pytest.raises(RunFailedError):
            await (await rt.start(pipeline, "o1", run_id="orig")).result()
        bug["on"] = False
        fork = await client.fork("orig", from_step="2", run_id="orig-fix")
        assert await fork.result(timeout=10) == "O1-DATA"
        state = await client.state("orig-fix")
    assert bodies == ["fetch", "process", "process"]
    assert state.forked_from == "orig"
    assert state.forked_at == "2"
    first = (await store.events_for("orig-fix"))[0]
    assert isinstance(first, RunStarted)
    assert first.run_id == "orig-fix"


async def test_a_fork_gets_the_messages_it_will_receive_again() -> None:
    """A fork from a receive gets the message the origin consumed there, and the pending
    ones come along."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(with_message, run_id="m")
        await client.send("m", "hello")
        with pytest.raises(RunFailedError):
            await handle.result()
        bug["on"] = False
        fork = await client.fork("m", from_step="1")
        assert await fork.result(timeout=10) == "HELLO"
        assert "MessageReceived" in kinds(await store.events_for(fork.run_id))


async def test_fork_is_refused_for_unknown_runs_steps_and_ids() -> None:
    """Forking needs an existing run, an operation it recorded and a new run id."""
    async with Runtime() as rt, Client(rt.store) as client:
        with pytest.raises(RunFailedError):
            await (await rt.start(pipeline, "o2", run_id="o2")).result()
        with pytest.raises(RunNotFoundError):
            await client.fork("nobody", from_step="1")
        with pytest.raises(ConfigError):
            await client.fork("o2", from_step="9")
        with pytest.raises(RunIdConflictError):
            await client.fork("o2", from_step="1", run_id="o2")


async def test_a_fork_waiting_for_a_runtime_is_a_pending_run() -> None:
    """Asked for while no runtime runs, the fork is a PENDING run of the origin's workflow
    until a runtime opens and finishes it."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        with pytest.raises(RunFailedError):
            await (await rt.start(pipeline, "o3", run_id="o3")).result()
    bug["on"] = False
    async with Client(store) as client:
        handle = await client.fork("o3", from_step="2", run_id="o3-fix")
        state = await handle.state()
        assert state.status is RunStatus.PENDING
        assert state.workflow == "fork_test.pipeline"
        listed = {info.run_id: info for info in await client.list()}
        assert listed["o3-fix"].status is RunStatus.PENDING
        async with Runtime(store):
            assert await handle.result(timeout=10) == "O3-DATA"
