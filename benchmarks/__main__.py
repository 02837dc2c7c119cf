"""`python -m benchmarks WORKLOAD`: run a workload, print a table and one JSON line.

Examples (from the repository root)::

    python -m benchmarks throughput                       # memory store, 1,000 x 10
    python -m benchmarks throughput --store sqlite --compare dbos --chart tp.png
    python -m benchmarks throughput --store sqlite --against main   # working tree vs main
    python -m benchmarks latency --store sqlite --chart latency.png
    python -m benchmarks recovery --store sqlite
    python -m benchmarks scale --n 100000
    python -m benchmarks sleep --store sqlite            # 10,000 runs wake at one instant
    python -m benchmarks replay
    python -m benchmarks floor --store sqlite             # what one durable append costs
    python -m benchmarks all --store sqlite --json
    python -m benchmarks throughput --store postgres --compare dbos
    python -m benchmarks fleet --workers 1,2,4 --chart fleet.png   # worker processes
    python -m benchmarks takeover                          # SIGKILL a worker: takeover time
    python -m benchmarks queue --store sqlite    # 1,000 x 10 on no queue vs a queue of 100
    python -m benchmarks queue --concurrency 10 --n 200 --repeat 5
    python -m benchmarks admission --store postgres   # one admission of 100 vs the backlog
    python -m benchmarks admission --levels 1000,100000 --repeat 9

Each repeat runs on a fresh store (a fresh database file) and a fresh runtime. With
`--compare dbos` the repeats alternate between the systems (aruntime first on even
repeats, the peer first on odd ones) after one untimed warm-up each. `--against REF`
alternates the same way between the working tree's aruntime and the package as it was at
REF, every measurement of both in a fresh process (see `benchmarks._against`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aruntime.store import open_store
from benchmarks import (
    _admission,
    _floor,
    _message,
    _queue,
    _recovery,
    _replay,
    _scale,
    _sleep,
    _wakeup,
    report,
)
from benchmarks._against import AgainstError, Checkout, IsolatedSide, checkout
from benchmarks._aruntime_side import (
    DEFAULT_POSTGRES,
    AruntimeSide,
    LoopResult,
    StoreSpec,
    discard,
)
from benchmarks._dbos_side import DbosSide
from benchmarks._harness import REPO, Progress, configure_logging, machine, note, spread
from benchmarks.workloads import REPLAY, WORKLOADS, Workload

NAMES = (
    "throughput",
    "latency",
    "recovery",
    "retry",
    "scale",
    "sleep",
    "replay",
    "floor",
    "wakeup",
    "message",
    "queue",
    "admission",
)
CHARTED = ("throughput", "latency")
AGAINST = ("throughput", "latency", "retry")
"""The workloads `--against` runs (the closed-loop ones)."""
_FLOOR_SAMPLES = 2000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="aruntime's benchmark suite (see benchmarks/workloads.py for the workloads)",
    )
    parser.add_argument("workload", choices=(*NAMES, "all"))
    parser.add_argument("--store", choices=("memory", "sqlite", "postgres"), default="memory")
    parser.add_argument(
        "--synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite durability for aruntime (default FULL, as in production)",
    )
    parser.add_argument(
        "--n", type=int, help="runs (replay: the largest log, in events; floor: samples)"
    )
    parser.add_argument("--steps", type=int, help="steps per run")
    parser.add_argument(
        "--concurrency",
        type=int,
        help=f"queue, admission: the queue's concurrency limit (default "
        f"{_queue.DEFAULT_CONCURRENCY}; admission: the runs each admission lets in)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="measurements per system (default 5; 3 for recovery, scale, sleep and queue; "
        "admission: end-and-admit cycles after the first admission, default "
        f"{_admission.DEFAULT_CYCLES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the replay log model")
    parser.add_argument(
        "--compare", choices=("dbos",), help="also run the workload on this peer, alternating"
    )
    parser.add_argument(
        "--against",
        metavar="REF",
        help="also run the workload on aruntime as it was at git REF, alternating; both "
        "sides in fresh processes",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        help="write a PNG: throughput against concurrent runs, or the latency distribution",
    )
    parser.add_argument(
        "--levels",
        help="throughput: concurrent runs to chart throughput at (default 10,100,1000; --n "
        "is added); admission: the backlogs of waiting runs (default "
        + ",".join(str(w) for w in _admission.DEFAULT_LEVELS)
        + "; under `all`, always the default)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON lines only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-warmup", action="store_true", help="no untimed warm-up run")
    parser.add_argument(
        "--log-file", default=os.devnull, help="where warnings of the systems go (default: nowhere)"
    )
    parser.add_argument(
        "--logging",
        choices=("default", "filtered"),
        default="default",
        help="default: logging as a user who configures nothing gets it (the default); "
        "filtered: structlog configured to drop everything below WARNING",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where database files go (default: a temp dir)"
    )
    parser.add_argument(
        "--postgres-url",
        help="the PostgreSQL database for --store postgres, both systems (default "
        f"{DEFAULT_POSTGRES})",
    )
    args = parser.parse_args(argv)
    for name in ("n", "steps", "repeat", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.levels is not None:
        try:
            levels = [int(x) for x in args.levels.split(",") if x.strip()]
        except ValueError:
            parser.error(f"--levels must be comma-separated integers, not {args.levels!r}")
        if not levels or min(levels) < 1:
            parser.error("--levels must name at least one level, each at least 1")
        if args.workload == "admission":
            cycles = args.repeat or _admission.DEFAULT_CYCLES
            limit = args.concurrency or _admission.DEFAULT_CONCURRENCY
            least = _admission.smallest_backlog(limit, cycles)
            if min(levels) < least:
                parser.error(
                    f"admission: every level must be at least {least:,} waiting runs, for "
                    f"{cycles + 1} admissions of {limit} (the first and --repeat cycles)"
                )
    if args.against is not None:
        if args.compare is not None:
            parser.error("--against and --compare cannot be combined")
        if args.workload not in AGAINST:
            parser.error(f"--against runs only {', '.join(AGAINST)}, not {args.workload}")
    return args


class Suite:
    """One invocation: the chosen store, the systems, and where their files go."""

    def __init__(self, args: argparse.Namespace, workdir: Path, argv: Sequence[str]) -> None:
        self.args = args
        self.workdir = workdir
        self.store = StoreSpec(
            kind=args.store,
            synchronous=args.synchronous,
            postgres_url=args.postgres_url or DEFAULT_POSTGRES,
        )
        self.aruntime = AruntimeSide(self.store, workdir)
        self.peer = (
            DbosSide(args.store, workdir, database_url=args.postgres_url or DEFAULT_POSTGRES)
            if args.compare == "dbos"
            else None
        )
        self.command = "python -m benchmarks " + shlex.join(argv)
        self.machine: dict[str, Any] = {}
        self.against: Checkout | None = None
        self.isolated: list[IsolatedSide] = []
        if args.against is not None:
            self.against = checkout(args.against, workdir)
            common: dict[str, Any] = {
                "store": self.store,
                "workdir": workdir,
                "warmup": not args.no_warmup,
                "log_file": args.log_file,
                "logging_mode": args.logging,
            }
            self.isolated = [
                IsolatedSide("aruntime", "working tree", REPO, version="working tree", **common),
                IsolatedSide(
                    "ref",
                    f"aruntime@{self.against.short}",
                    self.against.root,
                    version=self.against.short,
                    extra={"commit": self.against.commit},
                    **common,
                ),
            ]

    # -- shared pieces ---------------------------------------------------------------

    def sides(self) -> list[Any]:
        if self.isolated:
            return list(self.isolated)
        return [self.aruntime] + ([self.peer] if self.peer is not None else [])

    def config(self, workload: Workload | None, repeat: int) -> dict[str, Any]:
        cfg: dict[str, Any] = {"store": self.store.kind, "logging": self.args.logging}
        if self.store.kind == "sqlite":
            cfg["synchronous"] = self.store.synchronous
        if workload is not None:
            cfg.update(
                runs=workload.runs,
                steps=workload.steps,
                concurrency=workload.concurrency,
                step_sleep=workload.step_sleep,
                fail_attempts=workload.fail_attempts,
            )
            if workload.fail_attempts:
                cfg["retry"] = {
                    "max_attempts": workload.retry.max_attempts,
                    "initial_delay": workload.retry.initial_delay,
                    "backoff": workload.retry.backoff,
                    "jitter": 0.0,
                }
        if self.against is not None:
            cfg["against"] = self.against.describe()
        cfg.update(
            repeat=repeat,
            seed=self.args.seed,
            warmup=not self.args.no_warmup,
            machine=self.machine,
            command=self.command,
        )
        return cfg

    def settle(self) -> None:
        """Let the disk write back what the last measurement left dirty, off the clock.

        Without it, a measurement on a durable store can pay for its predecessor's
        write-back (the other system's, when comparing) in slower fsyncs.
        """
        if self.store.kind != "memory":
            os.sync()
            time.sleep(0.2)

    def progress(self, label: str, total: int) -> Progress:
        return Progress(label, total, enabled=not self.args.no_progress)

    def chart_path(self, name: str, many: bool) -> Path | None:
        path: Path | None = self.args.chart
        if path is None:
            return None
        if path.is_dir():
            return path / f"{name}.png"
        if many:
            return path.with_name(f"{path.stem}-{name}{path.suffix or '.png'}")
        return path

    def _store_of(self, side: Any) -> dict[str, Any]:
        if side is self.aruntime:
            return self.store.describe()
        described: dict[str, Any] = side.describe()
        return described

    def emit(self, rep: dict[str, Any], figures: list[report.Figure]) -> None:
        if not self.args.json:
            print(report.render_table(rep, figures))
            line = report.ratio_line(rep, figures)
            if line:
                print(line)
            for line in rep.get("notes", []):
                print(f"  note: {line}")
        print(report.json_line(rep), flush=True)

    # -- closed-loop workloads: throughput, latency, retry ----------------------------

    def closed(self, name: str, many: bool) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS[name].resized(runs=args.n, steps=args.steps)
        repeat = args.repeat or workload.default_repeat
        sides = self.sides()
        skipped = {s.name: s.unavailable() for s in sides}
        active = [s for s in sides if skipped[s.name] is None]
        levels = [workload.concurrency]
        chart = self.chart_path(name, many) if name in CHARTED else None
        if chart is not None and name == "throughput":
            wanted = {int(x) for x in (args.levels or "10,100,1000").split(",") if x.strip()}
            levels = sorted({c for c in wanted if c <= workload.runs} | {workload.concurrency})
        # An isolated side warms up in each of its processes instead.
        if not args.no_warmup and not self.isolated:
            small = workload.resized(runs=min(workload.runs, 20))
            for side in active:
                asyncio.run(side.closed_loop(small, None))
        results: dict[str, dict[int, list[LoopResult]]] = {s.name: {} for s in active}
        total = len(levels) * repeat * len(active) * workload.runs
        with self.progress(name, total) as progress:
            for level in levels:
                w = replace(workload, concurrency=level)
                for r in range(repeat):
                    for side in active if r % 2 == 0 else active[::-1]:
                        result = asyncio.run(side.closed_loop(w, progress))
                        results[side.name].setdefault(level, []).append(result)
                        self.settle()
        blocks: dict[str, dict[str, Any]] = {}
        for side in sides:
            reason = skipped[side.name]
            if reason is not None:
                blocks[side.name] = {"skipped": reason}
                continue
            repeats = [
                report.loop_figures(workload, res)
                for res in results[side.name][workload.concurrency]
            ]
            blocks[side.name] = report.side_block(side.version(), self._store_of(side), repeats)
            if chart is not None and name == "throughput":
                blocks[side.name]["steps_per_s_by_concurrency"] = {
                    str(level): spread([res.steps / res.elapsed for res in runs])
                    for level, runs in results[side.name].items()
                }
        rep = self._report(
            name, workload=workload, repeat=repeat, blocks=blocks, figures=report.FIGURES[name]
        )
        wrong = {
            n: b["figures"]["wrong_results"]["max"]
            for n, b in blocks.items()
            if "figures" in b and b["figures"].get("wrong_results", {}).get("max")
        }
        if wrong:
            rep["notes"].append(f"runs with a wrong result: {wrong}")
        if name == "retry" and "dbos" in results:
            rep["notes"].append(
                "aruntime makes a durable append per retry (StepFailed with the due time goes "
                "out before the backoff), so a crash cannot lose the backoff or exceed "
                "max_attempts; "
                "DBOS retries a step in memory and records only its final outcome"
            )
        if chart is not None:
            self._chart(name, chart, rep, results, workload)
        return rep

    def _chart(
        self,
        name: str,
        path: Path,
        rep: dict[str, Any],
        results: dict[str, dict[int, list[LoopResult]]],
        workload: Workload,
    ) -> None:
        cfg = rep["config"]
        store = cfg["store"] + (f" ({cfg['synchronous']})" if cfg.get("synchronous") else "")
        if name == "throughput":
            points = {
                side: {
                    level: spread([r.steps / r.elapsed for r in runs]) for level, runs in by.items()
                }
                for side, by in results.items()
            }
            title = (
                f"throughput: {workload.runs:,} runs x {workload.steps} trivial steps per point\n"
                f"store {store}, {cfg['repeat']} repeats, {cfg['machine']['cores']} cores"
            )
            problem = report.chart_throughput(self._labelled(points), path, title)
        else:
            samples = {
                side: [x for r in by[workload.concurrency] for x in r.probe.step_latencies]
                for side, by in results.items()
            }
            title = (
                f"per-step latency, one run at a time: {workload.runs:,} runs x {workload.steps} "
                f"steps x {cfg['repeat']} repeats\nstore {store}, {cfg['machine']['cores']} cores"
            )
            problem = report.chart_latency(self._labelled(samples), path, title)
        if problem is None:
            rep["chart"] = str(path)
            note(f"chart written: {path}")
        else:
            rep["notes"].append(problem)
            note(problem)

    def _labelled(self, by_side: dict[str, Any]) -> dict[str, Any]:
        labels = {side.name: getattr(side, "label", side.name) for side in self.sides()}
        return {labels.get(name, name): value for name, value in by_side.items()}

    def _report(
        self,
        name: str,
        *,
        workload: Workload | None,
        repeat: int,
        blocks: dict[str, dict[str, Any]],
        figures: list[report.Figure],
        description: str | None = None,
    ) -> dict[str, Any]:
        return {
            "workload": name,
            "description": description or (workload.description if workload else ""),
            "config": self.config(workload, repeat),
            "sides": blocks,
            "ratio": report.ratios(figures, blocks),
            "targets": report.target_block(name, self.store.kind, blocks),
            "notes": [],
        }

    # -- scale ------------------------------------------------------------------------

    def scale(self) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS["scale"].resized(runs=args.n)
        repeat = args.repeat or workload.default_repeat
        sides = self.sides()
        skipped = {s.name: s.unavailable() for s in sides}
        active = [s for s in sides if skipped[s.name] is None]
        plain: dict[str, list[Any]] = {s.name: [] for s in active}
        traced: dict[str, Any] = {}
        for r in range(repeat):
            for side in active if r % 2 == 0 else active[::-1]:
                plain[side.name].append(
                    _scale.measure(
                        side.name,
                        self.store,
                        workload.runs,
                        trace=False,
                        workdir=self.workdir / f"scale-{side.name}-{r}",
                    )
                )
        for side in active:
            traced[side.name] = _scale.measure(
                side.name,
                self.store,
                workload.runs,
                trace=True,
                workdir=self.workdir / f"scale-{side.name}-traced",
            )
        blocks: dict[str, dict[str, Any]] = {}
        for side in sides:
            reason = skipped[side.name]
            if reason is not None:
                blocks[side.name] = {"skipped": reason}
                continue
            repeats = [report.scale_figures(res, None) for res in plain[side.name]]
            report.add_traced(repeats, report.scale_figures(traced[side.name], traced[side.name]))
            blocks[side.name] = report.side_block(side.version(), self._store_of(side), repeats)
        rep = self._report(
            "scale",
            workload=workload,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["scale"],
        )
        rep["notes"].append(
            "RSS: resident memory after the runs suspended minus before they started, per run, "
            "one fresh process per repeat; traced: tracemalloc in one extra process per system"
        )
        if self.store.kind == "memory":
            rep["notes"].append("the memory store keeps every log in memory: counted per run")
        return rep

    # -- wakeup -----------------------------------------------------------------------

    def wakeup(self) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS["wakeup"].resized(runs=args.n)
        repeat = args.repeat or workload.default_repeat
        repeats: list[dict[str, float]] = []
        postgres = self.store.kind == "postgres"
        with self.progress("wakeup", repeat) as progress:
            for r in range(repeat):
                directory = self.workdir / f"wakeup-{r}"
                url = self.store.url(directory) if postgres else None
                try:
                    repeats.append(_wakeup.measure(workload.runs, workdir=directory, url=url))
                finally:
                    if url is not None:
                        asyncio.run(discard(open_store(url)))
                self.settle()
                progress.update()
        described = (
            {"store": "postgres", "processes": "worker + client"}
            if postgres
            else {"store": "sqlite", "synchronous": "FULL", "processes": "owner + client"}
        )
        blocks: dict[str, dict[str, Any]] = {
            "aruntime": report.side_block(self.aruntime.version(), described, repeats)
        }
        rep = self._report(
            "wakeup",
            workload=workload,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["wakeup"],
        )
        # Across processes: a file, or the PostgreSQL database.
        rep["config"]["store"] = "postgres" if postgres else "sqlite"
        return rep

    # -- message ----------------------------------------------------------------------

    def message(self) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS["message"].resized(runs=args.n)
        repeat = args.repeat or workload.default_repeat
        repeats: list[dict[str, float]] = []
        with self.progress("message", repeat) as progress:
            for r in range(repeat):
                workdir = self.workdir / f"message-{r}"
                repeats.append(_message.measure(workload.runs, workdir=workdir))
                self.settle()
                progress.update()
        blocks: dict[str, dict[str, Any]] = {
            "aruntime": report.side_block(
                self.aruntime.version(),
                {"store": "sqlite", "synchronous": "FULL", "processes": "owner + client"},
                repeats,
            )
        }
        rep = self._report(
            "message",
            workload=workload,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["message"],
        )
        rep["config"]["store"] = "sqlite"  # across processes: always a file, whatever --store
        return rep

    # -- queue ------------------------------------------------------------------------

    def queue(self) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS["queue"].resized(runs=args.n, steps=args.steps)
        repeat = args.repeat or workload.default_repeat
        limit = args.concurrency or _queue.DEFAULT_CONCURRENCY
        modes: dict[str, int | None] = {"plain": None, "queued": limit}
        labels = {"plain": "no queue", "queued": f"queue of {limit}"}
        blocks: dict[str, dict[str, Any]] = {}
        reason = self.aruntime.unavailable() or _queue.unavailable(self.store.kind)
        if reason is not None:
            blocks = {name: {"label": labels[name], "skipped": reason} for name in modes}
        else:
            if not args.no_warmup:
                small = workload.resized(runs=min(workload.runs, 20))
                for name, mode in modes.items():
                    _queue.measure(
                        small,
                        self.store,
                        self.workdir / f"queue-warmup-{name}",
                        limit=mode,
                        progress=None,
                    )
            repeats: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
            order = list(modes)
            with self.progress("queue", 2 * repeat * workload.runs) as progress:
                for r in range(repeat):
                    for name in order if r % 2 == 0 else order[::-1]:
                        result, most = _queue.measure(
                            workload,
                            self.store,
                            self.workdir / f"queue-{name}-{r}",
                            limit=modes[name],
                            progress=progress,
                        )
                        figures = report.loop_figures(workload, result)
                        figures["runs_completed"] = workload.runs
                        if modes[name] is not None:
                            figures["most_running"], figures["most_admitted"] = most
                        repeats[name].append(figures)
                        self.settle()
            for name in modes:
                blocks[name] = {
                    "label": labels[name],
                    **report.side_block(
                        self.aruntime.version(), self.store.describe(), repeats[name]
                    ),
                }
        rep = self._report(
            "queue",
            workload=workload,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["queue"],
            description=(
                f"{workload.runs:,} runs x {workload.steps} trivial steps, all started at once, "
                f"without a queue and on a queue of concurrency {limit}"
            ),
        )
        rep["ratio_of"] = "queued"
        rep["ratio"] = report.ratios(report.FIGURES["queue"], blocks, "queued")
        rep["config"]["queue_concurrency"] = limit
        if reason is None:
            rep["notes"].append(
                f"checked after every measurement, from the store: all {workload.runs:,} runs "
                f"completed; on the queue all admitted, and never more than {limit} at once "
                "from admitted_at to the end, nor from the first step to the end (see "
                "benchmarks/_queue.py)"
            )
        return rep

    # -- admission --------------------------------------------------------------------

    def admission(self) -> dict[str, Any]:
        args = self.args
        cycles = args.repeat or _admission.DEFAULT_CYCLES
        limit = args.concurrency or _admission.DEFAULT_CONCURRENCY
        # Under `all`, --levels is the throughput chart's: the backlogs are the defaults.
        levels = (
            [int(x) for x in args.levels.split(",") if x.strip()]
            if args.levels and args.workload == "admission"
            else list(_admission.DEFAULT_LEVELS)
        )
        least = _admission.smallest_backlog(limit, cycles)
        dropped = [w for w in levels if w < least]  # only under `all` (parse_args refuses)
        levels = [w for w in levels if w >= least]
        cells = [(w, p) for w in levels for p in _admission.partition_counts(w)]
        blocks: dict[str, dict[str, Any]] = {}
        reason = self.aruntime.unavailable()
        if reason is not None:
            blocks["aruntime"] = {"skipped": reason}
        else:
            if not args.no_warmup:
                _admission.measure(
                    self.store,
                    self.workdir / "admission-warmup",
                    waiting=2 * limit,
                    partitions=10,
                    limit=limit,
                    cycles=1,
                )
                self.settle()
            with self.progress("admission", sum(w for w, _ in cells)) as progress:
                measured = _admission.run_all(
                    self.store,
                    self.workdir,
                    levels,
                    limit=limit,
                    cycles=cycles,
                    progress=progress,
                    settle=self.settle,
                )
            figures: dict[str, Any] = {}
            for cell in measured:
                figures.update(cell.figures())
            blocks["aruntime"] = {
                "version": self.aruntime.version(),
                **self.store.describe(),
                "repeats": cycles,
                "figures": figures,
            }
        rep = self._report(
            "admission",
            workload=None,
            repeat=cycles,
            blocks=blocks,
            figures=[],
            description=(
                f"one admission of {limit} runs from a backlog of W waiting runs in P "
                "partitions, each (W, P) on a fresh store"
            ),
        )
        rep["config"].update(
            levels=levels,
            cells=cells,
            queue_concurrency=limit,
            cycles=cycles,
            starts_per_gather=_admission.BURST,
        )
        if dropped:
            rep["notes"].append(
                f"not measured: backlogs {dropped} hold fewer than the {least:,} runs that "
                f"{cycles + 1} admissions of {limit} need"
            )
        if reason is None:
            rep["notes"] += [
                "first: the admission right after the burst of starts; admission: each of "
                f"the {cycles} after it, once the {limit} runs admitted before ended "
                "(median [min .. max]); figures w{W}_p{P}_first_ms and w{W}_p{P}_admit_ms",
                f"checked: every admission let in exactly {limit} runs, none twice, each "
                "started and never admitted before, and the store shows exactly those "
                "admitted (see benchmarks/_admission.py)",
            ]
        return rep

    # -- sleep ------------------------------------------------------------------------

    def sleep(self) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS["sleep"].resized(runs=args.n)
        repeat = args.repeat or workload.default_repeat
        blocks: dict[str, dict[str, Any]] = {}
        reason = self.aruntime.unavailable() or _sleep.unavailable()
        if reason is not None:
            blocks["aruntime"] = {"skipped": reason}
        else:
            repeats: list[dict[str, float]] = []
            with self.progress("sleep", repeat + 1) as progress:
                for r in range(repeat):
                    repeats.append(
                        _sleep.measure(
                            self.store,
                            workload.runs,
                            trace=False,
                            workdir=self.workdir / f"sleep-{r}",
                        )
                    )
                    self.settle()
                    progress.update()
                traced = _sleep.measure(
                    self.store, workload.runs, trace=True, workdir=self.workdir / "sleep-traced"
                )
                progress.update()
            report.add_traced(repeats, traced)
            blocks["aruntime"] = report.side_block(
                self.aruntime.version(), self.store.describe(), repeats
            )
        if self.peer is not None:
            blocks[self.peer.name] = {
                "skipped": self.peer.unavailable()
                or "skipped: no DBOS adapter for the sleep workload yet (aruntime only)"
            }
        rep = self._report(
            "sleep",
            workload=workload,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["sleep"],
        )
        if "figures" in blocks["aruntime"]:
            figures = blocks["aruntime"]["figures"]
            if figures["all_asleep_before_wake"]["min"] < 1:
                rep["notes"].append(
                    "in some repeat not every run was asleep before the wake-up: starting "
                    "overlapped the wake-ups, so lateness includes start work"
                )
            rep["config"]["lead_s"] = figures["lead_s"]["median"]
            rep["notes"].append(
                "late: wall-clock seconds after the run's own wake-up time (the runs' wake-ups "
                "fall evenly in one second), as each run saw it right after aruntime.sleep "
                "returned (wake-up) and at the start of its step's body; all steps done: after "
                "the last wake-up time; memory as in the scale workload, while every run was "
                "asleep"
            )
        return rep

    def _needs_sqlite(self, why: str) -> str | None:
        """Why aruntime's side is skipped on this store, or None when it can run."""
        reason = self.aruntime.unavailable()
        if reason is None and self.store.kind != "sqlite":
            reason = f"skipped: {why} (use --store sqlite)"
        return reason

    # -- recovery ---------------------------------------------------------------------

    def recovery(self) -> dict[str, Any]:
        args = self.args
        workload = WORKLOADS["recovery"].resized(runs=args.n, steps=args.steps)
        repeat = args.repeat or workload.default_repeat
        blocks: dict[str, dict[str, Any]] = {}
        reason = self._needs_sqlite("recovery needs a durable store")
        if reason is not None:
            blocks["aruntime"] = {"skipped": reason}
        else:
            repeats: list[dict[str, float]] = []
            violations: list[str] = []
            with self.progress("recovery", 2 * repeat) as progress:
                for r in range(repeat):
                    figures = _recovery.measure(
                        workload, self.store, self.workdir / f"recovery-{r}", progress=progress
                    )
                    violations += figures.pop("violations")
                    figures["exactly_once"] = float(figures["exactly_once"])
                    repeats.append(figures)
            blocks["aruntime"] = report.side_block(
                self.aruntime.version(), self.store.describe(), repeats
            )
            blocks["aruntime"]["violations"] = violations[:10]
        if self.peer is not None:
            blocks[self.peer.name] = {
                "skipped": self.peer.unavailable()
                or "skipped: no DBOS adapter for the recovery workload yet (aruntime only)"
            }
        return self._report(
            "recovery",
            workload=workload,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["recovery"],
        )

    # -- floor ----------------------------------------------------------------------

    def floor(self) -> dict[str, Any]:
        args = self.args
        samples = args.n or _FLOOR_SAMPLES
        repeat = args.repeat or 5
        blocks: dict[str, dict[str, Any]] = {}
        reason = self._needs_sqlite("the floor of a durable append needs a durable store")
        if reason is not None:
            blocks["aruntime"] = {"skipped": reason}
        else:
            repeats = []
            with self.progress("floor", repeat) as progress:
                for r in range(repeat):
                    repeats.append(_floor.measure(self.store, self.workdir / f"floor-{r}", samples))
                    self.settle()
                    progress.update()
            blocks["aruntime"] = report.side_block(
                self.aruntime.version(), self.store.describe(), repeats
            )
        if self.peer is not None:
            blocks[self.peer.name] = {"skipped": "skipped: the floor measures aruntime's parts"}
        rep = self._report(
            "floor",
            workload=None,
            repeat=repeat,
            blocks=blocks,
            figures=report.FIGURES["floor"],
            description=(
                "the parts of one durable append, each the median of "
                f"{samples:,} back-to-back operations"
            ),
        )
        rep["config"]["samples"] = samples
        rep["notes"].append(
            "step floor = commit + hand-off: a step is one durable append that is waited for, "
            "committed on the writer thread"
        )
        return rep

    # -- replay -----------------------------------------------------------------------

    def replay(self) -> tuple[dict[str, Any], list[report.Figure]]:
        args = self.args
        spec = REPLAY.with_max(args.n) if args.n else REPLAY
        repeat = args.repeat or spec.default_repeat
        load = self.store.kind == "sqlite" and self.aruntime.unavailable() is None
        figures = report.replay_figures(spec.sizes, load=load)
        repeats: list[dict[str, float]] = [{} for _ in range(repeat)]
        total = repeat * len(spec.sizes) * (2 if load else 1)
        # Every fold measurement first, then the store reads: loading big logs from SQLite
        # in between leaves the allocator and caches in a state that slows the next fold.
        with self.progress("replay", total) as progress:
            for values in repeats:
                for size in spec.sizes:
                    rate, _ = _replay.measure_fold(spec, size, args.seed)
                    values[f"fold_{size}_events_per_s"] = rate
                    progress.update()
            if load:
                for r, values in enumerate(repeats):
                    for size in spec.sizes:
                        directory = self.workdir / f"replay-{r}-{size}"
                        directory.mkdir(parents=True, exist_ok=True)
                        values[f"load_{size}_events_per_s"] = _replay.measure_load(
                            self.store, directory, size, args.seed
                        )
                        progress.update()
        blocks: dict[str, dict[str, Any]] = {
            "aruntime": report.side_block(self.aruntime.version(), self.store.describe(), repeats)
        }
        if self.peer is not None:
            blocks[self.peer.name] = {
                "skipped": "skipped: replay measures aruntime's own fold; DBOS has no equivalent"
            }
        rep = self._report(
            "replay",
            workload=None,
            repeat=repeat,
            blocks=blocks,
            figures=figures,
            description=(
                f"events/s folded by aruntime.replay on modelled logs of {spec.sizes[0]:,} to "
                f"{spec.sizes[-1]:,} events ({spec.failure_rate:.0%} of attempts fail and retry)"
            ),
        )
        rep["config"]["sizes"] = list(spec.sizes)
        if load:
            rep["notes"].append("read+fold: events_for() from SQLite (decode included) and replay")
        return rep, figures

    def run(self, name: str, many: bool) -> None:
        self.machine = machine()  # before the work: the load average is the one it met
        if name in ("throughput", "latency", "retry"):
            rep = self.closed(name, many)
            figures = report.FIGURES[name]
        elif name == "scale":
            rep = self.scale()
            figures = report.FIGURES[name]
        elif name == "sleep":
            rep = self.sleep()
            figures = report.FIGURES[name]
        elif name == "wakeup":
            rep = self.wakeup()
            figures = report.FIGURES[name]
        elif name == "message":
            rep = self.message()
            figures = report.FIGURES[name]
        elif name == "queue":
            rep = self.queue()
            figures = report.FIGURES[name]
        elif name == "admission":
            rep = self.admission()
            if not self.args.json:
                print(_admission.render_table(rep))
                for line in rep["notes"]:
                    print(f"  note: {line}")
            print(report.json_line(rep), flush=True)
            return
        elif name == "recovery":
            rep = self.recovery()
            figures = report.FIGURES[name]
        elif name == "floor":
            rep = self.floor()
            figures = report.FIGURES[name]
        else:
            rep, figures = self.replay()
        if self.args.chart is not None and name not in CHARTED and not many:
            rep["notes"].append(f"no chart for the {name} workload (charts: throughput, latency)")
        self.emit(rep, figures)


def main(argv: Sequence[str] | None = None, *, configure: bool = True) -> int:
    """Run the suite; `configure=False` leaves structlog alone (tests configure it)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] in (["fleet"], ["takeover"]):  # worker processes on PostgreSQL
        from benchmarks import _fleet  # noqa: PLC0415 - needs asyncpg

        return _fleet.main(raw)
    args = parse_args(raw)
    if configure:
        configure_logging(args.log_file, args.logging)
    names = NAMES if args.workload == "all" else (args.workload,)
    with tempfile.TemporaryDirectory(prefix="aruntime-bench-", dir=args.workdir) as tmp:
        try:
            suite = Suite(args, Path(tmp), raw)
            for name in names:
                suite.run(name, many=len(names) > 1)
        except (AgainstError, _queue.QueueCheckError, _admission.AdmissionCheckError) as exc:
            note(f"error: {exc}")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
