"""Retry policy: bounded exponential backoff as pure arithmetic.

The policy never sleeps and never draws randomness by itself: the runner passes in a
`random` callable (uniform in [0, 1)), so tests fix the jitter and the delays are exact.

The delay before attempt `n + 1`, after attempt `n` failed, is::

    base  = min(max_delay, initial_delay * backoff ** (n - 1))
    delay = min(max_delay, base * (1 + jitter * (2 * random() - 1)))

so jitter spreads retries by up to +/- `jitter` of the base delay and the cap always holds.
A step body that raises `RetryAfter(d)` gets `min(d, max_delay)` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from aruntime.errors import ConfigError, NonRetryableError, RetryAfter

__all__ = ["RetryPolicy", "outage_delay"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failed step is retried."""

    max_attempts: int = 3
    """Attempts in all, the first included; attempts lost to a crash count too."""
    initial_delay: float = 1.0
    """Seconds before the second attempt."""
    backoff: float = 2.0
    """Factor by which each further delay grows."""
    max_delay: float = 60.0
    """No delay is ever longer than this many seconds."""
    jitter: float = 0.1
    """Fraction (0 to 1) of each delay drawn at random, up or down."""
    non_retryable: tuple[type[BaseException], ...] = ()
    """Exception types that fail the step at once."""
    retry_if: Callable[[BaseException], bool] | None = None
    """If set, an error is retried only when this returns True."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.backoff, int | float) and math.isfinite(self.backoff)):
            raise ConfigError(f"backoff must be a finite number, got {self.backoff!r}")
        if self.backoff < 1:
            raise ConfigError(f"backoff must be >= 1, got {self.backoff!r}")
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter <= 1):
            raise ConfigError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if not isinstance(self.non_retryable, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.non_retryable
        ):
            raise ConfigError("non_retryable must be a tuple of exception types")

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt `attempt` (from 1), before jitter."""
        if attempt < 1:
            raise ConfigError(f"attempt counts from 1, got {attempt}")
        initial, cap = self.initial_delay, self.max_delay
        if initial == 0 or cap == 0:
            return 0.0
        if initial >= cap:
            return float(cap)
        if self.backoff == 1:
            return float(initial)
        # Compare exponents in log space, so that neither a huge attempt number nor a huge
        # cap/initial ratio overflows; int > float compares exactly, however large the int.
        exponent = attempt - 1
        if exponent >= (math.log(cap) - math.log(initial)) / math.log(self.backoff):
            return float(cap)
        try:
            return min(cap, initial * self.backoff**exponent)
        except OverflowError:  # backoff**exponent alone too large, the product is not
            return min(cap, math.exp(math.log(initial) + exponent * math.log(self.backoff)))

    def retryable(self, error: BaseException) -> bool:
        """Whether `error` may be retried at all, before counting attempts."""
        if isinstance(error, (NonRetryableError, *self.non_retryable)):
            return False
        if isinstance(error, RetryAfter):
            return True
        return self.retry_if is None or bool(self.retry_if(error))

    def next_delay(
        self, attempt: int, error: BaseException, random: Callable[[], float]
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when the step fails for good.

        Args:
            attempt: the attempt that just failed, counted from 1.
            error: what it raised.
            random: a source of floats uniform in [0, 1), called at most once.
        """
        if attempt >= self.max_attempts or not self.retryable(error):
            return None
        if isinstance(error, RetryAfter):
            return min(error.delay, self.max_delay)
        base = self.base_delay(attempt)
        if self.jitter == 0 or base == 0:
            return base
        spread = 1.0 + self.jitter * (2.0 * random() - 1.0)
        return min(self.max_delay, max(0.0, base * spread))


def outage_delay(failures: int, cap: float = 1.0) -> float:
    """Seconds to wait before trying a failing store again, after `failures` failures in
    a row: 20 ms doubling up to `cap`."""
    return min(cap, 0.01 * 2.0 ** min(failures, 10))
