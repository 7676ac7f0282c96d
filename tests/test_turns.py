"""The turn loop on the scripted provider: streaming, retries, failures, busy and interrupt."""

from __future__ import annotations

import time

from tests.daemon_client import Daemon, script


def deferred(d: Daemon, **params: object) -> str:
    return d.call("session/create", {"initial_turn": "defer", "provider": "scripted", **params})["session_id"]


def deltas(d: Daemon, sid: str, kind: str = "text_delta") -> list[str]:
    return [e["event"]["delta"] for e in d.events(sid) if e["event"]["type"] == kind]


# ---------------------------------------------------------------- scripted provider, §7


def test_reasoning_text_and_usage_are_streamed_and_committed(daemon: Daemon) -> None:
    steps = script({"reasoning": "think hard", "text": "answer", "chunk_chars": 3, "usage": {"input_tokens": 11, "output_tokens": 7}})
    sid = deferred(daemon, provider_params=steps)
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "q"})
    assert r["text"] == "answer"
    assert r["usage"] == {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
    assert deltas(daemon, sid, "reasoning_delta") == ["thi", "nk ", "har", "d"]
    assert deltas(daemon, sid) == ["ans", "wer"]
    types = daemon.event_types(sid)
    assert types == ["turn_started"] + ["reasoning_delta"] * 4 + ["text_delta"] * 2 + ["usage", "turn_completed"]
    usage_event = [e for e in daemon.events(sid) if e["event"]["type"] == "usage"][0]["event"]
    assert usage_event["usage"]["total_tokens"] == 18
    msg = daemon.call("session/history", {"session_id": sid})["messages"][1]
    assert msg["content"] == [{"type": "reasoning", "text": "think hard", "provider": "scripted"}, {"type": "text", "text": "answer"}]
    view = daemon.call("session/read", {"session_id": sid})
    assert view["billing"] == {"total_tokens": 18, "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}}


def test_usage_estimate_is_chars_over_four_rounded_up(daemon: Daemon) -> None:
    sid = deferred(daemon, system_prompt="abc", provider_params=script({"text": "12345"}))
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "hello"})
    # input: "abc" + "hello" = 8 chars -> 2; output: 5 chars -> 2
    assert r["usage"] == {"input_tokens": 2, "output_tokens": 2, "total_tokens": 4}


def test_stop_reasons(daemon: Daemon) -> None:
    for reason in ("max_tokens", "refusal", "end_turn"):
        sid = deferred(daemon, provider_params=script({"text": "x", "stop_reason": reason}))
        assert daemon.call("turn/start", {"session_id": sid, "prompt": "q"})["stop_reason"] == reason


def test_script_position_spans_turns_then_echoes(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=script({"text": "one"}, {"text": "two"}))
    got = [daemon.call("turn/start", {"session_id": sid, "prompt": p})["text"] for p in ("a", "b", "c")]
    assert got == ["one", "two", "echo: c"]


def test_script_position_survives_restart(spawn) -> None:
    d = spawn()
    sid = deferred(d, provider_params=script({"text": "one"}, {"text": "two"}, {"text": "three"}))
    assert d.call("turn/start", {"session_id": sid, "prompt": "a"})["text"] == "one"
    d.stop()
    d2 = spawn()
    assert d2.call("turn/start", {"session_id": sid, "prompt": "b"})["text"] == "two"
    assert d2.call("turn/start", {"session_id": sid, "prompt": "c"})["text"] == "three"


def test_tool_call_ids_are_deterministic(spawn) -> None:
    ids = []
    for _ in range(2):
        d = spawn(db=None)
        r = d.call("session/create", {"prompt": "x", "provider": "scripted", "provider_params": script({"tool_calls": [{"name": "a"}, {"name": "b", "arguments": {"k": [1]}}]})})
        ids.append([c["tool_use_id"] for c in r["pending_tool_calls"]])
        assert r["pending_tool_calls"][1]["arguments"] == {"k": [1]}
        d.stop()
    assert ids[0] == ids[1] == ["toolu_s0000_0", "toolu_s0000_1"]


def test_delay_paces_deltas(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=script({"text": "abcd", "chunk_chars": 1, "delay_ms": 100}))
    started = time.monotonic()
    daemon.call("turn/start", {"session_id": sid, "prompt": "q"})
    assert time.monotonic() - started >= 0.4
    stamps = [e["timestamp_ms"] for e in daemon.events(sid) if e["event"]["type"] == "text_delta"]
    assert stamps[-1] - stamps[0] >= 250


# ---------------------------------------------------------------- retries and failures


def test_retryable_error_is_retried_with_next_step(daemon: Daemon) -> None:
    steps = script(
        {"error": {"kind": "rate_limited", "retry_after_ms": 30}},
        {"error": {"kind": "overloaded"}},
        {"text": "finally"},
    )
    sid = deferred(daemon, provider_params=steps)
    r = daemon.call("turn/start", {"session_id": sid, "prompt": "q"})
    assert r["text"] == "finally" and r["stop_reason"] == "end_turn"
    retries = [e["event"] for e in daemon.events(sid) if e["event"]["type"] == "retrying"]
    assert retries == [
        {"type": "retrying", "attempt": 1, "delay_ms": 30, "reason": "rate_limited"},
        {"type": "retrying", "attempt": 2, "delay_ms": 200, "reason": "overloaded"},
    ]
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 2


def test_non_retryable_error_fails_turn(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=script({"error": {"kind": "auth"}}))
    err = daemon.error("turn/start", {"session_id": sid, "prompt": "q"})
    assert err["code"] == -32010
    data = err["data"]
    assert data["code"] == "PROVIDER_ERROR" and data["provider"] == "scripted" and data["status"] == 401
    assert data["retryable"] is False
    failed = [e["event"] for e in daemon.events(sid) if e["event"]["type"] == "turn_failed"]
    assert failed and failed[0]["error"]["code"] == -32010
    assert daemon.event_types(sid)[-1] == "turn_failed"
    # the prompt stays committed, the session is usable again, and the failed step was consumed
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 1
    assert daemon.call("turn/start", {"session_id": sid, "prompt": "again"})["text"] == "echo: again"


def test_retries_exhausted(daemon: Daemon) -> None:
    steps = script(*[{"error": {"kind": "server_error", "retry_after_ms": 1}}] * 4)
    sid = deferred(daemon, provider_params=steps)
    err = daemon.error("turn/start", {"session_id": sid, "prompt": "q"})
    assert err["data"]["code"] == "PROVIDER_ERROR" and err["data"]["status"] == 500 and err["data"]["retryable"] is True
    assert daemon.event_types(sid).count("retrying") == 3


# ---------------------------------------------------------------- busy and interrupt


SLOW = script({"text": "x" * 200, "chunk_chars": 1, "delay_ms": 20})


def test_second_turn_while_running_is_busy(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=SLOW)
    first = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    started = daemon.wait_event("turn_started", sid)
    err = daemon.error("turn/start", {"session_id": sid, "prompt": "again"})
    assert err["code"] == -32002
    assert err["data"]["running_turn_id"] == started["turn_id"] and err["data"]["retryable"] is True
    assert daemon.call("session/read", {"session_id": sid})["state"]["is_active"] is True
    listed = daemon.call("session/list", {})["sessions"][0]
    assert listed["is_active"] is True
    assert daemon.error("session/archive", {"session_id": sid})["code"] == -32002
    daemon.call("turn/interrupt", {"session_id": sid})
    assert daemon.response(first)["result"]["stop_reason"] == "interrupted"


def test_many_simultaneous_starts_one_wins(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=SLOW)
    ids = [daemon.request("turn/start", {"session_id": sid, "prompt": f"p{i}"}) for i in range(8)]
    daemon.wait_event("text_delta", sid)
    daemon.call("turn/interrupt", {"session_id": sid})
    replies = [daemon.response(i) for i in ids]
    winners = [r for r in replies if "result" in r]
    losers = [r for r in replies if "error" in r]
    assert len(winners) == 1 and len(losers) == 7
    assert {r["error"]["data"]["code"] for r in losers} == {"SESSION_BUSY"}
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 2


def test_interrupt_commits_partial_text(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=SLOW)
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    daemon.wait_for(lambda: len(deltas(daemon, sid)) >= 5, what="5 deltas")
    turn_id = daemon.events(sid)[0]["turn_id"]
    r = daemon.call("turn/interrupt", {"session_id": sid, "turn_id": turn_id})
    assert r == {"session_id": sid, "turn_id": turn_id, "interrupted": True}
    result = daemon.response(tid)["result"]
    assert result["stop_reason"] == "interrupted"
    partial = "".join(deltas(daemon, sid))
    assert 5 <= len(partial) < 200 and result["text"] == partial
    assert daemon.event_types(sid)[-1] == "turn_completed"
    completed = daemon.events(sid)[-1]["event"]
    assert completed["stop_reason"] == "interrupted"
    msgs = daemon.call("session/history", {"session_id": sid})["messages"]
    assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"] == [{"type": "text", "text": partial}]
    assert daemon.call("session/read", {"session_id": sid})["state"]["is_active"] is False
    # interrupt answered only after the turn committed; a new turn can start at once
    assert daemon.call("turn/start", {"session_id": sid, "prompt": "next"})["stop_reason"] == "end_turn"


def test_interrupt_wrong_turn_id(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=SLOW)
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    daemon.wait_event("turn_started", sid)
    err = daemon.error("turn/interrupt", {"session_id": sid, "turn_id": "not-this-one"})
    assert err["code"] == -32003
    daemon.call("turn/interrupt", {"session_id": sid})
    assert daemon.response(tid)["result"]["stop_reason"] == "interrupted"


def test_interrupt_during_retry_backoff_commits_nothing_from_failed_attempt(daemon: Daemon) -> None:
    steps = script({"error": {"kind": "overloaded", "retry_after_ms": 5000}}, {"text": "late"})
    sid = deferred(daemon, provider_params=steps)
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    daemon.wait_event("retrying", sid)
    daemon.call("turn/interrupt", {"session_id": sid})
    assert daemon.response(tid, timeout=3)["result"]["stop_reason"] == "interrupted"
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 1


def test_read_and_list_are_not_blocked_by_a_long_turn(daemon: Daemon) -> None:
    # a 30 s turn (interrupted below): a read or list it blocked would take that long, a free
    # one well under the bound below even on a loaded machine, and the turn outlasts the loop
    sid = deferred(daemon, provider_params=script({"text": "x" * 1000, "chunk_chars": 1, "delay_ms": 30}))
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    daemon.wait_event("text_delta", sid)
    for _ in range(5):
        started = time.monotonic()
        assert daemon.call("session/read", {"session_id": sid})["state"]["is_active"] is True
        daemon.call("session/list", {})
        assert time.monotonic() - started < 5.0
    assert "result" not in daemon._responses.get(tid, {})
    daemon.call("turn/interrupt", {"session_id": sid})
    daemon.response(tid)


def test_turns_on_different_sessions_overlap(daemon: Daemon) -> None:
    steps = script({"text": "abcdefghij", "chunk_chars": 1, "delay_ms": 40})
    a, b = deferred(daemon, provider_params=steps), deferred(daemon, provider_params=steps)
    ta = daemon.request("turn/start", {"session_id": a, "prompt": "q"})
    tb = daemon.request("turn/start", {"session_id": b, "prompt": "q"})
    daemon.response(ta), daemon.response(tb)
    order = [n["params"]["session_id"] for n in daemon.notifications if n["params"]["event"]["type"] == "text_delta"]
    # truly concurrent: the two streams interleave rather than one after the other
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches >= 5, order
    sa = [e["timestamp_ms"] for e in daemon.events(a)]
    sb = [e["timestamp_ms"] for e in daemon.events(b)]
    assert sb[0] < sa[-1] and sa[0] < sb[-1]


# ---------------------------------------------------------------- events


def test_seq_increases_by_one_across_turns_and_restarts(spawn) -> None:
    d = spawn()
    sid = deferred(d)
    for p in "ab":
        d.call("turn/start", {"session_id": sid, "prompt": p})
    d.stop()
    d2 = spawn()
    d2.call("turn/start", {"session_id": sid, "prompt": "c"})
    seqs = [e["seq"] for e in d.events(sid)] + [e["seq"] for e in d2.events(sid)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_every_event_precedes_its_response(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=script({"text": "y" * 50, "chunk_chars": 1}))
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    daemon.response(tid)
    lines = [l for l in daemon.lines if sid.encode() in l]
    last = max(i for i, l in enumerate(lines) if b'"session/event"' in l)
    response_at = next(i for i, l in enumerate(lines) if f'"id":{tid},'.encode() in l)
    assert last < response_at
    assert daemon.events(sid)[-1]["event"]["type"] == "turn_completed"
    assert all(e["turn_id"] == daemon.events(sid)[0]["turn_id"] for e in daemon.events(sid))


def test_interrupt_applies_staged_context_with_its_event(daemon: Daemon) -> None:
    sid = deferred(daemon, provider_params=script({"text": "slow answer here", "chunk_chars": 4, "delay_ms": 100}))
    tid = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
    daemon.wait_event("text_delta", sid)
    assert daemon.call("session/append_system_context", {"session_id": sid, "text": "ctx"})["status"] == "staged"
    daemon.call("turn/interrupt", {"session_id": sid})
    daemon.response(tid)
    types = daemon.event_types(sid)
    assert types[-2:] == ["system_context_applied", "turn_completed"]
    daemon.call("turn/start", {"session_id": sid, "prompt": "again"})
    seqs = [e["seq"] for e in daemon.events(sid)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_huge_integers_are_invalid_params(daemon: Daemon) -> None:
    for method, params in [
        ("session/list", {"offset": 2**63}),
        ("session/history", {"session_id": "x", "offset": 2**53}),
        ("session/create", {"initial_turn": "defer", "provider": "scripted", "max_tokens": 2**64}),
    ]:
        err = daemon.error(method, params)
        assert err["code"] == -32602, (method, err)
