"""The benchmark harness runs every workload end to end at tiny sizes.

These tests show that `python -m benchmarks` works and reports what it measured; they
never check a speed (the targets are the benchmark's business, not the tests').
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import aruntime

# `benchmarks/` is a package at the repository root, beside `aruntime/` but not installed
# with it; pytest puts only `tests/` on the path.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import __main__ as cli  # noqa: E402 - needs the path set above
from benchmarks import _admission, _dbos_side, _queue, _sleep, report  # noqa: E402
from benchmarks._harness import git  # noqa: E402

STORES = ["memory", "sqlite"]


def _git_head() -> str | None:
    """HEAD's full hash when git works here and HEAD holds `aruntime/`, else None."""
    head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", timeout=10)
    tree = git("ls-tree", "HEAD", "aruntime", timeout=10)
    return head if head and tree else None


_HEAD = _git_head()
needs_history = pytest.mark.skipif(
    _HEAD is None, reason="git or a commit holding aruntime/ is not available"
)


def _sqlite_available() -> bool:
    try:
        import aruntime.store.sqlite  # noqa: F401
    except ImportError:
        return False
    return True


store_ids = pytest.mark.parametrize(
    "store",
    [
        "memory",
        pytest.param(
            "sqlite",
            marks=pytest.mark.skipif(not _sqlite_available(), reason="no SQLite store"),
        ),
    ],
)


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    # The harness configures structlog as an application does; in tests it must leave
    # the global configuration alone, so logs are captured instead.
    with structlog.testing.capture_logs():
        yield


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """Run the suite in this process and return its one JSON line."""
    assert cli.main([*argv, "--json", "--no-progress", "--no-warmup"], configure=False) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


def median(rep: dict[str, Any], key: str, side: str = "aruntime") -> float:
    value: float = rep["sides"][side]["figures"][key]["median"]
    return value


@store_ids
def test_throughput_reports_every_step_and_event(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """Throughput runs N x S steps and counts the events the store wrote."""
    rep = run(capsys, "throughput", "--store", store, "--n", "20", "--steps", "3", "--repeat", "2")
    assert rep["config"]["store"] == store
    assert rep["config"]["repeat"] == 2
    assert rep["sides"]["aruntime"]["repeats"] == 2
    assert median(rep, "wrong_results") == 0
    # RunStarted + 3 x (StepStarted, StepCompleted) + RunCompleted per run.
    assert median(rep, "events") == 20 * 8
    assert median(rep, "steps_per_s") > 0
    assert "steps_per_s" in rep["targets"]


@store_ids
def test_latency_reports_percentiles(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """Latency times every step and every run, one run at a time."""
    rep = run(capsys, "latency", "--store", store, "--n", "5", "--steps", "4", "--repeat", "1")
    assert rep["config"]["concurrency"] == 1
    assert 0 < median(rep, "step_p50_us") <= median(rep, "step_p99_us")
    assert median(rep, "run_p50_ms") > 0


def test_retry_counts_attempts_and_backoff(capsys: pytest.CaptureFixture[str]) -> None:
    """Every step fails twice then succeeds: three attempts each, two waits measured."""
    rep = run(capsys, "retry", "--n", "4", "--steps", "2", "--repeat", "1")
    assert median(rep, "attempts_made") == median(rep, "attempts_expected") == 4 * 2 * 3
    assert median(rep, "policy_delay_1_ms") == pytest.approx(10.0)
    assert median(rep, "policy_delay_2_ms") == pytest.approx(20.0)
    assert median(rep, "waited_1_p50_ms") >= 10.0
    assert median(rep, "wrong_results") == 0


def test_replay_folds_modelled_logs(capsys: pytest.CaptureFixture[str]) -> None:
    """Replay reports events/s for logs from 10 events up to --n."""
    rep = run(capsys, "replay", "--n", "1000", "--repeat", "1")
    assert rep["config"]["sizes"] == [10, 100, 1000]
    for size in (10, 100, 1000):
        assert median(rep, f"fold_{size}_events_per_s") > 0


def test_scale_measures_memory_of_suspended_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Scale suspends every run on a long backoff and reports bytes per run."""
    rep = run(capsys, "scale", "--n", "200", "--repeat", "1")
    assert median(rep, "runs_suspended") == 200
    assert "traced_bytes_per_run" in rep["sides"]["aruntime"]["figures"]


@store_ids
def test_queue_compares_queued_with_plain_runs_and_checks_the_limit(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """Queue runs N runs with no queue and on a queue of C, checks from the store that all
    completed and at most C ran at once, and reports queued / plain; the check fails on
    runs that overlap beyond the limit."""
    argv = ["--store", store, "--n", "20", "--steps", "2", "--repeat", "2", "--concurrency", "3"]
    rep = run(capsys, "queue", *argv)
    assert rep["config"]["queue_concurrency"] == 3
    for side in ("plain", "queued"):
        assert rep["sides"][side]["repeats"] == 2
        assert median(rep, "runs_completed", side) == 20
        assert median(rep, "wrong_results", side) == 0
        # RunStarted + 2 x (StepStarted, StepCompleted) + RunCompleted per run.
        assert median(rep, "events", side) == 20 * 6
    assert 1 <= rep["sides"]["queued"]["figures"]["most_running"]["max"] <= 3
    assert rep["ratio"]["steps_per_s_vs_plain"] > 0
    overlapping = [
        aruntime.RunInfo(
            run_id=f"r{n}",
            workflow="w",
            status=aruntime.RunStatus.COMPLETED,
            version=3,
            created_at=0.0,
            updated_at=2.0,
            queue=_queue.QUEUE_NAME,
            admitted_at=1.0,
        )
        for n in range(2)
    ]
    with pytest.raises(_queue.QueueCheckError, match="more than 1"):
        _queue.check_runs(overlapping, {"r0": 1.5, "r1": 1.5}, 2, 1, exact_admitted=False)


@store_ids
def test_admission_times_each_admission_and_checks_what_it_let_in(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """Admission times the first admission of C and the cycles after it for each backlog W
    over 10 and W/10 partitions, each admission checked to let in C distinct runs never
    admitted before; the check fails on a short, repeated or stranger admission."""
    argv = ["--store", store, "--levels", "30,60", "--concurrency", "5", "--repeat", "2"]
    rep = run(capsys, "admission", *argv)
    assert rep["config"]["cells"] == [[30, 3], [30, 10], [60, 6], [60, 10]]
    figures = rep["sides"]["aruntime"]["figures"]
    for waiting, partitions in rep["config"]["cells"]:
        key = f"w{waiting}_p{partitions}"
        assert figures[f"{key}_first_ms"]["median"] > 0
        assert len(figures[f"{key}_admit_ms"]["values"]) == 2
        assert figures[f"{key}_admitted"]["values"] == [5, 5, 5]
        # Fair turns: each admission spreads over as many partitions as it can.
        assert figures[f"{key}_partitions_admitted"]["min"] == min(5, partitions)
    with pytest.raises(SystemExit):
        cli.parse_args(["admission", "--levels", "10", "--concurrency", "5"])
    started, seen = {"a", "b", "c"}, set[str]()
    _admission.check_admission(["a", "b"], 2, started, seen, "t")
    for got, problem in (
        (["c"], "admitted 1 runs, expected 2"),
        (["c", "c"], "more than once"),
        (["c", "d"], "never started"),
        (["b", "c"], "already admitted before"),
    ):
        with pytest.raises(_admission.AdmissionCheckError, match=problem):
            _admission.check_admission(got, 2, started, set(seen), "t")


@pytest.mark.skipif(not _sqlite_available(), reason="no SQLite store")
def test_recovery_kills_resumes_and_checks_exactly_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A SIGKILLed worker's runs all finish in a fresh process, each step recorded once."""
    rep = run(capsys, "recovery", "--store", "sqlite", "--n", "20", "--steps", "4", "--repeat", "1")
    assert median(rep, "violation_count") == 0
    assert median(rep, "exactly_once") == 1
    assert median(rep, "runs_completed") == 20
    assert median(rep, "resumed_s") <= median(rep, "finished_s")


def test_recovery_on_memory_is_skipped_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    """Recovery needs a durable store: on memory it says so instead of measuring."""
    rep = run(capsys, "recovery", "--store", "memory", "--n", "5", "--repeat", "1")
    assert rep["sides"]["aruntime"]["skipped"].startswith("skipped:")


@pytest.mark.skipif(not hasattr(aruntime, "sleep"), reason=_sleep.MISSING)
@pytest.mark.skipif(not _sqlite_available(), reason="no SQLite store")
def test_sleep_wakes_every_run_and_measures_its_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Sleep puts every run to sleep at once, wakes them all, and reports lateness and memory."""
    rep = run(capsys, "sleep", "--store", "sqlite", "--n", "20", "--repeat", "1")
    assert median(rep, "runs_completed") == 20
    assert median(rep, "runs_asleep") == 20
    assert 0 <= median(rep, "wake_p50_ms") <= median(rep, "wake_p99_ms")
    assert median(rep, "step_p50_ms") >= median(rep, "wake_p50_ms")
    assert "traced_bytes_per_run" in rep["sides"]["aruntime"]["figures"]


def test_sleep_without_durable_sleep_is_skipped_with_a_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where aruntime has no `sleep` yet, the sleep workload says so instead of measuring."""
    monkeypatch.delattr(aruntime, "sleep", raising=False)
    rep = run(capsys, "sleep", "--n", "5", "--repeat", "1")
    assert rep["sides"]["aruntime"] == {"skipped": _sleep.MISSING}


@pytest.mark.skipif(not _sqlite_available(), reason="no SQLite store")
def test_floor_measures_the_parts_of_a_durable_append(capsys: pytest.CaptureFixture[str]) -> None:
    """Floor reports commit, hand-off and append medians, the step floor they imply, and a
    step's own cost beside one append."""
    rep = run(capsys, "floor", "--store", "sqlite", "--n", "20", "--repeat", "2")
    assert rep["config"]["samples"] == 20
    figures = rep["sides"]["aruntime"]["figures"]
    commits, handoffs, appends, floors = (
        figures[key]["values"] for key in ("commit_us", "handoff_us", "append_us", "step_floor_us")
    )
    assert min(commits) > 0
    assert min(handoffs) > 0
    assert min(appends) > 0
    for commit, handoff, floor in zip(commits, handoffs, floors, strict=True):
        assert floor == pytest.approx(commit + handoff)
    for step, append, ratio in zip(
        figures["step_us"]["values"],
        appends,
        figures["step_per_append"]["values"],
        strict=True,
    ):
        assert step > 0
        assert ratio == pytest.approx(step / append)


def test_floor_on_memory_is_skipped_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    """The floor of a durable append needs a durable store: on memory it says so."""
    rep = run(capsys, "floor", "--store", "memory", "--repeat", "1")
    assert rep["sides"]["aruntime"]["skipped"].startswith("skipped:")


def test_missing_peer_is_reported_skipped_never_faked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dbos installed, --compare dbos reports the peer as skipped and no ratio."""
    monkeypatch.setattr(_dbos_side, "_import_dbos", lambda: None)
    rep = run(
        capsys, "throughput", "--n", "5", "--steps", "2", "--repeat", "1", "--compare", "dbos"
    )
    assert rep["sides"]["dbos"] == {"skipped": _dbos_side.MISSING}
    assert rep["ratio"] == {}


def test_chart_without_matplotlib_is_skipped_with_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing matplotlib skips the chart with a note; the figures are still reported."""
    monkeypatch.setattr(report, "_pyplot", lambda: None)
    path = tmp_path / "tp.png"
    rep = run(
        capsys, "throughput", "--n", "10", "--steps", "2", "--repeat", "1", "--chart", str(path)
    )
    assert not path.exists()
    assert report.MISSING_MATPLOTLIB in rep["notes"]
    assert set(rep["sides"]["aruntime"]["steps_per_s_by_concurrency"]) == {"10"}


def test_charts_are_written_as_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """With matplotlib, throughput and latency charts are PNG files."""
    pytest.importorskip("matplotlib")
    for workload in ("throughput", "latency"):
        path = tmp_path / f"{workload}.png"
        rep = run(
            capsys,
            workload,
            "--n",
            "12",
            "--steps",
            "2",
            "--repeat",
            "1",
            "--levels",
            "1,4",
            "--chart",
            str(path),
        )
        assert rep["chart"] == str(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_median_and_spread() -> None:
    """The readable table prints each figure's median with its min and max."""
    rep: dict[str, Any] = {
        "workload": "throughput",
        "description": "d",
        "config": {"store": "memory", "repeat": 3, "seed": 0, "machine": {"cores": 2}},
        "sides": {
            "aruntime": report.side_block(
                "0", {"store": "memory"}, [{"steps_per_s": v} for v in (1.0, 2.0, 3.0)]
            ),
            "dbos": {"skipped": "skipped: dbos not installed"},
        },
        "targets": {},
    }
    table = report.render_table(rep, report.FIGURES["throughput"])
    assert "2 [1 .. 3]" in table
    assert "skipped: dbos not installed" in table


@needs_history
def test_against_runs_both_sides_and_prints_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """--against HEAD measures the working tree and HEAD's package, and prints their ratio."""
    argv = ["throughput", "--n", "5", "--steps", "2", "--repeat", "2", "--against", "HEAD"]
    assert cli.main([*argv, "--no-progress", "--no-warmup"], configure=False) == 0
    out = capsys.readouterr().out
    short = (_HEAD or "")[:7]
    assert f"ratio working tree / aruntime@{short}" in out
    rep = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert rep["config"]["against"]["commit"] == _HEAD
    assert rep["sides"]["ref"]["commit"] == _HEAD
    for side in ("aruntime", "ref"):
        assert rep["sides"][side]["repeats"] == 2
        assert median(rep, "events", side) == 5 * 6
        assert median(rep, "wrong_results", side) == 0
    assert rep["ratio"]["steps_per_s_vs_ref"] > 0


@needs_history
def test_against_an_unknown_ref_fails_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A ref that names no commit stops the invocation with a message and exit status 2."""
    argv = ["throughput", "--n", "2", "--repeat", "1", "--against", "no-such-ref-anywhere"]
    assert cli.main([*argv, "--no-progress"], configure=False) == 2
    assert "no-such-ref-anywhere: no such commit" in capsys.readouterr().err


def test_against_refuses_workloads_it_cannot_alternate(capsys: pytest.CaptureFixture[str]) -> None:
    """--against runs the closed-loop workloads only, and never together with --compare."""
    for argv in (
        ["scale", "--against", "HEAD"],
        ["throughput", "--against", "HEAD", "--compare", "dbos"],
    ):
        with pytest.raises(SystemExit) as exited:
            cli.parse_args(argv)
        assert exited.value.code == 2
    assert "--against" in capsys.readouterr().err


@pytest.mark.skipif(not _sqlite_available(), reason="no SQLite store")
def test_wakeup_measures_results_and_requests_across_processes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Wakeup reports result, start and cancel latencies between an owner and a client."""
    rep = run(capsys, "wakeup", "--n", "10", "--repeat", "1")
    for name in ("result", "start_pickup", "cancel_pickup"):
        assert 0 <= median(rep, f"{name}_p50_ms") <= median(rep, f"{name}_p99_ms") < 1000
    assert median(rep, "samples") == 10


@pytest.mark.skipif(not _sqlite_available(), reason="no SQLite store")
def test_message_measures_delivery_to_a_waiting_run_across_processes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Message reports how soon a message from a client process reaches a waiting run."""
    rep = run(capsys, "message", "--n", "10", "--repeat", "1")
    assert 0 <= median(rep, "delivery_p50_ms") <= median(rep, "delivery_p99_ms") < 1000
    assert median(rep, "samples") == 10
