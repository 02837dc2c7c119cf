"""The in-memory store: the same invariants as the durable ones, for tests and benchmarks.

Events are kept as the objects appended, each beside a checksum taken at append and
checked on every read, as the SQL stores check their rows. There are no bytes here that
could rot, only objects that could be changed in place (`msgspec.structs.force_setattr`, a
hook holding a reference) or swapped for others, so the checksum is the event's `hash`: a
frozen struct hashes its type and every field, strings cache their hash, and it costs
about 70 ns, where an encoding plus CRC costs four times that (and msgpack refuses the lone
surrogates that events may hold). Its blind spots are values Python hashes alike (-1 and
-2, 1 and 1.0), none of which a flipped byte or a changed string falls into.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aruntime.errors import RunNotFoundError, SerializationError, StoreCorruptError
from aruntime.events import Event, RunStarted
from aruntime.state import RunStatus
from aruntime.store._base import RunInfo, check_batch, raise_stale, status_after

__all__ = ["MemoryStore"]


class _Row:
    """A run's index entry; version and update time are read off the log itself."""

    __slots__ = ("checksums", "created_at", "log", "parked_reason", "status", "workflow")

    def __init__(self, workflow: str, created_at: float) -> None:
        self.workflow = workflow
        self.created_at = created_at
        self.status = RunStatus.RUNNING
        self.parked_reason: str | None = None
        self.log: list[Event] = []
        self.checksums: list[int] = []
        """`checksums[i]` is the checksum of `log[i]` when it was appended."""

    def info(self, run_id: str) -> RunInfo:
        last = self.log[-1]
        return RunInfo(
            run_id=run_id,
            workflow=self.workflow,
            status=self.status,
            version=last.sequence,
            created_at=self.created_at,
            updated_at=last.at,
            parked_reason=self.parked_reason,
        )


class MemoryStore:
    """Logs in a dict, guarded by a lock; lost with the process.

    One `MemoryStore` may be shared by several `Runtime`s in turn, which is how tests show
    that a runtime resumes what another left unfinished.
    """

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        check_batch(run_id, events, expected_sequence)
        try:  # most appends hold one event: spare them the map
            checksums = [hash(events[0])] if len(events) == 1 else list(map(hash, events))
        except TypeError as exc:  # a field holds a list, a dict...: nothing a store keeps
            raise SerializationError(
                f"the events cannot be stored: a field holds an unhashable value ({exc})",
                run_id=run_id,
            ) from None
        async with self._lock:
            row = self._rows.get(run_id)
            actual = len(row.log) if row is not None else 0
            if actual != expected_sequence:
                raise_stale(run_id, expected_sequence, actual)
            if row is None:
                first = events[0]
                assert isinstance(first, RunStarted)
                row = self._rows[run_id] = _Row(first.workflow, first.at)
            row.log.extend(events)
            row.checksums.extend(checksums)
            row.status = status_after(row.status, events)

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        row = self._rows.get(run_id)
        if row is None:
            return []
        start = max(0, after)
        events = row.log[start:]
        checksums = row.checksums[start:]
        if list(map(hash, events)) != checksums:
            damaged = next(e for e, c in zip(events, checksums, strict=True) if hash(e) != c)
            raise StoreCorruptError(
                f"the memory store: event {damaged.sequence} is damaged: it changed after it "
                "was appended (its checksum does not match)",
                run_id=run_id,
            )
        return events

    async def get_run(self, run_id: str) -> RunInfo | None:
        row = self._rows.get(run_id)
        return None if row is None else row.info(run_id)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        rows = [
            row.info(run_id)
            for run_id, row in self._rows.items()
            if (status is None or row.status is status)
            and (parked is None or (row.parked_reason is not None) == parked)
        ]
        return rows if limit is None else rows[:limit]

    async def park(self, run_id: str, reason: str) -> None:
        self._row(run_id).parked_reason = reason

    async def unpark(self, run_id: str) -> None:
        self._row(run_id).parked_reason = None

    def _row(self, run_id: str) -> _Row:
        row = self._rows.get(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        return row
