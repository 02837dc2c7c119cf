"""Typed results: a step's or workflow's return annotation decides what the log's JSON
becomes, on the first run and on replay alike."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import pytest
from run_helpers import failures, start, wait_until

from aruntime import (
    EventStore,
    MemoryStore,
    RunFailedError,
    RunParkedError,
    Runtime,
    Step,
    step,
    workflow,
)
from aruntime.testing import FakeClock, crash_run


@dataclass(frozen=True)
class Point:
    x: int
    y: int


class Money(msgspec.Struct, frozen=True):
    amount: Decimal
    currency: str


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 3


WHEN = datetime(2024, 5, 17, 9, 30, 15, 250000, tzinfo=UTC)

seen: list[Any] = []
"""Every value a step handed to `typed_then_held`, in order (first run, then replays)."""
gate = asyncio.Event()
annotated_as_int = False
"""Which of the two declarations of the step "results.changing" the workflow calls."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    """Give every test an empty record, a closed gate and the first declaration."""
    global gate, annotated_as_int  # noqa: PLW0603 - per-test state of module-level steps
    seen.clear()
    gate = asyncio.Event()
    annotated_as_int = False


def runtime(store: EventStore | None = None) -> Runtime:
    return Runtime(store, clock=FakeClock(autojump=True))


# -- steps and workflows ------------------------------------------------------------------


@step
async def a_datetime() -> datetime:
    return WHEN


@step
async def a_date() -> date:
    return WHEN.date()


@step
async def a_tuple() -> tuple[int, str, bool]:
    return (1, "two", True)


@step
async def a_dataclass() -> Point:
    return Point(3, 4)


@step
async def a_struct() -> Money:
    return Money(Decimal("19.99"), "EUR")


@step
async def an_enum() -> Color:
    return Color.GREEN


@step
async def an_int_enum() -> Level:
    return Level.HIGH


@step
async def a_uuid() -> UUID:
    return UUID("12345678-1234-5678-1234-567812345678")


@step
async def a_decimal() -> Decimal:
    return Decimal("0.1")


@step
async def nested() -> dict[str, list[Point]]:
    return {"corners": [Point(0, 0), Point(1, 1)]}


TYPED: dict[str, tuple[Step[[], Any], Any]] = {
    "datetime": (a_datetime, WHEN),
    "date": (a_date, WHEN.date()),
    "tuple": (a_tuple, (1, "two", True)),
    "dataclass": (a_dataclass, Point(3, 4)),
    "struct": (a_struct, Money(Decimal("19.99"), "EUR")),
    "enum": (an_enum, Color.GREEN),
    "int-enum": (an_int_enum, Level.HIGH),
    "uuid": (a_uuid, UUID("12345678-1234-5678-1234-567812345678")),
    "decimal": (a_decimal, Decimal("0.1")),
    "nested": (nested, {"corners": [Point(0, 0), Point(1, 1)]}),
}
"""Each annotated step by name, with the value it returns."""


@step
async def held() -> str:
    await gate.wait()
    return "released"


@workflow
async def typed_then_held(kind: str) -> str:
    seen.append(await TYPED[kind][0]())
    return await held()


@step
async def unannotated():  # type: ignore[no-untyped-def]  # results as JSON, under test
    return {"pair": (1, 2), "when": WHEN.isoformat(), "keys": {1: "one"}}


@workflow
async def untyped() -> Any:
    return await unannotated()


@workflow
async def when() -> datetime:
    return await a_datetime()


@workflow
async def where() -> Point:
    return await a_dataclass()


@step
async def not_an_int() -> int:
    text: Any = "abc"
    return text  # type: ignore[no-any-return]


@workflow
async def bad_result() -> int:
    return await not_an_int()


@step(name="results.changing")
async def changing_as_str() -> str:
    return "abc"


@step(name="results.changing")
async def changing_as_int() -> int:
    return 42


@workflow
async def changing() -> str:
    value = await (changing_as_int() if annotated_as_int else changing_as_str())
    seen.append(value)
    return await held()


# -- steps -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TYPED))
async def test_annotated_step_result_keeps_its_type_on_the_first_run_and_on_replay(
    kind: str,
) -> None:
    """The workflow gets the annotated type from the step, and the same again on replay."""
    _, expected = TYPED[kind]
    async with runtime() as rt:
        handle = await start(rt, typed_then_held, kind, run_id="t")
        await wait_until(lambda: len(seen) == 1)
        await crash_run(rt, "t")
        await wait_until(lambda: len(seen) == 2)
        gate.set()
        await handle.result()
    assert seen == [expected, expected]
    assert [type(v) for v in seen] == [type(expected)] * 2


async def test_annotated_step_result_keeps_its_type_in_a_new_runtime(store: EventStore) -> None:
    """A runtime replaying a stored datetime result hands the workflow a datetime."""
    async with runtime(store) as first:
        await start(first, typed_then_held, "datetime", run_id="t")
        await wait_until(lambda: len(seen) == 1)
    gate.set()
    async with runtime(store) as second:
        assert await second.handle("t").result() == "released"
    assert seen == [WHEN, WHEN]
    assert all(isinstance(v, datetime) for v in seen)


async def test_unannotated_step_result_is_what_json_gives_back() -> None:
    """Without an annotation, tuples come back as lists and keys as strings, as JSON has it."""
    async with runtime() as rt:
        result = await (await start(rt, untyped, run_id="u")).result()
    assert result == {"pair": [1, 2], "when": WHEN.isoformat(), "keys": {"1": "one"}}


# -- workflows -----------------------------------------------------------------------------


@pytest.mark.parametrize(("wf", "expected"), [(when, WHEN), (where, Point(3, 4))])
async def test_workflow_return_annotation_decodes_the_run_result(wf: Any, expected: Any) -> None:
    """handle.result() is the workflow's annotated type, not its JSON form."""
    async with runtime() as rt:
        result = await (await start(rt, wf, run_id="w")).result()
    assert result == expected
    assert type(result) is type(expected)


async def test_run_result_read_back_by_another_runtime_keeps_its_type(store: EventStore) -> None:
    """A handle from a later runtime decodes the stored result to the annotated type."""
    async with runtime(store) as first:
        await (await start(first, when, run_id="w")).result()
    async with runtime(store) as second:
        result = await second.handle("w").result()
    assert result == WHEN
    assert isinstance(result, datetime)


# -- values that cannot become the annotated type ------------------------------------------


async def test_result_that_cannot_become_its_type_fails_the_step_as_serialization_error() -> None:
    """A body returning "abc" from a step annotated int is a failed attempt naming the step."""
    async with runtime() as rt:
        handle = await start(rt, bad_result, run_id="b")
        with pytest.raises(RunFailedError) as info:
            await handle.result()
        events = await rt.store.events_for("b")
    (failed,) = failures(events)
    assert failed.error_type == "aruntime.SerializationError"
    assert "not_an_int" in failed.error_message
    assert failed.retry_at is None
    assert (info.value.error_type, info.value.step) == ("aruntime.SerializationError", "not_an_int")


async def test_recorded_result_that_cannot_become_a_changed_annotation_parks_the_run() -> None:
    """A result recorded as str and replayed by a step now annotated int parks the run."""
    global annotated_as_int  # noqa: PLW0603 - the change between two deployments under test
    store = MemoryStore()
    async with runtime(store) as first:
        await start(first, changing, run_id="c")
        await wait_until(lambda: seen == ["abc"])
    log = await store.events_for("c")
    annotated_as_int = True
    gate.set()
    async with runtime(store) as second:
        with pytest.raises(RunParkedError) as info:
            await second.handle("c").result()
    assert info.value.reason.startswith("SerializationError")
    assert "results.changing" in info.value.reason
    assert await store.events_for("c") == log
