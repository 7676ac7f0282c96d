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
    """Where events go. Split in two so the turn can allocate ``seq`` and queue the event
    with no await in between: ``seq`` order is wire order without any lock."""

    async def wait_writable(self) -> None:
        """Return once an event can be queued (backpressure from a slow client)."""
        ...

    def session_event(self, session_id: str, turn_id: str | None, seq: int, event: Event) -> None:
        """Queue one event for every subscriber; never waits, never drops."""
        ...
