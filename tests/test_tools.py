"""The agent tool loop (PROTOCOL.md §5): client tools over tool/execute, staged results,
per-turn overlays and budgets — through the daemon over pipes, on the scripted provider."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.daemon_client import Daemon, script

READ = {
    "name": "read_file",
    "description": "Read a file of the workspace",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}
GREP = {"name": "grep", "description": "Search", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


def call(name: str, args: dict[str, Any], id_: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "arguments": args}
    if id_:
        c["id"] = id_
    return c


def tool_client(spawn: Any, *args: str, **kw: Any) -> Daemon:
    d = spawn(*args, **kw)
    d.call("initialize", {"capabilities": {"tool_execute": True}})
    return d


def session(d: Daemon, *steps: dict[str, Any], tools: list[dict] | None = None, **extra: Any) -> str:
    params = {"initial_turn": "defer", "provider": "scripted", "tools": tools if tools is not None else [READ, GREP],
              "provider_params": script(*steps), **extra}
    return d.call("session/create", params)["session_id"]


def events_of(d: Daemon, sid: str, kind: str) -> list[dict[str, Any]]:
    return [e["event"] for e in d.events(sid) if e["event"]["type"] == kind]


def history(d: Daemon, sid: str) -> list[dict[str, Any]]:
    return d.call("session/history", {"session_id": sid, "limit": 1000})["messages"]


# ---------------------------------------------------------------- tool/execute


def test_two_parallel_tool_calls_answered_by_client(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("read_file", {"path": "a.py"}, "c1"), call("grep", {"q": "x"}, "c2")]},
                  {"text": "all done"})
    tid = d.request("turn/start", {"session_id": sid, "prompt": "go"})
    reqs = d.wait_tool_requests(2)
    # both calls are out before either is answered: they run concurrently
    assert [r["params"]["tool_use_id"] for r in reqs] == ["c1", "c2"]
    turn_id = d.events(sid)[0]["turn_id"]
    assert reqs[0]["params"] == {"session_id": sid, "turn_id": turn_id, "tool_use_id": "c1",
                                 "name": "read_file", "arguments": {"path": "a.py"}}
    d.reply(reqs[1]["id"], {"content": "grep hit", "is_error": False})
    time.sleep(0.05)
    d.reply(reqs[0]["id"], {"content": "file body", "is_error": False})
    r = d.response(tid)["result"]
    assert r["text"] == "all done" and r["stop_reason"] == "end_turn" and r["pending_tool_calls"] == []
    assert [c["tool_use_id"] for c in r["tool_calls"]] == ["c1", "c2"]
    msgs = history(d, sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    # committed in the order the model asked, not the order answered
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "file body", "is_error": False},
        {"type": "tool_result", "tool_use_id": "c2", "content": "grep hit", "is_error": False},
    ]
    types = d.event_types(sid)
    assert types.count("tool_execution_started") == 2 and types.count("tool_execution_completed") == 2
    assert types.index("tool_call_requested") < types.index("tool_execution_started")
    done = {e["tool_use_id"]: e for e in events_of(d, sid, "tool_execution_completed")}
    assert done["c1"]["content"] == "file body" and done["c1"]["is_error"] is False
    assert done["c1"]["duration_ms"] >= 40 and done["c2"]["name"] == "grep"
    assert types[-1] == "turn_completed"


def test_client_error_response_is_an_error_result(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("read_file", {"path": "nope"}, "c1")]}, {"text": "sorry"})
    tid = d.request("turn/start", {"session_id": sid, "prompt": "go"})
    req = d.wait_tool_requests(1)[0]
    d.reply(req["id"], error={"code": -32000, "message": "ENOENT: no such file"})
    assert d.response(tid)["result"]["text"] == "sorry"
    result = history(d, sid)[2]["content"][0]
    assert result["is_error"] is True and "ENOENT: no such file" in result["content"]
    assert events_of(d, sid, "tool_execution_completed")[0]["is_error"] is True


def test_client_result_with_is_error(spawn: Any) -> None:
    d = tool_client(spawn)
    d.auto_answer(lambda p: {"content": "boom", "is_error": True})
    sid = session(d, {"tool_calls": [call("grep", {"q": "x"}, "c1")]}, {"text": "ok"})
    d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert history(d, sid)[2]["content"][0] == {"type": "tool_result", "tool_use_id": "c1", "content": "boom", "is_error": True}


def test_tool_timeout(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("read_file", {"path": "a"}, "c1")]}, {"text": "gave up"}, tool_timeout_ms=300)
    started = time.monotonic()
    r = d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert r["text"] == "gave up" and time.monotonic() - started < 5
    req = d.tool_requests()[0]
    assert events_of(d, sid, "tool_execution_timed_out") == [
        {"type": "tool_execution_timed_out", "tool_use_id": "c1", "name": "read_file", "timeout_ms": 300, "source": "client"}
    ]
    assert d.cancels_sent() == [req["id"]]
    result = history(d, sid)[2]["content"][0]
    assert result["is_error"] is True and "timed out after 300 ms" in result["content"]
    # a late answer to the abandoned call is ignored; the daemon keeps serving
    d.reply(req["id"], {"content": "late", "is_error": False})
    assert d.call("session/read", {"session_id": sid})["state"]["message_count"] == 4


def test_interrupt_while_tool_outstanding_sends_cancel(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("read_file", {"path": "a"}, "c1"), call("grep", {"q": "b"}, "c2")]})
    tid = d.request("turn/start", {"session_id": sid, "prompt": "go"})
    reqs = d.wait_tool_requests(2)
    d.reply(reqs[0]["id"], {"content": "first done", "is_error": False})
    d.wait_for(lambda: events_of(d, sid, "tool_execution_completed"), what="first completion")
    d.call("turn/interrupt", {"session_id": sid})
    assert d.response(tid)["result"]["stop_reason"] == "interrupted"
    assert d.cancels_sent() == [reqs[1]["id"]]
    tool_msg = history(d, sid)[2]
    assert tool_msg["role"] == "tool"
    assert tool_msg["content"][0] == {"type": "tool_result", "tool_use_id": "c1", "content": "first done", "is_error": False}
    assert tool_msg["content"][1]["is_error"] is True and "interrupted" in tool_msg["content"][1]["content"]
    # the session is usable again
    d.auto_answer(lambda p: {"content": "x", "is_error": False})
    assert d.call("turn/start", {"session_id": sid, "prompt": "again"})["stop_reason"] == "end_turn"


def test_eof_mid_tool_ends_turn_interrupted(spawn: Any, tmp_path: Path) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("read_file", {"path": "a"}, "c1")]}, {"text": "never"})
    tid = d.request("turn/start", {"session_id": sid, "prompt": "go"})
    d.wait_tool_requests(1)
    d.close_stdin()
    assert d.wait_exit(10) == 0
    assert d.response(tid)["result"]["stop_reason"] == "interrupted"
    d2 = spawn()
    msgs = history(d2, sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[2]["content"][0]["is_error"] is True


def test_unknown_response_ids_are_ignored(spawn: Any) -> None:
    d = tool_client(spawn)
    d.send({"jsonrpc": "2.0", "id": "warren-999", "result": {"content": "?"}})
    d.send({"jsonrpc": "2.0", "id": 12345, "error": {"code": 1, "message": "?"}})
    d.send([{"jsonrpc": "2.0", "id": "warren-1000", "result": None}])
    assert d.call("session/list", {})["sessions"] == []
    assert d.proc.poll() is None


# ---------------------------------------------------------------- validation


def test_invalid_arguments_go_back_to_the_model(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("read_file", {"path": 5}, "bad")]}, {"text": "fixed it"})
    r = d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert r["text"] == "fixed it"
    assert d.tool_requests() == []
    result = history(d, sid)[2]["content"][0]
    assert result["tool_use_id"] == "bad" and result["is_error"] is True
    assert "Invalid arguments" in result["content"] and "$.path" in result["content"]
    assert "tool_execution_started" not in d.event_types(sid)


def test_unknown_tool_goes_back_to_the_model(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("rm_rf", {}, "x")]}, {"text": "ok"})
    d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert d.tool_requests() == []
    assert "not available" in history(d, sid)[2]["content"][0]["content"]


def test_tool_definitions_validated_at_the_door(daemon: Daemon) -> None:
    cases = [
        ({**READ, "name": "has space"}, "$.tools[0].name"),
        ({**READ, "input_schema": {"type": "string"}}, "$.tools[0].input_schema.type"),
        ({**READ, "input_schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}},
         "$.tools[0].input_schema.properties.a.type"),
        ({**READ, "bogus": 1}, "$.tools[0].bogus"),
    ]
    for tool, path in cases:
        err = daemon.error("session/create", {"initial_turn": "defer", "provider": "scripted", "tools": [tool]})
        assert err["code"] == -32602, tool
        assert path in [e["path"] for e in err["data"]["errors"]], (path, err)
    err = daemon.error("session/create", {"initial_turn": "defer", "provider": "scripted", "tools": [READ, READ]})
    assert err["data"]["errors"][0]["path"] == "$.tools[1].name"


def test_set_tools(spawn: Any) -> None:
    d = spawn()
    sid = session(d, {"text": "x", "chunk_chars": 1, "delay_ms": 50}, tools=[READ])
    r = d.call("session/set_tools", {"session_id": sid, "tools": [GREP], "tool_timeout_ms": 5000})
    assert r == {"session_id": sid, "tools": ["grep"], "tool_timeout_ms": 5000}
    tid = d.request("turn/start", {"session_id": sid, "prompt": "go"})
    d.wait_event("turn_started", sid)
    assert d.events(sid)[0]["event"]["tools"] == ["grep"]
    err = d.error("session/set_tools", {"session_id": sid, "tools": [READ]})
    assert err["code"] == -32002
    d.response(tid)
    assert d.error("session/set_tools", {"session_id": sid, "tools": [READ, READ]})["code"] == -32602
    assert d.error("session/set_tools", {"session_id": "nope", "tools": []})["code"] == -32001
    d.stop()
    # tools survive a restart
    d2 = spawn()
    d2.call("turn/start", {"session_id": sid, "prompt": "again"})
    assert d2.events(sid)[0]["event"]["tools"] == ["grep"]


def test_overlay_narrows_what_the_model_is_offered(spawn: Any) -> None:
    d = tool_client(spawn)
    d.auto_answer(lambda p: {"content": "ran", "is_error": False})
    sid = session(d, {"tool_calls": [call("read_file", {"path": "a"}, "c1")]}, {"text": "done"},
                  {"text": "second turn"})
    r = d.call("turn/start", {"session_id": sid, "prompt": "go", "turn_tool_overlay": {"blocked_tools": ["read_file"]}})
    assert r["text"] == "done"
    first_turn = d.events(sid)[0]
    assert first_turn["event"]["tools"] == ["grep"]
    assert d.tool_requests() == []
    assert "not available" in history(d, sid)[2]["content"][0]["content"]
    d.call("turn/start", {"session_id": sid, "prompt": "next", "turn_tool_overlay": {"allowed_tools": ["read_file"]}})
    starts = [e["event"]["tools"] for e in d.events(sid) if e["event"]["type"] == "turn_started"]
    assert starts == [["grep"], ["read_file"]]
    # the overlay lasts one turn only
    d.call("turn/start", {"session_id": sid, "prompt": "third"})
    starts = [e["event"]["tools"] for e in d.events(sid) if e["event"]["type"] == "turn_started"]
    assert starts[-1] == ["read_file", "grep"]


# ---------------------------------------------------------------- staged flow without the capability


def test_staged_flow_with_declared_tools(spawn: Any) -> None:
    d = spawn()  # no tool_execute capability
    sid = session(d, {"tool_calls": [call("read_file", {"path": "a"}, "c1")]}, {"text": "thanks"})
    r = d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert r["stop_reason"] == "tool_use"
    assert r["pending_tool_calls"] == [{"tool_use_id": "c1", "name": "read_file", "arguments": {"path": "a"}}]
    err = d.error("turn/start", {"session_id": sid, "prompt": "next"})
    assert err["data"]["details"]["reason"] == "tool_results_pending"
    d.call("session/stage_tool_results", {"session_id": sid, "results": [{"tool_use_id": "c1", "content": "body", "is_error": False}]})
    d.stop()
    d2 = spawn()  # staged results are durable
    r = d2.call("turn/start", {"session_id": sid, "prompt": ""})
    assert r["text"] == "thanks"
    assert history(d2, sid)[2]["content"][0]["content"] == "body"


# ---------------------------------------------------------------- budgets


def budget_events(d: Daemon, sid: str) -> list[dict[str, Any]]:
    return events_of(d, sid, "budget_warning")


def test_max_tokens_budget(spawn: Any) -> None:
    d = tool_client(spawn)
    d.auto_answer(lambda p: {"content": "r", "is_error": False})
    usage = {"input_tokens": 30, "output_tokens": 10}
    loop = {"tool_calls": [call("grep", {"q": "x"})], "usage": usage}
    sid = session(d, loop, loop, loop, {"text": "never"}, budget={"max_tokens": 100})
    r = d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert r["stop_reason"] == "budget_exhausted"
    assert r["budget"] == {"budget": "max_tokens", "used": 120, "limit": 100}
    assert budget_events(d, sid) == [{"type": "budget_warning", "budget": "max_tokens", "used": 80, "limit": 100}]
    types = d.event_types(sid)
    assert types.index("budget_warning") < types.index("turn_completed")
    assert d.events(sid)[-1]["event"]["stop_reason"] == "budget_exhausted"
    # two steps ran; the third step's call was refused with an error result
    assert len(d.tool_requests()) == 2
    last = history(d, sid)[-1]
    assert last["role"] == "tool" and last["content"][0]["is_error"] is True and "budget" in last["content"][0]["content"]


def test_max_tool_calls_budget(spawn: Any) -> None:
    d = tool_client(spawn)
    d.auto_answer(lambda p: {"content": "r", "is_error": False})
    two = {"tool_calls": [call("grep", {"q": "1"}), call("grep", {"q": "2"})]}
    sid = session(d, two, two, two, {"text": "x"}, budget={"max_tool_calls": 5})
    r = d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert r["stop_reason"] == "budget_exhausted" and r["budget"] == {"budget": "max_tool_calls", "used": 6, "limit": 5}
    assert len(d.tool_requests()) == 4
    assert budget_events(d, sid) == [{"type": "budget_warning", "budget": "max_tool_calls", "used": 4, "limit": 5}]


def test_max_turn_duration_budget(spawn: Any) -> None:
    d = tool_client(spawn)
    sid = session(d, {"text": "s" * 100, "chunk_chars": 1, "delay_ms": 20}, budget={"max_turn_duration_ms": 500})
    started = time.monotonic()
    r = d.call("turn/start", {"session_id": sid, "prompt": "go"})
    assert time.monotonic() - started < 3
    assert r["stop_reason"] == "budget_exhausted" and r["budget"]["budget"] == "max_turn_duration_ms"
    warnings = budget_events(d, sid)
    assert len(warnings) == 1 and warnings[0]["limit"] == 500 and 350 <= warnings[0]["used"] < 500
    # the partial text is committed, as for an interrupt
    assert history(d, sid)[-1]["content"][0]["text"] == r["text"] and 0 < len(r["text"]) < 100


def test_budget_limits_each_turn_not_the_session(spawn: Any) -> None:
    d = tool_client(spawn)
    d.auto_answer(lambda p: {"content": "r", "is_error": False})
    one = {"tool_calls": [call("grep", {"q": "1"})]}
    sid = session(d, one, {"text": "a"}, one, {"text": "b"}, budget={"max_tool_calls": 1})
    assert d.call("turn/start", {"session_id": sid, "prompt": "1"})["text"] == "a"
    assert d.call("turn/start", {"session_id": sid, "prompt": "2"})["text"] == "b"


# ---------------------------------------------------------------- durability of steps


def test_sigkill_between_tool_steps_keeps_finished_steps(spawn: Any, tmp_path: Path) -> None:
    d = tool_client(spawn)
    sid = session(d, {"tool_calls": [call("grep", {"q": "1"}, "s1")]}, {"tool_calls": [call("grep", {"q": "2"}, "s2")]},
                  {"text": "end"})
    d.request("turn/start", {"session_id": sid, "prompt": "go"})
    first = d.wait_tool_requests(1)[0]
    d.reply(first["id"], {"content": "one", "is_error": False})
    d.wait_tool_requests(2)  # the second step is waiting on the client
    d.kill()
    d2 = spawn()
    msgs = history(d2, sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "tool"]
    assert msgs[2]["content"][0]["content"] == "one"
    assert msgs[3]["content"][0]["id"] == "s2"
    # recovery answered the call the dead daemon left waiting, so every provider accepts the history
    assert msgs[4]["content"] == [
        {"type": "tool_result", "tool_use_id": "s2", "content": "Tool call interrupted: the daemon stopped", "is_error": True}
    ]
    assert d2.call("session/read", {"session_id": sid})["state"]["is_active"] is False
    db = sqlite3.connect(tmp_path / "warren.db")
    assert db.execute("SELECT status FROM turns").fetchall() == [("interrupted",)]
