"""The row codec of the SQL stores, on event types made up for the test.

The codec of each event type is derived from its struct fields when `_rows` is imported;
these tests derive it for their own structs with the same builders and register them the
way the import registers `aruntime.events.EVENT_TYPES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgspec
import pytest

from aruntime.errors import SerializationError, StoreCorruptError
from aruntime.events import Event
from aruntime.store import _rows
from aruntime.store._rows import EventRow, StoredRow, decode_events, encode_events, row_checksum


class Flagged(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Every annotation the codec supports besides the ones the real events use."""

    sequence: int
    at: float
    note: str | None
    count: int | None
    done: bool
    maybe: bool | None
    retry_at: float | None


class Grown(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event type that gained fields with defaults after rows of it were written."""

    sequence: int
    at: float
    step: str
    attempt: int = 1
    label: str | None = None
    urgent: bool = False


class Bare(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event type with nothing but the two columns."""

    sequence: int
    at: float


class Listed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event type with a field the codec has no encoding for."""

    sequence: int
    at: float
    items: list[int]


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The made-up types known to the codec for the duration of a test."""
    for cls in (Flagged, Grown, Bare):
        event_type = cast("type[Event]", cls)
        encoder = (cls.__name__, _rows._encoder(event_type), _rows._type_seed(cls.__name__))
        monkeypatch.setitem(_rows._ENCODERS, cls, encoder)
        monkeypatch.setitem(_rows._DECODERS, cls.__name__, _rows._decoder(event_type))


def encode(run_id: str, *events: msgspec.Struct) -> list[EventRow]:
    return encode_events(run_id, cast("list[Event]", list(events)))


def decode(run_id: str, rows: Sequence[tuple[Any, ...]]) -> list[object]:
    """The events of `rows`, each `(sequence, type, at, data, checksum)`."""
    return list(decode_events("test.db", run_id, cast("list[StoredRow]", rows)))


def round_trip(*events: msgspec.Struct) -> list[object]:
    return decode("r", [row[1:] for row in encode("r", *events)])


def decode_data(type_name: str, data: str) -> list[object]:
    """Decode one row written by hand (without a checksum, as an old row)."""
    return decode("r", [(2, type_name, 2.0, data, None)])


@pytest.mark.parametrize(
    "fields",
    [
        {"note": "n", "count": 3, "done": True, "maybe": False, "retry_at": 1.5},
        {"note": None, "count": None, "done": False, "maybe": None, "retry_at": None},
        {"note": "", "count": 0, "done": False, "maybe": True, "retry_at": 0.0},
    ],
    ids=["values", "nulls", "falsy"],
)
def test_optional_and_bool_fields_round_trip(fields: dict[str, Any]) -> None:
    """`str | None`, `int | None`, `bool`, `bool | None` and `float | None` read back equal."""
    event = Flagged(sequence=2, at=2.0, **fields)
    [decoded] = round_trip(event)
    assert isinstance(decoded, Flagged)
    assert decoded == event
    assert type(decoded.done) is bool


def test_bools_and_nulls_are_written_as_json_literals() -> None:
    """A bool is JSON true/false and None is null, as a reader of the file expects."""
    event = Flagged(
        sequence=2, at=2.0, note=None, count=None, done=True, maybe=False, retry_at=None
    )
    [row] = encode("r", event)
    assert row[4] == ('{"note":null,"count":null,"done":true,"maybe":false,"retry_at":null}')


def test_event_type_without_payload_fields_round_trips() -> None:
    """A type with only `sequence` and `at` is stored as an empty object."""
    [row] = encode("r", Bare(sequence=2, at=2.0))
    assert row[4] == "{}"
    assert round_trip(Bare(sequence=2, at=2.0)) == [Bare(sequence=2, at=2.0)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("count", True), ("count", 1.0), ("done", 1), ("done", None), ("note", 5)],
    ids=["bool-for-int", "float-for-int", "int-for-bool", "none-for-bool", "int-for-str"],
)
def test_value_of_another_type_is_refused_when_encoding(field: str, value: object) -> None:
    """A field holding what its annotation does not allow is a SerializationError."""
    fields: dict[str, Any] = {
        "note": None,
        "count": None,
        "done": False,
        "maybe": None,
        "retry_at": None,
    }
    event = Flagged(sequence=2, at=2.0, **{**fields, field: value})
    with pytest.raises(SerializationError, match="Flagged 2"):
        encode("r", event)


@pytest.mark.parametrize(
    "data",
    [
        '{"note":null,"count":true,"done":false,"maybe":null,"retry_at":null}',
        '{"note":null,"count":null,"done":0,"maybe":null,"retry_at":null}',
        '{"note":null,"count":null,"done":false,"maybe":1,"retry_at":null}',
        '{"note":1,"count":null,"done":false,"maybe":null,"retry_at":null}',
    ],
    ids=["bool-for-int", "int-for-bool", "int-for-optional-bool", "int-for-str"],
)
def test_stored_value_of_another_type_is_corrupt(data: str) -> None:
    """A stored bool never decodes where an int is expected, nor an int where a bool is."""
    with pytest.raises(StoreCorruptError, match="mistyped"):
        decode_data("Flagged", data)


def test_missing_key_takes_the_fields_default() -> None:
    """A row written before fields with defaults were added decodes with those defaults."""
    [event] = decode_data("Grown", '{"step":"s"}')
    assert event == Grown(sequence=2, at=2.0, step="s", attempt=1, label=None, urgent=False)


def test_missing_key_of_a_field_without_default_is_corrupt() -> None:
    """A row that lacks a required field raises StoreCorruptError naming the field."""
    with pytest.raises(
        StoreCorruptError, match="event 2 is damaged: Grown field 'step' is missing"
    ):
        decode_data("Grown", '{"attempt":2}')


def test_unknown_key_is_corrupt() -> None:
    """A key that is no field of the type raises StoreCorruptError naming it."""
    with pytest.raises(StoreCorruptError, match="unknown fields \\['colour'\\]"):
        decode_data("Grown", '{"step":"s","colour":"red"}')


def test_unsupported_annotation_fails_naming_type_and_field() -> None:
    """Deriving a codec for a field of an unknown annotation raises, naming type and field.

    The import of `aruntime.store._rows` derives every event type's codec with the same
    builders, so an event type with such a field cannot go unnoticed until a row is written.
    """
    listed = cast("type[Event]", Listed)
    for build in (_rows._encoder, _rows._decoder):
        with pytest.raises(TypeError, match="event type Listed: field 'items' is annotated"):
            build(listed)


def test_rows_carry_the_checksum_of_their_content() -> None:
    """Each encoded row's checksum is `row_checksum` of its other columns."""
    event = Grown(sequence=2, at=2.5, step="s", attempt=3, label="ü", urgent=True)
    [row] = encode("заказ", event)
    run_id, sequence, type_name, at, data, checksum = row
    assert checksum == row_checksum(run_id, sequence, type_name, at, data)
    assert decode("заказ", [row[1:]]) == [event]


@pytest.mark.parametrize(
    ("column", "value"),
    [(0, 3), (1, "Bare"), (2, 2.5000001), (3, '{"step":"t","attempt":3}')],
    ids=["sequence", "type", "at", "data"],
)
def test_row_that_differs_from_its_checksum_is_corrupt(column: int, value: object) -> None:
    """Changing any column covered by the checksum raises StoreCorruptError on decode."""
    [row] = encode("r", Grown(sequence=2, at=2.5, step="s", attempt=3))
    stored: list[Any] = list(row[1:])
    stored[column] = value
    with pytest.raises(StoreCorruptError, match="does not match its checksum"):
        decode("r", [tuple(stored)])


def test_row_read_for_another_run_is_corrupt() -> None:
    """The run id is covered too: a row that moved to another run does not verify."""
    [row] = encode("r", Grown(sequence=2, at=2.5, step="s"))
    with pytest.raises(StoreCorruptError, match=r"run 's'.*does not match its checksum"):
        decode("s", [row[1:]])
