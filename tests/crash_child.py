"""The child process of the crash tests: runs a workload on an SQLite file until killed.

Run as `python tests/crash_child.py --db runs.db --ledger ledger.txt --runs N --steps S
--seed X`. It opens `Runtime("sqlite:///runs.db")`, which resumes every unfinished run at
start-up, starts the runs `r000 ... r{N-1}` (starting an id again finds the existing run),
waits for every result and exits 0; a result other than the expected one exits 3. It
logs warnings and errors (a respawned run, a failed one) but not the planned failures, so
a sound run prints nothing.

Every step body appends `run_id position attempt` to the ledger (O_APPEND, one write and
an fsync per line) before it returns: the ledger is the record of the side effects that
happened, which the test holds against the log. Which steps fail on their first attempt,
each step's value and each run's result follow from the seed alone (`fails_first`,
`step_value`, `expected_result`), so the test computes them without running anything.
The test imports this module for those functions; importing it declares no workflow.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import zlib
from collections.abc import Sequence

import structlog
from structlog.types import EventDict, WrappedLogger

from aruntime import (
    NonRetryableError,
    RetryPolicy,
    Runtime,
    Workflow,
    current_step,
    step,
    workflow,
)

RUN_PREFIX = "r"
STEP_NAME = "crash_test.work"
WORKFLOW_NAME = "crash_test.chain"
MAX_BODY_SLEEP = 0.003
"""Seconds a step body sleeps at most after writing its ledger line."""
MAX_ATTEMPTS = 50
"""Far more than kills plus planned failures: no step may run out of attempts here."""
MODULUS = 2_147_483_647


def run_ids(runs: int) -> list[str]:
    """The ids of the workload's runs."""
    return [f"{RUN_PREFIX}{index:03d}" for index in range(runs)]


def _hash(*parts: object) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def fails_first(seed: int, run_id: str, position: int, share: float) -> bool:
    """Whether the step at `position` of `run_id` fails (transiently) on its attempt 1."""
    return _hash("fail", seed, run_id, position) % 10_000 < share * 10_000


def step_value(run_id: str, position: int) -> int:
    """What the step at `position` of `run_id` returns, on whatever attempt."""
    return _hash("value", run_id, position) % 1_000_003


def expected_result(run_id: str, steps: int) -> int:
    """The result of the run `run_id` of `steps` steps."""
    acc = 0
    for position in range(1, steps + 1):
        acc = (acc * 31 + step_value(run_id, position)) % MODULUS
    return acc


class TransientError(Exception):
    """A failure that the next attempt does not repeat."""


def drop_planned_failures(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Keep the planned failures out of the output, where anything else is a finding."""
    if event.get("event") == "step.failed" and event.get("error_type", "").endswith(
        TransientError.__name__
    ):
        raise structlog.DropEvent
    return event


async def run_workload(args: argparse.Namespace) -> int:
    """Start (or find) every run, wait for every result; the exit code."""
    seed: int = args.seed
    share: float = args.fail_share
    rng = random.Random(f"{seed}:{os.getpid()}")
    retry = RetryPolicy(
        max_attempts=MAX_ATTEMPTS, initial_delay=args.retry_delay, backoff=1.0, jitter=0.0
    )
    ledger = os.open(args.ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @step(name=STEP_NAME, retry=retry)
    async def work(position: int) -> int:
        ctx = current_step()
        os.write(ledger, f"{ctx.run_id} {ctx.position} {ctx.attempt}\n".encode())
        os.fsync(ledger)
        await asyncio.sleep(rng.uniform(0.0, MAX_BODY_SLEEP))
        if ctx.position != position:
            raise NonRetryableError(f"called at {position}, runs at {ctx.position}")
        if ctx.attempt == 1 and fails_first(seed, ctx.run_id, position, share):
            raise TransientError(f"{ctx.run_id} step {position} fails on its first attempt")
        return step_value(ctx.run_id, position)

    @workflow(name=WORKFLOW_NAME)
    async def chain(steps: int) -> int:
        acc = 0
        for position in range(1, steps + 1):
            acc = (acc * 31 + await work(position)) % MODULUS
        return acc

    wf: Workflow[..., int] = chain
    try:
        async with Runtime(f"sqlite:///{args.db}", workflows=[wf]) as rt:
            handles = [await rt.start(wf, args.steps, run_id=r) for r in run_ids(args.runs)]
            results = await asyncio.gather(*(h.result() for h in handles))
    finally:
        os.close(ledger)
    wrong = [
        f"{h.run_id}: {got} != {expected_result(h.run_id, args.steps)}"
        for h, got in zip(handles, results, strict=True)
        if got != expected_result(h.run_id, args.steps)
    ]
    if wrong:
        print("wrong results:", *wrong, sep="\n  ", file=sys.stderr)
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--fail-share", type=float, default=0.25)
    parser.add_argument("--retry-delay", type=float, default=0.01)
    args = parser.parse_args(argv)
    structlog.configure(
        processors=[drop_planned_failures, *structlog.get_config()["processors"]],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    return asyncio.run(run_workload(args))


if __name__ == "__main__":
    sys.exit(main())
