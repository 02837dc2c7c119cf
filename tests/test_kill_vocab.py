"""Messages, receives with a timeout, child runs and forks under a real SIGKILL.

The child (`tests/vocab_child.py`) runs one scenario on an SQLite file and writes a
ledger of its step bodies. Each test waits for the moment that matters (an event durable
in the file), kills the child with SIGKILL, acts on the file from this process through a
`Client` while no runtime owns it (sends a message, asks for a fork), starts the child
again and lets it finish; then it holds the outcome, the log and the ledger against what
must have happened exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from vocab_child import CHILD_ID, RECEIVE_TIMEOUT, RUN_ID

from aruntime import Client
from aruntime.events import (
    ChildStarted,
    Event,
    MessageReceived,
    ReceiveStarted,
    ReceiveTimedOut,
    StepStarted,
)
from aruntime.store import RequestKind

CHILD = Path(__file__).with_name("vocab_child.py")
CHILD_TIMEOUT = 30.0
POLL = 0.005
SLACK = 0.3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


class Scene:
    """One scenario's file, ledger and child processes, one life per child."""

    def __init__(self, tmp_path: Path, scenario: str) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "runs.db"
        self.url = f"sqlite:///{self.db}"
        self.ledger_path = tmp_path / "ledger.txt"
        self.scenario = scenario
        self.life = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, *options: str) -> None:
        assert self.proc is None
        self.life += 1
        command = [sys.executable, str(CHILD), self.scenario, "--db", str(self.db)]
        command += ["--ledger", str(self.ledger_path), "--life", str(self.life), *options]
        with self._out().open("wb") as out, self._err().open("wb") as err:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def _out(self, life: int | None = None) -> Path:
        return self.dir / f"child{life or self.life}.out"

    def _err(self, life: int | None = None) -> Path:
        return self.dir / f"child{life or self.life}.err"

    def output(self) -> str:
        parts = []
        for life in range(1, self.life + 1):
            for path in (self._out(life), self._err(life)):
                text = path.read_text(errors="replace").strip() if path.exists() else ""
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(parts) or "(the children printed nothing)"

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        proc = self.proc
        assert proc is not None
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not condition():
            if proc.poll() is not None:
                self.proc = None
                pytest.fail(f"the child ended ({proc.returncode}) before {what}\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"STUCK: no {what} within {CHILD_TIMEOUT} s\n{self.output()}")
            time.sleep(POLL)

    def kill(self) -> None:
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        self.proc = None
        assert code == -signal.SIGKILL, f"the child ended ({code}) before the kill\n{self.output()}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def finish(self, *options: str) -> dict[str, Any]:
        """Start a child and let it end; its outcome."""
        self.spawn(*options)
        proc = self.proc
        assert proc is not None
        try:
            code = proc.wait(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"STUCK: the last child did not end\n{self.output()}")
        self.proc = None
        assert code == 0, f"the last child exited with {code}\n{self.output()}"
        for line in self._out().read_text().splitlines():
            if line.startswith("outcome "):
                return dict(json.loads(line.removeprefix("outcome ")))
        raise AssertionError(f"no outcome\n{self.output()}")

    def opened(self) -> float:
        """When the last child had its runtime open."""
        for line in self._out().read_text().splitlines():
            if line.startswith("opened "):
                return float(line.removeprefix("opened "))
        raise AssertionError(f"no opened line\n{self.output()}")

    def ledger(self) -> list[str]:
        """`label phase` of every body that ran, in order."""
        if not self.ledger_path.exists():
            return []
        return [
            f"{line.split()[1]} {line.split()[3]}"
            for line in self.ledger_path.read_text().splitlines()
        ]

    def log(self, run_id: str = RUN_ID) -> list[Event]:
        if not self.db.exists():
            return []
        return asyncio.run(self._client(lambda c: c.store.events_for(run_id)))

    def has(self, kind: type[Any], run_id: str = RUN_ID) -> bool:
        return any(isinstance(e, kind) for e in self.log(run_id))

    def client(self, action: Callable[[Client], Any]) -> Any:
        return asyncio.run(self._client(action))

    async def _client(self, action: Callable[[Client], Any]) -> Any:
        async with Client(self.url) as client:
            return await action(client)


def of_type(log: list[Event], kind: type[Any]) -> list[Any]:
    return [e for e in log if isinstance(e, kind)]


def test_a_message_sent_while_the_owner_is_down_is_delivered_on_restart(tmp_path: Path) -> None:
    """Kill the owner while the run waits; send from another process; the next owner
    delivers the message once."""
    scene = Scene(tmp_path, "message")
    scene.spawn()
    scene.wait_for("the receive", lambda: scene.has(ReceiveStarted))
    scene.kill()
    scene.client(lambda c: c.send(RUN_ID, "hello", topic="go"))
    assert scene.finish() == {"result": ["before", "after hello"]}
    log = scene.log()
    assert len(of_type(log, MessageReceived)) == 1
    assert scene.ledger() == ["before end", "after end"]
    assert scene.client(lambda c: c.messages(RUN_ID)) == []


def test_a_crash_between_consuming_a_message_and_the_next_step(tmp_path: Path) -> None:
    """The consumption is durable with its record: after the kill the run goes on with the
    same payload, and the inbox does not deliver the message again."""
    scene = Scene(tmp_path, "message")
    scene.spawn("--pause-after-receive")
    scene.wait_for("the receive", lambda: scene.has(ReceiveStarted))
    scene.client(lambda c: c.send(RUN_ID, "once", topic="go"))
    scene.wait_for("the consumption", lambda: scene.has(MessageReceived))
    scene.kill()
    assert not any(isinstance(e, StepStarted) and e.step == "vocab.after" for e in scene.log()), (
        "the kill came too late: the next step had started"
    )
    assert scene.client(lambda c: c.store.pending(run_id=RUN_ID)) == []
    assert scene.finish() == {"result": ["before", "after once"]}
    assert len(of_type(scene.log(), MessageReceived)) == 1
    assert scene.ledger() == ["before end", "after end"]


def test_a_crash_while_a_receive_with_timeout_waits(tmp_path: Path) -> None:
    """The deadline was recorded before the wait: the restarted run times out at it,
    neither waiting afresh nor recording a second receive."""
    scene = Scene(tmp_path, "timeout")
    scene.spawn()
    scene.wait_for("the receive", lambda: scene.has(ReceiveStarted))
    scene.kill()
    time.sleep(0.3)
    assert scene.finish() == {"result": "after timed out"}
    log = scene.log()
    (started,) = of_type(log, ReceiveStarted)
    (timed_out,) = of_type(log, ReceiveTimedOut)
    assert started.deadline == pytest.approx(started.at + RECEIVE_TIMEOUT)
    assert started.deadline <= timed_out.at <= max(started.deadline, scene.opened()) + SLACK


def test_the_parent_killed_while_its_child_runs(tmp_path: Path) -> None:
    """The child is a run of its own: after the kill both resume, the parent adopts the
    same child, and the child's message reaches it once."""
    scene = Scene(tmp_path, "parent")
    scene.spawn()
    scene.wait_for("the child's receive", lambda: scene.has(ReceiveStarted, CHILD_ID))
    scene.kill()
    scene.client(lambda c: c.send(CHILD_ID, "go!", topic="go"))
    assert scene.finish() == {"result": "parent: kid got go!"}
    assert len(of_type(scene.log(), ChildStarted)) == 1
    runs = scene.client(lambda c: c.list())
    assert sorted(info.run_id for info in runs) == [RUN_ID, CHILD_ID]
    assert scene.ledger() == ["kid end"]


def test_a_fork_of_a_failed_run_finishes_after_the_fix(tmp_path: Path) -> None:
    """A run fails at its second step; a fork from that step, killed while it runs the
    fixed step, finishes on restart without running the first step again."""
    scene = Scene(tmp_path, "fork")
    assert scene.finish("--broken") == {"failed": "process is broken"}
    scene.client(lambda c: c.fork(RUN_ID, from_step="2", run_id="fixed"))
    scene.spawn("--wait", "fixed")
    scene.wait_for("the fixed step", lambda: "process begin" in scene.ledger()[1:])
    scene.kill()
    assert scene.finish("--wait", "fixed") == {"result": "DATA"}
    assert scene.ledger().count("fetch end") == 1
    assert scene.ledger()[-1] == "process end"
    state = scene.client(lambda c: c.state("fixed"))
    assert state.forked_from == RUN_ID
    pending = scene.client(lambda c: c.store.pending())
    assert [r for r in pending if r.kind is RequestKind.FORK] == []
