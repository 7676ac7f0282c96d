"""The revision log of a session (``revision_log``) and the transcripts it names
(``retained_revisions``: a path of pieces each, never a copy of messages).

Every revision an entry names, its own and its parent, stays readable: that is what
``session/revision`` pages and ``session/restore`` puts back.
"""

from __future__ import annotations

from typing import Any

import msgspec

from warren.protocol.types import EditReason, RevisionEntry

from .codec import dumps
from .transcripts import Path

_reason = msgspec.json.Decoder(EditReason)


async def retain(db: Any, session_id: str, path: Path) -> None:
    await db.execute(
        "INSERT OR IGNORE INTO retained_revisions (session_id, revision, pieces) VALUES (?, ?, ?)",
        (session_id, path.revision, path.encode()),
    )


async def retained(db: Any, session_id: str, revision: str) -> Path | None:
    rows = await db.execute_fetchall(
        "SELECT pieces FROM retained_revisions WHERE session_id = ? AND revision = ?", (session_id, revision)
    )
    return Path.decode(rows[0][0]) if rows else None


async def record(
    db: Any, session_id: str, kind: str, parent: Path | None, new: Path, now_ms: int,
    reason: EditReason | None = None, actor: str | None = None,
) -> None:
    """Append a log entry and retain both transcripts it names."""
    rows = await db.execute_fetchall("SELECT coalesce(max(entry), 0) FROM revision_log WHERE session_id = ?",
                                     (session_id,))
    await db.execute(
        "INSERT INTO revision_log (session_id, entry, revision, parent_revision, kind, reason, actor,"
        " committed_at_ms, message_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, rows[0][0] + 1, new.revision, parent.revision if parent else None, kind,
         dumps(reason) if reason else None, actor, now_ms, new.count),
    )
    if parent is not None:
        await retain(db, session_id, parent)
    await retain(db, session_id, new)


async def entries(db: Any, session_id: str, offset: int, limit: int) -> tuple[list[RevisionEntry], bool]:
    """Newest first; one extra row tells ``has_more``."""
    rows = await db.execute_fetchall(
        "SELECT revision, parent_revision, kind, committed_at_ms, message_count, reason, actor FROM revision_log"
        " WHERE session_id = ? ORDER BY entry DESC LIMIT ? OFFSET ?",
        (session_id, limit + 1, offset),
    )
    out = [
        RevisionEntry(r[0], r[1], r[2], r[3], r[4], _reason.decode(r[5]) if r[5] else None, r[6])
        for r in rows[:limit]
    ]
    return out, len(rows) > limit
