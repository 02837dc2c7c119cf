"""The runtime: the object an application embeds, and the handles of its runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random as _random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar

from aruntime._definitions import (
    Workflow,
    check_seconds,
    check_timeout,
    lookup_workflow,
    registered_workflows,
)
from aruntime._fleet import Fleet, shared_store
from aruntime._inbox import Inbox
from aruntime._log import logger
from aruntime._queueing import Admitter
from aruntime._runner import check_same_start, convert_result, encode_start_args
from aruntime._runner_ops import cancel_children_of
from aruntime._supervisor import RestartBudget, Supervisor, SupervisorStats
from aruntime.clock import Clock, SystemClock
from aruntime.errors import (
    ConcurrencyError,
    ConfigError,
    CorruptLogError,
    InvalidRunIdError,
    LeaseLostError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunParkedError,
    StoreError,
)
from aruntime.events import (
    CancelRequested,
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
)
from aruntime.queues import (
    Queue,
    check_declared,
    check_placement,
    queues_by_name,
    registered_queues,
)
from aruntime.serializer import JsonSerializer, Serializer
from aruntime.state import RunState, RunStatus, StepStatus, fold_into, replay
from aruntime.store import (
    EventStore,
    MemoryStore,
    OwnerInfo,
    Request,
    RequestKind,
    RunInfo,
    open_store,
)

__all__ = ["MAX_RUN_ID_LENGTH", "RunHandle", "Runtime", "RuntimeConfig"]

P = ParamSpec("P")
R = TypeVar("R")

MAX_RUN_ID_LENGTH = 255
_ADMITTED_CHECK = 30.0
"""Seconds between two reads of a run that waits for this runtime's admission, while
its result is awaited (its end here is what normally wakes the wait)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig:
    """Settings of a `Runtime` beyond its store."""

    restart_budget: RestartBudget = field(default_factory=RestartBudget)
    """How often a crashed run is respawned before it is parked."""
    resume_on_start: bool = True
    """Resume every unfinished, unparked run in the store when the runtime starts."""
    result_poll_interval: float = 0.5
    """The longest wait between two store reads while waiting on a run this runtime does
    not run; a change committed to the store (the run ending, in another process too)
    wakes the waiter sooner."""

    def __post_init__(self) -> None:
        if not isinstance(self.restart_budget, RestartBudget):
            raise ConfigError("restart_budget must be a RestartBudget")
        if not self.result_poll_interval > 0:
            raise ConfigError("result_poll_interval must be > 0 seconds")


def check_run_id(run_id: object) -> str:
    """Return `run_id` if it is a usable run id.

    Raises:
        InvalidRunIdError: not a string, empty, too long, or holding control characters.
    """
    if not isinstance(run_id, str):
        raise InvalidRunIdError(run_id, f"a run id must be a str, not {type(run_id).__name__}")
    if not run_id:
        raise InvalidRunIdError(run_id, "a run id must not be empty")
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise InvalidRunIdError(
            run_id, f"{len(run_id)} characters, more than the limit of {MAX_RUN_ID_LENGTH}"
        )
    if not run_id.isprintable():
        raise InvalidRunIdError(run_id, "a run id must not contain control characters")
    return run_id


class Runtime:
    """Runs workflows durably; an async context manager that owns every run task.

    Example:
        async with Runtime("sqlite:///runs.db") as rt:
            handle = await rt.start(checkout, "o-42", run_id="order-42")
            print(await handle.result())

    On entry the runtime opens its store, resumes every unfinished run in it whose
    workflow it knows and starts applying the requests that clients post to the store's
    inbox; on exit it cancels its run tasks (nothing is recorded for them: they resume
    next time) and closes the store if it opened it from a URL. A run of a workflow it
    does not know is left alone, for a runtime that knows it: never parked, never failed.

    A runtime owns its store: one at a time per SQLite file. On PostgreSQL any number of
    runtimes (workers) share one database, each running the runs whose lease it holds
    (see `aruntime._fleet`). Other processes (a web server, an admin script) use
    `aruntime.Client` beside it.

    Args:
        store: a store object, a URL (`memory://`, `sqlite:///path.db`), or None for a
            fresh in-memory store. A store object is opened but not closed by the runtime.
        workflows: the workflows this runtime runs; default, every `@workflow` declared in
            the process.
        queues: the queues whose waiting runs this runtime admits (see `aruntime.queues`);
            default, every `Queue` made in the process.
        clock: where time comes from (tests pass a fake one).
        serializer: how arguments and results become text (default: strict JSON).
        random: uniform [0, 1) source for retry jitter.
        config: further settings.
    """

    def __init__(
        self,
        store: EventStore | str | None = None,
        *,
        workflows: Iterable[Workflow[..., Any]] | None = None,
        queues: Iterable[Queue] | None = None,
        clock: Clock | None = None,
        serializer: Serializer | None = None,
        random: Callable[[], float] | None = None,
        config: RuntimeConfig | None = None,
    ) -> None:
        if store is None:
            self._owns_store = True
            self.store: EventStore = MemoryStore()
        elif isinstance(store, str):
            self._owns_store = True
            self.store = open_store(store)
        else:
            self._owns_store = False
            self.store = store
        self._workflows: dict[str, Workflow[..., Any]] | None = None
        if workflows is not None:
            self._workflows = {}
            for wf in workflows:
                if not isinstance(wf, Workflow):
                    raise ConfigError(f"not a @workflow: {wf!r}")
                self._workflows[wf.name] = wf
        self._queues: dict[str, Queue] | None = None if queues is None else queues_by_name(queues)
        self.clock: Clock = clock or SystemClock()
        self.serializer: Serializer = serializer or JsonSerializer()
        self._random = random or _random.Random().random
        self.config = config or RuntimeConfig()
        self._group: asyncio.TaskGroup | None = None
        self._supervisor: Supervisor | None = None
        self._waiters: dict[str, list[asyncio.Future[RunState | None]]] = {}
        self._closed = False
        self._inbox_task: asyncio.Task[None] | None = None
        self._fleet: Fleet | None = None
        self._fleet_task: asyncio.Task[None] | None = None
        self._admitter: Admitter | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._group is not None or self._closed:
            raise ConfigError("a Runtime can be entered once")
        if not self.store.owner:
            raise ConfigError(
                "a Runtime executes runs and must own its store, and this one is opened "
                "read-only or as a client's (mode=ro, read_only or owner=False); to read runs, "
                "wait for results or send start, cancel and resume requests from this "
                "process, use aruntime.Client(url)"
            )
        await self.store.open()
        if self._queues is None:
            self._queues = registered_queues()
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        shared = shared_store(self.store)  # PostgreSQL: runs are owned by lease
        self._supervisor = Supervisor(
            group=group,
            store=self.store,
            clock=self.clock,
            serializer=self.serializer,
            random=self._random,
            find_workflow=self._find_workflow,
            budget=self.config.restart_budget,
            on_exit=self._run_exited,
            owns=None if shared is None else shared.holds,
            queues=self._queues,
        )
        fleet = self._fleet = (
            None
            if shared is None
            else Fleet(shared, self._supervisor, self.clock, queues=self._queues)
        )
        try:
            await self.store.set_owner_info(
                OwnerInfo(pid=os.getpid(), workflows=tuple(sorted(self._known_workflows())))
            )
            if fleet is not None:  # the fleet claims what is runnable, now and later
                if self.config.resume_on_start:
                    await fleet.claim_now()
                self._fleet_task = group.create_task(fleet.serve(), name="aruntime fleet")
            else:
                if self.config.resume_on_start:
                    await self._resume_unfinished()
                if self._queues:
                    admitter = self._admitter = Admitter(
                        store=self.store,
                        clock=self.clock,
                        queues=self._queues,
                        workflows=self._known_workflows,
                        spawn=self._supervisor.spawn,
                    )
                    group.create_task(admitter.serve(), name="aruntime admissions")
            inbox = Inbox(
                store=self.store,
                clock=self.clock,
                supervisor=self._supervisor,
                find_workflow=self._find_workflow,
                cancel=lambda run_id, reason, request: self.cancel(
                    run_id, reason=reason, _request=request
                ),
                resume=lambda run_id, request: self.resume(run_id, _request=request),
                queued=self._queued,
            )
            self._inbox_task = group.create_task(inbox.serve(), name="aruntime inbox")
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        self._closed = True
        assert self._supervisor is not None
        self._supervisor.cancel_all()
        if self._inbox_task is not None:
            self._inbox_task.cancel()
        if self._fleet_task is not None:
            self._fleet_task.cancel()
        if self._admitter is not None:
            self._admitter.stop()
        try:
            if exc is None or isinstance(exc, asyncio.CancelledError):
                await group.__aexit__(exc_type, exc, tb)
            else:
                # The body's own error goes on as itself, not wrapped in an ExceptionGroup:
                # the run tasks, cancelled above, end without errors of their own.
                await group.__aexit__(None, None, None)
        finally:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.cancel()
            self._waiters.clear()
            if self._fleet is not None:
                await self._fleet.release_all()  # the others take over at once
            with contextlib.suppress(Exception):  # best effort: readers check the pid too
                await self.store.set_owner_info(None)
            if self._owns_store:
                await self.store.aclose()

    async def open(self) -> Runtime:
        """Open the store and resume unfinished runs, as `async with` does on entry.

        For applications whose start-up and shut-down hooks are separate calls (a
        FastAPI or Starlette lifespan, a worker's main); pair it with `aclose()`.
        """
        return await self.__aenter__()

    async def aclose(self, *, grace: float | None = None) -> None:
        """Stop every run task (they resume next time) and release the store.

        With `grace` (seconds), first stop taking requests and starting operations, and
        let the step bodies running now finish for up to that long, their outcomes
        recorded; each run stops at its next operation. What still runs after `grace` is
        stopped as without it, and runs again, at least once, in the next runtime.

        Raises:
            ConfigError: `grace` is not a finite number of seconds >= 0.
        """
        grace = check_seconds(grace, "grace", zero=True)
        if grace is not None and self._group is not None:
            await self._drain(grace)
        await self.__aexit__(None, None, None)

    async def _drain(self, grace: float) -> None:
        supervisor = self._require_supervisor()
        if self._inbox_task is not None:
            self._inbox_task.cancel()
        if self._fleet is not None:
            self._fleet.stop_claiming()
        if self._admitter is not None:
            self._admitter.stop()
        supervisor.drain()
        clock = self.clock
        deadline = clock.monotonic() + grace
        while supervisor.busy and clock.monotonic() < deadline:
            await clock.sleep(min(0.01, max(0.0, deadline - clock.monotonic())))

    async def _resume_unfinished(self) -> None:
        supervisor = self._require_supervisor()
        infos = [  # a queued run waits for its admission
            info
            for info in await self.store.list_runs(status=RunStatus.RUNNING, parked=False)
            if not info.queued
        ]
        resumed = [info for info in infos if self._find_workflow(info.workflow) is not None]
        for info in resumed:
            supervisor.spawn(info.run_id)
        if resumed:
            logger.info("runtime.resumed", runs=len(resumed))
        if len(resumed) < len(infos):
            logger.info(
                "runtime.left_for_another_runtime",
                runs=len(infos) - len(resumed),
                workflows=sorted({i.workflow for i in infos} - {i.workflow for i in resumed}),
            )

    # -- starting and finding runs ---------------------------------------------------

    async def start(
        self,
        workflow: Workflow[..., R],
        /,
        *args: Any,
        run_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the run's recorded deadline
        queue: Queue | str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        **kwargs: Any,
    ) -> RunHandle[R]:
        """Start a run of `workflow` with `args` and `kwargs`, or find the existing one.

        Args:
            run_id: the run's name and idempotency key; a random id when None. Starting an
                id again with the same workflow and arguments returns the existing run.
            timeout: seconds from now after which the run is cancelled with the reason
                `timeout`; the deadline is recorded with the run and holds across restarts
                (a run waiting in a queue counts its wait).
            queue: a queue this runtime declares (or its name): the run is recorded at once
                and executed when the queue admits it (see `aruntime.queues`).
            priority: its priority in the queue (lower numbers first; default 0).
            partition_key: its partition in the queue (partitions take turns).

        Raises:
            InvalidRunIdError: the run id is unusable.
            RunIdConflictError: the id names a run of another workflow or other arguments.
            SerializationError: the arguments cannot be serialized (nothing is recorded).
            StoreError: the store failed. The run may be recorded all the same; if it is,
                this runtime runs it, and starting the id again returns it.
            ConfigError: the runtime is not open, or closed while the run was started; a
                placement is unusable, or names a queue this runtime does not declare.
        """
        supervisor = self._require_supervisor()
        queue_name, priority, partition_key = check_placement(queue, priority, partition_key)
        check_declared(self._queues or {}, queue)
        if not isinstance(workflow, Workflow):
            raise ConfigError(f"start() needs a @workflow, got {workflow!r}")
        run_id = uuid.uuid4().hex if run_id is None else check_run_id(run_id)
        if self._find_workflow(workflow.name) is not workflow:
            raise ConfigError(
                f"workflow {workflow.name!r} is not the one this runtime runs under that name"
            )
        check_timeout(timeout)
        encoded = encode_start_args(self.serializer, workflow, run_id, args, dict(kwargs))
        now = self.clock.now()
        event = RunStarted(
            sequence=1,
            at=now,
            run_id=run_id,
            workflow=workflow.name,
            args=encoded,
            deadline=None if timeout is None else now + timeout,
            queue=queue_name,
            priority=priority,
            partition_key=partition_key,
        )
        try:
            await self.store.append(run_id, (event,), 0)
        except ConcurrencyError:
            return await self._existing(run_id, workflow, encoded)
        except (StoreError, asyncio.CancelledError):
            # The append may have been committed all the same (its acknowledgement was
            # lost): a task reads the log and runs the run if it is there, ends if not.
            if queue_name is None:
                supervisor.spawn(run_id)
            else:
                self._queued()
            raise
        if supervisor.closing:
            raise ConfigError(
                f"the runtime closed while run {run_id!r} was being started; the run is "
                "recorded and resumes when a runtime opens this store again"
            )
        logger.info("run.started", run_id=run_id, workflow=workflow.name, queue=queue_name)
        if queue_name is not None:
            self._queued()
            return RunHandle(self, run_id, workflow)
        state = RunState()
        fold_into(state, (event,))
        supervisor.spawn(run_id, state)
        return RunHandle(self, run_id, workflow)

    def _queued(self) -> None:
        """A run waits for its queue now: look at what may be admitted."""
        if self._admitter is not None:
            self._admitter.wake()
        elif self._fleet is not None:
            self._fleet.wake()

    async def _existing(
        self, run_id: str, workflow: Workflow[..., R], encoded: str
    ) -> RunHandle[R]:
        first = (await self.store.events_for(run_id))[:1]
        if not first or not isinstance(first[0], RunStarted):
            raise RunNotFoundError(run_id)
        started = first[0]
        check_same_start(
            self.serializer,
            run_id,
            started.workflow,
            started.args,
            workflow=workflow.name,
            encoded=encoded,
        )
        return RunHandle(self, run_id, workflow)

    def handle(self, run_id: str) -> RunHandle[Any]:
        """A handle on an existing run (checked when used)."""
        return RunHandle(self, check_run_id(run_id))

    async def state(self, run_id: str) -> RunState:
        """The run's state, replayed from its log.

        Raises:
            RunNotFoundError: no such run.
        """
        events = await self.store.events_for(check_run_id(run_id))
        if not events:
            raise RunNotFoundError(run_id)
        return replay(events)

    async def runs(
        self, *, status: RunStatus | None = None, parked: bool | None = None
    ) -> list[RunInfo]:
        """The store's index of runs."""
        return await self.store.list_runs(status=status, parked=parked)

    async def resume(self, run_id: str, *, _request: int = 0) -> None:
        """Clear a parked run's mark and run it again from its log.

        Raises:
            RunNotFoundError: no such run.
        """
        supervisor = self._require_supervisor()
        info = await self.store.get_run(check_run_id(run_id))
        if info is None:
            raise RunNotFoundError(run_id)
        if info.parked and not info.status.terminal:
            await self._record_resumed(run_id, info.parked_reason or "", _request)
        if info.parked:
            await self.store.unpark(run_id)
        if info.status.terminal or self._find_workflow(info.workflow) is None:
            return
        if info.queued:
            self._queued()  # it runs when its queue admits it
        else:
            supervisor.spawn(run_id)

    async def _record_resumed(self, run_id: str, reason: str, request: int = 0) -> None:
        """Append `RunResumed`: the attempts the park cut short no longer count."""
        while True:
            state = replay(await self.store.events_for(run_id))
            if state.status.terminal:
                return
            event = RunResumed(
                sequence=state.version + 1, at=self.clock.now(), reason=reason, request=request
            )
            try:
                await self.store.append(run_id, [event], state.version)
            except LeaseLostError:
                return  # another worker of the fleet runs it: it is not parked
            except ConcurrencyError:
                continue  # the run moved on meanwhile: look again
            return

    async def cancel(
        self, run_id: str, *, reason: str | None = None, _request: int = 0
    ) -> RunStatus:
        """Cancel a run: record the request durably, then deliver it.

        A run that this runtime runs gets `asyncio.CancelledError` at the operation it
        waits on (a step in flight, a sleep, a retry's backoff); its cleanup code runs and
        the run ends `CANCELLED`. A run that nothing runs (parked, or left for a runtime
        that knows its workflow) ends `CANCELLED` at once. Cancelling an ended run changes
        nothing. When the run's completion and the cancellation race, whichever is durable
        first wins.

        Returns:
            The run's status once the request is recorded (`RUNNING` while the run is
            still cleaning up; `handle.result()` then raises `RunCancelledError`).

        Raises:
            RunNotFoundError: no such run.
        """
        supervisor = self._require_supervisor()
        check_run_id(run_id)
        if reason is not None and not isinstance(reason, str):
            raise ConfigError(f"a cancellation reason must be a str, got {reason!r}")
        text = reason or "cancelled"
        while True:
            runner = supervisor.runner(run_id)
            if runner is not None:
                await runner.request_cancel(text, request=_request)
                return runner.state.status
            lock = supervisor.run_lock(run_id)
            if lock is not None:
                async with lock:  # the run's task is not reading its log meanwhile
                    if supervisor.runner(run_id) is not None:
                        continue
                    status = await self._cancel_from_log(supervisor, run_id, text, _request)
            else:
                status = await self._cancel_from_log(supervisor, run_id, text, _request)
            if status is not None:
                return status

    async def _cancel_from_log(
        self, supervisor: Supervisor, run_id: str, text: str, request: int = 0
    ) -> RunStatus | None:
        while True:
            events = await self.store.events_for(run_id)
            if not events:
                raise RunNotFoundError(run_id)
            state = replay(events)
            supervised = supervisor.supervising(run_id)  # a respawn is on its way
            if state.status.terminal or (supervised and state.cancel_reason is not None):
                return state.status
            now = self.clock.now()
            batch: list[Event] = []
            if state.cancel_reason is None:
                batch.append(
                    CancelRequested(
                        sequence=state.version + 1, at=now, reason=text, request=request
                    )
                )
            if not supervised:
                reason_ = state.cancel_reason or text
                batch.append(
                    RunCancelled(sequence=state.version + len(batch) + 1, at=now, reason=reason_)
                )
            try:
                await self.store.append(run_id, batch, state.version)
            except LeaseLostError:
                # Another worker of the fleet runs it: its inbox takes the request there.
                await self.store.post(
                    Request(kind=RequestKind.CANCEL, run_id=run_id, at=now, reason=text)
                )
                return RunStatus.RUNNING
            except ConcurrencyError:
                continue  # the run moved on meanwhile: look again
            logger.info("run.cancel_requested", run_id=run_id, reason=text)
            if supervised:
                supervisor.log_moved(run_id)
                return RunStatus.RUNNING
            info = await self.store.get_run(run_id)
            if info is not None and info.parked:
                await self.store.unpark(run_id)
            fold_into(state, batch)
            await cancel_children_of(self.store, now, state, state.cancel_reason or text)
            self._run_exited(run_id, state)
            return RunStatus.CANCELLED

    @property
    def stats(self) -> SupervisorStats:
        """Counters of spawned, respawned and parked runs."""
        return self._require_supervisor().stats

    # -- internals ---------------------------------------------------------------------

    def _require_supervisor(self) -> Supervisor:
        if self._supervisor is None or self._group is None:
            raise ConfigError("use the Runtime inside `async with Runtime(...) as rt:`")
        return self._supervisor

    def _known_workflows(self) -> list[str]:
        if self._workflows is not None:
            return list(self._workflows)
        return list(registered_workflows())

    def _find_workflow(self, name: str) -> Workflow[..., Any] | None:
        if self._workflows is not None:
            return self._workflows.get(name)
        return lookup_workflow(name)

    def _run_exited(self, run_id: str, final: RunState | None) -> None:
        if final is None or final.queue is not None:  # its place in a queue may be free
            self._queued()
        for waiter in self._waiters.pop(run_id, ()):
            if not waiter.done():
                waiter.set_result(final)

    def _exit_waiter(self, run_id: str) -> asyncio.Future[RunState | None]:
        """A future that `_run_exited` settles when the run's task here ends."""
        waiter: asyncio.Future[RunState | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(waiter)
        return waiter

    async def _wait_admitted_exit(self, run_id: str) -> RunState | None:
        """Wait until a run that waits for this runtime's admission ends here (its final
        state), or its task here ends unfinished (None: parked, stopped), or, as a safety
        net, `_ADMITTED_CHECK` seconds pass. Nothing else ends such a run: only this
        runtime admits it, runs it and cancels it, and each of those ends through
        `_run_exited`, so no store read is needed meanwhile."""
        waiter = self._exit_waiter(run_id)
        try:
            await asyncio.wait((waiter,), timeout=_ADMITTED_CHECK)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.get(run_id, []).remove(waiter)
        return None if waiter.cancelled() else waiter.result()

    async def _wait_exit(self, run_id: str, seen: int | None = None) -> RunState | None:
        """Wait until the local task of `run_id` ends (its final state if it finished the
        run). If this runtime has no task for it: until the store changes after `seen` (a
        `change_counter()` taken before the caller's read), at most a poll interval."""
        supervisor = self._supervisor
        if supervisor is not None and supervisor.supervising(run_id):
            return await self._exit_waiter(run_id)
        if seen is None and self._fleet is not None:  # another worker may run it
            seen = self.store.change_counter()
        if seen is None:
            await self.clock.sleep(self.config.result_poll_interval)
        else:  # the store's change (the run's end, in another process too) wakes it
            await self.store.wait_changed(seen, self.config.result_poll_interval)
        return None


class RunHandle(Generic[R]):
    """A reference to one run, by id."""

    __slots__ = ("_runtime", "_workflow", "run_id")

    def __init__(
        self, runtime: Runtime, run_id: str, workflow: Workflow[..., R] | None = None
    ) -> None:
        self._runtime = runtime
        self.run_id = run_id
        self._workflow: Workflow[..., Any] | None = workflow

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    async def state(self) -> RunState:
        """The run's state, replayed from its log."""
        return await self._runtime.state(self.run_id)

    async def cancel(self, reason: str | None = None) -> RunStatus:
        """Cancel the run (see `Runtime.cancel`)."""
        return await self._runtime.cancel(self.run_id, reason=reason)

    async def result(self) -> R:
        """Wait for the run to end and return the workflow's result.

        Raises:
            RunFailedError: the run ended failed (with the cause's type and message).
            RunCancelledError: the run ended cancelled (with the reason).
            RunParkedError: the supervisor parked the run.
            RunNotFoundError: no such run.
        """
        rt = self._runtime
        supervisor = rt._supervisor
        if supervisor is not None and supervisor.supervising(self.run_id):
            final = await rt._wait_exit(self.run_id)
            if final is not None:  # it ended here: no need to read it back
                return self._from_state(final)
        while True:
            seen = rt.store.change_counter()
            info = await rt.store.get_run(self.run_id)
            if info is None:
                if not await self._start_waits(rt.store):
                    raise RunNotFoundError(self.run_id)
                await rt._wait_exit(self.run_id, seen)  # the inbox applies it soon
                continue
            if info.status.terminal:
                return await self._outcome(info.version)
            if info.parked:
                raise RunParkedError(self.run_id, info.parked_reason or "")
            if info.queued and rt._admitter is not None:
                # This runtime admits it, and learns of its end first: no store reads.
                final = await rt._wait_admitted_exit(self.run_id)
                if final is not None:
                    return self._from_state(final)
                continue
            await rt._wait_exit(self.run_id, seen)

    async def _start_waits(self, store: EventStore) -> bool:
        """Whether a start of this run waits in the inbox (or was applied meanwhile)."""
        pending = await store.pending(run_id=self.run_id)
        if any(r.kind is RequestKind.START for r in pending):
            return True
        return await store.get_run(self.run_id) is not None

    def _from_state(self, state: RunState) -> R:
        if state.status is RunStatus.COMPLETED:
            assert state.result is not None
            return self._decode(state.result, state.workflow)
        if state.status is RunStatus.CANCELLED:
            raise RunCancelledError(self.run_id, state.cancel_reason or "")
        raise _failure(self.run_id, state)

    def _decode(self, text: str, workflow_name: str | None) -> R:
        """The recorded result, as the workflow's return annotation says."""
        workflow = self._workflow
        if workflow is None and workflow_name is not None:
            workflow = self._runtime._find_workflow(workflow_name)
        value = self._runtime.serializer.loads(text)
        if workflow is None:
            return value  # type: ignore[no-any-return]
        return convert_result(value, workflow.result_type(), self.run_id, None)  # type: ignore[no-any-return]

    async def _outcome(self, version: int) -> R:
        last = await self._runtime.store.events_for(self.run_id, after=version - 1)
        event = last[-1] if last else None
        if isinstance(event, RunCompleted):
            info = await self._runtime.store.get_run(self.run_id)
            return self._decode(event.result, None if info is None else info.workflow)
        if isinstance(event, RunCancelled):
            raise RunCancelledError(self.run_id, event.reason)
        if isinstance(event, RunFailed):  # rare: the whole log, to name the failed step
            raise _failure(self.run_id, replay(await self._runtime.store.events_for(self.run_id)))
        raise CorruptLogError(self.run_id, version, f"a finished run ends with {event!r:.80}")


def _failure(run_id: str, state: RunState) -> RunFailedError:
    """The error of a failed run, naming the step whose failure ended it, if one did."""
    kind, message = state.error_type or "", state.error_message or ""
    cause = next(
        (
            s
            for s in reversed(state.steps.values())
            if s.status is StepStatus.FAILED and s.error_type == kind and s.error_message == message
        ),
        None,
    )
    if cause is None:
        return RunFailedError(run_id, kind, message)
    return RunFailedError(
        run_id, kind, message, step=cause.step, identity=cause.identity, attempts=cause.attempts
    )
