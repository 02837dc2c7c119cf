"""The workflow vocabulary that reaches beyond the run: messages, published values, child
runs, and the first of several awaitables.

Inside a workflow each call is an operation with a structural identity, recorded so that
replay neither sends, publishes nor starts anything twice (see `aruntime._runner_ops`).
Outside a workflow, `first` behaves like its asyncio counterpart; the others need a run
and raise `LookupError`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from aruntime import _runner_ops
from aruntime._context import current_branch
from aruntime._definitions import Workflow
from aruntime.errors import ConfigError
from aruntime.queues import Queue, check_placement

if TYPE_CHECKING:
    from aruntime._runner import Runner

__all__ = ["first", "publish", "receive", "run_child", "send", "start_child"]

P = ParamSpec("P")
R = TypeVar("R")


def _runner(what: str) -> Runner:
    branch = current_branch()
    if branch is None:
        raise LookupError(f"{what} is called inside a workflow (not in a step body)")
    return cast("Runner", branch.runner)


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"a topic is a non-empty str, got {topic!r}")
    return topic


async def receive(topic: str = "default", timeout: float | None = None) -> Any:  # noqa: ASYNC109 - a recorded deadline
    """The payload of the next message sent to this run on `topic`, in send order.

    A message sent before the run waits is kept for it; each is received once. With a
    `timeout` (seconds), the deadline is recorded before the run waits, so a restart
    waits only what is left.

    Raises:
        TimeoutError: no message came before the timeout.
        ConfigError: the topic or the timeout is not usable.
    """
    _check_topic(topic)
    if timeout is not None and (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise ConfigError(f"a receive timeout is a finite number of seconds >= 0, got {timeout!r}")
    runner = _runner("aruntime.receive")
    return await _runner_ops.receive(runner, topic, None if timeout is None else float(timeout))


async def send(run_id: str, payload: Any, *, topic: str = "default") -> None:
    """Send `payload` to the run `run_id` on `topic`, once however often this run replays.

    Raises:
        RunNotFoundError: no such run.
        RunEndedError: the run has ended.
        SerializationError: the payload cannot be serialized.
    """
    _check_topic(topic)
    if not isinstance(run_id, str):
        raise ConfigError(f"a run id is a str, got {run_id!r}")
    await _runner_ops.send(_runner("aruntime.send"), run_id, payload, topic)


async def publish(key: str, value: Any) -> None:
    """Publish `value` under `key` for `Client.read`: the latest value wins, and every
    value stays in the run's log."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"a published key is a non-empty str, got {key!r}")
    await _runner_ops.publish(_runner("aruntime.publish"), key, value)


class _ChildHandle(Awaitable[R]):  # the type users see; the runner's ChildHandle is it
    run_id: str


async def start_child(
    workflow: Workflow[P, R],
    /,
    *args: Any,
    run_id: str | None = None,
    queue: Queue | str | None = None,
    priority: int | None = None,
    partition_key: str | None = None,
    **kwargs: Any,
) -> _ChildHandle[R]:
    """Start a run of `workflow` as this run's child; await the handle for its result.

    The child is a run of its own (own log, own runner) that executes even if this
    run's process dies. Its id defaults to one derived from this run's id and the call's
    identity, so a replay adopts the same child. Awaiting the handle raises
    `RunFailedError` when the child failed, `RunCancelledError` when it was cancelled.
    Cancelling this run cancels its unfinished children.

    With `queue` (and `priority`, `partition_key`), the child waits for that queue to
    admit it, as `Runtime.start` on a queue. A parent that holds a place in the same
    queue keeps it while it waits: a queue of concurrency 1 would then never admit the
    child.
    """
    runner = _runner("aruntime.start_child")
    placement = check_placement(queue, priority, partition_key)
    runner.check_queue(queue)
    handle = await _runner_ops.start_child(
        runner, workflow, args, kwargs, run_id, placement=placement
    )
    return cast("_ChildHandle[R]", handle)


async def run_child(
    workflow: Workflow[P, R],
    /,
    *args: Any,
    run_id: str | None = None,
    queue: Queue | str | None = None,
    priority: int | None = None,
    partition_key: str | None = None,
    **kwargs: Any,
) -> R:
    """Start a child run of `workflow` and wait for its result (see `start_child`)."""
    handle = await start_child(
        workflow,
        *args,
        run_id=run_id,
        queue=queue,
        priority=priority,
        partition_key=partition_key,
        **kwargs,
    )
    return await handle


async def first(*awaitables: Awaitable[Any]) -> Any:
    """The result of whichever awaitable completes first; the others are cancelled.

    Inside a workflow each awaitable runs as a branch, and the winner is recorded: a
    replay returns the same winner whatever finishes first while it replays. An
    awaitable that raised first makes `first` raise its error.
    """
    if not awaitables:
        raise ConfigError("aruntime.first needs at least one awaitable")
    branch = current_branch()
    if branch is not None:
        return await _runner_ops.first(cast("Runner", branch.runner), awaitables)
    tasks = [asyncio.ensure_future(aw) for aw in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        winner = min(tasks.index(task) for task in done)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return tasks[winner].result()
