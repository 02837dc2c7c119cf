"""`aruntime runs send|read|fork` and what `runs show|list` say of messages and lineage."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import aruntime
from aruntime import NonRetryableError, Runtime, step, workflow
from aruntime._cli import run

broken = {"on": True}


@step(name="cli_messages.check")
async def check(answer: str) -> str:
    if broken["on"]:
        raise NonRetryableError("checker is broken")
    return answer.upper()


@workflow(name="cli_messages.approval")
async def approval() -> str:
    await aruntime.publish("stage", "waiting for approval")
    decision = await aruntime.receive("decision")
    await aruntime.publish("stage", "checking")
    return await check(str(decision["answer"]))


@workflow(name="cli_messages.kid")
async def kid() -> int:
    return 7


@workflow(name="cli_messages.parent")
async def parent() -> int:
    return await aruntime.run_child(kid) + 1


async def cli(*argv: str | Path) -> int:
    """The command, on a thread of its own (it runs an event loop of its own)."""
    return await asyncio.to_thread(run, [str(a) for a in argv])


async def test_send_read_show_and_fork_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run waits for a message sent by `runs send`, fails, and its fork finishes."""
    broken["on"] = True
    db = tmp_path / "runs.db"
    async with Runtime(f"sqlite:///{db}", workflows=[approval, kid, parent]) as rt:
        handle = await rt.start(approval, run_id="ap")
        assert await cli("runs", "read", "ap", "stage", "--timeout", "10", "--db", db) == 0
        assert json.dumps("waiting for approval") in capsys.readouterr().out.splitlines()
        payload = '{"answer": "yes"}'
        code = await cli("runs", "send", "ap", "--topic", "decision", "--json", payload, "--db", db)
        assert code == 0
        with pytest.raises(aruntime.RunFailedError):
            await handle.result()
        capsys.readouterr()
        assert await cli("runs", "show", "ap", "--db", db) == 0
        shown = capsys.readouterr().out
        assert "MessageReceived" in shown
        assert "checking" in shown
        broken["on"] = False
        assert (
            await cli("runs", "fork", "ap", "--from-step", "4", "--run-id", "ap2", "--db", db) == 0
        )
        async with aruntime.Client(rt.store) as client:
            assert await client.handle("ap2").result(timeout=10) == "YES"
        capsys.readouterr()
        assert await cli("runs", "show", "ap2", "--db", db) == 0
        assert "forked    from ap at operation 4" in capsys.readouterr().out
        await (await rt.start(parent, run_id="family")).result()
    assert await cli("runs", "list", "--db", db) == 0
    listed = capsys.readouterr().out
    assert any(
        line.startswith("family/1") and line.rstrip().endswith("family")
        for line in listed.splitlines()
    )


async def test_runs_show_lists_messages_not_received_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Messages waiting for a run appear in `runs show`, and `send` refuses ended runs."""
    db = tmp_path / "runs.db"
    async with Runtime(f"sqlite:///{db}", workflows=[approval, kid]) as rt:
        await rt.start(approval, run_id="w")
        assert (
            await cli("runs", "send", "w", "--topic", "later", "--json", "[1, 2]", "--db", db) == 0
        )
        done = await rt.start(kid, run_id="k")
        await done.result()
    capsys.readouterr()
    assert await cli("runs", "show", "w", "--db", db) == 0
    shown = capsys.readouterr().out
    assert "messages not received yet" in shown
    assert "[1,2]" in shown
    assert await cli("runs", "send", "k", "--json", "1", "--db", db) == 1
    assert "has ended" in capsys.readouterr().err
    assert await cli("runs", "send", "nobody", "--json", "1", "--db", db) == 1
