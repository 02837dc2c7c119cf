"""The fold of receives, sends, published values, children and first-of, under hypothesis.

A strategy writes the logs a correct runner can write with these operations (each
operation at the next position of the root or of one branch); the properties are those
of the step fold: resumable from any prefix, deterministic, `version == len(log)`, a
round trip through the stored rows, and a damaged log raises `CorruptLogError` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aruntime._decide import Cancel, Mismatch
from aruntime._decide_ops import (
    Act,
    Deliver,
    Recorded,
    RecordReceive,
    Take,
    TimedOut,
    next_child_start,
    next_publish_action,
    next_receive_action,
    next_send_action,
    send_confirmed,
)
from aruntime.errors import CorruptLogError
from aruntime.events import (
    CancelRequested,
    ChildEnded,
    ChildStarted,
    Event,
    FirstWon,
    MessageReceived,
    MessageSent,
    OperationCancelled,
    ReceiveStarted,
    ReceiveTimedOut,
    RunStarted,
    StepStarted,
    ValuePublished,
)
from aruntime.state import RunState, replay
from aruntime.store._rows import StoredRow, decode_events, encode_events

_KINDS = ("receive", "send", "publish", "child", "first")


@st.composite
def vocab_logs(draw: st.DrawFn) -> list[Event]:
    """A valid log of a run that uses the vocabulary, in the root and in two branches."""
    log: list[Event] = [RunStarted(sequence=1, at=0.0, run_id="r", workflow="w", args="[[],{}]")]
    positions = {"": 0, "1": 0, "2": 0}
    cancelled = False

    def add(kind: type[Any], **fields: Any) -> None:
        log.append(kind(sequence=len(log) + 1, at=float(len(log)), **fields))

    for _ in range(draw(st.integers(0, 12))):
        branch = draw(st.sampled_from(sorted(positions)))
        positions[branch] += 1
        where = {"position": positions[branch], "branch": branch}
        kind = draw(st.sampled_from(_KINDS))
        if kind == "receive":
            deadline = draw(st.none() | st.floats(0, 100))
            add(ReceiveStarted, topic=draw(st.sampled_from(["a", "b"])), deadline=deadline, **where)
            end = draw(st.sampled_from(["message", "timeout", "none"]))
            if end == "message":
                key = draw(st.sampled_from(["", "k1", "k2"]))
                add(MessageReceived, payload=draw(st.sampled_from(["1", '"x"'])), key=key, **where)
            elif end == "timeout" and deadline is not None:
                add(ReceiveTimedOut, **where)
            elif end == "none" and draw(st.booleans()):
                if not cancelled:
                    add(CancelRequested, reason="user")
                    cancelled = True
                add(OperationCancelled, **where)
        elif kind == "send":
            add(MessageSent, target="t", topic="a", payload="1", key=f"r/{branch}", **where)
        elif kind == "publish":
            add(ValuePublished, key=draw(st.sampled_from(["p", "q"])), value="1", **where)
        elif kind == "child":
            add(ChildStarted, child=f"r/{positions[branch]}", workflow="kid", **where)
            status = draw(st.sampled_from(["completed", "failed", "cancelled", None]))
            if status is not None:
                add(
                    ChildEnded,
                    status=status,
                    result="1" if status == "completed" else None,
                    **where,
                )
        else:
            add(FirstWon, winner=draw(st.integers(0, 3)), **where)
    return log


def _renumbered(events: Sequence[Event]) -> list[Event]:
    return [msgspec.structs.replace(e, sequence=i) for i, e in enumerate(events, start=1)]


@given(vocab_logs(), st.data())
@settings(max_examples=200, deadline=None)
def test_fold_is_resumable_from_any_prefix(log: list[Event], data: st.DataObject) -> None:
    """Folding a prefix and then the rest equals folding the whole, and never mutates."""
    cut = data.draw(st.integers(0, len(log)))
    head = replay(log[:cut])
    before = msgspec.json.encode(head)
    assert replay(log[cut:], head) == replay(log)
    assert msgspec.json.encode(head) == before


@given(vocab_logs())
@settings(max_examples=200, deadline=None)
def test_fold_is_deterministic_and_counts_every_event(log: list[Event]) -> None:
    """Two folds agree, the version is the length, and the latest published value wins."""
    state = replay(log)
    assert state == replay(log)
    assert state.version == len(log)
    latest: dict[str, str] = {}
    for event in log:
        if isinstance(event, ValuePublished):
            latest[event.key] = event.value
    assert state.published == latest


@given(vocab_logs())
@settings(max_examples=100, deadline=None)
def test_new_events_round_trip_through_stored_rows(log: list[Event]) -> None:
    """Every event reads back equal from the rows a SQL store writes."""
    rows = encode_events("r", log)
    decoded = decode_events("test.db", "r", cast("list[StoredRow]", [row[1:] for row in rows]))
    assert decoded == log


@given(vocab_logs(), st.data())
@settings(max_examples=300, deadline=None)
def test_a_damaged_log_raises_only_corrupt_log_error(log: list[Event], data: st.DataObject) -> None:
    """Dropping or repeating one event (renumbered densely) is accepted or refused with
    CorruptLogError, never with anything else."""
    index = data.draw(st.integers(0, len(log) - 1))
    if data.draw(st.booleans()):
        damaged = log[:index] + log[index + 1 :]
    else:
        damaged = log[: index + 1] + log[index:]
    with contextlib.suppress(CorruptLogError):
        replay(_renumbered(damaged))


def _log(*events: Any) -> RunState:
    started = RunStarted(sequence=1, at=0.0, run_id="r", workflow="w", args="[[],{}]")
    return replay(_renumbered([started, *events]))


def test_two_operations_at_one_identity_are_corrupt() -> None:
    """A receive and a publish recorded at the same identity make an impossible log."""
    with pytest.raises(CorruptLogError, match="second operation"):
        _log(
            ReceiveStarted(sequence=0, at=1.0, position=1, topic="a"),
            ValuePublished(sequence=0, at=1.0, position=1, key="k", value="1"),
        )
    with pytest.raises(CorruptLogError, match="no receive waits"):
        _log(MessageReceived(sequence=0, at=1.0, position=1, payload="1"))
    with pytest.raises(CorruptLogError, match="has no deadline"):
        _log(
            ReceiveStarted(sequence=0, at=1.0, position=1, topic="a"),
            ReceiveTimedOut(sequence=0, at=1.0, position=1),
        )
    with pytest.raises(CorruptLogError, match="no child runs"):
        _log(ChildEnded(sequence=0, at=1.0, position=1, status="completed"))


def test_receive_decisions() -> None:
    """A new receive is recorded; a recorded one delivers, times out, or takes a message;
    another operation or topic at its identity is a mismatch."""
    empty = _log()
    assert next_receive_action(
        empty, "1", topic="a", deadline=5.0, now=0.0, cancel_pending=False
    ) == RecordReceive(5.0)
    assert next_receive_action(
        empty, "1", topic="a", deadline=5.0, now=0.0, cancel_pending=True
    ) == Cancel(record=False)
    waiting = _log(ReceiveStarted(sequence=0, at=1.0, position=1, topic="a", deadline=5.0))
    assert next_receive_action(
        waiting, "1", topic="a", deadline=99.0, now=1.0, cancel_pending=False
    ) == Take(5.0, expired=False)
    assert next_receive_action(
        waiting, "1", topic="a", deadline=99.0, now=6.0, cancel_pending=False
    ) == Take(5.0, expired=True)
    assert next_receive_action(
        waiting, "1", topic="a", deadline=None, now=1.0, cancel_pending=True
    ) == Cancel(record=True)
    assert isinstance(
        next_receive_action(waiting, "1", topic="b", deadline=None, now=1.0, cancel_pending=False),
        Mismatch,
    )
    got = _log(
        ReceiveStarted(sequence=0, at=1.0, position=1, topic="a"),
        MessageReceived(sequence=0, at=2.0, position=1, payload='"hi"'),
    )
    assert next_receive_action(
        got, "1", topic="a", deadline=None, now=9.0, cancel_pending=True
    ) == Deliver('"hi"')
    late = _log(
        ReceiveStarted(sequence=0, at=1.0, position=1, topic="a", deadline=2.0),
        ReceiveTimedOut(sequence=0, at=2.0, position=1),
    )
    assert (
        next_receive_action(late, "1", topic="a", deadline=None, now=9.0, cancel_pending=False)
        == TimedOut()
    )
    step = _log(StepStarted(sequence=0, at=1.0, position=1, step="s", attempt=1))
    mismatch = next_receive_action(
        step, "1", topic="a", deadline=None, now=1.0, cancel_pending=False
    )
    assert mismatch == Mismatch("step 's'", "a receive on topic 'a'")


def test_send_publish_and_child_decisions() -> None:
    """Recorded sends, publishes and children replay; others at their identity mismatch."""
    sent = MessageSent(sequence=0, at=1.0, position=1, target="t", topic="a", payload="1", key="k")
    state = _log(sent, ValuePublished(sequence=0, at=1.0, position=2, key="p", value="1"))
    recorded = next_send_action(state, "1", target="t", topic="a", cancel_pending=True)
    assert isinstance(recorded, Recorded)
    assert recorded.sent is not None
    assert send_confirmed(state, recorded.sent)  # the branch went on to operation 2
    assert not send_confirmed(_log(sent), sent)
    assert isinstance(
        next_send_action(state, "1", target="u", topic="a", cancel_pending=False), Mismatch
    )
    assert next_publish_action(state, "2", key="p", cancel_pending=False) == Recorded()
    assert isinstance(next_publish_action(state, "2", key="q", cancel_pending=False), Mismatch)
    assert next_publish_action(state, "3", key="q", cancel_pending=False) == Act()
    child = _log(ChildStarted(sequence=0, at=1.0, position=1, child="r/1", workflow="kid"))
    assert isinstance(
        next_child_start(child, "1", workflow="kid", child="r/1", cancel_pending=False), Recorded
    )
    assert isinstance(
        next_child_start(child, "1", workflow="other", child="r/1", cancel_pending=False), Mismatch
    )
