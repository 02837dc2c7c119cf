"""The admission arithmetic of queues: limits, priorities and fair turns (pure, hypothesis)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aruntime._admission import BATCH, Waiting, choose, plan, room
from aruntime.errors import ConfigError
from aruntime.queues import Queue, Rate, check_placement, queues_by_name

KEYS = st.sampled_from(["", "a", "b", "c", "d"])


@st.composite
def waiting_runs(draw: st.DrawFn) -> list[Waiting]:
    count = draw(st.integers(0, 30))
    return [
        Waiting(f"r{i}", draw(st.integers(-2, 2)), draw(KEYS), (float(i), f"r{i}"))
        for i in range(count)
    ]


SERVED = st.dictionaries(KEYS, st.integers(1, 50), max_size=5)


@given(waiting_runs(), st.integers(0, 40), SERVED)
def test_choose_takes_at_most_count_distinct_waiting_runs(
    waiting: list[Waiting], count: int, served: dict[str, int]
) -> None:
    """No run is chosen twice, none that does not wait, never more than asked."""
    chosen = choose(waiting, count, served, max(served.values(), default=0))
    ids = [run_id for run_id, _ in chosen]
    assert len(ids) == len(set(ids)) == min(count, len(waiting))
    assert set(ids) <= {run.run_id for run in waiting}


@given(waiting_runs(), st.integers(0, 40), SERVED)
def test_turns_grow_past_every_standing(
    waiting: list[Waiting], count: int, served: dict[str, int]
) -> None:
    """Each admission gets the next turn, after the queue's last one."""
    last = max(served.values(), default=0)
    turns = [turn for _, turn in choose(waiting, count, served, last)]
    assert turns == list(range(last + 1, last + 1 + len(turns)))


@given(waiting_runs(), st.integers(0, 40), SERVED)
def test_a_lower_priority_number_always_goes_first(
    waiting: list[Waiting], count: int, served: dict[str, int]
) -> None:
    """A run left waiting never has a lower priority number than one chosen."""
    chosen = {run_id for run_id, _ in choose(waiting, count, served, 50)}
    left = [run.priority for run in waiting if run.run_id not in chosen]
    taken = [run.priority for run in waiting if run.run_id in chosen]
    if left and taken:
        assert max(taken) <= min(left)


@given(waiting_runs(), st.integers(0, 40), SERVED)
def test_first_come_first_served_within_a_partition(
    waiting: list[Waiting], count: int, served: dict[str, int]
) -> None:
    """Within one priority and key, the runs chosen are the ones that came first."""
    chosen = {run_id for run_id, _ in choose(waiting, count, served, 50)}
    lines: dict[tuple[int, str], list[bool]] = {}
    for run in sorted(waiting, key=lambda r: r.order):
        lines.setdefault((run.priority, run.partition), []).append(run.run_id in chosen)
    for flags in lines.values():
        assert flags == sorted(flags, reverse=True)


@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(1, 60))
def test_partitions_take_turns(sizes: list[int], count: int) -> None:
    """Partitions never served share the admissions within one: a burst starves nobody."""
    waiting = [
        Waiting(f"{key}{i}", 0, f"k{key}", (float(key * 100 + i), f"{key}{i}"))
        for key, size in enumerate(sizes)
        for i in range(size)
    ]
    chosen = {run_id for run_id, _ in choose(waiting, count, {}, 0)}
    per_key = Counter(run.partition for run in waiting if run.run_id in chosen)
    # A partition got fewer than another only because it had no more runs.
    for key, size in enumerate(sizes):
        got = per_key[f"k{key}"]
        assert got == size or got >= max(per_key.values()) - 1


def test_the_partition_served_longest_ago_goes_first() -> None:
    """Standing comes from the runs' rows: a key served just now waits behind the others."""
    waiting = [
        Waiting("a1", 0, "a", (1.0, "a1")),
        Waiting("b1", 0, "b", (2.0, "b1")),
        Waiting("c1", 0, "c", (3.0, "c1")),
    ]
    chosen = choose(waiting, 3, {"a": 9, "b": 3}, 9)
    assert chosen == [("c1", 10), ("b1", 11), ("a1", 12)]


@given(
    st.integers(1, 10),
    st.integers(0, 12),
    st.integers(1, 6),
    st.lists(st.floats(0, 10), max_size=12),
)
def test_room_never_exceeds_the_limits(
    concurrency: int, unfinished: int, count: int, recent: list[float]
) -> None:
    """Admitting `space` more keeps both the concurrency and the rate within bounds."""
    queue = Queue("room", concurrency=concurrency, rate=Rate(count, per=2.0), register=False)
    now = 10.0
    space, wait = room(queue, unfinished, recent, now)
    in_window = sum(1 for at in recent if at > now - 2.0)
    assert space >= 0
    assert unfinished + space <= max(concurrency, unfinished)
    assert in_window + space <= max(count, in_window)
    if wait is not None:
        assert space == 0
        assert 0 <= wait <= 2.0
        # Once the wait has passed, the rate lets one more in.
        later = now + wait + 1e-9
        assert sum(1 for at in recent if at > later - 2.0) < count


def test_room_without_limits_is_one_batch() -> None:
    """A queue without limits admits a batch at a time."""
    assert room(Queue("free", register=False), 10**6, [], 0.0) == (BATCH, None)


def test_plan_reports_the_rate_wait_only_while_runs_are_left() -> None:
    """The wait is worth a wake-up only when somebody still waits."""
    runs = [Waiting("x", 0, "", (1.0, "x"))]
    assert plan(0, 0.5, waiting=runs, served={}, last_turn=0).wait == 0.5
    assert plan(1, 0.5, waiting=runs, served={}, last_turn=0).wait is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"rate": 3}, "rate"),
    ],
)
def test_bad_queue_limits_are_refused(kwargs: dict[str, object], message: str) -> None:
    """A queue with unusable limits raises ConfigError naming the limit."""
    with pytest.raises(ConfigError, match=message):
        Queue("bad", register=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("count", "per"), [(0, 1.0), (1, 0.0), (1, float("inf")), (True, 1.0)])
def test_bad_rates_are_refused(count: int, per: float) -> None:
    """A rate needs a positive count and a finite positive period."""
    with pytest.raises(ConfigError):
        Rate(count, per)


@pytest.mark.parametrize("name", ["", "tab\there", "x" * 101, 3])
def test_bad_queue_names_are_refused(name: object) -> None:
    """A queue name is a short printable str."""
    with pytest.raises(ConfigError):
        Queue(name, register=False)  # type: ignore[arg-type]


def test_a_registered_name_keeps_its_limits() -> None:
    """Declaring a registered queue again with other limits is refused; the same is fine."""
    Queue("admission-test-same", concurrency=2)
    Queue("admission-test-same", concurrency=2)
    with pytest.raises(ConfigError, match="already declared"):
        Queue("admission-test-same", concurrency=3)


def test_two_queues_of_one_name_and_other_limits_are_refused() -> None:
    """A runtime's queues have one set of limits per name."""
    with pytest.raises(ConfigError, match="twice"):
        queues_by_name([Queue("dup", concurrency=1, register=False), Queue("dup", register=False)])


@pytest.mark.parametrize(
    ("queue", "priority", "key"),
    [
        (None, 1, None),
        (None, None, "tenant"),
        ("q", 2**31, None),
        ("q", True, None),
        ("q", None, ""),
        ("q", None, "a\nb"),
        ("q", None, "k" * 201),
    ],
)
def test_bad_placements_are_refused(queue: str | None, priority: object, key: object) -> None:
    """A priority or key without a queue, or out of range, raises ConfigError."""
    with pytest.raises(ConfigError):
        check_placement(queue, priority, key)  # type: ignore[arg-type]
