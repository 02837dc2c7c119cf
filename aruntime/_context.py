"""What `await some_step(...)` inside a workflow talks to, found through context variables.

The runner of a run sets `_RUNNER` in the run's task before it calls the workflow, so
every step call made by the workflow (also from tasks it spawns with `asyncio.gather`,
which copy the context) reaches that runner. A step body runs with `_STEP` set, which is
how a body learns its idempotency key and attempt without a parameter.
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aruntime._definitions import Step

__all__ = ["RunContext", "StepContext", "current_run", "current_step"]


@dataclass(frozen=True, slots=True)
class RunContext:
    """The run the current code belongs to."""

    run_id: str
    workflow: str


@dataclass(frozen=True, slots=True)
class StepContext:
    """The step attempt the current code runs in."""

    run_id: str
    step: str
    position: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and restarts: the same step of the same run, same key.

        Pass it to the external system a body calls (payment API, queue) so that a body
        run twice after a crash has its side effect applied once.
        """
        return f"{self.run_id}/{self.position}/{self.step}"


class _StepRunner(Protocol):
    context: RunContext

    async def run_step(
        self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


_RUNNER: ContextVar[_StepRunner | None] = ContextVar("aruntime_runner", default=None)
_STEP: ContextVar[StepContext | None] = ContextVar("aruntime_step", default=None)


def current_run() -> RunContext:
    """The run of the calling workflow or step.

    Raises:
        LookupError: called outside a run.
    """
    runner = _RUNNER.get()
    if runner is None:
        raise LookupError("aruntime.current_run() called outside a workflow run")
    return runner.context


def current_step() -> StepContext:
    """The step attempt the calling code runs in.

    Raises:
        LookupError: called outside a step body.
    """
    ctx = _STEP.get()
    if ctx is None:
        raise LookupError("aruntime.current_step() called outside a step body")
    return ctx


def call_step(
    step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Coroutine[Any, Any, Any]:
    runner = _RUNNER.get()
    if runner is None or _STEP.get() is not None:
        # Outside a workflow, or nested in another step's body: a plain call.
        return step.fn(*args, **kwargs)  # type: ignore[return-value]
    return runner.run_step(step, args, kwargs)
