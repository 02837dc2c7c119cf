"""The README's approval example, end to end: its module and its commands, run as written.

The test takes the two code blocks that follow the `example:approval.py` and
`example:approval.sh` markers in README.md, writes the module into a fresh directory,
starts the worker line as a process of its own, runs every other line as a command
(`aruntime` as `python -m aruntime`) and holds what each prints against its comment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aruntime import AruntimeError, Client

README = Path(__file__).parent.parent / "README.md"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```\w+\n(.*?)```", text, re.S)
    assert match is not None, f"no block after {marker} in README.md"
    return match.group(1)


def _command(line: str) -> tuple[list[str], str | None]:
    """The argv of a README command line and the JSON its comment says it prints."""
    code, _, comment = line.partition("#")
    argv = shlex.split(code.replace("&", ""))
    assert argv[0] == "aruntime", line
    expected = re.match(r'\s*(".*?")', comment)
    return [sys.executable, "-m", "aruntime", *argv[1:]], expected and expected.group(1)


def _wait_until_owned(db: Path, worker: subprocess.Popen[bytes]) -> None:
    """Wait until the worker has made the file and recorded itself as its owner."""

    async def owner() -> int | None:
        async with Client(f"sqlite:///{db}") as client:
            info = await client.store.owner_info()
            return None if info is None else info.pid

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended"
        with contextlib.suppress(AruntimeError):  # the file may be half made yet
            if db.exists() and asyncio.run(owner()) == worker.pid:
                return
        time.sleep(0.02)
    raise AssertionError("the worker did not start")


def test_the_readme_approval_runs_as_written(tmp_path: Path) -> None:
    """Worker, start, read, send, wait, read, show: each prints what the README says."""
    (tmp_path / "approval.py").write_text(_block("example:approval.py"))
    lines = [line for line in _block("example:approval.sh").splitlines() if line.strip()]
    worker_argv, _ = _command(lines[0])
    assert "worker" in worker_argv
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        worker_argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    try:
        _wait_until_owned(tmp_path / "runs.db", worker)
        for line in lines[1:]:
            argv, expected = _command(line)
            done = subprocess.run(
                argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if expected is not None:
                assert json.loads(done.stdout.strip().splitlines()[-1]) == json.loads(expected)
        assert "FirstWon" in done.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
