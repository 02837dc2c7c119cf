"""The SQLite queries of the inbox, of removing ended runs and of the owner's record.

Everything here runs on the store's threads, inside the writer's transaction for the
writes, never on the event loop.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aruntime.errors import RunActiveError, RunNotFoundError
from aruntime.state import RunStatus
from aruntime.store._base import OwnerInfo, Request, RunInfo
from aruntime.store._request_rows import RequestRow, decode_request
from aruntime.store._rows import RUN_COLUMNS, decode_run

__all__ = [
    "delete_request",
    "delete_run",
    "insert_request",
    "prune_runs",
    "read_owner",
    "read_pending",
    "read_runs_by_id",
    "write_owner",
]

_ENDED = tuple(s.value for s in RunStatus if s.terminal)
_OWNER_KEY = "owner"


def insert_request(conn: sqlite3.Connection, row: RequestRow) -> int:
    """Add one request; its id."""
    cursor = conn.execute(
        "INSERT INTO inbox (kind, run_id, at, data, checksum) VALUES (?, ?, ?, ?, ?)", row
    )
    request_id = cursor.lastrowid
    assert request_id is not None
    return request_id


def read_pending(
    conn: sqlite3.Connection,
    path: Path,
    run_id: str | None,
    limit: int | None,
    *,
    kinds: Sequence[str] | None = None,
    after: int = 0,
) -> list[Request]:
    """The requests not consumed yet (of a run, of some kinds, after an id), in order."""
    sql = "SELECT id, kind, run_id, at, data, checksum FROM inbox WHERE id > ?"
    params: list[Any] = [after]
    if run_id is not None:
        sql += " AND run_id = ?"
        params.append(run_id)
    if kinds is not None:
        sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
        params += kinds
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(0, limit))
    return [decode_request(str(path), row) for row in conn.execute(sql, params)]


def delete_request(conn: sqlite3.Connection, request_id: int) -> None:
    """Remove a request (nothing if it is gone already)."""
    conn.execute("DELETE FROM inbox WHERE id = ?", (request_id,))


def delete_run(conn: sqlite3.Connection, run_id: str) -> None:
    """Remove an ended run's log and index row.

    Raises:
        RunNotFoundError: no such run.
        RunActiveError: the run has not ended; nothing is removed.
    """
    row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFoundError(run_id)
    if row[0] not in _ENDED:
        raise RunActiveError(run_id, row[0])
    conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


def prune_runs(conn: sqlite3.Connection, older_than: float, status: RunStatus | None) -> int:
    """Remove the ended runs (of `status`) last updated before `older_than`; how many."""
    statuses = _ENDED if status is None else (status.value,)
    marks = ", ".join("?" * len(statuses))
    where = f"status IN ({marks}) AND updated_at < ?"
    params = (*statuses, older_than)
    conn.execute(
        f"DELETE FROM events WHERE run_id IN (SELECT run_id FROM runs WHERE {where})", params
    )
    return conn.execute(f"DELETE FROM runs WHERE {where}", params).rowcount


def read_runs_by_id(conn: sqlite3.Connection, run_ids: Sequence[str]) -> list[RunInfo]:
    """The index rows of the runs that exist among `run_ids`."""
    found: list[RunInfo] = []
    unique = list(dict.fromkeys(run_ids))
    for start in range(0, len(unique), 500):  # under SQLite's limit of bound parameters
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id IN ({marks})"
        found += [decode_run(row) for row in conn.execute(sql, chunk)]
    return found


def write_owner(conn: sqlite3.Connection, info: OwnerInfo | None) -> None:
    """Record, or with None clear, what the owning runtime executes."""
    if info is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (_OWNER_KEY,))
        return
    value = json.dumps({"pid": info.pid, "workflows": list(info.workflows)})
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_OWNER_KEY, value))


def read_owner(conn: sqlite3.Connection) -> OwnerInfo | None:
    """What the owning runtime recorded, if its process still lives (one killed with
    SIGKILL could not clear its record)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_OWNER_KEY,)).fetchone()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
        info = OwnerInfo(pid=int(value["pid"]), workflows=tuple(map(str, value["workflows"])))
    except (ValueError, KeyError, TypeError):
        return None
    return info if _alive(info.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it lives
        return True
    return True
