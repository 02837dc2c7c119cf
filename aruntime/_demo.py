"""`aruntime demo`: many concurrent runs, injected faults and crashes, every promise checked.

Three phases, the first two each on its own runs of the seeded workload (`_demo_workload`):

a. In-process crashes. The runs execute in this process; a sample of run tasks is killed
   with `aruntime.testing.crash_run` in the middle of a step body. Each respawned task's
   replayed state must equal the state the crash threw away.
b. A real process crash (SQLite only). A child process (`aruntime demo --child`) runs the
   workload on the same database file; once a good part of the events are written, it is
   killed with SIGKILL. A fresh runtime in this process opens the file, which resumes every
   unfinished run, and each run's start-up state must equal `replay(events)` read from
   the file beforehand.

c. The workflow vocabulary (`_demo_vocab`): runs that fan out into branches, sleep
   durably and are crashed with branches in flight; reservations cancelled while they
   sleep, whose cleanup step releases them; a run cancelled by its deadline.
d. Messages and child runs (`_demo_messages`): approvals that publish their stage, assess
   the amount in a child run and wait for a decision sent from outside (some twice under
   one idempotency key), crashed right after receiving it.
e. A queue (`_demo_queues`): one tenant's burst, two small tenants and two urgent sends
   through four places, two cancelled while they wait: the limit, the priority and the
   fair turns checked from the store.

In phases a and b every run must end the way its plan says (result, or failing step and
error), and every log must be dense, complete, accepted by the strict fold, hold no step
completed twice, and start no retry before its due time. Each check compares what the
runtime did with what the plan or the log says; the summary prints which failed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aruntime._demo_checks import (
    Report,
    check_runs,
    demo_runtime,
    difference,
    plural,
    start_all,
    wait_all,
)
from aruntime._demo_kill import phase_kill, run_child
from aruntime._demo_messages import phase_messages
from aruntime._demo_queues import phase_queues
from aruntime._demo_vocab import phase_vocabulary
from aruntime._demo_workload import hooks, make_plans
from aruntime.runtime import Runtime
from aruntime.state import RunState
from aruntime.store import EventStore, MemoryStore
from aruntime.testing import crash_run

__all__ = ["DemoOptions", "fresh_database", "run_demo"]

CRASH_RATE = 0.125
"""Share of phase a's runs whose task is crashed once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What `aruntime demo` was asked to do."""

    runs: int = 200
    steps: int = 5
    seed: int = 1
    db: Path | None = None
    """The SQLite file; None runs on a memory store (no process-kill phase)."""
    child: bool = False
    """Run phase b's workload as the child process, writing to `db`, until killed."""


DEMO_WORKFLOWS = ("aruntime.demo", "aruntime.demo.%")
"""The names (SQL LIKE patterns) of the demo's own workflows."""


def fresh_database(path: Path, *, ours: bool) -> str | None:
    """Make way for the demo's database at `path`; None when done, else why not.

    The file and its WAL and shared-memory files are deleted when there is no file, when
    it holds nothing but the demo's own runs, or, with `ours` (the demo's default file
    name), when it is no database at all (a left-over). A database that holds any other
    run, or any other file the user named, is left alone.
    """
    if path.exists():
        foreign = _foreign_run(path)
        if foreign is not None and (foreign != "" or not ours):
            what = (
                f"holds run {foreign!r}, which is not the demo's"
                if foreign
                else "is not a database the demo made"
            )
            return (
                f"{path} {what}: the demo makes its database afresh and leaves this file "
                "alone; give it another --db"
            )
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return None


def _foreign_run(path: Path) -> str | None:
    """The id of a run in `path` that is not the demo's; "" if `path` is no aruntime
    database; None if every run in it is the demo's."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return ""
    try:
        row = conn.execute(
            "SELECT run_id FROM runs WHERE workflow != ? AND workflow NOT LIKE ? LIMIT 1",
            DEMO_WORKFLOWS,
        ).fetchone()
    except sqlite3.Error:
        return ""
    finally:
        conn.close()
    return None if row is None else str(row[0])


def run_demo(options: DemoOptions, out: IO[str] | None = None) -> int:
    """Run the demo; returns the process exit code (0 when every check holds)."""
    if options.child:
        assert options.db is not None
        asyncio.run(run_child(options.runs, options.steps, options.seed, options.db))
        return 0
    report = Report(out or sys.stdout)
    asyncio.run(_demo(options, report))
    return 0 if not report.failed else 1


async def _demo(options: DemoOptions, report: Report) -> None:
    began = time.perf_counter()
    where = f"sqlite:///{options.db}" if options.db is not None else "memory"
    report.line(
        f"aruntime demo: {options.runs} runs x {options.steps} steps per phase, "
        f"seed {options.seed}, store {where}"
    )
    store: EventStore | str = MemoryStore() if options.db is None else f"sqlite:///{options.db}"
    await _phase_crashes(options, store, report)
    if options.db is None:
        report.line()
        report.line("Phase b, a real process crash: skipped (it needs a database file; drop")
        report.line("  --store memory to run it on SQLite)")
    else:
        await phase_kill(options.runs, options.steps, options.seed, options.db, report)
    await phase_vocabulary(store if isinstance(store, str) else MemoryStore(), options.seed, report)
    await phase_messages(store if isinstance(store, str) else MemoryStore(), options.seed, report)
    await phase_queues(store if isinstance(store, str) else MemoryStore(), report)
    elapsed = time.perf_counter() - began
    report.line()
    if report.failed:
        report.line(
            f"{len(report.failed)} of {report.checks} checks FAILED (marked above); "
            f"{elapsed:.2f} s."
        )
    else:
        report.line(f"All {report.checks} checks passed in {elapsed:.2f} s.")


# -- phase a: in-process crashes -------------------------------------------------------------


async def _crash_when_reached(
    rt: Runtime, run_id: str, reached: asyncio.Event
) -> tuple[str, RunState, RunState] | str:
    await reached.wait()
    try:
        before, after = await crash_run(rt, run_id)
    except LookupError as exc:
        return f"{run_id}: could not crash it: {exc}"
    return run_id, before, after


async def _phase_crashes(options: DemoOptions, store: EventStore | str, report: Report) -> None:
    report.line()
    report.line("Phase a, in-process crashes: run tasks killed mid-step with crash_run")
    plans = make_plans(options.seed, options.runs, options.steps, "a", CRASH_RATE)
    planned = {p.run_id: (p.crash_at, asyncio.Event()) for p in plans if p.crash_at is not None}
    hooks.crash_points = planned
    began = time.perf_counter()
    try:
        async with demo_runtime(store, options.seed, "a") as rt:
            async with asyncio.TaskGroup() as tg:
                crashers = [
                    tg.create_task(_crash_when_reached(rt, run_id, reached))
                    for run_id, (_, reached) in planned.items()
                ]
                await wait_all(await start_all(rt, plans), report)
                for task in crashers:
                    task.cancel()  # only crashes whose step never ran are still waiting
            report.info(
                "crashes",
                f"{plural(len(planned), 'run task')} to crash; {rt.stats.respawned} respawned by "
                f"the supervisor, {rt.stats.parked} parked; "
                f"the runs took {time.perf_counter() - began:.2f} s",
            )
            _check_crashes(planned, crashers, rt.stats.respawned, report)
            await check_runs(rt.store, rt, plans, report)
    finally:
        hooks.crash_points = {}


def _check_crashes(
    planned: Mapping[str, tuple[int, asyncio.Event]],
    crashers: Sequence[asyncio.Task[tuple[str, RunState, RunState] | str]],
    respawned: int,
    report: Report,
) -> None:
    done: list[tuple[str, RunState, RunState]] = []
    missing: list[str] = []
    for run_id, task in zip(planned, crashers, strict=True):
        if task.cancelled():
            missing.append(f"{run_id}: its step {planned[run_id][0]} never started")
        elif isinstance(outcome := task.result(), str):
            missing.append(outcome)
        else:
            done.append(outcome)
    unequal = [
        f"{run_id}: {difference(before, after)} (before the crash | replayed)"
        for run_id, before, after in done
        if before != after
    ]
    report.check(
        not missing and respawned == len(done),
        f"{len(done)}/{len(planned)} planned crashes happened mid-step, each respawned once",
        missing,
    )
    report.check(
        bool(done) and not unequal,
        f"{len(done) - len(unequal)}/{len(done)} replayed states equal the state before the crash",
        unequal,
    )
