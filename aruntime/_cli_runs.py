"""`aruntime runs cancel|resume|delete|wait|prune`: change runs from any process.

    aruntime runs cancel RUN_ID [--reason TEXT] [--db PATH]
    aruntime runs resume RUN_ID [--db PATH]
    aruntime runs delete RUN_ID [--db PATH]
    aruntime runs wait RUN_ID [--timeout SECONDS] [--db PATH]
    aruntime runs prune --older-than 7d [--status completed|failed|cancelled] [--db PATH]
    aruntime runs start WORKFLOW [--args '[1, "a"]'] [--run-id ID] [--db PATH]
    aruntime runs send RUN_ID [--topic T] --json '{"approved": true}' [--key K] [--db PATH]
    aruntime runs fork RUN_ID --from-step IDENTITY [--run-id NEW_ID] [--db PATH]
    aruntime runs read RUN_ID KEY [--timeout SECONDS] [--db PATH]

Each opens the database as a `Client` does, so it works while a runtime in another
process owns the file: cancel and resume become inbox requests that the owning runtime
applies (at once if one runs, else when one opens); delete and prune remove ended runs
only. `wait` prints the run's result as JSON. `send` posts a message for the run's
`aruntime.receive`; `start` asks for a run of a workflow by its registered name (the
runtime that knows it runs it); `fork` asks for a new run that copies the run up to an operation
(an identity as `runs show` lists it) and goes on from there; `read` prints the latest
value the run published under KEY, as JSON.

Exit codes: 0 done; 1 no such run, or a run that has not ended (delete); 2 bad usage or
no usable database. `wait` tells how the run ended: 0 completed (its result printed), 3
failed, 4 cancelled, 5 parked, 6 still running at the timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aruntime.client import Client
from aruntime.errors import (
    AruntimeError,
    ConfigError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunParkedError,
    StoreReadOnlyError,
)
from aruntime.state import RunStatus

__all__ = ["add_runs_commands", "parse_age"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
EXIT_RUN_CANCELLED = 4
EXIT_RUN_PARKED = 5
EXIT_TIMED_OUT = 6
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_age(text: str) -> float:
    """Seconds of an age written `90s`, `15m`, `12h`, `7d`, `2w` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not an age: {text!r} (write a number with s, m, h, d or w, like 7d)"
        )
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1.0)


def add_runs_commands(runs_commands: Any, common: argparse.ArgumentParser, db_help: str) -> None:
    """Add the commands that change runs to `aruntime runs`."""
    cancel = runs_commands.add_parser(
        "cancel", parents=[common], help="ask for a run's cancellation"
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", help="recorded with the cancellation (default: cancelled)")
    cancel.set_defaults(handler=lambda a: _with_client(a, _cancel))
    resume = runs_commands.add_parser("resume", parents=[common], help="ask to resume a parked run")
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.set_defaults(handler=lambda a: _with_client(a, _resume))
    delete = runs_commands.add_parser("delete", parents=[common], help="remove an ended run")
    delete.add_argument("run_id", metavar="RUN_ID")
    delete.set_defaults(handler=lambda a: _with_client(a, _delete))
    wait = runs_commands.add_parser(
        "wait",
        parents=[common],
        help="wait for a run's result",
        description="Print the run's result as JSON once it has ended. Exit status: 0 "
        "completed, 1 no such run, 3 failed, 4 cancelled, 5 parked, 6 still running after "
        "--timeout.",
    )
    wait.add_argument("run_id", metavar="RUN_ID")
    wait.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after (none)")
    wait.set_defaults(handler=lambda a: _with_client(a, _wait))
    prune = runs_commands.add_parser("prune", parents=[common], help="remove old ended runs")
    prune.add_argument(
        "--older-than", type=parse_age, required=True, metavar="AGE", help="like 7d, 12h, 30m"
    )
    prune.add_argument("--status", choices=("completed", "failed", "cancelled"))
    prune.set_defaults(handler=lambda a: _with_client(a, _prune))
    start = runs_commands.add_parser("start", parents=[common], help="ask for a run")
    start.add_argument("workflow", metavar="WORKFLOW", help="its registered name")
    start.add_argument(
        "--args", type=_json_list, default=[], metavar="JSON", help="a JSON list of arguments"
    )
    start.add_argument("--run-id", dest="new_id", metavar="ID", help="the run's id (random)")
    start.add_argument("--queue", metavar="NAME", help="the queue it waits on until admitted")
    start.add_argument("--priority", type=int, metavar="N", help="its priority (lower first)")
    start.add_argument("--partition-key", metavar="KEY", help="its partition in the queue")
    start.set_defaults(handler=lambda a: _with_client(a, _start))
    send = runs_commands.add_parser("send", parents=[common], help="send a run a message")
    send.add_argument("run_id", metavar="RUN_ID")
    send.add_argument("--topic", default="default", help="the receive's topic (default)")
    send.add_argument(
        "--json", dest="payload", type=_json, required=True, metavar="JSON", help="the payload"
    )
    send.add_argument("--key", help="idempotency key: a second message with it is dropped")
    send.set_defaults(handler=lambda a: _with_client(a, _send))
    fork = runs_commands.add_parser(
        "fork", parents=[common], help="a new run that resumes a run from one of its operations"
    )
    fork.add_argument("run_id", metavar="RUN_ID")
    fork.add_argument("--from-step", required=True, metavar="IDENTITY", help="like 3 or 2.1.4")
    fork.add_argument("--run-id", dest="new_id", metavar="NEW_ID", help="the new run's id")
    fork.set_defaults(handler=lambda a: _with_client(a, _fork))
    read = runs_commands.add_parser("read", parents=[common], help="a run's published value")
    read.add_argument("run_id", metavar="RUN_ID")
    read.add_argument("key", metavar="KEY")
    read.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after (none)")
    read.set_defaults(handler=lambda a: _with_client(a, _read))
    for sub in (cancel, resume, delete, wait, prune, start, send, fork, read):
        sub.add_argument("--db", metavar="PATH", help=db_help)


_Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def _with_client(args: argparse.Namespace, command: _Command) -> int:
    from aruntime._cli import _database  # noqa: PLC0415 - the shared option, without a cycle

    try:
        path, source = _database(args.db)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if not path.is_file():
        named = "" if source == "--db" else f" (named by {source})"
        return _fail(f"no database at {path}{named}", EXIT_USAGE)
    args.db = path
    return asyncio.run(_run(path, command, args))


async def _run(path: Path, command: _Command, args: argparse.Namespace) -> int:
    from aruntime.store.sqlite import SqliteConfig, SqliteStore  # noqa: PLC0415 - loads sqlite3 on use

    # The store object, not a URL made of the path: a path may hold `?` or `%xx`.
    store = SqliteStore(path, SqliteConfig(owner=False))
    try:
        await store.open()
    except StoreReadOnlyError as exc:
        if command is not _wait:  # waiting only reads: a file it cannot write will do
            return _fail(f"cannot open {path}: {exc}", EXIT_USAGE)
        store = SqliteStore(path, SqliteConfig(owner=False, read_only=True))
        try:
            await store.open()
        except AruntimeError as again:
            return _fail(f"cannot open {path}: {again}", EXIT_USAGE)
    except AruntimeError as exc:
        return _fail(f"cannot open {path}: {exc}", EXIT_USAGE)
    client = Client(store)
    try:
        await client.open()
        return await command(client, args)
    except RunNotFoundError:
        return _fail(f"no run {args.run_id!r} in {path}", EXIT_FAILED)
    except AruntimeError as exc:
        return _fail(str(exc), EXIT_FAILED)
    finally:
        await client.aclose()
        await store.aclose()


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    status = await client.cancel(args.run_id, reason=args.reason)
    if status.terminal:
        print(f"{args.run_id} has already ended ({status.value}); nothing to cancel")
    else:
        print(f"cancellation of {args.run_id} requested")
    return 0


async def _resume(client: Client, args: argparse.Namespace) -> int:
    status = await client.resume(args.run_id)
    if status.terminal:
        print(f"{args.run_id} has already ended ({status.value}); nothing to resume")
    else:
        print(f"resumption of {args.run_id} requested")
    return 0


async def _delete(client: Client, args: argparse.Namespace) -> int:
    await client.delete(args.run_id)
    print(f"deleted {args.run_id}")
    return 0


async def _wait(client: Client, args: argparse.Namespace) -> int:
    try:
        value: Any = await client.handle(args.run_id).result(timeout=args.timeout)
    except TimeoutError:
        return _fail(f"run {args.run_id!r} has not ended after {args.timeout}s", EXIT_TIMED_OUT)
    except RunFailedError as exc:
        return _fail(str(exc), EXIT_RUN_FAILED)
    except RunCancelledError as exc:
        return _fail(str(exc), EXIT_RUN_CANCELLED)
    except RunParkedError as exc:
        return _fail(str(exc), EXIT_RUN_PARKED)
    print(json.dumps(value))
    return 0


async def _prune(client: Client, args: argparse.Namespace) -> int:
    status = None if args.status is None else RunStatus(args.status)
    removed = await client.prune(older_than=args.older_than, status=status)
    print(f"removed {removed} run{'' if removed == 1 else 's'}")
    return 0


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _json_list(text: str) -> list[Any]:
    value = _json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("the arguments are a JSON list, like '[1, \"a\"]'")
    return value


async def _start(client: Client, args: argparse.Namespace) -> int:
    args.run_id = args.new_id
    handle = await client.start(
        args.workflow,
        *args.args,
        run_id=args.new_id,
        queue=args.queue,
        priority=args.priority,
        partition_key=args.partition_key,
    )
    where = "" if args.queue is None else f" on queue {args.queue}"
    print(f"run {handle.run_id} of {args.workflow} requested{where}")
    return 0


async def _send(client: Client, args: argparse.Namespace) -> int:
    message = await client.send(
        args.run_id, args.payload, topic=args.topic, idempotency_key=args.key
    )
    print(f"message {message} sent to {args.run_id} on topic {args.topic!r}")
    return 0


async def _fork(client: Client, args: argparse.Namespace) -> int:
    handle = await client.fork(args.run_id, from_step=args.from_step, run_id=args.new_id)
    print(f"fork {handle.run_id} of {args.run_id} from operation {args.from_step} requested")
    return 0


async def _read(client: Client, args: argparse.Namespace) -> int:
    try:
        value = await client.read(args.run_id, args.key, timeout=args.timeout)
    except TimeoutError:
        return _fail(f"run {args.run_id!r} published no {args.key!r} in {args.timeout}s", 1)
    print(json.dumps(value))
    return 0


def _fail(message: str, code: int) -> int:
    print(f"aruntime: {message}", file=sys.stderr)
    return code
