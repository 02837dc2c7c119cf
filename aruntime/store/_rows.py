"""Events to table rows and back, for every SQL store.

An event becomes one row `(run_id, sequence, type, at, data, checksum)`: the type's name
as `aruntime.events.EVENT_TYPES` spells it, the two fields every event has in columns of
their own, the other fields as a compact JSON object in `data`, keyed by field name so
that a row reads on its own (`sqlite3 runs.db`, `psql`), and a checksum of all that.

The checksum is what makes a row that changed after it was written fail loudly: a flipped
byte inside a result (1234 read back as 9234) is still valid JSON and still passes
`PRAGMA integrity_check`, so without it replay would return the changed value. It is the
CRC-32 (`zlib.crc32`) of the type name, a NUL, the run id in UTF-8, a NUL, the sequence
and the time as little-endian int64 and float64, and the data text in UTF-8. CRC-32
rather than a cryptographic digest: it guards against damage, not against someone who
may write the file (who could rewrite the checksum too), and with the struct packing it
costs about 0.4 us per row on a 2-core machine, computed on the writer thread beside the
rest of the encoding (blake2b would double that). A row
without a checksum (NULL: written before checksums existed) is read as it always was.

A payload field is encoded by its annotation: `str`, `int`, `float`, `bool` and each of
them `| None` (JSON strings, numbers, true/false and null; a bool is never taken for an
int nor an int for a bool). A key missing from a stored payload takes the field's
default, so rows written before a field with a default was added still decode. An event
type with a field of any other annotation fails at import, naming the type and the field.

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
import struct
import typing
import zlib
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

__all__ = [
    "RUN_COLUMNS",
    "EventRow",
    "StoredRow",
    "decode_events",
    "decode_run",
    "encode_events",
    "row_checksum",
    "storable_text",
]

EventRow: TypeAlias = tuple[str, int, str, float, str, int]
"""`(run_id, sequence, type, at, data, checksum)`, in the column order of the events table."""

StoredRow: TypeAlias = tuple[int, str, float, str, "int | None"]
"""`(sequence, type, at, data, checksum)` as read back; checksum None on rows written
before checksums existed."""

_crc32 = zlib.crc32
_pack_sequence_at = struct.Struct("<qd").pack


def _type_seed(type_name: str) -> int:
    """The checksum's running CRC over the type name and its NUL."""
    return _crc32(type_name.encode() + b"\0")


def row_checksum(run_id: str, sequence: int, type_name: str, at: float, data: str) -> int:
    """The checksum of one row, as the events table stores it."""
    seed = _crc32(run_id.encode() + b"\0", _type_seed(type_name))
    return _crc32(data.encode(), _crc32(_pack_sequence_at(sequence, at), seed))


def _number(value: float) -> str:
    value = float(value)
    if math.isfinite(value):
        return float.__repr__(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _integer(value: int) -> str:
    if value.__class__ is bool:  # int.__repr__ would write True as 1
        raise TypeError(f"expected an int, got {value!r}")
    return int.__repr__(value)


def _boolean(value: bool) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise TypeError(f"expected a bool, got {value!r:.40}")


def _optional(encode: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda value: "null" if value is None else encode(value)


_NONE = type(None)

_CODECS: dict[object, tuple[Callable[[Any], str], tuple[type, ...]]] = {
    str: (encode_basestring_ascii, (str,)),
    int: (_integer, (int,)),
    float: (_number, (float, int)),
    bool: (_boolean, (bool,)),
    str | None: (_optional(encode_basestring_ascii), (str, _NONE)),
    int | None: (_optional(_integer), (int, _NONE)),
    float | None: (_optional(_number), (float, int, _NONE)),
    bool | None: (_optional(_boolean), (bool, _NONE)),
}
"""For each annotation of an event field: its JSON encoder, and the JSON types it accepts
(compared with `type(value) is`, so that a bool never passes for an int nor the reverse)."""

_MISSING = object()
_COLUMNS = frozenset({"sequence", "at"})


class _Field(NamedTuple):
    name: str
    encode: Callable[[Any], str]
    accepts: tuple[type, ...]
    """The JSON types the field takes."""
    required: bool
    """False when the struct has a default for it, which a missing key then takes."""


def _payload_fields(cls: type[Event]) -> list[_Field]:
    """The fields stored in `data`, in struct order.

    Raises:
        TypeError: a field's annotation has no codec.
    """
    hints = typing.get_type_hints(cls)
    fields: list[_Field] = []
    for field in msgspec.structs.fields(cls):
        if field.name in _COLUMNS:
            continue
        codec = _CODECS.get(hints[field.name])
        if codec is None:
            raise TypeError(
                f"event type {cls.__name__}: field {field.name!r} is annotated "
                f"{hints[field.name]!r}, which the row codec cannot store; use one of "
                f"{', '.join(sorted(map(_annotation_name, _CODECS)))}, or add a codec to "
                "aruntime/store/_rows.py"
            )
        fields.append(_Field(field.name, codec[0], codec[1], field.required))
    return fields


def _annotation_name(hint: object) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _encoder(cls: type[Event]) -> Callable[[Any], str]:
    """The function that writes an event of `cls` as its `data` JSON text.

    Raises:
        TypeError: a field's annotation has no codec.
    """
    fields = _payload_fields(cls)
    template = "{" + ",".join(f'"{field.name}":%s' for field in fields) + "}"
    if not fields:
        return lambda event: template
    converters = tuple(field.encode for field in fields)
    if len(fields) == 1:
        name, convert = fields[0].name, converters[0]
        return lambda event: template % convert(getattr(event, name))
    values = operator.attrgetter(*(field.name for field in fields))
    call = operator.call
    return lambda event: template % tuple(map(call, converters, values(event)))


class _Decoder(NamedTuple):
    cls: type[Event]
    fields: tuple[tuple[str, tuple[type, ...], bool], ...]
    """Each payload field: its name, the JSON types it accepts, whether it is required."""
    seed: int
    """The checksum's CRC over the type's name."""


def _decoder(cls: type[Event]) -> _Decoder:
    """What decoding a row of `cls` needs to know.

    Raises:
        TypeError: a field's annotation has no codec.
    """
    fields = _payload_fields(cls)
    return _Decoder(
        cls,
        tuple((field.name, field.accepts, field.required) for field in fields),
        _type_seed(cls.__name__),
    )


_ENCODERS: dict[type[Any], tuple[str, Callable[[Any], str], int]] = {
    cls: (name, _encoder(cls), _type_seed(name)) for name, cls in EVENT_TYPES.items()
}
"""Each event type's name, data encoder and checksum seed."""
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
    """The rows of `events`, which `check_batch` has already accepted, with their checksums.

    Raises:
        InvalidRunIdError: the run id cannot be stored as text.
        SerializationError: a field does not hold what its annotation says, or a
            RunStarted names a workflow that cannot be stored as text.
        CorruptLogError: an element of `events` is not an event.
    """
    if not storable_text(run_id):
        raise InvalidRunIdError(run_id, "not valid Unicode text (it holds a lone surrogate)")
    encoders = _ENCODERS
    crc32, pack = _crc32, _pack_sequence_at
    run_bytes = run_id.encode() + b"\0"
    rows: list[EventRow] = []
    for event in events:
        encoder = encoders.get(type(event))
        if encoder is None:
            raise CorruptLogError(run_id, None, f"not an event: {event!r:.120}")
        type_name, encode, type_seed = encoder
        try:
            sequence, at, data = event.sequence, float(event.at), encode(event)
            checksum = crc32(data.encode(), crc32(pack(sequence, at), crc32(run_bytes, type_seed)))
        except (TypeError, ValueError, OverflowError, struct.error) as exc:
            raise SerializationError(
                f"{type_name} {event.sequence} has a field of the wrong type ({exc})",
                run_id=run_id,
            ) from None
        rows.append((run_id, sequence, type_name, at, data, checksum))
    first = events[0]
    if isinstance(first, RunStarted) and not storable_text(first.workflow):
        raise SerializationError(
            f"workflow name {first.workflow!r:.80} is not valid Unicode text", run_id=run_id
        )
    return rows


def decode_events(source: str, run_id: str, rows: Iterable[StoredRow]) -> list[Event]:
    """The events of a run's rows `(sequence, type, at, data, checksum)`, in the order given.

    Raises:
        StoreCorruptError: a row's checksum does not match its content, or the row is not
            an event of the type it names; the error names `source` (the database), the
            run and the sequence.
    """
    run_bytes = run_id.encode() + b"\0"
    try:
        return [_decode(run_bytes, row) for row in rows]
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


def _decode(run_bytes: bytes, row: StoredRow) -> Event:
    sequence, type_name, at, data, checksum = row
    decoder = _DECODERS.get(type_name)
    if checksum is not None:
        crc32 = _crc32
        try:
            type_seed = decoder.seed if decoder is not None else _type_seed(type_name)
            seed = crc32(run_bytes, type_seed)
            actual = crc32(data.encode(), crc32(_pack_sequence_at(sequence, at), seed))
        except (AttributeError, TypeError, UnicodeError, struct.error):
            actual = None  # a column of the wrong type: no row we wrote
        if actual != checksum:
            raise _DamagedRowError(
                sequence,
                f"its content does not match its checksum (the row changed after it was "
                f"written; stored {checksum!r:.20}, computed {actual!r})",
            )
    if decoder is None:
        raise _DamagedRowError(sequence, f"unknown event type {type_name!r:.80}")
    try:
        fields, end = _decode_json(data)
    except (ValueError, TypeError) as exc:
        raise _DamagedRowError(sequence, f"{type_name} payload is not JSON ({exc})") from None
    if type(fields) is not dict or end != len(data):
        raise _DamagedRowError(sequence, f"{type_name} payload has the wrong fields")
    if type(at) is not float or type(sequence) is not int:
        raise _DamagedRowError(sequence, f"{type_name} has a sequence or time that is no number")
    if len(fields) == len(decoder.fields):  # every key, unless some are unknown
        for name, allowed, _ in decoder.fields:
            if type(fields.get(name, _MISSING)) not in allowed:
                raise _DamagedRowError(sequence, _field_problem(type_name, decoder, fields))
    else:
        problem = _field_problem(type_name, decoder, fields)
        if problem:
            raise _DamagedRowError(sequence, problem)
    return decoder.cls(sequence=sequence, at=at, **fields)


def _field_problem(type_name: str, decoder: _Decoder, fields: dict[str, Any]) -> str:
    """What is wrong with a payload's keys and values; "" if nothing is (only keys with
    defaults are missing, which the struct fills)."""
    for name, allowed, required in decoder.fields:
        value = fields.get(name, _MISSING)
        if value is _MISSING:
            if required:
                return f"{type_name} field {name!r} is missing"
        elif type(value) not in allowed:
            return f"{type_name} field {name!r} is mistyped"
    unknown = sorted(set(fields) - {name for name, _, _ in decoder.fields})
    return f"{type_name} payload has unknown fields {unknown}" if unknown else ""


_STATUSES = {status.value: status for status in RunStatus}


def placement(first: Event) -> tuple[str | None, int, str | None]:
    """The `(queue, priority, partition_key)` columns of a run whose log begins with
    `first` (`''` for the key of a queued run without one, so that it compares equal)."""
    if type(first) is not RunStarted or first.queue is None:
        return (None, 0, None)
    return (first.queue, first.priority, first.partition_key or "")


RUN_COLUMNS = (
    "run_id, workflow, status, version, created_at, updated_at, parked_reason, "
    "queue, priority, partition_key, admitted_at"
)
"""The columns of the runs table that `decode_run` reads, in its order."""


def decode_run(row: Sequence[Any]) -> RunInfo:
    """The run of an index row (the `RUN_COLUMNS`).

    A queued run without a partition key has `''` in its `partition_key` column.

    Raises:
        StoreCorruptError: the status is not one a run can have.
    """
    (
        run_id,
        workflow,
        status,
        version,
        created_at,
        updated_at,
        parked_reason,
        queue,
        priority,
        partition_key,
        admitted_at,
    ) = row
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
        queue=queue,
        priority=priority or 0,
        partition_key=partition_key or None,
        admitted_at=admitted_at,
    )
