"""The provider seam: one model call in, a stream of provider-neutral deltas out.

A provider knows its API's wire format and nothing about sessions, storage or JSON-RPC.
The turn loop (``daemon.turns``) assembles the deltas into an assistant message, commits
it, emits events and applies the retry policy; so every provider gets identical
semantics for interrupts, retries and commit points.

Deltas carry the ``index`` of the content block they belong to. Indexes are the
provider's own numbering within one model call; the turn loop orders blocks by index.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Literal, Protocol, Union

import msgspec

from warren.protocol.types import Message, ToolDef, Usage

ModelStopReason = Literal["end_turn", "max_tokens", "tool_use", "refusal"]


#: The tool a provider without a JSON-schema mode is made to call with its final answer.
STRUCTURED_OUTPUT = "structured_output"


class ModelRequest(msgspec.Struct):
    """Everything one model call needs. ``messages`` is the session's history in order,
    including ``system`` messages appended by ``session/append_system_context``; ``system``
    is the session's system prompt."""

    model: str | None
    system: str | None
    messages: list[Message]
    tools: list[ToolDef]
    max_tokens: int | None
    provider_params: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Provider-private state persisted with the session after each model call (the
    #: scripted provider keeps its script position here). Mutate it in place.
    state: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Answer with JSON matching this schema (the provider's native mode where it has one).
    output_schema: dict[str, Any] | None = None
    #: The bytes of the images ``messages`` name: sha256 -> (mime type, bytes).
    images: dict[str, tuple[str, bytes]] = msgspec.field(default_factory=dict)


class TextDelta(msgspec.Struct, frozen=True):
    index: int
    text: str


class ReasoningDelta(msgspec.Struct, frozen=True):
    index: int
    text: str


class ReasoningSignature(msgspec.Struct, frozen=True):
    """Anthropic's signature for a thinking block; must be sent back with the block."""

    index: int
    signature: str


class RedactedReasoning(msgspec.Struct, frozen=True):
    """An opaque redacted-thinking payload, kept and sent back unchanged."""

    index: int
    data: str


class ToolUseStart(msgspec.Struct, frozen=True):
    index: int
    id: str
    name: str


class ToolUseArgsDelta(msgspec.Struct, frozen=True):
    """A fragment of the tool call's JSON arguments; fragments concatenate in order."""

    index: int
    fragment: str


class UsageReport(msgspec.Struct, frozen=True):
    """Usage for this model call so far; the last report of a call is its total."""

    usage: Usage


class Stop(msgspec.Struct, frozen=True):
    stop_reason: ModelStopReason


Delta = Union[
    TextDelta,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    ToolUseStart,
    ToolUseArgsDelta,
    UsageReport,
    Stop,
]


class ProviderError(Exception):
    """A model call failed.

    ``kind`` is a stable word (``rate_limited``, ``overloaded``, ``server_error``,
    ``connection``, ``timeout``, ``auth``, ``bad_request``, ``protocol``); ``retryable``
    tells the turn loop whether its retry policy applies. ``message`` must already have
    any credential redacted: it reaches the client.
    """

    def __init__(
        self,
        provider: str,
        kind: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_ms: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_ms = retry_after_ms
        self.error_type = error_type


class RetryPolicy(msgspec.Struct, frozen=True):
    """Exponential backoff with full jitter, capped; a server's retry-after wins."""

    max_retries: int = 3
    base_delay_ms: int = 500
    max_delay_ms: int = 30_000
    jitter: bool = True

    def delay_ms(self, attempt: int, retry_after_ms: int | None, rand: float) -> int:
        """Delay before retry number ``attempt`` (1-based); ``rand`` is in [0, 1)."""
        if retry_after_ms is not None:
            return max(0, min(retry_after_ms, self.max_delay_ms))
        ceiling = min(self.max_delay_ms, self.base_delay_ms * (2 ** (attempt - 1)))
        if not self.jitter:
            return ceiling
        return int(ceiling / 2 + rand * ceiling / 2)


class Provider(Protocol):
    """What the turn loop needs from a provider.

    ``stream`` is an async generator; the turn loop closes it (``aclose``) when the turn
    is interrupted, so a provider must release its HTTP stream in a ``finally`` or an
    ``async with``. It raises ``ProviderError`` for failures, before or after output began.
    """

    name: str
    retry_policy: RetryPolicy

    def stream(self, request: ModelRequest) -> AsyncIterator[Delta]: ...


def turn_timeout_s(provider: Provider) -> float | None:
    """A provider's whole-turn time limit, when its configuration sets one."""
    config = getattr(provider, "config", None)
    return getattr(config, "turn_timeout_s", None)
