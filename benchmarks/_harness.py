"""What every measurement shares: statistics, a progress bar, logging, the machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = [
    "Progress",
    "child_command",
    "configure_logging",
    "git",
    "machine",
    "percentile",
    "quiet_stdout",
    "rss_bytes",
    "run_child",
    "spread",
]

REPO = Path(__file__).resolve().parent.parent


def _imported_root() -> Path:
    """The directory holding the `aruntime` package this process imported."""
    import aruntime  # noqa: PLC0415 - only to locate it

    return Path(aruntime.__file__).absolute().parent.parent


def child_command(
    module: str, *args: str, aruntime_root: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a measurement in a fresh process.

    The child runs `python -P -m module args...` with `PYTHONPATH` set to `aruntime_root`
    first (by default, where this process found `aruntime`), then this harness: `-P` keeps
    the current directory off the path, so the child imports that `aruntime` and this
    harness whatever directory it starts in or which package is installed.
    """
    root = aruntime_root if aruntime_root is not None else _imported_root()
    inherited = os.environ.get("PYTHONPATH", "")
    path = [str(root), str(REPO), *(p for p in inherited.split(os.pathsep) if p)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))
    return [sys.executable, "-P", "-m", module, *args], env


def fresh_sqlite_file(path: Path | str) -> None:
    """Delete an SQLite file and its WAL, shared-memory and lock files, if present."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def ready_child(module: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Run `python -m module *args` until the block ends; enter once it printed `ready`."""
    command, env = child_command(module, *args)
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {module} child process did not start; see above")
        yield child
    finally:
        child.terminate()
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()


def run_child(name: str, module: str, *args: str, timeout: float) -> Any:
    """Run `module` in a fresh process (see `child_command`); its last line of output as JSON.

    The child's standard error goes to ours, so a failure is explained above the
    `RuntimeError` that reports it.
    """
    command, env = child_command(module, *args)
    out = subprocess.run(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {name} process failed (exit {out.returncode}); see above")
    return json.loads(out.stdout.strip().splitlines()[-1])


_STREAMS: dict[str, TextIO] = {}


def configure_logging(path: str = os.devnull, mode: str = "default") -> None:
    """Set logging up as the application under test would.

    `default` (what a user who configures nothing gets) changes no setting: only the
    last-resort handler of the standard library, which writes warnings to standard error,
    writes them to `path` instead, so that the retry workload does not flood the terminal
    while every record is still made and rendered. `filtered` configures structlog as a
    tuned application would: WARNING and up, loggers cached, rendered as JSON to `path`.
    Either way nothing reaches the terminal; `path` is os.devnull unless told otherwise.
    """
    stream = _STREAMS.get(path)
    if stream is None:
        # Kept open for the life of the process, like any application's log file.
        stream = _STREAMS[path] = open(path, "a", encoding="utf-8")  # noqa: SIM115
    if mode == "default":
        logging.lastResort = logging.StreamHandler(stream)
        logging.lastResort.setLevel(logging.WARNING)
        return
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def quiet_stdout(path: str) -> TextIO:
    """Send file descriptor 1 to `path`; return a stream on the real standard output.

    A child process measuring an aruntime that prints its log to standard output (older
    ones did, unconfigured) pays for that output like a user with a redirected stdout,
    and still hands its JSON result back on the real one.
    """
    real = os.dup(1)
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(target, 1)
    os.close(target)
    return os.fdopen(real, "w", encoding="utf-8")


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values`, linearly interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles of one figure over the repeats."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "q1": None, "q3": None, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "q1": percentile(vals, 25),
        "q3": percentile(vals, 75),
        "values": vals,
    }


def rss_bytes() -> int:
    """The process's resident set size now (Linux), or 0 when it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def git(*args: str, timeout: float = 5) -> str | None:
    """git's standard output in this repository, stripped; None when git failed or is missing."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit() -> str | None:
    return git("rev-parse", "--short", "HEAD") or None


def _aruntime_modified() -> bool | None:
    """Whether aruntime/ differs from the commit (figures then describe uncommitted code)."""
    status = git("status", "--porcelain", "--", "aruntime")
    return None if status is None else bool(status)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, Any]:
    """How and where the benchmark ran."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "commit": _git_commit(),
        "aruntime_modified": _aruntime_modified(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


class Progress:
    """A tiny progress bar on stderr, drawn only once a task has taken two seconds.

    `update()` is cheap enough for the hot path: it reads the clock once per call and
    redraws at most five times a second. Nothing is drawn when stderr is not a terminal
    (unless `force`), so logs and pipes stay clean.
    """

    def __init__(
        self, label: str, total: int, *, enabled: bool = True, force: bool = False
    ) -> None:
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self._enabled = enabled and (force or sys.stderr.isatty())
        self._start = time.monotonic()
        self._next_draw = self._start + 2.0
        self._drawn = False

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._enabled:
            now = time.monotonic()
            if now >= self._next_draw:
                self._next_draw = now + 0.2
                self._draw(now)

    def set(self, done: int) -> None:
        self.update(done - self.done)

    def _draw(self, now: float) -> None:
        frac = min(1.0, self.done / self.total)
        width = 30
        filled = int(frac * width)
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(
            f"\r{self.label:<28} [{bar}] {self.done:>9,}/{self.total:,} "
            f"{elapsed:6.1f}s eta {eta:5.1f}s"
        )
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def note(message: str) -> None:
    """A line for the person running the benchmark (stderr, so stdout stays data)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
