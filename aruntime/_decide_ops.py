"""What the runner does next for a receive, a send, a publish, a child run or a first-of.

The same shape as `aruntime._decide`, which it extends: pure functions of the fold, the
time and whether a cancellation is still to be delivered, one action each. An operation
the log holds is replayed as recorded (its payload, its winner, its child's outcome); a
new one is recorded before it acts (`Record*`), except when a cancellation is pending,
which is delivered there instead (the frontier). Another operation recorded at the same
identity is a `Mismatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from aruntime._decide import Cancel, Mismatch
from aruntime.events import MessageSent
from aruntime.state import ChildState, RunState

__all__ = [
    "Act",
    "ChildOutcome",
    "Deliver",
    "ReceiveAction",
    "RecordReceive",
    "Recorded",
    "Take",
    "TimedOut",
    "WaitChild",
    "Winner",
    "next_child_start",
    "next_child_wait",
    "next_first_action",
    "next_publish_action",
    "next_receive_action",
    "next_send_action",
    "send_confirmed",
]


@dataclass(frozen=True, slots=True)
class RecordReceive:
    """A new receive: record its topic and deadline, then look for a message."""

    deadline: float | None


@dataclass(frozen=True, slots=True)
class Take:
    """Consume the next message of the topic if there is one; else wait for one until
    `deadline`, or record the timeout if it has `expired`."""

    deadline: float | None
    expired: bool


@dataclass(frozen=True, slots=True)
class Deliver:
    """The receive consumed a message before: return its payload."""

    payload: str


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The receive timed out before: raise `TimeoutError` again."""


@dataclass(frozen=True, slots=True)
class Act:
    """A new send, publish or child start: record it, then do it."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """The operation is in the log: replay it (`sent` is the send's record, if one)."""

    sent: MessageSent | None = None
    child: ChildState | None = None


@dataclass(frozen=True, slots=True)
class WaitChild:
    """The child runs: wait for it to end, then record how."""


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    """The child's end is recorded: return its result or raise its error."""

    child: ChildState


@dataclass(frozen=True, slots=True)
class Winner:
    """`aruntime.first` was won by awaitable `index` before: wait for that one only."""

    index: int


ReceiveAction: TypeAlias = RecordReceive | Take | Deliver | TimedOut | Mismatch | Cancel


def _new(
    state: RunState, identity: str, requested: str, cancel_pending: bool
) -> Mismatch | Cancel | Act:
    other = state.operation_at(identity)
    if other is not None:
        return Mismatch(other, requested)
    if cancel_pending:
        return Cancel(record=False)
    return Act()


def next_receive_action(
    state: RunState,
    identity: str,
    *,
    topic: str,
    deadline: float | None,
    now: float,
    cancel_pending: bool,
) -> ReceiveAction:
    """Decide the next action for a receive on `topic` asked for at `identity`.

    `deadline` counts for a new receive only: a recorded one keeps the deadline it
    recorded, however late the replay.
    """
    requested = f"a receive on topic {topic!r}"
    current = state.receives.get(identity)
    if current is None:
        new = _new(state, identity, requested, cancel_pending)
        return RecordReceive(deadline) if isinstance(new, Act) else new
    if current.topic != topic:
        return Mismatch(f"a receive on topic {current.topic!r}", requested)
    if current.received:
        assert current.payload is not None
        return Deliver(current.payload)
    if current.timed_out:
        return TimedOut()
    if current.cancelled:
        return Cancel(record=False)
    if cancel_pending:
        return Cancel(record=True)
    recorded = current.deadline
    return Take(recorded, expired=recorded is not None and recorded <= now)


def next_send_action(
    state: RunState, identity: str, *, target: str, topic: str, cancel_pending: bool
) -> Act | Recorded | Mismatch | Cancel:
    """Decide the next action for a send of a message to `target` on `topic`."""
    requested = f"a send to run {target!r}"
    sent = state.sends.get(identity)
    if sent is None:
        return _new(state, identity, requested, cancel_pending)
    if sent.target != target or sent.topic != topic:
        return Mismatch(
            f"a send to run {sent.target!r} on topic {sent.topic!r}",
            f"{requested} on topic {topic!r}",
        )
    return Recorded(sent=sent)


def send_confirmed(state: RunState, sent: MessageSent) -> bool:
    """Whether the log proves that the recorded send was posted: the branch went on to
    its next operation, which it does only after the post."""
    branch = sent.branch
    after = f"{branch}.{sent.position + 1}" if branch else str(sent.position + 1)
    return state.operation_at(after) is not None


def next_publish_action(
    state: RunState, identity: str, *, key: str, cancel_pending: bool
) -> Act | Recorded | Mismatch | Cancel:
    """Decide the next action for a publish of a value under `key`."""
    recorded = state.publishes.get(identity)
    if recorded is None:
        return _new(state, identity, f"a publish of {key!r}", cancel_pending)
    if recorded != key:
        return Mismatch(f"a publish of {recorded!r}", f"a publish of {key!r}")
    return Recorded()


def next_child_start(
    state: RunState, identity: str, *, workflow: str, child: str, cancel_pending: bool
) -> Act | Recorded | Mismatch | Cancel:
    """Decide the next action for the start of child run `child` of `workflow`."""
    requested = f"child run {child!r} of workflow {workflow!r}"
    current = state.children.get(identity)
    if current is None:
        return _new(state, identity, requested, cancel_pending)
    if current.workflow != workflow or current.child != child:
        return Mismatch(f"child run {current.child!r} of workflow {current.workflow!r}", requested)
    return Recorded(child=current)


def next_child_wait(
    state: RunState, identity: str, *, cancel_pending: bool
) -> ChildOutcome | WaitChild | Cancel:
    """Decide the next action of a wait for the child started at `identity`."""
    current = state.children[identity]
    if current.status is not None:
        return ChildOutcome(current)
    if current.cancelled:
        return Cancel(record=False)
    if cancel_pending:
        return Cancel(record=True)
    return WaitChild()


def next_first_action(state: RunState, identity: str, *, count: int) -> Act | Winner | Mismatch:
    """Decide how `aruntime.first` of `count` awaitables at `identity` goes on: race them
    (and record the winner), or wait for the winner the log recorded."""
    requested = f"aruntime.first of {count}"
    winner = state.firsts.get(identity)
    if winner is None:
        other = state.operation_at(identity)
        return Act() if other is None else Mismatch(other, requested)
    if winner >= count:
        return Mismatch(f"aruntime.first won by awaitable {winner}", requested)
    return Winner(winner)
