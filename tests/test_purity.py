"""The pure core imports no I/O, no clock, no randomness: checked on the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aruntime"

PURE_MODULES = ("events", "state", "retry", "errors", "_decide", "queues", "_admission")
"""The modules `replay` and `next_action` are made of (DESIGN.md §2.2, STYLE.md Layout), and
the queues' admission arithmetic."""

ALLOWED_STDLIB = frozenset(
    {"__future__", "dataclasses", "enum", "typing", "collections.abc", "math", "heapq"}
)
ALLOWED_CORE = frozenset(f"aruntime.{name}" for name in PURE_MODULES)
ALLOWED_THIRD_PARTY: dict[str, frozenset[str]] = {
    # The fold's states and the events are msgspec structs, for speed (two events are built
    # per step). msgspec does no I/O and reads no clock; it is allowed in these two only.
    "state": frozenset({"msgspec"}),
    "events": frozenset({"msgspec"}),
}

FORBIDDEN_BUILTINS = frozenset(
    {"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"}
)
"""Builtins that do I/O or import behind the import statements' back."""


def _tree(module: str) -> ast.Module:
    path = PACKAGE / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports_in(tree: ast.Module) -> set[str]:
    """Every module named by an import anywhere in `tree`, relative ones made absolute."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "" if not node.level else "aruntime" if node.level == 1 else "<outside>"
            if node.module:
                found.add(f"{base}.{node.module}" if base else node.module)
            else:
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _imports(module: str) -> set[str]:
    return _imports_in(_tree(module))


def _allowed(module: str) -> frozenset[str]:
    return ALLOWED_STDLIB | ALLOWED_CORE | ALLOWED_THIRD_PARTY.get(module, frozenset())


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_only_pure_modules(module: str) -> None:
    """Each pure-core module imports only pure stdlib modules and other pure-core modules."""
    assert _imports(module) - _allowed(module) == set()


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_calls_no_io_builtin(module: str) -> None:
    """No pure-core module calls open, print, input, exec, eval, compile or __import__."""
    called = {
        node.func.id
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert called & FORBIDDEN_BUILTINS == set()


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_keeps_no_global_statement(module: str) -> None:
    """No pure-core function rebinds module state, so the fold cannot carry hidden state."""
    tree = _tree(module)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global | ast.Nonlocal)]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time", "time"),
        ("import random", "random"),
        ("from datetime import datetime", "datetime"),
        ("import anyio", "anyio"),
        ("from structlog import get_logger", "structlog"),
        ("def f():\n    import asyncio", "asyncio"),
        ("import os.path", "os.path"),
        ("import sqlite3, math", "sqlite3"),
        ("from .store import memory", "aruntime.store"),
        ("from . import runtime", "aruntime.runtime"),
        ("from .. import elsewhere", "<outside>.elsewhere"),
        ("import aruntime._runner", "aruntime._runner"),
    ],
)
def test_import_check_flags_impure_imports(source: str, expected: str) -> None:
    """The checker itself sees clock, randomness, I/O, logging and higher-layer imports."""
    found = _imports_in(ast.parse(source))
    assert expected in found
    assert expected not in ALLOWED_STDLIB | ALLOWED_CORE
