"""The floor workload: what one durable append cannot go below on this machine.

A step is one durable append that is waited for (`StepStarted` before the body; the
step's outcome goes out with that append of the next operation), and the SQLite store
commits every append on its writer thread, never on the event loop's. So a step run alone
costs at least one commit and one round trip between the loop and that thread. This
workload measures those parts one at a time, each as the median of `samples`
back-to-back operations:

* commit: one transaction as the writer makes it for a lone append (insert one event,
  update its run's index row), on a bare connection with the store's schema and pragmas,
  on the calling thread;
* hand-off: the event loop hands a job to a waiting thread, which hands it straight back
  (no work), as every append does;
* append: `SqliteStore.append` of one event, awaited, which is commit + hand-off plus the
  store's own work on both threads;
* step floor: commit + hand-off, the least a step can cost;
* step: one run at a time through a `Runtime` on the same kind of store, the time from one
  trivial step body's start to the next one's (every step's whole cost: its commit, the
  hand-offs, the runtime's own work); `step / append` is the figure the design holds to
  at most 1.25.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any, Literal

import aruntime
from aruntime.events import RunStarted, StepStarted
from aruntime.store import _sqlite_schema as schema
from aruntime.store.sqlite import SqliteConfig, SqliteStore
from benchmarks._aruntime_side import StoreSpec

__all__ = ["measure"]


def _timed(samples: int, operation: Callable[[int], object]) -> float:
    """The median seconds of `operation(i)` over `samples` calls."""
    clock = time.perf_counter
    times: list[float] = []
    for i in range(samples):
        t0 = clock()
        operation(i)
        times.append(clock() - t0)
    return median(times)


def _mode(synchronous: str) -> Literal["FULL", "NORMAL"]:
    return "NORMAL" if synchronous == "NORMAL" else "FULL"


def _commit(path: Path, synchronous: str, samples: int) -> float:
    conn = schema.connect(path, read_only=False, busy_timeout=5.0, synchronous=_mode(synchronous))
    try:
        schema.migrate(conn, path)
        conn.execute(
            "INSERT INTO runs (run_id, workflow, status, version, created_at, updated_at) "
            "VALUES ('floor', 'bench', 'running', 0, 0, 0)"
        )
        data = '{"position":1,"step":"bench.step","attempt":1}'

        def transaction(i: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO events (run_id, sequence, type, at, data) VALUES (?, ?, ?, ?, ?)",
                ("floor", i + 1, "StepStarted", time.time(), data),
            )
            conn.execute(
                "UPDATE runs SET version = ?, updated_at = ? WHERE run_id = ?",
                (i + 1, time.time(), "floor"),
            )
            conn.execute("COMMIT")

        return _timed(samples, transaction)
    finally:
        conn.close()


async def _handoff(samples: int) -> float:
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def echo() -> None:
        while (future := jobs.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=echo, name="floor-echo", daemon=True)
    thread.start()
    try:
        clock = time.perf_counter
        times: list[float] = []
        for _ in range(samples):
            t0 = clock()
            future = loop.create_future()
            jobs.put(future)
            await future
            times.append(clock() - t0)
        return median(times)
    finally:
        jobs.put(None)
        await asyncio.to_thread(thread.join)


async def _append(path: Path, synchronous: str, samples: int) -> float:
    config = SqliteConfig(synchronous=_mode(synchronous))
    async with SqliteStore(path, config) as store:
        started = RunStarted(sequence=1, at=time.time(), run_id="floor", workflow="b", args="[]")
        await store.append("floor", (started,), 0)
        clock = time.perf_counter
        times: list[float] = []
        for sequence in range(2, samples + 2):
            event = StepStarted(
                sequence=sequence, at=time.time(), position=sequence, step="bench.step", attempt=1
            )
            t0 = clock()
            await store.append("floor", (event,), sequence - 1)
            times.append(clock() - t0)
        return median(times)


_entered: list[float] = []


@aruntime.step(name="bench.floor_step")
async def _floor_step(i: int) -> int:
    _entered.append(time.perf_counter())
    return i


@aruntime.workflow(name="bench.floor_steps")
async def _floor_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await _floor_step(i)
    return total


async def _step(path: Path, synchronous: str, samples: int) -> float:
    config = SqliteConfig(synchronous=_mode(synchronous))
    _entered.clear()
    async with (
        SqliteStore(path, config) as store,
        aruntime.Runtime(store, workflows=[_floor_steps]) as rt,
    ):
        handle = await rt.start(_floor_steps, samples + 1)
        await handle.result()
    gaps = [b - a for a, b in itertools.pairwise(_entered)]
    return median(gaps)


def measure(store: StoreSpec, directory: Path, samples: int) -> dict[str, Any]:
    """The figures of one repeat, in microseconds."""
    directory.mkdir(parents=True, exist_ok=True)
    commit = _commit(directory / "commit.db", store.synchronous, samples)
    handoff = asyncio.run(_handoff(samples))
    append = asyncio.run(_append(directory / "append.db", store.synchronous, samples))
    step = asyncio.run(_step(directory / "step.db", store.synchronous, samples))
    return {
        "commit_us": commit * 1e6,
        "handoff_us": handoff * 1e6,
        "append_us": append * 1e6,
        "store_overhead_us": (append - commit - handoff) * 1e6,
        "step_floor_us": (commit + handoff) * 1e6,
        "step_us": step * 1e6,
        "step_per_append": step / append,
    }
