"""Child processes that file permissions bind, even when the tests run as root.

Root writes through file and directory permissions, so a read-only database or directory
is read-only only for the child: as root, the child runs under `setpriv` without the
capabilities that override permissions (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`,
`CAP_FOWNER`). A test skips when neither way makes permissions bind. A read-only mount
cannot be made here; to SQLite it is a read-only directory holding read-only files, which
`access(2)` reports the same way (`EROFS`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

_DROP = "--bounding-set=-dac_override,-dac_read_search,-fowner"


@functools.cache
def _prefix() -> tuple[str, ...] | None:
    """What runs a command without the permission override; None if nothing does."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return None
        prefix = (setpriv, _DROP, "--")
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("")
        probe.chmod(0o444)
        tried = subprocess.run(
            [*prefix, sys.executable, "-c", "import sys; open(sys.argv[1], 'a')", str(probe)],
            capture_output=True,
            check=False,
        )
    return prefix if tried.returncode != 0 else None


def run(argv: Sequence[str | Path], **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python *argv` without the permission override; skip the test if impossible."""
    prefix = _prefix()
    if prefix is None:
        pytest.skip("file permissions cannot be made to bind a child process here")
    return subprocess.run(
        [*prefix, sys.executable, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **env},
    )


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make files 0444 and directories 0555 for the block, and give them their modes back."""
    modes = [(path, path.stat().st_mode) for path in paths]
    try:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        yield
    finally:
        for path, mode in reversed(modes):
            path.chmod(mode)


def beside(path: Path) -> list[str]:
    """The names of the files in the database's directory, sorted."""
    return sorted(p.name for p in path.parent.iterdir())
