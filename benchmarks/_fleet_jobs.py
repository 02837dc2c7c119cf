"""The workflows of `python -m benchmarks fleet|takeover`, imported by the workers."""

from __future__ import annotations

import asyncio

from aruntime import step, workflow


@step
async def bump(value: int) -> int:
    return value + 1


@workflow(name="benchmarks._fleet_jobs.chain")
async def chain(run: int, steps: int) -> int:
    """`steps` trivial steps; returns `steps`."""
    value = 0
    for _ in range(steps):
        value = await bump(value)
    return value


@step
async def nap() -> None:
    await asyncio.sleep(0.5)


@workflow(name="benchmarks._fleet_jobs.long_chain")
async def long_chain(run: int, steps: int) -> int:
    """Half-second steps, for as long as the takeover measurement needs."""
    for _ in range(10_000):
        await nap()
    return steps
