"""What the runner does next for an operation, decided from the fold alone.

The decision functions are pure: given the run's state, what the workflow asks for at one
identity, the current time and whether a cancellation is still to be delivered, they
return one action. The runner carries the action out, appends what happened, folds it,
and asks again, until the operation returns or raises. A crash anywhere in that loop
leaves a log from which the same questions get the same answers, so recovery needs no
code of its own.

Cancellation is decided here too. A cancellation that the log recorded for an operation
(`OperationCancelled`) is delivered again at that operation on replay. A cancellation that
was requested but not yet delivered in this process is delivered at the first operation
that is not simply replayed (the frontier), so a compensation step that the workflow's
cleanup ran after the delivery replays as recorded instead of being cancelled again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from aruntime.state import RunState, StepStatus

__all__ = [
    "Cancel",
    "Execute",
    "GiveUp",
    "Mismatch",
    "Raise",
    "Record",
    "Replay",
    "Resume",
    "SleepAction",
    "StepAction",
    "WaitUntil",
    "deadline_passed",
    "next_sleep_action",
    "next_step_action",
]

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
    """Start attempt `attempt` now."""

    attempt: int


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to do before the wall clock reads `at` (a retry's due time, a wake-up)."""

    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The last allowed attempt was lost to a crash: record the step failed for good."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The log recorded something else at this identity: the workflow is not deterministic."""

    recorded: str
    requested: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Deliver the run's cancellation here; `record` when the operation is in flight."""

    record: bool


@dataclass(frozen=True, slots=True)
class Record:
    """A new sleep: record its wake-up time, then wait for it."""

    wake_at: float


@dataclass(frozen=True, slots=True)
class Resume:
    """The sleep is over: go on."""


StepAction: TypeAlias = Replay | Raise | Execute | WaitUntil | GiveUp | Mismatch | Cancel
SleepAction: TypeAlias = Record | WaitUntil | Resume | Mismatch | Cancel


def next_step_action(
    state: RunState,
    identity: str,
    step: str,
    *,
    digest: str,
    max_attempts: int,
    now: float,
    cancel_pending: bool,
) -> StepAction:
    """Decide the next action for the step `step` called at `identity`.

    The runner asks only when no attempt of this step is in flight in this process, so a
    RUNNING step here is always an attempt lost to a crash.
    """
    current = state.steps.get(identity)
    if current is None:
        other = state.operation_at(identity)
        if other is not None:
            return Mismatch(other, f"step {step!r}")
        if cancel_pending:
            return Cancel(record=False)
        return Execute(1)
    if current.step != step:
        return Mismatch(f"step {current.step!r}", f"step {step!r}")
    if digest and current.digest and digest != current.digest:
        return Mismatch(
            f"step {step!r} with arguments of digest {current.digest}",
            f"step {step!r} with arguments of digest {digest}",
        )
    status = current.status
    if status is StepStatus.COMPLETED:
        assert current.result is not None
        return Replay(current.result)
    if status is StepStatus.FAILED:
        return Raise(current.attempts, current.error_type or "", current.error_message or "")
    if status is StepStatus.CANCELLED:
        return Cancel(record=False)
    if cancel_pending:
        return Cancel(record=True)
    if status is StepStatus.RETRYING:
        assert current.retry_at is not None
        if current.retry_at > now:
            return WaitUntil(current.retry_at)
        return Execute(current.attempts + 1)
    if current.attempts - current.set_aside >= max_attempts:
        return GiveUp(current.attempts)
    return Execute(current.attempts + 1)


def next_sleep_action(
    state: RunState, identity: str, *, wake_at: float, now: float, cancel_pending: bool
) -> SleepAction:
    """Decide the next action for a durable sleep asked for at `identity`.

    `wake_at` is the wake-up time the workflow asks for; it counts only for a new sleep:
    a recorded one keeps the time it recorded, however late the replay.
    """
    current = state.sleeps.get(identity)
    if current is None:
        other = state.operation_at(identity)
        if other is not None:
            return Mismatch(other, "a sleep")
        if cancel_pending:
            return Cancel(record=False)
        return Record(wake_at)
    if current.cancelled:
        return Cancel(record=False)
    if current.wake_at <= now:
        return Resume()
    if cancel_pending:
        return Cancel(record=True)
    return WaitUntil(current.wake_at)


def deadline_passed(state: RunState, now: float) -> bool:
    """Whether the run's deadline has come and its cancellation is still to be requested."""
    return (
        state.deadline is not None
        and state.cancel_reason is None
        and not state.status.terminal
        and state.deadline <= now
    )
