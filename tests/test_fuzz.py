"""Property tests: whatever a client writes, the daemon answers per JSON-RPC 2.0 and survives.

One long-lived ``--ephemeral`` daemon takes every example. After each fuzz line the test
sends a sentinel request with a unique id; everything the daemon writes before the
sentinel's answer (and any late answers the model still expects) is the reply to that line.
The expected reply is computed by a small independent model of JSON-RPC 2.0 (not by the
``protocol`` package under test).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warren.protocol.methods import METHODS
from tests.daemon_client import Daemon

SETTINGS = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    derandomize=False,
)

_counter = itertools.count(1)
MAX_LINE = 65536


# ---------------------------------------------------------------- the daemon under fuzz


@pytest.fixture(scope="module")
def fuzzd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    log = Path(tmp_path_factory.mktemp("fuzz")) / "stderr.log"
    d = Daemon("--ephemeral", "--max-line-bytes", str(MAX_LINE), stderr_path=log)
    sessions = [
        d.call("session/create", {"initial_turn": "defer", "provider": "scripted", "labels": {"k": str(i)}})[
            "session_id"
        ]
        for i in range(3)
    ]
    d.fuzz_sessions = sessions  # type: ignore[attr-defined]
    yield d
    alive = d.proc.poll() is None
    d.stop()
    assert alive, f"the daemon died during fuzzing; stderr in {log}"


# ---------------------------------------------------------------- an independent model


def _valid_id(v: Any) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


def expect_element(v: Any) -> tuple[str, Any, int | None]:
    """("none", None, None) for a notification or a client response, else
    ("reply", id, code) where code is the exact error code when the model knows it."""
    if not isinstance(v, dict):
        return ("reply", None, -32600)
    has_id = "id" in v
    if has_id and not _valid_id(v["id"]):
        return ("reply", None, -32600)
    id_ = v.get("id")
    if not (isinstance(v.get("jsonrpc"), str) and v["jsonrpc"] == "2.0"):
        return ("reply", id_, -32600)
    if "method" not in v:
        if has_id and (("result" in v) != ("error" in v)):
            return ("none", None, None)
        return ("reply", id_, -32600)
    method = v["method"]
    if not isinstance(method, str):
        return ("reply", id_, -32600)
    if "params" in v and not isinstance(v["params"], (dict, list)):
        return ("reply", id_, -32600)
    if not has_id:
        return ("none", None, None)
    if method not in METHODS:
        return ("reply", id_, -32601)
    if isinstance(v.get("params"), list):
        return ("reply", id_, -32602)
    return ("reply", id_, None)


def _is_request(v: Any) -> bool:
    return (
        isinstance(v, dict) and "id" in v and _valid_id(v["id"]) and v.get("jsonrpc") == "2.0"
        and isinstance(v.get("method"), str) and isinstance(v.get("params", {}), (dict, list))
    )


def expect_value(value: Any) -> list[Any]:
    """The replies a decoded line must get: a list of ("single", element) / ("batch", [elements])."""
    if isinstance(value, list):
        if not value:
            return [("single", ("reply", None, -32600))]
        elements = []
        admitted: set[str] = set()
        for v in value:
            e = expect_element(v)
            if e[0] != "reply":
                continue
            if _is_request(v) and v["id"] is not None:
                # the daemon admits a batch's requests in order: a repeated id is in flight
                if _key(v["id"]) in admitted:
                    e = ("reply", v["id"], -32600)
                admitted.add(_key(v["id"]))
            elements.append(e)
        return [("batch", elements)] if elements else []
    e = expect_element(value)
    return [("single", e)] if e[0] == "reply" else []


def _reject_parse_constant(name: str) -> Any:
    raise ValueError(name)


def expect_bytes(raw: bytes) -> list[Any] | None:
    """For an arbitrary line; None means "either a parse error or what the value implies"."""
    line = raw[:-1] if raw.endswith(b"\r") else raw
    if len(line) > MAX_LINE:
        return [("single", ("reply", None, -32600))]  # MESSAGE_TOO_LARGE, whatever it holds
    if not line.strip():
        return []
    try:
        text = line.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_parse_constant)
    except ValueError:
        return [("single", ("reply", None, -32700))]
    except RecursionError:
        return None  # nested deeper than Python's limit; msgspec's limit is similar but not equal
    return None if _unsafe(value) is None else expect_value(value)


def _unsafe(value: Any) -> Any:
    """Values whose parse may legitimately differ between Python and msgspec (huge floats)."""
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    if isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value):
        return None  # lone surrogate escapes: msgspec refuses them (a parse error), Python not
    if isinstance(value, list):
        return None if any(_unsafe(v) is None for v in value) else value
    if isinstance(value, dict):
        return None if any(_unsafe(k) is None or _unsafe(v) is None for k, v in value.items()) else value
    return value


def _is_long_work(v: Any) -> bool:
    """Inputs that would legitimately start long work or stop the daemon."""
    if not isinstance(v, dict):
        return False
    method = v.get("method")
    if method in ("shutdown", "turn/start"):
        return True
    if method == "session/create":
        params = v.get("params")
        return not (isinstance(params, dict) and params.get("initial_turn") == "defer")
    return False


def is_safe(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return not any(_is_long_work(i) for i in items)


# ---------------------------------------------------------------- exchange and check


def check_reply(d: Daemon, data: bytes, expected: list[Any] | None) -> None:
    sentinel = f"sentinel-{next(_counter)}"
    mark = len(d.lines)
    d.send_raw(data + json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "session/list",
                                  "params": {"limit": 1}}).encode() + b"\n")

    def replies() -> list[Any]:
        with d._cond:
            raw = list(d.lines[mark:])
        out = []
        for line in raw:
            msg = json.loads(line)  # every line is whole JSON
            if isinstance(msg, dict) and msg.get("id") == sentinel:
                continue
            if isinstance(msg, dict) and msg.get("method") == "session/event":
                continue
            out.append(msg)
        return out

    want = 1 if expected is None else len(expected)
    d.wait_for(lambda: sentinel_answered(d, mark, sentinel) and len(replies()) >= want, 15,
               f"the replies to {data[:200]!r}")
    got = replies()
    assert d.proc.poll() is None, "the daemon died"
    if expected is None:  # a line Python parses but msgspec may not: one reply, whatever it is
        assert len(got) <= 1, got
        return
    assert len(got) == len(expected), (data[:300], got, expected)
    for (kind, spec), msg in zip(expected, got):
        if kind == "single":
            check_response(msg, spec)
        else:
            assert isinstance(msg, list) and len(msg) == len(spec), (data[:300], msg, spec)
            # batch answers may be in any order: match by id, then check codes per id
            assert Counter(_key(m.get("id")) for m in msg) == Counter(_key(s[1]) for s in spec), (msg, spec)
            for s in spec:
                candidates = [m for m in msg if _key(m.get("id")) == _key(s[1])]
                assert any(_matches(m, s) for m in candidates), (candidates, s)


def _key(id_: Any) -> str:
    return json.dumps(id_)


def sentinel_answered(d: Daemon, mark: int, sentinel: str) -> bool:
    needle = f'"id":"{sentinel}"'.encode()
    with d._cond:
        return any(needle in line for line in d.lines[mark:])


def _matches(msg: Any, spec: tuple[str, Any, int | None]) -> bool:
    try:
        check_response(msg, spec)
    except AssertionError:
        return False
    return True


def check_response(msg: Any, spec: tuple[str, Any, int | None]) -> None:
    _, id_, code = spec
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
    assert "id" in msg and _key(msg["id"]) == _key(id_), (msg, spec)
    assert ("result" in msg) != ("error" in msg), msg
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str)
        assert isinstance(err["data"]["code"], str) and isinstance(err["data"]["retryable"], bool)
        assert err["code"] != -32603, msg  # nothing a client sends may crash a handler
    if code is not None:
        assert "error" in msg and msg["error"]["code"] == code, (msg, spec)


# ---------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)

valid_ids = st.one_of(st.integers(), st.text(max_size=12), st.none())
invalid_ids = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.just({}), st.just([1]))
ids = st.one_of(valid_ids, valid_ids, valid_ids, invalid_ids)
real_methods = st.sampled_from(sorted(m for m in METHODS if m not in ("shutdown", "turn/start")))
method_names = st.one_of(
    real_methods,
    real_methods,
    real_methods,
    st.sampled_from(["$/cancelRequest", "no/such_method", "", "session/", "SESSION/LIST", "rpc.discover"]),
    st.text(max_size=12),
    json_values,
)


short = st.text(max_size=12)
#: plausible values per field name, so that many fuzzed params pass validation and reach handlers
FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "prompt": short,
    "text": st.text(min_size=1, max_size=40),
    "source": short,
    "idempotency_key": st.sampled_from(["k1", "k2", ""]),
    "model": st.sampled_from(["m", "scripted", ""]),
    "provider": st.sampled_from(["scripted", "nope", ""]),
    "system_prompt": short,
    "include_archived": st.booleans(),
    "labels": st.dictionaries(st.sampled_from(["k", "a", ""]), st.sampled_from(["0", "1", "x"]), max_size=2),
    "turn_id": short,
    "protocol_version": st.integers(0, 2),
    "max_tokens": st.integers(-1, 10**6),
    "results": st.lists(
        st.fixed_dictionaries({"tool_use_id": short, "content": short}, optional={"is_error": st.booleans()}),
        max_size=2,
    ),
    "deferred_prompt_policy": st.sampled_from(["discard", "stage", "keep"]),
    "capabilities": st.fixed_dictionaries({}, optional={"tool_execute": st.booleans(), "future": json_values}),
    "client_info": st.fixed_dictionaries({}, optional={"name": short, "version": short}),
    "tools": st.lists(
        st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z_]{1,8}", fullmatch=True), "input_schema": st.just({"type": "object"})},
            optional={"description": short},
        ),
        max_size=2,
    ),
    "provider_params": st.one_of(st.just({}), st.just({"script": []}), json_values),
}


@st.composite
def params_for(draw: st.DrawFn, method: Any, sessions: list[str]) -> Any:
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None or draw(st.integers(0, 5)) == 0:
        return draw(st.one_of(st.dictionaries(st.text(max_size=8), json_values, max_size=4), json_values))
    fields = msgspec.structs.fields(spec.params)
    names = [f.encode_name for f in fields]
    plausible = draw(st.booleans())  # required fields present, plausible values, nothing unknown
    if plausible:
        optional = [f.encode_name for f in fields if not f.required]
        keys = [f.encode_name for f in fields if f.required]
        keys += draw(st.lists(st.sampled_from(optional), max_size=len(optional), unique=True)) if optional else []
    else:
        keys = draw(st.lists(st.sampled_from(names + ["bogus"]), max_size=len(names) + 1, unique=True))
    params: dict[str, Any] = {}
    for key in keys:
        hinted = plausible or draw(st.integers(0, 3)) > 0
        if key == "session_id":
            params[key] = draw(st.sampled_from(sessions) if hinted else st.one_of(short, json_values))
        elif key in ("limit", "offset"):
            params[key] = draw(st.integers(0, 1000) if hinted else st.one_of(st.integers(-5, 1100), json_values))
        elif key in FIELD_HINTS and hinted:
            params[key] = draw(FIELD_HINTS[key])
        else:
            params[key] = draw(json_values)
    if method == "session/create":
        params["initial_turn"] = "defer"
    return params


@st.composite
def request_like(draw: st.DrawFn, sessions: list[str]) -> Any:
    """Objects shaped like requests, notifications and responses, each part sometimes wrong."""
    method = draw(method_names)
    obj: dict[str, Any] = {}
    version = draw(st.sampled_from(["2.0"] * 8 + ["1.0", 2.0, None, "absent"]))
    if version != "absent":
        obj["jsonrpc"] = version
    shape = draw(st.sampled_from(["request"] * 6 + ["notification"] * 2 + ["response", "bare"]))
    if shape in ("request", "response"):
        obj["id"] = draw(ids)
    if shape in ("request", "notification"):
        obj["method"] = method
        if draw(st.booleans()):
            obj["params"] = draw(params_for(method, sessions))
        if method == "$/cancelRequest" and draw(st.booleans()):
            obj["params"] = {"id": draw(ids)}
    elif shape == "response":
        for key in draw(st.lists(st.sampled_from(["result", "error"]), max_size=2, unique=True)):
            obj[key] = draw(json_values)
    else:
        obj.update(draw(st.dictionaries(st.sampled_from(["id", "method", "params", "result", "error", "x"]),
                                        json_values, max_size=3)))
    return obj


@st.composite
def well_formed(draw: st.DrawFn, sessions: list[str]) -> Any:
    """Valid envelopes for real methods, so that fuzzed params reach validation and handlers."""
    method = draw(real_methods)
    obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": draw(params_for(method, sessions))}
    if draw(st.integers(0, 4)):
        obj["id"] = draw(valid_ids)
    return obj


cancel_notes = st.builds(
    lambda params: {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": params},
    st.one_of(st.fixed_dictionaries({"id": ids}), json_values),
)


def messages(sessions: list[str]) -> st.SearchStrategy[Any]:
    request, good = request_like(sessions), well_formed(sessions)
    one = st.one_of(request, good, good, cancel_notes)
    return st.one_of(one, one, st.lists(st.one_of(one, one, json_values), max_size=6), json_values)


def encode(value: Any, ascii_only: bool, crlf: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8") + (b"\r\n" if crlf else b"\n")


# ---------------------------------------------------------------- the properties


@settings(SETTINGS, max_examples=1000)
@given(data=st.data())
def test_fuzz_requests(fuzzd: Daemon, data: st.DataObject) -> None:
    value = data.draw(messages(fuzzd.fuzz_sessions).filter(is_safe), label="message")  # type: ignore[attr-defined]
    raw = encode(value, data.draw(st.booleans(), label="ascii"), data.draw(st.booleans(), label="crlf"))
    check_reply(fuzzd, raw, expect_value(value))


@SETTINGS
@given(value=json_values, ascii_only=st.booleans())
def test_fuzz_json_values(fuzzd: Daemon, value: Any, ascii_only: bool) -> None:
    check_reply(fuzzd, encode(value, ascii_only, False), expect_value(value))


json_ish_bytes = st.one_of(
    st.binary(max_size=120),
    st.builds(
        lambda text, at, junk: text[:at] + junk + text[at:],
        json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
        st.integers(0, 200),
        st.binary(min_size=1, max_size=4),
    ),
    st.sampled_from([b"\xef\xbb\xbf{}", b"\xff", b"  ", b"\x0b", b"\r", b"{\"a\":\"\xed\xa0\x80\"}", b"1e400",
                     b"[" * 2000, b'"\\ud800"', b"[]", b"[[]]", b"0",
                     b"[" + b"1," * 40_000 + b"1]", b" " * (MAX_LINE + 1), b"x" * MAX_LINE]),
)


@SETTINGS
@given(raw=json_ish_bytes)
def test_fuzz_bytes(fuzzd: Daemon, raw: bytes) -> None:
    line = raw.replace(b"\n", b"")
    check_reply(fuzzd, line + b"\n", expect_bytes(line))


def test_fuzzed_daemon_still_works(fuzzd: Daemon) -> None:
    """After (or without) the fuzzing, the daemon still does real work and its stdout is clean."""
    # string ids: the fuzzed lines have filled the client's response table with integer ids
    create = fuzzd.request("session/create", {"initial_turn": "defer", "provider": "scripted"}, id_="final-create")
    sid = fuzzd.response(create)["result"]["session_id"]
    turn = fuzzd.request("turn/start", {"session_id": sid, "prompt": "still"}, id_="final-turn")
    assert fuzzd.response(turn)["result"]["text"] == "echo: still"
    with fuzzd._cond:
        raw = list(fuzzd.lines)
    for line in raw:
        msg = json.loads(line)
        for item in msg if isinstance(msg, list) else [msg]:
            assert item["jsonrpc"] == "2.0"
    assert fuzzd.proc.poll() is None
