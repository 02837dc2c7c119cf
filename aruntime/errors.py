"""The errors aruntime raises, all under one base class.

The whole tree::

    AruntimeError
    ├── ConfigError                 a setting or argument the runtime cannot accept
    │   └── InvalidRunIdError       empty, non-string or over-long run id
    ├── SerializationError          an argument or result the serializer cannot encode/decode
    ├── RunIdConflictError          a run id reused with another workflow or other arguments
    ├── RunNotFoundError            no run with that id in the store
    ├── RunActiveError              removing a run that has not ended
    ├── RunEndedError               a message sent to a run that has ended
    ├── UnknownWorkflowError        the log names a workflow this runtime does not know
    ├── RunFailedError              `RunHandle.result()` of a run that ended failed
    ├── RunParkedError              `RunHandle.result()` of a run parked by the supervisor
    ├── RunCancelledError           `RunHandle.result()` of a run that ended cancelled
    ├── StepFailedError             inside a workflow: a step failed for good
    ├── StepTimeout                 recorded for an attempt that ran past its timeout
    ├── NonDeterminismError         the workflow asked for another operation than the log holds
    ├── UntrackedTaskError          an operation called from a task aruntime did not create
    ├── CorruptLogError             a log that no valid run can produce
    ├── ConcurrencyError            a stale writer: the expected sequence is not the last one
    │   └── LeaseLostError          a fleet worker's claim on the run was taken over (fenced)
    └── StoreError                  the store could not do what was asked
        ├── StoreLockedError        another process holds the database or the run
        ├── StoreReadOnlyError      the database cannot be written
        ├── StoreFullError          the disk or the database size limit is full
        ├── StoreCorruptError       the file is not a database of ours, or is damaged
        └── StoreVersionError       the file was written by a newer aruntime

Two exceptions are not errors but requests a step body may raise: `RetryAfter` (retry
after a given delay) and `NonRetryableError` (fail the step at once). They live here so
that the pure retry arithmetic can recognise them without importing anything else.

Every error carries the structured attributes that locate it (`run_id`, `sequence`,
`identity`, `step`, `attempt`, where they apply) and its message says what to do. An
operation's `identity` is its branch and its position in that branch (`"3"`, `"2.1.4"`).
"""

from __future__ import annotations

__all__ = [
    "AruntimeError",
    "ConcurrencyError",
    "ConfigError",
    "CorruptLogError",
    "InvalidRunIdError",
    "LeaseLostError",
    "NonDeterminismError",
    "NonRetryableError",
    "RetryAfter",
    "RunActiveError",
    "RunCancelledError",
    "RunEndedError",
    "RunFailedError",
    "RunIdConflictError",
    "RunNotFoundError",
    "RunParkedError",
    "SerializationError",
    "StepFailedError",
    "StepTimeout",
    "StoreConnectionError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreNotOwnerError",
    "StoreReadOnlyError",
    "StoreVersionError",
    "UnknownWorkflowError",
    "UntrackedTaskError",
]


class AruntimeError(Exception):
    """Base class of every error aruntime raises."""


class ConfigError(AruntimeError, ValueError):
    """A setting or an argument that the runtime cannot accept."""


class InvalidRunIdError(ConfigError):
    """A run id that is not a non-empty string of at most the allowed length."""

    def __init__(self, run_id: object, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"invalid run id {run_id!r:.80}: {reason}")


class SerializationError(AruntimeError):
    """A value the serializer cannot encode, or stored text it cannot decode."""

    def __init__(self, message: str, *, run_id: str | None = None, step: str | None = None):
        self.run_id = run_id
        self.step = step
        where = f"run {run_id!r}" if run_id else "run"
        if step:
            where += f", step {step!r}"
        super().__init__(f"{where}: {message}")


class RunIdConflictError(AruntimeError):
    """A run id that already names a run of another workflow or with other arguments."""

    def __init__(self, run_id: str, detail: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id!r} already exists {detail}; a run id is an idempotency key, "
            "so start it with the same workflow and arguments or choose another id"
        )


class RunNotFoundError(AruntimeError, LookupError):
    """No run with this id exists in the store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run {run_id!r} in the store")


class RunActiveError(AruntimeError):
    """A run that has not ended cannot be removed; cancel it first, or wait for its end."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(
            f"run {run_id!r} has not ended (it is {status}); only completed, failed or "
            "cancelled runs can be deleted: cancel it first, or wait for its end"
        )


class RunEndedError(AruntimeError):
    """The run has ended (`status`), so nothing can reach it any more (a message)."""

    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(
            f"run {run_id!r} has ended ({status}); a message to it would never be received"
        )


class UnknownWorkflowError(AruntimeError):
    """The run's log names a workflow that is not registered with this runtime."""

    def __init__(self, run_id: str | None, workflow: str) -> None:
        self.run_id = run_id
        self.workflow = workflow
        where = f"run {run_id!r}: " if run_id else ""
        super().__init__(
            f"{where}workflow {workflow!r} is not registered; import the module that "
            "defines it or pass it in Runtime(workflows=[...])"
        )


class RunFailedError(AruntimeError):
    """The run ended failed; `error_type` and `error_message` describe the cause.

    When the cause was a step that failed for good, `step`, `identity` and `attempts`
    name it; they are None when the workflow itself raised.
    """

    def __init__(
        self,
        run_id: str,
        error_type: str,
        error_message: str,
        *,
        step: str | None = None,
        identity: str | None = None,
        attempts: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = error_message
        self.step = step
        self.identity = identity
        self.attempts = attempts
        where = ""
        if step is not None:
            tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
            where = f" (step {step!r} at {identity}, after {tries})"
        super().__init__(f"run {run_id!r} failed: {error_type}: {error_message}{where}")


class RunParkedError(AruntimeError):
    """The supervisor parked the run; it waits for a fix and `Runtime.resume()`."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} is parked: {reason}")


class RunCancelledError(AruntimeError):
    """The run ended by its cancellation (a user's request, or its deadline)."""

    def __init__(self, run_id: str, reason: str) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id!r} was cancelled: {reason}")


class StepFailedError(AruntimeError):
    """Raised inside a workflow when a step failed for good (retries exhausted or refused).

    The workflow may catch it; if it does not, the run ends failed with the step's error.
    """

    def __init__(
        self,
        *,
        run_id: str,
        step: str,
        identity: str,
        attempt: int,
        error_type: str,
        error_message: str,
    ) -> None:
        self.run_id = run_id
        self.step = step
        self.identity = identity
        self.attempt = attempt
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(
            f"run {run_id!r}: step {step!r} at {identity} failed after "
            f"{attempt} attempt(s): {error_type}: {error_message}"
        )


class StepTimeout(AruntimeError, TimeoutError):  # noqa: N818 - the name users record and match
    """An attempt ran longer than its step's `timeout`; recorded as a failed attempt.

    The step's retry policy decides what comes next, as for any failure.
    """

    def __init__(self, step: str, timeout: float) -> None:
        self.step = step
        self.timeout = timeout
        super().__init__(f"step {step!r} ran longer than its timeout of {timeout:g}s")


class NonDeterminismError(AruntimeError):
    """On replay the workflow asked for another operation than the log recorded there.

    Nothing is appended after it; the run is parked until the workflow code is fixed.
    """

    def __init__(self, *, run_id: str, identity: str, recorded: str, requested: str) -> None:
        self.run_id = run_id
        self.identity = identity
        self.recorded = recorded
        self.requested = requested
        super().__init__(
            f"run {run_id!r}: at operation {identity} the log recorded {recorded} but the "
            f"workflow asked for {requested}; code outside steps must be deterministic "
            "(deploy the code that wrote this run and resume it, or start a new run)"
        )


class UntrackedTaskError(AruntimeError):
    """An operation was called from a task that aruntime did not create for the run.

    Raw `asyncio.gather`, `asyncio.create_task` and `asyncio.wait` give operations no
    stable identity, so the runtime refuses them instead of risking a wrong replay.
    """

    def __init__(self, run_id: str, operation: str) -> None:
        self.run_id = run_id
        self.operation = operation
        super().__init__(
            f"run {run_id!r}: {operation} was called from a task that aruntime did not "
            "create for this run (raw asyncio.gather, asyncio.create_task or asyncio.wait); "
            "run operations concurrently with aruntime.gather or aruntime.TaskGroup"
        )


class CorruptLogError(AruntimeError):
    """A log that no valid run can produce (gap, duplicate, unknown event, ...)."""

    def __init__(self, run_id: str | None, sequence: int | None, reason: str) -> None:
        self.run_id = run_id
        self.sequence = sequence
        self.reason = reason
        where = f"run {run_id!r}" if run_id else "log"
        if sequence is not None:
            where += f" at sequence {sequence}"
        super().__init__(f"corrupt {where}: {reason}")


class ConcurrencyError(AruntimeError):
    """A stale writer: the run's log no longer ends at the sequence it expected.

    The writer must stop; another writer owns the run. Nothing was appended.
    """

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        self.run_id = run_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"run {run_id!r}: expected the log to end at sequence {expected} but it ends "
            f"at {actual}; another writer owns this run, so this one stops"
        )


class LeaseLostError(ConcurrencyError):
    """A fleet worker's append to a run whose claim another worker took over.

    Every claim of a run on PostgreSQL bumps the run's fencing epoch, and every append
    carries the epoch its worker holds; the append of a worker whose epoch moved commits
    nothing and raises this. The worker stops the run at once: another one runs it now.
    """

    def __init__(self, run_id: str, held: int, current: int) -> None:
        self.held_epoch = held
        self.current_epoch = current
        AruntimeError.__init__(
            self,
            f"run {run_id!r}: this worker's claim (epoch {held}) was taken over by another "
            f"worker (epoch {current}); nothing was appended and this worker stops the run",
        )
        self.run_id = run_id
        self.expected = -1
        self.actual = -1


class StoreError(AruntimeError):
    """The store could not do what was asked; what was durable stays durable."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r}: {message}" if run_id else message)


class StoreLockedError(StoreError):
    """Another process holds the database, or the run, for longer than we may wait."""


class StoreReadOnlyError(StoreError):
    """The database cannot be written (file permissions, read-only mount or mode)."""


class StoreFullError(StoreError):
    """The disk, or the database's configured size limit, is full."""


class StoreCorruptError(StoreError):
    """The file is not an aruntime database, or its content is damaged."""


class StoreVersionError(StoreError):
    """The database was written by a newer aruntime than this one."""


class StoreNotOwnerError(StoreError):
    """A write that only the store's owner makes, asked of a store opened without owning it.

    A `Client` (a store opened with `owner=False`) reads runs and posts requests to the
    inbox; appending to logs, parking and applying requests belong to the `Runtime` that
    owns the store.
    """


class StoreConnectionError(StoreError):
    """The database server cannot be reached, or the connection broke during a request.

    An append that fails with it may or may not have been committed: the runner that made
    it dies and its successor reads the log to learn which.
    """


class RetryAfter(Exception):  # noqa: N818 - a request to the runtime, not an error
    """Raised by a step body to ask for its next attempt after `delay` seconds.

    The attempt still counts against the step's `max_attempts`.
    """

    def __init__(self, delay: float, message: str = "") -> None:
        if not delay >= 0:
            raise ValueError(f"RetryAfter delay must be >= 0 seconds, got {delay!r}")
        self.delay = float(delay)
        super().__init__(message or f"retry after {delay:g}s")


class NonRetryableError(AruntimeError):
    """Raised by a step body to fail the step at once, whatever its retry policy."""
