"""Whether a transcript is one a model accepts: every tool result answers exactly one
earlier, unanswered tool call, and nothing but tool results and system context comes
between a model's tool calls and their results.

Pure: ``Calls`` is the state after some messages (the calls still unanswered), and
``take`` moves it over one more message, listing what is wrong with the ``$.path`` of the
offending part. The state after a user or assistant message depends on that message
alone, which is what lets an edit check only the messages around it.
"""

from __future__ import annotations

from typing import Any

from warren.protocol.types import ImageBlock, Message, ReasoningBlock, TextBlock, ToolCall, ToolResultBlock, ToolUseBlock

Problem = dict[str, str]


class Calls:
    """The tool calls asked and not yet answered, in the order they were asked."""

    def __init__(self, unanswered: dict[str, ToolUseBlock] | None = None) -> None:
        self.unanswered: dict[str, ToolUseBlock] = dict(unanswered or {})

    def copy(self) -> "Calls":
        return Calls(self.unanswered)

    def pending(self) -> list[ToolCall]:
        return [ToolCall(b.id, b.name, b.arguments) for b in self.unanswered.values()]

    def take(self, message: Message, path: str) -> list[Problem]:
        problems = _shape(message, path)
        role = message.role
        if role in ("user", "assistant") and self.unanswered:
            ids = ", ".join(repr(i) for i in self.unanswered)
            problems.append({"path": path, "message": f"tool call(s) {ids} must be answered by a tool message "
                                                      f"before a {role} message"})
        if role == "assistant":
            self.unanswered = {}
            for i, block in enumerate(message.content):
                if isinstance(block, ToolUseBlock):
                    if block.id in self.unanswered:
                        problems.append({"path": f"{path}.content[{i}].id", "message": f"duplicate tool call id {block.id!r}"})
                    self.unanswered[block.id] = block
        elif role == "tool":
            for i, block in enumerate(message.content):
                if isinstance(block, ToolResultBlock):
                    if self.unanswered.pop(block.tool_use_id, None) is None:
                        problems.append({"path": f"{path}.content[{i}].tool_use_id",
                                         "message": f"{block.tool_use_id!r} answers no earlier, unanswered tool call"})
        elif role == "user":
            self.unanswered = {}
        return problems


def _shape(message: Message, path: str) -> list[Problem]:
    """Blocks in the roles that may hold them: tool calls only from the assistant, tool
    results only, and always, in tool messages."""
    problems: list[Problem] = []
    role = message.role
    if not message.content:
        problems.append({"path": f"{path}.content", "message": "must not be empty"})
    for i, block in enumerate(message.content):
        where = f"{path}.content[{i}]"
        if isinstance(block, ToolUseBlock) and role != "assistant":
            problems.append({"path": where, "message": "tool_use blocks belong in assistant messages"})
        elif isinstance(block, ReasoningBlock) and role != "assistant":
            problems.append({"path": where, "message": "reasoning blocks belong in assistant messages"})
        elif isinstance(block, ToolResultBlock) and role != "tool":
            problems.append({"path": where, "message": "tool_result blocks belong in tool messages"})
        elif isinstance(block, TextBlock) and role == "tool":
            problems.append({"path": where, "message": "a tool message holds only tool_result blocks"})
        elif isinstance(block, ImageBlock) and role not in ("user", "system"):
            problems.append({"path": where, "message": "image blocks belong in user messages"})
    return problems


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))
