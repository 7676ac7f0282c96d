"""Durable events (PROTOCOL.md §8): replay, cross-daemon subscriptions, a paused client.

Replay. A fresh ``--db`` daemon runs one 20,000-delta scripted turn (read to its end), then
the stored events are read back through the pipe twice, three times each: (a) paging with
``session/events`` (``limit`` 1000, each page's ``after_seq`` taken from the last one's
``next_seq``), clock from the first request written to the last page's response read; (b)
``session/subscribe`` with ``after_seq: 0``, clock from the request written to its response
read, which comes after every replayed notification (then ``session/unsubscribe``). Both
must yield every stored event exactly once, ``seq`` 1, 2, 3 … with no hole.

Cross-daemon latency. Daemons A and B serve one ``--db`` file; both subscribe to one
session (B to follow it, A so that its client also receives the events of a change to the
idle session). A then alternates turns (one scripted model call, a few deltas) and
``session/append_system_context`` on the idle session, one at a time, while this client
reads both pipes with one ``select``. A sample is the time from reading an event from A to
reading the same ``seq`` from B. Only events that are stored the moment they are sent
count: ``system_context_applied`` and ``turn_completed``, one per commit (A sends them
after their commit; ``usage`` shares ``turn_completed``'s commit and is shown apart). A turn's deltas and ``turn_started`` are stored only by the commit that
ends its model call, so B cannot have them earlier; their lag is shown apart, without a
target. B must see every seq once, in order.

Paused client. A ``--db`` daemon runs one 200,000-delta turn (``chunk_chars`` 1) on a
deferred session while this client reads nothing from its stdout for the whole turn; a
second daemon on the same file polls ``session/read`` (``is_active``) to see the turn
start and end, and the paused daemon's ``/proc`` status is sampled meanwhile. Then the
client reads everything: every delta must arrive (merged lines carry ``seq_first``..``seq``)
and the text must be whole. The same turn with a client that reads all along is the
comparison (request to response). Both turns' own duration is also taken from the daemon's
stamps: ``turn_completed.timestamp_ms - turn_started.timestamp_ms`` from ``session/events``.
Each daemon is fresh, so its ``VmHWM`` is that turn's peak.
"""

from __future__ import annotations

import select
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from .client import BenchError, Daemon, Incoming, decode, encode_request, read_turn
from .memory import status_mb
from .results import Metric, Section, Target, latency_metric, summarize
from .throughput import DELTAS, check_delta_turn, daemon_in, delta_script, delta_turn

REPLAY_TARGET = Target(">=", 200_000)
PAGE_LIMIT = 1000
REPLAY_RUNS = 3

CROSS_MEDIAN_TARGET = Target("<", 20)
CROSS_P99_TARGET = Target("<", 100)
CROSS_ROUNDS = 120  # each: one turn (usage + turn_completed) and one append (system_context_applied)
#: Stored in the commit they report, one per commit (a one-call turn's ``usage`` shares
#: ``turn_completed``'s commit, so it is shown but not counted twice).
TIMED = ("system_context_applied", "turn_completed")
STORED_AT_ONCE = (*TIMED, "usage")

PAUSED_DELTAS = 200_000
PAUSED_RUNS = 2
POLL_S = 0.002


class _Seq(msgspec.Struct):
    seq: int


class _Page(msgspec.Struct):
    events: list[_Seq]
    next_seq: int
    has_more: bool


_page = msgspec.json.Decoder(_Page).decode


def _deferred_session(daemon: Daemon, **extra: Any) -> str:
    created = daemon.call("session/create", {"provider": "scripted", "initial_turn": "defer", **extra})
    return str(created["session_id"])


def _check_seqs(seqs: list[int], what: str) -> None:
    if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise BenchError(f"{what}: seqs are not one contiguous run ({len(seqs)} events)")


# ---------------------------------------------------------------------- replay


def _page_all(daemon: Daemon, session_id: str) -> tuple[float, list[int], list[float]]:
    """Every stored event through ``session/events``: (seconds, seqs, per-page ms)."""
    seqs: list[int] = []
    pages: list[float] = []
    after = 0
    start = time.perf_counter()
    while True:
        sent = time.perf_counter()
        page = _page(daemon.wait(daemon.send("session/events", {"session_id": session_id, "after_seq": after,
                                                               "limit": PAGE_LIMIT})).result)
        pages.append((time.perf_counter() - sent) * 1000)
        seqs += [e.seq for e in page.events]
        if not page.has_more:
            break
        after = page.next_seq - 1
    return time.perf_counter() - start, seqs, pages


def _subscribe_all(daemon: Daemon, session_id: str) -> tuple[float, list[int]]:
    """Every stored event through ``session/subscribe`` ``after_seq: 0``: (seconds, seqs)."""
    seqs: list[int] = []
    id_ = daemon.new_id()
    line = encode_request(id_, "session/subscribe", {"session_id": session_id, "after_seq": 0})
    deadline = time.monotonic() + 60
    start = time.perf_counter()
    daemon.write(line)
    response = None
    while response is None:
        for raw in daemon.read_lines(deadline):
            if not raw:
                continue
            msg = decode(raw)
            if msg.method == "session/event":
                if msg.params is None or not msg.params.replay:
                    raise BenchError(f"a live event (seq {msg.seq}) arrived during the replay")
                seqs.append(msg.seq)
            elif msg.id == id_:
                response = msg
    elapsed = time.perf_counter() - start
    if response.error is not None:
        raise BenchError(f"session/subscribe failed: {response.error}")
    subscription = msgspec.json.decode(response.result)["subscription_id"]
    daemon.call("session/unsubscribe", {"subscription_id": subscription})
    return elapsed, seqs


def run_replay(section: Section) -> None:
    with daemon_in("db") as daemon:
        session_id = _deferred_session(daemon)
        delta_turn(daemon, DELTAS, session_id)
        _page_all(daemon, session_id)  # warm-up: page cache, statement cache; not counted
        paged = [_page_all(daemon, session_id) for _ in range(REPLAY_RUNS)]
        subscribed = [_subscribe_all(daemon, session_id) for _ in range(REPLAY_RUNS)]
    expected = paged[0][1]
    for _, seqs, _ in paged:
        _check_seqs(seqs, "session/events")
    for _, seqs in subscribed:
        _check_seqs(seqs, "session/subscribe replay")
    if expected[0] != 1 or any(s != expected for _, s, _ in paged) or any(s != expected for _, s in subscribed):
        raise BenchError(f"the replays disagree on the stored events (first seq {expected[0]}, {len(expected)} paged)")
    total = len(expected)
    if total < DELTAS:
        raise BenchError(f"only {total} events stored for a {DELTAS}-delta turn")
    key = section.key
    rates = [total / s for s, _, _ in paged]
    section.add(Metric(key, f"session/events, pages of {PAGE_LIMIT}", "events/s", statistics.median(rates),
                       REPLAY_RUNS, {"min": min(rates), "max": max(rates)}, REPLAY_TARGET))
    section.add(latency_metric(key, f"one page of {PAGE_LIMIT} events, request to response",
                               [ms for _, _, pages in paged for ms in pages], detail=True))
    rates = [total / s for s, _ in subscribed]
    section.add(Metric(key, "session/subscribe after_seq 0, request to response", "events/s",
                       statistics.median(rates), REPLAY_RUNS, {"min": min(rates), "max": max(rates)}, REPLAY_TARGET))
    section.add(latency_metric(key, "whole replay, request to response", [s * 1000 for s, _ in subscribed],
                               detail=True))
    section.extra["events"] = total
    section.note(f"{total:,} stored events ({DELTAS:,} text_delta + the turn's others) read back whole, "
                 f"{REPLAY_RUNS} times each way after one uncounted paging; every seq once, in order.")


# ---------------------------------------------------------------------- cross-daemon


def _pump(daemons: list[Daemon], deadline: float) -> list[tuple[int, float, Incoming]]:
    """Lines from whichever daemons have some: (daemon index, read time, message)."""
    fds = [d.proc.stdout.fileno() for d in daemons]  # type: ignore[union-attr]
    ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise BenchError("timed out waiting for the daemons")
    out = []
    for i, daemon in enumerate(daemons):
        if fds[i] in ready:
            lines = daemon.read_lines(deadline)
            now = time.perf_counter()
            out += [(i, now, decode(raw)) for raw in lines if raw]
    return out


def _round_trip(a: Daemon, b: Daemon, method: str, params: dict[str, Any],
                seen_a: dict[int, tuple[float, str]], seen_b: dict[int, float], b_order: list[int]) -> None:
    """Send one request to A; read both daemons until A answered and B has every event A sent."""
    id_ = a.send(method, params)
    deadline = time.monotonic() + 30
    answered = False
    while not answered or (seen_a and max(seen_a) > (b_order[-1] if b_order else 0)):
        for which, at, msg in _pump([a, b], deadline):
            if msg.method == "session/event":
                if which == 0:
                    seen_a.setdefault(msg.seq, (at, msg.event_type or ""))
                else:
                    seen_b[msg.seq] = at
                    b_order.append(msg.seq)
            elif which == 0 and msg.id == id_:
                if msg.error is not None:
                    raise BenchError(f"{method} failed on daemon A: {msg.error}")
                answered = True


def run_cross_daemon(section: Section, rounds: int = CROSS_ROUNDS) -> None:
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        path = str(Path(tmp) / "bench.db")
        with Daemon("--db", path) as a, Daemon("--db", path) as b:
            a.initialize()
            b.initialize()
            script = [{"text": "a reply in four deltas", "chunk_chars": 6} for _ in range(rounds + 2)]
            session_id = _deferred_session(a, provider_params={"script": script})
            first_b = b.call("session/subscribe", {"session_id": session_id})["next_seq"]
            a.call("session/subscribe", {"session_id": session_id})
            seen_a: dict[int, tuple[float, str]] = {}
            seen_b: dict[int, float] = {}
            b_order: list[int] = []
            # warm-up: one of each, not counted
            _round_trip(a, b, "turn/start", {"session_id": session_id, "prompt": "warm-up"}, {}, {}, b_order)
            _round_trip(a, b, "session/append_system_context", {"session_id": session_id, "text": "warm-up"},
                        {}, {}, b_order)
            start = time.perf_counter()
            for n in range(rounds):
                _round_trip(a, b, "turn/start", {"session_id": session_id, "prompt": f"turn {n}"},
                            seen_a, seen_b, b_order)
                _round_trip(a, b, "session/append_system_context",
                            {"session_id": session_id, "text": f"context {n}", "source": "bench"},
                            seen_a, seen_b, b_order)
            elapsed = time.perf_counter() - start
    if b_order != list(range(first_b, first_b + len(b_order))):
        raise BenchError("daemon B did not receive every seq once, in order")
    lags: dict[str, list[float]] = {}
    for seq, (at, type_) in seen_a.items():
        if seq not in seen_b:
            raise BenchError(f"daemon B never received seq {seq} ({type_})")
        lags.setdefault(type_, []).append((seen_b[seq] - at) * 1000)
    stored = [ms for t in TIMED for ms in lags.get(t, [])]
    if len(stored) != 2 * rounds or len(lags.get("usage", [])) != rounds:
        raise BenchError(f"{len(stored)} system_context_applied and turn_completed events seen, expected {2 * rounds}")
    key = section.key
    stats = summarize(stored)
    p99 = stats.pop("p99")
    section.add(Metric(key, "event read from A to same seq read from B, median", "ms", stats["median"], len(stored),
                       stats, CROSS_MEDIAN_TARGET))
    section.add(Metric(key, "same, p99", "ms", p99, len(stored), target=CROSS_P99_TARGET))
    for type_ in STORED_AT_ONCE:
        section.add(latency_metric(key, type_, lags[type_], detail=True))
    later = [ms for t, v in lags.items() if t not in STORED_AT_ONCE for ms in v]
    section.add(latency_metric(key, "text_delta and turn_started (stored when the model call ends; no target)",
                               later, detail=True))
    section.note(f"{rounds} rounds of one turn (one scripted model call, 4 deltas) and one append_system_context on "
                 f"the idle session, one request at a time, in {elapsed:.1f} s; B saw every seq once, in order.")
    section.note("Only events stored in the commit they report are timed, one per commit: system_context_applied "
                 "and turn_completed (A sends them once committed; usage comes in turn_completed's commit and is "
                 "shown, not counted). Negative samples: B read it before this client read it from A. A turn's deltas and turn_started are sent by A "
                 "at once but stored only by the commit that ends the model call, so B gets them then; their "
                 "lag includes the rest of the model call and is shown without a target.")
    section.note("B learns of A's commits by polling SQLite's data_version while it has a subscriber "
                 "(EventBus poll_interval_s, 5 ms), so about half that is expected on average.")


# ---------------------------------------------------------------------- paused client


def _turn_stamps_ms(daemon: Daemon, session_id: str) -> float:
    """The turn's duration by the daemon's own stamps (its only turn in the session)."""
    page = daemon.call("session/events", {"session_id": session_id, "types": ["turn_started", "turn_completed"]})
    stamps = {e["event"]["type"]: e["timestamp_ms"] for e in page["events"]}
    if set(stamps) != {"turn_started", "turn_completed"}:
        raise BenchError(f"the turn's start and end events are not stored ({sorted(stamps)})")
    return float(stamps["turn_completed"] - stamps["turn_started"])


def _reading_turn(path: Path, deltas: int) -> dict[str, float]:
    with Daemon("--db", str(path)) as daemon:
        daemon.initialize()
        session_id = _deferred_session(daemon)
        turn = delta_turn(daemon, deltas, session_id, timeout=300)
        hwm = status_mb(daemon.status()["VmHWM"])
        stamped = _turn_stamps_ms(daemon, session_id)
    return {"seconds": turn.seconds, "stamped_ms": stamped, "hwm": hwm, "lines": turn.lines}


def _paused_turn(path: Path, deltas: int) -> dict[str, float]:
    with Daemon("--db", str(path)) as daemon, Daemon("--db", str(path)) as watcher:
        daemon.initialize()
        watcher.initialize()
        session_id = _deferred_session(daemon)
        idle = status_mb(daemon.status()["VmHWM"])
        id_ = daemon.new_id()
        line = encode_request(id_, "turn/start", {"session_id": session_id, "prompt": "stream",
                                                  "provider_params": delta_script(deltas)})
        deadline = time.monotonic() + 300
        rss = 0.0
        seen_active = False
        start = time.perf_counter()
        daemon.write(line)  # and from here on, nothing is read from this daemon until the turn ended
        while True:
            rss = max(rss, status_mb(daemon.status()["VmRSS"]))
            active = watcher.call("session/read", {"session_id": session_id})["state"]["is_active"]
            if active:
                seen_active = True
            elif seen_active:
                break
            if time.monotonic() > deadline:
                raise BenchError("the paused client's turn did not end")
            time.sleep(POLL_S)
        ended = time.perf_counter() - start
        status = daemon.status()
        got = lines = 0

        def on_read(n: int, n_lines: int) -> None:
            nonlocal got, lines
            got += n
            lines += n_lines

        response = read_turn(daemon, id_, deadline, on_read)
        if response.error is not None:
            raise BenchError(f"the paused client's turn failed: {response.error}")
        check_delta_turn(msgspec.json.decode(response.result), deltas, got)
        stamped = _turn_stamps_ms(watcher, session_id)
    return {"seconds": ended, "stamped_ms": stamped, "hwm": status_mb(status["VmHWM"]), "idle": idle,
            "rss_sampled": max(rss, status_mb(status["VmRSS"])), "lines": lines}


def run_paused(section: Section, deltas: int = PAUSED_DELTAS, runs: int = PAUSED_RUNS) -> None:
    reading: list[dict[str, float]] = []
    paused: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        for n in range(runs):
            reading.append(_reading_turn(Path(tmp) / f"reading-{n}.db", deltas))
            paused.append(_paused_turn(Path(tmp) / f"paused-{n}.db", deltas))
    key = section.key

    def metric(name: str, unit: str, rows: list[dict[str, float]], field: str, scale: float = 1.0,
               detail: bool = False) -> None:
        values = [r[field] * scale for r in rows]
        stats = {"min": min(values), "max": max(values)} if len(values) > 1 else {}
        section.add(Metric(key, name, unit, statistics.median(values), len(values), stats, detail=detail))

    metric("daemon peak RSS (VmHWM), client paused for the whole turn", "MB", paused, "hwm")
    metric("highest VmRSS sampled while paused", "MB", paused, "rss_sampled", detail=True)
    metric("same daemon's VmHWM before the turn", "MB", paused, "idle", detail=True)
    metric("daemon peak RSS (VmHWM), client reading all along", "MB", reading, "hwm", detail=True)
    metric("turn duration, paused: request to is_active false (seen from a 2nd daemon)", "ms", paused,
           "seconds", 1000)
    metric("turn duration, reading: request to response", "ms", reading, "seconds", 1000)
    metric("turn_started to turn_completed by the daemon's stamps, paused", "ms", paused, "stamped_ms", detail=True)
    metric("same, reading", "ms", reading, "stamped_ms", detail=True)
    ratio = statistics.median(r["stamped_ms"] for r in paused) / statistics.median(r["stamped_ms"] for r in reading)
    section.add(Metric(key, "paused / reading turn duration (daemon stamps)", "x", ratio, detail=True))
    metric(f"text_delta lines read after resuming (of {deltas:,} deltas, all delivered)", "lines", paused, "lines")
    metric("same, client reading all along", "lines", reading, "lines", detail=True)
    section.note(f"{runs} runs each way, alternating, each on a fresh daemon and --db file; one {deltas:,}-delta "
                 "scripted turn (chunk_chars 1) on a deferred session. The paused client writes turn/start and reads "
                 "nothing until a second daemon on the same file sees is_active go false "
                 f"(session/read every {POLL_S * 1000:.0f} ms), then reads every line: all deltas arrived "
                 "(merged lines carry seq_first..seq) and the turn's text is whole.")
