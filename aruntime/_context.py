"""What an operation called inside a workflow talks to, found through context variables.

The runner of a run sets `_BRANCH` to the run's root branch in the run's task before it
calls the workflow. `aruntime.gather` and `aruntime.TaskGroup` give every task they create
a child branch of its own, numbered by creation order in its parent, so that each
operation has a structural identity (its branch and its position there) that never
depends on which concurrent operation finished first. A branch belongs to exactly one
task; an operation called from any other task (raw `asyncio.gather` or `create_task`
copy the context, branch included) is refused.

A step body runs with `_STEP` set, which is how a body learns its idempotency key and
attempt without a parameter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aruntime.events import op_identity

if TYPE_CHECKING:
    from aruntime._definitions import Step

__all__ = ["Branch", "RunContext", "StepContext", "current_run", "current_step"]


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
    """The step's position in its branch, counted from 1."""
    attempt: int
    branch: str = ""
    """The branch the step runs in: `""` for the workflow's root."""

    @property
    def identity(self) -> str:
        """The step's branch and position in it (`"3"`, `"2.1.4"`), as the log names it."""
        return op_identity(self.branch, self.position)

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and restarts: the same step of the same run, same key.

        Pass it to the external system a body calls (payment API, queue) so that a body
        run twice after a crash has its side effect applied once.
        """
        return f"{self.run_id}/{self.identity}/{self.step}"


class _Runner(Protocol):
    context: RunContext

    async def run_step(
        self, step: Step[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...

    async def sleep_until(self, wake_at: float) -> None: ...

    def spawn(
        self,
        parent: Branch,
        awaitable: Awaitable[Any],
        create: Callable[..., asyncio.Task[Any]] | None = None,
        name: str | None = None,
    ) -> asyncio.Task[Any]: ...

    def check_owner(self, branch: Branch, what: str) -> None: ...

    def now(self) -> float: ...


class Race:
    """One `aruntime.first`: which of its awaitables won, once one has."""

    __slots__ = ("winner",)

    def __init__(self, winner: int | None = None) -> None:
        self.winner = winner


class Branch:
    """One strand of a run's operations, owned by one task."""

    __slots__ = ("_loser", "children", "path", "position", "races", "runner", "task")

    def __init__(
        self,
        runner: _Runner,
        path: str,
        task: asyncio.Task[Any] | None,
        *,
        loser: bool = False,
        races: tuple[tuple[Race, int], ...] = (),
    ) -> None:
        self.runner = runner
        self.path = path
        """`""` for the root, `"2"` for the root's second child, `"2.1"` for its first."""
        self.task = task
        self.position = 0
        """The position of the last operation called in this branch."""
        self.children = 0
        self._loser = loser
        self.races = races
        """The `aruntime.first` races this branch (or a branch it descends from) runs in,
        with its index in each."""

    @property
    def loser(self) -> bool:
        """The branch lost an `aruntime.first` (recorded, or decided a moment ago): it may
        replay what the log holds, and waits to be cancelled instead of doing anything
        new."""
        if self._loser:
            return True
        return any(race.winner is not None and race.winner != i for race, i in self.races)

    @loser.setter
    def loser(self, value: bool) -> None:
        self._loser = value

    def child(self) -> Branch:
        """A new branch, numbered after the ones this branch created before it."""
        self.children += 1
        number = str(self.children)
        path = f"{self.path}.{number}" if self.path else number
        return Branch(self.runner, path, None, loser=self._loser, races=self.races)


_BRANCH: ContextVar[Branch | None] = ContextVar("aruntime_branch", default=None)
_STEP: ContextVar[StepContext | None] = ContextVar("aruntime_step", default=None)


def current_branch() -> Branch | None:
    """The branch of the calling workflow code; None outside a run or inside a step body."""
    if _STEP.get() is not None:
        return None
    return _BRANCH.get()


def current_run() -> RunContext:
    """The run of the calling workflow or step.

    Raises:
        LookupError: called outside a run.
    """
    branch = _BRANCH.get()
    if branch is None:
        raise LookupError("aruntime.current_run() called outside a workflow run")
    return branch.runner.context


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
    branch = _BRANCH.get()
    if branch is None or _STEP.get() is not None:
        # Outside a workflow, or nested in another step's body: a plain call.
        return step.fn(*args, **kwargs)  # type: ignore[return-value]
    # The branch is looked up when the coroutine runs, not now: `gather(step_a(), ...)`
    # creates the coroutine in the parent and runs it in a branch of its own.
    return branch.runner.run_step(step, args, kwargs)
