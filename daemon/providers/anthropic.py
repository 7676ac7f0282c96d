"""Anthropic Messages API adapter (``type = "anthropic"``).

One call is ``POST {base_url}/v1/messages`` with ``stream: true``; the SSE events
(``message_start``, ``content_block_start/delta/stop``, ``message_delta``, ``message_stop``,
``ping``, ``error``) become ``base.Delta`` values. Block indexes are Anthropic's own.

Usage: ``input_tokens`` reported here is *all* prompt tokens, i.e. Anthropic's uncached
``input_tokens`` plus ``cache_read_input_tokens`` plus ``cache_creation_input_tokens``, so it
means the same as OpenAI's ``prompt_tokens`` (which includes cached tokens) and budgets count
the same way for every provider. The cache parts are also reported separately.
"""

from __future__ import annotations

from contextlib import aclosing

from typing import Any, AsyncIterator

import msgspec

from warren.daemon.config import fallback_model
from warren.daemon.providers.base import (
    STRUCTURED_OUTPUT,
    Delta,
    ModelRequest,
    ModelStopReason,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    Stop,
    TextDelta,
    ToolUseArgsDelta,
    ToolUseStart,
    UsageReport,
)
from warren.daemon.providers.http import (
    HTTPProvider,
    Redactor,
    decode_event_json,
    error_from_payload,
    image_base64,
    with_missing_tool_results,
)
from warren.protocol.types import ImageBlock, Message, ReasoningBlock, TextBlock, ToolResultBlock, ToolUseBlock, Usage

API_VERSION = "2023-06-01"
#: The API requires max_tokens; used when the request has none.
DEFAULT_MAX_TOKENS = 4096
#: provider_params keys Warren sets itself from the request; given in provider_params they
#: are ignored. Everything else (``thinking``, ``temperature``, ``top_p``, ``top_k``,
#: ``stop_sequences``, ``metadata``, ``tool_choice``, ``service_tier``…) is passed through.
RESERVED_PARAMS = frozenset({"model", "messages", "system", "tools", "stream", "max_tokens"})

STOP_REASONS: dict[str, ModelStopReason] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "tool_use": "tool_use",
    "refusal": "refusal",
}


class AnthropicProvider(HTTPProvider):
    """``Provider`` for the Anthropic Messages API (and servers that mimic it)."""

    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        model = request.model or self.config.default_model or fallback_model(self.config)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if request.system:
            body["system"] = request.system
        body["messages"] = to_anthropic_messages(request.messages, request.images)
        if request.tools:
            tools = []
            for tool in request.tools:
                entry: dict[str, Any] = {"name": tool.name}
                if tool.description:
                    entry["description"] = tool.description
                entry["input_schema"] = tool.input_schema
                tools.append(entry)
            body["tools"] = tools
        if request.output_schema is not None and request.output_schema.get("type") == "object":
            # Anthropic's way to a schema-shaped answer: a tool it must call.
            body.setdefault("tools", []).append({
                "name": STRUCTURED_OUTPUT,
                "description": "Give your final answer by calling this tool, as its input.",
                "input_schema": request.output_schema,
            })
            body["tool_choice"] = {"type": "tool", "name": STRUCTURED_OUTPUT}
        body["stream"] = True
        for key, value in request.provider_params.items():
            if key not in RESERVED_PARAMS:
                body[key] = value
        return body

    def build_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    async def stream(self, request: ModelRequest) -> AsyncIterator[Delta]:
        if not self.config.api_key and self.config.is_official_endpoint():
            raise self._missing_key_error("ANTHROPIC_API_KEY")
        body = self.build_body(request)
        state = _StreamState(self.name, self._redact)
        url = f"{self.config.base_url}/v1/messages"
        deltas = self._stream_sse(url, body, lambda sse: state.feed(sse.event, sse.data), lambda: state.done, "message_stop")
        async with aclosing(deltas):  # an interrupt closes this generator: close the stream now
            async for delta in deltas:
                yield delta


# ---------------------------------------------------------------- history → API messages


def to_anthropic_messages(
    messages: list[Message], images: dict[str, tuple[str, bytes]] | None = None
) -> list[dict[str, Any]]:
    """Map Warren's history to Messages API ``messages``.

    - ``tool`` messages become ``user`` messages of ``tool_result`` blocks.
    - ``system`` messages (appended system context) keep their place as a ``user`` text
      block wrapped in ``<system-context>``: the API has no mid-conversation system role, and
      folding them into ``system`` would move them before messages they followed.
    - Consecutive same-role messages are merged (the API requires alternation), and within a
      user message ``tool_result`` blocks go first (the API requires them to open the message
      that follows a ``tool_use``).
    - Reasoning without a signature (from another provider) is dropped: the API rejects
      thinking blocks it did not sign. Empty text blocks are dropped (the API rejects them).
    """
    out: list[dict[str, Any]] = []
    for message in with_missing_tool_results(messages):
        role, blocks = _convert(message, images or {})
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for entry in out:
        if entry["role"] == "user":
            entry["content"].sort(key=lambda b: b["type"] != "tool_result")  # stable
    return out


def _image(block: ImageBlock, images: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    mime, data = image_base64(block, images)
    return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}


def _convert(message: Message, images: dict[str, tuple[str, bytes]]) -> tuple[str, list[dict[str, Any]]]:
    blocks: list[dict[str, Any]] = []
    if message.role == "assistant":
        for block in message.content:
            if isinstance(block, TextBlock):
                if block.text:
                    blocks.append({"type": "text", "text": block.text})
            elif isinstance(block, ReasoningBlock):
                if block.redacted:
                    blocks.append({"type": "redacted_thinking", "data": block.redacted})
                elif block.signature:
                    blocks.append({"type": "thinking", "thinking": block.text, "signature": block.signature})
            elif isinstance(block, ToolUseBlock):
                blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.arguments})
        return "assistant", blocks
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            content: Any = block.content
            if block.images:
                content = [{"type": "text", "text": block.content}] + [_image(i, images) for i in block.images]
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": block.tool_use_id,
                    "content": content,
                    "is_error": block.is_error,
                }
            )
        elif isinstance(block, TextBlock) and block.text:
            text = f"<system-context>\n{block.text}\n</system-context>" if message.role == "system" else block.text
            blocks.append({"type": "text", "text": text})
        elif isinstance(block, ImageBlock):
            blocks.append(_image(block, images))
    return "user", blocks


# ---------------------------------------------------------------- SSE events → deltas


class _StreamState:
    """Turns the event sequence of one call into deltas; knows whether it saw the end."""

    def __init__(self, provider: str, redact: Redactor) -> None:
        self.provider = provider
        self.redact = redact
        self.done = False
        self.stop_reason: ModelStopReason = "end_turn"
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        self.tool_args_seen: dict[int, bool] = {}

    def usage(self) -> Usage:
        prompt = self.input_tokens + (self.cache_read or 0) + (self.cache_write or 0)
        return Usage(prompt, self.output_tokens, prompt + self.output_tokens, self.cache_read, self.cache_write)

    def _take_usage(self, usage: Any) -> None:
        """Counts in message_delta are cumulative, so later values replace earlier ones."""
        if not isinstance(usage, dict):
            return
        if isinstance(usage.get("input_tokens"), int):
            self.input_tokens = usage["input_tokens"]
        if isinstance(usage.get("output_tokens"), int):
            self.output_tokens = usage["output_tokens"]
        if isinstance(usage.get("cache_read_input_tokens"), int):
            self.cache_read = usage["cache_read_input_tokens"]
        if isinstance(usage.get("cache_creation_input_tokens"), int):
            self.cache_write = usage["cache_creation_input_tokens"]

    def feed(self, event: str, data: str) -> list[Delta]:
        payload = decode_event_json(self.provider, data, self.redact)
        kind = payload.get("type") or event
        index = payload.get("index")
        if kind == "content_block_start" and isinstance(index, int):
            return self._block_start(index, payload.get("content_block") or {})
        if kind == "content_block_delta" and isinstance(index, int):
            return self._block_delta(index, payload.get("delta") or {})
        if kind == "content_block_stop" and isinstance(index, int):
            if self.tool_args_seen.get(index) is False:
                self.tool_args_seen[index] = True
                return [ToolUseArgsDelta(index, "{}")]  # a tool called with no arguments
            return []
        if kind == "message_start":
            message = payload.get("message") or {}
            self._take_usage(message.get("usage"))
            return [UsageReport(self.usage())]
        if kind == "message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason")
            if isinstance(reason, str):
                self.stop_reason = STOP_REASONS.get(reason, "end_turn")
            self._take_usage(payload.get("usage"))
            return [UsageReport(self.usage())]
        if kind == "message_stop":
            self.done = True
            return [Stop(self.stop_reason)]
        if kind == "error":
            raise error_from_payload(self.provider, payload, self.redact)
        return []  # ping, and event types newer than this adapter

    def _block_start(self, index: int, block: dict[str, Any]) -> list[Delta]:
        btype = block.get("type")
        if btype == "text":
            return [TextDelta(index, block["text"])] if block.get("text") else []
        if btype == "thinking":
            out: list[Delta] = []
            if block.get("thinking"):
                out.append(ReasoningDelta(index, block["thinking"]))
            if block.get("signature"):
                out.append(ReasoningSignature(index, block["signature"]))
            return out
        if btype == "redacted_thinking":
            return [RedactedReasoning(index, block.get("data") or "")]
        if btype == "tool_use":
            out = [ToolUseStart(index, str(block.get("id") or ""), str(block.get("name") or ""))]
            initial = block.get("input")
            if initial:  # complete input given up front instead of as deltas
                out.append(ToolUseArgsDelta(index, msgspec.json.encode(initial).decode()))
            self.tool_args_seen[index] = bool(initial)
            return out
        return []  # server tool blocks etc. are not part of Warren's model

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[Delta]:
        dtype = delta.get("type")
        if dtype == "text_delta" and delta.get("text"):
            return [TextDelta(index, delta["text"])]
        if dtype == "thinking_delta" and delta.get("thinking"):
            return [ReasoningDelta(index, delta["thinking"])]
        if dtype == "signature_delta" and delta.get("signature"):
            return [ReasoningSignature(index, delta["signature"])]
        if dtype == "input_json_delta" and delta.get("partial_json"):
            self.tool_args_seen[index] = True
            return [ToolUseArgsDelta(index, delta["partial_json"])]
        return []
