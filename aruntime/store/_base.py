"""The store protocol: what every backend offers, and the checks they all share."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aruntime._admission import Admission
from aruntime.errors import ConcurrencyError, ConfigError, CorruptLogError
from aruntime.events import Event, RunCancelled, RunCompleted, RunFailed, RunStarted
from aruntime.queues import Queue
from aruntime.state import RunStatus

__all__ = [
    "CONTROL_KINDS",
    "EventStore",
    "OwnerInfo",
    "Request",
    "RequestKind",
    "RunInfo",
    "check_batch",
    "check_prune_status",
    "status_after",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """One row of the store's index of runs, kept in step with the log on every append."""

    run_id: str
    workflow: str
    status: RunStatus
    version: int
    """The sequence of the run's last event."""
    created_at: float
    updated_at: float
    parked_reason: str | None = None
    """Why the supervisor parked the run; None while it is not parked."""
    queue: str | None = None
    """The queue it was started on, if any (see `aruntime.queues`)."""
    priority: int = 0
    partition_key: str | None = None
    admitted_at: float | None = None
    """When its queue admitted it (the store's clock); None while it waits, or for a run
    started on no queue."""

    @property
    def parked(self) -> bool:
        return self.parked_reason is not None

    @property
    def queued(self) -> bool:
        """Whether it waits for its queue to admit it (it is not executed meanwhile)."""
        return self.queue is not None and self.admitted_at is None


class RequestKind(enum.StrEnum):
    """What a request from outside asks of the runtime that owns the store."""

    START = "start"
    CANCEL = "cancel"
    RESUME = "resume"
    MESSAGE = "message"
    """A message for the run, consumed by the run's `aruntime.receive` (not by the inbox
    loop) in the transaction that records it."""
    FORK = "fork"
    """Make run `run_id` a copy of run `origin` up to the operation `from_step`."""


CONTROL_KINDS = frozenset(
    {RequestKind.START, RequestKind.CANCEL, RequestKind.RESUME, RequestKind.FORK}
)
"""The kinds the owning runtime's inbox loop applies in order (all but messages)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One entry of the store's inbox: a change to a run, asked from outside its runtime.

    Clients post requests; the runtime that owns the store applies them in `id` order and
    consumes each one in the transaction that records what it caused.
    """

    kind: RequestKind
    run_id: str
    at: float
    """When the request was posted (epoch seconds)."""
    workflow: str | None = None
    """START: the workflow's registered name."""
    args: str | None = None
    """START: the arguments, encoded by the serializer as `RunStarted.args` records them."""
    timeout: float | None = None
    """START: seconds from the start after which the run is cancelled (its deadline)."""
    reason: str | None = None
    """CANCEL: the reason recorded with the cancellation."""
    parent: str | None = None
    """START: the run that asked for this one as its child."""
    topic: str | None = None
    """MESSAGE: the topic the run receives it on."""
    payload: str | None = None
    """MESSAGE: the serialized payload."""
    key: str | None = None
    """MESSAGE: the idempotency key; a second message with the same key is dropped."""
    origin: str | None = None
    """FORK: the run copied."""
    from_step: str | None = None
    """FORK: the identity of the first operation not copied."""
    queue: str | None = None
    """START: the queue the run waits on (see `aruntime.queues`)."""
    priority: int | None = None
    """START: its priority in the queue."""
    partition_key: str | None = None
    """START: its partition in the queue."""
    id: int = 0
    """The inbox position the store gave the request (0 before it is posted)."""


class EventStore(Protocol):
    """Append-only, per-run event logs plus an index of runs.

    Invariants every implementation keeps (the contract suite in `tests/` checks them):

    * a log's sequences are dense from 1; `append` with an `expected_sequence` other than
      the log's last sequence raises `ConcurrencyError` and appends nothing;
    * an `append` is all or nothing, and durable at the store's configured level when it
      returns;
    * the run index (`get_run`, `list_runs`) reflects every returned append;
    * parking touches the index only, never the log;
    * the inbox hands requests out in the order they were posted, and a request consumed
      with events is gone exactly when those events are durable;
    * only ended runs are removed (`delete_run`, `prune`);
    * `change_counter` moves after every committed change to the inbox, to the set of runs,
      to a run's status, to its published values (`ValuePublished`) or to its parked
      mark, this process's or another's (it may move after other changes too).

    A store opened by a `Client` (`owner` False) reads, posts requests and removes ended
    runs; every other write raises `StoreNotOwnerError`.
    """

    @property
    def owner(self) -> bool:
        """Whether this store may append, park and consume (a Runtime's store)."""
        ...

    async def open(self) -> None:
        """Acquire connections and files; idempotent."""
        ...

    async def aclose(self) -> None:
        """Release everything `open` acquired; idempotent."""
        ...

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        """Append `events`, numbered `expected_sequence + 1` onwards, to the run's log.

        Raises:
            ConcurrencyError: the log does not end at `expected_sequence`.
            CorruptLogError: the events are not numbered from `expected_sequence + 1`, or
                a new log does not begin with `RunStarted`.
            StoreError: the store failed; nothing of this batch is durable.
        """
        ...

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        """The run's events with sequence greater than `after`, in order ([] if none)."""
        ...

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The index row of one run, or None."""
        ...

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunInfo]:
        """The index rows of the runs that exist among `run_ids`, in no particular order."""
        ...

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        """Index rows, oldest first, filtered by log status, parked flag, workflow name and
        creation time (`created_at >= since`)."""
        ...

    async def park(self, run_id: str, reason: str) -> None:
        """Mark the run parked with `reason` (index only)."""
        ...

    async def unpark(self, run_id: str) -> None:
        """Clear the parked mark so that the run is resumed again."""
        ...

    async def post(self, request: Request) -> int:
        """Add `request` to the inbox, durably; returns its id (its place in the order)."""
        ...

    async def pending(
        self,
        *,
        run_id: str | None = None,
        limit: int | None = None,
        kinds: Collection[RequestKind] | None = None,
        after: int = 0,
    ) -> list[Request]:
        """Requests not consumed yet, in the order they were posted: of one run if given,
        of the given kinds only, and with an id greater than `after`."""
        ...

    async def consume(
        self,
        request_id: int,
        run_id: str | None = None,
        events: Sequence[Event] = (),
        expected_sequence: int = 0,
    ) -> None:
        """Remove a request from the inbox, with the events it caused in one transaction.

        With `events`, they are appended as `append` would, and the request is gone
        exactly when they are durable; a refused append (`ConcurrencyError`, ...) leaves
        the request pending. Consuming a request that is already gone removes nothing.

        Raises:
            StoreNotOwnerError: the store is not the owner's.
        """
        ...

    async def delete_run(self, run_id: str) -> None:
        """Remove an ended run: its log and its index row.

        Raises:
            RunNotFoundError: no such run.
            RunActiveError: the run has not ended.
        """
        ...

    async def prune(self, *, older_than: float, status: RunStatus | None = None) -> int:
        """Remove the ended runs (of `status`, if given) last updated before the epoch time
        `older_than`; returns how many.

        Raises:
            ConfigError: `status` is not an ended status.
        """
        ...

    async def admit(
        self, queues: Mapping[str, Queue], workflows: Collection[str], now: Callable[[], float]
    ) -> Admission:
        """Admit the waiting runs of `queues` (of the `workflows` named only) that their
        limits let in now, each run once, and mark them admitted in the index.

        `now` is the caller's clock, read once inside the admission's transaction (so that
        an admission is never recorded before the end of a run whose place it took); a
        store whose writers share a clock of their own (the database's, on PostgreSQL)
        uses that instead. See `aruntime.queues`.

        Raises:
            StoreNotOwnerError: the store is not the owner's.
        """
        ...

    async def set_owner_info(self, info: OwnerInfo | None) -> None:
        """Record (or with None, clear) what the owning runtime executes, for the tools that
        show which runs wait for a runtime that knows their workflow.

        Raises:
            StoreNotOwnerError: the store is not the owner's.
        """
        ...

    async def owner_info(self) -> OwnerInfo | None:
        """What the owning runtime recorded with `set_owner_info`, unless it cleared it."""
        ...

    def change_counter(self) -> int:
        """A number that grows after every committed change; cheap, no I/O."""
        ...

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        """Wait until `change_counter()` exceeds `since` (or `timeout` seconds pass);
        returns the counter. Read what you wait for, then wait with the counter taken
        before that read, and no change is missed."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerInfo:
    """What the runtime that owns a store says of itself."""

    pid: int
    workflows: tuple[str, ...]
    """The names of the workflows it executes."""


def check_batch(run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
    """Check the numbering of a batch before it reaches storage.

    Raises:
        CorruptLogError: the batch is empty, not numbered from `expected_sequence + 1`, or
            starts a log with something other than `RunStarted` for this run id.
    """
    if not events:
        raise CorruptLogError(run_id, None, "append of an empty batch")
    first = events[0]
    if type(first) is RunStarted:
        if first.run_id != run_id:
            raise CorruptLogError(run_id, 1, f"RunStarted names run {first.run_id!r}")
    elif expected_sequence == 0:
        raise CorruptLogError(run_id, 1, f"a log must begin with RunStarted, not {first!r:.80}")
    for offset, event in enumerate(events, start=1):
        if event.sequence != expected_sequence + offset:
            raise CorruptLogError(
                run_id,
                event.sequence,
                f"batch numbered out of order: expected {expected_sequence + offset}",
            )


def status_after(status: RunStatus, events: Sequence[Event]) -> RunStatus:
    """The run's status once `events` are appended, for the index."""
    moves = _STATUS_OF
    for event in events:
        status = moves.get(type(event), status)
    return status


_STATUS_OF: dict[type[Any], RunStatus] = {
    RunStarted: RunStatus.RUNNING,
    RunCompleted: RunStatus.COMPLETED,
    RunFailed: RunStatus.FAILED,
    RunCancelled: RunStatus.CANCELLED,
}
"""The status each event type moves a run to; the other events leave it alone."""


def raise_stale(run_id: str, expected: int, actual: int) -> None:
    """Raise the error of a stale writer."""
    raise ConcurrencyError(run_id, expected, actual)


def check_prune_status(status: RunStatus | None) -> None:
    """Refuse a status that no removable run has.

    Raises:
        ConfigError: `status` is not an ended status.
    """
    if status is not None and not (isinstance(status, RunStatus) and status.terminal):
        raise ConfigError(
            "prune removes ended runs only: status must be completed, failed or cancelled, "
            f"not {status!r}"
        )
