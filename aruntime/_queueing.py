"""The admitter: how a runtime that owns its store alone lets queued runs in.

On SQLite and in memory one runtime owns the store, so admissions happen here, in one
task: it asks the store to admit what the queues' limits let in (`EventStore.admit`) and
spawns each admitted run. Only this runtime adds queued runs to the store or ends them
(clients post requests that its inbox applies), so it knows every moment a place may
free up or a run start waiting: it looks again when told (a run was started on a queue,
a queued run ended or was resumed) and when a rate limit lets the next run in, and
costs nothing while nothing happens. On PostgreSQL the fleet's claim loop admits
instead (`aruntime._fleet`), for every worker at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from aruntime._log import logger
from aruntime.retry import outage_delay

if TYPE_CHECKING:
    from aruntime.clock import Clock
    from aruntime.queues import Queue
    from aruntime.store import EventStore

__all__ = ["Admitter"]


class Admitter:
    """Admits the waiting runs of one runtime's queues and spawns them."""

    def __init__(
        self,
        *,
        store: EventStore,
        clock: Clock,
        queues: Mapping[str, Queue],
        workflows: Callable[[], Collection[str]],
        spawn: Callable[[str], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._queues = dict(queues)
        self._workflows = workflows
        """The workflows the runtime knows now (a `@workflow` may be declared later)."""
        self._spawn = spawn
        self._wake = asyncio.Event()
        self._stopped = False
        self.admitted = 0
        """Runs admitted since the runtime opened."""

    def wake(self) -> None:
        """Look at the queues again soon."""
        self._wake.set()

    def stop(self) -> None:
        """Admit nothing more (the runtime is closing)."""
        self._stopped = True
        self._wake.set()

    async def serve(self) -> None:
        """Admit as runs wait and places free up, until stopped or cancelled."""
        failures = 0
        while not self._stopped:
            self._wake.clear()
            try:
                admission = await self._store.admit(
                    self._queues, frozenset(self._workflows()), self._clock.now
                )
            except Exception as exc:  # the store fails: nothing was admitted, try again
                failures += 1
                delay = outage_delay(failures)
                logger.error("queue.admission_failed", error=str(exc), retry_in=delay)
                await self._clock.sleep(delay)
                continue
            failures = 0
            if self._stopped:
                return  # the runs admitted keep their place and run in the next runtime
            for run_id in admission.run_ids:
                self._spawn(run_id)
            if admission.admitted:
                self.admitted += len(admission.admitted)
                logger.info("queue.admitted", runs=len(admission.admitted))
                continue  # more may fit, or the rate says when: look again at once
            await self._pause(admission.wait)

    async def _pause(self, wait: float | None) -> None:
        """Until woken, or `wait` seconds pass on the runtime's clock (a fake one too)."""
        woken = asyncio.ensure_future(self._wake.wait())
        if wait is None:
            await woken
            return
        timer = asyncio.ensure_future(self._clock.sleep(wait))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (woken, timer):
                task.cancel()
            await asyncio.gather(woken, timer, return_exceptions=True)
