"""Build a large, real Warren database directly with sqlite3, before the daemon starts.

Creating 10,000 sessions and 100,000 messages through the protocol would take minutes of
fsyncs; inserting them in one transaction takes seconds. The schema is the daemon's own:
``daemon.migrations.migrate`` runs unchanged over a thin adapter that gives a sqlite3
connection the two coroutine methods it uses, so the file is exactly what the daemon would
have made (tables, indexes, ``schema_version``) and it opens it without migrating.

The content is consistent with what the daemon writes: every session's ``message_count``
matches its ``messages`` rows (indexes 0..n-1), content is a JSON list of text blocks,
each user/assistant pair belongs to one completed turn, ``updated_at_ms`` is distinct per
session, and labels are in both ``sessions.labels`` and ``session_labels``.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import msgspec

from daemon.store.migrations import migrate
from daemon.store import Connection, drive

BASE_MS = 1_780_000_000_000
_dumps = msgspec.json.Encoder().encode


def uuid7(ms: int, n: int) -> str:
    """A deterministic UUIDv7-shaped id for time ``ms`` and sequence number ``n``."""
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (n & 0xFFF) << 64 | 0b10 << 62
    value |= (n * 0x9E3779B97F4A7C15) & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def labels_for(i: int) -> dict[str, str]:
    """Every session has three labels: ``project`` (20 values, 5% each), ``env`` (2 values)
    and ``owner`` (100 values, 1% each)."""
    return {"project": f"p{i % 20}", "env": "prod" if i % 2 else "dev", "owner": f"u{i % 100}"}


def _text(i: int, role: str) -> bytes:
    words = " ".join(f"word{(i * 7 + k) % 997}" for k in range(8 + i % 24))
    return _dumps([{"type": "text", "text": f"{role} message {i}: {words}"}])


@dataclass
class Populated:
    path: Path
    sessions: int
    messages: int
    big_session_id: str
    big_messages: int
    seconds: float
    size_mb: float


def _open(path: Path) -> sqlite3.Connection:
    db = Connection(str(path))  # the daemon's own connection type and schema
    conn = db.raw
    conn.execute("PRAGMA journal_mode = WAL")  # as the daemon's store leaves the file
    drive(migrate(db))
    conn.execute("PRAGMA synchronous = OFF")  # population only: nothing here needs durability
    return conn


def _messages(session_id: str, count: int, created_ms: int, turn_ids: list[str]) -> Iterator[tuple[Any, ...]]:
    for idx in range(count):
        role = "user" if idx % 2 == 0 else "assistant"
        yield (session_id, idx, role, _text(idx, role), created_ms + idx, turn_ids[idx // 2], None)


def build(path: Path, *, sessions: int = 10_000, big_messages: int = 100_000, small_messages: int = 2) -> Populated:
    """``sessions`` sessions of ``small_messages`` messages each, one of which (the one in
    the middle of the update order) has ``big_messages`` instead."""
    start = time.perf_counter()
    conn = _open(path)
    big_index = sessions // 2
    big_id = ""
    total = 0
    conn.execute("BEGIN")
    for i in range(sessions):
        created = BASE_MS + i * 1_000
        updated = created + 500  # distinct per session, newest = highest i
        sid = uuid7(created, i)
        n = big_messages if i == big_index else small_messages
        if i == big_index:
            big_id = sid
        turns = [uuid7(created + t, i * 131 + t) for t in range((n + 1) // 2)]
        labels = labels_for(i)
        conn.execute(
            """INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, provider, model, labels,
                   message_count, input_tokens, output_tokens, last_assistant_text, provider_state, next_seq)
               VALUES (?, ?, ?, 'scripted', 'bench-model', ?, ?, ?, ?, ?, '{}', ?)""",
            (sid, created, updated, _dumps(labels).decode(), n, 10 * n, 12 * n, f"assistant reply {i}",
             1 + 10 * len(turns)),
        )
        conn.executemany(
            "INSERT INTO session_labels (session_id, key, value) VALUES (?, ?, ?)",
            [(sid, k, v) for k, v in labels.items()],
        )
        conn.executemany(
            """INSERT INTO turns (turn_id, session_id, status, stop_reason, owner, started_at_ms, ended_at_ms, usage)
               VALUES (?, ?, 'completed', 'end_turn', NULL, ?, ?, '{"input_tokens":10,"output_tokens":12,"total_tokens":22}')""",
            [(tid, sid, created + t, created + t + 1) for t, tid in enumerate(turns)],
        )
        conn.executemany(
            "INSERT INTO messages (session_id, idx, role, content, created_at_ms, turn_id, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((s, idx, role, content.decode(), ms, tid, src)
             for s, idx, role, content, ms, tid, src in _messages(sid, n, created, turns)),
        )
        total += n
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # No ANALYZE: the daemon never runs it, so its query plans are the ones without statistics.
    conn.close()
    return Populated(path, sessions, total, big_id, big_messages, time.perf_counter() - start,
                     path.stat().st_size / 1e6)
