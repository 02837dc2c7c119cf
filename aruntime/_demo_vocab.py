"""Phase c of `aruntime demo`: branches, durable sleep and cancellation, checked.

Three kinds of run, on the same store as the other phases:

* fan-out: three branches (`aruntime.gather`) of two steps each, whose bodies finish in a
  seeded, scrambled order, then a durable sleep, then a step that joins the branches. A
  share of them is crashed (`crash_run`) while the branches are in flight. Each must
  return exactly what the plan computes, whatever order its steps finished in, with every
  operation recorded once under its structural identity (`1.1`, `1.2`, `2.1`, ...).
* reservations: reserve (a step), sleep durably for a minute, confirm. Each is cancelled
  while it sleeps; its cleanup releases the reservation with a step of its own. Each must
  end cancelled, with the release recorded once and the confirmation never run.
* a run started with a deadline (`timeout=`) that sleeps past it: it must end cancelled
  with the reason `timeout`.

Only the public API is used, and `aruntime.testing.crash_run` for the crashes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import aruntime
from aruntime._demo_checks import Report, plural
from aruntime.events import OperationCancelled, StepCompleted, op_identity
from aruntime.runtime import RunHandle, Runtime
from aruntime.state import RunStatus
from aruntime.store import EventStore
from aruntime.testing import crash_run

__all__ = ["phase_vocabulary"]

FAN_OUT_RUNS = 24
RESERVATIONS = 8
NAP = 0.05
"""Seconds of the fan-out runs' durable sleep."""

_delays: dict[tuple[str, int, int], float] = {}
"""(run, branch, step) -> seconds the body takes, from the seed."""
_in_flight: dict[str, asyncio.Event] = {}
"""Set when a fan-out run's first branch body begins: the moment to crash it."""
_released: Counter[str] = Counter()
_confirmed: Counter[str] = Counter()


@aruntime.step(name="aruntime.demo.part")
async def part(run: str, branch: int, index: int, value: int) -> int:
    reached = _in_flight.get(run)
    if reached is not None:
        reached.set()
    await asyncio.sleep(_delays.get((run, branch, index), 0.0))
    return value * 31 + branch * 7 + index


@aruntime.step(name="aruntime.demo.join")
async def join(values: list[int]) -> int:
    return sum(values) % 1_000_003


async def _chain(run: str, branch: int, seed: int) -> int:
    first = await part(run, branch, 1, seed)
    return await part(run, branch, 2, first)


@aruntime.workflow(name="aruntime.demo.fan_out")
async def fan_out(run: str, seed: int) -> int:
    values = await aruntime.gather(*(_chain(run, b, seed + b) for b in (1, 2, 3)))
    await aruntime.sleep(NAP)
    return await join(values)


def expected_fan_out(seed: int) -> int:
    """What `fan_out` returns, computed without running it."""
    values = []
    for branch in (1, 2, 3):
        first = (seed + branch) * 31 + branch * 7 + 1
        values.append(first * 31 + branch * 7 + 2)
    return sum(values) % 1_000_003


@aruntime.step(name="aruntime.demo.reserve")
async def reserve(item: str) -> str:
    return f"hold-{item}"


@aruntime.step(name="aruntime.demo.release")
async def release(hold: str) -> None:
    _released[hold] += 1


@aruntime.step(name="aruntime.demo.confirm")
async def confirm(hold: str) -> str:
    _confirmed[hold] += 1
    return hold


@aruntime.workflow(name="aruntime.demo.reservation")
async def reservation(item: str) -> str:
    hold = await reserve(item)
    try:
        await aruntime.sleep(60.0)
    except asyncio.CancelledError:
        await release(hold)  # the cleanup's step runs and is recorded normally
        raise
    return await confirm(hold)


@aruntime.workflow(name="aruntime.demo.overdue")
async def overdue() -> str:
    await aruntime.sleep(60.0)
    return "woke"


WORKFLOWS = (fan_out, reservation, overdue)


async def phase_vocabulary(store: EventStore | str, seed: int, report: Report) -> None:
    """Run phase c on `store` and report its checks."""
    report.line()
    report.line("Phase c, the workflow vocabulary: branches, durable sleep, cancellation")
    rng = random.Random(f"aruntime-demo:{seed}:c")
    runs = [f"c-fan-{i:03d}" for i in range(FAN_OUT_RUNS)]
    for run in runs:
        for branch in (1, 2, 3):
            for index in (1, 2):
                _delays[(run, branch, index)] = rng.random() * 0.01
    crashed = set(rng.sample(runs, FAN_OUT_RUNS // 3))
    _in_flight.update({run: asyncio.Event() for run in crashed})
    began = time.perf_counter()
    try:
        async with Runtime(store, workflows=list(WORKFLOWS)) as rt:
            await _fan_out(rt, runs, crashed, report)
            await _reservations(rt, report)
            await _deadline(rt, report)
    finally:
        _delays.clear()
        _in_flight.clear()
    report.info("phase c", f"took {time.perf_counter() - began:.2f} s")


async def _fan_out(rt: Runtime, runs: list[str], crashed: set[str], report: Report) -> None:
    handles = [await rt.start(fan_out, run, i, run_id=run) for i, run in enumerate(runs)]
    crashes: list[str] = []
    unequal: list[str] = []
    for run in sorted(crashed):
        await _in_flight[run].wait()
        try:
            before, after = await crash_run(rt, run)
        except LookupError as exc:
            crashes.append(f"{run}: {exc}")
            continue
        if before != after:
            unequal.append(run)
    wrong: list[str] = []
    doubled: list[str] = []
    for i, (run, handle) in enumerate(zip(runs, handles, strict=True)):
        result = await handle.result()
        if result != expected_fan_out(i):
            wrong.append(f"{run}: returned {result}, the plan says {expected_fan_out(i)}")
        events = await rt.store.events_for(run)
        done = Counter(
            op_identity(e.branch, e.position) for e in events if isinstance(e, StepCompleted)
        )
        expected = {f"{b}.{n}" for b in (1, 2, 3) for n in (1, 2)} | {"2"}
        if set(done) != expected or max(done.values()) != 1:
            doubled.append(f"{run}: completed operations {dict(sorted(done.items()))}")
    report.info(
        "fan-out",
        f"{plural(len(runs), 'run')} of 3 branches x 2 steps, a durable sleep and a join; "
        f"{len(crashed)} crashed with branches in flight",
    )
    report.check(
        not crashes and not unequal,
        f"{len(crashed) - len(crashes)}/{len(crashed)} crashes with branches in flight "
        "replayed the state they threw away",
        crashes + [f"{run}: replayed state differs" for run in unequal],
    )
    report.check(
        not wrong, f"{len(runs) - len(wrong)}/{len(runs)} fan-out results as planned", wrong
    )
    report.check(
        not doubled,
        "every branch operation (1.1 .. 3.2) and the join (2) completed exactly once",
        doubled,
    )


async def _reservations(rt: Runtime, report: Report) -> None:
    items = [f"c-res-{i}" for i in range(RESERVATIONS)]
    handles: list[RunHandle[str]] = [
        await rt.start(reservation, item, run_id=item) for item in items
    ]
    for item in items:  # cancel each once its sleep is durable
        # Polls the log, as an operator watching the run would; no event says "asleep".
        while not (await rt.state(item)).sleeps:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await rt.cancel(item, reason="customer changed their mind")
    problems: list[str] = []
    for item, handle in zip(items, handles, strict=True):
        try:
            await handle.result()
            problems.append(f"{item}: completed although cancelled")
        except aruntime.RunCancelledError as exc:
            if exc.reason != "customer changed their mind":
                problems.append(f"{item}: cancelled for {exc.reason!r}")
        state = await rt.state(item)
        events = await rt.store.events_for(item)
        if state.status is not RunStatus.CANCELLED:
            problems.append(f"{item}: ended {state.status.value}")
        if not any(isinstance(e, OperationCancelled) for e in events):
            problems.append(f"{item}: no record of where the cancellation landed")
        if _released[f"hold-{item}"] != 1 or _confirmed[f"hold-{item}"]:
            problems.append(
                f"{item}: released {_released[f'hold-{item}']}x, "
                f"confirmed {_confirmed[f'hold-{item}']}x"
            )
    report.check(
        not problems,
        f"{RESERVATIONS}/{RESERVATIONS} sleeping reservations cancelled: cleanup step released "
        "each once, none confirmed, each ended cancelled",
        problems,
    )


async def _deadline(rt: Runtime, report: Report) -> None:
    handle = await rt.start(overdue, run_id="c-overdue", timeout=0.2)
    began = time.perf_counter()
    reason = None
    try:
        await handle.result()
    except aruntime.RunCancelledError as exc:
        reason = exc.reason
    took = time.perf_counter() - began
    report.check(
        reason == "timeout" and took < 5.0,
        f"a run past its 0.2 s deadline ended cancelled (reason {reason!r}) after {took:.2f} s",
    )
