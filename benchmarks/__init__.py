"""aruntime's benchmark suite: `python -m benchmarks WORKLOAD` from the repository root.

The workloads are defined once, in `benchmarks.workloads`, and run by one adapter per
system: `_aruntime_side` for aruntime and `_dbos_side` for DBOS Transact (an optional
peer, installed from `benchmarks/requirements.txt`). `report` turns the measurements into
one JSON line per workload, a readable table and, with `--chart`, PNG charts.
"""
