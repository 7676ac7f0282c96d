"""The turn's state machine: everything that affects the turn's state machine lives here.

A turn (``turns.Turn``) does the I/O: model calls, commits, events, tool steps. What it
does next is decided here, from plain facts it reports (the call's stop string, how many
tool calls it made and whether they can run, token counts, budgets, whether a steer waits,
whether a boundary interrupt was asked for, the structured-output verdict, how full the
context is). Nothing here awaits, reads the store or emits: the rules can be read in one
place and tested without a daemon, in the way h11 keeps its protocol state apart from its
sockets.

The states and every allowed move between them are in ``TABLE``, one row per transition
with the reason it happens. ``TurnMachine.to`` refuses any other move with
``IllegalTransition``: a move outside the table is a bug in the driver, not a user error.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

from warren.protocol.types import BudgetUse, StopReason

from . import budgets


class State(enum.Enum):
    """Where a turn is. The three last ones are terminal: the turn's end is committed."""

    STARTING = "starting"  # history, model and tools loaded; turn_started sent
    COMPACTING = "compacting"  # a summary call replaces the older context
    CALLING_MODEL = "calling_model"  # a model call streams, then its output is judged and committed
    RUNNING_TOOLS = "running_tools"  # the call's tool step runs; its results are committed
    DONE = "done"  # ended as completed (end_turn, max_tokens, refusal, tool_use, budget_exhausted)
    INTERRUPTED = "interrupted"  # ended by turn/interrupt, $/cancelRequest or shutdown
    FAILED = "failed"  # ended with an error (turn_failed)


TERMINAL = frozenset({State.DONE, State.INTERRUPTED, State.FAILED})

_S = State

#: Every transition a turn may make: (from, to, why). Nothing leaves a terminal state.
TABLE: tuple[tuple[State, State, str], ...] = (
    (_S.STARTING, _S.COMPACTING, "session/compact, or the context already fills the window"),
    (_S.STARTING, _S.CALLING_MODEL, "the first model call"),
    (_S.STARTING, _S.DONE, "max_turn_duration_ms ran out"),
    (_S.STARTING, _S.INTERRUPTED, "turn/interrupt, $/cancelRequest or shutdown"),
    (_S.STARTING, _S.FAILED, "a provider, store or internal error"),
    (_S.COMPACTING, _S.CALLING_MODEL, "the summary is committed; the call it made room for"),
    (_S.COMPACTING, _S.DONE, "session/compact's summary is committed, or max_turn_duration_ms ran out"),
    (_S.COMPACTING, _S.INTERRUPTED, "turn/interrupt, $/cancelRequest or shutdown"),
    (_S.COMPACTING, _S.FAILED, "a provider, store or internal error"),
    (_S.CALLING_MODEL, _S.CALLING_MODEL, "a structured-output correction, or a steer, asks for another call"),
    (_S.CALLING_MODEL, _S.COMPACTING, "the same, once the context reached the compaction threshold"),
    (_S.CALLING_MODEL, _S.RUNNING_TOOLS, "the model asked for tools the toolbox can run, within budget"),
    (_S.CALLING_MODEL, _S.DONE, "a final answer, calls left pending, a budget spent, or max_turn_duration_ms"),
    (_S.CALLING_MODEL, _S.INTERRUPTED, "turn/interrupt, $/cancelRequest or shutdown"),
    (_S.CALLING_MODEL, _S.FAILED, "a provider, store or internal error"),
    (_S.RUNNING_TOOLS, _S.CALLING_MODEL, "the results are committed; the model sees them"),
    (_S.RUNNING_TOOLS, _S.COMPACTING, "the same, once the context reached the compaction threshold"),
    (_S.RUNNING_TOOLS, _S.DONE, "max_turn_duration_ms ran out"),
    (_S.RUNNING_TOOLS, _S.INTERRUPTED, "turn/interrupt now, or when: boundary once the step is committed"),
    (_S.RUNNING_TOOLS, _S.FAILED, "a provider, store or internal error"),
)

TRANSITIONS: dict[State, frozenset[State]] = {
    state: frozenset(to for start, to, _ in TABLE if start is state) for state in State
}


class IllegalTransition(RuntimeError):
    """The driver asked for a move the table does not allow: a bug in ``Turn``."""

    def __init__(self, start: State, to: State) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[start])) or "nothing (terminal)"
        super().__init__(f"turn state machine: {start.value} -> {to.value} is not allowed; from {start.value}: {allowed}")
        self.start, self.to = start, to


class TurnMachine:
    """The state of one turn; ``to`` moves it, along the table only."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.STARTING

    def to(self, state: State) -> State:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, state)
        self.state = state
        return state

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL


class Next(enum.Enum):
    """What follows a committed model call or tool step."""

    CALL_AGAIN = "call_again"  # another model call (compacting first when due)
    RUN_TOOLS = "run_tools"
    END = "end"  # the commit ended the turn
    BOUNDARY = "boundary"  # end the turn as interrupted, its tool step committed


class CallFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished model call and the turn so far say, as plain values."""

    stop: str | None  # the provider's stop string
    calls: int  # tool calls the model asked for in this call
    runnable: bool  # the toolbox can run all of them now (no client that executes tools: no)
    tokens: int  # the turn's total tokens, this call included
    earlier_calls: int = 0  # tool calls of the turn's earlier model calls
    max_tokens: int | None = None
    max_tool_calls: int | None = None
    schema: bool = False  # the turn has an output_schema to check answers against


class CallDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The judgement of a model call, before any steer is considered."""

    stop: StopReason
    final: bool  # no tool step follows: the turn ends unless a correction or steer goes on
    exhausted: BudgetUse | None = None  # the budget this call spent (only when it asked for tools)
    check_answer: bool = False  # a final end_turn answer to check against output_schema


class CallOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How the call is committed and what follows it."""

    end: StopReason | None  # the commit ends the turn with this stop reason
    refuse: BudgetUse | None  # its tool calls get error results: this budget is spent
    next: Next


Verdict = Literal["accepted", "retry", "failed"]


def stop_reason(stop: str | None) -> StopReason:
    """The stop reason of a call that asked for no tools: the provider's when it is one the
    protocol names, else ``end_turn``."""
    if stop in ("end_turn", "max_tokens", "refusal"):
        return stop  # type: ignore[return-value]
    return "end_turn"


def compaction_due(*, enabled: bool, filled: int, threshold: float, window: int) -> bool:
    """Whether to compact before the next call: ``filled`` is the last call's reported input
    tokens, or before the first call (and right after a compaction) an estimate."""
    return enabled and filled >= threshold * window


def before_call(*, compact: bool) -> State:
    """The state a turn enters to make its next model call."""
    return State.COMPACTING if compact else State.CALLING_MODEL


def call_warnings(
    *, tokens: int, calls: int, earlier_calls: int, max_tokens: int | None, max_tool_calls: int | None,
    warned: set[str] | frozenset[str],
) -> tuple[BudgetUse, ...]:
    """The ``budget_warning`` events a finished call makes due, in the order they go out:
    tokens after every call, tool calls only after a call that asked for some. They are
    sent before the call is judged (``after_call``), whatever the judgement."""
    warnings: list[BudgetUse] = []
    if budgets.warning_due("max_tokens", tokens, max_tokens, warned):
        assert max_tokens is not None
        warnings.append(BudgetUse("max_tokens", tokens, max_tokens))
    if calls and budgets.warning_due("max_tool_calls", earlier_calls + calls, max_tool_calls, warned):
        assert max_tool_calls is not None
        warnings.append(BudgetUse("max_tool_calls", earlier_calls + calls, max_tool_calls))
    return tuple(warnings)


def after_call(f: CallFacts) -> CallDecision:
    """Judge a finished call. Budgets only stop a turn that would go on: a call that asked
    for no tools is a final answer and stands, whatever it cost; one that asked for tools
    once ``max_tokens`` is reached or ``max_tool_calls`` exceeded ends ``budget_exhausted``.
    Calls the toolbox cannot run end the turn with ``tool_use`` (they wait for staged
    results)."""
    if not f.calls:
        stop = stop_reason(f.stop)
        return CallDecision(stop=stop, final=True, check_answer=f.schema and stop == "end_turn")
    exhausted = budgets.exhaustion(
        tokens=f.tokens, max_tokens=f.max_tokens, tool_calls=f.earlier_calls + f.calls, max_tool_calls=f.max_tool_calls
    )
    if exhausted is not None:
        return CallDecision(stop="budget_exhausted", final=True, exhausted=exhausted)
    return CallDecision(stop="tool_use", final=not f.runnable)


def answer_verdict(*, problems: int, attempt: int, retries: int) -> Verdict:
    """A final answer checked against ``output_schema`` (``attempt`` counts from 1): valid
    answers stand; an invalid one is corrected while attempts remain (``retries`` beyond
    the first), after that the turn ends with the error recorded."""
    if not problems:
        return "accepted"
    return "retry" if attempt <= retries else "failed"


def steer_may_join(d: CallDecision, *, stop_at_boundary: bool) -> bool:
    """Whether a waiting steer could carry the turn on after this call: only after an
    answer (a user message may not stand between tool calls and their results), and not
    when the turn was asked to stop at its next boundary."""
    return d.final and d.stop == "end_turn" and not stop_at_boundary


def call_outcome(d: CallDecision, *, steered: bool) -> CallOutcome:
    """How to commit the call: a final call ends the turn, unless a steer joined it; a
    spent budget refuses the calls; otherwise the tool step runs."""
    end = d.stop if d.final and not steered else None
    refuse = d.exhausted if d.stop == "budget_exhausted" else None
    if end is not None:
        return CallOutcome(end=end, refuse=refuse, next=Next.END)
    return CallOutcome(end=None, refuse=refuse, next=Next.CALL_AGAIN if steered else Next.RUN_TOOLS)


def after_tools(*, stop_at_boundary: bool) -> Next:
    """After a tool step's results are committed: the next call, or the boundary interrupt."""
    return Next.BOUNDARY if stop_at_boundary else Next.CALL_AGAIN


def ended_by(stop: StopReason) -> State:
    """The terminal state of a turn cut short (``_finish_interrupted``): interrupted, or, when
    its time budget ran out, completed with ``budget_exhausted``."""
    return State.INTERRUPTED if stop == "interrupted" else State.DONE
