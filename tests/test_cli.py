"""`aruntime runs list` and `aruntime runs show` on a small SQLite database made here.

The commands are called through `aruntime._cli.run`, which leaves the structlog
configuration alone; one test goes through `python -m aruntime` to cover the entry point.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import unprivileged
from unprivileged import beside, read_only

from aruntime import NonRetryableError, RetryPolicy, Runtime, step, workflow
from aruntime._cli import DB_VARIABLE, DEFAULT_DB, _parser, run
from aruntime.events import CancelRequested, Event, RunStarted, SleepStarted, StepStarted
from aruntime.store.sqlite import SqliteStore

attempts: dict[str, int] = {}


@step(name="cli.greet")
async def greet(name: str) -> str:
    return f"hello {name}"


@step(name="cli.charge", retry=RetryPolicy(max_attempts=3, initial_delay=0.25, jitter=0))
async def charge(amount: int) -> int:
    attempts["charge"] = attempts.get("charge", 0) + 1
    if attempts["charge"] == 1:
        raise TimeoutError("gateway timed out")
    raise NonRetryableError("card declined")


@workflow(name="cli.hello")
async def hello(name: str) -> str:
    return await greet(name)


@workflow(name="cli.pay")
async def pay(amount: int) -> int:
    return await charge(amount)


async def _make_database(path: Path) -> None:
    async with Runtime(f"sqlite:///{path}", workflows=[hello, pay]) as rt:
        done = await rt.start(hello, "ada", run_id="greeting")
        failed = await rt.start(pay, 42, run_id="payment")
        await done.result()
        with pytest.raises(Exception, match="card declined"):
            await failed.result()
    async with SqliteStore(path) as store:
        started = RunStarted(
            sequence=1, at=1.0, run_id="stuck", workflow="cli.hello", args="[[],{}]"
        )
        first = StepStarted(sequence=2, at=2.0, position=1, step="cli.greet", attempt=1)
        await store.append("stuck", (started, first), 0)
        await store.park("stuck", "restart budget exhausted (made by the test)")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with a completed run, a failed run (after a retry) and a parked run."""
    path = tmp_path_factory.mktemp("cli") / "runs.db"
    asyncio.run(_make_database(path))
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_list_shows_every_run_with_its_status(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has one row per run: id, workflow, status (parked included) and events."""
    code, out, _ = cli(capsys, "runs", "list", "--db", db)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["RUN", "ID", "WORKFLOW", "STATUS"]
    cells = {row.split()[0]: row.split()[1:4] for row in rows}
    assert cells == {
        "greeting": ["cli.hello", "completed", "4"],
        "payment": ["cli.pay", "failed", "6"],
        "stuck": ["cli.hello", "parked", "(running)"],
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [("completed", {"greeting"}), ("failed", {"payment"}), ("parked", {"stuck"})],
    ids=["completed", "failed", "parked"],
)
def test_runs_list_filters_by_status(
    db: Path, capsys: pytest.CaptureFixture[str], status: str, expected: set[str]
) -> None:
    """`--status` keeps the runs in that state only."""
    code, out, _ = cli(capsys, "runs", "list", "--db", db, "--status", status)
    assert code == 0
    assert {row.split()[0] for row in out.splitlines()[1:]} == expected


def test_runs_list_running_leaves_parked_runs_out(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parked run is not listed as running; with none left the command says so."""
    code, out, _ = cli(capsys, "runs", "list", "--db", db, "--status", "running")
    assert (code, out) == (0, "no running runs\n")


def test_runs_list_json_is_machine_readable(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints one object per run with the index's fields and ISO times."""
    code, out, _ = cli(capsys, "runs", "list", "--db", db, "--json")
    assert code == 0
    runs = {r["run_id"]: r for r in json.loads(out)}
    assert runs["stuck"]["parked"] is True
    assert runs["stuck"]["parked_reason"] == "restart budget exhausted (made by the test)"
    assert runs["payment"] | {"created_at": None, "updated_at": None} == {
        "parent": None,
        "run_id": "payment",
        "workflow": "cli.pay",
        "status": "failed",
        "parked": False,
        "parked_reason": None,
        "version": 6,
        "created_at": None,
        "updated_at": None,
        "queue": None,
        "priority": 0,
        "partition_key": None,
        "admitted_at": None,
    }
    assert runs["stuck"]["created_at"] == "1970-01-01T00:00:01+00:00"


def test_runs_show_prints_state_steps_and_history(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state (status, error, operations with attempts) comes first, then every event."""
    code, out, _ = cli(capsys, "runs", "show", "payment", "--db", db)
    assert code == 0
    state, history = out.split("\nhistory\n")
    assert "status    failed" in state
    assert "NonRetryableError: card declined" in state.split("\nerror ")[1].splitlines()[0]
    step_row = next(line for line in state.splitlines() if "cli.charge" in line)
    assert step_row.split()[:5] == ["1", "step", "cli.charge", "failed", "2"]
    rows = [line.split(maxsplit=3) for line in history.splitlines()[1:]]
    assert [r[2] for r in rows] == [
        "RunStarted",
        "StepStarted",
        "StepFailed",
        "StepStarted",
        "StepFailed",
        "RunFailed",
    ]
    assert "TimeoutError: gateway timed out; retry wait 0.2" in rows[2][3]  # 0.25 s from failure
    assert "retry wait none: failed for good" in rows[4][3]


def test_runs_show_prints_a_completed_run_result(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A completed run shows its result, as the serializer wrote it."""
    code, out, _ = cli(capsys, "runs", "show", "greeting", "--db", db)
    assert code == 0
    assert 'result    "hello ada"' in out


def test_runs_show_json_has_state_and_events(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints the index row, the replayed state and the events with retry waits."""
    code, out, _ = cli(capsys, "runs", "show", "payment", "--db", db, "--json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    assert document["run"]["status"] == "failed"
    assert document["state"]["steps"][0]["attempts"] == 2
    assert document["state"]["error_message"] == "card declined"
    events = document["events"]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[2]["type"] == "StepFailed"
    assert events[2]["retry_wait"] == pytest.approx(0.25, abs=0.01)
    assert events[4]["retry_wait"] is None


def test_runs_show_json_decodes_recorded_results_beside_their_text(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--json` gives each recorded result both as recorded and decoded (`result_value`)."""
    code, out, _ = cli(capsys, "runs", "show", "greeting", "--db", db, "--json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    state = document["state"]
    assert json.loads(state["result"]) == state["result_value"]
    assert "result_value" in state["steps"][0]
    started = document["events"][0]
    assert started["type"] == "RunStarted"
    assert json.loads(started["args"]) == started["args_value"]


def test_runs_show_unknown_run_exits_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An id the database does not hold is a clear error with exit code 1."""
    code, out, err = cli(capsys, "runs", "show", "nobody", "--db", db)
    assert (code, out) == (1, "")
    assert "no run 'nobody'" in err


@pytest.mark.parametrize("command", [["list"], ["show", "greeting"]], ids=["list", "show"])
def test_missing_database_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A --db that does not exist is reported, not created."""
    missing = tmp_path / "none.db"
    code, _, err = cli(capsys, "runs", *command, "--db", missing)
    assert code == 2
    assert f"no database at {missing}" in err
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_store_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not an aruntime database is a clear error, and stays untouched."""
    path = tmp_path / "notes.db"
    path.write_text("not a database")
    code, _, err = cli(capsys, "runs", "list", "--db", path)
    assert code == 2
    assert f"cannot read {path}" in err
    assert err.count(str(path)) == 1
    assert path.read_text() == "not a database"


def test_db_takes_the_store_url_the_api_takes(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--db sqlite:///relative.db` names the same file as `Runtime("sqlite:///...")`."""
    monkeypatch.chdir(db.parent)
    code, out, _ = cli(capsys, "runs", "list", "--db", f"sqlite:///{db.name}")
    assert code == 0
    assert "greeting" in out


def test_db_that_is_a_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory given as --db is named as such."""
    code, _, err = cli(capsys, "runs", "list", "--db", tmp_path)
    assert code == 2
    assert f"{tmp_path} is a directory" in err


def test_python_dash_m_aruntime_runs_the_command(db: Path) -> None:
    """`python -m aruntime` is the `aruntime` command, exit codes included."""
    listed = subprocess.run(
        [sys.executable, "-m", "aruntime", "runs", "list", "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "greeting" in listed.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "aruntime", "runs", "show", "nobody", "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unknown.returncode == 1


# -- which database: --db, $ARUNTIME_DB, never a default -----------------------------------


@pytest.mark.parametrize("command", [["list"], ["show", "greeting"]], ids=["list", "show"])
def test_without_db_or_aruntime_db_exits_2_saying_what_is_missing(
    db: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    """No database named is exit 2 and a message on stderr; the demo's file is not read."""
    monkeypatch.delenv(DB_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copy(db, tmp_path / DEFAULT_DB)  # a demo database, where the old default looked
    code, out, err = cli(capsys, "runs", *command)
    assert (code, out) == (2, "")
    assert "no database given" in err
    assert "--db" in err
    assert DB_VARIABLE in err


def test_aruntime_db_names_the_database(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --db, the commands read the database that ARUNTIME_DB names."""
    monkeypatch.setenv(DB_VARIABLE, str(db))
    code, out, _ = cli(capsys, "runs", "show", "greeting")
    assert code == 0
    assert "status    completed" in out


def test_db_option_wins_over_aruntime_db(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--db` is used even when ARUNTIME_DB names another file."""
    monkeypatch.setenv(DB_VARIABLE, str(tmp_path / "other.db"))
    code, out, _ = cli(capsys, "runs", "list", "--db", db)
    assert code == 0
    assert "greeting" in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none.db", "no database at none.db (named by $ARUNTIME_DB)"),
        ("", "no database given ($ARUNTIME_DB is empty)"),
        ("sqlite://none.db", "$ARUNTIME_DB: 'sqlite://none.db' is not an SQLite store URL"),
    ],
    ids=["missing", "empty", "bad-url"],
)
def test_a_bad_aruntime_db_exits_2_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    expected: str,
) -> None:
    """A database named by ARUNTIME_DB that cannot be used is reported as ARUNTIME_DB's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DB_VARIABLE, value)
    code, _, err = cli(capsys, "runs", "list")
    assert code == 2
    assert expected in err
    assert list(tmp_path.iterdir()) == []


def test_help_documents_aruntime_db(capsys: pytest.CaptureFixture[str]) -> None:
    """`runs list --help` says where the database comes from without --db."""
    with pytest.raises(SystemExit) as exited:
        run(["runs", "list", "--help"])
    assert exited.value.code == 0
    assert f"${DB_VARIABLE}" in capsys.readouterr().out


def test_demo_keeps_its_own_default_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo, which starts its file afresh, never takes ARUNTIME_DB's database."""
    monkeypatch.setenv(DB_VARIABLE, "precious.db")
    assert _parser().parse_args(["demo"]).db == DEFAULT_DB


# -- read-only files, directories and mounts -----------------------------------------------


@pytest.fixture
def copy(db: Path, tmp_path: Path) -> Path:
    """A copy of the module's database, alone in a directory of its own."""
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(db, folder / "runs.db")
    return folder / "runs.db"


def test_runs_list_reads_a_database_in_a_read_only_directory(copy: Path) -> None:
    """A 0444 file in a 0555 directory (as on a read-only mount) is listed."""
    with read_only(copy.parent, copy):
        listed = unprivileged.run(["-m", "aruntime", "runs", "list"], ARUNTIME_DB=str(copy))
    assert listed.returncode == 0, listed.stderr
    assert "greeting" in listed.stdout
    assert beside(copy) == ["runs.db"]


def test_runs_show_of_a_read_only_file_leaves_nothing_beside_it(copy: Path) -> None:
    """Reading a 0444 file in a writable directory makes no -wal or -shm file."""
    with read_only(copy):
        shown = unprivileged.run(["-m", "aruntime", "runs", "show", "payment", "--db", copy])
    assert shown.returncode == 0, shown.stderr
    assert "status    failed" in shown.stdout
    assert beside(copy) == ["runs.db"]


def test_unreadable_wal_is_named_in_the_error(copy: Path) -> None:
    """A -wal with commits that cannot be read (no -shm, read-only directory) is named."""
    copy.with_name("runs.db-wal").write_bytes(b"\0" * 32)
    with read_only(copy.parent, copy):
        listed = unprivileged.run(["-m", "aruntime", "runs", "list", "--db", copy])
    assert listed.returncode == 2
    assert f"cannot read {copy}: {copy}-wal holds commits" in listed.stderr


def test_runs_show_names_branch_operations_sleeps_and_cancellation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operations are listed by identity (branch and position), sleeps with their wake-up,
    and a requested cancellation with its reason."""
    path = tmp_path / "ops.db"

    async def make() -> None:
        async with SqliteStore(path) as store:
            events: list[Event] = [
                RunStarted(sequence=1, at=1.0, run_id="ops", workflow="cli.hello", args="[[],{}]"),
                StepStarted(
                    sequence=2, at=2.0, position=1, step="cli.greet", attempt=1, branch="2"
                ),
                SleepStarted(sequence=3, at=3.0, position=1, wake_at=100.0),
                CancelRequested(sequence=4, at=4.0, reason="operator said so"),
            ]
            await store.append("ops", events, 0)

    asyncio.run(make())
    code, out, _ = cli(capsys, "runs", "show", "ops", "--db", path)
    assert code == 0
    state, history = out.split("\nhistory\n")
    assert "cancel    requested: operator said so" in state
    rows = {
        line.split()[0]: line.split()[:4]
        for line in state.split("\noperations\n")[1].splitlines()[1:]
    }
    assert rows["2.1"] == ["2.1", "step", "cli.greet", "running"]
    assert rows["1"] == ["1", "sleep", "-", "until"]
    assert "op 2.1 step 'cli.greet' attempt 1" in history
    assert "reason operator said so" in history


@pytest.mark.parametrize(
    ("run_id", "code", "says"),
    [
        ("greeting", 0, '"hello ada"'),
        ("payment", 3, "card declined"),
        ("stuck", 5, "restart budget exhausted"),
        ("nobody", 1, "no run 'nobody'"),
    ],
)
def test_runs_wait_exit_status_tells_how_the_run_ended(
    db: Path, capsys: pytest.CaptureFixture[str], run_id: str, code: int, says: str
) -> None:
    """0 completed (result printed), 3 failed, 5 parked, 1 no such run."""
    got, out, err = cli(capsys, "runs", "wait", run_id, "--db", db, "--timeout", "5")
    assert got == code, out + err
    assert says in out + err
