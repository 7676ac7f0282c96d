"""Transcripts: a session's messages as a path through shared, immutable segments.

A *segment* is an append-only run of stored messages (the ``messages`` table, keyed by
``(segment_id, pos)``); a message is stored once and never changes. A session's transcript
is a *path*: a list of pieces ``(segment, start, end)``. Appending extends the session's own
segment (or starts one); forking copies the source's pieces up to a point; a rewrite keeps
the pieces before and after the edited range and adds one segment for the replacement;
restoring puts back a retained list of pieces. None of them copies messages, so their cost
follows the number of pieces, not of messages. Every index and count over a path is
computed here, in ``Path``, and nowhere else.

A revision is a content address of the message sequence. Each message has a hash value
``h`` (sha256 of its id and content, as a number mod ``P``); a sequence's value is the
polynomial ``H = h_0·B^(n-1) + … + h_(n-1)`` mod ``P``, so a concatenation's value comes from
its parts' values: ``H(x + y) = H(x)·B^len(y) + H(y)``. A segment stores each message's prefix
value, so any piece's value takes two reads, and a path's value folds its pieces' values.
The revision string is the sha256 of ``(H, n)``: a function of the messages alone, whatever
edits produced them.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any, NamedTuple

import msgspec

from warren.protocol.types import Message

from .codec import BLOCKS, dumps

P = 2**255 - 19
B = int.from_bytes(hashlib.sha256(b"warren transcript base").digest(), "big") % P
_id_encoder = msgspec.json.Encoder()


def message_hash(message: Message) -> int:
    """What a message contributes to a revision: its id, role and content (and a system
    context's source and key), never its index or time."""
    canonical = _id_encoder.encode(
        (message.message_id, message.role, message.content, message.source, message.idempotency_key)
    )
    return int.from_bytes(hashlib.sha256(canonical).digest(), "big") % P


def concat(h1: int, h2: int, len2: int) -> int:
    return (h1 * pow(B, len2, P) + h2) % P


def revision_of(value: int, count: int) -> str:
    digest = hashlib.sha256(b"warren revision:" + value.to_bytes(32, "big") + count.to_bytes(8, "big"))
    return "sha256:" + digest.hexdigest()


class Piece(NamedTuple):
    segment: int
    start: int
    end: int
    value: int  # the hash value of the messages [start, end) of the segment

    @property
    def length(self) -> int:
        return self.end - self.start


class Path:
    """A transcript as pieces of segments; immutable. Index arithmetic lives here."""

    __slots__ = ("pieces", "starts", "count", "value")

    def __init__(self, pieces: list[Piece]) -> None:
        self.pieces = pieces
        self.starts: list[int] = []
        count = 0
        value = 0
        for piece in pieces:
            self.starts.append(count)
            count += piece.length
            value = concat(value, piece.value, piece.length)
        self.count = count
        self.value = value

    @property
    def revision(self) -> str:
        return revision_of(self.value, self.count)

    def encode(self) -> str:
        return dumps([[p.segment, p.start, p.end, format(p.value, "x")] for p in self.pieces])

    @classmethod
    def decode(cls, raw: str | bytes) -> "Path":
        return cls([Piece(s, a, b, int(v, 16)) for s, a, b, v in _pieces.decode(raw)])

    def locate(self, index: int) -> tuple[int, int]:
        """``(piece number, position in its segment)`` of the message at ``index``."""
        i = bisect.bisect_right(self.starts, index) - 1
        return i, self.pieces[i].start + index - self.starts[i]

    def ranges(self, offset: int, limit: int) -> list[tuple[int, int, int]]:
        """``(segment, start, end)`` ranges holding messages ``[offset, offset+limit)``."""
        end = min(self.count, offset + limit)
        out: list[tuple[int, int, int]] = []
        if offset >= end:
            return out
        i, pos = self.locate(offset)
        remaining = end - offset
        while remaining > 0:
            piece = self.pieces[i]
            take = min(piece.end - pos, remaining)
            out.append((piece.segment, pos, pos + take))
            remaining -= take
            i += 1
            if i < len(self.pieces):
                pos = self.pieces[i].start
        return out

    def index_of(self, segment: int, pos: int) -> int | None:
        """Where the message stored at ``(segment, pos)`` stands in this path, if it does."""
        for start, piece in zip(self.starts, self.pieces):
            if piece.segment == segment and piece.start <= pos < piece.end:
                return start + pos - piece.start
        return None

    def segments(self) -> set[int]:
        return {p.segment for p in self.pieces}


def joined(*parts: list[Piece]) -> Path:
    """A path of these pieces, in order; adjacent pieces of one segment merge."""
    out: list[Piece] = []
    for part in parts:
        for piece in part:
            if piece.length == 0:
                continue
            if out and out[-1].segment == piece.segment and out[-1].end == piece.start:
                last = out.pop()
                piece = Piece(last.segment, last.start, piece.end, concat(last.value, piece.value, piece.length))
            out.append(piece)
    return Path(out)


_pieces = msgspec.json.Decoder(list[tuple[int, int, int, str]])

_COLUMNS = "pos, role, content, created_at_ms, message_id, turn_id, source, idempotency_key"


def _message(index: int, r: Any) -> Message:
    return Message(index, r[1], BLOCKS.decode(r[2]), r[3], r[4], r[5], r[6], r[7])


# ------------------------------------------------------------------ reading


async def head(db: Any, session_id: str) -> Path | None:
    rows = await db.execute_fetchall("SELECT pieces FROM sessions WHERE session_id = ?", (session_id,))
    return Path.decode(rows[0][0]) if rows else None


async def read(db: Any, path: Path, offset: int, limit: int) -> list[Message]:
    """The messages ``[offset, offset+limit)`` of ``path``, with their indexes in it."""
    out: list[Message] = []
    index = offset
    for segment, start, end in path.ranges(offset, limit):
        rows = await db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM messages WHERE segment_id = ? AND pos >= ? AND pos < ? ORDER BY pos",
            (segment, start, end),
        )
        for r in rows:
            out.append(_message(index, r))
            index += 1
    return out


async def all_messages(db: Any, session_id: str) -> list[Message]:
    path = await head(db, session_id)
    return [] if path is None else await read(db, path, 0, path.count)


async def last_message(db: Any, session_id: str) -> Message | None:
    path = await head(db, session_id)
    if path is None or path.count == 0:
        return None
    return (await read(db, path, path.count - 1, 1))[0]


async def history_page(db: Any, session_id: str, offset: int, limit: int) -> tuple[Path, list[Message]] | None:
    path = await head(db, session_id)
    if path is None:
        return None
    return path, await read(db, path, offset, limit)


async def find(db: Any, message_id: str) -> tuple[int, int] | None:
    """``(segment, pos)`` where a message is stored."""
    rows = await db.execute_fetchall("SELECT segment_id, pos FROM messages WHERE message_id = ?", (message_id,))
    return (rows[0][0], rows[0][1]) if rows else None


async def keyed(db: Any, path: Path) -> list[tuple[str, str]]:
    """``(idempotency_key, text)`` of the system-context messages in ``path`` that carry a
    key (few: read through a partial index, then kept if the path holds them)."""
    segments = sorted(path.segments())
    if not segments:
        return []
    rows = await db.execute_fetchall(
        # INDEXED BY: without statistics SQLite would scan the segments' every message by
        # primary key (15 ms on a 100,000-message segment) instead of the few keyed ones.
        f"SELECT segment_id, pos, idempotency_key, content FROM messages INDEXED BY messages_keyed"
        f" WHERE segment_id IN ({', '.join('?' * len(segments))}) AND idempotency_key IS NOT NULL",
        segments,
    )
    out = []
    for segment, pos, key, content in rows:
        if path.index_of(segment, pos) is not None:
            blocks = BLOCKS.decode(content)
            out.append((key, "".join(getattr(b, "text", "") for b in blocks)))
    return out


# ------------------------------------------------------------------ writing


async def _prefix(db: Any, segment: int, pos: int) -> int:
    """The hash value of the segment's messages ``[0, pos)``."""
    if pos <= 0:
        return 0
    rows = await db.execute_fetchall("SELECT prefix FROM messages WHERE segment_id = ? AND pos = ?", (segment, pos - 1))
    return int.from_bytes(rows[0][0], "big")


async def piece(db: Any, segment: int, start: int, end: int) -> Piece:
    """The piece ``[start, end)`` of a segment, with its hash value (two reads)."""
    if start >= end:
        return Piece(segment, start, start, 0)
    before, through = await _prefix(db, segment, start), await _prefix(db, segment, end)
    return Piece(segment, start, end, (through - before * pow(B, end - start, P)) % P)


async def cut(db: Any, path: Path, start: int, end: int) -> list[Piece]:
    """The pieces of ``path``'s messages ``[start, end)``; only the two pieces the cut
    splits are read again."""
    out: list[Piece] = []
    for p_start, p in zip(path.starts, path.pieces):
        lo, hi = max(start, p_start), min(end, p_start + p.length)
        if lo >= hi:
            continue
        if lo == p_start and hi == p_start + p.length:
            out.append(p)
        else:
            out.append(await piece(db, p.segment, p.start + lo - p_start, p.start + hi - p_start))
    return out


async def _write(db: Any, segment: int, pos: int, messages: list[Message]) -> int:
    """Store ``messages`` at ``segment[pos:]``; returns their hash value."""
    prefix = await _prefix(db, segment, pos)
    rows = []
    value = 0
    for i, m in enumerate(messages):
        h = message_hash(m)
        prefix = (prefix * B + h) % P
        value = (value * B + h) % P
        rows.append((segment, pos + i, m.message_id, m.role, dumps(m.content), m.created_at_ms, m.turn_id,
                     m.source, m.idempotency_key, prefix.to_bytes(32, "big")))
    await db.executemany(
        "INSERT INTO messages (segment_id, pos, message_id, role, content, created_at_ms, turn_id, source,"
        " idempotency_key, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return value


async def new_segment(db: Any, owner: str, messages: list[Message]) -> Piece:
    """A segment owned by ``owner`` holding ``messages``, as one piece."""
    cursor = await db.execute("INSERT INTO segments (owner, length) VALUES (?, ?)", (owner, len(messages)))
    segment = int(cursor.lastrowid)
    value = await _write(db, segment, 0, messages)
    return Piece(segment, 0, len(messages), value)


async def set_head(db: Any, session_id: str, path: Path) -> None:
    await db.execute(
        "UPDATE sessions SET pieces = ?, message_count = ? WHERE session_id = ?",
        (path.encode(), path.count, session_id),
    )


async def append(db: Any, session_id: str, messages: list[Message], path: Path | None = None) -> Path:
    """Append to the session's transcript: into its own segment when the head ends where
    that segment ends (the usual case), else into a new one. Returns the new head."""
    if path is None:
        path = await head(db, session_id)
        assert path is not None
    if not messages:
        return path
    last = path.pieces[-1] if path.pieces else None
    if last is not None:
        rows = await db.execute_fetchall("SELECT owner, length FROM segments WHERE segment_id = ?", (last.segment,))
        owner, length = rows[0]
        if owner == session_id and length == last.end:
            value = await _write(db, last.segment, last.end, messages)
            await db.execute("UPDATE segments SET length = ? WHERE segment_id = ?",
                             (last.end + len(messages), last.segment))
            grown = Piece(last.segment, last.start, last.end + len(messages),
                          concat(last.value, value, len(messages)))
            new = Path(path.pieces[:-1] + [grown])
            await set_head(db, session_id, new)
            return new
    new = joined(path.pieces, [await new_segment(db, session_id, messages)])
    await set_head(db, session_id, new)
    return new
