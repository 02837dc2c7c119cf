"""The chaos test of the PostgreSQL fleet, sized for the suite (see `tests/chaos.py` for
what it does and checks, and for the longer version to run by hand)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from chaos import can_restart_postgres, run_chaos
from pg_helpers import require_postgres

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("ARUNTIME_CHAOS_SECONDS", "75"))


@pytest.mark.timeout(SECONDS + 300)
async def test_chaos_of_kills_freezes_and_restarts_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """Four workers under random SIGKILL, SIGSTOP/SIGCONT and a PostgreSQL restart: every
    run ends right, nothing is committed under a lost claim, every extra body is explained
    and no run waits unclaimed past a lease. `ARUNTIME_CHAOS_SEED` replays a seed."""
    require_postgres()
    seed = int(os.environ.get("ARUNTIME_CHAOS_SEED") or random.randrange(1 << 32))
    report = await run_chaos(seed, SECONDS, tmp_path, restarts=can_restart_postgres())
    print(report.summary())
    assert report.problems == [], f"{report.summary()}\n" + "\n".join(report.problems[:30])
    assert report.kills + report.freezes > 0
    assert report.takeovers > 0
