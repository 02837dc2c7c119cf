"""One run: fold -> next action -> execute -> append, until the run is terminal.

The runner owns its `RunState`. It never decides from anything but that fold: every
operation the workflow calls (a step, a durable sleep) asks the pure functions of
`_decide` what to do, carries the action out, appends what happened and folds it before
asking again.

Write-ahead (DESIGN §2.1) with one durable commit per step. `StepStarted`, `SleepStarted`
and `CancelRequested` are appended and waited for: the store's append returns only once
they are durable, and only then does the body run, the sleep begin or the cancellation
reach the workflow. A step's outcome (`StepCompleted`, `StepFailed`) is folded and handed
on without waiting, and the workflow goes on with the value. Every append of the run
goes out in order, all pending events first, so the run's next waited append (the next
`StepStarted`, a sleep, the final `RunCompleted`) is acknowledged only once the outcome
is durable too: nothing that depends on the outcome leaves the run before it is. An
outcome that has not gone out when the workflow waits on something else is flushed from
a callback soon after. A crash before it commits re-runs the body after recovery, which
at-least-once bodies allow.

When the runner cannot go on safely (the store failed, another writer took the run, the
workflow asked for an operation the log does not hold) it raises `_Abort`, a
BaseException, into the workflow so that `except Exception:` in user code cannot swallow
it, refuses every later call, and `run()` raises the cause to the supervisor. Nothing is
appended after that.

Cancellation (a user's request or the run's deadline) is recorded first (`CancelRequested`),
then delivered once as `asyncio.CancelledError` by cancelling the run's root task, which
asyncio passes on to the branches the root awaits. Each operation the cancellation
interrupts records `OperationCancelled`, so replay delivers it at the same place; the
workflow's cleanup code and the steps it calls run normally afterwards. A cancellation
the log holds but this process has not delivered (after a crash) is delivered at the
first operation that is not simply replayed.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from aruntime import _context, _runner_ops
from aruntime._decide import (
    INTERRUPTED,
    Cancel,
    Execute,
    GiveUp,
    Mismatch,
    Raise,
    Record,
    Replay,
    Resume,
    WaitUntil,
    deadline_passed,
    next_sleep_action,
    next_step_action,
)
from aruntime._errortext import error_message, error_type
from aruntime._log import debug_enabled, logger
from aruntime._values import (
    AppendInterruptedError,
    _Abort,
    args_digest,
    check_same_start,
    convert_result,
    decode_args,
    encode_args,
    encode_start_args,
)
from aruntime.errors import (
    AruntimeError,
    NonDeterminismError,
    SerializationError,
    StepFailedError,
    StepTimeout,
    UntrackedTaskError,
)
from aruntime.events import (
    CancelRequested,
    Event,
    OperationCancelled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    op_identity,
)
from aruntime.queues import Queue, check_declared
from aruntime.state import RunState, fold_into
from aruntime.store._changes import ChangeSignal

if TYPE_CHECKING:
    from aruntime._context import Branch
    from aruntime._definitions import Step, Workflow
    from aruntime.clock import Clock
    from aruntime.serializer import Serializer
    from aruntime.store import EventStore

__all__ = [
    "Flusher",
    "Runner",
    "check_same_start",
    "convert_result",
    "decode_args",
    "encode_args",
    "encode_start_args",
]

SERIALIZATION_ERROR = "aruntime.SerializationError"


class Flusher:
    """Hands on, once per turn of the event loop, the outcomes that runs folded without
    waiting and have not appended since (see `Runner._append_later`).

    Usually a run's next append has taken them along by then, and the turn finds nothing
    to do; sharing the turn among every run of a runtime keeps that check off each step.
    """

    __slots__ = ("_due", "_scheduled")

    def __init__(self) -> None:
        self._due: list[Runner] = []
        self._scheduled = False

    def add(self, runner: Runner) -> None:
        self._due.append(runner)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        due, self._due = self._due, []
        for runner in due:
            runner._flush_soon()


class Runner:
    """Drives one run from its folded state to a terminal event."""

    __slots__ = (
        "_abort",
        "_bodies",
        "_branches",
        "_cancels_issued",
        "_clock",
        "_closing",
        "_debug",
        "_delivered",
        "_draining",
        "_flush_scheduled",
        "_flusher",
        "_helpers",
        "_lock",
        "_loop",
        "_loser_paths",
        "_mail",
        "_pending",
        "_previous_death",
        "_queues",
        "_random",
        "_reaped",
        "_reaping",
        "_root",
        "_serializer",
        "_store",
        "_taken",
        "_visited",
        "_workflow",
        "_workflow_done",
        "context",
        "run_id",
        "state",
    )

    def __init__(
        self,
        *,
        state: RunState,
        workflow: Workflow[..., Any],
        store: EventStore,
        clock: Clock,
        serializer: Serializer,
        random: Callable[[], float],
        lock: asyncio.Lock,
        previous_death: BaseException | None = None,
        flusher: Flusher | None = None,
        queues: Mapping[str, Queue] | None = None,
    ) -> None:
        assert state.run_id is not None
        self.run_id: str = state.run_id
        self.state = state
        self.context = _context.RunContext(self.run_id, workflow.name)
        self._workflow = workflow
        self._store = store
        self._clock = clock
        self._serializer = serializer
        self._random = random
        self._lock = lock
        self._queues = queues
        """The queues its runtime declares (None: children's queues are not checked)."""
        self._previous_death = previous_death
        """Why this run's previous runner in this process died, if it did."""
        self._abort: BaseException | None = None
        self._debug = debug_enabled()
        self._pending: list[Event] = []
        """Events folded into `state` and not yet handed to the store, in order."""
        self._flush_scheduled = False
        self._flusher = Flusher() if flusher is None else flusher
        self._helpers: set[asyncio.Task[Any]] = set()
        self._branches: set[asyncio.Task[Any]] = set()
        self._visited: set[str] = set()
        self._delivered = False
        self._cancels_issued = 0
        self._reaping = False
        self._reaped = False
        self._workflow_done = False
        self._closing = False
        self._draining = False
        self._bodies = 0
        """Step bodies running now (one per branch at most)."""
        self._root: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mail = ChangeSignal()
        """Moves when a message for the run may have arrived (the inbox saw one)."""
        self._taken: set[int] = set()
        """The inbox ids of the messages this runner consumed."""
        self._loser_paths: list[str] = []
        """Branches that lost an `aruntime.first`: their recorded operations may stay
        unvisited."""

    def check_queue(self, queue: Queue | str | None) -> None:
        """Refuse a child's queue that the runtime does not declare (`check_declared`)."""
        if self._queues is not None:
            check_declared(self._queues, queue)

    # -- the run as a whole ------------------------------------------------------------

    async def run(self) -> None:
        """Run the workflow to its end and record it; return at once if already ended.

        Raises:
            NonDeterminismError, StoreError, ConcurrencyError, SerializationError,
                UntrackedTaskError: the run cannot go on; nothing was appended after it.
            BaseException: cancellation and other BaseExceptions from the workflow or its
                steps propagate unrecorded.
        """
        state = self.state
        if state.status.terminal:
            return
        assert state.args is not None
        args, kwargs = self._workflow.typed_args(
            *decode_args(self._serializer, self.run_id, state.args), self.run_id
        )
        root = asyncio.current_task()
        assert root is not None
        self._root = root
        self._loop = asyncio.get_running_loop()
        token = _context._BRANCH.set(_context.Branch(self, "", root))
        try:
            if state.deadline is not None and state.cancel_reason is None:
                if deadline_passed(state, self._clock.now()):
                    # It passed while no runtime ran the run: cancel before any body runs.
                    await self._append(CancelRequested, reason="timeout")
                    logger.info("run.cancel_requested", run_id=self.run_id, reason="timeout")
                else:
                    self._helper(self._watch_deadline(state.deadline))
            await self._run(args, kwargs)
        except _Abort as abort:  # from the workflow's operations, or from the final append
            if self._draining and not self._closing and self._abort is None:
                await self.settle()  # the outcomes of the bodies that finished meanwhile
            raise abort.cause from None
        except BaseExceptionGroup:  # an _Abort from a TaskGroup branch comes wrapped
            if self._abort is not None:
                raise self._abort from None
            raise
        finally:
            _context._BRANCH.reset(token)
            self._workflow_done = True
            for _ in range(self._cancels_issued):
                root.uncancel()
            self._cancels_issued = 0
            await self._stop(self._helpers | self._branches)

    async def _run(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            value = await self._workflow.fn(*args, **kwargs)
        except asyncio.CancelledError:
            self._workflow_done = True
            self._raise_if_aborted()
            if not self._delivered:
                raise  # shutdown, an injected crash, or a stray CancelledError
            root = self._root
            assert root is not None
            for _ in range(self._cancels_issued):
                root.uncancel()
            self._cancels_issued = 0
            if root.cancelling():
                raise  # the runtime is shutting down as well: record nothing
            await self._reap()
            reason = self.state.cancel_reason or "cancelled"
            await _runner_ops.cancel_children(self, reason)
            await self._finish(RunCancelled, reason=reason)
            logger.info("run.cancelled", run_id=self.run_id, reason=reason)
            return
        except Exception as exc:  # the workflow's own failure (an _Abort is no Exception)
            self._workflow_done = True
            self._raise_if_aborted()
            await self._reap()
            self._check_no_unvisited_operations()
            await self._finish_failed(exc)
            return
        self._workflow_done = True
        self._raise_if_aborted()
        await self._reap()
        self._check_no_unvisited_operations()
        try:
            result = self._serializer.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            err = SerializationError(
                f"workflow result cannot be serialized: {exc}", run_id=self.run_id
            )
            await self._finish_failed(err)
            return
        final = await self._finish(RunCompleted, result=result)
        if final is RunCompleted:
            logger.info("run.completed", run_id=self.run_id, workflow=self.context.workflow)

    async def _finish_failed(self, exc: Exception) -> None:
        if isinstance(exc, StepFailedError):
            kind, message = exc.error_type, exc.error_message
        else:
            kind, message = error_type(exc), error_message(exc)
        final = await self._finish(RunFailed, error_type=kind, error_message=message)
        if final is RunFailed:
            logger.warning("run.failed", run_id=self.run_id, error_type=kind, error=message)

    async def _finish(self, kind: type[Event], **fields: Any) -> type[Event]:
        """Append the run's last event; a cancellation that came first and was never
        delivered wins over the workflow's own outcome."""
        async with self._lock:
            state = self.state
            if state.cancel_reason is not None and not self._delivered:
                kind, fields = RunCancelled, {"reason": state.cancel_reason}
            self._buffer(kind, fields)
            await self._flush_locked()
        return kind

    def _raise_if_aborted(self) -> None:
        if self._abort is not None:
            raise _Abort(self._abort)

    def _refusal(self) -> _Abort:
        """Why no operation may start: the runner failed, or the runtime is closing."""
        if self._abort is not None:
            return _Abort(self._abort)
        return _Abort(asyncio.CancelledError())

    def shut_down(self) -> None:
        """The runtime is closing: from now on the workflow starts no operation and the
        run appends nothing more. Its cancellation, delivered next, is not recorded; what
        the workflow's cleanup code would do is left to the runtime that resumes the run."""
        self._closing = self._draining = True

    def drain(self) -> None:
        """The runtime is about to close: the step bodies running now may finish and their
        outcomes are recorded, but the workflow starts no operation after them (the
        attempt raises `CancelledError`); the run resumes there in the next runtime."""
        self._draining = True

    @property
    def busy(self) -> bool:
        """Whether a step body of this run is running now."""
        return self._bodies > 0

    def _check_no_unvisited_operations(self) -> None:
        state = self.state
        if self._reaped:
            return
        unvisited = sorted(
            identity
            for identity in state.identities() - self._visited
            if not any(identity.startswith(f"{path}.") for path in self._loser_paths)
        )
        if unvisited:
            identity = unvisited[0]
            raise self._fail(
                NonDeterminismError(
                    run_id=self.run_id,
                    identity=identity,
                    recorded=state.operation_at(identity) or "an operation",
                    requested="the end of its branch",
                )
            )

    def _fail(self, cause: BaseException) -> _Abort:
        if self._abort is None:
            self._abort = cause
        return _Abort(self._abort)

    # -- appending ---------------------------------------------------------------------

    def _buffer(self, kind: type[Event], fields: dict[str, Any]) -> None:
        """Number and fold one event and queue it for the store."""
        if self._abort is not None or self._closing:
            raise self._refusal()
        state = self.state
        event = kind(sequence=state.version + 1, at=self._clock.now(), **fields)
        fold_into(state, (event,))
        self._pending.append(event)

    async def _append(self, kind: type[Event], **fields: Any) -> None:
        """Append one event, and every event before it; return once all are durable."""
        self._buffer(kind, fields)
        async with self._lock:
            await self._flush_locked()

    def _append_later(self, kind: type[Event], **fields: Any) -> None:
        """Append one event without waiting; the run's next append waits for it."""
        self._buffer(kind, fields)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flusher.add(self)

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        if self._pending and self._abort is None and not self._workflow_done:
            self._helper(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        try:
            async with self._lock:
                await self._flush_locked()
        except _Abort:
            self._stop_root()

    def _stop_root(self) -> None:
        """The runner failed (`_abort`): the run's next operation raises it. Cancel the
        root as well, in case the workflow waits on something that is not an operation
        (a body in flight), so that the run dies and is respawned without waiting."""
        root = self._root
        if root is not None and not self._workflow_done and not root.done():
            self._cancels_issued += 1
            root.cancel()

    async def _flush_locked(self) -> None:
        if self._abort is not None:
            raise _Abort(self._abort)
        batch = self._pending
        if not batch:
            return
        self._pending = []
        try:
            await self._store.append(self.run_id, batch, batch[0].sequence - 1)
        except AruntimeError as exc:
            raise self._fail(exc) from None
        except asyncio.CancelledError:
            self._fail(AppendInterruptedError(self.run_id))
            raise

    async def settle(self) -> None:
        """Wait until every event folded so far is durable (or the runner has failed),
        including those folded while it waited: it returns with none pending."""
        try:
            async with self._lock:
                while self._pending:
                    await self._flush_locked()
        except _Abort:
            pass

    # -- tasks the runner owns ----------------------------------------------------------

    def _helper(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def spawn(
        self,
        parent: Branch,
        awaitable: Awaitable[Any],
        create: Callable[..., asyncio.Task[Any]] | None = None,
        name: str | None = None,
        *,
        loser: bool = False,
        out: list[Branch] | None = None,
        race: tuple[_context.Race, int] | None = None,
    ) -> asyncio.Task[Any]:
        """Run `awaitable` in a task of its own, as the next child branch of `parent`."""
        self.check_owner(parent, "a branch")
        child = parent.child()
        if race is not None:
            child.races = (*child.races, race)
        if out is not None:
            out.append(child)
        if loser:
            child.loser = True
            self._loser_paths.append(child.path)
        context = contextvars.copy_context()
        context.run(_context._BRANCH.set, child)
        coro = awaitable if inspect.iscoroutine(awaitable) else _await(awaitable)
        if create is None:
            task = asyncio.get_running_loop().create_task(coro, name=name, context=context)
        else:
            task = create(coro, name=name, context=context)
        child.task = task
        self._branches.add(task)
        task.add_done_callback(self._branches.discard)
        return task

    async def _reap(self) -> None:
        """Cancel the branches the workflow left running (a gather that raised first)."""
        if any(not t.done() for t in self._branches):
            self._reaped = True
            await self._stop(self._branches)

    async def _stop(self, tasks: set[asyncio.Task[Any]]) -> None:
        live = [t for t in tasks if not t.done()]
        if not live:
            return
        self._reaping = True
        for task in live:
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)

    def check_owner(self, branch: Branch, what: str) -> None:
        """Refuse an operation called from a task that does not own `branch`."""
        if self._abort is not None or self._closing:
            raise self._refusal()
        if asyncio.current_task() is not branch.task:
            raise self._fail(UntrackedTaskError(self.run_id, what))

    # -- cancellation ------------------------------------------------------------------

    async def request_cancel(self, reason: str, *, request: int = 0) -> bool:
        """Record the run's cancellation and deliver it; False if it came too late.

        Raises:
            StoreError, ConcurrencyError: the store did not take the request. If it did not
                record it, the run goes on as if nobody had asked; if it cannot tell, the
                run dies and is respawned from its log, which has the last word.
        """
        async with self._lock:
            state = self.state
            if state.status.terminal or state.cancel_reason is not None:
                return False
            try:
                await self._flush_locked()  # the outcomes folded before it go first
                await self._append_cancel_request(
                    CancelRequested(
                        sequence=state.version + 1,
                        at=self._clock.now(),
                        reason=reason,
                        request=request,
                    )
                )
            except _Abort as abort:
                self._stop_root()
                raise abort.cause from None
        logger.info("run.cancel_requested", run_id=self.run_id, reason=reason)
        if not self._workflow_done and not self._closing:  # else the next runtime delivers it
            self._deliver(None)
        return True

    async def _append_cancel_request(self, event: CancelRequested) -> None:
        """Append `event` and fold it only once the log holds it.

        A store error that leaves it out of the log leaves the runner as it was, and is
        raised. One that leaves it unknown is settled by reading the log back. Outcomes
        the workflow folded meanwhile (a body that returned) go to the log after it.
        """
        if self._abort is not None:
            raise _Abort(self._abort)
        try:
            await self._store.append(self.run_id, [event], event.sequence - 1)
        except AruntimeError as exc:
            try:
                recorded = await self._store.events_for(self.run_id, event.sequence - 1)
            except AruntimeError:
                raise self._fail(exc) from None
            if not recorded:
                raise  # nothing was written: the run goes on unchanged
            if type(recorded[0]) is not type(event):
                raise self._fail(exc) from None  # another writer: this runner is stale
        except asyncio.CancelledError:
            self._fail(AppendInterruptedError(self.run_id))
            self._stop_root()
            raise
        pending = self._pending
        if pending and pending[0].sequence == event.sequence:
            # Events folded while the request was in flight (the lock held back their
            # append): the log holds the request first, so they move one place on. The
            # fold of a CancelRequested only sets the reason, which none of them reads,
            # so folding it after them gives the state the log's order gives.
            self._pending = [msgspec.structs.replace(e, sequence=e.sequence + 1) for e in pending]
            self.state.cancel_reason = event.reason
            self.state.version += 1
            return
        fold_into(self.state, (event,))

    def _deliver(self, here: asyncio.Task[Any] | None) -> None:
        """Cancel the root task once, unless the cancellation is raised `here` already."""
        if self._delivered:
            return
        self._delivered = True
        root = self._root
        if root is not None and root is not here and not root.done():
            self._cancels_issued += 1
            root.cancel()

    def _cancel_pending(self) -> bool:
        return self.state.cancel_reason is not None and not self._delivered

    async def _cancelled_at(self, branch: Branch, position: int, record: bool) -> None:
        """Deliver the cancellation at this operation: record it, then raise it."""
        if record:
            self._append_later(OperationCancelled, position=position, branch=branch.path)
        self._deliver(asyncio.current_task())
        raise asyncio.CancelledError

    def _interrupted(self, branch: Branch, position: int) -> None:
        """A CancelledError reached the operation at `position`: record it if it is the
        run's cancellation (not a shutdown, a crash, the end of a branch or of a loser)."""
        if not branch.loser:
            self._interrupted_at(branch.path, position)

    def _interrupted_at(self, path: str, position: int) -> bool:
        if self._delivered and not self._reaping and self._abort is None and not self._closing:
            self._append_later(OperationCancelled, position=position, branch=path)
            return True
        return False

    async def _hold(self, branch: Branch) -> None:
        """In a branch that lost a recorded `aruntime.first`, an operation the log does
        not simply replay waits to be cancelled: it never starts what the original run
        never started."""
        if branch.loser:
            await asyncio.get_running_loop().create_future()

    def mail_arrived(self) -> None:
        """A message for this run may be in the inbox: wake the receives that wait."""
        self._mail.bump()

    async def _watch_deadline(self, deadline: float) -> None:
        clock = self._clock
        while not deadline_passed(self.state, clock.now()):
            if self.state.cancel_reason is not None or self.state.status.terminal:
                return
            await clock.sleep(deadline - clock.now())
        try:
            await self.request_cancel("timeout")
        except Exception as exc:  # not recorded, or unknown: the respawned runner decides
            self._fail(exc)
            self._stop_root()

    # -- operations --------------------------------------------------------------------

    def _next(self, what: str) -> tuple[Branch, int, str]:
        branch = _context._BRANCH.get()
        if branch is None or branch.runner is not self:
            raise self._fail(UntrackedTaskError(self.run_id, what))
        self.check_owner(branch, what)
        if self._draining:
            raise self._refusal()
        position = branch.position = branch.position + 1
        identity = op_identity(branch.path, position)
        self._visited.add(identity)
        return branch, position, identity

    async def run_step(
        self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Return the step's recorded result, or run it until it has one."""
        name = step.name
        branch, position, identity = self._next(f"step {name!r}")
        digest = args_digest(args, kwargs)
        max_attempts = step.retry.max_attempts
        clock = self._clock
        while True:
            action = next_step_action(
                self.state,
                identity,
                name,
                digest=digest,
                max_attempts=max_attempts,
                now=clock.now(),
                cancel_pending=self._cancel_pending(),
            )
            kind = type(action)
            if kind is Replay:
                return self._decode_result(action.result, step)  # type: ignore[union-attr]
            if branch.loser and kind is not Raise:
                await self._hold(branch)
            if kind is Execute:
                attempt: int = action.attempt  # type: ignore[union-attr]
                await self._append(
                    StepStarted,
                    position=position,
                    step=name,
                    attempt=attempt,
                    branch=branch.path,
                    digest=digest,
                )
                if self._debug:
                    logger.debug("step.started", run_id=self.run_id, step=name, attempt=attempt)
                try:
                    done = await self._attempt(
                        branch, step, identity, position, attempt, args=args, kwargs=kwargs
                    )
                except asyncio.CancelledError:
                    self._interrupted(branch, position)
                    raise
                if done is not None:
                    return done.value
            elif kind is WaitUntil:
                async with self._lock:  # the failure is durable before a long wait
                    await self._flush_locked()
                await self._wait_until(branch, position, action.at)  # type: ignore[union-attr]
            elif kind is Raise:
                assert isinstance(action, Raise)
                raise StepFailedError(
                    run_id=self.run_id,
                    step=name,
                    identity=identity,
                    attempt=action.attempts,
                    error_type=action.error_type,
                    error_message=action.error_message,
                )
            elif kind is Cancel:
                await self._cancelled_at(branch, position, action.record)  # type: ignore[union-attr]
            elif kind is GiveUp:
                assert isinstance(action, GiveUp)
                if self._previous_death is not None:
                    # The attempts were lost to deaths this process saw, not to a crash of
                    # the process: the supervisor respawns, and parks with the real cause.
                    raise self._fail(self._previous_death)
                message = f"attempt {action.attempt} was interrupted (the process stopped)"
                self._record_failure(
                    branch,
                    position,
                    name,
                    action.attempt,
                    kind=INTERRUPTED,
                    message=message,
                    retry_at=None,
                )
            else:
                assert isinstance(action, Mismatch)
                raise self._mismatch(identity, action)

    async def _attempt(
        self,
        branch: Branch,
        step: Step[..., Any],
        identity: str,
        position: int,
        attempt: int,
        *,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _Done | None:
        """Run one attempt of the body and record its outcome; its value if it has one."""
        name = step.name
        token = _context._STEP.set(
            _context.StepContext(self.run_id, name, position, attempt, branch.path)
        )
        self._bodies += 1
        try:
            if step.timeout is None:
                value = await step.fn(*args, **kwargs)
            else:
                value = await _with_timeout(step, args, kwargs)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            self._bodies -= 1
            _context._STEP.reset(token)
        if failure is None:
            try:
                result = self._serializer.dumps(value)
                decoded = convert_result(
                    self._serializer.loads(result), step.result_type(), self.run_id, name
                )
            except (TypeError, ValueError, RecursionError, SerializationError) as exc:
                self._record_failure(
                    branch,
                    position,
                    name,
                    attempt,
                    kind=SERIALIZATION_ERROR,
                    message=f"the result of step {name!r} cannot be recorded: {exc}",
                    retry_at=None,
                )
                return None
            self._append_later(
                StepCompleted,
                position=position,
                step=name,
                attempt=attempt,
                result=result,
                branch=branch.path,
            )
            if self._debug:
                logger.debug("step.completed", run_id=self.run_id, step=name, attempt=attempt)
            return _Done(decoded)
        counted = attempt - self.state.steps[identity].set_aside
        delay = step.retry.next_delay(counted, failure, self._random)
        retry_at = None if delay is None else self._clock.now() + delay
        self._record_failure(
            branch,
            position,
            name,
            attempt,
            kind=error_type(failure),
            message=error_message(failure),
            retry_at=retry_at,
        )
        if delay is not None:
            logger.info(
                "step.retry_scheduled", run_id=self.run_id, step=name, attempt=attempt, delay=delay
            )
        return None

    def _record_failure(
        self,
        branch: Branch,
        position: int,
        name: str,
        attempt: int,
        *,
        kind: str,
        message: str,
        retry_at: float | None,
    ) -> None:
        self._append_later(
            StepFailed,
            position=position,
            step=name,
            attempt=attempt,
            error_type=kind,
            error_message=message,
            retry_at=retry_at,
            branch=branch.path,
        )
        logger.warning(
            "step.failed",
            run_id=self.run_id,
            step=name,
            attempt=attempt,
            error_type=kind,
            error=message,
            final=retry_at is None,
        )

    def _decode_result(self, text: str, step: Step[..., Any]) -> Any:
        try:
            value = self._serializer.loads(text)
        except (TypeError, ValueError) as exc:
            raise self._fail(
                SerializationError(
                    f"recorded result cannot be decoded: {exc}", run_id=self.run_id, step=step.name
                )
            ) from None
        try:
            return convert_result(value, step.result_type(), self.run_id, step.name)
        except SerializationError as exc:
            raise self._fail(exc) from None

    async def sleep_until(self, wake_at: float) -> None:
        """A durable sleep: record the wake-up time, then wait only what is left of it."""
        branch, position, identity = self._next("aruntime.sleep")
        clock = self._clock
        while True:
            action = next_sleep_action(
                self.state,
                identity,
                wake_at=wake_at,
                now=clock.now(),
                cancel_pending=self._cancel_pending(),
            )
            kind = type(action)
            if kind is Resume:
                return
            await self._hold(branch)
            if kind is Record:
                await self._append(
                    SleepStarted, position=position, wake_at=wake_at, branch=branch.path
                )
                if self._debug:
                    logger.debug("sleep.started", run_id=self.run_id, wake_at=wake_at)
            elif kind is WaitUntil:
                await self._wait_until(branch, position, action.at)  # type: ignore[union-attr]
            elif kind is Cancel:
                await self._cancelled_at(branch, position, action.record)  # type: ignore[union-attr]
            else:
                assert isinstance(action, Mismatch)
                raise self._mismatch(identity, action)

    async def _wait_until(self, branch: Branch, position: int, at: float) -> None:
        """Wait for a due time of the operation at `position` (a retry, a wake-up)."""
        clock = self._clock
        try:
            await clock.sleep(at - clock.now())
        except asyncio.CancelledError:
            self._interrupted(branch, position)
            raise

    def _mismatch(self, identity: str, action: Mismatch) -> _Abort:
        return self._fail(
            NonDeterminismError(
                run_id=self.run_id,
                identity=identity,
                recorded=action.recorded,
                requested=action.requested,
            )
        )

    def now(self) -> float:
        return self._clock.now()


class _Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _with_timeout(step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run the body under a cancel scope that ends it after the step's timeout."""
    timeout = step.timeout
    assert timeout is not None
    with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
        return await step.fn(*args, **kwargs)
    if scope.cancelled_caught:
        raise StepTimeout(step.name, timeout)
    raise AssertionError("unreachable")  # pragma: no cover
