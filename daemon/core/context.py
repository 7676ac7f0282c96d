"""What a turn sends the model: the history as a provider sees it, what a compaction keeps,
and the token estimate that decides when to compact.

Pure functions over messages: the turn holds the history and does the I/O; these only
choose which messages go out.
"""

from __future__ import annotations

import math

import msgspec

from warren.protocol.types import Block, Message, ReasoningBlock

KEEP_LAST = 4  # messages an automatic compaction keeps as they are
SUMMARY_PROMPT = (
    "You summarise a conversation between a user and an AI agent so that the agent can go on "
    "with only your summary and the latest messages. Keep every fact, decision, file name, "
    "open question and task still to do; leave out pleasantries."
)
SUMMARY_REQUEST = "Summarise the conversation so far, as the agent's notes to itself."


def for_provider(history: list[Message], provider: str, *, known_clean: int = 0) -> list[Message]:
    """The history as ``provider`` is sent it: reasoning another provider did is left out
    (its signatures mean nothing here, and a provider refuses blocks it did not sign). The
    list itself when there is nothing to leave out, which is the usual case.
    ``known_clean``: how many leading messages are known to hold no such reasoning (checked
    at an earlier call of the same turn), so that a long tool loop does not rescan its whole
    history at every model call."""
    if not _has_foreign_reasoning(history, provider, known_clean):
        return history
    return [
        msgspec.structs.replace(m, content=[b for b in m.content if not _foreign(b, provider)])
        if m.role == "assistant" else m
        for m in history
    ]


def _foreign(block: Block, provider: str) -> bool:
    return isinstance(block, ReasoningBlock) and block.provider is not None and block.provider != provider


def _has_foreign_reasoning(history: list[Message], provider: str, start: int) -> bool:
    for i in range(start, len(history)):
        message = history[i]
        if message.role == "assistant":
            for block in message.content:
                if type(block) is ReasoningBlock and block.provider is not None and block.provider != provider:
                    return True
    return False


def estimate_tokens(messages: list[Message]) -> int:
    """A model-free estimate: four characters a token."""
    chars = sum(len(getattr(b, "text", "") or getattr(b, "content", "") or "") for m in messages for b in m.content)
    return math.ceil(chars / 4)


def model_context(history: list[Message], summary_id: str | None, keep_from_id: str | None) -> list[Message]:
    """What the model is sent: the history, or, after a compaction, its summary and the
    messages it kept (the history itself keeps every message)."""
    if summary_id is None:
        return history
    ids = {m.message_id: i for i, m in enumerate(history)}
    summary = ids.get(summary_id)
    if summary is None:
        return history
    start = ids.get(keep_from_id, summary) if keep_from_id else summary
    return [history[summary]] + [m for m in history[start:] if m.message_id != summary_id]


def compaction_cut(context: list[Message], keep_last: int) -> int:
    """How many of ``context``'s first messages a compaction summarises (0: nothing to do).
    A kept part never starts with tool results whose calls would be summarised away."""
    cut = max(0, len(context) - keep_last)
    while 0 < cut < len(context) and context[cut].role == "tool":
        cut -= 1
    return cut
