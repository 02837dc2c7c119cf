"""`aruntime worker`: a process that runs the workflows some modules register, until told to stop.

    aruntime worker --db URL --import pkg.jobs [--import pkg.more] [--grace SECONDS]

The modules are imported (the current directory first on the path, as `python -m` does),
and the worker opens `Runtime(db, workflows=<what they registered>)`: it resumes their
unfinished runs, applies the inbox, and leaves the runs of other workflows for a runtime
that knows them. On PostgreSQL any number of workers share the database, each claiming
runs under a lease (see `aruntime._fleet`). On SIGTERM or SIGINT it stops taking
requests, lets the step bodies in flight at that moment finish for up to `--grace`
seconds, then closes: whatever is still in flight is left to recovery (the next runtime
runs it again, at least once); on PostgreSQL it releases its leases, so the other workers
take its runs over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
import time
from typing import Any

from aruntime._definitions import Workflow, registered_workflows
from aruntime._log import logger
from aruntime.errors import AruntimeError
from aruntime.runtime import Runtime
from aruntime.state import StepStatus

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
        required=True,
        metavar="URL",
        help="the store: sqlite:///path.db, or postgresql://user@host/db for a fleet of workers",
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
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long steps in flight at the stop signal may take to finish (10)",
    )
    worker.set_defaults(handler=_worker)


def _worker(args: argparse.Namespace) -> int:
    url: str = args.db if "://" in args.db else f"sqlite:///{args.db}"
    try:
        workflows = _import(args.modules)
    except (ImportError, AruntimeError) as exc:
        print(f"aruntime: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not workflows:
        print(
            f"aruntime: {', '.join(args.modules)} registered no @workflow; nothing to run",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        asyncio.run(_serve(url, workflows, max(0.0, args.grace)))
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
        await _drain(rt, grace)
    finally:
        await rt.aclose()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    logger.info("worker.stopped")


async def _drain(rt: Runtime, grace: float) -> None:
    """Wait up to `grace` seconds for the step bodies in flight now to finish."""
    supervisor = rt._require_supervisor()
    if rt._inbox_task is not None:
        rt._inbox_task.cancel()  # no new requests while draining
    in_flight = {
        (run_id, identity)
        for run_id, runner in list(supervisor._runners.items())
        for identity, s in runner.state.steps.items()
        if s.status is StepStatus.RUNNING
    }
    deadline = time.monotonic() + grace
    while in_flight and time.monotonic() < deadline:
        in_flight = {
            (run_id, identity)
            for run_id, identity in in_flight
            if (runner := supervisor.runner(run_id)) is not None
            and (s := runner.state.steps.get(identity)) is not None
            and s.status is StepStatus.RUNNING
        }
        await asyncio.sleep(0.01)
