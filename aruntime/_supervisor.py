"""Supervision: one task per run, respawned from its log when it dies.

Every run task belongs to the runtime's task group. A task loops: read and fold the log,
run the workflow to its end with a fresh `Runner`, and return. If the runner dies for any
reason other than the workflow's own outcome (a bug, a store error, an injected crash, an
unexpected BaseException from a step body) the loop throws away the in-memory state,
replays the log and tries again, within a restart budget (`RestartBudget`). The first
respawn is immediate and later ones in the budget's window back off (0.1 s, 0.2 s, ...),
so that a brief store outage (about 1.5 s with the default budget) is ridden out rather
than spending the budget at once. Past the budget the run is parked: marked in the
store's index with the reason, visible in `runs list`, and left alone until
`Runtime.resume()` (or a fixed deployment and a resume) clears it. A park the store
refuses is tried again, backing off, for as long as it takes: the run stays with its task
meanwhile, never unfinished with nobody running it.
Some failures are not worth a retry and park at once: `NonDeterminismError`,
`CorruptLogError`, `SerializationError` of the recorded data, `UntrackedTaskError`. A run
whose workflow this runtime does not know is not a failure: its task ends and the run is
left as it is, for a runtime that knows the workflow.
A respawned runner learns why its predecessor died: attempts of a step lost to deaths
this process saw (a BaseException from a body, a store outage) never end the step failed
as if the process had crashed; the run is respawned and, if it keeps dying, parked with
the real cause.
A `ConcurrencyError` stops the stale runner like any other death: the respawned one
replays the log as it now is, so a run is never silently dropped; a run that keeps
conflicting (two runtimes writing one store at once) ends parked with the reason.

On a shared database (PostgreSQL) a run is this process's only while it holds the run's
lease (`owns`): a run whose lease was lost is stopped and never respawned here, and
`stop` ends a run's task without recording anything (a run that gives up its lease to
sleep in the database).

Shutting the runtime down cancels the tasks; cancellation is never recorded, so no run is
marked failed because its process stopped.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aruntime._definitions import Workflow
from aruntime._log import logger
from aruntime._runner import Flusher, Runner
from aruntime.errors import (
    ConfigError,
    CorruptLogError,
    LeaseLostError,
    NonDeterminismError,
    RunNotFoundError,
    SerializationError,
    UnknownWorkflowError,
    UntrackedTaskError,
)
from aruntime.queues import Queue
from aruntime.state import RunState, replay

if TYPE_CHECKING:
    from aruntime.clock import Clock
    from aruntime.serializer import Serializer
    from aruntime.store import EventStore

__all__ = ["RestartBudget", "Supervisor"]

_PARK_AT_ONCE = (
    NonDeterminismError,
    CorruptLogError,
    SerializationError,
    UntrackedTaskError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartBudget:
    """How often, and how soon, a run is respawned before it is parked."""

    max_restarts: int = 5
    """Respawns allowed within `window`; one more parks the run."""
    window: float = 60.0
    """Seconds over which respawns are counted."""
    initial_delay: float = 0.1
    """Seconds before the second respawn within `window` (the first is at once); each
    later one waits twice as long, so that an outage of the store does not spend the
    whole budget in an instant."""
    max_delay: float = 30.0
    """The longest wait before a respawn, and between two attempts to park a run."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        for name in ("window", "initial_delay", "max_delay"):
            seconds = getattr(self, name)
            if not (isinstance(seconds, int | float) and math.isfinite(seconds)):
                raise ConfigError(f"{name} must be a finite number of seconds, got {seconds!r}")
        if self.window <= 0:
            raise ConfigError(f"window must be > 0 seconds, got {self.window!r}")
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ConfigError(
                f"need 0 <= initial_delay <= max_delay, got {self.initial_delay!r} and "
                f"{self.max_delay!r}"
            )

    def delay(self, restarts: int) -> float:
        """Seconds to wait before the respawn that makes `restarts` within the window."""
        if restarts <= 1:
            return 0.0
        return min(self.max_delay, self.initial_delay * 2.0 ** min(restarts - 2, 64))


@dataclass(slots=True)
class SupervisorStats:
    """Counters for the demo, benchmarks and tests."""

    spawned: int = 0
    respawned: int = 0
    parked: int = 0


class _Crash:
    """A crash request: the runner it kills, and the state replayed after it."""

    __slots__ = ("after", "runner")

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.after: asyncio.Future[RunState] = asyncio.get_running_loop().create_future()


class Supervisor:
    """Owns the run tasks of one runtime."""

    def __init__(
        self,
        *,
        group: asyncio.TaskGroup,
        store: EventStore,
        clock: Clock,
        serializer: Serializer,
        random: Callable[[], float],
        find_workflow: Callable[[str], Workflow[..., Any] | None],
        budget: RestartBudget,
        on_exit: Callable[[str, RunState | None], None],
        owns: Callable[[str], bool] | None = None,
        queues: Mapping[str, Queue] | None = None,
    ) -> None:
        self._group = group
        self._queues = queues
        """The queues the runtime declares, for its runs' children (None: not checked)."""
        self._owns = owns
        """Whether this process may run a run (None: every run of its store is its own)."""
        self._store = store
        self._clock = clock
        self._serializer = serializer
        self._random = random
        self._find_workflow = find_workflow
        self._budget = budget
        self._on_exit = on_exit
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, Runner] = {}
        self._crashes: dict[str, _Crash] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._moved: set[str] = set()
        self._closing = False
        self._flusher = Flusher()
        self._stopping: set[str] = set()
        self.stats = SupervisorStats()

    def supervising(self, run_id: str) -> bool:
        return run_id in self._tasks

    def run_lock(self, run_id: str) -> asyncio.Lock | None:
        """Held while the run's task reads its log and builds its runner."""
        return self._locks.get(run_id)

    def log_moved(self, run_id: str) -> None:
        """Someone appended to the log of a supervised run that has no runner."""
        self._moved.add(run_id)

    def runner(self, run_id: str) -> Runner | None:
        """The live runner of `run_id` in this runtime, if it has one."""
        return self._runners.get(run_id)

    @property
    def closing(self) -> bool:
        """Whether the runtime is shutting down (no run task is spawned any more)."""
        return self._closing

    @property
    def active(self) -> int:
        """How many run tasks are alive."""
        return len(self._tasks)

    def spawn(self, run_id: str, state: RunState | None = None) -> None:
        """Start supervising `run_id` (no-op if already supervised here, or once the
        runtime is closing: the run is durable and resumes at the next start-up)."""
        if run_id in self._tasks or self._closing:
            return
        self.stats.spawned += 1
        self._locks[run_id] = asyncio.Lock()
        self._tasks[run_id] = self._group.create_task(
            self._supervise(run_id, state), name=f"aruntime run {run_id}"
        )

    def cancel_all(self) -> None:
        """Cancel every run task and spawn no more.

        Each runner is told first, so that the workflow's cleanup code, which the
        cancellation reaches, starts no step and records nothing: closing the runtime is
        not a cancellation of its runs, which resume where they were next time.
        """
        self._closing = True
        for runner in self._runners.values():
            runner.shut_down()
        for task in self._tasks.values():
            task.cancel()

    def drain(self) -> None:
        """Spawn and respawn no more; let each run finish the step bodies it is running
        and stop at its next operation (see `Runner.drain`)."""
        self._closing = True
        for runner in self._runners.values():
            runner.drain()

    @property
    def busy(self) -> bool:
        """Whether a step body of some run is running now."""
        return any(runner.busy for runner in self._runners.values())

    async def stop(self, run_id: str) -> None:
        """End the run's task here as a shutdown would (nothing is recorded, no respawn)
        and wait until it has ended; the run goes on wherever its lease goes next."""
        task = self.stop_soon(run_id)
        if task is not None:
            await asyncio.wait([task])

    def stop_soon(self, run_id: str) -> asyncio.Task[None] | None:
        """`stop` without waiting: from the moment it returns the run's runner starts
        nothing and appends nothing more (its lease was lost); the run's task, if any."""
        task = self._tasks.get(run_id)
        if task is None:
            return None
        runner = self._runners.get(run_id)
        if runner is not None:
            runner.shut_down()
        self._stopping.add(run_id)
        task.cancel()
        return task

    async def crash(self, run_id: str) -> tuple[RunState, RunState]:
        """Kill the run's task as a crash would; return (state before, state replayed).

        Raises:
            LookupError: the run has no live runner in this runtime.
        """
        runner = self._runners.get(run_id)
        task = self._tasks.get(run_id)
        if runner is None or task is None or run_id in self._crashes:
            raise LookupError(f"run {run_id!r} has no live runner to crash")
        crash = self._crashes[run_id] = _Crash(runner)
        # A crash here loses nothing that was durable; let the outcomes the runner has
        # handed on settle first, so that the state it holds is the state it threw away.
        await runner.settle()
        before = runner.state.copy()
        task.cancel()
        after = await crash.after
        return before, after

    async def _supervise(self, run_id: str, state: RunState | None) -> None:
        restarts: collections.deque[float] = collections.deque()
        lock = self._locks[run_id]
        death: BaseException | None = None
        try:
            while True:
                if self._owns is not None and not self._owns(run_id):
                    return  # another process holds the run now
                try:
                    async with lock:
                        if state is None or run_id in self._moved:
                            self._moved.discard(run_id)
                            state = await self._replay(run_id)
                    if state.version == 0:
                        return  # no such run: a start whose append did not commit
                    await self._run(run_id, state, lock, death)
                    return
                except asyncio.CancelledError as exc:
                    reason, death = self._cancelled(run_id, exc)
                except UnknownWorkflowError as exc:  # left for a runtime that knows it
                    logger.info(
                        "run.left_for_another_runtime", run_id=run_id, workflow=exc.workflow
                    )
                    return
                except _PARK_AT_ONCE as exc:
                    self._runners.pop(run_id, None)  # nothing runs while it parks
                    if self._closing or (self._owns is not None and not self._owns(run_id)):
                        return  # the next runtime finds the cause again
                    await self._park(run_id, exc)
                    return
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    reason = death = exc
                finally:
                    self._runners.pop(run_id, None)
                state = None
                lock = self._locks[run_id] = asyncio.Lock()
                if self._closing:
                    return  # died while the runtime closes: it resumes next time
                if self._owns is not None and not self._owns(run_id):
                    return  # the lease was lost: the run is another process's now
                if not await self._may_respawn(run_id, restarts, reason):
                    return
        finally:
            self._tasks.pop(run_id, None)
            self._locks.pop(run_id, None)
            self._moved.discard(run_id)
            self._stopping.discard(run_id)
            crash = self._crashes.pop(run_id, None)
            if crash is not None and not crash.after.done():
                crash.after.cancel()
            ended = state is not None and state.status.terminal
            self._on_exit(run_id, state if ended else None)

    def _cancelled(
        self, run_id: str, exc: asyncio.CancelledError
    ) -> tuple[BaseException | str, BaseException | None]:
        """Why the run's task got `exc`, as (reason, death) for a respawn; raises it on
        when the runtime is closing."""
        task = asyncio.current_task()
        assert task is not None
        cancels = task.cancelling()
        if cancels == 1 and run_id in self._crashes:
            task.uncancel()  # our own crash injection: respawn
            return "crash injected by aruntime.testing.crash_run", None
        if (cancels and self._closing) or run_id in self._stopping:
            raise exc  # the runtime is shutting down, or the run stops here: record nothing
        for _ in range(cancels):
            task.uncancel()  # nobody meant the run: a body cancelled its own task
        return exc, exc  # a stray CancelledError from a step body

    async def _replay(self, run_id: str) -> RunState:
        state = replay(await self._store.events_for(run_id))
        crash = self._crashes.pop(run_id, None)
        if crash is not None:
            crash.after.set_result(state.copy())
        return state

    async def _run(
        self, run_id: str, state: RunState, lock: asyncio.Lock, death: BaseException | None
    ) -> None:
        runner = self._runner_for(run_id, state, lock, death)
        if self._closing:
            runner.shut_down()  # created while the runtime closes: it starts nothing
        self._runners[run_id] = runner
        await runner.run()

    async def _may_respawn(
        self, run_id: str, restarts: collections.deque[float], reason: BaseException | str
    ) -> bool:
        """Count a restart; park the run and say no once the budget is spent."""
        now = self._clock.monotonic()
        restarts.append(now)
        while restarts and restarts[0] <= now - self._budget.window:
            restarts.popleft()
        if len(restarts) > self._budget.max_restarts:
            await self._park(
                run_id,
                f"restart budget exhausted: {len(restarts)} restarts in "
                f"{self._budget.window:g}s; last cause: {_describe(reason)}",
            )
            return False
        self.stats.respawned += 1
        delay = self._budget.delay(len(restarts))
        logger.warning(
            "run.respawned",
            run_id=run_id,
            restarts=len(restarts),
            delay=delay,
            cause=_describe(reason),
        )
        if delay:
            await self._clock.sleep(delay)
        return True

    def _runner_for(
        self, run_id: str, state: RunState, lock: asyncio.Lock, death: BaseException | None
    ) -> Runner:
        assert state.workflow is not None, f"run {run_id!r} has no RunStarted"
        workflow = self._find_workflow(state.workflow)
        if workflow is None:
            raise UnknownWorkflowError(run_id, state.workflow)
        return Runner(
            state=state,
            workflow=workflow,
            store=self._store,
            clock=self._clock,
            serializer=self._serializer,
            random=self._random,
            lock=lock,
            previous_death=death,
            flusher=self._flusher,
            queues=self._queues,
        )

    async def _park(self, run_id: str, reason: BaseException | str) -> None:
        """Mark the run parked; while the store refuses, keep the run here and try again."""
        text = reason if isinstance(reason, str) else _describe(reason)
        self.stats.parked += 1
        logger.error("run.parked", run_id=run_id, reason=text)
        refusals = 0
        while True:
            try:
                await self._store.park(run_id, text)
            except RunNotFoundError:
                return  # nothing to park: the store holds no such run
            except LeaseLostError:
                return  # another worker of the fleet holds the run now: it is its to park
            except Exception as exc:  # the store is failing too: never drop the run
                refusals += 1
                # The respawn backoff, never zero: a retry loop must not spin.
                delay = max(self._budget.delay(refusals + 1), 0.001)
                logger.error(
                    "run.park_failed", run_id=run_id, reason=text, error=str(exc), retry_in=delay
                )
                await self._clock.sleep(delay)
            else:
                return


def _describe(cause: BaseException | str) -> str:
    if isinstance(cause, str):
        return cause
    if isinstance(cause, asyncio.CancelledError):
        return "CancelledError raised inside the run, although nothing cancelled it"
    return f"{type(cause).__name__}: {cause}"
