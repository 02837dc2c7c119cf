"""`--against REF`: the working tree's aruntime against the package as it was at REF.

The package at REF is extracted (`git archive REF aruntime`) into a temporary directory.
Both sides then run every measurement the same way, each in a fresh process of this
interpreter started as `python -P -m benchmarks._against SPEC` (see `child_command`):
one side with the working tree first on `PYTHONPATH`, the other with the extracted
directory first. The harness is always the working tree's, so both sides run the very
same workload code and figures; only `import aruntime` differs. Each child checks which
`aruntime` it imported, and fails rather than measure the wrong one.

The harness uses only aruntime API that the refs it is pointed at have; when REF lacks
something a workload needs, the child's import or call fails and the invocation stops
with `AgainstError` naming REF and the child's last error line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks._aruntime_side import AruntimeSide, LoopResult, StoreSpec
from benchmarks._harness import REPO, Progress, child_command, configure_logging, quiet_stdout
from benchmarks.workloads import WORKLOADS, Probe, Workload

__all__ = ["AgainstError", "Checkout", "IsolatedSide", "checkout"]

_TIMEOUT = 1800.0


class AgainstError(Exception):
    """`--against` cannot go on: the ref, git, or the old package is not usable."""


@dataclass(frozen=True, slots=True)
class Checkout:
    """The aruntime package as it was at a git ref, extracted under `root`."""

    ref: str
    """The ref as given on the command line."""
    commit: str
    """The full commit hash REF resolved to."""
    subject: str
    root: Path
    """The directory that holds `aruntime/` (put first on the child's `PYTHONPATH`)."""

    @property
    def short(self) -> str:
        return self.commit[:7]

    def describe(self) -> dict[str, str]:
        return {"ref": self.ref, "commit": self.commit, "subject": self.subject}


def _git(*args: str, check: bool = True) -> str | None:
    """git's output; None when it failed and `check` is false."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AgainstError(f"--against needs git: {exc}") from exc
    if out.returncode != 0:
        if not check:
            return None
        raise AgainstError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def checkout(ref: str, workdir: Path) -> Checkout:
    """Resolve `ref` and extract its `aruntime/` under `workdir`."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if not commit:
        raise AgainstError(f"--against {ref}: no such commit in {REPO}")
    subject = _git("log", "-1", "--format=%s", commit) or ""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "aruntime"],
            cwd=REPO,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AgainstError(f"--against needs git: {exc}") from exc
    if archive.returncode != 0:
        message = archive.stderr.decode(errors="replace").strip()
        raise AgainstError(f"--against {ref}: no aruntime/ at {commit[:7]} ({message})")
    root = workdir / f"against-{commit[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return Checkout(ref=ref, commit=commit, subject=subject, root=root)


class IsolatedSide:
    """Runs each closed-loop measurement in a fresh process on one `aruntime` package.

    `root` is the directory that holds that package: the working tree for one side of
    `--against`, the extracted REF for the other.
    """

    def __init__(
        self,
        name: str,
        label: str,
        root: Path,
        store: StoreSpec,
        workdir: Path,
        *,
        version: str,
        warmup: bool,
        log_file: str,
        logging_mode: str = "default",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.label = label
        self.root = root
        self.store = store
        self.workdir = workdir
        self._version = version
        self._warmup = warmup
        self._log_file = log_file
        self._logging_mode = logging_mode
        self._extra = dict(extra or {})
        self._counter = 0

    def version(self) -> str:
        return self._version

    def unavailable(self) -> str | None:
        return AruntimeSide(self.store, self.workdir).unavailable()

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, **self._extra, **self.store.describe()}

    async def closed_loop(self, workload: Workload, progress: Progress | None) -> LoopResult:
        """One measurement in a fresh process (after an untimed warm-up in it)."""
        self._counter += 1
        directory = self.workdir / f"{self.name}-{self._counter}"
        directory.mkdir(parents=True, exist_ok=True)
        spec = {
            "workload": workload.name,
            "runs": workload.runs,
            "steps": workload.steps,
            "concurrency": workload.concurrency,
            "store": self.store.kind,
            "synchronous": self.store.synchronous,
            "workdir": str(directory),
            "warmup": self._warmup,
            "log_file": self._log_file,
            "logging": self._logging_mode,
            "expect_root": str(self.root.resolve()),
        }
        command, env = child_command(
            "benchmarks._against", json.dumps(spec), aruntime_root=self.root
        )
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), _TIMEOUT)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            text = stderr.decode(errors="replace")
            lines = [line for line in text.splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise AgainstError(f"the {workload.name} workload cannot run on {self.label}: {last}")
        if progress is not None:
            progress.update(workload.runs)
        return _loop_result(workload, json.loads(stdout.decode().strip().splitlines()[-1]))


def _loop_result(workload: Workload, data: dict[str, Any]) -> LoopResult:
    probe = Probe(workload)
    probe.bodies = data["probe"]["bodies"]
    probe.failures = data["probe"]["failures"]
    probe.step_latencies = data["probe"]["step_latencies"]
    probe.run_latencies = data["probe"]["run_latencies"]
    probe.attempts = {
        (run, index): [(entered, left) for entered, left in times]
        for run, index, times in data["probe"]["attempts"]
    }
    fields = {f.name for f in dataclasses.fields(LoopResult)} - {"probe"}
    return LoopResult(probe=probe, **{k: data[k] for k in fields})


def _child(spec: dict[str, Any]) -> None:
    mode = spec.get("logging", "default")
    out = quiet_stdout(spec["log_file"]) if mode == "default" else sys.stdout
    import aruntime  # noqa: PLC0415 - the package under test, found on PYTHONPATH

    found = Path(aruntime.__file__).resolve().parent.parent
    if found != Path(spec["expect_root"]):
        sys.exit(f"imported aruntime from {found}, not from {spec['expect_root']}")
    configure_logging(spec["log_file"], mode)
    workload = replace(
        WORKLOADS[spec["workload"]].resized(runs=spec["runs"], steps=spec["steps"]),
        concurrency=spec["concurrency"],
    )
    side = AruntimeSide(
        StoreSpec(kind=spec["store"], synchronous=spec["synchronous"]), Path(spec["workdir"])
    )
    if spec["warmup"]:
        asyncio.run(side.closed_loop(workload.resized(runs=min(workload.runs, 20)), None))
    result = asyncio.run(side.closed_loop(workload, None))
    probe = result.probe
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    data["probe"] = {
        "bodies": probe.bodies,
        "failures": probe.failures,
        "step_latencies": probe.step_latencies,
        "run_latencies": probe.run_latencies,
        "attempts": [[run, index, times] for (run, index), times in probe.attempts.items()],
    }
    print(json.dumps(data, default=str), file=out, flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
