"""Helpers shared by the adapter-level provider tests (Anthropic and OpenAI)."""

from __future__ import annotations

from typing import Any

import pytest

from warren.daemon.providers.base import Delta, ModelRequest, Provider, ProviderError
from warren.protocol.types import Message, TextBlock


def msg(index: int, role: str, *blocks: Any) -> Message:
    return Message(index=index, role=role, content=list(blocks), created_at_ms=1_700_000_000_000 + index, message_id=f"m{index}")  # type: ignore[arg-type]


def request(default_model: str, *messages: Message, **kw: Any) -> ModelRequest:
    """A one-call request; ``kw`` overrides any field (``model=None`` included)."""
    fields: dict[str, Any] = {
        "model": default_model,
        "system": "You are terse.",
        "messages": list(messages) or [msg(0, "user", TextBlock("Hi"))],
        "tools": [],
        "max_tokens": None,
    }
    fields.update(kw)
    return ModelRequest(**fields)


async def collect(provider: Provider, req: ModelRequest) -> list[Delta]:
    return [d async for d in provider.stream(req)]


async def failure(provider: Provider, req: ModelRequest) -> tuple[list[Delta], ProviderError]:
    got: list[Delta] = []
    with pytest.raises(ProviderError) as info:
        async for d in provider.stream(req):
            got.append(d)
    return got, info.value
