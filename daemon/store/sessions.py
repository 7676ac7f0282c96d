"""The ``sessions`` and ``session_labels`` tables: a session's settings, counters and labels.

Every function runs inside a unit of work given to ``Store.write`` or ``Store.read``; none
opens or commits a transaction. Reads that feed one response are single statements, so
they see one snapshot even on the autocommit read connection.
"""

from __future__ import annotations

from typing import Any

import msgspec

from warren.protocol.types import DEFAULT_TOOL_TIMEOUT_MS, Budget, ForkedFrom, McpServerInput, SessionSummary, ToolDef, Usage

from .codec import ANY, LABELS, TOOLS, dumps

_mcp = msgspec.json.Decoder(list[McpServerInput])


class SessionRow(msgspec.Struct):
    session_id: str
    created_at_ms: int
    updated_at_ms: int
    provider: str
    model: str | None
    system_prompt: str | None
    max_tokens: int | None
    labels: dict[str, str]
    archived: bool
    message_count: int
    usage: Usage
    last_assistant_text: str | None
    budget: Budget | None
    provider_params: dict[str, Any] | None
    provider_state: dict[str, Any]
    staged_prompt: str | None
    tools: list[ToolDef]
    next_seq: int
    running_turn_id: str | None
    running_owner: str | None
    tool_timeout_ms: int = DEFAULT_TOOL_TIMEOUT_MS
    pieces: str = "[]"  # the head transcript (``transcripts.Path``)
    forked_from: ForkedFrom | None = None
    cwd: str | None = None  # the working directory an ACP editor gave
    title: str | None = None  # from the first ACP prompt
    mcp_servers: list[McpServerInput] = []
    output_schema: dict[str, Any] | None = None  # every turn's, unless turn/start gives one
    structured_output_retries: int = 2
    compaction: bool = True
    #: The last compaction: its summary message, and the first message kept after it (ids).
    compaction_summary: str | None = None
    compaction_keep_from: str | None = None


_SESSION_COLUMNS = """
    s.session_id, s.created_at_ms, s.updated_at_ms, s.provider, s.model, s.system_prompt,
    s.max_tokens, s.labels, s.archived, s.message_count, s.input_tokens, s.output_tokens,
    s.cache_read_tokens, s.cache_write_tokens, s.last_assistant_text, s.budget,
    s.provider_params, s.provider_state, s.staged_prompt, s.tools, s.next_seq,
    t.turn_id, t.owner, s.tool_timeout_ms, s.pieces, s.forked_from, s.cwd, s.title, s.mcp_servers,
    s.output_schema, s.structured_output_retries, s.compaction, s.compaction_summary, s.compaction_keep_from
"""
_SESSION_FROM = "sessions s LEFT JOIN turns t ON t.session_id = s.session_id AND t.status = 'running'"


def usage_of(inp: int, out: int, cache_read: int, cache_write: int) -> Usage:
    return Usage(inp, out, inp + out, cache_read or None, cache_write or None)


def _session(row: Any) -> SessionRow:
    return SessionRow(
        session_id=row[0],
        created_at_ms=row[1],
        updated_at_ms=row[2],
        provider=row[3],
        model=row[4],
        system_prompt=row[5],
        max_tokens=row[6],
        labels=LABELS.decode(row[7]),
        archived=bool(row[8]),
        message_count=row[9],
        usage=usage_of(row[10], row[11], row[12], row[13]),
        last_assistant_text=row[14],
        budget=msgspec.json.decode(row[15], type=Budget) if row[15] else None,
        provider_params=ANY.decode(row[16]) if row[16] else None,
        provider_state=ANY.decode(row[17]),
        staged_prompt=row[18],
        tools=TOOLS.decode(row[19]),
        next_seq=row[20],
        running_turn_id=row[21],
        running_owner=row[22],
        tool_timeout_ms=row[23],
        pieces=row[24],
        forked_from=msgspec.json.decode(row[25], type=ForkedFrom) if row[25] else None,
        cwd=row[26],
        title=row[27],
        mcp_servers=_mcp.decode(row[28]),
        output_schema=ANY.decode(row[29]) if row[29] else None,
        structured_output_retries=row[30],
        compaction=bool(row[31]),
        compaction_summary=row[32],
        compaction_keep_from=row[33],
    )


async def get_session(db: Any, session_id: str) -> SessionRow | None:
    rows = await db.execute_fetchall(
        f"SELECT {_SESSION_COLUMNS} FROM {_SESSION_FROM} WHERE s.session_id = ?", (session_id,)
    )
    return _session(rows[0]) if rows else None


async def insert_session(db: Any, row: SessionRow) -> None:
    await db.execute(
        """INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, provider, model,
               system_prompt, max_tokens, labels, budget, provider_params, provider_state,
               staged_prompt, tools, next_seq, tool_timeout_ms, pieces, forked_from, cwd, title, mcp_servers,
               output_schema, structured_output_retries, compaction, compaction_summary, compaction_keep_from)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            row.session_id,
            row.created_at_ms,
            row.updated_at_ms,
            row.provider,
            row.model,
            row.system_prompt,
            row.max_tokens,
            dumps(row.labels),
            dumps(row.budget) if row.budget else None,
            dumps(row.provider_params) if row.provider_params is not None else None,
            dumps(row.provider_state),
            row.staged_prompt,
            dumps(row.tools),
            row.next_seq,
            row.tool_timeout_ms,
            row.pieces,
            dumps(row.forked_from) if row.forked_from else None,
            row.cwd,
            row.title,
            dumps(row.mcp_servers),
            dumps(row.output_schema) if row.output_schema is not None else None,
            row.structured_output_retries,
            int(row.compaction),
            row.compaction_summary,
            row.compaction_keep_from,
        ),
    )
    if row.labels:
        await db.executemany(
            "INSERT INTO session_labels (session_id, key, value) VALUES (?, ?, ?)",
            [(row.session_id, k, v) for k, v in row.labels.items()],
        )


class ListedSession(msgspec.Struct):
    """A ``session/list`` entry, and its running turn (whose owner decides ``is_active``)."""

    summary: SessionSummary
    running_turn_id: str | None
    running_owner: str | None


async def list_sessions(
    db: Any, *, limit: int, offset: int, labels: dict[str, str], include_archived: bool
) -> tuple[list[ListedSession], bool]:
    """Newest ``updated_at_ms`` first; label pairs all must match. Fetches one extra row
    to learn ``has_more`` without counting the table."""
    where: list[str] = []
    args: list[Any] = []
    if not include_archived:
        where.append("s.archived = 0")
    if labels and await _labels_are_selective(db, labels):
        # Few sessions carry the rarest pair: start from the label index and sort those.
        where.append(
            "s.session_id IN ("
            + " INTERSECT ".join("SELECT session_id FROM session_labels WHERE key = ? AND value = ?" for _ in labels)
            + ")"
        )
        args += [x for pair in labels.items() for x in pair]
    else:
        # Many match: walk sessions newest first and stop after one page.
        for key, value in labels.items():
            where.append(
                "EXISTS (SELECT 1 FROM session_labels l WHERE l.session_id = s.session_id"
                " AND l.key = ? AND l.value = ?)"
            )
            args += [key, value]
    sql = f"""
        SELECT s.session_id, s.created_at_ms, s.updated_at_ms, s.message_count,
               s.input_tokens + s.output_tokens, s.labels, s.archived,
               t.turn_id, t.owner
        FROM sessions s LEFT JOIN turns t ON t.session_id = s.session_id AND t.status = 'running' {'WHERE ' + ' AND '.join(where) if where else ''}
        ORDER BY s.updated_at_ms DESC, s.session_id DESC
        LIMIT ? OFFSET ?"""
    rows = await db.execute_fetchall(sql, (*args, limit + 1, offset))
    listed = [
        ListedSession(SessionSummary(r[0], r[1], r[2], r[3], r[4], False, LABELS.decode(r[5]), bool(r[6])), r[7], r[8])
        for r in rows[:limit]
    ]
    return listed, len(rows) > limit


SELECTIVE_LABEL_ROWS = 2000


async def _labels_are_selective(db: Any, labels: dict[str, str]) -> bool:
    """Whether some pair is carried by few sessions (counted on the covering index, with
    a bound so that a common pair costs no more than the bound)."""
    for key, value in labels.items():
        rows = await db.execute_fetchall(
            "SELECT count(*) FROM (SELECT 1 FROM session_labels WHERE key = ? AND value = ? LIMIT ?)",
            (key, value, SELECTIVE_LABEL_ROWS),
        )
        if rows[0][0] < SELECTIVE_LABEL_ROWS:
            return True
    return False


async def update_session(db: Any, session_id: str, **fields: Any) -> None:
    """Set columns by name; JSON-typed values are encoded here."""
    json_columns = {"labels", "budget", "provider_params", "provider_state", "tools", "mcp_servers"}
    cols = []
    args: list[Any] = []
    for name, value in fields.items():
        cols.append(f"{name} = ?")
        args.append(dumps(value) if name in json_columns and value is not None else value)
    await db.execute(f"UPDATE sessions SET {', '.join(cols)} WHERE session_id = ?", (*args, session_id))


async def add_usage(db: Any, session_id: str, usage: Usage) -> None:
    await db.execute(
        """UPDATE sessions SET input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,
               cache_read_tokens = cache_read_tokens + ?, cache_write_tokens = cache_write_tokens + ?
           WHERE session_id = ?""",
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens or 0,
            usage.cache_write_tokens or 0,
            session_id,
        ),
    )


class CreateKey(msgspec.Struct):
    """What a ``session/create`` idempotency key made: its session, and its first turn
    (None for a deferred create)."""

    params_hash: str
    session_id: str
    turn_id: str | None
    created_at_ms: int


async def create_key(db: Any, key: str) -> CreateKey | None:
    rows = await db.execute_fetchall(
        "SELECT params_hash, session_id, turn_id, created_at_ms FROM create_keys WHERE idempotency_key = ?", (key,)
    )
    return CreateKey(*rows[0]) if rows else None


async def remember_create_key(db: Any, key: str, made: CreateKey) -> None:
    await db.execute(
        "INSERT INTO create_keys (idempotency_key, params_hash, session_id, turn_id, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (key, made.params_hash, made.session_id, made.turn_id, made.created_at_ms),
    )


async def fork_key(db: Any, key: str) -> tuple[str, str, str] | None:
    """``(params_hash, session_id, result JSON)`` of the fork an idempotency key made."""
    rows = await db.execute_fetchall(
        "SELECT params_hash, session_id, result FROM fork_keys WHERE idempotency_key = ?", (key,)
    )
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


async def remember_fork_key(db: Any, key: str, params_hash: str, session_id: str, result: str) -> None:
    await db.execute(
        "INSERT INTO fork_keys (idempotency_key, params_hash, session_id, result) VALUES (?, ?, ?, ?)",
        (key, params_hash, session_id, result),
    )


class Titled(msgspec.Struct):
    """A session as an ACP editor lists it."""

    session_id: str
    cwd: str | None
    title: str | None
    updated_at_ms: int


async def list_titled(db: Any, *, cwd: str | None, offset: int, limit: int) -> tuple[list[Titled], bool]:
    """Live sessions newest first, only those in ``cwd`` when it is given; one extra row
    tells whether there are more."""
    where, args = ("archived = 0 AND cwd = ?", [cwd]) if cwd is not None else ("archived = 0", [])
    rows = await db.execute_fetchall(
        f"SELECT session_id, cwd, title, updated_at_ms FROM sessions WHERE {where}"
        " ORDER BY updated_at_ms DESC, session_id DESC LIMIT ? OFFSET ?",
        (*args, limit + 1, offset),
    )
    return [Titled(*r) for r in rows[:limit]], len(rows) > limit
