"""Workflow names: the same however the module was started, and one function per name.

The `__main__` tests run real interpreters on module files written to a temporary
directory: a workflow there is started on a memory store, and the script prints the name
the log recorded, then the name that `import`ing the same file gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aruntime import ConfigError, Workflow, registered_workflows, sequence, step, workflow

JOBS = textwrap.dedent(
    """
    import asyncio
    import importlib

    from aruntime import MemoryStore, Runtime, workflow


    @workflow
    async def nightly() -> str:
        return "done"


    async def main() -> None:
        store = MemoryStore()
        async with Runtime(store) as rt:
            await (await rt.start(nightly, run_id="n")).result()
        print("name", (await store.events_for("n"))[0].workflow)


    if __name__ == "__main__":
        asyncio.run(main())
        # What a worker records: the same file imported under its importable name.
        print("name", importlib.import_module(IMPORTED).nightly.name)
    """
)


def _write(path: Path, imported: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"IMPORTED = {imported!r}\n{JOBS}")


def _names(cwd: Path, *argv: str) -> list[str]:
    """Run `python *argv` in `cwd`, which a worker would import from; the recorded name
    and the imported one."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # structlog's default configuration (this script sets none) logs to stdout too.
    return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("name ")]


def test_script_run_as_main_records_its_file_stem(tmp_path: Path) -> None:
    """`python jobs.py` records `jobs.nightly`, the name `import jobs` gives."""
    _write(tmp_path / "jobs.py", "jobs")
    assert _names(tmp_path, "jobs.py") == ["jobs.nightly", "jobs.nightly"]


def test_script_run_from_another_directory_records_its_file_stem(tmp_path: Path) -> None:
    """The stem does not depend on the working directory or the path typed."""
    _write(tmp_path / "app" / "jobs.py", "jobs")
    assert _names(tmp_path, str(tmp_path / "app" / "jobs.py")) == ["jobs.nightly"] * 2


def test_module_run_with_dash_m_records_its_module_name(tmp_path: Path) -> None:
    """`python -m pkg.jobs` records `pkg.jobs.nightly`."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    _write(tmp_path / "pkg" / "jobs.py", "pkg.jobs")
    assert _names(tmp_path, "-m", "pkg.jobs") == ["pkg.jobs.nightly"] * 2


@pytest.mark.parametrize(
    "argv",
    [["-m", "pkg"], ["pkg"], ["pkg/__main__.py"]],
    ids=["dash-m", "directory", "file"],
)
def test_package_main_records_the_same_name_however_started(
    tmp_path: Path, argv: list[str]
) -> None:
    """A package's `__main__.py` is `pkg.__main__`, as `import pkg.__main__` makes it."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    _write(tmp_path / "pkg" / "__main__.py", "pkg.__main__")
    assert _names(tmp_path, *argv) == ["pkg.__main__.nightly"] * 2


@pytest.mark.parametrize("argv", [["-m", "a.b"], ["a/b/__main__.py"]], ids=["dash-m", "file"])
def test_nested_package_main_records_its_dotted_name(tmp_path: Path, argv: list[str]) -> None:
    """A `__main__.py` in a package in a package is `a.b.__main__`."""
    for package in (tmp_path / "a", tmp_path / "a" / "b"):
        package.mkdir()
        (package / "__init__.py").write_text("")
    _write(tmp_path / "a" / "b" / "__main__.py", "a.b.__main__")
    assert _names(tmp_path, *argv) == ["a.b.__main__.nightly"] * 2


async def _body() -> None:
    return None


def _declare(name: str, qualname: str, module: str = __name__) -> Workflow[..., Any]:
    """Register a fresh function object with the given origin under `name`."""

    async def fn() -> None:
        return None

    fn.__qualname__ = qualname
    fn.__module__ = module
    return workflow(name=name)(fn)


def test_two_functions_under_one_name_is_a_config_error_naming_both() -> None:
    """A second function under a taken name is refused; the first stays registered."""
    first = _declare("test_names.clash", "first")
    with pytest.raises(ConfigError) as caught:
        _declare("test_names.clash", "second")
    message = str(caught.value)
    assert f"{__name__}.first" in message
    assert f"{__name__}.second" in message
    assert registered_workflows()["test_names.clash"] is first


def test_same_qualname_in_another_module_is_another_function() -> None:
    """The module is part of a function's identity."""
    _declare("test_names.modules", "handler", module="billing")
    with pytest.raises(ConfigError, match=r"billing\.handler.*shipping\.handler"):
        _declare("test_names.modules", "handler", module="shipping")


def test_same_function_declared_again_replaces_the_earlier_declaration() -> None:
    """Same module and qualified name (a reload, a nested declaration run twice) replaces."""
    _declare("test_names.again", "wf")
    again = _declare("test_names.again", "wf")
    assert registered_workflows()["test_names.again"] is again


def test_file_run_as_main_and_imported_is_the_same_function(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`__main__` and `jobs` are one module when `__main__` is the file `jobs.py`."""
    main = type(sys)("__main__")
    main.__file__ = str(tmp_path / "jobs.py")
    monkeypatch.setitem(sys.modules, "__main__", main)
    as_main = _declare("test_names.main", "nightly", module="__main__")
    assert _declare("test_names.main", "nightly", module="jobs") is not as_main
    with pytest.raises(ConfigError, match=r"jobs\.nightly.*other\.nightly"):
        _declare("test_names.main", "nightly", module="other")


def test_default_name_of_an_interactive_main_stays_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a file or a spec (`python -c`, a REPL) there is no other name to give."""
    monkeypatch.setitem(sys.modules, "__main__", type(sys)("__main__"))

    async def repl() -> None:
        return None

    repl.__module__ = "__main__"
    assert workflow(repl).name == f"__main__.{repl.__qualname__}"


def test_sequence_declared_twice_in_one_module_replaces() -> None:
    """`sequence(name, ...)` called again by the same module replaces its earlier chain."""
    add = step(name="test_names.add")(_add_one)
    sequence("test_names.chain", [add])
    second = sequence("test_names.chain", [add, add])
    assert registered_workflows()["test_names.chain"] is second


def test_sequence_and_a_function_under_one_name_clash() -> None:
    """A sequence cannot silently replace a function of the same workflow name."""
    _declare("test_names.seq_clash", "job")
    with pytest.raises(ConfigError, match=r"test_names\.job.*test_names\.seq_clash"):
        sequence("test_names.seq_clash", [_add_one])


async def _add_one(x: int) -> int:
    return x + 1


def test_empty_workflow_name_is_a_config_error() -> None:
    """`@workflow(name="")` is refused, not silently given the default name."""
    with pytest.raises(ConfigError, match="non-empty"):
        workflow(name="")(_body)
