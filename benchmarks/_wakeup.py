"""The wakeup workload: how soon news crosses from one process to another through SQLite.

An owner process (`python -m benchmarks._wakeup owner DB`) runs a `Runtime` on the file;
the measuring process is a `Client` of it. For each of N samples the client posts a
start of a one-step run and waits for its result, then, in a second phase, starts N runs
that sleep durably and cancels each once it is asleep. From the records on both sides:

* `result_*_ms`: the client's `result()` returned this long after the owner made the
  run's final event (`RunCompleted.at`, taken just before its commit);
* `start_pickup_*_ms`: the owner applied a start (`RunStarted.at`) this long after the
  client posted it (`Request.at`, taken just before its commit);
* `cancel_pickup_*_ms`: likewise for a cancel (`CancelRequested.at`).

Both processes read the same system clock. Targets: p99 at most 50 ms for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from aruntime import Client, RunCancelledError, Runtime, sleep, step, workflow
from aruntime.events import CancelRequested, RunCompleted, RunStarted
from benchmarks._harness import configure_logging, fresh_sqlite_file, percentile, ready_child

__all__ = ["measure"]


@step(name="wakeup.add")
async def add_one(x: int) -> int:
    return x + 1


@workflow(name="wakeup.echo")
async def echo(x: int) -> int:
    return await add_one(x)


@workflow(name="wakeup.sleeper")
async def sleeper() -> None:
    await sleep(3600)


def _url(db: str) -> str:
    """A store URL as given, or the `sqlite:///` URL of a file's path."""
    return db if "://" in db else f"sqlite:///{db}"


async def _own(db: str) -> None:
    async with Runtime(_url(db), workflows=[echo, sleeper]):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _measure(db: Path | str, samples: int) -> dict[str, float]:
    results: list[float] = []
    starts: list[float] = []
    cancels: list[float] = []
    async with Client(_url(str(db))) as client:
        store = client.store
        for n in range(samples):
            asked = time.time()
            handle = await client.start(echo, n, run_id=f"e{n}")
            value = await handle.result(timeout=30)
            returned = time.time()
            assert value == n + 1, value
            events = await store.events_for(handle.run_id)
            started, completed = events[0], events[-1]
            assert isinstance(started, RunStarted), started
            assert isinstance(completed, RunCompleted), completed
            results.append(returned - completed.at)
            starts.append(started.at - asked)
        for n in range(samples):
            run_id = f"s{n}"
            await client.start(sleeper, run_id=run_id)
            while True:  # until the run sleeps in the owner
                seen = store.change_counter()
                info = await store.get_run(run_id)
                if info is not None and (await client.state(run_id)).sleeps:
                    break
                await store.wait_changed(seen, 1.0)
            asked = time.time()
            await client.cancel(run_id, reason="measured")
            with contextlib.suppress(RunCancelledError):
                await client.handle(run_id).result(timeout=30)
            requested = next(
                e for e in await store.events_for(run_id) if isinstance(e, CancelRequested)
            )
            cancels.append(requested.at - asked)
    figures: dict[str, float] = {"samples": float(samples)}
    for name, values in (("result", results), ("start_pickup", starts), ("cancel_pickup", cancels)):
        millis = [v * 1000 for v in values]
        figures[f"{name}_p50_ms"] = percentile(millis, 50)
        figures[f"{name}_p99_ms"] = percentile(millis, 99)
        figures[f"{name}_max_ms"] = max(millis)
    return figures


def measure(
    samples: int, *, workdir: Path, timeout: float = 600, url: str | None = None
) -> dict[str, float]:
    """One measurement: an owner process on a fresh file (or the store `url`, a fresh
    PostgreSQL schema), this process its client."""
    workdir.mkdir(parents=True, exist_ok=True)
    db: Path | str = workdir / "wakeup.db"
    if url is not None:
        db = url
    else:
        fresh_sqlite_file(db)
    with ready_child("benchmarks._wakeup", "owner", str(db)):
        return asyncio.run(asyncio.wait_for(_measure(db, samples), timeout))


if __name__ == "__main__":
    configure_logging()
    if sys.argv[1] == "owner":
        asyncio.run(_own(sys.argv[2]))
    else:
        print(json.dumps(measure(int(sys.argv[1]), workdir=Path(sys.argv[2]))))
