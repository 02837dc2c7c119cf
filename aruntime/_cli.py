"""The `aruntime` command: the demo, and a look at the runs in a database.

    aruntime demo [--runs N] [--steps N] [--seed N] [--db PATH | --store memory]
    aruntime runs list [--status running|completed|failed|parked] [--db PATH] [--json]
    aruntime runs show RUN_ID [--db PATH] [--json]
    aruntime runs cancel|resume|delete|wait RUN_ID [--db PATH]     (see _cli_runs)
    aruntime runs send RUN_ID [--topic T] --json '{...}' [--key K] [--db PATH]
    aruntime runs fork RUN_ID --from-step IDENTITY [--run-id NEW] [--db PATH]
    aruntime runs prune --older-than 7d [--status completed] [--db PATH]
    aruntime worker --db URL --import pkg.module [--grace SECONDS]  (see _cli_worker)

The `runs` commands read the database that `--db` names, or else `$ARUNTIME_DB`; there is
no default, so that they never read some other file than the one meant. They only read:
a read-only file, directory or mount is fine. The demo makes its own file
(`aruntime-demo.db` unless `--db` says otherwise) and ignores `ARUNTIME_DB`, since it
starts that file afresh.

The command is an application, so it is where structlog gets configured (the library never
does): warnings and errors go to stderr, `--verbose` adds the info events.

Exit codes: 0 success; 1 a demo check failed, or no such run; 2 bad usage, no database
named, or no usable database at the one named.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog

from aruntime import _cli_show
from aruntime._cli_runs import add_runs_commands
from aruntime._cli_worker import add_worker_command
from aruntime.client import waiting_starts
from aruntime.errors import AruntimeError, ConfigError
from aruntime.events import Event, StepFailed, op_identity
from aruntime.state import RunState, RunStatus, replay
from aruntime.store import EventStore, OwnerInfo, RunInfo

__all__ = ["configure_logging", "main", "run"]

DEFAULT_DB = Path("aruntime-demo.db")
"""The demo's database, made afresh by each demo; the `runs` commands have no default."""
DB_VARIABLE = "ARUNTIME_DB"
"""The environment variable that names the database of the `runs` commands."""
EXIT_FAILED = 1
EXIT_USAGE = 2
_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "parked")


def main(argv: Sequence[str] | None = None) -> int:
    """The `aruntime` command; returns its exit code."""
    args = _parser().parse_args(argv)
    configure_logging(logging.INFO if args.verbose else _quiet_level(args))
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader of our output went away (`aruntime runs list | head`): stop quietly,
        # and keep the interpreter's final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def run(argv: Sequence[str]) -> int:
    """Run one command without touching the logging configuration (for tests)."""
    args = _parser().parse_args(argv)
    return int(args.handler(args))


def configure_logging(level: int) -> None:
    """Send structlog events at `level` and above to stderr, rendered for people."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _quiet_level(args: argparse.Namespace) -> int:
    # The demo injects hundreds of failures on purpose, and the library reports each
    # failed attempt and respawn as a warning; the summary counts them instead.
    return logging.ERROR if args.handler is _demo else logging.WARNING


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aruntime", description="Durable execution for asyncio: demo and run inspection."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log info events too")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run many concurrent runs through faults and crashes, and check every promise",
    )
    demo.add_argument("--runs", type=_positive, default=200, help="runs per phase (200)")
    demo.add_argument("--steps", type=_positive, default=5, help="steps per run (5)")
    demo.add_argument("--seed", type=int, default=1, help="drives every fault and delay (1)")
    demo.add_argument(
        "--db", type=Path, default=DEFAULT_DB, help=f"SQLite file, made afresh ({DEFAULT_DB})"
    )
    demo.add_argument(
        "--store",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="memory: no database file, no process-kill phase",
    )
    demo.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(handler=_demo)

    runs = commands.add_parser(
        "runs",
        help=f"inspect, wait for, cancel, resume and remove runs (--db or ${DB_VARIABLE})",
        description=f"Inspect the runs in a database (list, show and wait only read it, and "
        "work on a file you cannot write), or ask its owner to cancel or resume one, or "
        f"remove ended runs. The database is --db, or else the environment variable "
        f"{DB_VARIABLE}; there is no default.",
    )
    runs_commands = runs.add_subparsers(required=True, metavar="COMMAND")
    listing = runs_commands.add_parser("list", parents=[common], help="list runs")
    listing.add_argument("--status", choices=_STATUSES, help="only runs in this state")
    show = runs_commands.add_parser("show", parents=[common], help="a run's state and history")
    show.add_argument("run_id", metavar="RUN_ID")
    for sub in (listing, show):
        sub.add_argument(
            "--db",
            metavar="PATH",
            help=f"a file, or a URL sqlite:///path.db (default: ${DB_VARIABLE}; none if unset)",
        )
        sub.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_runs_list)
    show.set_defaults(handler=_runs_show)
    add_runs_commands(
        runs_commands,
        common,
        f"a file, or a URL sqlite:///path.db (default: ${DB_VARIABLE}; none if unset)",
    )
    add_worker_command(commands, common)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _database(given: str | None) -> tuple[Path, str]:
    """The `runs` commands' database, `--db` or else `$ARUNTIME_DB`, and which of the two.

    Either is a file's path or the store URL (`sqlite:///runs.db`) the API takes.

    Raises:
        ConfigError: neither names a database, or the URL is not an SQLite one.
    """
    if given is not None:
        text, source = given, "--db"
    else:
        text, source = os.environ.get(DB_VARIABLE, ""), f"${DB_VARIABLE}"
    if not text:
        empty = f" ({source} is empty)" if given is not None or DB_VARIABLE in os.environ else ""
        raise ConfigError(
            f"no database given{empty}: pass --db PATH (a file or sqlite:///path.db), or set "
            f"{DB_VARIABLE}"
        )
    if "://" not in text:
        return Path(text), source
    from aruntime.store.sqlite import SqliteStore  # noqa: PLC0415 - loads sqlite3 on use

    try:
        return SqliteStore.from_url(text).path, source
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _error(message: str) -> None:
    print(f"aruntime: {message}", file=sys.stderr)


# -- demo ----------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from aruntime._demo import DemoOptions, fresh_database, run_demo  # noqa: PLC0415 - only here

    db: Path | None = None
    if args.store == "sqlite":
        db = args.db.resolve()
        if not db.parent.is_dir():
            _error(f"no directory {db.parent} for the demo's database")
            return EXIT_USAGE
        try:
            refused = None if args.child else fresh_database(db, ours=args.db == DEFAULT_DB)
        except OSError as exc:
            refused = (
                f"cannot make the demo's database {db}: {exc.strerror or exc}; give --db a "
                "path in a writable directory, or run it with --store memory"
            )
        if refused is not None:
            _error(refused)
            return EXIT_USAGE
    options = DemoOptions(runs=args.runs, steps=args.steps, seed=args.seed, db=db, child=args.child)
    try:
        return run_demo(options)
    except (AruntimeError, OSError) as exc:
        _error(f"the demo stopped: {exc}")
        return EXIT_FAILED


# -- runs list / show ----------------------------------------------------------------------


def _runs_list(args: argparse.Namespace) -> int:
    return _with_store(_list, args)


def _runs_show(args: argparse.Namespace) -> int:
    return _with_store(_show, args)


_Command = Callable[[EventStore, argparse.Namespace], Awaitable[int]]


def _with_store(command: _Command, args: argparse.Namespace) -> int:
    try:
        path, source = _database(args.db)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    args.db = path
    named = "" if source == "--db" else f" (named by {source})"
    if path.is_dir():
        _error(f"{path}{named} is a directory; a database is a file")
        return EXIT_USAGE
    if not path.is_file():
        _error(f"no database at {path}{named}")
        return EXIT_USAGE
    return asyncio.run(_read_only(path, command, args))


async def _read_only(path: Path, command: _Command, args: argparse.Namespace) -> int:
    from aruntime.store.sqlite import SqliteConfig, SqliteStore  # noqa: PLC0415 - loads sqlite3 on use

    store = SqliteStore(path, SqliteConfig(read_only=True))
    try:
        await store.open()
    except AruntimeError as exc:
        _error(_unreadable(path, store.path, exc))
        return EXIT_USAGE
    try:
        return await command(store, args)
    except AruntimeError as exc:  # a damaged log or file: say which, keep the traceback out
        _error(_unreadable(path, store.path, exc))
        return EXIT_FAILED
    finally:
        await store.aclose()


def _unreadable(path: Path, absolute: Path, exc: AruntimeError) -> str:
    """The message for a database that cannot be read, naming the file once."""
    text = str(exc).removeprefix(f"{absolute}: ")
    return f"cannot read {path}: {text}"


async def _list(store: EventStore, args: argparse.Namespace) -> int:
    status = args.status
    if status == "parked":
        infos = await store.list_runs(parked=True)
    elif status == "running":
        infos = await store.list_runs(status=RunStatus.RUNNING, parked=False)
    elif status is not None:
        infos = await store.list_runs(status=RunStatus(status))
    else:
        infos = await store.list_runs()
    if status in (None, "pending"):
        listed = {i.run_id for i in infos}
        infos += [i for i in await waiting_starts(store) if i.run_id not in listed]
    owner = await store.owner_info()
    found = await _cli_show.parents_of(store, [i.run_id for i in infos])
    parents = {} if found is None else found
    if args.json:
        print(json.dumps([_info_json(i, parents.get(i.run_id)) for i in infos], indent=2))
        return 0
    if not infos:
        print("no runs" if status is None else f"no {status} runs")
        return 0
    rows = [
        (
            i.run_id,
            i.workflow,
            _status(i, owner),
            str(i.version),
            _local(i.created_at),
            _local(i.updated_at),
            parents.get(i.run_id, "-" if found is not None else "?"),
        )
        for i in infos
    ]
    _table(("RUN ID", "WORKFLOW", "STATUS", "EVENTS", "CREATED", "UPDATED", "PARENT"), rows)
    if found is None:
        print(f"(parents not looked up for more than {_cli_show.PARENTS_SHOWN} runs: ?)")
    return 0


async def _show(store: EventStore, args: argparse.Namespace) -> int:
    info = await store.get_run(args.run_id)
    events = await store.events_for(args.run_id)
    if info is None or not events:
        waiting = [i for i in await waiting_starts(store) if i.run_id == args.run_id]
        if not waiting:
            _error(f"no run {args.run_id!r} in {args.db}")
            return EXIT_FAILED
        print(
            f"run {args.run_id} ({waiting[0].workflow}): pending, its start waits for the "
            "runtime that owns the file"
        )
        return 0
    state = replay(events)
    messages = await _cli_show.pending_messages(store, args.run_id)
    if args.json:
        document = {
            "run": _info_json(info, state.parent),
            "state": _state_json(state) | _cli_show.vocabulary_json(state, messages),
            "events": [_event_json(e) for e in events],
        }
        print(json.dumps(document, indent=2))
        return 0
    _print_state(info, state)
    print()
    if state.published:
        print("published")
        _table(
            ("KEY", "LATEST VALUE"),
            [(k, _cut(v)) for k, v in state.published.items()],
            indent="  ",
        )
        print()
    if messages:
        print("messages not received yet")
        _table(("ID", "TOPIC", "KEY", "PAYLOAD"), _cli_show.message_rows(messages), indent="  ")
        print()
    print("history")
    start = events[0].at
    _table(
        ("SEQ", "TIME", "EVENT", "DETAILS"),
        [(str(e.sequence), f"+{e.at - start:.3f}s", type(e).__name__, _details(e)) for e in events],
        indent="  ",
    )
    return 0


def _print_state(info: RunInfo, state: RunState) -> None:
    print(f"run       {info.run_id}")
    print(f"workflow  {info.workflow}")
    print(f"status    {_status(info)}")
    for line in _cli_show.lineage_lines(state):
        print(line)
    if info.parked_reason is not None:
        print(f"parked    {info.parked_reason}")
    if info.queue is not None:
        print(f"queue     {_placement(info)}")
    if state.result is not None:
        print(f"result    {_cut(state.result)}")
    if state.error_type is not None:
        print(f"error     {state.error_type}: {state.error_message}")
    if state.started_at is not None:
        print(f"started   {_local(state.started_at)}")
    if state.finished_at is not None and state.started_at is not None:
        took = state.finished_at - state.started_at
        print(f"finished  {_local(state.finished_at)} (after {took:.3f}s)")
    if state.deadline is not None:
        print(f"deadline  {_local(state.deadline)}")
    if state.cancel_reason is not None:
        print(f"cancel    requested: {state.cancel_reason}")
    print(f"events    {state.version}")
    print()
    print("operations")
    rows: list[tuple[float, str, tuple[str, ...]]] = []
    for s in state.steps.values():
        outcome = s.result if s.result is not None else f"{s.error_type}: {s.error_message}"
        if s.error_type is None and s.result is None:
            outcome = ""
        row = (s.identity, "step", s.step, s.status.value, str(s.attempts), _cut(outcome))
        rows.append((s.started_at, s.identity, row))
    for z in state.sleeps.values():
        status = "cancelled" if z.cancelled else "until"
        row = (z.identity, "sleep", "-", status, "-", _local(z.wake_at))
        rows.append((z.started_at, z.identity, row))
    rows += _cli_show.operation_rows(state)
    rows.sort(key=lambda r: (r[0], r[1]))
    _table(
        ("OP", "KIND", "NAME", "STATUS", "ATTEMPTS", "RESULT, ERROR OR WAKE-UP"),
        [row for _, _, row in rows],
        indent="  ",
    )


def _details(event: Event) -> str:
    special = _cli_show.details(event)
    if special is not None:
        return special
    fields = msgspec.structs.asdict(event)
    parts = []
    if "position" in fields:
        identity = op_identity(fields.get("branch", ""), fields["position"])
        if "step" in fields:
            parts.append(f"op {identity} step {fields['step']!r} attempt {fields['attempt']}")
        else:
            parts.append(f"op {identity}")
    if "wake_at" in fields:
        parts.append(f"sleep until {_local(fields['wake_at'])}")
    if "reason" in fields:
        parts.append(f"reason {_cut(fields['reason'])}")
    if "workflow" in fields:
        parts.append(f"workflow {fields['workflow']!r} args {_cut(fields['args'])}")
    if "result" in fields:
        parts.append(f"result {_cut(fields['result'])}")
    if "error_type" in fields:
        parts.append(f"{fields['error_type']}: {_cut(fields['error_message'])}")
    if isinstance(event, StepFailed):
        wait = (
            "none: failed for good"
            if event.retry_at is None
            else f"{event.retry_at - event.at:.3f}s"
        )
        parts.append(f"retry wait {wait}")
    return "; ".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(indent + "  ".join(cells).rstrip())


def _status(info: RunInfo, owner: OwnerInfo | None = None) -> str:
    if info.status is RunStatus.PENDING:
        return "pending (its start waits for the runtime that owns the file)"
    if info.parked:
        return f"parked ({info.status.value})"
    if (
        info.status is RunStatus.RUNNING
        and owner is not None
        and info.workflow not in owner.workflows
    ):
        return "waiting for a runtime that knows its workflow"
    if info.status is RunStatus.RUNNING and info.queued:
        return f"queued ({info.queue})"
    return info.status.value


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _local(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(sep=" ", timespec="milliseconds")


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _info_json(info: RunInfo, parent: str | None = None) -> dict[str, Any]:
    return {
        "parent": parent,
        "run_id": info.run_id,
        "workflow": info.workflow,
        "status": info.status.value,
        "parked": info.parked,
        "parked_reason": info.parked_reason,
        "version": info.version,
        "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
        "queue": info.queue,
        "priority": info.priority,
        "partition_key": info.partition_key,
        "admitted_at": _iso(info.admitted_at),
    }


def _placement(info: RunInfo) -> str:
    where = [f"priority {info.priority}"]
    if info.partition_key is not None:
        where.append(f"partition {info.partition_key!r}")
    admitted = "waiting" if info.admitted_at is None else f"admitted {_local(info.admitted_at)}"
    return f"{info.queue} ({', '.join(where)}), {admitted}"


def _state_json(state: RunState) -> dict[str, Any]:
    steps = [
        _with_values(
            {
                "identity": s.identity,
                "branch": s.branch,
                "position": s.position,
                "step": s.step,
                "status": s.status.value,
                "attempts": s.attempts,
                "result": s.result,
                "error_type": s.error_type,
                "error_message": s.error_message,
                "retry_at": _iso(s.retry_at),
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
            }
        )
        for s in sorted(state.steps.values(), key=lambda s: (s.started_at, s.identity))
    ]
    sleeps = [
        {
            "identity": z.identity,
            "wake_at": _iso(z.wake_at),
            "cancelled": z.cancelled,
            "started_at": _iso(z.started_at),
        }
        for z in sorted(state.sleeps.values(), key=lambda z: (z.started_at, z.identity))
    ]
    return _with_values(
        {
            "status": state.status.value,
            "version": state.version,
            "result": state.result,
            "error_type": state.error_type,
            "error_message": state.error_message,
            "started_at": _iso(state.started_at),
            "finished_at": _iso(state.finished_at),
            "deadline": _iso(state.deadline),
            "cancel_reason": state.cancel_reason,
            "steps": steps,
            "sleeps": sleeps,
        }
    )


def _event_json(event: Event) -> dict[str, Any]:
    fields = msgspec.structs.asdict(event)
    document: dict[str, Any] = {"type": type(event).__name__, **fields, "at": _iso(event.at)}
    for key in ("wake_at", "deadline"):
        if key in fields:
            document[key] = _iso(fields[key])
    if isinstance(event, StepFailed):
        document["retry_at"] = _iso(event.retry_at)
        document["retry_wait"] = None if event.retry_at is None else event.retry_at - event.at
    return _with_values(document)


def _with_values(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with `result_value` / `args_value` beside `result` / `args`: the recorded
    text decoded, when it is JSON (the default serializer's); the text stays as recorded."""
    for key in ("result", "args"):
        text = document.get(key)
        if isinstance(text, str):
            with contextlib.suppress(ValueError):  # not JSON: a serializer of the user's own
                document[f"{key}_value"] = json.loads(text)
    return document
