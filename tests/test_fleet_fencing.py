"""Fencing of the PostgreSQL fleet: appends and parks of a worker that lost its lease never
commit, whenever they were made; runs only one worker can run are all claimed by it; a
release racing an append leaves the run claimable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pg_helpers import PG_URL, pg_url

from aruntime.errors import ConcurrencyError, StoreError
from aruntime.events import RunStarted, SleepStarted, StepStarted
from aruntime.store import OwnerInfo
from aruntime.store.postgres import PostgresStore

LEASE = {"lease": 1.0, "heartbeat": 0.5, "poll_interval": 0.1}


@pytest.fixture
async def pair(schema: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two workers of one fleet, both running workflow `wf` (no fleet loops: the test
    drives claims and renewals by hand)."""
    first = PostgresStore.from_url(pg_url(schema, **LEASE))
    second = PostgresStore.from_url(pg_url(schema, **LEASE))
    await first.open()
    await second.open()
    for store in (first, second):
        await store.set_owner_info(OwnerInfo(pid=1, workflows=("wf",)))
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


def started(run_id: str) -> RunStarted:
    return RunStarted(sequence=1, at=time.time(), run_id=run_id, workflow="wf", args="[[],{}]")


async def row(schema: str, run_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(PG_URL)
    try:
        found = await conn.fetchrow(
            f"SELECT version, epoch, owner, parked_reason FROM {schema}.runs WHERE run_id = $1",
            run_id,
        )
        assert found is not None
        return found
    finally:
        await conn.close()


async def take_over(first: PostgresStore, second: PostgresStore, run_id: str) -> None:
    """`first` holds the run; its lease runs out and `second` claims it."""
    assert first.holds(run_id)
    await asyncio.sleep(LEASE["lease"] + 0.3)
    assert await second.claim(10) == [run_id]


async def test_a_stale_append_made_after_the_heartbeat_saw_the_loss_is_refused(
    schema: str, pair: tuple[PostgresStore, PostgresStore]
) -> None:
    """A worker frozen past its lease: another claims the run, sleeps it in the database
    (releases it). The stale worker wakes; its heartbeat learns the loss first, and the
    step outcome its runner hands on next must be refused. It was sent with epoch 0 (the
    epoch is looked up when the batch is written, after the loss forgot it), which
    claims an unheld run: the stale worker's append committed."""
    first, second = pair
    await first.append("r1", [started("r1")], 0)
    await take_over(first, second, "r1")
    await second.release([("r1", time.time() + 60)])  # sleeps in the database
    assert await first.renew() == ["r1"]  # the stale worker learns it lost the run
    stale = StepStarted(sequence=2, at=time.time(), position=0, step="s", attempt=1)
    with pytest.raises(ConcurrencyError):
        await first.append("r1", [stale], 1)
    assert (await row(schema, "r1"))["version"] == 1


async def test_an_append_queued_before_the_loss_is_sent_with_the_epoch_it_was_made_under(
    schema: str, pair: tuple[PostgresStore, PostgresStore]
) -> None:
    """The append was handed to the writer while the worker still held the run; the
    loss is learned before the writer builds its batch. The batch must carry the epoch
    the append was made under (and be refused), not 0."""
    first, second = pair
    await first.append("r2", [started("r2")], 0)
    await take_over(first, second, "r2")
    await first.append("blk", [started("blk")], 0)  # first holds "blk" (and thinks "r2")
    await second.release([("r2", time.time() + 60)])
    # Keep first's writer busy with an append to "blk" (its row is locked here), so that
    # the stale append to "r2" waits in the queue while the heartbeat learns the loss.
    conn = await asyncpg.connect(PG_URL)
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute(f"SELECT 1 FROM {schema}.runs WHERE run_id = 'blk' FOR UPDATE")
        step = StepStarted(sequence=2, at=time.time(), position=0, step="s", attempt=1)
        busy = asyncio.ensure_future(first.append("blk", [step], 1))
        await asyncio.sleep(0.2)
        pending = asyncio.ensure_future(first.append("r2", [step], 1))
        await asyncio.sleep(0.1)  # queued, with first still holding "r2" as it believes
        assert first.holds("r2")
        # the heartbeat: lost (renew itself waits on "blk"'s lock, so it is done by hand)
        first._lost("r2")  # what renew() does for a run it finds taken over
        await lock.rollback()
    finally:
        await conn.close()
    await busy
    with pytest.raises(ConcurrencyError):
        await pending
    assert (await row(schema, "r2"))["version"] == 1


async def test_a_stale_worker_cannot_park_a_run_another_worker_holds(
    schema: str, pair: tuple[PostgresStore, PostgresStore]
) -> None:
    """Parking is a write of the run's index row; a worker whose lease was taken over
    (it does not know yet: frozen) parks the run, and the park clears the live holder's
    lease (owner NULL) and stops the run in the whole fleet."""
    first, second = pair
    await first.append("r3", [started("r3")], 0)
    await take_over(first, second, "r3")
    before = await row(schema, "r3")
    with pytest.raises((ConcurrencyError, StoreError)):
        await first.park("r3", "NonDeterminismError seen by a stale worker")
    after = await row(schema, "r3")
    assert after["parked_reason"] is None
    assert after["owner"] == before["owner"] == second.worker_id


async def test_a_due_sleep_of_a_stale_holder_is_not_written_after_release(
    schema: str, pair: tuple[PostgresStore, PostgresStore]
) -> None:
    """The same as the first finding through a sleep: the stale worker appends the
    SleepStarted it was about to write."""
    first, second = pair
    await first.append("r4", [started("r4")], 0)
    await take_over(first, second, "r4")
    await second.release([("r4", None)])  # released at once (e.g. shutting down)
    await first.renew()
    stale = SleepStarted(sequence=2, at=time.time(), position=0, wake_at=time.time() + 10)
    with pytest.raises(ConcurrencyError):
        await first.append("r4", [stale], 1)
    record = await row(schema, "r4")
    assert record["version"] == 1


async def test_runs_only_one_worker_can_run_are_all_claimed_by_it(schema: str) -> None:
    """Two workers: one runs `wf` only, the other `wf` and `other`. Ten runs of `other`
    wait, and only the second worker can run them; its fair share is computed over every
    live worker that runs any of its workflows (two), so it claims five and the other
    five stay unclaimed for as long as those five run, far past a lease."""
    narrow = PostgresStore.from_url(pg_url(schema, **LEASE))
    wide = PostgresStore.from_url(pg_url(schema, **LEASE))
    await narrow.open()
    await wide.open()
    try:
        await narrow.set_owner_info(OwnerInfo(pid=1, workflows=("wf",)))
        await wide.set_owner_info(OwnerInfo(pid=2, workflows=("other", "wf")))
        conn = await asyncpg.connect(PG_URL)
        try:
            for i in range(10):  # started by a client: nobody holds them
                await conn.execute(
                    f"INSERT INTO {schema}.runs (run_id, workflow, status, version, "
                    "created_at, updated_at) VALUES ($1, 'other', 'running', 1, 0, 0)",
                    f"o{i}",
                )
        finally:
            await conn.close()
        claimed = await wide.claim(200)
        claimed += await wide.claim(200)  # and again: nothing else is runnable
        assert len(claimed) == 10
    finally:
        await narrow.aclose()
        await wide.aclose()


async def test_an_append_that_lands_after_its_release_leaves_the_run_claimable(
    schema: str, pair: tuple[PostgresStore, PostgresStore]
) -> None:
    """A worker releases a run it holds but does not run (an orphan, or at shutdown)
    while an append it made under its claim (a cancel, a resume) waits in the writer's
    queue. The append commits after the release: the epoch still matches, so the row gets
    `owner` = the worker again but keeps `lease_until` NULL. If that worker then dies,
    no claim ever takes the run (`lease_until < now()` is never true for NULL)."""
    first, second = pair
    await first.append("r5", [started("r5")], 0)
    await first.append("blk", [started("blk")], 0)
    conn = await asyncpg.connect(PG_URL)
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute(f"SELECT 1 FROM {schema}.runs WHERE run_id = 'blk' FOR UPDATE")
        step = StepStarted(sequence=2, at=time.time(), position=0, step="s", attempt=1)
        busy = asyncio.ensure_future(first.append("blk", [step], 1))
        await asyncio.sleep(0.2)
        pending = asyncio.ensure_future(first.append("r5", [step], 1))
        await asyncio.sleep(0.1)
        await first.release([("r5", None)])
        await lock.rollback()
    finally:
        await conn.close()
    await busy
    await pending
    await first.aclose()  # the worker dies (no release at shutdown)
    await asyncio.sleep(LEASE["lease"] + 0.3)
    assert "r5" in await second.claim(10)


async def test_a_session_stalled_inside_a_transaction_lets_go_of_its_rows_after_a_lease(
    schema: str,
) -> None:
    """A worker frozen between two statements of a transaction cannot hold a run's row
    lock past its lease: the server ends the session, and the row can be claimed."""
    store = PostgresStore.from_url(pg_url(schema, **LEASE))
    await store.open()
    stalled = await store._connect()  # a connection as the store makes them
    other = await asyncpg.connect(PG_URL)
    try:
        started = RunStarted(sequence=1, at=1.0, run_id="r", workflow="wf", args="[]")
        await store.append("r", [started], 0)
        lock = f"SELECT run_id FROM {schema}.runs WHERE run_id = 'r' FOR UPDATE SKIP LOCKED"
        transaction = stalled.transaction()
        await transaction.start()
        assert len(await stalled.fetch(lock)) == 1
        assert await other.fetch(lock) == []  # held, as by a worker mid-transaction
        await asyncio.sleep(1.6)  # frozen past its lease, inside the transaction
        assert len(await other.fetch(lock)) == 1
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await stalled.execute("SELECT 1")
    finally:
        await other.close()
        stalled.terminate()
        await store.aclose()
