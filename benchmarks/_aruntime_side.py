"""The workloads of `benchmarks.workloads`, run on aruntime.

Each measurement gets a fresh store (a fresh database file for SQLite) and a fresh
`Runtime`; the figures are computed by `benchmarks.report` from what is returned here,
with the same code as for every other system.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aruntime
from aruntime import EventStore, MemoryStore, RetryPolicy, RunStatus, Runtime, Workflow
from aruntime.store import open_store
from benchmarks._harness import Progress, rss_bytes
from benchmarks.workloads import Probe, Workload, run_id

__all__ = [
    "DEFAULT_POSTGRES",
    "AruntimeSide",
    "LoopResult",
    "ScaleResult",
    "StoreSpec",
    "build_workflow",
    "discard",
]

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
"""The database `--store postgres` uses unless `--postgres-url` names another."""

NAME = "aruntime"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSpec:
    """Which store a measurement runs on."""

    kind: str
    """"memory", "sqlite" or "postgres"."""
    synchronous: str = "FULL"
    """SQLite only: FULL or NORMAL."""
    postgres_url: str = DEFAULT_POSTGRES
    """PostgreSQL only: the database; each measurement gets a fresh schema in it."""

    def url(self, directory: Path, name: str = "bench.db") -> str:
        if self.kind == "memory":
            return "memory://"
        if self.kind == "postgres":
            separator = "&" if "?" in self.postgres_url else "?"
            return f"{self.postgres_url}{separator}schema=bench_{uuid.uuid4().hex[:12]}"
        return f"sqlite:///{directory / name}?synchronous={self.synchronous}"

    def open(self, directory: Path, name: str = "bench.db") -> EventStore:
        """A new, empty store (not opened yet)."""
        if self.kind == "memory":
            return MemoryStore()
        return open_store(self.url(directory, name))

    def describe(self) -> dict[str, Any]:
        if self.kind == "memory":
            return {"store": "memory"}
        if self.kind == "postgres":
            return {"store": "postgres", "synchronous_commit": "on (the server's default)"}
        return {"store": self.kind, "synchronous": self.synchronous, "journal_mode": "wal"}


async def discard(store: EventStore) -> None:
    """Remove what a measurement left in a shared database (a PostgreSQL schema)."""
    schema = getattr(store, "schema", None)
    dsn = getattr(store, "_dsn", None)
    if schema is None or dsn is None:
        return
    import asyncpg  # noqa: PLC0415 - only with the PostgreSQL store

    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


def unavailable(spec: StoreSpec) -> str | None:
    """Why aruntime cannot run on `spec` here, or None when it can."""
    if spec.kind == "memory":
        return None
    if spec.kind == "sqlite":
        try:
            import aruntime.store.sqlite  # noqa: F401, PLC0415 - only to see whether it exists
        except ImportError:
            return "skipped: aruntime's SQLite store is not available in this checkout"
        return None
    if spec.kind == "postgres":
        return _postgres_unavailable(spec.postgres_url)
    return f"skipped: aruntime has no {spec.kind} store yet"


def _postgres_unavailable(url: str) -> str | None:
    try:
        import asyncpg  # noqa: PLC0415 - only to see whether it exists
    except ImportError:
        return "skipped: asyncpg is not installed (pip install 'aruntime[postgres]')"

    async def answers() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    import concurrent.futures  # noqa: PLC0415

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        if not pool.submit(asyncio.run, answers()).result():
            return f"skipped: no PostgreSQL server answers at {url} (--postgres-url)"
    return None


@dataclass(slots=True)
class LoopResult:
    """What one closed-loop measurement saw."""

    elapsed: float
    cpu: float
    runs: int
    steps: int
    events: int | None
    wrong_results: int
    probe: Probe
    store_stats: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ScaleResult:
    """What one scale measurement saw."""

    runs: int
    suspended: int
    seconds_to_suspend: float
    rss_bytes: int
    traced_bytes: int | None
    traced_peak_bytes: int | None


def policy_for(workload: Workload) -> RetryPolicy:
    retry = workload.retry
    largest = retry.delay_after(max(1, retry.max_attempts - 1))
    return RetryPolicy(
        max_attempts=retry.max_attempts,
        initial_delay=retry.initial_delay,
        backoff=retry.backoff,
        max_delay=max(60.0, largest),
        jitter=0.0,
    )


def build_workflow(workload: Workload, probe: Probe) -> Workflow[[int], int]:
    """The workload's workflow: `steps` calls of one step whose body is `probe.body`.

    The names depend only on the workload, so that a fresh process builds the same
    workflow and resumes the runs of an earlier one.
    """
    the_step = aruntime.step(name=f"bench.{workload.name}.step", retry=policy_for(workload))(
        probe.body
    )
    steps = workload.steps
    if workload.record_latency:
        latencies = probe.step_latencies
        clock = time.perf_counter

        async def chain(run: int) -> int:
            value = 0
            for index in range(steps):
                t0 = clock()
                value = await the_step(run, index, value)
                latencies.append(clock() - t0)
            return value

    else:

        async def chain(run: int) -> int:
            value = 0
            for index in range(steps):
                value = await the_step(run, index, value)
            return value

    return aruntime.workflow(name=f"bench.{workload.name}")(chain)


async def closed_loop(
    call: Callable[[int], Awaitable[Any]],
    *,
    runs: int,
    concurrency: int,
    expected: Any,
    run_latencies: list[float] | None,
    progress: Progress | None,
) -> int:
    """Run `call(0) ... call(runs - 1)` with `concurrency` in flight; count wrong results.

    Shared by every system: a worker starts the next run as soon as its last one ended.
    """
    numbers = iter(range(runs))
    wrong = 0
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal wrong
        for run in numbers:
            t0 = clock()
            result = await call(run)
            if run_latencies is not None:
                run_latencies.append(clock() - t0)
            if result != expected:
                wrong += 1
            if progress is not None:
                progress.update()

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(concurrency, runs))):
            group.create_task(worker())
    return wrong


async def _store_figures(store: EventStore) -> dict[str, Any]:
    stats = getattr(store, "stats", None)
    if stats is None:
        return {}
    figures: dict[str, Any] = {
        name: getattr(stats, name)
        for name in ("appends", "events", "commits", "failed_commits")
        if hasattr(stats, name)
    }
    commits = figures.get("commits")
    if commits:
        figures["appends_per_commit"] = figures.get("appends", 0) / commits
    return figures


async def _events_written(store: EventStore) -> int:
    return sum(info.version for info in await store.list_runs())


class _WatchClock:
    """The system clock, counting the sleeps of at least `long` seconds in progress."""

    __slots__ = ("long", "suspended")

    def __init__(self, long: float = 1.0) -> None:
        self.long = long
        self.suspended = 0

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        if seconds < self.long:
            await asyncio.sleep(max(0.0, seconds))
            return
        self.suspended += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            self.suspended -= 1


class AruntimeSide:
    """Runs workloads on aruntime with one kind of store."""

    name = NAME

    def __init__(self, store: StoreSpec, workdir: Path) -> None:
        self.store = store
        self.workdir = workdir
        self._counter = 0

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("aruntime")
        except PackageNotFoundError:
            return "unknown"

    def unavailable(self) -> str | None:
        return unavailable(self.store)

    def _fresh_dir(self) -> Path:
        self._counter += 1
        path = self.workdir / f"aruntime-{self._counter}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def closed_loop(self, workload: Workload, progress: Progress | None) -> LoopResult:
        """One measurement of a closed-loop workload (throughput, latency, retry)."""
        probe = Probe(workload)
        wf = build_workflow(workload, probe)
        store = self.store.open(self._fresh_dir())
        await store.open()
        try:
            async with Runtime(store, workflows=[wf]) as rt:

                async def call(run: int) -> int:
                    handle = await rt.start(wf, run, run_id=run_id(run))
                    return await handle.result()

                gc.collect()
                cpu0, t0 = time.process_time(), time.perf_counter()
                wrong = await closed_loop(
                    call,
                    runs=workload.runs,
                    concurrency=workload.concurrency,
                    expected=workload.expected_result,
                    run_latencies=probe.run_latencies if workload.record_latency else None,
                    progress=progress,
                )
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            stats = await _store_figures(store)
            events = stats.get("events")
            if events is None:
                events = await _events_written(store)
        finally:
            await store.aclose()
            await discard(store)
            probe.close()
        return LoopResult(
            elapsed=elapsed,
            cpu=cpu,
            runs=workload.runs,
            steps=workload.total_steps,
            events=events,
            wrong_results=wrong,
            probe=probe,
            store_stats=stats,
        )

    async def scale(
        self, workload: Workload, *, trace: bool, progress: Progress | None
    ) -> ScaleResult:
        """Suspend `workload.runs` runs at once; measure the memory they hold.

        Meant for a fresh process (see `benchmarks._scale`): the RSS delta is only
        meaningful when nothing before it freed memory the runs could reuse.
        """
        import tracemalloc  # noqa: PLC0415

        probe = Probe(workload)
        wf = build_workflow(workload, probe)
        clock = _WatchClock()
        store = self.store.open(self._fresh_dir())
        await store.open()
        try:
            async with Runtime(store, workflows=[wf], clock=clock) as rt:
                gc.collect()
                if trace:
                    tracemalloc.start()
                traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
                rss0 = rss_bytes()
                t0 = time.perf_counter()
                numbers = iter(range(workload.runs))

                async def starter() -> None:
                    for run in numbers:
                        await rt.start(wf, run, run_id=run_id(run))

                async with asyncio.TaskGroup() as group:
                    for _ in range(min(1_000, workload.runs)):
                        group.create_task(starter())
                while clock.suspended < workload.runs:
                    if progress is not None:
                        progress.set(clock.suspended)
                    await asyncio.sleep(0.01)
                elapsed = time.perf_counter() - t0
                if progress is not None:
                    progress.set(clock.suspended)
                gc.collect()
                rss = rss_bytes() - rss0
                traced: int | None = None
                peak: int | None = None
                if trace:
                    current, peak = tracemalloc.get_traced_memory()
                    traced = current - traced0
                    tracemalloc.stop()
                suspended = clock.suspended
                # Leaving cancels the run tasks; nothing is recorded for them.
        finally:
            await store.aclose()
            await discard(store)
            probe.close()
        return ScaleResult(
            runs=workload.runs,
            suspended=suspended,
            seconds_to_suspend=elapsed,
            rss_bytes=rss,
            traced_bytes=traced,
            traced_peak_bytes=peak,
        )


def count_unfinished(infos: list[aruntime.RunInfo]) -> int:
    return sum(1 for info in infos if info.status is RunStatus.RUNNING)
