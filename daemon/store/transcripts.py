"""The ``messages`` table: a session's transcript, read in pages or whole, appended to.

Like every table module, its functions run inside a unit of work and never commit.
"""

from __future__ import annotations

from typing import Any

from protocol.types import Message

from .codec import BLOCKS, dumps


_MESSAGE_COLUMNS = "m.idx, m.role, m.content, m.created_at_ms, m.turn_id, m.source"


def _message(r: Any) -> Message:
    """A row of ``_MESSAGE_COLUMNS`` as a Message."""
    return Message(r[0], r[1], BLOCKS.decode(r[2]), r[3], r[4], r[5])


async def history_page(
    db: Any, session_id: str, offset: int, limit: int
) -> tuple[int, list[Message]] | None:
    rows = await db.execute_fetchall(
        f"""SELECT s.message_count, {_MESSAGE_COLUMNS}
           FROM sessions s LEFT JOIN messages m
             ON m.session_id = s.session_id AND m.idx >= ? AND m.idx < ?
           WHERE s.session_id = ?
           ORDER BY m.idx""",
        (offset, offset + limit, session_id),
    )
    if not rows:
        return None
    count = rows[0][0]
    return count, [_message(r[1:]) for r in rows if r[1] is not None]


async def all_messages(db: Any, session_id: str) -> list[Message]:
    rows = await db.execute_fetchall(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.session_id = ? ORDER BY m.idx", (session_id,)
    )
    return [_message(r) for r in rows]


async def last_message(db: Any, session_id: str) -> Message | None:
    rows = await db.execute_fetchall(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.session_id = ? ORDER BY m.idx DESC LIMIT 1", (session_id,)
    )
    return _message(rows[0]) if rows else None


async def append_messages(db: Any, session_id: str, messages: list[Message]) -> None:
    await db.executemany(
        "INSERT INTO messages (session_id, idx, role, content, created_at_ms, turn_id, source)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (session_id, m.index, m.role, dumps(m.content), m.created_at_ms, m.turn_id, m.source)
            for m in messages
        ],
    )
