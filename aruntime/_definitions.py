"""`@workflow`, `@step` and `sequence`: how users declare what a run is made of."""

from __future__ import annotations

import inspect
import math
import sys
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

import msgspec

from aruntime import _context
from aruntime.errors import ConfigError, SerializationError
from aruntime.retry import RetryPolicy

__all__ = [
    "Step",
    "Workflow",
    "check_seconds",
    "check_timeout",
    "registered_workflows",
    "sequence",
    "step",
    "workflow",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_RETRY = RetryPolicy()

_REGISTRY: dict[str, Workflow[..., Any]] = {}


def _module_name(module: str) -> str:
    """`module`, with `__main__` replaced by the name the module has when imported.

    A file run as a script or with `-m` is the module `__main__`, and the same file imported
    by a worker is `jobs`: names must not depend on which, or a worker refuses the runs
    that the script started. `python -m pkg.jobs` gives `pkg.jobs` (the spec's name);
    `python jobs.py` gives `jobs`, the file's stem. A package's `__main__.py` is
    `pkg.__main__` however it was started (`python -m pkg`, `python pkg`,
    `python pkg/__main__.py`), which is also what `import pkg.__main__` records.
    """
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    spec_name = getattr(spec, "name", None)
    if isinstance(spec_name, str) and spec_name != "__main__":
        return spec_name
    file = getattr(main, "__file__", None)
    if not isinstance(file, str):
        return module  # an interactive session or `python -c`: there is no other name
    path = Path(file).absolute()
    if path.stem != "__main__":
        return path.stem
    # `python pkg` or `python pkg/__main__.py`: the dotted name of the enclosing packages.
    folder = path.parent
    parts = [path.stem, folder.name]
    while folder.parent != folder and (folder.parent / "__init__.py").is_file():
        folder = folder.parent
        parts.append(folder.name)
    return ".".join(reversed(parts))


def _origin(fn: Callable[..., Any]) -> str:
    """Where `fn` was defined, as `module.qualname`, however its module was started; the
    default workflow name, and what tells two functions apart."""
    return f"{_module_name(fn.__module__)}.{fn.__qualname__}"


def _register(wf: Workflow[..., Any]) -> None:
    """Register `wf`; a different function under a name already taken is an error."""
    earlier = _REGISTRY.get(wf.name)
    if earlier is not None and _origin(earlier.fn) != _origin(wf.fn):
        raise ConfigError(
            f"workflow name {wf.name!r} is taken by {_origin(earlier.fn)}, so "
            f"{_origin(wf.fn)} cannot be registered under it; give one of them another "
            "name with @workflow(name=...)"
        )
    _REGISTRY[wf.name] = wf


def _check_coroutine_function(fn: object, what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"@{what} needs an `async def` function, got {fn!r}")


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ConfigError(f"a {what} name must be a non-empty string of at most 200 characters")
    return name


_UNRESOLVED: Any = object()


def _return_type(fn: Callable[..., Any]) -> Any:
    """The function's return annotation, resolved; None when it has none (or `Any`)."""
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that cannot be resolved: decode as JSON gives it
        return None
    if hint is Any:
        return None
    return hint


class Step(Generic[P, R]):
    """A coroutine function whose outcome is journaled when called inside a workflow.

    Called outside a workflow (or inside another step's body) it simply runs the body.
    """

    __slots__ = ("__dict__", "_result_type", "fn", "name", "retry", "timeout")

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]],
        *,
        name: str,
        retry: RetryPolicy,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self._result_type: Any = _UNRESOLVED
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def result_type(self) -> Any:
        """The annotated return type recorded results are decoded to (None: as JSON)."""
        if self._result_type is _UNRESOLVED:
            self._result_type = _return_type(self.fn)
        return self._result_type

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return _context.call_step(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<aruntime step {self.name!r}>"


class Workflow(Generic[P, R]):
    """An `async def` that calls steps; its code outside steps must be deterministic."""

    __slots__ = ("__dict__", "_params", "_result_type", "fn", "name")

    def __init__(self, fn: Callable[P, Awaitable[R]], *, name: str) -> None:
        self.fn = fn
        self.name = name
        self._result_type: Any = _UNRESOLVED
        self._params: Any = _UNRESOLVED
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def result_type(self) -> Any:
        """The annotated return type a run's result is decoded to (None: as JSON)."""
        if self._result_type is _UNRESOLVED:
            self._result_type = _return_type(self.fn)
        return self._result_type

    def typed_args(
        self, args: list[Any], kwargs: dict[str, Any], run_id: str
    ) -> tuple[list[Any], dict[str, Any]]:
        """Recorded arguments, each converted to its parameter's annotation as results are
        (a `datetime` comes back a `datetime`, a `tuple` a `tuple`); parameters without
        one, or annotated with a type the converter does not know, get what was decoded.

        Raises:
            SerializationError: the arguments do not fit the signature, or one cannot
                become its parameter's type.
        """
        if self._params is _UNRESOLVED:
            self._params = _typed_params(self.fn)
        params = self._params
        if params is None:
            return args, kwargs
        signature, hints = params
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SerializationError(
                f"the arguments do not fit {self.name}(): {exc}", run_id=run_id
            ) from None
        arguments = bound.arguments
        for name, value in arguments.items():
            hint = hints.get(name)
            if hint is None:
                continue
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = tuple(_to_type(run_id, name, v, hint) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                arguments[name] = {k: _to_type(run_id, k, v, hint) for k, v in value.items()}
            else:
                arguments[name] = _to_type(run_id, name, value, hint)
        return list(bound.args), dict(bound.kwargs)

    def __repr__(self) -> str:
        return f"<aruntime workflow {self.name!r}>"


def _typed_params(fn: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]] | None:
    """The signature of `fn` and its parameters' resolved annotations (not `Any`); None
    when no parameter has one, or they cannot be resolved."""
    try:
        hints = typing.get_type_hints(fn)
        signature = inspect.signature(fn)
    except Exception:  # an annotation that cannot be resolved: the arguments as decoded
        return None
    typed = {
        name: hint
        for name, hint in hints.items()
        if name in signature.parameters and hint is not Any
    }
    return (signature, typed) if typed else None


def _to_type(run_id: str, name: str, value: Any, hint: Any) -> Any:
    try:
        return msgspec.convert(value, hint, strict=False)
    except msgspec.ValidationError as exc:
        raise SerializationError(
            f"argument {name!r} = {value!r:.60} cannot become {_hint_name(hint)}: {exc}",
            run_id=run_id,
        ) from None
    except TypeError:  # a type the converter does not know: leave the value as decoded
        return value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or repr(hint)


def check_timeout(timeout: object) -> float | None:
    """A step's or a run's timeout: None, or a finite number of seconds > 0 (not a bool).

    Raises:
        ConfigError: anything else.
    """
    return check_seconds(timeout, "timeout", zero=False)


def check_seconds(value: object, what: str, *, zero: bool) -> float | None:
    """None, or `value` as a finite number of seconds, > 0 (>= 0 with `zero`), not a bool.

    Raises:
        ConfigError: anything else, naming `what`.
    """
    if value is None:
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    ):
        return float(value)
    bound = ">= 0" if zero else "> 0"
    raise ConfigError(f"{what} must be a finite number of seconds {bound}, got {value!r}")


@overload
def step(fn: Callable[P, Awaitable[R]], /) -> Step[P, R]: ...
@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None, timeout: float | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Step[P, R]]: ...
def step(
    fn: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Step[P, R] | Callable[[Callable[P, Awaitable[R]]], Step[P, R]]:
    """Declare a step: `@step` or `@step(name=..., retry=RetryPolicy(...), timeout=5.0)`.

    A recorded result is decoded to the function's return annotation when it has one
    (datetimes, tuples, dataclasses, msgspec Structs, enums ...), on the first run and on
    replay alike.

    Args:
        name: the step's identity in the log; defaults to the function's qualified name.
            Renaming a step changes its identity, so runs recorded before the change will
            stop with `NonDeterminismError`.
        retry: how failures are retried (default: `RetryPolicy()`, 3 attempts).
        timeout: seconds an attempt may run; a longer one is cancelled and recorded as a
            failed attempt with the error type `aruntime.StepTimeout`, and the retry
            policy decides what comes next.
    """
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigError(f"retry must be a RetryPolicy, got {retry!r}")
    check_timeout(timeout)

    def decorate(f: Callable[P, Awaitable[R]]) -> Step[P, R]:
        _check_coroutine_function(f, "step")
        return Step(
            f,
            name=_check_name(name, "step") if name is not None else f.__qualname__,
            retry=retry or DEFAULT_RETRY,
            timeout=None if timeout is None else float(timeout),
        )

    return decorate(fn) if fn is not None else decorate


@overload
def workflow(fn: Callable[P, Awaitable[R]], /) -> Workflow[P, R]: ...
@overload
def workflow(
    *, name: str | None = None
) -> Callable[[Callable[P, Awaitable[R]]], Workflow[P, R]]: ...
def workflow(
    fn: Callable[P, Awaitable[R]] | None = None, /, *, name: str | None = None
) -> Workflow[P, R] | Callable[[Callable[P, Awaitable[R]]], Workflow[P, R]]:
    """Declare and register a workflow: `@workflow` or `@workflow(name="checkout")`.

    The name is what the log records, so that a runtime in a later process can find the
    code again; it defaults to `module.qualname`, with the module's importable name even
    when it ran as `__main__` (`python jobs.py` records `jobs.nightly`, as does a worker
    that imports `jobs`).

    Raises:
        ConfigError: another function (another module or qualified name) is registered
            under the name already. The same function declared again (its module reloaded,
            its file both run and imported, a nested declaration run twice) replaces the
            earlier declaration.
    """

    def decorate(f: Callable[P, Awaitable[R]]) -> Workflow[P, R]:
        _check_coroutine_function(f, "workflow")
        wf = Workflow(f, name=_check_name(name, "workflow") if name is not None else _origin(f))
        _register(wf)
        return wf

    return decorate(fn) if fn is not None else decorate


def sequence(
    name: str, steps: Iterable[Step[..., Any] | Callable[..., Awaitable[Any]]]
) -> Workflow[..., Any]:
    """A workflow that runs `steps` in order, feeding each the previous step's result.

    The run's argument (if any) goes to the first step. Plain `async def` functions are
    made steps with the default retry policy.
    """
    _check_name(name, "workflow")
    chain = tuple(s if isinstance(s, Step) else step(s) for s in steps)
    if not chain:
        raise ConfigError(f"sequence {name!r} needs at least one step")

    async def run_sequence(value: Any = None) -> Any:
        for s in chain:
            value = await s(value)
        return value

    run_sequence.__qualname__ = name
    # Its origin is the caller's module, so that two modules' sequences of one name clash.
    run_sequence.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
    return workflow(name=name)(run_sequence)


def registered_workflows() -> dict[str, Workflow[..., Any]]:
    """Every workflow declared in this process, by name (a copy)."""
    return dict(_REGISTRY)


def lookup_workflow(name: str) -> Workflow[..., Any] | None:
    return _REGISTRY.get(name)
