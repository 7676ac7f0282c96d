"""The ``turns`` table: one row per turn, its status, owner and outcome."""

from __future__ import annotations

from typing import Any

import msgspec

from warren.protocol.types import Usage

from .codec import dumps


class TurnRow(msgspec.Struct):
    turn_id: str
    session_id: str
    status: str
    owner: str | None
    params_hash: str | None
    result: bytes | None  # the RunResult JSON of an ended turn
    error: bytes | None  # the wire error JSON of a failed one


async def insert_turn(
    db: Any, turn_id: str, session_id: str, owner: str, now_ms: int,
    idempotency_key: str | None = None, params_hash: str | None = None,
) -> None:
    await db.execute(
        "INSERT INTO turns (turn_id, session_id, status, owner, started_at_ms, idempotency_key, params_hash)"
        " VALUES (?, ?, 'running', ?, ?, ?, ?)",
        (turn_id, session_id, owner, now_ms, idempotency_key, params_hash),
    )


_TURN_COLUMNS = "turn_id, session_id, status, owner, params_hash, result, error"


def _turn(r: Any) -> TurnRow:
    return TurnRow(r[0], r[1], r[2], r[3], r[4], r[5].encode() if r[5] else None, r[6].encode() if r[6] else None)


async def get_turn(db: Any, turn_id: str) -> TurnRow | None:
    rows = await db.execute_fetchall(f"SELECT {_TURN_COLUMNS} FROM turns WHERE turn_id = ?", (turn_id,))
    return _turn(rows[0]) if rows else None


async def turn_by_key(db: Any, session_id: str, key: str) -> TurnRow | None:
    rows = await db.execute_fetchall(
        f"SELECT {_TURN_COLUMNS} FROM turns WHERE session_id = ? AND idempotency_key = ?", (session_id, key)
    )
    return _turn(rows[0]) if rows else None


async def end_turn(
    db: Any, turn_id: str, *, status: str, stop_reason: str | None, usage: Usage | None,
    now_ms: int, error: Any = None, result: Any = None,
) -> None:
    """Close a running turn with its outcome: the ``RunResult`` it answered, or the wire
    error it failed with (kept whole, so an idempotent retry gets the same answer)."""
    await db.execute(
        "UPDATE turns SET status = ?, stop_reason = ?, usage = ?, ended_at_ms = ?, error = ?, result = ?"
        " WHERE turn_id = ? AND status = 'running'",
        (
            status,
            stop_reason,
            dumps(usage) if usage else None,
            now_ms,
            dumps(error) if error is not None else None,
            dumps(result) if result is not None else None,
            turn_id,
        ),
    )


async def running_turns(db: Any) -> list[tuple[str, str, str | None]]:
    rows = await db.execute_fetchall("SELECT turn_id, session_id, owner FROM turns WHERE status = 'running'")
    return [(r[0], r[1], r[2]) for r in rows]
