"""What both phases of `aruntime demo` share: the summary, the runtime, and the run checks.

`check_runs` compares every run with its plan and audits its log; `difference` says where
two states differ. Each check prints `ok` or `FAILED` with the first few problems, so the
summary shows which promise broke and for which runs.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Iterable, Sequence
from typing import IO, Any

from aruntime._demo_workload import (
    LogAudit,
    RunPlan,
    actual_outcome,
    audit_log,
    demo_workflow,
    expected_outcome,
    matches,
)
from aruntime.errors import AruntimeError, RunFailedError, RunParkedError
from aruntime.runtime import RunHandle, Runtime
from aruntime.state import RunState
from aruntime.store import EventStore

__all__ = [
    "RUN_TIMEOUT",
    "Report",
    "check_runs",
    "demo_runtime",
    "difference",
    "plural",
    "settle",
    "start_all",
    "wait_all",
]

RUN_TIMEOUT = 60.0
"""Seconds a phase's runs get to finish before the demo reports the rest as unfinished."""
_SHOWN_PROBLEMS = 5


class Report:
    """Prints the summary as the demo goes, and remembers which checks failed."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.checks = 0
        self.failed: list[str] = []

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def info(self, label: str, text: str) -> None:
        self.line(f"  {label:<9}{text}")

    def check(self, ok: bool, text: str, problems: Sequence[str] = ()) -> None:
        self.checks += 1
        self.line(f"  {'ok' if ok else 'FAILED':<9}{text}")
        if not ok:
            self.failed.append(text)
            for problem in problems[:_SHOWN_PROBLEMS]:
                self.line(f"             {problem}")
            if len(problems) > _SHOWN_PROBLEMS:
                self.line(f"             ... and {len(problems) - _SHOWN_PROBLEMS} more")


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def demo_runtime(store: EventStore | str, seed: int, phase: str) -> Runtime:
    jitter = random.Random(f"aruntime-demo:{seed}:{phase}:jitter").random
    return Runtime(store, workflows=[demo_workflow], random=jitter)


async def start_all(rt: Runtime, plans: Iterable[RunPlan]) -> list[RunHandle[Any]]:
    return list(
        await asyncio.gather(*(rt.start(demo_workflow, *p.args, run_id=p.run_id) for p in plans))
    )


async def settle(handle: RunHandle[Any]) -> str | None:
    """Wait for the run to end; returns an unexpected error's text, if any."""
    try:
        await handle.result()
    except (RunFailedError, RunParkedError):
        pass  # the log tells how it ended
    except AruntimeError as exc:
        return f"{handle.run_id}: {exc}"
    return None


async def wait_all(handles: Sequence[RunHandle[Any]], report: Report) -> None:
    """Wait until every run ends, or report the ones that do not end in time."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(settle(h)) for h in handles]
        done, pending = await asyncio.wait(tasks, timeout=RUN_TIMEOUT)
        for task in pending:
            task.cancel()
    errors = [text for task in done if (text := task.result()) is not None]
    if pending or errors:
        report.check(
            False,
            f"{plural(len(pending), 'run')} did not end within {RUN_TIMEOUT:g} s, "
            f"{plural(len(errors), 'run')} raised an unexpected error",
            errors,
        )


async def check_runs(
    store: EventStore, rt: Runtime, plans: Sequence[RunPlan], report: Report
) -> None:
    """Audit every run's log and compare its outcome with the plan's."""
    audit = LogAudit()
    wrong: list[str] = []
    expected_counts: collections.Counter[str] = collections.Counter()
    actual_counts: collections.Counter[str] = collections.Counter()
    parked = 0
    for plan in plans:
        state = audit_log(audit, plan.run_id, await store.events_for(plan.run_id))
        info = await store.get_run(plan.run_id)
        if state is None or info is None:
            wrong.append(f"{plan.run_id}: no readable log")
            continue
        result = rt.serializer.loads(state.result) if state.result is not None else None
        expected, actual = expected_outcome(plan), actual_outcome(state, result, info.parked)
        expected_counts[expected.status] += 1
        actual_counts[actual.status if actual.status in ("completed", "failed") else "other"] += 1
        parked += info.parked
        if not matches(expected, actual):
            wrong.append(f"{plan.run_id}: expected {expected.describe()}, got {actual.describe()}")
    other = f", {actual_counts['other']:,} neither" if actual_counts["other"] else ""
    report.info(
        "runs",
        f"{actual_counts['completed']:,} completed, {actual_counts['failed']:,} failed{other} "
        f"(the seeded plan expects {expected_counts['completed']:,} completed, "
        f"{expected_counts['failed']:,} failed)",
    )
    report.info(
        "steps",
        f"{audit.steps_completed:,} completed, {plural(audit.retries, 'transient failure')} "
        f"retried, {plural(audit.reruns, 'attempt')} run again after a crash",
    )
    report.check(not wrong, "every run ended as its plan says (result, or failing step)", wrong)
    report.check(
        not audit.problems,
        f"{plural(audit.logs, 'log')} ({audit.events:,} events): dense sequences, no step "
        "completed twice, no early retry, replay accepts each",
        audit.problems,
    )
    report.check(parked == 0, f"{plural(parked, 'run')} parked")


_RUN_FIELDS = (
    "run_id",
    "workflow",
    "args",
    "status",
    "version",
    "result",
    "error_type",
    "error_message",
    "started_at",
    "updated_at",
    "finished_at",
)


def difference(a: RunState, b: RunState) -> str:
    """Where two states differ, field by field and step by step."""
    parts = [
        f"{name} {getattr(a, name)!r:.60} | {getattr(b, name)!r:.60}"
        for name in _RUN_FIELDS
        if getattr(a, name) != getattr(b, name)
    ]
    for position in sorted(a.steps.keys() | b.steps.keys()):
        step_a, step_b = a.steps.get(position), b.steps.get(position)
        if step_a != step_b:
            parts.append(f"step {position} {step_a!r:.150} | {step_b!r:.150}")
    return "; ".join(parts) or "equal fields, yet unequal states"
