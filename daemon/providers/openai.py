"""OpenAI Chat Completions adapter (``type = "openai"``), also for every compatible server
(Ollama, vLLM, llama.cpp, LM Studio, OpenRouter, DeepSeek…).

One call is ``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; ``chat.completion.chunk`` objects become ``base.Delta``
values, ending at ``data: [DONE]``.

Chat Completions has no block indexes, so this adapter numbers them: reasoning 0, text 1,
tool call ``i`` → ``2 + i``.

Compatibility choices, each because real servers differ from api.openai.com:

- ``max_tokens`` is sent as ``max_completion_tokens`` to api.openai.com (its reasoning models
  reject ``max_tokens``) but as ``max_tokens`` elsewhere, since most compatible servers only
  know the older name and silently ignore the newer one.
- No ``Authorization`` header without a key (local servers need none, and some reject a
  malformed one).
- Reasoning arrives as ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (Ollama,
  OpenRouter); both are accepted. Reasoning is never sent back: the API has no field for it
  and DeepSeek rejects ``reasoning_content`` in input messages.
- A tool result with ``is_error`` is sent as content ``"Error: " + content``: the ``tool``
  role has no error flag, and the prefix is how the model learns the call failed.
- Tool-call fragments without ``index`` or ``id`` (some servers) are matched by id or order,
  and get a generated id; a tool call reported with finish_reason ``stop`` still ends the
  call with ``tool_use``.
"""

from __future__ import annotations

from contextlib import aclosing

import uuid
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import msgspec

from warren.daemon.config import fallback_model
from warren.daemon.providers.base import (
    STRUCTURED_OUTPUT,
    Delta,
    ModelRequest,
    ModelStopReason,
    ProviderError,
    ReasoningDelta,
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
    error_from_response,
    image_base64,
    with_missing_tool_results,
)
from warren.protocol.types import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock, Usage

#: provider_params keys Warren sets itself; given in provider_params they are ignored.
#: Everything else (``temperature``, ``top_p``, ``seed``, ``stop``, ``reasoning_effort``,
#: ``response_format``, ``tool_choice``, ``parallel_tool_calls``, Ollama's ``options``…)
#: is passed through.
RESERVED_PARAMS = frozenset(
    {"model", "messages", "tools", "stream", "stream_options", "max_tokens", "max_completion_tokens"}
)

REASONING_INDEX = 0
TEXT_INDEX = 1
TOOL_INDEX_BASE = 2

FINISH_REASONS: dict[str, ModelStopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class OpenAIProvider(HTTPProvider):
    """``Provider`` for OpenAI Chat Completions and compatible servers."""

    def uses_max_completion_tokens(self) -> bool:
        return urlsplit(self.config.base_url).hostname == "api.openai.com"

    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        model = request.model or self.config.default_model or fallback_model(self.config)
        if not model:
            raise ProviderError(
                self.name,
                "bad_request",
                f"no model for provider {self.name!r}: pass model, or set default_model in its config",
                retryable=False,
            )
        body: dict[str, Any] = {"model": model, "messages": to_openai_messages(request.system, request.messages,
                                                                               request.images)}
        if request.tools:
            tools = []
            for tool in request.tools:
                function: dict[str, Any] = {"name": tool.name}
                if tool.description:
                    function["description"] = tool.description
                function["parameters"] = tool.input_schema
                tools.append({"type": "function", "function": function})
            body["tools"] = tools
        if request.output_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": STRUCTURED_OUTPUT, "schema": request.output_schema},
            }
        if request.max_tokens:
            key = "max_completion_tokens" if self.uses_max_completion_tokens() else "max_tokens"
            body[key] = request.max_tokens
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        for key, value in request.provider_params.items():
            if key not in RESERVED_PARAMS:
                body[key] = value
        return body

    def build_headers(self) -> dict[str, str]:
        if self.config.api_key:
            return {"authorization": f"Bearer {self.config.api_key}"}
        return {}

    async def discover_model(self) -> str | None:
        """The first model a compatible server lists at ``GET /models``.

        Used only when nothing names a model: llama.cpp and vLLM serve exactly one, and
        Ollama lists what is installed, so ``OPENAI_BASE_URL`` alone is enough to chat.

        ``None`` (so the caller can say "set a model") when the server has no such endpoint;
        other failures (auth, connection, 5xx) are raised as for a model call.
        """
        url = self.config.base_url.rstrip("/") + "/models"
        status, headers, body = await self._get(url, self.build_headers())
        if status in (404, 405, 501):
            return None  # no model list here: the user must name the model
        if status >= 300:
            raise error_from_response(self.name, status, headers, body, self._redact)
        try:
            models = msgspec.json.decode(body).get("data") or []
            return str(models[0]["id"]) if models else None
        except (msgspec.DecodeError, AttributeError, KeyError, TypeError, IndexError):
            return None

    async def stream(self, request: ModelRequest) -> AsyncIterator[Delta]:
        if not self.config.api_key and self.config.is_official_endpoint():
            raise self._missing_key_error("OPENAI_API_KEY")
        body = self.build_body(request)
        state = _StreamState(self.name, self._redact)
        url = f"{self.config.base_url}/chat/completions"
        deltas = self._stream_sse(url, body, lambda sse: state.feed(sse.data), lambda: state.done, "[DONE]")
        async with aclosing(deltas):  # an interrupt closes this generator: close the stream now
            async for delta in deltas:
                yield delta


# ---------------------------------------------------------------- history → API messages


def _image_part(block: ImageBlock, images: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    mime, data = image_base64(block, images)
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def to_openai_messages(
    system: str | None, messages: list[Message], images: dict[str, tuple[str, bytes]] | None = None
) -> list[dict[str, Any]]:
    """Map the system prompt and Warren's history to Chat Completions ``messages``.

    ``system`` history messages stay in place as ``system`` messages. Each tool result becomes
    its own ``tool`` message, placed directly after the assistant message that made the call
    (the API rejects anything between the two), even if, say, system context was appended in
    between. Assistant messages with neither text nor tool calls (only reasoning) are dropped.
    """
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    tool_slot: int | None = None  # where the open tool calls' results go
    open_calls: set[str] = set()
    for message in with_missing_tool_results(messages):
        texts = [b.text for b in message.content if isinstance(b, TextBlock) and b.text]
        if message.role == "assistant":
            calls = [b for b in message.content if isinstance(b, ToolUseBlock)]
            if not texts and not calls:
                continue
            entry: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
            if calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": msgspec.json.encode(call.arguments).decode()},
                    }
                    for call in calls
                ]
            out.append(entry)
            open_calls = {call.id for call in calls}
            tool_slot = len(out) if calls else None
            continue
        tool_images: list[ImageBlock] = []
        for block in message.content:
            if not isinstance(block, ToolResultBlock):
                continue
            if block.images:
                tool_images += block.images
            result = {
                "role": "tool",
                "tool_call_id": block.tool_use_id,
                "content": f"Error: {block.content}" if block.is_error else block.content,
            }
            if tool_slot is not None and block.tool_use_id in open_calls:
                out.insert(tool_slot, result)
                tool_slot += 1
            else:
                out.append(result)
        if tool_images and images is not None:  # tool messages take text only: the images follow
            out.append({"role": "user", "content": [{"type": "text", "text": "Images the tools returned:"}]
                        + [_image_part(i, images) for i in tool_images]})
        pictures = [b for b in message.content if isinstance(b, ImageBlock)]
        if pictures and images is not None:
            parts: list[dict[str, Any]] = [{"type": "text", "text": t} for t in texts]
            parts += [_image_part(picture, images) for picture in pictures]
            out.append({"role": "user", "content": parts})
        elif texts:
            out.append({"role": "system" if message.role == "system" else "user", "content": "\n\n".join(texts)})
    return out


# ---------------------------------------------------------------- chunks → deltas


class _ToolCall(msgspec.Struct):
    id: str = ""
    name: str = ""
    started: bool = False
    has_args: bool = False
    pending: str = ""  # argument text that arrived before the name


class _StreamState:
    def __init__(self, provider: str, redact: Redactor) -> None:
        self.provider = provider
        self.redact = redact
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.tools: dict[int, _ToolCall] = {}

    def feed(self, data: str) -> list[Delta]:
        if data.strip() == "[DONE]":
            return self._finish()
        chunk = decode_event_json(self.provider, data, self.redact)
        if chunk.get("error"):
            raise error_from_payload(self.provider, chunk, self.redact)
        if isinstance(chunk.get("usage"), dict):
            self._take_usage(chunk["usage"])
        out: list[Delta] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is not supported; the first choice is the answer
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(ReasoningDelta(REASONING_INDEX, reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(TextDelta(TEXT_INDEX, content))
            for fragment in delta.get("tool_calls") or []:
                if isinstance(fragment, dict):
                    out.extend(self._tool_fragment(fragment))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _take_usage(self, usage: dict[str, Any]) -> None:
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if not isinstance(cached, int):
            cached = usage.get("prompt_cache_hit_tokens")  # DeepSeek
        self.usage = Usage(
            prompt, completion, prompt + completion, cached if isinstance(cached, int) else None, None
        )

    def _slot(self, fragment: dict[str, Any]) -> int:
        index = fragment.get("index")
        if isinstance(index, int):
            return index
        call_id = fragment.get("id")
        for i, call in self.tools.items():
            if call_id and call.id == call_id:
                return i
        if call_id or not self.tools:
            return len(self.tools)
        return max(self.tools)  # an id-less continuation of the latest call

    def _tool_fragment(self, fragment: dict[str, Any]) -> list[Delta]:
        slot = self._slot(fragment)
        call = self.tools.setdefault(slot, _ToolCall())
        function = fragment.get("function") or {}
        if not call.started:
            if fragment.get("id"):
                call.id = str(fragment["id"])
            if function.get("name"):
                call.name = str(function["name"])
        args = function.get("arguments")
        if isinstance(args, dict):  # some servers send an object, not a JSON string
            args = msgspec.json.encode(args).decode()
        out: list[Delta] = []
        if not call.started and call.name:
            out.extend(self._start(slot, call))
        if isinstance(args, str) and args:
            if call.started:
                call.has_args = True
                out.append(ToolUseArgsDelta(TOOL_INDEX_BASE + slot, args))
            else:
                call.pending += args
        return out

    def _start(self, slot: int, call: _ToolCall) -> list[Delta]:
        call.started = True
        call.id = call.id or f"call_{uuid.uuid4().hex[:24]}"
        out: list[Delta] = [ToolUseStart(TOOL_INDEX_BASE + slot, call.id, call.name)]
        if call.pending:
            call.has_args = True
            out.append(ToolUseArgsDelta(TOOL_INDEX_BASE + slot, call.pending))
            call.pending = ""
        return out

    def _finish(self) -> list[Delta]:
        self.done = True
        out: list[Delta] = []
        for slot, call in sorted(self.tools.items()):
            if not call.started and call.name:
                out.extend(self._start(slot, call))
            if call.started and not call.has_args:
                out.append(ToolUseArgsDelta(TOOL_INDEX_BASE + slot, "{}"))
        if self.usage is not None:
            out.append(UsageReport(self.usage))
        reason = FINISH_REASONS.get(self.finish_reason or "", "end_turn")
        if reason == "end_turn" and any(call.started for call in self.tools.values()):
            reason = "tool_use"
        out.append(Stop(reason))
        return out
