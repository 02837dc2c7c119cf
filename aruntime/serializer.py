"""How arguments and results become text in the log, and back."""

from __future__ import annotations

import json
from typing import Any, Protocol

import msgspec

__all__ = ["JsonSerializer", "Serializer"]


class Serializer(Protocol):
    """Turns values into text and back; `loads(dumps(v))` is what a workflow sees."""

    def dumps(self, value: Any) -> str:
        """Encode `value`; raise TypeError or ValueError for what cannot be encoded."""
        ...

    def loads(self, text: str) -> Any:
        """Decode text that `dumps` produced; raise ValueError for anything else."""
        ...


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JsonSerializer:
    """JSON, encoded and decoded by msgspec (about ten times faster than the stdlib).

    JSON's own types round-trip: dict, list, str, int, float, bool, None; a tuple comes
    back as a list and non-string keys as strings. Types with an obvious JSON form
    (datetime, date, UUID, Decimal, bytes, enum, dataclass, set) are written in that form
    and come back as it (str, dict, list). Anything else raises TypeError, and NaN or
    infinity raise ValueError, instead of being changed on the way. Every value goes
    through the serializer before a workflow sees it, on the first run as on replay, so a
    workflow never sees a value that a replay would give it differently.
    """

    __slots__ = ("_decode", "_encode")

    def __init__(self) -> None:
        # msgspec writes NaN and infinity as null; `dumps` catches that case by looking
        # for "null" in its output and re-checking with the strict stdlib encoder.
        self._encode = msgspec.json.Encoder(enc_hook=_refuse).encode
        self._decode = msgspec.json.Decoder().decode

    def dumps(self, value: Any) -> str:
        try:
            text = self._encode(value).decode()
        except msgspec.EncodeError as exc:
            raise ValueError(str(exc)) from None
        if "null" in text:
            _check_finite(value)
        return text

    def loads(self, text: str) -> Any:
        try:
            return self._decode(text)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from None


def _check_finite(value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False, default=_refuse)
    except ValueError as exc:
        raise ValueError(f"{exc} (NaN and infinity have no JSON form)") from None
