"""The library's logger: silent until the application configures logging.

aruntime configures neither structlog nor `logging`; the application does, possibly after
importing aruntime, so each event picks its route when it is logged:

- structlog, once the application has configured it (`structlog.is_configured()`): the
  event goes through the application's processors, keyed by `run_id`, `step`, `attempt`;
- otherwise the standard library's `logging.getLogger("aruntime")`: one record whose
  message reads `run.completed run_id=... workflow=...` and which carries the event as
  `record.event` and its key/values as `record.fields`. With `logging` unconfigured too,
  Python's last-resort handler prints warnings and errors to standard error and drops
  the rest, so a successful run prints nothing.

Events are dotted and past tense (`run.started`, `step.retry_scheduled`). Per-step events
are at debug level and logged only when `debug_enabled()`, asked once per run, says so;
an event below the application's level costs a flag test and a level check.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog

__all__ = ["debug_enabled", "logger"]

_stdlib = logging.getLogger("aruntime")
# One proxy for the life of the process, so an application's
# `cache_logger_on_first_use=True` spares every later event the logger's assembly.
_structlog: Any = structlog.get_logger("aruntime")
_BARE = re.compile(r"[\w.:/@+-]+")


class _Logger:
    """Logs each event to structlog if the application configured it, else to `logging`."""

    __slots__ = ()

    def debug(self, event: str, **kv: Any) -> None:
        if structlog.is_configured():
            _structlog.debug(event, **kv)
        elif _stdlib.isEnabledFor(logging.DEBUG):
            _emit(logging.DEBUG, event, kv)

    def info(self, event: str, **kv: Any) -> None:
        if structlog.is_configured():
            _structlog.info(event, **kv)
        elif _stdlib.isEnabledFor(logging.INFO):
            _emit(logging.INFO, event, kv)

    def warning(self, event: str, **kv: Any) -> None:
        if structlog.is_configured():
            _structlog.warning(event, **kv)
        elif _stdlib.isEnabledFor(logging.WARNING):
            _emit(logging.WARNING, event, kv)

    def error(self, event: str, **kv: Any) -> None:
        if structlog.is_configured():
            _structlog.error(event, **kv)
        elif _stdlib.isEnabledFor(logging.ERROR):
            _emit(logging.ERROR, event, kv)


logger = _Logger()


def debug_enabled() -> bool:
    """Whether a debug event would reach the application's logging at all.

    Asked once per run (not per step), so per-step debug events cost nothing when the
    application filters them out. A structlog logger that cannot say is assumed to log
    everything.
    """
    if not structlog.is_configured():
        return _stdlib.isEnabledFor(logging.DEBUG)
    bound = _structlog.bind()
    is_enabled_for = getattr(bound, "is_enabled_for", None) or getattr(bound, "isEnabledFor", None)
    if is_enabled_for is None:
        return True
    return bool(is_enabled_for(logging.DEBUG))


def _emit(level: int, event: str, kv: dict[str, Any]) -> None:
    message = " ".join([event, *(f"{key}={_text(value)}" for key, value in kv.items())])
    # stacklevel 3 skips this function and the _Logger method: the record names the
    # line of aruntime that logged the event.
    _stdlib.log(level, message, extra={"event": event, "fields": kv}, stacklevel=3)


def _text(value: Any) -> str:
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    return repr(value)
