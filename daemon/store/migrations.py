"""Forward-only, named schema migrations: the version in ``schema_version``, each applied
step by name in ``schema_migrations``.

Each entry upgrades the schema by one version inside the caller's ``BEGIN IMMEDIATE``, so
two daemons opening a fresh file at once cannot both migrate it. A database from a newer
Warren is refused rather than guessed at.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, NamedTuple

from .. import errors


class Migration(NamedTuple):
    """One schema step: its version is its place in ``MIGRATIONS``; its name is recorded.
    ``run`` moves data after the SQL, in the same transaction."""

    name: str
    sql: str
    run: Callable[[Any], Awaitable[None]] | None = None


async def _messages_into_segments(db: Any) -> None:
    """Each session's messages become one segment it owns, with ids and hash values; a
    system message whose text a system-context key remembers gets that key."""
    from warren.protocol.types import Message

    from ..clock import new_id
    from . import transcripts
    from .codec import BLOCKS

    keys: dict[tuple[str, str], list[str]] = {}
    for session_id, key, text in await db.execute_fetchall(
        "SELECT session_id, idempotency_key, text FROM system_context_keys"
    ):
        keys.setdefault((session_id, text), []).append(key)
    for (session_id,) in await db.execute_fetchall("SELECT session_id FROM sessions ORDER BY session_id"):
        rows = await db.execute_fetchall(
            "SELECT role, content, created_at_ms, turn_id, source FROM messages_v3 WHERE session_id = ? ORDER BY idx",
            (session_id,),
        )
        messages = []
        for i, (role, content, created, turn_id, source) in enumerate(rows):
            blocks = BLOCKS.decode(content)
            key = None
            if role == "system":
                waiting = keys.get((session_id, "".join(getattr(b, "text", "") for b in blocks)))
                key = waiting.pop(0) if waiting else None
            messages.append(Message(i, role, blocks, created, new_id(), turn_id, source, key))
        if messages:
            path = transcripts.joined([await transcripts.new_segment(db, session_id, messages)])
            await transcripts.set_head(db, session_id, path)


MIGRATIONS: list[Migration] = [
    Migration("sessions_messages_turns_staging", """
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        provider TEXT NOT NULL,
        model TEXT,
        system_prompt TEXT,
        max_tokens INTEGER,
        labels TEXT NOT NULL DEFAULT '{}',
        archived INTEGER NOT NULL DEFAULT 0,
        message_count INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        last_assistant_text TEXT,
        budget TEXT,
        provider_params TEXT,
        provider_state TEXT NOT NULL DEFAULT '{}',
        staged_prompt TEXT,
        tools TEXT NOT NULL DEFAULT '[]',
        next_seq INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX sessions_live_by_update ON sessions (updated_at_ms DESC, session_id DESC)
        WHERE archived = 0;
    CREATE INDEX sessions_by_update ON sessions (updated_at_ms DESC, session_id DESC);

    CREATE TABLE session_labels (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (session_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX session_labels_by_pair ON session_labels (key, value, session_id);

    CREATE TABLE messages (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        turn_id TEXT,
        source TEXT,
        PRIMARY KEY (session_id, idx)
    ) WITHOUT ROWID;

    CREATE TABLE turns (
        turn_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        status TEXT NOT NULL,
        stop_reason TEXT,
        owner TEXT,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        usage TEXT,
        error TEXT
    );
    CREATE UNIQUE INDEX turns_one_running ON turns (session_id) WHERE status = 'running';
    CREATE INDEX turns_by_session ON turns (session_id, started_at_ms);

    CREATE TABLE system_context_keys (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        idempotency_key TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (session_id, idempotency_key)
    ) WITHOUT ROWID;

    CREATE TABLE staged_system_context (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        text TEXT NOT NULL,
        source TEXT,
        idempotency_key TEXT,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX staged_system_context_by_session ON staged_system_context (session_id, id);

    CREATE TABLE pending_tool_calls (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        tool_use_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        arguments TEXT NOT NULL,
        PRIMARY KEY (session_id, tool_use_id)
    ) WITHOUT ROWID;

    CREATE TABLE staged_tool_results (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        tool_use_id TEXT NOT NULL,
        content TEXT NOT NULL,
        is_error INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (session_id, tool_use_id)
    ) WITHOUT ROWID;
    """),
    Migration("tool_timeout", """
    ALTER TABLE sessions ADD COLUMN tool_timeout_ms INTEGER NOT NULL DEFAULT 120000;
    """),
    Migration("events_and_idempotency_keys", """
    CREATE TABLE events (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        seq_last INTEGER NOT NULL,
        turn_id TEXT,
        type TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_by_turn ON events (turn_id, type) WHERE turn_id IS NOT NULL;
    ALTER TABLE sessions ADD COLUMN events_trimmed_through INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE turns ADD COLUMN result TEXT;
    ALTER TABLE turns ADD COLUMN idempotency_key TEXT;
    ALTER TABLE turns ADD COLUMN params_hash TEXT;
    ALTER TABLE turns ADD COLUMN deltas_trimmed INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX turns_by_key ON turns (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE TABLE create_keys (
        idempotency_key TEXT PRIMARY KEY,
        params_hash TEXT NOT NULL,
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        turn_id TEXT,
        created_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """),
    Migration("transcripts_as_shared_segments", """
    ALTER TABLE messages RENAME TO messages_v3;
    CREATE TABLE segments (
        segment_id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        length INTEGER NOT NULL
    );
    CREATE TABLE messages (
        segment_id INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        turn_id TEXT,
        source TEXT,
        idempotency_key TEXT,
        prefix BLOB NOT NULL,
        PRIMARY KEY (segment_id, pos)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_by_id ON messages (message_id);
    CREATE INDEX messages_keyed ON messages (segment_id) WHERE idempotency_key IS NOT NULL;
    ALTER TABLE sessions ADD COLUMN pieces TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE sessions ADD COLUMN forked_from TEXT;
    CREATE TABLE revision_log (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        entry INTEGER NOT NULL,
        revision TEXT NOT NULL,
        parent_revision TEXT,
        kind TEXT NOT NULL,
        reason TEXT,
        actor TEXT,
        committed_at_ms INTEGER NOT NULL,
        message_count INTEGER NOT NULL,
        PRIMARY KEY (session_id, entry)
    ) WITHOUT ROWID;
    CREATE TABLE retained_revisions (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        revision TEXT NOT NULL,
        pieces TEXT NOT NULL,
        PRIMARY KEY (session_id, revision)
    ) WITHOUT ROWID;
    CREATE TABLE append_ops (
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        operation_id TEXT NOT NULL,
        params_hash TEXT NOT NULL,
        result TEXT NOT NULL,
        PRIMARY KEY (session_id, operation_id)
    ) WITHOUT ROWID;
    CREATE TABLE fork_keys (
        idempotency_key TEXT PRIMARY KEY,
        params_hash TEXT NOT NULL,
        session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
        result TEXT NOT NULL
    ) WITHOUT ROWID
    """, _messages_into_segments),
    Migration("drop_v3_messages", """
    DROP TABLE messages_v3
    """),
    Migration("session_cwd_and_title", """
    ALTER TABLE sessions ADD COLUMN cwd TEXT;
    ALTER TABLE sessions ADD COLUMN title TEXT;
    CREATE INDEX sessions_by_cwd ON sessions (cwd, updated_at_ms DESC, session_id DESC) WHERE archived = 0
    """),
    Migration("session_mcp_servers", """
    ALTER TABLE sessions ADD COLUMN mcp_servers TEXT NOT NULL DEFAULT '[]'
    """),
    Migration("staged_steers", """
    ALTER TABLE staged_system_context ADD COLUMN role TEXT NOT NULL DEFAULT 'system'
    """),
    Migration("structured_output", """
    ALTER TABLE sessions ADD COLUMN output_schema TEXT;
    ALTER TABLE sessions ADD COLUMN structured_output_retries INTEGER NOT NULL DEFAULT 2
    """),
    Migration("compaction", """
    ALTER TABLE sessions ADD COLUMN compaction INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE sessions ADD COLUMN compaction_summary TEXT;
    ALTER TABLE sessions ADD COLUMN compaction_keep_from TEXT
    """),
    Migration("blobs", """
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        mime_type TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """),
    Migration("staged_content", """
    ALTER TABLE staged_system_context ADD COLUMN content TEXT
    """),
]

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(db: Any) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found before."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = await db.execute_fetchall("SELECT version FROM schema_version")
        found = int(rows[0][0]) if rows else 0
        if found > SCHEMA_VERSION:
            raise errors.Store(
                f"The database has schema version {found}, newer than this Warren's "
                f"{SCHEMA_VERSION}: upgrade Warren or use another --db",
                reason="newer_schema",
                retryable=False,
            )
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at_ms INTEGER NOT NULL)"
        )
        for version in range(found, SCHEMA_VERSION):
            migration = MIGRATIONS[version]
            for statement in migration.sql.split(";"):
                if statement.strip():
                    await db.execute(statement)
            if migration.run is not None:
                await migration.run(db)
            await db.execute(
                "INSERT OR REPLACE INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)",
                (version + 1, migration.name, int(time.time() * 1000)),
            )
        if not rows:
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found != SCHEMA_VERSION:
            await db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    return found
