"""Each workflow primitive under a real SIGKILL at the moment that matters for it.

The child (`tests/primitives_child.py`) runs one scenario's run on an SQLite file and
writes a ledger of every step body's begin and end. The test waits for the moment (a
durable `SleepStarted`, a body's ledger line), kills the child with SIGKILL, keeps what
the file held right after the kill, starts the child again on the same file and lets it
finish. Then it checks the outcome and holds the ledger against the log: every body ran
under a durable `StepStarted`, no body ran after its completion was durable, each
operation completed once, and every attempt that ran without a durable outcome was cut
off by a kill.

The moments are waited for, never slept for, so a slow machine delays a test without
failing it; the durations a test measures (the rest of a sleep, a timeout, a deadline)
are taken from the events' own times.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from primitives_child import (
    CANCEL_REASON,
    DEADLINE,
    MAX_ATTEMPTS,
    RETRY_DELAY,
    RUN_ID,
    SLEEP,
    STEP_TIMEOUT,
    UNDO,
    branch_delays,
    branch_label,
    branches_result,
)

import aruntime
from aruntime.events import (
    CancelRequested,
    Event,
    OperationCancelled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    op_identity,
)
from aruntime.store.sqlite import SqliteConfig, SqliteStore

CHILD = Path(__file__).with_name("primitives_child.py")
CHILD_TIMEOUT = 30.0
"""Seconds a child may take to reach a moment or to finish; longer means it is stuck."""
POLL = 0.005
"""Seconds between two looks at the ledger or the file."""
SLACK = 0.3
"""How late a measured moment may come (a wake-up, a timeout, a retry, a cancellation)."""
PAUSE = 0.5
"""Seconds between a kill and the restart in the sleep test: what a fresh sleep would add."""

PLANNED_LOGS = ("step.failed ", "run.failed ")
"""What a child may log: the timeouts and failures its scenario plans."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@dataclass(frozen=True)
class Entry:
    """One ledger line: a body began, ended, or was cancelled."""

    life: int
    identity: str
    label: str
    attempt: int
    phase: str
    at: float


# -- the file ----------------------------------------------------------------------------


async def _events(db: Path) -> list[Event]:
    store = SqliteStore(db, SqliteConfig(read_only=True))
    await store.open()
    try:
        return await store.events_for(RUN_ID)
    finally:
        await store.aclose()


def _has_schema(db: Path) -> bool:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    finally:
        conn.close()


def read_log(db: Path) -> list[Event]:
    """The run's log through a read-only store; empty before the child created it."""
    if not db.exists() or not _has_schema(db):
        return []
    return asyncio.run(_events(db))


# -- the child ---------------------------------------------------------------------------


class Scene:
    """One scenario's file, ledger and children, one life per child."""

    def __init__(self, tmp_path: Path, scenario: str, *options: str) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "runs.db"
        self.ledger_path = tmp_path / "ledger.txt"
        self.scenario = scenario
        self.options = options
        self.life = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed: dict[int, list[Event]] = {}
        """What the file held right after each kill, by the life it ended."""

    def spawn(self) -> None:
        assert self.proc is None, "a child is running already"
        self.life += 1
        command = [sys.executable, str(CHILD), self.scenario, "--db", str(self.db)]
        command += ["--ledger", str(self.ledger_path), "--life", str(self.life), *self.options]
        with self._out().open("wb") as out, self._err().open("wb") as err:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def _out(self, life: int | None = None) -> Path:
        return self.dir / f"child{life or self.life}.out"

    def _err(self, life: int | None = None) -> Path:
        return self.dir / f"child{life or self.life}.err"

    def errors(self, life: int) -> list[str]:
        """What the child of `life` logged (warnings and errors go to stderr)."""
        return self._err(life).read_text(errors="replace").splitlines()

    def output(self) -> str:
        """Every life's output, for a failure message."""
        parts = []
        for life in range(1, self.life + 1):
            for path in (self._out(life), self._err(life)):
                text = path.read_text(errors="replace").strip() if path.exists() else ""
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(parts) or "(the children printed nothing)"

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        """Poll until `condition` holds while the child runs; fail if it ends or hangs."""
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not condition():
            if proc.poll() is not None:
                self.proc = None
                pytest.fail(f"the child ended ({proc.returncode}) before {what}\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"STUCK: no {what} within {CHILD_TIMEOUT} s\n{self.output()}")
            time.sleep(POLL)

    def kill(self) -> list[Event]:
        """SIGKILL the child; what the file holds right after it."""
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        self.proc = None
        assert code == -signal.SIGKILL, f"the child ended ({code}) before the kill\n{self.output()}"
        log = read_log(self.db)
        self.killed[self.life] = log
        return log

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def finish(self) -> dict[str, Any]:
        """Start a child and let it end the run; its outcome."""
        self.spawn()
        proc = self.proc
        assert proc is not None
        try:
            code = proc.wait(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"STUCK: the last child did not end the run\n{self.output()}")
        self.proc = None
        assert code == 0, f"the last child exited with {code}\n{self.output()}"
        return dict(json.loads(self._line("outcome")))

    def opened(self, life: int) -> float:
        """When the child of `life` had its runtime open (its run resumed)."""
        return float(self._line("opened", life))

    def _line(self, key: str, life: int | None = None) -> str:
        for line in self._out(life).read_text().splitlines():
            if line.startswith(f"{key} "):
                return line.removeprefix(f"{key} ")
        raise AssertionError(f"no {key!r} line in the child's output\n{self.output()}")

    def ledger(self) -> list[Entry]:
        """Every ledger line; a torn or malformed line fails the test."""
        text = self.ledger_path.read_text() if self.ledger_path.exists() else ""
        assert not text or text.endswith("\n"), f"a torn ledger line: {text[-60:]!r}"
        entries = []
        for line in text.splitlines():
            life, identity, label, attempt, phase, at = line.split(" ")
            entries.append(Entry(int(life), identity, label, int(attempt), phase, float(at)))
        return entries

    def logged(self, kind: type[Event]) -> bool:
        """Whether the file holds an event of `kind` (durable: the store committed it)."""
        return bool(of_type(read_log(self.db), kind))

    def began(self, label: str, attempt: int | None = None) -> bool:
        return any(
            e.phase == "begin" and e.label == label and attempt in (None, e.attempt)
            for e in self.ledger()
        )


def identity_of(event: StepStarted | StepCompleted | StepFailed | SleepStarted) -> str:
    return op_identity(event.branch, event.position)


def of_type(log: list[Event], kind: type[Any] | tuple[type[Any], ...]) -> list[Any]:
    return [e for e in log if isinstance(e, kind)]


def starts_of(log: list[Event], identity: str, attempt: int = 1) -> StepStarted:
    (start,) = [
        e for e in of_type(log, StepStarted) if (identity_of(e), e.attempt) == (identity, attempt)
    ]
    return start  # type: ignore[no-any-return]


def completed(log: list[Event]) -> dict[str, StepCompleted]:
    return {identity_of(e): e for e in of_type(log, StepCompleted)}


# -- the audit ---------------------------------------------------------------------------


def audit(scene: Scene) -> tuple[list[Event], list[Entry]]:
    """Hold the ledger against the final log and the logs each kill left; both.

    - every body ran under a durable `StepStarted` of its attempt, and each attempt ran once;
    - no body began after its step's completion was durable (in the file after a kill);
    - each operation completed at most once, and its attempts are numbered 1, 2, ...;
    - every attempt without an outcome in the final log ran in a life that was killed, or
      was the last of an operation that the run's cancellation reached;
    - what the file held after a kill is a prefix of the final log;
    - the children logged nothing but the failures the scenario plans (no respawn, no
      parked run, no traceback).
    """
    log = read_log(scene.db)
    entries = scene.ledger()
    aruntime.replay(log)  # the fold accepts the log
    problems: list[str] = []
    for life, before in scene.killed.items():
        if log[: len(before)] != before:
            problems.append(f"the log after the kill of life {life} is not a prefix of the end")
    starts = {(identity_of(e), e.attempt): e for e in of_type(log, StepStarted)}
    outcomes = {(identity_of(e), e.attempt): e for e in of_type(log, (StepCompleted, StepFailed))}
    begins = Counter((e.identity, e.attempt) for e in entries if e.phase == "begin")
    for key, count in begins.items():
        if key not in starts:
            problems.append(f"{key}: the body ran without a durable StepStarted")
        if count > 1:
            problems.append(f"{key}: the same attempt ran {count} times")
    for life, before in scene.killed.items():
        done = completed(before)
        for e in entries:
            if e.phase == "begin" and e.life > life and e.identity in done:
                problems.append(
                    f"{e}: the body ran in life {e.life} though its completion was durable "
                    f"when life {life} was killed"
                )
    per_identity = Counter(identity_of(e) for e in of_type(log, StepCompleted))
    problems += [f"{i}: completed {n} times" for i, n in per_identity.items() if n > 1]
    attempts: dict[str, list[int]] = {}
    for identity, attempt in starts:
        attempts.setdefault(identity, []).append(attempt)
    for identity, numbers in attempts.items():
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            problems.append(f"{identity}: attempts {sorted(numbers)} are not 1, 2, ...")
    cancelled = set(cancelled_at(log))
    for (identity, attempt), start in starts.items():
        if (identity, attempt) in outcomes:
            continue
        if identity in cancelled and attempt == max(attempts[identity]):
            continue  # the run's cancellation ended the attempt
        lives = {e.life for e in entries if (e.identity, e.attempt) == (identity, attempt)}
        if not lives <= scene.killed.keys():
            problems.append(f"{start}: no outcome, yet its body ran in a life not killed")
        if attempt == max(attempts[identity]) and not cancelled:
            problems.append(f"{start}: the last attempt has no outcome")
    for life in range(1, scene.life + 1):
        problems += [
            f"life {life} logged: {line}"
            for line in scene.errors(life)
            if not line.startswith(PLANNED_LOGS)
        ]
    if problems:
        shown = "\n".join(problems[:20])
        pytest.fail(f"{len(problems)} problems:\n{shown}\nlog: {log}\n{scene.output()}")
    return log, entries


def bodies(entries: list[Entry], label: str) -> list[tuple[int, int, str]]:
    """(life, attempt, phase) of each ledger line of the bodies labelled `label`."""
    return [(e.life, e.attempt, e.phase) for e in entries if e.label == label]


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "down", [PAUSE, SLEEP + PAUSE], ids=["restart-before-wake-up", "restart-after-wake-up"]
)
def test_sleep_wakes_at_recorded_time_after_kill(down: float, tmp_path: Path) -> None:
    """A run killed in a durable sleep wakes at the recorded time, not a full sleep after
    the restart; a wake-up that passed while no process ran wakes it at once."""
    scene = Scene(tmp_path, "sleep")
    scene.spawn()
    scene.wait_for("a durable SleepStarted", lambda: scene.logged(SleepStarted))
    (slept,) = of_type(scene.kill(), SleepStarted)
    assert slept.wake_at - slept.at == pytest.approx(SLEEP, abs=0.05)
    time.sleep(down)  # the time a fresh sleep would add to the wait
    if down < SLEEP:
        assert time.time() < slept.wake_at - 0.3, "the restart came too late to tell"

    assert scene.finish() == {"status": "completed", "result": ["before", "after"]}
    log, entries = audit(scene)
    assert of_type(log, SleepStarted) == [slept], "the sleep was recorded again"
    after = starts_of(log, "3")
    opened = scene.opened(2)
    print(f"\nwoke {after.at - slept.wake_at:.3f} s after the recorded wake-up")
    assert after.at >= slept.wake_at, "the step after the sleep started before the wake-up"
    assert after.at - max(slept.wake_at, opened) < SLACK, "the restarted run slept again"
    assert bodies(entries, "before") == [(1, 1, "begin"), (1, 1, "end")]
    assert bodies(entries, "after") == [(2, 1, "begin"), (2, 1, "end")]
    assert isinstance(log[-1], RunCompleted)


@pytest.mark.parametrize(
    ("slow", "expected"),
    [
        ((1, 2), {"status": "completed", "result": "attempt 3"}),
        (
            (1, 2, 3),
            {"status": "failed", "error_type": "aruntime.StepTimeout", "attempts": MAX_ATTEMPTS},
        ),
    ],
    ids=["third-attempt-completes", "every-attempt-times-out"],
)
def test_timed_out_attempt_counts_on_after_kill(
    slow: tuple[int, ...], expected: dict[str, Any], tmp_path: Path
) -> None:
    """Killed in attempt 1 of a timed step, the run goes on with attempt 2 under the timeout
    again; the kill costs an attempt and never adds one."""
    scene = Scene(tmp_path, "timeout", *(f"--slow={n}" for n in slow))
    scene.spawn()
    scene.wait_for("attempt 1 of the body", lambda: scene.began("timed", 1))
    killed = scene.kill()
    assert [e.attempt for e in of_type(killed, StepStarted)] == [1]
    assert not of_type(killed, StepFailed), "the kill was meant to land before the timeout"

    assert scene.finish() == expected
    log, entries = audit(scene)
    started = {e.attempt: e for e in of_type(log, StepStarted)}
    failed = {e.attempt: e for e in of_type(log, StepFailed)}
    assert sorted(started) == [1, 2, 3]
    assert 1 not in failed, "the attempt the kill cut off was given an outcome"
    for attempt in sorted(failed):
        took = failed[attempt].at - started[attempt].at
        print(f"\nattempt {attempt} timed out after {took:.3f} s")
        assert failed[attempt].error_type == "aruntime.StepTimeout"
        assert STEP_TIMEOUT <= took < STEP_TIMEOUT + SLACK
    assert failed[2].retry_at == pytest.approx(failed[2].at + RETRY_DELAY, abs=1e-3)
    assert started[3].at >= failed[2].retry_at
    assert bodies(entries, "timed")[0] == (1, 1, "begin")
    later = bodies(entries, "timed")[1:]
    assert later[:2] == [(2, 2, "begin"), (2, 2, "cut")]
    if 3 in slow:
        assert later[2:] == [(2, 3, "begin"), (2, 3, "cut")]
        assert failed[3].retry_at is None
        assert isinstance(log[-1], RunFailed)
    else:
        assert later[2:] == [(2, 3, "begin"), (2, 3, "end")]
        assert isinstance(log[-1], RunCompleted)


def test_timed_attempts_all_lost_to_kills_end_the_step(tmp_path: Path) -> None:
    """Killed in each of the step's three attempts, the restarted run records the step
    failed as interrupted and runs no fourth body: a crash loop cannot exceed its attempts."""
    scene = Scene(tmp_path, "timeout", "--slow=1", "--slow=2", "--slow=3")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        scene.spawn()
        scene.wait_for(f"attempt {attempt} of the body", partial(scene.began, "timed", attempt))
        killed = scene.kill()
        assert not of_type(killed, StepFailed), "the kill was meant to land before the timeout"

    outcome = scene.finish()
    assert outcome == {
        "status": "failed",
        "error_type": "aruntime.AttemptInterrupted",
        "attempts": MAX_ATTEMPTS,
    }
    log, entries = audit(scene)
    assert [e.attempt for e in of_type(log, StepStarted)] == [1, 2, 3]
    (failed,) = of_type(log, StepFailed)
    assert (failed.attempt, failed.retry_at) == (MAX_ATTEMPTS, None)
    assert bodies(entries, "timed") == [(n, n, "begin") for n in range(1, MAX_ATTEMPTS + 1)]
    assert isinstance(log[-1], RunFailed)


def test_cancel_compensation_completes_once_after_kill(tmp_path: Path) -> None:
    """Killed during the compensation of a cancelled run, the restarted run finishes the
    compensation once and ends cancelled; the cancelled step never runs again."""
    scene = Scene(tmp_path, "cancel")
    scene.spawn()
    scene.wait_for("the compensation's body", lambda: scene.began("undo"))
    killed = scene.kill()
    assert [e.reason for e in of_type(killed, CancelRequested)] == [CANCEL_REASON]
    assert cancelled_at(killed) == ["1"]
    assert "2" in {identity_of(e) for e in of_type(killed, StepStarted)}
    assert "2" not in completed(killed), "the kill was meant to land in the compensation"

    assert scene.finish() == {"status": "cancelled", "reason": CANCEL_REASON}
    log, entries = audit(scene)
    assert isinstance(log[-1], RunCancelled)
    assert log[-1].reason == CANCEL_REASON
    assert len(of_type(log, CancelRequested)) == 1
    assert cancelled_at(log) == ["1"]
    assert [e.attempt for e in of_type(log, StepStarted) if identity_of(e) == "1"] == [1]
    assert list(completed(log)) == ["2"], "the compensation did not complete exactly once"
    assert bodies(entries, "work") == [(1, 1, "begin"), (1, 1, "cut")]
    # At least once: the compensation's attempt 1 was cut off by the kill, so it ran again.
    assert bodies(entries, "undo") == [(1, 1, "begin"), (2, 2, "begin"), (2, 2, "end")]
    undo = completed(log)["2"]
    assert undo.attempt == 2
    assert undo.at - starts_of(log, "2", 2).at >= UNDO


def test_cancel_requested_before_kill_is_delivered_after_restart(tmp_path: Path) -> None:
    """Killed after the cancellation was recorded and before it reached the workflow (the
    cancelled body was slow to stop), the restarted run delivers it at the step in flight
    without running that step again, compensates once and ends cancelled."""
    scene = Scene(tmp_path, "cancel", "--slow-stop")
    scene.spawn()
    scene.wait_for(
        "the cancelled body stopping",
        lambda: (
            scene.began("work")
            and any(e.label == "work" and e.phase == "cut" for e in scene.ledger())
        ),
    )
    killed = scene.kill()
    assert [e.reason for e in of_type(killed, CancelRequested)] == [CANCEL_REASON]
    assert not of_type(killed, OperationCancelled), "the kill was meant to land before it"
    assert [identity_of(e) for e in of_type(killed, StepStarted)] == ["1"]

    assert scene.finish() == {"status": "cancelled", "reason": CANCEL_REASON}
    log, entries = audit(scene)
    assert isinstance(log[-1], RunCancelled)
    assert len(of_type(log, CancelRequested)) == 1
    assert cancelled_at(log) == ["1"]
    assert [e.attempt for e in of_type(log, StepStarted) if identity_of(e) == "1"] == [1]
    assert list(completed(log)) == ["2"]
    assert bodies(entries, "work") == [(1, 1, "begin"), (1, 1, "cut")]
    assert bodies(entries, "undo") == [(2, 1, "begin"), (2, 1, "end")]


@pytest.mark.parametrize("stubborn_first", [False, True], ids=["stubborn-second", "stubborn-first"])
def test_cancelled_branches_killed_while_one_stops(stubborn_first: bool, tmp_path: Path) -> None:
    """Killed while the compensation runs and one of two cancelled branches is still
    stopping (its cancellation not yet recorded), the restarted run runs neither branch's
    body again, completes the compensation once and ends cancelled."""
    options = ["--stubborn-first"] if stubborn_first else []
    scene = Scene(tmp_path, "cancel-gather", *options)
    work, stubborn = ("2.1", "1.1") if stubborn_first else ("1.1", "2.1")
    scene.spawn()

    def moment() -> bool:
        return scene.began("undo") and work in cancelled_at(read_log(scene.db))

    scene.wait_for("the compensation with one branch still stopping", moment)
    killed = scene.kill()
    assert cancelled_at(killed) == [work], "the kill was meant to land while a branch stops"
    assert "1" not in completed(killed)

    assert scene.finish() == {"status": "cancelled", "reason": CANCEL_REASON}
    log, entries = audit(scene)
    state = aruntime.replay(log)
    print(f"\nat the end: { ({i: s.status.value for i, s in state.steps.items()}) }")
    assert isinstance(log[-1], RunCancelled)
    assert bodies(entries, "work") == [(1, 1, "begin"), (1, 1, "cut")]
    assert bodies(entries, "stubborn") == [(1, 1, "begin"), (1, 1, "cut")]
    assert bodies(entries, "undo") == [(1, 1, "begin"), (2, 2, "begin"), (2, 2, "end")]
    assert list(completed(log)) == ["1"]
    assert [e.attempt for e in of_type(log, StepStarted) if identity_of(e) == stubborn] == [1]


def cancelled_at(log: list[Event]) -> list[str]:
    """The identities of the operations the run's cancellation reached, in order."""
    return [op_identity(e.branch, e.position) for e in of_type(log, OperationCancelled)]


SECOND_STEPS = {branch_label(b, 2) for b in range(1, 4)} | {"a2", "b2"}


def kill_with_second_steps_in_flight(scene: Scene, begun: int) -> list[Event]:
    """Kill the child once `begun` second steps have begun in its life; the log after."""
    life = scene.life

    def ready() -> bool:
        entries = scene.ledger()
        return (
            sum(e.life == life and e.phase == "begin" and e.label in SECOND_STEPS for e in entries)
            >= begun
        )

    scene.wait_for(f"{begun} second steps begun", ready)
    killed = scene.kill()
    entries = scene.ledger()
    ended = {(e.identity, e.attempt) for e in entries if e.phase == "end"}
    in_flight = sorted(
        e.identity
        for e in entries
        if e.life == life and e.phase == "begin" and (e.identity, e.attempt) not in ended
    )
    print(f"kill {life}: {sorted(completed(killed))} durable, {in_flight} in flight")
    assert any(i.endswith(".2") for i in in_flight), "no second step was in flight"
    return killed


PLANS = [(3, (1,)), (17, (2,)), (40, (3, 1))]
"""(seed, how many second steps have begun in the child's life at each kill)."""


@pytest.mark.parametrize(("seed", "kills"), PLANS, ids=[f"seed{s}" for s, _ in PLANS])
def test_branches_in_flight_resume_to_uncrashed_result(
    seed: int, kills: tuple[int, ...], tmp_path: Path
) -> None:
    """Killed with second steps of gathered chains in flight, the run returns what it
    would have returned uncrashed; each identity completes once, none after it was done."""
    print(f"\nbranch delays {branch_delays(seed)}")
    scene = Scene(tmp_path, "branches", f"--seed={seed}")
    for begun in kills:
        scene.spawn()
        kill_with_second_steps_in_flight(scene, begun)

    assert scene.finish() == {"status": "completed", "result": branches_result()}
    log, _ = audit(scene)
    identities = [f"{b}.{k}" for b in range(1, 4) for k in range(1, 3)]
    assert sorted(completed(log)) == identities
    for identity, done in completed(log).items():
        b, k = identity.split(".")
        assert json.loads(done.result) == branch_label(int(b), int(k)), identity
    assert isinstance(log[-1], RunCompleted)


@pytest.mark.parametrize("group", [False, True], ids=["gather", "TaskGroup"])
def test_gathered_chains_keep_their_results_after_kill(group: bool, tmp_path: Path) -> None:
    """The reported shape: gather(a1 -> a2, b1 -> b2), killed with b1 and a1 done and a2,
    b2 in flight, returns [['a1', 'a2'], ['b1', 'b2']]; so do two TaskGroup tasks."""
    scene = Scene(tmp_path, "pair", *(["--group"] if group else []))
    scene.spawn()
    scene.wait_for("a2 in flight", lambda: scene.began("a2"))
    killed = scene.kill()
    # a2 and b2 began only once their StepStarted was durable, and with it what came before.
    assert {"1.1", "2.1"} <= completed(killed).keys()
    assert "1.2" not in completed(killed)

    assert scene.finish() == {"status": "completed", "result": [["a1", "a2"], ["b1", "b2"]]}
    log, _ = audit(scene)
    assert {i: json.loads(e.result) for i, e in completed(log).items()} == {
        "1.1": "a1",
        "1.2": "a2",
        "2.1": "b1",
        "2.2": "b2",
    }


@pytest.mark.parametrize(
    "after_deadline", [True, False], ids=["restart-after-deadline", "restart-before-deadline"]
)
def test_deadline_holds_across_kill(after_deadline: bool, tmp_path: Path) -> None:
    """A run's deadline is the recorded one across a kill: passed while no process ran
    the run, the run is cancelled with the reason "timeout" as soon as a runtime resumes
    it; still ahead, it comes at the recorded time, not a full timeout after the restart.
    Its cleanup runs once."""
    scene = Scene(tmp_path, "deadline")
    scene.spawn()
    scene.wait_for("a durable SleepStarted", lambda: scene.logged(SleepStarted))
    killed = scene.kill()
    (started,) = of_type(killed, RunStarted)
    deadline = started.deadline
    assert deadline is not None
    assert deadline - started.at == pytest.approx(DEADLINE, abs=1e-3)
    assert time.time() < deadline - 0.2, "the kill was meant to land well before the deadline"
    assert not of_type(killed, CancelRequested)
    if after_deadline:
        time.sleep(max(0.0, deadline + 0.2 - time.time()))  # down until the deadline passed

    assert scene.finish() == {"status": "cancelled", "reason": "timeout"}
    log, entries = audit(scene)
    opened = scene.opened(2)
    assert (opened > deadline) is after_deadline
    (requested,) = of_type(log, CancelRequested)
    assert requested.reason == "timeout"
    assert isinstance(log[-1], RunCancelled)
    assert log[-1].reason == "timeout"
    print(f"\ncancelled {requested.at - max(deadline, opened):.3f} s after it was due")
    assert requested.at >= deadline
    assert requested.at - max(deadline, opened) < SLACK, "the cancellation came late"
    assert log[-1].at - requested.at < SLACK
    assert bodies(entries, "before") == [(1, 1, "begin"), (1, 1, "end")]
    assert bodies(entries, "cleanup") == [(2, 1, "begin"), (2, 1, "end")]
    assert not bodies(entries, "after")


def test_deadline_passed_while_down_runs_no_body_again(tmp_path: Path) -> None:
    """Killed in a step, a run whose deadline passed while no process ran it is cancelled
    at that step on restart; the step's body does not run again after the deadline."""
    scene = Scene(tmp_path, "deadline", "--in-step")
    scene.spawn()
    scene.wait_for("the long step's body", lambda: scene.began("long"))
    killed = scene.kill()
    (started,) = of_type(killed, RunStarted)
    deadline = started.deadline
    assert deadline is not None
    assert time.time() < deadline - 0.2, "the kill was meant to land well before the deadline"
    time.sleep(max(0.0, deadline + 0.2 - time.time()))  # down until the deadline passed

    assert scene.finish() == {"status": "cancelled", "reason": "timeout"}
    log, entries = audit(scene)
    assert cancelled_at(log) == ["2"]
    assert bodies(entries, "cleanup") == [(2, 1, "begin"), (2, 1, "end")]
    assert not bodies(entries, "after")
    late = [e for e in entries if e.label == "long" and e.at > deadline]
    assert not late, f"the step's body ran again after the deadline: {late}"
    assert [e.attempt for e in of_type(log, StepStarted) if identity_of(e) == "2"] == [1]


def test_deadline_cleanup_killed_completes_once(tmp_path: Path) -> None:
    """Killed in the cleanup that the run's deadline started, the restarted run finishes
    the cleanup once and ends cancelled by the timeout, with no second request."""
    scene = Scene(tmp_path, "deadline", f"--cleanup={UNDO}")
    scene.spawn()
    scene.wait_for("the cleanup's body", lambda: scene.began("cleanup"))
    killed = scene.kill()
    assert [e.reason for e in of_type(killed, CancelRequested)] == ["timeout"]
    assert cancelled_at(killed) == ["2"]

    assert scene.finish() == {"status": "cancelled", "reason": "timeout"}
    log, entries = audit(scene)
    assert len(of_type(log, CancelRequested)) == 1
    assert cancelled_at(log) == ["2"]
    assert list(completed(log)) == ["1", "3"]
    assert completed(log)["3"].attempt == 2
    assert bodies(entries, "cleanup") == [(1, 1, "begin"), (2, 2, "begin"), (2, 2, "end")]
    assert not bodies(entries, "after")
    assert isinstance(log[-1], RunCancelled)
