"""The store contract: every backend keeps these promises (run with `-k memory`, `-k sqlite`,
`-k postgres`)."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import msgspec
import pytest
from pg_helpers import PG_URL, run_aside
from sqlite_helpers import raw

from aruntime.errors import (
    ConcurrencyError,
    ConfigError,
    CorruptLogError,
    RunActiveError,
    RunNotFoundError,
    StoreCorruptError,
)
from aruntime.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from aruntime.state import RunStatus
from aruntime.store import EventStore, MemoryStore, OwnerInfo, Request, RequestKind
from aruntime.store.postgres import PostgresStore
from aruntime.store.sqlite import SqliteStore


def started(run_id: str, at: float = 1.0, workflow: str = "flow") -> RunStarted:
    return RunStarted(sequence=1, at=at, run_id=run_id, workflow=workflow, args="[[],{}]")


def step(sequence: int, position: int = 1, at: float = 2.0) -> StepStarted:
    return StepStarted(sequence=sequence, at=at, position=position, step="s", attempt=1)


def every_event_type(run_id: str) -> list[Event]:
    """A valid log that holds each event type but RunFailed, and every field's variants."""
    return [
        started(run_id),
        StepStarted(sequence=2, at=2.5, position=1, step="charge", attempt=1),
        StepFailed(
            sequence=3,
            at=3.25,
            position=1,
            step="charge",
            attempt=1,
            error_type="builtins.ValueError",
            error_message="card declined",
            retry_at=4.125,
        ),
        StepStarted(sequence=4, at=4.5, position=1, step="charge", attempt=2),
        StepCompleted(
            sequence=5, at=5.0, position=1, step="charge", attempt=2, result='{"ok":true}'
        ),
        StepStarted(sequence=6, at=6.0, position=2, step="ship", attempt=1),
        StepFailed(
            sequence=7,
            at=7.0,
            position=2,
            step="ship",
            attempt=1,
            error_type="aruntime.NonRetryableError",
            error_message="",
            retry_at=None,
        ),
        RunCompleted(sequence=8, at=8.0, result="null"),
    ]


def change_behind_the_stores_back(
    store: EventStore, run_id: str, sequence: int, old: str, new: str
) -> None:
    """Change the text `old` to `new` inside a stored event, as damage would, unseen by
    the store: a field of the kept object in memory, the row's JSON text in SQLite."""
    if isinstance(store, MemoryStore):
        event = store._rows[run_id].log[sequence - 1]
        field = next(f for f in event.__struct_fields__ if getattr(event, f) == old)
        msgspec.structs.force_setattr(event, field, new)
    elif isinstance(store, SqliteStore):
        with raw(store.path) as conn:
            changed = conn.execute(
                "UPDATE events SET data = replace(data, ?, ?) WHERE run_id = ? AND sequence = ?",
                (old, new, run_id, sequence),
            )
            assert changed.rowcount == 1
    elif isinstance(store, PostgresStore):
        run_aside(_damage_postgres(store, run_id, sequence, old, new))
    else:
        raise AssertionError(f"no way to damage a {type(store).__name__}")


async def _damage_postgres(
    store: PostgresStore, run_id: str, sequence: int, old: str, new: str
) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        changed = await conn.execute(
            f"UPDATE {store.schema}.events SET data = replace(data, $1, $2) "
            "WHERE run_id = $3 AND sequence = $4",
            old,
            new,
            run_id,
            sequence,
        )
        assert changed == "UPDATE 1"
    finally:
        await conn.close()


async def new_run(store: EventStore, run_id: str, steps: int = 0, at: float = 1.0) -> None:
    """Start `run_id` and append `steps` StepStarted events, one append each."""
    await store.append(run_id, [started(run_id, at=at)], 0)
    for sequence in range(2, steps + 2):
        await store.append(run_id, [step(sequence, position=sequence - 1)], sequence - 1)


async def test_every_event_type_reads_back_field_for_field(store: EventStore) -> None:
    """Each event type comes back equal, field for field, to what was appended."""
    log = every_event_type("r")
    failed: list[Event] = [
        started("f"),
        RunFailed(sequence=2, at=9.5, error_type="E", error_message="m"),
    ]
    await store.append("r", log, 0)
    await store.append("f", failed, 0)
    assert await store.events_for("r") == log
    assert await store.events_for("f") == failed
    assert [type(e) for e in await store.events_for("r")] == [type(e) for e in log]


async def test_sequences_stay_dense_over_many_appends(store: EventStore) -> None:
    """A log appended in many batches reads back numbered 1, 2, 3, ... without gaps."""
    await new_run(store, "r", steps=5)
    await store.append("r", [step(7, position=6), step(8, position=7)], 6)
    assert [e.sequence for e in await store.events_for("r")] == list(range(1, 9))


async def test_events_for_after_returns_only_later_events(store: EventStore) -> None:
    """`after=n` returns the events with sequence above n, and nothing past the end."""
    await new_run(store, "r", steps=4)
    assert [e.sequence for e in await store.events_for("r", after=2)] == [3, 4, 5]
    assert await store.events_for("r", after=5) == []


async def test_events_for_unknown_run_is_empty(store: EventStore) -> None:
    """Reading a run that does not exist gives an empty list."""
    assert await store.events_for("nobody") == []


async def test_stale_expected_sequence_appends_nothing(store: EventStore) -> None:
    """An append expecting an older end of log raises ConcurrencyError and writes nothing."""
    await new_run(store, "r", steps=2)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("r", [step(3, position=3)], 2)
    assert (caught.value.run_id, caught.value.expected, caught.value.actual) == ("r", 2, 3)
    assert len(await store.events_for("r")) == 3
    info = await store.get_run("r")
    assert info is not None
    assert info.version == 3


async def test_expected_sequence_past_the_end_is_stale(store: EventStore) -> None:
    """An append expecting a longer log than there is raises ConcurrencyError."""
    await new_run(store, "r")
    with pytest.raises(ConcurrencyError):
        await store.append("r", [step(6)], 5)
    assert len(await store.events_for("r")) == 1


async def test_starting_an_existing_run_again_is_stale(store: EventStore) -> None:
    """A second log start for a run id that exists raises ConcurrencyError."""
    await new_run(store, "r", steps=1)
    with pytest.raises(ConcurrencyError):
        await store.append("r", [started("r", workflow="other")], 0)
    info = await store.get_run("r")
    assert info is not None
    assert info.workflow == "flow"


async def test_batch_numbered_out_of_order_is_corrupt(store: EventStore) -> None:
    """A batch whose sequences do not follow the expected one raises CorruptLogError."""
    await new_run(store, "r")
    with pytest.raises(CorruptLogError):
        await store.append("r", [step(2), step(4, position=2)], 1)
    assert len(await store.events_for("r")) == 1


async def test_log_not_beginning_with_run_started_is_corrupt(store: EventStore) -> None:
    """A new log that starts with anything but RunStarted raises CorruptLogError."""
    with pytest.raises(CorruptLogError):
        await store.append("r", [step(1)], 0)
    assert await store.get_run("r") is None


async def test_run_started_for_another_run_id_is_corrupt(store: EventStore) -> None:
    """A RunStarted naming another run than the one appended to raises CorruptLogError."""
    with pytest.raises(CorruptLogError):
        await store.append("r", [started("s")], 0)
    assert await store.events_for("r") == []


async def test_empty_batch_is_corrupt(store: EventStore) -> None:
    """Appending no events raises CorruptLogError."""
    await new_run(store, "r")
    with pytest.raises(CorruptLogError):
        await store.append("r", [], 1)


async def test_multi_event_batch_lands_whole(store: EventStore) -> None:
    """All events of one append are in the log, and the index version is the last one."""
    batch: list[Event] = [started("r"), step(2), step(3, position=2), step(4, position=3)]
    await store.append("r", batch, 0)
    assert await store.events_for("r") == batch
    info = await store.get_run("r")
    assert info is not None
    assert info.version == 4


async def test_index_row_describes_a_new_run(store: EventStore) -> None:
    """After RunStarted the index names the workflow, is running, at version 1."""
    await store.append("r", [started("r", at=10.0, workflow="billing")], 0)
    info = await store.get_run("r")
    assert info is not None
    assert (info.run_id, info.workflow, info.status, info.version) == (
        "r",
        "billing",
        RunStatus.RUNNING,
        1,
    )
    assert (info.created_at, info.updated_at, info.parked) == (10.0, 10.0, False)


async def test_index_follows_version_and_update_time(store: EventStore) -> None:
    """Each append moves the index to the last event's sequence and time."""
    await new_run(store, "r", at=1.0)
    await store.append("r", [step(2, at=7.5)], 1)
    info = await store.get_run("r")
    assert info is not None
    assert (info.version, info.created_at, info.updated_at) == (2, 1.0, 7.5)


async def test_index_status_becomes_completed(store: EventStore) -> None:
    """RunCompleted makes the index status completed."""
    await new_run(store, "r", steps=1)
    await store.append("r", [RunCompleted(sequence=3, at=3.0, result="1")], 2)
    info = await store.get_run("r")
    assert info is not None
    assert (info.status, info.version) == (RunStatus.COMPLETED, 3)


async def test_index_status_becomes_failed(store: EventStore) -> None:
    """RunFailed makes the index status failed."""
    await new_run(store, "r")
    await store.append("r", [RunFailed(sequence=2, at=2.0, error_type="E", error_message="")], 1)
    info = await store.get_run("r")
    assert info is not None
    assert info.status is RunStatus.FAILED


async def test_get_run_of_unknown_run_is_none(store: EventStore) -> None:
    """The index has no row for a run that was never started."""
    assert await store.get_run("nobody") is None


async def test_list_runs_filters_by_status(store: EventStore) -> None:
    """`status=` keeps only the runs whose log ends in that status."""
    await new_run(store, "a", at=1.0)
    await new_run(store, "b", at=2.0)
    await new_run(store, "c", at=3.0)
    await store.append("b", [RunCompleted(sequence=2, at=4.0, result="1")], 1)
    running = await store.list_runs(status=RunStatus.RUNNING)
    completed = await store.list_runs(status=RunStatus.COMPLETED)
    assert [info.run_id for info in running] == ["a", "c"]
    assert [info.run_id for info in completed] == ["b"]
    assert await store.list_runs(status=RunStatus.FAILED) == []


async def test_list_runs_filters_by_parked(store: EventStore) -> None:
    """`parked=` keeps only the parked runs, or only the others."""
    for at, run_id in enumerate("abc"):
        await new_run(store, run_id, at=float(at))
    await store.park("b", "restart budget exhausted")
    assert [info.run_id for info in await store.list_runs(parked=True)] == ["b"]
    assert [info.run_id for info in await store.list_runs(parked=False)] == ["a", "c"]
    filtered = await store.list_runs(status=RunStatus.RUNNING, parked=False)
    assert [info.run_id for info in filtered] == ["a", "c"]


async def test_list_runs_returns_oldest_first_up_to_limit(store: EventStore) -> None:
    """`limit=` keeps the first runs in creation order."""
    for at, run_id in enumerate(["d", "b", "c", "a"]):
        await new_run(store, run_id, at=float(at))
    assert [info.run_id for info in await store.list_runs()] == ["d", "b", "c", "a"]
    assert [info.run_id for info in await store.list_runs(limit=2)] == ["d", "b"]
    assert await store.list_runs(limit=0) == []


async def test_park_and_unpark_touch_the_index_only(store: EventStore) -> None:
    """Parking sets and unparking clears the reason; the log and version stay as they were."""
    await new_run(store, "r", steps=2)
    before = await store.events_for("r")
    await store.park("r", "NonDeterminismError at position 2")
    parked = await store.get_run("r")
    assert parked is not None
    assert (parked.parked_reason, parked.version) == ("NonDeterminismError at position 2", 3)
    assert await store.events_for("r") == before
    await store.unpark("r")
    unparked = await store.get_run("r")
    assert unparked is not None
    assert (unparked.parked, unparked.version) == (False, 3)


async def test_parked_reason_survives_later_appends(store: EventStore) -> None:
    """An append to a parked run leaves the parked reason alone."""
    await new_run(store, "r")
    await store.park("r", "why")
    await store.append("r", [step(2)], 1)
    info = await store.get_run("r")
    assert info is not None
    assert (info.parked_reason, info.version) == ("why", 2)


async def test_park_of_unknown_run_raises_run_not_found(store: EventStore) -> None:
    """Parking a run that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await store.park("nobody", "why")


async def test_unpark_of_unknown_run_raises_run_not_found(store: EventStore) -> None:
    """Unparking a run that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await store.unpark("nobody")


async def test_concurrent_appenders_to_many_runs_all_land(store: EventStore) -> None:
    """Many tasks appending to their own runs at once all get complete, dense logs."""
    runs, steps = 60, 8
    await asyncio.gather(*(new_run(store, f"run-{i}", steps=steps) for i in range(runs)))
    for i in range(runs):
        log = await store.events_for(f"run-{i}")
        assert [e.sequence for e in log] == list(range(1, steps + 2))
    assert len(await store.list_runs()) == runs


async def test_same_expected_sequence_from_two_writers_lets_one_win(store: EventStore) -> None:
    """Two concurrent appends expecting the same end of log: one lands, one is stale."""
    await new_run(store, "r")
    first = StepStarted(sequence=2, at=2.0, position=1, step="first", attempt=1)
    second = StepStarted(sequence=2, at=2.0, position=1, step="second", attempt=1)
    outcomes = await asyncio.gather(
        store.append("r", [first], 1), store.append("r", [second], 1), return_exceptions=True
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], ConcurrencyError)
    winner = first if outcomes[0] is None else second
    assert (await store.events_for("r"))[1:] == [winner]


async def test_unicode_text_round_trips(store: EventStore) -> None:
    """Non-ASCII run ids and payloads, a NUL and a lone surrogate, read back unchanged."""
    run_id = "заказ/42 🚀 'x'; DROP TABLE events;--"
    log: list[Event] = [
        RunStarted(sequence=1, at=1.0, run_id=run_id, workflow="流程", args='["é\\u0000"]'),
        StepStarted(sequence=2, at=2.0, position=1, step="stęp\x00", attempt=1),
        StepFailed(
            sequence=3,
            at=3.0,
            position=1,
            step="stęp\x00",
            attempt=1,
            error_type="OSError",
            error_message="no such file: b'\udcff.txt' 💥",
            retry_at=None,
        ),
    ]
    await store.append(run_id, log, 0)
    assert await store.events_for(run_id) == log
    info = await store.get_run(run_id)
    assert info is not None
    assert info.workflow == "流程"


async def test_large_payload_round_trips(store: EventStore) -> None:
    """A result of several megabytes reads back unchanged."""
    result = '"' + "x" * 3_000_000 + '"'
    await new_run(store, "r", steps=1)
    completed = StepCompleted(sequence=3, at=3.0, position=1, step="s", attempt=1, result=result)
    await store.append("r", [completed], 2)
    assert (await store.events_for("r", after=2)) == [completed]


async def test_event_changed_after_append_is_corrupt_on_read(store: EventStore) -> None:
    """A stored event that changed after its append raises StoreCorruptError naming the run
    and the sequence; the events after it still read."""
    await new_run(store, "r", steps=1)
    completed = StepCompleted(sequence=3, at=3.0, position=1, step="s", attempt=1, result="1234")
    await store.append("r", [completed, step(4, position=2)], 2)
    change_behind_the_stores_back(store, "r", 3, "1234", "9234")
    with pytest.raises(StoreCorruptError, match="event 3 is damaged") as caught:
        await store.events_for("r")
    assert caught.value.run_id == "r"
    assert await store.events_for("r", after=3) == [step(4, position=2)]


# -- the inbox, removal of ended runs, the change counter ------------------------------


def start_request(run_id: str, at: float = 1.0) -> Request:
    return Request(
        kind=RequestKind.START, run_id=run_id, at=at, workflow="flow", args="[[1],{}]", timeout=9.5
    )


async def test_posted_requests_come_back_in_order_with_their_fields(store: EventStore) -> None:
    """`pending` returns every posted request, in posting order, field for field."""
    posted = [
        start_request("a"),
        Request(kind=RequestKind.CANCEL, run_id="a", at=2.0, reason="no longer wanted ✓"),
        Request(kind=RequestKind.RESUME, run_id="b", at=3.0),
    ]
    ids = [await store.post(request) for request in posted]
    assert ids == sorted(ids)
    pending = await store.pending()
    assert [r.id for r in pending] == ids
    assert [dataclasses.replace(r, id=0) for r in pending] == posted


async def test_pending_filters_by_run_and_limit(store: EventStore) -> None:
    """`pending(run_id=...)` keeps one run's requests; `limit` the first ones."""
    for run_id in ("a", "b", "a"):
        await store.post(start_request(run_id))
    assert [r.run_id for r in await store.pending(run_id="a")] == ["a", "a"]
    assert [r.run_id for r in await store.pending(limit=2)] == ["a", "b"]


async def test_messages_forks_and_child_starts_keep_their_fields(store: EventStore) -> None:
    """The request kinds of messages and forks, and a child's start, read back field for
    field."""
    posted = [
        Request(
            kind=RequestKind.MESSAGE, run_id="a", at=1.0, topic="t", payload='{"x":1}', key="k"
        ),
        Request(kind=RequestKind.FORK, run_id="b", at=2.0, origin="a", from_step="2.1"),
        dataclasses.replace(start_request("a/1"), parent="a"),
    ]
    for request in posted:
        await store.post(request)
    assert [dataclasses.replace(r, id=0) for r in await store.pending()] == posted


async def test_pending_filters_by_kind_and_after_an_id(store: EventStore) -> None:
    """`pending(kinds=...)` keeps those kinds; `after` the requests posted after an id."""
    first = await store.post(start_request("a"))
    message = Request(kind=RequestKind.MESSAGE, run_id="a", at=1.0, topic="t", payload="1")
    second = await store.post(message)
    third = await store.post(dataclasses.replace(message, payload="2"))
    assert [r.id for r in await store.pending(kinds=(RequestKind.MESSAGE,))] == [second, third]
    assert [r.id for r in await store.pending(kinds=(RequestKind.START,))] == [first]
    assert [r.id for r in await store.pending(after=second)] == [third]
    assert await store.pending(run_id="a", kinds=(RequestKind.CANCEL,)) == []


async def test_consume_with_events_appends_and_removes_the_request(store: EventStore) -> None:
    """A request consumed with its events is gone exactly when they are in the log."""
    request_id = await store.post(start_request("a"))
    await store.consume(request_id, "a", [started("a")], 0)
    assert await store.pending() == []
    assert [type(e) for e in await store.events_for("a")] == [RunStarted]


async def test_refused_consume_leaves_the_request_pending(store: EventStore) -> None:
    """A stale append inside `consume` appends nothing and keeps the request."""
    await new_run(store, "a")
    request_id = await store.post(start_request("a"))
    with pytest.raises(ConcurrencyError):
        await store.consume(request_id, "a", [started("a")], 0)
    assert [r.id for r in await store.pending()] == [request_id]
    assert len(await store.events_for("a")) == 1


async def test_consume_without_events_removes_only_that_request(store: EventStore) -> None:
    """Consuming one request leaves the others; consuming it again is harmless."""
    first = await store.post(start_request("a"))
    second = await store.post(start_request("b"))
    await store.consume(first)
    await store.consume(first)
    assert [r.id for r in await store.pending()] == [second]


async def test_request_ids_are_never_given_twice(store: EventStore) -> None:
    """A request posted after the last one was consumed still comes after it."""
    first = await store.post(start_request("a"))
    await store.consume(first)
    assert await store.post(start_request("b")) > first


async def test_delete_run_removes_an_ended_run(store: EventStore) -> None:
    """An ended run's log and index row are gone after `delete_run`."""
    await new_run(store, "a")
    await store.append("a", [RunCompleted(sequence=2, at=2.0, result="1")], 1)
    await store.delete_run("a")
    assert await store.get_run("a") is None
    assert await store.events_for("a") == []


async def test_delete_run_refuses_an_active_run(store: EventStore) -> None:
    """A run that has not ended raises RunActiveError and keeps everything."""
    await new_run(store, "a", steps=1)
    with pytest.raises(RunActiveError, match="cancel it first") as caught:
        await store.delete_run("a")
    assert caught.value.run_id == "a"
    assert len(await store.events_for("a")) == 2


async def test_delete_run_of_unknown_run_raises_run_not_found(store: EventStore) -> None:
    """Deleting a run that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await store.delete_run("nope")


async def test_prune_removes_ended_runs_older_than_the_cutoff(store: EventStore) -> None:
    """Prune keeps active runs, recent ones and those of another status."""
    for run_id, end in (("old-done", RunCompleted), ("old-cancelled", RunCancelled)):
        await new_run(store, run_id)
        fields = {"result": "1"} if end is RunCompleted else {"reason": "x"}
        await store.append(run_id, [end(sequence=2, at=5.0, **fields)], 1)
    await new_run(store, "new-done")
    await store.append("new-done", [RunCompleted(sequence=2, at=50.0, result="1")], 1)
    await new_run(store, "active")
    assert await store.prune(older_than=10.0, status=RunStatus.COMPLETED) == 1
    assert await store.prune(older_than=10.0) == 1
    assert sorted(i.run_id for i in await store.list_runs()) == ["active", "new-done"]
    assert await store.events_for("old-done") == []


async def test_prune_refuses_a_status_of_active_runs(store: EventStore) -> None:
    """Prune removes ended runs only: asking for running ones is a ConfigError."""
    with pytest.raises(ConfigError, match="ended runs only"):
        await store.prune(older_than=10.0, status=RunStatus.RUNNING)


async def test_get_runs_returns_the_runs_that_exist(store: EventStore) -> None:
    """`get_runs` answers many ids at once and leaves out the unknown ones."""
    await new_run(store, "a")
    await new_run(store, "b")
    found = await store.get_runs(["a", "b", "nope", "a"])
    assert sorted(i.run_id for i in found) == ["a", "b"]


async def test_list_runs_filters_by_workflow_and_creation_time(store: EventStore) -> None:
    """`list_runs(workflow=, since=)` keeps one workflow's runs, created at or after since."""
    await store.append("a", [started("a", at=1.0, workflow="x")], 0)
    await store.append("b", [started("b", at=2.0, workflow="y")], 0)
    await store.append("c", [started("c", at=3.0, workflow="x")], 0)
    assert [i.run_id for i in await store.list_runs(workflow="x")] == ["a", "c"]
    assert [i.run_id for i in await store.list_runs(since=2.0)] == ["b", "c"]


async def test_owner_info_round_trips_and_clears(store: EventStore) -> None:
    """What the owner records of itself reads back until it clears it."""
    info = OwnerInfo(pid=os.getpid(), workflows=("a.flow", "b.flow"))
    await store.set_owner_info(info)
    assert await store.owner_info() == info
    await store.set_owner_info(None)
    assert await store.owner_info() is None


async def test_change_counter_moves_after_a_commit(store: EventStore) -> None:
    """A waiter sleeping on the counter wakes after an append, and not before."""
    # A watcher's first look may wake its waiter once: a spurious wake-up is allowed.
    await store.wait_changed(store.change_counter(), timeout=0.05)
    seen = store.change_counter()
    assert await store.wait_changed(seen, timeout=0.05) == seen
    waiter = asyncio.ensure_future(store.wait_changed(seen, timeout=5.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await new_run(store, "a")
    assert await asyncio.wait_for(waiter, 2.0) > seen


async def test_change_counter_moves_after_a_post(store: EventStore) -> None:
    """Posting a request wakes those who wait for a change."""
    seen = store.change_counter()
    waiter = asyncio.ensure_future(store.wait_changed(seen))
    await asyncio.sleep(0)
    await store.post(start_request("a"))
    assert await asyncio.wait_for(waiter, 2.0) > seen
