"""The ``events`` table: every stored event of a session, in ``seq`` order.

A row is one event, or a *run* of consecutive deltas of one type (``seq`` .. ``seq_last``;
every delta is stored in a run, even a run of one), whose body holds the deltas and their
timestamps. Storing a 20,000-delta model call is
then some forty inserts rather than twenty thousand, which keeps storing off the streaming
path; reading expands a run back into the events that were sent, one by one.

A body is the event's own JSON as the wire carries it, so a replay re-encodes nothing.
"""

from __future__ import annotations

from typing import Any, Iterator

import msgspec

from warren.protocol.events import DELTA_TYPES


class EventRow(msgspec.Struct):
    session_id: str
    seq: int
    seq_last: int
    turn_id: str | None
    type: str
    timestamp_ms: int
    body: bytes


class Run(msgspec.Struct, array_like=True):
    """The body of a run row: each delta's text and timestamp."""

    deltas: list[str]
    stamps: list[int]


_run_decoder = msgspec.json.Decoder(Run)
_run_encoder = msgspec.json.Encoder()


def run_body(deltas: list[str], stamps: list[int]) -> bytes:
    return _run_encoder.encode(Run(deltas, stamps))


def _delta_json(type_: str, delta: str) -> bytes:
    return b'{"type":"' + type_.encode() + b'","delta":' + _run_encoder.encode(delta) + b"}"


def expand(row: EventRow) -> Iterator[tuple[int, int, bytes]]:
    """``(seq, timestamp_ms, event JSON)`` for each event the row holds."""
    if row.type in DELTA_TYPES:
        run = _run_decoder.decode(row.body)
        for i, (delta, stamp) in enumerate(zip(run.deltas, run.stamps)):
            yield row.seq + i, stamp, _delta_json(row.type, delta)
    else:
        yield row.seq, row.timestamp_ms, row.body


_COLUMNS = "session_id, seq, seq_last, turn_id, type, timestamp_ms, body"
#: The delta types, and as many placeholders (derived: adding a delta type needs no SQL edit).
_DELTA_KINDS = tuple(sorted(DELTA_TYPES))
_DELTA_MARKS = ", ".join("?" * len(_DELTA_KINDS))


def _row(r: Any) -> EventRow:
    return EventRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]))


async def insert(db: Any, rows: list[EventRow]) -> None:
    if rows:
        await db.executemany(
            f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.session_id, r.seq, r.seq_last, r.turn_id, r.type, r.timestamp_ms, r.body) for r in rows],
        )


async def after(db: Any, session_id: str, after_seq: int, limit_rows: int, types: list[str] | None = None) -> list[EventRow]:
    """Rows holding events with ``seq > after_seq``, in order, at most ``limit_rows``.
    The first may be a run that starts at or before ``after_seq``: callers skip what
    they have. One indexed range scan either way."""
    where, args = "", []
    if types is not None:
        where = f" AND type IN ({', '.join('?' * len(types))})"
        args = list(types)
    rows = await db.execute_fetchall(
        f"""SELECT {_COLUMNS} FROM events
            WHERE session_id = ? AND seq >= coalesce(
                (SELECT max(seq) FROM events WHERE session_id = ? AND seq <= ?), 0) {where}
            ORDER BY seq LIMIT ?""",
        (session_id, session_id, after_seq + 1, *args, limit_rows),
    )
    return [row for row in map(_row, rows) if row.seq_last > after_seq]


async def head(db: Any, session_id: str) -> int:
    """The highest stored seq of the session (0 when none)."""
    rows = await db.execute_fetchall(
        "SELECT seq_last FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1", (session_id,)
    )
    return int(rows[0][0]) if rows else 0


async def trimmed_through(db: Any, session_id: str) -> int:
    rows = await db.execute_fetchall("SELECT events_trimmed_through FROM sessions WHERE session_id = ?", (session_id,))
    return int(rows[0][0]) if rows else 0


async def trim_deltas(db: Any, session_id: str, keep_turns: int) -> None:
    """Remove the text and reasoning deltas of all but the session's last ``keep_turns``
    turns, and remember the highest seq removed (``gap`` reports it)."""
    old = await db.execute_fetchall(
        """SELECT turn_id FROM turns WHERE session_id = ? AND deltas_trimmed = 0
           ORDER BY started_at_ms DESC, turn_id DESC LIMIT -1 OFFSET ?""",
        (session_id, keep_turns),
    )
    if not old:
        return
    turn_ids = [r[0] for r in old]
    marks = ", ".join("?" * len(turn_ids))
    deltas = f"turn_id IN ({marks}) AND type IN ({_DELTA_MARKS})"
    top = await db.execute_fetchall(f"SELECT max(seq_last) FROM events WHERE {deltas}", (*turn_ids, *_DELTA_KINDS))
    await db.execute(f"DELETE FROM events WHERE {deltas}", (*turn_ids, *_DELTA_KINDS))
    await db.execute(f"UPDATE turns SET deltas_trimmed = 1 WHERE turn_id IN ({marks})", turn_ids)
    if top and top[0][0] is not None:
        await db.execute(
            "UPDATE sessions SET events_trimmed_through = max(events_trimmed_through, ?) WHERE session_id = ?",
            (top[0][0], session_id),
        )


async def take_seqs(db: Any, session_id: str, count: int) -> int:
    """Hand out ``count`` seqs from the session's counter; returns the first. Only the
    event bus calls this (it alone owns ``seq``)."""
    rows = await db.execute_fetchall("SELECT next_seq FROM sessions WHERE session_id = ?", (session_id,))
    first = int(rows[0][0])
    await db.execute("UPDATE sessions SET next_seq = ? WHERE session_id = ?", (first + count, session_id))
    return first


async def set_next_seq(db: Any, session_id: str, next_seq: int) -> None:
    """Set the counter: a turn's reservation, or the exact next value when it ends."""
    await db.execute("UPDATE sessions SET next_seq = ? WHERE session_id = ?", (next_seq, session_id))
