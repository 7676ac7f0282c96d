"""The ``turns`` table: one row per turn, its status, owner and outcome."""

from __future__ import annotations

from typing import Any

from protocol.types import Usage

from .codec import dumps


async def insert_turn(db: Any, turn_id: str, session_id: str, owner: str, now_ms: int) -> None:
    await db.execute(
        "INSERT INTO turns (turn_id, session_id, status, owner, started_at_ms) VALUES (?, ?, 'running', ?, ?)",
        (turn_id, session_id, owner, now_ms),
    )


async def end_turn(
    db: Any, turn_id: str, *, status: str, stop_reason: str | None, usage: Usage | None,
    now_ms: int, error: dict[str, Any] | None = None,
) -> None:
    await db.execute(
        "UPDATE turns SET status = ?, stop_reason = ?, usage = ?, ended_at_ms = ?, error = ?"
        " WHERE turn_id = ? AND status = 'running'",
        (
            status,
            stop_reason,
            dumps(usage) if usage else None,
            now_ms,
            dumps(error) if error else None,
            turn_id,
        ),
    )


async def running_turns(db: Any) -> list[tuple[str, str, str | None]]:
    rows = await db.execute_fetchall("SELECT turn_id, session_id, owner FROM turns WHERE status = 'running'")
    return [(r[0], r[1], r[2]) for r in rows]
