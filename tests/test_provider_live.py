"""One tiny streamed call per real API, to catch wire-format drift the fake server cannot.

Runs only with ``-m live`` style selection and the provider's key exported; CI deselects the
``live`` marker. Models can be overridden with ``WARREN_LIVE_ANTHROPIC_MODEL`` and
``WARREN_LIVE_OPENAI_MODEL``; ``OPENAI_BASE_URL`` points the OpenAI test at a compatible
server instead.
"""

from __future__ import annotations

import os

import pytest

from warren.daemon.config import OPENAI_BASE_URL, ProviderConfig
from warren.daemon.providers.anthropic import AnthropicProvider
from warren.daemon.providers.base import Delta, ModelRequest, Stop, TextDelta, UsageReport
from warren.daemon.providers.http import HTTPProvider
from warren.daemon.providers.openai import OpenAIProvider
from warren.protocol.types import Message, TextBlock

pytestmark = [pytest.mark.live, pytest.mark.anyio]



def tiny_request(model: str) -> ModelRequest:
    prompt = Message(index=0, role="user", content=[TextBlock("Reply with the single word: pong")], created_at_ms=0, message_id="m0")
    return ModelRequest(model=model, system="Be terse.", messages=[prompt], tools=[], max_tokens=16)


async def run_once(provider: HTTPProvider, model: str) -> list[Delta]:
    try:
        return [d async for d in provider.stream(tiny_request(model))]  # type: ignore[attr-defined]
    finally:
        await provider.aclose()


def check(deltas: list[Delta]) -> None:
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)).strip()
    usage = [d.usage for d in deltas if isinstance(d, UsageReport)]
    assert usage and usage[-1].input_tokens > 0 and usage[-1].output_tokens > 0
    assert isinstance(deltas[-1], Stop)


@pytest.mark.skipif(not os.environ.get("ANTHROPIC_API_KEY"), reason="ANTHROPIC_API_KEY not set")
async def test_anthropic_live() -> None:
    config = ProviderConfig(
        "anthropic", "anthropic", os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com",
        api_key=os.environ["ANTHROPIC_API_KEY"], read_timeout_s=60,
    )
    model = os.environ.get("WARREN_LIVE_ANTHROPIC_MODEL", "claude-haiku-4-5")
    check(await run_once(AnthropicProvider(config), model))


@pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY"), reason="OPENAI_API_KEY not set")
async def test_openai_live() -> None:
    config = ProviderConfig(
        "openai", "openai", (os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/"),
        api_key=os.environ["OPENAI_API_KEY"], read_timeout_s=60,
    )
    model = os.environ.get("WARREN_LIVE_OPENAI_MODEL", "gpt-4o-mini")
    check(await run_once(OpenAIProvider(config), model))
