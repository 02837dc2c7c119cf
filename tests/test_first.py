"""`aruntime.first`: the first to complete wins, the winner is recorded, losers never act."""

from __future__ import annotations

import asyncio

import pytest
from run_helpers import kinds, wait_until

import aruntime
from aruntime import Client, Runtime, step, workflow
from aruntime._decide import Mismatch
from aruntime._decide_ops import Winner, next_first_action
from aruntime.events import FirstWon
from aruntime.state import replay
from aruntime.store import MemoryStore
from aruntime.testing import crash_run

bodies: list[str] = []
slow_seconds = {"a": 5.0, "b": 0.0}


@step
async def racer(name: str) -> str:
    bodies.append(name)
    await asyncio.sleep(slow_seconds[name])
    return name


@workflow(name="first_test.race")
async def race() -> str:
    winner = await aruntime.first(racer("a"), racer("b"))
    await aruntime.receive()  # holds the run so that a test can crash it here
    return str(winner)


@workflow(name="first_test.approval_or_reminder")
async def approval_or_reminder(seconds: float) -> str:
    async def reminder() -> str:
        await aruntime.sleep(seconds)
        return "reminder"

    return str(await aruntime.first(aruntime.receive("approval"), reminder()))


@workflow(name="first_test.counted")
async def counted(n: int) -> str:
    return str(await aruntime.first(*[racer("b") for _ in range(n)]))


@pytest.fixture(autouse=True)
def _reset() -> None:
    bodies.clear()
    slow_seconds.update(a=5.0, b=0.0)


async def test_the_first_to_complete_wins_and_the_rest_are_cancelled() -> None:
    """The quick step wins; the slow one is cancelled; the winner is recorded."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(race, run_id="r")
        await wait_until(lambda: _has(store, "r", "FirstWon"))
        await client.send("r", "go")
        assert await handle.result() == "b"
    assert sorted(bodies) == ["a", "b"]


async def _has(store: MemoryStore, run_id: str, kind: str) -> bool:
    return kind in kinds(await store.events_for(run_id))


async def test_replay_keeps_the_recorded_winner_and_starts_no_loser() -> None:
    """After a crash the recorded winner wins again, though the loser would now be quicker,
    and the loser's step, never completed, is not run again."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(race, run_id="rr")
        await wait_until(lambda: _has(store, "rr", "FirstWon"))
        slow_seconds.update(a=0.0, b=5.0)
        await crash_run(rt, "rr")
        await client.send("rr", "go")
        assert await handle.result() == "b"
    assert sorted(bodies) == ["a", "b"]


async def test_a_message_beats_a_durable_reminder() -> None:
    """A receive and a sleep race; a message that comes first wins."""
    async with Runtime() as rt, Client(rt.store) as client:
        handle = await rt.start(approval_or_reminder, 30.0, run_id="ap")
        await wait_until(lambda: _has(rt.store, "ap", "ReceiveStarted"))  # type: ignore[arg-type]
        await client.send("ap", "approved", topic="approval")
        assert await handle.result() == "approved"


async def test_a_reminder_wins_when_no_message_comes() -> None:
    """The sleep wins when nothing is sent; the receive is cancelled, not timed out."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        handle = await rt.start(approval_or_reminder, 0.02, run_id="rem")
        assert await handle.result() == "reminder"
    assert "ReceiveTimedOut" not in kinds(await store.events_for("rem"))


async def test_first_with_another_number_of_awaitables_is_non_deterministic() -> None:
    """A replayed first whose recorded winner it no longer has parks the run, naming it."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        handle = await rt.start(counted, 3, run_id="n")
        assert await handle.result() == "b"
    log = await store.events_for("n")
    won = next(e for e in log if isinstance(e, FirstWon))
    state = replay(log[: won.sequence])
    assert next_first_action(state, "1", count=3) == Winner(won.winner)
    shrunk = FirstWon(sequence=won.sequence, at=won.at, position=1, winner=2)
    mismatch = next_first_action(replay([*log[: won.sequence - 1], shrunk]), "1", count=2)
    assert isinstance(mismatch, Mismatch)
    assert "won by awaitable 2" in mismatch.recorded
