"""Messages and published values: kept until received, received once, recorded in the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import STORES
from run_helpers import kinds, wait_until

import aruntime
from aruntime import (
    Client,
    ConfigError,
    RunEndedError,
    RunNotFoundError,
    RunStatus,
    Runtime,
    step,
    workflow,
)
from aruntime.errors import StoreError
from aruntime.events import CancelRequested
from aruntime.store import EventStore, MemoryStore, Request, RequestKind
from aruntime.testing import StoreWrapper, crash_run

calls: list[str] = []


@step
async def note(text: str) -> str:
    calls.append(text)
    return text


@workflow(name="messages_test.approval")
async def approval() -> str:
    await aruntime.publish("stage", "waiting")
    decision = await aruntime.receive("decision")
    await aruntime.publish("stage", "decided")
    return str(decision["answer"])


@workflow(name="messages_test.two")
async def two() -> list[Any]:
    first = await aruntime.receive()
    second = await aruntime.receive()
    return [first, second]


@workflow(name="messages_test.with_timeout")
async def with_timeout(seconds: float) -> str:
    try:
        return str(await aruntime.receive("t", timeout=seconds))
    except TimeoutError:
        return "timed out"


@workflow(name="messages_test.sender")
async def sender(target: str) -> str:
    await aruntime.send(target, {"answer": "yes"}, topic="decision")
    return await note("sent")


@workflow(name="messages_test.send_refused")
async def send_refused(target: str) -> str:
    try:
        await aruntime.send(target, 1)
    except RunNotFoundError:
        return "not found"
    except RunEndedError:
        return "ended"
    return "sent"


@workflow(name="messages_test.noop")
async def noop() -> int:
    return 1


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@pytest.fixture(params=sorted(STORES))
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime on each store backend."""
    store: EventStore = STORES[request.param](tmp_path)
    async with Runtime(store) as runtime:
        yield runtime
    await store.aclose()


async def test_a_message_sent_before_the_run_waits_is_kept(rt: Runtime) -> None:
    """A message sent before the workflow receives is delivered, not lost."""
    async with Client(rt.store) as client:
        handle = await client.start(two, run_id="early")
        await client.send("early", "a")
        await client.send("early", "b")
        assert await handle.result(timeout=10) == ["a", "b"]
        assert await client.messages("early") == []


async def test_a_receive_waits_for_a_message_sent_later(rt: Runtime) -> None:
    """A run waiting on a topic gets the message sent to it, and the log records it."""
    async with Client(rt.store) as client:
        handle = await client.start(approval, run_id="ap")
        assert await client.read("ap", "stage", timeout=10) == "waiting"
        await client.send("ap", {"answer": "approved"}, topic="decision")
        assert await handle.result(timeout=10) == "approved"
        assert await client.read("ap", "stage") == "decided"
    log = await rt.store.events_for("ap")
    assert "MessageReceived" in kinds(log)
    assert await rt.store.pending(run_id="ap") == []


async def test_messages_of_other_topics_wait_for_their_receive(rt: Runtime) -> None:
    """A message on another topic is not delivered to a receive of this one."""
    async with Client(rt.store) as client:
        handle = await client.start(approval, run_id="topics")
        await client.send("topics", {"answer": "wrong topic"}, topic="other")
        await client.send("topics", {"answer": "right"}, topic="decision")
        assert await handle.result(timeout=10) == "right"
        left = await client.messages("topics")
        assert [m.topic for m in left] == ["other"]


async def test_same_idempotency_key_is_delivered_once(rt: Runtime) -> None:
    """Two sends with one idempotency key reach the run as one message."""
    async with Client(rt.store) as client:
        await client.send((await client.start(two, run_id="dup")).run_id, "x", idempotency_key="k")
        await client.send("dup", "x", idempotency_key="k")
        await client.send("dup", "y")
        assert await client.handle("dup").result(timeout=10) == ["x", "y"]


async def test_duplicate_key_after_consumption_is_dropped(rt: Runtime) -> None:
    """A message whose key the run already received is dropped, not delivered twice."""
    async with Client(rt.store) as client:
        await client.start(two, run_id="dup2")
        await client.send("dup2", "x", idempotency_key="k")
        await wait_until(
            lambda: _has(rt.store, "dup2", "MessageReceived"),
        )
        await client.send("dup2", "x again", idempotency_key="k")
        await client.send("dup2", "y")
        assert await client.handle("dup2").result(timeout=10) == ["x", "y"]


async def _has(store: EventStore, run_id: str, kind: str) -> bool:
    return kind in kinds(await store.events_for(run_id))


async def test_send_to_unknown_or_ended_run_is_refused(rt: Runtime) -> None:
    """Sending to a run that does not exist, or has ended, raises a typed error."""
    async with Client(rt.store) as client:
        with pytest.raises(RunNotFoundError):
            await client.send("nobody", 1)
        done = await client.start(noop, run_id="done")
        await done.result(timeout=10)
        with pytest.raises(RunEndedError):
            await client.send("done", 1)
        with pytest.raises(ConfigError):
            await client.send("done", 1, topic="")


async def test_receive_times_out_and_replay_keeps_the_timeout(tmp_path: Path) -> None:
    """A receive whose deadline passes raises TimeoutError; the log records it."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        handle = await rt.start(with_timeout, 0.05, run_id="to")
        assert await handle.result() == "timed out"
    assert kinds(await store.events_for("to"))[1:] == [
        "ReceiveStarted",
        "ReceiveTimedOut",
        "RunCompleted",
    ]


async def test_a_crash_while_waiting_keeps_the_recorded_deadline() -> None:
    """After a crash the receive waits only what is left of its recorded deadline."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        handle = await rt.start(with_timeout, 0.3, run_id="to2")
        await wait_until(lambda: _has(store, "to2", "ReceiveStarted"))
        before, after = await crash_run(rt, "to2")
        assert before.receives == after.receives
        assert await handle.result() == "timed out"
    started = [e for e in await store.events_for("to2") if type(e).__name__ == "ReceiveStarted"]
    assert len(started) == 1


async def test_replay_returns_the_received_payload_without_the_inbox() -> None:
    """A run replayed after a crash gets the payload from its log, not a new message."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(two, run_id="rp")
        await client.send("rp", "first")
        await wait_until(lambda: _has(store, "rp", "MessageReceived"))
        await crash_run(rt, "rp")
        await client.send("rp", "second")
        assert await handle.result() == ["first", "second"]


async def test_send_from_a_workflow_is_recorded_and_not_repeated(rt: Runtime) -> None:
    """A workflow's send reaches the target once, also when the sender replays."""
    async with Client(rt.store) as client:
        target = await client.start(approval, run_id="target")
        await client.read("target", "stage", timeout=10)
        assert await (await client.start(sender, "target", run_id="s")).result(timeout=10) == "sent"
        assert await target.result(timeout=10) == "yes"
    log = await rt.store.events_for("s")
    assert kinds(log)[1] == "MessageSent"


async def test_send_from_a_workflow_to_missing_and_ended_runs(rt: Runtime) -> None:
    """A refused send raises the same typed error on the first run and on replay."""
    missing = await rt.start(send_refused, "ghost", run_id="r1")
    assert await missing.result() == "not found"
    ended = await rt.start(noop, run_id="over")
    await ended.result()
    refused = await rt.start(send_refused, "over", run_id="r2")
    assert await refused.result() == "ended"


async def test_read_waits_for_the_first_value_and_times_out(rt: Runtime) -> None:
    """`Client.read` raises TimeoutError when nothing is published in time."""
    async with Client(rt.store) as client:
        await client.start(two, run_id="quiet")
        with pytest.raises(TimeoutError):
            await client.read("quiet", "stage", timeout=0.05)
        with pytest.raises(RunNotFoundError):
            await client.read("nobody", "stage", timeout=0.05)
        await client.send("quiet", 1)
        await client.send("quiet", 2)
        await client.handle("quiet").result(timeout=10)
        with pytest.raises(RunEndedError):
            await client.read("quiet", "stage")


async def test_published_history_stays_in_the_log() -> None:
    """Every published value is in the log; the state keeps the latest."""
    store = MemoryStore()
    async with Runtime(store) as rt, Client(store) as client:
        handle = await rt.start(approval, run_id="h")
        await client.send("h", {"answer": "ok"}, topic="decision")
        await handle.result()
        state = await client.state("h")
    assert state.published == {"stage": '"decided"'}
    assert kinds(await store.events_for("h")).count("ValuePublished") == 2


async def test_messages_wait_while_no_runtime_runs(tmp_path: Path) -> None:
    """A message sent while no runtime is open is delivered when one opens."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with Client(url) as client:
        handle = await client.start(two, run_id="offline")
        await client.send("offline", "a")
        await client.send("offline", "b")
        pending = await client.store.pending(run_id="offline")
        message = RequestKind.MESSAGE
        assert [r.kind for r in pending] == [RequestKind.START, message, message]
        async with Runtime(url):
            assert await handle.result(timeout=10) == ["a", "b"]
        assert (await client.state("offline")).status is RunStatus.COMPLETED


async def test_receive_outside_a_workflow_is_refused() -> None:
    """The vocabulary that needs a run says so outside one."""
    with pytest.raises(LookupError):
        await aruntime.receive()
    with pytest.raises(LookupError):
        await aruntime.publish("k", 1)


async def test_first_outside_a_workflow_behaves_like_asyncio() -> None:
    """`aruntime.first` outside a run returns the quickest result and cancels the rest."""

    async def slow() -> str:
        await asyncio.sleep(10)
        return "slow"

    async def fast() -> str:
        return "fast"

    assert await aruntime.first(slow(), fast()) == "fast"


@workflow(name="messages_test.pair")
async def pair() -> list[Any]:
    return list(await aruntime.gather(aruntime.receive(), aruntime.receive()))


@workflow(name="messages_test.cancellable")
async def cancellable() -> str:
    try:
        return str(await aruntime.receive())
    except asyncio.CancelledError:
        await note("cleaned up")
        raise


async def test_two_branches_receiving_at_once_each_get_one_message(rt: Runtime) -> None:
    """Concurrent receives on one topic share the messages, each delivered once."""
    async with Client(rt.store) as client:
        handle = await client.start(pair, run_id="pair")
        await wait_until(lambda: _count(rt.store, "pair", "ReceiveStarted", 2))
        await client.send("pair", "x")
        await client.send("pair", "y")
        assert sorted(await handle.result(timeout=10)) == ["x", "y"]
    assert kinds(await rt.store.events_for("pair")).count("MessageReceived") == 2


async def _count(store: EventStore, run_id: str, kind: str, n: int) -> bool:
    return kinds(await store.events_for(run_id)).count(kind) >= n


async def test_cancelling_a_run_that_waits_for_a_message(rt: Runtime) -> None:
    """The cancellation reaches the receive, is recorded there, and the cleanup runs."""
    handle = await rt.start(cancellable, run_id="cx")
    await wait_until(lambda: _has(rt.store, "cx", "ReceiveStarted"))
    await rt.cancel("cx", reason="no longer needed")
    with pytest.raises(aruntime.RunCancelledError):
        await handle.result()
    assert calls == ["cleaned up"]
    log = kinds(await rt.store.events_for("cx"))
    assert log[log.index("ReceiveStarted") + 1 :][:2] == [
        "CancelRequested",
        "OperationCancelled",
    ], log
    assert (await rt.state("cx")).receives["1"].cancelled


async def test_closing_the_runtime_while_a_receive_waits_records_nothing() -> None:
    """A shutdown is no cancellation: the next runtime goes on waiting, then receives."""
    store = MemoryStore()
    async with Runtime(store) as rt:
        await rt.start(two, run_id="closed")
        await wait_until(lambda: _has(store, "closed", "ReceiveStarted"))
    before = kinds(await store.events_for("closed"))
    assert "OperationCancelled" not in before
    async with Runtime(store) as rt, Client(store) as client:
        await client.send("closed", 1)
        await client.send("closed", 2)
        assert await client.handle("closed").result(timeout=10) == [1, 2]
    assert kinds(await store.events_for("closed")).count("ReceiveStarted") == 2


code = {"publish_instead": False}


@workflow(name="messages_test.changing")
async def changing() -> str:
    if code["publish_instead"]:
        await aruntime.publish("stage", "changed")
        return "changed"
    return str(await aruntime.receive("decision"))


async def test_another_operation_where_a_receive_was_recorded_parks_the_run() -> None:
    """Code that publishes where the log holds a receive is refused with a
    NonDeterminismError naming the identity, what was recorded and what was asked."""
    store = MemoryStore()
    code["publish_instead"] = False
    try:
        async with Runtime(store) as rt:
            await rt.start(changing, run_id="nd")
            await wait_until(lambda: _has(store, "nd", "ReceiveStarted"))
        code["publish_instead"] = True
        async with Runtime(store) as rt:
            with pytest.raises(aruntime.RunParkedError) as info:
                await rt.handle("nd").result()
    finally:
        code["publish_instead"] = False
    reason = info.value.reason
    assert reason.startswith("NonDeterminismError")
    assert "operation 1" in reason
    assert "a receive on topic 'decision'" in reason
    assert "a publish of 'stage'" in reason


class _LosesAPost(StoreWrapper):
    """Fails the first post of a message after recording nothing: as a crash between a
    send's record and its post."""

    def __init__(self, inner: EventStore) -> None:
        super().__init__(inner)
        self.failed = 0

    async def post(self, request: Request) -> int:
        if request.kind is RequestKind.MESSAGE and not self.failed:
            self.failed += 1
            raise StoreError("injected: the post did not reach the store")
        return await super().post(request)


async def test_a_send_whose_post_failed_is_posted_once_after_the_respawn() -> None:
    """The send is recorded first; its lost post is made again on replay, once."""
    store = _LosesAPost(MemoryStore())
    async with Runtime(store) as rt:
        target = await rt.start(two, run_id="t2")
        await wait_until(lambda: _has(store, "t2", "ReceiveStarted"))
        assert await (await rt.start(sender_twice, "t2", run_id="s2")).result() == "sent"
        assert await target.result() == [{"answer": "yes"}, {"answer": "again"}]
    assert store.failed == 1
    assert kinds(await store.events_for("s2")).count("MessageSent") == 2
    assert await store.pending() == []


@workflow(name="messages_test.sender_twice")
async def sender_twice(target: str) -> str:
    await aruntime.send(target, {"answer": "yes"})
    await aruntime.send(target, {"answer": "again"})
    return "sent"


async def test_a_cancel_from_the_inbox_names_its_request_in_the_log(rt: Runtime) -> None:
    """The cancellation a client asked for records which inbox request it applies."""
    async with Client(rt.store) as client:
        handle = await client.start(two, run_id="named")
        await wait_until(lambda: _has(rt.store, "named", "ReceiveStarted"))
        await client.cancel("named", reason="asked")
        with pytest.raises(aruntime.RunCancelledError):
            await handle.result(timeout=10)
    requested = [e for e in await rt.store.events_for("named") if isinstance(e, CancelRequested)]
    assert len(requested) == 1
    assert requested[0].request > 0
    assert await rt.store.pending(run_id="named") == []
