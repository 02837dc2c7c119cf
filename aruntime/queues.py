"""Queues: how many runs of a kind run at once, how fast they start, and in what order.

A run started on a queue (`start(..., queue="emails")`) waits until the queue **admits**
it, and only then is executed. What a queue promises:

* **Concurrency.** At most `concurrency` of its runs are admitted and unfinished at any
  time. A run holds its place from its admission until it ends, also while it sleeps,
  waits for a message, is parked or is being taken over after a crash: the limit counts
  runs, not busy moments. On PostgreSQL the limit holds across the whole fleet (every
  admission is taken under one database lock per queue); on SQLite and in memory within
  the one process that owns the store.
* **Rate.** With `rate=Rate(count, per)`, at most `count` runs are admitted in any window
  of `per` seconds, measured on the store's clock (the database's, read under the
  queue's lock, on PostgreSQL), also across deletions of ended runs.
* **Order.** Among the runs waiting, the lowest `priority` number goes first (0 by
  default; negative numbers go earlier). Within one priority, runs with different
  `partition_key`s take turns: the key served longest ago (or never) goes first, so one
  tenant's burst does not starve the others; within one key, first come, first served.

A runtime admits the runs of the queues it declares (`Runtime(queues=...)`, by default
every `Queue` made in the process) and of the workflows it knows; every runtime of a
fleet should declare a queue with the same limits. A waiting run can be cancelled: it
ends at once, without running. A run's `timeout` counts from its start, waiting
included; a run whose deadline passed while it waited is admitted and then cancelled at
once (reason `timeout`), before any of its steps runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aruntime.errors import ConfigError

__all__ = [
    "MAX_PARTITION_KEY_LENGTH",
    "MAX_PRIORITY",
    "Queue",
    "Rate",
    "check_declared",
    "check_placement",
    "queues_by_name",
    "registered_queues",
]

MAX_PRIORITY = 2**31 - 1
"""The largest priority number (and, negated, the smallest)."""
MAX_PARTITION_KEY_LENGTH = 200
MAX_QUEUE_NAME_LENGTH = 100

_registry: dict[str, Queue] = {}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` admissions in any window of `per` seconds."""

    count: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if type(self.count) is not int or self.count < 1:
            raise ConfigError(f"a rate's count must be an int >= 1, not {self.count!r}")
        per = self.per
        if isinstance(per, bool) or not isinstance(per, int | float) or not math.isfinite(per):
            raise ConfigError(f"a rate's period must be a finite number of seconds, not {per!r}")
        if per <= 0:
            raise ConfigError(f"a rate's period must be > 0 seconds, not {per!r}")


@dataclass(frozen=True, slots=True)
class Queue:
    """A named queue and its limits; see the module's docstring for what they promise.

    Example:
        emails = Queue("emails", concurrency=10, rate=Rate(100, per=60))
        await rt.start(send_newsletter, user, queue=emails, partition_key=tenant)

    Args:
        name: the queue's name, as runs record it.
        concurrency: the most runs admitted and unfinished at once; None for no limit.
        rate: the most runs admitted per period; None for no limit.
        register: make it one of the queues a `Runtime` declares by default. Making a
            registered queue of the same name with other limits is refused.

    Raises:
        ConfigError: a limit or the name is unusable, or the name is registered with
            other limits.
    """

    name: str
    concurrency: int | None = None
    rate: Rate | None = None
    register: bool = True

    def __post_init__(self) -> None:
        check_queue_name(self.name)
        limit = self.concurrency
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ConfigError(
                f"queue {self.name!r}: concurrency must be an int >= 1 or None, not {limit!r}"
            )
        if self.rate is not None and not isinstance(self.rate, Rate):
            raise ConfigError(f"queue {self.name!r}: rate must be a Rate or None")
        if not self.register:
            return
        known = _registry.get(self.name)
        if known is not None and not known.same_limits(self):
            raise ConfigError(
                f"queue {self.name!r} is already declared with concurrency="
                f"{known.concurrency!r}, rate={known.rate!r}; declare it once per process"
            )
        _registry.setdefault(self.name, self)

    def same_limits(self, other: Queue) -> bool:
        return (self.name, self.concurrency, self.rate) == (
            other.name,
            other.concurrency,
            other.rate,
        )


def registered_queues() -> dict[str, Queue]:
    """The queues made with `register=True` in this process, by name."""
    return dict(_registry)


def check_queue_name(name: object) -> str:
    """Return `name` if it can name a queue.

    Raises:
        ConfigError: not a non-empty printable str of at most 100 characters.
    """
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ConfigError(f"a queue name must be a non-empty printable str, not {name!r:.80}")
    if len(name) > MAX_QUEUE_NAME_LENGTH:
        raise ConfigError(
            f"queue name {name[:40]!r}... is {len(name)} characters, more than "
            f"{MAX_QUEUE_NAME_LENGTH}"
        )
    return name


def check_placement(
    queue: Queue | str | None, priority: int | None, partition_key: str | None
) -> tuple[str | None, int, str | None]:
    """The `(queue name, priority, partition key)` a run is started with.

    Raises:
        ConfigError: a value is unusable, or a priority or key is given without a queue.
    """
    if queue is None:
        if priority is not None or partition_key is not None:
            raise ConfigError("priority and partition_key need a queue (start(..., queue=...))")
        return None, 0, None
    name = queue.name if isinstance(queue, Queue) else check_queue_name(queue)
    if priority is None:
        priority = 0
    elif type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise ConfigError(
            f"priority must be an int between {-MAX_PRIORITY} and {MAX_PRIORITY}, "
            f"not {priority!r:.40}"
        )
    if partition_key is not None and (
        not isinstance(partition_key, str)
        or not partition_key
        or not partition_key.isprintable()
        or len(partition_key) > MAX_PARTITION_KEY_LENGTH
    ):
        raise ConfigError(
            "partition_key must be a non-empty printable str of at most "
            f"{MAX_PARTITION_KEY_LENGTH} characters, not {partition_key!r:.80}"
        )
    return name, priority, partition_key


def queues_by_name(queues: Iterable[Queue]) -> dict[str, Queue]:
    """The queues a runtime declares, by name.

    Raises:
        ConfigError: an item is not a Queue, or two of them share a name.
    """
    if isinstance(queues, Queue | str):
        raise ConfigError(f"queues takes a list of Queue, not one: [{queues!r:.80}]")
    try:
        items = list(queues)
    except TypeError:
        raise ConfigError(f"queues takes a list of Queue, not {queues!r:.80}") from None
    found: dict[str, Queue] = {}
    for queue in items:
        if not isinstance(queue, Queue):
            raise ConfigError(f"not a Queue: {queue!r:.80}")
        if queue.name in found and not found[queue.name].same_limits(queue):
            raise ConfigError(f"queue {queue.name!r} is declared twice with different limits")
        found[queue.name] = queue
    return found


def check_declared(declared: Mapping[str, Queue], queue: Queue | str | None) -> None:
    """Refuse a queue that `declared` (a runtime's queues) does not hold, or holds with
    other limits than the `Queue` passed: nothing there would admit its runs.

    Raises:
        ConfigError: as said.
    """
    if queue is None:
        return
    name = queue.name if isinstance(queue, Queue) else queue
    known = declared.get(name)
    if known is None:
        raise ConfigError(
            f"queue {name!r} is not declared in this runtime, so nothing here would admit "
            f"its runs: make aruntime.Queue({name!r}, ...) before the runtime opens, or pass "
            "it in Runtime(queues=[...])"
        )
    if isinstance(queue, Queue) and not queue.same_limits(known):
        raise ConfigError(
            f"queue {name!r} is declared here with concurrency={known.concurrency!r}, "
            f"rate={known.rate!r}, not the limits of the Queue passed"
        )
