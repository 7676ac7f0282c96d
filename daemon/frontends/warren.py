"""Warren's own protocol (v1) over the JSON-RPC peer: one small handler per method, the
``session/event`` encoding, and ``tool/execute`` as the session service's client channel.

Handlers hold no protocol plumbing (that is ``transport``) and no session logic (that is
``core.service``); they are the seam between the two, in the pygls style, each method
name beside its handler.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import msgspec

from warren.protocol import PROTOCOL_VERSION
from warren.protocol import types as t
from warren.protocol.events import (
    DELTA_TYPES,
    ReasoningDelta,
    SessionEventParams,
    StoredEventParams,
    TextDelta,
    UnsubscribeParams,
)
from warren.protocol.methods import METHODS

from .. import __version__
from .handshake import Initialize
from ..core.events import Numbered
from ..core.tools import ClientError, ClientGone
from ..providers import ProviderRegistry
from ..transport.dispatch import Dispatcher, Handler, RequestContext
from ..transport.peer import Peer, PeerError, PeerGone

if TYPE_CHECKING:
    from ..core.service import SessionService

CANCEL_METHOD = "$/cancelRequest"
EVENT_METHOD = "session/event"

#: Reads that editors poll: logged at debug when they succeed.
QUIET_METHODS = frozenset({
    "initialize", "session/read", "session/list", "session/history", "providers/list", "session/events",
    "session/revisions", "session/revision", "daemon/status", "session/blob",
})


class _EventNote(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str = EVENT_METHOD
    params: SessionEventParams


class _StoredNote(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str = EVENT_METHOD
    params: StoredEventParams


_encode = msgspec.json.Encoder().encode


_prefixes: dict[tuple[str, str | None], bytes] = {}


def _encode_live(numbered: Numbered) -> bytes:
    """The line of an event sent as it happens: the same bytes the structs below encode
    to, with the envelope's start cached per turn (this runs once per delta)."""
    key = (numbered.session_id, numbered.turn_id)
    prefix = _prefixes.get(key)
    if prefix is None:
        if len(_prefixes) > 64:
            _prefixes.clear()
        prefix = _prefixes[key] = (
            b'{"jsonrpc":"2.0","method":"session/event","params":{"session_id":' + _encode(numbered.session_id)
            + b',"turn_id":' + _encode(numbered.turn_id) + b',"seq":'
        )
    return b'%s%d,"timestamp_ms":%d,"event":%s}}\n' % (prefix, numbered.seq, numbered.timestamp_ms,
                                                        _encode(numbered.event))


def encode_event(numbered: Numbered, *, replay: bool = False, seq_first: int | None = None) -> bytes:
    if not replay and seq_first is None and not isinstance(numbered.event, msgspec.Raw):
        return _encode_live(numbered)
    if isinstance(numbered.event, msgspec.Raw):
        params = StoredEventParams(numbered.session_id, numbered.turn_id, numbered.seq, numbered.timestamp_ms,
                                   numbered.event, replay)
        return _encode(_StoredNote(params=params)) + b"\n"
    note = _EventNote(params=SessionEventParams(numbered.session_id, numbered.turn_id, numbered.seq,
                                                numbered.timestamp_ms, numbered.event, seq_first, replay))
    return _encode(note) + b"\n"


class _DeltaLine:
    """A live delta waiting in a slow client's queue; the deltas after it merge into it
    (``Mergeable``), and it is encoded once, when written, with ``seq_first``."""

    __slots__ = ("first", "last", "parts")

    def __init__(self, numbered: Numbered) -> None:
        self.first = self.last = numbered
        self.parts = [numbered.event.delta]

    def merge(self, other: object) -> bool:
        if not isinstance(other, _DeltaLine):
            return False
        last, new = self.last, other.first
        if new.type != last.type or new.seq != last.seq + 1 or new.session_id != last.session_id \
                or new.turn_id != last.turn_id:
            return False
        self.parts.append(new.event.delta)
        if len(self.parts) > 4096:
            self.parts = ["".join(self.parts)]
        self.last = new
        return True

    def encode(self) -> bytes:
        last = self.last
        if last is self.first:
            return encode_event(last)
        cls = TextDelta if last.type == "text_delta" else ReasoningDelta
        merged = Numbered(last.session_id, last.turn_id, last.seq, last.timestamp_ms, last.type, cls("".join(self.parts)))
        return encode_event(merged, seq_first=self.first.seq)


class WarrenFrontend:
    """The v1 front-end of one connection: its dispatcher, its event sink (``deliver``) and
    its client channel (``tool/execute``)."""

    def __init__(
        self,
        peer: Peer,
        providers: ProviderRegistry,
        service: Callable[[], "SessionService"],
        initialize: Initialize,
        *,
        db_path: str | None = None,
    ) -> None:
        """``service`` builds the session service on first use: ``initialize`` and
        ``providers/list`` never need it, so answering them never waits for its imports.
        ``initialize``: its handler, which may already have answered the first request
        (``handshake``) before this front-end existed; it holds the limits it announced."""
        self.peer = peer
        self.writer = peer.writer
        self.providers = providers
        self.service = service
        self.initialize = initialize
        self.coalesce_after_lines = initialize.coalesce_after_lines
        self.db_path = db_path
        self.started = time.monotonic()
        self._openrpc: dict[str, Any] | None = None
        self.dispatcher = Dispatcher(self._table(), quiet=QUIET_METHODS)

    # ------------------------------------------------------------------ the event sink

    def deliver(self, numbered: Numbered, *, replay: bool = False) -> None:
        if replay or isinstance(numbered.event, msgspec.Raw):
            self.writer.send_event(encode_event(numbered, replay=replay))
        else:
            self.deliver_live(numbered)

    def deliver_live(self, numbered: Numbered) -> None:
        writer = self.writer
        if writer.backlog > self.coalesce_after_lines and numbered.type in DELTA_TYPES:
            writer.send_event(_DeltaLine(numbered))
        else:
            writer.send_event(_encode_live(numbered))

    # ------------------------------------------------------------------ the client channel

    def supports_tool_execute(self) -> bool:
        return self.initialize.tool_execute and not self.peer.client_gone

    def stages_tool_results(self) -> bool:
        return True  # session/stage_tool_results: calls the client does not execute wait for it

    async def permit(self, session_id: str, call: Any, timeout_s: float) -> bool:
        return True  # Warren's protocol has no permission question: the client chose the tools

    async def call_client(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        try:
            return await self.peer.request(method, params, timeout_s)
        except PeerGone:
            raise ClientGone() from None
        except PeerError as exc:
            raise ClientError(f"The client's {method} failed: {exc}") from None

    # ------------------------------------------------------------------ methods

    def _table(self) -> dict[str, tuple[type[msgspec.Struct], Handler]]:
        service = self.service

        def forward(call: Callable[[SessionService, Any], Awaitable[Any]]) -> Handler:
            """A method that is the service's own: its validated params straight through."""
            async def handler(p: Any, ctx: RequestContext) -> Any:
                return await call(service(), p)
            return handler

        async def shutdown(p: t.ShutdownParams, ctx: RequestContext) -> t.EmptyResult:
            await service().interrupt_all()
            await self.peer.settle_others(ctx.id)
            ctx.after_response = self.peer.stop_reading
            return t.EmptyResult()

        async def create(p: t.SessionCreateParams, ctx: RequestContext) -> Any:
            result = await service().create(p)
            ctx.session_id = result.session_id
            return result

        async def providers_list(p: t.ProvidersListParams, ctx: RequestContext) -> t.ProvidersListResult:
            registry = self.providers
            error = registry.config_error
            return t.ProvidersListResult(
                registry.describe(),
                str(registry.config.path) if registry.config.path else None,
                error.message if error else None,
            )

        async def unsubscribe(p: UnsubscribeParams, ctx: RequestContext) -> Any:
            return service().unsubscribe(p)

        async def discover(p: t.DiscoverParams, ctx: RequestContext) -> Any:
            if self._openrpc is None:
                from warren.protocol.schema import openrpc  # builds every schema: only when asked

                self._openrpc = openrpc(__version__)
            return self._openrpc

        async def status(p: t.StatusParams, ctx: RequestContext) -> t.StatusResult:
            schema, count, store = await service().health()
            return t.StatusResult(__version__, PROTOCOL_VERSION, self.db_path, schema,
                                  int((time.monotonic() - self.started) * 1000), len(service().turns), count, store)

        async def mcp_servers(p: t.McpServersParams, ctx: RequestContext) -> t.McpServersResult:
            statuses = await service().mcp_status(p.session_id)
            return t.McpServersResult([msgspec.convert(msgspec.to_builtins(s), t.McpServerInfo) for s in statuses])

        handlers: dict[str, Handler] = {
            "initialize": self.initialize,
            "shutdown": shutdown,
            "session/create": create,
            "turn/start": forward(lambda s, p: s.start_turn(p)),
            "turn/interrupt": forward(lambda s, p: s.interrupt(p)),
            "session/read": forward(lambda s, p: s.read(p.session_id)),
            "session/list": forward(lambda s, p: s.list(p)),
            "session/history": forward(lambda s, p: s.history(p)),
            "session/archive": forward(lambda s, p: s.archive(p.session_id)),
            "session/append_system_context": forward(lambda s, p: s.append_system_context(p)),
            "session/stage_tool_results": forward(lambda s, p: s.stage_tool_results(p)),
            "session/set_tools": forward(lambda s, p: s.set_tools(p)),
            "providers/list": providers_list,
            "session/events": forward(lambda s, p: s.events(p)),
            "session/subscribe": forward(lambda s, p: s.subscribe(p)),
            "session/unsubscribe": unsubscribe,
            "session/fork": forward(lambda s, p: s.edits.fork(p)),
            "session/rewrite": forward(lambda s, p: s.edits.rewrite(p)),
            "session/revisions": forward(lambda s, p: s.edits.revisions(p)),
            "session/revision": forward(lambda s, p: s.edits.revision(p)),
            "session/restore": forward(lambda s, p: s.edits.restore(p)),
            "session/append": forward(lambda s, p: s.edits.append(p)),
            "mcp/servers": mcp_servers,
            "turn/steer": forward(lambda s, p: s.steer(p)),
            "session/compact": forward(lambda s, p: s.compact(p)),
            "session/blob": forward(lambda s, p: s.blob(p)),
            "daemon/status": status,
            "rpc.discover": discover,
        }
        missing = set(METHODS) ^ set(handlers)
        if missing:
            raise RuntimeError(f"handlers and protocol.methods disagree on {sorted(missing)}")
        return {name: (spec.params, handlers[name]) for name, spec in METHODS.items()}
