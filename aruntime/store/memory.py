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
import collections
import dataclasses
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence

from aruntime._admission import Admission, Waiting, plan, room
from aruntime.errors import (
    RunActiveError,
    RunNotFoundError,
    SerializationError,
    StoreCorruptError,
)
from aruntime.events import Event, RunStarted, ValuePublished
from aruntime.queues import Queue
from aruntime.state import RunStatus
from aruntime.store._base import (
    OwnerInfo,
    Request,
    RequestKind,
    RunInfo,
    check_batch,
    check_prune_status,
    raise_stale,
    status_after,
)
from aruntime.store._changes import ChangeSignal

__all__ = ["MemoryStore"]


class _Row:
    """A run's index entry; version and update time are read off the log itself."""

    __slots__ = (
        "admitted_at",
        "checksums",
        "created_at",
        "log",
        "parked_reason",
        "started",
        "status",
        "turn",
        "workflow",
    )

    def __init__(self, started: RunStarted) -> None:
        self.started = started
        """The run's first event: its workflow and its place in a queue."""
        self.workflow = started.workflow
        self.created_at = started.at
        self.admitted_at: float | None = None
        self.turn = 0
        """The turn its queue admitted it at (see `aruntime._admission`)."""
        self.status = RunStatus.RUNNING
        self.parked_reason: str | None = None
        self.log: list[Event] = []
        self.checksums: list[int] = []
        """`checksums[i]` is the checksum of `log[i]` when it was appended."""

    def info(self, run_id: str) -> RunInfo:
        last, started = self.log[-1], self.started
        return RunInfo(
            run_id=run_id,
            workflow=self.workflow,
            status=self.status,
            version=last.sequence,
            created_at=self.created_at,
            updated_at=last.at,
            parked_reason=self.parked_reason,
            queue=started.queue,
            priority=started.priority,
            partition_key=started.partition_key,
            admitted_at=self.admitted_at,
        )

    def waiting(self, run_id: str) -> Waiting:
        started = self.started
        return Waiting(
            run_id, started.priority, started.partition_key or "", (self.created_at, run_id)
        )


class _QueueBook:
    """One queue's unfinished runs, by partition, and its admissions' standings."""

    __slots__ = ("admitted", "last_turn", "served", "times", "waiting")

    def __init__(self) -> None:
        self.waiting: dict[tuple[int, str], dict[str, _Row]] = {}
        """The runs waiting, by (priority, partition key), first come first."""
        self.admitted: set[str] = set()
        """The runs admitted that have not ended."""
        self.times: collections.deque[float] = collections.deque()
        """When the latest admissions were made, oldest first (trimmed to the rate's window)."""
        self.served: dict[str, int] = {}
        """Each partition's latest turn."""
        self.last_turn = 0

    def heads(self, space: int, workflows: Collection[str]) -> list[Waiting]:
        """The waiting runs `choose` may pick from (see `_sqlite_queues._heads`)."""
        levels: dict[int, list[dict[str, _Row]]] = {}
        for (priority, _), line in self.waiting.items():
            if line:
                levels.setdefault(priority, []).append(line)
        heads: list[Waiting] = []
        left = space

        def take(line: dict[str, _Row], count: int) -> list[Waiting]:
            eligible = (
                row.waiting(run_id)
                for run_id, row in line.items()
                if row.parked_reason is None and row.workflow in workflows
            )
            return list(itertools.islice(eligible, count))

        for priority in sorted(levels):
            firsts = [(line, found) for line in levels[priority] if (found := take(line, 1))]
            if len(firsts) < left:  # too few partitions to fill the space one run each
                firsts = [(line, take(line, left)) for line, _ in firsts]
            for _, found in firsts:
                heads += found
                left -= len(found)
            if left <= 0:
                break
        return heads

    def add(self, run_id: str, row: _Row) -> None:
        self.waiting.setdefault(_line_of(row), {})[run_id] = row

    def admit(self, run_id: str, row: _Row, at: float) -> None:
        self._leave(run_id, row)
        self.admitted.add(run_id)
        self.times.append(at)
        self.served[row.started.partition_key or ""] = self.last_turn = row.turn

    def ended(self, run_id: str, row: _Row) -> None:
        self.admitted.discard(run_id)
        self._leave(run_id, row)

    def _leave(self, run_id: str, row: _Row) -> None:
        """`run_id` waits no more; a partition left without waiting runs is forgotten."""
        key = _line_of(row)
        line = self.waiting.get(key)
        if line is not None and line.pop(run_id, None) is not None and not line:
            del self.waiting[key]


def _line_of(row: _Row) -> tuple[int, str]:
    return (row.started.priority, row.started.partition_key or "")


class MemoryStore:
    """Logs in a dict, guarded by a lock; lost with the process.

    One `MemoryStore` may be shared by several `Runtime`s in turn, which is how tests show
    that a runtime resumes what another left unfinished.
    """

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._lock = asyncio.Lock()
        self._inbox: dict[int, Request] = {}
        self._ids = itertools.count(1)
        self._owner_info: OwnerInfo | None = None
        self._queues: dict[str, _QueueBook] = {}
        """The unfinished runs of each queue, and what its admissions need to know."""
        self._changes = ChangeSignal()

    @property
    def owner(self) -> bool:
        return True

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
                row = self._rows[run_id] = _Row(first)
                if first.queue is not None:
                    self._queues.setdefault(first.queue, _QueueBook()).add(run_id, row)
            row.log.extend(events)
            row.checksums.extend(checksums)
            status = row.status
            row.status = status_after(status, events)
            if row.status.terminal and row.started.queue is not None:
                self._queues[row.started.queue].ended(run_id, row)
        if (
            expected_sequence == 0
            or row.status is not status
            or any(type(event) is ValuePublished for event in events)
        ):
            # What waiters wait for: a new run, a run's end, a published value. A step's
            # progress wakes nobody, which keeps the in-memory hot path free of wake-ups.
            self._changes.bump()

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

    async def get_runs(self, run_ids: Sequence[str]) -> list[RunInfo]:
        rows = self._rows
        return [rows[run_id].info(run_id) for run_id in set(run_ids) if run_id in rows]

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
        workflow: str | None = None,
        since: float | None = None,
    ) -> list[RunInfo]:
        rows = [
            row.info(run_id)
            for run_id, row in self._rows.items()
            if (status is None or row.status is status)
            and (parked is None or (row.parked_reason is not None) == parked)
            and (workflow is None or row.workflow == workflow)
            and (since is None or row.created_at >= since)
        ]
        return rows if limit is None else rows[: max(0, limit)]

    async def park(self, run_id: str, reason: str) -> None:
        self._row(run_id).parked_reason = reason
        self._changes.bump()

    async def unpark(self, run_id: str) -> None:
        self._row(run_id).parked_reason = None
        self._changes.bump()

    async def post(self, request: Request) -> int:
        request_id = next(self._ids)
        self._inbox[request_id] = dataclasses.replace(request, id=request_id)
        self._changes.bump()
        return request_id

    async def pending(
        self,
        *,
        run_id: str | None = None,
        limit: int | None = None,
        kinds: Collection[RequestKind] | None = None,
        after: int = 0,
    ) -> list[Request]:
        found = [
            r
            for r in self._inbox.values()
            if (run_id is None or r.run_id == run_id)
            and (kinds is None or r.kind in kinds)
            and r.id > after
        ]
        return found if limit is None else found[: max(0, limit)]

    async def consume(
        self,
        request_id: int,
        run_id: str | None = None,
        events: Sequence[Event] = (),
        expected_sequence: int = 0,
    ) -> None:
        if events:
            assert run_id is not None, "events need the run they belong to"
            await self.append(run_id, events, expected_sequence)  # refused: still pending
        if self._inbox.pop(request_id, None) is not None:
            self._changes.bump()

    async def delete_run(self, run_id: str) -> None:
        row = self._row(run_id)
        if not row.status.terminal:
            raise RunActiveError(run_id, row.status.value)
        del self._rows[run_id]
        self._changes.bump()

    async def prune(self, *, older_than: float, status: RunStatus | None = None) -> int:
        check_prune_status(status)
        doomed = [
            run_id
            for run_id, row in self._rows.items()
            if row.status.terminal
            and (status is None or row.status is status)
            and row.log[-1].at < older_than
        ]
        for run_id in doomed:
            del self._rows[run_id]
        if doomed:
            self._changes.bump()
        return len(doomed)

    async def admit(
        self, queues: Mapping[str, Queue], workflows: Collection[str], now: Callable[[], float]
    ) -> Admission:
        admission = Admission()
        async with self._lock:
            at = now()
            for name, queue in queues.items():
                admission.merge(self._admit(name, queue, workflows, at))
        if admission.admitted:
            self._changes.bump()
        return admission

    def _admit(self, name: str, queue: Queue, workflows: Collection[str], now: float) -> Admission:
        book = self._queues.get(name)
        if book is None:
            return Admission()
        times = book.times
        per = 0.0 if queue.rate is None else queue.rate.per
        while times and times[0] <= now - per:
            times.popleft()
        space, wait = room(queue, len(book.admitted), times, now)
        if space <= 0:
            return Admission(wait=wait)
        heads = book.heads(space, workflows)
        decided = plan(space, wait, waiting=heads, served=book.served, last_turn=book.last_turn)
        for run_id, turn in decided.admitted:
            row = self._rows[run_id]
            row.admitted_at, row.turn = now, turn
            book.admit(run_id, row, now)
        return decided

    async def set_owner_info(self, info: OwnerInfo | None) -> None:
        self._owner_info = info

    async def owner_info(self) -> OwnerInfo | None:
        return self._owner_info

    def change_counter(self) -> int:
        return self._changes.value

    async def wait_changed(self, since: int, timeout: float | None = None) -> int:  # noqa: ASYNC109 - a bounded wait is the method's purpose
        return await self._changes.wait(since, timeout)

    def _row(self, run_id: str) -> _Row:
        row = self._rows.get(run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        return row
