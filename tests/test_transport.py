"""The transport layer (PROTOCOL.md sections 1, 2 and 6) through the real daemon over pipes.

Each test asserts on exactly what a client sees on stdout: codes, ``data.code``, ids, the
presence or absence of a reply, and that the daemon keeps serving afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable


from warren.protocol.events import EVENT_TYPES, event_type_name
from warren.protocol.methods import METHODS
from tests.daemon_client import ROOT, Daemon, script

Spawn = Callable[..., Daemon]

_sentinels = itertools.count(1)


# ---------------------------------------------------------------- helpers


def parsed_lines(d: Daemon, start: int = 0) -> list[Any]:
    with d._cond:
        raw = list(d.lines[start:])
    return [json.loads(line) for line in raw]


def exchange(d: Daemon, data: bytes, *, expect: int = 0) -> list[Any]:
    """Send raw bytes, then a sentinel request; return every line the daemon wrote for
    ``data`` (all but the sentinel's answer and ``session/event`` notifications), once the
    sentinel is answered and at least ``expect`` such lines have arrived (a request or batch
    runs in its own task, so its answer may come after the sentinel's)."""
    mark = len(d.lines)
    d.send_raw(data)
    sid = f"sentinel-{next(_sentinels)}"
    d.send({"jsonrpc": "2.0", "id": sid, "method": "session/list", "params": {"limit": 1}})

    def replies() -> list[Any]:
        return [
            m for m in parsed_lines(d, mark)
            if not (isinstance(m, dict) and (m.get("id") == sid or m.get("method") == "session/event"))
        ]

    reply = d.response(sid)
    assert "result" in reply, reply
    d.wait_for(lambda: len(replies()) >= expect, 20, f"{expect} replies")
    return replies()


def one_error(d: Daemon, data: bytes) -> dict[str, Any]:
    replies = exchange(d, data, expect=1)
    assert len(replies) == 1, replies
    reply = replies[0]
    assert isinstance(reply, dict) and reply["jsonrpc"] == "2.0" and "result" not in reply, reply
    err = reply["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["data"]["retryable"], bool)
    return reply


def still_serving(d: Daemon) -> None:
    assert isinstance(d.call("session/list", {"limit": 1})["sessions"], list)
    assert d.proc.poll() is None


def assert_clean_stdout(d: Daemon) -> None:
    """Every stdout line is one whole JSON-RPC 2.0 message (or a batch of them)."""
    with d._cond:
        raw = list(d.lines)
    assert raw, "no output at all"
    for line in raw:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        msg = json.loads(line)  # raises if a line was interleaved or corrupted
        items = msg if isinstance(msg, list) else [msg]
        assert items, line
        for item in items:
            assert isinstance(item, dict) and item["jsonrpc"] == "2.0", line
            assert ("method" in item) or ("result" in item) != ("error" in item), line


def deferred(d: Daemon, **extra: Any) -> str:
    params = {"initial_turn": "defer", "provider": "scripted", **extra}
    return d.call("session/create", params)["session_id"]


def slow(text: str, delay_ms: int = 50) -> dict[str, Any]:
    return script({"text": text, "delay_ms": delay_ms, "chunk_chars": 1})


def req(id_: Any, method: str, params: Any = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def wait_deltas(d: Daemon, session_id: str, n: int, timeout: float = 20.0) -> None:
    d.wait_for(lambda: d.event_types(session_id).count("text_delta") >= n, timeout, f"{n} text deltas")


# ---------------------------------------------------------------- framing


def test_crlf_blank_lines_and_final_line_without_newline(daemon: Daemon) -> None:
    mark = len(daemon.lines)
    daemon.send_raw(b'{"jsonrpc":"2.0","id":"crlf","method":"session/list","params":{}}\r\n')
    assert "result" in daemon.response("crlf")
    # blank and whitespace-only lines get no reply at all
    assert exchange(daemon, b"\n\n   \n\t\r\n \r\n\r\n") == []
    daemon.send_raw(b'{"jsonrpc":"2.0","id":"last","method":"session/list"}')  # no newline
    daemon.close_stdin()
    assert "result" in daemon.response("last")
    assert daemon.wait_exit() == 0
    ids = [m.get("id") for m in parsed_lines(daemon, mark)]
    assert ids[0] == "crlf" and ids[-1] == "last" and len(ids) == 3
    assert_clean_stdout(daemon)


def test_parse_errors(daemon: Daemon) -> None:
    for bad in (b"{not json\n", b'{"jsonrpc":"2.0","id":1,\n', b"[1,2] trailing\n", b"NaN\n"):
        reply = one_error(daemon, bad)
        assert reply["id"] is None
        assert reply["error"]["code"] == -32700 and reply["error"]["data"]["code"] == "PARSE_ERROR"
    for bad in (b"\xff\xfe\n", b'{"jsonrpc":"2.0","id":1,"method":"\xc3\x28"}\n', b'"\xed\xa0\x80"\n'):
        reply = one_error(daemon, bad)
        assert reply["id"] is None
        assert reply["error"]["code"] == -32700 and reply["error"]["data"]["code"] == "PARSE_ERROR"
        assert "UTF-8" in reply["error"]["message"]
    # nesting deeper than the decoder's recursion limit is a parse error, not a crash
    reply = one_error(daemon, b"[" * 200_000 + b"]" * 200_000 + b"\n")
    assert reply["id"] is None and reply["error"]["code"] == -32700
    still_serving(daemon)


def test_invalid_requests(daemon: Daemon) -> None:
    def invalid(obj: Any, expect_id: Any) -> dict[str, Any]:
        reply = one_error(daemon, line(obj))
        assert reply["error"]["code"] == -32600, (obj, reply)
        assert reply["error"]["data"]["code"] == "INVALID_REQUEST"
        assert reply["id"] == expect_id, (obj, reply)
        return reply

    # jsonrpc missing or wrong: the id is echoed because it was valid
    invalid({"id": 11, "method": "session/list"}, 11)
    invalid({"jsonrpc": "1.0", "id": "v1", "method": "session/list"}, "v1")
    invalid({"jsonrpc": 2.0, "id": 12, "method": "session/list"}, 12)
    # not an object
    for value in (1, "x", None, True, 2.5):
        invalid(value, None)
    # bad id types
    for bad_id in (1.5, 2.0, {"a": 1}, [1], True, False):
        invalid({"jsonrpc": "2.0", "id": bad_id, "method": "session/list"}, None)
    # method not a string
    invalid({"jsonrpc": "2.0", "id": 13, "method": 5}, 13)
    invalid({"jsonrpc": "2.0", "id": 14, "method": None}, 14)
    invalid({"jsonrpc": "2.0", "id": 15}, 15)  # no method, not a response either
    # params a scalar
    for params in (1, "x", True, None):
        invalid({"jsonrpc": "2.0", "id": 16, "method": "session/list", "params": params}, 16)
    # params an array is structurally fine but not what our methods take: -32602
    reply = one_error(daemon, line(req(17, "session/list", [1, 2])))
    assert reply["id"] == 17
    assert reply["error"]["code"] == -32602 and reply["error"]["data"]["code"] == "INVALID_PARAMS"
    assert reply["error"]["data"]["errors"][0]["path"] == "$"
    still_serving(daemon)


def test_id_types_echoed(daemon: Daemon) -> None:
    for id_ in ("s", "", 0, -5, 2**70, None):
        replies = exchange(daemon, line(req(id_, "session/list", {"limit": 1})), expect=1)
        assert len(replies) == 1 and replies[0]["id"] == id_ and "result" in replies[0], replies
    still_serving(daemon)


def test_client_response_lines_get_no_reply(daemon: Daemon) -> None:
    # a response to a request the daemon never sent is logged and otherwise ignored
    assert exchange(daemon, line({"jsonrpc": "2.0", "id": 99, "result": {}})) == []
    assert exchange(daemon, line({"jsonrpc": "2.0", "id": "x", "error": {"code": 1, "message": "m"}})) == []
    still_serving(daemon)


# ---------------------------------------------------------------- size limit


def _too_large(reply: dict[str, Any], limit: int) -> None:
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600
    assert reply["error"]["data"]["code"] == "MESSAGE_TOO_LARGE"
    assert reply["error"]["data"]["limit"] == limit


def test_oversized_line_in_several_writes(spawn: Spawn) -> None:
    d = spawn("--max-line-bytes", "4096")
    big = b'{"jsonrpc":"2.0","id":"big","method":"session/list","params":{"pad":"' + b"x" * 100_000 + b'"}}\n'
    mark = len(d.lines)
    for i in range(0, len(big) - 7_000, 7_000):
        d.send_raw(big[i : i + 7_000])
        time.sleep(0.005)
    assert len(d.lines) == mark  # nothing is answered before the newline arrives
    replies = exchange(d, big[i + 7_000 :])
    assert len(replies) == 1, replies
    _too_large(replies[0], 4096)
    assert all(m.get("id") != "big" for m in parsed_lines(d, mark))
    still_serving(d)


def test_oversized_line_in_one_huge_write(spawn: Spawn) -> None:
    d = spawn("--max-line-bytes", "4096")
    big = line(req("big", "session/list", {"pad": "y" * 100_000}))
    # the oversized line, a normal request and another oversized line, all in one write
    replies = exchange(d, big + line(req("after", "session/list", {"limit": 1})) + big, expect=3)
    # the request runs in its own task, so its answer may come before or after the 2nd error
    assert sorted(str(r["id"]) for r in replies) == ["None", "None", "after"], replies
    assert "result" in next(r for r in replies if r["id"] == "after")
    for r in replies:
        if r["id"] is None:
            _too_large(r, 4096)
    assert all(m.get("id") != "big" for m in parsed_lines(d))
    still_serving(d)


def test_oversized_line_at_eof(spawn: Spawn) -> None:
    d = spawn("--max-line-bytes", "4096")
    d.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"session/list","params":{"p":"' + b"z" * 10_000)
    d.close_stdin()
    assert d.wait_exit() == 0
    d._reader.join(5)
    msgs = parsed_lines(d)
    assert len(msgs) == 1
    _too_large(msgs[0], 4096)


def _padded(id_: str, size: int, *, crlf: bool = False) -> bytes:
    head = json.dumps(req(id_, "session/list", {"bogus": ""}))[:-3]  # up to the string's opening quote
    tail = '"}}'
    pad = size - len(head) - len(tail)
    out = (head + "p" * pad + tail).encode()
    assert len(out) == size
    return out + (b"\r\n" if crlf else b"\n")


def test_line_exactly_at_limit_is_accepted(spawn: Spawn) -> None:
    d = spawn("--max-line-bytes", "4096")
    for id_, crlf in (("at", False), ("at-crlf", True)):
        replies = exchange(d, _padded(id_, 4096, crlf=crlf), expect=1)
        assert len(replies) == 1 and replies[0]["id"] == id_, replies
        # INVALID_PARAMS naming the padding field proves the line was parsed whole
        assert replies[0]["error"]["code"] == -32602
        assert replies[0]["error"]["data"]["errors"][0]["path"] == "$.bogus"
    # \r and \n of the terminator split across writes: still at the limit, still accepted
    data = _padded("at-split", 4096, crlf=True)
    d.send_raw(data[:-1])
    time.sleep(0.2)  # let the daemon read the line and its \r before the \n arrives
    replies = exchange(d, data[-1:], expect=1)
    assert len(replies) == 1 and replies[0]["id"] == "at-split", replies
    assert replies[0]["error"]["data"]["code"] == "INVALID_PARAMS"
    # one byte more is too large
    replies = exchange(d, _padded("over", 4097))
    assert len(replies) == 1
    _too_large(replies[0], 4096)
    still_serving(d)


def test_default_limit_accepts_a_megabyte_line(daemon: Daemon) -> None:
    sid = deferred(daemon)
    text = "m" * (1 << 20)
    reply = daemon.call("session/append_system_context", {"session_id": sid, "text": text}, timeout=30)
    assert reply == {"status": "applied"}
    limits = daemon.call("initialize")["limits"]
    assert limits["max_line_bytes"] == 16 * 1024 * 1024
    page = daemon.call("session/history", {"session_id": sid})
    assert page["messages"][-1]["role"] == "system"
    assert page["messages"][-1]["content"][0]["text"] == text


# ---------------------------------------------------------------- batches


def test_mixed_batch(daemon: Daemon) -> None:
    batch = [
        req("a", "session/list", {"limit": 1}),
        {"jsonrpc": "2.0", "method": "session/list", "params": {}},  # notification
        1,
        req("b", "no/such_method"),
        {"jsonrpc": "2.0", "id": "c", "method": "session/list", "params": {"bogus": 1}},
        {"jsonrpc": "2.0", "id": 7, "result": {}},  # a client response: not answered
    ]
    replies = exchange(daemon, line(batch), expect=1)
    assert len(replies) == 1 and isinstance(replies[0], list), replies
    answers = replies[0]
    assert len(answers) == 4
    by_id = {a["id"]: a for a in answers}
    assert set(by_id) == {"a", None, "b", "c"}
    assert "result" in by_id["a"]
    assert by_id[None]["error"]["code"] == -32600 and by_id[None]["error"]["data"]["code"] == "INVALID_REQUEST"
    assert by_id["b"]["error"]["code"] == -32601 and by_id["b"]["error"]["data"]["method"] == "no/such_method"
    assert by_id["c"]["error"]["code"] == -32602
    assert all(a["jsonrpc"] == "2.0" for a in answers)
    still_serving(daemon)


def test_empty_batch_is_a_single_error(daemon: Daemon) -> None:
    for data in (b"[]\n", b"  [ ]  \n"):
        reply = one_error(daemon, data)
        assert reply["id"] is None and reply["error"]["code"] == -32600
        assert reply["error"]["data"]["code"] == "INVALID_REQUEST"


def test_batch_of_invalid_elements(daemon: Daemon) -> None:
    replies = exchange(daemon, b"[1,2]\n", expect=1)
    assert len(replies) == 1 and isinstance(replies[0], list)
    assert len(replies[0]) == 2
    for r in replies[0]:
        assert r["id"] is None and r["error"]["code"] == -32600 and r["error"]["data"]["code"] == "INVALID_REQUEST"
    # a nested empty array is one invalid element
    replies = exchange(daemon, b"[[]]\n", expect=1)
    assert len(replies) == 1 and len(replies[0]) == 1 and replies[0][0]["error"]["code"] == -32600


def test_batch_of_only_notifications_gets_no_reply(daemon: Daemon) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "session/list"},
        {"jsonrpc": "2.0", "method": "no/such_method"},
        {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "nothing"}},
    ]
    mark = len(daemon.lines)
    daemon.send_raw(line(batch))
    time.sleep(0.3)
    daemon.send(req("next", "session/list"))
    assert "result" in daemon.response("next")
    assert [m.get("id") for m in parsed_lines(daemon, mark)] == ["next"]
    still_serving(daemon)


def test_batch_elements_run_concurrently(daemon: Daemon) -> None:
    s1, s2 = deferred(daemon), deferred(daemon)
    batch = [
        req("t1", "turn/start", {"session_id": s1, "prompt": "one", "provider_params": slow("a" * 20)}),
        req("t2", "turn/start", {"session_id": s2, "prompt": "two", "provider_params": slow("b" * 20)}),
    ]
    daemon.send(batch)
    answers = daemon.wait_for(lambda: daemon._responses.get("batch"), 30, "batch answer")[0]
    assert sorted(a["id"] for a in answers) == ["t1", "t2"]
    assert all(a["result"]["stop_reason"] == "end_turn" for a in answers)
    # the second turn started streaming before the first one completed
    order = [(n["params"]["session_id"], n["params"]["event"]["type"]) for n in daemon.notifications]
    first_done = min(order.index((s1, "turn_completed")), order.index((s2, "turn_completed")))
    assert order.index((s1, "text_delta")) < first_done
    assert order.index((s2, "text_delta")) < first_done


# ---------------------------------------------------------------- dispatch errors


def test_method_and_params_errors(daemon: Daemon) -> None:
    err = daemon.error("no/such_method", {})
    assert err["code"] == -32601 and err["data"]["code"] == "METHOD_NOT_FOUND"
    assert err["data"]["method"] == "no/such_method"

    err = daemon.error("session/list", {"bogus": 1})
    assert err["code"] == -32602 and err["data"]["code"] == "INVALID_PARAMS"
    assert err["data"]["errors"] == [{"path": "$.bogus", "message": "unknown field `bogus`"}]

    err = daemon.error("session/list", {"bogus": 1, "limit": "ten", "offset": -3, "include_archived": "yes"})
    paths = sorted(e["path"] for e in err["data"]["errors"])
    assert paths == ["$.bogus", "$.include_archived", "$.limit", "$.offset"]
    assert all(e["message"] for e in err["data"]["errors"])

    err = daemon.error("session/list", {"limit": "x"})
    assert err["data"]["errors"] == [{"path": "$.limit", "message": "Expected `int`, got `str`"}]

    err = daemon.error("turn/start", {})
    assert sorted(e["path"] for e in err["data"]["errors"]) == ["$.prompt", "$.session_id"]
    still_serving(daemon)


def test_notification_runs_without_reply(daemon: Daemon) -> None:
    sid = deferred(daemon)
    mark = len(daemon.lines)
    daemon.notify("session/archive", {"session_id": sid})

    def archived() -> bool:
        listed = daemon.call("session/list", {"include_archived": True})["sessions"]
        return any(s["session_id"] == sid and s.get("archived") for s in listed)

    deadline = time.monotonic() + 10
    while not archived():
        assert time.monotonic() < deadline, "the notification never ran"
        time.sleep(0.05)
    assert sid not in [s["session_id"] for s in daemon.call("session/list")["sessions"]]
    # nothing answered the notification: every line since has an id we sent
    assert all(isinstance(m.get("id"), int) for m in parsed_lines(daemon, mark))
    # a failing notification is not answered either
    assert exchange(daemon, line({"jsonrpc": "2.0", "method": "session/read", "params": {"session_id": "nope"}})) == []
    assert exchange(daemon, line({"jsonrpc": "2.0", "method": "no/such_method"})) == []


# ---------------------------------------------------------------- concurrency, ids, cancellation


def test_duplicate_inflight_id(daemon: Daemon) -> None:
    sid = deferred(daemon)
    # three seconds of streaming, so the third "dup" (sent after the first delta) arrives while it runs
    turn = req("dup", "turn/start", {"session_id": sid, "prompt": "p", "provider_params": slow("x" * 30, 100)})
    mark = len(daemon.lines)
    # both lines in one write: the second must be refused even before the first task starts
    daemon.send_raw(line(turn) + line(req("dup", "session/list")))
    wait_deltas(daemon, sid, 1)
    daemon.send(req("dup", "session/read", {"session_id": sid}))
    daemon.wait_for(
        lambda: sum(1 for m in parsed_lines(daemon, mark) if m.get("id") == "dup" and "result" in m),
        20,
        "turn result",
    )
    dups = [m for m in parsed_lines(daemon, mark) if m.get("id") == "dup"]
    assert len(dups) == 3, dups
    assert [("error" in m) for m in dups] == [True, True, False]
    for m in dups[:2]:
        assert m["error"]["code"] == -32600 and m["error"]["data"]["code"] == "INVALID_REQUEST"
    assert dups[2]["result"]["text"] == "x" * 30
    # once answered, the id may be used again
    replies = exchange(daemon, line(req("dup", "session/list")), expect=1)
    assert len(replies) == 1 and "result" in replies[0]


def test_duplicate_ids_inside_one_batch(daemon: Daemon) -> None:
    sid = deferred(daemon)
    batch = [
        req("same", "turn/start", {"session_id": sid, "prompt": "p", "provider_params": slow("q" * 10, 20)}),
        req("same", "session/list"),
    ]
    daemon.send(batch)
    answers = daemon.wait_for(lambda: daemon._responses.get("batch"), 20, "batch answer")[0]
    assert len(answers) == 2 and all(a["id"] == "same" for a in answers)
    assert sorted("error" in a for a in answers) == [False, True]
    err = next(a for a in answers if "error" in a)["error"]
    assert err["code"] == -32600
    ok = next(a for a in answers if "result" in a)["result"]
    assert ok["text"] == "q" * 10


def test_responses_out_of_order(daemon: Daemon) -> None:
    sid = deferred(daemon)
    # three seconds of streaming: the read sent after the first delta is answered well before the turn
    turn_id = daemon.request("turn/start", {"session_id": sid, "prompt": "p", "provider_params": slow("abcdefghijklmnopqrst", 150)})
    list_id = daemon.request("session/list")
    wait_deltas(daemon, sid, 1)
    read_id = daemon.request("session/read", {"session_id": sid})
    assert daemon.response(turn_id)["result"]["text"] == "abcdefghijklmnopqrst"
    ids = [m.get("id") for m in parsed_lines(daemon) if "id" in m]
    assert ids.index(list_id) < ids.index(turn_id)
    assert ids.index(read_id) < ids.index(turn_id)
    assert daemon.response(read_id)["result"]["state"]["is_active"] is True
    assert_clean_stdout(daemon)


def test_cancel_request_interrupts_turn(daemon: Daemon) -> None:
    sid = deferred(daemon)
    text = "0123456789" * 20
    daemon.send(req("T", "turn/start", {"session_id": sid, "prompt": "go", "provider_params": slow(text)}))
    wait_deltas(daemon, sid, 3)
    daemon.notify("$/cancelRequest", {"id": "T"})
    reply = daemon.response("T")
    assert reply["error"]["code"] == -32800 and reply["error"]["data"]["code"] == "REQUEST_CANCELLED"
    assert "result" not in reply
    types = daemon.event_types(sid)
    assert types[-1] == "turn_completed"
    assert daemon.events(sid)[-1]["event"]["stop_reason"] == "interrupted"
    page = daemon.call("session/history", {"session_id": sid})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
    partial = page["messages"][1]["content"][0]["text"]
    assert 3 <= len(partial) < len(text) and text.startswith(partial)
    assert daemon.call("session/read", {"session_id": sid})["state"]["is_active"] is False
    # the session is usable again
    result = daemon.call("turn/start", {"session_id": sid, "prompt": "again", "provider_params": script({"text": "done"})})
    assert result["text"] == "done" and result["stop_reason"] == "end_turn"


def test_cancel_in_the_same_write_as_the_request(daemon: Daemon) -> None:
    """The request is in flight from the moment it is read, not from when its task first
    runs: a cancel read in the same chunk still finds and cancels it."""
    sid = deferred(daemon)
    turn = req("T0", "turn/start", {"session_id": sid, "prompt": "go", "provider_params": slow("w" * 100)})
    daemon.send_raw(line(turn) + line({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "T0"}}))
    reply = daemon.response("T0")
    assert reply["error"]["code"] == -32800 and reply["error"]["data"]["code"] == "REQUEST_CANCELLED"
    # whether or not the turn got as far as being claimed, the session is not left busy
    state = daemon.call("session/read", {"session_id": sid})["state"]
    assert state["is_active"] is False
    result = daemon.call("turn/start", {"session_id": sid, "prompt": "again", "provider_params": script({"text": "ok"})})
    assert result["text"] == "ok"


def test_cancel_one_element_of_a_batch(daemon: Daemon) -> None:
    sid = deferred(daemon)
    batch = [
        req("B1", "turn/start", {"session_id": sid, "prompt": "p", "provider_params": slow("b" * 200)}),
        req("B2", "session/list", {"limit": 1}),
    ]
    daemon.send(batch)
    wait_deltas(daemon, sid, 2)
    daemon.notify("$/cancelRequest", {"id": "B1"})
    answers = daemon.wait_for(lambda: daemon._responses.get("batch"), 20, "batch answer")[0]
    by_id = {a["id"]: a for a in answers}
    assert set(by_id) == {"B1", "B2"}
    assert by_id["B1"]["error"]["code"] == -32800
    assert "result" in by_id["B2"]
    page = daemon.call("session/history", {"session_id": sid})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
    assert 2 <= len(page["messages"][1]["content"][0]["text"]) < 200


def test_cancel_unknown_or_answered_id_does_nothing(daemon: Daemon) -> None:
    answered = daemon.request("session/list")
    daemon.response(answered)
    for params in ({"id": "never-sent"}, {"id": answered}, {"id": 12345}, {}, {"id": [1]}, {"id": {"a": 1}}, {"id": None}):
        assert exchange(daemon, line({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": params})) == []
    # not an object at all
    assert exchange(daemon, line({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": [1]})) == []
    assert exchange(daemon, line({"jsonrpc": "2.0", "method": "$/cancelRequest"})) == []
    # and inside a batch together with a request
    replies = exchange(
        daemon,
        line([{"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": [2]}}, req("in-batch", "session/list")]),
        expect=1,
    )
    assert len(replies) == 1 and [a["id"] for a in replies[0]] == ["in-batch"]
    # a running turn that is not targeted is untouched
    sid = deferred(daemon)
    turn = daemon.request("turn/start", {"session_id": sid, "prompt": "p", "provider_params": slow("z" * 10, 20)})
    wait_deltas(daemon, sid, 1)
    daemon.notify("$/cancelRequest", {"id": answered})
    assert daemon.response(turn)["result"]["stop_reason"] == "end_turn"
    still_serving(daemon)


def test_stdout_is_only_whole_jsonrpc_lines(daemon: Daemon) -> None:
    sids = [deferred(daemon) for _ in range(3)]
    turns = [
        daemon.request("turn/start", {"session_id": s, "prompt": "hi\nthere", "provider_params": slow("é\n\"ü" * 20, 5)})
        for s in sids
    ]
    others = []
    for i in range(30):
        others.append(daemon.request("session/list", {"limit": 5}))
        others.append(daemon.request("session/read", {"session_id": sids[i % 3]}))
    daemon.send_raw(b"garbage\n[1]\n\n")
    daemon.send([req("b1", "session/list"), req("b2", "nope")])
    daemon.notify("session/list")
    for id_ in turns + others:
        daemon.response(id_)
    daemon.wait_for(lambda: daemon._responses.get("batch"), 10, "batch")
    assert daemon.call("shutdown") == {}
    assert daemon.wait_exit() == 0
    daemon._reader.join(5)
    assert_clean_stdout(daemon)
    assert len(daemon.events()) >= 3 * 40


# ---------------------------------------------------------------- initialize / shutdown


def test_initialize(spawn: Spawn) -> None:
    d = spawn("--max-line-bytes", "8192")
    result = d.call("initialize", {"protocol_version": 1, "client_info": {"name": "t", "version": "1"},
                                   "capabilities": {"tool_execute": False}})
    assert result["protocol_version"] == 1
    assert result["server_info"]["name"] == "warren" and isinstance(result["server_info"]["version"], str)
    caps = result["capabilities"]
    assert set(caps["methods"]) == set(METHODS) and len(caps["methods"]) == len(METHODS)
    # every advertised method is served: params are validated (-32602), never -32601
    for method in caps["methods"]:
        err = d.error(method, {"__probe__": 1})
        assert err["code"] == -32602, (method, err)
        assert {"path": "$.__probe__", "message": "unknown field `__probe__`"} in err["data"]["errors"]
    assert d.error("no/such", {})["code"] == -32601
    assert set(caps["events"]) == {event_type_name(e) for e in EVENT_TYPES}
    assert {"turn_started", "text_delta", "reasoning_delta", "tool_call_requested", "usage",
            "turn_completed", "turn_failed", "retrying", "system_context_applied"} <= set(caps["events"])
    assert "scripted" in caps["providers"]
    assert result["limits"] == {"max_line_bytes": 8192, "max_page_size": 1000, "coalesce_after_lines": 1024,
                               "max_image_bytes": 5 * 1024 * 1024}
    assert result["capabilities"]["event_subscriptions"] is True
    # optional: no params at all works too
    assert d.call("initialize")["protocol_version"] == 1


def test_initialize_params_errors(daemon: Daemon) -> None:
    err = daemon.error("initialize", {"protocol_version": 2})
    assert err["code"] == -32602 and err["data"]["code"] == "INVALID_PARAMS"
    assert err["data"]["errors"][0]["path"] == "$.protocol_version"
    err = daemon.error("initialize", {"protocol_version": 1, "extra": True})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.extra"
    err = daemon.error("initialize", {"capabilities": {"tool_execute": "yes"}})
    assert err["code"] == -32602 and err["data"]["errors"][0]["path"] == "$.capabilities.tool_execute"
    # forward compatibility (a documented decision): unknown capabilities are accepted
    result = daemon.call("initialize", {"capabilities": {"tool_execute": False, "from_the_future": {"x": 1}},
                                        "client_info": {"name": "n", "version": "v", "build": 7}})
    assert result["protocol_version"] == 1


def test_shutdown(daemon: Daemon) -> None:
    still_serving(daemon)
    assert daemon.call("shutdown") == {}
    assert daemon.wait_exit(10) == 0
    daemon._reader.join(5)
    assert daemon._eof
    assert_clean_stdout(daemon)


def _start_streaming_turn(d: Daemon) -> tuple[str, int]:
    sid = deferred(d)
    turn = d.request("turn/start", {"session_id": sid, "prompt": "p", "provider_params": slow("s" * 400)})
    wait_deltas(d, sid, 3)
    return sid, turn


def test_sigterm_during_turn(spawn: Spawn, tmp_path: Path) -> None:
    d = spawn()
    sid, turn = _start_streaming_turn(d)
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    result = d.response(turn, timeout=10)["result"]
    assert result["stop_reason"] == "interrupted"
    assert 3 <= len(result["text"]) < 400
    assert d.wait_exit(10) == 0
    assert time.monotonic() - started < 5
    _check_closed(spawn, sid, result["text"])


def test_eof_during_turn(spawn: Spawn) -> None:
    d = spawn()
    sid, turn = _start_streaming_turn(d)
    started = time.monotonic()
    d.close_stdin()
    result = d.response(turn, timeout=10)["result"]
    assert result["stop_reason"] == "interrupted"
    assert d.wait_exit(10) == 0
    assert time.monotonic() - started < 5
    last = d.events(sid)[-1]["event"]
    assert (last["type"], last["stop_reason"]) == ("turn_completed", "interrupted")
    _check_closed(spawn, sid, result["text"])


def test_shutdown_during_turn(spawn: Spawn) -> None:
    d = spawn()
    sid, turn = _start_streaming_turn(d)
    shut = d.request("shutdown")
    assert d.response(shut, timeout=10)["result"] == {}
    assert d.response(turn, timeout=10)["result"]["stop_reason"] == "interrupted"
    # the turn's answer is written before shutdown's
    ids = [m.get("id") for m in parsed_lines(d) if "id" in m]
    assert ids.index(turn) < ids.index(shut)
    assert d.wait_exit(10) == 0


def _check_closed(spawn: Spawn, sid: str, partial: str) -> None:
    d = spawn()
    state = d.call("session/read", {"session_id": sid})["state"]
    assert state["is_active"] is False
    page = d.call("session/history", {"session_id": sid})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
    assert page["messages"][1]["content"][0]["text"] == partial
    again = d.call("turn/start", {"session_id": sid, "prompt": "more", "provider_params": script({"text": "ok"})})
    assert again["text"] == "ok"


def test_client_that_vanishes(tmp_path: Path, spawn: Spawn) -> None:
    db = tmp_path / "warren.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARREN_LOG_LEVEL="info")
    with open(tmp_path / "vanish.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warren.daemon", "serve", "--db", str(db)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(line(req(1, "session/create", {"prompt": "p", "provider": "scripted", "provider_params": slow("v" * 2000, 5)})))
            proc.stdin.flush()
            got = []
            deadline = time.monotonic() + 20
            while len(got) < 5:
                assert time.monotonic() < deadline
                ready, _, _ = select.select([proc.stdout], [], [], 1)
                if ready:
                    got.append(json.loads(proc.stdout.readline()))
                    assert got[-1].get("method") == "session/event", got[-1]
            sid = got[0]["params"]["session_id"]
            assert all(g["method"] == "session/event" for g in got)
            proc.stdout.close()  # the client is gone; stdin stays open
            started = time.monotonic()
            rc = proc.wait(10)
            assert time.monotonic() - started < 6
            assert rc == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if proc.stdin:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
    d = spawn(db=db)
    listed = [s["session_id"] for s in d.call("session/list")["sessions"]]
    assert sid in listed
    state = d.call("session/read", {"session_id": sid})["state"]
    assert state["is_active"] is False
    page = d.call("session/history", {"session_id": sid})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
    partial = page["messages"][1]["content"][0]["text"]
    assert 0 < len(partial) < 2000 and set(partial) == {"v"}
    assert d.call("turn/start", {"session_id": sid, "prompt": "more", "provider_params": script({"text": "ok"})})["text"] == "ok"


def test_sigterm_with_a_client_that_stopped_reading(tmp_path: Path, spawn: Spawn) -> None:
    """A client that stops reading (but keeps its pipes open) fills the pipe and then the
    writer's queue. The turn is not stalled by it (its deltas merge in the queue), so it
    commits all of its text; and SIGTERM still ends the daemon within the grace period:
    the last writes must not wait for a reader that never comes."""
    db = tmp_path / "warren.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARREN_LOG_LEVEL="info")
    with open(tmp_path / "stuck.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warren.daemon", "serve", "--db", str(db), "--shutdown-grace-s", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env,
        )
        try:
            assert proc.stdin is not None
            big = script({"text": "y" * 200_000, "chunk_chars": 1})
            proc.stdin.write(line(req(1, "session/create", {"prompt": "p", "provider": "scripted",
                                                            "provider_params": big})))
            proc.stdin.flush()
            # never read stdout: the pipe and then the writer's queue fill up; the turn ends.
            # A second daemon on the file sees when it has (a fixed sleep was too short under load).
            watcher = spawn(db=db)

            def turn_stored() -> bool:
                listed = watcher.call("session/list")["sessions"]
                if not listed:
                    return False
                state = watcher.call("session/read", {"session_id": listed[0]["session_id"]})["state"]
                return state["message_count"] == 2 and not state["is_active"]

            deadline = time.monotonic() + 60
            while not turn_stored():
                assert time.monotonic() < deadline, "the turn never ended while its client did not read"
                time.sleep(0.1)
            watcher.stop()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(15)
            assert time.monotonic() - started < 5
            assert rc == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()  # type: ignore[union-attr]
                except BrokenPipeError:
                    pass
    d = spawn(db=db)
    sessions = d.call("session/list")["sessions"]
    assert len(sessions) == 1 and sessions[0]["is_active"] is False
    page = d.call("session/history", {"session_id": sessions[0]["session_id"]})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
    assert page["messages"][1]["content"][0]["text"] == "y" * 200_000


# ---------------------------------------------------------------- stdout protection


def test_protect_stdout_redirects_stray_prints(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from warren.daemon.transport.stdout import protect_stdout\n"
        "fd = protect_stdout()\n"
        "print('junk')\n"
        "sys.stdout.flush()\n"
        "os.write(1, b'raw-junk\\n')\n"
        "os.write(fd, b'{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\\n')\n"
        "print('more junk', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'{"jsonrpc":"2.0","id":1,"result":{}}\n'
    assert b"junk\n" in done.stderr and b"raw-junk\n" in done.stderr and b"more junk\n" in done.stderr


def test_daemon_stderr_is_logs_not_protocol(spawn: Spawn) -> None:
    d = spawn()
    still_serving(d)
    d.error("no/such", {})
    assert d.call("shutdown") == {}
    assert d.wait_exit() == 0
    d._reader.join(5)
    assert_clean_stdout(d)
    logs = d.stderr_lines()  # each stderr line is a JSON log record
    assert any(r.get("event") == "request" for r in logs)
    assert not any("jsonrpc" in r for r in logs)


def test_failed_shutdown_in_a_batch_keeps_serving(daemon: Daemon) -> None:
    replies = exchange(daemon, line([req("s", "shutdown", {"bogus": 1})]), expect=1)
    assert len(replies) == 1 and replies[0][0]["id"] == "s" and replies[0][0]["error"]["code"] == -32602
    still_serving(daemon)
    sid = deferred(daemon)  # new turns are still accepted
    assert daemon.call("turn/start", {"session_id": sid, "prompt": "p"})["text"] == "echo: p"


def test_shutdown_in_a_batch(daemon: Daemon) -> None:
    daemon.send([req("s", "shutdown"), req("l", "session/list")])
    answers = daemon.wait_for(lambda: daemon._responses.get("batch"), 10, "batch")[0]
    assert {a["id"]: ("result" in a) for a in answers} == {"s": True, "l": True}
    assert daemon.wait_exit(10) == 0


def test_shutdown_as_a_notification_stops_the_daemon(daemon: Daemon) -> None:
    still_serving(daemon)
    mark = len(daemon.lines)
    daemon.notify("shutdown")
    assert daemon.wait_exit(10) == 0
    daemon._reader.join(5)
    assert daemon.lines[mark:] == []
