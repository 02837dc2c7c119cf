"""The child process of the primitive kill tests: one run of one scenario on an SQLite file.

Run as `python tests/primitives_child.py --db runs.db --ledger ledger.txt --life N SCENARIO
[--seed S]`. It opens `Runtime("sqlite:///runs.db")`, which resumes the unfinished run at
start-up, prints `opened <wall time>`, starts the scenario's run `RUN_ID` (starting it
again finds the existing run), waits for its end, prints `outcome <json>` and exits 0.
The test kills it with SIGKILL at the moment that matters and starts it again with the
next `--life`.

The scenarios, one per primitive:
- `sleep`: a step, a durable sleep of `SLEEP` seconds, a step.
- `timeout`: one step with a timeout and three attempts; the attempts listed by
  `--slow` outlast the timeout, the others return at once.
- `cancel`: a long step; the child cancels the run once the step's body runs, and the
  workflow's `except asyncio.CancelledError:` runs a slow compensation step. With
  `--slow-stop` the long step's body takes `STOP` seconds to end once cancelled.
- `cancel-gather`: the same with two long steps gathered, `work` and `stubborn` (in that
  order, or the other with `--stubborn-first`); `stubborn`'s body takes `STOP` seconds to
  end once cancelled. The child cancels once both run.
- `branches`: `aruntime.gather` of three chains of two steps, each body sleeping a time
  drawn from the seed (`branch_delays`).
- `pair`: the shape of the reported bug, `aruntime.gather` of the chains a1 -> a2 and
  b1 -> b2, each step returning its own name (`aruntime.TaskGroup` with `--group`).
- `deadline`: started with `timeout=DEADLINE`; a step, then a durable sleep far past the
  deadline (with `--in-step`, a step as long), and a cleanup step of `--cleanup` seconds
  when the cancellation arrives.

Every step body appends `life identity label attempt phase wall-time` to the ledger
(O_APPEND, one write and an fsync per line): `begin` before it does anything, `end` just
before it returns, `cut` when it is cancelled (a timeout, the run's cancellation). The
ledger is the record of the side effects that happened, which the test holds against
the log. The test imports this module for the constants and `branch_delays`; importing
it declares no workflow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import aruntime
from aruntime import RetryPolicy, Runtime, Step, Workflow, current_step, step, workflow

RUN_ID = "prim"
SCENARIOS = ("sleep", "timeout", "cancel", "cancel-gather", "branches", "pair", "deadline")
SLEEP = 1.5
"""Seconds of the durable sleep of the `sleep` scenario."""
STEP_TIMEOUT = 0.3
"""The `timeout` scenario's step timeout."""
RETRY_DELAY = 0.05
"""Seconds from a timed-out attempt to the next."""
MAX_ATTEMPTS = 3
LONG = 60.0
"""Seconds a body sleeps that the test never lets finish."""
UNDO = 1.0
"""Seconds the compensation step of the `cancel` scenario takes."""
STOP = 1.0
"""Seconds the long body of the `cancel` scenario takes to stop with `--slow-stop`."""
CANCEL_REASON = "by the child"

DEADLINE = 1.0
"""The `deadline` scenario's run timeout."""
PAIR_DELAYS = {"a1": 0.4, "a2": 0.3, "b1": 0.05, "b2": 0.6}
"""b1 ends first, a1 next, a2 and b2 overlap: completion order differs from call order."""
BRANCHES = 3
LINKS = 2


def branch_label(branch: int, link: int) -> str:
    return f"c{branch}s{link}"


def branch_delays(seed: int) -> dict[str, float]:
    """How long each body of the `branches` scenario sleeps, by label."""
    rng = random.Random(f"branches:{seed}")
    return {
        branch_label(b, k): round(rng.uniform(0.05, 0.6), 3)
        for b in range(1, BRANCHES + 1)
        for k in range(1, LINKS + 1)
    }


def branches_result() -> list[list[str]]:
    """What the `branches` run returns, whatever the order its bodies ended in."""
    return [[branch_label(b, k) for k in range(1, LINKS + 1)] for b in range(1, BRANCHES + 1)]


class Ledger:
    """The append-only record of every body's begin and end."""

    def __init__(self, path: str, life: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._life = life

    def write(self, label: str, phase: str) -> None:
        ctx = current_step()
        line = f"{self._life} {ctx.identity} {label} {ctx.attempt} {phase} {time.time():.6f}\n"
        os.write(self._fd, line.encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def declare(
    ledger: Ledger, work_began: asyncio.Event, args: argparse.Namespace
) -> dict[str, Workflow[..., Any]]:
    """The scenarios' workflows, by scenario; their steps write to `ledger`, and
    `work_began` is set once the long bodies that the run is cancelled in have begun."""
    began: set[str] = set()
    cancel_when = {"work", "stubborn"} if args.scenario == "cancel-gather" else {"work"}
    slow_to_stop = {"stubborn", "work"} if args.slow_stop else {"stubborn"}

    @step(name="prim.note", retry=RetryPolicy(max_attempts=5, initial_delay=0.05, jitter=0.0))
    async def note(label: str, delay: float) -> str:
        ledger.write(label, "begin")
        began.add(label)
        if began >= cancel_when:
            work_began.set()
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            ledger.write(label, "cut")
            if label in slow_to_stop:
                await asyncio.sleep(STOP)
            raise
        ledger.write(label, "end")
        return label

    @step(
        name="prim.timed",
        timeout=STEP_TIMEOUT,
        retry=RetryPolicy(
            max_attempts=MAX_ATTEMPTS, initial_delay=RETRY_DELAY, backoff=1.0, jitter=0.0
        ),
    )
    async def timed(slow: list[int]) -> str:
        attempt = current_step().attempt
        ledger.write("timed", "begin")
        try:
            await asyncio.sleep(LONG if attempt in slow else 0.01)
        except asyncio.CancelledError:
            ledger.write("timed", "cut")
            raise
        ledger.write("timed", "end")
        return f"attempt {attempt}"

    @workflow(name="prim.timed")
    async def timed_run(slow: list[int]) -> str:
        return await timed(slow)

    return {"timeout": timed_run, **_workflows(note, args)}


def _workflows(
    note: Step[[str, float], str], args: argparse.Namespace
) -> dict[str, Workflow[..., Any]]:
    """Every scenario's workflow but `timeout`'s, made of `note` steps."""

    @workflow(name="prim.sleeper")
    async def sleeper() -> list[str]:
        before = await note("before", 0.0)
        await aruntime.sleep(SLEEP)
        return [before, await note("after", 0.0)]

    @workflow(name="prim.cancellable")
    async def cancellable() -> str:
        try:
            return await note("work", LONG)
        except asyncio.CancelledError:
            await note("undo", UNDO)
            raise

    @workflow(name="prim.cancel_gather")
    async def cancel_gather() -> list[str]:
        labels = ["stubborn", "work"] if args.stubborn_first else ["work", "stubborn"]
        try:
            return await aruntime.gather(*(note(label, LONG) for label in labels))
        except asyncio.CancelledError:
            await note("undo", UNDO)
            raise

    @workflow(name="prim.branches")
    async def branches(seed: int) -> list[list[str]]:
        delays = branch_delays(seed)

        async def chain(b: int) -> list[str]:
            return [await note(branch_label(b, k), delays[branch_label(b, k)]) for k in (1, 2)]

        return await aruntime.gather(*(chain(b) for b in range(1, BRANCHES + 1)))

    async def chain_of(first: str, second: str) -> list[str]:
        a = await note(first, PAIR_DELAYS[first])
        b = await note(second, PAIR_DELAYS[second])
        return [a, b]

    @workflow(name="prim.pair")
    async def pair() -> list[list[str]]:
        if not args.group:
            return await aruntime.gather(chain_of("a1", "a2"), chain_of("b1", "b2"))
        async with aruntime.TaskGroup() as tg:
            a = tg.create_task(chain_of("a1", "a2"))
            b = tg.create_task(chain_of("b1", "b2"))
        return [a.result(), b.result()]

    @workflow(name="prim.deadline")
    async def deadline() -> str:
        try:
            await note("before", 0.0)
            if args.in_step:
                await note("long", 5 * DEADLINE)
            else:
                await aruntime.sleep(5 * DEADLINE)
            return await note("after", 0.0)
        except asyncio.CancelledError:
            await note("cleanup", args.cleanup)
            raise

    return {
        "sleep": sleeper,
        "cancel": cancellable,
        "cancel-gather": cancel_gather,
        "branches": branches,
        "pair": pair,
        "deadline": deadline,
    }


async def run_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or find) the scenario's run and wait for its end; the outcome."""
    ledger = Ledger(args.ledger, args.life)
    work_began = asyncio.Event()
    workflows = declare(ledger, work_began, args)
    wf = workflows[args.scenario]
    run_args: tuple[Any, ...] = ()
    if args.scenario == "timeout":
        run_args = (args.slow,)
    elif args.scenario == "branches":
        run_args = (args.seed,)
    timeout = DEADLINE if args.scenario == "deadline" else None
    try:
        async with Runtime(f"sqlite:///{args.db}", workflows=[wf]) as rt:
            print("opened", f"{time.time():.6f}", flush=True)
            handle = await rt.start(wf, *run_args, run_id=RUN_ID, timeout=timeout)
            if args.scenario.startswith("cancel") and not (await handle.state()).cancel_requested:
                await work_began.wait()
                await handle.cancel(CANCEL_REASON)
            try:
                return {"status": "completed", "result": await handle.result()}
            except aruntime.RunCancelledError as exc:
                return {"status": "cancelled", "reason": exc.reason}
            except aruntime.RunFailedError as exc:
                return {
                    "status": "failed",
                    "error_type": exc.error_type,
                    "attempts": exc.attempts,
                }
    finally:
        ledger.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--life", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow", type=int, action="append", default=[])
    parser.add_argument("--slow-stop", action="store_true")
    parser.add_argument("--cleanup", type=float, default=0.0)
    parser.add_argument("--stubborn-first", action="store_true")
    parser.add_argument("--group", action="store_true")
    parser.add_argument("--in-step", action="store_true")
    args = parser.parse_args(argv)
    outcome = asyncio.run(run_scenario(args))
    print("outcome", json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
