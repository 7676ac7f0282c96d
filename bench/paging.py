"""4. ``session/history`` and 5. ``session/list`` page latency on a large database.

One database is built directly (see ``populate``): 10,000 sessions with 2 messages each,
except one in the middle of the update order with 100,000. Both sections use the same
daemon, started on that file after population (which is timed but not counted).

Each page variant gets a short warm-up, then at least 200 sequential requests, each timed
as a client round trip. The first response of every variant is decoded and checked (page
size, ``has_more``, order, label matches) so that a fast wrong answer cannot pass.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from .client import BenchError, Daemon
from .loops import checked_latencies
from .populate import Populated, build, labels_for
from .results import Section, Target, latency_metric

TARGET_MS = Target("<", 5)
WARMUP = 20


def _measure(
    section: Section, daemon: Daemon, name: str, method: str, params: dict[str, Any],
    check: Callable[[Any], None], count: int,
) -> None:
    samples = checked_latencies(daemon, method, lambda: params, check, count, WARMUP)
    section.add(latency_metric(section.key, name, samples, TARGET_MS))


def history_check(count: int, offset: int, limit: int = 100) -> Callable[[Any], None]:
    """Checks a ``session/history`` page at ``offset`` of a ``count``-message transcript."""
    def check(page: Any) -> None:
        expected = max(0, min(limit, count - offset))
        got = [m["index"] for m in page["messages"]]
        if got != list(range(offset, offset + expected)) or page["message_count"] != count:
            raise BenchError(f"history page at {offset}: wrong messages ({len(got)} from {got[:1]})")
        if page["has_more"] != (offset + expected < count):
            raise BenchError(f"history page at {offset}: wrong has_more")

    return check


def _list_check(expected: int, has_more: bool, labels: dict[str, str]) -> Callable[[Any], None]:
    def check(page: Any) -> None:
        sessions = page["sessions"]
        if len(sessions) != expected or page["has_more"] != has_more:
            raise BenchError(f"session/list returned {len(sessions)} sessions (has_more {page['has_more']}), "
                             f"expected {expected} (has_more {has_more})")
        times = [s["updated_at_ms"] for s in sessions]
        if times != sorted(times, reverse=True):
            raise BenchError("session/list is not newest first")
        if any(s["labels"].get(k) != v for s in sessions for k, v in labels.items()):
            raise BenchError("session/list returned a session whose labels do not match")

    return check


def run(history: Section | None, listing: Section | None, count: int = 200) -> None:
    """Measure history pages into ``history`` and list pages into ``listing`` (either may be
    None to skip it)."""
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        db = build(Path(tmp) / "big.db")
        for section in filter(None, (history, listing)):
            section.extra["population"] = {"sessions": db.sessions, "messages": db.messages,
                                           "seconds": round(db.seconds, 3), "size_mb": round(db.size_mb, 1)}
            section.note(f"database built directly in {db.seconds:.1f} s (not counted): {db.sessions:,} sessions, "
                         f"{db.messages:,} messages, {db.size_mb:.0f} MB")
        with Daemon("--db", str(db.path)) as daemon:
            daemon.initialize()
            if history is not None:
                _history(history, daemon, db, count)
            if listing is not None:
                _listing(listing, daemon, db, count)


def _history(section: Section, daemon: Daemon, db: Populated, count: int) -> None:
    last = db.big_messages - 100
    for label, offset in (("first page", 0), ("middle page (offset 50,000)", 50_000),
                          (f"last page (offset {last:,})", last)):
        params = {"session_id": db.big_session_id, "offset": offset, "limit": 100}
        _measure(section, daemon, f"history {label}", "session/history", params,
                 history_check(db.big_messages, offset), count)


def _listing(section: Section, daemon: Daemon, db: Populated, count: int) -> None:
    # Label filters from broad to empty: the cost of a filter depends on how many
    # sessions match it, and the plans that suit broad and narrow filters differ.
    filters = [
        ("1 pair, 50% match", {"env": "prod"}),
        ("1 pair, 5% match", {"project": "p7"}),
        ("2 pairs, 1% match", {"project": "p7", "owner": "u27"}),
        ("1 pair, no match", {"owner": "nobody"}),
    ]
    variants: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("list first page (limit 100)", {"limit": 100}, {}),
        ("list deep page (offset 9,800)", {"limit": 100, "offset": 9_800}, {}),
    ] + [(f"list labels {name}", {"limit": 100, "labels": labels}, labels) for name, labels in filters]
    for name, params, labels in variants:
        matching = sum(all(labels_for(i).get(k) == v for k, v in labels.items()) for i in range(db.sessions))
        offset = params.get("offset", 0)
        expected = max(0, min(100, matching - offset))
        check = _list_check(expected, matching > offset + expected, labels)
        _measure(section, daemon, name, "session/list", params, check, count)
