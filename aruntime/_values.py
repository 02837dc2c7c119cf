"""Values that cross the runner's boundary: argument and result text, the runner's own
control-flow exception, and the digest that checks a step's arguments on replay."""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING, Any

import msgspec

from aruntime.errors import AruntimeError, RunIdConflictError, SerializationError

if TYPE_CHECKING:
    from aruntime._definitions import Workflow
    from aruntime.serializer import Serializer

__all__ = [
    "AppendInterruptedError",
    "args_digest",
    "check_same_start",
    "convert_result",
    "decode_args",
    "encode_args",
    "encode_start_args",
]


class _Abort(BaseException):
    """Unwinds the workflow when the runner must stop; carries the real cause."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause


class AppendInterruptedError(AruntimeError):
    """An append was cancelled in flight; only the log can tell whether it committed."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r}: an append was interrupted; the log will tell")


def encode_args(
    serializer: Serializer, run_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """The text of a workflow's arguments, as `RunStarted` records them."""
    try:
        return serializer.dumps([list(args), kwargs])
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"workflow arguments cannot be serialized: {exc}", run_id=run_id
        ) from exc


def encode_start_args(
    serializer: Serializer,
    workflow: Workflow[..., Any] | None,
    run_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    """`encode_args`, checked against `workflow`'s signature when it is known: arguments
    that would not fit it, or not become their annotated types, are refused before the
    run is recorded.

    Raises:
        SerializationError: the arguments cannot be serialized, or do not fit.
    """
    text = encode_args(serializer, run_id, args, kwargs)
    if workflow is not None:
        workflow.typed_args(*decode_args(serializer, run_id, text), run_id)
    return text


def check_same_start(
    serializer: Serializer,
    run_id: str,
    recorded_workflow: str,
    recorded_args: str,
    *,
    workflow: str,
    encoded: str,
) -> None:
    """Refuse a start of `run_id` (of `workflow` with `encoded` arguments) when the run
    recorded, or the start already asked for, names another workflow or other arguments.

    Raises:
        RunIdConflictError: it does.
    """
    if recorded_workflow != workflow:
        raise RunIdConflictError(run_id, f"as a run of workflow {recorded_workflow!r}")
    if recorded_args != encoded and _canonical(serializer, run_id, recorded_args) != _canonical(
        serializer, run_id, encoded
    ):
        raise RunIdConflictError(run_id, "with other arguments")


def _canonical(serializer: Serializer, run_id: str, text: str) -> str:
    """The arguments in one spelling: keyword order does not matter, 1 != 1.0 != true."""
    return json.dumps(decode_args(serializer, run_id, text), sort_keys=True)


def decode_args(serializer: Serializer, run_id: str, text: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        args, kwargs = serializer.loads(text)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"recorded arguments cannot be decoded: {exc}", run_id=run_id
        ) from exc
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SerializationError("recorded arguments are not [args, kwargs]", run_id=run_id)
    return args, kwargs


def convert_result(value: Any, result_type: Any, run_id: str, what: str | None) -> Any:
    """`value` as the annotated `result_type` (None: as decoded).

    Raises:
        SerializationError: the value cannot become that type.
    """
    if result_type is None:
        return value
    try:
        return msgspec.convert(value, result_type, strict=False)
    except (msgspec.ValidationError, TypeError) as exc:
        raise SerializationError(
            f"recorded result {value!r:.80} cannot become {_type_name(result_type)}: {exc}",
            run_id=run_id,
            step=what,
        ) from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def _digest_hook(value: Any) -> str:
    return f"<{type(value).__qualname__}>"


_encode_for_digest = msgspec.json.Encoder(enc_hook=_digest_hook, order="deterministic").encode


def args_digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short digest of a step's arguments; values with no JSON form count by type."""
    if not args and not kwargs:
        return "0"
    try:
        data = _encode_for_digest((args, kwargs))
    except (TypeError, ValueError, OverflowError, RecursionError):
        return ""  # not comparable: the check is skipped for this call
    return f"{zlib.crc32(data):08x}"
