"""The sleep workload: N runs all wake in the same second, then run one step each.

Run `i` of N is started with the wake-up time `wake_at + i / N * SPREAD` (SPREAD = 1 s):
the N wake-ups fall evenly in one second, as "10,000 runs waking in the same second"
reads. `wake_at` is chosen before the first start and far enough ahead (`lead`) that
starting them all is over before any wakes. Each run
calls `aruntime.sleep_until(wake_at)` (or `aruntime.sleep` of what is left, where there is
no `sleep_until`), notes how late it woke (`time.time() - wake_at` right after the sleep
returned), then calls one trivial step, whose body notes how late it began. While every
run is asleep the process measures the memory they hold, as the scale workload does:
resident memory after minus before the starts, per run, with tracemalloc in one extra
process (whose timings are not used).

Memory figures are only honest in a process that has not freed memory the runs could
reuse, so the parent (`measure`) runs each repeat as
`python -m benchmarks._sleep STORE SYNCHRONOUS RUNS TRACE WORKDIR` and reads one JSON
line back.

Durable sleep is newer than the rest of the runtime: when the `aruntime` in use has no
`sleep`, `unavailable` says so and nothing is measured.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aruntime
from aruntime import Runtime
from benchmarks._aruntime_side import StoreSpec, _WatchClock
from benchmarks._harness import (
    Progress,
    configure_logging,
    percentile,
    rss_bytes,
    run_child,
)
from benchmarks.workloads import run_id

__all__ = ["lead", "measure", "unavailable"]

MISSING = "skipped: this aruntime has no durable sleep (aruntime.sleep)"
SPREAD = 1.0
"""Seconds over which the runs' wake-up times are spread evenly."""


def unavailable() -> str | None:
    """Why the sleep workload cannot run on the `aruntime` in use, or None."""
    return None if hasattr(aruntime, "sleep") else MISSING


def lead(runs: int, *, trace: bool) -> float:
    """Seconds from the first start to the wake-up: enough to start and measure every run.

    Starting a run costs two durable appends (the run, its sleep); 0.3 ms per run leaves
    room for a slow disk, two seconds for a loaded machine, and tracemalloc makes
    everything about three times slower. When that is not enough, the report says so
    (`all_asleep_before_wake`).
    """
    return (2.0 + runs * 0.0003) * (3.0 if trace else 1.0)


def measure(
    store: StoreSpec, runs: int, *, trace: bool, workdir: Path, timeout: float = 1800
) -> dict[str, float]:
    """One sleep measurement in a fresh process: its figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = run_child(
        "sleep",
        "benchmarks._sleep",
        store.kind,
        store.synchronous,
        str(runs),
        "1" if trace else "0",
        str(workdir),
        timeout=timeout,
    )
    return figures


class _Observed:
    """What the runs saw, in wall-clock seconds after `wake_at`."""

    __slots__ = ("all_done", "done", "finished_at", "runs", "stepped", "woke")

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.woke: list[float] = []
        self.stepped: list[float] = []
        self.done = 0
        self.finished_at = 0.0
        self.all_done = asyncio.Event()


def _sleep_until() -> Callable[[float], Awaitable[None]]:
    """`aruntime.sleep_until` (epoch seconds), else `aruntime.sleep` of what is left."""
    # Looked up by name: the harness type-checks before and after durable sleep exists.
    until: Callable[[float], Awaitable[None]] | None = getattr(aruntime, "sleep_until", None)
    if until is not None:
        return until
    sleep: Callable[[float], Awaitable[None]] = getattr(aruntime, "sleep")  # noqa: B009

    def sleep_until(wake_at: float) -> Awaitable[None]:
        return sleep(max(0.0, wake_at - time.time()))

    return sleep_until


def _workflow(seen: _Observed) -> Any:
    wall = time.time
    sleep_until = _sleep_until()

    async def body(run: int, wake_at: float) -> int:
        seen.stepped.append(wall() - wake_at)
        return run

    step = aruntime.step(name="bench.sleep.step")(body)

    async def sleeper(run: int, wake_at: float) -> int:
        await sleep_until(wake_at)
        seen.woke.append(wall() - wake_at)
        result: int = await step(run, wake_at)
        seen.done += 1
        seen.finished_at = wall()
        if seen.done == seen.runs:
            seen.all_done.set()
        return result

    return aruntime.workflow(name="bench.sleep")(sleeper)


async def _run(
    store_spec: StoreSpec, runs: int, trace: bool, workdir: Path, progress: Progress
) -> dict[str, float]:
    import tracemalloc  # noqa: PLC0415

    seen = _Observed(runs)
    wf = _workflow(seen)
    clock = _WatchClock()
    store = store_spec.open(workdir)
    await store.open()
    try:
        async with Runtime(store, workflows=[wf], clock=clock) as rt:
            gc.collect()
            if trace:
                tracemalloc.start()
            traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
            rss0 = rss_bytes()
            t0 = time.time()
            wake_at = t0 + lead(runs, trace=trace)
            numbers = iter(range(runs))

            async def starter() -> None:
                for run in numbers:
                    own = wake_at + run / runs * SPREAD
                    await rt.start(wf, run, own, run_id=run_id(run))

            async with asyncio.TaskGroup() as group:
                for _ in range(min(1_000, runs)):
                    group.create_task(starter())
            while clock.suspended < runs and time.time() < wake_at:
                progress.set(clock.suspended)
                await asyncio.sleep(0.01)
            asleep = clock.suspended
            asleep_s = time.time() - t0
            progress.set(asleep)
            gc.collect()
            rss = rss_bytes() - rss0
            figures: dict[str, float] = {
                "runs_asleep": asleep,
                "seconds_to_sleep_all": asleep_s,
                "lead_s": wake_at - t0,
                "rss_bytes_per_run": rss / runs,
            }
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                figures["traced_bytes_per_run"] = (current - traced0) / runs
                figures["traced_peak_bytes_per_run"] = peak / runs
            figures["all_asleep_before_wake"] = float(asleep == runs and time.time() < wake_at)
            await seen.all_done.wait()
    finally:
        await store.aclose()
    figures.update(
        wake_p50_ms=percentile(seen.woke, 50) * 1e3,
        wake_p99_ms=percentile(seen.woke, 99) * 1e3,
        wake_max_ms=max(seen.woke) * 1e3,
        step_p50_ms=percentile(seen.stepped, 50) * 1e3,
        step_p99_ms=percentile(seen.stepped, 99) * 1e3,
        finished_s=seen.finished_at - (wake_at + SPREAD),
        runs_completed=seen.done,
    )
    return figures


def _child(argv: list[str]) -> None:
    kind, synchronous, runs, trace, workdir = argv
    configure_logging()
    label = "sleep" + (" (traced)" if trace == "1" else "")
    with Progress(label, int(runs)) as progress:
        figures = asyncio.run(
            _run(
                StoreSpec(kind=kind, synchronous=synchronous),
                int(runs),
                trace == "1",
                Path(workdir),
                progress,
            )
        )
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
