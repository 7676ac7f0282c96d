"""13. ``warren acp`` and MCP tool sources (issue 9).

Four measurements, every daemon ``--ephemeral``:

1. Cold start of ``warren acp``, spawn to its ``initialize`` answer, next to ``warren serve``'s,
   timed by section 1's code (``coldstart.one_start``) with bytecode cached; the two starts
   alternate, so drift in the machine's load hits both alike.
2. Time to the first ``agent_message_chunk``: one ACP session on the scripted provider, whose
   script answers each prompt with a 64-character reply in 8-character chunks; per prompt,
   from writing ``session/prompt`` to the read that brought its first chunk (and, for context,
   to its answer).
3. MCP tool round trip: what a call through an MCP server costs the daemon beyond the server's
   own time. The daemon's ``tool_execution_completed.duration_ms`` is whole milliseconds, too
   coarse, so the time is taken from outside, in two parts:

   - the server's own time: this client spawns the server itself, does the MCP handshake and
     times ``tools/call echo`` (written to answer read, one at a time). That is the pipe both
     ways plus the server's own work: the floor for any client of that server.
   - through the daemon: a Warren session naming the same server, one scripted turn whose
     steps each call ``t__echo`` once. Per call, the interval from the read that brought
     ``tool_execution_started`` to the read that brought ``tool_execution_completed``: the
     daemon sends ``tools/call``, the server answers, the daemon reads, checks and converts
     the answer, logs it and emits the completed event.

   The daemon's share of a call is that interval minus the server's median own time. The
   headline uses the hand-written server (``tests/fakes/mcp_raw_server.py``), which answers
   at once, so little of the interval is the server's; the official SDK's server
   (``tests/fakes/mcp_server.py``) is measured the same way for comparison. As a cross-check
   that owes nothing to where the started event falls, the time per step of the whole turn
   (one started event to the next) is reported beside that of the same turn with an instant
   client tool (section 8's ``tool/execute`` turn, in the same daemon).
4. Resident memory: the daemon's ``VmRSS`` after a warm-up turn with one client tool call
   (so the turn and tool machinery are loaded), then again once a session with the SDK's
   echo server has run one call through it; and the server's own ``VmRSS``.
5. The streamable HTTP transport (``daemon/mcp/http.py``): the SDK's server run with
   ``--http`` on loopback (a separate process, answering each POST with a short SSE stream,
   with keep-alive), the same turn of ``t__echo`` calls naming it by ``url``, and the
   daemon's ``VmRSS`` before and after one call through it in a fresh daemon (which is what
   loading the HTTP stack costs). The server's own time is taken with the standard library's
   ``http.client`` over one kept-alive connection, so it owes nothing to the client under test.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import msgspec

from . import coldstart, tools
from .client import (ROOT, BenchError, Daemon, Incoming, LineProcess, encode_request, proc_status, read_response,
                     result_of)
from .loops import checked_latencies
from .memory import status_mb
from .results import Metric, Section, Target, latency_metric

COLD_STARTS = 20
PROMPTS = 50
PROMPT_WARMUP = 5
REPLY = "Warren's scripted reply, streamed to the editor in 8-character chunks."[:64]
CHUNK_CHARS = 8
MCP_CALLS = 200
MCP_WARMUP = 20
TARGET_MS = Target("<", 2)

RAW_SERVER = ROOT / "tests" / "fakes" / "mcp_raw_server.py"
SDK_SERVER = ROOT / "tests" / "fakes" / "mcp_server.py"
SERVERS = (("hand-written server (mcp_raw_server.py)", RAW_SERVER), ("official SDK server (mcp_server.py)", SDK_SERVER))

CLIENT_INFO = {"name": "warren-bench", "version": "1"}
ACP_INIT_PARAMS = {"protocolVersion": 1, "clientCapabilities": {}, "clientInfo": CLIENT_INFO}
MCP_INIT_PARAMS = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": CLIENT_INFO}
MCP_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
ECHO = {"name": "echo", "arguments": {"text": "hi"}}


class _Completed(msgspec.Struct):
    content: str
    is_error: bool
    duration_ms: int


class _CompletedParams(msgspec.Struct):
    event: _Completed


class _CompletedLine(msgspec.Struct):
    params: _CompletedParams


_decode_completed = msgspec.json.Decoder(_CompletedLine).decode


def run(section: Section) -> None:
    _cold_start(section)
    _first_chunk(section)
    _mcp_round_trip(section)
    _mcp_rss(section)
    _mcp_http(section)


# ---------------------------------------------------------------- 1. cold start


def _cold_start(section: Section, runs: int = COLD_STARTS) -> None:
    fronts = {"serve": coldstart.INIT, "acp": encode_request(1, "initialize", ACP_INIT_PARAMS)}
    samples: dict[str, list[float]] = {command: [] for command in fronts}
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        env = coldstart.cached_bytecode(tmp)
        for command, init in fronts.items():  # warm the page and bytecode caches; not counted
            coldstart.one_start(("--ephemeral",), env, command=command, init=init)
        for _ in range(runs):
            for command, init in fronts.items():
                samples[command].append(coldstart.one_start(("--ephemeral",), env, command=command, init=init))
    acp = section.add(latency_metric(section.key, "cold start warren acp, bytecode cached", samples["acp"]))
    serve = section.add(latency_metric(section.key, "warren serve, measured alongside", samples["serve"], detail=True))
    section.note(f"Cold start: warren acp {acp.value - serve.value:+.1f} ms against warren serve (medians of "
                 f"{runs}, starts alternating; section 1's target for serve is {coldstart.TARGET_MS} ms).")


# ---------------------------------------------------------------- 2. first agent_message_chunk


def _first_chunk(section: Section, prompts: int = PROMPTS, warmup: int = PROMPT_WARMUP) -> None:
    first: list[float] = []
    whole: list[float] = []
    expected = -(-len(REPLY) // CHUNK_CHARS)  # chunks per reply
    with Daemon("--ephemeral", command="acp") as daemon:
        daemon.call("initialize", ACP_INIT_PARAMS)
        script = [{"text": REPLY, "chunk_chars": CHUNK_CHARS}] * (warmup + prompts)
        meta = {"warren": {"provider": "scripted", "provider_params": {"script": script}}}
        session_id = daemon.call("session/new", {"cwd": str(ROOT), "mcpServers": [], "_meta": meta})["sessionId"]
        deadline = time.monotonic() + 120
        for i in range(warmup + prompts):
            id_ = daemon.new_id()
            line = encode_request(id_, "session/prompt",
                                  {"sessionId": session_id, "prompt": [{"type": "text", "text": f"prompt {i}"}]})
            chunks: list[float] = []  # arrival times

            def on_line(raw: bytes, msg: Incoming, now: float) -> None:
                if msg.update_kind == "agent_message_chunk":
                    chunks.append(now)

            start = time.perf_counter()
            daemon.write(line)
            response, end = read_response(daemon, id_, deadline, on_line)
            result = result_of(response)
            if result.get("stopReason") != "end_turn" or len(chunks) != expected:
                raise BenchError(f"prompt {i}: stopReason {result.get('stopReason')!r}, {len(chunks)} chunks "
                                 f"(expected {expected})")
            if i >= warmup:
                first.append((chunks[0] - start) * 1000)
                whole.append((end - start) * 1000)
    section.add(latency_metric(section.key, "ACP session/prompt to first agent_message_chunk", first))
    section.add(latency_metric(section.key, f"to the prompt's answer ({expected} chunks)", whole, detail=True))


# ---------------------------------------------------------------- 3. MCP tool round trip


def _server_spec(path: Path) -> dict[str, Any]:
    return {"name": "t", "command": sys.executable, "args": [str(path)]}


def _own_time(path: Path, calls: int = MCP_CALLS, warmup: int = MCP_WARMUP) -> list[float]:
    """Milliseconds per ``tools/call echo`` of the server at ``path``, spoken to directly."""

    def check(result: Any) -> None:
        if result.get("isError") or result["content"][0].get("text") != "hi":
            raise BenchError(f"{path.name}: unexpected echo result {result!r}")

    with LineProcess([sys.executable, str(path)], name=f"MCP server {path.name}") as server:
        server.call("initialize", MCP_INIT_PARAMS, timeout=30)
        server.write(MCP_INITIALIZED)
        return checked_latencies(server, "tools/call", lambda: ECHO, check, calls, warmup)


def _mcp_turn(daemon: Daemon, spec: dict[str, Any], calls: int) -> tuple[list[float], list[float], list[int]]:
    """One turn of ``calls`` steps each calling ``t__echo`` through the MCP server ``spec``:
    the arrival times (``perf_counter`` seconds) of each call's started and completed events,
    and the daemon's own ``duration_ms`` of each."""
    script = [{"tool_calls": [{"name": "t__echo", "arguments": {"text": "hi"}}]}] * calls + [{"text": "done"}]
    created = daemon.call("session/create", {"provider": "scripted", "initial_turn": "defer", "mcp_servers": [spec],
                                             "provider_params": {"script": script}})
    started: list[float] = []
    completed: list[float] = []
    durations: list[int] = []

    def on_line(raw: bytes, msg: Incoming, now: float) -> None:
        kind = msg.event_type
        if kind == "tool_execution_started":
            started.append(now)
        elif kind == "tool_execution_completed":
            completed.append(now)
            event = _decode_completed(raw).params.event
            if event.is_error or event.content != "hi":
                raise BenchError(f"t__echo through the daemon: {event.content!r}")
            durations.append(event.duration_ms)

    id_ = daemon.send("turn/start", {"session_id": created["session_id"], "prompt": "go"})
    response, _ = read_response(daemon, id_, time.monotonic() + 300, on_line)
    result = result_of(response)
    if len(started) != calls or len(completed) != calls:
        raise BenchError(f"expected {calls} started and completed events, got {len(started)} and {len(completed)}")
    if result.get("stop_reason") != "end_turn" or result.get("text") != "done":
        raise BenchError(f"unexpected turn result: stop_reason {result.get('stop_reason')!r}")
    return started, completed, durations


def _mcp_round_trip(section: Section, calls: int = MCP_CALLS) -> None:
    with tools.tool_daemon("ephemeral") as daemon:
        tools.tool_turn(daemon, MCP_WARMUP)  # warm-up: the tool machinery; not counted
        t_req, _, t_next = tools.tool_turn(daemon, calls)
        client_step = [(n - r) * 1000 for r, n in zip(t_req, t_next)]
        for i, (name, path) in enumerate(SERVERS):
            spec = _server_spec(path)
            _mcp_turn(daemon, spec, MCP_WARMUP)  # starts the server (on first use); not counted
            started, completed, durations = _mcp_turn(daemon, spec, calls)
            own = _own_time(path, calls)
            floor = statistics.median(own)
            through = [(c - s) * 1000 for s, c in zip(started, completed)]
            share = [t - floor for t in through]
            step = [(b - a) * 1000 for a, b in zip(started, started[1:])]
            section.add(latency_metric(section.key, f"MCP call: daemon's share beyond the server's own time, {name}",
                                       share, TARGET_MS if i == 0 else None))
            section.add(latency_metric(section.key, "tool_execution_started to _completed, as read", through,
                                       detail=True))
            section.add(latency_metric(section.key, "the server's own time (tools/call direct, no daemon)", own,
                                       detail=True))
            section.add(latency_metric(section.key, "per step of the turn (started to next started)", step,
                                       detail=True))
            section.extra[f"duration_ms_median_{path.stem}"] = statistics.median(durations)
            section.extra[f"same_read_{path.stem}"] = sum(t == 0 for t in through)
            section.extra[f"step_ms_median_{path.stem}"] = statistics.median(step)
        client = section.add(latency_metric(section.key, "per step with an instant client tool instead (tool/execute)",
                                            client_step, detail=True))
    section.note(f"MCP: {calls} calls of t__echo in one scripted turn, one call per step, on warren serve "
                 "--ephemeral. Daemon's share = (read of tool_execution_started to read of "
                 "tool_execution_completed) - the median time of the same server answering tools/call echo to "
                 "this client directly (spawned by the bench, after the MCP handshake). Target on the median; "
                 "p99 shown.")
    section.note("The raw server echoes every line it reads to its stderr, which the daemon reads and logs "
                 "(mcp_stderr): that work is in the daemon's share; speaking to it directly, stderr is /dev/null. "
                 "The started line is written by the daemon's writer task as the tools/call goes out; if it lags, "
                 "the interval shrinks, so compare the per-step rows, which don't depend on it.")
    section.note("Per step, median: " + ", ".join(
        f"{path.name} {section.extra[f'step_ms_median_{path.stem}']:.2f} ms "
        f"({section.extra[f'step_ms_median_{path.stem}'] - client.value:+.2f} ms against the client tool's "
        f"{client.value:.2f} ms)" for _, path in SERVERS) + ".")
    section.note("duration_ms reported by the daemon (whole ms, median): "
                 + ", ".join(f"{path.name} {section.extra[f'duration_ms_median_{path.stem}']:g}" for _, path in SERVERS)
                 + "; calls whose started and completed lines came in one read: "
                 + ", ".join(f"{path.name} {section.extra[f'same_read_{path.stem}']}" for _, path in SERVERS) + ".")


# ---------------------------------------------------------------- 4. RSS with one MCP server


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _mcp_rss(section: Section) -> None:
    with tools.tool_daemon("ephemeral") as daemon:
        tools.tool_turn(daemon, 1)  # load the turn and tool machinery before "before"
        before = status_mb(daemon.status()["VmRSS"])
        _mcp_turn(daemon, _server_spec(SDK_SERVER), 1)
        after = status_mb(daemon.status()["VmRSS"])
        servers = [c for c in _children(daemon.pid)
                   if SDK_SERVER.name.encode() in Path(f"/proc/{c}/cmdline").read_bytes()]
        if len(servers) != 1:
            raise BenchError(f"expected one {SDK_SERVER.name} child of the daemon, found {len(servers)}")
        server = status_mb(proc_status(servers[0])["VmRSS"])
    section.add(Metric(section.key, "daemon RSS (VmRSS) with one MCP server attached, after one call", "MB", after))
    section.add(Metric(section.key, "same daemon before (after a turn with one client tool call)", "MB", before,
                       detail=True))
    section.add(Metric(section.key, "growth", "MB", after - before, detail=True))
    section.add(Metric(section.key, f"the server's own RSS ({SDK_SERVER.name}, official mcp SDK)", "MB", server))


# ---------------------------------------------------------------- 5. streamable HTTP


@contextmanager
def _http_server() -> Iterator[str]:
    """The SDK fake served over streamable HTTP on a free loopback port: its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SDK_SERVER), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the SDK HTTP server did not start (exit status {proc.poll()})") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http_own_time(url: str, calls: int = MCP_CALLS, warmup: int = MCP_WARMUP) -> list[float]:
    """Milliseconds per ``tools/call echo`` POST (sent to the whole SSE answer read), with
    ``http.client`` on one connection: the floor for any client of that server."""
    host_port = url.split("/")[2]
    conn = http.client.HTTPConnection(host_port, timeout=30)
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

    def post(message: dict[str, Any]) -> tuple[http.client.HTTPResponse, bytes]:
        conn.request("POST", "/mcp", msgspec.json.encode(message), headers)
        response = conn.getresponse()
        return response, response.read()

    response, _ = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": MCP_INIT_PARAMS})
    headers["mcp-session-id"] = response.headers["mcp-session-id"]
    headers["mcp-protocol-version"] = MCP_INIT_PARAMS["protocolVersion"]
    post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    out: list[float] = []
    try:
        for i in range(warmup + calls):
            start = time.perf_counter()
            response, body = post({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": ECHO})
            elapsed = (time.perf_counter() - start) * 1000
            if response.status != 200 or b'"text":"hi"' not in body.replace(b" ", b""):
                raise BenchError(f"tools/call echo over HTTP: HTTP {response.status}: {body[:200]!r}")
            if i >= warmup:
                out.append(elapsed)
    finally:
        conn.close()
    return out


def _mcp_http(section: Section, calls: int = MCP_CALLS) -> None:
    with _http_server() as url:
        spec = {"name": "t", "url": url}
        with tools.tool_daemon("ephemeral") as daemon:
            tools.tool_turn(daemon, 1)  # load the turn and tool machinery before "before"
            before = status_mb(daemon.status()["VmRSS"])
            _mcp_turn(daemon, spec, 1)
            after = status_mb(daemon.status()["VmRSS"])
            _mcp_turn(daemon, spec, MCP_WARMUP)  # not counted
            started, completed, _ = _mcp_turn(daemon, spec, calls)
        own = _http_own_time(url, calls)
    floor = statistics.median(own)
    through = [(c - s) * 1000 for s, c in zip(started, completed)]
    step = [(b - a) * 1000 for a, b in zip(started, started[1:])]
    section.add(latency_metric(section.key, "MCP call over streamable HTTP (SDK server): tool_execution_started to "
                                            "_completed, as read", through))
    section.add(latency_metric(section.key, "daemon's share beyond the server's own time", [t - floor for t in through],
                               detail=True))
    section.add(latency_metric(section.key, "the server's own time (POST tools/call with http.client, no daemon)",
                               own, detail=True))
    section.add(latency_metric(section.key, "per step of the turn (started to next started)", step, detail=True))
    section.add(Metric(section.key, "daemon RSS (VmRSS) with one HTTP MCP server attached, after one call", "MB",
                       after))
    section.add(Metric(section.key, "same daemon before (after a turn with one client tool call)", "MB", before,
                       detail=True))
    section.add(Metric(section.key, "growth (the HTTP transport loaded, one connection)", "MB", after - before,
                       detail=True))
