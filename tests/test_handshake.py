"""The first request: ``initialize`` answered before the event loop and the store exist
(daemon/frontends/handshake.py), and every other first line left to the peer as before."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_client import ROOT, hermetic_env

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocol_version": 1, "client_info": {"name": "t", "version": "1"}}}


def start(tmp_path: Path, *args: str, python_flags: tuple[str, ...] = (), command: str = "serve") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *python_flags, "-m", "warren.daemon", command, "--db", str(tmp_path / "w.db"), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr.log", "wb"),
        cwd=ROOT, env=hermetic_env(),
    )


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def read_lines(proc: subprocess.Popen[bytes], n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The first ``n`` lines of stdout, read unbuffered (``select`` cannot see a file
    object's buffer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"fewer than {n} lines within {timeout}s: {buf[:2000]!r}"
        chunk = os.read(fd, 65536)
        assert chunk, f"stdout ended after {buf[:2000]!r}"
        buf += chunk
    return [json.loads(raw) for raw in buf.split(b"\n")[:n]]


def by_id(messages: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {m["id"]: m for m in messages}


def run(tmp_path: Path, payload: bytes, n: int, *args: str, command: str = "serve") -> list[dict[str, Any]]:
    proc = start(tmp_path, *args, command=command)
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.flush()
        return read_lines(proc, n)
    finally:
        proc.kill()
        proc.wait()


def test_the_early_answer_equals_the_answer_of_the_running_daemon(tmp_path: Path) -> None:
    """The same params give the same result whether ``initialize`` is the first line
    (answered early) or comes after another request (answered by the front-end)."""
    params = {"protocol_version": 1, "client_info": {"name": "t"}, "capabilities": {"tool_execute": True}}
    early = run(tmp_path, line({**INIT, "params": params}), 1)[0]
    later = by_id(run(tmp_path, line({"jsonrpc": "2.0", "id": 0, "method": "session/list", "params": {}})
                      + line({**INIT, "params": params}), 2))
    assert "result" in later[0]
    assert early == later[1]
    assert early["result"]["capabilities"]["methods"][0] == "initialize"
    assert "session/create" in early["result"]["capabilities"]["methods"]


def test_acp_answers_its_first_initialize_early_and_the_same(tmp_path: Path) -> None:
    """``warren acp`` takes the same path with ACP's handler and ACP's error codes."""
    params = {"protocolVersion": 1, "clientCapabilities": {"fs": {"readTextFile": True}},
              "clientInfo": {"name": "zed", "version": "1"}}
    early = run(tmp_path, line({**INIT, "params": params}), 1, command="acp")[0]
    later = by_id(run(tmp_path, line({"jsonrpc": "2.0", "id": 0, "method": "session/list", "params": {}})
                      + line({**INIT, "params": params}), 2, command="acp"))
    assert early == later[1]
    assert early["result"]["protocolVersion"] == 1 and early["result"]["agentInfo"]["name"] == "warren"
    bad = {**INIT, "params": {"protocolVersion": "one"}}
    assert run(tmp_path, line(bad), 1, command="acp")[0] == by_id(run(
        tmp_path, line({"jsonrpc": "2.0", "id": 0, "method": "session/list", "params": {}}) + line(bad), 2, command="acp"))[1]


def test_an_invalid_first_initialize_gets_the_same_error_as_a_later_one(tmp_path: Path) -> None:
    bad = {**INIT, "params": {"protocol_version": 1, "client_infoo": {"name": "t"}}}
    early = run(tmp_path, line(bad), 1)[0]
    later = by_id(run(tmp_path, line({"jsonrpc": "2.0", "id": 0, "method": "session/list", "params": {}}) + line(bad), 2))[1]
    assert early == later
    assert early["error"]["data"]["code"] == "INVALID_PARAMS"
    assert "client_info" in early["error"]["message"]  # the closest known name
    version = run(tmp_path, line({**INIT, "params": {"protocol_version": 2}}), 1)[0]
    assert version["error"]["data"]["code"] == "INVALID_PARAMS"
    assert "$.protocol_version" in json.dumps(version["error"])


def test_lines_sent_with_the_first_are_all_answered_in_order(tmp_path: Path) -> None:
    """initialize, session/create and session/read in one write: nothing read past the
    first line is lost, and the requests behind it are served by the running daemon."""
    payload = (
        line(INIT)
        + line({"jsonrpc": "2.0", "id": 2, "method": "session/create",
                "params": {"provider": "scripted", "prompt": "hi"}})
        + line({"jsonrpc": "2.0", "method": "no/such/notification"})
        + line({"jsonrpc": "2.0", "id": 3, "method": "providers/list", "params": {}})
    )
    messages = run(tmp_path, payload, 3 + 4)  # three responses, and the create's four events
    responses = [m for m in messages if "id" in m]
    assert [r["id"] for r in responses][0] == 1
    assert {r["id"] for r in responses} == {1, 2, 3}
    created = next(r for r in responses if r["id"] == 2)
    assert created["result"]["text"] == "echo: hi"


def test_other_first_lines_are_served_as_before(tmp_path: Path) -> None:
    assert run(tmp_path, b"{not json\n", 1)[0]["error"]["code"] == -32700
    batch = run(tmp_path, line([INIT, {"jsonrpc": "2.0", "id": 2, "method": "providers/list", "params": {}}]), 1)[0]
    assert isinstance(batch, list) and {m["id"] for m in batch} == {1, 2}
    listed = run(tmp_path, line({"jsonrpc": "2.0", "id": 7, "method": "session/list", "params": {}}), 1)[0]
    assert listed["id"] == 7 and listed["result"]["sessions"] == []
    oversized = run(tmp_path, b'{"x":"' + b"a" * 4000 + b'"}\n' + line(INIT), 2, "--max-line-bytes", "1024")
    assert oversized[0]["error"]["data"]["code"] == "MESSAGE_TOO_LARGE"
    assert oversized[1]["id"] == 1 and "result" in oversized[1]


@pytest.mark.parametrize("command", ["serve", "acp"])
def test_initialize_is_answered_before_the_event_loop_is_imported(tmp_path: Path, command: str) -> None:
    """What makes cold start short: with ``-X importtime`` the import lines go to stderr as
    they happen, and the log line of the answered ``initialize`` comes before anyio's. (The
    tests comparing early and late answers would pass with no early path at all: this one
    is what shows it runs, for both front-ends.)"""
    proc = start(tmp_path, "--log-level", "debug", python_flags=("-X", "importtime"), command=command)
    params = {"protocolVersion": 1} if command == "acp" else INIT["params"]
    try:
        assert proc.stdin is not None
        proc.stdin.write(line({**INIT, "params": params}))
        proc.stdin.flush()
        assert "result" in read_lines(proc, 1)[0]
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    stderr = (tmp_path / "stderr.log").read_text().splitlines()
    answered = next(i for i, s in enumerate(stderr) if '"method":"initialize"' in s)
    anyio = next(i for i, s in enumerate(stderr) if s.startswith("import time:") and s.rstrip().endswith("| anyio"))
    store = next(i for i, s in enumerate(stderr) if s.rstrip().endswith("warren.daemon.store"))
    assert answered < anyio and answered < store


def test_a_stop_signal_before_the_first_line_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    proc = start(tmp_path)
    try:
        time.sleep(0.3)  # let it reach the wait for the first line (a signal earlier kills it just the same)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    log = (tmp_path / "stderr.log").read_text()
    assert '"signal":"SIGTERM"' in log and '"event":"stopped"' in log


def test_a_client_that_closes_without_a_line_ends_the_daemon(tmp_path: Path) -> None:
    proc = start(tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"initia')  # no newline, then end of input
    proc.stdin.close()
    try:
        assert proc.wait(timeout=20) == 0
        assert proc.stdout is not None
        assert json.loads(proc.stdout.read())["error"]["code"] == -32700  # the partial line, as before
    finally:
        proc.kill()
    assert os.path.exists(tmp_path / "w.db")


def test_a_client_that_closed_our_stdout_before_the_answer_ends_the_daemon(tmp_path: Path) -> None:
    """The early answer meets a closed pipe: the daemon stops as it does when its writer
    finds the client gone, instead of waiting on its input forever."""
    proc = start(tmp_path)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdout.close()
        proc.stdin.write(line(INIT))
        proc.stdin.flush()
        assert proc.wait(timeout=20) == 0  # stdin still open: only the broken pipe ends it
    finally:
        proc.kill()
    assert '"client_gone"' in (tmp_path / "stderr.log").read_text()


# ---------------------------------------------------------------- fuzzing the first line

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                           max_leaves=6)
PARAM_KEYS = st.sampled_from(["protocol_version", "client_info", "capabilities", "protocolVersion", "promt", "x"])
PARAMS = st.one_of(
    st.dictionaries(PARAM_KEYS, st.one_of(JSON_VALUES, st.just(1),
                                          st.fixed_dictionaries({"name": st.text(max_size=3)}),
                                          st.fixed_dictionaries({"tool_execute": st.booleans()})), max_size=3),
    JSON_VALUES,
)
FIRST_REQUESTS = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0"]),
     "id": st.one_of(st.integers(1, 10**6), st.text(min_size=1, max_size=4), st.none())},
    optional={"method": st.sampled_from(["initialize", "initialize", "initialize", "Initialize", 7]),
              "params": PARAMS, "extra": JSON_SCALARS},
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=FIRST_REQUESTS, batch=st.booleans(), crlf=st.booleans())
def test_any_first_line_is_answered_as_it_would_be_later(tmp_path_factory: pytest.TempPathFactory, request: dict[str, Any],
                                                         batch: bool, crlf: bool) -> None:
    """Whatever the first line is (initialize with good or bad params, ids of every kind,
    a wrong version or method, a batch), a fresh daemon answers it exactly as a daemon that
    has already served a request does: the early path changes when, never what."""
    payload = json.dumps([request] if batch else request).encode() + (b"\r\n" if crlf else b"\n")
    early = run(tmp_path_factory.mktemp("early"), payload, 1)[0]
    sentinel = line({"jsonrpc": "2.0", "id": "sentinel-list", "method": "session/list", "params": {}})
    later = [m for m in run(tmp_path_factory.mktemp("later"), sentinel + payload, 2)
             if not (isinstance(m, dict) and m.get("id") == "sentinel-list")]
    assert later == [early]


def test_the_default_provider_is_built_once_the_client_is_quiet(tmp_path: Path) -> None:
    """What makes the first turn fast: after the first answers, the configured default
    provider is imported and built in a worker thread (no network), and kept for the turn."""
    config = tmp_path / "config.toml"
    config.write_text('[defaults]\nprovider = "local"\n[providers.local]\ntype = "openai"\n'
                      'base_url = "http://127.0.0.1:9/v1"\ndefault_model = "m"\n')
    proc = start(tmp_path, "--config", str(config), "--log-level", "debug")
    try:
        assert proc.stdin is not None
        proc.stdin.write(line(INIT) + line({"jsonrpc": "2.0", "id": 2, "method": "session/create",
                                            "params": {"initial_turn": "defer"}}))
        proc.stdin.flush()
        assert [m["id"] for m in read_lines(proc, 2)] == [1, 2]
        deadline = time.monotonic() + 20
        while '"provider_prepared"' not in (tmp_path / "stderr.log").read_text():
            assert time.monotonic() < deadline, "the default provider was never prepared"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    prepared = [json.loads(s) for s in (tmp_path / "stderr.log").read_text().splitlines() if "provider_prepared" in s]
    assert [p["provider"] for p in prepared] == ["local"]
