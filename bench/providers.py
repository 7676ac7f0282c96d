"""7. The real-provider path (issue 3): 2,000-delta turns from a local OpenAI-compatible server.

The daemon talks HTTP to ``tests.fakes.llm_server.FakeLLMServer``, which runs in a thread of
this process on 127.0.0.1 and is configured as provider ``fake`` (``type = "openai"``)
through a ``--config`` file; the daemon uses a fresh database file. One session is
created with ``initial_turn: "defer"``, then ``turn/start`` is called 2 times uncounted
(the first imports the HTTP client, ``wire``, and opens the connection) and 50 times measured, one at a time.
Every turn the server streams the OpenAI wire format as fast as it can: the role chunk,
2,000 one-character ``content`` chunks, the finish chunk, the usage chunk and ``[DONE]``,
each its own chunk of the chunked body (pre-encoded, so that the server thread spends as
little of this process's CPU and GIL as possible).

First-delta latency, the daemon's own: when this client read its first ``text_delta``
minus when the server started writing the first byte of the response body
(``Exchange.first_byte_at``, taken just before the role chunk is written; the response
head went out just before that). It covers loopback TCP, ``wire``'s HTTP parsing, SSE decoding, chunk
decoding, the turn loop, event encoding, the stdout pipe and this client's read. The
fake server records ``time.time()``, so the client side uses ``time.time()`` too: one
clock, one process. The wall clock can be stepped, so a turn during which
``time.time() - time.monotonic()`` moved by more than 0.25 ms is left out (and counted).
The server thread shares this process's GIL with the client, so the GIL switch interval
is lowered for the section (see ``SWITCH_INTERVAL_S``).

Two diagnostics explain that number. 20 more turns ("paced") stall the server for 20 ms
after the first content chunk, so the first delta is alone in flight: the path's own
latency. And the number of ``text_delta`` lines in the client's first read that had any
shows how many deltas the daemon held back before its first write: with a fast stream it
parses what one socket read brought (up to 64 KiB, some 300 chunks) before its writer
task gets to run.

Deltas per second: 2,000 over the whole turn, from writing ``turn/start`` to reading its
response (so it includes the claim commit, the HTTP request and the final commit);
exactly 2,000 ``text_delta`` notifications must arrive per turn, and the turn's text
must be the 2,000 characters. The server's own send rate is shown beside it: it runs in
this process and caps what the daemon can be given. "turn/start written to HTTP request
received" is the daemon's time to first byte on the wire to the provider (claim commit,
history read, request body, ``wire`` writing it), plus the fake server reading the request.

CPU: ``utime + stime`` of the daemon process (all its threads) from ``/proc/PID/stat``
before and after the 50 measured turns (not the paced ones), per 1,000 deltas. The fake
server's CPU is spent in this process, not the daemon's.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .client import ROOT, BenchError, Daemon, encode_request, read_turn, result_of
from .results import Metric, Section, Target, latency_metric, summarize

DELTAS = 2_000
TURNS = 50
PACED_TURNS = 20
PAUSE_S = 0.02
WARMUP = 2
#: The fake server's thread and this client share the GIL. At the default 5 ms switch
#: interval a thread woken by I/O (the client, when the daemon's line arrives) can wait
#: that long for the GIL while the server thread, between two short send() calls, keeps
#: retaking it; so the client would read late and the daemon would look slow.
SWITCH_INTERVAL_S = 5e-5
LATENCY_TARGET = Target("<", 2)
CPU_TARGET = Target("<", 0.05)
MAX_CLOCK_DRIFT_S = 2.5e-4


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds (``/proc/PID/stat`` fields 14, 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ", field 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wall_offset() -> float:
    """``time.time() - time.monotonic()``; the median of three, in case of a preemption."""
    return sorted(time.time() - time.monotonic() for _ in range(3))[1]


@dataclass
class _Turn:
    seconds: float  # turn/start written to its response read
    first_delta_ms: float  # first text_delta read - server's first body byte
    first_content_ms: float  # first text_delta read - server wrote the first content chunk
    last_delta_ms: float  # 2,000th text_delta read - server wrote the last content chunk
    request_ms: float  # turn/start written - server received the HTTP request
    server_send_s: float  # server: first body byte to last chunk written
    first_batch: int  # text_delta lines in the client's first read that had any
    clock_ok: bool


def turn_exchange(server: Any, before: int, what: str) -> Any:
    """The one chat completion request a turn made, once the server has finished with it;
    ``before`` is how many exchanges the server had recorded before the turn."""
    exchanges = server.exchanges
    if len(exchanges) != before + 1:
        raise BenchError(f"{what}: the server saw {len(exchanges) - before} requests, expected 1")
    ex = exchanges[-1]
    if not ex.done.wait(10) or ex.outcome != "complete" or not ex.path.endswith("/chat/completions"):
        raise BenchError(f"{what}: exchange {ex.method} {ex.path} ended {ex.outcome!r}")
    return ex


def _stream_response(pause_s: float = 0.0) -> Any:
    """The 2,000-delta stream, pre-encoded; ``pause_s`` stalls it after the first content chunk."""
    from tests.fakes.llm_server import Event, RawLine, SSEResponse, Stall, openai_events, openai_usage

    steps: list[Any] = [RawLine(s.encode()) if isinstance(s, Event) else s
                        for s in openai_events("x" * DELTAS, chunk=1, usage=openai_usage(19, DELTAS))]
    if pause_s:
        steps.insert(2, Stall(pause_s))  # after the role chunk and the first content chunk
    return SSEResponse(steps)


def _turn(daemon: Daemon, server: Any, session_id: str, n: int) -> _Turn:
    before = len(server.exchanges)
    id_ = daemon.new_id()
    line = encode_request(id_, "turn/start", {"session_id": session_id, "prompt": f"turn {n}"})
    deadline = time.monotonic() + 60
    deltas = 0
    first_batch = 0
    first_wall = last_wall = 0.0
    offset = wall_offset()
    start_wall = time.time()
    start = time.perf_counter()
    def on_read(n: int, _lines: int) -> None:
        nonlocal deltas, first_batch, first_wall, last_wall
        if not n:
            return
        now = time.time()  # the fake server's clock
        if not deltas:
            first_wall, first_batch = now, n
        deltas += n
        last_wall = now

    daemon.write(line)
    response = read_turn(daemon, id_, deadline, on_read)
    elapsed = time.perf_counter() - start
    clock_ok = abs(wall_offset() - offset) <= MAX_CLOCK_DRIFT_S
    result = result_of(response)
    if deltas != DELTAS:
        raise BenchError(f"turn {n}: expected {DELTAS} text_delta notifications, got {deltas}")
    if result.get("text") != "x" * DELTAS or result.get("stop_reason") != "end_turn":
        raise BenchError(f"turn {n}: unexpected result (stop_reason {result.get('stop_reason')!r}, "
                         f"{len(result.get('text') or '')} characters of text)")
    ex = turn_exchange(server, before, f"turn {n}")
    # steps: role chunk, DELTAS content chunks, finish, usage, [DONE]
    if ex.first_byte_at is None or len(ex.step_times) != DELTAS + 4:
        raise BenchError(f"turn {n}: the server recorded {len(ex.step_times)} chunks")
    return _Turn(
        seconds=elapsed,
        first_delta_ms=(first_wall - ex.first_byte_at) * 1000,
        first_content_ms=(first_wall - ex.step_times[1]) * 1000,
        last_delta_ms=(last_wall - ex.step_times[DELTAS]) * 1000,
        request_ms=(ex.received_at - start_wall) * 1000,
        server_send_s=ex.step_times[-1] - ex.first_byte_at,
        first_batch=first_batch,
        clock_ok=clock_ok,
    )


@contextmanager
def low_switch_interval() -> Iterator[None]:
    """The GIL switch interval at ``SWITCH_INTERVAL_S`` meanwhile, for a fake server thread."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(switch)


@contextmanager
def fake_provider_daemon(default: Callable[[Any], Any] | None = None) -> Iterator[tuple[Daemon, Any]]:
    """An initialized daemon on a fresh ``--db`` file, and the ``FakeLLMServer`` (a thread of
    this process) it knows as provider ``fake`` (``type = "openai"``, model ``m``) through a
    ``--config`` file. ``default(exchange)`` answers every request; None: the server's own
    short reply."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests.fakes, whatever the working directory
    from tests.fakes.llm_server import FakeLLMServer

    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp, FakeLLMServer(default=default) as server:
        config = Path(tmp) / "config.toml"
        config.write_text(f'[providers.fake]\ntype = "openai"\nbase_url = "{server.openai_base_url}"\n'
                          'default_model = "m"\n')
        with Daemon("--db", str(Path(tmp) / "bench.db"), "--config", str(config)) as daemon:
            daemon.initialize()
            yield daemon, server


def run(section: Section, turns: int = TURNS, paced_turns: int = PACED_TURNS) -> None:
    with low_switch_interval():
        fast, paced, cpu, wall = _measure(turns, paced_turns)
    _report(section, fast, paced, cpu, wall)


def _measure(turns: int, paced_turns: int) -> tuple[list[_Turn], list[_Turn], float, float]:
    responses: dict[str, Any] = {}
    current = ["fast"]
    with fake_provider_daemon(lambda exchange: responses[current[0]]) as (daemon, server):
        responses.update(fast=_stream_response(), paced=_stream_response(PAUSE_S))
        created = daemon.call("session/create", {"provider": "fake", "initial_turn": "defer"})
        session_id: str = created["session_id"]
        for n in range(WARMUP):
            _turn(daemon, server, session_id, -1 - n)
        cpu_before = proc_cpu_seconds(daemon.pid)
        start = time.perf_counter()
        fast = [_turn(daemon, server, session_id, n) for n in range(turns)]
        wall = time.perf_counter() - start
        cpu = proc_cpu_seconds(daemon.pid) - cpu_before
        current[0] = "paced"
        paced = [_turn(daemon, server, session_id, turns + n) for n in range(paced_turns)]
    return fast, paced, cpu, wall


def _report(section: Section, fast: list[_Turn], paced: list[_Turn], cpu: float, wall: float) -> None:
    turns = len(fast)
    good = [s for s in fast if s.clock_ok]
    good_paced = [s for s in paced if s.clock_ok]
    if not good or not good_paced:
        raise BenchError("the wall clock moved during every turn; no latency sample is usable")
    total = DELTAS * turns
    rates = [DELTAS / s.seconds for s in fast]
    server_rates = [DELTAS / s.server_send_s for s in fast]
    key = section.key
    section.add(latency_metric(key, "first text_delta after the server's first body byte",
                               [s.first_delta_ms for s in good], LATENCY_TARGET))
    section.add(latency_metric(key, f"same, server pausing {PAUSE_S * 1000:.0f} ms after the first content chunk",
                               [s.first_content_ms for s in good_paced], detail=True))
    batch = summarize([float(s.first_batch) for s in good])
    section.add(Metric(key, "text_deltas in the client's first read that had any", "deltas", batch["median"],
                       len(good), batch, detail=True))
    section.add(latency_metric(key, "last text_delta after the server wrote the last content chunk",
                               [s.last_delta_ms for s in good], detail=True))
    section.add(latency_metric(key, "turn/start written to HTTP request received",
                               [s.request_ms for s in good + good_paced]))
    section.add(Metric(key, "text_delta delivered end to end, turn/start to response", "deltas/s",
                       statistics.median(rates), turns, {"min": min(rates), "max": max(rates)}))
    section.add(Metric(key, "fake server's own send rate (in the bench process)", "deltas/s",
                       statistics.median(server_rates), turns, {"min": min(server_rates), "max": max(server_rates)},
                       detail=True))
    section.add(Metric(key, "daemon CPU per 1,000 deltas", "CPU-s", cpu / total * 1000, turns, target=CPU_TARGET))
    section.extra.update({"deltas_per_turn": DELTAS, "turns": turns, "paced_turns": len(paced),
                          "daemon_cpu_s": cpu, "wall_s": wall, "switch_interval_s": SWITCH_INTERVAL_S,
                          "clock_skipped_turns": len(fast) + len(paced) - len(good) - len(good_paced)})
    section.note(f"{turns} turns x {DELTAS:,} one-character deltas sent as fast as the server can, in {wall:.1f} s: "
                 f"the daemon used {cpu:.2f} CPU-s ({cpu / wall:.0%} of a core, {cpu / total * 1e6:.1f} us per delta).")
    section.note("First-delta latency = this client read its first text_delta minus the server's first body byte "
                 "(both time.time(), one process): loopback TCP, HTTP (wire.py), SSE parsing, turn loop, event encoding, "
                 "stdout pipe. Paced: the server stalls after the first content chunk, so nothing else is in flight.")
    section.note(f"The bench's GIL switch interval is {SWITCH_INTERVAL_S * 1e6:.0f} us during this section, so the "
                 "server thread cannot hold this client's reads back by up to 5 ms.")
    skipped = section.extra["clock_skipped_turns"]
    if skipped:
        section.note(f"{skipped} turn(s) left out of the latencies: the wall clock moved meanwhile.")
