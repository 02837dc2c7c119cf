"""Queue admission on an SQLite file, on the writer's thread (see `aruntime._admission`).

The writer's transaction is the queue's lock: one process owns the file and one thread
writes it, so counting the admitted runs, choosing and marking them are never
interleaved with another admission. A queue's recent admission times and its
partitions' standings are kept in tables of their own (`queue_admissions`,
`queue_partitions`), not read off the runs: removing ended runs (`delete_run`, `prune`)
neither resets the rate's window nor the fair turns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping

from aruntime._admission import Admission, Waiting, plan, room
from aruntime.queues import MAX_PRIORITY, Queue

__all__ = ["admit"]

_UNFINISHED = (
    "SELECT count(*) FROM runs WHERE queue = ? AND status = 'running' AND admitted_at IS NOT NULL"
)
_RECENT = "SELECT at FROM queue_admissions WHERE queue = ? AND at > ?"
_NOTE_ADMISSION = "INSERT INTO queue_admissions (queue, at) VALUES (?, ?)"
_FORGET_ADMISSIONS = "DELETE FROM queue_admissions WHERE queue = ? AND at <= ?"
_WAITING_IN = (
    "FROM runs INDEXED BY runs_waiting WHERE queue = ? AND admitted_at IS NULL "
    "AND status = 'running' AND "
)
# Two seeks, not one on `(priority, partition_key) > (?, ?)`: SQLite seeks that to the
# current partition's first entry and reads through all of its runs.
_NEXT_KEY = (
    f"SELECT partition_key {_WAITING_IN} priority = ? AND partition_key > ? "
    "ORDER BY partition_key LIMIT 1"
)
_NEXT_PRIORITY = (
    f"SELECT priority, partition_key {_WAITING_IN} priority > ? "
    "ORDER BY priority, partition_key LIMIT 1"
)
_HEADS = (
    "SELECT run_id, created_at FROM runs INDEXED BY runs_waiting "
    "WHERE queue = ? AND admitted_at IS NULL "
    "AND status = 'running' AND priority = ? AND partition_key = ? "
    "AND parked_reason IS NULL AND workflow IN (SELECT value FROM json_each(?)) "
    "ORDER BY created_at, run_id LIMIT ?"
)
_SERVED = (
    "SELECT partition_key, turn FROM queue_partitions WHERE queue = ? "
    "AND partition_key IN (SELECT value FROM json_each(?))"
)
_SET_SERVED = (
    "INSERT INTO queue_partitions (queue, partition_key, turn) VALUES (?, ?, ?) "
    "ON CONFLICT (queue, partition_key) DO UPDATE SET turn = excluded.turn"
)
_LAST_TURN = "SELECT last_turn FROM queues WHERE name = ?"
_MARK = "UPDATE runs SET admitted_at = ?, admit_turn = ? WHERE run_id = ?"
_SET_TURN = (
    "INSERT INTO queues (name, last_turn) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET last_turn = excluded.last_turn"
)


def admit(
    conn: sqlite3.Connection,
    queues: Mapping[str, Queue],
    workflows: Collection[str],
    now: Callable[[], float],
) -> Admission:
    """Admit what the limits of `queues` let in now, in the caller's transaction; `now`
    is read once, here, after the transaction began."""
    names = json.dumps(sorted(workflows))
    at = now()
    admission = Admission()
    for name, queue in queues.items():
        unfinished = conn.execute(_UNFINISHED, (name,)).fetchone()[0]
        recent: list[float] = []
        if queue.rate is not None:
            recent = [row[0] for row in conn.execute(_RECENT, (name, at - queue.rate.per))]
        space, wait = room(queue, unfinished, recent, at)
        if space <= 0:
            admission.merge(Admission(wait=wait))
            continue
        waiting = _heads(conn, name, names, space)
        if not waiting:
            continue
        keys = json.dumps(sorted({run.partition for run in waiting}))
        served = dict(conn.execute(_SERVED, (name, keys)).fetchall())
        row = conn.execute(_LAST_TURN, (name,)).fetchone()
        decided = plan(
            space, wait, waiting=waiting, served=served, last_turn=0 if row is None else row[0]
        )
        if decided.admitted:
            _record(conn, name, queue, decided, {run.run_id: run.partition for run in waiting}, at)
        admission.merge(decided)
    return admission


def _record(  # noqa: PLR0917 - a private helper of `admit`, called positionally
    conn: sqlite3.Connection,
    name: str,
    queue: Queue,
    decided: Admission,
    partitions: Mapping[str, str],
    at: float,
) -> None:
    """Mark the runs admitted, and note the queue's last turn, its partitions' standings
    and, for its rate, the admission times still inside the window."""
    conn.executemany(_MARK, [(at, turn, run_id) for run_id, turn in decided.admitted])
    conn.execute(_SET_TURN, (name, decided.admitted[-1][1]))
    standings = {partitions[run_id]: turn for run_id, turn in decided.admitted}
    conn.executemany(_SET_SERVED, [(name, key, turn) for key, turn in standings.items()])
    if queue.rate is not None:
        conn.execute(_FORGET_ADMISSIONS, (name, at - queue.rate.per))
        conn.executemany(_NOTE_ADMISSION, [(name, at)] * len(decided.admitted))


def _heads(conn: sqlite3.Connection, name: str, names: str, space: int) -> list[Waiting]:
    """The waiting runs `choose` may pick from: the heads of each partition, by priority,
    until the priorities read hold enough runs to fill `space`.

    The partitions are found by walking the waiting runs' index from key to key, so an
    admission reads a few rows per partition, not every waiting run. With at least
    `space` partitions holding runs that may be admitted in a priority, one run of each
    is enough (a partition's second run comes after every other partition's first).
    """
    waiting: list[Waiting] = []
    left = space
    row = conn.execute(_NEXT_PRIORITY, (name, -MAX_PRIORITY - 1)).fetchone()
    while row is not None and left > 0:
        priority, key = row
        level = [key]
        while (
            found := conn.execute(_NEXT_KEY, (name, priority, level[-1])).fetchone()
        ) is not None:
            level.append(found[0])
        firsts = [(key, _take(conn, name, names, priority, key, 1)) for key in level]
        firsts = [(key, heads) for key, heads in firsts if heads]
        if len(firsts) < left:  # too few partitions to fill the space one run each
            firsts = [(key, _take(conn, name, names, priority, key, left)) for key, _ in firsts]
        for key, heads in firsts:
            waiting += [Waiting(run_id, priority, key, (at, run_id)) for run_id, at in heads]
            left -= len(heads)
        row = conn.execute(_NEXT_PRIORITY, (name, priority)).fetchone()
    return waiting


def _take(  # noqa: PLR0917 - a private helper of `_heads`, called positionally
    conn: sqlite3.Connection, name: str, names: str, priority: int, key: str, count: int
) -> list[tuple[str, float]]:
    """The first `count` runs of the partition that this runtime may admit."""
    return conn.execute(_HEADS, (name, priority, key, names, count)).fetchall()
