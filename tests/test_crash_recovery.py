"""Crash recovery under real SIGKILLs: a child process is killed again and again on one file.

The child (`tests/crash_child.py`) runs a workload on an SQLite file and writes a ledger of
every step body it runs. The test kills it with SIGKILL at moments drawn from a seed,
restarts it on the same file each time, lets the last one finish, and then checks the file
and the ledger the way a Jepsen checker checks a history: no run and no completed step is
lost, nothing unexpected happened, and the bodies that ran more than once (allowed, at
least once) are counted, each explained by a kill.

The seed fixes the workload and the kill plan; the moment a kill lands inside the child
depends on timing, so a failing seed reproduces the plan, not always the interleaving.
Run another seed with `ARUNTIME_CRASH_SEED=123 pytest tests/test_crash_recovery.py -s`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crash_child import (
    MAX_ATTEMPTS,
    STEP_NAME,
    WORKFLOW_NAME,
    expected_result,
    fails_first,
    run_ids,
    step_value,
)

import aruntime
from aruntime.events import Event, RunCompleted, StepCompleted, StepFailed, StepStarted
from aruntime.state import RunStatus, StepStatus
from aruntime.store import RunInfo
from aruntime.store.sqlite import SqliteConfig, SqliteStore

CHILD = Path(__file__).with_name("crash_child.py")
SEED_ENV = "ARUNTIME_CRASH_SEED"
SEEDS = (
    [int(os.environ[SEED_ENV])]
    if os.environ.get(SEED_ENV)
    else [11, 29, 47, 83, 101, 131, 173, 211]
)
"""One test per seed; the environment variable replaces the defaults."""

RUNS = (20, 120)
STEPS = (8, 25)
"""Fewest and most runs and steps per run, drawn from the seed."""
KILLS = (4, 6)
"""Fewest and most kills per test, drawn from the seed."""
MIN_KILLS = 3
"""Kills per test that land mid-work, once the ledger has grown; the rest may not."""
CHILD_TIMEOUT = 60.0
"""Seconds one child may take; longer means a run is stuck."""
JSON = aruntime.JsonSerializer()

Key = tuple[str, int, int]
"""(run id, position, attempt): one attempt of one step."""


@dataclass(frozen=True)
class Plan:
    """The child's workload, all of it drawn from the seed."""

    seed: int
    runs: int
    steps: int
    fail_share: float = 0.25
    """Share of the steps whose attempt 1 fails."""
    retry_delay: float = 0.01
    """Seconds from a failed attempt to the next."""


# -- the child ---------------------------------------------------------------------------


def spawn(plan: Plan, db: Path, ledger: Path, errors: Path) -> subprocess.Popen[bytes]:
    """Start a child on `db`; it appends its output to `errors`."""
    command = [sys.executable, str(CHILD), "--db", str(db), "--ledger", str(ledger)]
    command += ["--runs", str(plan.runs), "--steps", str(plan.steps), "--seed", str(plan.seed)]
    command += ["--fail-share", str(plan.fail_share), "--retry-delay", str(plan.retry_delay)]
    with errors.open("ab") as sink:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """Kill the child if it still runs; its exit code."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def child_failure(code: int, errors: Path, what: str) -> str:
    tail = errors.read_text(errors="replace").strip().splitlines()[-30:]
    return f"{what}: the child exited with code {code}; its output ends:\n" + "\n".join(tail)


class Ledger:
    """Follows the ledger file as the child appends to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.lines = 0
        self.touched: set[tuple[str, str]] = set()
        """(run id, position) pairs whose body ran at least once."""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            run_id, position, _ = line.decode().split(" ")
            self.touched.add((run_id, position))
        self.lines += len(complete)


def read_ledger(path: Path) -> list[Key]:
    """Every line of the ledger; a malformed line fails the test."""
    text = path.read_text() if path.exists() else ""
    assert not text or text.endswith("\n"), f"the ledger ends with a torn line: {text[-40:]!r}"
    keys: list[Key] = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split(" ")
        assert len(parts) == 3, f"ledger line {number} is malformed: {line!r}"
        keys.append((parts[0], int(parts[1]), int(parts[2])))
    return keys


# -- the file ----------------------------------------------------------------------------


async def _read(db: Path) -> tuple[list[RunInfo], dict[str, list[Event]]]:
    store = SqliteStore(db, SqliteConfig(read_only=True))
    await store.open()
    try:
        infos = await store.list_runs()
        return infos, {i.run_id: await store.events_for(i.run_id) for i in infos}
    finally:
        await store.aclose()


def read_file(db: Path) -> tuple[list[RunInfo], dict[str, list[Event]]]:
    """The index of runs and every log, through a read-only store; none before the schema."""
    if not db.exists() or not tables(db):
        return [], {}  # a kill in the first child's start-up
    return asyncio.run(_read(db))


def tables(db: Path) -> list[str]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return ", ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


# -- the kills ---------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL and what the file held right after it."""

    trigger: str
    after: float
    """Seconds from the child's start to the kill."""
    lines: int
    """Ledger lines written when the kill landed."""
    logs: dict[str, list[Event]]
    completed: int = 0
    in_flight: int = 0
    retrying: int = 0

    def __post_init__(self) -> None:
        for events in self.logs.values():
            try:
                state = aruntime.replay(events)
            except aruntime.CorruptLogError:
                continue  # the checker names it at the end
            self.completed += state.status is RunStatus.COMPLETED
            self.in_flight += sum(s.status is StepStatus.RUNNING for s in state.steps.values())
            self.retrying += sum(s.status is StepStatus.RETRYING for s in state.steps.values())

    def __str__(self) -> str:
        return (
            f"{self.trigger:>13} after {self.after:5.2f} s, {self.lines:4} ledger lines: "
            f"{self.completed} runs completed, {self.in_flight} attempts in flight, "
            f"{self.retrying} retries pending"
        )


def kill_once(
    plan: Plan, db: Path, ledger: Path, errors: Path, rng: random.Random, *, trigger: str
) -> Kill | None:
    """Run a child until `trigger` fires and SIGKILL it; None if the child finished first.

    A "delay" kill comes a random time after the start (it may land in start-up or in the
    resumption of runs), a "ledger" kill once the ledger shows a random share of the
    remaining steps touched, plus up to 3 ms so that it is not tied to the moment of a write.
    """
    watch = Ledger(ledger)
    watch.poll()
    total = plan.runs * plan.steps
    remaining = total - len(watch.touched)
    if trigger == "delay":
        delay = rng.uniform(0.1, 0.9)
        target = len(watch.touched) + max(1, remaining // 2)
    else:
        delay = CHILD_TIMEOUT
        target = len(watch.touched) + max(1, int(remaining * rng.uniform(0.05, 0.4)))
    extra = rng.uniform(0.0, 0.003)
    started = time.monotonic()
    proc = spawn(plan, db, ledger, errors)
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed >= delay:
                break
            watch.poll()
            if len(watch.touched) >= target:
                trigger = f"ledger {len(watch.touched)}/{total}"
                time.sleep(extra)
                break
            time.sleep(0.001)
        stalled = time.monotonic() - started >= CHILD_TIMEOUT
        proc.send_signal(signal.SIGKILL)
        after = time.monotonic() - started
    finally:
        code = stop(proc)
    assert not stalled, child_failure(code, errors, f"seed {plan.seed}: STUCK before a kill")
    if code == 0:
        return None  # it finished before the trigger fired
    assert code == -signal.SIGKILL, child_failure(code, errors, f"seed {plan.seed}: before a kill")
    watch.poll()
    return Kill(trigger, after, watch.lines, read_file(db)[1])


# -- the checker ---------------------------------------------------------------------------


@dataclass
class History:
    """What the checker found: problems fail the test, duplicates are counted."""

    problems: list[str] = field(default_factory=list)
    cut_off: list[Key] = field(default_factory=list)
    """Attempts whose body ran but whose outcome never reached the log (killed mid-body)."""
    repeated: list[Key] = field(default_factory=list)
    """Attempts whose body ran more than once."""
    unrun: int = 0
    """Attempts cut off between their durable StepStarted and their body's ledger line."""
    executions: int = 0
    failed_attempts: int = 0

    @property
    def duplicates(self) -> int:
        return len(self.cut_off) + len(self.repeated)


@dataclass
class StepLog:
    """The events of the step at one position of one run, by attempt."""

    started: dict[int, StepStarted] = field(default_factory=dict)
    outcomes: dict[int, StepCompleted | StepFailed] = field(default_factory=dict)
    completions: int = 0


@dataclass
class Checker:
    """Holds the file and the ledger against each other and against the plan."""

    plan: Plan
    kills: int
    ran: Counter[Key]
    h: History = field(default_factory=History)

    def check(self, infos: list[RunInfo], logs: dict[str, list[Event]]) -> History:
        h, plan, problems = self.h, self.plan, self.h.problems
        h.executions = self.ran.total()
        planned = run_ids(plan.runs)
        if sorted(logs) != planned:
            problems.append(f"runs in the file {sorted(logs)} are not the planned {planned}")
        for info in infos:
            if info.status is not RunStatus.COMPLETED or info.parked:
                problems.append(f"{info.run_id}: index says {info.status}, parked={info.parked}")
            if info.version != len(logs.get(info.run_id, ())):
                problems.append(f"{info.run_id}: index version {info.version} != log length")
        for run_id in planned:
            self.check_run(run_id, logs.get(run_id, []))
        for key, count in sorted(self.ran.items()):
            run_id, position, attempt = key
            if run_id not in planned or not 1 <= position <= plan.steps:
                problems.append(f"UNEXPECTED ledger line {key} x{count}: no such step")
            elif not 1 <= attempt <= MAX_ATTEMPTS:
                problems.append(f"UNEXPECTED ledger line {key} x{count}: no such attempt")
        return h

    def check_run(self, run_id: str, events: list[Event]) -> None:
        problems = self.h.problems
        if not events:
            problems.append(f"{run_id}: LOST, no log at all")
            return
        sequences = [e.sequence for e in events]
        if sequences != list(range(1, len(events) + 1)):
            problems.append(f"{run_id}: sequences are not dense 1..n: {sequences}")
        try:
            workflow = aruntime.replay(events).workflow
        except aruntime.CorruptLogError as exc:
            problems.append(f"{run_id}: replay rejects the log: {exc}")
        else:
            if workflow != WORKFLOW_NAME:
                problems.append(f"{run_id}: workflow {workflow!r}")
        last = events[-1]
        if not isinstance(last, RunCompleted):
            problems.append(f"{run_id}: LOST, not completed; the log ends with {last}")
        elif JSON.loads(last.result) != expected_result(run_id, self.plan.steps):
            problems.append(f"{run_id}: wrong result {last.result}")
        steps = self.index(run_id, events)
        for position in range(1, self.plan.steps + 1):
            self.check_step(run_id, position, steps.get(position, StepLog()))
        for key in self.ran:
            if key[0] == run_id and key[2] not in steps.get(key[1], StepLog()).started:
                problems.append(f"UNEXPECTED {key}: the body ran without a durable StepStarted")
        cut_off = sum(1 for key in self.h.cut_off if key[0] == run_id)
        if cut_off > self.kills:  # a run runs one attempt at a time
            problems.append(f"{run_id}: {cut_off} attempts cut off by {self.kills} kills")

    def index(self, run_id: str, events: list[Event]) -> dict[int, StepLog]:
        """The step events of a run by position, checked for order."""
        problems = self.h.problems
        steps: dict[int, StepLog] = {}
        for e in events:
            if isinstance(e, StepStarted):
                log = steps.setdefault(e.position, StepLog())
                if e.step != STEP_NAME or e.attempt in log.started:
                    problems.append(f"{run_id}: unexpected {e}")
                log.started[e.attempt] = e
            elif isinstance(e, StepCompleted | StepFailed):
                log = steps.setdefault(e.position, StepLog())
                start = log.started.get(e.attempt)
                if start is None or start.sequence > e.sequence:
                    problems.append(f"{run_id}: {type(e).__name__} without an earlier start: {e}")
                if e.attempt in log.outcomes:
                    problems.append(f"{run_id}: a second outcome for one attempt: {e}")
                log.outcomes[e.attempt] = e
                if isinstance(e, StepCompleted):
                    log.completions += 1
                    if JSON.loads(e.result) != step_value(run_id, e.position):
                        problems.append(f"{run_id}: wrong step result {e}")
        return steps

    def check_step(self, run_id: str, position: int, log: StepLog) -> None:
        h, problems = self.h, self.h.problems
        if log.completions != 1:
            what = "LOST" if log.completions == 0 else "COMPLETED TWICE"
            problems.append(f"{run_id} step {position}: {what} ({log.completions}x)")
        attempts = sorted(log.started)
        if attempts != list(range(1, len(attempts) + 1)):
            problems.append(f"{run_id} step {position}: attempts {attempts} are not dense")
        duplicates = failed = 0
        for attempt in attempts:
            key = (run_id, position, attempt)
            recorded, count = log.outcomes.get(attempt), self.ran[key]
            if isinstance(recorded, StepFailed):
                failed += 1
                self.check_failure(key, recorded, log.started.get(attempt + 1))
            if recorded is not None and count == 0:
                problems.append(f"{key}: LOST, recorded {type(recorded).__name__} but never ran")
            if recorded is None:
                if attempt == attempts[-1]:
                    problems.append(f"{key}: started, never finished and never retried")
                if count == 0:
                    h.unrun += 1
                else:
                    h.cut_off.append(key)
                    duplicates += 1
            if count > 1:
                h.repeated.extend([key] * (count - 1))
                duplicates += count - 1
        h.failed_attempts += failed
        if duplicates > self.kills + failed:
            problems.append(
                f"{run_id} step {position}: {duplicates} duplicate executions, more than "
                f"{self.kills} kills + {failed} retries explain"
            )

    def check_failure(self, key: Key, failed: StepFailed, retried: StepStarted | None) -> None:
        """A recorded failure was planned, and its retry waited for the persisted due time."""
        run_id, position, attempt = key
        plan, problems = self.plan, self.h.problems
        planned = attempt == 1 and fails_first(plan.seed, run_id, position, plan.fail_share)
        if not planned or failed.error_type != "__main__.TransientError":
            problems.append(f"{key}: unplanned failure {failed}")
        if failed.retry_at is None:
            problems.append(f"{key}: a planned failure without retry: {failed}")
        elif retried is not None and retried.at < failed.retry_at:
            problems.append(f"{key}: retried at {retried.at}, before its due {failed.retry_at}")


def check_prefixes(kills: list[Kill], logs: dict[str, list[Event]]) -> list[str]:
    """Everything the file held after a kill is still there, unchanged, at the end."""
    problems = []
    for number, kill in enumerate(kills, 1):
        for run_id, events in kill.logs.items():
            if logs.get(run_id, [])[: len(events)] != events:
                problems.append(f"{run_id}: the log after kill {number} is not a prefix")
    return problems


# -- the tests ---------------------------------------------------------------------------


def finish(plan: Plan, db: Path, ledger: Path, errors: Path) -> None:
    """Run a child to its end; a hang or a failure fails the test with the child's output."""
    proc = spawn(plan, db, ledger, errors)
    try:
        code = proc.wait(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = stop(proc)
        pytest.fail(child_failure(code, errors, f"seed {plan.seed}: STUCK, the last child hung"))
    finally:
        stop(proc)
    assert code == 0, child_failure(code, errors, f"seed {plan.seed}: the last child")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
def test_runs_survive_repeated_sigkill_with_nothing_lost(seed: int, tmp_path: Path) -> None:
    """Killed 4-6 times, every run completes right; no step is lost or completed twice."""
    print(f"\ncrash test seed {seed} ({SEED_ENV}={seed} reruns it)")
    rng = random.Random(f"crash-test:{seed}")
    plan = Plan(seed, runs=rng.randint(*RUNS), steps=rng.randint(*STEPS))
    print(f"  {plan.runs} runs of {plan.steps} steps")
    db, ledger, errors = tmp_path / "runs.db", tmp_path / "ledger.txt", tmp_path / "child.out"
    began = time.monotonic()
    kills: list[Kill] = []
    # At least MIN_KILLS land mid-work; the others may land in a child's start-up.
    triggers = ["ledger"] * MIN_KILLS
    triggers += [rng.choice(("delay", "ledger")) for _ in range(rng.randint(*KILLS) - MIN_KILLS)]
    rng.shuffle(triggers)
    for trigger in triggers:
        kill = kill_once(plan, db, ledger, errors, rng, trigger=trigger)
        if kill is None:
            break
        kills.append(kill)
        print(f"  kill {len(kills)}: {kill}")
    finish(plan, db, ledger, errors)

    infos, logs = read_file(db)
    h = Checker(plan, len(kills), Counter(read_ledger(ledger))).check(infos, logs)
    problems = h.problems + check_prefixes(kills, logs)
    status = integrity(db)
    if status != "ok":
        problems.append(f"PRAGMA integrity_check: {status}")
    repeated = Counter(h.repeated)
    print(
        f"  {len(kills)} kills, {h.executions} body executions for {plan.runs * plan.steps} "
        f"steps and {h.failed_attempts} planned failures: {h.duplicates} duplicates "
        f"({len(h.cut_off)} cut off mid-body, {len(h.repeated)} repeats of one attempt), "
        f"{h.unrun} attempts cut off before their body ran; {time.monotonic() - began:.1f} s"
    )
    for key in h.cut_off:
        print(f"    duplicate: {key} ran, its outcome never reached the log")
    for key, count in repeated.items():
        print(f"    duplicate: {key} ran {count + 1} times")
    # Attempts are numbered from the log and each StepStarted is durable before its body:
    # one attempt running twice means a body ran under a StepStarted that was not durable.
    problems += [f"{key}: the same attempt ran {n + 1} times" for key, n in repeated.items()]
    # A child prints only what went wrong inside it: a run task that crashed and was
    # respawned, a run that failed. A kill leaves no trace there.
    output = errors.read_text().splitlines()
    problems += [f"child output ({len(output)} lines): {line}" for line in output[:10]]
    if problems:
        shown = "\n".join(problems[:30])
        pytest.fail(f"seed {seed}: {len(problems)} problems, the first:\n{shown}")
    mid_work = sum(k.trigger.startswith("ledger ") for k in kills)
    assert mid_work >= MIN_KILLS, f"seed {seed}: only {mid_work} kills landed mid-work"


BACKOFF = 2.0
"""Seconds between the failed attempt 1 and attempt 2 in the retry test."""
SLACK = 0.25
"""How late attempt 2 may start after its due time (the restarted child is up by then)."""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_retry_waits_remaining_backoff_after_restart(tmp_path: Path) -> None:
    """A retry pending at a kill starts at its persisted due time, not a full backoff later."""
    plan = Plan(SEEDS[0], 1, 1, fail_share=1.0, retry_delay=BACKOFF)
    print(f"\nretry test seed {plan.seed}")
    rng = random.Random(f"crash-retry:{plan.seed}")
    db, ledger, errors = tmp_path / "runs.db", tmp_path / "ledger.txt", tmp_path / "child.out"
    watch = Ledger(ledger)
    proc = spawn(plan, db, ledger, errors)
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while watch.lines == 0 and proc.poll() is None and time.monotonic() < deadline:
            watch.poll()
            time.sleep(0.002)
        # Attempt 1 ran; it fails and its StepFailed is durable within milliseconds.
        time.sleep(rng.uniform(0.2, 0.4))
    finally:
        code = stop(proc)
    assert code == -signal.SIGKILL, child_failure(code, errors, f"seed {plan.seed}: before a kill")
    assert watch.lines == 1, child_failure(code, errors, "attempt 1 never ran")
    _, logs = read_file(db)
    failed = [e for e in logs["r000"] if isinstance(e, StepFailed)]
    assert len(failed) == 1, f"the kill was meant to land in the retry wait: {logs['r000']}"
    assert not any(isinstance(e, StepStarted) and e.attempt == 2 for e in logs["r000"])
    retry_at = failed[0].retry_at
    assert retry_at is not None
    assert retry_at - failed[0].at == pytest.approx(BACKOFF, abs=1e-3)

    restarted = time.time()
    assert restarted < retry_at - 0.5, "the restart came too late to show the remaining wait"
    finish(plan, db, ledger, errors)
    _, logs = read_file(db)
    (second,) = [e for e in logs["r000"] if isinstance(e, StepStarted) and e.attempt == 2]
    print(
        f"attempt 2 due {retry_at - restarted:.3f} s after the restart, started "
        f"{second.at - retry_at:.3f} s after its due time"
    )
    assert second.at >= retry_at, "attempt 2 started before the persisted due time"
    assert second.at - retry_at < SLACK, "attempt 2 started long after its due time"
    assert second.at < restarted + BACKOFF, "the restarted child waited a full backoff again"
    assert read_ledger(ledger) == [("r000", 1, 1), ("r000", 1, 2)]
    assert isinstance(logs["r000"][-1], RunCompleted)
    assert integrity(db) == "ok"
