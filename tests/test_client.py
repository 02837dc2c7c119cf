"""The Client beside a Runtime in one process: requests through the inbox, waits, removal."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aruntime import (
    Client,
    ConfigError,
    RunActiveError,
    RunCancelledError,
    RunFailedError,
    RunIdConflictError,
    RunNotFoundError,
    RunStatus,
    Runtime,
    step,
    workflow,
)
from aruntime.errors import NonRetryableError


class _Gate:
    """A gate that step bodies wait on; a fresh asyncio.Event on each test's loop."""

    event: asyncio.Event

    def set(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


gate = _Gate()


@dataclasses.dataclass
class Receipt:
    order: str
    total: int


@step
async def charge(order: str, total: int) -> Receipt:
    return Receipt(order, total)


@workflow(name="client_test.checkout")
async def checkout(order: str, total: int = 5) -> Receipt:
    return await charge(order, total)


@step
async def wait_for_gate() -> None:
    await gate.wait()


@workflow(name="client_test.gated")
async def gated() -> str:
    await wait_for_gate()
    return "through"


@step
async def refuse() -> None:
    raise NonRetryableError("card declined")


@workflow(name="client_test.failing")
async def failing() -> None:
    await refuse()


@pytest.fixture(autouse=True)
async def closed_gate() -> None:
    gate.event = asyncio.Event()


@pytest.fixture(params=["memory", "sqlite"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, Client]]:
    """A runtime, and a client of its store (the store object, or the file)."""
    if request.param == "memory":
        rt = Runtime()
        async with rt, Client(rt.store) as client:
            yield rt, client
    else:
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        async with Runtime(url) as rt, Client(url) as client:
            yield rt, client


async def test_start_from_the_client_runs_in_the_runtime(pair: tuple[Runtime, Client]) -> None:
    """A client's start is applied by the runtime; the result comes back typed."""
    _, client = pair
    handle = await client.start(checkout, "o-1", total=7, run_id="o-1")
    assert await handle.result(timeout=5) == Receipt("o-1", 7)


async def test_start_by_name_and_handle_by_id(pair: tuple[Runtime, Client]) -> None:
    """A workflow named by its registered name runs; a handle by id decodes by the name."""
    _, client = pair
    await client.start("client_test.checkout", "o-2", run_id="o-2")
    assert await client.handle("o-2").result(timeout=5) == Receipt("o-2", 5)


async def test_starting_an_id_again_returns_the_same_run(pair: tuple[Runtime, Client]) -> None:
    """A second start of one id is the same run; of another workflow, a conflict."""
    _, client = pair
    first = await client.start(checkout, "o-3", run_id="o-3")
    await first.result(timeout=5)
    again = await client.start(checkout, "o-3", run_id="o-3")
    assert await again.result(timeout=5) == Receipt("o-3", 5)
    with pytest.raises(RunIdConflictError):
        await client.start(gated, run_id="o-3")


async def test_failed_and_cancelled_runs_raise_the_runtimes_errors(
    pair: tuple[Runtime, Client],
) -> None:
    """result() raises RunFailedError naming the step, RunCancelledError with the reason."""
    _, client = pair
    with pytest.raises(RunFailedError, match="card declined") as failed:
        await (await client.start(failing, run_id="f")).result(timeout=5)
    assert failed.value.step is not None
    handle = await client.start(gated, run_id="g")
    await client.cancel("g", reason="changed my mind")
    with pytest.raises(RunCancelledError, match="changed my mind"):
        await handle.result(timeout=5)


async def test_result_times_out_while_the_run_goes_on(pair: tuple[Runtime, Client]) -> None:
    """A bounded wait raises TimeoutError; the run still ends later."""
    _, client = pair
    handle = await client.start(gated, run_id="slow")
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.05)
    gate.set()
    assert await handle.result(timeout=5) == "through"


async def test_unknown_run_ids_raise_run_not_found(pair: tuple[Runtime, Client]) -> None:
    """result, cancel, resume and delete of a run that does not exist say so."""
    _, client = pair
    with pytest.raises(RunNotFoundError):
        await client.handle("nope").result()
    for call in (client.cancel("nope"), client.resume("nope"), client.delete("nope")):
        with pytest.raises(RunNotFoundError):
            await call


async def test_delete_and_prune_remove_only_ended_runs(pair: tuple[Runtime, Client]) -> None:
    """An active run is refused with RunActiveError; ended ones go."""
    _, client = pair
    await (await client.start(checkout, "a", run_id="a")).result(timeout=5)
    await (await client.start(checkout, "b", run_id="b")).result(timeout=5)
    await client.start(gated, run_id="active")
    await aruntime_wait_running(client, "active")
    with pytest.raises(RunActiveError, match="cancel it first"):
        await client.delete("active")
    await client.delete("a")
    assert await client.prune(older_than=0, status=RunStatus.COMPLETED) == 1
    assert [i.run_id for i in await client.list()] == ["active"]
    with pytest.raises(ConfigError):
        await client.prune(older_than=-1)


async def test_list_filters_by_status_workflow_and_limit(pair: tuple[Runtime, Client]) -> None:
    """`list` narrows by status, workflow (object or name) and limit."""
    _, client = pair
    for run_id in ("x", "y"):
        await (await client.start(checkout, run_id, run_id=run_id)).result(timeout=5)
    await client.start(gated, run_id="z")
    await aruntime_wait_running(client, "z")
    assert [i.run_id for i in await client.list(workflow=checkout)] == ["x", "y"]
    assert [i.run_id for i in await client.list(status=RunStatus.RUNNING)] == ["z"]
    assert [i.run_id for i in await client.list(workflow="client_test.gated")] == ["z"]
    assert len(await client.list(limit=1)) == 1


async def test_unknown_workflow_is_recorded_and_left_waiting(tmp_path: Path) -> None:
    """A start of a workflow no runtime here knows is recorded, not parked, not failed."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with Runtime(url, workflows=[checkout]) as rt, Client(url) as client:
        handle = await client.start(gated, run_id="w")
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.2)
        info = await rt.store.get_run("w")
        assert info is not None
        assert (info.status, info.parked) == (RunStatus.RUNNING, False)
        owner = await rt.store.owner_info()
        assert owner is not None
        assert owner.workflows == ("client_test.checkout",)
    gate.set()
    async with Runtime(url, workflows=[gated]), Client(url) as client:
        assert await client.handle("w").result(timeout=5) == "through"


async def test_requests_made_while_no_runtime_runs_wait_for_one(tmp_path: Path) -> None:
    """A start and a cancel posted with no runtime open are applied, in order, by the next."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with Client(url) as client:
        await client.start(gated, run_id="later")
        await client.cancel("later", reason="not needed")
        with pytest.raises(TimeoutError):
            await client.handle("later").result(timeout=0.05)
    async with Runtime(url), Client(url) as client:
        with pytest.raises(RunCancelledError, match="not needed"):
            await client.handle("later").result(timeout=5)


async def test_resume_from_the_client_unparks_and_runs(tmp_path: Path) -> None:
    """A parked run resumed by a client's request runs again in the runtime."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with Runtime(url) as rt, Client(url) as client:
        await client.start(gated, run_id="p")
        await aruntime_wait_running(client, "p")
        await rt.store.park("p", "parked by the test")
        gate.set()
        await client.resume("p")
        assert await client.handle("p").result(timeout=5) == "through"


@pytest.mark.parametrize("url", ["?mode=ro", "?read_only=1"])
async def test_runtime_refuses_a_read_only_store_and_points_to_client(
    tmp_path: Path, url: str
) -> None:
    """A Runtime on a read-only store is refused at once, naming Client."""
    path = tmp_path / "runs.db"
    async with Runtime(f"sqlite:///{path}"):
        pass
    with pytest.raises(ConfigError, match=r"aruntime\.Client"):
        async with Runtime(f"sqlite:///{path}{url}"):
            pass


async def test_client_of_memory_url_is_refused() -> None:
    """`Client("memory://")` would watch a store nobody runs: refused, with the fix."""
    with pytest.raises(ConfigError, match=r"Client\(rt\.store\)"):
        Client("memory://")


async def test_client_never_writes_a_runs_log(tmp_path: Path) -> None:
    """Without a runtime, a client's requests leave every log as it was."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with Runtime(url) as rt:
        await (await rt.start(checkout, "done", run_id="done")).result()
    async with Client(url) as client:
        before = await client.state("done")
        await client.start(checkout, "new", run_id="new")
        assert await client.state("done") == before
        assert [i.run_id for i in await client.store.list_runs()] == ["done"]  # no new log
        listed = [(i.run_id, i.status, i.version) for i in await client.list()]
        assert listed == [("done", RunStatus.COMPLETED, 4), ("new", RunStatus.PENDING, 0)]
        pending = await client.state("new")
        assert (pending.status, pending.workflow, pending.version) == (
            RunStatus.PENDING,
            checkout.name,
            0,
        )
        assert await client.cancel("done") is RunStatus.COMPLETED  # ended: nothing asked
        assert await client.cancel("new") is RunStatus.PENDING
        assert [r.kind.value for r in await client.store.pending(run_id="done")] == []


async def aruntime_wait_running(client: Client, run_id: str) -> None:
    """Wait until the runtime has applied the start of `run_id`."""
    async with asyncio.timeout(5):
        while (info := await client.store.get_run(run_id)) is None:
            await client.store.wait_changed(client.store.change_counter(), 0.01)
    assert info.status is RunStatus.RUNNING


async def test_a_start_waiting_in_the_inbox_is_a_pending_run_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A start posted while no runtime runs is a PENDING run to state(), list(), the CLI
    and a runtime's handle, which waits for it instead of calling it unknown."""
    from aruntime._cli import run as cli

    db = tmp_path / "runs.db"
    url = f"sqlite:///{db}"
    async with Client(url) as client:
        handle = await client.start(checkout, "queued", run_id="queued")
        assert (await handle.state()).status is RunStatus.PENDING
        assert [(i.run_id, i.status) for i in await client.list()] == [
            ("queued", RunStatus.PENDING)
        ]
        assert await client.list(status=RunStatus.COMPLETED) == []
    assert await asyncio.to_thread(cli, ["runs", "list", "--db", str(db)]) == 0
    assert "queued" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, ["runs", "show", "queued", "--db", str(db)]) == 0
    assert "pending, its start waits" in capsys.readouterr().out
    async with Runtime(url) as rt:
        receipt = await rt.handle("queued").result()  # found, though not applied yet
    assert receipt == Receipt("queued", 5)
    assert await asyncio.to_thread(cli, ["runs", "cancel", "queued", "--db", str(db)]) == 0
    assert "has already ended (completed); nothing to cancel" in capsys.readouterr().out
