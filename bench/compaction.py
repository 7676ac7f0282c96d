"""14. Compaction (issue 10): ``session/compact`` on a 10,000-message session, history pages
after it, and the first turn after it. The issue sets no targets: the numbers are reported.

Two databases are built directly (see ``populate``), each with three scripted sessions: one of
10,000 messages, two of 10 (one to measure, one to warm each daemon up). Every session's
``provider_params`` hold a two-step script, a summary then a reply, and a context window far
above the big session's size, so that no turn compacts by itself. The two files differ only in
``provider_state``: in the first the script stands at its first step (the summary, for
``session/compact``); in the second, at its second (the reply), for turns on sessions that
stay uncompacted. Building them is timed but not counted.

The scripted provider answers at once (no delay; the summary is one delta), so a request's
time is the daemon's: reading the transcript, building the summary request, storing the
summary and the events. The provider's only work is counting the characters it is sent, for
its usage estimate, which runs in the daemon's process and is included.

1. ``session/compact {keep_last: 4}``: each sample is a fresh copy of the first file and a
   daemon started on it, warmed up by compacting the spare 10-message session and running a
   turn on it; then the 10,000-message and the 10-message sessions are compacted once each
   (which goes first alternates), each timed as a client round trip (request written to
   response read). Each session is compacted for the first time, as the timed request.
2. ``session/history`` pages (limit 100) of the 10,000-message session, at the start, in the
   middle, and at the end (the page that ends with the summary), after the compaction, in one
   daemon; and, beside each, the same page before compaction, in the same daemon.
3. The first turn after compaction on the 10,000-message session (the ``turn/start`` right
   after part 1's compactions, in the same daemon), request to response: what the daemon
   does to build the compacted context (the summary and the kept messages) from the
   transcript. Beside it, the same turn on a copy of the second file, never compacted (the
   model is sent all 10,000 messages). Copies of the two kinds alternate. A turn reads the
   whole transcript from the store, compacted or not, before it builds the context; for
   scale, that read (``transcripts.all_messages`` over the store's ``Connection``) is also
   timed in this process, on the same file.

Every first response is checked (the number of messages summarised, the summary's place in
history, the message counts and the input the model was sent), so a fast wrong answer cannot
pass.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from warren.daemon.store import Connection, drive, transcripts

from .client import BenchError, Daemon, encode_request, result_of
from .loops import checked_latencies
from .paging import history_check
from .populate import build
from .results import Metric, Section, latency_metric

BIG = 10_000
SMALL = 10
KEEP_LAST = 4
COPIES = 20  # per kind of copy: the samples of parts 1 and 3
PAGES = 200  # samples per history page
PAGE_WARMUP = 20
LIMIT = 100
SUMMARY = ("The user and the agent went through a long list of numbered messages. Decisions: keep the word "
           "lists as they are. Open tasks: none. Files touched: none. ") * 4
REPLY = "A reply after compaction, streamed in 8-character chunks."
PARAMS = {
    "script": [{"text": SUMMARY, "chunk_chars": len(SUMMARY)}, {"text": REPLY}],
    "context_window": 100_000_000,  # far above the big session's ~0.4M tokens: no automatic compaction
}
PROMPT = "Go on from your notes."


@dataclass
class Base:
    """A built database and its three sessions' ids."""

    path: Path
    big: str
    small: str
    spare: str  # warms each daemon up


def _base(path: Path, position: int) -> Base:
    db = build(path, sessions=3, big_messages=BIG, small_messages=SMALL, provider_params=PARAMS,
               provider_state={"position": position} if position else None)
    with sqlite3.connect(path) as conn:
        (spare,), = conn.execute("SELECT session_id FROM sessions WHERE session_id NOT IN (?, ?)",
                                 (db.big_session_id, db.small_session_id)).fetchall()
    conn.close()
    return Base(db.path, db.big_session_id, db.small_session_id, spare)


@contextmanager
def _on_copy(base: Base, name: str) -> Iterator[Daemon]:
    """A daemon on a fresh copy of ``base``'s file, warmed up on its spare session (one
    compaction, one turn); the copy is deleted afterwards."""
    path = base.path.with_name(name)
    shutil.copyfile(base.path, path)
    try:
        with Daemon("--db", str(path)) as daemon:
            daemon.initialize()
            daemon.call("session/compact", {"session_id": base.spare, "keep_last": KEEP_LAST})
            daemon.call("turn/start", {"session_id": base.spare, "prompt": PROMPT})
            yield daemon
    finally:
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def _timed(daemon: Daemon, method: str, params: dict[str, Any]) -> tuple[float, Any]:
    """One request's client round trip in milliseconds (as ``loops.sequential`` times it),
    and its decoded result."""
    id_ = daemon.new_id()
    line = encode_request(id_, method, params)
    start = time.perf_counter_ns()
    daemon.write(line)
    msg = daemon.wait(id_)
    return (time.perf_counter_ns() - start) / 1e6, result_of(msg)


def _expect(ok: bool, what: str, result: Any) -> None:
    if not ok:
        raise BenchError(f"{what}: unexpected result {result}")


def _compact(daemon: Daemon, session_id: str, count: int) -> tuple[float, Any]:
    ms, r = _timed(daemon, "session/compact", {"session_id": session_id, "keep_last": KEEP_LAST})
    _expect(r["session_id"] == session_id and r["replaced_count"] == count - KEEP_LAST, "session/compact", r)
    return ms, r


def _turn(daemon: Daemon, base: Base, count: int, compacted: bool) -> tuple[float, Any]:
    """The turn on the big session, ``count`` messages before it; checked by the input the
    scripted provider says it was sent (characters / 4): the summary and the kept messages,
    or every message."""
    ms, r = _timed(daemon, "turn/start", {"session_id": base.big, "prompt": PROMPT})
    sent = r["usage"]["input_tokens"]
    _expect(r["text"] == REPLY and r["stop_reason"] == "end_turn" and r["message_count"] == count + 2
            and (sent < 2_000 if compacted else sent > 100_000), "turn/start", r)
    return ms, r


def run(section: Section, copies: int = COPIES, pages: int = PAGES) -> None:
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        start = time.perf_counter()
        at_summary = _base(Path(tmp) / "compactable.db", 0)
        at_reply = _base(Path(tmp) / "uncompacted.db", 1)
        built = time.perf_counter() - start
        size_mb = at_summary.path.stat().st_size / 1e6
        section.extra["population"] = {"sessions": 3, "messages": BIG + 2 * SMALL, "files": 2,
                                       "seconds": round(built, 3), "size_mb": round(size_mb, 1)}
        section.note(f"2 databases built directly in {built:.1f} s (not counted): 3 sessions each "
                     f"({BIG:,} + {SMALL} + {SMALL} messages), {size_mb:.1f} MB each; copied for every sample")
        samples: dict[str, list[float]] = {"big": [], "small": [], "turn": [], "turn_uncompacted": []}
        results: dict[str, Any] = {}
        for i in range(copies):
            with _on_copy(at_summary, f"copy-{i}.db") as daemon:
                order = [(at_summary.big, BIG, "big"), (at_summary.small, SMALL, "small")][:: 1 if i % 2 else -1]
                for session_id, count, key in order:
                    ms, results[key] = _compact(daemon, session_id, count)
                    samples[key].append(ms)
                ms, results["turn"] = _turn(daemon, at_summary, BIG + 1, compacted=True)  # + the summary
                samples["turn"].append(ms)
            with _on_copy(at_reply, f"uncompacted-{i}.db") as daemon:
                ms, results["turn_uncompacted"] = _turn(daemon, at_reply, BIG, compacted=False)
                samples["turn_uncompacted"].append(ms)
        _report_compaction(section, samples, results)
        _history_pages(section, at_summary, pages)
        _report_turns(section, samples, results, _read_transcript_ms(at_summary))


def _report_compaction(section: Section, samples: dict[str, list[float]], results: dict[str, Any]) -> None:
    key = section.key
    big = section.add(latency_metric(key, f"session/compact keep_last {KEEP_LAST}, {BIG:,} messages",
                                     samples["big"]))
    small = section.add(latency_metric(key, f"{SMALL} messages", samples["small"], detail=True))
    section.add(Metric(key, f"ratio {BIG:,}/{SMALL} of medians", "x", big.value / small.value, detail=True))
    r = results["big"]
    section.note(f"Compaction: one sample per fresh copy of the database ({len(samples['big'])} copies), each "
                 f"session's first compaction, after a warm-up compaction and turn on another session. The "
                 f"scripted provider answers at once, so this is the daemon's time (the provider only counts the "
                 f"characters it is sent). {BIG:,} messages: {r['replaced_count']:,} summarised, the model's "
                 f"context ~{r['tokens_before']:,} -> ~{r['tokens_after']:,} tokens (the daemon's estimate).")


def _history_pages(section: Section, base: Base, pages: int) -> None:
    """History pages of the big session before and after its compaction, in one daemon."""
    after = BIG + 1  # the summary is appended to history, at index BIG
    offsets = [("first page (offset 0)", 0, 0), (f"middle page (offset {BIG // 2:,})", BIG // 2, BIG // 2),
               (f"last page, ending with the summary (offset {after - LIMIT:,})", after - LIMIT, BIG - LIMIT)]
    with _on_copy(base, "history.db") as daemon:
        def measure(offset: int, count: int, check: Callable[[Any], None]) -> list[float]:
            params = {"session_id": base.big, "offset": offset, "limit": LIMIT}
            return checked_latencies(daemon, "session/history", lambda: params, check, pages, PAGE_WARMUP)

        before = [measure(old, BIG, history_check(BIG, old, LIMIT)) for _name, _new, old in offsets]
        summary_id = daemon.call("session/compact", {"session_id": base.big, "keep_last": KEEP_LAST})[
            "summary_message_id"]
        for (name, new, old), earlier in zip(offsets, before):
            check = history_check(after, new, LIMIT)
            if new + LIMIT == after:
                check = _ends_with_summary(check, summary_id)
            section.add(latency_metric(section.key, f"history after compaction, {name}",
                                       measure(new, after, check)))
            section.add(latency_metric(section.key, f"before compaction (offset {old:,})", earlier, detail=True))
    section.note(f"History pages: limit {LIMIT}, {pages} sequential requests each after {PAGE_WARMUP} unmeasured, "
                 f"on the {BIG:,}-message session, in one daemon: the pages before compaction first, then "
                 f"session/compact, then the pages after ({after:,} messages: history keeps every message and "
                 f"adds the summary at index {BIG:,}).")


def _ends_with_summary(check: Callable[[Any], None], summary_id: str) -> Callable[[Any], None]:
    def both(page: Any) -> None:
        check(page)
        last = page["messages"][-1]
        _expect(last["message_id"] == summary_id and last["role"] == "system" and last.get("source") == "compaction",
                "session/history last page", last)

    return both


def _read_transcript_ms(base: Base, runs: int = COPIES) -> list[float]:
    """The big session's whole transcript read through the store's code, in this process."""
    db = Connection(str(base.path))
    try:
        out = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            messages = drive(transcripts.all_messages(db, base.big))
            out.append((time.perf_counter_ns() - start) / 1e6)
            _expect(len(messages) == BIG, "transcripts.all_messages", len(messages))
        return out
    finally:
        db.close()


def _report_turns(section: Section, samples: dict[str, list[float]], results: dict[str, Any],
                  read_ms: list[float]) -> None:
    key = section.key
    turn = section.add(latency_metric(key, f"first turn after compaction, {BIG:,}-message session",
                                      samples["turn"]))
    plain = section.add(latency_metric(key, "same turn, uncompacted copy", samples["turn_uncompacted"], detail=True))
    section.add(Metric(key, "ratio compacted/uncompacted of medians", "x", turn.value / plain.value, detail=True))
    section.add(latency_metric(key, f"reading the {BIG:,}-message transcript, in-process", read_ms, detail=True))
    section.note(f"Turns: turn/start request to response, one per copy ({len(samples['turn'])} of each kind, "
                 f"alternating); the scripted reply is {len(REPLY)} characters in 8-character deltas, at once. "
                 f"The model was sent ~{results['turn']['usage']['input_tokens']:,} input tokens after compaction, "
                 f"~{results['turn_uncompacted']['usage']['input_tokens']:,} without (the provider's estimate). "
                 f"An uncompacted turn first reads the whole transcript; a compacted one reads from the first "
                 f"kept message on. The in-process row times the whole read alone (transcripts.all_messages on "
                 f"the uncompacted file, not through the daemon). "
                 f"The issue sets no targets for this section: the numbers are for the record.")
