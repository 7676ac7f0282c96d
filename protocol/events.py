"""The ``session/event`` notification and its event types (PROTOCOL.md section 4).

Events are a tagged union on ``type``, so a client decoding with msgspec (or any JSON
Schema tool) gets the exact shape for each type.
"""

from __future__ import annotations

from typing import Any, Union

from msgspec import Struct

from .errors import ErrorObject
from .types import StopReason, Usage


class Event(Struct, tag_field="type", omit_defaults=True):
    pass


class TurnStarted(Event, tag="turn_started"):
    """``tools``: the names of the tools the model is offered in this turn (after the
    session's tools are narrowed by ``turn_tool_overlay``)."""

    provider: str
    model: str | None = None
    tools: list[str] = []


class TextDelta(Event, tag="text_delta"):
    delta: str


class ReasoningDelta(Event, tag="reasoning_delta"):
    delta: str


class ToolCallRequested(Event, tag="tool_call_requested"):
    tool_use_id: str
    name: str
    arguments: dict[str, Any]


class ToolExecutionStarted(Event, tag="tool_execution_started"):
    tool_use_id: str
    name: str


class ToolExecutionCompleted(Event, tag="tool_execution_completed"):
    tool_use_id: str
    name: str
    content: str
    is_error: bool
    duration_ms: int


class ToolExecutionTimedOut(Event, tag="tool_execution_timed_out"):
    tool_use_id: str
    name: str
    timeout_ms: int


class BudgetWarning(Event, tag="budget_warning"):
    budget: str
    used: int
    limit: int


class SystemContextApplied(Event, tag="system_context_applied"):
    source: str | None = None
    idempotency_key: str | None = None


class UsageReported(Event, tag="usage"):
    usage: Usage


class Retrying(Event, tag="retrying"):
    """``discard_chars`` / ``discard_reasoning_chars``: how much of the abandoned attempt's
    ``text_delta`` / ``reasoning_delta`` output the client must drop; it is never committed."""

    attempt: int
    delay_ms: int
    reason: str
    discard_chars: int = 0
    discard_reasoning_chars: int = 0


class TurnCompleted(Event, tag="turn_completed"):
    stop_reason: StopReason
    usage: Usage


class TurnFailed(Event, tag="turn_failed"):
    error: ErrorObject


AnyEvent = Union[
    TurnStarted,
    TextDelta,
    ReasoningDelta,
    ToolCallRequested,
    ToolExecutionStarted,
    ToolExecutionCompleted,
    ToolExecutionTimedOut,
    BudgetWarning,
    SystemContextApplied,
    UsageReported,
    Retrying,
    TurnCompleted,
    TurnFailed,
]

EVENT_TYPES: list[type[Event]] = list(AnyEvent.__args__)  # type: ignore[attr-defined]


def event_type_name(cls: type[Event]) -> str:
    return cls.__struct_config__.tag  # type: ignore[return-value]


class SessionEventParams(Struct):
    session_id: str
    turn_id: str | None
    seq: int
    timestamp_ms: int
    event: AnyEvent
