"""The command line shows where queued runs stand and starts runs on a queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aruntime._cli import run
from aruntime.events import RunStarted
from aruntime.store import RequestKind
from aruntime.store.sqlite import SqliteStore


async def _queued_run(path: Path) -> None:
    async with SqliteStore(path) as store:
        started = RunStarted(
            sequence=1,
            at=1.0,
            run_id="waits",
            workflow="cli.any",
            args="[[],{}]",
            queue="mail",
            priority=3,
            partition_key="tenant-7",
        )
        await store.append("waits", (started,), 0)


def test_runs_list_and_show_say_a_run_waits_for_its_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list says queued (name); show names the queue, priority, key and admission."""
    path = tmp_path / "runs.db"
    asyncio.run(_queued_run(path))
    assert run(["runs", "list", "--db", str(path)]) == 0
    listed = capsys.readouterr().out
    assert "queued (mail)" in listed
    assert run(["runs", "show", "waits", "--db", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "queue     mail (priority 3, partition 'tenant-7'), waiting" in shown


def test_runs_start_posts_a_start_with_its_placement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`runs start --queue --priority --partition-key` records them with the request."""
    path = tmp_path / "runs.db"
    asyncio.run(_queued_run(path))
    argv = ["runs", "start", "cli.any", "--db", str(path), "--run-id", "new", "--queue", "mail"]
    assert run([*argv, "--priority", "-1", "--partition-key", "t"]) == 0
    assert "on queue mail" in capsys.readouterr().out

    async def pending() -> list[tuple[str | None, int | None, str | None]]:
        async with SqliteStore(path) as store:
            found = await store.pending(kinds=(RequestKind.START,))
        return [(r.queue, r.priority, r.partition_key) for r in found]

    assert asyncio.run(pending()) == [("mail", -1, "t")]


def test_runs_start_refuses_a_priority_without_a_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A placement without a queue is a usage error that records nothing."""
    path = tmp_path / "runs.db"
    asyncio.run(_queued_run(path))
    assert run(["runs", "start", "cli.any", "--db", str(path), "--priority", "2"]) != 0
    assert "need a queue" in capsys.readouterr().err
