"""One model call's output, assembled from the provider's deltas into transcript blocks.

Kept apart from the turn because it is the hot path of a streamed call (``add_text`` runs for
every text delta) and holds no I/O: the turn feeds it, then asks for the message content,
the text, or the tool calls.
"""

from __future__ import annotations

from typing import Any

import msgspec

from warren.protocol.types import Block, ReasoningBlock, TextBlock, ToolCall, ToolUseBlock, Usage

from ..providers import base

_json = msgspec.json.Decoder()


class _Block(msgspec.Struct):
    """One content block as it streams in: its parts are joined only when asked for."""

    kind: str
    parts: list[str] = msgspec.field(default_factory=list)
    signature: str | None = None
    redacted: str | None = None
    tool_id: str = ""
    tool_name: str = ""


class CallOutput:
    """Assembles one model call's deltas into blocks."""

    def __init__(self) -> None:
        self.blocks: dict[int, _Block] = {}
        self.usage: Usage | None = None
        self.stop: str | None = None
        self.streamed_chars = 0
        self.streamed_reasoning_chars = 0

    def _block(self, index: int, kind: str) -> _Block:
        block = self.blocks.get(index)
        if block is None:
            block = self.blocks[index] = _Block(kind)
        return block

    def add_text(self, index: int, text: str) -> None:
        """``feed`` for a text delta, the one that comes thousands of times a call."""
        block = self.blocks.get(index)
        if block is None:
            block = self.blocks[index] = _Block("text")
        block.parts.append(text)
        self.streamed_chars += len(text)

    def feed(self, delta: base.Delta) -> None:
        if isinstance(delta, base.TextDelta):
            self._block(delta.index, "text").parts.append(delta.text)
            self.streamed_chars += len(delta.text)
        elif isinstance(delta, base.ReasoningDelta):
            self._block(delta.index, "reasoning").parts.append(delta.text)
            self.streamed_reasoning_chars += len(delta.text)
        elif isinstance(delta, base.ReasoningSignature):
            self._block(delta.index, "reasoning").signature = delta.signature
        elif isinstance(delta, base.RedactedReasoning):
            self._block(delta.index, "reasoning").redacted = delta.data
        elif isinstance(delta, base.ToolUseStart):
            block = self._block(delta.index, "tool_use")
            block.tool_id, block.tool_name = delta.id, delta.name
        elif isinstance(delta, base.ToolUseArgsDelta):
            self._block(delta.index, "tool_use").parts.append(delta.fragment)
        elif isinstance(delta, base.UsageReport):
            self.usage = delta.usage
        elif isinstance(delta, base.Stop):
            self.stop = delta.stop_reason

    def content(self, *, partial: bool = False, provider: str | None = None) -> list[Block]:
        """The assistant message's blocks; a partial one keeps only text and reasoning."""
        out: list[Block] = []
        for index in sorted(self.blocks):
            b = self.blocks[index]
            if b.kind == "text":
                if b.parts:
                    out.append(TextBlock("".join(b.parts)))
            elif b.kind == "reasoning":
                if b.parts or b.redacted:
                    out.append(ReasoningBlock("".join(b.parts), b.signature, b.redacted, provider))
            elif not partial:
                out.append(ToolUseBlock(b.tool_id, b.tool_name, _arguments(b.parts)))
        return out

    def text(self) -> str:
        return "".join("".join(b.parts) for i, b in sorted(self.blocks.items()) if b.kind == "text")

    def take_tool(self, name: str) -> dict[str, Any] | None:
        """Turn the call of tool ``name`` into text (its arguments as JSON) and return the
        arguments: how a forced answer tool's input becomes the answer."""
        for block in self.blocks.values():
            if block.kind == "tool_use" and block.tool_name == name:
                arguments = _arguments(block.parts)
                block.kind, block.parts = "text", [msgspec.json.encode(arguments).decode()]
                return arguments
        return None

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(b.tool_id, b.tool_name, _arguments(b.parts))
            for _, b in sorted(self.blocks.items())
            if b.kind == "tool_use"
        ]


def _arguments(parts: list[str]) -> dict[str, Any]:
    """A tool call's streamed arguments as an object; what is not a JSON object is kept,
    wrapped, so the model's mistake reaches the tool (and the transcript) as it was."""
    raw = "".join(parts).strip()
    if not raw:
        return {}
    try:
        value = _json.decode(raw)
    except msgspec.DecodeError:
        return {"_invalid_json": raw}
    return value if isinstance(value, dict) else {"_value": value}
