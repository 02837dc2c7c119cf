"""The child process of the vocabulary kill tests: one scenario's run on an SQLite file.

Run as `python tests/vocab_child.py SCENARIO --db runs.db --ledger ledger.txt --life N
[--pause-after-receive] [--broken] [--wait RUN_ID]`. It opens `Runtime("sqlite:///...")`
(which resumes unfinished runs), prints `opened <wall time>`, starts the scenario's run
`RUN_ID` (finding the existing one after a restart), waits for the run named by `--wait`
(default `RUN_ID`) to end, prints `outcome <json>` and exits 0. The test kills it with
SIGKILL at the moment that matters and starts it again with the next `--life`.

The scenarios:
- `message`: step `before`, `receive("go")`, step `after` of the payload.
  `--pause-after-receive` makes the workflow wait `PAUSE` seconds (outside any step)
  between the receive and `after`: the window in which the test kills it.
- `timeout`: `receive("go", timeout=RECEIVE_TIMEOUT)`, then step `after` of what came
  (`"timed out"` when nothing did).
- `parent`: `run_child` of a child that runs step `kid` and receives `"go"`.
- `fork`: step `fetch`, then step `process`, which fails for good with `--broken` and
  otherwise takes `PAUSE` seconds.

Every step body appends `life label attempt phase` to the ledger (O_APPEND, fsync): the
record of the side effects that happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aruntime
from aruntime import Client, NonRetryableError, Runtime, current_step, step, workflow

RUN_ID = "vocab"
CHILD_ID = f"{RUN_ID}/1"
"""The default id of the `parent` scenario's child (the parent's id and the call's identity)."""
PAUSE = 1.0
RECEIVE_TIMEOUT = 1.5
SCENARIOS = ("message", "timeout", "parent", "fork")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--life", type=int, required=True)
    parser.add_argument("--pause-after-receive", action="store_true")
    parser.add_argument("--broken", action="store_true")
    parser.add_argument("--wait", default=RUN_ID)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    fd = os.open(args.ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(label: str, phase: str) -> None:
        attempt = current_step().attempt
        os.write(fd, f"{args.life} {label} {attempt} {phase}\n".encode())
        os.fsync(fd)

    @step(name="vocab.before")
    async def before() -> str:
        note("before", "end")
        return "before"

    @step(name="vocab.after")
    async def after(payload: str) -> str:
        note("after", "end")
        return f"after {payload}"

    @workflow(name="vocab.message")
    async def message() -> list[str]:
        first = await before()
        payload = await aruntime.receive("go")
        if args.pause_after_receive:
            await asyncio.sleep(PAUSE)
        return [first, await after(str(payload))]

    @workflow(name="vocab.timeout")
    async def timeout() -> str:
        try:
            payload = str(await aruntime.receive("go", timeout=RECEIVE_TIMEOUT))
        except TimeoutError:
            payload = "timed out"
        return await after(payload)

    @step(name="vocab.kid")
    async def kid_step() -> str:
        note("kid", "end")
        return "kid"

    @workflow(name="vocab.kid")
    async def kid() -> str:
        await kid_step()
        return f"kid got {await aruntime.receive('go')}"

    @workflow(name="vocab.parent")
    async def parent() -> str:
        return "parent: " + await aruntime.run_child(kid)

    @step(name="vocab.fetch")
    async def fetch() -> str:
        note("fetch", "end")
        return "data"

    @step(name="vocab.process")
    async def process(data: str) -> str:
        note("process", "begin")
        if args.broken:
            raise NonRetryableError("process is broken")
        await asyncio.sleep(PAUSE)
        note("process", "end")
        return data.upper()

    @workflow(name="vocab.fork")
    async def fork() -> str:
        return await process(await fetch())

    workflows: dict[str, Any] = {
        "message": message,
        "timeout": timeout,
        "parent": parent,
        "fork": fork,
    }

    async def go() -> dict[str, Any]:
        url = f"sqlite:///{args.db}"
        async with Runtime(url, workflows=[message, timeout, parent, kid, fork]) as rt:
            print(f"opened {time.time():.6f}", flush=True)
            await rt.start(workflows[args.scenario], run_id=RUN_ID)
            async with Client(rt.store) as client:
                value: Any
                try:
                    value = await client.handle(args.wait).result(timeout=60)
                except aruntime.RunFailedError as exc:
                    return {"failed": exc.error_message}
            return {"result": value}

    outcome = asyncio.run(go())
    print(f"outcome {json.dumps(outcome)}", flush=True)
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
