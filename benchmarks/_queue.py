"""The queue workload: throughput of runs started on a queue against runs started plainly.

N runs x S trivial steps (the throughput workload's chain), all started at once: one driver
task per run starts it and awaits its result, as `throughput` does. Each repeat measures
both ways, alternating which goes first, each on a fresh store and a fresh runtime:

* plain: `rt.start(wf, run, run_id=...)`, a runtime with no queue;
* queued: `rt.start(..., queue=q)` with `q = Queue("bench", concurrency=C)`, declared in
  that runtime only; its admitter admits C runs, and one more each time one ends.

steps/s is N x S over the time from the first start to the last result; the ratio
queued / plain compares the medians. Like the throughput workload's, every driver awaits
`handle.result()`, here for a run that still waits for its queue: the ratio includes
what waiting on such a run costs, not only what admitting it does.

After every measurement the store is read back (off the clock). Every run must have
completed, and on the queue been admitted. Then the limit: a run holds its place from its
admission to its end, `updated_at` (the index row of a completed run is last written with
its `RunCompleted`). Two counts of the most runs holding a place at once are taken, a
place freed at the instant another is taken counting as freed first:

* `most_admitted`, from `admitted_at` to its end, as recorded. Every store reads its clock
  inside the admission's transaction (in memory under its lock), after the end of every
  run whose place it takes was committed, so more than C is a violation;
* `most_running`, from the `at` of the run's first event after `RunStarted` (its first
  step, written by the run task the admitter spawned once the admission had committed) to
  its end: a sub-interval of the place it really held, so more than C is a violation on
  every store. On SQLite it comes close to the whole place; in memory a run's steps do not
  yield, so the runs execute one at a time and it says little.

A violation raises `QueueCheckError`, which stops the invocation.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from aruntime import EventStore, Queue, RunInfo, RunStatus, Runtime
from benchmarks._aruntime_side import (
    LoopResult,
    StoreSpec,
    _store_figures,
    build_workflow,
    closed_loop,
    discard,
)
from benchmarks._harness import Progress
from benchmarks.workloads import Probe, Workload, run_id

__all__ = [
    "DEFAULT_CONCURRENCY",
    "QUEUE_NAME",
    "QueueCheckError",
    "check_runs",
    "measure",
    "most_at_once",
    "unavailable",
]

QUEUE_NAME = "bench"
DEFAULT_CONCURRENCY = 100
"""The queue's concurrency unless `--concurrency` says otherwise."""


class QueueCheckError(Exception):
    """The store shows a run unfinished or never admitted, or more than C at once."""


def unavailable(kind: str) -> str | None:
    """Why the queue workload does not run on the store `kind`, or None when it does."""
    if kind == "postgres":
        return (
            "skipped: memory and sqlite only (on PostgreSQL the fleet's claim loop admits, "
            "not the admitter measured here)"
        )
    return None


def most_at_once(intervals: Iterable[tuple[float, float]]) -> int:
    """The most of `intervals` (start, end) that hold one instant; at equal times an end
    comes before a start (an admission follows the end it made room for)."""
    edges: list[tuple[float, int]] = []
    for start, end in intervals:
        edges.append((start, 1))
        edges.append((end, -1))
    edges.sort()  # -1 before +1 at the same instant
    most = held = 0
    for _, step in edges:
        held += step
        most = max(most, held)
    return most


def check_runs(
    infos: Sequence[RunInfo],
    running: Mapping[str, float],
    runs: int,
    limit: int | None,
    *,
    exact_admitted: bool,
) -> tuple[int, int]:
    """Check what the store shows after a measurement: `most_running` and `most_admitted`
    (see the module's docstring). `running` maps a run to the `at` of its first event after
    `RunStarted`; `exact_admitted` says that `admitted_at` is the admission's instant.

    Raises:
        QueueCheckError: not `runs` runs, one not completed, one not where it was started
            (on the queue or on none), one on the queue never admitted, or more than
            `limit` running at once (or admitted at once, if `exact_admitted`).
    """
    where = "no queue" if limit is None else f"queue {QUEUE_NAME!r} (concurrency {limit})"
    problems: list[str] = []
    if len(infos) != runs:
        problems.append(f"{len(infos)} runs in the store, {runs} started")
    unfinished = [i.run_id for i in infos if i.status is not RunStatus.COMPLETED]
    if unfinished:
        problems.append(f"{len(unfinished)} runs not completed, e.g. {unfinished[:3]}")
    wanted = None if limit is None else QUEUE_NAME
    misplaced = [i.run_id for i in infos if i.queue != wanted]
    if misplaced:
        problems.append(f"{len(misplaced)} runs not on {where}, e.g. {misplaced[:3]}")
    if limit is not None:
        waiting = [i.run_id for i in infos if i.admitted_at is None]
        if waiting:
            problems.append(f"{len(waiting)} runs never admitted, e.g. {waiting[:3]}")
    most_running = most_at_once(
        (running[i.run_id], i.updated_at) for i in infos if i.run_id in running
    )
    most_admitted = most_at_once(
        (i.admitted_at, i.updated_at) for i in infos if i.admitted_at is not None
    )
    if limit is not None and most_running > limit:
        problems.append(
            f"{most_running} runs running at once (from their first step to their end), "
            f"more than {limit}"
        )
    if limit is not None and exact_admitted and most_admitted > limit:
        problems.append(
            f"{most_admitted} runs admitted and unfinished at once (from admitted_at to "
            f"their end), more than {limit}"
        )
    if problems:
        raise QueueCheckError(f"queue workload on {where}: " + "; ".join(problems))
    return most_running, most_admitted


async def _first_moves(store: EventStore, infos: Sequence[RunInfo]) -> dict[str, float]:
    """When each run wrote its first event after `RunStarted`."""
    logs = await asyncio.gather(*(store.events_for(i.run_id, after=1) for i in infos))
    return {i.run_id: log[0].at for i, log in zip(infos, logs, strict=True) if log}


def measure(
    workload: Workload,
    spec: StoreSpec,
    directory: Path,
    *,
    limit: int | None,
    progress: Progress | None,
) -> tuple[LoopResult, tuple[int, int]]:
    """One measurement in a fresh event loop, on no queue (`limit` None) or on a queue of
    concurrency `limit`: what the closed loop saw, and `most_running` and `most_admitted`
    (checked, see `check_runs`)."""
    directory.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_measure(workload, spec, directory, limit, progress))


async def _measure(
    workload: Workload,
    spec: StoreSpec,
    directory: Path,
    limit: int | None,
    progress: Progress | None,
) -> tuple[LoopResult, tuple[int, int]]:
    probe = Probe(workload)
    wf = build_workflow(workload, probe)
    queue = None if limit is None else Queue(QUEUE_NAME, concurrency=limit, register=False)
    store = spec.open(directory)
    await store.open()
    try:
        async with Runtime(store, workflows=[wf], queues=[] if queue is None else [queue]) as rt:

            async def call(run: int) -> int:
                handle = await rt.start(wf, run, run_id=run_id(run), queue=queue)
                return await handle.result()

            gc.collect()
            cpu0, t0 = time.process_time(), time.perf_counter()
            wrong = await closed_loop(
                call,
                runs=workload.runs,
                concurrency=workload.runs,
                expected=workload.expected_result,
                run_latencies=None,
                progress=progress,
            )
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        infos = await store.list_runs()
        running = await _first_moves(store, infos)
        stats = await _store_figures(store)
    finally:
        await store.aclose()
        await discard(store)
        probe.close()
    most = check_runs(infos, running, workload.runs, limit, exact_admitted=True)
    events = stats.get("events")
    result = LoopResult(
        elapsed=elapsed,
        cpu=cpu,
        runs=workload.runs,
        steps=workload.total_steps,
        events=sum(info.version for info in infos) if events is None else events,
        wrong_results=wrong,
        probe=probe,
        store_stats=stats,
    )
    return result, most
