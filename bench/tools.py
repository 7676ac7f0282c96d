"""8. Tool round trip (issue 4): what one ``tool/execute`` round trip costs the daemon.

The client declares ``capabilities.tool_execute``, creates a session on the scripted
provider with one tool ``t`` and a script of 1,000 steps that each call ``t`` once, then
a step answering "done", and starts one turn. The daemon sends 1,000 ``tool/execute``
requests, one at a time (each step has one call), interleaved with ``session/event``
notifications; this client answers each the moment it reads it, with
``{"content": "ok", "is_error": false}``.

Per round trip: t_req (the read that brought the ``tool/execute`` line returned), t_ans
(our answer was written) and t_next (the read that brought the next ``tool/execute``, or
the turn's response after the last, returned). The daemon's overhead is
(t_next - t_req) - (t_ans - t_req) = t_next - t_ans: from our answer to the daemon's next
tool call. It covers reading and matching the answer, the ``tool_execution_completed``
event, committing the tool result message, the next (scripted, near-instant) model call
with its argument check, committing the assistant message, the ``usage_reported``,
``tool_call_requested`` and ``tool_execution_started`` events, the request itself and the
pipe both ways. That is two store commits per round trip, so it runs on a fresh ``--db``
file (``synchronous=FULL``: each commit waits for the disk) and on ``--ephemeral``
(in-memory, no disk). As context, one commit of one small row with ``synchronous=FULL``
in WAL mode is timed on its own in the same temp directory, plain ``sqlite3``, no daemon.

The scripted provider re-reads its script and the session's history on every model call,
so a 1,001-step script and a 2,000-message history cost more per call than a short one:
the same 1,000 round trips are also run as 10 sessions of 100 calls, for comparison.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import msgspec

from .client import BenchError, Daemon, Incoming, read_response, result_of
from .results import Section, Target, latency_metric

CALLS = 1_000
SHORT_TURNS = 10
TARGET_MS = Target("<", 1)
TOOL = {"name": "t", "description": "", "input_schema": {"type": "object"}}
_encode = msgspec.json.Encoder().encode


@contextmanager
def tool_daemon(mode: str) -> Iterator[Daemon]:
    """A daemon (``--ephemeral``, or on a fresh ``--db`` file for ``mode`` "db") whose
    client has declared ``capabilities.tool_execute``, so client tools reach it."""
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        args = ("--ephemeral",) if mode == "ephemeral" else ("--db", str(Path(tmp) / "bench.db"))
        daemon = Daemon(*args)
        try:
            daemon.call("initialize", {"protocol_version": 1, "client_info": {"name": "warren-bench", "version": "1"},
                                       "capabilities": {"tool_execute": True}})
            yield daemon
        finally:
            daemon.close()


def _answer(id_: str | int) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + _encode(id_) + b',"result":{"content":"ok","is_error":false}}\n'


def tool_turn(daemon: Daemon, calls: int) -> tuple[list[float], list[float], list[float]]:
    """One turn of ``calls`` round trips: (t_req, t_ans, t_next) lists, ``perf_counter`` seconds."""
    script = [{"tool_calls": [{"name": "t", "arguments": {"i": n}}]} for n in range(calls)] + [{"text": "done"}]
    created = daemon.call("session/create", {"provider": "scripted", "tools": [TOOL], "initial_turn": "defer",
                                             "provider_params": {"script": script}})
    clock = time.perf_counter
    t_req: list[float] = []
    t_ans: list[float] = []
    t_next: list[float] = []
    completed = 0

    def on_line(raw: bytes, msg: Incoming, now: float) -> None:
        nonlocal completed
        if msg.method == "tool/execute":
            if msg.id is None:
                raise BenchError("tool/execute arrived without an id")
            if t_req:
                t_next.append(now)
            t_req.append(now)
            daemon.write(_answer(msg.id))
            t_ans.append(clock())
        elif msg.event_type == "tool_execution_completed":
            completed += 1

    id_ = daemon.send("turn/start", {"session_id": created["session_id"], "prompt": "go"})
    response, now = read_response(daemon, id_, time.monotonic() + 300, on_line)
    if t_req:
        t_next.append(now)
    result = result_of(response)
    if len(t_req) != calls or completed != calls:
        raise BenchError(f"expected {calls} tool/execute requests and completions, got {len(t_req)} and {completed}")
    if result.get("stop_reason") != "end_turn" or result.get("text") != "done" or len(result["tool_calls"]) != calls:
        raise BenchError(f"unexpected turn result: stop_reason {result.get('stop_reason')!r}, "
                         f"{len(result.get('tool_calls') or [])} tool calls")
    return t_req, t_ans, t_next


def sqlite_commit_ms(directory: Path, synchronous: str, count: int = 200) -> list[float]:
    """Milliseconds per commit of one small row, WAL mode, plain ``sqlite3`` (no daemon)."""
    path = directory / f"commit-{synchronous.lower()}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BenchError(f"journal_mode WAL refused here ({mode})")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        out = []
        for i in range(count + 10):
            start = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (body) VALUES (?)", (f"row {i} " + "x" * 100,))
            db.execute("COMMIT")
            if i >= 10:  # the first commits create the WAL file
                out.append((time.perf_counter() - start) * 1000)
        return out
    finally:
        db.close()


def _filesystem(path: Path) -> str:
    """'ext4 on /dev/vda' for the mount holding ``path`` (best effort)."""
    best = ("", "?", "?")
    try:
        real = os.path.realpath(path)
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    except (OSError, ValueError):
        pass
    return f"{best[1]} on {best[2]}"


def run(section: Section, calls: int = CALLS) -> None:
    for mode in ("db", "ephemeral"):
        with tool_daemon(mode) as daemon:
            tool_turn(daemon, 20)  # warm-up: imports jsonschema, fills caches; not counted
            t_req, t_ans, t_next = tool_turn(daemon, calls)
            short: list[float] = []
            for _ in range(SHORT_TURNS):
                _, ans, nxt = tool_turn(daemon, calls // SHORT_TURNS)
                short += [(n - a) * 1000 for a, n in zip(ans, nxt)]
        overhead = [(n - a) * 1000 for a, n in zip(t_ans, t_next)]
        answer = [(a - r) * 1000 for r, a in zip(t_req, t_ans)]
        whole = [(n - r) * 1000 for r, n in zip(t_req, t_next)]
        section.add(latency_metric(section.key, f"daemon overhead per tool round trip ({mode})", overhead, TARGET_MS))
        section.add(latency_metric(section.key, "first 100 round trips", overhead[:100], detail=True))
        section.add(latency_metric(section.key, "last 100 round trips", overhead[-100:], detail=True))
        section.add(latency_metric(section.key, f"same, {SHORT_TURNS} sessions x {calls // SHORT_TURNS} calls "
                                   "(shorter script and history)", short, detail=True))
        section.add(latency_metric(section.key, "client: read tool/execute to answer written", answer, detail=True))
        section.add(latency_metric(section.key, "tool/execute read to next one read", whole, detail=True))
        section.extra[f"turn_seconds_{mode}"] = t_next[-1] - t_req[0]
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        full = sqlite_commit_ms(Path(tmp), "FULL")
        normal = sqlite_commit_ms(Path(tmp), "NORMAL")
        fs = _filesystem(Path(tmp))
    section.add(latency_metric(section.key, "context: one SQLite commit, WAL, synchronous=FULL", full))
    section.add(latency_metric(section.key, "same with synchronous=NORMAL (no fsync per commit)", normal, detail=True))
    section.extra["temp_filesystem"] = fs
    section.note(f"Overhead = t_next - t_ans: from this client's answer to reading the daemon's next tool/execute "
                 f"(for the last, the turn's response), over {calls:,} round trips of one turn.")
    section.note("It includes: answer read and matched, tool_execution_completed event, commit of the tool message, "
                 "the next scripted model call and argument check, commit of the assistant message, the "
                 "usage_reported / tool_call_requested / tool_execution_started events, the tool/execute request, "
                 "and the stdin/stdout pipes. Two commits per round trip; on --db each one waits for an fsync.")
    section.note(f"The shorter-sessions row is the same {calls:,} round trips spread over {SHORT_TURNS} sessions: "
                 "what grows with the script's length and the session's history shows up as the difference.")
    section.note(f"SQLite commits timed in {tempfile.gettempdir()} ({fs}), where the --db files live; "
                 f"{statistics.median(full):.2f} ms each, so two per round trip is "
                 f"{2 * statistics.median(full):.2f} ms of the --db figure.")
