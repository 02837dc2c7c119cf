"""One run: fold -> next action -> execute -> append, until the run is terminal.

The runner owns its `RunState`. It never decides from anything but that fold: every step
call asks `next_action(state, ...)`, carries the action out, appends the outcome and folds
it before asking again. The write-ahead order of DESIGN §2.1 follows from the shape of the
loop: `StepStarted` is appended (and durable, the store's append returns only then) before
the body is awaited; `StepCompleted`/`StepFailed` is appended before the workflow gets the
value back; and the workflow cannot call the next step before that.

When the runner cannot go on safely (the store failed, another writer took the run, the
workflow asked for a step the log does not hold) it raises `_Abort`, a BaseException, into
the workflow so that `except Exception:` in user code cannot swallow it, refuses every
later call, and `run()` raises the cause to the supervisor. Nothing is appended after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aruntime import _context
from aruntime._decide import INTERRUPTED, Execute, GiveUp, Mismatch, Raise, Replay, next_action
from aruntime._errortext import error_message, error_type
from aruntime._log import debug_enabled, logger
from aruntime.errors import (
    AruntimeError,
    NonDeterminismError,
    SerializationError,
    StepFailedError,
)
from aruntime.events import (
    Event,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from aruntime.state import RunState, fold_into

if TYPE_CHECKING:
    from aruntime._definitions import Step, Workflow
    from aruntime.clock import Clock
    from aruntime.serializer import Serializer
    from aruntime.store import EventStore

__all__ = ["Runner", "decode_args", "encode_args"]

SERIALIZATION_ERROR = "aruntime.SerializationError"


class _Abort(BaseException):
    """Unwinds the workflow when the runner must stop; carries the real cause."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause


def encode_args(
    serializer: Serializer, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The text of a workflow's arguments, as `RunStarted` records them."""
    try:
        return serializer.dumps([list(args), kwargs])
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"workflow arguments cannot be serialized: {exc}", run_id=run_id
        ) from exc


def decode_args(serializer: Serializer, run_id: str, text: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        args, kwargs = serializer.loads(text)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"recorded arguments cannot be decoded: {exc}", run_id=run_id
        ) from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SerializationError("recorded arguments are not [args, kwargs]", run_id=run_id)
    return args, kwargs


class Runner:
    """Drives one run from its folded state to a terminal event."""

    __slots__ = (
        "_abort",
        "_clock",
        "_debug",
        "_lock",
        "_max_position",
        "_next_position",
        "_random",
        "_serializer",
        "_store",
        "_workflow",
        "context",
        "run_id",
        "state",
        "unsettled",
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
        self._next_position = 1
        self._max_position = 0
        self._abort: BaseException | None = None
        self._debug = debug_enabled()
        self.unsettled: Event | None = None
        """The event whose append was cancelled half-way, if any."""

    async def run(self) -> None:
        """Run the workflow to its end and record it; return at once if already ended.

        Raises:
            NonDeterminismError, StoreError, ConcurrencyError, SerializationError: the run
                cannot go on; nothing was appended after the cause.
            BaseException: cancellation and other BaseExceptions from the workflow or its
                steps propagate unrecorded.
        """
        state = self.state
        if state.status.terminal:
            return
        assert state.args is not None
        args, kwargs = decode_args(self._serializer, self.run_id, state.args)
        token = _context._RUNNER.set(self)
        try:
            await self._run(args, kwargs)
        except _Abort as abort:  # from the workflow's steps, or from the final append
            raise abort.cause from None
        finally:
            _context._RUNNER.reset(token)

    async def _run(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            value = await self._workflow.fn(*args, **kwargs)
        except Exception as exc:  # the workflow's own failure (an _Abort is no Exception)
            self._raise_if_aborted()
            self._check_no_unvisited_steps()
            await self._finish_failed(exc)
            return
        self._raise_if_aborted()
        self._check_no_unvisited_steps()
        try:
            result = self._serializer.dumps(value)
        except (TypeError, ValueError, RecursionError) as exc:
            err = SerializationError(
                f"workflow result cannot be serialized: {exc}", run_id=self.run_id
            )
            await self._finish_failed(err)
            return
        await self._append(RunCompleted, result=result)
        logger.info("run.completed", run_id=self.run_id, workflow=self.context.workflow)

    async def _finish_failed(self, exc: Exception) -> None:
        if isinstance(exc, StepFailedError):
            kind, message = exc.error_type, exc.error_message
        else:
            kind, message = error_type(exc), error_message(exc)
        await self._append(RunFailed, error_type=kind, error_message=message)
        logger.warning("run.failed", run_id=self.run_id, error_type=kind, error=message)

    def _raise_if_aborted(self) -> None:
        if self._abort is not None:
            raise self._abort

    def _check_no_unvisited_steps(self) -> None:
        recorded = self.state.steps
        if len(recorded) > self._max_position or (recorded and max(recorded) > self._max_position):
            position = min(p for p in recorded if p > self._max_position)
            raise NonDeterminismError(
                run_id=self.run_id,
                position=position,
                recorded=recorded[position].step,
                requested="<workflow returned>",
            )

    def _fail(self, cause: BaseException) -> _Abort:
        if self._abort is None:
            self._abort = cause
        return _Abort(self._abort)

    async def _append(self, kind: type[Event], **fields: Any) -> None:
        """Number, append and fold one event; the only way this runner writes."""
        if self._abort is not None:
            raise _Abort(self._abort)
        lock = self._lock
        await lock.acquire()
        try:
            state = self.state
            sequence = state.version + 1
            event = kind(sequence=sequence, at=self._clock.now(), **fields)
            try:
                await self._store.append(self.run_id, (event,), sequence - 1)
            except AruntimeError as exc:
                raise self._fail(exc) from None
            except asyncio.CancelledError:
                self.unsettled = event  # committed or not: the log will tell
                raise
            fold_into(state, (event,))
        finally:
            lock.release()

    async def run_step(
        self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Return the step's recorded result, or run it until it has one."""
        if self._abort is not None:
            raise _Abort(self._abort)
        position = self._next_position
        self._next_position = position + 1
        self._max_position = position
        name = step.name
        policy = step.retry
        clock = self._clock
        run_id = self.run_id
        while True:
            action = next_action(self.state, position, name, policy.max_attempts)
            kind = type(action)
            if kind is Replay:
                return self._decode_result(action.result, name)  # type: ignore[union-attr]
            if kind is Execute:
                assert isinstance(action, Execute)
                attempt = action.attempt
                if action.not_before is not None:
                    await clock.sleep(action.not_before - clock.now())
                await self._append(StepStarted, position=position, step=name, attempt=attempt)
                if self._debug:
                    logger.debug("step.started", run_id=run_id, step=name, attempt=attempt)
                await self._attempt(step, position, attempt, args, kwargs)
            elif kind is Raise:
                assert isinstance(action, Raise)
                raise StepFailedError(
                    run_id=run_id,
                    step=name,
                    position=position,
                    attempt=action.attempts,
                    error_type=action.error_type,
                    error_message=action.error_message,
                )
            elif kind is GiveUp:
                assert isinstance(action, GiveUp)
                message = f"attempt {action.attempt} was interrupted (the process stopped)"
                await self._record_failure(
                    position, name, action.attempt, kind=INTERRUPTED, message=message, retry_at=None
                )
            else:
                assert isinstance(action, Mismatch)
                raise self._fail(
                    NonDeterminismError(
                        run_id=run_id, position=position, recorded=action.recorded, requested=name
                    )
                )

    async def _attempt(
        self,
        step: Step[..., Any],
        position: int,
        attempt: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Run one attempt of the body and record its outcome."""
        name = step.name
        token = _context._STEP.set(_context.StepContext(self.run_id, name, position, attempt))
        try:
            value = await step.fn(*args, **kwargs)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            _context._STEP.reset(token)
        clock = self._clock
        if failure is None:
            try:
                result = self._serializer.dumps(value)
            except (TypeError, ValueError, RecursionError) as exc:
                await self._record_failure(
                    position,
                    name,
                    attempt,
                    kind=SERIALIZATION_ERROR,
                    message=f"the result of step {name!r} cannot be serialized: {exc}",
                    retry_at=None,
                )
                return
            await self._append(
                StepCompleted, position=position, step=name, attempt=attempt, result=result
            )
            if self._debug:
                logger.debug("step.completed", run_id=self.run_id, step=name, attempt=attempt)
            return
        delay = step.retry.next_delay(attempt, failure, self._random)
        retry_at = None if delay is None else clock.now() + delay
        await self._record_failure(
            position,
            name,
            attempt,
            kind=error_type(failure),
            message=error_message(failure),
            retry_at=retry_at,
        )
        if delay is not None:
            logger.info(
                "step.retry_scheduled",
                run_id=self.run_id,
                step=name,
                attempt=attempt,
                delay=delay,
            )

    async def _record_failure(
        self,
        position: int,
        name: str,
        attempt: int,
        *,
        kind: str,
        message: str,
        retry_at: float | None,
    ) -> None:
        await self._append(
            StepFailed,
            position=position,
            step=name,
            attempt=attempt,
            error_type=kind,
            error_message=message,
            retry_at=retry_at,
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

    def _decode_result(self, text: str, name: str) -> Any:
        try:
            return self._serializer.loads(text)
        except (TypeError, ValueError) as exc:
            raise self._fail(
                SerializationError(
                    f"recorded result cannot be decoded: {exc}", run_id=self.run_id, step=name
                )
            ) from None
