"""Workflows for the multi-process tests, imported by `aruntime worker --import process_jobs`.

Run as a script, `python tests/process_jobs.py DB RUN_ID X`, it starts a run of `double`
through a Client and exits: the run is recorded under the name the worker knows,
`process_jobs.double`, although the script's module is `__main__` here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aruntime import Client, step, workflow


@step
async def times_two(x: int) -> int:
    return 2 * x


@workflow
async def double(x: int) -> int:
    return await times_two(x)


def _read(path: str) -> str | None:
    file = Path(path)
    return file.read_text() if file.exists() else None


@step
async def wait_for_file(path: str) -> str:
    while (text := await asyncio.to_thread(_read, path)) is None:  # noqa: ASYNC110 - the gate is a file another process writes
        await asyncio.sleep(0.01)
    return text


@workflow
async def gated(path: str) -> str:
    return "opened: " + await wait_for_file(path)


async def _start_from_script(db: str, run_id: str, x: int) -> None:
    async with Client(f"sqlite:///{db}") as client:
        await client.start(double, x, run_id=run_id)


if __name__ == "__main__":
    asyncio.run(_start_from_script(sys.argv[1], sys.argv[2], int(sys.argv[3])))
