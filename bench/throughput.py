"""2. ``session/read`` round trips per second, and 3. ``text_delta`` events per second.

Both run against a daemon on a fresh database file (the configuration users run) and again
with ``--ephemeral``, whose store is one in-memory connection that queues reads behind
writes, so the two can differ.

Round trips: one small session is created, then read 5,000 times one at a time and 5,000
times with 64 in flight, after a short warm-up. Events: one scripted turn streams 20,000
one-character deltas with no delay; the clock runs from writing ``session/create`` to
reading its response, every ``text_delta`` in between is counted, and the count must be
exactly 20,000 (events are written before the response, PROTOCOL.md §4). A line whose
``seq_first`` is set carries the deltas ``seq_first``..``seq`` (the daemon merges them while
more than ``limits.coalesce_after_lines`` lines wait for this client, PROTOCOL.md §8).
Five turns per mode; the headline is the median rate.

Since events are stored (PROTOCOL.md §8) the same turns run once more with merging off
(``--coalesce-after-lines`` huge), one line per delta as when the previous figures were
taken, and are compared with those: storing may cost at most 10%.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from .client import BenchError, Daemon, encode_request, read_turn, result_of
from .loops import pipelined, sequential
from .results import Metric, Section, Target, latency_metric

RT_TARGET = Target(">", 5_000)
DELTA_TARGET = Target(">", 50_000)
DELTAS = 20_000


@contextmanager
def daemon_in(mode: str, *extra: str) -> Iterator[Daemon]:
    """A started daemon in ``mode`` ("db": a fresh file in a temp dir, or "ephemeral"),
    with ``extra`` command-line arguments."""
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        args = ("--ephemeral",) if mode == "ephemeral" else ("--db", str(Path(tmp) / "bench.db"))
        daemon = Daemon(*args, *extra)
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


class DeltaTurn(NamedTuple):
    seconds: float  # request written to response read
    first: float  # request written to the first text_delta read
    lines: int  # text_delta lines read (fewer than the deltas when the daemon merged them)


def delta_script(deltas: int) -> dict[str, Any]:
    """``provider_params`` for one model call streaming ``deltas`` one-character deltas."""
    return {"script": [{"text": "x" * deltas, "chunk_chars": 1}]}


def delta_turn(daemon: Daemon, deltas: int = DELTAS, session_id: str | None = None,
               timeout: float = 120) -> DeltaTurn:
    """One turn of ``deltas`` deltas, read as fast as this client can: ``session/create``
    with the prompt, or ``turn/start`` on ``session_id``. Every delta must arrive, one per
    line or merged (``seq_first``), and the turn's text must hold them all."""
    params: dict[str, Any] = {"prompt": "stream", "provider_params": delta_script(deltas)}
    if session_id is None:
        method, params["provider"] = "session/create", "scripted"
    else:
        method, params["session_id"] = "turn/start", session_id
    id_ = daemon.new_id()
    line = encode_request(id_, method, params)
    deadline = time.monotonic() + timeout
    got = lines = 0
    first = 0.0

    def on_read(n: int, n_lines: int) -> None:
        nonlocal got, lines, first
        if n and not got:
            first = time.perf_counter() - start
        got += n
        lines += n_lines

    start = time.perf_counter()
    daemon.write(line)
    response = read_turn(daemon, id_, deadline, on_read)
    elapsed = time.perf_counter() - start
    check_delta_turn(result_of(response), deltas, got)
    return DeltaTurn(elapsed, first, lines)


def check_delta_turn(result: Any, expected: int, got: int) -> None:
    if got != expected:
        raise BenchError(f"expected {expected} text_delta events, got {got}")
    if len(result["text"]) != expected:
        raise BenchError(f"the turn's text has {len(result['text'])} characters, expected {expected}")


#: ``text_delta delivered`` before events were stored (commit e2ac1c2), for comparison.
BEFORE_EVENTS = {"db": 324_000, "ephemeral": 357_000}
STORE_COST_TARGET = Target(">=", 0.9)  # storing events costs at most 10%
NO_COALESCING = ("--coalesce-after-lines", str(10**9))


def run_deltas(section: Section, runs: int = 5) -> None:
    for mode in ("db", "ephemeral"):
        for merged in (True, False):
            with daemon_in(mode, *(() if merged else NO_COALESCING)) as daemon:
                daemon.call("session/create", {"prompt": "warm-up", "provider": "scripted"})
                turns = [delta_turn(daemon) for _ in range(runs)]
            rates = [DELTAS / t.seconds for t in turns]
            rate = statistics.median(rates)
            spread = {"min": min(rates), "max": max(rates)}
            if merged:
                section.add(Metric(section.key, f"text_delta delivered ({mode})", "deltas/s", rate, runs, spread,
                                   DELTA_TARGET))
                lines = [float(t.lines) for t in turns]
                section.add(Metric(section.key, f"lines that carried the {DELTAS:,} deltas, merged for a slow "
                                   f"reader ({mode})", "lines", statistics.median(lines), runs,
                                   {"min": min(lines), "max": max(lines)}, detail=True))
                section.add(latency_metric(section.key, f"20,000-delta turn, request to response ({mode})",
                                           [t.seconds * 1000 for t in turns], detail=True))
                section.add(latency_metric(section.key, f"request to first text_delta ({mode})",
                                           [t.first * 1000 for t in turns], detail=True))
                section.add(Metric(section.key, f"ratio to before events were stored ({mode})", "x",
                                   rate / BEFORE_EVENTS[mode], detail=True))
            else:
                section.add(Metric(section.key, f"one line per delta, as before ({mode})", "deltas/s", rate, runs,
                                   spread))
                section.add(Metric(section.key, f"before events were stored ({mode})", "deltas/s",
                                   BEFORE_EVENTS[mode], detail=True))
                section.add(Metric(section.key, f"ratio now / before: storing costs at most 10% ({mode})", "x",
                                   rate / BEFORE_EVENTS[mode], target=STORE_COST_TARGET))
    section.note("The daemon merges adjacent deltas once more than limits.coalesce_after_lines (1,024) lines wait "
                 "for the client (PROTOCOL.md §8), so the headline counts deltas, not lines.")
    section.note(f"'One line per delta' runs the daemon with {' '.join(NO_COALESCING)}: every delta is its own "
                 "line, as when the previous figures were taken (commit e2ac1c2, before events were stored); "
                 f"the ratio is against those figures ({BEFORE_EVENTS['db']:,}/s --db, "
                 f"{BEFORE_EVENTS['ephemeral']:,}/s --ephemeral), which are constants, not re-measured by this run: "
                 "the ratio means something only on the machine that took them.")
