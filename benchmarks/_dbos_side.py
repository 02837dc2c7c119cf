"""The workloads of `benchmarks.workloads`, run on DBOS Transact (the peer).

DBOS is an optional extra (`pip install -r benchmarks/requirements.txt`). When it cannot be
imported every figure of this side is reported as "skipped: dbos not installed"; nothing is
ever estimated in its place.

How the workload maps onto DBOS:
- the workflow is an `async def` decorated `@DBOS.workflow()`, the step an `async def`
  decorated `@DBOS.step()` whose body is the shared `Probe.body`;
- retries use DBOS's own step retries (`retries_allowed`, `interval_seconds`,
  `backoff_rate`, `max_attempts`), set from the same `RetrySpec`;
- runs are started with `DBOS.start_workflow_async` under `SetWorkflowID(run_id)` and
  awaited with the handle's `get_result()`;
- the system database is SQLite (a fresh file per measurement; DBOS's own settings:
  rollback journal, `synchronous` left at SQLite's default FULL) or a PostgreSQL URL.

DBOS keeps one global instance per process: each measurement creates it, launches it,
and destroys it (keeping the registry of decorated functions, which DBOS wants to exist
before launch and refuses to register twice).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import importlib
import logging
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks._aruntime_side import LoopResult, ScaleResult, closed_loop
from benchmarks._harness import Progress, rss_bytes
from benchmarks.workloads import Probe, Workload, run_id

__all__ = ["DbosSide"]

NAME = "dbos"
MISSING = "skipped: dbos not installed (pip install -r benchmarks/requirements.txt)"


def _import_dbos() -> Any:
    """The dbos module, or None; imported by name so that type checks pass without it."""
    try:
        return importlib.import_module("dbos")
    except ImportError:
        return None


class _Current:
    """The probe of the measurement in progress; DBOS functions are registered once."""

    probe: Probe | None = None


_BUILT: dict[str, Any] = {}


def _workflow_for(dbos: Any, workload: Workload) -> Any:
    """The DBOS workflow function of `workload`, decorated on first use only."""
    built = _BUILT.get(workload.name)
    if built is not None:
        return built
    DBOS = dbos.DBOS  # noqa: N806 - the peer's own spelling
    retry = workload.retry
    step_options: dict[str, Any] = {"name": f"bench.{workload.name}.step"}
    if retry.max_attempts > 1:
        step_options.update(
            retries_allowed=True,
            max_attempts=retry.max_attempts,
            interval_seconds=retry.initial_delay,
            backoff_rate=retry.backoff,
        )

    async def bench_step(run: int, index: int, value: int) -> int:
        probe = _Current.probe
        assert probe is not None
        return await probe.body(run, index, value)

    step_fn = DBOS.step(**step_options)(bench_step)
    steps = workload.steps
    if workload.record_latency:
        clock = time.perf_counter

        async def chain(run: int) -> int:
            probe = _Current.probe
            assert probe is not None
            latencies = probe.step_latencies
            value = 0
            for index in range(steps):
                t0 = clock()
                value = await step_fn(run, index, value)
                latencies.append(clock() - t0)
            return value

    else:

        async def chain(run: int) -> int:
            value = 0
            for index in range(steps):
                value = await step_fn(run, index, value)
            return value

    registered = DBOS.workflow(name=f"bench.{workload.name}")(chain)
    _BUILT[workload.name] = registered
    return registered


class DbosSide:
    """Runs workloads on DBOS Transact with a SQLite (or PostgreSQL) system database."""

    name = NAME

    def __init__(self, store: str, workdir: Path, *, database_url: str | None = None) -> None:
        self.store = store
        self.workdir = workdir
        self.database_url = database_url
        self._dbos = _import_dbos()
        self._counter = 0
        self._databases: list[str] = []
        self._log_handlers: list[logging.Handler] = []

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            return version("dbos")
        except PackageNotFoundError:
            return "unknown"

    def unavailable(self) -> str | None:
        if self._dbos is None:
            return MISSING
        if self.store == "memory":
            return "skipped: DBOS has no in-memory store (compare on --store sqlite)"
        if self.store == "postgres" and not self.database_url:
            return "skipped: no PostgreSQL URL for DBOS"
        return None

    def describe(self) -> dict[str, Any]:
        if self.store == "sqlite":
            return {"store": "sqlite", "journal_mode": "delete", "synchronous": "FULL"}
        return {"store": self.store}

    def _url(self) -> str:
        if self.store == "sqlite":
            self._counter += 1
            directory = self.workdir / f"dbos-{self._counter}"
            directory.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{directory / 'dbos.sqlite'}"
        assert self.database_url is not None
        # A fresh database for every launch, as SQLite gets a fresh file: DBOS would
        # otherwise find the runs of the warm-up (same workflow ids) and return them.
        self._counter += 1
        name = f"dbos_bench_{os.getpid()}_{self._counter}"
        parts = urllib.parse.urlsplit(self.database_url)
        _admin(self.database_url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        self._databases.append(name)
        return urllib.parse.urlunsplit(parts._replace(path="/" + name))

    def _launch(self, workload: Workload) -> Any:
        dbos = self._dbos
        _workflow_for(dbos, workload)
        config = {
            "name": "aruntime-bench",
            "system_database_url": self._url(),
            "log_level": "WARNING",
        }
        dbos.DBOS(config=config)
        dbos.DBOS.launch()
        # DBOS logs a warning with a traceback for every retried attempt; send it where
        # aruntime's warnings go (nowhere) so that the terminal stays readable. It is
        # still formatted, as in a real application.
        dbos_logger = logging.getLogger("dbos")
        for handler in list(dbos_logger.handlers):
            if isinstance(handler, logging.StreamHandler):
                dbos_logger.removeHandler(handler)
                self._log_handlers.append(handler)
        if not any(isinstance(h, logging.NullHandler) for h in dbos_logger.handlers):
            dbos_logger.addHandler(logging.NullHandler())
        return dbos.DBOS

    def _destroy(self) -> None:
        self._dbos.DBOS.destroy(destroy_registry=False)
        _Current.probe = None
        if self.database_url is not None:
            while self._databases:
                name = self._databases.pop()
                _admin(self.database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    async def _start(self, dbos_cls: Any, wf: Any, run: int) -> Any:
        with self._dbos.SetWorkflowID(run_id(run)):
            return await dbos_cls.start_workflow_async(wf, run)

    async def closed_loop(self, workload: Workload, progress: Progress | None) -> LoopResult:
        probe = Probe(workload)
        wf = _workflow_for(self._dbos, workload)
        dbos_cls = self._launch(workload)
        _Current.probe = probe
        try:

            async def call(run: int) -> Any:
                handle = await self._start(dbos_cls, wf, run)
                return await handle.get_result()

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
        finally:
            self._destroy()
            probe.close()
        return LoopResult(
            elapsed=elapsed,
            cpu=cpu,
            runs=workload.runs,
            steps=workload.total_steps,
            events=None,
            wrong_results=wrong,
            probe=probe,
        )

    async def scale(
        self, workload: Workload, *, trace: bool, progress: Progress | None
    ) -> ScaleResult:
        import tracemalloc  # noqa: PLC0415

        probe = Probe(workload)
        wf = _workflow_for(self._dbos, workload)
        dbos_cls = self._launch(workload)
        _Current.probe = probe
        try:
            gc.collect()
            if trace:
                tracemalloc.start()
            traced0 = tracemalloc.get_traced_memory()[0] if trace else 0
            rss0 = rss_bytes()
            t0 = time.perf_counter()
            handles: list[Any] = []
            numbers = iter(range(workload.runs))

            async def starter() -> None:
                for run in numbers:
                    handles.append(await self._start(dbos_cls, wf, run))

            async with asyncio.TaskGroup() as group:
                for _ in range(min(100, workload.runs)):
                    group.create_task(starter())
            # DBOS retries sleep in memory right after the body raised: a run is suspended
            # once its body has failed. Give the last ones a moment to reach their sleep.
            while probe.suspended < workload.runs:
                if progress is not None:
                    progress.set(probe.suspended)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - t0
            gc.collect()
            rss = rss_bytes() - rss0
            traced: int | None = None
            peak: int | None = None
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                traced = current - traced0
                tracemalloc.stop()
            suspended = probe.suspended
        finally:
            self._destroy()
            probe.close()
        return ScaleResult(
            runs=workload.runs,
            suspended=suspended,
            seconds_to_suspend=elapsed,
            rss_bytes=rss,
            traced_bytes=traced,
            traced_peak_bytes=peak,
        )


def _admin(url: str, *statements: str) -> None:
    """Run statements outside a transaction on the server of `url` (a thread of its own,
    so that it works from inside the running event loop)."""

    async def run() -> None:
        import asyncpg  # noqa: PLC0415 - only for DBOS on PostgreSQL

        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()
