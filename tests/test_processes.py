"""Real processes around one SQLite file: workers that own it, clients and admins beside.

The test process is the client; workers are `aruntime worker --import process_jobs`
child processes (killed with SIGKILL, or stopped with SIGTERM, where the test says so).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aruntime import Client, ClientHandle, RunCancelledError, RunStatus
from aruntime.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
START_TIMEOUT = 30.0


class Worker:
    """An `aruntime worker` child process on `db`."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.log = db.with_name(f"worker-{time.monotonic_ns()}.log")
        self._err = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aruntime",
                "worker",
                "--db",
                str(db),
                "--import",
                "process_jobs",
                *extra,
            ],
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    async def ready(self, client: Client) -> None:
        """Wait until the worker has recorded itself as the file's owner."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            owner = await client.store.owner_info()
            if owner is not None and owner.pid == self.proc.pid:
                return
            assert self.proc.poll() is None, self.log.read_text()
            await asyncio.sleep(0.02)
        raise AssertionError("the worker did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._err.close()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._err.close()
        return code, self.log.read_text()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()


def url(db: Path) -> str:
    return f"sqlite:///{db}"


async def step_started(client: Client, run_id: str) -> None:
    """Wait until the run's first step has started in the worker."""
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            seen = client.store.change_counter()
            if (
                run_id in {i.run_id for i in await client.list()}
                and (await client.state(run_id)).steps
            ):
                return
            await client.store.wait_changed(seen, 0.05)


async def run(*command: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run, list(command), capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def snapshot(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        events = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    return runs, events


async def test_client_starts_a_run_that_the_worker_runs(db: Path, workers: list[Worker]) -> None:
    """A start from this process runs in the worker; the result comes back here."""
    async with Client(url(db)) as client:
        workers.append(worker := Worker(db))
        await worker.ready(client)
        handle: ClientHandle[int] = await client.start("process_jobs.double", 21, run_id="d")
        assert await handle.result(timeout=30) == 42


async def test_client_cancels_and_resumes_runs_of_the_worker(
    db: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    """A cancel from this process ends the worker's run; a resume runs a parked one."""
    gate = tmp_path / "gate"
    async with Client(url(db)) as client:
        workers.append(worker := Worker(db))
        await worker.ready(client)
        handle: ClientHandle[str] = await client.start("process_jobs.gated", str(gate), run_id="c")
        await client.cancel("c", reason="from another process")
        with pytest.raises(RunCancelledError, match="from another process"):
            await handle.result(timeout=30)
        await client.start("process_jobs.gated", str(gate), run_id="p")
        await step_started(client, "p")
        worker.kill()
    async with SqliteStore(db) as owner:  # park it, as a supervisor would
        await owner.park("p", "parked by the test")
    gate.write_text("yes")
    async with Client(url(db)) as client:
        workers.append(worker := Worker(db))
        await worker.ready(client)
        assert (await client.store.get_run("p")).parked  # type: ignore[union-attr]
        await client.resume("p")
        assert await client.handle("p").result(timeout=30) == "opened: yes"


async def test_result_survives_the_owner_being_killed(
    db: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    """The client waits through a SIGKILL of the owner; the next owner's result reaches it."""
    gate = tmp_path / "gate"
    async with Client(url(db)) as client:
        workers.append(first := Worker(db))
        await first.ready(client)
        handle: ClientHandle[str] = await client.start("process_jobs.gated", str(gate), run_id="k")
        waiting = asyncio.ensure_future(handle.result(timeout=60))
        await step_started(client, "k")
        first.kill()
        gate.write_text("after the kill")
        await asyncio.sleep(0.1)
        assert not waiting.done()
        workers.append(second := Worker(db))
        assert await waiting == "opened: after the kill"
        await second.ready(client)


async def test_admin_without_the_workflows_changes_nothing(
    db: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    """A process that opens a Runtime without importing the workflows leaves every run as
    it was, and the real worker then finishes them."""
    gate = tmp_path / "gate"
    async with Client(url(db)) as client:
        workers.append(worker := Worker(db))
        await worker.ready(client)
        await client.start("process_jobs.gated", str(gate), run_id="a")
        await step_started(client, "a")
        worker.kill()
    before = snapshot(db)
    admin = (
        "import asyncio, aruntime\n"
        "async def main():\n"
        f"    async with aruntime.Runtime({url(db)!r}) as rt:\n"
        "        print(len(await rt.runs()))\n"
        "        await asyncio.sleep(0.3)\n"
        "asyncio.run(main())\n"
    )
    assert (await run(sys.executable, "-c", admin)).strip() == "1"
    assert snapshot(db) == before
    gate.write_text("done")
    async with Client(url(db)) as client:
        workers.append(worker := Worker(db))
        assert await client.handle("a").result(timeout=30) == "opened: done"


async def test_run_started_by_a_script_is_finished_by_a_worker_that_imports_it(
    db: Path, workers: list[Worker]
) -> None:
    """`python process_jobs.py` records `process_jobs.double`, which the worker runs."""
    await run(sys.executable, str(HERE / "process_jobs.py"), str(db), "m", "5")
    async with Client(url(db)) as client:
        (request,) = await client.store.pending()
        assert request.workflow == "process_jobs.double"
        workers.append(Worker(db))
        assert await client.handle("m").result(timeout=30) == 10


async def test_worker_stops_cleanly_on_sigterm(
    db: Path, tmp_path: Path, workers: list[Worker]
) -> None:
    """SIGTERM ends the worker with status 0 within its grace; the run waits, unharmed."""
    gate = tmp_path / "gate"
    async with Client(url(db)) as client:
        workers.append(worker := Worker(db, "--grace", "0.5"))
        await worker.ready(client)
        await client.start("process_jobs.gated", str(gate), run_id="t")
        await step_started(client, "t")
        began = time.monotonic()
        code, err = worker.stop()
        assert code == 0, err
        assert time.monotonic() - began < 10
        assert await client.store.owner_info() is None
        info = await client.store.get_run("t")
        assert info is not None
        assert (info.status, info.parked) == (RunStatus.RUNNING, False)
        gate.write_text("later")
        workers.append(Worker(db))
        assert await client.handle("t").result(timeout=30) == "opened: later"
