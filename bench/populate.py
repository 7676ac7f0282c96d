"""Build a large, real Warren database directly with sqlite3, before the daemon starts.

Creating 10,000 sessions and 100,000 messages through the protocol would take minutes of
fsyncs; inserting them in one transaction takes seconds. The schema and the transcripts are
the daemon's own: ``daemon.store.migrations.migrate``, ``transcripts.new_segment`` and
``transcripts.set_head`` run unchanged over the store's ``Connection`` (whose coroutines
never suspend, so ``drive`` runs them to completion here), so the file is exactly what the
daemon would have made (tables, indexes, ``schema_version``, segments, pieces, message ids
and hash prefixes) and it opens it without migrating.

The content is consistent with what the daemon writes: every session's transcript is one
segment it owns, holding messages 0..n-1 (its ``pieces`` and ``message_count`` set by
``set_head``), content is a list of text blocks, each user/assistant pair belongs to one
completed turn, ``updated_at_ms`` is distinct per session, and labels are in both
``sessions.labels`` and ``session_labels``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from warren.daemon.store import Connection, drive, transcripts
from warren.daemon.store.migrations import migrate
from warren.protocol.types import Message, TextBlock

BASE_MS = 1_780_000_000_000
MESSAGE_IDS = 1 << 40  # message ids' sequence numbers start here, apart from sessions' and turns'
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


def _text(i: int, role: str) -> list[TextBlock]:
    words = " ".join(f"word{(i * 7 + k) % 997}" for k in range(8 + i % 24))
    return [TextBlock(f"{role} message {i}: {words}")]


@dataclass
class Populated:
    path: Path
    sessions: int
    messages: int
    big_session_id: str
    big_messages: int
    small_session_id: str  # the newest session, with ``small_messages`` messages
    small_messages: int
    seconds: float
    size_mb: float


def _open(path: Path) -> Connection:
    db = Connection(str(path))  # the daemon's own connection type and schema
    db.raw.execute("PRAGMA journal_mode = WAL")  # as the daemon's store leaves the file
    drive(migrate(db))
    db.raw.execute("PRAGMA synchronous = OFF")  # population only: nothing here needs durability
    return db


def _messages(count: int, created_ms: int, turn_ids: list[str], first_id: int) -> list[Message]:
    """Alternating user/assistant messages; ``first_id`` numbers their (unique) message ids."""
    out = []
    for idx in range(count):
        role = "user" if idx % 2 == 0 else "assistant"
        ms = created_ms + idx
        out.append(Message(idx, role, _text(idx, role), ms, uuid7(ms, MESSAGE_IDS + first_id + idx), turn_ids[idx // 2]))
    return out


def build(
    path: Path, *, sessions: int = 10_000, big_messages: int = 100_000, small_messages: int = 2,
    provider_params: dict[str, Any] | None = None, provider_state: dict[str, Any] | None = None,
) -> Populated:
    """``sessions`` sessions of ``small_messages`` messages each, one of which (the one in
    the middle of the update order) has ``big_messages`` instead. Every session's provider is
    ``scripted``, with ``provider_params`` (none by default: it echoes) and ``provider_state``
    (where its script stands: ``{"position": n}``; empty by default, the first step)."""
    start = time.perf_counter()
    db = _open(path)
    conn = db.raw
    big_index = sessions // 2
    big_id = small_id = ""
    total = 0
    params = None if provider_params is None else _dumps(provider_params).decode()
    state = _dumps(provider_state or {}).decode()
    conn.execute("BEGIN")
    for i in range(sessions):
        created = BASE_MS + i * 1_000
        updated = created + 500  # distinct per session, newest = highest i
        sid = uuid7(created, i)
        n = big_messages if i == big_index else small_messages
        if i == big_index:
            big_id = sid
        else:
            small_id = sid
        turns = [uuid7(created + t, i * 131 + t) for t in range((n + 1) // 2)]
        labels = labels_for(i)
        conn.execute(
            """INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, provider, model, labels,
                   input_tokens, output_tokens, last_assistant_text, provider_params, provider_state, next_seq)
               VALUES (?, ?, ?, 'scripted', 'bench-model', ?, ?, ?, ?, ?, ?, ?)""",
            (sid, created, updated, _dumps(labels).decode(), 10 * n, 12 * n, f"assistant reply {i}",
             params, state, 1 + 10 * len(turns)),
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
        # The transcript as the daemon stores it: one segment the session owns, and its head.
        segment = drive(transcripts.new_segment(db, sid, _messages(n, created, turns, total)))
        drive(transcripts.set_head(db, sid, transcripts.joined([segment])))
        total += n
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # No ANALYZE: the daemon never runs it, so its query plans are the ones without statistics.
    db.close()
    return Populated(path, sessions, total, big_id, big_messages, small_id, small_messages,
                     time.perf_counter() - start, path.stat().st_size / 1e6)
