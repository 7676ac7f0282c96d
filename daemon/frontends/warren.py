"""Warren's own protocol (v1) over the JSON-RPC peer: one small handler per method, the
``session/event`` encoding, and ``tool/execute`` as the session service's client channel.

Handlers hold no protocol plumbing (that is ``transport``) and no session logic (that is
``core.service``); they are the seam between the two, in the pygls style, each method
name beside its handler.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from warren.protocol import DEFAULT_COALESCE_AFTER_LINES, DEFAULT_MAX_LINE_BYTES, PROTOCOL_VERSION
from warren.protocol import types as t
from warren.protocol.events import (
    DELTA_TYPES,
    ReasoningDelta,
    SessionEventParams,
    StoredEventParams,
    SubscribeParams,
    SessionEventsParams,
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
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        coalesce_after_lines: int = DEFAULT_COALESCE_AFTER_LINES,
        db_path: str | None = None,
        initialize: Initialize | None = None,
    ) -> None:
        """``service`` builds the session service on first use: ``initialize`` and
        ``providers/list`` never need it, so answering them never waits for its imports.
        ``initialize``: its handler, which may already have answered the first request
        (``handshake``) before this front-end existed."""
        self.peer = peer
        self.writer = peer.writer
        self.providers = providers
        self.service = service
        self.max_line_bytes = max_line_bytes
        self.coalesce_after_lines = coalesce_after_lines
        self.initialize = initialize or Initialize(providers, max_line_bytes=max_line_bytes,
                                                   coalesce_after_lines=coalesce_after_lines)
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

        async def shutdown(p: t.ShutdownParams, ctx: RequestContext) -> t.EmptyResult:
            await service().interrupt_all()
            await self.peer.settle_others(ctx.id)
            ctx.after_response = self.peer.stop_reading
            return t.EmptyResult()

        async def create(p: t.SessionCreateParams, ctx: RequestContext) -> Any:
            result = await service().create(p)
            ctx.session_id = result.session_id
            return result

        async def start(p: t.TurnStartParams, ctx: RequestContext) -> t.RunResult:
            return await service().start_turn(p)

        async def interrupt(p: t.TurnInterruptParams, ctx: RequestContext) -> t.InterruptResult:
            return await service().interrupt(p)

        async def read(p: t.SessionIdParams, ctx: RequestContext) -> t.SessionView:
            return await service().read(p.session_id)

        async def list_(p: t.SessionListParams, ctx: RequestContext) -> t.SessionListResult:
            return await service().list(p)

        async def history(p: t.SessionHistoryParams, ctx: RequestContext) -> t.SessionHistoryPage:
            return await service().history(p)

        async def archive(p: t.SessionIdParams, ctx: RequestContext) -> t.ArchiveResult:
            return await service().archive(p.session_id)

        async def append(p: t.AppendSystemContextParams, ctx: RequestContext) -> t.AppendSystemContextResult:
            return await service().append_system_context(p)

        async def stage(p: t.StageToolResultsParams, ctx: RequestContext) -> t.StageToolResultsResult:
            return await service().stage_tool_results(p)

        async def set_tools(p: t.SetToolsParams, ctx: RequestContext) -> t.SetToolsResult:
            return await service().set_tools(p)

        async def providers_list(p: t.ProvidersListParams, ctx: RequestContext) -> t.ProvidersListResult:
            registry = self.providers
            error = registry.config_error
            return t.ProvidersListResult(
                registry.describe(),
                str(registry.config.path) if registry.config.path else None,
                error.message if error else None,
            )

        async def events(p: SessionEventsParams, ctx: RequestContext) -> Any:
            return await service().events(p)

        async def subscribe(p: SubscribeParams, ctx: RequestContext) -> Any:
            return await service().subscribe(p)

        async def unsubscribe(p: UnsubscribeParams, ctx: RequestContext) -> Any:
            return service().unsubscribe(p)

        async def fork(p: t.ForkParams, ctx: RequestContext) -> t.ForkResult:
            return await service().edits.fork(p)

        async def rewrite(p: t.RewriteParams, ctx: RequestContext) -> t.EditResult:
            return await service().edits.rewrite(p)

        async def revisions(p: t.RevisionsParams, ctx: RequestContext) -> t.RevisionsResult:
            return await service().edits.revisions(p)

        async def revision(p: t.RevisionParams, ctx: RequestContext) -> t.RevisionPage:
            return await service().edits.revision(p)

        async def restore(p: t.RestoreParams, ctx: RequestContext) -> t.EditResult:
            return await service().edits.restore(p)

        async def append_messages(p: t.AppendParams, ctx: RequestContext) -> t.AppendResult:
            return await service().edits.append(p)

        async def discover(p: t.DiscoverParams, ctx: RequestContext) -> Any:
            if self._openrpc is None:
                from warren.protocol.schema import openrpc  # builds every schema: only when asked

                self._openrpc = openrpc(__version__)
            return self._openrpc

        async def status(p: t.StatusParams, ctx: RequestContext) -> t.StatusResult:
            schema, count, store = await service().health()
            return t.StatusResult(__version__, PROTOCOL_VERSION, self.db_path, schema,
                                  int((time.monotonic() - self.started) * 1000), len(service().turns), count, store)

        async def blob(p: t.BlobParams, ctx: RequestContext) -> t.BlobResult:
            return await service().blob(p)

        async def compact(p: t.CompactParams, ctx: RequestContext) -> t.CompactResult:
            return await service().compact(p)

        async def steer(p: t.TurnSteerParams, ctx: RequestContext) -> t.TurnSteerResult:
            return await service().steer(p)

        async def mcp_servers(p: t.McpServersParams, ctx: RequestContext) -> t.McpServersResult:
            statuses = await service().mcp_status(p.session_id)
            return t.McpServersResult([msgspec.convert(msgspec.to_builtins(s), t.McpServerInfo) for s in statuses])

        handlers: dict[str, Handler] = {
            "initialize": self.initialize,
            "shutdown": shutdown,
            "session/create": create,
            "turn/start": start,
            "turn/interrupt": interrupt,
            "session/read": read,
            "session/list": list_,
            "session/history": history,
            "session/archive": archive,
            "session/append_system_context": append,
            "session/stage_tool_results": stage,
            "session/set_tools": set_tools,
            "providers/list": providers_list,
            "session/events": events,
            "session/subscribe": subscribe,
            "session/unsubscribe": unsubscribe,
            "session/fork": fork,
            "session/rewrite": rewrite,
            "session/revisions": revisions,
            "session/revision": revision,
            "session/restore": restore,
            "session/append": append_messages,
            "mcp/servers": mcp_servers,
            "turn/steer": steer,
            "session/compact": compact,
            "session/blob": blob,
            "daemon/status": status,
            "rpc.discover": discover,
        }
        missing = set(METHODS) ^ set(handlers)
        if missing:
            raise RuntimeError(f"handlers and protocol.methods disagree on {sorted(missing)}")
        return {name: (spec.params, handlers[name]) for name, spec in METHODS.items()}
