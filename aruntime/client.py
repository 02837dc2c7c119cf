"""The client: reach every run of a store from a process that does not execute runs.

A web server, an admin script or the CLI opens `Client(url)` beside the `Runtime` that
owns the store (in another process, or not running at all). The client reads runs and
waits for their results; what would change a run (start, cancel, resume) it posts to the
store's inbox, which the owning runtime applies in order. It never executes, parks or
resumes a run itself, and it opens an SQLite file without its owner's lock.

Waiting is cheap: the store's watcher looks at the file's change counter every few
milliseconds while anybody waits, and each waiter reads its run again only after a change.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from types import TracebackType
from typing import Any, Generic, TypeVar

from aruntime._definitions import Workflow, check_timeout, lookup_workflow
from aruntime._inbox import NO_ARGS
from aruntime._runner import check_same_start, convert_result, encode_start_args
from aruntime.clock import Clock, SystemClock
from aruntime.errors import (
    ConfigError,
    CorruptLogError,
    RunCancelledError,
    RunEndedError,
    RunIdConflictError,
    RunNotFoundError,
    RunParkedError,
    SerializationError,
)
from aruntime.events import RunCancelled, RunCompleted, RunFailed, RunStarted
from aruntime.queues import Queue, check_placement
from aruntime.runtime import _failure, check_run_id
from aruntime.serializer import JsonSerializer, Serializer
from aruntime.state import RunState, RunStatus, fold_into, replay
from aruntime.store import EventStore, Request, RequestKind, RunInfo, open_store

__all__ = ["Client", "ClientHandle"]

R = TypeVar("R")


class Client:
    """Starts, watches, cancels and removes runs of a store that a `Runtime` owns.

    Example:
        async with Client("sqlite:///runs.db") as client:
            handle = await client.start(checkout, "o-42", run_id="order-42")
            print(await handle.result(timeout=30))

    Args:
        store: a URL (`sqlite:///path.db`; opened as a client's store, without the owner's
            lock) or a store object shared with a runtime in this process (opened, and
            not closed, by the client).
        serializer: how arguments and results become text; the runtime's must read it.
        clock: where the time of a request comes from.
    """

    def __init__(
        self,
        store: EventStore | str,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(store, str):
            if store.startswith("memory:"):
                raise ConfigError(
                    "a Client of memory:// would see a store of its own that no runtime "
                    "runs; share the Runtime's store object instead: Client(rt.store)"
                )
            self.store = open_store(store, owner=False)
            self._owns_store = True
        else:
            self.store = store
            self._owns_store = False
        self.serializer: Serializer = serializer or JsonSerializer()
        self.clock: Clock = clock or SystemClock()
        self._open = False

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> Client:
        """Open the store; pair it with `aclose()` (or use `async with`)."""
        if not self._open:
            await self.store.open()
            self._open = True
        return self

    async def aclose(self) -> None:
        """Close the store if the client opened it from a URL; idempotent."""
        if self._open:
            self._open = False
            if self._owns_store:
                await self.store.aclose()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- requests --------------------------------------------------------------------

    async def start(
        self,
        workflow: Workflow[..., R] | str,
        /,
        *args: Any,
        run_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the run's recorded deadline
        queue: Queue | str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        **kwargs: Any,
    ) -> ClientHandle[R]:
        """Ask for a run of `workflow` (a `@workflow` or its registered name).

        The request is recorded at once; the runtime that owns the store starts the run
        when it applies it (at once if one is running, else when one opens) and executes
        it if it knows the workflow. A run of a workflow no runtime knows is recorded all
        the same, and waits for a runtime that knows it.

        Args:
            run_id: the run's name and idempotency key; random when None. Starting an
                existing run id again returns that run.
            timeout: seconds from the run's start after which it is cancelled.
            queue: the queue (or its name) the run waits on until it is admitted; a
                runtime that declares the queue admits it (see `aruntime.queues`).
            priority: its priority in the queue (lower numbers first; default 0).
            partition_key: its partition in the queue (partitions take turns).

        Raises:
            InvalidRunIdError, ConfigError: a bad run id, workflow, timeout or placement.
            RunIdConflictError: the id names an existing run, or a start waiting in the
                inbox, of another workflow or with other arguments.
            SerializationError: the arguments cannot be serialized (nothing is recorded).
        """
        self._require_open()
        name, typed = _workflow_name(workflow)
        run_id = uuid.uuid4().hex if run_id is None else check_run_id(run_id)
        check_timeout(timeout)
        queue_name, priority, partition_key = check_placement(queue, priority, partition_key)
        encoded = encode_start_args(self.serializer, typed, run_id, args, dict(kwargs))
        if not await self._same_start(run_id, name, encoded):
            await self.store.post(
                Request(
                    kind=RequestKind.START,
                    run_id=run_id,
                    at=self.clock.now(),
                    workflow=name,
                    args=encoded,
                    timeout=None if timeout is None else float(timeout),
                    queue=queue_name,
                    priority=priority if queue_name is not None else None,
                    partition_key=partition_key,
                )
            )
        return ClientHandle(self, run_id, typed)

    def handle(self, run_id: str, workflow: Workflow[..., R] | None = None) -> ClientHandle[R]:
        """A handle on a run by id (checked when used); `workflow` types its result."""
        return ClientHandle(self, check_run_id(run_id), workflow)

    async def cancel(self, run_id: str, *, reason: str | None = None) -> RunStatus:
        """Ask the owning runtime to cancel the run (see `Runtime.cancel`).

        The run ends `CANCELLED` once the runtime has applied the request and the run's
        cleanup is done; wait for it with `handle(run_id).result()`, which then raises
        `RunCancelledError`.

        Returns:
            The run's status when asked: `RUNNING` (or `PENDING`, a start that waits in
            the inbox) once the request is recorded; an ended run's status when it has
            ended, and then nothing is asked.

        Raises:
            RunNotFoundError: no such run, and no start of it is waiting in the inbox.
        """
        if reason is not None and not isinstance(reason, str):
            raise ConfigError(f"a cancellation reason must be a str, got {reason!r}")
        return await self._post_for_existing(
            RequestKind.CANCEL, run_id, reason=reason or "cancelled"
        )

    async def resume(self, run_id: str) -> RunStatus:
        """Ask the owning runtime to clear a parked run's mark and run it again.

        Returns:
            The run's status when asked, as `cancel` does: an ended run is not resumed.

        Raises:
            RunNotFoundError: no such run, and no start of it is waiting in the inbox.
        """
        return await self._post_for_existing(RequestKind.RESUME, run_id)

    async def delete(self, run_id: str) -> None:
        """Remove an ended run (its log and index row) from the store.

        Raises:
            RunNotFoundError: no such run.
            RunActiveError: the run has not ended; cancel it first, or wait for its end.
        """
        self._require_open()
        await self.store.delete_run(check_run_id(run_id))

    async def prune(self, *, older_than: float, status: RunStatus | None = None) -> int:
        """Remove the runs that ended more than `older_than` seconds ago; how many.

        Args:
            older_than: age in seconds of the runs' last event (for example 7 * 86400).
            status: only runs that ended so (completed, failed or cancelled).

        Raises:
            ConfigError: a negative age, or a status that is not an end.
        """
        self._require_open()
        if not (isinstance(older_than, int | float) and older_than >= 0):
            raise ConfigError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
        return await self.store.prune(older_than=self.clock.now() - older_than, status=status)

    async def send(
        self,
        run_id: str,
        payload: Any,
        *,
        topic: str = "default",
        idempotency_key: str | None = None,
    ) -> int:
        """Send `payload` to the run, for its `aruntime.receive(topic)`; the message's id.

        The message waits in the store's inbox until the run receives it: sent before the
        run waits, or while no runtime runs, it is kept. Each message is received once;
        a second message with the same `idempotency_key` is dropped.

        Raises:
            RunNotFoundError: no such run, and no start of it waits in the inbox.
            RunEndedError: the run has ended.
            SerializationError: the payload cannot be serialized.
        """
        self._require_open()
        check_run_id(run_id)
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"a topic is a non-empty str, got {topic!r}")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise ConfigError(f"an idempotency key is a str, got {idempotency_key!r}")
        try:
            text = self.serializer.dumps(payload)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"the message cannot be serialized: {exc}", run_id=run_id
            ) from exc
        info = await self.store.get_run(run_id)
        if (
            info is None
            and not await self._pending(run_id, RequestKind.START, RequestKind.FORK)
            and await self.store.get_run(run_id) is None  # applied between the two reads
        ):
            raise RunNotFoundError(run_id)
        if info is not None and info.status.terminal:
            raise RunEndedError(run_id, info.status.value)
        if idempotency_key:
            for waiting in await self.messages(run_id):
                if waiting.key == idempotency_key:
                    return waiting.id
        return await self.store.post(
            Request(
                kind=RequestKind.MESSAGE,
                run_id=run_id,
                at=self.clock.now(),
                topic=topic,
                payload=text,
                key=idempotency_key,
            )
        )

    async def messages(self, run_id: str) -> list[Request]:
        """The messages sent to the run that it has not received yet, oldest first."""
        self._require_open()
        return await self.store.pending(run_id=run_id, kinds=(RequestKind.MESSAGE,))

    async def read(self, run_id: str, key: str, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - the caller's bound on the wait
        """The latest value the run published under `key`, waiting for the first one.

        Raises:
            TimeoutError: nothing was published under `key` within `timeout` seconds.
            RunEndedError: the run ended without publishing under `key`.
            RunNotFoundError: no such run, and no start of it waits in the inbox.
        """
        self._require_open()
        check_run_id(run_id)
        store = self.store
        deadline = None if timeout is None else time.monotonic() + timeout
        state = RunState()
        while True:
            seen = store.change_counter()
            events = await store.events_for(run_id, after=state.version)
            if events:
                fold_into(state, events)
            if key in state.published:
                return self.serializer.loads(state.published[key])
            if state.status.terminal:
                raise RunEndedError(run_id, state.status.value)
            if state.version == 0 and not await self._pending(
                run_id, RequestKind.START, RequestKind.FORK
            ):
                if await store.get_run(run_id) is None:
                    raise RunNotFoundError(run_id)
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"run {run_id!r} published nothing as {key!r} in {timeout}s")
            await store.wait_changed(seen, left)

    async def fork(
        self, origin: str, /, *, from_step: str, run_id: str | None = None
    ) -> ClientHandle[Any]:
        """A new run that copies run `origin` up to its operation `from_step` and goes on
        from there with the code deployed now.

        The copy keeps what the operations before `from_step` recorded (their results are
        not computed again); the messages the origin received from there on, and those
        still waiting for it, are sent to the new run. `from_step` is an identity as
        `runs history` shows it (`"3"`, `"2.1.4"`).

        Raises:
            RunNotFoundError: no run `origin`.
            ConfigError: the origin recorded no operation at `from_step`.
            RunIdConflictError: `run_id` names an existing run.
        """
        self._require_open()
        state = await self.state(check_run_id(origin))
        if not isinstance(from_step, str) or state.operation_at(from_step) is None:
            raise ConfigError(f"run {origin!r} recorded no operation at {from_step!r}")
        run_id = uuid.uuid4().hex if run_id is None else check_run_id(run_id)
        if await self.store.get_run(run_id) is not None:
            raise RunIdConflictError(run_id, "as an existing run; a fork makes a new one")
        await self.store.post(
            Request(
                kind=RequestKind.FORK,
                run_id=run_id,
                at=self.clock.now(),
                origin=origin,
                from_step=from_step,
            )
        )
        return ClientHandle(self, run_id, lookup_workflow(state.workflow or ""))

    # -- reading -----------------------------------------------------------------------

    async def list(
        self,
        *,
        status: RunStatus | None = None,
        workflow: Workflow[..., Any] | str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """The store's runs, oldest first: of one status, one workflow, created at or
        after the epoch time `since`, at most `limit` of them. Starts that wait in the inbox
        for the owning runtime come last, `PENDING` and at version 0."""
        self._require_open()
        name = None if workflow is None else _workflow_name(workflow)[0]
        runs = await self.store.list_runs(status=status, workflow=name, since=since, limit=limit)
        if status not in (None, RunStatus.PENDING) or (limit is not None and len(runs) >= limit):
            return runs
        listed = {info.run_id for info in runs}
        runs += [
            info
            for info in await waiting_starts(self.store)
            if info.run_id not in listed
            and (name is None or info.workflow == name)
            and (since is None or info.created_at >= since)
        ]
        return runs if limit is None else runs[:limit]

    async def state(self, run_id: str) -> RunState:
        """The run's state, replayed from its log; a start that waits in the inbox for the
        owning runtime is a state `PENDING`, with the run id and workflow only.

        Raises:
            RunNotFoundError: no such run, and no start of it is waiting.
        """
        self._require_open()
        events = await self.store.events_for(check_run_id(run_id))
        if events:
            return replay(events)
        start = await self._waiting_start(run_id)
        if start is None:
            events = await self.store.events_for(run_id)  # applied between the two reads
            if not events:
                raise RunNotFoundError(run_id)
            return replay(events)
        return RunState(run_id=run_id, workflow=start.workflow, args=start.args)

    async def _waiting_start(self, run_id: str) -> Request | None:
        """The start (or fork) of `run_id` that waits in the inbox, if one does."""
        starts = await self.store.pending(run_id=run_id, kinds=_STARTS, limit=1)
        return await _with_workflow(self.store, starts[0]) if starts else None

    # -- internals ---------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._open:
            raise ConfigError("use the Client inside `async with Client(...) as client:`")

    async def _post_for_existing(
        self, kind: RequestKind, run_id: str, *, reason: str | None = None
    ) -> RunStatus:
        """Post the request unless the run has ended; the run's status."""
        self._require_open()
        check_run_id(run_id)
        info = await self.store.get_run(run_id)
        if info is None:
            if await self._pending(run_id, RequestKind.START):
                status = RunStatus.PENDING
            elif (info := await self.store.get_run(run_id)) is None:  # applied meanwhile
                raise RunNotFoundError(run_id)
        if info is not None:
            status = info.status
            if status.terminal:
                return status
        await self.store.post(Request(kind=kind, run_id=run_id, at=self.clock.now(), reason=reason))
        return status

    async def _same_start(self, run_id: str, name: str, encoded: str) -> bool:
        """Whether the run, or a start of it waiting in the inbox, already exists.

        Raises:
            RunIdConflictError: it is of another workflow, or has other arguments.
        """
        store = self.store
        if (info := await store.get_run(run_id)) is None:
            start = await self._waiting_start(run_id)
            if start is not None:
                recorded = NO_ARGS if start.args is None else start.args
                check_same_start(
                    self.serializer,
                    run_id,
                    start.workflow or "",
                    recorded,
                    workflow=name,
                    encoded=encoded,
                )
                return True
            # A start is consumed in the transaction that records its run: look once more.
            if (info := await store.get_run(run_id)) is None:
                return False
        first = (await store.events_for(run_id))[:1]
        if first and isinstance(first[0], RunStarted):
            started = first[0]
            check_same_start(
                self.serializer,
                run_id,
                started.workflow,
                started.args,
                workflow=name,
                encoded=encoded,
            )
        elif info.workflow != name:
            raise RunIdConflictError(run_id, f"as a run of workflow {info.workflow!r}")
        return True

    async def _pending(self, run_id: str, *kinds: RequestKind) -> bool:
        """Whether a request of one of `kinds` for the run waits in the inbox."""
        pending = await self.store.pending(run_id=run_id)
        return any(request.kind in kinds for request in pending)


_STARTS = (RequestKind.START, RequestKind.FORK)
"""The requests that make a run: a start, or a fork of another run."""


async def _with_workflow(store: EventStore, request: Request) -> Request:
    """A fork's request with the workflow of the run it copies (a start names its own)."""
    if request.kind is not RequestKind.FORK or request.origin is None:
        return request
    first = (await store.events_for(request.origin))[:1]
    if not first or not isinstance(first[0], RunStarted):
        return request
    return dataclasses.replace(request, workflow=first[0].workflow, args=first[0].args)


async def waiting_starts(store: EventStore) -> list[RunInfo]:
    """The starts that wait in the store's inbox for the owning runtime, as index rows of
    runs `PENDING` at version 0, in the order they were asked for (one per run id)."""
    starts: dict[str, RunInfo] = {}
    for waiting in await store.pending(kinds=_STARTS):
        if waiting.run_id not in starts:
            request = await _with_workflow(store, waiting)
            starts[request.run_id] = RunInfo(
                run_id=request.run_id,
                workflow=request.workflow or "",
                status=RunStatus.PENDING,
                version=0,
                created_at=request.at,
                updated_at=request.at,
            )
    return list(starts.values())


class ClientHandle(Generic[R]):
    """A reference to one run, by id, seen from a client."""

    __slots__ = ("_client", "_workflow", "run_id")

    def __init__(
        self, client: Client, run_id: str, workflow: Workflow[..., Any] | None = None
    ) -> None:
        self._client = client
        self.run_id = run_id
        self._workflow = workflow

    def __repr__(self) -> str:
        return f"ClientHandle({self.run_id!r})"

    async def state(self) -> RunState:
        """The run's state, replayed from its log."""
        return await self._client.state(self.run_id)

    async def cancel(self, reason: str | None = None) -> RunStatus:
        """Ask for the run's cancellation (see `Client.cancel`)."""
        return await self._client.cancel(self.run_id, reason=reason)

    async def result(self, timeout: float | None = None) -> R:  # noqa: ASYNC109 - the caller's bound on the wait
        """Wait for the run to end and return the workflow's result.

        The result comes back as the workflow's return annotation says when the workflow
        is known here (given to `start` or `handle`, or registered in this process), as
        decoded JSON otherwise.

        Raises:
            TimeoutError: `timeout` seconds passed first; the run goes on.
            RunFailedError: the run ended failed (with the cause's type and message).
            RunCancelledError: the run ended cancelled (with the reason).
            RunParkedError: the runtime parked the run (and no resume of it is pending).
            RunNotFoundError: no such run, and no start of it waits in the inbox.
        """
        client = self._client
        client._require_open()
        store = client.store
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = store.change_counter()
            info = await store.get_run(self.run_id)
            if info is not None:
                if info.status.terminal:
                    return await self._outcome(info)
                if info.parked and not await client._pending(self.run_id, RequestKind.RESUME):
                    # The resume may have been applied between the two reads: the runtime
                    # unparks the run before it consumes the request, so read once more.
                    again = await store.get_run(self.run_id)
                    if again is not None and again.parked and not again.status.terminal:
                        raise RunParkedError(self.run_id, again.parked_reason or "")
                    continue
            elif not await client._pending(self.run_id, RequestKind.START) and not (
                await client._pending(self.run_id, RequestKind.FORK)
            ):
                # The start may have been applied between the two reads: a start is
                # consumed in the transaction that records the run, so read once more.
                if await store.get_run(self.run_id) is None:
                    raise RunNotFoundError(self.run_id)
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"run {self.run_id!r} has not ended after {timeout}s")
            await store.wait_changed(seen, left)

    async def _outcome(self, info: RunInfo) -> R:
        store = self._client.store
        last = await store.events_for(self.run_id, after=info.version - 1)
        event = last[-1] if last else None
        if isinstance(event, RunCompleted):
            return self._decode(event.result, info.workflow)
        if isinstance(event, RunCancelled):
            raise RunCancelledError(self.run_id, event.reason)
        if isinstance(event, RunFailed):  # the whole log, to name the step that failed
            raise _failure(self.run_id, replay(await store.events_for(self.run_id)))
        raise CorruptLogError(self.run_id, info.version, f"a finished run ends with {event!r:.80}")

    def _decode(self, text: str, workflow_name: str) -> R:
        workflow = self._workflow or lookup_workflow(workflow_name)
        value = self._client.serializer.loads(text)
        if workflow is None:
            return value  # type: ignore[no-any-return]
        return convert_result(value, workflow.result_type(), self.run_id, None)  # type: ignore[no-any-return]


def _workflow_name(workflow: object) -> tuple[str, Workflow[..., Any] | None]:
    """The registered name of a workflow given as a `@workflow` or a name, and the
    workflow when there is one here."""
    if isinstance(workflow, Workflow):
        return workflow.name, workflow
    if isinstance(workflow, str) and workflow:
        return workflow, lookup_workflow(workflow)
    raise ConfigError(f"a workflow is a @workflow or its registered name, not {workflow!r}")
