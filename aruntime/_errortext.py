"""How an exception is named in the log: stable text, never the live object."""

from __future__ import annotations

import builtins

MAX_MESSAGE = 2000


def error_type(exc: BaseException) -> str:
    """`ValueError` for builtins, `package.module.Class` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins" and getattr(builtins, cls.__name__, None) is cls:
        return str(cls.__qualname__)
    if cls.__module__ == "aruntime.errors":
        return f"aruntime.{cls.__qualname__}"  # as users import it
    return f"{cls.__module__}.{cls.__qualname__}"


def error_message(exc: BaseException) -> str:
    """The exception's text, cut to a bounded length."""
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not lose the failure itself
        text = f"<unprintable {type(exc).__name__}>"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return text
