"""The feature handlers: one small function per method, from validated params to a result.

Handlers hold no protocol logic (that is ``dispatch`` and ``server``) and no session logic
(that is ``service``); they are the seam between the two, in the pygls style.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from protocol import DEFAULT_MAX_LINE_BYTES, MAX_PAGE_SIZE, PROTOCOL_VERSION
from protocol import types as t
from protocol.events import EVENT_TYPES, event_type_name

from .. import __version__, errors
from ..transport.dispatch import Handler, RequestContext
from ..providers import ProviderRegistry
from ..transport.peer import Connection

if TYPE_CHECKING:
    from ..core.service import SessionService


def build_handlers(
    service: Callable[[], "SessionService"],
    providers: ProviderRegistry,
    connection: Connection,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> dict[str, Handler]:
    """``service`` builds the session service on first use: ``initialize`` and
    ``providers/list`` never need it, so answering them never waits for its imports."""

    async def initialize(p: t.InitializeParams, ctx: RequestContext) -> t.InitializeResult:
        if p.protocol_version != PROTOCOL_VERSION:
            raise errors.InvalidRequest.at(
                "$.protocol_version", f"unsupported version {p.protocol_version}; this daemon speaks {PROTOCOL_VERSION}"
            )
        if p.capabilities is not None:
            connection.tool_execute = p.capabilities.tool_execute
        if p.client_info is not None:
            ctx.extra["client"] = f"{p.client_info.name} {p.client_info.version}".strip()
        assert connection.dispatcher is not None
        return t.InitializeResult(
            protocol_version=PROTOCOL_VERSION,
            server_info=t.ServerInfo("warren", __version__),
            capabilities=t.ServerCapabilities(
                methods=connection.dispatcher.methods,
                events=[event_type_name(e) for e in EVENT_TYPES],
                providers=providers.names(),
            ),
            limits=t.Limits(max_line_bytes=max_line_bytes, max_page_size=MAX_PAGE_SIZE),
        )

    async def shutdown(p: t.ShutdownParams, ctx: RequestContext) -> t.EmptyResult:
        await service().interrupt_all()
        await connection.settle_others(ctx.id)
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
        registry = providers
        error = registry.config_error
        return t.ProvidersListResult(
            registry.describe(),
            str(registry.config.path) if registry.config.path else None,
            error.message if error else None,
        )

    return {
        "initialize": initialize,
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
    }
