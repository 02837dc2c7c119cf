"""`next_action`: one decision per step state, taken from the fold alone."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from strategies import STEP_NAMES, LogBuilder, SimulatedRun, simulated_runs

from aruntime._decide import (
    INTERRUPTED,
    Execute,
    GiveUp,
    Mismatch,
    Raise,
    Replay,
    next_action,
)
from aruntime.events import StepCompleted, StepFailed, StepStarted
from aruntime.state import RunState, StepStatus, fold_into, replay

decide_settings = settings(max_examples=200, deadline=None)


def _state(builder: LogBuilder) -> RunState:
    return replay(builder.events)


def _started() -> LogBuilder:
    return LogBuilder().run_started()


# --- one test per branch ---------------------------------------------------------------


def test_unrecorded_position_executes_first_attempt() -> None:
    """A position the log has not seen yet runs attempt 1 at once."""
    assert next_action(_state(_started()), 1, "fetch", 3) == Execute(1)


def test_position_past_the_recorded_ones_executes_first_attempt() -> None:
    """After the recorded steps, the next position is new and runs attempt 1."""
    state = _state(_started().started(1).completed(1))
    assert next_action(state, 2, "charge", 3) == Execute(1, None)


def test_completed_step_replays_its_result() -> None:
    """A completed step is not run again; its recorded result is returned."""
    state = _state(_started().started().completed(result='{"id":7}'))
    assert next_action(state, 1, "fetch", 3) == Replay('{"id":7}')


def test_step_failed_for_good_raises_its_error_again() -> None:
    """A step that failed for good raises the recorded error with its attempt count."""
    b = _started().started().failed(retry_at=3.5).started(attempt=2)
    b.failed(attempt=2, retry_at=None, error_type="KeyError", error_message="no order")
    assert next_action(_state(b), 1, "fetch", 3) == Raise(2, "KeyError", "no order")


def test_retrying_step_executes_next_attempt_not_before_its_due_time() -> None:
    """A failed attempt with a due time leads to the next attempt, no earlier than that time."""
    state = _state(_started().started().failed(retry_at=42.5))
    assert next_action(state, 1, "fetch", 3) == Execute(2, not_before=42.5)


def test_running_step_below_limit_executes_next_attempt_at_once() -> None:
    """An attempt lost to a crash is followed by the next attempt with no wait."""
    state = _state(_started().started().failed(retry_at=3.5).started(attempt=2))
    assert next_action(state, 1, "fetch", 3) == Execute(3, not_before=None)


def test_running_step_at_limit_gives_up() -> None:
    """When the last allowed attempt was lost to a crash, the step is given up."""
    state = _state(_started().started().started(attempt=2).started(attempt=3))
    assert next_action(state, 1, "fetch", 3) == GiveUp(3)


def test_running_step_above_limit_gives_up() -> None:
    """A log with more attempts than the current limit (the limit was lowered) gives up too."""
    state = _state(_started().started().started(attempt=2).started(attempt=3))
    assert next_action(state, 1, "fetch", 2) == GiveUp(3)


def test_crash_loop_cannot_exceed_the_attempt_limit() -> None:
    """Crashing during every attempt ends in GiveUp after exactly max_attempts starts."""
    b = _started()
    for _ in range(10):
        action = next_action(_state(b), 1, "fetch", 4)
        if not isinstance(action, Execute):
            break
        b.started(attempt=action.attempt)  # and the process dies before an outcome
    assert action == GiveUp(4)
    assert sum(isinstance(e, StepStarted) for e in b.events) == 4


def test_given_up_step_raises_interrupted() -> None:
    """Once GiveUp is recorded as a final failure, the step raises the interruption."""
    b = _started().started()
    b.failed(retry_at=None, error_type=INTERRUPTED, error_message="lost")
    assert next_action(_state(b), 1, "fetch", 1) == Raise(1, INTERRUPTED, "lost")


@pytest.mark.parametrize("status", list(StepStatus))
def test_other_step_name_at_recorded_position_is_a_mismatch(status: StepStatus) -> None:
    """Whatever the recorded step's status, asking another name there is non-determinism."""
    b = _started().started(step="fetch")
    if status is StepStatus.COMPLETED:
        b.completed(step="fetch")
    elif status is StepStatus.FAILED:
        b.failed(step="fetch", retry_at=None)
    elif status is StepStatus.RETRYING:
        b.failed(step="fetch", retry_at=9.0)
    state = _state(b)
    assert state.steps[1].status is status
    assert next_action(state, 1, "charge", 3) == Mismatch("fetch")


def test_parallel_positions_are_decided_independently() -> None:
    """Each position is decided from its own step state."""
    b = _started().started(1, step="fetch").started(2, step="charge")
    b.completed(2, step="charge", result="2").failed(1, step="fetch", retry_at=8.0)
    state = _state(b)
    assert next_action(state, 1, "fetch", 3) == Execute(2, 8.0)
    assert next_action(state, 2, "charge", 3) == Replay("2")
    assert next_action(state, 3, "email", 3) == Execute(1)


def test_next_action_leaves_the_state_untouched() -> None:
    """Deciding reads the state and never changes it."""
    state = _state(_started().started().failed(retry_at=5.0).started(attempt=2))
    snapshot = copy.deepcopy(state)
    for name in ("fetch", "charge"):
        for limit in (1, 2, 3):
            next_action(state, 1, name, limit)
    assert state == snapshot


# --- properties along the model runner's logs ------------------------------------------


def _queries(state: RunState) -> list[tuple[int, str, int]]:
    positions = range(1, max(state.steps, default=0) + 2)
    return [(p, n, limit) for p in positions for n in STEP_NAMES for limit in (1, 2, 4)]


@decide_settings
@given(simulated_runs())
def test_decision_is_a_function_of_the_fold(run: SimulatedRun) -> None:
    """Equal states reached by different fold paths give equal actions, every time asked."""
    log = list(run.events)
    incremental = RunState()
    for n in range(len(log) + 1):
        if n:
            fold_into(incremental, [log[n - 1]])
        whole = replay(log[:n])
        resumed = replay(log[n // 2 : n], replay(log[: n // 2]))
        assert whole == incremental == resumed
        snapshot = copy.deepcopy(whole)
        for position, name, limit in _queries(whole):
            action = next_action(whole, position, name, limit)
            assert next_action(incremental, position, name, limit) == action
            assert next_action(resumed, position, name, limit) == action
            assert next_action(whole, position, name, limit) == action
        assert whole == snapshot


@decide_settings
@given(simulated_runs())
def test_decision_matches_what_a_correct_runner_did_next(run: SimulatedRun) -> None:
    """Before each start or give-up in the log, the fold's decision is exactly that event."""
    log = list(run.events)
    for n, event in enumerate(log):
        state = replay(log[:n])
        if isinstance(event, StepStarted):
            previous = state.steps.get(event.position)
            due = previous.retry_at if previous is not None else None
            action = next_action(state, event.position, event.step, run.max_attempts)
            assert action == Execute(event.attempt, due)
            assert due is None or event.at >= due
        elif isinstance(event, StepFailed) and event.error_type == INTERRUPTED:
            action = next_action(state, event.position, event.step, run.max_attempts)
            assert action == GiveUp(event.attempt)


@decide_settings
@given(simulated_runs())
def test_finished_steps_replay_their_recorded_outcome(run: SimulatedRun) -> None:
    """A completed step replays its StepCompleted result; a failed one raises its StepFailed."""
    state = replay(run.events)
    for event in run.events:
        if isinstance(event, StepCompleted):
            expected: Replay | Raise = Replay(event.result)
        elif isinstance(event, StepFailed) and event.retry_at is None:
            expected = Raise(event.attempt, event.error_type, event.error_message)
        else:
            continue
        assert next_action(state, event.position, event.step, run.max_attempts) == expected


@decide_settings
@given(simulated_runs())
def test_decision_never_exceeds_the_attempt_limit(run: SimulatedRun) -> None:
    """Along any log written under a limit, no decision starts an attempt beyond it."""
    log = list(run.events)
    for n in range(len(log) + 1):
        state = replay(log[:n])
        for position, step in state.steps.items():
            action = next_action(state, position, step.step, run.max_attempts)
            if isinstance(action, Execute):
                assert action.attempt <= run.max_attempts
