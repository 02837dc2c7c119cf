"""The decision functions: one action per operation state, taken from the fold alone."""

from __future__ import annotations

import copy

import msgspec
import pytest
from hypothesis import given, settings
from strategies import STEP_NAMES, LogBuilder, SimulatedRun, simulated_runs

from aruntime._decide import (
    INTERRUPTED,
    Cancel,
    Execute,
    GiveUp,
    Mismatch,
    Raise,
    Record,
    Replay,
    Resume,
    StepAction,
    WaitUntil,
    deadline_passed,
    next_sleep_action,
    next_step_action,
)
from aruntime.events import (
    CancelRequested,
    Event,
    OperationCancelled,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from aruntime.state import RunState, StepStatus, fold_into, replay

decide_settings = settings(max_examples=200, deadline=None)


def next_action(
    state: RunState,
    position: int | str,
    step: str,
    max_attempts: int,
    now: float = 0.0,
    *,
    digest: str = "",
    cancel_pending: bool = False,
) -> StepAction:
    """The step decision at a root position, with no cancellation pending."""
    return next_step_action(
        state,
        str(position),
        step,
        digest=digest,
        max_attempts=max_attempts,
        now=now,
        cancel_pending=cancel_pending,
    )


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
    assert next_action(state, 2, "charge", 3) == Execute(1)


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
    """A failed attempt with a due time leads to a wait until then, then the next attempt."""
    state = _state(_started().started().failed(retry_at=42.5))
    assert next_action(state, 1, "fetch", 3, now=40.0) == WaitUntil(42.5)
    assert next_action(state, 1, "fetch", 3, now=42.5) == Execute(2)


def test_running_step_below_limit_executes_next_attempt_at_once() -> None:
    """An attempt lost to a crash is followed by the next attempt with no wait."""
    state = _state(_started().started().failed(retry_at=3.5).started(attempt=2))
    assert next_action(state, 1, "fetch", 3) == Execute(3)


def test_running_step_at_limit_gives_up() -> None:
    """When the last allowed attempt was lost to a crash, the step is given up."""
    state = _state(_started().started().started(attempt=2).started(attempt=3))
    assert next_action(state, 1, "fetch", 3) == GiveUp(3)


def test_running_step_above_limit_gives_up() -> None:
    """A log with more attempts than the current limit (the limit was lowered) gives up too."""
    state = _state(_started().started().started(attempt=2).started(attempt=3))
    assert next_action(state, 1, "fetch", 2) == GiveUp(3)


def test_resume_sets_aside_the_attempts_in_flight_when_the_run_was_parked() -> None:
    """After RunResumed the attempts lost before the park no longer count: the step gets
    a full set of attempts again, numbered on from the log's."""
    b = _started().started().started(attempt=2).resumed()
    assert next_action(_state(b), 1, "fetch", 2) == Execute(3)
    b.started(attempt=3).started(attempt=4)
    assert next_action(_state(b), 1, "fetch", 2) == GiveUp(4)


def test_resume_leaves_a_retrying_step_its_failures() -> None:
    """Only attempts in flight are set aside: recorded failures still count."""
    b = _started().started().failed(retry_at=3.5).resumed().started(attempt=2)
    assert next_action(_state(b), 1, "fetch", 2) == GiveUp(2)


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


@pytest.mark.parametrize("status", [s for s in StepStatus if s is not StepStatus.CANCELLED])
def test_other_step_name_at_recorded_position_is_a_mismatch(status: StepStatus) -> None:
    """Whatever the recorded step's status, asking another name there is non-determinism."""
    b = _started().started(step="fetch")
    if status is StepStatus.COMPLETED:
        b.completed(step="fetch")
    elif status is StepStatus.FAILED:
        b.failed(step="fetch", retry_at=None)
    elif status is StepStatus.RETRYING:
        b.failed(step="fetch", retry_at=9.0)
    elif status is StepStatus.ABANDONED:
        b.run_completed()
    state = _state(b)
    assert state.steps["1"].status is status
    assert next_action(state, 1, "charge", 3) == Mismatch("step 'fetch'", "step 'charge'")


def test_parallel_positions_are_decided_independently() -> None:
    """Each position is decided from its own step state."""
    b = _started().started(1, step="fetch").started(2, step="charge")
    b.completed(2, step="charge", result="2").failed(1, step="fetch", retry_at=8.0)
    state = _state(b)
    assert next_action(state, 1, "fetch", 3) == WaitUntil(8.0)
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
    positions = range(1, max((s.position for s in state.steps.values()), default=0) + 2)
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
            previous = state.steps.get(str(event.position))
            due = previous.retry_at if previous is not None else None
            action = next_action(state, event.position, event.step, run.max_attempts, event.at)
            assert action == Execute(event.attempt)
            assert due is None or event.at >= due
            if due is not None and due > 0:
                early = next_action(state, event.position, event.step, run.max_attempts, due / 2)
                assert early == WaitUntil(due) or due / 2 >= due
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
        for identity, step in state.steps.items():
            action = next_action(state, identity, step.step, run.max_attempts, 1e12)
            if isinstance(action, Execute):
                assert action.attempt <= run.max_attempts


# --- arguments, sleeps, cancellation -----------------------------------------------------


def test_other_arguments_at_a_recorded_step_are_a_mismatch() -> None:
    """The same step with arguments of another digest is non-determinism, naming both."""
    b = _started()
    b.events.append(
        StepStarted(sequence=2, at=2.0, position=1, step="fetch", attempt=1, digest="aaaa")
    )
    state = _state(b)
    assert next_action(state, 1, "fetch", 3, digest="aaaa") == Execute(2)
    assert next_action(state, 1, "fetch", 3, digest="bbbb") == Mismatch(
        "step 'fetch' with arguments of digest aaaa", "step 'fetch' with arguments of digest bbbb"
    )
    assert next_action(state, 1, "fetch", 3, digest="") == Execute(2)  # unrecorded: unchecked


def _with(events: list[Event]) -> RunState:
    """A run's state after `events`, numbered from 2 whatever sequence they carry."""
    log: list[Event] = [RunStarted(sequence=1, at=1.0, run_id="r", workflow="w", args="[[],{}]")]
    log += [msgspec.structs.replace(e, sequence=n) for n, e in enumerate(events, start=2)]
    return replay(log)


def test_new_sleep_records_the_asked_wake_time() -> None:
    """A sleep the log has not seen records the wake-up time the workflow asks for."""
    state = _with([])
    assert next_sleep_action(state, "1", wake_at=50.0, now=10.0, cancel_pending=False) == Record(
        50.0
    )


def test_recorded_sleep_keeps_its_wake_time_and_waits_only_the_rest() -> None:
    """On replay the recorded wake time counts, not the one asked again; a past one is over."""
    state = _with([SleepStarted(sequence=0, at=2.0, position=1, wake_at=50.0)])
    ask = {"wake_at": 999.0, "cancel_pending": False}
    assert next_sleep_action(state, "1", now=10.0, **ask) == WaitUntil(50.0)  # type: ignore[arg-type]
    assert next_sleep_action(state, "1", now=50.0, **ask) == Resume()  # type: ignore[arg-type]


def test_sleep_where_a_step_was_recorded_is_a_mismatch() -> None:
    """Asking for a sleep at a step's identity, or a step at a sleep's, is non-determinism."""
    state = _with(
        [
            StepStarted(sequence=0, at=2.0, position=1, step="fetch", attempt=1),
            SleepStarted(sequence=0, at=3.0, position=2, wake_at=50.0),
        ]
    )
    assert next_sleep_action(state, "1", wake_at=9.0, now=0.0, cancel_pending=False) == Mismatch(
        "step 'fetch'", "a sleep"
    )
    assert next_action(state, 2, "fetch", 3) == Mismatch("a sleep", "step 'fetch'")


def test_pending_cancellation_is_delivered_at_the_frontier_not_at_replayed_steps() -> None:
    """With a cancellation to deliver, completed steps still replay; the first operation
    that would act gets it (recorded when it is in flight, not when it never started)."""
    state = _with(
        [
            StepStarted(sequence=0, at=2.0, position=1, step="a", attempt=1),
            StepCompleted(sequence=0, at=3.0, position=1, step="a", attempt=1, result="1"),
            StepStarted(sequence=0, at=4.0, position=2, step="b", attempt=1),
            CancelRequested(sequence=0, at=5.0, reason="user"),
        ]
    )
    assert next_action(state, 1, "a", 3, cancel_pending=True) == Replay("1")
    assert next_action(state, 2, "b", 3, cancel_pending=True) == Cancel(record=True)
    assert next_action(state, 3, "c", 3, cancel_pending=True) == Cancel(record=False)
    assert next_action(state, 3, "c", 3, cancel_pending=False) == Execute(1)


def test_operation_recorded_cancelled_delivers_the_cancellation_again() -> None:
    """A step or sleep the cancellation reached replays as that cancellation."""
    state = _with(
        [
            StepStarted(sequence=0, at=2.0, position=1, step="a", attempt=1),
            SleepStarted(sequence=0, at=2.5, position=2, wake_at=90.0, branch="1"),
            CancelRequested(sequence=0, at=3.0, reason="user"),
            OperationCancelled(sequence=0, at=4.0, position=1),
            OperationCancelled(sequence=0, at=4.0, position=2, branch="1"),
        ]
    )
    assert state.steps["1"].status is StepStatus.CANCELLED
    assert next_action(state, 1, "a", 3) == Cancel(record=False)
    assert next_sleep_action(state, "1.2", wake_at=0.0, now=100.0, cancel_pending=False) == Cancel(
        record=False
    )


def test_deadline_passes_once_and_only_while_nothing_was_requested() -> None:
    """The run's deadline asks for a cancellation when it comes, unless one was asked."""
    log = [RunStarted(sequence=1, at=1.0, run_id="r", workflow="w", args="[[],{}]", deadline=10.0)]
    state = replay(log)
    assert not deadline_passed(state, 9.9)
    assert deadline_passed(state, 10.0)
    cancelled = replay([CancelRequested(sequence=2, at=10.0, reason="timeout")], state)
    assert not deadline_passed(cancelled, 11.0)
