"""Workflows for the fleet tests, imported by `aruntime worker --import fleet_jobs`.

Every body writes one line to a ledger before it does anything else: the run, the step's
identity and attempt, and the pid of the worker that ran it. The ledger is a directory
(`ARUNTIME_LEDGER`) with one file per worker process, each line written with one
`write` to a file opened with O_APPEND, so that a SIGKILL loses at most the line being
written, never corrupts another. The checks read it back with `read_ledger`.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import aruntime
from aruntime import RetryPolicy, current_step, step, workflow

_fd: int | None = None


def _ledger_line(line: str) -> None:
    global _fd  # noqa: PLW0603 - one ledger file per process, opened on first use
    directory = os.environ.get("ARUNTIME_LEDGER")
    if not directory:
        return
    if _fd is None:
        path = Path(directory) / f"ledger-{os.getpid()}.txt"
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, (line + "\n").encode())


def read_ledger(directory: Path) -> Counter[tuple[str, str, int]]:
    """How often each body (run, identity, attempt) ran, over every worker's file."""
    bodies: Counter[tuple[str, str, int]] = Counter()
    for path in directory.glob("ledger-*.txt"):
        for line in path.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) == 4:  # a line cut short by a SIGKILL has fewer
                bodies[(parts[0], parts[1], int(parts[2]))] += 1
    return bodies


def ledger_pids(directory: Path) -> dict[tuple[str, str, int], list[int]]:
    """The pids that ran each body."""
    pids: dict[tuple[str, str, int], list[int]] = {}
    for path in directory.glob("ledger-*.txt"):
        for line in path.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) == 4:
                key = (parts[0], parts[1], int(parts[2]))
                pids.setdefault(key, []).append(int(parts[3]))
    return pids


def expected_result(steps: int) -> int:
    """What `chaos` returns for `steps` steps."""
    return sum(10 * position for position in range(1, steps + 1))


@step(retry=RetryPolicy(max_attempts=50, initial_delay=0.2, max_delay=0.5, jitter=0.0))
async def work(position: int, seconds: float, fail_first: bool) -> int:
    ctx = current_step()
    _ledger_line(f"{ctx.run_id} {ctx.identity} {ctx.attempt} {os.getpid()}")
    await asyncio.sleep(seconds)
    if fail_first and ctx.attempt == 1:
        raise RuntimeError(f"step {position} fails its first attempt")
    return 10 * position


@workflow
async def chaos(steps: int, seconds: float, nap_at: int, nap: float, fail_every: int) -> int:
    """`steps` steps of `seconds` each, every `fail_every`-th failing its first attempt,
    and a durable sleep of `nap` seconds before step `nap_at`."""
    total = 0
    for position in range(1, steps + 1):
        if position == nap_at:
            await aruntime.sleep(nap)
        fail_first = fail_every > 0 and position % fail_every == 0
        total += await work(position, seconds, fail_first)
    return total
