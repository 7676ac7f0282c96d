"""The event bus: the one place that hands out ``seq``, keeps events until they are stored,
and fans them out to the connection running a turn and to subscribers.

Numbering. A session's events are numbered 1, 2, 3 … across turns, daemons and restarts,
never repeating. Two kinds of writer number them:

- A turn running in this daemon. Its claim reserves a range (``sessions.next_seq`` moved
  ``RESERVATION`` ahead, in the claim's own commit); the bus numbers the turn's events from
  that range with no await, and extends the range in the store before using past it. The
  commit that ends the turn stores its last event and sets ``next_seq`` to exactly the next
  number. A daemon that dies mid-turn leaves the reservation behind, so after a crash the
  sequence skips a range but never repeats one.
- A change to an idle session (a system context applied between turns): its events are
  numbered inside the unit that writes the change (``append``), from the stored counter.

Storing. A turn's events wait in its ``TurnLog`` until the commit of the state they report
takes them (``take``); deltas are packed into runs (see ``store.events``). Events that report
a commit's outcome (``usage``, ``tool_call_requested``, ``turn_completed``) are *staged*:
numbered and stored with the commit, and sent only once it holds, so nothing is sent that
the store then contradicts. Deltas are sent first and stored at the latest with their
model call's commit.

Fan-out. Each connection (a ``Sink``) has one ``Feed`` per session it receives: because
it runs a turn there, or subscribed. A feed remembers the last seq it delivered, so an
event reaches a connection once however many reasons it has to get it, and a feed that
sees a jump fetches the missing events from the store first. Other daemons' events arrive
by tailing the store: while anything is subscribed, ``run`` polls SQLite's
``data_version`` (a few microseconds) and reads only the subscribed sessions' new rows.
Nobody subscribed, no polling.
"""

from __future__ import annotations

import itertools
import sqlite3
from time import time_ns
from typing import Any, Iterable, Protocol

import anyio
import msgspec

from warren.protocol.events import (
    DELTA_TYPES,
    Event,
    EventGap,
    SessionEventsResult,
    StoredEventParams,
    SubscribeResult,
    event_type_name,
)

from ..clock import now_ms
from ..logs import get_logger
from ..store import Store
from ..store import events as event_rows
from ..store.events import EventRow

log = get_logger("warren.events")

RESERVATION = 1 << 16
RUN_MAX = 512  # deltas in one stored row
TAIL_ROWS = 1000  # rows one poll reads per session
_encode = msgspec.json.Encoder().encode
_TYPE_NAMES: dict[type, str] = {}


def type_of(event: Event) -> str:
    name = _TYPE_NAMES.get(type(event))
    if name is None:
        name = _TYPE_NAMES[type(event)] = event_type_name(type(event))
    return name


class Numbered(msgspec.Struct, gc=False):
    """An event with its number. ``event`` is the Event itself when this daemon produced
    it, or its JSON (``msgspec.Raw``) when it was read back from the store."""

    session_id: str
    turn_id: str | None
    seq: int
    timestamp_ms: int
    type: str
    event: Any

    def stored(self) -> StoredEventParams:
        raw = self.event if isinstance(self.event, msgspec.Raw) else msgspec.Raw(_encode(self.event))
        return StoredEventParams(self.session_id, self.turn_id, self.seq, self.timestamp_ms, raw)


class Sink(Protocol):
    """A connection, as the bus sees it: it takes events and never makes the bus wait
    (a slow reader's deltas are merged in its queue instead)."""

    def deliver(self, event: Numbered, *, replay: bool = False) -> None: ...

    def deliver_live(self, event: Numbered) -> None:
        """``deliver`` for an event this daemon just produced (not replayed, not read back)."""
        ...


class _Pending:
    """A turn's events not yet stored: single events and runs of deltas, in order."""

    __slots__ = ("rows", "open_run", "taken")

    def __init__(self) -> None:
        self.rows: list[Numbered | _RunBuilder] = []
        self.open_run: _RunBuilder | None = None
        self.taken = 0  # rows[:taken] are in a commit under way

    def add(self, n: Numbered) -> None:
        if n.type in DELTA_TYPES:
            run = self.open_run
            if run is None or run.type != n.type or run.seq_last + 1 != n.seq or len(run.deltas) >= RUN_MAX:
                run = self.open_run = _RunBuilder(n)
                self.rows.append(run)
            else:  # the hot path of every delta: kept inline
                run.seq_last = n.seq
                run.deltas.append(n.event.delta)
                stamps = run.stamps
                # most deltas share their millisecond: one int object for it, not one each
                stamps.append(stamps[-1] if stamps[-1] == n.timestamp_ms else n.timestamp_ms)
        else:
            self.open_run = None
            self.rows.append(n)

    def take(self) -> list[EventRow]:
        self.open_run = None  # a run handed to a commit is closed
        self.taken = len(self.rows)
        return [r.row() if isinstance(r, _RunBuilder) else _single_row(r) for r in self.rows]

    def stored(self) -> None:
        del self.rows[: self.taken]
        self.taken = 0

    def unstored(self) -> None:
        self.taken = 0

    def events(self) -> Iterable[Numbered]:
        for r in self.rows:
            if isinstance(r, _RunBuilder):
                yield from r.events()
            else:
                yield r


class _RunBuilder:
    __slots__ = ("session_id", "turn_id", "type", "seq", "seq_last", "deltas", "stamps")

    def __init__(self, n: Numbered) -> None:
        self.session_id, self.turn_id, self.type = n.session_id, n.turn_id, n.type
        self.seq = self.seq_last = n.seq
        self.deltas: list[str] = [n.event.delta]
        self.stamps: list[int] = [n.timestamp_ms]

    def row(self) -> EventRow:
        return EventRow(self.session_id, self.seq, self.seq_last, self.turn_id, self.type, self.stamps[0],
                        event_rows.run_body(self.deltas, self.stamps))

    def events(self) -> Iterable[Numbered]:
        from warren.protocol.events import ReasoningDelta, TextDelta

        cls = TextDelta if self.type == "text_delta" else ReasoningDelta
        for i, (delta, stamp) in enumerate(zip(self.deltas, self.stamps)):
            yield Numbered(self.session_id, self.turn_id, self.seq + i, stamp, self.type, cls(delta))


def _single_row(n: Numbered) -> EventRow:
    body = bytes(n.event) if isinstance(n.event, msgspec.Raw) else _encode(n.event)
    return EventRow(n.session_id, n.seq, n.seq, n.turn_id, n.type, n.timestamp_ms, body)


def _from_rows(rows: Iterable[EventRow]) -> Iterable[Numbered]:
    for row in rows:
        for seq, stamp, body in event_rows.expand(row):
            yield Numbered(row.session_id, row.turn_id, seq, stamp, row.type, msgspec.Raw(body))


class TurnLog:
    """One turn's numbering and unstored events. Created by ``EventBus.open_turn``."""

    def __init__(self, session_id: str, turn_id: str, first: int, reserved: int, sink: Sink | None) -> None:
        self.session_id = session_id
        self.turn_id = turn_id
        self.first = first
        self.next = first
        self.reserved = reserved
        self.sink = sink
        self.pending = _Pending()
        self.final: Numbered | None = None  # once staged, nothing more of the turn goes out
        self.sent = first - 1  # the highest seq sent
        self.staged = 0  # staged events not yet published or retracted
        self.held: list[Numbered] = []  # emitted while some were staged: they wait their turn
        self.lock = anyio.Lock()


class Feed:
    """What one connection receives of one session."""

    def __init__(self, sink: Sink, session_id: str, floor: int) -> None:
        self.sink = sink
        self.session_id = session_id
        self.floor = floor  # the last seq delivered (or passed over by the filters)
        self.turns = 0  # turns of this session running here for this connection
        self.subscriptions: dict[str, frozenset[str] | None] = {}

    def wants(self, type_: str) -> bool:
        if self.turns:
            return True
        return any(types is None or type_ in types for types in self.subscriptions.values())


class EventBus:
    def __init__(self, store: Store, *, keep_delta_turns: int | None = None, poll_interval_s: float = 0.005) -> None:
        self.store = store
        self.keep_delta_turns = keep_delta_turns
        self.poll_interval_s = poll_interval_s
        self._turns: dict[str, TurnLog] = {}  # session_id -> its turn running here
        self._feeds: dict[tuple[int, str], Feed] = {}
        self._by_session: dict[str, list[Feed]] = {}  # the same feeds, found per event
        self._subscriptions: dict[str, Feed] = {}
        self._ids = itertools.count(1)
        self._watchers = 0  # waiters on other daemons' commits (idempotent retries)
        self._wake = anyio.Event()
        self._changed = anyio.Event()

    # ------------------------------------------------------------------ numbering, for turns

    async def reserve(self, db: Any, session_id: str) -> tuple[int, int]:
        """In a turn's claim unit: reserve a range of seqs; returns ``(first, reserved)``."""
        first = await event_rows.take_seqs(db, session_id, RESERVATION)
        return first, first + RESERVATION

    def open_turn(self, session_id: str, turn_id: str, first: int, reserved: int, sink: Sink | None) -> TurnLog:
        turn = self._turns[session_id] = TurnLog(session_id, turn_id, first, reserved, sink)
        if sink is not None:
            feed = self._feed(sink, session_id, first - 1)
            feed.turns += 1
        return turn

    def close_turn(self, turn: TurnLog) -> None:
        """The turn ended: drop what it did not store, and its claim on the feed."""
        if self._turns.get(turn.session_id) is turn:
            del self._turns[turn.session_id]
        if turn.pending.rows:
            log.warning("events_not_stored", session_id=turn.session_id, turn_id=turn.turn_id,
                        rows=len(turn.pending.rows))
        if turn.sink is not None:
            feed = self._feeds.get((id(turn.sink), turn.session_id))
            if feed is not None:
                feed.turns -= 1
                self._forget_if_idle(feed)

    def emit_now(self, turn: TurnLog, event: Event, type_: str | None = None) -> bool:
        """``emit``'s path for nearly every event, with no await (a delta pays for nothing
        else): False when the reserved range is used up, and ``emit`` must grow it first.
        ``type_``: the event's type, when the caller knows it."""
        if turn.next >= turn.reserved:
            return False
        if turn.final is not None:
            log.debug("event_after_final", session_id=turn.session_id, type=type_of(event))
            return True
        seq = turn.next
        turn.next = seq + 1
        numbered = Numbered(turn.session_id, turn.turn_id, seq, time_ns() // 1_000_000, type_ or type_of(event), event)
        pending = turn.pending
        run = pending.open_run
        if run is not None and run.type == numbered.type and run.seq_last + 1 == seq and seq - run.seq < RUN_MAX:
            run.seq_last = seq  # the hot path of every delta, inline (see ``_Pending.add``)
            run.deltas.append(event.delta)  # type: ignore[attr-defined]
            stamps = run.stamps
            stamps.append(stamps[-1] if stamps[-1] == numbered.timestamp_ms else numbered.timestamp_ms)
        else:
            pending.add(numbered)
        if turn.staged:
            turn.held.append(numbered)
        else:
            turn.sent = seq
            for feed in self._by_session.get(turn.session_id, ()):
                if feed.turns and feed.floor == seq - 1:  # the connection running the turn
                    feed.floor = seq
                    feed.sink.deliver_live(numbered)
                else:
                    self._offer(feed, numbered)
        return True

    async def emit(self, turn: TurnLog, event: Event) -> None:
        """Number an event, keep it for the store, and send it now (after any staged
        event numbered before it: the wire carries a session's events in seq order)."""
        if self.emit_now(turn, event):
            return
        numbered = await self._number(turn, event)
        if numbered is None:
            return
        if turn.staged:
            turn.held.append(numbered)
        else:
            self._send(turn, numbered)

    async def stage(self, turn: TurnLog, event: Event, *, final: bool = False) -> Numbered | None:
        """Number an event and keep it for the next commit; ``publish`` sends it once that
        commit holds. ``final``: the turn's last event (nothing is emitted after it)."""
        numbered = await self._number(turn, event)
        if numbered is not None:
            turn.staged += 1
            if final:
                turn.final = numbered
        return numbered

    def publish(self, turn: TurnLog, staged: Iterable[Numbered | None]) -> None:
        """Send staged events whose commit held (and what waited behind them)."""
        for numbered in staged:
            if numbered is not None:
                turn.staged -= 1
                self._send(turn, numbered)
        self._release(turn)

    def _release(self, turn: TurnLog) -> None:
        if not turn.staged and turn.held:
            held, turn.held = turn.held, []
            for numbered in sorted(held, key=lambda n: n.seq):
                self._send(turn, numbered)

    def _send(self, turn: TurnLog, numbered: Numbered) -> None:
        turn.sent = numbered.seq
        self._fan_out(numbered)

    def retract(self, turn: TurnLog, staged: list[Numbered | None]) -> None:
        """A commit failed: forget events staged for it. Their numbers are given back when
        nothing was numbered after them, else they are skipped (never reused)."""
        gone = {n.seq for n in staged if n is not None}
        turn.staged -= len(gone)
        if not gone:
            self._release(turn)
            return
        turn.pending.rows = [r for r in turn.pending.rows if not (isinstance(r, Numbered) and r.seq in gone)]
        turn.pending.open_run = None
        if turn.final is not None and turn.final.seq in gone:
            turn.final = None
        while turn.next - 1 in gone:
            turn.next -= 1
            gone.discard(turn.next)
        self._release(turn)

    def take(self, turn: TurnLog) -> list[EventRow]:
        """The rows a commit unit stores; ``stored`` or ``unstored`` once it is decided."""
        return turn.pending.take()

    def stored(self, turn: TurnLog) -> None:
        turn.pending.stored()

    def unstored(self, turn: TurnLog) -> None:
        turn.pending.unstored()

    async def _number(self, turn: TurnLog, event: Event) -> Numbered | None:
        if turn.final is not None:
            log.debug("event_after_final", session_id=turn.session_id, type=type_of(event))
            return None
        if turn.next >= turn.reserved:
            async with turn.lock:
                if turn.next >= turn.reserved:
                    target = turn.reserved + RESERVATION
                    await self.store.write(lambda db: event_rows.set_next_seq(db, turn.session_id, target))
                    turn.reserved = target
            if turn.final is not None:
                return None
        numbered = Numbered(turn.session_id, turn.turn_id, turn.next, now_ms(), type_of(event), event)
        turn.next += 1
        turn.pending.add(numbered)
        return numbered

    # ------------------------------------------------------------------ numbering, for idle sessions

    async def append(self, db: Any, session_id: str, events: list[Event], turn_id: str | None = None) -> list[Numbered]:
        """In a unit that changes an idle session: number ``events`` from the stored
        counter and store them with the change. ``publish`` them once the unit commits."""
        if not events:
            return []
        first = await event_rows.take_seqs(db, session_id, len(events))
        now = now_ms()
        numbered = [Numbered(session_id, turn_id, first + i, now, type_of(e), e) for i, e in enumerate(events)]
        await event_rows.insert(db, [_single_row(n) for n in numbered])
        return numbered

    # ------------------------------------------------------------------ delivery

    def deliver_committed(self, events: Iterable[Numbered]) -> None:
        """Send the events of an idle session's change once its unit committed."""
        for numbered in events:
            self._fan_out(numbered)

    def _fan_out(self, numbered: Numbered) -> None:
        for feed in self._by_session.get(numbered.session_id, ()):
            self._offer(feed, numbered)

    def _offer(self, feed: Feed, numbered: Numbered) -> None:
        seq = numbered.seq
        if seq <= feed.floor:
            return
        if feed.subscriptions and seq > feed.floor + 1:
            self._fill(feed, seq)
        feed.floor = seq
        if feed.turns or feed.wants(numbered.type):
            feed.sink.deliver(numbered)

    def _fill(self, feed: Feed, before: int) -> None:
        """Deliver what the store holds between the feed's last seq and ``before`` (the
        events of a turn another daemon ran, not yet seen by the tail)."""
        try:
            self._catch_up(feed, before)
        except (sqlite3.Error, anyio.WouldBlock) as exc:
            log.warning("event_fill_failed", session_id=feed.session_id, error=str(exc))

    def _catch_up(self, feed: Feed, before: int | None = None) -> None:
        """Deliver, in order, the stored events after the feed's floor (up to ``before``),
        advancing the floor past each: the one loop both the gap fill and the tail use."""
        rows = self.store.read_now(lambda db: event_rows.after(db, feed.session_id, feed.floor, TAIL_ROWS))
        for numbered in _from_rows(rows):
            if before is not None and numbered.seq >= before:
                break
            if numbered.seq > feed.floor:
                feed.floor = numbered.seq
                if feed.wants(numbered.type):
                    feed.sink.deliver(numbered)

    def _feed(self, sink: Sink, session_id: str, floor: int) -> Feed:
        key = (id(sink), session_id)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(sink, session_id, floor)
            self._by_session.setdefault(session_id, []).append(feed)
        return feed

    def _forget_if_idle(self, feed: Feed) -> None:
        if not feed.turns and not feed.subscriptions:
            if self._feeds.pop((id(feed.sink), feed.session_id), None) is not None:
                feeds = self._by_session[feed.session_id]
                feeds.remove(feed)
                if not feeds:
                    del self._by_session[feed.session_id]

    # ------------------------------------------------------------------ reading and subscribing

    async def page(self, session_id: str, after_seq: int, limit: int, types: list[str] | None) -> SessionEventsResult:
        async def read(db: Any) -> tuple[list[EventRow], int, int]:
            rows = await event_rows.after(db, session_id, after_seq, limit + 2, types)
            return rows, await event_rows.head(db, session_id), await event_rows.trimmed_through(db, session_id)

        rows, head, trimmed = await self.store.read(read, small=limit <= 100)
        wanted = None if types is None else frozenset(types)
        events: list[StoredEventParams] = []
        more = False
        for numbered in _from_rows(rows):
            if numbered.seq <= after_seq or (wanted is not None and numbered.type not in wanted):
                continue
            if len(events) == limit:
                more = True
                break
            events.append(numbered.stored())
        next_seq = events[-1].seq + 1 if events else max(after_seq, head) + 1
        gap = EventGap(after_seq, trimmed + 1) if after_seq < trimmed else None
        return SessionEventsResult(session_id, events, next_seq if events or more else head + 1, more, gap)

    async def subscribe(
        self, sink: Sink, session_id: str, after_seq: int | None, types: list[str] | None
    ) -> SubscribeResult:
        """Replay stored events after ``after_seq`` (as ``replay``), then register the
        subscription so that live events follow with no hole and no repeat. The bulk of
        the replay is read in pages; the last catch-up, the turn's unstored events and
        the registration happen with no await in between."""
        wanted = None if types is None else frozenset(types)
        existing = self._feeds.get((id(sink), session_id))
        turn = self._turns.get(session_id)
        # What this connection already got live (the turn it runs) is not replayed again.
        skip = range(turn.first, turn.sent + 1) if turn is not None and turn.sink is sink else range(0)
        position = after_seq
        trimmed = 0
        if after_seq is not None:
            trimmed = await self.store.read(lambda db: event_rows.trimmed_through(db, session_id))
            while True:
                rows = await self.store.read(
                    lambda db, p=position: event_rows.after(db, session_id, p, TAIL_ROWS), small=False
                )
                position = self._replay(sink, rows, position, wanted, skip)
                if len(rows) < TAIL_ROWS:
                    break
        while True:
            try:
                head = self.store.read_now(lambda db: event_rows.head(db, session_id))
                if position is not None:
                    rows = self.store.read_now(lambda db: event_rows.after(db, session_id, position, TAIL_ROWS))
                    position = self._replay(sink, rows, position, wanted, skip)
            except anyio.WouldBlock:
                await anyio.sleep(0.001)
                continue
            break
        if position is not None and turn is not None:
            sent = (n for n in turn.pending.events() if n.seq <= turn.sent)
            position = self._replay(sink, [], position, wanted, skip, extra=sent)
        live_from = turn.sent + 1 if turn is not None else head + 1
        # An after_seq past the end replays nothing and is clamped: live events start at the end.
        feed = self._feed(sink, session_id, live_from - 1)
        if existing is not None:
            feed.floor = max(feed.floor, existing.floor)
        subscription_id = f"sub-{next(self._ids)}"
        feed.subscriptions[subscription_id] = wanted
        self._subscriptions[subscription_id] = feed
        self._wake.set()
        gap = EventGap(after_seq, trimmed + 1) if after_seq is not None and after_seq < trimmed else None
        return SubscribeResult(subscription_id, session_id, feed.floor + 1, gap)

    def _replay(
        self, sink: Sink, rows: list[EventRow], position: int, wanted: frozenset[str] | None,
        skip: range, extra: Iterable[Numbered] = (),
    ) -> int:
        for source in (_from_rows(rows), extra):
            for numbered in source:
                if numbered.seq <= position:
                    continue
                position = numbered.seq
                if numbered.seq not in skip and (wanted is None or numbered.type in wanted):
                    sink.deliver(numbered, replay=True)
        return position

    def unsubscribe(self, subscription_id: str) -> bool:
        feed = self._subscriptions.pop(subscription_id, None)
        if feed is None:
            return False
        feed.subscriptions.pop(subscription_id, None)
        self._forget_if_idle(feed)
        return True

    def drop_sink(self, sink: Sink) -> None:
        """A connection ended: its subscriptions end with it."""
        for sub_id, feed in list(self._subscriptions.items()):
            if feed.sink is sink:
                self.unsubscribe(sub_id)

    # ------------------------------------------------------------------ other daemons

    async def watch(self, timeout_s: float = 0.25) -> None:
        """Wait until another connection to the file may have committed something (for a
        retry that follows a turn another daemon runs), or ``timeout_s``: the caller looks
        again either way, so a change that landed just before the wait is not missed."""
        self._watchers += 1
        self._wake.set()
        try:
            with anyio.move_on_after(timeout_s):
                await self._changed.wait()
        finally:
            self._watchers -= 1

    async def run(self) -> None:
        """Tail the store for other daemons' events, only while somebody listens."""
        if self.store.path is None:
            return  # an in-memory store has no other daemon
        version: int | None = None
        while True:
            if not self._subscriptions and not self._watchers:
                version = None
                self._wake = anyio.Event()
                await self._wake.wait()
            await anyio.sleep(self.poll_interval_s)
            try:
                current = self.store.data_version()
            except (sqlite3.Error, anyio.WouldBlock):
                continue
            if current == version:
                continue
            version = current
            self._changed.set()
            self._changed = anyio.Event()
            self._tail()

    def _tail(self) -> None:
        for feed in {id(f): f for f in self._subscriptions.values()}.values():
            try:
                self._catch_up(feed)
            except (sqlite3.Error, anyio.WouldBlock):
                continue


__all__ = ["EventBus", "Feed", "Numbered", "RESERVATION", "Sink", "TurnLog", "type_of"]
