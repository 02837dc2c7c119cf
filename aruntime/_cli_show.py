"""What `aruntime runs show|list` print of messages, published values, children and forks.

Kept beside `_cli` so that the table code there stays about steps and sleeps: these
helpers turn the parts of a `RunState` that the vocabulary of issue 10 adds into rows,
lines and JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aruntime.events import (
    CancelRequested,
    ChildEnded,
    ChildStarted,
    Event,
    FirstWon,
    MessageReceived,
    MessageSent,
    ReceiveStarted,
    ReceiveTimedOut,
    RunResumed,
    RunStarted,
    ValuePublished,
)
from aruntime.state import RunState
from aruntime.store import EventStore, Request, RequestKind

__all__ = [
    "details",
    "lineage_lines",
    "message_rows",
    "operation_rows",
    "parents_of",
    "pending_messages",
    "vocabulary_json",
]


def _cut(text: str | None, limit: int = 60) -> str:
    text = "" if text is None else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _local(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(sep=" ", timespec="milliseconds")


def lineage_lines(state: RunState) -> list[str]:
    """The `parent` and `forked` lines of a run that has them."""
    lines = []
    if state.parent is not None:
        lines.append(f"parent    {state.parent}")
    if state.forked_from is not None:
        lines.append(f"forked    from {state.forked_from} at operation {state.forked_at}")
    return lines


def operation_rows(state: RunState) -> list[tuple[float, str, tuple[str, ...]]]:
    """`(started_at, identity, row)` for every receive, send, publish, child and first."""
    rows: list[tuple[float, str, tuple[str, ...]]] = []
    for r in state.receives.values():
        if r.received:
            status, detail = "received", _cut(r.payload)
        elif r.timed_out:
            status, detail = "timed out", ""
        elif r.cancelled:
            status, detail = "cancelled", ""
        else:
            status, detail = "waiting", "" if r.deadline is None else f"deadline {r.deadline:.3f}"
        rows.append(
            (r.started_at, r.identity, (r.identity, "receive", r.topic, status, "-", detail))
        )
    for identity, sent in state.sends.items():
        status = sent.error_type or "sent"
        row = (identity, "send", sent.topic, status, "-", f"to {sent.target}: {_cut(sent.payload)}")
        rows.append((sent.at, identity, row))
    for identity, key in state.publishes.items():
        rows.append((0.0, identity, (identity, "publish", key, "published", "-", "")))
    for c in state.children.values():
        status = c.status or ("cancelled" if c.cancelled else "running")
        outcome = c.result if c.result is not None else c.error_message
        row = (c.identity, "child", c.workflow, status, "-", f"{c.child} {_cut(outcome)}".strip())
        rows.append((0.0, c.identity, row))
    for identity, winner in state.firsts.items():
        rows.append((0.0, identity, (identity, "first", "-", f"won by {winner}", "-", "")))
    return rows


async def pending_messages(store: EventStore, run_id: str) -> list[Request]:
    return await store.pending(run_id=run_id, kinds=(RequestKind.MESSAGE,))


def message_rows(messages: Sequence[Request]) -> list[tuple[str, ...]]:
    return [(str(m.id), m.topic or "default", m.key or "", _cut(m.payload)) for m in messages]


def details(event: Event) -> str | None:
    """The DETAILS cell of the new events; None for the others."""
    if isinstance(event, ReceiveStarted):
        deadline = (
            "" if event.deadline is None else f"; deadline in {event.deadline - event.at:.3f}s"
        )
        return f"topic {event.topic!r}{deadline}"
    if isinstance(event, MessageReceived):
        return f"payload {_cut(event.payload)}" + (f"; key {event.key!r}" if event.key else "")
    if isinstance(event, ReceiveTimedOut):
        return "no message in time"
    if isinstance(event, MessageSent):
        refused = f"; refused: {event.error_type}" if event.error_type else ""
        return f"to {event.target} topic {event.topic!r} payload {_cut(event.payload)}{refused}"
    if isinstance(event, ValuePublished):
        return f"{event.key} = {_cut(event.value)}"
    if isinstance(event, ChildStarted):
        return f"child {event.child} of workflow {event.workflow!r}"
    if isinstance(event, ChildEnded):
        outcome = event.result if event.result is not None else event.error_message
        return f"child {event.status}: {_cut(outcome)}"
    if isinstance(event, FirstWon):
        return f"won by awaitable {event.winner}"
    if isinstance(event, CancelRequested | RunResumed) and event.request:
        return f"reason {_cut(event.reason)}; applies inbox request {event.request}"
    if isinstance(event, RunStarted) and (event.parent or event.forked_from):
        extra = f"parent {event.parent}" if event.parent else f"fork of {event.forked_from}"
        return f"workflow {event.workflow!r} args {_cut(event.args)}; {extra}"
    return None


def vocabulary_json(state: RunState, messages: Sequence[Request]) -> dict[str, Any]:
    """The JSON of what `operation_rows`, `lineage_lines` and `message_rows` print."""
    return {
        "parent": state.parent,
        "forked_from": state.forked_from,
        "forked_at": state.forked_at,
        "published": dict(state.published),
        "children": {i: c.child for i, c in state.children.items()},
        "messages": [
            {"id": m.id, "topic": m.topic, "key": m.key, "payload": m.payload} for m in messages
        ],
    }


PARENTS_SHOWN = 2000
"""`runs list` reads each listed run's log for its parent, up to this many runs."""


async def parents_of(store: EventStore, run_ids: Sequence[str]) -> dict[str, str] | None:
    """The parent of each run that has one, from the first event of its log; None for
    more than `PARENTS_SHOWN` runs (the index does not hold parents)."""
    if len(run_ids) > PARENTS_SHOWN:
        return None
    logs = await asyncio.gather(*(store.events_for(run_id) for run_id in run_ids))
    found = {}
    for run_id, log in zip(run_ids, logs, strict=True):
        first = log[0] if log else None
        if isinstance(first, RunStarted) and first.parent:
            found[run_id] = first.parent
    return found
