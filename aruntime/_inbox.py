"""The owner's side of the inbox: apply the requests that clients post, in order, once.

A request is applied, and then consumed, by the runtime that owns the store:

* START appends the run's `RunStarted` and consumes the request in the same transaction
  (`EventStore.consume` with events), so a crash leaves either both or neither: the run
  is never started twice, and a request is never lost. The run is then executed here if
  this runtime knows its workflow, and left for a runtime that does otherwise.
* CANCEL and RESUME go through `Runtime.cancel` and `Runtime.resume`, which record what
  they do (the cancellation in the run's log, the cleared parked mark in its index), and
  the request is consumed after. A crash between the two applies the request again on
  the next start, where it finds its effect recorded and changes nothing.

* MESSAGE requests are not applied here: the run's own `aruntime.receive` consumes each
  in the transaction that records it. The loop only wakes the run's receives when it sees
  a new one.
* FORK copies the origin's log up to the operation named, under the new run's id, and
  consumes the request in the same transaction; the origin's messages that the copy has
  not consumed are posted again for it first (with idempotency keys, so that a crash
  before the copy commits posts nothing twice).

Requests are applied one at a time in the order of their ids, so a client's start,
then cancel, of one run reaches it in that order. The loop sleeps on the store's change
counter while the inbox is empty, and reads it again after every change it is told of.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aruntime._fork import fork_log, forked_messages
from aruntime._log import logger
from aruntime.errors import (
    ConcurrencyError,
    CorruptLogError,
    RunNotFoundError,
    SerializationError,
    StoreCorruptError,
    StoreError,
)
from aruntime.events import RunStarted
from aruntime.retry import outage_delay
from aruntime.state import RunState, fold_into
from aruntime.store import CONTROL_KINDS, Request, RequestKind

if TYPE_CHECKING:
    from aruntime._definitions import Workflow
    from aruntime._supervisor import Supervisor
    from aruntime.clock import Clock
    from aruntime.store import EventStore

__all__ = ["NO_ARGS", "Inbox"]

NO_ARGS = "[[],{}]"
"""The recorded arguments of a run started without any."""
_BATCH = 100
"""Requests read at a time."""


class Inbox:
    """Applies the inbox of the store that its runtime owns."""

    def __init__(
        self,
        *,
        store: EventStore,
        clock: Clock,
        supervisor: Supervisor,
        find_workflow: Callable[[str], Workflow[..., Any] | None],
        cancel: Callable[[str, str | None, int], Awaitable[object]],
        resume: Callable[[str, int], Awaitable[None]],
        queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._supervisor = supervisor
        self._find_workflow = find_workflow
        self._cancel = cancel
        self._resume = resume
        self._queued = queued
        self.applied = 0
        """Requests applied since the runtime opened."""
        self._mail_seen = 0
        """The id of the last message the loop woke a run for."""

    async def serve(self) -> None:
        """Apply requests as they come, until cancelled."""
        store = self._store
        failures = 0
        while True:
            seen = store.change_counter()
            try:
                requests = await store.pending(limit=_BATCH, kinds=CONTROL_KINDS)
                for request in requests:
                    await self._apply(request)
                await self._wake_receivers()
            except Exception as exc:  # the store fails: nothing is consumed, try again
                failures += 1
                delay = outage_delay(failures)
                logger.error("inbox.failed", error=str(exc), retry_in=delay)
                await self._clock.sleep(delay)
                continue
            failures = 0
            if not requests:
                await store.wait_changed(seen)

    async def _wake_receivers(self) -> None:
        """Tell the runners of the runs that have new messages; each reads its own."""
        while True:
            messages = await self._store.pending(
                kinds=(RequestKind.MESSAGE,), after=self._mail_seen, limit=_BATCH
            )
            for message in messages:
                runner = self._supervisor.runner(message.run_id)
                if runner is not None:
                    runner.mail_arrived()
            if messages:
                self._mail_seen = messages[-1].id
            if len(messages) < _BATCH:
                return

    async def _apply(self, request: Request) -> None:
        kind = request.kind
        if kind is RequestKind.START:
            await self._start(request)
        elif kind is RequestKind.FORK:
            await self._fork(request)
        elif kind is RequestKind.CANCEL:
            await self._apply_and_consume(
                request, self._cancel(request.run_id, request.reason, request.id)
            )
        else:
            await self._apply_and_consume(request, self._resume(request.run_id, request.id))
        self.applied += 1
        logger.info("inbox.applied", run_id=request.run_id, kind=kind.value, request=request.id)

    async def _apply_and_consume(self, request: Request, effect: Awaitable[object]) -> None:
        try:
            await effect
        except RunNotFoundError:
            logger.warning("inbox.run_not_found", run_id=request.run_id, kind=request.kind.value)
        except (CorruptLogError, StoreCorruptError) as exc:
            if exc.run_id != request.run_id:
                raise  # the store, not this run: try again later
            # The run's log cannot be read until it is repaired: retrying would hold back
            # every later request of every run, so this one is refused (the run is parked).
            logger.error(
                "inbox.refused", run_id=request.run_id, kind=request.kind.value, error=str(exc)
            )
        await self._store.consume(request.id)

    async def _start(self, request: Request) -> None:
        run_id, name = request.run_id, request.workflow or ""
        now = self._clock.now()
        event = RunStarted(
            sequence=1,
            at=now,
            run_id=run_id,
            workflow=name,
            args=request.args if request.args is not None else NO_ARGS,
            deadline=None if request.timeout is None else now + request.timeout,
            parent=request.parent,
            queue=request.queue,
            priority=request.priority or 0,
            partition_key=request.partition_key,
        )
        await self._record(request, event, [event])

    async def _fork(self, request: Request) -> None:
        origin, at = request.origin or "", request.from_step or ""
        try:
            events = await self._store.events_for(origin)
            copied = fork_log(events, request.run_id, at, self._clock.now())
            messages: list[Request] = []
            if await self._store.get_run(request.run_id) is None:
                pending = await self._store.pending(run_id=origin, kinds=(RequestKind.MESSAGE,))
                messages = forked_messages(events, copied, pending, request.run_id)
        except (CorruptLogError, StoreCorruptError, ValueError) as exc:
            if isinstance(exc, StoreCorruptError) and exc.run_id != origin:
                raise  # the store, not the origin's log: try again later
            # A fork no run can come of (no such origin or operation, a damaged log):
            # retrying would hold back every later request, so it is refused.
            logger.error("inbox.refused", run_id=request.run_id, kind="fork", error=str(exc))
            await self._store.consume(request.id)
            return
        for message in messages:
            await self._store.post(message)
        first = copied[0]
        assert isinstance(first, RunStarted)
        await self._record(request, first, copied)

    async def _record(self, request: Request, event: RunStarted, events: list[Any]) -> None:
        """Consume a start or a fork with the log it begins, and run the new run here
        (once its queue admits it, if it was started on one)."""
        run_id, name = request.run_id, event.workflow
        known = self._find_workflow(name) is not None
        if event.queue is not None:
            known = False  # it runs when it is admitted, not now
            self._queued()
        try:
            await self._store.consume(request.id, run_id, events, 0)
        except ConcurrencyError:  # the run exists: a start is idempotent
            await self._store.consume(request.id)
            return
        except (CorruptLogError, SerializationError) as exc:  # a request no run can come of
            logger.error("inbox.refused", run_id=run_id, kind="start", error=str(exc))
            await self._store.consume(request.id)
            return
        except (StoreError, asyncio.CancelledError):
            # It may have been committed all the same: a task reads the log and runs the
            # run if it is there.
            if known:
                self._supervisor.spawn(run_id)
            raise
        logger.info("run.started", run_id=run_id, workflow=name, by="inbox", queue=event.queue)
        if known:
            state = RunState()
            fold_into(state, events)
            self._supervisor.spawn(run_id, state)
        elif event.queue is None:
            logger.info("run.left_for_another_runtime", run_id=run_id, workflow=name)
