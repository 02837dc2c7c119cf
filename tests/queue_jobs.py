"""A queued workload for the multi-process tests, imported by `aruntime worker --import
queue_jobs`: its queue is declared at import, so every worker admits from it.

Each step body writes `start RUN PID TIME` and `end RUN PID TIME` lines to the ledger
named by `ARUNTIME_TEST_LEDGER`, one `write` each, so lines from several processes never
interleave.
"""

from __future__ import annotations

import asyncio
import os
import time

from run_helpers import most_at_once as most_at_once_of

from aruntime import Queue, step, workflow

PAIR = Queue("queue_jobs.pair", concurrency=2)


def _note(what: str, run: str) -> None:
    line = f"{what} {run} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["ARUNTIME_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@step
async def slow_body(run: str, seconds: float) -> str:
    _note("start", run)
    await asyncio.sleep(seconds)
    _note("end", run)
    return run.upper()


@workflow
async def paired(run: str, seconds: float = 0.1) -> str:
    return await slow_body(run, seconds)


def most_at_once(lines: list[str]) -> dict[int, int]:
    """The most bodies open at once in each process, from ledger lines."""
    moves: dict[int, list[tuple[float, int]]] = {}
    for line in lines:
        what, _, pid, at = line.split()
        moves.setdefault(int(pid), []).append((float(at), 1 if what == "start" else -1))
    return {process: most_at_once_of(changes) for process, changes in moves.items()}
