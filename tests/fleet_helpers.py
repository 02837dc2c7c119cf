"""Worker processes on one PostgreSQL schema, and the audit of what they wrote.

`audit` checks, from the database alone, the property fencing exists for: no append was
committed by a worker whose claim had been taken over. Along each run's log the epochs
never go down; each row's writer is the worker that claimed the row's epoch; and each
row of an epoch was written before the next claim of the run (both times are
`clock_timestamp()` taken under the run's row lock, so they order the two).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from pg_helpers import PG_URL

HERE = Path(__file__).parent

FAST_LEASES = {"lease": 1.0, "heartbeat": 0.25, "poll_interval": 0.1, "idle_release": 1.0}
"""Lease settings that make the fleet tests quick: a dead worker's runs move in ~1 s."""


class FleetWorker:
    """An `aruntime worker --import <module>` child process (`fleet_jobs` by default)."""

    def __init__(self, url: str, directory: Path, name: str, module: str = "fleet_jobs") -> None:
        self.name = name
        self.log = directory / f"worker-{name}.log"
        self._err = self.log.open("w")
        env = {**os.environ, "ARUNTIME_LEDGER": str(directory)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aruntime",
                "worker",
                "--db",
                url,
                "--import",
                module,
                "--grace",
                "0",
            ],
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            env=env,
        )
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, schema: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a start-up limit
        """Wait until the worker has registered in the fleet."""
        deadline = time.monotonic() + timeout
        conn = await asyncpg.connect(PG_URL)
        try:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    found = await conn.fetchval(
                        f"SELECT count(*) FROM {schema}.workers WHERE pid = $1", self.pid
                    )
                except asyncpg.UndefinedTableError:
                    found = 0  # no worker has created the schema yet
                if found:
                    return
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        raise AssertionError(f"worker {self.name} did not start: {self.log.read_text()}")

    def kill(self) -> None:
        if self.stopped:
            self.cont()
        self.proc.kill()
        self.proc.wait(10)
        self._err.close()

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def terminate(self) -> int:
        if self.stopped:
            self.cont()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._err.close()
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Audit:
    """What the database says the fleet did."""

    runs: int = 0
    events: int = 0
    claims: int = 0
    takeovers: int = 0
    """Claims of a run by another worker than the one that held the epoch before."""
    violations: list[str] = field(default_factory=list)


async def audit(schema: str) -> Audit:
    """Check the fencing property over every run of `schema`."""
    conn = await asyncpg.connect(PG_URL)
    try:
        found = Audit()
        found.runs = await conn.fetchval(f"SELECT count(*) FROM {schema}.runs")
        found.events = await conn.fetchval(f"SELECT count(*) FROM {schema}.events")
        found.claims = await conn.fetchval(f"SELECT count(*) FROM {schema}.claims")
        found.takeovers = await conn.fetchval(
            f"""SELECT count(*) FROM (
                SELECT worker, lag(worker) OVER (PARTITION BY run_id ORDER BY epoch) AS before
                FROM {schema}.claims) c WHERE before IS NOT NULL AND before <> worker"""
        )
        backwards = await conn.fetch(
            f"""SELECT run_id, sequence, epoch, before FROM (
                SELECT run_id, sequence, epoch,
                       lag(epoch) OVER (PARTITION BY run_id ORDER BY sequence) AS before
                FROM {schema}.events) e WHERE epoch < before LIMIT 20"""
        )
        found.violations += [
            f"run {r['run_id']}: event {r['sequence']} written under epoch {r['epoch']} "
            f"after an event of epoch {r['before']}"
            for r in backwards
        ]
        strangers = await conn.fetch(
            f"""SELECT e.run_id, e.sequence, e.epoch, e.writer, c.worker
                FROM {schema}.events e JOIN {schema}.claims c USING (run_id, epoch)
                WHERE e.writer IS DISTINCT FROM c.worker LIMIT 20"""
        )
        found.violations += [
            f"run {r['run_id']}: event {r['sequence']} of epoch {r['epoch']} written by "
            f"{r['writer']}, but {r['worker']} claimed that epoch"
            for r in strangers
        ]
        late = await conn.fetch(
            f"""SELECT e.run_id, e.sequence, e.epoch, e.writer, e.written_at, n.at AS next_at
                FROM {schema}.events e
                JOIN LATERAL (SELECT min(at) AS at FROM {schema}.claims c
                              WHERE c.run_id = e.run_id AND c.epoch > e.epoch) n ON true
                WHERE n.at IS NOT NULL AND e.written_at >= n.at LIMIT 20"""
        )
        found.violations += [
            f"run {r['run_id']}: event {r['sequence']} of epoch {r['epoch']} written by "
            f"{r['writer']} at {r['written_at']}, after the next claim at {r['next_at']}"
            for r in late
        ]
        return found
    finally:
        await conn.close()


async def writers_after(schema: str, writer_pid: int, since: float) -> int:
    """How many events a worker process wrote after the epoch time `since`."""
    conn = await asyncpg.connect(PG_URL)
    try:
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.events WHERE split_part(writer, ':', 2) = $1 "
            "AND written_at > to_timestamp($2)",
            str(writer_pid),
            since,
        )
        return count
    finally:
        await conn.close()


async def held_by(schema: str, pid: int) -> list[str]:
    """The runs a worker process holds a live lease on."""
    conn = await asyncpg.connect(PG_URL)
    try:
        rows = await conn.fetch(
            f"SELECT run_id FROM {schema}.runs WHERE split_part(owner, ':', 2) = $1 "
            "AND lease_until > now()",
            str(pid),
        )
        return [row[0] for row in rows]
    finally:
        await conn.close()
