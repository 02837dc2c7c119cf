"""How arguments and results become text in the log, and back."""

from __future__ import annotations

import json
from typing import Any, Protocol

__all__ = ["JsonSerializer", "Serializer"]


class Serializer(Protocol):
    """Turns values into text and back; `loads(dumps(v))` is what a workflow sees."""

    def dumps(self, value: Any) -> str:
        """Encode `value`; raise TypeError or ValueError for what cannot be encoded."""
        ...

    def loads(self, text: str) -> Any:
        """Decode text that `dumps` produced; raise ValueError for anything else."""
        ...


class JsonSerializer:
    """Strict JSON: no NaN or infinity, tuples come back as lists, keys as strings.

    Every value goes through it before a workflow sees it, on the first run as on replay,
    so a workflow never sees a value that a replay would give it differently.
    """

    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
        )
        self._decoder = json.JSONDecoder()

    def dumps(self, value: Any) -> str:
        return self._encoder.encode(value)

    def loads(self, text: str) -> Any:
        return self._decoder.decode(text)
