"""Admission on PostgreSQL: which waiting runs of a queue may run now, for the whole fleet.

A queue's admissions are taken one at a time across every worker of the database: each
holds the queue's row in the `queues` table (`FOR UPDATE`) from before it counts the
queue's runs until it has marked the ones it admits, so no two admissions see the same
room, and the concurrency and rate limits hold for the fleet as a whole. Every count is
read after the lock is taken, in a statement of its own (a read-committed snapshot taken
after the previous holder committed). Admission times are the database's clock, read
under the lock, so that one queue's admissions are stamped in the order they happened.
A queue's admission times inside its rate's window and its partitions' latest turns are
kept in tables of their own, not read off the runs: removing ended runs resets neither
the rate nor the fair turns.

What to admit is decided by `aruntime._admission`, as in every store; this module only
gathers its facts and records its decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aruntime._admission import Admission, Waiting, plan, room
from aruntime.queues import Queue

__all__ = ["QueueStatements", "admit_queue"]

_UNFINISHED = "status IN ('pending', 'running')"


class QueueStatements:
    """The admission's statements, with the store's schema filled in once."""

    def __init__(self, schema: str) -> None:
        s = schema
        waiting = (
            f"r.admitted_at IS NULL AND r.{_UNFINISHED} AND r.parked_reason IS NULL "
            "AND r.workflow = ANY($2::text[])"
        )
        # Which of the queues $1 have runs of the workflows $2 waiting (read unlocked:
        # a run that starts waiting later wakes the claim loops, which admit again).
        self.waiting = (
            "SELECT q.name FROM unnest($1::text[]) AS q(name) WHERE EXISTS "
            f"(SELECT 1 FROM {s}.runs r WHERE r.queue = q.name AND {waiting})"
        )
        self.create = (
            f"INSERT INTO {s}.queues (name, last_turn) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING"
        )
        self.lock = f"SELECT last_turn FROM {s}.queues WHERE name = $1 FOR UPDATE"
        # $2: the rate's period in seconds, NULL without a rate.
        self.standing = f"""
WITH t AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
SELECT t.now,
    (SELECT count(*) FROM {s}.runs
     WHERE queue = $1 AND admitted_at IS NOT NULL AND {_UNFINISHED}) AS unfinished,
    ARRAY(SELECT at FROM {s}.queue_admissions
          WHERE queue = $1 AND $2::float8 IS NOT NULL AND at > t.now - $2::float8) AS recent
FROM t"""
        # The first waiting runs of each (priority, partition), in the order
        # `Waiting.order` sorts them (run ids compared as Python compares str): $3 of
        # each, or one of each in a priority with at least $3 partitions (a partition's
        # second run comes after every other partition's first). One scan of the
        # queue's waiting runs and a sort, whatever the planner believes of the table:
        # a plan per partition goes wrong by orders of magnitude when the statistics lag
        # behind a burst of starts.
        self.heads = f"""
SELECT run_id, priority, partition_key, created_at FROM (
    SELECT w.*, count(*) FILTER (WHERE place = 1) OVER (PARTITION BY priority) AS keys
    FROM (
        SELECT r.run_id, r.priority, r.partition_key, r.created_at,
               row_number() OVER (PARTITION BY r.priority, r.partition_key
                                  ORDER BY r.created_at, r.run_id COLLATE "C") AS place
        FROM {s}.runs r WHERE r.queue = $1 AND {waiting}) w
    WHERE place <= $3) v
WHERE place = 1 OR keys < $3"""
        # The latest turn of each partition $2.
        self.served = (
            f"SELECT partition_key, turn FROM {s}.queue_partitions "
            "WHERE queue = $1 AND partition_key = ANY($2::text[])"
        )
        self.set_served = f"""
INSERT INTO {s}.queue_partitions (queue, partition_key, turn)
SELECT $1, k.key, k.turn FROM unnest($2::text[], $3::bigint[]) AS k(key, turn)
ON CONFLICT (queue, partition_key) DO UPDATE SET turn = excluded.turn"""
        # $2: the time, $3: how many admissions then, $4: the rate's period.
        self.note_admissions = f"""
WITH gone AS (DELETE FROM {s}.queue_admissions WHERE queue = $1 AND at <= $2 - $4::float8)
INSERT INTO {s}.queue_admissions (queue, at) SELECT $1, $2 FROM generate_series(1, $3)"""
        # Still waiting when marked: a run that ended or was parked meanwhile is not.
        self.mark = f"""
UPDATE {s}.runs r SET admitted_at = $2, admit_turn = c.turn
FROM unnest($3::text[], $4::bigint[]) AS c(run_id, turn)
WHERE r.run_id = c.run_id AND r.queue = $1 AND r.admitted_at IS NULL
  AND r.{_UNFINISHED} AND r.parked_reason IS NULL
RETURNING r.run_id"""
        self.last_turn = f"UPDATE {s}.queues SET last_turn = $2 WHERE name = $1"


async def admit_queue(
    conn: Any, sql: QueueStatements, name: str, queue: Queue, workflows: Sequence[str]
) -> Admission:
    """Admit what `queue` lets in now, inside the caller's read-committed transaction on
    `conn`, which holds the queue's lock from here until it commits."""
    await conn.execute(sql.create, name)
    last_turn: int = await conn.fetchval(sql.lock, name)
    per = None if queue.rate is None else float(queue.rate.per)
    now, unfinished, recent = await conn.fetchrow(sql.standing, name, per)
    space, wait = room(queue, unfinished, recent, now)
    if space <= 0:
        return Admission(wait=wait)
    waiting = [
        Waiting(run_id, priority, key or "", (created_at, run_id))
        for run_id, priority, key, created_at in await conn.fetch(
            sql.heads, name, list(workflows), space
        )
    ]
    if not waiting:
        return Admission()
    keys = sorted({run.partition for run in waiting})
    served = {row[0]: row[1] for row in await conn.fetch(sql.served, name, keys)}
    decided = plan(space, wait, waiting=waiting, served=served, last_turn=last_turn)
    if not decided.admitted:
        return decided
    ids = [run_id for run_id, _ in decided.admitted]
    turns = [turn for _, turn in decided.admitted]
    marked = {row[0] for row in await conn.fetch(sql.mark, name, now, ids, turns)}
    await conn.execute(sql.last_turn, name, max(turns))
    decided.admitted = [(run_id, turn) for run_id, turn in decided.admitted if run_id in marked]
    partitions = {run.run_id: run.partition for run in waiting}
    standings = {partitions[run_id]: turn for run_id, turn in decided.admitted}
    await conn.execute(sql.set_served, name, list(standings), list(standings.values()))
    if per is not None and decided.admitted:
        await conn.execute(sql.note_admissions, name, now, len(decided.admitted), per)
    return decided
