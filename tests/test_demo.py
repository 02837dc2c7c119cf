"""`aruntime demo` with small counts: it passes on a sound runtime and fails on a broken one."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import aruntime._supervisor
from aruntime._cli import run
from aruntime._demo import DemoOptions, run_demo
from aruntime._demo_workload import expected_outcome, make_plans
from aruntime.events import Event
from aruntime.state import RunState, replay


def demo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aruntime", "demo", "--runs", "20", "--steps", "3", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=60,
    )


def test_plans_follow_the_seed() -> None:
    """The same seed gives the same runs and outcomes in any process; another seed does not."""
    plans = make_plans(7, 50, 4, "a", 0.125)
    assert plans == make_plans(7, 50, 4, "a", 0.125)
    assert plans != make_plans(8, 50, 4, "a", 0.125)
    outcomes = [expected_outcome(p).status for p in plans]
    assert {"completed", "failed"} <= set(outcomes)
    assert sum(p.crash_at is not None for p in plans) == 6


def test_demo_on_memory_passes_every_check() -> None:
    """On the memory store the demo runs phase a, skips the process kill, and exits 0."""
    done = demo("--store", "memory")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Phase b, a real process crash: skipped" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("All 17 checks passed in ")
    assert "replayed states equal the state before the crash" in done.stdout
    assert done.stderr == ""  # the injected failures are counted, not logged


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_demo_on_sqlite_kills_a_child_process_and_checks_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SQLite demo starts afresh, kills its child with SIGKILL, and every check holds."""
    (tmp_path / "aruntime-demo.db").write_text("left over from an earlier demo")
    (tmp_path / "aruntime-demo.db-wal").write_text("stale")
    done = demo("--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "  killed   pid " in out
    assert "start-up states equal replay(events) read from the file" in out
    assert out.rstrip().splitlines()[-1].startswith("All 23 checks passed in ")
    assert "FAILED" not in out
    # The database is left behind for `aruntime runs list`: 20 runs in phases a and b, and
    # phase c's 24 fan-outs, 8 reservations and one run past its deadline; phase d's
    # approvals and children, phase e's sends; all ended.
    assert run(["runs", "list", "--db", str(tmp_path / "aruntime-demo.db"), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 40 + 24 + 8 + 1 + 12 + 12 + 38  # d: 12 approvals, 12 children; e: 38
    assert {r["status"] for r in runs} <= {"completed", "failed", "cancelled"}
    assert sum(r["status"] == "cancelled" for r in runs) == 9 + 2  # e: 2 cancelled sends


def test_demo_reports_a_replayed_state_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a supervisor that replays wrongly, the demo names the check and exits 1."""

    def skewed_replay(events: Iterable[Event]) -> RunState:
        state = replay(events)
        state.updated_at = (state.updated_at or 0.0) + 1.0
        return state

    monkeypatch.setattr(aruntime._supervisor, "replay", skewed_replay)
    out = io.StringIO()
    with capture_logs():
        code = run_demo(DemoOptions(runs=20, steps=3, db=None), out)
    assert code == 1
    lines = out.getvalue().splitlines()
    failed = [line for line in lines if line.lstrip().startswith("FAILED")]
    assert len(failed) == 2  # phase a's crashes, and phase c's crashes with branches
    assert "replayed states equal the state before the crash" in failed[0]
    assert "updated_at" in lines[lines.index(failed[0]) + 1]
    assert "crashes with branches in flight replayed the state" in failed[1]
    assert lines[-1].startswith("2 of 17 checks FAILED")


def test_demo_leaves_a_database_with_other_runs_alone(tmp_path: Path) -> None:
    """`--db` naming a database that holds a run not of the demo's is refused (exit 2)
    and the database is untouched: the demo never deletes a user's runs."""
    import asyncio

    import aruntime

    db = tmp_path / "runs.db"

    @aruntime.workflow(name="jobs.keep")
    async def keep() -> int:
        return 42

    async def record() -> None:
        async with aruntime.Runtime(f"sqlite:///{db}") as rt:
            await (await rt.start(keep, run_id="order-42")).result()

    asyncio.run(record())
    before = db.read_bytes()
    done = demo("--db", str(db), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds run 'order-42', which is not the demo's" in done.stderr
    assert db.read_bytes() == before


def test_demo_leaves_a_named_file_that_is_no_database_alone(tmp_path: Path) -> None:
    """Only the demo's default file is replaced when it is not a database; any other
    file named with --db is refused and kept."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    done = demo("--db", str(notes), cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a database the demo made" in done.stderr
    assert notes.read_text() == "my notes"


def test_demo_makes_its_own_database_afresh_on_a_second_run(tmp_path: Path) -> None:
    """A database holding only the demo's runs is the demo's: a second demo replaces it."""
    assert demo("--db", "mine.db", cwd=tmp_path).returncode == 0
    assert demo("--db", "mine.db", cwd=tmp_path).returncode == 0
