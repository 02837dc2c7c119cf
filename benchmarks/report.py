"""Figures, targets, the JSON line, the readable table and the charts.

Every figure is measured once per repeat; a report gives its median and spread (min, max
and quartiles) over the repeats. With a peer, the ratio compares the medians, oriented so
that a ratio above 1 means aruntime is better by that factor. With `--against REF` the
"aruntime" side is the working tree and the peer is the side called "ref": above 1, the
working tree is better. The queue workload's sides are the same aruntime without a queue
("plain") and on one ("queued", whose name the report gives as `ratio_of`): above 1, the
queued runs are better.
"""

from __future__ import annotations

import importlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._aruntime_side import LoopResult, ScaleResult
from benchmarks._harness import percentile, spread
from benchmarks.workloads import Workload

__all__ = [
    "FIGURES",
    "Figure",
    "add_traced",
    "chart_latency",
    "chart_throughput",
    "json_line",
    "loop_figures",
    "ratio_line",
    "ratios",
    "render_table",
    "scale_figures",
    "targets",
]


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    label: str
    fmt: str
    better: str | None
    """"higher", "lower" or None (a count, not a score)."""


def _f(key: str, label: str, fmt: str = "{:,.0f}", better: str | None = None) -> Figure:
    return Figure(key, label, fmt, better)


FIGURES: dict[str, list[Figure]] = {
    "throughput": [
        _f("steps_per_s", "steps/s", better="higher"),
        _f("runs_per_s", "runs/s", better="higher"),
        _f("cpu_us_per_step", "CPU us/step", "{:,.1f}", "lower"),
        _f("cpu_s", "CPU time s", "{:,.3f}", "lower"),
        _f("elapsed_s", "wall time s", "{:,.3f}", "lower"),
        _f("events", "events written"),
        _f("events_per_s", "events/s", better="higher"),
        _f("appends_per_commit", "appends/commit", "{:,.1f}"),
    ],
    "latency": [
        _f("step_p50_us", "step p50 us", "{:,.1f}", "lower"),
        _f("step_p99_us", "step p99 us", "{:,.1f}", "lower"),
        _f("step_mean_us", "step mean us", "{:,.1f}", "lower"),
        _f("run_p50_ms", "run p50 ms", "{:,.3f}", "lower"),
        _f("run_p99_ms", "run p99 ms", "{:,.3f}", "lower"),
        _f("steps_per_s", "steps/s (serial)", better="higher"),
    ],
    "retry": [
        _f("attempts_made", "attempts made"),
        _f("attempts_expected", "attempts expected"),
        _f("policy_delay_1_ms", "policy delay 1 ms", "{:,.1f}"),
        _f("waited_1_p50_ms", "waited 1 p50 ms", "{:,.2f}"),
        _f("policy_delay_2_ms", "policy delay 2 ms", "{:,.1f}"),
        _f("waited_2_p50_ms", "waited 2 p50 ms", "{:,.2f}"),
        _f("extra_wait_p50_ms", "extra wait p50 ms", "{:,.2f}", "lower"),
        _f("extra_wait_max_ms", "extra wait max ms", "{:,.2f}", "lower"),
        _f("elapsed_s", "wall time s", "{:,.3f}", "lower"),
    ],
    "scale": [
        _f("runs_suspended", "runs suspended"),
        _f("rss_bytes_per_run", "RSS bytes/run", better="lower"),
        _f("traced_bytes_per_run", "traced bytes/run", better="lower"),
        _f("traced_peak_bytes_per_run", "traced peak bytes/run", better="lower"),
        _f("seconds_to_suspend", "s to suspend all", "{:,.2f}", "lower"),
    ],
    "sleep": [
        _f("runs_asleep", "runs asleep at once"),
        _f("wake_p50_ms", "wake-up late p50 ms", "{:,.2f}", "lower"),
        _f("wake_p99_ms", "wake-up late p99 ms", "{:,.2f}", "lower"),
        _f("wake_max_ms", "wake-up late max ms", "{:,.2f}", "lower"),
        _f("step_p50_ms", "step begun late p50 ms", "{:,.2f}", "lower"),
        _f("step_p99_ms", "step begun late p99 ms", "{:,.2f}", "lower"),
        _f("finished_s", "all steps done s", "{:,.3f}", "lower"),
        _f("rss_bytes_per_run", "RSS bytes/run", better="lower"),
        _f("traced_bytes_per_run", "traced bytes/run", better="lower"),
        _f("seconds_to_sleep_all", "s to put all asleep", "{:,.2f}", "lower"),
    ],
    "wakeup": [
        _f("result_p50_ms", "result seen p50 ms", "{:,.2f}", "lower"),
        _f("result_p99_ms", "result seen p99 ms", "{:,.2f}", "lower"),
        _f("start_pickup_p50_ms", "start picked up p50 ms", "{:,.2f}", "lower"),
        _f("start_pickup_p99_ms", "start picked up p99 ms", "{:,.2f}", "lower"),
        _f("cancel_pickup_p50_ms", "cancel picked up p50 ms", "{:,.2f}", "lower"),
        _f("cancel_pickup_p99_ms", "cancel picked up p99 ms", "{:,.2f}", "lower"),
    ],
    "message": [
        _f("delivery_p50_ms", "message delivered p50 ms", "{:,.2f}", "lower"),
        _f("delivery_p99_ms", "message delivered p99 ms", "{:,.2f}", "lower"),
        _f("delivery_max_ms", "message delivered max ms", "{:,.2f}", "lower"),
    ],
    "queue": [
        _f("steps_per_s", "steps/s", better="higher"),
        _f("runs_per_s", "runs/s", better="higher"),
        _f("cpu_us_per_step", "CPU us/step", "{:,.1f}", "lower"),
        _f("elapsed_s", "wall time s", "{:,.3f}", "lower"),
        _f("events", "events written"),
        _f("appends_per_commit", "appends/commit", "{:,.1f}"),
        _f("runs_completed", "runs completed"),
        _f("most_running", "most running at once"),
        _f("most_admitted", "most by admitted_at"),
    ],
    "recovery": [
        _f("unfinished_at_start", "runs unfinished"),
        _f("steps_completed_before_kill", "steps done at kill"),
        _f("interpreter_s", "interpreter up s", "{:,.3f}"),
        _f("runtime_ready_s", "runtime ready s", "{:,.3f}", "lower"),
        _f("resumed_s", "all resumed s", "{:,.3f}", "lower"),
        _f("finished_s", "all finished s", "{:,.3f}", "lower"),
        _f("bodies_ran_twice", "bodies ran twice"),
        _f("violation_count", "exactly-once violations"),
    ],
    "replay": [],
    "floor": [
        _f("commit_us", "commit us (p50)", "{:,.1f}"),
        _f("handoff_us", "hand-off us (p50)", "{:,.1f}"),
        _f("append_us", "append us (p50)", "{:,.1f}", "lower"),
        _f("store_overhead_us", "append - both us", "{:,.1f}", "lower"),
        _f("step_floor_us", "step floor us", "{:,.1f}"),
        _f("step_us", "step us (p50)", "{:,.1f}"),
        _f("step_per_append", "step / append", "{:,.2f}"),
    ],
}
"""What each workload reports, in table order (replay's keys depend on the sizes)."""


def replay_figures(sizes: Sequence[int], *, load: bool) -> list[Figure]:
    figures = [
        _f(f"fold_{size}_events_per_s", f"fold {size:,} ev/s", better="higher") for size in sizes
    ]
    if load:
        figures += [
            _f(f"load_{size}_events_per_s", f"read+fold {size:,} ev/s", better="higher")
            for size in sizes
        ]
    return figures


def targets(workload: str, store: str) -> dict[str, tuple[str, float]]:
    """DESIGN §5 targets that apply to `workload` on `store`: key -> (">=" | "<=", value)."""
    found: dict[str, tuple[str, float]] = {}
    if workload == "throughput":
        if store == "memory":
            found["steps_per_s"] = (">=", 50_000)
        elif store == "sqlite":
            found["steps_per_s"] = (">=", 25_000)
    elif workload == "latency":
        if store == "memory":
            found["step_p50_us"] = ("<=", 20)
        elif store == "sqlite":
            found["step_p50_us"] = ("<=", 350)
    elif workload == "floor" and store == "sqlite":
        found["step_us"] = ("<=", 350)
        found["step_per_append"] = ("<=", 1.25)
    elif workload == "recovery":
        found["resumed_s"] = ("<=", 1.0)
        found["violation_count"] = ("<=", 0)
    elif workload == "scale":
        found["rss_bytes_per_run"] = ("<=", 10_240)
        found["traced_bytes_per_run"] = ("<=", 10_240)
    elif workload == "sleep":
        found["wake_p99_ms"] = ("<=", 20)
        found["rss_bytes_per_run"] = ("<=", 10_240)
        found["traced_bytes_per_run"] = ("<=", 10_240)
    elif workload == "replay":
        found["fold_100000_events_per_s"] = (">=", 500_000)
    elif workload == "wakeup":
        for name in ("result", "start_pickup", "cancel_pickup"):
            found[f"{name}_p99_ms"] = ("<=", 50)
    elif workload == "message":
        found["delivery_p99_ms"] = ("<=", 50)
    return found


def _met(op: str, target: float, value: float | None) -> bool | None:
    if value is None:
        return None
    return value >= target if op == ">=" else value <= target


# -- figures of one repeat ---------------------------------------------------------------


def loop_figures(workload: Workload, result: LoopResult) -> dict[str, float]:
    """The figures of one closed-loop measurement."""
    elapsed = result.elapsed
    figures: dict[str, float] = {
        "steps_per_s": result.steps / elapsed,
        "runs_per_s": result.runs / elapsed,
        "elapsed_s": elapsed,
        "cpu_s": result.cpu,
        "cpu_us_per_step": result.cpu / result.steps * 1e6,
        "wrong_results": result.wrong_results,
    }
    if result.events is not None:
        figures["events"] = result.events
        figures["events_per_s"] = result.events / elapsed
    per_commit = result.store_stats.get("appends_per_commit")
    if per_commit is not None:
        figures["appends_per_commit"] = per_commit
    probe = result.probe
    if workload.record_latency:
        steps = probe.step_latencies
        runs = probe.run_latencies
        figures["step_p50_us"] = percentile(steps, 50) * 1e6
        figures["step_p99_us"] = percentile(steps, 99) * 1e6
        figures["step_mean_us"] = statistics.fmean(steps) * 1e6 if steps else float("nan")
        figures["run_p50_ms"] = percentile(runs, 50) * 1e3
        figures["run_p99_ms"] = percentile(runs, 99) * 1e3
    if workload.fail_attempts:
        figures["attempts_made"] = probe.bodies
        figures["attempts_expected"] = workload.total_steps * (workload.fail_attempts + 1)
        waits = probe.backoff_waits()
        by_delay: dict[float, list[float]] = {}
        for delay, waited in waits:
            by_delay.setdefault(delay, []).append(waited)
        for number, delay in enumerate(sorted(by_delay)[:2], start=1):
            figures[f"policy_delay_{number}_ms"] = delay * 1e3
            figures[f"waited_{number}_p50_ms"] = percentile(by_delay[delay], 50) * 1e3
        extra = [waited - delay for delay, waited in waits]
        if extra:
            figures["extra_wait_p50_ms"] = percentile(extra, 50) * 1e3
            figures["extra_wait_max_ms"] = max(extra) * 1e3
    return figures


def scale_figures(result: ScaleResult, traced: ScaleResult | None) -> dict[str, float]:
    figures: dict[str, float] = {
        "runs_suspended": result.suspended,
        "rss_bytes_per_run": result.rss_bytes / result.runs,
        "seconds_to_suspend": result.seconds_to_suspend,
    }
    if traced is not None and traced.traced_bytes is not None:
        figures["traced_bytes_per_run"] = traced.traced_bytes / traced.runs
        if traced.traced_peak_bytes is not None:
            figures["traced_peak_bytes_per_run"] = traced.traced_peak_bytes / traced.runs
    return figures


def add_traced(repeats: list[dict[str, float]], traced: dict[str, float]) -> None:
    """Give the first repeat the memory figures of the one traced process."""
    for key in ("traced_bytes_per_run", "traced_peak_bytes_per_run"):
        if key in traced and repeats:
            repeats[0][key] = traced[key]


# -- a workload's report -----------------------------------------------------------------


def side_block(
    version: str, store: dict[str, Any], repeats: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """The JSON of one system: its version, store settings and every figure's spread."""
    keys: list[str] = []
    for figures in repeats:
        for key in figures:
            if key not in keys:
                keys.append(key)
    return {
        "version": version,
        **store,
        "repeats": len(repeats),
        "figures": {key: spread([f[key] for f in repeats if key in f]) for key in keys},
    }


def ratios(
    figures: list[Figure], sides: dict[str, dict[str, Any]], ours_name: str = "aruntime"
) -> dict[str, float]:
    """aruntime (or side `ours_name`) against each other side, per scored figure: > 1
    means aruntime is better."""
    ours = sides.get(ours_name, {}).get("figures")
    found: dict[str, float] = {}
    if not ours:
        return found
    for name, block in sides.items():
        theirs = block.get("figures")
        if name == ours_name or not theirs:
            continue
        for fig in figures:
            if fig.better is None or fig.key not in ours or fig.key not in theirs:
                continue
            a, b = ours[fig.key]["median"], theirs[fig.key]["median"]
            if not a or not b:
                continue
            found[f"{fig.key}_vs_{name}"] = a / b if fig.better == "higher" else b / a
    return found


def target_block(
    workload: str, store: str, sides: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    ours = sides.get("aruntime", {}).get("figures") or {}
    block: dict[str, dict[str, Any]] = {}
    for key, (op, value) in targets(workload, store).items():
        median = ours.get(key, {}).get("median")
        block[key] = {
            "target": f"{op} {value:,g}",
            "median": median,
            "met": _met(op, value, median),
        }
    return block


def json_line(report: dict[str, Any]) -> str:
    return json.dumps(report, separators=(",", ":"), default=str)


def _ratio_text(value: float) -> str:
    return f"{value:,.2f}x" if value < 10 else f"{value:,.1f}x"


def _label(sides: dict[str, dict[str, Any]], name: str) -> str:
    return str(sides[name].get("label", name))


def ratio_line(report: dict[str, Any], figures: list[Figure]) -> str | None:
    """One line per peer with every ratio of the report, or None when there is none."""
    ratio: dict[str, float] = report.get("ratio") or {}
    sides: dict[str, dict[str, Any]] = report["sides"]
    ours_name = report.get("ratio_of", "aruntime")
    if not ratio or ours_name not in sides:
        return None
    ours = _label(sides, ours_name)
    lines: list[str] = []
    for name in sides:
        parts = [
            f"{fig.label} {_ratio_text(ratio[key])}"
            for fig in figures
            if (key := f"{fig.key}_vs_{name}") in ratio
        ]
        if parts:
            theirs = _label(sides, name)
            lines.append(
                f"  ratio {ours} / {theirs} (above 1: {ours} is better by that factor): "
                + ", ".join(parts)
            )
    return "\n".join(lines) or None


def _cell(fig: Figure, block: dict[str, Any]) -> str:
    if "skipped" in block:
        return str(block["skipped"])
    s = block.get("figures", {}).get(fig.key)
    if not s or s["median"] is None:
        return "-"
    med = fig.fmt.format(s["median"])
    if s["min"] == s["max"]:
        return med
    return f"{med} [{fig.fmt.format(s['min'])} .. {fig.fmt.format(s['max'])}]"


def render_table(report: dict[str, Any], figures: list[Figure]) -> str:
    """A readable table of one workload's report."""
    sides: dict[str, dict[str, Any]] = report["sides"]
    cfg = report["config"]
    head = (
        f"{report['workload']}: {report['description']}\n"
        f"  store={cfg['store']}"
        + (f" synchronous={cfg['synchronous']}" if cfg.get("synchronous") else "")
        + "".join(f" {k}={cfg[k]}" for k in ("runs", "steps", "concurrency") if k in cfg)
        + f" repeat={cfg['repeat']} seed={cfg['seed']} cores={cfg['machine']['cores']}"
        + "\n  median [min .. max] over the repeats"
    )
    names = list(sides)
    ratio = report.get("ratio", {})
    tgt = report.get("targets", {})
    rows: list[list[str]] = [["figure", *(_label(sides, n) for n in names)]]
    if ratio:
        rows[0].append("ratio")
    rows[0].append("target")
    shown = [f for f in figures if any(f.key in sides[n].get("figures", {}) for n in names)]
    skipped_only = not shown
    for fig in shown if not skipped_only else figures[:1]:
        row = [fig.label, *(_cell(fig, sides[n]) for n in names)]
        if ratio:
            found = [v for k, v in ratio.items() if k.startswith(fig.key + "_vs_")]
            row.append(_ratio_text(found[0]) if found else "")
        t = tgt.get(fig.key)
        row.append(
            ""
            if t is None
            else f"{t['target']} " + {True: "(met)", False: "(MISSED)", None: ""}[t["met"]]
        )
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head]
    for n, row in enumerate(rows):
        lines.append(
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- charts ------------------------------------------------------------------------------


def _pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis with plain numbers (10, 20, 50, 100, ...), not 2x10^1."""
    ticker = importlib.import_module("matplotlib.ticker")
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:,g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


MISSING_MATPLOTLIB = (
    "chart skipped: matplotlib not installed (pip install -r benchmarks/requirements.txt)"
)


def chart_throughput(
    points: dict[str, dict[int, dict[str, Any]]], path: Path, title: str
) -> str | None:
    """Steps/s against concurrent runs, one line per system; None when written."""
    plt = _pyplot()
    if plt is None:
        return MISSING_MATPLOTLIB
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, by_level in points.items():
        levels = sorted(by_level)
        med = [by_level[c]["median"] for c in levels]
        low = [by_level[c]["median"] - by_level[c]["min"] for c in levels]
        high = [by_level[c]["max"] - by_level[c]["median"] for c in levels]
        ax.errorbar(levels, med, yerr=[low, high], marker="o", capsize=4, label=name)
        for c, m in zip(levels, med, strict=True):
            ax.annotate(
                f"{m:,.0f}",
                (c, m),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("concurrent runs")
    ax.set_ylabel("steps/s (median, bars: min..max)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def chart_latency(samples: dict[str, list[float]], path: Path, title: str) -> str | None:
    """The per-step latency distribution: histogram and CDF, one series per system."""
    plt = _pyplot()
    if plt is None:
        return MISSING_MATPLOTLIB
    np = importlib.import_module("numpy")
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    lows = [min(v) for v in samples.values() if v]
    highs = [max(v) for v in samples.values() if v]
    if not lows:
        plt.close(fig)
        return "chart skipped: no latency samples"
    bins = np.logspace(np.log10(min(lows) * 1e6), np.log10(max(highs) * 1e6), 80)
    for name, values in samples.items():
        us = np.sort(np.asarray(values) * 1e6)
        p50 = percentile(values, 50) * 1e6
        p99 = percentile(values, 99) * 1e6
        label = f"{name} (p50 {p50:,.1f} us, p99 {p99:,.1f} us)"
        hist.hist(us, bins=bins, alpha=0.6, label=label)
        cdf.plot(us, np.arange(1, len(us) + 1) / len(us), label=label)
    for ax in (hist, cdf):
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        ax.set_xlabel("per-step latency (us, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    hist.set_ylabel("steps")
    cdf.set_ylabel("fraction of steps")
    cdf.legend(fontsize=8, loc="lower right", title="pooled over the repeats", title_fontsize=8)
    hist.set_title("histogram", fontsize=10)
    cdf.set_title("CDF", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
