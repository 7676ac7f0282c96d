"""``Client``: the typed methods, the event streams and the tool handler over one ``Connection``,
and ``attach``, the entry point for a daemon whose pipes the caller already holds.

``spawn`` (in ``spawn.py``) starts a daemon and attaches to it the same way, so everything
but the process's lifetime is shared between the two entry points.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import anyio.abc
import msgspec

from warren.protocol import jsonrpc
from warren.protocol import types as t
from warren.protocol.events import EventTypeName

from .connection import DEFAULT_MAX_LINE_BYTES, Connection
from .errors import TransportError
from .events import EventHub, EventStream
from .methods import Methods
from .streams import FdReceiveStream, FdSendStream
from .turn import TurnRun, run_turn

#: Runs one client tool for the daemon (``tool/execute``). A string is shorthand for
#: ``ToolExecuteResult(content=...)``; an exception becomes an error result for the model
#: ("The client's tool/execute failed: <text>").
ToolHandler = Callable[[t.ToolExecuteParams], Awaitable["t.ToolExecuteResult | str"]]


class Client(Methods):
    """A connection to one Warren daemon. Get one from ``spawn`` or ``attach`` (both are
    ``async with``); every protocol method is a method here (see ``Methods``), and
    ``request`` sends any other."""

    def __init__(self, connection: Connection, *, tool_handler: ToolHandler | None = None) -> None:
        self.connection = connection
        self._hub = EventHub()
        self._closing = False
        self._tool_handler: ToolHandler | None = None
        connection.on_notification("session/event", self._hub.dispatch)
        connection.close_callbacks.append(self._connection_lost)
        if tool_handler is not None:
            self.on_tool_execute(tool_handler)

    def _connection_lost(self, failure: TransportError) -> None:
        self._hub.end(None if self._closing else failure)

    # ------------------------------------------------------------------ requests

    async def request(self, method: str, params: Any = None) -> Any:
        """Send any request (``params``: a dict or a params Struct, ``None`` for none) and
        return its result as decoded JSON. Raises ``WarrenError`` or ``TransportError``."""
        return await self.connection.request(method, jsonrpc.ABSENT if params is None else params)

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a notification (the daemon runs it and never answers)."""
        await self.connection.notify(method, jsonrpc.ABSENT if params is None else params)

    async def initialize(
        self,
        *,
        protocol_version: int = 1,
        client_info: t.ClientInfo | None = None,
        capabilities: t.ClientCapabilities | None = None,
    ) -> t.InitializeResult:
        """As the protocol's ``initialize``; without ``capabilities``, a client that has a
        tool handler declares ``tool_execute: true`` (else the daemon would not call it)."""
        if capabilities is None and self._tool_handler is not None:
            capabilities = t.ClientCapabilities(tool_execute=True)
        return await super().initialize(protocol_version=protocol_version, client_info=client_info, capabilities=capabilities)

    # ------------------------------------------------------------------ events

    def events(
        self,
        *,
        session_id: str | None = None,
        turn_id: str | None = None,
        types: Iterable[EventTypeName | str] | None = None,
    ) -> EventStream:
        """An async iterator over the ``session/event`` notifications from now on that
        match (every one by default), as ``SessionEventParams``. It receives from the
        moment it is created, so create it before the request whose events you want::

            async with client.events(session_id=sid) as events, anyio.create_task_group() as tg:
                tg.start_soon(lambda: client.turn_start(session_id=sid, prompt="hi"))
                async for event in events:
                    ...  # break at turn_completed / turn_failed

        All events of a turn arrive before the answer of the request that ran it, so once
        ``turn_start`` has returned, the stream already holds the rest of them.
        """
        return self._hub.open(session_id, turn_id, types)

    def turn(self, *, session_id: str, prompt: t.Prompt, **options: Any) -> contextlib.AbstractAsyncContextManager[TurnRun]:
        """Run a turn and iterate its events, without a task group of your own::

            async with client.turn(session_id=sid, prompt="hi") as run:
                async for event in run:
                    ...  # the session's events until the turn's answer
                result = await run.result()  # the RunResult, or the request's error raised

        ``options`` are ``turn_start``'s other arguments (``model``, ``when_busy``, …).
        Leaving the block before the answer interrupts the turn."""
        return run_turn(self, session_id, prompt, options)

    # ------------------------------------------------------------------ tools

    def on_tool_execute(self, handler: ToolHandler | None) -> None:
        """Run the client's tools with ``handler`` (``None`` stops). Each ``tool/execute``
        runs in its own task; a ``$/cancelRequest`` for it (the session's tool timeout, an
        interrupted turn) cancels that task, and no answer is sent."""
        self._tool_handler = handler
        if handler is None:
            self.connection.handlers.pop("tool/execute", None)
            return

        async def serve(raw: Any) -> Any:
            request = msgspec.convert(raw, t.ToolExecuteParams)
            result = await handler(request)
            return t.ToolExecuteResult(content=result) if isinstance(result, str) else result

        self.connection.handlers["tool/execute"] = serve

    # ------------------------------------------------------------------ ending

    async def aclose(self) -> None:
        """Close the connection now, from any task (pending requests raise
        ``TransportError``); leaving the ``async with`` block also does."""
        self._closing = True
        await self.connection.abort()


@contextlib.asynccontextmanager
async def attach(
    receive: anyio.abc.ByteReceiveStream | int,
    send: anyio.abc.ByteSendStream | int,
    *,
    tool_handler: ToolHandler | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[Client]:
    """A client over a daemon's output (``receive``) and input (``send``): anyio byte
    streams (``process.stdout``, ``process.stdin`` of ``anyio.open_process``, a socket),
    or pipe file descriptors, which the client then owns and closes (pass ``os.dup`` of
    one you keep). Leaving the block closes both; what the daemon does then is its own
    affair (``warren serve`` takes end of input as "the client went away" and exits)."""
    if isinstance(receive, int):
        receive = FdReceiveStream(receive)
    if isinstance(send, int):
        send = FdSendStream(send)
    async with Connection(receive, send, max_line_bytes=max_line_bytes) as connection:
        client = Client(connection, tool_handler=tool_handler)
        try:
            yield client
        finally:
            client._closing = True
