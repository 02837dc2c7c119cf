"""The public facade: a sorted `__all__` of importable names, and no heavy driver imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aruntime


def test_all_is_sorted_and_unique() -> None:
    """`aruntime.__all__` lists each public name once, in sorted order."""
    names = list(aruntime.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", aruntime.__all__)
def test_every_public_name_is_importable(name: str) -> None:
    """Each name in `__all__` can be imported from `aruntime`."""
    namespace: dict[str, object] = {}
    exec(f"from aruntime import {name}", namespace)
    assert namespace[name] is getattr(aruntime, name)


def test_all_holds_no_private_names() -> None:
    """Machinery stays in underscore modules and out of the public names."""
    assert [name for name in aruntime.__all__ if name.startswith("_")] == []


def test_star_import_gives_exactly_all() -> None:
    """`from aruntime import *` binds exactly the names of `__all__`."""
    namespace: dict[str, object] = {}
    exec("from aruntime import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == sorted(aruntime.__all__)


@pytest.mark.parametrize("driver", ["sqlite3", "asyncpg"])
def test_import_aruntime_does_not_import_database_drivers(driver: str) -> None:
    """A fresh interpreter that imports aruntime has not loaded the driver module."""
    script = f"import sys, aruntime; print({driver!r} in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
