"""Branches (DESIGN §2.7): aruntime.gather and aruntime.TaskGroup, structural identities."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_helpers import kinds, start, wait_until

import aruntime
from aruntime import (
    EventStore,
    MemoryStore,
    NonDeterminismError,
    NonRetryableError,
    RetryPolicy,
    RunParkedError,
    RunStatus,
    Runtime,
    StepContext,
    StepFailedError,
    StepStatus,
    current_step,
    replay,
    step,
    workflow,
)
from aruntime.events import Event, StepCompleted, StepStarted
from aruntime.testing import FakeClock, crash_run

entered: list[str] = []
"""The key of every body that began, in order (a body run twice is listed twice)."""
finished: list[str] = []
"""The key of every body that returned, in order."""
held: set[str] = set()
"""Keys whose bodies wait for their gate before returning."""
gates: dict[str, asyncio.Event] = {}
contexts: dict[str, StepContext] = {}
argument = 1
"""What `changing_argument` passes its second branch's step: changing it between two
runtimes makes the workflow non-deterministic."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test empty records, no held bodies and the original argument."""
    global argument  # noqa: PLW0603 - per-test state of module-level workflows
    entered.clear()
    finished.clear()
    held.clear()
    gates.clear()
    contexts.clear()
    argument = 1


def gate(key: str) -> asyncio.Event:
    """The gate a held body with this key waits on (one per key, made on first use)."""
    return gates.setdefault(key, asyncio.Event())


def runtime(store: EventStore | None = None) -> Runtime:
    """A runtime on `store` (default: a fresh memory store) whose retries never sleep."""
    return Runtime(store, clock=FakeClock(autojump=True))


def completions(events: list[Event]) -> list[str]:
    """The identities of the StepCompleted events of a log, in log order."""
    return [
        f"{e.branch}.{e.position}" if e.branch else str(e.position)
        for e in events
        if isinstance(e, StepCompleted)
    ]


# -- steps and workflows ------------------------------------------------------------------


@step
async def value(key: str, x: int) -> int:
    entered.append(key)
    contexts[key] = current_step()
    if key in held:
        await gate(key).wait()
    finished.append(key)
    return x


@step
async def refuse(key: str) -> int:
    entered.append(key)
    raise NonRetryableError(f"{key} refused")


@workflow
async def three_values() -> list[int]:
    return await aruntime.gather(value("a", 1), value("b", 2), value("c", 3))


async def pair(key: str, x: int) -> int:
    """Two steps in one branch: the second gets the first's result."""
    first = await value(f"{key}1", x)
    return await value(f"{key}2", first + 1)


@workflow
async def chains_between_steps() -> list[int]:
    before = await value("root1", 0)
    results = await aruntime.gather(pair("a", 10), pair("b", 20))
    after = await value("root2", before + sum(results))
    return [before, *results, after]


async def nested_pair(key: str) -> list[int]:
    first = await value(f"{key}-first", 1)
    inner = await aruntime.gather(value(f"{key}-x", 2), value(f"{key}-y", 3))
    return [first, *inner]


@workflow
async def nested_gathers() -> list[list[int]]:
    return await aruntime.gather(nested_pair("p"), nested_pair("q"))


@workflow
async def gather_with_exceptions() -> list[Any]:
    results = await aruntime.gather(
        value("a", 1), refuse("b"), value("c", 3), return_exceptions=True
    )
    return [r if isinstance(r, int) else f"{type(r).__name__} at {r.identity}" for r in results]


@workflow
async def gather_first_exception() -> str:
    try:
        await aruntime.gather(value("slow", 1), refuse("b"))
    except StepFailedError as exc:
        return f"{exc.identity}: {exc.error_message}"
    return "no error"


@workflow
async def gather_failing() -> list[int]:
    return await aruntime.gather(value("a", 1), refuse("b"))


@workflow
async def task_group_values() -> list[int]:
    async with aruntime.TaskGroup() as tg:
        a = tg.create_task(value("a", 1))
        b = tg.create_task(pair("b", 20))
        c = tg.create_task(value("c", 3))
    return [a.result(), b.result(), c.result()]


@workflow
async def task_group_failing() -> str:
    try:
        async with aruntime.TaskGroup() as tg:
            tg.create_task(value("slow", 1))
            tg.create_task(refuse("b"))
    except ExceptionGroup as group:
        return " ".join(
            e.identity if isinstance(e, StepFailedError) else repr(e) for e in group.exceptions
        )
    return "no error"


@workflow
async def gather_then_step() -> int:
    a, b, c = await aruntime.gather(value("a", 1), value("b", 2), value("c", 3))
    return await value("after", a * 100 + b * 10 + c)


@workflow
async def raw_gather() -> list[int]:
    return list(await asyncio.gather(value("a", 1), value("b", 2)))


@workflow
async def raw_create_task() -> int:
    task = asyncio.create_task(value("a", 1))
    return await task


@workflow
async def raw_wait() -> int:
    task = asyncio.ensure_future(value("a", 1))
    done, _ = await asyncio.wait([task])
    return done.pop().result()


@workflow
async def changing_argument() -> list[int]:
    return await aruntime.gather(value("a", 1), value("b", argument))


# -- results and their order --------------------------------------------------------------


async def test_gather_returns_results_in_argument_order_whatever_order_they_finish() -> None:
    """Branches released c, b, a return [a, b, c], as asyncio.gather does."""
    held.update({"a", "b", "c"})
    async with runtime() as rt:
        handle = await start(rt, three_values, run_id="g")
        await wait_until(lambda: len(entered) == 3)
        for key in ("c", "b", "a"):
            gate(key).set()
            await wait_until(lambda: finished[-1:] == [key])  # noqa: B023 - awaited at once
        assert await handle.result() == [1, 2, 3]
        events = await rt.store.events_for("g")
    assert completions(events) == ["3.1", "2.1", "1.1"]


async def test_gather_with_return_exceptions_puts_each_error_at_its_place() -> None:
    """With return_exceptions=True a failed branch's error takes its place in the list."""
    async with runtime() as rt:
        result = await (await start(rt, gather_with_exceptions, run_id="g")).result()
    assert result == [1, "StepFailedError at 2.1", 3]


async def test_gather_propagates_the_first_exception_to_the_workflow() -> None:
    """Without return_exceptions the first failure is raised at the gather."""
    held.add("slow")
    async with runtime() as rt:
        result = await (await start(rt, gather_first_exception, run_id="g")).result()
    assert result == "2.1: b refused"


async def test_gather_failure_not_caught_fails_the_run_with_the_steps_error() -> None:
    """A branch's failure the workflow does not catch fails the run, naming the step."""
    async with runtime() as rt:
        handle = await start(rt, gather_failing, run_id="g")
        with pytest.raises(aruntime.RunFailedError) as info:
            await handle.result()
    assert (info.value.identity, info.value.error_message) == ("2.1", "b refused")
    assert info.value.error_type == "aruntime.NonRetryableError"


async def test_task_group_returns_each_tasks_result() -> None:
    """Tasks created in an aruntime.TaskGroup all finish before the block ends."""
    async with runtime() as rt:
        result = await (await start(rt, task_group_values, run_id="t")).result()
        state = await rt.state("t")
    assert result == [1, 21, 3]
    assert sorted(state.steps) == ["1.1", "2.1", "2.2", "3.1"]


async def test_task_group_failure_cancels_the_other_tasks_and_raises_a_group() -> None:
    """A failing task cancels its siblings and the block raises an ExceptionGroup."""
    held.add("slow")
    async with runtime() as rt:
        handle = await start(rt, task_group_failing, run_id="t")
        assert await handle.result() == "2.1"
    assert "slow" not in finished


# -- identities ---------------------------------------------------------------------------


async def test_branch_operations_are_named_by_branch_and_position() -> None:
    """Steps in gathered chains are "k.n"; the root's own steps keep counting around them."""
    async with runtime() as rt:
        result = await (await start(rt, chains_between_steps, run_id="i")).result()
        state = await rt.state("i")
    assert result == [0, 11, 21, 32]
    assert {key: ctx.identity for key, ctx in contexts.items()} == {
        "root1": "1",
        "a1": "1.1",
        "a2": "1.2",
        "b1": "2.1",
        "b2": "2.2",
        "root2": "2",
    }
    assert sorted(state.steps) == ["1", "1.1", "1.2", "2", "2.1", "2.2"]
    assert (state.steps["1.2"].branch, state.steps["1.2"].position) == ("1", 2)


async def test_nested_branches_are_named_by_each_level_and_position() -> None:
    """A gather inside branch k numbers its branches k.j, whose steps are "k.j.n"."""
    async with runtime() as rt:
        result = await (await start(rt, nested_gathers, run_id="n")).result()
        state = await rt.state("n")
    assert result == [[1, 2, 3], [1, 2, 3]]
    assert sorted(state.steps) == ["1.1", "1.1.1", "1.2.1", "2.1", "2.1.1", "2.2.1"]


async def test_current_step_identity_and_key_name_the_branch() -> None:
    """Inside a branch, current_step() gives the branch, the "k.j.n" identity and its key."""
    async with runtime() as rt:
        await (await start(rt, nested_gathers, run_id="n")).result()
    ctx = contexts["q-y"]
    assert (ctx.branch, ctx.position, ctx.identity) == ("2.2", 1, "2.2.1")
    assert ctx.idempotency_key == f"n/2.2.1/{value.name}"
    assert contexts["p-first"].identity == "1.1"
    assert len({c.idempotency_key for c in contexts.values()}) == len(contexts)


# -- replay -------------------------------------------------------------------------------


async def test_replay_after_a_crash_keeps_identities_and_results_in_another_order() -> None:
    """Branches finished c, a before a crash and b after it replay to the same results."""
    held.update({"a", "b", "c", "after"})
    async with runtime() as rt:
        handle = await start(rt, gather_then_step, run_id="r")
        await wait_until(lambda: len(entered) == 3)
        for key in ("c", "a"):
            gate(key).set()
            await wait_until(lambda: finished[-1:] == [key])  # noqa: B023 - awaited at once
        before, after = await crash_run(rt, "r")
        assert before == after
        await wait_until(lambda: entered.count("b") == 2)
        gate("b").set()
        await wait_until(lambda: "after" in entered)
        gate("after").set()
        assert await handle.result() == 123
        events = await rt.store.events_for("r")
    assert entered.count("a") == entered.count("c") == 1
    assert completions(events) == ["3.1", "1.1", "2.1", "1"]


async def test_second_runtime_replays_branches_finished_in_another_order() -> None:
    """A run whose branches finished c, b, a replays them in a second runtime as recorded."""
    store = MemoryStore()
    held.update({"a", "b", "c", "after"})
    async with runtime(store) as first:
        await start(first, gather_then_step, run_id="r")
        await wait_until(lambda: len(entered) == 3)
        for key in ("c", "b", "a"):
            gate(key).set()
            await wait_until(lambda: finished[-1:] == [key])  # noqa: B023 - awaited at once
        await wait_until(lambda: "after" in entered)
    held.clear()
    async with runtime(store) as second:
        assert await second.handle("r").result() == 123
    assert entered == ["a", "b", "c", "after", "after"]
    events = await store.events_for("r")
    assert completions(events) == ["3.1", "2.1", "1.1", "1"]
    assert replay(events).status is RunStatus.COMPLETED


async def test_other_arguments_at_a_recorded_branch_identity_are_non_deterministic() -> None:
    """A step called with other arguments at "2.1" parks the run naming both digests."""
    global argument  # noqa: PLW0603 - the change between two deployments under test
    store = MemoryStore()
    held.add("b")
    async with runtime(store) as first:
        await start(first, changing_argument, run_id="d")
        await wait_until(lambda: len(entered) == 2)
    log = await store.events_for("d")
    recorded = next(e.digest for e in log if isinstance(e, StepStarted) and e.branch == "2")
    argument = 2
    async with runtime(store) as second:
        with pytest.raises(RunParkedError) as info:
            await second.handle("d").result()
    reason = info.value.reason
    assert reason.startswith(NonDeterminismError.__name__)
    digests = re.findall(r"digest ([0-9a-f]{8})", reason)
    assert "at operation 2.1" in reason
    assert digests[0] == recorded
    assert len(digests) == 2
    assert digests[1] != recorded
    assert await store.events_for("d") == log


# -- concurrency aruntime cannot identify -------------------------------------------------


@pytest.mark.parametrize(
    "wf", [raw_gather, raw_create_task, raw_wait], ids=["gather", "create_task", "wait"]
)
async def test_steps_in_raw_asyncio_tasks_are_refused_and_park_the_run(
    wf: aruntime.Workflow[[], Any],
) -> None:
    """Steps run by raw asyncio.gather, create_task or wait park the run; none is recorded."""
    async with runtime() as rt:
        handle = await start(rt, wf, run_id="raw")
        with pytest.raises(RunParkedError) as info:
            await handle.result()
        events = await rt.store.events_for("raw")
    assert re.match(r"UntrackedTaskError: .*step 'value'.*aruntime\.gather", info.value.reason)
    assert kinds(events) == ["RunStarted"]
    assert entered == []


# -- outside a workflow ---------------------------------------------------------------------


async def test_gather_outside_a_workflow_is_asyncio_gather() -> None:
    """Outside a run, aruntime.gather runs plain coroutines and keeps argument order."""

    async def later(x: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return x

    assert await aruntime.gather(later(1, 0.002), later(2, 0)) == [1, 2]
    results = await aruntime.gather(later(1, 0), refuse("x"), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], NonRetryableError)
    with pytest.raises(NonRetryableError):
        await aruntime.gather(later(1, 0), refuse("y"))


async def test_task_group_outside_a_workflow_is_asyncio_task_group() -> None:
    """Outside a run, aruntime.TaskGroup runs its tasks and raises failures as a group."""

    async def one() -> int:
        await asyncio.sleep(0)
        return 1

    async with aruntime.TaskGroup() as tg:
        a = tg.create_task(one())
    assert a.result() == 1
    with pytest.raises(ExceptionGroup) as info:
        async with aruntime.TaskGroup() as tg:
            tg.create_task(refuse("b"))
    assert [type(e) for e in info.value.exceptions] == [NonRetryableError]


# -- random branching workflows, random completion orders, random crashes -------------------
#
# A tree is a chain: a list of nodes, each a step (["s"]), a durable sleep (["z"]) or a
# gather of chains (["g", [chain, ...]]). `tree` interprets it: a step gets the previous
# node's result in its chain as its argument (so a result replayed at the wrong identity
# changes the next digest) and returns its own identity; a sleep gives "z"; a chain returns
# the list of its nodes' results. What an uncrashed run returns is therefore
# `expected_result(spec)`, computed from the structure alone.

Chain = list[Any]

step_nodes = st.sampled_from([["s"], ["s"], ["z"]])
trees: st.SearchStrategy[Chain] = st.lists(
    st.recursive(
        step_nodes,
        lambda inner: st.lists(st.lists(inner, min_size=1, max_size=3), min_size=1, max_size=3).map(
            lambda chains: ["g", chains]
        ),
        max_leaves=8,
    ),
    min_size=1,
    max_size=3,
)


class Held:
    """One body waiting for the driver to let it return."""

    __slots__ = ("identity", "released")

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.released = asyncio.Event()


waiting: list[Held] = []
"""The bodies of `tree_step` waiting to be released, oldest first."""


@step(retry=RetryPolicy(max_attempts=10))  # attempts cut off by crashes count too
async def tree_step(previous: Any) -> str:
    identity = current_step().identity
    entered.append(identity)
    held_body = Held(identity)
    waiting.append(held_body)
    try:
        await held_body.released.wait()
    finally:
        if held_body in waiting:
            waiting.remove(held_body)
    return identity


async def run_chain(chain: Chain) -> list[Any]:
    results: list[Any] = []
    previous: Any = None
    for node in chain:
        if node[0] == "s":
            previous = await tree_step(previous)
        elif node[0] == "z":
            await aruntime.sleep(5)
            previous = "z"
        else:
            previous = await aruntime.gather(*(run_chain(sub) for sub in node[1]))
        results.append(previous)
    return results


@workflow
async def tree(spec: Chain) -> list[Any]:
    return await run_chain(spec)


def expected_result(chain: Chain, branch: str = "") -> list[Any]:
    """What `tree` returns for `chain` run as `branch`, from the structure alone."""
    results: list[Any] = []
    position = children = 0
    for node in chain:
        if node[0] == "s":
            position += 1
            results.append(f"{branch}.{position}" if branch else str(position))
        elif node[0] == "z":
            position += 1
            results.append("z")
        else:
            subs = []
            for sub in node[1]:
                children += 1
                subs.append(
                    expected_result(sub, f"{branch}.{children}" if branch else str(children))
                )
            results.append(subs)
    return results


def leaves(result: Any) -> list[str]:
    """Every step identity and "z" (a sleep) in a result of `tree`, in order."""
    if isinstance(result, str):
        return [result]
    return [i for part in result for i in leaves(part)]


def identities(result: Any) -> list[str]:
    """Every step identity named in a result of `tree`."""
    return [leaf for leaf in leaves(result) if leaf != "z"]


async def tree_runtime(store: MemoryStore) -> Runtime:
    return await Runtime(store, clock=FakeClock(autojump=True), workflows=[tree]).open()


async def drive(spec: Chain, rnd: random.Random) -> tuple[Any, MemoryStore, int]:
    """Run `tree(spec)`, releasing bodies in an order drawn from `rnd` and crashing or
    restarting the runtime at random moments; return the result, the store and the
    number of crashes."""
    store = MemoryStore()
    rt = await tree_runtime(store)
    crashes = 0
    try:
        handle = await rt.start(tree, spec, run_id="tree")
        outcome = asyncio.ensure_future(handle.result())
        while True:
            await wait_until(lambda: bool(waiting) or outcome.done())  # noqa: B023 - awaited at once
            if not waiting:
                return outcome.result(), store, crashes
            for _ in range(rnd.randrange(3)):
                await asyncio.sleep(0)
            if crashes < 4 and rnd.random() < 0.15:
                crashes += 1
                if rnd.random() < 0.5:
                    before, after = await crash_run(rt, "tree")
                    assert before == after
                else:
                    outcome.cancel()
                    await rt.aclose()
                    rt = await tree_runtime(store)
                    outcome = asyncio.ensure_future(rt.handle("tree").result())
            elif waiting:
                waiting.pop(rnd.randrange(len(waiting))).released.set()
    finally:
        await rt.aclose()


@settings(
    max_examples=50,
    deadline=None,
    # The scenario clears the module's records itself before each example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=trees, rnd=st.randoms(use_true_random=False))
async def test_branching_workflows_resume_to_the_uncrashed_result(
    spec: Chain, rnd: random.Random
) -> None:
    """Random branch trees finishing in random orders, crashed anywhere, return what an
    uncrashed run returns, with a log that replays and one completion per identity."""
    entered.clear()
    waiting.clear()
    result, store, crashes = await drive(spec, rnd)
    expected = expected_result(spec)
    assert result == expected
    events = await store.events_for("tree")
    state = replay(events)
    assert state.status is RunStatus.COMPLETED
    assert sorted(completions(events)) == sorted(identities(expected))
    assert sorted(state.steps) == sorted(identities(expected))
    assert all(s.status is StepStatus.COMPLETED for s in state.steps.values())
    assert len(state.sleeps) == leaves(expected).count("z")
    if crashes == 0:
        assert sorted(entered) == sorted(identities(expected))
