"""A turn's budgets (PROTOCOL.md, Budgets): when a warning is due and when a budget is spent.

Pure arithmetic on counts the turn already holds, so the rules can be read and tested apart
from the I/O that counts tokens, tool calls and time.
"""

from __future__ import annotations

from warren.protocol.types import BudgetUse

#: ``budget_warning`` goes out once per budget and turn when use reaches this share of the limit.
WARN_AT = 0.8


def warning_due(budget: str, used: int, limit: int | None, warned: set[str] | frozenset[str]) -> bool:
    """Whether ``budget`` has just reached its warning mark (and was not warned of before)."""
    return limit is not None and used >= WARN_AT * limit and budget not in warned


def exhaustion(
    *, tokens: int, max_tokens: int | None, tool_calls: int, max_tool_calls: int | None
) -> BudgetUse | None:
    """The budget a model call spent, if any: ``max_tokens`` once reached, ``max_tool_calls``
    once exceeded (the calls the limit allows may all run). Tokens are checked first, so a
    call that spends both reports ``max_tokens``."""
    if max_tokens is not None and tokens >= max_tokens:
        return BudgetUse("max_tokens", tokens, max_tokens)
    if max_tool_calls is not None and tool_calls > max_tool_calls:
        return BudgetUse("max_tool_calls", tool_calls, max_tool_calls)
    return None


def duration_spent(elapsed_ms: int, limit_ms: int) -> BudgetUse:
    """The time budget as reported when it ran out: never less than the limit, since the
    deadline may fire a hair before the clock the turn reads says it passed."""
    return BudgetUse("max_turn_duration_ms", max(elapsed_ms, limit_ms), limit_ms)


def refusal(budget: str) -> str:
    """The error result given to each tool call the model asked for once a budget ran out."""
    return f"Not run: the turn's {budget} budget is exhausted"
