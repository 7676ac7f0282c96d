"""The OpenAI / compatible adapter against the fake server: exact requests, chunk parsing
(reasoning, interleaved tool-call fragments, usage), failures, interrupts, history mapping."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.daemon.config import ProviderConfig
from warren.daemon.providers.base import (
    Delta,
    ModelRequest,
    ReasoningDelta,
    Stop,
    TextDelta,
    ToolUseArgsDelta,
    ToolUseStart,
    UsageReport,
)
from warren.daemon.providers.http import MISSING_TOOL_RESULT, Redactor
from warren.daemon.providers.openai import OpenAIProvider, _StreamState, to_openai_messages
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
    openai_chunk,
    openai_error,
    openai_events,
    openai_stream,
    openai_tool_call,
    openai_usage,
)

pytestmark = pytest.mark.anyio

KEY = "sk-proj-TESTKEY-abcdef0123456789"




def make_provider(server: FakeLLMServer, **overrides: Any) -> OpenAIProvider:
    fields: dict[str, Any] = {
        "name": "openai",
        "type": "openai",
        "base_url": server.openai_base_url,
        "api_key": KEY,
        "default_model": "gpt-4o-mini",
    }
    fields.update(overrides)
    return OpenAIProvider(ProviderConfig(**fields))


@pytest.fixture
async def provider(server: FakeLLMServer):
    p = make_provider(server)
    yield p
    await p.aclose()


def request(*messages: Message, **kw: Any) -> ModelRequest:
    return make_request("gpt-4o-mini", *messages, **kw)


def tool_calls_of(deltas: list[Delta]) -> dict[int, tuple[str, str, Any]]:
    """index → (id, name, parsed arguments), the way the turn loop assembles them."""
    starts = {d.index: d for d in deltas if isinstance(d, ToolUseStart)}
    args: dict[int, str] = {}
    for d in deltas:
        if isinstance(d, ToolUseArgsDelta):
            assert d.index in starts, "arguments before the tool call started"
            args[d.index] = args.get(d.index, "") + d.fragment
    return {i: (s.id, s.name, json.loads(args[i])) for i, s in starts.items()}


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


# ---------------------------------------------------------------- happy paths


async def test_plain_text_exact_request_and_deltas(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_stream("Hello there!", chunk=6, usage=openai_usage(12, 4)))
    tools = [ToolDef(name="get_weather", input_schema={"type": "object"}, description="Weather now")]
    deltas = await collect(provider, request(tools=tools, max_tokens=256))
    assert deltas == [
        TextDelta(1, "Hello "),
        TextDelta(1, "there!"),
        UsageReport(Usage(12, 4, 16, cache_read_tokens=0)),
        Stop("end_turn"),
    ]
    ex = server.last
    assert (ex.method, ex.path) == ("POST", "/v1/chat/completions")
    assert ex.headers["authorization"] == f"Bearer {KEY}"
    assert ex.headers["content-type"] == "application/json"
    assert "x-api-key" not in ex.headers
    assert ex.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object"}},
            }
        ],
        # not api.openai.com: compatible servers mostly only know max_tokens
        "max_tokens": 256,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_keyless_local_server_sends_no_authorization(server: FakeLLMServer) -> None:
    provider = make_provider(server, name="ollama", api_key=None, default_model="llama3.2", headers={"X-Title": "warren"})
    await collect(provider, request(model=None, system=None, provider_params={"temperature": 0, "stream": False, "options": {"num_ctx": 8192}}))
    await provider.aclose()
    ex = server.last
    assert "authorization" not in ex.headers
    assert ex.headers["x-title"] == "warren"
    assert ex.json == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "options": {"num_ctx": 8192},
    }


def test_official_endpoint_uses_max_completion_tokens() -> None:
    provider = OpenAIProvider(ProviderConfig("openai", "openai", "https://api.openai.com/v1", api_key=KEY))
    body = provider.build_body(request(model=None, max_tokens=100))
    assert body["model"] == "gpt-4o-mini"  # fallback only for the official endpoint
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body


async def test_compatible_server_without_model_fails_before_http(server: FakeLLMServer) -> None:
    provider = make_provider(server, default_model=None)
    _, err = await failure(provider, request(model=None))
    assert (err.kind, err.retryable) == ("bad_request", False)
    assert "default_model" in err.message
    assert server.exchanges == []


async def test_missing_key_for_official_endpoint_fails_before_http() -> None:
    provider = OpenAIProvider(ProviderConfig("openai", "openai", "https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("auth", False)
    assert "OPENAI_API_KEY" in err.message


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas(server: FakeLLMServer, provider: OpenAIProvider, field: str) -> None:
    server.enqueue(openai_stream("42", reasoning="Six times seven.", reasoning_field=field, chunk=8))
    deltas = await collect(provider, request())
    assert deltas[:3] == [ReasoningDelta(0, "Six time"), ReasoningDelta(0, "s seven."), TextDelta(1, "42")]


async def test_tool_call_fragments(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_stream("Let me look.", tool_calls=[openai_tool_call("call_1", "get_weather", {"city": "Paris"})]))
    deltas = await collect(provider, request())
    assert deltas[-1] == Stop("tool_use")
    assert text_of(deltas) == "Let me look."
    assert tool_calls_of(deltas) == {2: ("call_1", "get_weather", {"city": "Paris"})}


async def test_two_interleaved_tool_calls_split_across_chunks(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    def tc(index: int, **fields: Any) -> Event:
        return Event(openai_chunk({"tool_calls": [{"index": index, **fields}]}))

    steps = [
        Event(openai_chunk({"role": "assistant", "content": None})),
        # first fragment carries id, name and the start of the arguments
        tc(0, id="call_A", type="function", function={"name": "get_weather", "arguments": '{"ci'}),
        tc(1, id="call_B", type="function", function={"name": "get_time", "arguments": ""}),
        tc(0, function={"arguments": 'ty": "Par'}),
        tc(1, function={"arguments": '{"tz": '}),
        Event(openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}},
                                           {"index": 1, "function": {"arguments": '"CET"}'}}]})),
        Event(openai_chunk({}, finish_reason="tool_calls")),
        Event(openai_chunk(choices=False, usage=openai_usage(50, 20))),
        Event("[DONE]"),
    ]
    server.enqueue(SSEResponse(steps))
    deltas = await collect(provider, request())
    assert [d for d in deltas if isinstance(d, ToolUseStart)] == [
        ToolUseStart(2, "call_A", "get_weather"),
        ToolUseStart(3, "call_B", "get_time"),
    ]
    assert tool_calls_of(deltas) == {
        2: ("call_A", "get_weather", {"city": "Paris"}),
        3: ("call_B", "get_time", {"tz": "CET"}),
    }
    assert deltas[-2:] == [UsageReport(Usage(50, 20, 70, 0)), Stop("tool_use")]


async def test_tool_call_fragments_without_index_or_id(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    steps = [
        Event(openai_chunk({"tool_calls": [{"function": {"name": "now", "arguments": "{}"}}]})),
        Event(openai_chunk({"tool_calls": [{"id": "x2", "function": {"name": "later", "arguments": {"in": 5}}}]})),
        Event(openai_chunk({}, finish_reason="stop")),  # some servers say "stop" even with tool calls
        Event("[DONE]"),
    ]
    server.enqueue(SSEResponse(steps))
    deltas = await collect(provider, request())
    calls = tool_calls_of(deltas)
    assert calls[2][1:] == ("now", {}) and calls[2][0].startswith("call_")
    assert calls[3] == ("x2", "later", {"in": 5})
    assert deltas[-1] == Stop("tool_use")


async def test_tool_without_arguments_gets_empty_object(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_stream(tool_calls=[openai_tool_call("c", "now", "")]))
    deltas = await collect(provider, request())
    assert [d for d in deltas if isinstance(d, ToolUseArgsDelta)] == [ToolUseArgsDelta(2, "{}")]


async def test_keepalive_comments_are_ignored(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    steps: list[Any] = []
    for step in openai_events("abc", chunk=1):
        steps += [RawLine(b": OPENROUTER PROCESSING\n\n"), step]
    server.enqueue(SSEResponse(steps))
    deltas = await collect(provider, request())
    assert text_of(deltas) == "abc" and deltas[-1] == Stop("end_turn")


async def test_usage_with_cached_tokens(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_stream("ok", usage=openai_usage(2006, 300, cached=1920, reasoning=128)))
    deltas = await collect(provider, request())
    assert [d for d in deltas if isinstance(d, UsageReport)] == [
        UsageReport(Usage(2006, 300, 2306, cache_read_tokens=1920))
    ]


async def test_usage_chunk_with_null_choices(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    usage_chunk = openai_chunk(choices=False, usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    usage_chunk["choices"] = None  # vLLM
    steps = [Event(openai_chunk({"content": "hi"})), Event(openai_chunk({}, finish_reason="stop")), Event(usage_chunk), Event("[DONE]")]
    server.enqueue(SSEResponse(steps))
    deltas = await collect(provider, request())
    assert deltas == [TextDelta(1, "hi"), UsageReport(Usage(5, 2, 7)), Stop("end_turn")]


@pytest.mark.parametrize(
    ("finish", "expected"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), ("function_call", "tool_use"), (None, "end_turn")],
)
async def test_finish_reasons(server: FakeLLMServer, provider: OpenAIProvider, finish: str | None, expected: str) -> None:
    steps = [Event(openai_chunk({"content": "x"})), Event(openai_chunk({}, finish_reason=finish)), Event("[DONE]")]
    server.enqueue(SSEResponse(steps))
    assert (await collect(provider, request()))[-1] == Stop(expected)  # type: ignore[arg-type]


async def test_deltas_stream_without_buffering(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_stream("aaaabbbbcccc", chunk=4, delay_s=0.1))
    arrivals = [(time.time(), d) async for d in provider.stream(request())]
    text_arrivals = [t for t, d in arrivals if isinstance(d, TextDelta)]
    sent = server.last.step_times[1:4]  # after the role chunk
    for arrived, was_sent in zip(text_arrivals, sent):
        assert 0 <= arrived - was_sent < 0.1


async def test_client_reused_across_calls(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    assert provider._client is None
    await collect(provider, request())
    await collect(provider, request())
    assert len({ex.connection_id for ex in server.exchanges}) == 1


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("payload", "kind", "retryable", "etype"),
    [
        ({"error": {"message": "The server had an error", "type": "server_error", "code": None}}, "server_error", True, "server_error"),
        ({"error": {"message": "Rate limit reached", "code": 429}}, "rate_limited", True, None),  # OpenRouter
        ({"error": {"message": "context too long", "type": "invalid_request_error"}}, "bad_request", False, "invalid_request_error"),
        ({"error": "model crashed"}, "server_error", True, None),  # Ollama-style string
    ],
)
async def test_error_object_inside_stream(
    server: FakeLLMServer, provider: OpenAIProvider, payload: dict[str, Any], kind: str, retryable: bool, etype: str | None
) -> None:
    server.enqueue(SSEResponse(openai_events("partial answer")[:2] + [Event(payload)]))
    got, err = await failure(provider, request())
    assert TextDelta(1, "partial ") in got
    assert (err.kind, err.retryable, err.error_type) == (kind, retryable, etype)
    message = payload["error"]["message"] if isinstance(payload["error"], dict) else payload["error"]
    assert message in err.message


async def test_429_with_retry_after_ms(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(
        openai_error(429, "Rate limit reached for gpt-4o-mini", "requests", "rate_limit_exceeded",
                     {"retry-after-ms": "2500", "retry-after": "3"})
    )
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status, err.retry_after_ms, err.error_type) == (
        "rate_limited", True, 429, 2500, "requests"
    )
    assert len(server.exchanges) == 1


async def test_429_insufficient_quota_is_not_retryable(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_error(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("rate_limited", False)


async def test_500_server_error(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_error(500, "The server had an error while processing your request.", "server_error"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status) == ("server_error", True, 500)
    assert err.message == "HTTP 500 server_error: The server had an error while processing your request."


async def test_401_auth_key_redacted(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_error(401, f"Incorrect API key provided: {KEY}.", "invalid_request_error", "invalid_api_key"))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status, err.error_type) == ("auth", False, 401, "invalid_request_error")
    assert err.message == "HTTP 401 invalid_request_error: Incorrect API key provided: [redacted]."
    for text in (str(err), repr(err.args), repr(provider), repr(provider.config)):
        assert KEY not in text


async def test_ollama_style_404(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(JSONResponse(404, {"error": "model \"llama9\" not found, try pulling it first"}))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable, err.status) == ("bad_request", False, 404)
    assert 'model "llama9" not found' in err.message


@pytest.mark.parametrize("cut", [Reset(), Hangup()], ids=["rst", "fin"])
async def test_connection_cut_mid_stream(server: FakeLLMServer, provider: OpenAIProvider, cut: Any) -> None:
    server.enqueue(SSEResponse(openai_events("hello world")[:2] + [cut]))
    got, err = await failure(provider, request())
    assert TextDelta(1, "hello wo") in got
    assert (err.kind, err.retryable) == ("connection", True)


async def test_stream_ending_without_done(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(openai_stream("hi", done=False))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("connection", True)
    assert "[DONE]" in err.message


async def test_stall_past_read_timeout(server: FakeLLMServer) -> None:
    provider = make_provider(server, read_timeout_s=0.3)
    server.enqueue(SSEResponse(openai_events("hi")[:2] + [Stall(5.0)]))
    started = time.monotonic()
    got, err = await failure(provider, request())
    await provider.aclose()
    assert TextDelta(1, "hi") in got
    assert (err.kind, err.retryable) == ("timeout", True)
    assert 0.25 < time.monotonic() - started < 2.0


async def test_slow_first_byte_past_read_timeout(server: FakeLLMServer) -> None:
    provider = make_provider(server, read_timeout_s=0.3)
    server.enqueue(SSEResponse(openai_events("hi"), head_delay_s=3.0))
    _, err = await failure(provider, request())
    await provider.aclose()
    assert (err.kind, err.retryable) == ("timeout", True)


async def test_malformed_sse_line(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    steps = openai_events("hi")
    steps.insert(2, RawLine(b'data: {"id":"chatcmpl-1","choices":[{"delta":{"content":"x"\n\n'))
    server.enqueue(SSEResponse(steps))
    _, err = await failure(provider, request())
    assert (err.kind, err.retryable) == ("protocol", True)


async def test_interrupt_closes_connection_promptly(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(SSEResponse(openai_events("first")[:2] + [Stall(10.0)] + openai_events("late")[1:]))
    stream = provider.stream(request())
    async for d in stream:
        if isinstance(d, TextDelta):
            break
    closed_at = time.time()
    await stream.aclose()
    ex = server.last
    assert ex.done.wait(2.0)
    assert ex.outcome == "client_closed"
    assert ex.client_closed_at is not None and ex.client_closed_at - closed_at < 0.1


# ---------------------------------------------------------------- history mapping


async def test_tool_round_trip_history(server: FakeLLMServer, provider: OpenAIProvider) -> None:
    server.enqueue(
        openai_stream(
            "Checking.",
            tool_calls=[
                openai_tool_call("call_A", "get_weather", {"city": "Paris"}),
                openai_tool_call("call_B", "get_time", {"tz": "CET"}),
            ],
        ),
        openai_stream("Paris: 21C, 14:00."),
    )
    first = await collect(provider, request(msg(0, "user", TextBlock("Weather and time in Paris?"))))
    calls = tool_calls_of(first)
    assistant = msg(1, "assistant", TextBlock(text_of(first)), *(ToolUseBlock(*calls[i]) for i in sorted(calls)))
    history = [
        msg(0, "user", TextBlock("Weather and time in Paris?")),
        assistant,
        msg(2, "tool", ToolResultBlock("call_A", "21C, sunny"), ToolResultBlock("call_B", "clock offline", is_error=True)),
    ]
    await collect(provider, request(*history))
    assert server.last.json["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_A", "content": "21C, sunny"},
        {"role": "tool", "tool_call_id": "call_B", "content": "Error: clock offline"},
    ]


def test_history_system_messages_in_place_and_tool_results_adjacent() -> None:
    history = [
        msg(0, "user", TextBlock("List files")),
        msg(1, "assistant", ReasoningBlock("thinking", signature="sig"), ToolUseBlock("t1", "ls", {"path": "."})),
        msg(2, "system", TextBlock("User switched branch.")),  # appended between call and result
        msg(3, "tool", ToolResultBlock("t1", "a.py")),
        msg(4, "assistant", ReasoningBlock("only reasoning, interrupted")),  # dropped
        msg(5, "user", TextBlock("Thanks")),
        msg(6, "assistant", ToolUseBlock("t2", "rm", {})),  # never answered
    ]
    assert to_openai_messages(None, history) == [
        {"role": "user", "content": "List files"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "ls", "arguments": '{"path":"."}'}}],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "a.py"},
        {"role": "system", "content": "User switched branch."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t2", "type": "function", "function": {"name": "rm", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t2", "content": f"Error: {MISSING_TOOL_RESULT}"},
    ]


# ---------------------------------------------------------------- property: any chunking reassembles


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None)
@given(
    args=st.lists(st.dictionaries(st.text(min_size=1, max_size=6), _json_values, max_size=4), min_size=1, max_size=3),
    text=st.text(max_size=30),
    data=st.data(),
)
def test_any_chunking_reassembles(args: list[dict[str, Any]], text: str, data: st.DataObject) -> None:
    """Text and interleaved tool-call argument fragments, cut anywhere, reassemble exactly."""
    fragments: list[tuple[int, dict[str, Any]]] = []
    for i, a in enumerate(args):
        encoded = json.dumps(a)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=4)))
        pieces = [encoded[x:y] for x, y in zip([0, *cuts], [*cuts, len(encoded)])]
        fragments.append((i, {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": f"f{i}", "arguments": pieces[0]}}))
        fragments += [(i, {"index": i, "function": {"arguments": p}}) for p in pieces[1:]]
    order = data.draw(st.permutations(range(len(fragments))))
    # keep each call's own fragments in order while interleaving calls
    queues = {i: [f for j, f in fragments if j == i] for i in range(len(args))}
    owners = [fragments[k][0] for k in order]
    state = _StreamState("p", Redactor([]))
    deltas: list[Delta] = []
    for piece in [text[i : i + 3] for i in range(0, len(text), 3)]:
        deltas += state.feed(json.dumps(openai_chunk({"content": piece})))
    for owner in owners:
        deltas += state.feed(json.dumps(openai_chunk({"tool_calls": [queues[owner].pop(0)]})))
    deltas += state.feed("[DONE]")
    assert text_of(deltas) == text
    assert tool_calls_of(deltas) == {2 + i: (f"call_{i}", f"f{i}", a) for i, a in enumerate(args)}
    assert deltas[-1] == Stop("tool_use")
