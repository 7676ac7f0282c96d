"""The ``session/event`` notification and its event types (PROTOCOL.md section 4).

Events are a tagged union on ``type``, so a client decoding with msgspec (or any JSON
Schema tool) gets the exact shape for each type.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from msgspec import Meta, Raw, Struct

from .errors import ErrorObject
from .types import MAX_SAFE_INT, PageLimit, Params, StopReason, Usage


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
    """``source``: where the tool runs, ``"client"`` or ``"mcp:NAME"`` (on every tool event)."""

    tool_use_id: str
    name: str
    arguments: dict[str, Any]
    source: str


class ToolExecutionStarted(Event, tag="tool_execution_started"):
    tool_use_id: str
    name: str
    source: str


class ToolExecutionCompleted(Event, tag="tool_execution_completed"):
    tool_use_id: str
    name: str
    content: str
    is_error: bool
    duration_ms: int
    source: str


class ToolExecutionTimedOut(Event, tag="tool_execution_timed_out"):
    tool_use_id: str
    name: str
    timeout_ms: int
    source: str


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


class CompactionStarted(Event, tag="compaction_started"):
    """``reason``: "manual" (``session/compact``) or "auto" (the context filled up)."""

    reason: Literal["manual", "auto"]


class CompactionCompleted(Event, tag="compaction_completed"):
    summary_message_id: str
    replaced_count: int
    tokens_before: int
    tokens_after: int


class SteerApplied(Event, tag="steer_applied"):
    """A ``turn/steer`` prompt joined the running turn as a user message."""

    text: str


class TranscriptChanged(Event, tag="transcript_changed"):
    """A fork (the new session's first event), rewrite, restore or append."""

    kind: Literal["fork", "rewrite", "restore", "append"]
    revision: str
    message_count: int
    parent_revision: str | None = None


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
    TranscriptChanged,
    SteerApplied,
    CompactionStarted,
    CompactionCompleted,
]

EVENT_TYPES: list[type[Event]] = list(AnyEvent.__args__)  # type: ignore[attr-defined]


def event_type_name(cls: type[Event]) -> str:
    return cls.__struct_config__.tag  # type: ignore[return-value]


#: The ``type`` of every event, for the ``types`` filters (an unknown name is -32602).
EventTypeName = Literal[
    "turn_started", "text_delta", "reasoning_delta", "tool_call_requested", "tool_execution_started",
    "tool_execution_completed", "tool_execution_timed_out", "budget_warning", "system_context_applied",
    "usage", "retrying", "turn_completed", "turn_failed", "transcript_changed", "steer_applied",
    "compaction_started", "compaction_completed",
]
DELTA_TYPES = frozenset({"text_delta", "reasoning_delta"})
Seq = Annotated[int, Meta(ge=0, le=MAX_SAFE_INT)]


class SessionEventParams(Struct, omit_defaults=True):
    """The params of a ``session/event`` notification, and an entry of ``session/events``.

    ``replay``: sent by ``session/subscribe`` before its response (stored events).
    ``seq_first``: this event merges the deltas ``seq_first``..``seq`` of a slow client's
    queue; absent on every event that was sent as it was produced.
    """

    session_id: str
    turn_id: str | None
    seq: int
    timestamp_ms: int
    event: AnyEvent
    seq_first: int | None = None
    replay: bool = False


class StoredEventParams(Struct, omit_defaults=True):
    """``SessionEventParams`` whose event is already JSON (as the store keeps it), so a
    replay re-encodes nothing. Encodes exactly like ``SessionEventParams``."""

    session_id: str
    turn_id: str | None
    seq: int
    timestamp_ms: int
    event: Raw
    replay: bool = False


class EventGap(Struct):
    """Events after ``after_seq`` and before ``oldest_seq`` may have been removed by
    retention (``--keep-delta-turns``); from ``oldest_seq`` on, none were."""

    after_seq: int
    oldest_seq: int
    reason: Literal["trimmed"] = "trimmed"


class SessionEventsParams(Params):
    session_id: str
    after_seq: Seq = 0
    limit: PageLimit = 1000
    types: list[EventTypeName] | None = None


class SessionEventsResult(Struct, omit_defaults=True):
    """``next_seq``: the seq after the last event this page covers (continue with
    ``after_seq = next_seq - 1``); on an empty page, the stored head + 1."""

    session_id: str
    events: list[StoredEventParams]
    next_seq: int
    has_more: bool
    gap: EventGap | None = None


class SubscribeParams(Params):
    session_id: str
    after_seq: Seq | None = None
    types: list[EventTypeName] | None = None


class SubscribeResult(Struct, omit_defaults=True):
    """``next_seq``: the seq of the first event the subscription will deliver live."""

    subscription_id: str
    session_id: str
    next_seq: int
    gap: EventGap | None = None


class UnsubscribeParams(Params):
    subscription_id: str


class UnsubscribeResult(Struct):
    unsubscribed: bool
