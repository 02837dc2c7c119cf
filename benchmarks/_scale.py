"""The scale workload, one measurement per fresh process.

Memory figures are only honest in a process that has not freed memory the runs could
reuse, so the parent (`measure`) runs each repeat as
`python -m benchmarks._scale SIDE STORE SYNCHRONOUS RUNS TRACE WORKDIR` and reads one
JSON line back. With TRACE=1 the child also runs tracemalloc (slower, and its own
bookkeeping inflates RSS, so the RSS figure of a traced run is not used).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._aruntime_side import AruntimeSide, ScaleResult, StoreSpec
from benchmarks._harness import Progress, configure_logging, run_child
from benchmarks.workloads import WORKLOADS

__all__ = ["measure"]


def measure(
    side: str, store: StoreSpec, runs: int, *, trace: bool, workdir: Path, timeout: float = 1800
) -> ScaleResult:
    """One scale measurement in a fresh process."""
    workdir.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = run_child(
        "scale",
        "benchmarks._scale",
        side,
        store.kind,
        store.synchronous,
        str(runs),
        "1" if trace else "0",
        str(workdir),
        timeout=timeout,
    )
    return ScaleResult(**fields)


def _child(argv: list[str]) -> None:
    side_name, kind, synchronous, runs, trace, workdir = argv
    configure_logging()
    store = StoreSpec(kind=kind, synchronous=synchronous)
    workload = WORKLOADS["scale"].resized(runs=int(runs))
    if side_name == "aruntime":
        side: Any = AruntimeSide(store, Path(workdir))
    else:
        from benchmarks._dbos_side import DbosSide  # noqa: PLC0415 - the peer only when asked

        side = DbosSide(kind, Path(workdir))
    label = f"scale {side_name}" + (" (traced)" if trace == "1" else "")
    with Progress(label, workload.runs) as progress:
        result = asyncio.run(side.scale(workload, trace=trace == "1", progress=progress))
    print(json.dumps(dataclasses.asdict(result)), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
