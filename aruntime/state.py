"""Current state as a pure fold of the event log.

`replay(events)` is the only way a `RunState` comes to be: the runner folds the log it
reads at start-up, and folds every event it appends afterwards with the same code, so
"resume after a crash" and "compute current state" are one operation.

The fold keeps one state per operation, keyed by the operation's identity (`"3"`,
`"2.1.4"`, see `aruntime.events.op_identity`): a `StepState` for a step, a `SleepState`
for a durable sleep, a `ReceiveState` for a receive, a `ChildState` for a child run, and
the records of sends, publishes and first-of winners. One identity names one operation:
a log that records two operations at the same identity is corrupt.

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
    ChildEnded,
    ChildStarted,
    Event,
    FirstWon,
    MessageReceived,
    MessageSent,
    OperationCancelled,
    ReceiveStarted,
    ReceiveTimedOut,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    ValuePublished,
    op_identity,
)

__all__ = [
    "ChildState",
    "ReceiveState",
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
_ENDED_VALUES = frozenset(status.value for status in _TERMINAL)


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


class ReceiveState(msgspec.Struct):
    """A receive: the topic it waits on, its deadline, and the message it consumed."""

    identity: str
    topic: str
    deadline: float | None = None
    branch: str = ""
    position: int = 0
    started_at: float = 0.0
    received: bool = False
    payload: str | None = None
    """The consumed message's serialized payload, once `received`."""
    timed_out: bool = False
    cancelled: bool = False

    @property
    def ended(self) -> bool:
        return self.received or self.timed_out or self.cancelled


class ChildState(msgspec.Struct):
    """A child run the workflow started, and how it ended once the parent learnt it."""

    identity: str
    child: str
    """The child's run id."""
    workflow: str
    branch: str = ""
    position: int = 0
    status: str | None = None
    """The child's final `RunStatus` value once recorded; None while it runs."""
    result: str | None = None
    error_type: str = ""
    error_message: str = ""
    cancelled: bool = False
    """The parent's cancellation reached the parent while it waited for this child."""


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
    receives: dict[str, ReceiveState] = msgspec.field(default_factory=dict)
    """Every receive that started, by identity."""
    message_keys: set[str] = msgspec.field(default_factory=set)
    """The idempotency keys of the messages consumed: a message with one is a duplicate."""
    sends: dict[str, MessageSent] = msgspec.field(default_factory=dict)
    """Every message the workflow sent, by identity."""
    published: dict[str, str] = msgspec.field(default_factory=dict)
    """The latest value (serialized) published under each key."""
    publishes: dict[str, str] = msgspec.field(default_factory=dict)
    """The key each publish operation wrote, by identity."""
    children: dict[str, ChildState] = msgspec.field(default_factory=dict)
    """Every child run the workflow started, by identity."""
    firsts: dict[str, int] = msgspec.field(default_factory=dict)
    """The recorded winner of each `aruntime.first`, by identity."""
    result: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    deadline: float | None = None
    """When the run is cancelled with the reason `timeout`, if it has a deadline."""
    parent: str | None = None
    """The run that started this one as its child, if one did."""
    forked_from: str | None = None
    """The run this one is a fork of, if any."""
    forked_at: str | None = None
    """The identity of the operation the fork resumed from."""
    queue: str | None = None
    """The queue the run was admitted through, if it was started on one."""
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
            receives={key: msgspec.structs.replace(r) for key, r in self.receives.items()},
            message_keys=set(self.message_keys),
            sends=dict(self.sends),
            published=dict(self.published),
            publishes=dict(self.publishes),
            children={key: msgspec.structs.replace(c) for key, c in self.children.items()},
            firsts=dict(self.firsts),
        )

    def operation_at(self, identity: str) -> str | None:
        """What the log recorded at `identity` (`"step 'charge'"`, `"a sleep"`), or None."""
        step = self.steps.get(identity)
        if step is not None:
            return f"step {step.step!r}"
        if identity in self.sleeps:
            return "a sleep"
        receive = self.receives.get(identity)
        if receive is not None:
            return f"a receive on topic {receive.topic!r}"
        send = self.sends.get(identity)
        if send is not None:
            return f"a send to run {send.target!r}"
        key = self.publishes.get(identity)
        if key is not None:
            return f"a publish of {key!r}"
        child = self.children.get(identity)
        if child is not None:
            return f"child run {child.child!r} of workflow {child.workflow!r}"
        if identity in self.firsts:
            return "aruntime.first"
        return None

    def identities(self) -> set[str]:
        """Every identity the log recorded an operation at."""
        found = self.steps.keys() | self.sleeps.keys() | self.receives.keys()
        found |= self.sends.keys() | self.publishes.keys() | self.children.keys()
        return found | self.firsts.keys()


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
    state.parent = event.parent
    state.forked_from = event.forked_from
    state.forked_at = event.forked_at
    state.queue = event.queue
    state.status = RunStatus.RUNNING
    state.started_at = event.at


def _require_started(state: RunState, event: Event) -> None:
    if state.version == 0:
        raise CorruptLogError(
            state.run_id, event.sequence, f"the log begins with {type(event).__name__}"
        )


def _identity(state: RunState, event: Any) -> str:
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
        other = state.operation_at(identity)
        if other is not None:
            raise CorruptLogError(
                state.run_id, event.sequence, f"step {event.step!r} at {identity}, {other}'s"
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
    identity = _new_identity(state, event)
    wake_at = event.wake_at
    if type(wake_at) is not float and type(wake_at) is not int:
        raise CorruptLogError(state.run_id, event.sequence, f"wake time {wake_at!r}")
    state.sleeps[identity] = SleepState(
        identity, wake_at, branch=event.branch, position=event.position, started_at=event.at
    )


def _new_identity(state: RunState, event: Any) -> str:
    """The identity of a new operation's first event; no other operation may hold it."""
    identity = _identity(state, event)
    if state.operation_at(identity) is not None:
        raise CorruptLogError(
            state.run_id, event.sequence, f"a second operation recorded at {identity}"
        )
    return identity


def _receive_started(state: RunState, event: ReceiveStarted) -> None:
    identity = _new_identity(state, event)
    deadline = event.deadline
    if deadline is not None and type(deadline) is not float and type(deadline) is not int:
        raise CorruptLogError(state.run_id, event.sequence, f"receive deadline {deadline!r}")
    if type(event.topic) is not str:
        raise CorruptLogError(state.run_id, event.sequence, f"topic {event.topic!r}")
    state.receives[identity] = ReceiveState(
        identity,
        event.topic,
        deadline,
        branch=event.branch,
        position=event.position,
        started_at=event.at,
    )


def _open_receive(state: RunState, event: MessageReceived | ReceiveTimedOut) -> ReceiveState:
    identity = _identity(state, event)
    receive = state.receives.get(identity)
    if receive is None or receive.ended:
        raise CorruptLogError(
            state.run_id,
            event.sequence,
            f"{type(event).__name__} at {identity}, where no receive waits",
        )
    return receive


def _message_received(state: RunState, event: MessageReceived) -> None:
    receive = _open_receive(state, event)
    receive.received = True
    receive.payload = event.payload
    if event.key:
        state.message_keys.add(event.key)


def _receive_timed_out(state: RunState, event: ReceiveTimedOut) -> None:
    receive = _open_receive(state, event)
    if receive.deadline is None:
        raise CorruptLogError(
            state.run_id, event.sequence, f"the receive at {receive.identity} has no deadline"
        )
    receive.timed_out = True


def _message_sent(state: RunState, event: MessageSent) -> None:
    state.sends[_new_identity(state, event)] = event


def _value_published(state: RunState, event: ValuePublished) -> None:
    identity = _new_identity(state, event)
    if type(event.key) is not str:
        raise CorruptLogError(state.run_id, event.sequence, f"published key {event.key!r}")
    state.publishes[identity] = event.key
    state.published[event.key] = event.value


def _child_started(state: RunState, event: ChildStarted) -> None:
    identity = _new_identity(state, event)
    state.children[identity] = ChildState(
        identity, event.child, event.workflow, branch=event.branch, position=event.position
    )


def _child_ended(state: RunState, event: ChildEnded) -> None:
    identity = _identity(state, event)
    child = state.children.get(identity)
    if child is None or child.status is not None:
        raise CorruptLogError(
            state.run_id, event.sequence, f"ChildEnded at {identity}, where no child runs"
        )
    if event.status not in _ENDED_VALUES:
        raise CorruptLogError(state.run_id, event.sequence, f"child status {event.status!r}")
    child.status = event.status
    child.result = event.result
    child.error_type = event.error_type
    child.error_message = event.error_message


def _first_won(state: RunState, event: FirstWon) -> None:
    identity = _new_identity(state, event)
    if type(event.winner) is not int or event.winner < 0:
        raise CorruptLogError(state.run_id, event.sequence, f"winner {event.winner!r}")
    state.firsts[identity] = event.winner


def _cancel_requested(state: RunState, event: CancelRequested) -> None:
    _require_started(state, event)
    if state.cancel_reason is not None:
        raise CorruptLogError(state.run_id, event.sequence, "a second CancelRequested")
    state.cancel_reason = event.reason


def _operation_cancelled(state: RunState, event: OperationCancelled) -> None:
    identity = _identity(state, event)
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
    receive = state.receives.get(identity)
    if receive is not None:
        if receive.ended:
            raise CorruptLogError(
                state.run_id, event.sequence, f"cancelled the receive at {identity} after it ended"
            )
        receive.cancelled = True
        return
    child = state.children.get(identity)
    if child is not None:
        if child.status is not None or child.cancelled:
            raise CorruptLogError(
                state.run_id, event.sequence, f"cancelled the wait for {child.child!r} twice"
            )
        child.cancelled = True
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
    ReceiveStarted: _receive_started,
    MessageReceived: _message_received,
    ReceiveTimedOut: _receive_timed_out,
    MessageSent: _message_sent,
    ValuePublished: _value_published,
    ChildStarted: _child_started,
    ChildEnded: _child_ended,
    FirstWon: _first_won,
    CancelRequested: _cancel_requested,
    OperationCancelled: _operation_cancelled,
    RunResumed: _run_resumed,
    RunCompleted: _run_completed,
    RunFailed: _run_failed,
    RunCancelled: _run_cancelled,
}
