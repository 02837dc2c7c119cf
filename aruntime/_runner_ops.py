"""The runner's side of messages, published values, child runs and `aruntime.first`.

Each operation follows the runner's loop (see `aruntime._runner`): ask the pure decision
of `aruntime._decide_ops` what to do at the operation's identity, carry it out, append
what happened, fold it, ask again. The invariants they keep:

* A message is consumed exactly once: the runner removes it from the inbox in the
  transaction that appends its `MessageReceived`, so a crash leaves both or neither, and
  replay returns the recorded payload without reading the inbox. A message whose
  idempotency key the log already holds is dropped instead.
* A receive's deadline is recorded (`ReceiveStarted`) before the run waits, so a restart
  waits only what is left and times out at the same place.
* A send and a child's start are recorded before they leave the run (write-ahead). After a
  crash between the record and the post, the post is made again: a message with the same
  idempotency key, a start of the same child run id, both of which arrive once.
* `aruntime.first` records its winner before it returns; replay waits for that winner
  only, and the losers' branches replay what the log holds and start nothing new.

These functions are the runner's own methods, kept in a module of their own (the public
calls in `aruntime._ops_vocab` reach them with the runner of the calling branch); they
use the runner's private members as its methods would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from aruntime import _context
from aruntime._decide import Cancel, Mismatch
from aruntime._decide_ops import (
    ChildOutcome,
    Deliver,
    Recorded,
    RecordReceive,
    TimedOut,
    WaitChild,
    Winner,
    next_child_start,
    next_child_wait,
    next_first_action,
    next_publish_action,
    next_receive_action,
    next_send_action,
    send_confirmed,
)
from aruntime._log import logger
from aruntime._values import (
    AppendInterruptedError,
    check_same_start,
    convert_result,
    encode_start_args,
)
from aruntime.errors import (
    AruntimeError,
    ConfigError,
    RunCancelledError,
    RunEndedError,
    RunFailedError,
    RunNotFoundError,
    SerializationError,
    StoreError,
)
from aruntime.events import (
    ChildEnded,
    ChildStarted,
    FirstWon,
    MessageReceived,
    MessageSent,
    OperationCancelled,
    ReceiveStarted,
    ReceiveTimedOut,
    RunStarted,
    ValuePublished,
)
from aruntime.state import RunState, RunStatus, fold_into, replay
from aruntime.store import Request, RequestKind

if TYPE_CHECKING:
    from aruntime._context import Branch
    from aruntime._definitions import Workflow
    from aruntime._runner import Runner
    from aruntime.store import EventStore

__all__ = [
    "ChildHandle",
    "cancel_children",
    "cancel_children_of",
    "child_run_id",
    "first",
    "publish",
    "receive",
    "send",
    "start_child",
]

_MESSAGE = (RequestKind.MESSAGE,)
_T = TypeVar("_T")


async def _io(runner: Runner, call: Awaitable[_T]) -> _T:
    """Await a store call of an operation; a store that fails stops the runner, and the
    run is respawned from its log, which says what happened (never a workflow error)."""
    try:
        return await call
    except StoreError as exc:
        raise runner._fail(exc) from None


_STARTS = (RequestKind.START, RequestKind.FORK)
_NO_ARGS = "[[],{}]"
"""The recorded arguments of a run started without any (as `aruntime._inbox.NO_ARGS`)."""


def _dumps(runner: Runner, value: Any, what: str) -> str:
    try:
        return runner._serializer.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"{what} cannot be serialized: {exc}", run_id=runner.run_id
        ) from exc


def _loads(runner: Runner, text: str, what: str) -> Any:
    try:
        return runner._serializer.loads(text)
    except (TypeError, ValueError) as exc:
        raise runner._fail(
            SerializationError(f"recorded {what} cannot be decoded: {exc}", run_id=runner.run_id)
        ) from None


# -- messages -------------------------------------------------------------------------


async def receive(runner: Runner, topic: str, timeout: float | None) -> Any:  # noqa: ASYNC109 - a recorded deadline
    """The next message on `topic`, in send order; TimeoutError once `timeout` passed."""
    branch, position, identity = runner._next("aruntime.receive")
    clock = runner._clock
    deadline = None if timeout is None else clock.now() + timeout
    while True:
        action = next_receive_action(
            runner.state,
            identity,
            topic=topic,
            deadline=deadline,
            now=clock.now(),
            cancel_pending=runner._cancel_pending(),
        )
        if isinstance(action, Deliver):
            return _loads(runner, action.payload, "message")
        if isinstance(action, TimedOut):
            raise TimeoutError(f"no message on topic {topic!r} in time (receive at {identity})")
        await runner._hold(branch)
        if isinstance(action, RecordReceive):
            await runner._append(
                ReceiveStarted,
                position=position,
                topic=topic,
                deadline=action.deadline,
                branch=branch.path,
            )
        elif isinstance(action, Cancel):
            await runner._cancelled_at(branch, position, action.record)
        elif isinstance(action, Mismatch):
            raise runner._mismatch(identity, action)
        else:
            seen = runner._mail.value  # before the read: a message posted after it moves it
            if await _take(runner, branch, position, topic) or branch.loser:
                continue  # a branch that lost meanwhile waits at the _hold above
            if action.expired:
                await runner._append(ReceiveTimedOut, position=position, branch=branch.path)
                continue
            try:
                await _wait_for_mail(runner, seen, action.deadline)
            except asyncio.CancelledError:
                runner._interrupted(branch, position)
                raise


async def _take(runner: Runner, branch: Branch, position: int, topic: str) -> bool:
    """Consume the oldest message on `topic` with its `MessageReceived`; False if none."""
    store = runner._store
    try:
        requests = await _io(runner, store.pending(run_id=runner.run_id, kinds=_MESSAGE))
    except asyncio.CancelledError:
        # The run's cancellation reached the receive while it looked for a message: it is
        # recorded here as while it waits for one.
        runner._interrupted(branch, position)
        raise
    for request in requests:
        if (request.topic or "default") != topic or request.id in runner._taken:
            continue
        async with runner._lock:
            if request.id in runner._taken:  # another branch took it while we waited
                continue
            if branch.loser:  # its aruntime.first was won while it waited: take nothing
                return False
            if runner._closing:
                raise runner._refusal()  # the runtime closes: the next one delivers it
            await runner._flush_locked()
            state = runner.state
            key = request.key or ""
            runner._taken.add(request.id)
            try:
                if key and key in state.message_keys:
                    await store.consume(request.id)  # a duplicate: dropped
                    logger.info("message.duplicate_dropped", run_id=runner.run_id, key=key)
                    continue
                event = MessageReceived(
                    sequence=state.version + 1,
                    at=runner._clock.now(),
                    position=position,
                    payload=request.payload or "null",
                    key=key,
                    branch=branch.path,
                )
                await store.consume(request.id, runner.run_id, [event], state.version)
            except AruntimeError as exc:
                raise runner._fail(exc) from None  # the log, read again, tells what held
            except asyncio.CancelledError:
                runner._fail(AppendInterruptedError(runner.run_id))
                runner._stop_root()
                raise
            fold_into(state, (event,))
        if runner._debug:
            logger.debug("message.received", run_id=runner.run_id, topic=topic)
        return True
    return False


async def _wait_for_mail(runner: Runner, seen: int, deadline: float | None) -> None:
    """Wait until the inbox may hold a message for the run (news after `seen`), or until
    `deadline` on the runtime's clock."""
    mail = runner._mail
    if deadline is None:
        await mail.wait(seen)
        return
    clock = runner._clock
    waiter = asyncio.ensure_future(mail.wait(seen))
    sleeper = asyncio.ensure_future(clock.sleep(max(0.0, deadline - clock.now())))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)


async def send(runner: Runner, target: str, payload: Any, topic: str) -> None:
    """Send `payload` to run `target` once, however often the run replays."""
    branch, position, identity = runner._next("aruntime.send")
    action = next_send_action(
        runner.state,
        identity,
        target=target,
        topic=topic,
        cancel_pending=runner._cancel_pending(),
    )
    if isinstance(action, Recorded):
        sent = action.sent
        assert sent is not None
        if sent.error_type:
            raise _send_error(sent.error_type, target)
        if not send_confirmed(runner.state, sent) and await _may_be_lost(runner, sent):
            await _post(runner, sent)  # it may not have left before a crash: again, once
        return
    await runner._hold(branch)
    if isinstance(action, Cancel):
        await runner._cancelled_at(branch, position, action.record)
    if isinstance(action, Mismatch):
        raise runner._mismatch(identity, action)
    text = _dumps(runner, payload, "the message")
    info = await _io(runner, runner._store.get_run(target))
    if info is None and await _io(runner, _start_waits(runner, target)):
        refused = ""
    elif info is None:
        refused = "RunNotFoundError"
    elif info.status.terminal:
        refused = f"RunEndedError:{info.status.value}"
    else:
        refused = ""
    await runner._append(
        MessageSent,
        position=position,
        target=target,
        topic=topic,
        payload=text,
        key=f"{runner.run_id}/{identity}",
        error_type=refused,
        branch=branch.path,
    )
    sent = runner.state.sends[identity]
    if refused:
        raise _send_error(refused, target)
    await _post(runner, sent)


async def _may_be_lost(runner: Runner, sent: MessageSent) -> bool:
    """Whether a recorded send may not have been posted: it is not waiting in the inbox,
    and its target still runs (a copy posted to an ended run would wait forever)."""
    store = runner._store
    info = await _io(runner, store.get_run(sent.target))
    if info is not None and info.status.terminal:
        return False
    waiting = await _io(runner, store.pending(run_id=sent.target, kinds=_MESSAGE))
    return all(message.key != sent.key for message in waiting)


async def _start_waits(runner: Runner, target: str) -> bool:
    """Whether run `target` is about to exist: its start or fork waits in the inbox (a
    child this run just started, say), or was applied since `get_run` looked."""
    store = runner._store
    if any(r.kind in _STARTS for r in await store.pending(run_id=target)):
        return True
    return await store.get_run(target) is not None


def _send_error(error_type: str, target: str) -> AruntimeError:
    if error_type.startswith("RunEndedError"):
        return RunEndedError(target, error_type.partition(":")[2] or "ended")
    return RunNotFoundError(target)


async def _post(runner: Runner, sent: MessageSent) -> None:
    await _io(
        runner,
        runner._store.post(
            Request(
                kind=RequestKind.MESSAGE,
                run_id=sent.target,
                at=runner._clock.now(),
                topic=sent.topic,
                payload=sent.payload,
                key=sent.key,
            ),
        ),
    )


# -- published values -----------------------------------------------------------------


async def publish(runner: Runner, key: str, value: Any) -> None:
    """Record `value` as the run's latest under `key`, for `Client.read`."""
    branch, position, identity = runner._next("aruntime.publish")
    action = next_publish_action(
        runner.state, identity, key=key, cancel_pending=runner._cancel_pending()
    )
    if isinstance(action, Recorded):
        return
    await runner._hold(branch)
    if isinstance(action, Cancel):
        await runner._cancelled_at(branch, position, action.record)
    if isinstance(action, Mismatch):
        raise runner._mismatch(identity, action)
    text = _dumps(runner, value, f"the value published as {key!r}")
    runner._append_later(ValuePublished, position=position, key=key, value=text, branch=branch.path)


# -- child runs -----------------------------------------------------------------------


def child_run_id(parent: str, identity: str) -> str:
    """The default id of the child started at `identity`: the same on every replay."""
    return f"{parent}/{identity}"


class ChildHandle:
    """A child run started by `aruntime.start_child`; await it for its result.

    Awaiting raises `RunFailedError` when the child failed and `RunCancelledError` when
    it was cancelled. The outcome is recorded in the parent's log once learnt.
    """

    __slots__ = ("_identity", "_runner", "_workflow", "run_id")

    def __init__(
        self, runner: Runner, identity: str, workflow: Workflow[..., Any], run_id: str
    ) -> None:
        self._runner = runner
        self._identity = identity
        self._workflow = workflow
        self.run_id = run_id
        """The child's run id."""

    def __repr__(self) -> str:
        return f"<ChildHandle {self.run_id!r}>"

    def __await__(self) -> Any:
        return _wait_child(self._runner, self._identity, self._workflow).__await__()


async def start_child(
    runner: Runner,
    workflow: Workflow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    run_id: str | None,
    *,
    placement: tuple[str | None, int, str | None] = (None, 0, None),
) -> ChildHandle:
    """Start a child run (recorded first), or adopt the one the log names; `placement`
    is its `(queue, priority, partition_key)`."""
    from aruntime._definitions import Workflow  # noqa: PLC0415 - a cycle through runtime
    from aruntime.runtime import check_run_id  # noqa: PLC0415 - a cycle through runtime

    if not isinstance(workflow, Workflow):
        raise ConfigError(f"a child run needs a @workflow, got {workflow!r}")
    branch, position, identity = runner._next("aruntime.start_child")
    if run_id is None:
        # The default id is the one the log recorded when it holds one: a fork replays its
        # origin's ChildStarted, whose child is named after the origin.
        recorded_child = runner.state.children.get(identity)
        child = (
            recorded_child.child
            if recorded_child is not None
            else child_run_id(runner.run_id, identity)
        )
    else:
        child = check_run_id(run_id)
    action = next_child_start(
        runner.state,
        identity,
        workflow=workflow.name,
        child=child,
        cancel_pending=runner._cancel_pending(),
    )
    if isinstance(action, Recorded):
        recorded = action.child
        assert recorded is not None
        store = runner._store
        if (
            recorded.status is None
            and await _io(runner, store.get_run(child)) is None
            and not await _io(runner, store.pending(run_id=child, kinds=(RequestKind.START,)))
        ):
            # Recorded, but the start may not have left before a crash: ask again (a
            # start of an existing run id changes nothing).
            await _post_start(runner, workflow, child, args, kwargs, placement=placement)
        return ChildHandle(runner, identity, workflow, child)
    await runner._hold(branch)
    if isinstance(action, Cancel):
        await runner._cancelled_at(branch, position, action.record)
    if isinstance(action, Mismatch):
        raise runner._mismatch(identity, action)
    encoded = encode_start_args(runner._serializer, workflow, child, args, kwargs)
    await _check_child_id(runner, child, workflow.name, encoded)  # refused before recorded
    await runner._append(
        ChildStarted, position=position, child=child, workflow=workflow.name, branch=branch.path
    )
    await _post_start(runner, workflow, child, args, kwargs, placement=placement)
    logger.info("child.started", run_id=runner.run_id, child=child, workflow=workflow.name)
    return ChildHandle(runner, identity, workflow, child)


async def _check_child_id(runner: Runner, child: str, workflow: str, encoded: str) -> None:
    """Refuse a child id that names a run (or a start waiting in the inbox) of another
    workflow or with other arguments: the inbox would take the start as a repeat and the
    parent would adopt a run that is not its child."""
    store = runner._store
    events = (await store.events_for(child))[:1]
    if events and isinstance(events[0], RunStarted):
        recorded_workflow, recorded_args = events[0].workflow, events[0].args
    else:
        starts = [r for r in await store.pending(run_id=child) if r.kind is RequestKind.START]
        if not starts:
            return
        recorded_workflow = starts[0].workflow or ""
        recorded_args = starts[0].args if starts[0].args is not None else _NO_ARGS
    check_same_start(
        runner._serializer,
        child,
        recorded_workflow,
        recorded_args,
        workflow=workflow,
        encoded=encoded,
    )


async def _post_start(
    runner: Runner,
    workflow: Workflow[..., Any],
    child: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    placement: tuple[str | None, int, str | None],
) -> None:
    queue, priority, partition_key = placement
    await _io(
        runner,
        runner._store.post(
            Request(
                kind=RequestKind.START,
                run_id=child,
                at=runner._clock.now(),
                workflow=workflow.name,
                args=encode_start_args(runner._serializer, workflow, child, args, kwargs),
                parent=runner.run_id,
                queue=queue,
                priority=None if queue is None else priority,
                partition_key=partition_key,
            ),
        ),
    )


async def _wait_child(runner: Runner, identity: str, workflow: Workflow[..., Any]) -> Any:
    branch = _context._BRANCH.get()
    if branch is None or branch.runner is not runner:
        raise ConfigError("a child run's handle is awaited in the workflow that started it")
    runner.check_owner(branch, "a child run's handle")
    while True:
        action = next_child_wait(runner.state, identity, cancel_pending=runner._cancel_pending())
        if isinstance(action, ChildOutcome):
            child = action.child
            if child.status == RunStatus.COMPLETED.value:
                value = _loads(runner, child.result or "null", "child result")
                return convert_result(value, workflow.result_type(), child.child, None)
            if child.status == RunStatus.CANCELLED.value:
                raise RunCancelledError(child.child, child.error_message or "cancelled")
            raise RunFailedError(child.child, child.error_type, child.error_message)
        current = runner.state.children[identity]
        if isinstance(action, Cancel):
            if action.record:
                runner._append_later(
                    OperationCancelled, position=current.position, branch=current.branch
                )
                await _cancel_child(runner, current.child, runner.state.cancel_reason)
            runner._deliver(asyncio.current_task())
            raise asyncio.CancelledError
        assert isinstance(action, WaitChild)
        try:
            await runner._hold(branch)
            await _watch_child(runner, identity, current.child)
        except asyncio.CancelledError:
            # The run's cancellation reached the wait, or the branch lost a first-of: the
            # child is cancelled too (a cancel of an ended run changes nothing).
            lost = branch.loser and runner._abort is None and not runner._closing
            if runner._interrupted_at(current.branch, current.position) or lost:
                reason = runner.state.cancel_reason or "lost aruntime.first"
                with contextlib.suppress(Exception):
                    await _cancel_child(runner, current.child, reason)
            raise


async def _watch_child(runner: Runner, identity: str, child: str) -> None:
    """Wait until the child has ended, then record how (unless another waiter did)."""
    store = runner._store
    while True:
        seen = store.change_counter()
        info = await _io(runner, store.get_run(child))
        if info is not None and info.status.terminal:
            break
        await store.wait_changed(seen)
    ended = replay(await _io(runner, store.events_for(child)))
    if runner.state.children[identity].status is not None:
        return
    current = runner.state.children[identity]
    await runner._append(
        ChildEnded,
        position=current.position,
        status=ended.status.value,
        result=ended.result,
        error_type=ended.error_type or "",
        error_message=ended.error_message or ended.cancel_reason or "",
        branch=current.branch,
    )


async def _cancel_child(runner: Runner, child: str, reason: str | None) -> None:
    await post_cancel(runner._store, runner._clock.now(), runner.run_id, child, reason)


async def post_cancel(
    store: EventStore, now: float, parent: str, child: str, reason: str | None
) -> None:
    """Ask for the cancellation of `parent`'s child run `child`."""
    await store.post(
        Request(
            kind=RequestKind.CANCEL,
            run_id=child,
            at=now,
            reason=f"parent {parent!r} cancelled: {reason or 'cancelled'}",
        )
    )


async def cancel_children(runner: Runner, reason: str) -> None:
    """The run ends cancelled: ask each child whose end it has not recorded to cancel."""
    await cancel_children_of(runner._store, runner._clock.now(), runner.state, reason)


async def cancel_children_of(store: EventStore, now: float, state: RunState, reason: str) -> None:
    """Ask each child of the run of `state` that has not ended to cancel."""
    assert state.run_id is not None
    for child in state.children.values():
        if child.status is None:
            info = await store.get_run(child.child)
            if info is None or not info.status.terminal:
                await post_cancel(store, now, state.run_id, child.child, reason)


# -- first of several -----------------------------------------------------------------


async def _contend(awaitable: Awaitable[Any], race: _context.Race, index: int) -> Any:
    """Await one of `aruntime.first`'s awaitables; the first to end wins the race at once,
    before its task is done, so that from then on the others start nothing new (a losing
    receive consumes no message)."""
    try:
        return await awaitable
    finally:
        if race.winner is None:
            race.winner = index


async def first(runner: Runner, awaitables: tuple[Awaitable[Any], ...]) -> Any:
    """The outcome of whichever awaitable completes first; the others are cancelled."""
    branch, position, identity = runner._next("aruntime.first")
    action = next_first_action(runner.state, identity, count=len(awaitables))
    if isinstance(action, Mismatch):
        for aw in awaitables:  # never awaited: close them quietly
            close = getattr(aw, "close", None)
            if close is not None:
                close()
        raise runner._mismatch(identity, action)
    winner = action.index if isinstance(action, Winner) else None
    race = _context.Race(winner)
    branches: list[Branch] = []
    tasks = [
        runner.spawn(
            branch,
            _contend(aw, race, index),
            loser=winner is not None and index != winner,
            out=branches,
            race=(race, index),
        )
        for index, aw in enumerate(awaitables)
    ]
    try:
        if winner is None:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            index = race.winner
            if index is None:  # pragma: no cover - a task ends through _contend
                index = min(tasks.index(task) for task in done)
            await runner._hold(branch)
            await runner._append(FirstWon, position=position, winner=index, branch=branch.path)
            winner = index
            for lost, other in enumerate(branches):
                other.loser = lost != index  # their cancellation is not the run's
        else:
            await asyncio.wait([tasks[winner]])
    finally:
        losers = [task for task in tasks if not task.done()]
        for task in losers:
            task.cancel()
        if losers:
            await asyncio.gather(*losers, return_exceptions=True)
    return tasks[winner].result()
