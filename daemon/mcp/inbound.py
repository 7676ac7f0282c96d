"""What an MCP server may send us: the requests and notifications we answer or note.

One ``Dispatcher`` table (the daemon's own, from ``transport/dispatch.py``) serves both
transports. We declare no client capabilities (no sampling, elicitation or roots), so a
server has no business asking for them; ``roots/list`` still gets an empty list rather
than an error, for servers that ask regardless.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

from warren.daemon.transport.dispatch import Dispatcher, RequestContext

_encoder = msgspec.json.Encoder()


class _Params(msgspec.Struct):
    """Any params: the fields we do not read are ignored."""


class _LogParams(msgspec.Struct):
    level: str = "info"
    logger: str | None = None
    data: Any = None


#: Notifications a server may send that concern features we do not use.
_IGNORED = (
    "notifications/progress",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/prompts/list_changed",
    "notifications/initialized",
)


def inbound_dispatcher(
    server: str, on_tools_changed: Callable[[], None], log_line: Callable[[str, str], None]
) -> Dispatcher:
    async def ping(params: _Params, ctx: RequestContext) -> Any:
        return {}

    async def roots(params: _Params, ctx: RequestContext) -> Any:
        return {"roots": []}

    async def tools_changed(params: _Params, ctx: RequestContext) -> Any:
        on_tools_changed()
        return None

    async def message(params: _LogParams, ctx: RequestContext) -> Any:
        data = params.data if isinstance(params.data, str) else _encoder.encode(params.data).decode()
        where = f"{params.logger}: " if params.logger else ""
        log_line(server, f"[{params.level}] {where}{data}")
        return None

    async def ignore(params: _Params, ctx: RequestContext) -> Any:
        return None

    table: dict[str, tuple[type[msgspec.Struct], Any]] = {
        "ping": (_Params, ping),
        "roots/list": (_Params, roots),
        "notifications/tools/list_changed": (_Params, tools_changed),
        "notifications/message": (_LogParams, message),
        **{name: (_Params, ignore) for name in _IGNORED},
    }
    return Dispatcher(table, quiet=frozenset(table))
