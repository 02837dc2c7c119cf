"""The in-memory store: the same invariants as the durable ones, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from aruntime.errors import RunNotFoundError
from aruntime.events import Event, RunStarted
from aruntime.state import RunStatus
from aruntime.store._base import RunInfo, check_batch, raise_stale, status_after

__all__ = ["MemoryStore"]


class MemoryStore:
    """Logs in a dict, guarded by a lock; lost with the process.

    One `MemoryStore` may be shared by several `Runtime`s in turn, which is how tests show
    that a runtime resumes what another left unfinished.
    """

    def __init__(self) -> None:
        self._logs: dict[str, list[Event]] = {}
        self._runs: dict[str, RunInfo] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def append(self, run_id: str, events: Sequence[Event], expected_sequence: int) -> None:
        check_batch(run_id, events, expected_sequence)
        async with self._lock:
            log = self._logs.get(run_id)
            actual = len(log) if log is not None else 0
            if actual != expected_sequence:
                raise_stale(run_id, expected_sequence, actual)
            last = events[-1]
            info = self._runs.get(run_id)
            if info is None:
                first = events[0]
                assert isinstance(first, RunStarted)
                log = self._logs[run_id] = []
                info = RunInfo(
                    run_id=run_id,
                    workflow=first.workflow,
                    status=RunStatus.RUNNING,
                    version=0,
                    created_at=first.at,
                    updated_at=first.at,
                )
            assert log is not None
            log.extend(events)
            self._runs[run_id] = dataclasses.replace(
                info,
                status=status_after(info.status, events),
                version=last.sequence,
                updated_at=last.at,
            )

    async def events_for(self, run_id: str, after: int = 0) -> list[Event]:
        log = self._logs.get(run_id)
        if log is None:
            return []
        return log[max(0, after) :]

    async def get_run(self, run_id: str) -> RunInfo | None:
        return self._runs.get(run_id)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parked: bool | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        rows = [
            info
            for info in self._runs.values()
            if (status is None or info.status is status)
            and (parked is None or info.parked == parked)
        ]
        return rows if limit is None else rows[:limit]

    async def park(self, run_id: str, reason: str) -> None:
        self._set_parked(run_id, reason)

    async def unpark(self, run_id: str) -> None:
        self._set_parked(run_id, None)

    def _set_parked(self, run_id: str, reason: str | None) -> None:
        info = self._runs.get(run_id)
        if info is None:
            raise RunNotFoundError(run_id)
        self._runs[run_id] = dataclasses.replace(info, parked_reason=reason)
