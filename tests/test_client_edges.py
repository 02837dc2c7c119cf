"""Edges of the Client, the inbox, the worker and the `runs` commands: a start that conflicts
with a run or a waiting start, a request for a run whose log is damaged, a resume applied
between two reads, files that cannot be written or whose names hold `?` or `%xx`, a bad
`--grace`."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aruntime import Client, RunIdConflictError, Runtime, step, workflow
from aruntime.store import MemoryStore

HERE = Path(__file__).parent


@step
async def add_one(x: int) -> int:
    return x + 1


@workflow(name="findings.plus_one")
async def plus_one(x: int) -> int:
    return await add_one(x)


@step
async def forever() -> None:
    await asyncio.Event().wait()


@workflow(name="findings.stuck")
async def stuck() -> None:
    await forever()


async def _cli(*command: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(command), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(params=["memory", "sqlite"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, Client]]:
    if request.param == "memory":
        rt = Runtime()
        async with rt, Client(rt.store) as client:
            yield rt, client
    else:
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        async with Runtime(url) as rt, Client(url) as client:
            yield rt, client


# 1. A start of an existing id with other arguments: Runtime.start says RunIdConflictError,
#    Client.start silently hands back the other run.


async def test_client_start_of_an_existing_id_with_other_args_is_a_conflict(
    pair: tuple[Runtime, Client],
) -> None:
    rt, client = pair
    assert await (await client.start(plus_one, 1, run_id="x")).result(timeout=5) == 2
    with pytest.raises(RunIdConflictError):  # what the owner's own API says
        await rt.start(plus_one, 41, run_id="x")
    with pytest.raises(RunIdConflictError):
        await client.start(plus_one, 41, run_id="x")


async def test_client_start_conflicts_with_a_pending_start_of_the_same_id(
    tmp_path: Path,
) -> None:
    """With no runtime open (or before it applies the first), a second start of the same id
    with another workflow or other arguments is accepted, and then dropped by the owner
    without a word: its caller's handle returns the other run's result."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with Client(url) as client:
        await client.start(plus_one, 1, run_id="p")
        with pytest.raises(RunIdConflictError):
            await client.start(stuck, run_id="p")
        with pytest.raises(RunIdConflictError):
            await client.start(plus_one, 99, run_id="p")


# 2. A request for a run whose log is damaged stops the owner's inbox for good: every
#    later request, for every run, waits forever.


async def test_inbox_goes_on_after_a_request_for_a_run_with_a_damaged_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    async with Runtime(url) as rt:
        await rt.start(stuck, run_id="bad")
        async with asyncio.timeout(5):
            while not (await rt.state("bad")).steps:  # noqa: ASYNC110 - the step starts in a task of the runtime
                await asyncio.sleep(0.01)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE events SET data = data || ' ' WHERE run_id = 'bad' AND sequence = 1")
    conn.close()
    async with Client(url) as client:
        await client.cancel("bad", reason="give up")
        handle = await client.start(plus_one, 1, run_id="good")
    async with Runtime(url), Client(url) as client:
        handle = client.handle("good", plus_one)
        assert await handle.result(timeout=5) == 2
        assert await client.store.pending() == []


# 3. `aruntime runs wait` is a reading command, yet it fails on a database file that this
#    user cannot write (list and show work).


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a command as nobody",
)
async def test_runs_wait_works_on_a_file_this_user_cannot_write() -> None:
    folder = Path(tempfile.mkdtemp(prefix="aruntime-ro-"))  # under /tmp: nobody can reach it
    try:
        await _wait_as_nobody(folder)
    finally:
        shutil.rmtree(folder)


async def _wait_as_nobody(folder: Path) -> None:
    path = folder / "runs.db"
    async with Runtime(f"sqlite:///{path}") as rt:
        await (await rt.start(plus_one, 1, run_id="r")).result()
    os.chmod(folder, 0o755)  # readable by nobody, writable by root only
    os.chmod(path, 0o644)
    shown = await _cli(
        *NOBODY, sys.executable, "-m", "aruntime", "runs", "show", "r", "--db", str(path)
    )
    if shown.returncode != 0:
        pytest.skip(f"nobody cannot read the test's directory: {shown.stderr}")
    waited = await _cli(
        *NOBODY, sys.executable, "-m", "aruntime", "runs", "wait", "r", "--db", str(path)
    )
    assert (waited.returncode, waited.stdout.strip()) == (0, "2"), waited.stderr


# 4. The `runs` commands that write turn the path into a URL without quoting it: a path
#    that holds `%xx` or `?` names another file, or is refused as a bad URL.


@pytest.mark.parametrize("name", ["50%25 off", "what?.db"])
async def test_runs_commands_take_any_file_name(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "runs.db"
    async with Runtime(f"sqlite:///{tmp_path / 'x.db'}") as rt:
        await (await rt.start(plus_one, 1, run_id="r")).result()
    shutil.copy(tmp_path / "x.db", path)
    done = await _cli(sys.executable, "-m", "aruntime", "runs", "wait", "r", "--db", str(path))
    assert (done.returncode, done.stdout.strip()) == (0, "2"), done.stderr
    listed = await _cli(sys.executable, "-m", "aruntime", "runs", "list", "--db", str(path))
    assert listed.returncode == 0, listed.stderr


# 5. `aruntime worker --grace inf` starts, and only refuses its grace when told to stop,
#    with exit status 2 after it ran for hours.


def test_worker_refuses_a_bad_grace_at_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aruntime",
            "worker",
            "--db",
            str(path),
            "--import",
            "process_jobs",
            "--grace",
            "inf",
        ],
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the worker ran with --grace inf; stopped, it exited {proc.returncode}: {err}")
    assert proc.returncode == 2, err
    assert "--grace" in err, err


# 6. result() reads the run (parked), then the inbox (the resume already applied and
#    consumed), and raises RunParkedError for a run that was just resumed: seen as a flaky
#    failure of test_processes.py::test_client_cancels_and_resumes_runs_of_the_worker.


class _LatePending(MemoryStore):
    """A client's look at one run's pending requests comes after the next consume."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.consumed = asyncio.Event()

    async def pending(self, *, run_id: str | None = None, **kwargs: Any) -> list[Any]:
        if self.hold and run_id is not None:
            await self.consumed.wait()
        return await super().pending(run_id=run_id, **kwargs)

    async def consume(self, request_id: int, *args: Any, **kwargs: Any) -> None:
        await super().consume(request_id, *args, **kwargs)
        self.consumed.set()


async def test_result_does_not_call_a_just_resumed_run_parked() -> None:
    store = _LatePending()
    async with Runtime(store) as rt, Client(store) as client:
        await rt.start(stuck, run_id="q")
        async with asyncio.timeout(5):
            while not (await rt.state("q")).steps:  # noqa: ASYNC110 - the step starts in a task of the runtime
                await asyncio.sleep(0.01)
        await store.park("q", "parked by the test")
        store.hold = True
        waiting: asyncio.Future[Any] = asyncio.ensure_future(client.handle("q").result(timeout=0.5))
        await asyncio.sleep(0.05)  # it has read the run, parked, and looks at the inbox
        await client.resume("q")
        with pytest.raises(TimeoutError):  # resumed and running again, not parked
            await waiting
