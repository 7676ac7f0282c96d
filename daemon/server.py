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
import structlog

from protocol import jsonrpc
from protocol.errors import ErrorObject, error_object
from protocol.events import Event, SessionEventParams
from protocol.framing import LineBuffer, Oversized
from protocol.methods import CLIENT_NOTIFICATIONS

from .clock import now_ms
from .dispatch import Dispatcher
from .stdio import Writer, read_chunks

log = structlog.get_logger("warren.server")


class _EventNotification(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str = "session/event"
    params: SessionEventParams


_event_encoder = msgspec.json.Encoder()


class Connection:
    def __init__(self, writer: Writer, *, max_line_bytes: int, shutdown_grace_s: float = 5.0) -> None:
        self.writer = writer
        self.max_line_bytes = max_line_bytes
        self.shutdown_grace_s = shutdown_grace_s
        self.dispatcher: Dispatcher | None = None
        self.on_shutdown: Callable[[], Any] | None = None  # async: interrupt turns etc.
        self._inflight: dict[Any, anyio.CancelScope] = {}
        self._stop_reading = anyio.CancelScope()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.client_gone = False

    # ------------------------------------------------------------------ events

    async def session_event(self, session_id: str, turn_id: str | None, seq: int, event: Event) -> None:
        note = _EventNotification(params=SessionEventParams(session_id, turn_id, seq, now_ms(), event))
        await self.writer.send(_event_encoder.encode(note) + b"\n")

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
            log.info("input_closed", inflight=len(self._inflight))
            if self.on_shutdown is not None:
                with anyio.move_on_after(self.shutdown_grace_s):
                    await self.on_shutdown()
            with anyio.move_on_after(self.shutdown_grace_s) as grace:
                while self._inflight:
                    await anyio.sleep(0.01)
            if grace.cancelled_caught:
                tasks.cancel_scope.cancel()

    async def _read_loop(self, in_fd: int) -> None:
        buffer = LineBuffer(self.max_line_bytes)
        async for chunk in read_chunks(in_fd):
            for line in buffer.feed(chunk):
                await self._handle_line(line)
        for line in buffer.eof():
            await self._handle_line(line)

    async def _handle_line(self, line: bytes | Oversized) -> None:
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
            error = self._admit(message)
            if error is not None:
                await self._send_error(message.id, error)
            else:
                self._tasks.start_soon(self._run_single, message)
        else:
            await self._handle_other(message)

    async def _handle_other(self, message: jsonrpc.Message) -> None:
        """Invalid messages, notifications and client responses."""
        if isinstance(message, jsonrpc.Invalid):
            log.info("invalid_message", code=message.error.data.get("code"))
            await self._send_error(message.id, message.error)
        if isinstance(message, jsonrpc.Notification):
            if message.method in CLIENT_NOTIFICATIONS:
                self._notification(message)
            else:
                assert self._tasks is not None
                self._tasks.start_soon(self._run_notification, message)
        elif isinstance(message, jsonrpc.Response):
            log.info("unexpected_response", id=message.id)

    def _notification(self, message: jsonrpc.Notification) -> None:
        if message.method == "$/cancelRequest":
            params = message.params if isinstance(message.params, dict) else {}
            scope = self._inflight.get(params.get("id"))
            log.info("cancel_request", id=params.get("id"), found=scope is not None)
            if scope is not None:
                scope.cancel()

    async def settle_others(self, own_id: Any) -> None:
        """Wait (bounded) until every in-flight request but ``own_id`` has answered."""
        with anyio.move_on_after(self.shutdown_grace_s):
            while any(k != own_id for k in self._inflight):
                await anyio.sleep(0.01)

    def _admit(self, request: jsonrpc.Request) -> ErrorObject | None:
        if request.id is not None and request.id in self._inflight:
            return error_object(
                "INVALID_REQUEST",
                f"Invalid request: id {request.id!r} is already in flight; use a fresh id per request",
            )
        return None

    # ------------------------------------------------------------------ running

    async def _call(self, request: jsonrpc.Request) -> bytes:
        scope = anyio.CancelScope()
        if request.id is not None:
            self._inflight[request.id] = scope
        try:
            assert self.dispatcher is not None
            with scope:
                result, error = await self.dispatcher.call(request.id, request.method, request.params)
            if scope.cancelled_caught:
                return jsonrpc.encode_error(
                    request.id, error_object("REQUEST_CANCELLED", "Request cancelled by $/cancelRequest")
                )
            if error is not None:
                return jsonrpc.encode_error(request.id, error)
            return jsonrpc.encode_result(request.id, result)
        finally:
            if request.id is not None and self._inflight.get(request.id) is scope:
                del self._inflight[request.id]

    async def _run_single(self, request: jsonrpc.Request) -> None:
        line = await self._call(request)
        await self.writer.send(line)
        if request.method == "shutdown" and line.find(b'"result"') >= 0:
            self.stop_reading()

    async def _run_notification(self, note: jsonrpc.Notification) -> None:
        assert self.dispatcher is not None
        result, error = await self.dispatcher.call(None, note.method, note.params)
        if error is not None:
            log.info("notification_failed", method=note.method, code=error.data.get("code"))

    async def _run_batch(self, batch: jsonrpc.Batch) -> None:
        parts: list[bytes | None] = [None] * len(batch.messages)

        async def run(i: int, request: jsonrpc.Request) -> None:
            parts[i] = await self._call(request)

        async with anyio.create_task_group() as tasks:
            for i, message in enumerate(batch.messages):
                if isinstance(message, jsonrpc.Request):
                    error = self._admit(message)
                    if error is not None:
                        parts[i] = jsonrpc.encode_error(message.id, error)
                    else:
                        tasks.start_soon(run, i, message)
                elif isinstance(message, jsonrpc.Invalid):
                    parts[i] = jsonrpc.encode_error(message.id, message.error)
                elif isinstance(message, jsonrpc.Notification) and message.method in CLIENT_NOTIFICATIONS:
                    self._notification(message)
                elif isinstance(message, jsonrpc.Notification):
                    tasks.start_soon(self._run_notification, message)
                else:
                    log.info("unexpected_response", id=getattr(message, "id", None))
        answered = [p for p in parts if p is not None]
        if answered:
            await self.writer.send(jsonrpc.encode_batch(answered))
        if any(isinstance(m, jsonrpc.Request) and m.method == "shutdown" for m in batch.messages):
            self.stop_reading()

    async def _send_error(self, id_: Any, error: ErrorObject) -> None:
        await self.writer.send(jsonrpc.encode_error(id_, error))
