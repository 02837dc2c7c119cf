"""Queues with real processes on one SQLite file: the limit holds through a SIGKILL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from queue_jobs import PAIR, most_at_once, paired
from test_processes import START_TIMEOUT, Worker, url

from aruntime import Client

pytestmark = pytest.mark.slow


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ledger file the workers' step bodies write to."""
    path = tmp_path / "ledger.txt"
    monkeypatch.setenv("ARUNTIME_TEST_LEDGER", str(path))
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_a_killed_worker_leaves_the_queue_limit_intact(tmp_path: Path, ledger: Path) -> None:
    """Concurrency 2 holds in each worker's life; after a SIGKILL every run completes."""
    db = tmp_path / "runs.db"
    first = Worker(db, "--import", "queue_jobs")
    second: Worker | None = None
    try:
        async with Client(url(db)) as client:
            await first.ready(client)
            handles = [
                await client.start(paired, f"q{i}", 0.1, queue=PAIR.name, partition_key=f"t{i % 3}")
                for i in range(12)
            ]
            async with asyncio.timeout(START_TIMEOUT):
                while sum(line.startswith("end") for line in _lines(ledger)) < 3:  # noqa: ASYNC110 - the ledger is a file other processes write
                    await asyncio.sleep(0.01)
            first.kill()
            second = Worker(db, "--import", "queue_jobs")
            await second.ready(client)
            async with asyncio.timeout(START_TIMEOUT):
                results = [await handle.result() for handle in handles]
            assert results == [f"Q{i}" for i in range(12)]
            infos = await client.list()
    finally:
        for worker in (first, second):
            if worker is not None and worker.proc.poll() is None:
                worker.kill()
    lines = _lines(ledger)
    peaks = most_at_once(lines)
    assert set(peaks) == {first.proc.pid, second.proc.pid}
    assert max(peaks.values()) <= 2
    assert all(i.queue == PAIR.name and i.admitted_at is not None for i in infos)
    starts = sum(line.startswith("start") for line in lines)
    # A body cut off by the kill runs again (at least once): at most the two in flight.
    assert 12 <= starts <= 14
