"""The facts a run's log is made of.

Every event is an immutable record of something that already happened, numbered by a
dense per-run `sequence` (1, 2, 3, ...). Results and arguments are stored as the text the
runtime's serializer produced, so events never hold live Python objects and a log reads
back exactly as it was written, whatever the serializer.

Events are frozen msgspec structs: two are built per step, and a struct is built in about
a tenth of the time of a frozen dataclass.

`at` is the wall-clock time (seconds since the epoch) at which the runtime wrote the event;
the fold never reads it except to copy it into the state.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "Event",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "StepCompleted",
    "StepFailed",
    "StepStarted",
]


class RunStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The run was created; always the first event of a log."""

    sequence: int
    at: float
    run_id: str
    workflow: str
    args: str
    """The serialized `[positional, keyword]` arguments of the workflow."""


class StepStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An attempt of the step at `position` began; durable before the body runs."""

    sequence: int
    at: float
    position: int
    """The step's place in the workflow, counted from 1 in the order steps are called."""
    step: str
    attempt: int


class StepCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The attempt returned; `result` is the serialized return value."""

    sequence: int
    at: float
    position: int
    step: str
    attempt: int
    result: str


class StepFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The attempt raised; `retry_at` is when the next attempt is due, None if none is."""

    sequence: int
    at: float
    position: int
    step: str
    attempt: int
    error_type: str
    error_message: str
    retry_at: float | None


class RunCompleted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow returned; `result` is the serialized return value."""

    sequence: int
    at: float
    result: str


class RunFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The workflow raised; the run is terminal."""

    sequence: int
    at: float
    error_type: str
    error_message: str


Event: TypeAlias = RunStarted | StepStarted | StepCompleted | StepFailed | RunCompleted | RunFailed

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (RunStarted, StepStarted, StepCompleted, StepFailed, RunCompleted, RunFailed)
}
"""Every event class by its name, as stores write it."""
