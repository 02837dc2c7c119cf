"""Queues on PostgreSQL: the schema's migration, the admission contract for a fleet of
store objects, cancels of waiting runs, and worker processes that keep a queue's limit
together, also when one of them is killed."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from fleet_helpers import FAST_LEASES, FleetWorker, audit, held_by
from pg_helpers import PG_URL, pg_url
from pg_queue_jobs import in_flight, most_at_once, pgq_queued, read_intervals
from test_queue_store import end, queued

from aruntime import Client, RunCancelledError, Runtime, workflow
from aruntime.errors import SerializationError, StoreNotOwnerError, StoreVersionError
from aruntime.events import CancelRequested, RunCancelled, RunStarted
from aruntime.queues import Queue, Rate
from aruntime.state import RunStatus
from aruntime.store import EventStore, OwnerInfo
from aruntime.store._pg_schema import _MIGRATIONS, SCHEMA_VERSION
from aruntime.store._rows import encode_events, row_checksum
from aruntime.store.postgres import PostgresStore

WORKFLOW = "pgq_job"


@workflow(name="pgq_never_runs")
async def never_runs() -> None:
    raise AssertionError("a run that waits for its queue must not run")


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore.from_url(url) as opened:
        yield opened


def started(
    run_id: str,
    *,
    queue: str | None = "q",
    priority: int = 0,
    key: str | None = None,
    workflow: str = WORKFLOW,
    args: str = "[[],{}]",
) -> RunStarted:
    return queued(
        run_id, time.time(), queue=queue, priority=priority, key=key, workflow=workflow, args=args
    )


async def start(
    store: EventStore,
    run_id: str,
    *,
    queue: str | None = "q",
    priority: int = 0,
    key: str | None = None,
    workflow: str = WORKFLOW,
) -> None:
    """Start a run as a worker's `start(..., queue=...)` records it."""
    event = started(run_id, queue=queue, priority=priority, key=key, workflow=workflow)
    await store.append(run_id, [event], 0)


async def admitted(
    store: PostgresStore, queue: Queue, workflows: tuple[str, ...] = (WORKFLOW,)
) -> list[str]:
    return (await store.admit({queue.name: queue}, workflows, time.time)).run_ids


# -- the schema ---------------------------------------------------------------------------


async def test_a_version_1_database_is_migrated_and_its_runs_stay_readable(
    schema: str, url: str
) -> None:
    """A database written before queues (schema version 1) opens: its runs read back as
    they were, on no queue, and stay claimable; the queue columns and table are there."""
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        for statement in _MIGRATIONS[0]:
            await conn.execute(statement.format(s=schema))
        await conn.executemany(
            f"INSERT INTO {schema}.meta (key, value) VALUES ($1, $2)",
            [("application", "aruntime"), ("schema_version", "1")],
        )
        first = started("old", queue=None)
        run_id, sequence, type_name, at, data, _ = encode_events("old", [first])[0]
        # As version 1 wrote it: RunStarted without the placement fields.
        fields = {k: v for k, v in json.loads(data).items() if k not in _PLACEMENT}
        data = json.dumps(fields, separators=(",", ":"))
        await conn.execute(
            f"INSERT INTO {schema}.events (run_id, sequence, type, at, data, checksum) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            run_id,
            sequence,
            type_name,
            at,
            data,
            row_checksum(run_id, sequence, type_name, at, data),
        )
        await conn.execute(
            f"INSERT INTO {schema}.runs (run_id, workflow, status, version, created_at, "
            "updated_at) VALUES ('old', $1, 'running', 1, $2, $2)",
            WORKFLOW,
            at,
        )
    finally:
        await conn.close()
    async with PostgresStore.from_url(url) as store:
        info = await store.get_run("old")
        assert info is not None
        assert (info.queue, info.priority, info.partition_key, info.admitted_at) == (
            None,
            0,
            None,
            None,
        )
        assert not info.queued
        [event] = await store.events_for("old")
        assert isinstance(event, RunStarted)
        assert (event.queue, event.priority, event.partition_key) == (None, 0, None)
        await store.set_owner_info(OwnerInfo(pid=1, workflows=(WORKFLOW,)))
        assert await store.claim(10) == ["old"]
        assert await admitted(store, Queue("q", concurrency=1, register=False)) == []
    conn = await asyncpg.connect(PG_URL)
    try:
        version = await conn.fetchval(
            f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'"
        )
        assert version == str(SCHEMA_VERSION) == "2"
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.queues") == 0
    finally:
        await conn.close()


_PLACEMENT = ("queue", "priority", "partition_key")


async def test_a_database_of_a_newer_version_is_refused(schema: str, url: str) -> None:
    async with PostgresStore.from_url(url):
        pass
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(
            f"UPDATE {schema}.meta SET value = $1 WHERE key = 'schema_version'",
            str(SCHEMA_VERSION + 1),
        )
    finally:
        await conn.close()
    with pytest.raises(StoreVersionError, match="newer aruntime"):
        async with PostgresStore.from_url(url):
            pass


# -- what the index says --------------------------------------------------------------------


async def test_a_queued_run_carries_its_placement_and_is_held_by_nobody(
    store: PostgresStore,
) -> None:
    await store.set_owner_info(OwnerInfo(pid=1, workflows=(WORKFLOW,)))
    await start(store, "keyed", priority=-3, key="tenant-a")
    await start(store, "plain")
    await start(store, "free", queue=None)
    infos = {info.run_id: info for info in await store.list_runs()}
    keyed, plain, free = infos["keyed"], infos["plain"], infos["free"]
    assert (keyed.queue, keyed.priority, keyed.partition_key) == ("q", -3, "tenant-a")
    assert (plain.queue, plain.priority, plain.partition_key) == ("q", 0, None)
    assert keyed.queued
    assert plain.queued
    assert not free.queued
    assert not store.holds("keyed")
    assert not store.holds("plain")
    assert store.holds("free")  # a run on no queue is held by the worker that started it
    assert await store.claim(10) == []  # waiting runs are claimable by nobody
    assert await admitted(store, Queue("q", register=False)) == ["keyed", "plain"]
    assert sorted(await store.claim(10)) == ["keyed", "plain"]
    [info] = await store.get_runs(["plain"])
    assert info.admitted_at is not None
    assert not info.queued


async def test_a_placement_the_index_cannot_hold_fails_its_own_append_only(
    store: PostgresStore,
) -> None:
    bad = started("bad", priority=2**40)
    good = started("good")
    outcomes = await asyncio.gather(
        store.append("bad", [bad], 0), store.append("good", [good], 0), return_exceptions=True
    )
    assert isinstance(outcomes[0], SerializationError)
    assert outcomes[1] is None
    assert await store.get_run("bad") is None
    assert await store.get_run("good") is not None


# -- the admission contract ---------------------------------------------------------------


async def test_concurrency_counts_unfinished_admitted_runs(store: PostgresStore) -> None:
    queue = Queue("q", concurrency=2, register=False)
    for i in range(5):
        await start(store, f"r{i}")
    assert await admitted(store, queue) == ["r0", "r1"]
    assert await admitted(store, queue) == []
    await end(store, "r0")
    assert await admitted(store, queue) == ["r2"]
    await end(store, "r1")
    await end(store, "r2")
    assert await admitted(store, queue) == ["r3", "r4"]


async def test_a_rate_limit_says_how_long_to_wait(store: PostgresStore) -> None:
    queue = Queue("q", rate=Rate(2, per=0.5), register=False)
    for i in range(5):
        await start(store, f"r{i}")
    first = await store.admit({"q": queue}, [WORKFLOW], time.time)
    assert first.run_ids == ["r0", "r1"]
    held = await store.admit({"q": queue}, [WORKFLOW], time.time)
    assert held.run_ids == []
    assert held.wait is not None
    assert 0 < held.wait <= 0.5
    await asyncio.sleep(held.wait + 0.01)
    assert await admitted(store, queue) == ["r2", "r3"]
    await asyncio.sleep(0.51)
    last = await store.admit({"q": queue}, [WORKFLOW], time.time)
    assert last.run_ids == ["r4"]
    assert last.wait is None  # nothing waits any more


async def test_lower_priority_numbers_go_first(store: PostgresStore) -> None:
    for run_id, priority in [("late", 5), ("early", -1), ("normal", 0), ("normal2", 0)]:
        await start(store, run_id, priority=priority)
    queue = Queue("q", concurrency=3, register=False)
    assert await admitted(store, queue) == ["early", "normal", "normal2"]
    await end(store, "early")
    assert await admitted(store, queue) == ["late"]


async def test_partitions_take_turns_across_admissions_and_stores(
    store: PostgresStore, url: str
) -> None:
    for run_id, key in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("b2", "b")]:
        await start(store, run_id, key=key)
    await start(store, "n1")  # no key: a partition of its own
    unlimited = Queue("q", register=False)
    one = Queue("q", concurrency=1, register=False)
    assert await admitted(store, one) == ["a1"]
    await end(store, "a1")
    async with PostgresStore.from_url(url) as other:  # the turns are in the database
        assert await admitted(other, one) == ["b1"]
        await end(other, "b1")
    assert await admitted(store, one) == ["n1"]
    await end(store, "n1")
    assert await admitted(store, unlimited) == ["a2", "b2", "a3"]


async def test_parked_unknown_and_ended_runs_are_not_admitted(store: PostgresStore) -> None:
    await start(store, "parked")
    await store.park("parked", "by hand")
    await start(store, "stranger", workflow="someone_elses")
    await start(store, "gone")
    cancelled = RunCancelled(sequence=2, at=time.time(), reason="no")
    await store.append("gone", [cancelled], 1)
    await start(store, "elsewhere", queue="other")
    await start(store, "free", queue=None)
    await start(store, "ok")
    queue = Queue("q", concurrency=10, register=False)
    assert await admitted(store, queue) == ["ok"]
    await store.unpark("parked")
    assert await admitted(store, queue) == ["parked"]
    assert await admitted(store, queue, (WORKFLOW, "someone_elses")) == ["stranger"]
    infos = {info.run_id: info for info in await store.list_runs()}
    assert infos["gone"].admitted_at is None
    assert infos["elsewhere"].queued
    assert infos["free"].admitted_at is None
    assert infos["free"].queue is None


async def test_concurrent_admissions_admit_each_run_once(store: PostgresStore, url: str) -> None:
    """Four stores admit at once: the queue's lock in the database lets exactly
    `concurrency` runs in, each once."""
    for i in range(10):
        await start(store, f"r{i:02}")
    queue = Queue("q", concurrency=3, register=False)
    stores = [PostgresStore.from_url(url) for _ in range(4)]
    for each in stores:
        await each.open()
    try:
        for _ in range(3):
            found = await asyncio.gather(
                *(each.admit({"q": queue}, [WORKFLOW], time.time) for each in stores)
            )
            ids = [run_id for admission in found for run_id in admission.run_ids]
            assert len(ids) == len(set(ids))
            infos = await store.list_runs()
            live = [i for i in infos if i.admitted_at is not None and not i.status.terminal]
            assert len(live) == 3
            assert sorted(ids) == sorted(i.run_id for i in live)
            for info in live:
                await end(store, info.run_id)
    finally:
        for each in stores:
            await each.aclose()
    conn = await asyncpg.connect(PG_URL)
    try:
        turns = await conn.fetch(
            f"SELECT admit_turn FROM {store.schema}.runs WHERE admit_turn IS NOT NULL "
            "ORDER BY admit_turn"
        )
        assert [row[0] for row in turns] == list(range(1, 10))
    finally:
        await conn.close()


async def test_a_clients_store_does_not_admit(url: str) -> None:
    async with PostgresStore.from_url(url, owner=False) as client_store:
        with pytest.raises(StoreNotOwnerError):
            await client_store.admit({"q": Queue("q", register=False)}, [WORKFLOW], time.time)


async def test_the_end_of_an_admitted_run_wakes_the_other_workers(url: str) -> None:
    """Claim loops are woken when a place in a queue frees up, not a poll later."""
    slow = url.replace("poll_interval=0.1", "poll_interval=5")
    async with PostgresStore.from_url(slow) as ender, PostgresStore.from_url(slow) as waiter:
        await start(ender, "r")
        await admitted(ender, Queue("q", register=False))
        await waiter.wait_runnable(0.2)  # whatever earlier notifications said
        await waiter.wait_runnable(0.2)
        began = time.monotonic()
        ending = asyncio.ensure_future(end(ender, "r"))
        await waiter.wait_runnable(4.0)
        await ending
        assert time.monotonic() - began < 2.0


# -- cancels of waiting runs --------------------------------------------------------------


async def test_an_append_by_a_worker_leaves_a_waiting_run_waiting(store: PostgresStore) -> None:
    """An append to a waiting run by a worker that does not hold it commits (the run is
    free) but does not claim it: only its admission makes it runnable."""
    await start(store, "w")
    await store.append("w", [CancelRequested(sequence=2, at=time.time(), reason="x")], 1)
    info = await store.get_run("w")
    assert info is not None
    assert info.queued
    assert info.version == 2
    assert not store.holds("w")
    conn = await asyncpg.connect(PG_URL)
    try:
        owner = await conn.fetchval(f"SELECT owner FROM {store.schema}.runs WHERE run_id = 'w'")
        assert owner is None
    finally:
        await conn.close()


async def _start_waiting(url: str, run_id: str) -> None:
    async with PostgresStore.from_url(url) as starter:
        await start(starter, run_id, workflow=never_runs.name)


async def test_a_worker_cancels_a_waiting_run_at_once(url: str) -> None:
    async with Runtime(url, workflows=[never_runs], queues=[]) as rt:
        await _start_waiting(url, "w")
        assert await rt.cancel("w", reason="not needed") is RunStatus.CANCELLED
        info = await rt.store.get_run("w")
        assert info is not None
        assert info.status is RunStatus.CANCELLED
        assert info.queued


async def test_a_client_cancels_a_waiting_run(url: str) -> None:
    """The CANCEL request is applied by a worker although no worker holds the run, nor
    will claim it before it is admitted."""
    async with Runtime(url, workflows=[never_runs], queues=[]), Client(url) as client:
        await _start_waiting(url, "w")
        assert await client.cancel("w") is RunStatus.RUNNING
        with pytest.raises(RunCancelledError):
            await client.handle("w").result(timeout=10)


@workflow(name="pgq_quick")
async def quick() -> str:
    return "done"


async def test_a_worker_admits_at_its_queues_rate_without_polling(schema: str) -> None:
    """With polling all but off, the claim loop wakes when the rate lets the next run in."""
    url = pg_url(schema, **{**FAST_LEASES, "poll_interval": 5})
    queue = Queue("pgq_rate", rate=Rate(1, per=0.3), register=False)
    async with Runtime(url, workflows=[quick], queues=[queue]) as rt, Client(url) as client:
        began = time.monotonic()
        for i in range(3):
            await start(rt.store, f"r{i}", queue=queue.name, workflow=quick.name)
        for i in range(3):
            assert await client.handle(f"r{i}").result(timeout=10) == "done"
        assert time.monotonic() - began < 3.0
        infos = sorted(await rt.store.list_runs(), key=lambda info: info.admitted_at or 0.0)
        times = [info.admitted_at or 0.0 for info in infos]
        assert all(later - earlier >= 0.3 for earlier, later in itertools.pairwise(times))


# -- a fleet of worker processes ------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[list[FleetWorker]]:
    started_workers: list[FleetWorker] = []
    yield started_workers
    for worker in started_workers:
        if worker.alive():
            worker.kill()


async def _start_fleet(
    url: str, schema: str, directory: Path, workers: list[FleetWorker], count: int
) -> None:
    new = [FleetWorker(url, directory, f"w{i}", module="pg_queue_jobs") for i in range(count)]
    workers += new
    for worker in new:
        await worker.ready(schema)


async def _start_queued(url: str, run_ids: list[str], seconds: float) -> None:
    """Start `pgq_queued(seconds)` runs on the queue `pgq_fleet` from a client: a worker's
    inbox records each, and an admission lets it run."""
    async with Client(url) as client:
        for index, run_id in enumerate(run_ids):
            await client.start(
                pgq_queued, seconds, run_id=run_id, queue="pgq_fleet", partition_key=f"t{index % 3}"
            )


async def _results(url: str, run_ids: list[str]) -> list[object]:
    async with Client(url) as client:
        return [await client.handle(run_id).result(timeout=60) for run_id in run_ids]


@pytest.mark.slow
async def test_workers_keep_a_queues_limit_together(
    tmp_path: Path, url: str, schema: str, workers: list[FleetWorker]
) -> None:
    """Three worker processes, a queue of concurrency 2: never more than two bodies at
    once over the whole fleet, and every run completes."""
    await _start_fleet(url, schema, tmp_path, workers, 3)
    run_ids = [f"r{i:02}" for i in range(12)]
    await _start_queued(url, run_ids, 0.2)
    assert await _results(url, run_ids) == ["done"] * len(run_ids)
    intervals = read_intervals(tmp_path)
    assert sorted(run_id for run_id, _, _ in intervals) == run_ids
    assert most_at_once(intervals) == 2
    assert (await audit(schema)).violations == []


@pytest.mark.slow
async def test_a_killed_workers_admitted_run_keeps_its_place(
    tmp_path: Path, url: str, schema: str, workers: list[FleetWorker]
) -> None:
    """SIGKILL a worker while it runs a queued run: the run keeps its place in the queue
    until another worker has taken it over and finished it, so the limit still holds,
    and every run completes."""
    await _start_fleet(url, schema, tmp_path, workers, 3)
    run_ids = [f"r{i:02}" for i in range(10)]
    await _start_queued(url, run_ids, 0.5)
    deadline = time.monotonic() + 30
    victim: FleetWorker | None = None
    while victim is None:  # kill a worker in the middle of a body
        assert time.monotonic() < deadline, "no worker ran a body"
        victim = next((w for w in workers if in_flight(tmp_path, w.pid)), None)
        await asyncio.sleep(0.01)
    held = await held_by(schema, victim.pid)
    victim.kill()
    killed = {victim.pid: time.time()}
    assert await _results(url, run_ids) == ["done"] * len(run_ids)
    intervals = read_intervals(tmp_path, killed)
    assert most_at_once(intervals) == 2
    assert {run_id for run_id, _, _ in intervals} == set(run_ids)
    assert any(end == killed[victim.pid] for _, _, end in intervals)  # cut short
    found = await audit(schema)
    assert found.violations == []
    assert found.takeovers >= len(held) > 0
