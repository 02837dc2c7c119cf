"""The fleet's chaos test: four workers, random SIGKILL, SIGSTOP/SIGCONT and PostgreSQL
restarts, then checks from the database and the ledger of step bodies.

In the suite (`tests/test_chaos.py`) it runs for about a minute and a half. By hand, as
long as wanted, reproducing a failure from its seed:

    python tests/chaos.py --seconds 600 [--seed 1234] [--workers 4] [--no-restart]

What it checks, after every run ended:

* every run completed with the right result, every step of it recorded completed once;
* fencing: no append committed by a worker whose claim had been taken over (`audit`);
* no body attempt ran twice (an attempt's `StepStarted` is durable before its body, so a
  body cut short is followed by a new attempt, never the same one again), and every
  attempt beyond those the workload plans (a first attempt that fails on purpose) is
  explained: the attempt before it ran in a worker that was killed or frozen, or a
  PostgreSQL restart cut the connections;
* no run runnable and unclaimed for longer than a lease plus a margin, outside the
  windows where PostgreSQL was down.

Every choice (the workload, the actions and their timing) comes from one seed, printed
with the report; the same seed replays the same plan (the timing of the processes
themselves is the machine's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import asyncpg
from fleet_helpers import FleetWorker, audit
from fleet_jobs import chaos, expected_result, ledger_pids
from pg_helpers import PG_URL, new_schema, pg_url

from aruntime import Client
from aruntime.events import StepCompleted, op_identity
from aruntime.state import RunStatus, StepStatus

LEASE = 1.0
SETTINGS = {"lease": LEASE, "heartbeat": 0.25, "poll_interval": 0.1, "idle_release": 1.0}
MARGIN = 3.0
"""Seconds past a lease that a runnable run may wait for a claim (polls, a busy machine)."""


@dataclass
class Report:
    seed: int
    seconds: float = 0.0
    runs: int = 0
    steps: int = 0
    bodies: int = 0
    kills: int = 0
    freezes: int = 0
    restarts: int = 0
    takeovers: int = 0
    claims: int = 0
    extra_attempts: int = 0
    explained_by_kill_or_freeze: int = 0
    explained_by_restart: int = 0
    longest_unclaimed: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"chaos seed={self.seed}: {self.runs} runs, {self.steps} steps, {self.bodies} "
            f"bodies in {self.seconds:.0f}s; {self.kills} SIGKILLs, {self.freezes} SIGSTOPs, "
            f"{self.restarts} PostgreSQL restarts; {self.claims} claims, {self.takeovers} "
            f"takeovers; {self.extra_attempts} extra attempts ({self.explained_by_kill_or_freeze}"
            f" after a kill or freeze, {self.explained_by_restart} after a restart); longest "
            f"unclaimed {self.longest_unclaimed:.2f}s; {len(self.problems)} problems"
        )


def can_restart_postgres() -> bool:
    """Whether this process may restart the local server (root, pg_ctlcluster, local URL)."""
    local = "127.0.0.1" in PG_URL or "localhost" in PG_URL
    return (
        local
        and os.geteuid() == 0
        and shutil.which("pg_ctlcluster") is not None
        and Path("/etc/postgresql").is_dir()
        and os.environ.get("ARUNTIME_CHAOS_PG_RESTART", "1") != "0"
    )


def restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=60,
    )


class Chaos:
    def __init__(
        self, seed: int, seconds: float, directory: Path, workers: int, restarts: bool
    ) -> None:
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.seconds = seconds
        self.directory = directory
        self.count = workers
        self.restarts = restarts
        self.schema = new_schema()
        self.url = pg_url(self.schema, **SETTINGS)
        self.workers: list[FleetWorker] = []
        self.disturbed: set[int] = set()
        self.down: list[tuple[float, float]] = []
        """Windows (monotonic) when PostgreSQL was restarting, widened by a lease."""
        self.plans: dict[str, tuple[int, float, int, float, int]] = {}
        self.unclaimed: dict[str, float] = {}
        self.frozen: dict[int, float] = {}

    def _worker(self) -> FleetWorker:
        worker = FleetWorker(self.url, self.directory, f"w{len(self.workers)}")
        self.workers.append(worker)
        return worker

    async def run(self) -> Report:
        began = time.monotonic()
        try:
            for _ in range(self.count):
                self._worker()
            for worker in self.workers:
                await worker.ready(self.schema)
            async with Client(self.url) as client:
                monitor = asyncio.create_task(self._monitor())
                try:
                    await self._storm(client, began)
                    for pid in list(self.frozen):
                        self._thaw(pid)
                    await self._finish(client)
                finally:
                    monitor.cancel()
                    with contextlib.suppress(BaseException):
                        await monitor
                await self._check(client)
        finally:
            for worker in self.workers:
                if worker.alive():
                    worker.kill()
        self.report.seconds = time.monotonic() - began
        return self.report

    async def _start_runs(self, client: Client, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            run_id = f"c{len(self.plans)}"
            steps = rng.randint(3, 8)
            plan = (
                steps,
                rng.choice((0.05, 0.1, 0.2, 0.3)),
                rng.choice((0, 0, rng.randint(1, steps))),
                rng.uniform(0.5, 2.5),
                rng.choice((0, 0, 2, 3)),
            )
            self.plans[run_id] = plan
            await client.start(chaos, *plan, run_id=run_id)

    async def _storm(self, client: Client, began: float) -> None:
        rng = self.rng
        restart_after = began + self.seconds * rng.uniform(0.3, 0.6)
        await self._start_runs(client, 30)
        while time.monotonic() - began < self.seconds:
            active = await client.store.list_runs(status=RunStatus.RUNNING)
            if len(active) < 30:
                await self._start_runs(client, 30 - len(active))
            for pid, until in list(self.frozen.items()):
                if time.monotonic() >= until:
                    self._thaw(pid)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            action = rng.choice(("kill", "kill", "freeze", "freeze", "none"))
            live = [w for w in self.workers if w.alive() and not w.stopped]
            if self.restarts and self.report.restarts == 0 and time.monotonic() > restart_after:
                await self._restart()
            elif action == "kill" and live:
                victim = rng.choice(live)
                victim.kill()
                self.disturbed.add(victim.pid)
                self.report.kills += 1
                new = self._worker()
                await new.ready(self.schema)
            elif action == "freeze" and len(live) > 2:
                victim = rng.choice(live)
                victim.freeze()
                self.disturbed.add(victim.pid)
                self.frozen[victim.pid] = time.monotonic() + rng.uniform(1.5 * LEASE, 4 * LEASE)
                self.report.freezes += 1

    def _thaw(self, pid: int) -> None:
        for worker in self.workers:
            if worker.pid == pid and worker.alive():
                worker.cont()
        self.frozen.pop(pid, None)

    async def _restart(self) -> None:
        began = time.monotonic()
        await asyncio.to_thread(restart_postgres)
        self.report.restarts += 1
        self.down.append((began, time.monotonic() + LEASE + MARGIN))

    async def _finish(self, client: Client) -> None:
        for run_id, plan in self.plans.items():
            try:
                result: object = await client.handle(run_id).result(timeout=180)
            except Exception as exc:
                self.report.problems.append(f"run {run_id}: {type(exc).__name__}: {exc}")
                continue
            if result != expected_result(plan[0]):
                self.report.problems.append(f"run {run_id}: result {result!r}")

    async def _monitor(self) -> None:
        """Watch for runs that are runnable and nobody claims."""
        while True:
            await asyncio.sleep(0.25)
            try:
                conn = await asyncpg.connect(PG_URL, timeout=2)
                try:
                    rows = await conn.fetch(
                        f"SELECT run_id FROM {self.schema}.runs WHERE status = 'running' "
                        "AND parked_reason IS NULL "
                        "AND (owner IS NULL OR lease_until < now()) "
                        "AND (due_at IS NULL OR due_at < extract(epoch FROM now()))"
                    )
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                continue  # the server restarts
            now = time.monotonic()
            seen = {row[0] for row in rows}
            for run_id in list(self.unclaimed):
                if run_id not in seen:
                    del self.unclaimed[run_id]
            for run_id in seen:
                since = self.unclaimed.setdefault(run_id, now)
                if any(start <= since <= end or start <= now <= end for start, end in self.down):
                    continue
                waited = now - since
                self.report.longest_unclaimed = max(self.report.longest_unclaimed, waited)
                if waited > LEASE + MARGIN:
                    self.report.problems.append(
                        f"run {run_id} runnable and unclaimed for {waited:.1f}s"
                    )
                    self.unclaimed[run_id] = now  # once per stretch

    async def _check(self, client: Client) -> None:
        report = self.report
        found = await audit(self.schema)
        report.problems += found.violations
        report.runs, report.claims, report.takeovers = found.runs, found.claims, found.takeovers
        bodies = ledger_pids(self.directory)
        report.bodies = sum(len(pids) for pids in bodies.values())
        for key, pids in bodies.items():
            if len(pids) > 1:
                report.problems.append(f"body {key} ran {len(pids)} times (pids {pids})")
        for run_id, plan in self.plans.items():
            events = await client.store.events_for(run_id)
            completed: dict[str, int] = {}
            for event in events:
                if isinstance(event, StepCompleted):
                    identity = op_identity(event.branch, event.position)
                    completed[identity] = completed.get(identity, 0) + 1
            state = await client.state(run_id)
            report.steps += len(state.steps)
            if len(state.steps) != plan[0]:
                report.problems.append(f"run {run_id}: {len(state.steps)} steps of {plan[0]}")
            ordered = sorted(state.steps.items(), key=lambda item: item[1].position)
            for number, (identity, step) in enumerate(ordered, start=1):
                if step.status is not StepStatus.COMPLETED or completed.get(identity) != 1:
                    report.problems.append(
                        f"run {run_id}: step {identity} {step.status}, completed "
                        f"{completed.get(identity, 0)} times"
                    )
                planned = 2 if plan[4] and number % plan[4] == 0 else 1
                self._explain(run_id, identity, step.attempts, planned, bodies)

    def _explain(
        self,
        run_id: str,
        identity: str,
        attempts: int,
        planned: int,
        bodies: dict[tuple[str, str, int], list[int]],
    ) -> None:
        """Count the attempts beyond the planned ones and what explains each."""
        report = self.report
        for attempt in range(2, attempts + 1):
            before = bodies.get((run_id, identity, attempt - 1), [])
            planned_failure = attempt <= planned and bool(before)
            if planned_failure:
                continue
            report.extra_attempts += 1
            if any(pid in self.disturbed for pid in before) or not before:
                report.explained_by_kill_or_freeze += 1
            elif report.restarts:
                report.explained_by_restart += 1
            else:
                report.problems.append(
                    f"run {run_id}: step {identity} attempt {attempt} is not explained "
                    f"(attempt {attempt - 1} ran in {before}, which nothing disturbed)"
                )


async def run_chaos(
    seed: int, seconds: float, directory: Path, *, workers: int = 4, restarts: bool = True
) -> Report:
    return await Chaos(seed, seconds, directory, workers, restarts).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-restart", action="store_true")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    with tempfile.TemporaryDirectory(prefix="aruntime-chaos-") as directory:
        report = asyncio.run(
            run_chaos(
                seed,
                args.seconds,
                Path(directory),
                workers=args.workers,
                restarts=not args.no_restart and can_restart_postgres(),
            )
        )
    from pg_helpers import drop_created_schemas

    drop_created_schemas()
    print(report.summary())
    for problem in report.problems[:50]:
        print("  " + problem)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
