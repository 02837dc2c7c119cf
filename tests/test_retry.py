"""RetryPolicy: exponential backoff, its cap, jitter from an injected source, and validation."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aruntime.errors import ConfigError, NonRetryableError, RetryAfter
from aruntime.retry import RetryPolicy

retry_settings = settings(max_examples=300, deadline=None)

JUST_BELOW_ONE = math.nextafter(1.0, 0.0)


def _fixed(value: float) -> Callable[[], float]:
    return lambda: value


def _no_random() -> float:
    raise AssertionError("the policy drew a random number it did not need")


class _Counter:
    """A random source that records how often it is called."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.value


# --- growth and cap -----------------------------------------------------------------


def test_base_delay_grows_exponentially() -> None:
    """Each further delay is `backoff` times the previous one, from `initial_delay`."""
    policy = RetryPolicy(initial_delay=0.5, backoff=3.0, max_delay=1e6)
    assert [policy.base_delay(n) for n in range(1, 7)] == [0.5, 1.5, 4.5, 13.5, 40.5, 121.5]


def test_next_delay_without_jitter_is_the_base_delay() -> None:
    """With jitter 0 the delay after attempt n is exactly initial * backoff**(n-1)."""
    policy = RetryPolicy(max_attempts=10, initial_delay=1.0, backoff=2.0, jitter=0, max_delay=1e3)
    delays = [policy.next_delay(n, ValueError(), _no_random) for n in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]


def test_backoff_of_one_keeps_the_delay_constant() -> None:
    """backoff=1 retries at a fixed interval."""
    policy = RetryPolicy(initial_delay=2.5, backoff=1.0)
    assert {policy.base_delay(n) for n in (1, 2, 10, 10**9)} == {2.5}


def test_zero_initial_delay_retries_at_once() -> None:
    """initial_delay=0 means every retry is due immediately, whatever the jitter."""
    policy = RetryPolicy(initial_delay=0.0, jitter=1.0)
    assert policy.next_delay(2, ValueError(), _no_random) == 0.0


def test_base_delay_is_capped_at_max_delay() -> None:
    """Once the exponential passes max_delay, every delay is max_delay."""
    policy = RetryPolicy(initial_delay=1.0, backoff=2.0, max_delay=60.0)
    assert [policy.base_delay(n) for n in (6, 7, 8, 30)] == [32.0, 60.0, 60.0, 60.0]


def test_initial_delay_above_max_delay_is_capped() -> None:
    """Even the first delay never exceeds max_delay."""
    assert RetryPolicy(initial_delay=100.0, max_delay=5.0).base_delay(1) == 5.0


@pytest.mark.parametrize("attempt", [1_000, 10**6, sys.maxsize, 2**64])
def test_base_delay_caps_huge_attempt_numbers(attempt: int) -> None:
    """Huge attempt numbers give max_delay, with no overflow."""
    policy = RetryPolicy(initial_delay=1.0, backoff=2.0, max_delay=60.0)
    assert policy.base_delay(attempt) == 60.0


def test_base_delay_caps_attempt_numbers_beyond_float_range() -> None:
    """An attempt number too large for a float still gives max_delay, not OverflowError."""
    assert RetryPolicy(max_delay=60.0).base_delay(10**400) == 60.0


def test_base_delay_caps_when_max_over_initial_exceeds_float_range() -> None:
    """A tiny initial delay with a large cap (ratio past 1.8e308) still caps, no overflow."""
    policy = RetryPolicy(initial_delay=1e-300, backoff=2.0, max_delay=1e10)
    assert policy.base_delay(10**6) == 1e10


def test_base_delay_with_zero_cap_is_zero_whatever_the_initial_delay() -> None:
    """max_delay=0 caps every delay to 0, also for a huge initial delay (no math error)."""
    assert RetryPolicy(initial_delay=1e24, max_delay=0.0).base_delay(1) == 0.0


def test_base_delay_rejects_attempt_below_one() -> None:
    """Attempts count from 1."""
    with pytest.raises(ConfigError, match="from 1"):
        RetryPolicy().base_delay(0)


_sane_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 20),
    initial_delay=st.floats(1e-3, 100.0),
    backoff=st.floats(1.0, 10.0),
    max_delay=st.floats(0.0, 1e4),
    jitter=st.floats(0.0, 1.0),
)

_any_valid_policies = st.builds(
    RetryPolicy,
    initial_delay=st.floats(0.0, allow_infinity=False),
    backoff=st.floats(1.0, allow_infinity=False),
    max_delay=st.floats(0.0, allow_infinity=False),
    jitter=st.floats(0.0, 1.0),
)


@retry_settings
@given(_sane_policies, st.integers(1, 60))
def test_base_delay_follows_the_formula(policy: RetryPolicy, attempt: int) -> None:
    """base = min(max_delay, initial_delay * backoff ** (attempt - 1)), to rounding."""
    expected = min(policy.max_delay, policy.initial_delay * policy.backoff ** (attempt - 1))
    assert policy.base_delay(attempt) == pytest.approx(expected, rel=1e-9)


@retry_settings
@given(_sane_policies, st.integers(1, 10**6))
def test_base_delay_never_decreases(policy: RetryPolicy, attempt: int) -> None:
    """A later attempt never waits less than an earlier one (before jitter)."""
    assert policy.base_delay(attempt) <= policy.base_delay(attempt + 1)


@retry_settings
@given(_any_valid_policies, st.integers(1, 2**64))
def test_base_delay_is_finite_and_capped_for_any_valid_policy(
    policy: RetryPolicy, attempt: int
) -> None:
    """For every policy the constructor accepts, the base delay is within [0, max_delay]."""
    delay = policy.base_delay(attempt)
    assert 0.0 <= delay <= policy.max_delay


# --- jitter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draw", "expected"),
    [
        pytest.param(0.0, 8.0 * 0.75, id="lowest"),
        pytest.param(0.5, 8.0, id="middle"),
        pytest.param(0.75, 8.0 * 1.125, id="upper-quarter"),
    ],
)
def test_jitter_spreads_the_delay_by_the_injected_random(draw: float, expected: float) -> None:
    """delay = base * (1 + jitter * (2r - 1)): r=0 is the low end, r=0.5 the base delay."""
    policy = RetryPolicy(max_attempts=5, initial_delay=1.0, backoff=2.0, jitter=0.25)
    assert policy.next_delay(4, ValueError(), _fixed(draw)) == pytest.approx(expected)


def test_jitter_just_below_one_reaches_at_most_the_upper_bound() -> None:
    """r just below 1 gives a delay at (after rounding) or below base * (1 + jitter)."""
    policy = RetryPolicy(initial_delay=8.0, jitter=0.25, max_delay=100.0)
    delay = policy.next_delay(1, ValueError(), _fixed(JUST_BELOW_ONE))
    assert delay is not None
    assert delay <= 10.0
    assert delay == pytest.approx(10.0)


def test_jitter_never_pushes_past_max_delay() -> None:
    """An upward draw at the cap still gives max_delay."""
    policy = RetryPolicy(max_attempts=50, jitter=0.5, max_delay=60.0)
    assert policy.next_delay(40, ValueError(), _fixed(JUST_BELOW_ONE)) == 60.0


def test_full_jitter_can_reach_zero() -> None:
    """jitter=1 and r=0 gives no wait at all, never a negative one."""
    policy = RetryPolicy(jitter=1.0)
    assert policy.next_delay(1, ValueError(), _fixed(0.0)) == 0.0


def test_no_jitter_draws_no_random() -> None:
    """With jitter 0 the random source is not called."""
    policy = RetryPolicy(jitter=0.0)
    assert policy.next_delay(2, ValueError(), _no_random) == 2.0


@retry_settings
@given(_sane_policies, st.integers(1, 40), st.floats(0.0, 1.0, exclude_max=True))
def test_jittered_delay_stays_within_bounds(policy: RetryPolicy, attempt: int, draw: float) -> None:
    """For any r in [0, 1) the delay lies in [base*(1-jitter), min(max, base*(1+jitter))]."""
    policy = dataclasses.replace(policy, max_attempts=attempt + 1)
    source = _Counter(draw)
    delay = policy.next_delay(attempt, ValueError(), source)
    base = policy.base_delay(attempt)
    assert delay is not None
    assert source.calls <= 1
    assert 0.0 <= delay <= policy.max_delay
    assert base * (1 - policy.jitter) * (1 - 1e-12) <= delay
    assert delay <= min(policy.max_delay, base * (1 + policy.jitter) * (1 + 1e-12))


# --- when not to retry ----------------------------------------------------------------


def test_last_attempt_gets_no_retry() -> None:
    """After attempt max_attempts fails, the step fails for good (None)."""
    policy = RetryPolicy(max_attempts=3, jitter=0)
    assert policy.next_delay(2, ValueError(), _no_random) == 2.0
    assert policy.next_delay(3, ValueError(), _no_random) is None
    assert policy.next_delay(4, ValueError(), _no_random) is None


def test_single_attempt_policy_never_retries() -> None:
    """max_attempts=1 means the first failure is final."""
    assert RetryPolicy(max_attempts=1).next_delay(1, ValueError(), _no_random) is None


@pytest.mark.parametrize("error", [KeyError("k"), LookupError("l")], ids=["subclass", "listed"])
def test_non_retryable_types_fail_at_once(error: Exception) -> None:
    """An error of a listed type (or a subclass of one) is never retried."""
    policy = RetryPolicy(max_attempts=5, non_retryable=(LookupError,))
    assert policy.next_delay(1, error, _no_random) is None
    assert not policy.retryable(error)


def test_other_types_than_non_retryable_are_retried() -> None:
    """Listing some types leaves every other error retryable."""
    policy = RetryPolicy(max_attempts=5, non_retryable=(KeyError,), jitter=0)
    assert policy.next_delay(1, ValueError(), _no_random) == 1.0


def test_non_retryable_error_fails_at_once_whatever_the_policy() -> None:
    """NonRetryableError ends the step even with attempts left and a permissive retry_if."""
    policy = RetryPolicy(max_attempts=10, retry_if=lambda _: True)
    assert policy.next_delay(1, NonRetryableError("card declined"), _no_random) is None


def test_retry_if_refuses_errors_it_rejects() -> None:
    """With retry_if set, an error is retried only when the predicate says so."""
    policy = RetryPolicy(jitter=0, retry_if=lambda e: isinstance(e, TimeoutError))
    assert policy.next_delay(1, TimeoutError(), _no_random) == 1.0
    assert policy.next_delay(1, ValueError(), _no_random) is None


def test_retry_if_result_is_taken_for_its_truth() -> None:
    """A predicate returning a truthy or falsy non-bool is read as True or False."""
    truthy: Any = lambda _: "yes"  # noqa: E731 - a deliberately ill-typed predicate
    falsy: Any = lambda _: 0  # noqa: E731 - a deliberately ill-typed predicate
    assert RetryPolicy(jitter=0, retry_if=truthy).next_delay(1, ValueError(), _no_random) == 1.0
    assert RetryPolicy(retry_if=falsy).next_delay(1, ValueError(), _no_random) is None


# --- RetryAfter -----------------------------------------------------------------------


def test_retry_after_delay_is_honoured_without_jitter() -> None:
    """RetryAfter(d) gives exactly d, drawing no random number."""
    policy = RetryPolicy(jitter=0.5, max_delay=60.0)
    assert policy.next_delay(1, RetryAfter(7.25), _no_random) == 7.25


@pytest.mark.parametrize("delay", [61.0, 1e300, math.inf])
def test_retry_after_delay_is_capped_at_max_delay(delay: float) -> None:
    """A requested delay longer than max_delay (even infinite) is cut to max_delay."""
    assert RetryPolicy(max_delay=60.0).next_delay(1, RetryAfter(delay), _no_random) == 60.0


def test_retry_after_still_counts_against_max_attempts() -> None:
    """RetryAfter on the last attempt does not buy another one."""
    assert RetryPolicy(max_attempts=2).next_delay(2, RetryAfter(1.0), _no_random) is None


def test_retry_after_is_honoured_even_when_retry_if_refuses() -> None:
    """RetryAfter is the body's explicit request; retry_if does not veto it."""
    policy = RetryPolicy(retry_if=lambda _: False)
    assert policy.next_delay(1, RetryAfter(3.0), _no_random) == 3.0


def test_retry_after_listed_as_non_retryable_is_refused() -> None:
    """Listing RetryAfter among the non-retryable types turns the request down."""
    policy = RetryPolicy(non_retryable=(RetryAfter,))
    assert policy.next_delay(1, RetryAfter(3.0), _no_random) is None


def test_retry_after_zero_is_allowed() -> None:
    """RetryAfter(0) asks for an immediate retry."""
    assert RetryPolicy().next_delay(1, RetryAfter(0), _no_random) == 0.0


@pytest.mark.parametrize("delay", [-1.0, -1e-9, math.nan])
def test_retry_after_rejects_a_negative_or_nan_delay(delay: float) -> None:
    """A delay that is not a number >= 0 is refused when the request is made."""
    with pytest.raises(ValueError, match="RetryAfter delay must be >= 0"):
        RetryAfter(delay)


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", -1),
        ("max_attempts", 2.0),
        ("max_attempts", "3"),
        ("initial_delay", -0.5),
        ("initial_delay", math.nan),
        ("initial_delay", math.inf),
        ("initial_delay", "1"),
        ("max_delay", -1.0),
        ("max_delay", math.nan),
        ("max_delay", math.inf),
        ("backoff", 0.5),
        ("backoff", 0.0),
        ("backoff", math.nan),
        ("backoff", math.inf),
        ("jitter", -0.1),
        ("jitter", 1.5),
        ("jitter", math.nan),
        ("jitter", math.inf),
        ("non_retryable", [KeyError]),
        ("non_retryable", KeyError),
        ("non_retryable", (KeyError, "ValueError")),
        ("non_retryable", (int,)),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
def test_invalid_setting_raises_config_error(field: str, value: object) -> None:
    """Each out-of-range or ill-typed setting is refused with a ConfigError naming it."""
    settings_: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError, match=field):
        RetryPolicy(**settings_)


def test_config_error_is_a_value_error() -> None:
    """Callers that catch ValueError for bad arguments catch ConfigError too."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_boundary_settings_are_accepted() -> None:
    """The edges of every range are valid settings."""
    policy = RetryPolicy(
        max_attempts=1, initial_delay=0, max_delay=0, backoff=1, jitter=1, non_retryable=()
    )
    assert policy.next_delay(1, ValueError(), _no_random) is None
    assert RetryPolicy(jitter=0).jitter == 0


def test_policy_is_immutable() -> None:
    """A policy cannot be changed after validation."""
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 0  # type: ignore[misc]
