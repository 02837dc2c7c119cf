"""Forking a run: the log of a new run that resumes an old one from one of its operations.

Pure functions of the origin's log. The copy holds every event before the first event of
the operation named (the results of earlier operations are kept, not computed again),
under the new run's id, with `RunStarted.forked_from`/`forked_at` saying where it came
from. The new run then goes on from there with the code deployed now.

Messages come along: those the origin consumed at or after the cut (the copy's receives
will ask for them again) and those still waiting in its inbox, in that order, each with
an idempotency key of its own so that posting them twice delivers them once.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from aruntime.events import Event, MessageReceived, RunStarted, op_identity
from aruntime.state import replay
from aruntime.store import Request, RequestKind

__all__ = ["fork_log", "forked_messages"]


def _identity_of(event: Event) -> str | None:
    position = getattr(event, "position", None)
    if position is None:
        return None
    return op_identity(getattr(event, "branch", ""), position)


def fork_log(
    events: Sequence[Event], run_id: str, at: str, now: float | None = None
) -> list[Event]:
    """The log of run `run_id`: `events` before the first one of the operation `at`.

    A run deadline (`timeout=` at the start) is a span from the run's start: the fork,
    made at `now`, gets the same span from then on, not the origin's wall-clock deadline
    (long past when the fork of a failed run is made after the fix). The fork's
    `RunStarted` is dated `now`: it is created then, and waits in its queue, if it is on
    one, behind the runs started before it.

    Raises:
        ValueError: the log is empty, or holds no operation at `at`.
    """
    if not events or not isinstance(events[0], RunStarted):
        raise ValueError("the run to fork has no log")
    origin = events[0]
    cut = next((i for i, event in enumerate(events) if _identity_of(event) == at), None)
    if cut is None:
        raise ValueError(f"run {origin.run_id!r} recorded no operation at {at!r}")
    deadline = origin.deadline
    if deadline is not None and now is not None:
        deadline = now + max(0.0, deadline - origin.at)
    started = msgspec.structs.replace(
        origin,
        run_id=run_id,
        forked_from=origin.run_id,
        forked_at=at,
        parent=None,
        deadline=deadline,
        at=origin.at if now is None else now,
    )
    return [started, *events[1:cut]]


def forked_messages(
    events: Sequence[Event], copied: Sequence[Event], pending: Sequence[Request], run_id: str
) -> list[Request]:
    """The messages to post for the fork `run_id`, in the order it should receive them."""
    origin = events[0]
    assert isinstance(origin, RunStarted)
    receives = replay(events).receives
    found: list[Request] = []
    for event in events[len(copied) :]:
        if isinstance(event, MessageReceived):
            identity = op_identity(event.branch, event.position)
            found.append(
                Request(
                    kind=RequestKind.MESSAGE,
                    run_id=run_id,
                    at=event.at,
                    topic=receives[identity].topic,
                    payload=event.payload,
                    key=event.key or f"fork:{origin.run_id}:{event.sequence}",
                )
            )
    for message in pending:
        found.append(
            Request(
                kind=RequestKind.MESSAGE,
                run_id=run_id,
                at=message.at,
                topic=message.topic,
                payload=message.payload,
                key=message.key or f"fork:{origin.run_id}:request:{message.id}",
            )
        )
    return found
