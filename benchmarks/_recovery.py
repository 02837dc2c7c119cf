"""The recovery workload: SIGKILL a process with runs half done, resume in a fresh one.

The parent (`measure`) spawns a worker process that starts every run and works through
them, watches the ledger the step bodies append to, and kills the worker with SIGKILL
once about half the step bodies have started. It then spawns a resuming process and
passes it the wall-clock time of the spawn, so that the resumer measures from its own
process start (interpreter start-up and imports included):

* resumed: the moment the last unfinished run made its first durable append after the
  restart (the supervisor replayed its log and the run went on);
* finished: every run completed.

Finally the parent checks exactly-once recording against the log and the ledger: every
run completed with the right result, every step has exactly one `StepCompleted` with the
right value, every body attempt in the ledger is at most the attempt that completed (no
body ran after its completion was durable), and counts the bodies that ran twice (started
before the kill and again after it: at-least-once, as designed).

Run as `python -m benchmarks._recovery work|resume URL LEDGER RUNS STEPS SPAWNED_AT` by
the parent only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_LOADED_AT = time.time()  # the interpreter is up; the imports below are not done yet

import aruntime  # noqa: E402 - imported after the first timestamp on purpose
from aruntime import EventStore, RunStatus, Runtime, replay  # noqa: E402
from aruntime.events import Event, StepCompleted, StepStarted  # noqa: E402
from aruntime.store import RunInfo, open_store  # noqa: E402
from aruntime.testing import StoreWrapper  # noqa: E402
from benchmarks._aruntime_side import StoreSpec, build_workflow  # noqa: E402
from benchmarks._harness import REPO, Progress, child_command, configure_logging  # noqa: E402
from benchmarks.workloads import WORKLOADS, Probe, Workload, run_id  # noqa: E402

__all__ = ["measure"]


class _Watch(StoreWrapper):
    """A store wrapper that notes each run's first append; everything else passes through."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.first_append: dict[str, float] = {}
        self.unfinished: list[str] | None = None
        self.all_resumed = asyncio.Event()
        self._pending: set[str] = set()

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        await self.inner.append(run_id, events, expected_sequence)
        if run_id not in self.first_append:
            self.first_append[run_id] = time.time()
            pending = self._pending
            if run_id in pending:
                pending.discard(run_id)
                if not pending:
                    self.all_resumed.set()

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        infos = await self.inner.list_runs(
            status=status, parked=parked, limit=limit, workflow=workflow, since=since
        )
        if self.unfinished is None and status is RunStatus.RUNNING:
            self.unfinished = [info.run_id for info in infos]
            self._pending = {r for r in self.unfinished if r not in self.first_append}
            if not self._pending:
                self.all_resumed.set()
        return infos


def _workload(runs: int, steps: int) -> Workload:
    return WORKLOADS["recovery"].resized(runs=runs, steps=steps)


async def _work(url: str, ledger: str, workload: Workload) -> None:
    probe = Probe(workload, ledger_path=ledger, attempt_of=lambda: aruntime.current_step().attempt)
    wf = build_workflow(workload, probe)
    async with Runtime(url, workflows=[wf]) as rt:
        numbers = iter(range(workload.runs))

        async def starter() -> None:
            for run in numbers:
                await rt.start(wf, run, run_id=run_id(run))

        async with asyncio.TaskGroup() as group:
            for _ in range(min(100, workload.runs)):
                group.create_task(starter())
        for run in range(workload.runs):
            await rt.handle(run_id(run)).result()
    probe.close()


async def _resume(url: str, ledger: str, workload: Workload, spawned_at: float) -> dict[str, Any]:
    main_at = time.time()
    probe = Probe(workload, ledger_path=ledger, attempt_of=lambda: aruntime.current_step().attempt)
    wf = build_workflow(workload, probe)
    store = _Watch(open_store(url))
    async with Runtime(store, workflows=[wf]) as rt:
        ready_at = time.time()
        unfinished = store.unfinished or []
        await store.all_resumed.wait()
        resumed_at = max((store.first_append[r] for r in unfinished), default=ready_at)
        for rid in unfinished:
            await rt.handle(rid).result()
        finished_at = time.time()
    probe.close()
    return {
        "unfinished_at_start": len(unfinished),
        "interpreter_s": _LOADED_AT - spawned_at,
        "main_s": main_at - spawned_at,
        "runtime_ready_s": ready_at - spawned_at,
        "resumed_s": resumed_at - spawned_at,
        "finished_s": finished_at - spawned_at,
        "bodies_after_restart": probe.bodies,
    }


def _child(argv: list[str]) -> None:
    mode, url, ledger, runs, steps, spawned_at = argv
    configure_logging()
    workload = _workload(int(runs), int(steps))
    if mode == "work":
        asyncio.run(_work(url, ledger, workload))
        print(json.dumps({"finished": True}), flush=True)
    else:
        result = asyncio.run(_resume(url, ledger, workload, float(spawned_at)))
        print(json.dumps(result), flush=True)


def _spawn(mode: str, url: str, ledger: Path, workload: Workload) -> subprocess.Popen[str]:
    args = [str(url), str(ledger), str(workload.runs), str(workload.steps), repr(time.time())]
    command, env = child_command("benchmarks._recovery", mode, *args)
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def _ledger_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def measure(
    workload: Workload,
    store: StoreSpec,
    directory: Path,
    *,
    kill_fraction: float = 0.5,
    timeout: float = 300.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Kill, resume and check once; the figures of one repeat."""
    directory.mkdir(parents=True, exist_ok=True)
    url = store.url(directory, "recovery.db")
    ledger = directory / "ledger.txt"
    target = int(workload.total_steps * kill_fraction)

    worker = _spawn("work", url, ledger, workload)
    deadline = time.monotonic() + timeout
    started = 0
    try:
        while True:
            started = _ledger_lines(ledger)
            if started >= target:
                break
            if worker.poll() is not None:
                raise RuntimeError(
                    f"the worker ended (exit {worker.returncode}) before the kill, "
                    f"after {started} of {workload.total_steps} step bodies"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not reach the kill point in time")
            time.sleep(0.001)
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.time()
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    started = _ledger_lines(ledger)
    if progress is not None:
        progress.update()

    resumer = _spawn("resume", url, ledger, workload)
    try:
        out, _ = resumer.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        resumer.kill()
        resumer.communicate()
        raise RuntimeError("the resuming process did not finish in time") from None
    if resumer.returncode != 0:
        raise RuntimeError(f"the resuming process failed (exit {resumer.returncode})")
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    figures["bodies_started_at_kill"] = started
    figures.update(asyncio.run(check(url, _read_ledger(ledger), workload, killed_at)))
    if progress is not None:
        progress.update()
    return figures


def _read_ledger(ledger: Path) -> dict[tuple[int, int], list[int]]:
    """The attempts whose body started, per (run, step index)."""
    lines: dict[tuple[int, int], list[int]] = {}
    for line in ledger.read_text(encoding="ascii").splitlines():
        run, index, attempt = (int(x) for x in line.split())
        lines.setdefault((run, index), []).append(attempt)
    return lines


async def check(
    url: str, lines: dict[tuple[int, int], list[int]], workload: Workload, killed_at: float
) -> dict[str, Any]:
    """The exactly-once check of one recovery, from the log and the ledger."""
    violations: list[str] = []
    ran_twice = 0
    completed_before_kill = 0
    runs_completed = 0
    attempts_restarted = 0
    store = open_store(url)
    await store.open()
    try:
        for run in range(workload.runs):
            events = await store.events_for(run_id(run))
            state = replay(events)
            if state.status is not RunStatus.COMPLETED:
                violations.append(f"run {run} ended {state.status.value}")
                continue
            runs_completed += 1
            if state.result != str(workload.expected_result):
                violations.append(f"run {run} returned {state.result}")
            completions: dict[int, StepCompleted] = {}
            for event in events:
                if isinstance(event, StepCompleted):
                    if event.position in completions:
                        violations.append(f"run {run} step {event.position} completed twice")
                    completions[event.position] = event
                    if event.at <= killed_at:
                        completed_before_kill += 1
                elif isinstance(event, StepStarted) and event.attempt > 1:
                    attempts_restarted += 1
            for index in range(workload.steps):
                done = completions.get(index + 1)
                if done is None:
                    violations.append(f"run {run} step {index} never completed")
                    continue
                if done.result != str(index + 1):
                    violations.append(f"run {run} step {index} recorded {done.result}")
                seen = lines.get((run, index), [])
                if done.attempt not in seen:
                    violations.append(f"run {run} step {index}: no body ran attempt {done.attempt}")
                late = [a for a in seen if a > done.attempt]
                if late:
                    violations.append(
                        f"run {run} step {index}: body ran attempt(s) {late} after attempt "
                        f"{done.attempt} completed"
                    )
                if len(seen) != len(set(seen)):
                    violations.append(f"run {run} step {index}: one attempt's body ran twice")
                if len(seen) > 1:
                    ran_twice += 1
    finally:
        await store.aclose()
    return {
        "runs_completed": runs_completed,
        "steps_completed_before_kill": completed_before_kill,
        "bodies_ran_twice": ran_twice,
        "attempts_restarted": attempts_restarted,
        "exactly_once": not violations,
        "violations": violations[:10],
        "violation_count": len(violations),
    }


if __name__ == "__main__":
    _child(sys.argv[1:])
