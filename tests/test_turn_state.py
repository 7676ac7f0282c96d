"""The turn's state machine on its own: the transition table and each decision rule, from
plain facts, with no daemon, store or provider (the end-to-end behaviour is judged by
test_turns.py and its neighbours)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren.daemon.core import budgets, turn_state
from warren.daemon.core.turn_state import (
    TABLE,
    TERMINAL,
    TRANSITIONS,
    CallDecision,
    CallFacts,
    IllegalTransition,
    Next,
    State,
    TurnMachine,
)
from warren.protocol.types import BudgetUse


def machine_at(state: State) -> TurnMachine:
    machine = TurnMachine()
    machine.state = state
    return machine


def warnings(f: CallFacts, warned: frozenset[str] = frozenset()) -> tuple[BudgetUse, ...]:
    return turn_state.call_warnings(tokens=f.tokens, calls=f.calls, earlier_calls=f.earlier_calls,
                                    max_tokens=f.max_tokens, max_tool_calls=f.max_tool_calls, warned=warned)


def facts(**kw: object) -> CallFacts:
    base: dict[str, object] = {"stop": "end_turn", "calls": 0, "runnable": False, "tokens": 10}
    base.update(kw)
    return CallFacts(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the table


def test_a_turn_starts_in_starting() -> None:
    assert TurnMachine().state is State.STARTING
    assert not TurnMachine().ended


def test_the_table_lists_each_transition_once_with_a_reason() -> None:
    pairs = [(a, b) for a, b, _ in TABLE]
    assert len(pairs) == len(set(pairs))
    assert all(why for _, _, why in TABLE)
    assert TRANSITIONS == {s: frozenset(b for a, b in pairs if a is s) for s in State}


@pytest.mark.parametrize(("start", "to"), [(a, b) for a, b, _ in TABLE])
def test_every_listed_transition_is_allowed(start: State, to: State) -> None:
    machine = machine_at(start)
    assert machine.to(to) is to
    assert machine.state is to


@pytest.mark.parametrize(
    ("start", "to"), [(a, b) for a, b in itertools.product(State, State) if b not in TRANSITIONS[a]]
)
def test_every_other_transition_is_refused(start: State, to: State) -> None:
    machine = machine_at(start)
    with pytest.raises(IllegalTransition, match=f"{start.value} -> {to.value} is not allowed"):
        machine.to(to)
    assert machine.state is start


def test_terminal_states_have_no_way_out_and_every_active_state_can_end() -> None:
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
        assert machine_at(state).ended
    for state in set(State) - TERMINAL:
        assert {State.INTERRUPTED, State.FAILED, State.DONE} <= TRANSITIONS[state]


def test_the_boundary_interrupt_leaves_only_from_a_tool_step_or_by_cancelling() -> None:
    assert State.INTERRUPTED in TRANSITIONS[State.RUNNING_TOOLS]
    assert turn_state.after_tools(stop_at_boundary=True) is Next.BOUNDARY
    assert turn_state.after_tools(stop_at_boundary=False) is Next.CALL_AGAIN


def test_an_illegal_transition_is_an_internal_error_that_names_what_was_allowed() -> None:
    with pytest.raises(IllegalTransition) as caught:
        machine_at(State.DONE).to(State.CALLING_MODEL)
    assert isinstance(caught.value, RuntimeError)
    assert "nothing (terminal)" in str(caught.value)
    assert caught.value.start is State.DONE and caught.value.to is State.CALLING_MODEL


# ---------------------------------------------------------------- stop reasons and final answers


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("end_turn", "end_turn"), ("max_tokens", "max_tokens"), ("refusal", "refusal"), (None, "end_turn"),
     ("stop_sequence", "end_turn"), ("tool_use", "end_turn")],
)
def test_the_stop_reason_of_an_answer(stop: str | None, expected: str) -> None:
    d = turn_state.after_call(facts(stop=stop))
    assert (d.stop, d.final, d.exhausted) == (expected, True, None)


def test_a_final_answer_stands_whatever_the_budgets() -> None:
    f = facts(tokens=500, max_tokens=100, earlier_calls=9, max_tool_calls=1)
    d = turn_state.after_call(f)
    assert d.stop == "end_turn" and d.final and d.exhausted is None
    assert warnings(f) == (BudgetUse("max_tokens", 500, 100),)
    assert turn_state.call_outcome(d, steered=False) == turn_state.CallOutcome(end="end_turn", refuse=None, next=Next.END)


def test_runnable_calls_run_a_tool_step() -> None:
    d = turn_state.after_call(facts(stop="tool_use", calls=2, runnable=True))
    assert (d.stop, d.final) == ("tool_use", False)
    assert turn_state.call_outcome(d, steered=False).next is Next.RUN_TOOLS


def test_calls_nobody_can_run_end_the_turn_with_tool_use() -> None:
    d = turn_state.after_call(facts(stop="tool_use", calls=2, runnable=False))
    assert (d.stop, d.final, d.check_answer) == ("tool_use", True, False)
    assert turn_state.call_outcome(d, steered=False) == turn_state.CallOutcome(end="tool_use", refuse=None, next=Next.END)


# ---------------------------------------------------------------- budgets


def test_max_tokens_reached_stops_a_turn_that_would_go_on() -> None:
    d = turn_state.after_call(facts(calls=1, runnable=True, tokens=100, max_tokens=100))
    assert (d.stop, d.final) == ("budget_exhausted", True)
    assert d.exhausted == BudgetUse("max_tokens", 100, 100)
    outcome = turn_state.call_outcome(d, steered=False)
    assert outcome == turn_state.CallOutcome(end="budget_exhausted", refuse=d.exhausted, next=Next.END)
    assert budgets.refusal("max_tokens") == "Not run: the turn's max_tokens budget is exhausted"


def test_max_tool_calls_stops_only_when_exceeded() -> None:
    f = facts(calls=2, runnable=True, earlier_calls=1, max_tool_calls=3)
    within = turn_state.after_call(f)
    assert within.stop == "tool_use" and within.exhausted is None
    assert warnings(f) == (BudgetUse("max_tool_calls", 3, 3),)
    over = turn_state.after_call(facts(calls=2, runnable=True, earlier_calls=2, max_tool_calls=3))
    assert over.stop == "budget_exhausted" and over.exhausted == BudgetUse("max_tool_calls", 4, 3)


def test_tokens_are_checked_before_tool_calls() -> None:
    d = turn_state.after_call(facts(calls=5, runnable=True, tokens=50, max_tokens=10, max_tool_calls=1))
    assert d.exhausted == BudgetUse("max_tokens", 50, 10)


def test_an_exhausted_budget_refuses_even_calls_nobody_could_run() -> None:
    d = turn_state.after_call(facts(calls=1, runnable=False, max_tool_calls=0))
    assert d.stop == "budget_exhausted"
    assert turn_state.call_outcome(d, steered=False).refuse == BudgetUse("max_tool_calls", 1, 0)


def test_warnings_at_80_percent_once_per_budget() -> None:
    assert warnings(facts(tokens=79, max_tokens=100)) == ()
    assert warnings(facts(tokens=80, max_tokens=100)) == (BudgetUse("max_tokens", 80, 100),)
    assert warnings(facts(tokens=90, max_tokens=100), frozenset({"max_tokens"})) == ()
    both = warnings(facts(calls=1, runnable=True, tokens=9, max_tokens=10, max_tool_calls=1))
    assert [w.budget for w in both] == ["max_tokens", "max_tool_calls"]
    assert warnings(facts(calls=1, runnable=True, tokens=10**6)) == ()
    assert warnings(facts(earlier_calls=5, max_tool_calls=1)) == ()  # no calls: nothing to count


def test_the_time_budget_reports_at_least_its_limit() -> None:
    assert budgets.duration_spent(990, 1000) == BudgetUse("max_turn_duration_ms", 1000, 1000)
    assert budgets.duration_spent(1234, 1000) == BudgetUse("max_turn_duration_ms", 1234, 1000)
    assert turn_state.ended_by("budget_exhausted") is State.DONE
    assert turn_state.ended_by("interrupted") is State.INTERRUPTED


# ---------------------------------------------------------------- steer


def test_a_steer_joins_after_an_answer_and_the_turn_goes_on() -> None:
    d = turn_state.after_call(facts())
    assert turn_state.steer_may_join(d, stop_at_boundary=False)
    assert turn_state.call_outcome(d, steered=True) == turn_state.CallOutcome(end=None, refuse=None, next=Next.CALL_AGAIN)


@pytest.mark.parametrize(
    "f",
    [facts(calls=1, runnable=True), facts(calls=1, runnable=False), facts(stop="max_tokens"),
     facts(stop="refusal"), facts(calls=1, runnable=True, max_tool_calls=0)],
    ids=["tool_step", "pending_calls", "max_tokens", "refusal", "budget_exhausted"],
)
def test_a_steer_never_joins_between_calls_and_results_or_after_another_end(f: CallFacts) -> None:
    assert not turn_state.steer_may_join(turn_state.after_call(f), stop_at_boundary=False)


def test_a_boundary_interrupt_keeps_a_steer_waiting() -> None:
    assert not turn_state.steer_may_join(turn_state.after_call(facts()), stop_at_boundary=True)


# ---------------------------------------------------------------- structured output


def test_only_a_final_end_turn_answer_is_checked_and_only_with_a_schema() -> None:
    assert turn_state.after_call(facts(schema=True)).check_answer
    assert not turn_state.after_call(facts(schema=False)).check_answer
    assert not turn_state.after_call(facts(schema=True, stop="max_tokens")).check_answer
    assert not turn_state.after_call(facts(schema=True, calls=1, runnable=False)).check_answer


def test_structured_retries_up_to_the_limit() -> None:
    verdicts = [turn_state.answer_verdict(problems=1, attempt=a, retries=2) for a in (1, 2, 3)]
    assert verdicts == ["retry", "retry", "failed"]
    assert turn_state.answer_verdict(problems=0, attempt=3, retries=2) == "accepted"
    assert turn_state.answer_verdict(problems=2, attempt=1, retries=0) == "failed"


# ---------------------------------------------------------------- compaction


def test_compaction_at_the_threshold() -> None:
    due = dict(enabled=True, threshold=0.8, window=1000)
    assert not turn_state.compaction_due(filled=799, **due)  # type: ignore[arg-type]
    assert turn_state.compaction_due(filled=800, **due)  # type: ignore[arg-type]
    assert not turn_state.compaction_due(enabled=False, filled=10**9, threshold=0.8, window=1000)
    assert turn_state.before_call(compact=True) is State.COMPACTING
    assert turn_state.before_call(compact=False) is State.CALLING_MODEL


# ---------------------------------------------------------------- properties over random facts

_limits = st.one_of(st.none(), st.integers(0, 50))
_facts = st.builds(
    CallFacts,
    stop=st.sampled_from([None, "end_turn", "max_tokens", "refusal", "tool_use", "other"]),
    calls=st.integers(0, 5),
    runnable=st.booleans(),
    tokens=st.integers(0, 100),
    earlier_calls=st.integers(0, 20),
    max_tokens=st.one_of(st.none(), st.integers(1, 100)),
    max_tool_calls=_limits,
    schema=st.booleans(),
)


@given(_facts, st.booleans(), st.booleans(), st.frozensets(st.sampled_from(["max_tokens", "max_tool_calls"])))
def test_a_decision_is_coherent(f: CallFacts, steer_waiting: bool, boundary: bool, warned: frozenset[str]) -> None:
    d = turn_state.after_call(f)
    steered = turn_state.steer_may_join(d, stop_at_boundary=boundary) and steer_waiting
    outcome = turn_state.call_outcome(d, steered=steered)
    if d.exhausted is not None or d.stop == "budget_exhausted":
        # a spent budget ends the turn, refuses the calls and never runs tools
        assert d.stop == "budget_exhausted" and d.exhausted is not None and f.calls > 0
        assert outcome.next is Next.END and outcome.refuse == d.exhausted
    if f.calls == 0:
        # a final answer stands
        assert d.final and d.exhausted is None and d.stop in ("end_turn", "max_tokens", "refusal")
    if outcome.next is Next.RUN_TOOLS:
        assert f.calls > 0 and f.runnable and d.stop == "tool_use" and outcome.refuse is None
    if steered:
        assert f.calls == 0 and d.stop == "end_turn" and not boundary and outcome.next is Next.CALL_AGAIN
    assert (outcome.end is not None) == (outcome.next is Next.END)
    assert all(w.budget not in warned and w.used >= 0.8 * w.limit for w in warnings(f, warned))
    assert d.check_answer == (f.schema and f.calls == 0 and d.stop == "end_turn")


@given(st.lists(st.sampled_from(list(State)), max_size=12))
def test_the_machine_never_moves_after_it_ended(moves: list[State]) -> None:
    machine = TurnMachine()
    for to in moves:
        before = machine.state
        if before in TERMINAL or to not in TRANSITIONS[before]:
            with pytest.raises(IllegalTransition):
                machine.to(to)
            assert machine.state is before
        else:
            machine.to(to)
        assert machine.state in TRANSITIONS[before] | {before}


@given(_facts, st.booleans(), st.booleans(), st.booleans())
def test_driving_the_decisions_follows_the_table(f: CallFacts, steer_waiting: bool, boundary: bool,
                                                 compact: bool) -> None:
    """The moves ``Turn`` makes from a decision are always moves the table allows."""
    machine = TurnMachine()
    machine.to(turn_state.before_call(compact=compact))
    if machine.state is State.COMPACTING:
        machine.to(State.CALLING_MODEL)
    d: CallDecision = turn_state.after_call(f)
    outcome = turn_state.call_outcome(d, steered=turn_state.steer_may_join(d, stop_at_boundary=boundary)
                                      and steer_waiting)
    if outcome.next is Next.END:
        machine.to(State.DONE)
        assert machine.ended
        return
    if outcome.next is Next.RUN_TOOLS:
        machine.to(State.RUNNING_TOOLS)
        if turn_state.after_tools(stop_at_boundary=boundary) is Next.BOUNDARY:
            machine.to(State.INTERRUPTED)
            assert machine.ended
            return
    machine.to(turn_state.before_call(compact=compact))
    assert not machine.ended
