"""What the runner does next for a step, decided from the fold alone.

`next_action` is pure: given the run's state, the position and name of the step the
workflow asks for, and the step's attempt limit, it returns one action. The runner carries
the action out, appends what happened, folds it, and asks again, until the step returns or
raises. A crash anywhere in that loop leaves a log from which the same questions get the
same answers, so recovery needs no code of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from aruntime.state import RunState, StepStatus

__all__ = ["Action", "Execute", "GiveUp", "Mismatch", "Raise", "Replay", "next_action"]

INTERRUPTED = "aruntime.AttemptInterrupted"
"""The error type recorded for an attempt that a crash cut off at the attempt limit."""


@dataclass(frozen=True, slots=True)
class Replay:
    """The step completed before: return its recorded result without running it."""

    result: str


@dataclass(frozen=True, slots=True)
class Raise:
    """The step failed for good before: raise its recorded error again."""

    attempts: int
    error_type: str
    error_message: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Start attempt `attempt`, once the wall clock reads `not_before` (if set)."""

    attempt: int
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The last allowed attempt was lost to a crash: record the step failed for good."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The log recorded another step at this position: the workflow is not deterministic."""

    recorded: str


Action: TypeAlias = Replay | Raise | Execute | GiveUp | Mismatch


def next_action(state: RunState, position: int, step: str, max_attempts: int) -> Action:
    """Decide the next action for the step `step` at `position`.

    The runner asks only when no attempt of this step is in flight in this process, so a
    RUNNING step here is always an attempt lost to a crash.
    """
    current = state.steps.get(position)
    if current is None:
        return Execute(1)
    if current.step != step:
        return Mismatch(current.step)
    status = current.status
    if status is StepStatus.COMPLETED:
        assert current.result is not None
        return Replay(current.result)
    if status is StepStatus.FAILED:
        return Raise(current.attempts, current.error_type or "", current.error_message or "")
    if status is StepStatus.RETRYING:
        return Execute(current.attempts + 1, current.retry_at)
    if current.attempts >= max_attempts:
        return GiveUp(current.attempts)
    return Execute(current.attempts + 1)
