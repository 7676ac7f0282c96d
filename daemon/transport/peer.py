"""The JSON-RPC connection over stdio: framing in, dispatch, responses and events out.

The reader never awaits a handler: each request runs in its own task, so a long
``turn/start`` cannot delay ``session/read`` or ``turn/interrupt``. Everything that goes out
passes through the one ``Writer``, in the order it was produced; a turn's events are sent
before the response that ends it because the turn awaits each event's ``send`` first.
"""

from __future__ import annotations

from typing import Any, Callable

import anyio
import msgspec

from protocol import jsonrpc
from protocol.errors import ErrorObject, error_object
from protocol.events import Event, SessionEventParams
from protocol.framing import LineBuffer, Oversized
from protocol.methods import CLIENT_NOTIFICATIONS

from ..clock import now_ms
from .dispatch import Dispatcher
from .stdio import Writer, read_chunks
from ..core.tools import ClientError, ClientGone
from ..logs import get_logger

log = get_logger("warren.server")


class _EventNotification(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str = "session/event"
    params: SessionEventParams


_event_encoder = msgspec.json.Encoder()


class _Outbound:
    """A request the daemon sent to the client, waiting for its response."""

    __slots__ = ("done", "result", "error", "gone")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: Any = None
        self.gone = False


def _client_error_text(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"The client's tool/execute failed: {error['message']}"
    return "The client's tool/execute failed"


class Connection:
    def __init__(self, writer: Writer, *, max_line_bytes: int, shutdown_grace_s: float = 5.0) -> None:
        self.writer = writer
        self.max_line_bytes = max_line_bytes
        self.shutdown_grace_s = shutdown_grace_s
        self.dispatcher: Dispatcher | None = None
        self.on_shutdown: Callable[[], Any] | None = None  # async: interrupt turns etc.
        self.on_first_line: Callable[[], None] | None = None  # start work deferred past start-up
        self._inflight: dict[Any, anyio.CancelScope] = {}
        self._stop_reading = anyio.CancelScope()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.client_gone = False
        self.tool_execute = False  # the client's capabilities.tool_execute, set by initialize
        self._outbound: dict[str, _Outbound] = {}
        self._next_outbound = 0

    # ------------------------------------------------------------------ events

    async def wait_writable(self) -> None:
        await self.writer.wait_space()

    def session_event(self, session_id: str, turn_id: str | None, seq: int, event: Event) -> None:
        note = _EventNotification(params=SessionEventParams(session_id, turn_id, seq, now_ms(), event))
        self.writer.send_nowait(_event_encoder.encode(note) + b"\n")

    # ------------------------------------------------------------------ requests to the client

    def supports_tool_execute(self) -> bool:
        return self.tool_execute and not self.client_gone

    async def call_client(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        """Send a request to the client and wait for its response (see ``tools.ClientChannel``)."""
        if self.client_gone:
            raise ClientGone()
        self._next_outbound += 1
        id_ = f"warren-{self._next_outbound}"
        waiter = self._outbound[id_] = _Outbound()
        answered = False
        try:
            await self.writer.send(jsonrpc.encode_request(id_, method, params), direct=True)
            with anyio.fail_after(timeout_s):
                await waiter.done.wait()
            answered = True
        finally:
            del self._outbound[id_]
            if not answered and not self.client_gone:
                with anyio.CancelScope(shield=True):
                    await self.writer.send(jsonrpc.encode_notification("$/cancelRequest", {"id": id_}))
        if waiter.gone:
            raise ClientGone()
        if waiter.error is not None:
            raise ClientError(_client_error_text(waiter.error))
        return waiter.result

    def _client_response(self, response: jsonrpc.Response) -> None:
        waiter = self._outbound.get(response.id) if isinstance(response.id, str) else None
        if waiter is None or waiter.done.is_set():
            log.warning("unexpected_response", id=response.id)
            return
        waiter.result, waiter.error = response.result, response.error
        waiter.done.set()

    def _client_went_away(self) -> None:
        self.client_gone = True
        for waiter in self._outbound.values():
            waiter.gone = True
            waiter.done.set()

    # ------------------------------------------------------------------ serving

    def stop_reading(self) -> None:
        """Stop taking new input (SIGTERM, ``shutdown``, or a client that went away)."""
        self._stop_reading.cancel()

    async def serve(self, in_fd: int) -> None:
        """Read and dispatch until end of input or ``stop_reading``, then settle: interrupt
        turns, wait for in-flight requests (cancelling them after the grace period)."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            with self._stop_reading:
                await self._read_loop(in_fd)
            self._client_went_away()
            self.writer.stop_backpressure()
            log.info("input_closed", inflight=len(self._inflight))
            if self.on_shutdown is not None:
                with anyio.move_on_after(self.shutdown_grace_s):
                    await self.on_shutdown()
            if not await self.settle_others(None):
                tasks.cancel_scope.cancel()

    async def _read_loop(self, in_fd: int) -> None:
        buffer = LineBuffer(self.max_line_bytes)
        async for chunk in read_chunks(in_fd):
            for line in buffer.feed(chunk):
                await self._handle_line(line)
        for line in buffer.eof():
            await self._handle_line(line)
        self._first_line_seen()  # input ended before any line

    def _first_line_seen(self) -> None:
        if self.on_first_line is not None:
            first, self.on_first_line = self.on_first_line, None
            first()

    async def _handle_line(self, line: bytes | Oversized) -> None:
        try:
            await self._dispatch_line(line)
        finally:
            self._first_line_seen()  # after the line's task is spawned, so that task runs first

    async def _dispatch_line(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            log.warning("line_too_large", size=line.size, limit=self.max_line_bytes)
            await self._send_error(
                None,
                error_object(
                    "MESSAGE_TOO_LARGE",
                    f"Message too large: lines are limited to {self.max_line_bytes} bytes",
                    limit=self.max_line_bytes,
                ),
            )
            return
        message = jsonrpc.parse_line(line)
        assert self._tasks is not None
        if isinstance(message, jsonrpc.Batch):
            self._tasks.start_soon(self._run_batch, message)
        elif isinstance(message, jsonrpc.Request):
            admitted = self._admit(message)
            if isinstance(admitted, ErrorObject):
                await self._send_error(message.id, admitted)
            else:
                self._tasks.start_soon(self._run_single, message, admitted)
        else:
            error = self._route(message, self._tasks)
            if error is not None:
                await self.writer.send(error, direct=True)

    def _route(self, message: jsonrpc.Message, tasks: anyio.abc.TaskGroup) -> bytes | None:
        """Invalid messages, notifications and client responses, alone or in a batch:
        returns the error line an invalid message is answered with."""
        if isinstance(message, jsonrpc.Invalid):
            log.info("invalid_message", code=message.error.data.get("code"))
            return jsonrpc.encode_error(message.id, message.error)
        if isinstance(message, jsonrpc.Notification):
            if message.method in CLIENT_NOTIFICATIONS:
                self._notification(message)
            else:
                tasks.start_soon(self._run_notification, message)
        elif isinstance(message, jsonrpc.Response):
            self._client_response(message)
        return None

    def _notification(self, message: jsonrpc.Notification) -> None:
        if message.method == "$/cancelRequest":
            params = message.params if isinstance(message.params, dict) else {}
            id_ = params.get("id")
            # Only a valid request id can name a request (and a list would not even hash;
            # ``true`` or ``1.0`` must not cancel request ``1``).
            valid = isinstance(id_, str) or (isinstance(id_, int) and not isinstance(id_, bool))
            scope = self._inflight.get(id_) if valid else None
            log.info("cancel_request", id=id_ if valid else None, found=scope is not None)
            if scope is not None:
                scope.cancel()

    async def settle_others(self, own_id: Any) -> bool:
        """Wait (at most the grace period) until every in-flight request but ``own_id`` has
        answered; returns whether they all did."""
        with anyio.move_on_after(self.shutdown_grace_s):
            while any(k != own_id for k in self._inflight):
                await anyio.sleep(0.01)
            return True
        return False

    def _admit(self, request: jsonrpc.Request) -> ErrorObject | anyio.CancelScope:
        """Refuse a duplicate in-flight id, or register the request as in flight right away
        (not when its task first runs: two lines read in one chunk must not both pass)."""
        if request.id is not None and request.id in self._inflight:
            return error_object(
                "INVALID_REQUEST",
                f"Invalid request: id {request.id!r} is already in flight; use a fresh id per request",
            )
        scope = anyio.CancelScope()
        if request.id is not None:
            self._inflight[request.id] = scope
        return scope

    # ------------------------------------------------------------------ running

    async def _call(self, request: jsonrpc.Request, scope: anyio.CancelScope) -> tuple[bytes, bool]:
        """Run an admitted request; returns its response line and whether it succeeded."""
        try:
            assert self.dispatcher is not None
            with scope:
                result, error = await self.dispatcher.call(request.id, request.method, request.params)
            if scope.cancelled_caught:
                return jsonrpc.encode_error(
                    request.id, error_object("REQUEST_CANCELLED", "Request cancelled by $/cancelRequest")
                ), False
            if error is not None:
                return jsonrpc.encode_error(request.id, error), False
            return jsonrpc.encode_result(request.id, result), True
        finally:
            if request.id is not None and self._inflight.get(request.id) is scope:
                del self._inflight[request.id]

    async def _run_single(self, request: jsonrpc.Request, scope: anyio.CancelScope) -> None:
        line, ok = await self._call(request, scope)
        await self.writer.send(line, direct=True)
        if request.method == "shutdown" and ok:
            self.stop_reading()

    async def _run_notification(self, note: jsonrpc.Notification) -> None:
        assert self.dispatcher is not None
        result, error = await self.dispatcher.call(None, note.method, note.params)
        if error is not None:
            log.info("notification_failed", method=note.method, code=error.data.get("code"))
        elif note.method == "shutdown":
            self.stop_reading()  # a client that wants no answer still wants the daemon to stop

    async def _run_batch(self, batch: jsonrpc.Batch) -> None:
        parts: list[bytes | None] = [None] * len(batch.messages)
        shutdown = False

        async def run(i: int, request: jsonrpc.Request, scope: anyio.CancelScope) -> None:
            nonlocal shutdown
            parts[i], ok = await self._call(request, scope)
            shutdown = shutdown or (ok and request.method == "shutdown")

        async with anyio.create_task_group() as tasks:
            for i, message in enumerate(batch.messages):
                if isinstance(message, jsonrpc.Request):
                    admitted = self._admit(message)
                    if isinstance(admitted, ErrorObject):
                        parts[i] = jsonrpc.encode_error(message.id, admitted)
                    else:
                        tasks.start_soon(run, i, message, admitted)
                else:
                    parts[i] = self._route(message, tasks)
        answered = [p for p in parts if p is not None]
        if answered:
            await self.writer.send(jsonrpc.encode_batch(answered), direct=True)
        if shutdown:
            self.stop_reading()

    async def _send_error(self, id_: Any, error: ErrorObject) -> None:
        await self.writer.send(jsonrpc.encode_error(id_, error), direct=True)
