"""`aruntime worker`: a process that runs the workflows some modules register, until told to stop.

    aruntime worker --db URL --import pkg.jobs [--import pkg.more] [--grace SECONDS]

The modules are imported (the current directory first on the path, as `python -m` does),
and the worker opens `Runtime(db, workflows=<what they registered>)`: it resumes their
unfinished runs, applies the inbox, and leaves the runs of other workflows for a runtime
that knows them. On PostgreSQL any number of workers share the database, each claiming
runs under a lease (see `aruntime._fleet`). On SIGTERM or SIGINT it closes with
`Runtime.aclose(grace=...)`: it stops taking requests and starting operations, lets the
step bodies in flight finish for up to `--grace` seconds with their outcomes recorded, then
stops; whatever is still in flight is left to recovery (the next runtime runs it again, at
least once); on PostgreSQL it releases its leases, so the other workers take its runs over
at once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import math
import os
import signal
import sys
import traceback
import urllib.parse
from typing import Any

from aruntime._definitions import Workflow, registered_workflows
from aruntime._log import logger
from aruntime.errors import AruntimeError
from aruntime.runtime import Runtime

__all__ = ["add_worker_command"]

EXIT_USAGE = 2


def add_worker_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `worker` to the `aruntime` command's subcommands."""
    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run the workflows that some modules register, until SIGTERM or SIGINT",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    worker.add_argument(
        "--db",
        metavar="URL",
        help="the store: a path, sqlite:///path.db, or postgresql://user@host/db for a fleet "
        "of workers (default: $ARUNTIME_DB)",
    )
    worker.add_argument(
        "--import",
        dest="modules",
        action="append",
        required=True,
        metavar="MODULE",
        help="a module whose @workflows this worker runs (repeat for more)",
    )
    worker.add_argument(
        "--grace",
        type=_grace,
        default=10.0,
        metavar="SECONDS",
        help="how long steps in flight at the stop signal may take to finish (10)",
    )
    worker.set_defaults(handler=_worker)


def _grace(text: str) -> float:
    """`--grace`: a finite number of seconds >= 0."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"not a number of seconds >= 0: {text!r}")
    return seconds


def _worker(args: argparse.Namespace) -> int:
    from aruntime._cli import DB_VARIABLE  # noqa: PLC0415 - _cli imports this module

    db: str | None = args.db or os.environ.get(DB_VARIABLE) or None
    if db is None:
        print(f"aruntime: no database: pass --db, or set {DB_VARIABLE}", file=sys.stderr)
        return EXIT_USAGE
    # A path goes into the URL quoted: it may hold `?` or `%xx`.
    url = db if "://" in db else f"sqlite:///{urllib.parse.quote(db)}"
    try:
        workflows = _import(args.modules)
    except (ImportError, AruntimeError) as exc:
        print(f"aruntime: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the module's own code failed: show where, then say so
        traceback.print_exc()
        print(
            f"aruntime: importing {', '.join(args.modules)} failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not workflows:
        print(
            f"aruntime: {', '.join(args.modules)} registered no @workflow; nothing to run",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        asyncio.run(_serve(url, workflows, args.grace))
    except AruntimeError as exc:
        print(f"aruntime: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _import(modules: list[str]) -> list[Workflow[..., Any]]:
    """Import `modules`; the workflows they registered."""
    if "" not in sys.path:
        sys.path.insert(0, "")
    before = registered_workflows()
    for name in modules:
        importlib.import_module(name)
    after = registered_workflows()
    return [wf for key, wf in after.items() if before.get(key) is not wf]


async def _serve(url: str, workflows: list[Workflow[..., Any]], grace: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    rt = Runtime(url, workflows=workflows)
    await rt.open()
    names = sorted(wf.name for wf in workflows)
    logger.info("worker.started", workflows=names)
    print(f"aruntime worker: running {', '.join(names)} on {url}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
        logger.info("worker.stopping", grace=grace)
        await rt.aclose(grace=grace)
    finally:
        await rt.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    logger.info("worker.stopped")
    print(
        "aruntime worker: stopped; unfinished runs go on in the next runtime to open the store",
        file=sys.stderr,
        flush=True,
    )
