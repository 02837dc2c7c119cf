"""Phase e of `aruntime demo`: a queue of mail sends, its limit, order and fairness checked.

One tenant's burst of sends is started first, then a few sends of two other tenants, then
two urgent ones (a lower priority number), all on a queue of four places; two of the
burst's sends are cancelled while they wait. The first four admitted hold on until every
send is started, so that what runs next is the queue's choice alone. Every send must
complete but the two cancelled, which must never have run; never more than four bodies
at once, nor more than four runs admitted and unfinished at once by the store's own
record; the other tenants served long before the burst is through; the urgent sends
admitted ahead of the burst's rest.

Only the public API is used.
"""

from __future__ import annotations

import asyncio
import time

import aruntime
from aruntime._demo_checks import Report, plural
from aruntime.runtime import Runtime
from aruntime.store import EventStore, RunInfo

__all__ = ["phase_queues"]

PLACES = 4
BURST = 30
SMALL = ("small-1", "small-2")
SMALL_SENDS = 3
_running = [0, 0]
"""Bodies running now, and the most at once."""
_ran: set[str] = set()
_gate: list[asyncio.Event] = []
"""Held shut until every send is started: the order is then the queue's alone."""


@aruntime.step(name="aruntime.demo.deliver")
async def deliver(tenant: str, number: int) -> str:
    _running[0] += 1
    _running[1] = max(_running[1], _running[0])
    _ran.add(f"{tenant}:{number}")
    try:
        await _gate[0].wait()
        await asyncio.sleep(0.002)
    finally:
        _running[0] -= 1
    return f"{tenant} #{number} sent"


@aruntime.workflow(name="aruntime.demo.send_mail")
async def send_mail(tenant: str, number: int) -> str:
    return await deliver(tenant, number)


async def phase_queues(store: EventStore | str, report: Report) -> None:
    """Run phase e on `store` and report its checks."""
    report.line()
    report.line("Phase e, a queue: one tenant's burst, two small tenants, two urgent sends")
    mail = aruntime.Queue("aruntime.demo.mail", concurrency=PLACES, register=False)
    began = time.perf_counter()
    _running[:] = [0, 0]
    _ran.clear()
    _gate[:] = [asyncio.Event()]
    async with Runtime(store, workflows=[send_mail], queues=[mail]) as rt:
        handles = {}
        for number in range(BURST):
            handles[f"big:{number}"] = await rt.start(
                send_mail, "big", number, queue=mail, partition_key="big"
            )
        cancelled = {"big:28", "big:29"}
        for name in sorted(cancelled):
            await handles[name].cancel("the recipient unsubscribed")
        for tenant in SMALL:
            for number in range(SMALL_SENDS):
                handles[f"{tenant}:{number}"] = await rt.start(
                    send_mail, tenant, number, queue=mail, partition_key=tenant
                )
        for number in range(2):
            handles[f"urgent:{number}"] = await rt.start(
                send_mail, "urgent", number, queue=mail, priority=-1, partition_key="urgent"
            )
        _gate[0].set()
        outcomes: dict[str, str] = {}
        for name, handle in handles.items():
            try:
                outcomes[name] = await asyncio.wait_for(handle.result(), 60)
            except aruntime.RunCancelledError:
                outcomes[name] = "cancelled"
        infos = {name: await rt.store.get_run(handle.run_id) for name, handle in handles.items()}
    admitted = {n: i for n, i in infos.items() if i is not None and i.admitted_at is not None}
    order = sorted(admitted, key=lambda n: admitted[n].admitted_at or 0.0)
    big_before = [order.index(n) for n in order if n.startswith("big:")]
    last_small = max(order.index(f"{t}:{k}") for t in SMALL for k in range(SMALL_SENDS))
    report.info(
        "queue",
        f"{plural(len(handles), 'send')} on a queue of {PLACES} places: a burst of {BURST}, "
        f"{len(SMALL)} tenants of {SMALL_SENDS}, 2 urgent, 2 cancelled while waiting",
    )
    expected = {
        name: "cancelled" if name in cancelled else f"{name.replace(':', ' #')} sent"
        for name in handles
    }
    report.check(
        outcomes == expected and not (cancelled & _ran),
        f"{len(handles) - len(cancelled)}/{len(handles) - len(cancelled)} sends completed; the "
        f"{len(cancelled)} cancelled while waiting ended cancelled and never ran",
        [
            f"{n}: {outcomes.get(n)!r}, expected {e!r}"
            for n, e in expected.items()
            if outcomes.get(n) != e
        ],
    )
    most = _most_admitted(list(admitted.values()))
    report.check(
        _running[1] <= PLACES and most <= PLACES,
        f"never more than {PLACES} at once: {_running[1]} bodies at most, {most} runs admitted "
        "and unfinished at most by the store's record",
    )
    big_ahead = sum(1 for index in big_before if index < last_small)
    report.check(
        big_ahead <= BURST // 2,
        f"the small tenants were served while the burst waited: their last send was admitted "
        f"after {big_ahead} of the burst's {BURST}",
    )
    urgent = [order.index(f"urgent:{k}") for k in range(2)]
    big_after = sum(1 for index in big_before if index > max(urgent))
    report.check(
        big_after > 0,
        f"the urgent sends went ahead of the {big_after} burst sends still waiting",
    )
    report.info("phase e", f"took {time.perf_counter() - began:.2f} s")


def _most_admitted(infos: list[RunInfo]) -> int:
    """The most runs admitted and not ended at one instant, by their index rows."""
    moments = sorted(
        [(i.admitted_at or 0.0, 1) for i in infos] + [(i.updated_at, -1) for i in infos],
        key=lambda moment: (moment[0], moment[1]),
    )
    running = most = 0
    for _, change in moments:
        running += change
        most = max(most, running)
    return most
