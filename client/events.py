"""``session/event`` notifications as typed values, and the async iterators that deliver them.

Every notification is decoded once into ``warren.protocol.events.SessionEventParams`` (its
``event`` one of the protocol's event Structs) and handed to each open ``EventStream`` whose
filters match. The protocol promises that new event types and fields may appear and asks
clients to ignore what they do not know, so an event this library cannot decode becomes an
``UnknownEvent`` rather than an error that would end the iteration.

A stream is registered when it is created, not when iteration starts: events that arrive
between ``client.events()`` and the first ``__anext__`` are kept. Its buffer is unbounded on
purpose: the connection's reader must never wait for a slow consumer.
"""

from __future__ import annotations

import itertools
import math
import weakref
from typing import Any, Iterable

import anyio
import anyio.abc
import msgspec

from warren.protocol.events import Event, SessionEventParams

from .errors import ProtocolMismatch, TransportError


class UnknownEvent(Event, tag="unknown"):
    """An event this library could not decode (a type, or a field value, newer than it):
    ``event_type`` is its ``type``, ``fields`` the whole event object as sent."""

    event_type: str
    fields: dict[str, Any]


def decode_event(params: Any) -> SessionEventParams:
    """The typed form of a ``session/event``'s params (or of a ``session/events`` entry)."""
    try:
        return msgspec.convert(params, SessionEventParams)
    except msgspec.ValidationError as exc:
        if not isinstance(params, dict) or not isinstance(params.get("event"), dict):
            raise ProtocolMismatch(f"not a session event: {exc}", params) from exc
        event = params["event"]
        try:
            envelope = msgspec.convert({**params, "event": {"type": "text_delta", "delta": ""}}, SessionEventParams)
        except msgspec.ValidationError as envelope_exc:
            raise ProtocolMismatch(f"not a session event: {envelope_exc}", params) from envelope_exc
        envelope.event = UnknownEvent(event_type=str(event.get("type")), fields=event)
        return envelope


def event_type(params: SessionEventParams) -> str:
    """The ``type`` of an event (``UnknownEvent``s give the type they were sent with)."""
    event = params.event
    if isinstance(event, UnknownEvent):
        return event.event_type
    return event.__struct_config__.tag  # type: ignore[return-value]


class _End:
    """Put in a stream's buffer when its connection is gone: the iteration ends after the
    events already buffered, raising ``failure`` if the daemon went away on its own."""

    __slots__ = ("failure",)

    def __init__(self, failure: TransportError | None) -> None:
        self.failure = failure


class EventStream:
    """The ``session/event`` notifications that match its filters, in arrival order.

    ``async for event in stream`` yields ``SessionEventParams``; the iteration ends when
    the stream is closed or the client is closed, and raises ``TransportError`` if the
    daemon goes away first. Use ``async with`` (or call ``close``) to stop receiving; a
    stream that is garbage collected stops on its own.
    """

    def __init__(self, hub: EventHub, key: int, session_id: str | None, turn_id: str | None, types: frozenset[str] | None) -> None:
        self.session_id = session_id
        self.turn_id = turn_id
        self.types = types
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        self._send: anyio.abc.ObjectSendStream[Any] = send
        self._receive: anyio.abc.ObjectReceiveStream[Any] = receive
        self._finalizer = weakref.finalize(self, hub._unregister, key)

    def matches(self, params: SessionEventParams) -> bool:
        return (
            (self.session_id is None or params.session_id == self.session_id)
            and (self.turn_id is None or params.turn_id == self.turn_id)
            and (self.types is None or event_type(params) in self.types)
        )

    def _put(self, item: Any) -> None:
        try:
            self._send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SessionEventParams:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if isinstance(item, _End):
            self.close()
            if item.failure is not None:
                raise TransportError(*item.failure.args)
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop receiving; events already buffered are dropped."""
        self._finalizer()
        self._send.close()
        self._receive.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """The open ``EventStream``s of one client, fed by its ``session/event`` callback."""

    def __init__(self) -> None:
        self._streams: dict[int, weakref.ReferenceType[EventStream]] = {}
        self._keys = itertools.count()
        self._ended: _End | None = None

    def open(self, session_id: str | None = None, turn_id: str | None = None, types: Iterable[str] | None = None) -> EventStream:
        key = next(self._keys)
        stream = EventStream(self, key, session_id, turn_id, frozenset(types) if types is not None else None)
        if self._ended is not None:
            stream._put(self._ended)
        else:
            self._streams[key] = weakref.ref(stream)
        return stream

    def _unregister(self, key: int) -> None:
        self._streams.pop(key, None)

    def dispatch(self, params: Any) -> None:
        """The ``session/event`` callback: decode once, hand to every matching stream."""
        if not self._streams:
            return
        try:
            event = decode_event(params)
        except ProtocolMismatch:
            return  # not even an envelope: nothing a filter could match
        for ref in list(self._streams.values()):
            stream = ref()
            if stream is not None and stream.matches(event):
                stream._put(event)

    def end(self, failure: TransportError | None) -> None:
        """The connection is gone: every stream ends after what it has buffered."""
        self._ended = _End(failure)
        for ref in list(self._streams.values()):
            stream = ref()
            if stream is not None:
                stream._put(self._ended)
        self._streams.clear()
