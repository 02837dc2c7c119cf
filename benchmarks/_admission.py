"""The admission workload: what one admission of a queue costs as its backlog grows.

For each backlog of W waiting runs (`--levels`, default 1,000, 10,000 and 50,000) and
two partition counts P (10, and W / 10: many tenants), on a fresh store (a fresh file,
a fresh PostgreSQL schema):

* a burst of starts: W `RunStarted` events on queue "bench", run i in partition
  `k{i % P}`, appended straight through `store.append` (no runtime), `BURST` of them
  gathered at a time, as a burst of `Client.start` calls would write them;
* the first admission, timed: `store.admit({"bench": Queue("bench", concurrency=C)},
  {"w"}, time.time)` (C = `--concurrency`, default 100), which lets C runs in;
* then `--repeat` cycles (default 5) of: end the C runs just admitted (a `RunCompleted`
  at sequence 2 each, off the clock), and time the next admission of C.

The figures of each (W, P): the first admission apart (it meets cold caches and, on
PostgreSQL, a table whose statistics were gathered before the burst, if at all), and
the median [min .. max] of the cycles' admissions after it. The burst's duration is
reported too (not a figure of the admission; it says what the backlog cost to write).

Every backlog must hold at least (cycles + 1) x C runs, so that every admission timed
has C runs to let in. Every admission is checked as it returns: it admitted exactly C
runs, all distinct, each one of the runs started, none admitted before. After the last
cycle the store must show exactly those runs admitted (`admitted_at`). Anything else
raises `AdmissionCheckError`, which stops the invocation (exit status 2).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aruntime import EventStore, Queue
from aruntime.events import RunCompleted, RunStarted
from benchmarks._aruntime_side import StoreSpec, discard
from benchmarks._harness import Progress, spread

__all__ = [
    "BURST",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CYCLES",
    "DEFAULT_LEVELS",
    "AdmissionCheckError",
    "Cell",
    "check_admission",
    "measure",
    "partition_counts",
    "render_table",
    "run_all",
    "smallest_backlog",
]

QUEUE_NAME = "bench"
WORKFLOW = "w"
DEFAULT_LEVELS = (1_000, 10_000, 50_000)
"""The backlogs W measured unless `--levels` says otherwise."""
DEFAULT_CONCURRENCY = 100
"""The queue's concurrency C (runs per admission) unless `--concurrency` says otherwise."""
DEFAULT_CYCLES = 5
"""End-and-admit cycles after the first admission unless `--repeat` says otherwise."""
BURST = 1_000
"""Starts appended at once (one `asyncio.gather`)."""
FEW_PARTITIONS = 10
ARGS = "[[],{}]"


class AdmissionCheckError(Exception):
    """An admission let in the wrong number of runs, a run twice, or one never started;
    or the store's record of who was admitted disagrees with what admit() returned."""


@dataclass(slots=True)
class Cell:
    """What one (W, P) measured, on its own fresh store."""

    waiting: int
    partitions: int
    burst_s: float
    first_s: float
    cycles_s: list[float] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)
    """Runs let in by each admission, the first included."""
    partitions_admitted: list[int] = field(default_factory=list)
    """Distinct partitions of each admission, the first included."""

    @property
    def key(self) -> str:
        return f"w{self.waiting}_p{self.partitions}"

    def figures(self) -> dict[str, dict[str, Any]]:
        return {
            f"{self.key}_first_ms": spread([self.first_s * 1e3]),
            f"{self.key}_admit_ms": spread([s * 1e3 for s in self.cycles_s]),
            f"{self.key}_burst_s": spread([self.burst_s]),
            f"{self.key}_starts_per_s": spread([self.waiting / self.burst_s]),
            f"{self.key}_admitted": spread(self.admitted),
            f"{self.key}_partitions_admitted": spread(self.partitions_admitted),
        }


def partition_counts(waiting: int) -> list[int]:
    """The partition counts measured for a backlog of `waiting` runs: 10 and W / 10."""
    return sorted({min(FEW_PARTITIONS, waiting), max(1, waiting // 10)})


def smallest_backlog(limit: int, cycles: int) -> int:
    """The fewest waiting runs that let every one of the `cycles + 1` admissions admit
    `limit` runs."""
    return (cycles + 1) * limit


def run_name(i: int, width: int) -> str:
    return f"r{i:0{width}d}"


def check_admission(
    got: Sequence[str], expected: int, started: set[str], seen: set[str], where: str
) -> None:
    """Check one admission's runs against what it should have let in; add them to `seen`.

    Raises:
        AdmissionCheckError: not `expected` runs, a run twice in it, one not in
            `started`, or one already in `seen`.
    """
    problems: list[str] = []
    if len(got) != expected:
        problems.append(f"admitted {len(got)} runs, expected {expected}")
    distinct = set(got)
    if len(distinct) != len(got):
        twice = sorted(r for r in distinct if got.count(r) > 1)
        problems.append(f"admitted {twice[:3]} more than once in one admission")
    strangers = sorted(distinct - started)
    if strangers:
        problems.append(f"admitted runs never started: {strangers[:3]}")
    again = sorted(distinct & seen)
    if again:
        problems.append(f"admitted {len(again)} runs already admitted before, e.g. {again[:3]}")
    if problems:
        raise AdmissionCheckError(f"admission workload, {where}: " + "; ".join(problems))
    seen |= distinct


def measure(
    spec: StoreSpec,
    directory: Path,
    *,
    waiting: int,
    partitions: int,
    limit: int,
    cycles: int,
) -> Cell:
    """One (W, P) on a fresh store, in a fresh event loop (checked, see the module).

    Raises:
        ValueError: `waiting` is less than `smallest_backlog(limit, cycles)`.
        AdmissionCheckError: an admission or the store's record of it was wrong.
    """
    if waiting < smallest_backlog(limit, cycles):
        raise ValueError(
            f"a backlog of {waiting:,} runs cannot feed {cycles + 1} admissions of {limit}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        _measure(
            spec, directory, waiting=waiting, partitions=partitions, limit=limit, cycles=cycles
        )
    )


async def _measure(
    spec: StoreSpec, directory: Path, *, waiting: int, partitions: int, limit: int, cycles: int
) -> Cell:
    store = spec.open(directory, f"admission-{waiting}-{partitions}.db")
    await store.open()
    try:
        return await _on(store, waiting, partitions, limit, cycles)
    finally:
        await store.aclose()
        await discard(store)


async def _on(store: EventStore, waiting: int, partitions: int, limit: int, cycles: int) -> Cell:
    width = len(str(waiting - 1))
    names = [run_name(i, width) for i in range(waiting)]
    partition_of = {name: i % partitions for i, name in enumerate(names)}
    started = set(names)

    async def start(i: int) -> None:
        name = names[i]
        event = RunStarted(
            sequence=1,
            at=time.time(),
            run_id=name,
            workflow=WORKFLOW,
            args=ARGS,
            queue=QUEUE_NAME,
            partition_key=f"k{i % partitions}",
        )
        await store.append(name, [event], 0)

    t0 = time.perf_counter()
    for first in range(0, waiting, BURST):
        await asyncio.gather(*(start(i) for i in range(first, min(waiting, first + BURST))))
    burst = time.perf_counter() - t0

    queues = {QUEUE_NAME: Queue(QUEUE_NAME, concurrency=limit, register=False)}
    workflows = {WORKFLOW}
    seen: set[str] = set()
    where = f"W={waiting:,} P={partitions:,}"

    async def admit(number: int) -> tuple[float, list[str]]:
        gc.collect()
        t0 = time.perf_counter()
        admission = await store.admit(queues, workflows, time.time)
        elapsed = time.perf_counter() - t0
        got = admission.run_ids
        check_admission(got, limit, started, seen, f"{where}, admission {number}")
        return elapsed, got

    first_s, got = await admit(0)
    cell = Cell(waiting=waiting, partitions=partitions, burst_s=burst, first_s=first_s)
    cell.admitted.append(len(got))
    cell.partitions_admitted.append(len({partition_of[r] for r in got}))
    for number in range(1, cycles + 1):
        now = time.time()
        await asyncio.gather(
            *(store.append(r, [RunCompleted(sequence=2, at=now, result="null")], 1) for r in got)
        )
        elapsed, got = await admit(number)
        cell.cycles_s.append(elapsed)
        cell.admitted.append(len(got))
        cell.partitions_admitted.append(len({partition_of[r] for r in got}))
    recorded = {info.run_id for info in await store.list_runs() if info.admitted_at is not None}
    if recorded != seen:
        raise AdmissionCheckError(
            f"admission workload, {where}: the store shows {len(recorded)} runs admitted, "
            f"admit() returned {len(seen)}; differing: {sorted(recorded ^ seen)[:3]}"
        )
    return cell


def run_all(
    spec: StoreSpec,
    workdir: Path,
    levels: Sequence[int],
    *,
    limit: int,
    cycles: int,
    progress: Progress | None,
    settle: Callable[[], None] | None = None,
) -> list[Cell]:
    """Every (W, P) of `levels`, each on a fresh store; `settle()` runs between them."""
    cells: list[Cell] = []
    for waiting in levels:
        for partitions in partition_counts(waiting):
            cells.append(
                measure(
                    spec,
                    workdir / f"admission-{waiting}-{partitions}",
                    waiting=waiting,
                    partitions=partitions,
                    limit=limit,
                    cycles=cycles,
                )
            )
            if settle is not None:
                settle()
            if progress is not None:
                progress.update(waiting)
    return cells


def render_table(rep: dict[str, Any]) -> str:
    """The readable table: one row per (W, P), the first admission and the cycles'."""
    cfg = rep["config"]
    head = (
        f"{rep['workload']}: {rep['description']}\n"
        f"  store={cfg['store']}"
        + (f" synchronous={cfg['synchronous']}" if cfg.get("synchronous") else "")
        + f" concurrency={cfg['queue_concurrency']} cycles={cfg['repeat']}"
        + f" cores={cfg['machine']['cores']}"
    )
    block = rep["sides"]["aruntime"]
    if "skipped" in block:
        return head + f"\n  {block['skipped']}"
    figures = block["figures"]
    rows = [
        [
            "waiting W",
            "partitions P",
            "first admission ms",
            "admission ms, median [min .. max]",
            "burst of starts s",
        ]
    ]
    for waiting, partitions in cfg["cells"]:
        key = f"w{waiting}_p{partitions}"
        cycles = figures[f"{key}_admit_ms"]
        median = (
            "-"
            if cycles["median"] is None
            else f"{cycles['median']:,.2f} [{cycles['min']:,.2f} .. {cycles['max']:,.2f}]"
        )
        rows.append(
            [
                f"{waiting:,}",
                f"{partitions:,}",
                f"{figures[f'{key}_first_ms']['median']:,.2f}",
                median,
                f"{figures[f'{key}_burst_s']['median']:,.2f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head]
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
