"""2. ``session/read`` round trips per second, and 3. ``text_delta`` events per second.

Both run against a daemon on a fresh database file (the configuration users run) and again
with ``--ephemeral``, whose store is one in-memory connection that queues reads behind
writes, so the two can differ.

Round trips: one small session is created, then read 5,000 times one at a time and 5,000
times with 64 in flight, after a short warm-up. Events: one scripted turn streams 20,000
one-character deltas with no delay; the clock runs from writing ``session/create`` to
reading its response, every ``text_delta`` in between is counted, and the count must be
exactly 20,000 (events are written before the response, PROTOCOL.md §4). Three turns per
mode; the headline is the median rate.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .client import BenchError, Daemon, encode_request, read_turn, result_of
from .loops import pipelined, sequential
from .results import Metric, Section, Target, latency_metric

RT_TARGET = Target(">", 5_000)
DELTA_TARGET = Target(">", 50_000)
DELTAS = 20_000


@contextmanager
def daemon_in(mode: str) -> Iterator[Daemon]:
    """A started daemon in ``mode`` ("db": a fresh file in a temp dir, or "ephemeral")."""
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        args = ("--ephemeral",) if mode == "ephemeral" else ("--db", str(Path(tmp) / "bench.db"))
        daemon = Daemon(*args)
        try:
            daemon.initialize()
            yield daemon
        finally:
            daemon.close()


def run_round_trips(section: Section, count: int = 5_000, window: int = 64) -> None:
    for mode in ("db", "ephemeral"):
        with daemon_in(mode) as daemon:
            created = daemon.call("session/create", {"prompt": "hi", "provider": "scripted"})
            session_id: str = created["session_id"]
            prefix = b'{"jsonrpc":"2.0","id":'
            suffix = b',"method":"session/read","params":{"session_id":"' + session_id.encode() + b'"}}\n'

            def make(id_: int) -> bytes:
                return prefix + str(id_).encode() + suffix

            sequential(daemon, make, 200)  # warm-up
            start = time.perf_counter()
            samples = sequential(daemon, make, count)
            seconds = time.perf_counter() - start
            section.add(Metric(section.key, f"session/read sequential ({mode})", "req/s",
                               count / seconds, count, target=RT_TARGET))
            section.add(latency_metric(section.key, f"session/read latency, 1 in flight ({mode})", samples,
                                              detail=True))
            seconds = pipelined(daemon, make, count, window)
            section.add(Metric(section.key, f"session/read pipelined x{window} ({mode})", "req/s",
                               count / seconds, count, target=RT_TARGET))


def _delta_turn(daemon: Daemon) -> tuple[float, float]:
    """One 20,000-delta turn: (seconds until the response, seconds until the first delta)."""
    params = {
        "prompt": "stream",
        "provider": "scripted",
        "provider_params": {"script": [{"text": "x" * DELTAS, "chunk_chars": 1}]},
    }
    id_ = daemon.new_id()
    line = encode_request(id_, "session/create", params)
    deadline = time.monotonic() + 120
    deltas = 0
    first = 0.0

    def on_read(n: int) -> None:
        nonlocal deltas, first
        if n and not deltas:
            first = time.perf_counter() - start
        deltas += n

    start = time.perf_counter()
    daemon.write(line)
    response = read_turn(daemon, id_, deadline, on_read)
    elapsed = time.perf_counter() - start
    result = result_of(response)
    if deltas != DELTAS:
        raise BenchError(f"expected {DELTAS} text_delta notifications, got {deltas}")
    if len(result["text"]) != DELTAS:
        raise BenchError(f"the turn's text has {len(result['text'])} characters, expected {DELTAS}")
    return elapsed, first


def run_deltas(section: Section, runs: int = 3) -> None:
    for mode in ("db", "ephemeral"):
        with daemon_in(mode) as daemon:
            daemon.call("session/create", {"prompt": "warm-up", "provider": "scripted"})
            turns = [_delta_turn(daemon) for _ in range(runs)]
        rates = [DELTAS / t for t, _ in turns]
        section.add(Metric(section.key, f"text_delta delivered ({mode})", "deltas/s", statistics.median(rates),
                           runs, {"min": min(rates), "max": max(rates)}, DELTA_TARGET))
        section.add(latency_metric(section.key, f"20,000-delta turn, request to response ({mode})",
                                   [t * 1000 for t, _ in turns], detail=True))
        section.add(latency_metric(section.key, f"request to first text_delta ({mode})",
                                   [f * 1000 for _, f in turns], detail=True))
