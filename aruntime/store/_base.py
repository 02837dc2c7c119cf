"""The store protocol: what every backend offers, and the checks they all share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aruntime.errors import ConcurrencyError, CorruptLogError
from aruntime.events import Event, RunCancelled, RunCompleted, RunFailed, RunStarted
from aruntime.state import RunStatus

__all__ = ["EventStore", "RunInfo", "check_batch", "status_after"]


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

    @property
    def parked(self) -> bool:
        return self.parked_reason is not None


class EventStore(Protocol):
    """Append-only, per-run event logs plus an index of runs.

    Invariants every implementation keeps (the contract suite in `tests/` checks them):

    * a log's sequences are dense from 1; `append` with an `expected_sequence` other than
      the log's last sequence raises `ConcurrencyError` and appends nothing;
    * an `append` is all or nothing, and durable at the store's configured level when it
      returns;
    * the run index (`get_run`, `list_runs`) reflects every returned append;
    * parking touches the index only, never the log.
    """

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

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Index rows, oldest first, filtered by log status and by parked flag."""
        ...

    async def park(self, run_id: str, reason: str) -> None:
        """Mark the run parked with `reason` (index only)."""
        ...

    async def unpark(self, run_id: str) -> None:
        """Clear the parked mark so that the run is resumed again."""
        ...


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
