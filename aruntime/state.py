"""Current state as a pure fold of the event log.

`replay(events)` is the only way a `RunState` comes to be: the runner folds the log it
reads at start-up, and folds every event it appends afterwards with the same code, so
"resume after a crash" and "compute current state" are one operation.

The fold keeps one state per operation, keyed by the operation's identity (`"3"`,
`"2.1.4"`, see `aruntime.events.op_identity`): a `StepState` for a step, a `SleepState`
for a durable sleep. One identity names one operation: a log that records a step and a
sleep at the same identity is corrupt.

The fold is strict. It accepts exactly the logs a correct runner can write and raises
`CorruptLogError` for anything else: a gap or a duplicate in the sequence, a log that does
not begin with `RunStarted`, an event after the run ended, a step outcome without a
matching start, an attempt number out of order, a cancellation nobody requested, or an
object that is not an event.

The fold is resumable: `replay(tail, replay(head)) == replay(head + tail)`. `replay` never
mutates the state it is given (it folds into a copy), which is what makes a state safe to
keep as a snapshot. Inside the runner, which owns its state, `fold_into` applies new
events in place to avoid the copy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from aruntime.errors import CorruptLogError
from aruntime.events import (
    CancelRequested,
    Event,
    OperationCancelled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    op_identity,
)

__all__ = [
    "RunState",
    "RunStatus",
    "SleepState",
    "StepState",
    "StepStatus",
    "fold_into",
    "replay",
]


class RunStatus(enum.StrEnum):
    """Where a run stands according to its log."""

    PENDING = "pending"
    """No event yet: the run does not exist."""
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True when the run can never change again."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(enum.StrEnum):
    """Where one step stands according to its log."""

    RUNNING = "running"
    """An attempt started and has no outcome yet (in flight, or lost to a crash)."""
    RETRYING = "retrying"
    """The last attempt failed and the next one is due at `retry_at`."""
    COMPLETED = "completed"
    FAILED = "failed"
    """The step failed for good."""
    CANCELLED = "cancelled"
    """The run's cancellation reached the step; it never runs again."""
    ABANDONED = "abandoned"
    """The run ended while an attempt was in flight or a retry was due: the workflow
    returned or raised without waiting for the step (a branch it left running)."""


_STEP_ENDED = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED})


class StepState(msgspec.Struct):
    """The fold of every event about the step at one identity."""

    identity: str
    """Branch and position, as `aruntime.events.op_identity` writes them."""
    step: str
    status: StepStatus
    attempts: int
    """How many attempts have started, counted from the log."""
    set_aside: int = 0
    """Attempts that do not count against the retry limit: they were in flight when the
    run was parked, and someone resumed it (`RunResumed`)."""
    branch: str = ""
    position: int = 0
    digest: str = ""
    """The digest of the arguments the first attempt recorded."""
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    retry_at: float | None = None
    started_at: float = 0.0
    """When the first attempt started."""
    finished_at: float | None = None


class SleepState(msgspec.Struct):
    """A durable sleep: when it wakes, and whether the run's cancellation cut it short."""

    identity: str
    wake_at: float
    branch: str = ""
    position: int = 0
    started_at: float = 0.0
    cancelled: bool = False


class RunState(msgspec.Struct):
    """The fold of a run's log: everything the runner decides from."""

    run_id: str | None = None
    workflow: str | None = None
    args: str | None = None
    status: RunStatus = RunStatus.PENDING
    version: int = 0
    """The sequence of the last event folded; equals the length of the log."""
    steps: dict[str, StepState] = msgspec.field(default_factory=dict)
    """Every step that started, by identity."""
    sleeps: dict[str, SleepState] = msgspec.field(default_factory=dict)
    """Every durable sleep that started, by identity."""
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    deadline: float | None = None
    """When the run is cancelled with the reason `timeout`, if it has a deadline."""
    cancel_reason: str | None = None
    """Why the run's cancellation was requested; None while nobody asked."""
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_reason is not None

    def copy(self) -> RunState:
        """An independent copy; folding into it leaves this state unchanged."""
        return msgspec.structs.replace(
            self,
            steps={key: msgspec.structs.replace(s) for key, s in self.steps.items()},
            sleeps={key: msgspec.structs.replace(s) for key, s in self.sleeps.items()},
        )


def replay(events: Iterable[Event], state: RunState | None = None) -> RunState:
    """Fold `events` into a new state, starting from `state` (which is left untouched).

    Raises:
        CorruptLogError: the events are not a log a correct runner can write.
    """
    new = RunState() if state is None else state.copy()
    fold_into(new, events)
    return new


def fold_into(state: RunState, events: Iterable[Event]) -> None:
    """Apply `events` to `state` in place; for the owner of a state only.

    On `CorruptLogError` the state may hold the events before the bad one.
    """
    apply = _APPLY
    version = state.version
    for event in events:
        handler = apply.get(type(event))
        if handler is None:
            raise CorruptLogError(
                state.run_id, getattr(event, "sequence", None), f"not an event: {event!r:.120}"
            )
        sequence = event.sequence
        if sequence != version + 1 or type(sequence) is not int:
            if type(sequence) is not int:
                raise CorruptLogError(
                    state.run_id, None, f"sequence {sequence!r} of {type(event).__name__}"
                )
            kind = "duplicate" if sequence <= version else "gap"
            raise CorruptLogError(
                state.run_id,
                sequence,
                f"{kind}: expected sequence {version + 1}, "
                f"found {type(event).__name__} at {sequence}",
            )
        if state.status in _TERMINAL:
            raise CorruptLogError(
                state.run_id,
                sequence,
                f"{type(event).__name__} after the run ended {state.status.value}",
            )
        handler(state, event)
        state.version = version = sequence
        state.updated_at = event.at


def _run_started(state: RunState, event: RunStarted) -> None:
    if state.version != 0:
        raise CorruptLogError(state.run_id, event.sequence, "RunStarted after the first event")
    state.run_id = event.run_id
    state.workflow = event.workflow
    state.args = event.args
    state.deadline = event.deadline
    state.status = RunStatus.RUNNING
    state.started_at = event.at


def _require_started(state: RunState, event: Event) -> None:
    if state.version == 0:
        raise CorruptLogError(
            state.run_id, event.sequence, f"the log begins with {type(event).__name__}"
        )


def _identity(
    state: RunState, event: StepStarted | StepCompleted | StepFailed | SleepStarted
) -> str:
    """Check the event's branch and position and return its operation identity."""
    _require_started(state, event)
    position, branch = event.position, event.branch
    if type(position) is not int or position < 1:
        raise CorruptLogError(
            state.run_id, event.sequence, f"operation position {position!r} is not an int >= 1"
        )
    if type(branch) is not str:
        raise CorruptLogError(state.run_id, event.sequence, f"branch {branch!r} is not a str")
    return op_identity(branch, position) if branch else str(position)


def _step_started(state: RunState, event: StepStarted) -> None:
    identity = _identity(state, event)
    _check_attempt(state, event)
    current = state.steps.get(identity)
    if current is None:
        if identity in state.sleeps:
            raise CorruptLogError(
                state.run_id, event.sequence, f"step {event.step!r} at {identity}, a sleep's"
            )
        if event.attempt != 1:
            raise CorruptLogError(
                state.run_id,
                event.sequence,
                f"step {event.step!r} at {identity} starts at attempt {event.attempt}, not 1",
            )
        state.steps[identity] = StepState(
            identity,
            event.step,
            StepStatus.RUNNING,
            1,
            branch=event.branch,
            position=event.position,
            digest=event.digest,
            started_at=event.at,
        )
        return
    _check_same_step(state, current, event)
    if current.status in _STEP_ENDED:
        raise CorruptLogError(
            state.run_id,
            event.sequence,
            f"step {event.step!r} at {identity} restarted after it {current.status.value}",
        )
    if event.attempt != current.attempts + 1:
        raise CorruptLogError(
            state.run_id,
            event.sequence,
            f"step {event.step!r} at {identity}: attempt {event.attempt} follows attempt "
            f"{current.attempts}",
        )
    # A start while the previous attempt is still RUNNING is legal: that attempt was lost
    # to a crash and counts against the step's attempts.
    current.status = StepStatus.RUNNING
    current.attempts = event.attempt
    current.retry_at = None


def _running_step(state: RunState, event: StepCompleted | StepFailed) -> StepState:
    identity = _identity(state, event)
    _check_attempt(state, event)
    current = state.steps.get(identity)
    if current is None:
        raise CorruptLogError(
            state.run_id,
            event.sequence,
            f"{type(event).__name__} for {identity}, which never started",
        )
    _check_same_step(state, current, event)
    if current.status is not StepStatus.RUNNING or event.attempt != current.attempts:
        raise CorruptLogError(
            state.run_id,
            event.sequence,
            f"{type(event).__name__} for attempt {event.attempt} of step {event.step!r} "
            f"at {identity}, whose attempt {current.attempts} is {current.status.value}",
        )
    return current


def _check_attempt(state: RunState, event: StepStarted | StepCompleted | StepFailed) -> None:
    attempt = event.attempt
    if type(attempt) is not int or attempt < 1:
        raise CorruptLogError(
            state.run_id, event.sequence, f"attempt {attempt!r} is not an int >= 1"
        )


def _check_same_step(
    state: RunState, current: StepState, event: StepStarted | StepCompleted | StepFailed
) -> None:
    if current.step != event.step:
        raise CorruptLogError(
            state.run_id,
            event.sequence,
            f"{current.identity} holds step {current.step!r}, not {event.step!r}",
        )


def _step_completed(state: RunState, event: StepCompleted) -> None:
    current = _running_step(state, event)
    current.status = StepStatus.COMPLETED
    current.result = event.result
    current.error_type = current.error_message = None
    current.finished_at = event.at


def _step_failed(state: RunState, event: StepFailed) -> None:
    current = _running_step(state, event)
    current.error_type = event.error_type
    current.error_message = event.error_message
    current.retry_at = event.retry_at
    if event.retry_at is None:
        current.status = StepStatus.FAILED
        current.finished_at = event.at
    else:
        current.status = StepStatus.RETRYING


def _sleep_started(state: RunState, event: SleepStarted) -> None:
    identity = _identity(state, event)
    if identity in state.sleeps or identity in state.steps:
        raise CorruptLogError(
            state.run_id, event.sequence, f"a second operation recorded at {identity}"
        )
    wake_at = event.wake_at
    if type(wake_at) is not float and type(wake_at) is not int:
        raise CorruptLogError(state.run_id, event.sequence, f"wake time {wake_at!r}")
    state.sleeps[identity] = SleepState(
        identity, wake_at, branch=event.branch, position=event.position, started_at=event.at
    )


def _cancel_requested(state: RunState, event: CancelRequested) -> None:
    _require_started(state, event)
    if state.cancel_reason is not None:
        raise CorruptLogError(state.run_id, event.sequence, "a second CancelRequested")
    state.cancel_reason = event.reason


def _operation_cancelled(state: RunState, event: OperationCancelled) -> None:
    identity = _identity(state, event)  # type: ignore[arg-type]
    if state.cancel_reason is None:
        raise CorruptLogError(
            state.run_id, event.sequence, f"{identity} cancelled, but nobody asked"
        )
    step = state.steps.get(identity)
    if step is not None:
        if step.status in _STEP_ENDED:
            raise CorruptLogError(
                state.run_id,
                event.sequence,
                f"step {step.step!r} at {identity} cancelled after it {step.status.value}",
            )
        step.status = StepStatus.CANCELLED
        step.retry_at = None
        step.finished_at = event.at
        return
    sleep = state.sleeps.get(identity)
    if sleep is None or sleep.cancelled:
        raise CorruptLogError(
            state.run_id, event.sequence, f"cancelled {identity}, which is not in flight"
        )
    sleep.cancelled = True


def _run_resumed(state: RunState, event: RunResumed) -> None:
    _require_started(state, event)
    for step in state.steps.values():
        if step.status is StepStatus.RUNNING:
            step.set_aside = step.attempts


def _abandon_unfinished(state: RunState) -> None:
    """The run ends: the steps still in flight or waiting to retry never get an outcome."""
    for step in state.steps.values():
        if step.status is StepStatus.RUNNING or step.status is StepStatus.RETRYING:
            step.status = StepStatus.ABANDONED
            step.retry_at = None


def _run_completed(state: RunState, event: RunCompleted) -> None:
    _require_started(state, event)
    _abandon_unfinished(state)
    state.status = RunStatus.COMPLETED
    state.result = event.result
    state.finished_at = event.at


def _run_failed(state: RunState, event: RunFailed) -> None:
    _require_started(state, event)
    _abandon_unfinished(state)
    state.status = RunStatus.FAILED
    state.error_type = event.error_type
    state.error_message = event.error_message
    state.finished_at = event.at


def _run_cancelled(state: RunState, event: RunCancelled) -> None:
    _require_started(state, event)
    if state.cancel_reason is None:
        raise CorruptLogError(state.run_id, event.sequence, "RunCancelled, but nobody asked")
    _abandon_unfinished(state)
    state.status = RunStatus.CANCELLED
    state.finished_at = event.at


_APPLY: dict[type[Any], Callable[[RunState, Any], None]] = {
    RunStarted: _run_started,
    StepStarted: _step_started,
    StepCompleted: _step_completed,
    StepFailed: _step_failed,
    SleepStarted: _sleep_started,
    CancelRequested: _cancel_requested,
    OperationCancelled: _operation_cancelled,
    RunResumed: _run_resumed,
    RunCompleted: _run_completed,
    RunFailed: _run_failed,
    RunCancelled: _run_cancelled,
}
