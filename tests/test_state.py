"""The replay fold: its algebra (deterministic, resumable, pure), its strictness, its meaning."""

from __future__ import annotations

import copy
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    LogBuilder,
    LookAlike,
    SimulatedRun,
    StepStartedSubclass,
    arbitrary_logs,
    simulated_runs,
    valid_logs,
)

from aruntime.errors import CorruptLogError
from aruntime.events import (
    EVENT_TYPES,
    Event,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from aruntime.state import RunState, RunStatus, StepState, StepStatus, fold_into, replay

fold_settings = settings(max_examples=200, deadline=None)


def _as_log(items: list[object]) -> list[Event]:
    """The fold is typed for events; these tests feed it anything."""
    return cast("list[Event]", items)


def _corrupt(log: list[object], state: RunState | None = None) -> CorruptLogError:
    with pytest.raises(CorruptLogError) as info:
        replay(_as_log(log), state)
    return info.value


def _reference_fold(log: list[Event]) -> RunState:
    """What a valid log means, written without the fold's incremental bookkeeping."""
    if not log:
        return RunState()
    first = log[0]
    assert isinstance(first, RunStarted)
    last = log[-1]
    state = RunState(
        run_id=first.run_id,
        workflow=first.workflow,
        args=first.args,
        status=RunStatus.RUNNING,
        version=len(log),
        started_at=first.at,
        updated_at=last.at,
    )
    if isinstance(last, RunCompleted):
        state.status, state.result, state.finished_at = RunStatus.COMPLETED, last.result, last.at
    if isinstance(last, RunFailed):
        state.status, state.finished_at = RunStatus.FAILED, last.at
        state.error_type, state.error_message = last.error_type, last.error_message
    positions = sorted({e.position for e in log if isinstance(e, StepStarted)})
    for position in positions:
        mine = [
            e
            for e in log
            if isinstance(e, StepStarted | StepCompleted | StepFailed) and e.position == position
        ]
        starts = [e for e in mine if isinstance(e, StepStarted)]
        failures = [e for e in mine if isinstance(e, StepFailed)]
        final = mine[-1]
        step = StepState(
            str(position),
            starts[0].step,
            StepStatus.RUNNING,
            len(starts),
            position=position,
            digest=starts[0].digest,
            started_at=starts[0].at,
        )
        if failures:
            step.error_type = failures[-1].error_type
            step.error_message = failures[-1].error_message
        if isinstance(final, StepCompleted):
            step.status, step.result, step.finished_at = (
                StepStatus.COMPLETED,
                final.result,
                final.at,
            )
            step.error_type = step.error_message = None
        elif isinstance(final, StepFailed) and final.retry_at is None:
            step.status, step.finished_at = StepStatus.FAILED, final.at
        elif isinstance(final, StepFailed):
            step.status, step.retry_at = StepStatus.RETRYING, final.retry_at
        state.steps[str(position)] = step
    return state


def _rules_first_bad(log: list[object]) -> int | None:
    """The index of the first item that breaks a rule of valid logs, or None if none does.

    The rules of state.py's docstring, checked directly: exact event types, dense sequences
    from 1, RunStarted first and only first, nothing after the run ended, a step starts at
    attempt 1 at a position >= 1 and then counts up under one name until it completes or
    fails for good, and an outcome answers the attempt in flight.
    """
    steps: dict[int, tuple[str, int, StepStatus]] = {}
    ended = (StepStatus.COMPLETED, StepStatus.FAILED)
    for index, item in enumerate(log):
        if type(item) not in EVENT_TYPES.values():
            return index
        event = cast(Event, item)
        if event.sequence != index + 1 or (index == 0) != isinstance(event, RunStarted):
            return index
        if index and isinstance(log[index - 1], RunCompleted | RunFailed):
            return index
        if isinstance(event, StepStarted):
            known = steps.get(event.position)
            if known is None and (event.position < 1 or event.attempt != 1):
                return index
            if known is not None and (
                known[0] != event.step or known[2] in ended or event.attempt != known[1] + 1
            ):
                return index
            steps[event.position] = (event.step, event.attempt, StepStatus.RUNNING)
        elif isinstance(event, StepCompleted | StepFailed):
            known = steps.get(event.position)
            if known is None or known != (event.step, event.attempt, StepStatus.RUNNING):
                return index
            if isinstance(event, StepCompleted):
                status = StepStatus.COMPLETED
            else:
                status = StepStatus.RETRYING if event.retry_at is not None else StepStatus.FAILED
            steps[event.position] = (event.step, event.attempt, status)
    return None


# --- the algebra of the fold, on valid logs --------------------------------------------


@fold_settings
@given(simulated_runs())
def test_simulated_logs_follow_the_rules_and_never_go_back_in_time(run: SimulatedRun) -> None:
    """The model runner writes logs that break no rule, with non-decreasing times."""
    assert _rules_first_bad(list(run.events)) is None
    times = [e.at for e in run.events]
    assert times == sorted(times)


@fold_settings
@given(valid_logs())
def test_replay_is_deterministic(log: list[Event]) -> None:
    """Folding the same events twice, from a list, a generator or copies, gives equal states."""
    expected = replay(log)
    assert replay(log) == expected
    assert replay(e for e in log) == expected
    assert replay(copy.deepcopy(log)) == expected


@fold_settings
@given(valid_logs())
def test_replay_resumes_from_any_prefix(log: list[Event]) -> None:
    """Folding a prefix, then the rest into that state, equals folding the whole log."""
    whole = replay(log)
    for cut in range(len(log) + 1):
        assert replay(log[cut:], replay(log[:cut])) == whole


@fold_settings
@given(valid_logs(), st.data())
def test_replay_resumes_across_any_chunking(log: list[Event], data: st.DataObject) -> None:
    """Folding a log in arbitrary chunks, each into the last state, equals folding it whole."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(log)), max_size=5)))
    state = RunState()
    for start, end in zip([0, *cuts], [*cuts, len(log)], strict=True):
        state = replay(log[start:end], state)
    assert state == replay(log)


@fold_settings
@given(valid_logs())
def test_fold_into_event_by_event_equals_replay(log: list[Event]) -> None:
    """The runner's in-place fold of one appended event at a time matches `replay`."""
    state = RunState()
    for event in log:
        fold_into(state, [event])
        assert state.version == event.sequence
    assert state == replay(log)


@fold_settings
@given(valid_logs())
def test_version_equals_length_of_every_prefix(log: list[Event]) -> None:
    """Every prefix of a correct runner's log folds, and its version is its length."""
    for n in range(len(log) + 1):
        assert replay(log[:n]).version == n


@fold_settings
@given(valid_logs())
def test_replay_leaves_the_given_state_untouched(log: list[Event]) -> None:
    """`replay(tail, state)` never mutates `state`, which is what makes snapshots safe."""
    for cut in range(len(log) + 1):
        head = replay(log[:cut])
        snapshot = copy.deepcopy(head)
        replay(log[cut:], head)
        assert head == snapshot


@fold_settings
@given(valid_logs())
def test_replay_result_shares_no_mutable_part_with_its_input(log: list[Event]) -> None:
    """The state `replay` returns has its own step table and step states."""
    head = replay(log)
    new = replay([], head)
    assert new == head
    assert new is not head
    assert new.steps is not head.steps
    for position, step in new.steps.items():
        assert step is not head.steps[position]


@fold_settings
@given(valid_logs())
def test_replay_means_what_the_reference_model_says(log: list[Event]) -> None:
    """Run and step states equal those of a direct, non-incremental reading of the log."""
    assert replay(log) == _reference_fold(log)


# --- strictness, on arbitrary lists ------------------------------------------------------


@fold_settings
@given(arbitrary_logs())
def test_any_list_folds_or_raises_only_corrupt_log_error(log: list[object]) -> None:
    """A mutated log folds to a state of its length, or raises CorruptLogError, nothing else."""
    try:
        state = replay(_as_log(log))
    except CorruptLogError:
        return
    assert state.version == len(log)


@fold_settings
@given(arbitrary_logs())
def test_replay_rejects_exactly_the_first_event_that_breaks_a_rule(log: list[object]) -> None:
    """The fold accepts a list iff it breaks no rule, else names the run and the bad event."""
    bad = _rules_first_bad(log)
    if bad is None:
        assert replay(_as_log(log)).version == len(log)
        return
    assert replay(_as_log(log[:bad])).version == bad
    err = _corrupt(log)
    assert err.run_id == (cast(RunStarted, log[0]).run_id if bad > 0 else None)
    assert err.sequence == getattr(log[bad], "sequence", None)
    assert err.reason
    if err.run_id:
        assert repr(err.run_id) in str(err)
    if err.sequence is not None:
        assert f"at sequence {err.sequence}" in str(err)


@fold_settings
@given(arbitrary_logs(), st.data())
def test_corruption_is_found_whatever_the_split(log: list[object], data: st.DataObject) -> None:
    """Folding head then tail rejects a log exactly when folding it whole does, alike."""
    cut = data.draw(st.integers(0, len(log)))
    try:
        whole: RunState | CorruptLogError = replay(_as_log(log))
    except CorruptLogError as err:
        whole = err
    try:
        split: RunState | CorruptLogError = replay(_as_log(log[cut:]), replay(_as_log(log[:cut])))
    except CorruptLogError as err:
        split = err
    if isinstance(whole, CorruptLogError):
        assert isinstance(split, CorruptLogError)
        assert (split.run_id, split.sequence, split.reason) == (
            whole.run_id,
            whole.sequence,
            whole.reason,
        )
    else:
        assert split == whole


@fold_settings
@given(arbitrary_logs(), st.data())
def test_corrupt_tail_leaves_the_given_state_untouched(
    log: list[object], data: st.DataObject
) -> None:
    """A tail the fold rejects does not change the state it was asked to fold into."""
    bad = _rules_first_bad(log)
    if bad is None:
        return
    cut = data.draw(st.integers(0, bad))
    head = replay(_as_log(log[:cut]))
    snapshot = copy.deepcopy(head)
    _corrupt(log[cut:], head)
    assert head == snapshot


# --- strictness, one corruption at a time -----------------------------------------------


def test_gap_in_sequence_is_corrupt() -> None:
    """A sequence that skips a number is rejected at the event after the gap."""
    log = LogBuilder().run_started().started().events
    gapped = [log[0], StepStarted(sequence=3, at=3.0, position=1, step="fetch", attempt=1)]
    err = _corrupt(list(gapped))
    assert (err.run_id, err.sequence) == ("run-1", 3)
    assert "gap" in err.reason


def test_duplicate_sequence_is_corrupt() -> None:
    """An event repeated with the same sequence is rejected as a duplicate."""
    log = LogBuilder().run_started().started().completed().events
    err = _corrupt([log[0], log[1], log[1], log[2]])
    assert (err.run_id, err.sequence) == ("run-1", 2)
    assert "duplicate" in err.reason


def test_log_not_beginning_with_run_started_is_corrupt() -> None:
    """A log whose first event is not RunStarted is rejected, with no run id to name."""
    err = _corrupt([StepStarted(sequence=1, at=1.0, position=1, step="fetch", attempt=1)])
    assert (err.run_id, err.sequence) == (None, 1)
    assert "begins with StepStarted" in err.reason
    assert str(err).startswith("corrupt log at sequence 1")


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(RunCompleted(sequence=1, at=1.0, result="null"), id="RunCompleted"),
        pytest.param(
            RunFailed(sequence=1, at=1.0, error_type="E", error_message="m"), id="RunFailed"
        ),
        pytest.param(
            StepCompleted(sequence=1, at=1.0, position=1, step="fetch", attempt=1, result="1"),
            id="StepCompleted",
        ),
    ],
)
def test_log_beginning_with_any_other_event_is_corrupt(first: Event) -> None:
    """Whatever the first event is, if it is not RunStarted the log is rejected at sequence 1."""
    err = _corrupt([first])
    assert (err.run_id, err.sequence) == (None, 1)


def test_second_run_started_is_corrupt() -> None:
    """RunStarted anywhere but first is rejected."""
    log = LogBuilder().run_started().events
    again = RunStarted(sequence=2, at=2.0, run_id="run-1", workflow="checkout", args="[]")
    err = _corrupt([*log, again])
    assert (err.run_id, err.sequence) == ("run-1", 2)


@pytest.mark.parametrize("ending", ["completed", "failed"])
@pytest.mark.parametrize("late", ["step_started", "run_completed", "run_failed"])
def test_event_after_run_ended_is_corrupt(ending: str, late: str) -> None:
    """Nothing may follow RunCompleted or RunFailed."""
    b = LogBuilder().run_started().started().completed()
    b = b.run_completed() if ending == "completed" else b.run_failed()
    if late == "step_started":
        b.started(position=2)
    elif late == "run_completed":
        b.run_completed()
    else:
        b.run_failed()
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 5)
    assert f"after the run ended {ending}" in err.reason


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_step_outcome_without_start_is_corrupt(outcome: str) -> None:
    """StepCompleted or StepFailed for a position that never started is rejected."""
    b = LogBuilder().run_started()
    if outcome == "completed":
        b.completed()
    else:
        b.failed(retry_at=5.0)
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 2)
    assert "never started" in err.reason


def test_first_attempt_other_than_one_is_corrupt() -> None:
    """A step's first StepStarted must be attempt 1."""
    err = _corrupt(list(LogBuilder().run_started().started(attempt=2).events))
    assert (err.run_id, err.sequence) == ("run-1", 2)
    assert "not 1" in err.reason


def test_skipped_attempt_is_corrupt() -> None:
    """Attempt 3 cannot follow attempt 1."""
    b = LogBuilder().run_started().started().failed(retry_at=4.0).started(attempt=3)
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 4)
    assert "attempt 3 follows attempt 1" in err.reason


def test_repeated_attempt_number_is_corrupt() -> None:
    """A second StepStarted with the same attempt number is rejected."""
    b = LogBuilder().run_started().started().started(attempt=1)
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 3)


def test_outcome_for_another_attempt_than_the_running_one_is_corrupt() -> None:
    """StepCompleted must name the attempt in flight."""
    b = LogBuilder().run_started().started().started(attempt=2).completed(attempt=1)
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 4)


def test_outcome_of_a_retrying_step_is_corrupt() -> None:
    """A step waiting for its retry has no attempt in flight to complete."""
    b = LogBuilder().run_started().started().failed(retry_at=4.0).completed(attempt=1)
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 4)
    assert "is retrying" in err.reason


@pytest.mark.parametrize("ending", ["completed", "failed"])
def test_step_started_again_after_it_ended_is_corrupt(ending: str) -> None:
    """A completed or failed-for-good step never starts again."""
    b = LogBuilder().run_started().started()
    b = b.completed() if ending == "completed" else b.failed(retry_at=None)
    err = _corrupt(list(b.started(attempt=2).events))
    assert (err.run_id, err.sequence) == ("run-1", 4)
    assert f"restarted after it {ending}" in err.reason


def test_step_completed_twice_is_corrupt() -> None:
    """A step's outcome is recorded once."""
    b = LogBuilder().run_started().started().completed().completed()
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 4)


@pytest.mark.parametrize("kind", ["started", "completed", "failed"])
def test_other_step_name_at_a_recorded_position_is_corrupt(kind: str) -> None:
    """Every event at a position names the step first recorded there."""
    b = LogBuilder().run_started().started(step="fetch")
    if kind == "started":
        b.started(attempt=2, step="charge")
    elif kind == "completed":
        b.completed(step="charge")
    else:
        b.failed(step="charge", retry_at=9.0)
    err = _corrupt(list(b.events))
    assert (err.run_id, err.sequence) == ("run-1", 3)
    assert "1 holds step 'fetch', not 'charge'" in err.reason


@pytest.mark.parametrize("position", [0, -1])
def test_step_position_below_one_is_corrupt(position: int) -> None:
    """Positions count from 1."""
    err = _corrupt(list(LogBuilder().run_started().started(position=position).events))
    assert (err.run_id, err.sequence) == ("run-1", 2)


@pytest.mark.parametrize(
    ("junk", "sequence"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(42, None, id="int"),
        pytest.param("StepStarted", None, id="str"),
        pytest.param({"type": "StepStarted", "sequence": 2}, None, id="dict"),
        pytest.param(
            LookAlike(sequence=2, at=2.0, position=1, step="fetch", attempt=1), 2, id="lookalike"
        ),
        pytest.param(
            StepStartedSubclass(sequence=2, at=2.0, position=1, step="fetch", attempt=1),
            2,
            id="subclass",
        ),
    ],
)
def test_non_event_object_is_corrupt(junk: object, sequence: int | None) -> None:
    """An object that is not exactly one of the event classes is rejected where it appears."""
    err = _corrupt([*LogBuilder().run_started().events, junk])
    assert (err.run_id, err.sequence) == ("run-1", sequence)
    assert "not an event" in err.reason


def test_non_event_object_first_is_corrupt() -> None:
    """A non-event in first place is rejected before anything is known about the run."""
    err = _corrupt([object()])
    assert (err.run_id, err.sequence) == (None, None)


_RESTART = StepStarted(sequence=3, at=3.0, position=1, step="fetch", attempt=2)
_COMPLETION = StepCompleted(sequence=3, at=3.0, position=1, step="fetch", attempt=1, result="1")
_FAILURE = StepFailed(
    sequence=3,
    at=3.0,
    position=1,
    step="fetch",
    attempt=1,
    error_type="ValueError",
    error_message="boom",
    retry_at=None,
)


def _damaged(event: Event, **changes: Any) -> Event:
    """`event` with fields of the wrong type, as a damaged row might decode."""
    new: Event = msgspec.structs.replace(event, **changes)
    return new


@pytest.mark.parametrize(
    "damaged",
    [
        pytest.param(_damaged(_RESTART, sequence=None), id="sequence-none"),
        pytest.param(_damaged(_RESTART, sequence="3"), id="sequence-str"),
        pytest.param(_damaged(_RESTART, position=None), id="started-position-none"),
        pytest.param(_damaged(_RESTART, position="1"), id="started-position-str"),
        pytest.param(_damaged(_COMPLETION, position=[1]), id="completed-position-list"),
        pytest.param(_damaged(_FAILURE, position={}), id="failed-position-dict"),
        pytest.param(_damaged(_COMPLETION, position=True), id="completed-position-bool"),
        pytest.param(_damaged(_FAILURE, position=1.0), id="failed-position-float"),
        pytest.param(_damaged(_RESTART, attempt=2.0), id="started-attempt-float"),
        pytest.param(_damaged(_COMPLETION, attempt=True), id="completed-attempt-bool"),
    ],
)
def test_event_with_ill_typed_counter_is_corrupt(damaged: Event) -> None:
    """A sequence, position or attempt that is not an int (a damaged row) is a corrupt log."""
    err = _corrupt([*LogBuilder().run_started().started().events, damaged])
    assert err.run_id == "run-1"
    assert err.sequence in (3, None)


def test_fold_into_keeps_events_before_the_bad_one() -> None:
    """On CorruptLogError the runner's own state holds exactly the events before the bad one."""
    good = LogBuilder().run_started().started().events
    state = RunState()
    with pytest.raises(CorruptLogError):
        fold_into(state, [*good, good[1]])
    assert state == replay(good)


# --- what the fold means ---------------------------------------------------------------


def test_empty_log_is_a_pending_run() -> None:
    """No event: the run does not exist yet."""
    state = replay([])
    assert state == RunState()
    assert state.status is RunStatus.PENDING
    assert not state.status.terminal


def test_run_started_records_the_run() -> None:
    """RunStarted sets id, workflow, arguments and start time; the run is running."""
    state = replay(LogBuilder("order:7", "pipeline").run_started(args="[[1],{}]").events)
    assert (state.run_id, state.workflow, state.args) == ("order:7", "pipeline", "[[1],{}]")
    assert state.status is RunStatus.RUNNING
    assert (state.started_at, state.updated_at, state.finished_at) == (1.0, 1.0, None)


def test_attempts_count_interrupted_attempts() -> None:
    """A StepStarted that follows a StepStarted (a crash in between) counts both attempts."""
    b = LogBuilder().run_started().started().started(attempt=2).started(attempt=3)
    step = replay(b.events).steps["1"]
    assert (step.status, step.attempts) == (StepStatus.RUNNING, 3)
    assert step.started_at == 2.0


def test_failure_with_retry_at_is_retrying() -> None:
    """StepFailed with a due time leaves the step RETRYING until then, with the error kept."""
    b = LogBuilder().run_started().started().failed(retry_at=30.0, error_message="timeout")
    step = replay(b.events).steps["1"]
    assert step.status is StepStatus.RETRYING
    assert (step.attempts, step.retry_at) == (1, 30.0)
    assert (step.error_type, step.error_message) == ("ValueError", "timeout")
    assert step.finished_at is None
    assert replay(b.events).status is RunStatus.RUNNING


def test_failure_without_retry_at_fails_the_step_for_good() -> None:
    """StepFailed with retry_at None leaves the step FAILED, with its error and end time."""
    b = LogBuilder().run_started().started().failed(retry_at=None, error_type="KeyError")
    step = replay(b.events).steps["1"]
    assert step.status is StepStatus.FAILED
    assert (step.error_type, step.error_message, step.retry_at) == ("KeyError", "boom", None)
    assert step.finished_at == 3.0


def test_retry_start_clears_due_time_and_counts_attempt() -> None:
    """Starting the retry makes the step RUNNING again with no due time."""
    b = LogBuilder().run_started().started().failed(retry_at=9.0).started(attempt=2)
    step = replay(b.events).steps["1"]
    assert (step.status, step.attempts, step.retry_at) == (StepStatus.RUNNING, 2, None)


def test_completion_after_retries_keeps_result_and_drops_error() -> None:
    """A step that completes on its second attempt holds the result and no error."""
    b = LogBuilder().run_started().started().failed(retry_at=9.0)
    b.started(attempt=2).completed(attempt=2, result='{"n":1}')
    step = replay(b.events).steps["1"]
    assert (step.status, step.attempts, step.result) == (StepStatus.COMPLETED, 2, '{"n":1}')
    assert (step.error_type, step.error_message, step.retry_at) == (None, None, None)
    assert (step.started_at, step.finished_at) == (2.0, 5.0)


def test_same_step_name_at_two_positions_is_two_steps() -> None:
    """A step called twice occupies two positions, each folded on its own."""
    b = LogBuilder().run_started().started(1, step="fetch").completed(1, step="fetch")
    b.started(2, step="fetch")
    state = replay(b.events)
    assert [(s.step, s.status) for s in state.steps.values()] == [
        ("fetch", StepStatus.COMPLETED),
        ("fetch", StepStatus.RUNNING),
    ]


def test_parallel_steps_interleave() -> None:
    """Two steps in flight at once fold independently, whatever the order of their events."""
    b = LogBuilder().run_started().started(1, step="fetch").started(2, step="charge")
    b.completed(2, step="charge", result="2").failed(1, step="fetch", retry_at=10.0)
    steps = replay(b.events).steps
    assert steps["1"].status is StepStatus.RETRYING
    assert (steps["2"].status, steps["2"].result) == (StepStatus.COMPLETED, "2")


def test_run_completed_keeps_the_result() -> None:
    """RunCompleted makes the run terminal with its result."""
    state = replay(LogBuilder().run_started().run_completed('"done"').events)
    assert (state.status, state.result, state.finished_at) == (RunStatus.COMPLETED, '"done"', 2.0)
    assert state.status.terminal


def test_run_failed_keeps_the_error() -> None:
    """RunFailed makes the run terminal and preserves the error that ended it."""
    b = LogBuilder().run_started().started().failed(retry_at=None, error_type="KeyError")
    b.run_failed("KeyError", "no such order")
    state = replay(b.events)
    assert state.status is RunStatus.FAILED
    assert state.status.terminal
    assert (state.error_type, state.error_message) == ("KeyError", "no such order")
    assert (state.result, state.finished_at, state.version) == (None, 4.0, 4)
    assert state.steps["1"].status is StepStatus.FAILED


@pytest.mark.parametrize("ending", ["completed", "failed"])
def test_steps_in_flight_or_retrying_when_the_run_ends_are_abandoned(ending: str) -> None:
    """A run that ends with an attempt in flight (a branch the workflow left running) or
    a retry due shows those steps abandoned, not running; ended steps keep their status."""
    b = LogBuilder().run_started().started(1).started(2).failed(2, retry_at=9.0)
    b.started(3).completed(3)
    if ending == "completed":
        b.run_completed()
    else:
        b.run_failed()
    steps = replay(b.events).steps
    assert [steps[i].status for i in ("1", "2", "3")] == [
        StepStatus.ABANDONED,
        StepStatus.ABANDONED,
        StepStatus.COMPLETED,
    ]
    assert steps["2"].retry_at is None
