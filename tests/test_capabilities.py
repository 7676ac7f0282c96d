"""Agent capabilities through the daemon (PROTOCOL.md section 12): queued turns, steering a
running turn, stopping at a boundary, and structured output (on the scripted provider and
against the fake HTTP servers, whose requests are asserted)."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

from tests.daemon_client import Daemon, script
from tests.fakes.llm_server import FakeLLMServer, anthropic_stream, openai_stream, text_block, tool_use_block
from tests.test_providers_daemon import claude_section, openai_section, write_config

Spawn = Callable[..., Daemon]
# Streams for two seconds: long enough that what a test sends once it has started (a steer, a
# second turn/start, an interrupt at the boundary) lands while it runs, even on a loaded machine.
SLOW = {"text": "s" * 100, "chunk_chars": 1, "delay_ms": 20}
TOOLS = [{"name": "t", "input_schema": {"type": "object"}}]


def deferred(d: Daemon, *steps: dict[str, Any], **params: Any) -> str:
    return d.call("session/create", {"initial_turn": "defer", "provider": "scripted",
                                     "provider_params": script(*steps), **params})["session_id"]


def running_turn(d: Daemon, sid: str) -> str:
    return d.wait_for(lambda: next((e["turn_id"] for e in reversed(d.events(sid))
                                    if e["event"]["type"] == "turn_started"), None), what="a running turn")


def roles(d: Daemon, sid: str) -> list[str]:
    return [m["role"] for m in d.call("session/history", {"session_id": sid})["messages"]]


# ---------------------------------------------------------------- queue


def test_queued_turns_run_in_order_each_with_its_own_result(daemon: Daemon) -> None:
    sid = deferred(daemon, SLOW, {"text": "second"}, {"text": "third"})
    first = daemon.request("turn/start", {"session_id": sid, "prompt": "one"})
    running_turn(daemon, sid)
    second = daemon.request("turn/start", {"session_id": sid, "prompt": "two", "when_busy": "queue"})
    third = daemon.request("turn/start", {"session_id": sid, "prompt": "three", "when_busy": "queue"})
    results = [daemon.response(i)["result"] for i in (first, second, third)]
    assert [r["text"] for r in results] == [SLOW["text"], "second", "third"]
    assert len({r["turn_id"] for r in results}) == 3
    assert roles(daemon, sid) == ["user", "assistant"] * 3
    ends = [e for e in daemon.events(sid) if e["event"]["type"] == "turn_completed"]
    assert [e["turn_id"] for e in ends] == [r["turn_id"] for r in results]


def test_without_queue_a_busy_session_is_refused(daemon: Daemon) -> None:
    sid = deferred(daemon, SLOW)
    daemon.request("turn/start", {"session_id": sid, "prompt": "one"})
    running_turn(daemon, sid)
    assert daemon.error("turn/start", {"session_id": sid, "prompt": "two"})["data"]["code"] == "SESSION_BUSY"
    bad = daemon.error("turn/start", {"session_id": sid, "prompt": "two", "when_busy": "later"})
    assert bad["code"] == -32602 and bad["data"]["errors"][0]["path"] == "$.when_busy"
    daemon.call("turn/interrupt", {"session_id": sid})


def test_a_turn_queued_on_another_daemon_runs_after_the_running_one(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, SLOW, {"text": "after"})
    b.call("session/read", {"session_id": sid})  # b is up: its turn/start is queued behind the running one
    first = a.request("turn/start", {"session_id": sid, "prompt": "one"})
    running_turn(a, sid)
    queued = b.call("turn/start", {"session_id": sid, "prompt": "two", "when_busy": "queue"}, timeout=20)
    assert a.response(first)["result"]["stop_reason"] == "end_turn"
    assert queued["text"] == "after" and queued["stop_reason"] == "end_turn"
    assert roles(b, sid) == ["user", "assistant", "user", "assistant"]


# ---------------------------------------------------------------- steer


def test_a_steer_joins_the_running_turn_and_is_answered_in_it(daemon: Daemon) -> None:
    sid = deferred(daemon, SLOW, {"text": "steered answer"})
    request = daemon.request("turn/start", {"session_id": sid, "prompt": "task"})
    turn_id = running_turn(daemon, sid)
    staged = daemon.call("turn/steer", {"session_id": sid, "expected_turn_id": turn_id, "prompt": "also X"})
    assert staged == {"turn_id": turn_id, "status": "staged"}
    result = daemon.response(request)["result"]
    assert result["text"] == "steered answer" and result["turn_id"] == turn_id
    history = daemon.call("session/history", {"session_id": sid})["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[2]["content"] == [{"type": "text", "text": "also X"}] and history[2]["turn_id"] == turn_id
    kinds = [e["event"]["type"] for e in daemon.events(sid)]
    assert kinds.count("steer_applied") == 1 and kinds.index("steer_applied") < kinds.index("turn_completed")
    applied = next(e for e in daemon.events(sid) if e["event"]["type"] == "steer_applied")
    assert applied["event"] == {"type": "steer_applied", "text": "also X"} and applied["turn_id"] == turn_id


def test_a_steer_waits_for_the_tool_results(spawn: Spawn) -> None:
    d = spawn()
    d.call("initialize", {"capabilities": {"tool_execute": True}})
    sid = deferred(d, {"tool_calls": [{"name": "t", "arguments": {}}]}, {"text": "done"}, tools=TOOLS)
    request = d.request("turn/start", {"session_id": sid, "prompt": "use the tool"})
    call = d.wait_tool_requests(1)[0]
    turn_id = call["params"]["turn_id"]
    d.call("turn/steer", {"session_id": sid, "expected_turn_id": turn_id, "prompt": "and then Y"})
    time.sleep(0.1)
    d.reply(call["id"], {"content": "ok", "is_error": False})
    assert d.response(request)["result"]["text"] == "done"
    assert roles(d, sid) == ["user", "assistant", "tool", "user", "assistant"]


def test_a_steer_for_another_turn_or_an_idle_session_is_refused(daemon: Daemon) -> None:
    sid = deferred(daemon, SLOW)
    idle = daemon.error("turn/steer", {"session_id": sid, "expected_turn_id": "t-1", "prompt": "x"})
    assert idle["code"] == -32003 and idle["data"]["code"] == "SESSION_NOT_RUNNING"
    daemon.request("turn/start", {"session_id": sid, "prompt": "one"})
    running_turn(daemon, sid)
    stale = daemon.error("turn/steer", {"session_id": sid, "expected_turn_id": "t-1", "prompt": "x"})
    assert stale["data"]["code"] == "SESSION_NOT_RUNNING"
    assert daemon.error("turn/steer", {"session_id": "nope", "expected_turn_id": "t", "prompt": "x"})["code"] == -32001
    empty = daemon.error("turn/steer", {"session_id": sid, "expected_turn_id": "t", "prompt": ""})
    assert empty["code"] == -32602 and empty["data"]["errors"][0]["path"] == "$.prompt"


# ---------------------------------------------------------------- boundary


def test_interrupt_at_a_boundary_finishes_the_tool_step_then_ends(spawn: Spawn) -> None:
    d = spawn()
    d.call("initialize", {"capabilities": {"tool_execute": True}})
    sid = deferred(d, {"text": "calling", "tool_calls": [{"name": "t", "arguments": {}}]}, {"text": "never said"},
                   tools=TOOLS)
    request = d.request("turn/start", {"session_id": sid, "prompt": "go"})
    call = d.wait_tool_requests(1)[0]
    answer = d.call("turn/interrupt", {"session_id": sid, "when": "boundary"})
    assert answer["interrupted"] is True and answer["turn_id"] == call["params"]["turn_id"]
    d.reply(call["id"], {"content": "tool output", "is_error": False})
    result = d.response(request)["result"]
    assert result["stop_reason"] == "interrupted" and result["text"] == "calling"
    history = d.call("session/history", {"session_id": sid})["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[2]["content"][0]["content"] == "tool output" and not history[2]["content"][0]["is_error"]
    # the next model call was never made: the next turn gets the script's next step
    assert d.call("turn/start", {"session_id": sid, "prompt": "again"})["text"] == "never said"


def test_interrupt_at_a_boundary_lets_a_final_answer_end_the_turn(daemon: Daemon) -> None:
    sid = deferred(daemon, SLOW)
    request = daemon.request("turn/start", {"session_id": sid, "prompt": "go"})
    running_turn(daemon, sid)
    daemon.call("turn/interrupt", {"session_id": sid, "when": "boundary"})
    result = daemon.response(request)["result"]
    assert result["stop_reason"] == "end_turn" and result["text"] == SLOW["text"]
    bad = daemon.error("turn/interrupt", {"session_id": sid, "when": "soon"})
    assert bad["code"] == -32602 and bad["data"]["errors"][0]["path"] == "$.when"


# ---------------------------------------------------------------- structured output

SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"],
          "additionalProperties": False}


def test_structured_output_is_validated_and_retried(daemon: Daemon) -> None:
    r = daemon.call("session/create", {
        "prompt": "a commit message", "provider": "scripted", "output_schema": SCHEMA,
        "provider_params": script({"text": "not json"}, {"text": '{"title": 5}'}, {"text": '{"title": "Fix the bug"}'}),
    })
    assert r["structured_output"] == {"title": "Fix the bug"} and "structured_output_error" not in r
    messages = daemon.call("session/history", {"session_id": r["session_id"]})["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert "does not match the required JSON schema" in messages[2]["content"][0]["text"]
    assert "5 is not of type 'string' (at $.title)" in messages[4]["content"][0]["text"]


def test_structured_output_error_after_the_retries(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "nope"}, {"text": "still nope"}, output_schema=SCHEMA,
                   structured_output_retries=1)
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert "structured_output" not in r
    assert r["structured_output_error"]["attempts"] == 2
    assert r["structured_output_error"]["errors"][0].startswith("the answer is not JSON")
    # a turn's own schema replaces the session's, for that turn
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "a list", "output_schema": {"type": "array"},
                                   "provider_params": script({"text": "[1, 2]"})})
    assert r["structured_output"] == [1, 2]


def test_a_schema_that_is_not_json_schema_is_refused_and_nothing_is_written(daemon: Daemon) -> None:
    bad = daemon.error("session/create", {"prompt": "x", "provider": "scripted", "output_schema": {"type": "nonsense"}})
    assert bad["code"] == -32602 and bad["data"]["errors"][0]["path"] == "$.output_schema.type"
    assert daemon.call("session/list")["sessions"] == []
    sid = deferred(daemon)
    bad = daemon.error("turn/start", {"session_id": sid, "prompt": "x", "output_schema": {"minLength": -1}})
    assert bad["data"]["errors"][0]["path"] == "$.output_schema.minLength"
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 0


def test_structured_output_uses_the_providers_native_modes(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, openai_section(server, "oai", extra='default_model = "m"') + claude_section(server))
    d = spawn("--config", str(config), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-structured-0000"})
    server.enqueue(openai_stream('{"title": "from openai"}'))
    r = d.call("session/create", {"prompt": "p", "provider": "oai", "output_schema": SCHEMA})
    assert r["structured_output"] == {"title": "from openai"}
    assert server.last.json["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "structured_output", "schema": SCHEMA}}
    server.enqueue(anthropic_stream(tool_use_block("toolu_1", "structured_output", {"title": "from claude"})))
    r = d.call("session/create", {"prompt": "p", "provider": "claude", "output_schema": SCHEMA})
    body = server.last.json
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert body["tools"][-1]["name"] == "structured_output" and body["tools"][-1]["input_schema"] == SCHEMA
    assert r["structured_output"] == {"title": "from claude"} and r["pending_tool_calls"] == [] and r["tool_calls"] == []
    # the answer is kept as text, so the transcript has no unanswered tool call
    last = d.call("session/history", {"session_id": r["session_id"]})["messages"][-1]
    assert last["content"] == [{"type": "text", "text": '{"title":"from claude"}'}]


# ---------------------------------------------------------------- switching providers


def test_switching_provider_mid_session_is_sticky_and_converts_the_history(
    spawn: Spawn, server: FakeLLMServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, openai_section(server, "oai", extra='default_model = "m"') + claude_section(server))
    d = spawn("--config", str(config), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-switch-0000"})
    sid = deferred(d, {"reasoning": "scripted thoughts", "text": "first answer"})
    d.call("turn/start", {"session_id": sid, "prompt": "one"})
    server.enqueue(openai_stream("from openai"))
    r = d.call("turn/start", {"session_id": sid, "prompt": "two", "provider": "oai", "model": "gpt-x"})
    assert r["text"] == "from openai"
    sent = server.last.json
    assert sent["model"] == "gpt-x"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"] == "first answer"  # the scripted provider's reasoning stays home
    state = d.call("session/read", {"session_id": sid})["state"]
    assert (state["provider"], state["model"]) == ("oai", "gpt-x")
    server.enqueue(openai_stream("still openai"))
    assert d.call("turn/start", {"session_id": sid, "prompt": "three"})["text"] == "still openai"  # sticky
    # to Anthropic: another provider's reasoning is not sent, the text and order are
    server.enqueue(anthropic_stream(text_block("from claude")))
    d.call("turn/start", {"session_id": sid, "prompt": "four", "provider": "claude"})
    body = server.last.json
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert all(b["type"] != "thinking" for m in body["messages"] for b in m["content"] if isinstance(b, dict))
    history = d.call("session/history", {"session_id": sid})["messages"]
    assert history[1]["content"][0] == {"type": "reasoning", "text": "scripted thoughts", "provider": "scripted"}
    bad = d.error("turn/start", {"session_id": sid, "prompt": "x", "provider": "nowhere"})
    assert bad["code"] == -32602 and bad["data"]["errors"][0]["path"] == "$.provider"
    assert bad["data"]["details"]["reason"] == "unknown_provider"
    assert d.call("session/history", {"session_id": sid})["message_count"] == len(history)


# ---------------------------------------------------------------- MCP servers through the daemon


def test_a_broken_mcp_server_gives_error_results_naming_it_and_the_daemon_serves_on(daemon: Daemon) -> None:
    servers = [{"name": "gone", "command": "/nonexistent/mcp-server"},
               {"name": "quits", "command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"]},
               {"name": "noisy", "command": sys.executable, "args": ["-c", "print('hello, I am not MCP'); input()"]}]
    calls = [{"name": f"{s['name']}__anything", "arguments": {}, "id": f"c-{s['name']}"} for s in servers]
    r = daemon.call("session/create", {"prompt": "go", "provider": "scripted", "mcp_servers": servers,
                                       "provider_params": script({"tool_calls": calls}, {"text": "carried on"})},
                    timeout=30)
    assert r["text"] == "carried on" and r["pending_tool_calls"] == []
    done = {e["event"]["tool_use_id"]: e["event"] for e in daemon.events(r["session_id"])
            if e["event"]["type"] == "tool_execution_completed"}
    for s in servers:
        event = done[f"c-{s['name']}"]
        assert event["is_error"] and f"MCP server '{s['name']}'" in event["content"], event
        assert event["source"] == f"mcp:{s['name']}"
    states = {s["name"]: s["state"] for s in daemon.call("mcp/servers", {})["servers"]}
    assert states == {"gone": "failed", "quits": "failed", "noisy": "failed"}
    assert daemon.call("session/read", {"session_id": r["session_id"]})["state"]["is_active"] is False


def test_an_mcp_tool_runs_for_a_client_without_tool_execute(daemon: Daemon) -> None:
    server = {"name": "t", "command": sys.executable, "args": [str(Path(__file__).parent / "fakes" / "mcp_server.py")]}
    r = daemon.call("session/create", {"prompt": "go", "provider": "scripted", "mcp_servers": [server],
                                       "provider_params": script({"tool_calls": [{"name": "t__echo", "arguments": {"text": "hi"}}]},
                                                                 {"text": "done"})}, timeout=30)
    assert r["text"] == "done"
    completed = [e["event"] for e in daemon.events(r["session_id"]) if e["event"]["type"] == "tool_execution_completed"]
    assert completed == [{"type": "tool_execution_completed", "tool_use_id": completed[0]["tool_use_id"],
                          "name": "t__echo", "content": "hi", "is_error": False,
                          "duration_ms": completed[0]["duration_ms"], "source": "mcp:t"}]


# ---------------------------------------------------------------- compaction


def test_compaction_summarises_what_the_model_sees_and_history_keeps_everything(daemon: Daemon) -> None:
    steps = [{"text": f"answer {i} " + "x" * 2000} for i in range(3)] + [{"text": "SUMMARY of q0..q1"}, {"text": "after"}]
    sid = deferred(daemon, *steps)
    for i in range(3):
        daemon.call("turn/start", {"session_id": sid, "prompt": f"q{i}"})
    done = daemon.call("session/compact", {"session_id": sid, "keep_last": 2})
    assert done["replaced_count"] == 4 and done["tokens_after"] < done["tokens_before"]
    history = daemon.call("session/history", {"session_id": sid})["messages"]
    assert len(history) == 7 and history[-1]["source"] == "compaction"
    assert history[-1]["message_id"] == done["summary_message_id"]
    assert history[-1]["content"] == [{"type": "text", "text": "SUMMARY of q0..q1"}]
    kinds = [e["event"]["type"] for e in daemon.events(sid)]
    assert kinds[-3:] == ["compaction_started", "compaction_completed", "turn_completed"]
    completed = [e["event"] for e in daemon.events(sid) if e["event"]["type"] == "compaction_completed"][0]
    assert completed == {"type": "compaction_completed", **{k: done[k] for k in (
        "summary_message_id", "replaced_count", "tokens_before", "tokens_after")}}
    # the next call sees the summary and the two kept messages, then the new prompt:
    # scripted usage counts its input, so it is well below the whole history's
    after = daemon.call("turn/start", {"session_id": sid, "prompt": "q3"})
    assert after["text"] == "after"
    assert after["usage"]["input_tokens"] < done["tokens_before"] / 2


def test_compaction_sends_the_summary_and_the_kept_messages(
    spawn: Spawn, server: FakeLLMServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, openai_section(server, "oai", extra='default_model = "m"'))
    d = spawn("--config", str(config))
    sid = d.call("session/create", {"initial_turn": "defer", "provider": "oai"})["session_id"]
    for i in range(3):
        server.enqueue(openai_stream(f"answer {i}"))
        d.call("turn/start", {"session_id": sid, "prompt": f"q{i}"})
    server.enqueue(openai_stream("the summary"), openai_stream("fresh"))
    d.call("session/compact", {"session_id": sid, "keep_last": 2})
    summary_request = server.last.json
    assert [m["content"] for m in summary_request["messages"][1:5]] == ["q0", "answer 0", "q1", "answer 1"]
    assert "Summarise" in summary_request["messages"][-1]["content"]
    d.call("turn/start", {"session_id": sid, "prompt": "q3"})
    sent = server.last.json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "the summary" in sent[0]["content"] and [m["content"] for m in sent[1:]] == ["q2", "answer 2", "q3"]


def test_automatic_compaction_when_the_context_fills(daemon: Daemon) -> None:
    big = "x" * 400  # about 100 tokens a message, against an 800-token window: the 4th turn starts at 700
    sid = daemon.call("session/create", {"initial_turn": "defer", "provider": "scripted", "provider_params": {
        **script({"text": big}, {"text": big}, {"text": big}, {"text": "SUMMARY"}, {"text": "ok"}),
        "context_window": 800}})["session_id"]
    for _ in range(3):
        daemon.call("turn/start", {"session_id": sid, "prompt": big})
    r = daemon.call("turn/start", {"session_id": sid, "prompt": big})
    kinds = [e["event"]["type"] for e in daemon.events(sid, r["turn_id"])]
    assert kinds[:3] == ["turn_started", "compaction_started", "compaction_completed"], kinds
    assert r["text"] == "ok"
    started = [e["event"] for e in daemon.events(sid) if e["event"]["type"] == "compaction_started"]
    assert started == [{"type": "compaction_started", "reason": "auto"}]


def test_compaction_errors_and_edits(daemon: Daemon) -> None:
    off = deferred(daemon, compaction=False)
    assert daemon.error("session/compact", {"session_id": off})["code"] == -32005
    sid = deferred(daemon, {"text": "a"}, {"text": "b"}, {"text": "SUMMARY"})
    daemon.call("turn/start", {"session_id": sid, "prompt": "q0"})
    daemon.call("turn/start", {"session_id": sid, "prompt": "q1"})
    bad = daemon.error("session/compact", {"session_id": sid, "keep_last": 99})
    assert bad["code"] == -32602 and bad["data"]["errors"][0]["path"] == "$.keep_last"
    daemon.call("session/compact", {"session_id": sid, "keep_last": 2})
    refused = daemon.error("session/rewrite", {"session_id": sid, "start": 0, "end": 1, "replacement": [],
                                               "reason": {"kind": "edit"}})
    assert refused["data"]["details"]["reason"] == "before_compaction_boundary"
    assert refused["data"]["details"]["boundary"] == 2
    # after the boundary, edits go on; a fork of the whole transcript keeps the compaction
    fork = daemon.call("session/fork", {"session_id": sid})
    assert daemon.error("session/rewrite", {"session_id": fork["session_id"], "start": 0, "end": 1,
                                            "replacement": [], "reason": {"kind": "edit"}})["data"]["code"] == "SESSION_ERROR"
    # a fork before the summary has no compaction: every message is editable
    early = daemon.call("session/fork", {"session_id": sid, "message_index": 2})
    daemon.call("session/rewrite", {"session_id": early["session_id"], "start": 0, "end": 2, "replacement": [],
                                    "reason": {"kind": "edit"}})
    assert daemon.error("session/compact", {"session_id": "nope"})["code"] == -32001


# ---------------------------------------------------------------- images

PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000000030101008f4b9ad10000000049454e44ae426082")).decode()


def test_an_image_prompt_is_stored_once_and_fetched_by_hash(daemon: Daemon, tmp_path: Path) -> None:
    prompt = [{"type": "text", "text": "what is this?"}, {"type": "image", "mime_type": "image/png", "data": PNG}]
    r = daemon.call("session/create", {"prompt": prompt, "provider": "scripted"})
    assert r["usage"]["input_tokens"] >= 1000  # the scripted provider counts an image as 1,000 tokens
    user = daemon.call("session/history", {"session_id": r["session_id"]})["messages"][0]
    raw = base64.b64decode(PNG)
    digest = hashlib.sha256(raw).hexdigest()
    assert user["content"] == [{"type": "text", "text": "what is this?"},
                               {"type": "image", "mime_type": "image/png", "sha256": digest, "bytes": len(raw)}]
    assert daemon.call("session/blob", {"sha256": digest}) == {"sha256": digest, "mime_type": "image/png", "data": PNG}
    again = daemon.call("turn/start", {"session_id": r["session_id"], "prompt": [
        {"type": "image", "mime_type": "image/png", "data": PNG}]})
    assert again["stop_reason"] == "end_turn"
    with closing(sqlite3.connect(f"file:{tmp_path / 'warren.db'}?mode=ro", uri=True)) as db:
        assert db.execute("SELECT count(*), sum(length(data)) FROM blobs").fetchone() == (1, len(raw))
        assert db.execute("SELECT count(*) FROM messages WHERE instr(content, ?) > 0", (PNG,)).fetchone() == (0,)
    unknown = daemon.error("session/blob", {"sha256": "0" * 64})
    assert unknown["data"]["details"]["reason"] == "unknown_blob"


def test_bad_images_are_refused_with_the_path_and_nothing_is_written(daemon: Daemon) -> None:
    def create(image: dict[str, Any]) -> dict[str, Any]:
        return daemon.error("session/create", {"provider": "scripted", "prompt": [{"type": "text", "text": "x"}, image]})

    wrong_type = create({"type": "image", "mime_type": "image/tiff", "data": PNG})
    assert wrong_type["code"] == -32602 and wrong_type["data"]["errors"][0]["path"] == "$.prompt[1].mime_type"
    not_base64 = create({"type": "image", "mime_type": "image/png", "data": "%%% not base64"})
    assert not_base64["data"]["errors"][0]["path"] == "$.prompt[1].data"
    too_big = create({"type": "image", "mime_type": "image/png",
                      "data": base64.b64encode(b"\0" * (5 * 1024 * 1024 + 1)).decode()})
    assert too_big["data"]["errors"][0]["path"] == "$.prompt[1].data" and "max_image_bytes" in too_big["message"]
    assert daemon.call("session/list")["sessions"] == []


def test_images_are_sent_in_each_providers_format(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, openai_section(server, "oai", extra='default_model = "m"') + claude_section(server))
    d = spawn("--config", str(config), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-images-0000"})
    prompt = [{"type": "text", "text": "look"}, {"type": "image", "mime_type": "image/png", "data": PNG}]
    server.enqueue(openai_stream("a pixel"))
    d.call("session/create", {"prompt": prompt, "provider": "oai"})
    assert server.last.json["messages"][-1] == {"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}
    server.enqueue(anthropic_stream(text_block("a pixel")))
    d.call("session/create", {"prompt": prompt, "provider": "claude"})
    assert server.last.json["messages"][-1] == {"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}


def test_a_tools_images_are_kept_and_sent_on(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    config = write_config(tmp_path, openai_section(server, "oai", extra='default_model = "m"') + claude_section(server))
    d = spawn("--config", str(config), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-tool-images-0000"})
    mcp = {"name": "t", "command": sys.executable, "args": [str(Path(__file__).parent / "fakes" / "mcp_server.py")]}
    server.enqueue(anthropic_stream(tool_use_block("toolu_1", "t__image", {})), anthropic_stream(text_block("a dot")))
    r = d.call("session/create", {"prompt": "draw", "provider": "claude", "mcp_servers": [mcp]}, timeout=30)
    assert r["text"] == "a dot"
    result = d.call("session/history", {"session_id": r["session_id"]})["messages"][2]["content"][0]
    assert result["type"] == "tool_result" and result["images"][0]["mime_type"] == "image/png"
    digest = result["images"][0]["sha256"]
    data = d.call("session/blob", {"sha256": digest})["data"]
    sent = server.last.json["messages"][-1]["content"][0]
    assert sent["type"] == "tool_result" and sent["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    # the same history sent to an OpenAI-compatible server: the image follows the tool message
    server.enqueue(openai_stream("still a dot"))
    d.call("turn/start", {"session_id": r["session_id"], "prompt": "and?", "provider": "oai"})
    messages = server.last.json["messages"]
    tool = next(i for i, m in enumerate(messages) if m["role"] == "tool")
    assert messages[tool + 1]["role"] == "user"
    assert messages[tool + 1]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def test_a_client_tools_images_are_kept(spawn: Spawn) -> None:
    d = spawn()
    d.call("initialize", {"capabilities": {"tool_execute": True}})
    sid = deferred(d, {"tool_calls": [{"name": "t", "arguments": {}}]}, {"text": "seen"}, tools=TOOLS)
    request = d.request("turn/start", {"session_id": sid, "prompt": "screenshot"})
    call = d.wait_tool_requests(1)[0]
    d.reply(call["id"], {"content": "a screenshot", "is_error": False,
                         "images": [{"mime_type": "image/png", "data": PNG}]})
    assert d.response(request)["result"]["text"] == "seen"
    result = d.call("session/history", {"session_id": sid})["messages"][2]["content"][0]
    assert result["content"] == "a screenshot" and result["images"][0]["bytes"] == len(base64.b64decode(PNG))


def test_images_in_steers_appends_and_rewrites(daemon: Daemon) -> None:
    image = {"type": "image", "mime_type": "image/png", "data": PNG}
    sid = deferred(daemon, SLOW, {"text": "seen it"})
    request = daemon.request("turn/start", {"session_id": sid, "prompt": "work"})
    turn_id = running_turn(daemon, sid)
    daemon.call("turn/steer", {"session_id": sid, "expected_turn_id": turn_id,
                               "prompt": [{"type": "text", "text": "and this"}, image]})
    assert daemon.response(request)["result"]["text"] == "seen it"
    steer = daemon.call("session/history", {"session_id": sid})["messages"][2]
    assert steer["role"] == "user" and [b["type"] for b in steer["content"]] == ["text", "image"]
    digest = steer["content"][1]["sha256"]
    # append: a new image, and a stored one named by its hash (as history shows it)
    appended = daemon.call("session/append", {"session_id": sid, "operation_id": "img", "messages": [
        {"role": "user", "content": [image, {"type": "image", "sha256": digest}]}]})
    last = daemon.call("session/history", {"session_id": sid, "offset": appended["message_count"] - 1})["messages"][0]
    assert [b["sha256"] for b in last["content"]] == [digest, digest]
    bad = daemon.error("session/append", {"session_id": sid, "operation_id": "bad", "messages": [
        {"role": "user", "content": [{"type": "image", "sha256": "0" * 64}]}]})
    assert bad["code"] == -32602 and bad["data"]["errors"][0]["path"] == "$.messages[0].content[0].sha256"
    bad = daemon.error("session/rewrite", {"session_id": sid, "start": 0, "end": 1, "reason": {"kind": "x"},
                                           "replacement": [{"role": "user", "content": [
                                               {"type": "image", "mime_type": "image/png", "data": "%%%"}]}]})
    assert bad["data"]["errors"][0]["path"] == "$.replacement[0].content[0].data"
    wrong_role = daemon.error("session/append", {"session_id": sid, "operation_id": "r", "messages": [
        {"role": "assistant", "content": [image]}]})
    assert wrong_role["data"]["errors"][0]["path"] == "$.messages[0].content[0]"


def test_the_compaction_threshold_and_windows_come_from_the_config(
    spawn: Spawn, server: FakeLLMServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "[compaction]\nthreshold = 0.5\n\n" + openai_section(
        server, "oai", extra='default_model = "m"\ncontext_windows = { "m" = 2048 }'))
    d = spawn("--config", str(config))
    sid = d.call("session/create", {"initial_turn": "defer", "provider": "oai"})["session_id"]
    big = "y" * 2000  # 500 tokens a message: four of them pass half of 2,048
    for i in range(2):
        server.enqueue(openai_stream(big))
        d.call("turn/start", {"session_id": sid, "prompt": big})
    server.enqueue(openai_stream("the summary"), openai_stream("fine"))
    r = d.call("turn/start", {"session_id": sid, "prompt": "next"})
    started = [e["event"] for e in d.events(sid, r["turn_id"]) if e["event"]["type"] == "compaction_started"]
    assert started == [{"type": "compaction_started", "reason": "auto"}] and r["text"] == "fine"
    bad = write_config(tmp_path, "[compaction]\nthreshold = 2\n")
    assert "compaction.threshold" in spawn("--config", str(bad)).call("providers/list")["config_error"]
