"""Queues in one runtime (memory and SQLite): limits, order, waits, cancels, restarts."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from run_helpers import wait_until

from aruntime import (
    Client,
    ConfigError,
    RunCancelledError,
    RunFailedError,
    RunStatus,
    Runtime,
    receive,
    run_child,
    start_child,
    step,
    workflow,
)
from aruntime.queues import Queue, Rate
from aruntime.testing import FakeClock

SERIAL = Queue("queues_test.serial", concurrency=1, register=False)
PAIRS = Queue("queues_test.pairs", concurrency=2, register=False)
PACED = Queue("queues_test.paced", rate=Rate(2, per=0.3), register=False)
DEFAULT = Queue("queues_test.default", concurrency=1)
"""Registered: a runtime declares it without being told."""


class _Board:
    """What the step bodies did, and a gate they wait on; fresh for each test."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.order: list[str] = []
        self.gate = asyncio.Event()

    def reset(self, *, open_gate: bool = True) -> None:
        self.__init__()  # type: ignore[misc]
        if open_gate:
            self.gate.set()


board = _Board()


@step
async def work(name: str) -> str:
    board.running += 1
    board.most = max(board.most, board.running)
    board.order.append(name)
    try:
        await board.gate.wait()
        await asyncio.sleep(0.005)
    finally:
        board.running -= 1
    return name.upper()


@workflow(name="queues_test.job")
async def job(name: str) -> str:
    return await work(name)


@workflow(name="queues_test.fan")
async def fan(count: int) -> list[str]:
    handles = [await start_child(job, f"c{i}", queue=SERIAL.name) for i in range(count)]
    return [await handle for handle in handles]


@workflow(name="queues_test.listener")
async def listener() -> str:
    return str(await receive("news"))


Opener = Callable[..., Runtime]


async def _exists(rt: Runtime, run_id: str) -> bool:
    return await rt.store.get_run(run_id) is not None


@pytest.fixture(params=["memory", "sqlite"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Makes runtimes on one store (memory or an SQLite file) with the queues given."""
    from aruntime.store import MemoryStore

    memory = MemoryStore()

    def make(*queues: Queue) -> Runtime:
        store = memory if request.param == "memory" else f"sqlite:///{tmp_path / 'q.db'}"
        return Runtime(store, workflows=[job, fan], queues=queues)

    board.reset()
    return make


async def test_a_queue_runs_one_at_a_time_across_a_burst(opener: Opener) -> None:
    """Concurrency 1: every run completes, never two bodies at once, in arrival order."""
    async with opener(SERIAL) as rt:
        handles = [await rt.start(job, f"r{i}", run_id=f"r{i}", queue=SERIAL) for i in range(6)]
        results = [await h.result() for h in handles]
    assert results == [f"R{i}" for i in range(6)]
    assert board.most == 1
    assert board.order == [f"r{i}" for i in range(6)]


async def test_a_queue_holds_its_limit_while_runs_wait_on_a_gate(opener: Opener) -> None:
    """With two places, a third run waits, unexecuted, until one of the two ends."""
    board.reset(open_gate=False)
    async with opener(PAIRS) as rt:
        handles = [await rt.start(job, f"g{i}", queue=PAIRS.name) for i in range(3)]
        await wait_until(lambda: board.running == 2)
        await asyncio.sleep(0.05)
        assert board.running == 2
        info = await rt.store.get_run(handles[2].run_id)
        assert info is not None
        assert info.queued
        assert info.queue == PAIRS.name
        board.gate.set()
        assert [await h.result() for h in handles] == ["G0", "G1", "G2"]
    assert board.most == 2


async def test_runs_with_different_partition_keys_take_turns(opener: Opener) -> None:
    """One tenant's burst does not hold back another's run."""
    async with opener(SERIAL) as rt:
        burst = [await rt.start(job, f"a{i}", queue=SERIAL, partition_key="a") for i in range(4)]
        other = await rt.start(job, "b0", queue=SERIAL, partition_key="b")
        await other.result()
        for handle in burst:
            await handle.result()
    # a0 was admitted at once; b0 goes before the rest of a's burst.
    assert board.order.index("b0") <= 1


async def test_a_lower_priority_number_runs_first(opener: Opener) -> None:
    """Among waiting runs, priority beats arrival."""
    board.reset(open_gate=False)
    async with opener(SERIAL) as rt:
        first = await rt.start(job, "first", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        later = [await rt.start(job, f"p{p}", queue=SERIAL, priority=p) for p in (5, 0, -3)]
        board.gate.set()
        await first.result()
        for handle in later:
            await handle.result()
    assert board.order == ["first", "p-3", "p0", "p5"]


async def test_the_rate_limit_spaces_admissions(opener: Opener) -> None:
    """At most two runs are admitted in any 0.3 s window."""
    async with opener(PACED) as rt:
        handles = [await rt.start(job, f"t{i}", queue=PACED) for i in range(6)]
        for handle in handles:
            await handle.result()
        infos = [await rt.store.get_run(h.run_id) for h in handles]
    times = sorted(i.admitted_at for i in infos if i is not None and i.admitted_at is not None)
    assert len(times) == 6
    for i in range(len(times) - 2):
        assert times[i + 2] - times[i] >= 0.3 - 1e-6


async def test_a_waiting_run_cancelled_ends_at_once_without_running(opener: Opener) -> None:
    """Cancelling a run that waits for its queue ends it; its body never runs."""
    board.reset(open_gate=False)
    async with opener(SERIAL) as rt:
        busy = await rt.start(job, "busy", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        waiting = await rt.start(job, "never", queue=SERIAL)
        assert await waiting.cancel("not needed") is RunStatus.CANCELLED
        with pytest.raises(RunCancelledError):
            await waiting.result()
        board.gate.set()
        assert await busy.result() == "BUSY"
    assert "never" not in board.order


async def test_queued_runs_keep_their_places_across_a_restart(opener: Opener) -> None:
    """The admitted run resumes, the waiting ones wait, and the limit holds throughout."""
    board.reset(open_gate=False)
    async with opener(SERIAL) as rt:
        ids = [(await rt.start(job, f"s{i}", queue=SERIAL)).run_id for i in range(3)]
        await wait_until(lambda: board.running == 1)
    board.running = 0
    board.gate.set()
    async with opener(SERIAL) as rt:
        results = [await rt.handle(run_id).result() for run_id in ids]
    assert results == ["S0", "S1", "S2"]
    assert board.most == 1
    assert board.order == ["s0", "s0", "s1", "s2"]  # s0's body ran again after the restart


async def test_a_runtime_that_does_not_declare_the_queue_leaves_its_runs_waiting(
    opener: Opener,
) -> None:
    """No admission without the queue's limits: the runs wait for a runtime that has them."""
    board.reset(open_gate=False)
    async with opener() as rt:
        with pytest.raises(ConfigError, match="not declared"):
            await rt.start(job, "x", queue=SERIAL)
    async with opener(SERIAL) as rt:
        await rt.start(job, "busy", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        run_id = (await rt.start(job, "y", queue=SERIAL)).run_id
    board.gate.set()
    async with opener() as rt:  # resumes the admitted run, admits nothing
        await wait_until(lambda: board.order.count("busy") == 2)
        await asyncio.sleep(0.05)
        info = await rt.store.get_run(run_id)
        assert info is not None
        assert info.queued
        assert info.status is RunStatus.RUNNING
    async with opener(SERIAL) as rt:
        assert await rt.handle(run_id).result() == "Y"


async def test_a_start_with_other_limits_than_declared_is_refused(opener: Opener) -> None:
    """The Queue passed to start must be the one the runtime admits from."""
    async with opener(SERIAL) as rt:
        other = Queue(SERIAL.name, concurrency=5, register=False)
        with pytest.raises(ConfigError, match="not the limits"):
            await rt.start(job, "x", queue=other)
        with pytest.raises(ConfigError, match="need a queue"):
            await rt.start(job, "x", priority=1)


async def test_registered_queues_are_declared_by_default() -> None:
    """A Queue made at import time is one every runtime of the process admits from."""
    board.reset()
    async with Runtime(workflows=[job]) as rt:
        handle = await rt.start(job, "d", queue=DEFAULT.name)
        assert await handle.result() == "D"


async def test_a_client_starts_a_run_on_a_queue(tmp_path: Path) -> None:
    """A start request with a placement waits for the queue like a local start."""
    board.reset(open_gate=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    async with Runtime(url, workflows=[job], queues=[SERIAL]) as rt:
        busy = await rt.start(job, "busy", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        async with Client(url) as client:
            handle = await client.start(
                job, "via-client", queue=SERIAL.name, priority=2, partition_key="t"
            )
            await wait_until(lambda: _exists(rt, handle.run_id))
            info = await rt.store.get_run(handle.run_id)
            assert info is not None
            assert info.queued
            assert (info.priority, info.partition_key) == (2, "t")
            board.gate.set()
            assert await handle.result() == "VIA-CLIENT"
        await busy.result()
    assert board.most == 1


async def test_a_client_cancel_ends_a_waiting_run(tmp_path: Path) -> None:
    """A cancel request reaches a run that waits for its queue and ends it."""
    board.reset(open_gate=False)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    async with Runtime(url, workflows=[job], queues=[SERIAL]) as rt:
        await rt.start(job, "busy", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        waiting = await rt.start(job, "never", queue=SERIAL)
        async with Client(url) as client:
            await client.cancel(waiting.run_id, reason="late")
            with pytest.raises(RunCancelledError):
                await client.handle(waiting.run_id).result()
        board.gate.set()
    assert "never" not in board.order


async def test_waiting_time_counts_toward_a_timeout() -> None:
    """A run's deadline runs from its start: a run that waited past it ends cancelled."""
    board.reset(open_gate=False)
    async with Runtime(workflows=[job], queues=[SERIAL]) as rt:
        busy = await rt.start(job, "busy", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        late = await rt.start(job, "late", queue=SERIAL, timeout=0.05)
        started = time.monotonic()
        await asyncio.sleep(0.1)
        board.gate.set()
        await busy.result()
        with pytest.raises(RunCancelledError, match="timeout"):
            await late.result()
        assert time.monotonic() - started < 5


async def test_child_runs_wait_for_their_queue(opener: Opener) -> None:
    """A workflow's children started on a queue run one at a time, as its limit says."""
    async with opener(SERIAL) as rt:
        handle = await rt.start(fan, 4)
        assert await handle.result() == ["C0", "C1", "C2", "C3"]
        children = [i for i in await rt.runs() if i.workflow == "queues_test.job"]
    assert board.most == 1
    assert {i.queue for i in children} == {SERIAL.name}


async def test_a_message_sent_to_a_waiting_run_is_received_once_admitted(
    tmp_path: Path,
) -> None:
    """A message that comes while the run waits for its queue is kept for it."""
    board.reset(open_gate=False)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    async with Runtime(url, workflows=[job, listener], queues=[SERIAL]) as rt:
        busy = await rt.start(job, "busy", queue=SERIAL)
        await wait_until(lambda: board.running == 1)
        waiting = await rt.start(listener, queue=SERIAL)
        async with Client(url) as client:
            await client.send(waiting.run_id, "early", topic="news")
            info = await rt.store.get_run(waiting.run_id)
            assert info is not None
            assert info.queued
            board.gate.set()
            await busy.result()
            assert await waiting.result() == "early"


async def test_the_rate_follows_the_runtimes_clock() -> None:
    """On a fake clock the rate's waits pass as the clock jumps, not in real time."""
    board.reset()
    hourly = Queue("queues_test.hourly", rate=Rate(1, per=3600), register=False)
    async with Runtime(workflows=[job], queues=[hourly], clock=FakeClock(autojump=True)) as rt:
        handles = [await rt.start(job, f"h{i}", queue=hourly) for i in range(3)]
        async with asyncio.timeout(10):
            results = [await handle.result() for handle in handles]
        infos = [await rt.store.get_run(handle.run_id) for handle in handles]
    assert results == ["H0", "H1", "H2"]
    times = [i.admitted_at for i in infos if i is not None and i.admitted_at is not None]
    assert [b - a >= 3600 for a, b in itertools.pairwise(times)] == [True, True]


async def test_a_workflow_declared_after_the_runtime_opened_is_admitted() -> None:
    """The admitter asks the runtime what it knows at each admission."""
    async with Runtime(queues=[SERIAL]) as rt:

        @workflow(name="queues_test.late")
        async def late() -> str:
            return "late"

        handle = await rt.start(late, queue=SERIAL)
        async with asyncio.timeout(10):
            assert await handle.result() == "late"


def test_a_lone_queue_instead_of_a_list_is_refused() -> None:
    """`Runtime(queues=q)` raises ConfigError saying it wants a list."""
    with pytest.raises(ConfigError, match="list of Queue"):
        Runtime(queues=SERIAL)  # type: ignore[arg-type]


@workflow(name="queues_test.typo")
async def typo() -> str:
    return await run_child(job, "child", queue="queues_test.no-such-queue")


async def test_a_child_on_a_queue_the_runtime_does_not_declare_fails_the_run() -> None:
    """A typo in a child's queue fails its parent with ConfigError instead of a wait."""
    async with Runtime(workflows=[job, typo], queues=[SERIAL]) as rt:
        handle = await rt.start(typo)
        with pytest.raises(RunFailedError, match="not declared"):
            await handle.result()
