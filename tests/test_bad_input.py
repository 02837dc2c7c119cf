"""Nothing is lost on bad input (DESIGN §2.8): clear typed errors, nothing half-recorded."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from run_helpers import failures, kinds, start

from aruntime import (
    ConfigError,
    InvalidRunIdError,
    RetryPolicy,
    RunFailedError,
    Runtime,
    SerializationError,
    StepStatus,
    step,
    workflow,
)
from aruntime.store import open_store
from aruntime.store.sqlite import SqliteStore
from aruntime.testing import FakeClock

bodies: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty record of step bodies."""
    bodies.clear()


def runtime() -> Runtime:
    return Runtime(clock=FakeClock(autojump=True))


@step
async def echo(x: Any) -> Any:
    bodies.append("echo")
    return x


@workflow
async def echo_workflow(x: Any) -> Any:
    return await echo(x)


class Opaque:
    """A value no serializer of aruntime knows how to write."""


@step
async def returns_opaque() -> Opaque:
    bodies.append("returns_opaque")
    return Opaque()


@workflow
async def unserializable_step_result() -> object:
    return await returns_opaque()


@workflow
async def unserializable_workflow_result() -> object:
    await echo(1)
    return Opaque()


BAD_RUN_IDS: list[Any] = ["", 42, b"run", "x" * 256, "line\nbreak", "nul\x00", "\x1b[31m"]
BAD_RUN_ID_NAMES = ["empty", "int", "bytes", "too-long", "newline", "nul", "escape"]


# -- run ids and arguments -----------------------------------------------------------------


@pytest.mark.parametrize("run_id", BAD_RUN_IDS, ids=BAD_RUN_ID_NAMES)
async def test_invalid_run_id_is_refused_and_nothing_is_stored(run_id: Any) -> None:
    """Empty, non-string, over-long or control-character run ids raise InvalidRunIdError."""
    async with runtime() as rt:
        with pytest.raises(InvalidRunIdError) as info:
            await start(rt, echo_workflow, 1, run_id=run_id)
        assert info.value.run_id == run_id
        assert await rt.store.list_runs() == []
    assert bodies == []


async def test_run_id_of_the_maximum_length_is_accepted() -> None:
    """A run id of exactly 255 characters is usable."""
    async with runtime() as rt:
        handle = await start(rt, echo_workflow, 1, run_id="x" * 255)
        assert await handle.result() == 1


async def test_unserializable_workflow_arguments_raise_and_append_nothing() -> None:
    """Arguments the serializer refuses raise SerializationError before anything is stored."""
    async with runtime() as rt:
        with pytest.raises(SerializationError) as info:
            await start(rt, echo_workflow, Opaque(), run_id="args")
        assert info.value.run_id == "args"
        assert await rt.store.events_for("args") == []
        assert await rt.store.list_runs() == []
    assert bodies == []


@pytest.mark.parametrize(
    "value",
    [math.nan, [1.0, math.inf], {"f": print}],
    ids=["nan", "nested-infinity", "nested-function"],
)
async def test_arguments_outside_strict_json_raise_serialization_error(value: object) -> None:
    """NaN, infinity and objects without a JSON form are refused, also when nested."""
    async with runtime() as rt:
        with pytest.raises(SerializationError):
            await start(rt, echo_workflow, value, run_id="args")
        assert await rt.store.list_runs() == []


# -- unserializable results ----------------------------------------------------------------


async def test_step_returning_unserializable_value_fails_the_run() -> None:
    """The step fails for good as aruntime.SerializationError, without a retry."""
    async with runtime() as rt:
        handle = await start(rt, unserializable_step_result, run_id="bad")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        events = await rt.store.events_for("bad")
    assert info.value.error_type == "aruntime.SerializationError"
    assert "returns_opaque" in info.value.error_message
    (failed,) = failures(events)
    assert (failed.error_type, failed.retry_at) == ("aruntime.SerializationError", None)
    assert bodies == ["returns_opaque"]
    assert kinds(list(events)) == ["RunStarted", "StepStarted", "StepFailed", "RunFailed"]


async def test_unserializable_step_result_leaves_runtime_and_other_runs_unaffected() -> None:
    """Other runs, started before and after the failing one, complete normally."""
    async with runtime() as rt:
        before = await start(rt, echo_workflow, "before", run_id="before")
        bad = await start(rt, unserializable_step_result, run_id="bad")
        with pytest.raises(RunFailedError):
            await bad.result()
        after = await start(rt, echo_workflow, "after", run_id="after")
        assert await before.result() == "before"
        assert await after.result() == "after"
        assert rt.stats.respawned == rt.stats.parked == 0


async def test_workflow_returning_unserializable_value_fails_the_run() -> None:
    """A workflow result the serializer refuses ends the run failed with a SerializationError."""
    async with runtime() as rt:
        handle = await start(rt, unserializable_workflow_result, run_id="bad")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        state = await handle.state()
    assert info.value.error_type.endswith("SerializationError")
    assert "cannot be serialized" in info.value.error_message
    assert [s.status for s in state.steps.values()] == [StepStatus.COMPLETED]


# -- declarations and configuration ----------------------------------------------------------


def test_workflow_on_a_plain_function_raises_config_error() -> None:
    """@workflow needs an `async def`."""

    def not_async() -> None:
        return None

    with pytest.raises(ConfigError, match="async def"):
        workflow(not_async)  # type: ignore[arg-type]


def test_step_on_a_plain_function_raises_config_error() -> None:
    """@step needs an `async def`."""

    def not_async() -> None:
        return None

    with pytest.raises(ConfigError, match="async def"):
        step(retry=RetryPolicy())(not_async)  # type: ignore[arg-type]


BAD_POLICIES: dict[str, dict[str, Any]] = {
    "zero-attempts": {"max_attempts": 0},
    "float-attempts": {"max_attempts": 2.5},
    "negative-delay": {"initial_delay": -1.0},
    "infinite-max-delay": {"max_delay": math.inf},
    "nan-delay": {"initial_delay": math.nan},
    "shrinking-backoff": {"backoff": 0.5},
    "jitter-above-one": {"jitter": 1.5},
    "non-exception-type": {"non_retryable": (int,)},
    "non-tuple-types": {"non_retryable": [ValueError]},
}


@pytest.mark.parametrize("kwargs", list(BAD_POLICIES.values()), ids=list(BAD_POLICIES))
def test_retry_policy_with_bad_values_raises_config_error(kwargs: dict[str, Any]) -> None:
    """A RetryPolicy the runtime cannot follow is refused when it is built."""
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


async def test_start_outside_async_with_raises_config_error() -> None:
    """A runtime that was never entered refuses to start runs and stores nothing."""
    rt = runtime()
    with pytest.raises(ConfigError, match="async with"):
        await start(rt, echo_workflow, 1, run_id="early")
    assert await rt.store.list_runs() == []


async def test_start_after_the_runtime_closed_raises_config_error() -> None:
    """A closed runtime refuses to start runs."""
    async with runtime() as rt:
        pass
    with pytest.raises(ConfigError):
        await start(rt, echo_workflow, 1, run_id="late")


@pytest.mark.parametrize("url", ["nosuchscheme://x", "no-scheme-at-all"], ids=["scheme", "bare"])
def test_unknown_store_url_raises_config_error(url: str) -> None:
    """A store URL with an unknown or missing scheme is refused by the constructor."""
    with pytest.raises(ConfigError):
        Runtime(url)


def _named_stores(message: str) -> str:
    return message.rpartition("the stores are ")[2].rstrip(")")


def test_bare_path_as_store_url_is_told_its_sqlite_url() -> None:
    """`Runtime("runs.db")` suggests `sqlite:///runs.db` and lists only stores that exist."""
    with pytest.raises(ConfigError) as caught:
        Runtime("runs.db")
    message = str(caught.value)
    assert "sqlite:///runs.db" in message
    assert _named_stores(message) == STORE_LIST


def test_suggested_url_of_an_absolute_path_names_that_file(tmp_path: Path) -> None:
    """The URL suggested for an absolute path (spaces and all) opens that very file."""
    path = tmp_path / "my runs.db"
    with pytest.raises(ConfigError) as caught:
        open_store(str(path))
    suggested = str(caught.value).split(" write ")[1].split()[0]
    store = open_store(suggested)
    assert isinstance(store, SqliteStore)
    assert store.path == path


def test_path_object_as_store_url_is_told_its_sqlite_url() -> None:
    """A `Path` is not a URL; the error gives the URL to write instead."""
    with pytest.raises(ConfigError, match=r"sqlite:///data/runs\.db"):
        open_store(Path("data/runs.db"))  # type: ignore[arg-type]


STORE_LIST = "memory://, sqlite:///path.db and postgresql://user@host/database"


@pytest.mark.parametrize("url", ["mysql://localhost/runs", "redis://x"])
def test_unknown_scheme_lists_only_the_stores_that_exist(url: str) -> None:
    """An unknown scheme is refused by a ConfigError that names the existing stores only."""
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert _named_stores(str(caught.value)) == STORE_LIST


def test_empty_store_url_lists_the_stores() -> None:
    """An empty URL names the stores that exist."""
    with pytest.raises(ConfigError, match="empty; the stores are memory://"):
        open_store("")
