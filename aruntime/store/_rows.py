"""Events to table rows and back, for every SQL store.

An event becomes one row `(run_id, sequence, type, at, data)`: the type's name as
`aruntime.events.EVENT_TYPES` spells it, the two fields every event has in columns of their
own, and the other fields as a compact JSON object in `data`, keyed by field name so that
a row reads on its own (`sqlite3 runs.db`, `psql`).

Both directions are on hot paths (every append, every replay), so what can be worked out
per event type is worked out once, from the struct fields and their annotations: the
JSON template and the converter of each field for encoding, the JSON types each field
accepts for decoding. Text is encoded ASCII-only: a lone surrogate (what `surrogateescape`
leaves in an OSError message) cannot be stored as UTF-8, but escaped it round-trips like
any other character.

A row that does not decode into exactly the event it claims to be raises
`StoreCorruptError` naming the database, the run and the sequence: a damaged row never
turns into a plausible but different event.
"""

from __future__ import annotations

import json
import math
import operator
import typing
from collections.abc import Callable, Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, TypeAlias

import msgspec

from aruntime.errors import (
    CorruptLogError,
    InvalidRunIdError,
    SerializationError,
    StoreCorruptError,
)
from aruntime.events import EVENT_TYPES, Event, RunStarted
from aruntime.state import RunStatus
from aruntime.store._base import RunInfo

__all__ = ["EventRow", "decode_events", "decode_run", "encode_events", "storable_text"]

EventRow: TypeAlias = tuple[str, int, str, float, str]
"""`(run_id, sequence, type, at, data)`, in the column order of the events table."""


def _number(value: float) -> str:
    value = float(value)
    if math.isfinite(value):
        return float.__repr__(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _optional_number(value: float | None) -> str:
    return "null" if value is None else _number(value)


_CODECS: dict[object, tuple[Callable[[Any], str], tuple[type, ...]]] = {
    str: (encode_basestring_ascii, (str,)),
    int: (int.__repr__, (int,)),
    float: (_number, (float, int)),
    float | None: (_optional_number, (float, int, type(None))),
}
"""For each annotation of an event field: its JSON encoder, and the JSON types it accepts."""

_MISSING = object()
_COLUMNS = frozenset({"sequence", "at"})


def _payload_fields(cls: type[Event]) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in msgspec.structs.fields(cls) if f.name not in _COLUMNS]


def _encoder(cls: type[Event]) -> Callable[[Any], str]:
    fields = _payload_fields(cls)
    template = "{" + ",".join(f'"{name}":%s' for name, _ in fields) + "}"
    converters = tuple(_CODECS[hint][0] for _, hint in fields)
    if len(fields) == 1:
        (name, _), convert = fields[0], converters[0]
        return lambda event: template % convert(getattr(event, name))
    values = operator.attrgetter(*(name for name, _ in fields))
    call = operator.call
    return lambda event: template % tuple(map(call, converters, values(event)))


class _Decoder(NamedTuple):
    cls: type[Event]
    fields: tuple[tuple[str, tuple[type, ...]], ...]
    """Each payload field: its name and the JSON types it accepts."""


def _decoder(cls: type[Event]) -> _Decoder:
    return _Decoder(cls, tuple((name, _CODECS[hint][1]) for name, hint in _payload_fields(cls)))


_ENCODERS: dict[type[Any], tuple[str, Callable[[Any], str]]] = {
    cls: (name, _encoder(cls)) for name, cls in EVENT_TYPES.items()
}
_DECODERS: dict[str, _Decoder] = {name: _decoder(cls) for name, cls in EVENT_TYPES.items()}
# `raw_decode` skips the whitespace handling of `decode`, which compact rows do not need.
_decode_json = json.JSONDecoder().raw_decode


def storable_text(value: str) -> bool:
    """Whether `value` can be stored as UTF-8 text (it holds no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def encode_events(run_id: str, events: Sequence[Event]) -> list[EventRow]:
    """The rows of `events`, which `check_batch` has already accepted.

    Raises:
        InvalidRunIdError: the run id cannot be stored as text.
        SerializationError: a field does not hold what its annotation says, or a
            RunStarted names a workflow that cannot be stored as text.
        CorruptLogError: an element of `events` is not an event.
    """
    if not storable_text(run_id):
        raise InvalidRunIdError(run_id, "not valid Unicode text (it holds a lone surrogate)")
    encoders = _ENCODERS
    rows: list[EventRow] = []
    for event in events:
        encoder = encoders.get(type(event))
        if encoder is None:
            raise CorruptLogError(run_id, None, f"not an event: {event!r:.120}")
        type_name, encode = encoder
        try:
            rows.append((run_id, event.sequence, type_name, float(event.at), encode(event)))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(
                f"{type_name} {event.sequence} has a field of the wrong type ({exc})",
                run_id=run_id,
            ) from None
    first = events[0]
    if isinstance(first, RunStarted) and not storable_text(first.workflow):
        raise SerializationError(
            f"workflow name {first.workflow!r:.80} is not valid Unicode text", run_id=run_id
        )
    return rows


def decode_events(
    source: str, run_id: str, rows: Iterable[tuple[int, str, float, str]]
) -> list[Event]:
    """The events of a run's rows `(sequence, type, at, data)`, in the order given.

    Raises:
        StoreCorruptError: a row is not an event of the type it names; the error names
            `source` (the database), the run and the sequence.
    """
    try:
        return [_decode(sequence, type_name, at, data) for sequence, type_name, at, data in rows]
    except _DamagedRowError as damaged:
        raise StoreCorruptError(
            f"{source}: event {damaged.sequence} is damaged: {damaged.reason}; the run cannot "
            "be replayed until the row is repaired or the run is removed",
            run_id=run_id,
        ) from None


class _DamagedRowError(Exception):
    def __init__(self, sequence: object, reason: str) -> None:
        self.sequence = sequence
        self.reason = reason


def _decode(sequence: int, type_name: str, at: float, data: str) -> Event:
    decoder = _DECODERS.get(type_name)
    if decoder is None:
        raise _DamagedRowError(sequence, f"unknown event type {type_name!r:.80}")
    try:
        fields, end = _decode_json(data)
    except (ValueError, TypeError) as exc:
        raise _DamagedRowError(sequence, f"{type_name} payload is not JSON ({exc})") from None
    if type(fields) is not dict or len(fields) != len(decoder.fields) or end != len(data):
        raise _DamagedRowError(sequence, f"{type_name} payload has the wrong fields")
    if type(at) is not float or type(sequence) is not int:
        raise _DamagedRowError(sequence, f"{type_name} has a sequence or time that is no number")
    for name, allowed in decoder.fields:
        if type(fields.get(name, _MISSING)) not in allowed:
            raise _DamagedRowError(sequence, f"{type_name} field {name!r} is missing or mistyped")
    return decoder.cls(sequence=sequence, at=at, **fields)


_STATUSES = {status.value: status for status in RunStatus}


def decode_run(row: Sequence[Any]) -> RunInfo:
    """The run of an index row `(run_id, workflow, status, version, created_at,
    updated_at, parked_reason)`.

    Raises:
        StoreCorruptError: the status is not one a run can have.
    """
    run_id, workflow, status, version, created_at, updated_at, parked_reason = row
    run_status = _STATUSES.get(status)
    if run_status is None:
        raise StoreCorruptError(f"the index holds an unknown status {status!r:.40}", run_id=run_id)
    return RunInfo(
        run_id=run_id,
        workflow=workflow,
        status=run_status,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
        parked_reason=parked_reason,
    )
