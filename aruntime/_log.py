"""The library's logger. aruntime never configures structlog: the application does.

Events are dotted and past tense (`run.started`, `step.retry_scheduled`). Per-step events
are logged at debug level so that an application filtering at info pays almost nothing
for them (configure `structlog.make_filtering_bound_logger` and
`cache_logger_on_first_use=True`).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

logger: Any = structlog.get_logger("aruntime")


def debug_enabled() -> bool:
    """Whether the application's structlog configuration lets debug events through.

    Asked once per run (not per step), so per-step debug events cost nothing when the
    application filters them out. Loggers that cannot say are assumed to log everything.
    """
    bound = structlog.get_logger("aruntime").bind()
    is_enabled_for = getattr(bound, "is_enabled_for", None)
    if is_enabled_for is None:
        return True
    return bool(is_enabled_for(logging.DEBUG))
