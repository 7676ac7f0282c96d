"""Unit tests of the sans-I/O protocol pieces: framing, envelopes, params validation.

No subprocess, no event loop: these run in milliseconds and pin down the exact behaviour
that the transport tests (test_transport.py) observe end to end.
"""

from __future__ import annotations

import json
from typing import get_args

import pytest

from warren.protocol import jsonrpc
from warren.protocol.errors import CODES, INVALID_REQUEST, PARSE_ERROR, error_object
from warren.protocol.events import DELTA_TYPES, EVENT_TYPES, EventTypeName, event_type_name
from warren.protocol.framing import LineBuffer, Oversized
from warren.protocol.jsonrpc import ABSENT, Batch, Invalid, Notification, Request, Response, classify, parse_line
from warren.protocol.types import InitializeParams, SessionListParams, StageToolResultsParams, TurnStartParams
from warren.protocol.validation import ParamsInvalid, split_message, validate

# ---------------------------------------------------------------- LineBuffer


def test_linebuffer_rejects_nonpositive_limit() -> None:
    with pytest.raises(ValueError):
        LineBuffer(0)


def test_linebuffer_line_split_across_feeds() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b'{"a"') == []
    assert buf.feed(b":1") == []
    assert buf.feed(b'}\n{"b":') == [b'{"a":1}']
    assert buf.feed(b"2}\n") == [b'{"b":2}']
    assert buf.eof() == []


def test_linebuffer_byte_by_byte() -> None:
    buf = LineBuffer(100)
    out: list[object] = []
    for byte in b"one\r\ntwo\nthree\n":
        out += buf.feed(bytes([byte]))
    assert out == [b"one", b"two", b"three"]


def test_linebuffer_many_lines_per_feed() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b"1\n2\n3\n4") == [b"1", b"2", b"3"]
    assert buf.feed(b"\n") == [b"4"]


def test_linebuffer_crlf_and_blank_lines() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b"a\r\n\r\n\n   \n\t \r\nb\r\n") == [b"a", b"b"]
    # only one trailing \r is a terminator; an inner \r stays
    assert buf.feed(b"c\rd\r\n") == [b"c\rd"]


def test_linebuffer_eof_final_line_without_newline() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b"x\ny") == [b"x"]
    assert buf.eof() == [b"y"]
    assert buf.eof() == []  # state is reset


def test_linebuffer_eof_final_line_with_cr() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b"y\r") == []
    assert buf.eof() == [b"y"]


def test_linebuffer_eof_blank_tail_is_ignored() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b"x\n  ") == [b"x"]
    assert buf.eof() == []


def test_linebuffer_oversized_then_normal_in_one_feed() -> None:
    buf = LineBuffer(10)
    out = buf.feed(b"a" * 50 + b"\nok\n")
    assert out == [Oversized(50), b"ok"]


def test_linebuffer_oversized_across_feeds_is_not_buffered() -> None:
    buf = LineBuffer(10)
    assert buf.feed(b"a" * 8) == []
    assert buf.feed(b"a" * 8) == []  # now over the limit: dropped, not kept
    assert len(buf._buf) == 0
    for _ in range(100):
        assert buf.feed(b"a" * 1000) == []
        assert len(buf._buf) == 0
    out = buf.feed(b"aa\nnext\n")
    assert len(out) == 2
    assert isinstance(out[0], Oversized) and out[0].size >= 100_000
    assert out[1] == b"next"


def test_linebuffer_oversized_at_eof() -> None:
    buf = LineBuffer(10)
    assert buf.feed(b"a" * 30) == []
    out = buf.eof()
    assert len(out) == 1 and isinstance(out[0], Oversized)
    # and the buffer is usable afterwards
    assert buf.feed(b"z\n") == [b"z"]


def test_linebuffer_exactly_at_limit() -> None:
    buf = LineBuffer(10)
    assert buf.feed(b"a" * 10 + b"\n") == [b"a" * 10]
    assert buf.feed(b"b" * 11 + b"\n") == [Oversized(11)]
    # split so the limit is reached without the newline
    assert buf.feed(b"c" * 10) == []
    assert buf.feed(b"\n") == [b"c" * 10]
    # at the limit without a newline until eof
    assert buf.feed(b"d" * 10) == []
    assert buf.eof() == [b"d" * 10]


def test_linebuffer_exactly_at_limit_with_crlf_split() -> None:
    """The ``\\r`` of ``\\r\\n`` is part of the terminator, not of the line: a line at the
    limit is accepted whether or not the ``\\r`` and ``\\n`` arrive in the same read."""
    buf = LineBuffer(10)
    assert buf.feed(b"a" * 10 + b"\r\n") == [b"a" * 10]
    assert buf.feed(b"b" * 10 + b"\r") == []
    assert buf.feed(b"\n") == [b"b" * 10]
    assert buf.feed(b"c" * 10) == []
    assert buf.feed(b"\r") == []
    assert buf.feed(b"\nnext\n") == [b"c" * 10, b"next"]


def test_linebuffer_one_over_limit_then_crlf_is_oversized() -> None:
    buf = LineBuffer(10)
    out = buf.feed(b"d" * 11)
    out += buf.feed(b"\r")
    out += buf.feed(b"\n")
    assert len(out) == 1 and isinstance(out[0], Oversized)
    assert buf.feed(b"ok\n") == [b"ok"]


def test_linebuffer_memory_is_bounded_for_a_huge_line() -> None:
    limit = 4096
    buf = LineBuffer(limit)
    chunk = b"x" * 65536
    for _ in range(50):
        assert buf.feed(chunk) == []
        assert len(buf._buf) <= limit + 1
    out = buf.feed(b"\n")
    assert out == [Oversized(50 * 65536)]


# ---------------------------------------------------------------- parse_line / classify


def _code(msg: object) -> tuple[int, str]:
    assert isinstance(msg, Invalid), msg
    return msg.error.code, msg.error.data["code"]


def test_parse_request_and_notification() -> None:
    msg = parse_line(b'{"jsonrpc":"2.0","id":7,"method":"session/list","params":{"limit":1}}')
    assert msg == Request(7, "session/list", {"limit": 1})
    msg = parse_line(b'{"jsonrpc":"2.0","id":"abc","method":"m"}')
    assert msg == Request("abc", "m", ABSENT)
    msg = parse_line(b'{"jsonrpc":"2.0","method":"m","params":[1]}')
    assert msg == Notification("m", [1])
    # id null is a request (answered with id null), not a notification
    msg = parse_line(b'{"jsonrpc":"2.0","id":null,"method":"m"}')
    assert msg == Request(None, "m", ABSENT)


@pytest.mark.parametrize(
    "line",
    [b"{", b"nope", b'{"a":1} x', b"NaN", b"\xff\xfe", b'"\xff"', b'{"jsonrpc":"2.0","method":"\xc3"}', b"\x00"],
)
def test_parse_errors(line: bytes) -> None:
    msg = parse_line(line)
    assert _code(msg) == (PARSE_ERROR, "PARSE_ERROR")
    assert msg.id is None


def test_parse_deeply_nested_is_a_parse_error_not_a_crash() -> None:
    for line in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        msg = parse_line(line)
        assert _code(msg) == (PARSE_ERROR, "PARSE_ERROR") and msg.id is None


def test_parse_error_mentions_utf8() -> None:
    msg = parse_line(b'{"jsonrpc":"2.0","id":1,"method":"\xff"}')
    assert isinstance(msg, Invalid)
    assert "UTF-8" in msg.error.message


@pytest.mark.parametrize("value", [1, "x", None, True, 1.5])
def test_classify_non_object(value: object) -> None:
    msg = classify(value)
    assert _code(msg) == (INVALID_REQUEST, "INVALID_REQUEST")
    assert msg.id is None


@pytest.mark.parametrize("bad_id", [1.5, 1.0, {}, {"a": 1}, [], [1], True, False])
def test_classify_bad_id_types(bad_id: object) -> None:
    msg = classify({"jsonrpc": "2.0", "id": bad_id, "method": "m"})
    assert _code(msg) == (INVALID_REQUEST, "INVALID_REQUEST")
    assert msg.id is None


@pytest.mark.parametrize("version", [ABSENT, "1.0", 2.0, "2", None])
def test_classify_bad_jsonrpc_echoes_valid_id(version: object) -> None:
    value: dict[str, object] = {"id": 5, "method": "m"}
    if version is not ABSENT:
        value["jsonrpc"] = version
    msg = classify(value)
    assert _code(msg) == (INVALID_REQUEST, "INVALID_REQUEST")
    assert msg.id == 5


def test_classify_method_and_params_shape() -> None:
    msg = classify({"jsonrpc": "2.0", "id": "q", "method": 3})
    assert _code(msg) == (INVALID_REQUEST, "INVALID_REQUEST") and msg.id == "q"
    for params in (1, "x", True, None, 1.5):
        msg = classify({"jsonrpc": "2.0", "id": 9, "method": "m", "params": params})
        assert _code(msg) == (INVALID_REQUEST, "INVALID_REQUEST") and msg.id == 9
    assert classify({"jsonrpc": "2.0", "id": 9, "method": "m", "params": []}) == Request(9, "m", [])


def test_classify_responses() -> None:
    assert classify({"jsonrpc": "2.0", "id": 3, "result": {"x": 1}}) == Response(3, {"x": 1}, None)
    assert classify({"jsonrpc": "2.0", "id": "t", "error": {"code": 1}}) == Response("t", None, {"code": 1})
    # both result and error, or neither, is not a response
    assert _code(classify({"jsonrpc": "2.0", "id": 3, "result": 1, "error": 2}))[1] == "INVALID_REQUEST"
    assert _code(classify({"jsonrpc": "2.0", "id": 3}))[1] == "INVALID_REQUEST"
    # without an id it is not a response either
    assert _code(classify({"jsonrpc": "2.0", "result": 1}))[1] == "INVALID_REQUEST"


def test_parse_batches() -> None:
    empty = parse_line(b"[]")
    assert _code(empty) == (INVALID_REQUEST, "INVALID_REQUEST") and empty.id is None
    batch = parse_line(b'[1, {"jsonrpc":"2.0","id":1,"method":"a"}, {"jsonrpc":"2.0","method":"n"}]')
    assert isinstance(batch, Batch)
    assert [type(m) for m in batch.messages] == [Invalid, Request, Notification]
    # a nested array inside a batch is one invalid element, not a sub-batch
    nested = parse_line(b"[[]]")
    assert isinstance(nested, Batch) and len(nested.messages) == 1
    assert _code(nested.messages[0])[1] == "INVALID_REQUEST"


def test_encoders_produce_single_lines() -> None:
    err = error_object("INVALID_REQUEST", "bad")
    for line in (
        jsonrpc.encode_result(1, {"a": "x\ny"}),
        jsonrpc.encode_error(None, err),
        jsonrpc.encode_notification("session/event", {"s": "\n"}),
        jsonrpc.encode_request("t1", "tool/execute", {}),
    ):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line)["jsonrpc"] == "2.0"
    batch = jsonrpc.encode_batch([jsonrpc.encode_result(1, 1), jsonrpc.encode_error(2, err)])
    assert batch.count(b"\n") == 1
    assert [m["id"] for m in json.loads(batch)] == [1, 2]


def test_error_object_table() -> None:
    err = error_object("MESSAGE_TOO_LARGE", "m", limit=10)
    assert err.code == -32600 and err.data == {"code": "MESSAGE_TOO_LARGE", "retryable": False, "limit": 10}
    # the transport's rows of PROTOCOL.md section 6
    assert {k: CODES[k] for k in ("PARSE_ERROR", "INVALID_REQUEST", "MESSAGE_TOO_LARGE", "METHOD_NOT_FOUND",
                                  "INVALID_PARAMS", "INTERNAL_ERROR", "REQUEST_CANCELLED")} == {
        "PARSE_ERROR": -32700, "INVALID_REQUEST": -32600, "MESSAGE_TOO_LARGE": -32600,
        "METHOD_NOT_FOUND": -32601, "INVALID_PARAMS": -32602, "INTERNAL_ERROR": -32603, "REQUEST_CANCELLED": -32800,
    }


# ---------------------------------------------------------------- validate


def test_validate_defaults_for_absent_and_null() -> None:
    for raw in (ABSENT, None, {}):
        p = validate(raw, SessionListParams)
        assert p.limit == 100 and p.offset == 0 and p.include_archived is False


def test_validate_array_params_rejected() -> None:
    with pytest.raises(ParamsInvalid) as info:
        validate([1], SessionListParams)
    assert info.value.errors == [{"path": "$", "message": "params must be an object (by-name), not an array"}]


def test_validate_unknown_field() -> None:
    with pytest.raises(ParamsInvalid) as info:
        validate({"bogus": 1}, SessionListParams)
    assert info.value.errors == [{"path": "$.bogus", "message": "unknown field `bogus`"}]


def test_validate_reports_every_problem() -> None:
    with pytest.raises(ParamsInvalid) as info:
        validate({"limit": "ten", "offset": -1, "extra": True, "labels": {"a": 1}}, SessionListParams)
    paths = sorted(e["path"] for e in info.value.errors)
    assert paths == ["$.extra", "$.labels[...]", "$.limit", "$.offset"]  # msgspec names dict values [...]
    by_path = {e["path"]: e["message"] for e in info.value.errors}
    assert by_path["$.limit"] == "Expected `int`, got `str`"
    assert ">= 0" in by_path["$.offset"]


def test_validate_missing_required() -> None:
    with pytest.raises(ParamsInvalid) as info:
        validate({}, TurnStartParams)
    assert sorted(e["path"] for e in info.value.errors) == ["$.prompt", "$.session_id"]
    assert all("missing required field" in e["message"] for e in info.value.errors)


def test_validate_nested_path() -> None:
    with pytest.raises(ParamsInvalid) as info:
        validate({"session_id": "s", "results": [{"tool_use_id": "t", "content": 5}]}, StageToolResultsParams)
    assert info.value.errors == [{"path": "$.results[0].content", "message": "Expected `str`, got `int`"}]


def test_validate_nested_unknown_field_path() -> None:
    with pytest.raises(ParamsInvalid) as info:
        validate({"session_id": "s", "prompt": "p", "turn_tool_overlay": {"bogus": 1}}, TurnStartParams)
    assert [e["path"] for e in info.value.errors] == ["$.turn_tool_overlay.bogus"]
    assert "bogus" in info.value.errors[0]["message"]


def test_validate_strict_no_coercion() -> None:
    with pytest.raises(ParamsInvalid):
        validate({"limit": "5"}, SessionListParams)
    with pytest.raises(ParamsInvalid):
        validate({"include_archived": 1}, SessionListParams)


def test_validate_capabilities_forward_compatible() -> None:
    """Documented decision: unknown fields *inside* ``capabilities`` and ``client_info`` are
    accepted (clients may advertise newer capabilities); unknown top-level fields are not."""
    p = validate({"capabilities": {"tool_execute": True, "future_thing": 1}}, InitializeParams)
    assert p.capabilities is not None and p.capabilities.tool_execute is True
    with pytest.raises(ParamsInvalid) as info:
        validate({"future_thing": 1}, InitializeParams)
    assert info.value.errors[0]["path"] == "$.future_thing"


def test_split_message() -> None:
    assert split_message("Expected `int`, got `str` - at `$.limit`") == ("Expected `int`, got `str`", "$.limit")
    assert split_message("Expected `int`, got `str` - at `$[0].a`") == ("Expected `int`, got `str`", "$[0].a")
    assert split_message("Object missing required field `x`") == ("Object missing required field `x`", "$")


# ---------------------------------------------------------------- events


def test_the_types_filter_names_every_event_type_and_nothing_else() -> None:
    """``EventTypeName`` is written out for type checkers; it must follow ``AnyEvent``, or a
    new event could not be filtered for (and TypeScript's ``EventType`` would not name it)."""
    assert get_args(EventTypeName) == tuple(event_type_name(cls) for cls in EVENT_TYPES)
    assert DELTA_TYPES <= set(get_args(EventTypeName))
