"""Structured log events: dotted, past tense, bound with run_id, step and attempt.

Assertions are on the event dicts `structlog.testing.capture_logs()` collects, never on
rendered text.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import MutableMapping
from typing import Any

import pytest
from run_helpers import start, wait_until
from structlog.testing import capture_logs

from aruntime import (
    NonRetryableError,
    RestartBudget,
    RetryPolicy,
    RunFailedError,
    RunParkedError,
    Runtime,
    RuntimeConfig,
    current_step,
    step,
    workflow,
)
from aruntime.testing import FakeClock, crash_run

LogEntry = MutableMapping[str, Any]

entered: list[int] = []
gate = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty record and a closed gate."""
    global gate  # noqa: PLW0603 - the gate must belong to the test's own event loop
    entered.clear()
    gate = asyncio.Event()


def named(logs: list[LogEntry], event: str) -> list[LogEntry]:
    """The captured entries of one event, in order."""
    return [entry for entry in logs if entry["event"] == event]


class FlakyError(Exception):
    """A transient failure."""


class Meltdown(BaseException):
    """An unexpected BaseException that kills the run task."""


@step
async def plain() -> str:
    return "ok"


@workflow
async def plain_workflow() -> str:
    return await plain()


@step(retry=RetryPolicy(max_attempts=2, initial_delay=2.0, jitter=0.0))
async def fails_once() -> str:
    if current_step().attempt == 1:
        raise FlakyError("first attempt fails")
    return "ok"


@workflow
async def retry_workflow() -> str:
    return await fails_once()


@step
async def refuses() -> None:
    raise NonRetryableError("declined")


@workflow
async def failing_workflow() -> None:
    await refuses()


@step
async def gated() -> str:
    entered.append(current_step().attempt)
    await gate.wait()
    return "ok"


@workflow
async def gated_workflow() -> str:
    return await gated()


@step(retry=RetryPolicy(max_attempts=10))
async def melts_down() -> None:
    raise Meltdown("reactor")


@workflow
async def meltdown_workflow() -> None:
    await melts_down()


async def test_run_started_and_completed_are_logged_with_run_id() -> None:
    """A successful run logs run.started and run.completed, both bound with its run id."""
    with capture_logs() as logs:
        async with Runtime(clock=FakeClock(autojump=True)) as rt:
            await (await start(rt, plain_workflow, run_id="ok")).result()
    (started,) = named(logs, "run.started")
    (completed,) = named(logs, "run.completed")
    assert started["run_id"] == completed["run_id"] == "ok"
    assert started["workflow"] == plain_workflow.name
    assert (started["log_level"], completed["log_level"]) == ("info", "info")


async def test_failed_attempt_logs_step_failed_and_retry_scheduled() -> None:
    """A retried failure logs step.failed and step.retry_scheduled with step and attempt."""
    with capture_logs() as logs:
        async with Runtime(clock=FakeClock(autojump=True)) as rt:
            await (await start(rt, retry_workflow, run_id="r")).result()
    (failed,) = named(logs, "step.failed")
    (scheduled,) = named(logs, "step.retry_scheduled")
    for entry in (failed, scheduled):
        assert (entry["run_id"], entry["step"], entry["attempt"]) == ("r", "fails_once", 1)
    assert failed["error_type"] == f"{FlakyError.__module__}.FlakyError"
    assert failed["final"] is False
    assert scheduled["delay"] == 2.0


async def test_failed_run_logs_run_failed_with_error_type() -> None:
    """A run ending failed logs run.failed bound with its run id and the error type."""
    with capture_logs() as logs:
        async with Runtime(clock=FakeClock(autojump=True)) as rt:
            with pytest.raises(RunFailedError):
                await (await start(rt, failing_workflow, run_id="f")).result()
    (step_failed,) = named(logs, "step.failed")
    (run_failed,) = named(logs, "run.failed")
    assert step_failed["final"] is True
    assert run_failed["run_id"] == "f"
    assert run_failed["error_type"] == "aruntime.NonRetryableError"
    assert run_failed["log_level"] == "warning"
    assert named(logs, "step.retry_scheduled") == []


async def test_respawn_is_logged_with_run_id_and_cause() -> None:
    """A crashed run logs run.respawned with its run id, restart count and cause."""
    with capture_logs() as logs:
        async with Runtime(clock=FakeClock(autojump=True)) as rt:
            handle = await start(rt, gated_workflow, run_id="c")
            await wait_until(lambda: entered == [1])
            await crash_run(rt, "c")
            gate.set()
            await handle.result()
    (respawned,) = named(logs, "run.respawned")
    assert respawned["run_id"] == "c"
    assert respawned["restarts"] == 1
    assert "crash" in respawned["cause"]


async def test_park_is_logged_with_run_id_and_reason() -> None:
    """A run parked past its restart budget logs run.parked with the reason."""
    config = RuntimeConfig(restart_budget=RestartBudget(max_restarts=1, window=60))
    with capture_logs() as logs:
        async with Runtime(clock=FakeClock(autojump=True), config=config) as rt:
            with pytest.raises(RunParkedError) as info:
                await (await start(rt, meltdown_workflow, run_id="p")).result()
    (parked,) = named(logs, "run.parked")
    assert parked["run_id"] == "p"
    assert parked["reason"] == info.value.reason
    assert parked["log_level"] == "error"
    assert [e["run_id"] for e in named(logs, "run.respawned")] == ["p"]


def test_library_never_configures_structlog() -> None:
    """Importing aruntime and running a workflow leaves structlog unconfigured."""
    script = textwrap.dedent(
        """
        import asyncio
        import structlog
        import aruntime

        @aruntime.step
        async def one() -> int:
            return 1

        @aruntime.workflow
        async def wf() -> int:
            return await one()

        async def main() -> None:
            async with aruntime.Runtime() as rt:
                assert await (await rt.start(wf)).result() == 1

        asyncio.run(main())
        print("configured" if structlog.is_configured() else "unconfigured")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines()[-1] == "unconfigured"
