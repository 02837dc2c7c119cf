"""Queue admission on an SQLite file, on the writer's thread (see `aruntime._admission`).

The writer's transaction is the queue's lock: one process owns the file and one thread
writes it, so counting the admitted runs, choosing and marking them are never
interleaved with another admission.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping

from aruntime._admission import Admission, Waiting, plan, room
from aruntime.queues import Queue

__all__ = ["admit"]

_UNFINISHED = (
    "SELECT count(*) FROM runs WHERE queue = ? AND status = 'running' AND admitted_at IS NOT NULL"
)
_RECENT = (
    "SELECT admitted_at FROM runs WHERE queue = ? "
    "AND status IN ('running', 'completed', 'failed', 'cancelled') AND admitted_at > ?"
)
_WAITING = """
SELECT run_id, priority, partition_key, created_at FROM (
    SELECT run_id, priority, partition_key, created_at, row_number() OVER (
        PARTITION BY priority, partition_key ORDER BY created_at, run_id
    ) AS place
    FROM runs
    WHERE queue = ? AND status = 'running' AND admitted_at IS NULL
        AND parked_reason IS NULL AND workflow IN (SELECT value FROM json_each(?))
) WHERE place <= ?
"""
_SERVED = (
    "SELECT partition_key, max(admit_turn) FROM runs WHERE queue = ? AND admit_turn IS NOT NULL "
    "AND partition_key IN (SELECT value FROM json_each(?)) GROUP BY partition_key"
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
    now: float,
) -> Admission:
    """Admit what the limits of `queues` let in now, in the caller's transaction."""
    names = json.dumps(sorted(workflows))
    admission = Admission()
    for name, queue in queues.items():
        unfinished = conn.execute(_UNFINISHED, (name,)).fetchone()[0]
        recent: list[float] = []
        if queue.rate is not None:
            recent = [row[0] for row in conn.execute(_RECENT, (name, now - queue.rate.per))]
        space, wait = room(queue, unfinished, recent, now)
        if space <= 0:
            admission.merge(Admission(wait=wait))
            continue
        waiting = [
            Waiting(run_id, priority, key, (created_at, run_id))
            for run_id, priority, key, created_at in conn.execute(_WAITING, (name, names, space))
        ]
        if not waiting:
            continue
        keys = json.dumps(sorted({run.partition for run in waiting}))
        served = dict(conn.execute(_SERVED, (name, keys)).fetchall())
        row = conn.execute(_LAST_TURN, (name,)).fetchone()
        decided = plan(
            space, wait, waiting=waiting, served=served, last_turn=0 if row is None else row[0]
        )
        if decided.admitted:
            conn.executemany(_MARK, [(now, turn, run_id) for run_id, turn in decided.admitted])
            conn.execute(_SET_TURN, (name, decided.admitted[-1][1]))
        admission.merge(decided)
    return admission
