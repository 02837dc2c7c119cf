"""The fleet: how one worker on a shared database claims, keeps and gives up runs.

Several worker processes, on several machines, run the runs of one PostgreSQL database.
A run is executed by the worker that holds its **lease**; everything here keeps that
true without any worker trusting its own clock or its own view of the others:

* **Claims.** A claim loop takes runnable runs (new ones nobody holds, due sleeps and
  retries, runs with a cancel or resume waiting in the inbox, runs whose holder's lease
  ran out) with `FOR UPDATE SKIP LOCKED`, so two workers claiming at once take different
  runs, and hands each to the supervisor. Every claim bumps the run's fencing epoch. The
  loop sleeps until a notification says something became claimable (LISTEN/NOTIFY), or
  `poll_interval` seconds, whichever comes first; claims look `poll_interval` seconds
  ahead, so a sleep is claimed a little early and ends on time in its runner.
* **Leases** are measured on the database's clock (`now()` in the statements), never on
  a worker's. A heartbeat renews all of a worker's leases in one statement every
  `heartbeat` seconds. A worker that stops renewing (killed, frozen by SIGSTOP, its event
  loop blocked by user code, cut off from the database) loses its runs when the lease
  ends, and another worker takes them over.
* **Fencing.** The store sends every append with the epoch its claim got, checked in the
  same statement as the write. A worker whose run was taken over commits nothing more for
  it: the append raises `LeaseLostError`, the heartbeat learns the same, and either way
  the run is stopped here at once (`Supervisor.stop`), never respawned.
* **Sleeping runs hold no lease.** A run whose every operation waits for a due time at
  least `idle_release` seconds away is stopped here and released with that due time:
  the database holds it, not a worker's memory, and whoever is free when it is due
  claims it.
* **Shutdown** releases every lease at once, so the others take over without waiting for
  the leases to run out.
* **Queues.** A run started on a queue is claimable only once its queue admitted it
  (`aruntime.queues`). Before each claim the loop admits what the queues its runtime
  declares let in (`PostgresStore.admit`, under a database lock per queue, so the limits
  hold fleet-wide); the end of a run that held a place in a queue wakes every claim loop,
  and a rate limit's wait bounds the loop's sleep. An admitted run keeps its place until
  it ends, also while it is taken over after a crash.

What is *not* promised: a step body that was running when its worker lost the lease may
still finish in the stale worker (at-least-once, as after a crash); its outcome is never
recorded there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aruntime._admission import Admission
from aruntime._log import logger
from aruntime.state import RunState, StepStatus

if TYPE_CHECKING:
    from aruntime._supervisor import Supervisor
    from aruntime.clock import Clock
    from aruntime.queues import Queue
    from aruntime.store import EventStore
    from aruntime.store.postgres import PostgresStore

__all__ = ["Fleet", "idle_until", "shared_store"]

_CLAIM_BATCH = 200
"""The most runs claimed by one statement."""
_CLAIM_SPACING = 0.01
"""Seconds between two claims at least, when runs end in a stream."""


def shared_store(store: EventStore) -> PostgresStore | None:
    """`store` if workers share it (runs are owned by lease), else None."""
    module = type(store).__module__
    if module != "aruntime.store.postgres":  # never import the driver for other stores
        return None
    from aruntime.store.postgres import PostgresStore  # noqa: PLC0415 - loaded with its store

    return store if isinstance(store, PostgresStore) and store.owner else None


def idle_until(state: RunState, now: float) -> float | None:
    """When a run that waits for nothing but due times needs its worker again.

    None when it does not wait that way: a step is in flight, or nothing is due (it waits
    for something else, or is about to act).
    """
    if state.status.terminal:
        return None
    dues: list[float] = []
    for step in state.steps.values():
        if step.status is StepStatus.RUNNING:
            return None
        if step.status is StepStatus.RETRYING and step.retry_at is not None:
            dues.append(step.retry_at)
    for sleep in state.sleeps.values():
        if not sleep.cancelled and sleep.wake_at > now:
            dues.append(sleep.wake_at)
    if not dues:
        return None
    if state.deadline is not None and state.cancel_reason is None:
        dues.append(state.deadline)
    return min(dues)


class Fleet:
    """Claims runs for one runtime, renews their leases and gives them up."""

    def __init__(
        self,
        store: PostgresStore,
        supervisor: Supervisor,
        clock: Clock,
        *,
        queues: Mapping[str, Queue] | None = None,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._clock = clock
        self._queues: Mapping[str, Queue] = dict(queues or {})
        """The queues whose waiting runs this worker admits, by name."""
        self._config = store.config
        self._stops: set[asyncio.Task[None]] = set()
        self._claims: asyncio.Task[None] | None = None
        self.claimed = 0
        """Runs claimed since the runtime opened."""
        self.lost = 0
        """Runs whose lease was taken over while this worker held them."""
        self.released = 0
        """Runs given up to sleep in the database."""

    def owns(self, run_id: str) -> bool:
        """Whether this worker may run `run_id` (it holds the lease)."""
        return self._store.holds(run_id)

    async def serve(self) -> None:
        """Claim and renew until cancelled."""
        self._store.on_lost = self._lost
        try:
            async with asyncio.TaskGroup() as group:
                self._claims = group.create_task(self._claim_loop(), name="aruntime fleet claims")
                group.create_task(self._heartbeat_loop(), name="aruntime fleet heartbeat")
        finally:
            self._store.on_lost = None

    def wake(self) -> None:
        """Look for runnable runs (and admit queued ones) soon."""
        self._store.wake_claims()

    def stop_claiming(self) -> None:
        """Claim no more runs (the runtime is closing); the heartbeat goes on renewing the
        leases of the runs that finish their steps meanwhile."""
        if self._claims is not None:
            self._claims.cancel()

    async def release_all(self) -> None:
        """Give up every lease at once (the runtime's tasks have ended): every run the
        database says this worker holds, also one whose claim was cut short before the
        worker learnt of it."""
        await self._store.settle_claims()
        with contextlib.suppress(Exception):  # the leases run out anyway
            released = await self._store.release_all()
            logger.info("fleet.released", runs=released)

    def _lost(self, run_id: str) -> None:
        """The store says another worker took the run over: stop it here, now."""
        self.lost += 1
        logger.warning("fleet.lease_lost", run_id=run_id, worker=self._store.worker_id)
        # At once, not in a task of its own: the runner must not run again before it is
        # told, or its next append goes out as one of a run this worker does not hold.
        task = self._supervisor.stop_soon(run_id)
        if task is None:
            self._store.forget_lost(run_id)
        else:
            task.add_done_callback(lambda _: self._store.forget_lost(run_id))

    async def admit(self) -> Admission:
        """Admit the waiting runs that this worker's queues let in now (of the workflows it
        runs: a run no worker here could run is left for one that can). A failure is
        logged: the runs wait for the next admission."""
        admission = Admission()
        if not self._queues:
            return admission
        store = self._store
        try:
            while True:
                found = await store.admit(self._queues, store.workflows, self._clock.now)
                admission.merge(found)
                if not found.more:
                    break
        except Exception as exc:
            logger.warning("fleet.admit_failed", error=str(exc))
        if admission.admitted:
            logger.info("fleet.admitted", runs=len(admission.admitted), worker=store.worker_id)
        return admission

    async def claim_now(self) -> None:
        """Claim every runnable run there is room for, once (at start-up)."""
        store, config = self._store, self._config
        await self.admit()
        while True:
            room = min(_CLAIM_BATCH, config.max_runs - len(store.held()))
            claimed = await store.claim(room, lookahead=config.poll_interval)
            for run_id in claimed:
                self._supervisor.spawn(run_id)
            self.claimed += len(claimed)
            if room <= 0 or len(claimed) < room:
                return

    async def _claim_loop(self) -> None:
        store, config, supervisor = self._store, self._config, self._supervisor
        failures = 0
        while True:
            wait = (await self.admit()).wait
            room = min(_CLAIM_BATCH, config.max_runs - len(store.held()))
            try:
                claimed = await store.claim(room, lookahead=config.poll_interval)
            except Exception as exc:
                failures += 1
                delay = min(config.poll_interval * 4, 0.05 * 2.0 ** min(failures, 8))
                logger.warning("fleet.claim_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for run_id in claimed:
                supervisor.spawn(run_id)
            if claimed:
                self.claimed += len(claimed)
                logger.info("fleet.claimed", runs=len(claimed), worker=store.worker_id)
            if room > 0 and len(claimed) == room:
                await asyncio.sleep(0)  # there may be more: claim again at once
                continue
            # Claimed less than there was room for: nothing more is runnable, or this
            # worker holds its fair share. Look again when something becomes runnable, or
            # after a poll interval, and, if this claim took runs (its share may have held
            # it back), when a run ends here; at most every few milliseconds, so that a
            # stream of ends costs few claims. A queue's rate limit that holds runs back
            # wakes it when it lets one more in.
            timeout = config.poll_interval if wait is None else min(config.poll_interval, wait)
            await store.wait_runnable(timeout, room=bool(claimed))
            if claimed:
                await asyncio.sleep(_CLAIM_SPACING)

    async def _heartbeat_loop(self) -> None:
        store, config = self._store, self._config
        unsupervised: set[str] = set()
        next_beat = time.monotonic()
        while True:
            next_beat += config.heartbeat
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
            next_beat = max(next_beat, time.monotonic())
            try:
                lost = await store.renew()
            except Exception as exc:
                logger.warning("fleet.renew_failed", error=str(exc))
                continue
            for run_id in lost:
                if self._supervisor.supervising(run_id):
                    self._lost(run_id)
                else:
                    store.forget_lost(run_id)
            unsupervised = await self._let_go(unsupervised)

    async def _behind(self, idle: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The idle runs whose runner knows the whole log; the others are restarted here.

        A request applied while a runner was being spawned (a cancel recorded between the
        spawn's read of the log and the runner's start) is in the log but not in the
        runner's state: such a runner would sleep through it. Restarting it replays it.
        """
        supervisor = self._supervisor
        try:
            infos = {i.run_id: i for i in await self._store.get_runs([r for r, _ in idle])}
        except Exception:
            return []  # look again at the next beat
        current: list[tuple[str, float]] = []
        for run_id, until in idle:
            runner = supervisor.runner(run_id)
            info = infos.get(run_id)
            if runner is None or info is None:
                continue
            if info.version == runner.state.version:
                current.append((run_id, until))
                continue
            logger.info("fleet.runner_behind", run_id=run_id)
            await supervisor.stop(run_id)
            supervisor.spawn(run_id)
        return current

    async def _let_go(self, unsupervised: set[str]) -> set[str]:
        """Release the runs held but not run here (for two beats in a row) and the runs
        that only wait for a due time far enough away; the runs unsupervised now."""
        store, supervisor = self._store, self._supervisor
        now = self._clock.now()
        orphans: list[tuple[str, float | None]] = []
        idle: list[tuple[str, float]] = []
        seen: set[str] = set()
        for run_id in store.held():
            if not supervisor.supervising(run_id):
                if run_id in unsupervised:
                    orphans.append((run_id, None))
                seen.add(run_id)
                continue
            runner = supervisor.runner(run_id)
            if runner is None:
                continue
            until = idle_until(runner.state, now)
            if until is not None and until - now >= self._config.idle_release:
                idle.append((run_id, until))
        if idle:
            idle = await self._behind(idle)
        for run_id, _ in idle:
            await supervisor.stop(run_id)
        releases: list[tuple[str, float | None]] = [*orphans, *idle]
        if releases:
            try:
                await store.release(releases)
            except Exception as exc:  # the leases run out, and the runs are claimed again
                logger.warning("fleet.release_failed", error=str(exc))
            self.released += len(idle)
        return seen - {run_id for run_id, _ in orphans}
