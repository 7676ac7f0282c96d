"""A JSON-RPC 2.0 peer over the stdio transport: framing in, requests run, responses out,
and requests of our own to the client. It knows no method names: a front-end hands it a
``Dispatcher`` and the name of its cancel notification, so Warren's protocol and ACP share
this code (the decisions about ids live in ``protocol.peer.PeerState``).

The reader never awaits a handler: each request runs in its own task, so a long request
cannot delay a short one. Everything that goes out passes through the one ``Writer``, in
the order it was produced.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

import anyio
import anyio.abc

from warren.protocol import jsonrpc
from warren.protocol.errors import ErrorObject, error_object
from warren.protocol.framing import LineBuffer, Oversized
from warren.protocol.peer import PeerState

from ..logs import get_logger
from .dispatch import Dispatcher
from .stdio import Writer, read_chunks

log = get_logger("warren.peer")


class PeerGone(Exception):
    """The client closed its input: nobody will answer our request."""


class PeerError(Exception):
    """The client answered our request with a JSON-RPC error (``error`` is its object)."""

    def __init__(self, error: Any) -> None:
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message if isinstance(message, str) else "the client answered with an error")
        self.error = error


class Outbound:
    """A request we sent, waiting for its answer (``PeerState`` holds it by id). The MCP
    client's HTTP transport uses it too: ``failure`` is its POST failing to carry it."""

    __slots__ = ("done", "result", "error", "gone", "failure")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: Any = None
        self.gone = False
        self.failure: Exception | None = None


def wake_all(state: PeerState[Any, Outbound]) -> None:
    """Nobody will answer any more (the other side went away): wake every waiter, gone."""
    for waiter in state.waiters():
        waiter.gone = True
        waiter.done.set()


async def await_answer(state: PeerState[Any, Outbound], id_: Any, waiter: Outbound, timeout_s: float,
                       on_abandon: Callable[[str], None], *, send: Awaitable[None] | None = None,
                       interrupted: str = "the request was interrupted") -> None:
    """Send request ``id_`` (``send``, if the transport sends it here) and wait for its
    answer. On a timeout (re-raised as ``TimeoutError``) or a cancellation, the request is
    forgotten and ``on_abandon(reason)`` tells the other side in the transport's way."""
    answered = False
    reason = interrupted
    try:
        if send is not None:
            await send
        with anyio.fail_after(timeout_s):
            await waiter.done.wait()
        answered = True
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
        raise
    finally:
        state.close_outbound(id_)
        if not answered:
            on_abandon(reason)


class Peer:
    def __init__(
        self,
        writer: Writer,
        *,
        max_line_bytes: int,
        cancel_method: str,
        cancel_field: str = "id",
        cancel_reason: bool = False,
        shutdown_grace_s: float = 5.0,
        on_first_line: Callable[[], None] | None = None,
        on_invalid: Callable[[jsonrpc.Invalid], bool] | None = None,
    ) -> None:
        """``cancel_reason``: our cancel notifications carry a ``reason`` (MCP's do).
        ``on_invalid``: sees each line that is not a JSON-RPC message first; True means it
        was dealt with (an MCP server's stdout garbage ends its connection) and no error
        line is sent back."""
        self.writer = writer
        self.max_line_bytes = max_line_bytes
        self.cancel_method = cancel_method  # the cancel notification, both ways: its name
        self.cancel_field = cancel_field  # and the params field that holds the request id
        self.cancel_reason = cancel_reason
        self._on_invalid = on_invalid
        self.shutdown_grace_s = shutdown_grace_s
        self._on_first_line = on_first_line  # starts work deferred past start-up
        self.state: PeerState[anyio.CancelScope, Outbound] = PeerState()
        self._stop_reading = anyio.CancelScope()
        self._tasks: anyio.abc.TaskGroup | None = None
        self._dispatcher: Dispatcher | None = None
        self.client_gone = False

    # ------------------------------------------------------------------ requests to the client

    async def request(self, method: str, params: Any, timeout_s: float, *, cancellable: bool = True) -> Any:
        """Send a request to the client and return its ``result``. Raises ``PeerError``,
        ``TimeoutError`` or ``PeerGone``; on timeout or cancellation the client is sent
        the cancel notification for it (unless not ``cancellable``: MCP's ``initialize``)."""
        if self.client_gone:
            raise PeerGone()
        waiter = Outbound()
        id_ = self.state.open_outbound(waiter)

        def abandon(reason: str) -> None:
            if not self.client_gone and cancellable:
                params = {self.cancel_field: id_, "reason": reason} if self.cancel_reason else {self.cancel_field: id_}
                self.writer.send_nowait(jsonrpc.encode_notification(self.cancel_method, params))

        await await_answer(self.state, id_, waiter, timeout_s, abandon,
                           send=self.writer.send(jsonrpc.encode_request(id_, method, params), direct=True))
        if waiter.gone:
            raise PeerGone()
        if waiter.error is not None:
            raise PeerError(waiter.error)
        return waiter.result

    def _response(self, response: jsonrpc.Response) -> None:
        waiter = self.state.waiter_for(response.id)
        if waiter is None or waiter.done.is_set():
            log.warning("unexpected_response", id=response.id)
            return
        waiter.result, waiter.error = response.result, response.error
        waiter.done.set()

    def client_went_away(self) -> None:
        """Nobody will read our requests any more: every waiting one ends with ``PeerGone``."""
        self.client_gone = True
        wake_all(self.state)

    # ------------------------------------------------------------------ serving

    def stop_reading(self) -> None:
        """Stop taking new input (a signal, a shutdown request, or a client that went away)."""
        self._stop_reading.cancel()

    async def serve(
        self,
        in_fd: int,
        dispatcher: Dispatcher,
        on_input_closed: Callable[[], Awaitable[None]] | None = None,
        *,
        buffer: LineBuffer | None = None,
        pending: Sequence[bytes | Oversized] = (),
    ) -> None:
        """Read and dispatch until end of input or ``stop_reading``, then settle: let the
        front-end wind down (``on_input_closed``: interrupt turns), wait for in-flight
        requests, and cancel them after the grace period. ``buffer`` and ``pending``: input
        read before the loop ran (the line buffer it went into, and the lines already split
        from it but not yet handled)."""
        self._dispatcher = dispatcher
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._watch_writer)
            with self._stop_reading:
                await self._read_loop(in_fd, buffer or LineBuffer(self.max_line_bytes), pending)
            self.client_went_away()
            self.writer.stop_backpressure()
            log.info("input_closed", inflight=self.state.inflight_count)
            if on_input_closed is not None:
                with anyio.move_on_after(self.shutdown_grace_s):
                    await on_input_closed()
            if not await self.settle_others(None):
                tasks.cancel_scope.cancel()
            tasks.cancel_scope.cancel()  # the writer watch

    async def _watch_writer(self) -> None:
        await self.writer.broken.wait()
        self.stop_reading()

    async def _read_loop(self, in_fd: int, buffer: LineBuffer, pending: Sequence[bytes | Oversized]) -> None:
        for line in pending:
            await self._handle_line(line)
        async for chunk in read_chunks(in_fd):
            for line in buffer.feed(chunk):
                await self._handle_line(line)
        for line in buffer.eof():
            await self._handle_line(line)
        self._first_line_seen()  # input ended before any line

    def _first_line_seen(self) -> None:
        if self._on_first_line is not None:
            first, self._on_first_line = self._on_first_line, None
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
            if self._on_invalid is not None and self._on_invalid(message):
                return None
            log.info("invalid_message", code=message.error.data.get("code"))
            return jsonrpc.encode_error(message.id, message.error)
        if isinstance(message, jsonrpc.Notification):
            if message.method == self.cancel_method:
                scope = self.state.cancel_target(message.params, self.cancel_field)
                log.info("cancel_request", found=scope is not None)
                if scope is not None:
                    scope.cancel()
            else:
                tasks.start_soon(self._run_notification, message)
        elif isinstance(message, jsonrpc.Response):
            self._response(message)
        return None

    async def settle_others(self, own_id: Any) -> bool:
        """Wait (at most the grace period) until every in-flight request but ``own_id`` has
        answered; returns whether they all did."""
        with anyio.move_on_after(self.shutdown_grace_s):
            while self.state.busy_besides(own_id):
                await anyio.sleep(0.01)
            return True
        return False

    def _admit(self, request: jsonrpc.Request) -> ErrorObject | anyio.CancelScope:
        scope = anyio.CancelScope()
        refused = self.state.admit(request.id, scope)
        return refused if refused is not None else scope

    # ------------------------------------------------------------------ running

    async def _call(self, request: jsonrpc.Request, scope: anyio.CancelScope) -> tuple[bytes, Callable[[], None] | None]:
        """Run an admitted request; returns its response line and what to do once that
        line is written (a handler's ``after_response``, e.g. stop reading after shutdown)."""
        try:
            assert self._dispatcher is not None
            with scope:
                outcome = await self._dispatcher.call(request.id, request.method, request.params)
            if scope.cancelled_caught:
                return jsonrpc.encode_error(
                    request.id, error_object("REQUEST_CANCELLED", "Request cancelled by the client")
                ), None
            if outcome.error is not None:
                return jsonrpc.encode_error(request.id, outcome.error), None
            return jsonrpc.encode_result(request.id, outcome.result), outcome.after_response
        finally:
            self.state.finish(request.id, scope)

    async def _run_single(self, request: jsonrpc.Request, scope: anyio.CancelScope) -> None:
        line, after = await self._call(request, scope)
        await self.writer.send(line, direct=True)
        if after is not None:
            after()

    async def _run_notification(self, note: jsonrpc.Notification) -> None:
        assert self._dispatcher is not None
        outcome = await self._dispatcher.call(None, note.method, note.params)
        if outcome.error is not None:
            log.info("notification_failed", method=note.method, code=outcome.error.data.get("code"))
        elif outcome.after_response is not None:
            outcome.after_response()  # a client that wants no answer still wants it done

    async def _run_batch(self, batch: jsonrpc.Batch) -> None:
        parts: list[bytes | None] = [None] * len(batch.messages)
        afters: list[Callable[[], None]] = []

        async def run(i: int, request: jsonrpc.Request, scope: anyio.CancelScope) -> None:
            parts[i], after = await self._call(request, scope)
            if after is not None:
                afters.append(after)

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
        for after in afters:
            after()

    async def _send_error(self, id_: Any, error: ErrorObject) -> None:
        await self.writer.send(jsonrpc.encode_error(id_, error), direct=True)
