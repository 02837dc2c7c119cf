"""The replay workload: how fast `aruntime.replay` folds realistic logs.

Logs are built by a model of a run: a `RunStarted`, then steps that start and complete,
some attempts failing and being retried (`StepFailed` with a due time, then a new
`StepStarted`), and a `RunCompleted`. Every log is one a correct runner could write, so
the strict fold accepts it; each measurement checks that it did.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from aruntime import RunStatus, replay
from aruntime.events import Event, RunCompleted, RunStarted, StepCompleted, StepFailed, StepStarted
from benchmarks._aruntime_side import StoreSpec
from benchmarks.workloads import ReplaySpec

__all__ = ["measure_fold", "measure_load", "model_log"]

_STEP_NAMES = ("charge", "reserve", "ship", "notify", "audit", "refund", "score")


def model_log(size: int, rng: random.Random, failure_rate: float) -> list[Event]:
    """A valid log of exactly `size` events (>= 1) for one run.

    An even size ends with `RunCompleted`; an odd one leaves the run in flight, its last
    step started and not yet finished, as a crash would.
    """
    run_id = f"replay-{size}"
    at = 1_700_000_000.0
    events: list[Event] = [
        RunStarted(sequence=1, at=at, run_id=run_id, workflow="bench.model", args="[[42],{}]")
    ]
    finish = size % 2 == 0
    body = size - 1 - (1 if finish else 0)
    position = 0

    def seq() -> int:
        return len(events) + 1

    while body > 0:
        position += 1
        name = _STEP_NAMES[position % len(_STEP_NAMES)]
        attempt = 1
        at += 0.001
        events.append(StepStarted(sequence=seq(), at=at, position=position, step=name, attempt=1))
        body -= 1
        if body == 0:
            break
        # Each failure costs two events (StepFailed, StepStarted); the completion one.
        while body >= 3 and rng.random() < failure_rate:
            at += 0.002
            events.append(
                StepFailed(
                    sequence=seq(),
                    at=at,
                    position=position,
                    step=name,
                    attempt=attempt,
                    error_type="TimeoutError",
                    error_message=f"upstream timed out after 2.0s (attempt {attempt})",
                    retry_at=at + 0.5 * 2 ** (attempt - 1),
                )
            )
            attempt += 1
            at += 0.5 * 2 ** (attempt - 2)
            events.append(
                StepStarted(sequence=seq(), at=at, position=position, step=name, attempt=attempt)
            )
            body -= 2
        at += 0.003
        events.append(
            StepCompleted(
                sequence=seq(),
                at=at,
                position=position,
                step=name,
                attempt=attempt,
                result=f'{{"id":"{name}-{position}","ok":true,"amount":{position * 7 % 1000}}}',
            )
        )
        body -= 1
    if finish:
        events.append(RunCompleted(sequence=seq(), at=at + 0.001, result='{"ok":true}'))
    assert len(events) == size, (len(events), size)
    return events


def _check(state: Any, size: int) -> None:
    if state.version != size:
        raise AssertionError(f"replay folded {state.version} of {size} events")
    expected = RunStatus.COMPLETED if size % 2 == 0 else RunStatus.RUNNING
    if state.status is not expected:
        raise AssertionError(f"replay ended {state.status}, expected {expected}")


def _calibrate(log: list[Event], min_seconds: float) -> int:
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            replay(log)
        if time.perf_counter() - t0 >= min_seconds / 4 or loops >= 1 << 24:
            return max(1, int(loops * min_seconds / max(time.perf_counter() - t0, 1e-9) / 4))
        loops *= 4


def measure_fold(spec: ReplaySpec, size: int, seed: int) -> tuple[float, int]:
    """Events per second `replay` folds on a log of `size` events, and the loops timed."""
    log = model_log(size, random.Random(seed), spec.failure_rate)
    _check(replay(log), size)
    loops = _calibrate(log, spec.min_seconds)
    t0 = time.perf_counter()
    for _ in range(loops):
        replay(log)
    elapsed = time.perf_counter() - t0
    return size * loops / elapsed, loops


def measure_load(store: StoreSpec, directory: Path, size: int, seed: int) -> float:
    """Events per second to read, decode and fold one `size`-event log from the store."""

    async def go() -> float:
        log = model_log(size, random.Random(seed), ReplaySpec().failure_rate)
        first = log[0]
        assert isinstance(first, RunStarted)
        db = store.open(directory, f"replay-{size}.db")
        await db.open()
        try:
            await db.append(first.run_id, log, 0)
            t0 = time.perf_counter()
            state = replay(await db.events_for(first.run_id))
            elapsed = time.perf_counter() - t0
            _check(state, size)
        finally:
            await db.aclose()
        return size / elapsed

    return asyncio.run(go())
