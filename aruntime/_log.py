"""The library's logger. aruntime never configures structlog: the application does.

Events are dotted and past tense (`run.started`, `step.retry_scheduled`). Per-step events
are logged at debug level so that an application filtering at info pays almost nothing
for them (configure `structlog.make_filtering_bound_logger` and
`cache_logger_on_first_use=True`).
"""

from __future__ import annotations

from typing import Any

import structlog

logger: Any = structlog.get_logger("aruntime")
