"""12. Revisioned transcripts (PROTOCOL.md §9): fork, rewrite, append, restore, and history
pages of a fork and of a rewritten session, on a 100,000-message session and a 10-message one.

One database is built directly (see ``populate``): 10,000 sessions of 10 messages each,
except one in the middle of the update order with 100,000 (building it is timed but not
counted). One daemon runs on it. Every operation runs on the big session, then on the
newest 10-message one; each figure is a client round trip over the pipe (request written to
response read), at least 30 in sequence after a short warm-up. The target is that the cost
follows the edit, not the transcript: every 100k figure under 5 ms and at most twice the
10-message figure (both medians).

Each request is valid and does real work:

- fork at the end, and in the middle (``message_index`` = count // 2), of the untouched
  session: every request makes a new session;
- rewrite of one message in the middle (index count // 2) and of the last one: each request
  replaces it by a new message of the same role (user by user, assistant by assistant), so
  the transcript stays valid, and leaves the session rewritten in both places;
- a history page (limit 10) centred on the middle of a fork (the first fork at the end) and
  of the rewritten session (where it spans the rewritten message and both sides of it);
- append of one message, alternating user and assistant after the last one, each with its
  own ``operation_id``;
- restore, alternating between the last rewrite's revision and its parent (both retained).

The first response of each is decoded and checked (counts, revisions, indexes) so that a fast
wrong answer cannot pass.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .client import BenchError, Daemon
from .loops import checked_latencies
from .paging import history_check
from .populate import build
from .results import Metric, Section, Target, latency_metric

TARGET_MS = Target("<", 5)
TARGET_RATIO = Target("<=", 2)
WARMUP = 5
PAGE = 10  # the small session has 10 messages: equal pages compare equal work
SMALL = 10
REASON = {"kind": "bench"}


@dataclass
class Subject:
    """A session under test, and what the operations leave for the later ones."""

    label: str
    session_id: str
    count: int  # before the appends, which come last but for the restores (of revisions before them)
    fork_id: str = ""  # the first fork at the end, for the history of a fork


Params = Callable[[], dict[str, Any]]
Check = Callable[[Any], None]
Operation = Callable[[Daemon, Subject], tuple[str, Params, Check]]


def _fixed(params: dict[str, Any]) -> Params:
    return lambda: params


def _role_at(daemon: Daemon, session_id: str, index: int) -> str:
    page = daemon.call("session/history", {"session_id": session_id, "offset": index, "limit": 1})
    return str(page["messages"][0]["role"])


def _expect(ok: bool, what: str, result: Any) -> None:
    if not ok:
        raise BenchError(f"{what}: unexpected result {result}")


def _fork(middle: bool) -> Operation:
    def op(daemon: Daemon, s: Subject) -> tuple[str, Params, Check]:
        index = s.count // 2 if middle else s.count
        params: dict[str, Any] = {"session_id": s.session_id}
        if middle:
            params["message_index"] = index

        def check(r: Any) -> None:
            _expect(r["message_count"] == index and r["forked_at"]["message_index"] == index
                    and r["source_session_id"] == s.session_id and r["session_id"] != s.session_id
                    and (middle or r["revision"] == r["forked_at"]["revision"]), "session/fork", r)
            if not middle:
                s.fork_id = r["session_id"]

        return "session/fork", _fixed(params), check

    return op


def _rewrite(middle: bool) -> Operation:
    def op(daemon: Daemon, s: Subject) -> tuple[str, Params, Check]:
        index = s.count // 2 if middle else s.count - 1
        role = _role_at(daemon, s.session_id, index)
        n = itertools.count()

        def params() -> dict[str, Any]:
            text = f"rewritten {role} message {index}, version {next(n)}"
            return {"session_id": s.session_id, "start": index, "end": index + 1,
                    "replacement": [{"role": role, "content": text}], "reason": REASON}

        def check(r: Any) -> None:
            _expect(r["message_count"] == s.count and r["revision"] != r["parent_revision"], "session/rewrite", r)

        return "session/rewrite", params, check

    return op


def _history(of_fork: bool) -> Operation:
    def op(daemon: Daemon, s: Subject) -> tuple[str, Params, Check]:
        offset = max(0, s.count // 2 - PAGE // 2)
        params = {"session_id": s.fork_id if of_fork else s.session_id, "offset": offset, "limit": PAGE}
        return "session/history", _fixed(params), history_check(s.count, offset, PAGE)

    return op


def _append(daemon: Daemon, s: Subject) -> tuple[str, Params, Check]:
    first = "user" if _role_at(daemon, s.session_id, s.count - 1) == "assistant" else "assistant"
    roles = itertools.cycle([first, "assistant" if first == "user" else "user"])
    n = itertools.count()

    def params() -> dict[str, Any]:
        k = next(n)
        return {"session_id": s.session_id, "operation_id": f"bench-append-{k}",
                "messages": [{"role": next(roles), "content": f"appended message {k}"}]}

    def check(r: Any) -> None:
        _expect(r["status"] == "appended" and r["message_count"] == s.count + 1, "session/append", r)

    return "session/append", params, check


def _restore(daemon: Daemon, s: Subject) -> tuple[str, Params, Check]:
    last = daemon.call("session/revisions", {"session_id": s.session_id, "limit": 1})["entries"][0]
    if last["kind"] != "rewrite":
        raise BenchError(f"the last revision log entry is a {last['kind']}, not the last rewrite")
    targets = itertools.cycle([last["parent_revision"], last["revision"]])

    def params() -> dict[str, Any]:
        return {"session_id": s.session_id, "revision": next(targets), "reason": REASON}

    def check(r: Any) -> None:
        _expect(r["revision"] == last["parent_revision"] and r["message_count"] == s.count, "session/restore", r)

    return "session/restore", params, check


OPERATIONS: list[tuple[str, Operation]] = [
    ("fork at the end", _fork(middle=False)),
    ("fork in the middle", _fork(middle=True)),
    ("rewrite 1 message in the middle", _rewrite(middle=True)),
    ("rewrite the last message", _rewrite(middle=False)),
    ("history page, middle of a fork", _history(of_fork=True)),
    ("history page, middle of the rewritten session", _history(of_fork=False)),
    ("append 1 message", _append),
    ("restore (alternating 2 revisions)", _restore),
]


def run(section: Section, count: int = 100) -> None:
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        db = build(Path(tmp) / "transcripts.db", small_messages=SMALL)
        section.extra["population"] = {"sessions": db.sessions, "messages": db.messages,
                                       "seconds": round(db.seconds, 3), "size_mb": round(db.size_mb, 1)}
        section.note(f"database built directly in {db.seconds:.1f} s (not counted): {db.sessions:,} sessions, "
                     f"{db.messages:,} messages, {db.size_mb:.0f} MB")
        big = Subject(f"{db.big_messages:,} messages", db.big_session_id, db.big_messages)
        small = Subject(f"{db.small_messages} messages", db.small_session_id, db.small_messages)
        with Daemon("--db", str(db.path)) as daemon:
            daemon.initialize()
            for name, op in OPERATIONS:
                medians = []
                for s in (big, small):
                    method, params, check = op(daemon, s)
                    samples = checked_latencies(daemon, method, params, check, count, WARMUP)
                    first = s is big
                    metric = latency_metric(section.key, f"{name}, {s.label}" if first else s.label, samples,
                                            TARGET_MS if first else None, detail=not first)
                    medians.append(section.add(metric).value)
                section.add(Metric(section.key, f"ratio 100k/10 of medians, {name}", "x", medians[0] / medians[1],
                                   target=TARGET_RATIO, detail=True))
        section.note(f"history pages return {PAGE} messages on the big session, {SMALL} on the small one")
