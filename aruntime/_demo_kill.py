"""Phase b of `aruntime demo`: a real process crash, and recovery from the file.

A child process (`aruntime demo --child`) runs the phase's runs on the SQLite file, and
this process watches the file through a read-only store until a share of the planned
events (drawn from the seed) is written, then kills the child with SIGKILL. It reads every
run's state from the file, opens a fresh runtime on it (which resumes every unfinished
run at start-up) and checks that each resumed run started from exactly the state the file
holds, that every attempt the kill cut off ran again, and that every run still ends the
way its plan says.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aruntime._decide import INTERRUPTED
from aruntime._demo_checks import (
    RUN_TIMEOUT,
    Report,
    check_runs,
    demo_runtime,
    difference,
    plural,
    settle,
    start_all,
    wait_all,
)
from aruntime._demo_workload import RunPlan, hooks, make_plans, planned_events
from aruntime.events import StepFailed, StepStarted
from aruntime.state import RunState, RunStatus, StepStatus, replay
from aruntime.store import EventStore

__all__ = ["phase_kill", "run_child"]

KILL_AT = (0.3, 0.6)
"""The child is killed once this share (drawn from the seed) of the events is written."""


async def run_child(runs: int, steps: int, seed: int, path: Path) -> None:
    """Phase b's workload, run by the child process until the parent kills it."""
    plans = make_plans(seed, runs, steps, "b", 0.0)
    async with demo_runtime(f"sqlite:///{path}", seed, "b") as rt:
        handles = await start_all(rt, plans)
        await asyncio.gather(*(settle(h) for h in handles))


def _reader(path: Path) -> EventStore:
    """A store that reads the file beside the writer that holds it."""
    from aruntime.store.sqlite import SqliteConfig, SqliteStore  # noqa: PLC0415 - SQLite only in phase b

    return SqliteStore(path, SqliteConfig(read_only=True))


async def _written(reader: EventStore, prefix: str) -> int:
    """How many events the runs whose ids start with `prefix` hold in the file."""
    return sum(i.version for i in await reader.list_runs() if i.run_id.startswith(prefix))


async def _read_states(path: Path, plans: Sequence[RunPlan]) -> tuple[dict[str, RunState], int]:
    """The replayed state of every planned run, and how many other runs are resumable."""
    reader = _reader(path)
    await reader.open()
    try:
        states = {p.run_id: replay(await reader.events_for(p.run_id)) for p in plans}
        others = await reader.list_runs(status=RunStatus.RUNNING, parked=False)
        return states, sum(info.run_id not in states for info in others)
    finally:
        await reader.aclose()


async def _run_child_until(
    command: list[str], path: Path, kill_at: int, report: Report
) -> tuple[int, int] | None:
    """Start the child, SIGKILL it once `kill_at` events are written; (pid, events)."""
    reader = _reader(path)  # phase a has created the file and its schema
    await reader.open()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(  # noqa: ASYNC220 - polled without blocking, waited in a thread
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            written = 0
            while proc.poll() is None and time.monotonic() < deadline:
                written = await _written(reader, "b-")
                if written >= kill_at:
                    break
                await asyncio.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
            code = await asyncio.to_thread(proc.wait)
            await reader.aclose()
        if code == -signal.SIGKILL:
            return proc.pid, written
        errors.seek(0)
        tail = errors.read().decode(errors="replace").strip().splitlines()[-5:]
        report.check(
            False, f"the child process was killed partway (it exited with code {code})", tail
        )
        return None


async def phase_kill(runs: int, steps: int, seed: int, path: Path, report: Report) -> None:
    report.line()
    report.line("Phase b, a real process crash: the child process killed with SIGKILL")
    """Run phase b on the SQLite file at `path`, which phase a has created."""
    plans = make_plans(seed, runs, steps, "b", 0.0)
    total = sum(planned_events(p) for p in plans)
    share = random.Random(f"aruntime-demo:{seed}:kill").uniform(*KILL_AT)
    command = [sys.executable, "-m", "aruntime", "demo", "--child", "--db", str(path)]
    command += ["--runs", str(runs), "--steps", str(steps), "--seed", str(seed)]
    killed = await _run_child_until(command, path, int(total * share), report)
    if killed is None:
        return
    pid, written = killed
    at_kill, others = await _read_states(path, plans)
    unfinished = {r for r, s in at_kill.items() if s.status is RunStatus.RUNNING}
    in_flight = {
        (r, s.position, s.attempts)
        for r in unfinished
        for s in at_kill[r].steps.values()
        if s.status is StepStatus.RUNNING
    }
    finished = sum(s.status.terminal for s in at_kill.values())
    report.info(
        "killed",
        f"pid {pid} after {written:,} of ~{total:,} planned events: "
        f"{plural(finished, 'run')} finished, {len(unfinished)} unfinished, "
        f"{plural(len(in_flight), 'attempt')} in flight",
    )
    hooks.startup_states = {}
    try:
        opened = time.perf_counter()
        async with demo_runtime(f"sqlite:///{path}", seed, "b2") as rt:
            resumed = rt.stats.spawned
            # Starting every run again is idempotent: recorded runs are returned as they are
            # (and a run the child never got to start is started now).
            await wait_all(await start_all(rt, plans), report)
            startup = dict(hooks.startup_states)
            last_entry = max((at for _, at in startup.values()), default=opened)
            report.info(
                "restart",
                f"{resumed} runs resumed at start-up, all back in their workflow within "
                f"{(last_entry - opened) * 1000:.0f} ms of opening the runtime",
            )
            _check_startup(at_kill, others, startup, resumed, report)
            events = {r: await rt.store.events_for(r) for r in unfinished}
            lost = [
                f"{r}: attempt {attempt} of step {position} was neither run again nor "
                "recorded interrupted"
                for r, position, attempt in sorted(in_flight)
                if not any(_recovers(e, position, attempt) for e in events[r])
            ]
            report.check(
                not lost,
                f"each of the {len(in_flight)} attempts cut off by the kill was run again "
                "(or recorded interrupted at the attempt limit)",
                lost,
            )
            await check_runs(rt.store, rt, plans, report)
    finally:
        hooks.startup_states = None


def _check_startup(
    at_kill: dict[str, RunState],
    others: int,
    startup: dict[str, tuple[RunState, float]],
    resumed: int,
    report: Report,
) -> None:
    unfinished = {r for r, s in at_kill.items() if s.status is RunStatus.RUNNING}
    entered = startup.keys() & {r for r, s in at_kill.items() if s.status is not RunStatus.PENDING}
    wrong = sorted(unfinished ^ entered)
    also = f" (and {others} left unfinished by phase a)" if others else ""
    report.check(
        resumed == len(unfinished) + others and not wrong,
        f"the runtime resumed exactly the {len(unfinished)} unfinished runs{also}, no finished one",
        [f"{r}: {'not resumed' if r in unfinished else 'ran again'}" for r in wrong]
        + [f"{resumed} runs resumed in all"],
    )
    unequal = [
        f"{r}: {difference(startup[r][0], at_kill[r])} (at start-up | from the file)"
        for r in sorted(unfinished & entered)
        if startup[r][0] != at_kill[r]
    ]
    report.check(
        bool(unfinished) and not unequal,
        f"{len(unfinished) - len(unequal)}/{len(unfinished)} start-up states equal "
        "replay(events) read from the file",
        unequal or ["no run was unfinished at the kill"],
    )


def _recovers(event: object, position: int, attempt: int) -> bool:
    if isinstance(event, StepStarted):
        return event.position == position and event.attempt == attempt + 1
    return (
        isinstance(event, StepFailed)
        and event.position == position
        and event.attempt == attempt
        and event.error_type == INTERRUPTED
    )
