"""The store contract of queue admission (`EventStore.admit`), on every store."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from aruntime.events import RunCancelled, RunCompleted, RunStarted
from aruntime.queues import Queue, Rate
from aruntime.store import EventStore, _sqlite_schema
from aruntime.store.sqlite import SqliteConfig, SqliteStore

FLOW = frozenset({"flow"})


def queued(
    run_id: str,
    at: float,
    *,
    queue: str | None = "q",
    priority: int = 0,
    key: str | None = None,
    workflow: str = "flow",
    args: str = "[[],{}]",
) -> RunStarted:
    return RunStarted(
        sequence=1,
        at=at,
        run_id=run_id,
        workflow=workflow,
        args=args,
        queue=queue,
        priority=priority,
        partition_key=key,
    )


async def add(store: EventStore, *runs: RunStarted) -> None:
    for run in runs:
        await store.append(run.run_id, [run], 0)


async def end(store: EventStore, run_id: str) -> None:
    info = await store.get_run(run_id)
    assert info is not None
    event = RunCompleted(sequence=info.version + 1, at=time.time(), result="null")
    await store.append(run_id, [event], info.version)


async def admit(store: EventStore, queue: Queue) -> list[str]:
    return (await store.admit({queue.name: queue}, FLOW, time.time)).run_ids


async def test_a_queue_admits_up_to_its_concurrency(store: EventStore) -> None:
    """Runs hold their place until they end; an end lets the next one in."""
    queue = Queue("q", concurrency=2, register=False)
    await add(store, *(queued(f"r{i}", 100.0 + i) for i in range(5)))
    assert await admit(store, queue) == ["r0", "r1"]
    assert await admit(store, queue) == []
    info = await store.get_run("r0")
    assert info is not None
    assert info.queue == "q"
    assert info.admitted_at is not None
    waiting = await store.get_run("r3")
    assert waiting is not None
    assert waiting.queued
    assert waiting.admitted_at is None
    await end(store, "r0")
    assert await admit(store, queue) == ["r2"]


async def test_a_run_on_no_queue_is_not_queued(store: EventStore) -> None:
    """The index says a plain run waits for nothing."""
    run = RunStarted(sequence=1, at=1.0, run_id="plain", workflow="flow", args="[[],{}]")
    await add(store, run)
    info = await store.get_run("plain")
    assert info is not None
    assert info.queue is None
    assert not info.queued
    assert [i.run_id for i in await store.list_runs()] == ["plain"]


async def test_lower_priority_numbers_are_admitted_first(store: EventStore) -> None:
    """Priority beats arrival; arrival orders one priority."""
    queue = Queue("q", concurrency=3, register=False)
    await add(
        store,
        queued("late-urgent", 3.0, priority=-5),
        queued("early", 1.0),
        queued("low", 0.5, priority=7),
        queued("second", 2.0),
    )
    assert await admit(store, queue) == ["late-urgent", "early", "second"]
    info = await store.get_run("late-urgent")
    assert info is not None
    assert info.priority == -5


async def test_partitions_take_turns_across_admissions(store: EventStore) -> None:
    """A key just served goes behind the others, also in the next admission."""
    queue = Queue("q", concurrency=3, register=False)
    await add(
        store,
        *(queued(f"a{i}", 1.0 + i / 10, key="a") for i in range(4)),
        queued("b0", 2.0, key="b"),
        *(queued(f"c{i}", 3.0 + i / 10, key="c") for i in range(2)),
    )
    first = await admit(store, queue)
    assert first == ["a0", "b0", "c0"]
    info = await store.get_run("b0")
    assert info is not None
    assert info.partition_key == "b"
    for run_id in first:
        await end(store, run_id)
    assert await admit(store, queue) == ["a1", "c1", "a2"]


async def test_the_rate_limits_admissions_and_says_when_to_look_again(
    store: EventStore,
) -> None:
    """At most `count` per window; the admission says when the next one fits."""
    queue = Queue("q", rate=Rate(2, per=0.4), register=False)
    now = time.time()
    await add(store, *(queued(f"r{i}", now + i / 1000) for i in range(5)))
    admission = await store.admit({"q": queue}, FLOW, time.time)
    assert admission.run_ids == ["r0", "r1"]
    held = await store.admit({"q": queue}, FLOW, time.time)
    assert held.run_ids == []
    assert held.wait is not None
    assert 0 < held.wait <= 0.4
    await asyncio.sleep(held.wait + 0.05)
    assert await admit(store, queue) == ["r2", "r3"]


async def test_only_runs_that_can_run_here_are_admitted(store: EventStore) -> None:
    """Unknown workflows, parked runs, ended runs and other queues wait or are skipped."""
    queue = Queue("q", concurrency=5, register=False)
    await add(
        store,
        queued("other-workflow", 1.0, workflow="elsewhere"),
        queued("parked", 2.0),
        queued("cancelled", 3.0),
        queued("other-queue", 4.0, queue="p"),
        queued("ok", 5.0),
    )
    await store.park("parked", "test")
    await store.append("cancelled", [RunCancelled(sequence=2, at=3.5, reason="no")], 1)
    assert await admit(store, queue) == ["ok"]
    await store.unpark("parked")
    assert await admit(store, queue) == ["parked"]


async def test_concurrent_admissions_admit_each_run_once_within_the_limit(
    store: EventStore,
) -> None:
    """Admissions racing each other never exceed the limit together."""
    queue = Queue("q", concurrency=3, register=False)
    await add(store, *(queued(f"r{i}", 1.0 + i) for i in range(10)))
    results = await asyncio.gather(*(admit(store, queue) for _ in range(4)))
    admitted = [run_id for found in results for run_id in found]
    assert sorted(admitted) == ["r0", "r1", "r2"]


async def test_several_queues_are_admitted_in_one_call(store: EventStore) -> None:
    """Each queue keeps its own limit and its own turns."""
    one = Queue("one", concurrency=1, register=False)
    two = Queue("two", concurrency=2, register=False)
    await add(
        store,
        *(queued(f"one{i}", 1.0 + i, queue="one") for i in range(3)),
        *(queued(f"two{i}", 1.5 + i, queue="two") for i in range(3)),
    )
    admission = await store.admit({"one": one, "two": two}, FLOW, time.time)
    assert sorted(admission.run_ids) == ["one0", "two0", "two1"]


async def test_a_file_of_schema_version_3_gains_queues_and_keeps_its_runs(tmp_path: Path) -> None:
    """A file from before queues reads read-only as it is, then migrates on open for writing."""
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for migration in _sqlite_schema._MIGRATIONS[:3]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('application', 'aruntime'), ('schema_version', '3')")
        conn.execute(
            "INSERT INTO runs (run_id, workflow, status, version, created_at, updated_at) "
            "VALUES ('old', 'flow', 'running', 1, 1.0, 1.0)"
        )
    finally:
        conn.close()
    async with SqliteStore(path, SqliteConfig(read_only=True)) as reader:
        old = await reader.get_run("old")
        assert old is not None
        assert (old.queue, old.queued) == (None, False)
    async with SqliteStore(path) as owner:
        await add(owner, queued("new", 2.0))
        assert await admit(owner, Queue("q", concurrency=1, register=False)) == ["new"]
        assert [i.run_id for i in await owner.list_runs()] == ["old", "new"]


async def test_partitions_with_nothing_to_admit_do_not_hand_the_places_to_lower_priorities(
    store: EventStore,
) -> None:
    """A priority's runs go first even when most of its partitions hold runs left for
    another runtime: the places are not handed to a lower priority."""
    queue = Queue("q", concurrency=3, register=False)
    await add(
        store,
        *(queued(f"x{key}", 1.0 + i, key=key, workflow="elsewhere") for i, key in enumerate("abc")),
        *(queued(f"z{i}", 2.0 + i / 10, key="z") for i in range(3)),
        *(queued(f"low{i}", 0.5 + i / 10, priority=5) for i in range(3)),
    )
    assert await admit(store, queue) == ["z0", "z1", "z2"]


async def test_removing_ended_runs_resets_neither_the_rate_nor_the_turns(
    store: EventStore,
) -> None:
    """Deleting and pruning ended runs leaves the queue's window and standings as they were."""
    queue = Queue("q", rate=Rate(1, per=3600), register=False)
    await add(
        store, queued("a0", 1.0, key="a"), queued("a1", 1.1, key="a"), queued("b0", 2.0, key="b")
    )
    assert await admit(store, queue) == ["a0"]
    await end(store, "a0")
    await store.delete_run("a0")
    held = await store.admit({"q": queue}, FLOW, time.time)
    assert held.run_ids == []
    assert held.wait is not None
    assert held.wait > 3000
    fair = Queue("q", concurrency=1, register=False)  # the same runs, without the rate
    assert await admit(store, fair) == ["b0"]  # a was served last, even though a0 is gone
