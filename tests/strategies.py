"""Hypothesis strategies for run logs, and a small builder for hand-written ones.

`simulated_runs()` draws the logs a correct runner writes. It plays a model runner: the
workflow calls groups of steps (a group of two or three runs them in parallel, so their
events interleave), each attempt completes, fails with a due time for the next attempt,
fails for good (non-retryable, or at the attempt limit), or is cut off by a crash of the
whole process. After a crash every attempt in flight is started again as the next attempt,
or, at the limit, recorded as failed with `INTERRUPTED` (what `GiveUp` leads to). The run
may end completed or failed, and the log may stop anywhere, as a crash leaves it.
Sequences are dense, `at` never decreases, and a retry never starts before its due time.

`arbitrary_logs()` draws lists that may or may not be valid logs: valid logs mutated by
dropping, duplicating, swapping or renumbering events, appending after the end of the run,
changing an attempt, a step name or a position, flipping a retry into a final failure and
back, and slipping in objects that are not events. Every field keeps its declared type.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from hypothesis import strategies as st

from aruntime._decide import INTERRUPTED
from aruntime.events import (
    Event,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)

__all__ = [
    "STEP_NAMES",
    "LogBuilder",
    "LookAlike",
    "SimulatedRun",
    "StepStartedSubclass",
    "arbitrary_logs",
    "simulated_runs",
    "valid_logs",
]

STEP_NAMES = ("fetch", "charge", "email", "ship")
"""The step names the model workflow calls; a name may recur at several positions."""

_ERROR_TYPES = ("ValueError", "builtins.KeyError", "httpx.ConnectError")
_RESULTS = ('"ok"', "42", "null", '{"id":7,"items":[1,2]}', '"caf\\u00e9"')


@dataclass(frozen=True, slots=True)
class SimulatedRun:
    """A log written by the model runner, with the attempt limit it ran under."""

    events: tuple[Event, ...]
    max_attempts: int


@dataclass(slots=True)
class _Step:
    """The model's view of one step: what the runner does next for it."""

    position: int
    step: str
    attempts: int = 0
    phase: Literal["start", "running", "waiting", "give_up", "done"] = "start"
    retry_at: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    failed: bool = False


@dataclass(slots=True)
class _Writer:
    """Numbers events densely and keeps the clock from going backwards."""

    clock: float
    tick: float
    """Seconds between two events; 0 gives runs of events written at the same time."""
    events: list[Event] = field(default_factory=list)

    def now(self, not_before: float | None = None) -> float:
        if not_before is not None:
            self.clock = max(self.clock, not_before)
        self.clock += self.tick
        return self.clock

    @property
    def next_sequence(self) -> int:
        return len(self.events) + 1


# Strategies are built once, and only choices that matter are drawn: the cost of a draw
# dominates the generation time. Names of errors and results follow from the position.
_delays = st.sampled_from([0.0, 0.5, 1.0, 2.0, 60.0])
_names = st.sampled_from(STEP_NAMES)
_Outcome = Literal["complete", "fail", "fail_for_good", "crash"]
_outcomes: st.SearchStrategy[_Outcome] = st.sampled_from(
    ["complete", "fail", "complete", "fail", "fail_for_good", "crash"]
)
_group_sizes = st.sampled_from([1, 1, 1, 2, 3])
_max_attempts = st.integers(1, 4)
_clocks = st.sampled_from([0.0, 1.5, 1_700_000_000.0])
_tick_sizes = st.sampled_from([1.0, 0.0, 0.001, 7.5])
_run_ids = st.sampled_from(["run-1", "order:42", "é/ü"])
_workflows = st.sampled_from(["checkout", "pipeline"])
_args = st.sampled_from(["[[],{}]", '[[1,"a"],{"k":true}]'])
_endings = st.sampled_from(["completed", "failed", "open"])
_coins = st.booleans()


@functools.cache
def _upto(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n)


def _start(w: _Writer, step: _Step) -> None:
    not_before = step.retry_at if step.phase == "waiting" else None
    step.attempts += 1
    step.phase = "running"
    step.retry_at = None
    w.events.append(
        StepStarted(
            sequence=w.next_sequence,
            at=w.now(not_before),
            position=step.position,
            step=step.step,
            attempt=step.attempts,
        )
    )


def _give_up(w: _Writer, step: _Step) -> None:
    step.phase = "done"
    step.failed = True
    step.error_type = INTERRUPTED
    step.error_message = f"attempt {step.attempts} was interrupted"
    w.events.append(
        StepFailed(
            sequence=w.next_sequence,
            at=w.now(),
            position=step.position,
            step=step.step,
            attempt=step.attempts,
            error_type=step.error_type,
            error_message=step.error_message,
            retry_at=None,
        )
    )


def _finish(w: _Writer, step: _Step, outcome: _Outcome, max_attempts: int, draw: st.DrawFn) -> None:
    """Append the outcome of the attempt in flight."""
    at = w.now()
    if outcome == "complete":
        step.phase = "done"
        w.events.append(
            StepCompleted(
                sequence=w.next_sequence,
                at=at,
                position=step.position,
                step=step.step,
                attempt=step.attempts,
                result=_RESULTS[step.position % len(_RESULTS)],
            )
        )
        return
    step.error_type = _ERROR_TYPES[(step.position + step.attempts) % len(_ERROR_TYPES)]
    step.error_message = f"attempt {step.attempts} of {step.step} failed"
    if outcome == "fail" and step.attempts < max_attempts:
        step.phase = "waiting"
        step.retry_at = at + draw(_delays)
    else:  # non-retryable, or the last attempt
        step.phase = "done"
        step.failed = True
    w.events.append(
        StepFailed(
            sequence=w.next_sequence,
            at=at,
            position=step.position,
            step=step.step,
            attempt=step.attempts,
            error_type=step.error_type,
            error_message=step.error_message,
            retry_at=step.retry_at,
        )
    )


def _crash(steps: list[_Step], max_attempts: int) -> None:
    """The process dies: every attempt in flight is lost and counts."""
    for step in steps:
        if step.phase == "running":
            step.phase = "start" if step.attempts < max_attempts else "give_up"


def _run_group(draw: st.DrawFn, w: _Writer, group: list[_Step], max_attempts: int) -> None:
    """Run steps called together until each has completed or failed for good."""
    while pending := [s for s in group if s.phase != "done"]:
        step = pending[draw(_upto(len(pending) - 1))] if len(pending) > 1 else pending[0]
        if step.phase in ("start", "waiting"):
            _start(w, step)
        elif step.phase == "give_up":
            _give_up(w, step)
        else:
            outcome = draw(_outcomes)
            if outcome == "crash":
                _crash(group, max_attempts)
            else:
                _finish(w, step, outcome, max_attempts, draw)


@st.composite
def simulated_runs(draw: st.DrawFn, max_groups: int = 5) -> SimulatedRun:
    """A log a correct runner writes, possibly cut short by a crash."""
    max_attempts = draw(_max_attempts)
    w = _Writer(clock=draw(_clocks), tick=draw(_tick_sizes))
    w.events.append(
        RunStarted(
            sequence=1,
            at=w.now(),
            run_id=draw(_run_ids),
            workflow=draw(_workflows),
            args=draw(_args),
        )
    )
    position = 0
    run_error: _Step | None = None
    for _ in range(draw(_upto(max_groups))):
        group = []
        for _ in range(draw(_group_sizes)):
            position += 1
            group.append(_Step(position, draw(_names)))
        _run_group(draw, w, group, max_attempts)
        failed = [s for s in group if s.failed]
        if failed and not draw(_coins):  # the workflow does not catch the error
            run_error = failed[0]
            break
    ending = draw(_endings)
    if run_error is not None:
        w.events.append(
            RunFailed(
                sequence=w.next_sequence,
                at=w.now(),
                error_type=run_error.error_type or "",
                error_message=run_error.error_message or "",
            )
        )
    elif ending == "completed":
        w.events.append(RunCompleted(sequence=w.next_sequence, at=w.now(), result=_RESULTS[0]))
    elif ending == "failed":
        w.events.append(
            RunFailed(
                sequence=w.next_sequence, at=w.now(), error_type="ValueError", error_message="!"
            )
        )
    events = w.events
    if draw(_coins):  # a crash leaves any prefix behind
        events = events[: draw(_upto(len(events)))]
    return SimulatedRun(tuple(events), max_attempts)


def valid_logs(max_groups: int = 5) -> st.SearchStrategy[list[Event]]:
    """The events of `simulated_runs()`, as a list."""
    return simulated_runs(max_groups).map(lambda run: list(run.events))


# --- mutations -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LookAlike:
    """Not an event, though it has every field a `StepStarted` has."""

    sequence: int
    at: float
    position: int
    step: str
    attempt: int


class StepStartedSubclass(StepStarted, frozen=True, kw_only=True):
    """A subclass of an event type is not an event type."""


def _replace(event: Event, **changes: Any) -> Event:
    new: Event = msgspec.structs.replace(event, **changes)
    return new


_Log = list[object]
_Mutation = Callable[[st.DrawFn, _Log], _Log]

_STEP_EVENTS = (StepStarted, StepCompleted, StepFailed)


def _index(draw: st.DrawFn, log: _Log, extra: int = 0) -> int:
    return draw(st.integers(0, len(log) - 1 + extra))


def _pick(draw: st.DrawFn, log: _Log, types: tuple[type, ...]) -> int | None:
    candidates = [i for i, e in enumerate(log) if type(e) in types]
    return draw(st.sampled_from(candidates)) if candidates else None


def _drop(draw: st.DrawFn, log: _Log) -> _Log:
    if log:
        del log[_index(draw, log)]
    return log


def _duplicate(draw: st.DrawFn, log: _Log) -> _Log:
    if log:
        i = _index(draw, log)
        log.insert(draw(st.integers(i + 1, len(log))), log[i])
    return log


def _swap(draw: st.DrawFn, log: _Log) -> _Log:
    if len(log) >= 2:
        i, j = _index(draw, log), _index(draw, log)
        log[i], log[j] = log[j], log[i]
    return log


def _renumber_one(draw: st.DrawFn, log: _Log) -> _Log:
    i = _pick(draw, log, (RunStarted, *_STEP_EVENTS, RunCompleted, RunFailed))
    if i is not None:
        event: Any = log[i]
        log[i] = _replace(event, sequence=draw(st.integers(-1, len(log) + 2)))
    return log


def _event_after(draw: st.DrawFn, sequence: int) -> Event:
    kind = draw(st.sampled_from(["start", "complete", "fail", "run_completed", "run_started"]))
    step = draw(st.sampled_from(STEP_NAMES))
    position, attempt = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    if kind == "start":
        return StepStarted(sequence=sequence, at=1e9, position=position, step=step, attempt=1)
    if kind == "complete":
        return StepCompleted(
            sequence=sequence, at=1e9, position=position, step=step, attempt=attempt, result="1"
        )
    if kind == "fail":
        return StepFailed(
            sequence=sequence,
            at=1e9,
            position=position,
            step=step,
            attempt=attempt,
            error_type="ValueError",
            error_message="late",
            retry_at=None,
        )
    if kind == "run_completed":
        return RunCompleted(sequence=sequence, at=1e9, result="null")
    return RunStarted(sequence=sequence, at=1e9, run_id="run-1", workflow="checkout", args="[]")


def _append_after_end(draw: st.DrawFn, log: _Log) -> _Log:
    if not log or type(log[-1]) not in (RunCompleted, RunFailed):
        ends: list[Event] = [
            RunCompleted(sequence=len(log) + 1, at=1e9, result="null"),
            RunFailed(sequence=len(log) + 1, at=1e9, error_type="E", error_message=""),
        ]
        log.append(draw(st.sampled_from(ends)))
    log.append(_event_after(draw, len(log) + 1))
    return log


def _wrong_attempt(draw: st.DrawFn, log: _Log) -> _Log:
    i = _pick(draw, log, _STEP_EVENTS)
    if i is not None:
        event: Any = log[i]
        log[i] = _replace(event, attempt=draw(st.integers(-1, 6)))
    return log


def _wrong_step_name(draw: st.DrawFn, log: _Log) -> _Log:
    i = _pick(draw, log, _STEP_EVENTS)
    if i is not None:
        event: Any = log[i]
        log[i] = _replace(event, step=draw(st.sampled_from((*STEP_NAMES, "refund"))))
    return log


def _wrong_position(draw: st.DrawFn, log: _Log) -> _Log:
    i = _pick(draw, log, _STEP_EVENTS)
    if i is not None:
        event: Any = log[i]
        log[i] = _replace(event, position=draw(st.integers(-1, 8)))
    return log


def _flip_retry(draw: st.DrawFn, log: _Log) -> _Log:
    i = _pick(draw, log, (StepFailed,))
    if i is not None:
        event: Any = log[i]
        log[i] = _replace(event, retry_at=None if event.retry_at is not None else event.at + 1)
    return log


def _insert_non_event(draw: st.DrawFn, log: _Log) -> _Log:
    i = _index(draw, log, extra=1)
    junk = draw(
        st.sampled_from(
            [
                None,
                42,
                "StepStarted",
                {"sequence": i + 1, "type": "StepStarted"},
                (i + 1, "RunCompleted"),
                LookAlike(sequence=i + 1, at=0.0, position=1, step="fetch", attempt=1),
                StepStartedSubclass(sequence=i + 1, at=0.0, position=1, step="fetch", attempt=1),
            ]
        )
    )
    log.insert(i, junk)
    return log


def _renumber_densely(log: _Log) -> _Log:
    """Give every event the sequence of its place, so the fold looks past numbering."""
    out: _Log = []
    for place, item in enumerate(log, start=1):
        if type(item) in (RunStarted, *_STEP_EVENTS, RunCompleted, RunFailed):
            event: Any = item
            out.append(_replace(event, sequence=place))
        else:
            out.append(item)
    return out


_MUTATIONS: tuple[_Mutation, ...] = (
    _drop,
    _duplicate,
    _swap,
    _renumber_one,
    _append_after_end,
    _wrong_attempt,
    _wrong_step_name,
    _wrong_position,
    _flip_retry,
    _insert_non_event,
)


@st.composite
def arbitrary_logs(draw: st.DrawFn) -> list[object]:
    """A valid log put through one to three mutations: valid or not, the fold must cope."""
    log: _Log = list(draw(valid_logs(max_groups=3)))
    for _ in range(draw(st.integers(1, 3))):
        log = draw(st.sampled_from(_MUTATIONS))(draw, log)
    if draw(st.booleans()):
        log = _renumber_densely(log)
    return log


# --- hand-written logs ---------------------------------------------------------------


class LogBuilder:
    """Builds a log event by event with dense sequences; `at` is the sequence in seconds."""

    def __init__(self, run_id: str = "run-1", workflow: str = "checkout") -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.events: list[Event] = []

    def _next(self) -> tuple[int, float]:
        sequence = len(self.events) + 1
        return sequence, float(sequence)

    def run_started(self, args: str = "[[],{}]") -> LogBuilder:
        seq, at = self._next()
        self.events.append(
            RunStarted(sequence=seq, at=at, run_id=self.run_id, workflow=self.workflow, args=args)
        )
        return self

    def started(self, position: int = 1, attempt: int = 1, step: str = "fetch") -> LogBuilder:
        seq, at = self._next()
        self.events.append(
            StepStarted(sequence=seq, at=at, position=position, step=step, attempt=attempt)
        )
        return self

    def completed(
        self, position: int = 1, attempt: int = 1, step: str = "fetch", result: str = '"ok"'
    ) -> LogBuilder:
        seq, at = self._next()
        self.events.append(
            StepCompleted(
                sequence=seq, at=at, position=position, step=step, attempt=attempt, result=result
            )
        )
        return self

    def failed(
        self,
        position: int = 1,
        attempt: int = 1,
        step: str = "fetch",
        *,
        retry_at: float | None = None,
        error_type: str = "ValueError",
        error_message: str = "boom",
    ) -> LogBuilder:
        seq, at = self._next()
        self.events.append(
            StepFailed(
                sequence=seq,
                at=at,
                position=position,
                step=step,
                attempt=attempt,
                error_type=error_type,
                error_message=error_message,
                retry_at=retry_at,
            )
        )
        return self

    def resumed(self, reason: str = "restart budget exhausted") -> LogBuilder:
        seq, at = self._next()
        self.events.append(RunResumed(sequence=seq, at=at, reason=reason))
        return self

    def run_completed(self, result: str = "null") -> LogBuilder:
        seq, at = self._next()
        self.events.append(RunCompleted(sequence=seq, at=at, result=result))
        return self

    def run_failed(self, error_type: str = "ValueError", error_message: str = "boom") -> LogBuilder:
        seq, at = self._next()
        self.events.append(
            RunFailed(sequence=seq, at=at, error_type=error_type, error_message=error_message)
        )
        return self
