"""Which waiting runs a queue admits now: pure arithmetic over facts a store gathered.

Every store admits the same way, one queue at a time, in one transaction that holds the
queue's lock (its row in the store's table of queues): it counts the queue's unfinished
admitted runs and its recent admissions, asks `room` how many more may go, reads the
heads of the waiting runs and the standings of their partitions, asks `plan` which to
admit, marks them admitted and records the queue's last turn. No clock and no I/O here:
`now` is the store's.

# Fair turns

Within one priority, partitions (the runs of one `partition_key`; runs without a key
share one) take turns. Every admission gets a **turn number**, one more than the last
one of the queue; a partition's standing is the turn of its latest admission (none yet
is the best standing there is). The partition with the oldest standing goes next, ties
going to the one whose head waited longest. This is round-robin that survives restarts
and spans every worker of a fleet, since the turns are in the runs' rows: a partition
that just had a run admitted goes to the back of the line, whatever process admitted it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aruntime.queues import Queue

__all__ = ["BATCH", "Admission", "Waiting", "choose", "plan", "room"]

BATCH = 500
"""The most runs one queue admits at a time; the store admits again for more."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """A run waiting to be admitted."""

    run_id: str
    priority: int
    partition: str
    """Its partition key ("" for runs started without one)."""
    order: tuple[float, str]
    """First come, first served within a partition: `(created_at, run_id)`."""


@dataclass(slots=True)
class Admission:
    """What one admission decided."""

    admitted: list[tuple[str, int]] = field(default_factory=list)
    """The runs admitted, each with its turn number, in the order they were chosen."""
    wait: float | None = None
    """Seconds until a rate limit lets more runs in, while runs wait for it."""
    more: bool = False
    """A batch filled up: admit again at once."""

    @property
    def run_ids(self) -> list[str]:
        return [run_id for run_id, _ in self.admitted]

    def merge(self, other: Admission) -> None:
        self.admitted.extend(other.admitted)
        if other.wait is not None:
            self.wait = other.wait if self.wait is None else min(self.wait, other.wait)
        self.more = self.more or other.more


def room(
    queue: Queue, unfinished: int, recent: Sequence[float], now: float
) -> tuple[int, float | None]:
    """How many runs the queue may admit now, and, if its rate is what holds them back,
    how many seconds until it lets one more in.

    `unfinished` counts its admitted runs that have not ended; `recent` holds the times of
    its admissions in the rate's window (after `now - per`), in any order.
    """
    space = BATCH if queue.concurrency is None else min(BATCH, queue.concurrency - unfinished)
    rate = queue.rate
    if rate is None:
        return max(0, space), None
    in_window = sorted(at for at in recent if at > now - rate.per)
    allowed = rate.count - len(in_window)
    if allowed > 0:
        return max(0, min(space, allowed)), None
    # The window must shed `1 - allowed` admissions before one more fits.
    leaves_at = in_window[-allowed] + rate.per
    return 0, (max(0.0, leaves_at - now) if space > 0 else None)


def choose(
    waiting: Sequence[Waiting], count: int, served: Mapping[str, int], last_turn: int
) -> list[tuple[str, int]]:
    """Up to `count` of `waiting`, by priority, then fair turns between partitions (see
    the module's docstring), then first come first served; each with its turn number.

    `served` maps a partition to the turn of its latest admission; `last_turn` is the
    queue's latest turn (0 before the first).
    """
    if count <= 0 or not waiting:
        return []
    levels: dict[int, dict[str, list[Waiting]]] = {}
    for run in waiting:
        levels.setdefault(run.priority, {}).setdefault(run.partition, []).append(run)
    standing = dict(served)
    chosen: list[tuple[str, int]] = []
    turn = last_turn
    for priority in sorted(levels):
        lines = levels[priority]
        for line in lines.values():
            line.sort(key=lambda run: run.order, reverse=True)  # the head is popped last
        heap = [(standing.get(key, -1), line[-1].order, key) for key, line in lines.items()]
        heapq.heapify(heap)
        while heap and len(chosen) < count:
            _, _, key = heapq.heappop(heap)
            line = lines[key]
            turn += 1
            chosen.append((line.pop().run_id, turn))
            standing[key] = turn
            if line:
                heapq.heappush(heap, (turn, line[-1].order, key))
        if len(chosen) >= count:
            break
    return chosen


def plan(
    space: int,
    wait: float | None,
    *,
    waiting: Sequence[Waiting],
    served: Mapping[str, int],
    last_turn: int,
) -> Admission:
    """The admission of one queue with room for `space` runs (see `room`), given the
    heads of its waiting runs and the standings of their partitions (see `choose`).

    `waiting` must hold, for every partition and priority, at least its first `space`
    runs in order (more are fine). `wait` is what `room` said.
    """
    admitted = choose(waiting, space, served, last_turn)
    return Admission(
        admitted=admitted,
        wait=wait if len(waiting) > len(admitted) else None,
        more=len(admitted) >= BATCH,
    )
