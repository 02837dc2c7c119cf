"""Inbox requests to table rows and back, for every SQL store.

A request becomes one row `(kind, run_id, at, data, checksum)`; its id is the row's
integer key, which the database gives it. `data` is a compact JSON object of the fields
a kind uses (`workflow`, `args`, `timeout`, `reason`). The checksum is the CRC-32 of the
kind, a NUL, the run id in UTF-8, a NUL, the time as a little-endian float64 and the data
text in UTF-8, for the reason the events table has one (see `aruntime.store._rows`): a
request changed after it was posted fails loudly instead of starting some other run.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from typing import Any, TypeAlias

from aruntime.errors import InvalidRunIdError, SerializationError, StoreCorruptError
from aruntime.store._base import Request, RequestKind
from aruntime.store._rows import storable_text

__all__ = ["RequestRow", "decode_request", "encode_request"]

RequestRow: TypeAlias = tuple[str, str, float, str, int]
"""`(kind, run_id, at, data, checksum)`, in the column order of the inbox table."""

_pack_at = struct.Struct("<d").pack
_FIELDS = (
    "workflow",
    "args",
    "timeout",
    "reason",
    "parent",
    "topic",
    "payload",
    "key",
    "origin",
    "from_step",
    "queue",
    "priority",
    "partition_key",
)
_KINDS = {kind.value: kind for kind in RequestKind}


def _checksum(kind: str, run_id: str, at: float, data: str) -> int:
    seed = zlib.crc32(f"{kind}\0{run_id}\0".encode())
    return zlib.crc32(data.encode(), zlib.crc32(_pack_at(at), seed))


def encode_request(request: Request) -> RequestRow:
    """The row of `request`.

    Raises:
        InvalidRunIdError: the run id cannot be stored as text.
        SerializationError: a field cannot be stored as text.
    """
    if not storable_text(request.run_id):
        raise InvalidRunIdError(
            request.run_id, "not valid Unicode text (it holds a lone surrogate)"
        )
    fields = {
        name: getattr(request, name) for name in _FIELDS if getattr(request, name) is not None
    }
    data = json.dumps(fields, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    for name in _FIELDS:
        if name in ("timeout", "priority"):
            continue
        value = fields.get(name)
        if value is not None and not storable_text(value):
            raise SerializationError(
                f"the request's {name} is not valid Unicode text", run_id=request.run_id
            )
    kind = RequestKind(request.kind).value
    at = float(request.at)
    return (kind, request.run_id, at, data, _checksum(kind, request.run_id, at, data))


def decode_request(source: str, row: Sequence[Any]) -> Request:
    """The request of a row `(id, kind, run_id, at, data, checksum)`.

    Raises:
        StoreCorruptError: the row changed after it was posted, or is not a request.
    """
    request_id, kind, run_id, at, data, checksum = row
    try:
        actual = _checksum(kind, run_id, at, data)
    except (TypeError, AttributeError, UnicodeError, struct.error):
        actual = None
    fields: Any = None
    if actual == checksum:
        try:
            fields = json.loads(data)
        except ValueError:
            fields = None
    if actual != checksum or type(fields) is not dict or kind not in _KINDS:
        raise StoreCorruptError(
            f"{source}: inbox request {request_id} is damaged (its content does not match "
            "its checksum, or it is not a request); remove the row to go on",
            run_id=run_id if isinstance(run_id, str) else None,
        )
    return Request(
        kind=_KINDS[kind],
        run_id=run_id,
        at=at,
        id=request_id,
        **{name: fields.get(name) for name in _FIELDS},
    )
