"""Where a turn's events go, and how their ``seq`` stays unique across restarts.

``seq`` must keep increasing per session even when a daemon dies mid-turn and another
takes over. A turn therefore commits a *reservation* (``sessions.next_seq`` moved ahead of
what it will use) before it emits, and writes the exact next value when it ends cleanly.
After a crash the next daemon starts above the reservation: the sequence may skip
numbers after a crash, but it never repeats one.
"""

from __future__ import annotations

from typing import Protocol

from protocol.events import Event

RESERVATION = 1 << 16


class EventSink(Protocol):
    async def session_event(self, session_id: str, turn_id: str | None, seq: int, event: Event) -> None:
        """Deliver one event to every subscriber; may wait (backpressure), never drops."""
        ...


class NullSink:
    async def session_event(self, session_id: str, turn_id: str | None, seq: int, event: Event) -> None:
        return None
