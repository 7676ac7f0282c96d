"""``initialize``: its answer, and answering it before the event loop exists.

An editor spawns the daemon and waits for the answer to ``initialize`` before it shows
anything, so that answer is the start-up time a user feels. Everything it says (methods,
event types, providers, limits; for ACP, the agent's capabilities) is known from the wire
types and the config alone, while the rest of the daemon (anyio and asyncio, the store, the
session service) costs about as much again to import. So ``answer_first_request`` reads the
first line synchronously, and when it is a single ``initialize`` request it answers it
through the same ``Dispatcher``, validation, handler and error mapping the front-end uses
for every other request (``first_request_dispatcher``), before those imports. Any other first line (a batch, a notification, another method, bad JSON, an
oversized line, end of input) is handed over unread to the peer, which handles it exactly
as it always did.

This module must stay cheap to import: msgspec, the wire types and the config, nothing
that imports anyio.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any, Callable

import msgspec

from warren.protocol import MAX_IMAGE_BYTES, MAX_PAGE_SIZE, PROTOCOL_VERSION
from warren.protocol import acp, jsonrpc
from warren.protocol import types as t
from warren.protocol.errors import ErrorObject
from warren.protocol.events import EVENT_TYPES, event_type_name
from warren.protocol.framing import LineBuffer, Oversized
from warren.protocol.methods import METHODS

from .. import __version__, errors
from ..providers import ProviderRegistry
from ..transport.dispatch import Dispatcher, RequestContext

READ_SIZE = 65536
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Handshake(msgspec.Struct):
    """What the first request left for the peer: the line buffer with any bytes read past
    the first line (and the lines already split from them), whether ``initialize`` was
    answered, a stop signal that came meanwhile, and whether the client had already closed
    the daemon's stdout."""

    buffer: LineBuffer
    pending: list[bytes | Oversized]
    answered: bool = False
    stop_signal: int | None = None
    output_gone: bool = False  # the answer could not be written: the client closed our stdout


class Initialize:
    """The ``initialize`` handler, shared by the early answer and ``WarrenFrontend``."""

    def __init__(self, providers: ProviderRegistry, *, max_line_bytes: int, coalesce_after_lines: int) -> None:
        self.providers = providers
        self.max_line_bytes = max_line_bytes
        self.coalesce_after_lines = coalesce_after_lines
        self.tool_execute = False  # the client's capabilities.tool_execute

    async def __call__(self, p: t.InitializeParams, ctx: RequestContext) -> t.InitializeResult:
        if p.protocol_version != PROTOCOL_VERSION:
            raise errors.InvalidRequest.at(
                "$.protocol_version", f"unsupported version {p.protocol_version}; this daemon speaks {PROTOCOL_VERSION}"
            )
        if p.capabilities is not None:
            self.tool_execute = p.capabilities.tool_execute
        if p.client_info is not None:
            ctx.extra["client"] = f"{p.client_info.name} {p.client_info.version}".strip()
        return t.InitializeResult(
            protocol_version=PROTOCOL_VERSION,
            server_info=t.ServerInfo("warren", __version__),
            capabilities=t.ServerCapabilities(
                methods=list(METHODS),
                events=[event_type_name(e) for e in EVENT_TYPES],
                providers=self.providers.names(),
            ),
            limits=t.Limits(max_line_bytes=self.max_line_bytes, max_page_size=MAX_PAGE_SIZE,
                            coalesce_after_lines=self.coalesce_after_lines, max_image_bytes=MAX_IMAGE_BYTES),
        )


def acp_to_wire(exc: BaseException, error_id: str | None) -> ErrorObject:
    """Warren's error family under ACP's codes, Warren's ``data`` kept: an unknown session is
    ACP's "resource not found"; bad params stay -32602; everything else is -32603."""
    wire = errors.to_wire(exc, error_id)
    code = wire.data.get("code")
    if code == "SESSION_NOT_FOUND":
        return ErrorObject(acp.RESOURCE_NOT_FOUND, wire.message, wire.data)
    if wire.code in (-32602, -32601, -32600, -32700, -32800):
        return wire
    return ErrorObject(-32603, wire.message, wire.data)


async def acp_initialize(p: acp.InitializeParams, ctx: RequestContext) -> acp.InitializeResult:
    """ACP's ``initialize``: the version negotiated, and what this agent can do."""
    if p.client_info is not None:
        ctx.extra["client"] = f"{p.client_info.name} {p.client_info.version}".strip()
    return acp.InitializeResult(
        acp.negotiate(p.protocol_version),
        acp.AgentCapabilities(
            load_session=True,
            prompt_capabilities=acp.PromptCapabilities(image=True, audio=False, embedded_context=True),
            mcp_capabilities=acp.McpCapabilities(http=True, sse=False),
            session_capabilities=acp.SessionCapabilities(list={}, resume={}, close={}, delete={}, fork={}),
        ),
        [],
        acp.Implementation("warren", __version__, "Warren"),
    )


def first_request_dispatcher(frontend: str, initialize: Initialize) -> Dispatcher:
    """The front-end's ``initialize`` entry alone, with its error mapping and quiet logging."""
    if frontend == "acp":
        return Dispatcher({"initialize": (acp.InitializeParams, acp_initialize)}, to_wire=acp_to_wire,
                          quiet=frozenset({"initialize"}))
    return Dispatcher({"initialize": (t.InitializeParams, initialize)}, quiet=frozenset({"initialize"}))


class _Stopped(Exception):
    """A stop signal arrived while the first line was awaited."""


def answer_first_request(in_fd: int, out_fd: int, dispatcher: Dispatcher, max_line_bytes: int) -> Handshake:
    """Read up to the first line; answer it here if it is a single ``initialize`` request.

    A stop signal while waiting ends the wait (the daemon then stops as it would have):
    until the event loop runs, nobody else would see it."""
    buffer = LineBuffer(max_line_bytes)
    caught: list[int] = []
    reading = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)
        if reading:  # interrupt the blocking read; anywhere else the signal is only noted
            raise _Stopped()

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    lines: list[bytes | Oversized] = []
    try:
        while not lines and not caught:
            reading = True
            try:
                data = os.read(in_fd, READ_SIZE)
            finally:
                reading = False
            if not data:
                break
            lines = buffer.feed(data)
    except (_Stopped, OSError):
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    handshake = Handshake(buffer, lines, stop_signal=caught[0] if caught else None)
    if not lines or isinstance(lines[0], Oversized):
        return handshake
    message = jsonrpc.parse_line(lines[0])
    if not isinstance(message, jsonrpc.Request) or message.method != "initialize":
        return handshake
    line = _run_to_completion(dispatcher.call,
                              message.id, message.method, message.params)
    if line is None:
        return handshake
    try:
        _write_all(out_fd, line)
    except OSError:
        handshake.output_gone = True
    handshake.pending = lines[1:]
    handshake.answered = True
    return handshake


def _run_to_completion(call: Callable[..., Any], *args: Any) -> bytes | None:
    """Drive the dispatcher's coroutine without a loop. ``initialize`` never awaits, so it
    finishes at the first step; were it ever to wait, the request is left to the peer."""
    coroutine = call(*args)
    try:
        coroutine.send(None)
    except StopIteration as done:
        outcome = done.value
        request_id = args[0]
        if outcome.error is not None:
            return jsonrpc.encode_error(request_id, outcome.error)
        return jsonrpc.encode_result(request_id, outcome.result)
    coroutine.close()
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
