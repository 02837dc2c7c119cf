"""The facts a run's log is made of.

Every event is an immutable record of something that already happened, numbered by a
dense per-run `sequence` (1, 2, 3, ...). Results and arguments are stored as the text the
runtime's serializer produced, so events never hold live Python objects and a log reads
back exactly as it was written, whatever the serializer.

Every operation of a run (a step, a sleep) is named by its structural identity: the
`branch` it runs in (`""` for the workflow's root, `"2"` for the second branch the root
created with `aruntime.gather` or `aruntime.TaskGroup`, `"2.1"` for the first branch that
one created) and its `position` in that branch, counted from 1. The identity is written
`"3"` for the root's third operation and `"2.1.3"` for the third operation of branch
`2.1` (see `op_identity`). It depends only on the workflow's code, never on the order in
which concurrent operations finished.

Events are frozen msgspec structs: two are built per step, and a struct is built in about
a tenth of the time of a frozen dataclass. Fields added after the first release have
defaults, so that logs written before them still read.

`at` is the wall-clock time (seconds since the epoch) at which the runtime wrote the event;
the fold never reads it except to copy it into the state.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "CancelRequested",
    "ChildEnded",
    "ChildStarted",
    "Event",
    "FirstWon",
    "MessageReceived",
    "MessageSent",
    "OperationCancelled",
    "ReceiveStarted",
    "ReceiveTimedOut",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunResumed",
    "RunStarted",
    "SleepStarted",
    "StepCompleted",
    "StepFailed",
    "StepStarted",
    "ValuePublished",
    "op_identity",
]


def op_identity(branch: str, position: int) -> str:
    """The identity of the operation at `position` of `branch`, as logs and errors name it."""
    return f"{branch}.{position}" if branch else str(position)


class RunStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The run was created; always the first event of a log."""

    sequence: int
    at: float
    run_id: str
    workflow: str
    args: str
    """The serialized `[positional, keyword]` arguments of the workflow."""
    deadline: float | None = None
    """Wall-clock time at which the run is cancelled with the reason `timeout`."""
    parent: str | None = None
    """The run that started this one as its child (`aruntime.run_child`), if any."""
    forked_from: str | None = None
    """The run whose log this one copied up to `forked_at` (`Client.fork`), if any."""
    forked_at: str | None = None
    """The identity of the operation the fork resumes from."""
    queue: str | None = None
    """The queue the run waits on until it is admitted (`aruntime.Queue`), if any."""
    priority: int = 0
    """Its priority in the queue: lower numbers are admitted first."""
    partition_key: str | None = None
    """Its partition in the queue: partitions take turns."""


class StepStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An attempt of the step at (`branch`, `position`) began; durable before the body runs."""

    sequence: int
    at: float
    position: int
    """The operation's place in its branch, counted from 1."""
    step: str
    attempt: int
    branch: str = ""
    digest: str = ""
    """A short digest of the step's arguments; empty when they were not recorded."""


class StepCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The attempt returned; `result` is the serialized return value."""

    sequence: int
    at: float
    position: int
    step: str
    attempt: int
    result: str
    branch: str = ""


class StepFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The attempt raised; `retry_at` is when the next attempt is due, None if none is."""

    sequence: int
    at: float
    position: int
    step: str
    attempt: int
    error_type: str
    error_message: str
    retry_at: float | None
    branch: str = ""


class SleepStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow began a durable sleep until `wake_at` (wall-clock seconds)."""

    sequence: int
    at: float
    position: int
    wake_at: float
    branch: str = ""


class ReceiveStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow began waiting for a message on `topic`; durable before it waits.

    `deadline` (wall-clock seconds) is when the wait times out, None for never: a restart
    waits only what is left of it.
    """

    sequence: int
    at: float
    position: int
    topic: str
    deadline: float | None = None
    branch: str = ""


class MessageReceived(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The receive at (`branch`, `position`) consumed a message; `payload` is its text.

    Recorded in the transaction that consumes the message from the inbox, so a message is
    delivered exactly once, and replay returns the payload without reading the inbox.
    """

    sequence: int
    at: float
    position: int
    payload: str
    key: str = ""
    """The message's idempotency key; a later message with the same key is dropped."""
    branch: str = ""


class ReceiveTimedOut(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The receive at (`branch`, `position`) reached its deadline with no message."""

    sequence: int
    at: float
    position: int
    branch: str = ""


class MessageSent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow sent `payload` to run `target`; durable before the message is posted.

    `key` is the message's idempotency key, so that posting it again after a crash
    delivers it once. `error_type` is set when the send was refused (no such run, or it
    ended), and replay raises the same error.
    """

    sequence: int
    at: float
    position: int
    target: str
    topic: str
    payload: str
    key: str
    error_type: str = ""
    branch: str = ""


class ValuePublished(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow published `value` (serialized) under `key`; the latest one wins."""

    sequence: int
    at: float
    position: int
    key: str
    value: str
    branch: str = ""


class ChildStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow started run `child` of `workflow`; durable before the child is asked for."""

    sequence: int
    at: float
    position: int
    child: str
    workflow: str
    branch: str = ""


class ChildEnded(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The child started at (`branch`, `position`) ended `status` (a `RunStatus` value).

    `result` is its serialized result when it completed; `error_type`/`error_message`
    say why it failed or was cancelled.
    """

    sequence: int
    at: float
    position: int
    status: str
    result: str | None = None
    error_type: str = ""
    error_message: str = ""
    branch: str = ""


class FirstWon(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """`aruntime.first` at (`branch`, `position`) was won by its awaitable `winner` (from 0).

    Replay waits for that one only, whatever finishes first during replay.
    """

    sequence: int
    at: float
    position: int
    winner: int
    branch: str = ""


class CancelRequested(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Someone asked for the run to be cancelled (a user, or its deadline)."""

    sequence: int
    at: float
    reason: str
    request: int = 0
    """The inbox request this applies (consumed right after), 0 when not from the inbox."""


class OperationCancelled(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The run's cancellation reached the operation at (`branch`, `position`).

    Replay delivers the cancellation at the same operation again.
    """

    sequence: int
    at: float
    position: int
    branch: str = ""


class RunResumed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Someone resumed the run after the supervisor had parked it for `reason`.

    The attempts of the steps in flight at that moment were lost to that cause (a body's
    BaseException, a store outage), not to a crash of the process: from here on they no
    longer count against the steps' retry limits.
    """

    sequence: int
    at: float
    reason: str
    request: int = 0
    """The inbox request this applies (consumed right after), 0 when not from the inbox."""


class RunCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow returned; `result` is the serialized return value."""

    sequence: int
    at: float
    result: str


class RunFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow raised; the run is terminal."""

    sequence: int
    at: float
    error_type: str
    error_message: str


class RunCancelled(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The run ended by its cancellation; the run is terminal."""

    sequence: int
    at: float
    reason: str


Event: TypeAlias = (
    RunStarted
    | StepStarted
    | StepCompleted
    | StepFailed
    | SleepStarted
    | ReceiveStarted
    | MessageReceived
    | ReceiveTimedOut
    | MessageSent
    | ValuePublished
    | ChildStarted
    | ChildEnded
    | FirstWon
    | CancelRequested
    | OperationCancelled
    | RunResumed
    | RunCompleted
    | RunFailed
    | RunCancelled
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        RunStarted,
        StepStarted,
        StepCompleted,
        StepFailed,
        SleepStarted,
        ReceiveStarted,
        MessageReceived,
        ReceiveTimedOut,
        MessageSent,
        ValuePublished,
        ChildStarted,
        ChildEnded,
        FirstWon,
        CancelRequested,
        OperationCancelled,
        RunResumed,
        RunCompleted,
        RunFailed,
        RunCancelled,
    )
}
"""Every event class by its name, as stores write it."""
