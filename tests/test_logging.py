"""Log events: dotted, past tense, bound with run_id, step and attempt, silent by default.

Events go to structlog once the application configures it, else to the standard library's
`aruntime` logger. Assertions are on the event dicts `structlog.testing.capture_logs()`
collects and on the records pytest's `caplog` collects, never on rendered text, except
where the text is the behaviour: what an unconfigured process prints.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from run_helpers import start, wait_until
from structlog.testing import capture_logs

import aruntime
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
from aruntime._log import debug_enabled
from aruntime.testing import FakeClock, crash_run

LogEntry = MutableMapping[str, Any]

entered: list[int] = []
gate = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    """Give every test an empty record, a closed gate and structlog unconfigured."""
    global gate  # noqa: PLW0603 - the gate must belong to the test's own event loop
    entered.clear()
    gate = asyncio.Event()
    # capture_logs() leaves structlog configured (with its defaults) when it exits.
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def named(logs: list[LogEntry], event: str) -> list[LogEntry]:
    """The captured entries of one event, in order."""
    return [entry for entry in logs if entry["event"] == event]


def records(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    """The `aruntime` records by event; each event is expected once."""
    by_event: dict[str, logging.LogRecord] = {}
    for record in caplog.records:
        if record.name == "aruntime":
            event = vars(record)["event"]
            assert event not in by_event, f"{event} logged twice"
            by_event[event] = record
    return by_event


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The key/values a record carries besides its event."""
    value: dict[str, Any] = vars(record)["fields"]
    return value


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


async def run_plain_workflow() -> None:
    """Run `plain_workflow` to completion as run "ok" on a fresh runtime."""
    async with Runtime(clock=FakeClock(autojump=True)) as rt:
        await (await start(rt, plain_workflow, run_id="ok")).result()


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
        await run_plain_workflow()
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
    then = 'import structlog\nprint("configured" if structlog.is_configured() else "unconfigured")'
    done = run_unconfigured(fail_first=False, then=then)
    assert done.stdout.splitlines()[-1] == "unconfigured"


def test_debug_enabled_follows_structlog_filtering() -> None:
    """With structlog configured, debug events are enabled exactly when its filter lets them by."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    assert debug_enabled() is False
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    assert debug_enabled() is True


def test_debug_enabled_follows_structlog_over_stdlib(caplog: pytest.LogCaptureFixture) -> None:
    """structlog configured to wrap stdlib loggers enables debug events by the stdlib level."""
    structlog.configure(
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
    )
    caplog.set_level(logging.INFO, logger="aruntime")
    assert debug_enabled() is False
    caplog.set_level(logging.DEBUG, logger="aruntime")
    assert debug_enabled() is True


def test_debug_enabled_follows_the_stdlib_level(caplog: pytest.LogCaptureFixture) -> None:
    """Without structlog configured, debug events are enabled when the aruntime logger is."""
    assert logging.getLogger("aruntime").isEnabledFor(logging.DEBUG) is False
    assert debug_enabled() is False
    caplog.set_level(logging.DEBUG, logger="aruntime")
    assert debug_enabled() is True


async def test_stdlib_at_debug_gets_every_event_as_a_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without structlog configured, a logger at DEBUG gets run and step events as records."""
    caplog.set_level(logging.DEBUG, logger="aruntime")
    await run_plain_workflow()
    by_event = records(caplog)
    levels = {event: record.levelno for event, record in by_event.items()}
    assert levels == {
        "run.started": logging.INFO,
        "step.started": logging.DEBUG,
        "step.completed": logging.DEBUG,
        "run.completed": logging.INFO,
    }
    assert fields(by_event["step.started"]) == {"run_id": "ok", "step": "plain", "attempt": 1}
    completed = by_event["run.completed"]
    assert fields(completed) == {"run_id": "ok", "workflow": plain_workflow.name}
    assert completed.getMessage() == f"run.completed run_id=ok workflow={plain_workflow.name}"


async def test_stdlib_at_info_gets_run_events_but_no_step_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A logger at INFO gets run.started and run.completed, and no per-step debug record."""
    caplog.set_level(logging.INFO, logger="aruntime")
    await run_plain_workflow()
    assert sorted(records(caplog)) == ["run.completed", "run.started"]


async def test_stdlib_record_of_a_failed_attempt_names_step_and_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """step.failed is a WARNING record whose message quotes text and whose source is aruntime's."""
    caplog.set_level(logging.WARNING, logger="aruntime")
    async with Runtime(clock=FakeClock(autojump=True)) as rt:
        await (await start(rt, retry_workflow, run_id="r")).result()
    (failed,) = records(caplog).values()
    assert failed.levelno == logging.WARNING
    assert fields(failed) == {
        "run_id": "r",
        "step": "fails_once",
        "attempt": 1,
        "error_type": f"{FlakyError.__module__}.FlakyError",
        "error": "first attempt fails",
        "final": False,
    }
    assert failed.getMessage() == (
        f"step.failed run_id=r step=fails_once attempt=1 error_type={FlakyError.__module__}"
        ".FlakyError error='first attempt fails' final=False"
    )
    source = Path(failed.pathname)
    assert source.parent == Path(aruntime.__file__).parent
    assert source.name != "_log.py"


async def test_configured_structlog_takes_the_events_from_stdlib(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once structlog is configured, events go through it and the stdlib logger gets none."""
    caplog.set_level(logging.DEBUG, logger="aruntime")
    with capture_logs() as logs:
        await run_plain_workflow()
    assert [entry["event"] for entry in logs] == [
        "run.started",
        "step.started",
        "step.completed",
        "run.completed",
    ]
    assert records(caplog) == {}


UNCONFIGURED = """
import asyncio
import aruntime

@aruntime.step(retry=aruntime.RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0))
async def one() -> int:
    if FAIL_FIRST and aruntime.current_step().attempt == 1:
        raise ValueError("first attempt fails")
    return 1

@aruntime.workflow
async def wf() -> int:
    return await one()

async def main() -> None:
    async with aruntime.Runtime() as rt:
        assert await (await rt.start(wf, run_id="quiet")).result() == 1

asyncio.run(main())
"""


def run_unconfigured(*, fail_first: bool, then: str = "") -> subprocess.CompletedProcess[str]:
    """Run one workflow, then the code `then`, in a fresh interpreter that configures no
    logging at all."""
    script = f"FAIL_FIRST = {fail_first}\n{UNCONFIGURED}\n{then}\n"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )


def test_unconfigured_successful_run_prints_nothing() -> None:
    """With no logging configured, a successful run writes nothing to stdout or stderr."""
    done = run_unconfigured(fail_first=False)
    assert (done.stdout, done.stderr) == ("", "")


def test_unconfigured_failed_attempt_warns_on_stderr() -> None:
    """With no logging configured, a failed attempt's warning, and only it, reaches stderr."""
    done = run_unconfigured(fail_first=True)
    assert done.stdout == ""
    assert done.stderr == (
        "step.failed run_id=quiet step=one attempt=1 error_type=ValueError"
        " error='first attempt fails' final=False\n"
    )
