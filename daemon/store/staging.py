"""What waits between turns: pending tool calls, staged tool results, staged system
context and the system-context idempotency keys."""

from __future__ import annotations

from typing import Any, NamedTuple

from warren.protocol.types import Block, TextBlock, ToolCall

from .codec import ANY, BLOCKS, dumps


async def pending_tool_calls(db: Any, session_id: str) -> list[ToolCall]:
    rows = await db.execute_fetchall(
        "SELECT tool_use_id, name, arguments FROM pending_tool_calls WHERE session_id = ? ORDER BY position",
        (session_id,),
    )
    return [ToolCall(r[0], r[1], ANY.decode(r[2])) for r in rows]


async def set_pending_tool_calls(db: Any, session_id: str, calls: list[ToolCall]) -> None:
    await db.execute("DELETE FROM pending_tool_calls WHERE session_id = ?", (session_id,))
    await db.executemany(
        "INSERT INTO pending_tool_calls (session_id, tool_use_id, position, name, arguments) VALUES (?, ?, ?, ?, ?)",
        [(session_id, c.tool_use_id, i, c.name, dumps(c.arguments)) for i, c in enumerate(calls)],
    )


async def staged_tool_results(db: Any, session_id: str) -> dict[str, tuple[str, bool]]:
    rows = await db.execute_fetchall(
        "SELECT tool_use_id, content, is_error FROM staged_tool_results WHERE session_id = ?", (session_id,)
    )
    return {r[0]: (r[1], bool(r[2])) for r in rows}


async def stage_tool_results(
    db: Any, session_id: str, results: list[tuple[str, str, bool]], now_ms: int
) -> None:
    await db.executemany(
        "INSERT OR REPLACE INTO staged_tool_results (session_id, tool_use_id, content, is_error, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        [(session_id, tid, content, int(is_error), now_ms) for tid, content, is_error in results],
    )


async def clear_tool_state(db: Any, session_id: str) -> None:
    await db.execute("DELETE FROM staged_tool_results WHERE session_id = ?", (session_id,))
    await db.execute("DELETE FROM pending_tool_calls WHERE session_id = ?", (session_id,))


async def system_context_key(db: Any, session_id: str, key: str) -> str | None:
    rows = await db.execute_fetchall(
        "SELECT text FROM system_context_keys WHERE session_id = ? AND idempotency_key = ?", (session_id, key)
    )
    return rows[0][0] if rows else None


async def remember_system_context_key(db: Any, session_id: str, key: str, text: str) -> None:
    await db.execute(
        "INSERT INTO system_context_keys (session_id, idempotency_key, text) VALUES (?, ?, ?)",
        (session_id, key, text),
    )


async def stage_system_context(
    db: Any, session_id: str, text: str, source: str | None, key: str | None, now_ms: int, role: str = "system",
    content: list[Any] | None = None,
) -> None:
    """Stage a message for the running turn's next commit point: system context, or a
    ``turn/steer`` prompt (``role="user"``)."""
    await db.execute(
        "INSERT INTO staged_system_context (session_id, text, source, idempotency_key, created_at_ms, role, content)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session_id, text, source, key, now_ms, role, dumps(content) if content is not None else None),
    )


async def take_staged_system_context(db: Any, session_id: str) -> list[Staged]:
    rows = await db.execute_fetchall(
        f"SELECT {_STAGED} FROM staged_system_context WHERE session_id = ? ORDER BY id", (session_id,)
    )
    if rows:
        await db.execute("DELETE FROM staged_system_context WHERE session_id = ?", (session_id,))
    return [Staged(*r) for r in rows]


class Staged(NamedTuple):
    id: int
    text: str
    source: str | None
    idempotency_key: str | None
    role: str  # "system": context; "user": a turn/steer prompt
    content: str | None  # the message's blocks as JSON, when more than its text (a steer's images)

    def blocks(self) -> list[Block]:
        return BLOCKS.decode(self.content) if self.content else [TextBlock(self.text)]


_STAGED = "id, text, source, idempotency_key, role, content"


async def staged_system_context(db: Any, session_id: str) -> list[Staged]:
    """What waits for the next commit point; the commit removes exactly these ids
    (``remove_staged_system_context``), so a text staged meanwhile waits for the one after."""
    rows = await db.execute_fetchall(
        f"SELECT {_STAGED} FROM staged_system_context WHERE session_id = ? ORDER BY id", (session_id,)
    )
    return [Staged(*r) for r in rows]


async def remove_staged_system_context(db: Any, ids: list[int]) -> None:
    if ids:
        await db.execute(f"DELETE FROM staged_system_context WHERE id IN ({', '.join('?' * len(ids))})", ids)


async def keep_context_keys(db: Any, session_id: str, held: list[tuple[str, str]]) -> None:
    """After an edit: a key stays taken while a message with it is in the transcript
    (``held``: its keys and texts) or while its text waits staged; any other is freed."""
    await db.execute(
        "DELETE FROM system_context_keys WHERE session_id = ? AND idempotency_key NOT IN"
        " (SELECT idempotency_key FROM staged_system_context WHERE session_id = ? AND idempotency_key IS NOT NULL)",
        (session_id, session_id),
    )
    await db.executemany(
        "INSERT OR IGNORE INTO system_context_keys (session_id, idempotency_key, text) VALUES (?, ?, ?)",
        [(session_id, key, text) for key, text in held],
    )


async def append_op(db: Any, session_id: str, operation_id: str) -> tuple[str, str] | None:
    """``(params_hash, result JSON)`` of an earlier ``session/append`` with this id."""
    rows = await db.execute_fetchall(
        "SELECT params_hash, result FROM append_ops WHERE session_id = ? AND operation_id = ?",
        (session_id, operation_id),
    )
    return (rows[0][0], rows[0][1]) if rows else None


async def remember_append_op(db: Any, session_id: str, operation_id: str, params_hash: str, result: str) -> None:
    await db.execute(
        "INSERT INTO append_ops (session_id, operation_id, params_hash, result) VALUES (?, ?, ?, ?)",
        (session_id, operation_id, params_hash, result),
    )


async def steer_waiting(db: Any, session_id: str) -> bool:
    rows = await db.execute_fetchall(
        "SELECT 1 FROM staged_system_context WHERE session_id = ? AND role = 'user' LIMIT 1", (session_id,)
    )
    return bool(rows)
