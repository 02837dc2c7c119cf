"""The PostgreSQL fleet: throughput against the number of workers, and takeover time.

    python -m benchmarks fleet [--workers 1,2,4] [--n 1000] [--steps 10] [--repeat 3]
                               [--chart fleet.png] [--postgres-url URL] [--json]
    python -m benchmarks takeover [--n 100] [--repeat 3] [--postgres-url URL] [--json]

`fleet`: W `aruntime worker` processes on a fresh schema; once all have registered, the
benchmark writes N runs of S trivial steps into the database at once (created unowned,
as a Client's starts are) and times until the last one completed: steps/s = N x S /
that time. The workers claim their fair shares of the runs and group-commit their steps.
The repeats alternate the worker counts (1, 2, 4, 1, 2, 4, ...).

`takeover`: two workers with the default lease settings hold N long-running runs
between them; one is SIGKILLed, and for each run it held the figure is the time from the
kill to the other worker's claim, both read on the database's clock (`clock_timestamp()`
just before the kill, `claims.at`). It is about the lease less the time since the killed
worker's last heartbeat, plus the claim loop's poll.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from aruntime.events import RunStarted
from aruntime.store import OwnerInfo
from aruntime.store.postgres import PostgresConfig, PostgresStore
from benchmarks import report
from benchmarks._aruntime_side import DEFAULT_POSTGRES
from benchmarks._harness import REPO, machine, note, percentile, spread

__all__ = ["main"]

WORKFLOW = "benchmarks._fleet_jobs.chain"
LONG_WORKFLOW = "benchmarks._fleet_jobs.long_chain"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("workload", choices=("fleet", "takeover"))
    parser.add_argument("--workers", default="1,2,4", help="worker counts (fleet)")
    parser.add_argument("--n", type=int, help="runs (fleet: 1000, takeover: 100)")
    parser.add_argument("--steps", type=int, default=10, help="steps per run (fleet)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--chart", type=Path, help="PNG of steps/s against workers (fleet)")
    parser.add_argument("--json", action="store_true", help="print the JSON line only")
    return parser.parse_args(argv)


class _Workers:
    """`aruntime worker --import benchmarks._fleet_jobs` processes on one schema."""

    def __init__(self, url: str, count: int, directory: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for index in range(count):
            log = (directory / f"worker-{index}.log").open("w")
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "aruntime",
                        "worker",
                        "--db",
                        url,
                        "--import",
                        "benchmarks._fleet_jobs",
                        "--grace",
                        "0",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )

    async def ready(self, conn: asyncpg.Connection, schema: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                count = await conn.fetchval(f"SELECT count(*) FROM {schema}.workers")
            except asyncpg.UndefinedTableError:
                count = 0
            if count >= len(self.procs):
                return
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a worker exited at start-up")
            await asyncio.sleep(0.05)
        raise RuntimeError("the workers did not start")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _create_runs(url: str, schema: str, workflow: str, runs: int, steps: int) -> None:
    """Write `runs` new runs at once, unowned (a store that runs no workflow)."""
    store = PostgresStore.from_url(url)
    assert store.schema == schema
    async with store:
        await store.set_owner_info(OwnerInfo(pid=os.getpid(), workflows=()))
        now = time.time()
        await asyncio.gather(
            *(
                store.append(
                    f"run-{run:06d}",
                    [
                        RunStarted(
                            sequence=1,
                            at=now,
                            run_id=f"run-{run:06d}",
                            workflow=workflow,
                            args=json.dumps([[run, steps], {}]),
                        )
                    ],
                    0,
                )
                for run in range(runs)
            )
        )
        await store.set_owner_info(None)


async def _drop(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def _fleet_once(base: str, workers: int, runs: int, steps: int, directory: Path) -> float:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    conn = await asyncpg.connect(base)
    fleet = _Workers(url, workers, directory)
    try:
        await fleet.ready(conn, schema)
        began = time.perf_counter()
        await _create_runs(url, schema, WORKFLOW, runs, steps)
        while True:
            done = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.runs WHERE status = 'completed'"
            )
            if done >= runs:
                break
            if time.perf_counter() - began > 600:
                raise RuntimeError(f"only {done} of {runs} runs completed in 600 s")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - began
        wrong = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.events WHERE type = 'RunCompleted' "
            f'AND data <> \'{{"result":"{steps}"}}\''
        )
        if wrong:
            raise RuntimeError(f"{wrong} runs completed with a wrong result")
        return runs * steps / elapsed
    finally:
        fleet.stop()
        await _drop(conn, schema)
        await conn.close()


async def _takeover_once(base: str, runs: int, directory: Path) -> list[float]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    conn = await asyncpg.connect(base)
    fleet = _Workers(url, 2, directory)
    try:
        await fleet.ready(conn, schema)
        await _create_runs(url, schema, LONG_WORKFLOW, runs, 0)
        victim = fleet.procs[0]
        while True:  # both hold runs, all runs held
            rows = await conn.fetch(
                f"SELECT split_part(owner, ':', 2) AS pid, count(*) FROM {schema}.runs "
                "WHERE owner IS NOT NULL GROUP BY 1"
            )
            held = {int(r["pid"]): r["count"] for r in rows}
            if len(held) == 2 and sum(held.values()) == runs:
                break
            await asyncio.sleep(0.05)
        # Let the heartbeats run as usual; kill at a random point of the heartbeat cycle.
        await asyncio.sleep(1.0 + random.uniform(0, PostgresConfig().heartbeat))
        lost = [
            r[0]
            for r in await conn.fetch(
                f"SELECT run_id FROM {schema}.runs WHERE split_part(owner, ':', 2) = $1",
                str(victim.pid),
            )
        ]
        killed_at = await conn.fetchval("SELECT clock_timestamp()")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        while True:
            rows = await conn.fetch(
                f"SELECT run_id, min(at) AS at FROM {schema}.claims "
                "WHERE run_id = ANY($1::text[]) AND at > $2 GROUP BY run_id",
                lost,
                killed_at,
            )
            if len(rows) == len(lost):
                return [(r["at"] - killed_at).total_seconds() for r in rows]
            await asyncio.sleep(0.05)
    finally:
        fleet.stop()
        await _drop(conn, schema)
        await conn.close()


def _fleet(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    counts = [int(c) for c in args.workers.split(",")]
    runs = args.n or 1000
    per_count: dict[int, list[float]] = {c: [] for c in counts}
    for repeat in range(args.repeat):
        for count in counts:
            rate = asyncio.run(_fleet_once(args.postgres_url, count, runs, args.steps, directory))
            per_count[count].append(rate)
            if not args.json:
                note(f"repeat {repeat + 1}: {count} workers: {rate:,.0f} steps/s")
    figures = {str(c): spread(v) for c, v in per_count.items()}
    rep = {
        "workload": "fleet",
        "description": f"{runs} runs x {args.steps} trivial steps written at once, run by W "
        "aruntime worker processes on one PostgreSQL database",
        "config": {"runs": runs, "steps": args.steps, "repeat": args.repeat, **_config()},
        "steps_per_s_by_workers": figures,
    }
    if not args.json:
        print(f"fleet: {runs} runs x {args.steps} steps, steps/s, median [min .. max]")
        for count in counts:
            f = figures[str(count)]
            print(f"  {count} workers: {f['median']:,.0f} [{f['min']:,.0f} .. {f['max']:,.0f}]")
    if args.chart is not None:
        _chart(args.chart, counts, figures)
    return rep


def _takeover(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    runs = args.n or 100
    seconds: list[float] = []
    for repeat in range(args.repeat):
        found = asyncio.run(_takeover_once(args.postgres_url, runs, directory))
        seconds += found
        if not args.json:
            p50 = percentile(found, 50)
            note(f"repeat {repeat + 1}: {len(found)} runs taken over, p50 {p50:.2f}s")
    defaults = PostgresConfig()
    t: dict[str, float] = {
        "p50": percentile(seconds, 50),
        "p99": percentile(seconds, 99),
        "min": min(seconds),
        "max": max(seconds),
        "runs": len(seconds),
    }
    rep: dict[str, Any] = {
        "workload": "takeover",
        "description": "seconds from a worker's SIGKILL to the other worker's claim of each "
        "run it held (database clock), default lease settings",
        "config": {
            "runs": runs,
            "repeat": args.repeat,
            "lease_s": defaults.lease,
            "heartbeat_s": defaults.heartbeat,
            "poll_interval_s": defaults.poll_interval,
            **_config(),
        },
        "takeover_s": t,
    }
    if not args.json:
        print(
            f"takeover after SIGKILL (lease {defaults.lease:g}s, heartbeat "
            f"{defaults.heartbeat:g}s): p50 {t['p50']:.2f}s, p99 {t['p99']:.2f}s, "
            f"min {t['min']:.2f}s, max {t['max']:.2f}s over {t['runs']} runs"
        )
    return rep


def _config() -> dict[str, Any]:
    return {
        "store": "postgres",
        "machine": machine(),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
    }


def _chart(path: Path, counts: list[int], figures: dict[str, Any]) -> None:
    plt = report._pyplot()
    if plt is None:
        note("no chart: matplotlib is not installed (pip install -r benchmarks/requirements.txt)")
        return
    medians = [figures[str(c)]["median"] for c in counts]
    lows = [figures[str(c)]["median"] - figures[str(c)]["min"] for c in counts]
    highs = [figures[str(c)]["max"] - figures[str(c)]["median"] for c in counts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(counts, medians, yerr=[lows, highs], marker="o", capsize=4)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("steps/s (median, min-max)")
    ax.set_xticks(counts)
    ax.set_ylim(bottom=0)
    ax.set_title("aruntime on PostgreSQL: throughput against workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="aruntime-fleet-") as tmp:
        rep = _fleet(args, Path(tmp)) if args.workload == "fleet" else _takeover(args, Path(tmp))
    print(json.dumps(rep))
    return 0
