"""The built-in offline provider: deterministic replies driven by a script (PROTOCOL.md §7).

Plugin authors run their own CI against it, so everything observable is deterministic:
the chunking, the tool-use ids (derived from the script position), the usage estimate and
the retry delays (no jitter).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, AsyncIterator, Literal

import anyio
import msgspec
from msgspec import Meta, Struct

from warren.protocol.types import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock, ReasoningBlock, Usage

#: An image counts as this many characters of input (1,000 tokens), whatever its size.
IMAGE_CHARS = 4000

from .base import (
    Delta,
    ModelRequest,
    ProviderError,
    ReasoningDelta,
    RetryPolicy,
    Stop,
    TextDelta,
    ToolUseArgsDelta,
    ToolUseStart,
    UsageReport,
)

NAME = "scripted"

_ERRORS = {
    # kind: (HTTP status it stands for, retryable)
    "rate_limited": (429, True),
    "overloaded": (529, True),
    "server_error": (500, True),
    "auth": (401, False),
    "bad_request": (400, False),
}


class ScriptToolCall(Struct, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = {}
    id: str | None = None


class ScriptUsage(Struct, forbid_unknown_fields=True):
    input_tokens: Annotated[int, Meta(ge=0)]
    output_tokens: Annotated[int, Meta(ge=0)]


class ScriptError(Struct, forbid_unknown_fields=True):
    kind: Literal["rate_limited", "overloaded", "server_error", "auth", "bad_request"]
    retry_after_ms: Annotated[int, Meta(ge=0)] | None = None


class ScriptStep(Struct, forbid_unknown_fields=True):
    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ScriptToolCall] | None = None
    chunk_chars: Annotated[int, Meta(ge=1)] = 8
    delay_ms: Annotated[int, Meta(ge=0)] = 0
    stop_reason: Literal["end_turn", "max_tokens", "refusal"] | None = None
    usage: ScriptUsage | None = None
    error: ScriptError | None = None


class ScriptedParams(Struct, forbid_unknown_fields=True):
    script: list[ScriptStep] = []
    #: The model's context window in tokens, as automatic compaction reads it.
    context_window: Annotated[int, Meta(ge=1)] | None = None


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _message_chars(messages: list[Message]) -> int:
    total = 0
    for m in messages:
        for b in m.content:
            if isinstance(b, (TextBlock, ReasoningBlock)):
                total += len(b.text)
            elif isinstance(b, ToolResultBlock):
                total += len(b.content)
            elif isinstance(b, ImageBlock):
                total += IMAGE_CHARS
            elif isinstance(b, ToolUseBlock):
                total += len(msgspec.json.encode(b.arguments))
    return total


def last_user_text(messages: list[Message]) -> str:
    for m in reversed(messages):
        if m.role == "user":
            return "".join(b.text for b in m.content if isinstance(b, TextBlock))
    return ""


class _Chars:
    """Characters of a history, counted incrementally: a turn's history only grows, so each
    model call counts only the messages added since the last one."""

    __slots__ = ("messages", "counted", "chars")

    def __init__(self, messages: list[Message]) -> None:
        self.messages, self.counted, self.chars = messages, 0, 0

    def total(self) -> int:
        if self.counted > len(self.messages):
            self.counted = self.chars = 0
        self.chars += _message_chars(self.messages[self.counted :])
        self.counted = len(self.messages)
        return self.chars


class ScriptedProvider:
    name = NAME
    retry_policy = RetryPolicy(max_retries=3, base_delay_ms=100, max_delay_ms=2_000, jitter=False)

    def __init__(self) -> None:
        # One entry per params dict / history list in use: a turn passes the same objects to
        # every model call, so a long script is parsed and a long history counted once.
        # Holding the objects keeps their ids from being reused while cached.
        self._scripts: dict[int, tuple[dict[str, Any], list[ScriptStep]]] = {}
        self._chars: dict[int, _Chars] = {}

    @staticmethod
    def parse_params(provider_params: dict[str, Any] | None) -> ScriptedParams:
        """Validate ``provider_params``; raises ``msgspec.ValidationError`` with a path."""
        return msgspec.convert(provider_params or {}, ScriptedParams, strict=True)

    def _script(self, params: dict[str, Any]) -> list[ScriptStep]:
        cached = self._scripts.get(id(params))
        if cached is None or cached[0] is not params:
            if len(self._scripts) > 64:
                self._scripts.clear()
            cached = self._scripts[id(params)] = (params, self.parse_params(params).script)
        return cached[1]

    def _history_chars(self, messages: list[Message]) -> int:
        counter = self._chars.get(id(messages))
        if counter is None or counter.messages is not messages:
            if len(self._chars) > 64:
                self._chars.clear()
            counter = self._chars[id(messages)] = _Chars(messages)
        return counter.total()

    async def stream(self, request: ModelRequest) -> AsyncIterator[Delta]:
        script = self._script(request.provider_params)
        position = int(request.state.get("position", 0))
        step: ScriptStep | None = None
        if position < len(script):
            step = script[position]
            request.state["position"] = position + 1
        if step is not None and step.error is not None:
            status, retryable = _ERRORS[step.error.kind]
            raise ProviderError(
                NAME,
                step.error.kind,
                f"scripted {step.error.kind} error (script step {position})",
                retryable=retryable,
                status=status,
                retry_after_ms=step.error.retry_after_ms,
                error_type=step.error.kind,
            )
        chunk = step.chunk_chars if step else 8
        delay = (step.delay_ms if step else 0) / 1000
        text = step.text if step is not None else "echo: " + last_user_text(request.messages)
        reasoning = step.reasoning if step is not None else None
        out_chars = 0
        for index, body, kind in ((0, reasoning, ReasoningDelta), (1, text, TextDelta)):
            for piece in _chunks(body or "", chunk):
                if delay:
                    await anyio.sleep(delay)
                out_chars += len(piece)
                yield kind(index, piece)
        calls = (step.tool_calls or []) if step else []
        for i, call in enumerate(calls):
            arguments = msgspec.json.encode(call.arguments).decode()
            out_chars += len(arguments)
            yield ToolUseStart(2 + i, call.id or f"toolu_s{position:04d}_{i}", call.name)
            yield ToolUseArgsDelta(2 + i, arguments)
        if step is not None and step.usage is not None:
            inp, outp = step.usage.input_tokens, step.usage.output_tokens
        else:
            system = len(request.system or "")
            inp = math.ceil((system + self._history_chars(request.messages)) / 4)
            outp = math.ceil(out_chars / 4)
        yield UsageReport(Usage(inp, outp, inp + outp))
        stop = (step.stop_reason if step else None) or ("tool_use" if calls else "end_turn")
        yield Stop(stop)
