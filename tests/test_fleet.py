"""The PostgreSQL fleet with real processes: takeover after SIGKILL, fencing of a frozen
worker, leases given up at shutdown and while a run sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fleet_helpers import FAST_LEASES, FleetWorker, audit, held_by, writers_after
from fleet_jobs import chaos, expected_result, read_ledger
from pg_helpers import pg_url

from aruntime import Client, RunCancelledError, Runtime
from aruntime.state import RunStatus

pytestmark = pytest.mark.slow


@pytest.fixture
def workers() -> Iterator[list[FleetWorker]]:
    started: list[FleetWorker] = []
    yield started
    for worker in started:
        if worker.alive():
            worker.kill()


@pytest.fixture
async def client(url: str) -> AsyncIterator[Client]:
    async with Client(url) as opened:
        yield opened


async def start_workers(
    count: int, url: str, schema: str, directory: Path, workers: list[FleetWorker]
) -> list[FleetWorker]:
    new = [FleetWorker(url, directory, f"w{len(workers) + i}") for i in range(count)]
    workers += new
    for worker in new:
        await worker.ready(schema)
    return new


async def wait_for(predicate: object, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a test's limit
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def results(client: Client, run_ids: list[str], timeout: float = 60.0) -> list[object]:  # noqa: ASYNC109 - a test's limit
    return [await client.handle(run_id).result(timeout=timeout) for run_id in run_ids]


async def test_a_killed_workers_runs_are_taken_over(
    tmp_path: Path, url: str, schema: str, client: Client, workers: list[FleetWorker]
) -> None:
    """Two workers share the runs; SIGKILL one mid-step and the other finishes all of them,
    each step recorded once, no append committed under a lost claim."""
    first, second = await start_workers(2, url, schema, tmp_path, workers)
    run_ids = [f"r{i}" for i in range(12)]
    for run_id in run_ids:
        await client.start(chaos, 6, 0.15, 0, 0.0, 0, run_id=run_id)
    await wait_for(lambda: held_by(schema, first.pid))
    await wait_for(lambda: held_by(schema, second.pid))
    victims = await held_by(schema, first.pid)
    first.kill()
    killed_at = time.time()
    assert await results(client, run_ids) == [expected_result(6)] * len(run_ids)
    assert await writers_after(schema, first.pid, killed_at) == 0
    found = await audit(schema)
    assert found.violations == []
    assert found.takeovers >= len(victims) > 0
    bodies = read_ledger(tmp_path)
    assert {key[0] for key in bodies} == set(run_ids)
    for run_id in run_ids:
        state = await client.state(run_id)
        assert state.status is RunStatus.COMPLETED
        attempts = sorted(s.attempts for s in state.steps.values())
        if run_id in victims:  # the step in flight at the kill ran again, as attempt 2
            assert attempts[:-1] == [1] * (len(attempts) - 1), attempts
            assert attempts[-1] <= 2
        else:
            assert attempts == [1] * len(attempts)


async def test_a_frozen_worker_is_fenced_when_it_wakes(
    tmp_path: Path, url: str, schema: str, client: Client, workers: list[FleetWorker]
) -> None:
    """SIGSTOP a worker past its lease: the other takes its runs over. After SIGCONT the
    frozen one's appends are refused: nothing it writes for those runs commits."""
    frozen, other = await start_workers(2, url, schema, tmp_path, workers)
    run_ids = [f"r{i}" for i in range(10)]
    for run_id in run_ids:
        await client.start(chaos, 8, 0.2, 0, 0.0, 0, run_id=run_id)
    await wait_for(lambda: held_by(schema, frozen.pid))
    await wait_for(lambda: held_by(schema, other.pid))
    frozen.freeze()
    stopped_at = time.time()
    victims = set(await held_by(schema, frozen.pid))
    assert victims
    # The other worker takes the frozen one's runs once their leases run out.
    await wait_for(lambda: _all_held_by(schema, other.pid, victims), timeout=20)
    taken_at = time.time()
    frozen.cont()
    assert await results(client, run_ids) == [expected_result(8)] * len(run_ids)
    found = await audit(schema)
    assert found.violations == []
    assert found.takeovers >= len(victims)
    # Nothing the frozen worker wrote after the takeover committed for the runs it lost.
    conn_events = await _events_of(schema, frozen.pid, victims, taken_at)
    assert conn_events == 0
    assert stopped_at < taken_at
    log = (tmp_path / f"worker-{frozen.name}.log").read_text()
    assert frozen.alive(), log


async def _all_held_by(schema: str, pid: int, runs: set[str]) -> bool:
    # A run taken over may also have ended since (the last steps of a victim can end
    # between two looks): every victim is ended or the other worker's.
    return await _none_held_by_others(schema, runs, pid)


async def _none_held_by_others(schema: str, runs: set[str], pid: int) -> bool:
    import asyncpg
    from pg_helpers import PG_URL

    conn = await asyncpg.connect(PG_URL)
    try:
        rows = await conn.fetch(
            f"SELECT run_id, owner, status FROM {schema}.runs WHERE run_id = ANY($1::text[])",
            list(runs),
        )
    finally:
        await conn.close()
    return all(
        row["status"] != "running" or (row["owner"] or "").split(":")[1:2] == [str(pid)]
        for row in rows
    )


async def _events_of(schema: str, pid: int, runs: set[str], since: float) -> int:
    import asyncpg
    from pg_helpers import PG_URL

    conn = await asyncpg.connect(PG_URL)
    try:
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.events WHERE run_id = ANY($1::text[]) "
            "AND split_part(writer, ':', 2) = $2 AND written_at > to_timestamp($3)",
            list(runs),
            str(pid),
            since,
        )
        return count
    finally:
        await conn.close()


async def test_a_stopped_worker_hands_its_runs_over_at_once(
    tmp_path: Path, schema: str, workers: list[FleetWorker]
) -> None:
    """SIGTERM releases the worker's leases: the other worker claims its runs well before
    the (long) lease would have run out."""
    url = pg_url(schema, lease=30, heartbeat=5, poll_interval=0.1)
    async with Client(url) as client:
        leaving, staying = await start_workers(2, url, schema, tmp_path, workers)
        run_ids = [f"r{i}" for i in range(8)]
        for run_id in run_ids:
            await client.start(chaos, 10, 0.2, 0, 0.0, 0, run_id=run_id)
        await wait_for(lambda: held_by(schema, leaving.pid))
        assert leaving.terminate() == 0
        began = time.monotonic()
        assert await results(client, run_ids, timeout=25) == [expected_result(10)] * 8
        assert time.monotonic() - began < 15  # far below the 30 s lease
        assert (await audit(schema)).violations == []
        assert staying.alive()


async def test_a_sleeping_run_holds_no_lease(schema: str) -> None:
    """A run that sleeps gives its lease up, sleeps in the database, and is claimed again
    when it is due."""
    url = pg_url(schema, **FAST_LEASES)
    async with Runtime(url, workflows=[chaos]) as rt:
        handle = await rt.start(chaos, 2, 0.0, 2, 3.0, 0, run_id="napper")

        async def unheld() -> bool:
            info = await rt.store.get_run("napper")
            return info is not None and not rt.store.holds("napper")  # type: ignore[attr-defined]

        await wait_for(unheld, timeout=5)
        assert await asyncio.wait_for(handle.result(), 10) == expected_result(2)
    found = await audit(schema)
    assert found.violations == []
    assert found.claims >= 2  # the start, and the claim when it was due


async def test_a_client_cancels_runs_wherever_they_are(
    tmp_path: Path, url: str, schema: str, client: Client, workers: list[FleetWorker]
) -> None:
    """A cancel reaches a run in flight on a worker and a run asleep in the database (no
    lease): the holder or the claimer applies it, and both end cancelled."""
    await start_workers(2, url, schema, tmp_path, workers)
    busy = await client.start(chaos, 200, 0.2, 0, 0.0, 0, run_id="busy")
    asleep = await client.start(chaos, 3, 0.0, 2, 60.0, 0, run_id="asleep")

    async def settled() -> bool:
        import asyncpg
        from pg_helpers import PG_URL

        conn = await asyncpg.connect(PG_URL)
        try:
            rows = dict(await conn.fetch(f"SELECT run_id, owner FROM {schema}.runs"))
        finally:
            await conn.close()
        return rows.get("busy") is not None and "asleep" in rows and rows["asleep"] is None

    await wait_for(settled, timeout=15)  # one runs on a worker, the other sleeps unheld
    await client.cancel("busy", reason="enough")
    await client.cancel("asleep", reason="wake up")
    for handle, reason in ((busy, "enough"), (asleep, "wake up")):
        with pytest.raises(RunCancelledError, match=reason):
            await handle.result(timeout=15)
    assert (await audit(schema)).violations == []
