"""Every session method's success and error paths, through the daemon over pipes."""

from __future__ import annotations


from tests.daemon_client import Daemon, script


def create(d: Daemon, prompt: str = "hi", **params: object) -> dict:
    return d.call("session/create", {"prompt": prompt, "provider": "scripted", **params})


def deferred(d: Daemon, **params: object) -> str:
    return d.call("session/create", {"initial_turn": "defer", "provider": "scripted", **params})["session_id"]


# ---------------------------------------------------------------- create


def test_create_runs_first_turn_and_returns_run_result(daemon: Daemon) -> None:
    r = create(daemon, "hello", labels={"repo": "warren"}, model="m1", system_prompt="be brief", max_tokens=50)
    assert set(r) >= {"session_id", "turn_id", "text", "stop_reason", "tool_calls", "usage", "message_count"}
    assert r["text"] == "echo: hello" and r["stop_reason"] == "end_turn" and r["message_count"] == 2
    assert r["usage"]["total_tokens"] == r["usage"]["input_tokens"] + r["usage"]["output_tokens"] > 0
    view = daemon.call("session/read", {"session_id": r["session_id"]})
    assert view["state"]["model"] == "m1" and view["state"]["provider"] == "scripted"
    assert view["state"]["labels"] == {"repo": "warren"}
    assert view["state"]["last_assistant_text"] == "echo: hello"
    assert view["state"]["is_active"] is False
    assert view["billing"]["total_tokens"] == r["usage"]["total_tokens"]


def test_create_naming_scripted_needs_no_setup(daemon: Daemon) -> None:
    r = daemon.call("session/create", {"prompt": "hi", "provider": "scripted"})
    assert r["text"] == "echo: hi"


def test_create_without_any_provider_says_what_to_set(daemon: Daemon) -> None:
    err = daemon.error("session/create", {"prompt": "hi"})
    assert err["code"] == -32009 and err["data"]["code"] == "SESSION_ERROR"
    details = err["data"]["details"]
    assert details["reason"] == "no_provider_configured" and "scripted" in details["providers"]
    assert "ANTHROPIC_API_KEY" in details["how_to_fix"] and "OPENAI_BASE_URL" in details["how_to_fix"]


def test_create_requires_prompt_unless_deferred(daemon: Daemon) -> None:
    err = daemon.error("session/create", {"provider": "scripted"})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.prompt"


def test_create_rejects_unknown_fields_and_bad_types(daemon: Daemon) -> None:
    err = daemon.error("session/create", {"prompt": "x", "provider": "scripted", "colour": "red", "max_tokens": "many"})
    paths = {e["path"] for e in err["data"]["errors"]}
    assert paths == {"$.colour", "$.max_tokens"}
    assert err["data"]["code"] == "INVALID_PARAMS" and err["data"]["retryable"] is False


def test_create_rejects_unknown_provider(daemon: Daemon) -> None:
    err = daemon.error("session/create", {"prompt": "x", "provider": "nope"})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.provider"


def test_create_validates_script_with_path(daemon: Daemon) -> None:
    err = daemon.error(
        "session/create", {"prompt": "x", "provider": "scripted", "provider_params": script({"text": "a"}, {"chunk_chars": 0})}
    )
    assert err["code"] == -32602
    assert err["data"]["errors"][0]["path"] == "$.provider_params.script[1].chunk_chars"


def test_create_rejects_duplicate_tools(daemon: Daemon) -> None:
    tool = {"name": "read_file", "description": "", "input_schema": {"type": "object"}}
    err = daemon.error("session/create", {"prompt": "x", "provider": "scripted", "tools": [tool, tool]})
    assert err["data"]["errors"][0]["path"] == "$.tools[1].name"


def test_deferred_create_discard_drops_prompt(daemon: Daemon) -> None:
    r = daemon.call("session/create", {"prompt": "first", "initial_turn": "defer", "provider": "scripted"})
    assert set(r) == {"session_id", "created_at_ms"}
    page = daemon.call("session/history", {"session_id": r["session_id"]})
    assert page["message_count"] == 0
    t = daemon.call("turn/start", {"session_id": r["session_id"], "prompt": "second"})
    assert t["text"] == "echo: second"


def test_deferred_create_stage_prepends_prompt(daemon: Daemon) -> None:
    sid = deferred(daemon, prompt="first", deferred_prompt_policy="stage")
    t = daemon.call("turn/start", {"session_id": sid, "prompt": "second"})
    assert t["text"] == "echo: first\n\nsecond"
    t2 = daemon.call("turn/start", {"session_id": sid, "prompt": "third"})
    assert t2["text"] == "echo: third"


def test_deferred_stage_allows_empty_turn_prompt(daemon: Daemon) -> None:
    sid = deferred(daemon, prompt="staged only", deferred_prompt_policy="stage")
    assert daemon.call("turn/start", {"session_id": sid, "prompt": ""})["text"] == "echo: staged only"


# ---------------------------------------------------------------- turn/start


def test_turn_start_continues_history(daemon: Daemon) -> None:
    sid = create(daemon, "one")["session_id"]
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "two"})
    assert r["message_count"] == 4 and r["text"] == "echo: two"
    roles = [m["role"] for m in daemon.call("session/history", {"session_id": sid})["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_turn_start_errors(daemon: Daemon) -> None:
    err = daemon.error("turn/start", {"session_id": "missing", "prompt": "x"})
    assert err["code"] == -32001 and err["data"] == {"code": "SESSION_NOT_FOUND", "retryable": False, "session_id": "missing"}
    err = daemon.error("turn/start", {"session_id": "x"})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.prompt"
    sid = create(daemon)["session_id"]
    err = daemon.error("turn/start", {"session_id": sid, "prompt": ""})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.prompt"


def test_system_prompt_only_before_messages(daemon: Daemon) -> None:
    sid = deferred(daemon)
    daemon.call("turn/start", {"session_id": sid, "prompt": "x", "system_prompt": "sys"})
    err = daemon.error("turn/start", {"session_id": sid, "prompt": "y", "system_prompt": "other"})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.system_prompt"


def test_turn_start_model_override_is_remembered(daemon: Daemon) -> None:
    sid = create(daemon, model="a")["session_id"]
    daemon.call("turn/start", {"session_id": sid, "prompt": "x", "model": "b"})
    assert daemon.call("session/read", {"session_id": sid})["state"]["model"] == "b"


def test_turn_start_provider_params_replace_script(daemon: Daemon) -> None:
    sid = create(daemon, provider_params=script({"text": "one"}, {"text": "two"}))["session_id"]
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "x", "provider_params": script({"text": "new"})})
    assert r["text"] == "new"
    assert daemon.call("turn/start", {"session_id": sid, "prompt": "y"})["text"] == "echo: y"


# ---------------------------------------------------------------- read / list / history / archive


def test_read_errors(daemon: Daemon) -> None:
    assert daemon.error("session/read", {"session_id": "nope"})["code"] == -32001
    assert daemon.error("session/read", {})["data"]["errors"][0]["path"] == "$.session_id"
    assert daemon.error("session/read", {"session_id": 5})["code"] == -32602


def test_list_newest_first_with_paging(daemon: Daemon) -> None:
    ids = [deferred(daemon) for _ in range(5)]
    page = daemon.call("session/list", {"limit": 2})
    assert [s["session_id"] for s in page["sessions"]] == ids[::-1][:2] and page["has_more"] is True
    page = daemon.call("session/list", {"limit": 2, "offset": 4})
    assert [s["session_id"] for s in page["sessions"]] == [ids[0]] and page["has_more"] is False
    # a turn makes a session the most recently updated
    daemon.call("turn/start", {"session_id": ids[0], "prompt": "x"})
    first = daemon.call("session/list", {"limit": 1})["sessions"][0]
    assert first["session_id"] == ids[0] and first["message_count"] == 2 and first["total_tokens"] > 0


def test_list_label_filter_all_pairs_must_match(daemon: Daemon) -> None:
    a = deferred(daemon, labels={"repo": "w", "branch": "main"})
    deferred(daemon, labels={"repo": "w", "branch": "dev"})
    deferred(daemon, labels={"repo": "other"})
    got = daemon.call("session/list", {"labels": {"repo": "w", "branch": "main"}})["sessions"]
    assert [s["session_id"] for s in got] == [a] and got[0]["labels"] == {"repo": "w", "branch": "main"}
    assert len(daemon.call("session/list", {"labels": {"repo": "w"}})["sessions"]) == 2


def test_list_limit_bounds(daemon: Daemon) -> None:
    assert daemon.error("session/list", {"limit": 0})["code"] == -32602
    assert daemon.error("session/list", {"limit": 1001})["code"] == -32602
    assert daemon.error("session/list", {"offset": -1})["code"] == -32602
    assert daemon.call("session/list", {"limit": 1000})["sessions"] == []


def test_history_pages(daemon: Daemon) -> None:
    sid = create(daemon, "a")["session_id"]
    for p in "bcd":
        daemon.call("turn/start", {"session_id": sid, "prompt": p})
    page = daemon.call("session/history", {"session_id": sid, "offset": 2, "limit": 3})
    assert page["message_count"] == 8 and page["offset"] == 2 and page["limit"] == 3
    assert [m["index"] for m in page["messages"]] == [2, 3, 4] and page["has_more"] is True
    assert page["messages"][0]["content"] == [{"type": "text", "text": "b"}]
    assert all(m["created_at_ms"] > 0 and m["turn_id"] for m in page["messages"])
    tail = daemon.call("session/history", {"session_id": sid, "offset": 6})
    assert len(tail["messages"]) == 2 and tail["has_more"] is False
    past = daemon.call("session/history", {"session_id": sid, "offset": 50})
    assert past["messages"] == [] and past["has_more"] is False
    assert daemon.error("session/history", {"session_id": "nope"})["code"] == -32001


def test_archive(daemon: Daemon) -> None:
    sid = create(daemon)["session_id"]
    assert daemon.call("session/archive", {"session_id": sid}) == {"session_id": sid, "archived": True}
    assert daemon.call("session/archive", {"session_id": sid})["archived"] is True
    assert daemon.call("session/list", {})["sessions"] == []
    archived = daemon.call("session/list", {"include_archived": True})["sessions"]
    assert [(s["session_id"], s["archived"]) for s in archived] == [(sid, True)]
    for method, params in [
        ("session/read", {}),
        ("turn/start", {"prompt": "x"}),
        ("session/append_system_context", {"text": "x"}),
        ("turn/interrupt", {}),
    ]:
        assert daemon.error(method, {"session_id": sid, **params})["data"]["code"] == "SESSION_NOT_FOUND", method
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 2
    assert daemon.error("session/archive", {"session_id": "nope"})["code"] == -32001


# ---------------------------------------------------------------- system context


def test_append_system_context_applied_when_idle(daemon: Daemon) -> None:
    sid = create(daemon)["session_id"]
    r = daemon.call("session/append_system_context", {"session_id": sid, "text": "cwd is /src", "source": "editor"})
    assert r == {"status": "applied"}
    msgs = daemon.call("session/history", {"session_id": sid})["messages"]
    assert msgs[-1]["role"] == "system" and msgs[-1]["content"] == [{"type": "text", "text": "cwd is /src"}]
    assert msgs[-1]["source"] == "editor"


def test_append_system_context_idempotency(daemon: Daemon) -> None:
    sid = deferred(daemon)
    p = {"session_id": sid, "text": "A", "idempotency_key": "k1"}
    assert daemon.call("session/append_system_context", p)["status"] == "applied"
    assert daemon.call("session/append_system_context", p)["status"] == "duplicate"
    err = daemon.error("session/append_system_context", {**p, "text": "B"})
    assert err["code"] == -32008
    assert err["data"] == {
        "code": "SESSION_SYSTEM_CONTEXT_CONFLICT", "retryable": False, "session_id": sid, "idempotency_key": "k1"
    }
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 1
    other = deferred(daemon)
    assert daemon.call("session/append_system_context", {**p, "session_id": other})["status"] == "applied"


def test_append_system_context_staged_while_running(daemon: Daemon) -> None:
    # two seconds of streaming: the append, sent after the first delta, lands mid-turn even on a loaded machine
    steps = script({"text": "abcdefghij" * 4, "chunk_chars": 1, "delay_ms": 50})
    sid = deferred(daemon, provider_params=steps)
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "go"})
    daemon.wait_event("text_delta", sid)
    r = daemon.call("session/append_system_context", {"session_id": sid, "text": "late news", "idempotency_key": "n"})
    assert r["status"] == "staged"
    result = daemon.response(tid)["result"]
    assert result["stop_reason"] == "end_turn"
    applied = [e for e in daemon.events(sid) if e["event"]["type"] == "system_context_applied"]
    assert applied and applied[0]["event"]["idempotency_key"] == "n"
    types = daemon.event_types(sid)
    assert types.index("system_context_applied") < types.index("turn_completed")
    msgs = daemon.call("session/history", {"session_id": sid})["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "system"]
    # the next model call sees it
    r2 = daemon.call("turn/start", {"session_id": sid, "prompt": "again"})
    assert r2["usage"]["input_tokens"] > 0


def test_append_system_context_errors(daemon: Daemon) -> None:
    assert daemon.error("session/append_system_context", {"session_id": "no", "text": "x"})["code"] == -32001
    sid = deferred(daemon)
    assert daemon.error("session/append_system_context", {"session_id": sid, "text": ""})["code"] == -32602


# ---------------------------------------------------------------- tool results


def test_stage_tool_results_flow(daemon: Daemon) -> None:
    steps = script(
        {"tool_calls": [{"name": "read", "arguments": {"path": "a.py"}}, {"name": "grep", "arguments": {"q": "x"}, "id": "call_2"}]},
        {"text": "done"},
    )
    r = create(daemon, "go", provider_params=steps)
    sid = r["session_id"]
    assert r["stop_reason"] == "tool_use"
    pending = r["pending_tool_calls"]
    assert [(p["name"], p["arguments"]) for p in pending] == [("read", {"path": "a.py"}), ("grep", {"q": "x"})]
    assert pending[1]["tool_use_id"] == "call_2" and r["tool_calls"] == pending
    requested = [e["event"] for e in daemon.events(sid) if e["event"]["type"] == "tool_call_requested"]
    assert [e["tool_use_id"] for e in requested] == [p["tool_use_id"] for p in pending]

    err = daemon.error("turn/start", {"session_id": sid, "prompt": ""})
    assert err["code"] == -32009 and err["data"]["code"] == "SESSION_ERROR"
    assert err["data"]["details"]["reason"] == "tool_results_pending"
    assert [p["tool_use_id"] for p in err["data"]["details"]["pending_tool_calls"]] == [p["tool_use_id"] for p in pending]

    first = {"tool_use_id": pending[0]["tool_use_id"], "content": "print(1)", "is_error": False}
    assert daemon.call("session/stage_tool_results", {"session_id": sid, "results": [first]}) == {"accepted_result_count": 1}
    err = daemon.error("session/stage_tool_results", {"session_id": sid, "results": [first]})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.results[0].tool_use_id"
    err = daemon.error("session/stage_tool_results", {"session_id": sid, "results": [{**first, "tool_use_id": "bogus"}]})
    assert err["code"] == -32602
    err = daemon.error("turn/start", {"session_id": sid, "prompt": ""})
    assert [p["tool_use_id"] for p in err["data"]["details"]["pending_tool_calls"]] == ["call_2"]
    second = {"tool_use_id": "call_2", "content": "no match", "is_error": True}
    assert daemon.call("session/stage_tool_results", {"session_id": sid, "results": [second]})["accepted_result_count"] == 1

    done = daemon.call("turn/start", {"session_id": sid, "prompt": ""})
    assert done["text"] == "done" and done["stop_reason"] == "end_turn"
    msgs = daemon.call("session/history", {"session_id": sid})["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["content"][0]["type"] == "tool_use"
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": pending[0]["tool_use_id"], "content": "print(1)", "is_error": False},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "no match", "is_error": True},
    ]
    # already answered
    err = daemon.error("session/stage_tool_results", {"session_id": sid, "results": [second]})
    assert err["code"] == -32602


def test_stage_tool_results_errors(daemon: Daemon) -> None:
    err = daemon.error("session/stage_tool_results", {"session_id": "no", "results": [{"tool_use_id": "a", "content": ""}]})
    assert err["code"] == -32001
    sid = deferred(daemon)
    assert daemon.error("session/stage_tool_results", {"session_id": sid, "results": []})["code"] == -32602


# ---------------------------------------------------------------- interrupt


def test_interrupt_idle_is_not_running(daemon: Daemon) -> None:
    sid = create(daemon)["session_id"]
    err = daemon.error("turn/interrupt", {"session_id": sid})
    assert err["code"] == -32003 and err["data"]["session_id"] == sid
    assert daemon.error("turn/interrupt", {"session_id": "nope"})["code"] == -32001
