"""The message workload: how soon a message from another process reaches a waiting run.

An owner process (`python -m benchmarks._message owner DB N`) runs a `Runtime` on the
file with one run that receives N messages in a row; the measuring process is a `Client`
of it. For each message the client waits until the run waits for it (its `ReceiveStarted`
is in the log), takes the wall time, sends the message, and waits until the run has
received it. `delivery_*_ms` is the time from just before the send to the owner's
`MessageReceived.at` (taken just before the commit that consumes the message with its
record). Both processes read the same system clock. Target: p99 at most 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aruntime
from aruntime import Client, Runtime, workflow
from aruntime.events import MessageReceived, ReceiveStarted
from benchmarks._harness import configure_logging, fresh_sqlite_file, percentile, ready_child

__all__ = ["measure"]

RUN_ID = "listener"


@workflow(name="message.listener")
async def listener(count: int) -> int:
    total = 0
    for _ in range(count):
        total += int(await aruntime.receive())
    return total


async def _own(db: str, count: int) -> None:
    async with Runtime(f"sqlite:///{db}", workflows=[listener]) as rt:
        await rt.start(listener, count, run_id=RUN_ID)
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _until(client: Client, kind: type[object], count: int) -> list[object]:
    """Wait until the run's log holds `count` events of `kind`; those events."""
    store = client.store
    while True:
        seen = store.change_counter()
        found: list[object] = [e for e in await store.events_for(RUN_ID) if isinstance(e, kind)]
        if len(found) >= count:
            return found
        await store.wait_changed(seen, 1.0)


async def _measure(db: Path, samples: int) -> dict[str, float]:
    delays: list[float] = []
    async with Client(f"sqlite:///{db}") as client:
        for n in range(samples):
            await _until(client, ReceiveStarted, n + 1)
            asked = time.time()
            await client.send(RUN_ID, n)
            received = (await _until(client, MessageReceived, n + 1))[n]
            assert isinstance(received, MessageReceived)
            assert received.payload == str(n), received
            delays.append(received.at - asked)
        assert await client.handle(RUN_ID).result(timeout=30) == samples * (samples - 1) // 2
    millis = [d * 1000 for d in delays]
    return {
        "samples": float(samples),
        "delivery_p50_ms": percentile(millis, 50),
        "delivery_p99_ms": percentile(millis, 99),
        "delivery_max_ms": max(millis),
    }


def measure(samples: int, *, workdir: Path, timeout: float = 600) -> dict[str, float]:
    """One measurement: an owner process on a fresh file, this process its client."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "message.db"
    fresh_sqlite_file(db)
    with ready_child("benchmarks._message", "owner", str(db), str(samples)):
        return asyncio.run(asyncio.wait_for(_measure(db, samples), timeout))


if __name__ == "__main__":
    configure_logging()
    if sys.argv[1] == "owner":
        asyncio.run(_own(sys.argv[2], int(sys.argv[3])))
    else:
        print(json.dumps(measure(int(sys.argv[1]), workdir=Path(sys.argv[2]))))
