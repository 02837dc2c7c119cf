"""The demo's workload: a seeded plan of runs, the workflow that follows it, and the checks.

Everything a run does is decided by its plan, drawn from `random.Random` seeded with the
demo's `--seed`: how long each step body takes, how many attempts of it fail with a
transient error before one succeeds, and whether the run meets a permanent failure (a
non-retryable rejection, or a step that fails on every attempt until its retries are
exhausted). The plan travels in the run's arguments, so a child process or a respawned
task follows the same plan, and the outcome each run must reach is computed from the plan
alone (`expected_outcome`), never from what the runtime recorded.

Faults depend on the attempt number, not on how often a body ran in this process, so an
attempt lost to a crash only moves the count on: the run still ends the way its plan says.
The retry policy leaves room for that (`MAX_ATTEMPTS` is well above the planned transient
failures plus the crashes the demo injects).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aruntime import _context
from aruntime._decide import INTERRUPTED
from aruntime._definitions import Workflow, step, workflow
from aruntime._errortext import error_type
from aruntime.errors import NonRetryableError
from aruntime.events import (
    Event,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from aruntime.retry import RetryPolicy
from aruntime.state import RunState, RunStatus, StepStatus, replay

__all__ = [
    "LogAudit",
    "Outcome",
    "RunPlan",
    "StepPlan",
    "actual_outcome",
    "audit_log",
    "demo_workflow",
    "expected_outcome",
    "hooks",
    "make_plans",
    "planned_events",
]

MAX_ATTEMPTS = 8
RETRY = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.005, max_delay=0.05, jitter=0.2)
EARLY_TOLERANCE = 0.005
"""Seconds a retry may start before its due time: asyncio's timers and the wall clock
differ by up to a clock tick."""
_MODULUS = 2**31 - 1
_PERMANENT_FAILURE_RATE = 0.1
_TRANSIENT_FAILURE_RATE = 0.2


class DemoTransientError(Exception):
    """A failure worth retrying (a timeout, a 503)."""


class DemoRejectedError(NonRetryableError):
    """A failure no retry can fix (a declined card)."""


TRANSIENT = error_type(DemoTransientError())
REJECTED = error_type(DemoRejectedError())


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What one step of a run does."""

    transient: int
    """Attempts that fail with `DemoTransientError` before one succeeds."""
    fatal: str
    """"" (none), "rejected" (non-retryable at once) or "exhausted" (fails every attempt)."""
    delay: float
    """Seconds the body takes."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What one run does, and where the demo crashes its task."""

    run_id: str
    start: int
    steps: tuple[StepPlan, ...]
    crash_at: int | None = None
    """Position of the step in whose body the in-process phase crashes the run's task."""

    @property
    def args(self) -> list[Any]:
        """The workflow's arguments: the plan itself, in JSON types."""
        return [self.start, [[s.transient, s.fatal, s.delay] for s in self.steps]]

    @property
    def last_position(self) -> int:
        """The position of the last step the run executes."""
        for position, s in enumerate(self.steps, start=1):
            if s.fatal:
                return position
        return len(self.steps)


def make_plans(seed: int, runs: int, steps: int, phase: str, crash_rate: float) -> list[RunPlan]:
    """The plans of one phase; the same arguments give the same plans in any process.

    `crash_rate` of the runs (at least one, if it is above zero) get a crash point.
    """
    rng = random.Random(f"aruntime-demo:{seed}:{phase}")
    plans = []
    for index in range(runs):
        fatal_at = rng.randint(1, steps) if rng.random() < _PERMANENT_FAILURE_RATE else 0
        kind = rng.choice(("rejected", "exhausted"))
        step_plans = []
        for position in range(1, steps + 1):
            transient = rng.randint(1, 2) if rng.random() < _TRANSIENT_FAILURE_RATE else 0
            step_plans.append(
                StepPlan(
                    transient=transient,
                    fatal=kind if position == fatal_at else "",
                    delay=round(rng.uniform(0.002, 0.008), 4),
                )
            )
        plans.append(RunPlan(f"{phase}-{index:05d}", rng.randrange(_MODULUS), tuple(step_plans)))
    crashes = max(1, round(runs * crash_rate)) if crash_rate > 0 else 0
    for index in sorted(rng.sample(range(runs), crashes)):
        plan = plans[index]
        crash_at = rng.randint(1, plan.last_position)
        plans[index] = RunPlan(plan.run_id, plan.start, plan.steps, crash_at)
    return plans


def planned_events(plan: RunPlan) -> int:
    """How many events the run's log holds at its end if nothing crashes."""
    total = 2  # RunStarted and the run's outcome
    for s in plan.steps[: plan.last_position]:
        attempts = 1 if s.fatal == "rejected" else MAX_ATTEMPTS if s.fatal else s.transient + 1
        total += 2 * attempts
    return total


def mix(value: int, position: int) -> int:
    """A step's result: any change in a recorded value shows in every later one."""
    return (value * 48271 + position * 7919 + 1) % _MODULUS


# -- the workflow ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Hooks:
    """How the demo in this process watches its runs; empty in the child process."""

    crash_points: dict[str, tuple[int, asyncio.Event]] = field(default_factory=dict)
    """Run id -> (position, event set when an attempt of that step's body begins)."""
    startup_states: dict[str, tuple[RunState, float]] | None = None
    """When set: run id -> (the state its runner started from, `time.perf_counter()` then),
    recorded at the workflow's entry."""


hooks = _Hooks()


@step(name="demo.work", retry=RETRY)
async def work(value: int, position: int, transient: int, fatal: str, delay: float) -> int:
    """Take `delay` seconds, fail as planned for this attempt, then return the next value."""
    ctx = _context.current_step()
    point = hooks.crash_points.get(ctx.run_id)
    if point is not None and point[0] == position:
        point[1].set()
    await asyncio.sleep(delay)
    if fatal == "rejected":
        raise DemoRejectedError(f"step {position} rejected (planned)")
    if fatal == "exhausted" or ctx.attempt <= transient:
        raise DemoTransientError(f"step {position} attempt {ctx.attempt} failed (planned)")
    return mix(value, position)


async def _demo(start: int, steps: list[list[Any]]) -> int:
    if hooks.startup_states is not None:
        _record_startup_state()
    value = start
    for position, (transient, fatal, delay) in enumerate(steps, start=1):
        value = await work(value, position, transient, fatal, delay)
    return value


demo_workflow: Workflow[..., int] = workflow(name="aruntime.demo")(_demo)


def _record_startup_state() -> None:
    # The runner folds nothing before it calls the workflow, so at the workflow's entry
    # its state is exactly the one the runtime replayed when it (re)spawned the run. No
    # public API shows that state, hence the look at the runner through the context.
    branch = _context._BRANCH.get()
    state = getattr(branch.runner, "state", None) if branch is not None else None
    if hooks.startup_states is not None and isinstance(state, RunState):
        hooks.startup_states.setdefault(state.run_id or "", (state.copy(), time.perf_counter()))


# -- outcomes and log audits ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: what the plan says, or what the log says."""

    status: str
    result: int | None = None
    failed_at: int | None = None
    error_types: frozenset[str] = frozenset()
    attempts: int | None = None
    """Attempts of the failed step; None where any number is right."""

    def describe(self) -> str:
        if self.status == "completed":
            return f"completed with {self.result}"
        if self.status == "failed":
            kinds = " or ".join(sorted(self.error_types))
            tries = "" if self.attempts is None else f" after {self.attempts} attempt(s)"
            return f"failed at step {self.failed_at}{tries} with {kinds}"
        return self.status


def expected_outcome(plan: RunPlan) -> Outcome:
    """The outcome the plan leads to, whatever crashes happen on the way."""
    value = plan.start
    for position, s in enumerate(plan.steps, start=1):
        if s.fatal == "rejected":
            # Rejected on its first attempt that runs to the end; a crash may cut one off.
            return Outcome("failed", failed_at=position, error_types=frozenset({REJECTED}))
        if s.fatal == "exhausted":
            # A crash that cuts off the last attempt leaves it recorded as interrupted.
            kinds = frozenset({TRANSIENT, INTERRUPTED})
            return Outcome("failed", failed_at=position, error_types=kinds, attempts=MAX_ATTEMPTS)
        value = mix(value, position)
    return Outcome("completed", result=value)


def actual_outcome(state: RunState, result: Any, parked: bool) -> Outcome:
    """The outcome a run's replayed log shows (`result` is its decoded result)."""
    if parked:
        return Outcome("parked")
    if state.status is RunStatus.COMPLETED:
        return Outcome("completed", result=result)
    if state.status is RunStatus.FAILED:
        failed = [s for s in state.steps.values() if s.status is StepStatus.FAILED]
        if len(failed) != 1:
            return Outcome(f"failed with {len(failed)} failed steps")
        return Outcome(
            "failed",
            failed_at=failed[0].position,
            error_types=frozenset({state.error_type or ""}),
            attempts=failed[0].attempts,
        )
    return Outcome(f"unfinished ({state.status.value})")


def matches(expected: Outcome, actual: Outcome) -> bool:
    """Whether the run ended the way its plan says."""
    return (
        actual.status == expected.status
        and actual.result == expected.result
        and actual.failed_at == expected.failed_at
        and actual.error_types <= expected.error_types
        and len(actual.error_types) == (1 if expected.error_types else 0)
        and (expected.attempts is None or actual.attempts == expected.attempts)
    )


@dataclass(slots=True)
class LogAudit:
    """What the logs of a set of runs hold, and what is wrong with them."""

    logs: int = 0
    events: int = 0
    steps_completed: int = 0
    retries: int = 0
    """Failed attempts with a next attempt scheduled (`StepFailed.retry_at` set)."""
    reruns: int = 0
    """Attempts started again because the previous one was cut off by a crash."""
    problems: list[str] = field(default_factory=list)


def audit_log(audit: LogAudit, run_id: str, events: list[Event]) -> RunState | None:
    """Check one run's log and count what it holds; returns its replayed state.

    Dense sequences from 1, a `RunStarted` first, a run outcome last (the demo waits for
    every run to end), no step completed twice, and a log the strict fold accepts.
    """
    audit.logs += 1
    audit.events += len(events)
    sequences = [e.sequence for e in events]
    if sequences != list(range(1, len(events) + 1)):
        audit.problems.append(f"{run_id}: sequences are not dense from 1: {sequences[:20]}")
    if not events or not isinstance(events[0], RunStarted):
        audit.problems.append(f"{run_id}: the log does not begin with RunStarted")
    if not events or not isinstance(events[-1], RunCompleted | RunFailed):
        audit.problems.append(f"{run_id}: the log does not end with the run's outcome")
    completed = collections.Counter(e.position for e in events if isinstance(e, StepCompleted))
    twice = sorted(position for position, n in completed.items() if n > 1)
    if twice:
        audit.problems.append(f"{run_id}: steps at positions {twice} completed more than once")
    audit.steps_completed += sum(completed.values())
    open_attempts: set[int] = set()
    due: dict[int, float] = {}
    for event in events:
        if isinstance(event, StepStarted):
            if event.position in open_attempts:
                audit.reruns += 1
            open_attempts.add(event.position)
            retry_at = due.pop(event.position, None)
            if retry_at is not None and event.at < retry_at - EARLY_TOLERANCE:
                audit.problems.append(
                    f"{run_id}: attempt {event.attempt} of step {event.position} started "
                    f"{retry_at - event.at:.3f} s before its due time"
                )
        elif isinstance(event, StepCompleted | StepFailed):
            open_attempts.discard(event.position)
            if isinstance(event, StepFailed) and event.retry_at is not None:
                audit.retries += 1
                due[event.position] = event.retry_at
                if event.error_type == REJECTED:
                    audit.problems.append(f"{run_id}: a non-retryable error was retried")
    try:
        return replay(events)
    except Exception as exc:  # a log the fold refuses is a finding, not a crash of the demo
        audit.problems.append(f"{run_id}: replay refused the log: {exc}")
        return None
