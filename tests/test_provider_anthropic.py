"""The Anthropic adapter against the fake server: exact requests, every SSE event type,
every failure mapping, interrupts. Also the shared HTTP helpers (retry-after, redaction)."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest

from warren.daemon.config import ProviderConfig
from warren.daemon.providers.anthropic import AnthropicProvider, to_anthropic_messages
from warren.daemon.providers.base import (
    Delta,
    ModelRequest,
    ProviderError,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    Stop,
    TextDelta,
    ToolUseArgsDelta,
    ToolUseStart,
    UsageReport,
)
from warren.daemon.providers.http import MISSING_TOOL_RESULT, Redactor, parse_retry_after, secrets_of
from warren.protocol.types import Message, ReasoningBlock, TextBlock, ToolDef, ToolResultBlock, ToolUseBlock, Usage
from tests.provider_helpers import collect, failure, msg
from tests.provider_helpers import request as make_request
from tests.fakes.llm_server import (
    Event,
    FakeLLMServer,
    Hangup,
    JSONResponse,
    RawLine,
    Reset,
    SSEResponse,
    Stall,
    anthropic_error,
    anthropic_error_event,
    anthropic_events,
    anthropic_stream,
    anthropic_text,
    redacted_thinking_block,
    text_block,
    thinking_block,
    tool_use_block,
)

pytestmark = pytest.mark.anyio

KEY = "sk-ant-api03-TESTKEY-0123456789abcdef"




def make_provider(server: FakeLLMServer, **overrides: Any) -> AnthropicProvider:
    fields: dict[str, Any] = {"name": "anthropic", "type": "anthropic", "base_url": server.base_url, "api_key": KEY}
    fields.update(overrides)
    return AnthropicProvider(ProviderConfig(**fields))


@pytest.fixture
async def provider(server: FakeLLMServer):
    p = make_provider(server)
    yield p
    await p.aclose()


def request(*messages: Message, **kw: Any) -> ModelRequest:
    return make_request("claude-sonnet-4-5", *messages, **kw)


def assemble(deltas: list[Delta]) -> list[Any]:
    """What the turn loop would commit: blocks ordered by index."""
    blocks: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if isinstance(d, (UsageReport, Stop)):
            continue
        b = blocks.setdefault(d.index, {"text": "", "reasoning": "", "signature": None, "args": ""})
        if isinstance(d, TextDelta):
            b["kind"] = "text"
            b["text"] += d.text
        elif isinstance(d, ReasoningDelta):
            b["kind"] = "reasoning"
            b["reasoning"] += d.text
        elif isinstance(d, ReasoningSignature):
            b["signature"] = d.signature
        elif isinstance(d, RedactedReasoning):
            b["kind"] = "redacted"
            b["data"] = d.data
        elif isinstance(d, ToolUseStart):
            b.update(kind="tool", id=d.id, name=d.name)
        elif isinstance(d, ToolUseArgsDelta):
            b["args"] += d.fragment
    out: list[Any] = []
    for _, b in sorted(blocks.items()):
        if b["kind"] == "text":
            out.append(TextBlock(b["text"]))
        elif b["kind"] == "reasoning":
            out.append(ReasoningBlock(b["reasoning"], signature=b["signature"]))
        elif b["kind"] == "redacted":
            out.append(ReasoningBlock("", redacted=b["data"]))
        else:
            out.append(ToolUseBlock(b["id"], b["name"], json.loads(b["args"])))
    return out


# ---------------------------------------------------------------- happy paths


async def test_plain_text_exact_request_and_deltas(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(anthropic_stream(text_block("Hello there!", chunk=6), input_tokens=12, output_tokens=4))
    tools = [ToolDef(name="get_weather", input_schema={"type": "object"}, description="Weather now")]
    deltas = await collect(provider, request(tools=tools, max_tokens=256))

    assert deltas == [
        UsageReport(Usage(12, 1, 13, 0, 0)),
        TextDelta(0, "Hello "),
        TextDelta(0, "there!"),
        UsageReport(Usage(12, 4, 16, 0, 0)),
        Stop("end_turn"),
    ]
    ex = server.last
    assert (ex.method, ex.path) == ("POST", "/v1/messages")
    assert ex.headers["x-api-key"] == KEY
    assert ex.headers["anthropic-version"] == "2023-06-01"
    assert ex.headers["content-type"] == "application/json"
    assert ex.headers["accept"] == "text/event-stream"
    assert "authorization" not in ex.headers
    assert ex.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "tools": [{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object"}}],
        "stream": True,
    }


async def test_defaults_extra_headers_and_provider_params(server: FakeLLMServer) -> None:
    provider = make_provider(
        server,
        headers={"X-Title": "warren", "Anthropic-Version": "2099-01-01", "anthropic-beta": "b1"},
        default_model="claude-opus-4-1",
    )
    server.enqueue(anthropic_text("ok"))
    params = {
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
        # reserved: set by Warren, never overridable
        "model": "other",
        "stream": False,
        "max_tokens": 1,
        "messages": [],
    }
    await collect(provider, request(model=None, system=None, provider_params=params))
    await provider.aclose()
    body = server.last.json
    assert server.last.headers["x-title"] == "warren"
    assert server.last.headers["anthropic-beta"] == "b1"
    assert server.last.headers["anthropic-version"] == "2099-01-01"  # configured headers win, sent once
    assert [k.lower() for k, _ in server.last.header_list].count("anthropic-version") == 1
    assert body == {
        "model": "claude-opus-4-1",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
    }


async def test_fallback_model_when_none_configured(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    await collect(provider, request(model=None))
    assert server.last.json["model"] == "claude-sonnet-4-5"


async def test_thinking_with_signature_is_sent_back(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(
        anthropic_stream(
            thinking_block("The user greets me; answer briefly.", "EqQBCgIYAhIM1gbcDa9GJwZA2b3h", chunk=10),
            redacted_thinking_block("EmwKAhgBEgy3va3pzix/LafPsn4a"),
            text_block("Hello!"),
        ),
        anthropic_text("Fine."),
    )
    first = await collect(provider, request())
    assert first[1:5] == [
        ReasoningDelta(0, "The user g"),
        ReasoningDelta(0, "reets me; "),
        ReasoningDelta(0, "answer bri"),
        ReasoningDelta(0, "efly."),
    ]
    assert ReasoningSignature(0, "EqQBCgIYAhIM1gbcDa9GJwZA2b3h") in first
    assert RedactedReasoning(1, "EmwKAhgBEgy3va3pzix/LafPsn4a") in first
    assert TextDelta(2, "Hello!") in first

    history = [msg(0, "user", TextBlock("Hi")), msg(1, "assistant", *assemble(first)), msg(2, "user", TextBlock("And you?"))]
    await collect(provider, request(*history))
    assert server.last.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "The user greets me; answer briefly.",
                    "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
                },
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "And you?"}]},
    ]


async def test_tool_use_with_input_json_fragments(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(
        anthropic_stream(
            text_block("Let me check."),
            tool_use_block("toolu_01A", "get_weather", fragments=["", '{"city": "Pa', 'ris", "un', 'its": "C"}']),
            stop_reason="tool_use",
        )
    )
    deltas = await collect(provider, request())
    assert deltas[-1] == Stop("tool_use")
    assert [d for d in deltas if isinstance(d, (ToolUseStart, ToolUseArgsDelta))] == [
        ToolUseStart(1, "toolu_01A", "get_weather"),
        ToolUseArgsDelta(1, '{"city": "Pa'),
        ToolUseArgsDelta(1, 'ris", "un'),
        ToolUseArgsDelta(1, 'its": "C"}'),
    ]
    assert assemble(deltas)[1] == ToolUseBlock("toolu_01A", "get_weather", {"city": "Paris", "units": "C"})


async def test_tool_without_arguments_gets_empty_object(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(anthropic_stream(tool_use_block("toolu_02", "now", fragments=[""]), stop_reason="tool_use"))
    deltas = await collect(provider, request())
    assert [d for d in deltas if isinstance(d, ToolUseArgsDelta)] == [ToolUseArgsDelta(0, "{}")]


async def test_pings_and_unknown_events_are_ignored(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    steps = anthropic_events(text_block("abc", chunk=1))
    ping = Event({"type": "ping"}, event="ping")
    noisy: list[Any] = []
    for step in steps:
        noisy += [step, ping]
    noisy.insert(3, Event({"type": "some_future_event", "x": 1}, event="some_future_event"))
    noisy.insert(1, RawLine(b": comment line\n\n"))
    server.enqueue(SSEResponse(noisy))
    deltas = await collect(provider, request())
    assert [d for d in deltas if isinstance(d, TextDelta)] == [TextDelta(0, "a"), TextDelta(0, "b"), TextDelta(0, "c")]
    assert deltas[-1] == Stop("end_turn")


async def test_usage_with_cache_tokens(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(anthropic_text("cached", input_tokens=20, cache_read=1800, cache_write=300, output_tokens=7))
    deltas = await collect(provider, request())
    reports = [d.usage for d in deltas if isinstance(d, UsageReport)]
    # input_tokens counts every prompt token: uncached + cache read + cache write
    assert reports[-1] == Usage(2120, 7, 2127, cache_read_tokens=1800, cache_write_tokens=300)


async def test_message_delta_cumulative_usage_replaces_start_counts(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    steps = anthropic_events(text_block("x"), input_tokens=10, output_tokens=3)
    steps[-2] = Event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": 11, "cache_read_input_tokens": 5, "output_tokens": 9},
        },
        event="message_delta",
    )
    server.enqueue(SSEResponse(steps))
    deltas = await collect(provider, request())
    assert [d for d in deltas if isinstance(d, UsageReport)][-1].usage == Usage(16, 9, 25, 5, 0)


@pytest.mark.parametrize(
    ("api_reason", "expected"),
    [
        ("end_turn", "end_turn"),
        ("stop_sequence", "end_turn"),
        ("pause_turn", "end_turn"),
        ("max_tokens", "max_tokens"),
        ("tool_use", "tool_use"),
        ("refusal", "refusal"),
        ("a_future_reason", "end_turn"),
    ],
)
async def test_stop_reasons(server: FakeLLMServer, provider: AnthropicProvider, api_reason: str, expected: str) -> None:
    server.enqueue(anthropic_text("x", stop_reason=api_reason))
    assert (await collect(provider, request()))[-1] == Stop(expected)  # type: ignore[arg-type]


async def test_deltas_stream_without_buffering(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(anthropic_stream(text_block("aaaabbbbcccc", chunk=4), delay_s=0.15))
    arrivals: list[tuple[float, Delta]] = []
    async for d in provider.stream(request()):
        arrivals.append((time.time(), d))
    ex = server.last
    text_arrivals = [t for t, d in arrivals if isinstance(d, TextDelta)]
    # step_times: message_start, block_start, ping, 3 deltas, ...
    sent = ex.step_times[3:6]
    for arrived, was_sent in zip(text_arrivals, sent):
        assert 0 <= arrived - was_sent < 0.1
    assert ex.first_byte_at is not None and ex.first_byte_at <= text_arrivals[0]


async def test_client_created_lazily_and_reused(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    assert provider._client is None
    await collect(provider, request())
    await collect(provider, request())
    first, second = server.exchanges
    assert first.connection_id == second.connection_id  # keep-alive connection reused
    await provider.aclose()
    assert provider._client is None


# ---------------------------------------------------------------- failures


async def test_error_event_mid_stream_overloaded(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    steps = anthropic_events(text_block("partial answer", chunk=7))[:5]  # start, block start, ping, 2 deltas
    steps.append(anthropic_error_event("overloaded_error", "Overloaded"))
    server.enqueue(SSEResponse(steps))
    got, err = await failure(provider, request())
    assert [d for d in got if isinstance(d, TextDelta)] == [TextDelta(0, "partial"), TextDelta(0, " answer")]
    assert (err.kind, err.retryable, err.error_type, err.provider) == ("overloaded", True, "overloaded_error", "anthropic")
    assert "overloaded_error" in err.message and "Overloaded" in err.message


async def test_error_event_api_error_is_retryable_server_error(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    steps = anthropic_events(text_block("x"))[:1] + [anthropic_error_event("api_error", "Internal server error")]
    server.enqueue(SSEResponse(steps))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.error_type) == ("server_error", True, "api_error")


@pytest.mark.parametrize(
    ("headers", "expected_ms"),
    [({"retry-after": "7"}, 7000), ({"retry-after-ms": "1500", "retry-after": "2"}, 1500), ({}, None)],
)
async def test_429_rate_limited_with_retry_after(
    server: FakeLLMServer, provider: AnthropicProvider, headers: dict[str, str], expected_ms: int | None
) -> None:
    server.enqueue(anthropic_error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", headers))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status, err.retry_after_ms) == ("rate_limited", True, 429, expected_ms)
    assert err.error_type == "rate_limit_error"
    assert len(server.exchanges) == 1  # exactly one attempt: retrying is the turn loop's job


@pytest.mark.parametrize(
    ("status", "etype", "kind", "retryable"),
    [
        (500, "api_error", "server_error", True),
        (502, "api_error", "server_error", True),
        (529, "overloaded_error", "overloaded", True),
        (500, "overloaded_error", "overloaded", True),
        (408, "timeout_error", "timeout", True),
        (400, "invalid_request_error", "bad_request", False),
        (404, "not_found_error", "bad_request", False),
        (413, "request_too_large", "bad_request", False),
        (403, "permission_error", "auth", False),
    ],
)
async def test_http_status_mapping(
    server: FakeLLMServer, provider: AnthropicProvider, status: int, etype: str, kind: str, retryable: bool
) -> None:
    server.enqueue(anthropic_error(status, etype, "something happened"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status, err.error_type) == (kind, retryable, status, etype)
    assert err.message == f"HTTP {status} {etype}: something happened"


async def test_401_auth_not_retryable_and_key_redacted(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(anthropic_error(401, "authentication_error", f"invalid x-api-key: {KEY}"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status, err.error_type) == ("auth", False, 401, "authentication_error")
    assert err.message == "HTTP 401 authentication_error: invalid x-api-key: [redacted]"
    for text in (err.message, str(err), repr(err), repr(err.args), repr(provider), repr(provider.config)):
        assert KEY not in text


async def test_x_should_retry_header_overrides(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(anthropic_error(409, "conflict", "try again", {"x-should-retry": "true"}))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("bad_request", True)


async def test_html_error_page(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(JSONResponse(502, b"<html><body>Bad Gateway</body></html>"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.error_type) == ("server_error", True, None)
    assert "Bad Gateway" in err.message


@pytest.mark.parametrize("cut", [Reset(), Hangup()], ids=["rst", "fin"])
async def test_connection_cut_mid_stream(server: FakeLLMServer, provider: AnthropicProvider, cut: Any) -> None:
    server.enqueue(SSEResponse(anthropic_events(text_block("hello world", chunk=5))[:4] + [cut]))
    got, err = await failure(provider, request())
    assert TextDelta(0, "hello") in got
    assert (err.kind, err.retryable) == ("connection", True)


async def test_stream_ending_without_message_stop(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(SSEResponse(anthropic_events(text_block("hi"))[:-1]))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("connection", True)
    assert "message_stop" in err.message


async def test_connection_refused(server: FakeLLMServer) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = make_provider(server, base_url=f"http://127.0.0.1:{port}")
    _, err = await failure(provider, request())
    await provider.aclose()
    assert (err.kind, err.retryable) == ("connection", True)
    assert err.message.startswith(f"ConnectError (127.0.0.1:{port}): ")


async def test_stall_past_read_timeout(server: FakeLLMServer) -> None:
    provider = make_provider(server, read_timeout_s=0.3)
    server.enqueue(SSEResponse(anthropic_events(text_block("hi"))[:4] + [Stall(5.0)]))
    started = time.monotonic()
    got, err = await failure(provider, request())
    elapsed = time.monotonic() - started
    await provider.aclose()
    assert TextDelta(0, "hi") in got
    assert (err.kind, err.retryable) == ("timeout", True)
    assert err.message == f"ReadTimeout (127.0.0.1:{server.port}): timed out waiting for data (read timeout)"
    assert 0.25 < elapsed < 2.0
    assert server.last.done.wait(2) and server.last.outcome == "client_closed"


async def test_malformed_sse_line(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    steps = anthropic_events(text_block("hi"))
    steps.insert(3, RawLine(b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "te\n\n'))
    server.enqueue(SSEResponse(steps))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("protocol", True)
    assert "invalid JSON" in err.message


async def test_200_that_is_not_a_stream(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(JSONResponse(200, {"id": "msg_1", "type": "message", "content": []}))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("protocol", False)


async def test_missing_key_for_official_endpoint_fails_before_http() -> None:
    provider = AnthropicProvider(ProviderConfig("anthropic", "anthropic", "https://api.anthropic.com", api_key_env="ANTHROPIC_API_KEY"))
    with pytest.raises(ProviderError) as info:
        await collect(provider, request())
    assert (info.value.kind, info.value.retryable) == ("auth", False)
    assert "ANTHROPIC_API_KEY" in info.value.message
    assert provider._client is None


async def test_interrupt_closes_connection_promptly(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(SSEResponse(anthropic_events(text_block("first"))[:4] + [Stall(10.0)] + anthropic_events(text_block("late"))[3:]))
    stream = provider.stream(request())
    async for d in stream:
        if isinstance(d, TextDelta):
            break
    closed_at = time.time()
    await stream.aclose()  # what the turn loop does on interrupt
    ex = server.last
    assert ex.done.wait(2.0), "server never noticed the client going away"
    assert ex.outcome == "client_closed"
    assert ex.client_closed_at is not None and ex.client_closed_at - closed_at < 0.1
    # the provider stays usable after an interrupt
    server.enqueue(anthropic_text("again"))
    assert TextDelta(0, "again") in await collect(provider, request())


# ---------------------------------------------------------------- history mapping


async def test_tool_round_trip_history(server: FakeLLMServer, provider: AnthropicProvider) -> None:
    server.enqueue(
        anthropic_stream(
            text_block("Checking both."),
            tool_use_block("toolu_A", "get_weather", {"city": "Paris"}),
            tool_use_block("toolu_B", "get_time", {"tz": "CET"}),
            stop_reason="tool_use",
        ),
        anthropic_text("Paris: 21C, 14:00."),
    )
    first = await collect(provider, request(msg(0, "user", TextBlock("Weather and time in Paris?"))))
    history = [
        msg(0, "user", TextBlock("Weather and time in Paris?")),
        msg(1, "assistant", *assemble(first)),
        msg(2, "tool", ToolResultBlock("toolu_A", "21C, sunny"), ToolResultBlock("toolu_B", "clock offline", is_error=True)),
    ]
    second = await collect(provider, request(*history))
    assert second[-1] == Stop("end_turn")
    assert server.last.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_B", "name": "get_time", "input": {"tz": "CET"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "21C, sunny", "is_error": False},
                {"type": "tool_result", "tool_use_id": "toolu_B", "content": "clock offline", "is_error": True},
            ],
        },
    ]


def test_history_system_context_merging_and_foreign_reasoning() -> None:
    history = [
        msg(0, "system", TextBlock("Repo is at /src.")),
        msg(1, "user", TextBlock("List files")),
        msg(
            2,
            "assistant",
            ReasoningBlock("thought from another provider"),  # no signature: dropped
            TextBlock(""),  # empty: dropped
            ToolUseBlock("t1", "ls", {}),
        ),
        msg(3, "system", TextBlock("User switched branch.")),  # lands between call and result
        msg(4, "tool", ToolResultBlock("t1", "a.py b.py")),
        msg(5, "user", TextBlock("Thanks")),
    ]
    assert to_anthropic_messages(history) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-context>\nRepo is at /src.\n</system-context>"},
                {"type": "text", "text": "List files"},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "a.py b.py", "is_error": False},
                {"type": "text", "text": "<system-context>\nUser switched branch.\n</system-context>"},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_history_tool_call_without_result_gets_error_result() -> None:
    history = [
        msg(0, "user", TextBlock("go")),
        msg(1, "assistant", ToolUseBlock("t1", "slow", {"n": 1})),
        msg(2, "user", TextBlock("never mind")),
    ]
    assert to_anthropic_messages(history)[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": MISSING_TOOL_RESULT, "is_error": True},
            {"type": "text", "text": "never mind"},
        ],
    }


# ---------------------------------------------------------------- shared HTTP helpers


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == 30_000
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0
    assert parse_retry_after({"retry-after": "1.5"}) == 1500
    assert parse_retry_after({"retry-after-ms": "250.7"}) == 250
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "3"}) == 3000
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-4"}) is None


def test_redactor_covers_key_and_every_header_value() -> None:
    config = ProviderConfig(
        "p", "openai", "http://x", api_key="sk-live-AAAA1111",
        headers={"X-Proxy-Token": "Bearer tok-ZZZZ9999", "X-Title": "warren"},
    )
    redact = Redactor(secrets_of(config))
    assert redact("k=sk-live-AAAA1111 t=tok-ZZZZ9999 title=warren") == "k=[redacted] t=[redacted] title=[redacted]"
    assert "tok-ZZZZ9999" not in repr(config) and "sk-live" not in repr(config)
