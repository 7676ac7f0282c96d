"""The ``blobs`` table: image bytes, stored once per content hash and named by it from
messages (``ImageBlock.sha256``), so a history page carries no image data."""

from __future__ import annotations

from typing import Any


async def put(db: Any, sha256: str, mime_type: str, data: bytes, now_ms: int) -> None:
    await db.execute(
        "INSERT OR IGNORE INTO blobs (sha256, mime_type, data, created_at_ms) VALUES (?, ?, ?, ?)",
        (sha256, mime_type, data, now_ms),
    )


async def get(db: Any, sha256: str) -> tuple[str, bytes] | None:
    rows = await db.execute_fetchall("SELECT mime_type, data FROM blobs WHERE sha256 = ?", (sha256,))
    return (rows[0][0], bytes(rows[0][1])) if rows else None


async def get_many(db: Any, hashes: list[str]) -> dict[str, tuple[str, bytes]]:
    if not hashes:
        return {}
    rows = await db.execute_fetchall(
        f"SELECT sha256, mime_type, data FROM blobs WHERE sha256 IN ({', '.join('?' * len(hashes))})", hashes
    )
    return {r[0]: (r[1], bytes(r[2])) for r in rows}
