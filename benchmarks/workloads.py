"""The workloads, defined once for every system that runs them.

A workload is `runs` runs of one workflow, `concurrency` of them in flight at a time
(a closed loop: a driver starts a run as soon as one ends). The workflow is a chain of
`steps` step calls, each fed the previous step's result::

    value = 0
    for index in range(steps):
        value = await step(run, index, value)
    return value            # == steps when every step succeeded

Every step calls `Probe.body`, the one body all systems share: it may sleep
(`step_sleep`), raises `TransientError` on the first `fail_attempts` attempts of each
step, and otherwise returns `value + 1`. The probe counts what the bodies did (calls,
attempt times, an optional on-disk ledger of body starts), so that figures such as
"attempts made" or "bodies that ran twice" are measured by the body itself, the same way
for every system, and never read off the system's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "WORKLOADS",
    "Probe",
    "ReplaySpec",
    "RetrySpec",
    "TransientError",
    "Workload",
    "workload",
]


class TransientError(Exception):
    """What a failing attempt of a step body raises."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySpec:
    """A step's retry policy, in the terms every system understands (no jitter)."""

    max_attempts: int = 3
    """Attempts in all, the first included."""
    initial_delay: float = 1.0
    """Seconds between the first failure and the second attempt."""
    backoff: float = 2.0
    """Factor by which each further delay grows."""

    def delay_after(self, attempt: int) -> float:
        """The policy's delay after failed attempt `attempt` (counted from 1)."""
        return float(self.initial_delay * self.backoff ** (attempt - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """What to run: how many runs of how many steps, and what each step does."""

    name: str
    description: str
    runs: int
    steps: int
    concurrency: int
    """Runs in flight at once; `runs` means all started at once, 1 means one at a time."""
    step_sleep: float = 0.0
    """Seconds every body sleeps (asyncio.sleep) before it returns."""
    fail_attempts: int = 0
    """The first `fail_attempts` attempts of every step raise `TransientError`."""
    retry: RetrySpec = field(default_factory=RetrySpec)
    record_latency: bool = False
    """Time every step call and every run (start to result)."""
    default_repeat: int = 5
    needs_durable_store: bool = False

    @property
    def total_steps(self) -> int:
        return self.runs * self.steps

    @property
    def expected_result(self) -> int:
        """What every run returns when all its steps succeeded."""
        return self.steps

    def resized(self, *, runs: int | None = None, steps: int | None = None) -> Workload:
        """The same workload with other sizes; `concurrency` follows `runs` if it was all."""
        new_runs = self.runs if runs is None else runs
        concurrency = new_runs if self.concurrency == self.runs else min(self.concurrency, new_runs)
        return replace(
            self,
            runs=new_runs,
            steps=self.steps if steps is None else steps,
            concurrency=max(1, concurrency),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaySpec:
    """Logs for the replay workload, built by a model of a run (aruntime only)."""

    sizes: tuple[int, ...] = (10, 100, 1_000, 10_000, 100_000)
    """Events per log."""
    failure_rate: float = 0.05
    """Chance that an attempt fails (and is retried) instead of completing."""
    min_seconds: float = 0.2
    """Each measurement folds a log as often as it takes to last at least this long."""
    default_repeat: int = 5

    def with_max(self, largest: int) -> ReplaySpec:
        """Sizes by decades from 10 up to `largest` (which is included)."""
        sizes: list[int] = []
        size = 10
        while size < largest:
            sizes.append(size)
            size *= 10
        sizes.append(largest)
        return replace(self, sizes=tuple(sizes))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="throughput",
            description="N runs x S trivial steps, all started at once",
            runs=1_000,
            steps=10,
            concurrency=1_000,
        ),
        Workload(
            name="latency",
            description="one run at a time, S trivial steps each; every step and run timed",
            runs=200,
            steps=10,
            concurrency=1,
            record_latency=True,
        ),
        Workload(
            name="recovery",
            description=(
                "N runs x S steps (1 ms sleep each), SIGKILL at half the steps, resume in a "
                "fresh process"
            ),
            runs=1_000,
            steps=10,
            concurrency=1_000,
            step_sleep=0.001,
            default_repeat=3,
            needs_durable_store=True,
        ),
        Workload(
            name="retry",
            description="every step fails twice then succeeds (10 ms, 20 ms backoff)",
            runs=100,
            steps=3,
            concurrency=100,
            fail_attempts=2,
            retry=RetrySpec(max_attempts=3, initial_delay=0.01, backoff=2.0),
        ),
        Workload(
            name="scale",
            description="N runs suspended at once, each waiting out a 1 h retry backoff",
            runs=100_000,
            steps=1,
            concurrency=100_000,
            fail_attempts=1,
            retry=RetrySpec(max_attempts=2, initial_delay=3_600.0, backoff=1.0),
            default_repeat=3,
        ),
        Workload(
            name="sleep",
            description=(
                "N runs sleep (aruntime.sleep_until) until one instant a few seconds after all "
                "started, then run one trivial step each"
            ),
            runs=10_000,
            steps=1,
            concurrency=10_000,
            default_repeat=3,
        ),
        Workload(
            name="wakeup",
            description=(
                "an owner runtime in one process, a Client in another: N runs started "
                "from the client one at a time, each waited for there, then N cancels"
            ),
            runs=200,
            steps=1,
            concurrency=1,
            default_repeat=3,
            needs_durable_store=True,
        ),
        Workload(
            name="queue",
            description=(
                "N runs x S trivial steps, all started at once, without a queue and on a "
                "queue of concurrency C"
            ),
            runs=1_000,
            steps=10,
            concurrency=1_000,
            default_repeat=3,
        ),
        Workload(
            name="message",
            description=(
                "an owner runtime in one process with one run receiving N messages in a row, "
                "a Client in another sending each once the run waits for it"
            ),
            runs=200,
            steps=0,
            concurrency=1,
            default_repeat=3,
            needs_durable_store=True,
        ),
    )
}
"""Every closed-loop workload by name; `replay` is separate (`ReplaySpec`)."""

REPLAY = ReplaySpec()


def workload(name: str) -> Workload:
    """The workload called `name`.

    Raises:
        KeyError: no such workload.
    """
    return WORKLOADS[name]


AttemptOf = Callable[[], int]
"""Asked inside a body: the number of the running attempt, as the system counts it."""


class Probe:
    """The step body every system calls, and what the bodies observed.

    One probe serves one measurement. It is not thread-safe: every system calls it from
    the event loop's thread.
    """

    def __init__(
        self,
        workload: Workload,
        *,
        ledger_path: str | None = None,
        attempt_of: AttemptOf | None = None,
    ) -> None:
        self.workload = workload
        self.bodies = 0
        """Body calls in this process."""
        self.failures = 0
        self.calls: dict[tuple[int, int], int] = {}
        """Body calls per (run, index), when the workload fails or keeps attempt times."""
        self.attempts: dict[tuple[int, int], list[tuple[float, float]]] = {}
        """(entered, left) perf_counter times of every attempt, for failing workloads."""
        self.step_latencies: list[float] = []
        """Seconds per step call as the workflow saw it (record_latency workloads)."""
        self.run_latencies: list[float] = []
        self.suspended = 0
        """Bodies that failed and left a retry pending (the scale workload counts these)."""
        self._attempt_of = attempt_of
        self._ledger_fd: int | None = None
        if ledger_path is not None:
            self._ledger_fd = os.open(ledger_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        plain = workload.fail_attempts == 0 and workload.step_sleep == 0 and ledger_path is None
        self.body: Callable[[int, int, int], Coroutine[Any, Any, int]] = (
            self._trivial if plain else self._full
        )

    def close(self) -> None:
        """Close the ledger file."""
        fd, self._ledger_fd = self._ledger_fd, None
        if fd is not None:
            os.close(fd)

    async def _trivial(self, run: int, index: int, value: int) -> int:
        self.bodies += 1
        return value + 1

    async def _full(self, run: int, index: int, value: int) -> int:
        entered = time.perf_counter()
        self.bodies += 1
        workload = self.workload
        if self._ledger_fd is not None:
            # The ledger records that a body *started*: a body cut off by a crash and run
            # again shows up twice. O_APPEND writes survive SIGKILL (page cache).
            attempt = self._attempt_of() if self._attempt_of is not None else 0
            os.write(self._ledger_fd, f"{run} {index} {attempt}\n".encode())
        if workload.step_sleep:
            await asyncio.sleep(workload.step_sleep)
        if workload.fail_attempts:
            key = (run, index)
            calls = self.calls[key] = self.calls.get(key, 0) + 1
            if calls <= workload.fail_attempts:
                self.failures += 1
                self.attempts.setdefault(key, []).append((entered, time.perf_counter()))
                if workload.retry.max_attempts > calls:
                    self.suspended += 1
                raise TransientError(f"attempt {calls} of step {index} of run {run} fails")
            self.attempts.setdefault(key, []).append((entered, time.perf_counter()))
        return value + 1

    def backoff_waits(self) -> list[tuple[float, float]]:
        """(policy delay, time actually waited) for every retry the bodies saw.

        The wait is measured from the end of the failed attempt to the start of the next
        one, so it includes what the system wrote in between.
        """
        retry = self.workload.retry
        waits: list[tuple[float, float]] = []
        for times in self.attempts.values():
            for attempt, ((_, left), (entered, _)) in enumerate(itertools.pairwise(times), start=1):
                waits.append((retry.delay_after(attempt), entered - left))
        return waits


def run_id(run: int) -> str:
    """The id of run number `run`, the same on every system."""
    return f"bench-{run:07d}"
