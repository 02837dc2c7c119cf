"""A queued workflow for the PostgreSQL queue tests, imported by `aruntime worker --import
pg_queue_jobs`: importing it declares the queue `pgq_fleet` (concurrency 2), which every
worker then admits for.

Its step writes a `start` line when its body begins and an `end` line when it is done,
with the run, the worker's pid and the wall-clock time, to the ledger directory
(`ARUNTIME_LEDGER`), one file per process opened O_APPEND; `read_intervals` reads back
when each body ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from run_helpers import most_at_once as most_at_once_of

from aruntime import current_step, step, workflow
from aruntime.queues import Queue

QUEUE = Queue("pgq_fleet", concurrency=2)


def _line(kind: str) -> None:
    directory = os.environ.get("ARUNTIME_LEDGER")
    if not directory:
        return
    path = Path(directory) / f"queue-{os.getpid()}.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{kind} {current_step().run_id} {os.getpid()} {time.time()!r}\n".encode())
    finally:
        os.close(fd)


@step
async def pgq_timed(seconds: float) -> None:
    _line("start")
    await asyncio.sleep(seconds)
    _line("end")


@workflow
async def pgq_queued(seconds: float) -> str:
    await pgq_timed(seconds)
    return "done"


def in_flight(directory: Path, pid: int) -> list[str]:
    """The runs whose body began in worker `pid` and has not ended."""
    path = directory / f"queue-{pid}.txt"
    begun: list[str] = []
    for line in path.read_text().splitlines() if path.exists() else ():
        kind, run_id = line.split(" ")[:2]
        if kind == "start":
            begun.append(run_id)
        elif run_id in begun:
            begun.remove(run_id)
    return begun


def read_intervals(
    directory: Path, killed: dict[int, float] | None = None
) -> list[tuple[str, float, float]]:
    """`(run, start, end)` of every body that began, over every worker's file; a body
    cut short by its worker's SIGKILL ends at the kill's time (`killed`: pid -> time)."""
    killed = killed or {}
    open_bodies: dict[tuple[str, int], float] = {}
    intervals: list[tuple[str, float, float]] = []
    for path in directory.glob("queue-*.txt"):
        for line in path.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) != 4:
                continue  # cut short by a SIGKILL
            kind, run_id, pid, at = parts[0], parts[1], int(parts[2]), float(parts[3])
            if kind == "start":
                open_bodies[(run_id, pid)] = at
            elif (run_id, pid) in open_bodies:
                intervals.append((run_id, open_bodies.pop((run_id, pid)), at))
    for (run_id, pid), start in open_bodies.items():
        assert pid in killed, f"the body of {run_id} in {pid} never ended"
        intervals.append((run_id, start, killed[pid]))
    return intervals


def most_at_once(intervals: list[tuple[str, float, float]]) -> int:
    """The most bodies that ran at the same instant (an end before a start at a tie)."""
    return most_at_once_of(
        [(start, 1) for _, start, _ in intervals] + [(end, -1) for _, _, end in intervals]
    )
