"""Phase d of `aruntime demo`: messages, published values and child runs, checked.

Expense approvals, on the same store as the other phases. Each run publishes its stage,
asks a child run to assess the amount (a run of its own, whose id derives from the
parent's), then waits for the first of a decision message and a durable minute's
reminder. The demo, as a `Client` of the store would, reads each run's stage, sends each
decision (a share of them twice under one idempotency key), and crashes a share of the
runs right after they consumed their message. Every run must end as its decision says,
with its message consumed exactly once and recorded in its log, and its child a run of
its own that names it as parent.

Only the public API is used, and `aruntime.testing.crash_run` for the crashes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import aruntime
from aruntime._demo_checks import Report, plural
from aruntime.client import Client
from aruntime.events import MessageReceived, RunStarted
from aruntime.runtime import Runtime
from aruntime.store import EventStore
from aruntime.testing import crash_run

__all__ = ["phase_messages"]

APPROVALS = 12
_paid: Counter[str] = Counter()
_gates: dict[str, asyncio.Event] = {}
"""The runs to crash once they received their decision: their next step waits for this."""


@aruntime.step(name="aruntime.demo.risk")
async def risk(amount: int) -> str:
    return "high" if amount > 500 else "low"


@aruntime.workflow(name="aruntime.demo.assess")
async def assess(amount: int) -> str:
    return await risk(amount)


@aruntime.step(name="aruntime.demo.note_decision")
async def note_decision(name: str, approved: bool) -> bool:
    gate = _gates.get(name)
    if gate is not None:
        await gate.wait()  # the demo crashes the run here, after it consumed its message
    return approved


@aruntime.step(name="aruntime.demo.pay")
async def pay(expense: str, amount: int) -> str:
    _paid[expense] += 1
    return f"paid {amount}"


async def _reminder() -> dict[str, bool]:
    await aruntime.sleep(60.0)
    return {"approved": False}


@aruntime.workflow(name="aruntime.demo.expense")
async def expense(name: str, amount: int) -> str:
    await aruntime.publish("stage", "assessing")
    level = await aruntime.run_child(assess, amount)
    await aruntime.publish("stage", f"waiting for a decision ({level} risk)")
    decision = await aruntime.first(aruntime.receive("decision"), _reminder())
    if not await note_decision(name, decision["approved"]):
        return "rejected"
    return await pay(name, amount)


WORKFLOWS = (assess, expense)


async def phase_messages(store: EventStore | str, seed: int, report: Report) -> None:
    """Run phase d on `store` and report its checks."""
    report.line()
    report.line("Phase d, messages and child runs: approvals decided from outside")
    rng = random.Random(f"aruntime-demo:{seed}:d")
    runs = [f"d-expense-{i:02d}" for i in range(APPROVALS)]
    amounts = {run: rng.randrange(10, 1000) for run in runs}
    approved = {run: rng.random() < 0.75 for run in runs}
    twice = set(rng.sample(runs, APPROVALS // 3))
    crashed = set(rng.sample(runs, APPROVALS // 3))
    _gates.update({run: asyncio.Event() for run in crashed})
    began = time.perf_counter()
    async with Runtime(store, workflows=list(WORKFLOWS)) as rt, Client(rt.store) as client:
        for run in runs:
            await rt.start(expense, run, amounts[run], run_id=run)
        stages = {run: await client.read(run, "stage", timeout=30) for run in runs}
        for run in runs:
            await _wait_for_decision_wait(client, run)
            for _ in range(2 if run in twice else 1):
                await client.send(
                    run, {"approved": approved[run]}, topic="decision", idempotency_key=run
                )
        crashes = 0
        for run in sorted(crashed):
            await _wait_for(client, run, MessageReceived)
            try:
                before, after = await crash_run(rt, run)
                crashes += before.receives == after.receives
            finally:
                _gates[run].set()
        results: dict[str, str] = {
            run: await client.handle(run, expense).result(timeout=30) for run in runs
        }
        problems = await _audit(client, runs, amounts, approved, results)
    report.info(
        "approval",
        f"{plural(APPROVALS, 'run')}, each with a child run; {len(twice)} decisions sent twice "
        f"under one key, {len(crashed)} crashed after receiving theirs",
    )
    report.check(
        crashes == len(crashed),
        f"{crashes}/{len(crashed)} crashes after a message's consumption replayed the "
        "received message from the log",
    )
    report.check(
        all(stage == "assessing" or stage.startswith("waiting") for stage in stages.values()),
        f"{APPROVALS}/{APPROVALS} published stages read from outside while the runs went on",
    )
    report.check(
        not problems,
        "every decision was received exactly once (duplicates dropped), recorded in its "
        "run's log, and decided the run; every child is a run of its own naming its parent",
        problems,
    )
    _paid.clear()
    _gates.clear()
    report.info("phase d", f"took {time.perf_counter() - began:.2f} s")


async def _wait_for_decision_wait(client: Client, run: str) -> None:
    """Until the run waits for its decision (its stage says so)."""
    while not str(await client.read(run, "stage", timeout=30)).startswith("waiting"):
        store = client.store
        await store.wait_changed(store.change_counter(), 0.05)


async def _wait_for(client: Client, run: str, kind: type[object]) -> None:
    store = client.store
    while True:
        seen = store.change_counter()
        if any(isinstance(e, kind) for e in await store.events_for(run)):
            return
        await store.wait_changed(seen, 0.05)


async def _audit(
    client: Client,
    runs: list[str],
    amounts: dict[str, int],
    approved: dict[str, bool],
    results: dict[str, str],
) -> list[str]:
    problems = []
    for run in runs:
        expected = f"paid {amounts[run]}" if approved[run] else "rejected"
        if results[run] != expected:
            problems.append(f"{run}: returned {results[run]!r}, expected {expected!r}")
        received = [e for e in await client.store.events_for(run) if isinstance(e, MessageReceived)]
        if len(received) != 1:
            problems.append(f"{run}: {len(received)} messages received")
        if _paid[run] != (1 if approved[run] else 0):
            problems.append(f"{run}: paid {_paid[run]} times")
        child = await client.store.events_for(f"{run}/2")
        if not child or not isinstance(child[0], RunStarted) or child[0].parent != run:
            problems.append(f"{run}: no child run {run}/2 naming it as parent")
    return problems
