"""The client side of a JSON-RPC 2.0 connection to a Warren daemon, over any pair of byte streams.

It is the client's counterpart of the daemon's ``transport.peer``: the same pure pieces from
``warren.protocol`` (``framing.LineBuffer`` cuts lines, ``jsonrpc`` classifies and encodes
them, ``peer.PeerState`` owns every id decision) with the client's own I/O around them.
It knows no Warren method names except the cancel notification; ``Client`` adds the typed
methods, the events and the tool handler on top.

One reader task reads, frames and routes every line, never awaiting anything but the
stream: a response wakes its waiter, a notification goes to its callbacks (which must not
block), a request from the daemon runs in a task of its own. So a long ``turn/start`` never
holds up another request's answer, and the events of a turn are routed, in order, before
the response that ends it. Writes go through one lock, so lines never interleave.
"""

from __future__ import annotations

import contextlib
from typing import Any, Awaitable, Callable, Literal

import anyio
import anyio.abc

from warren.protocol import jsonrpc
from warren.protocol.errors import ErrorObject, error_object
from warren.protocol.framing import LineBuffer, Oversized
from warren.protocol.peer import PeerState

from .errors import TransportError, WarrenError, error_from_object

#: The longest line the client accepts from the daemon. Far above anything it sends (a
#: ``session/blob`` of the largest image is under 7 MiB); a longer line means the stream
#: is not a Warren daemon's, so the connection is given up rather than buffered without end.
DEFAULT_MAX_LINE_BYTES = 256 * 1024 * 1024
#: Warren's cancel notification, in both directions (``{"id": <request id>}``).
CANCEL_METHOD = "$/cancelRequest"

#: Runs a request the daemon sent: gets its ``params`` as decoded JSON, returns the result
#: (anything msgspec can encode). Raising ``WarrenError`` answers with that error; any
#: other exception answers with an INTERNAL_ERROR carrying its text.
RequestHandler = Callable[[Any], Awaitable[Any]]
#: Sees a notification's ``params``; runs in the reader, so it must return at once.
NotificationCallback = Callable[[Any], None]
#: Sees every line the daemon writes (without its newline) and what it was parsed as,
#: before it is routed: a test's window onto the raw stream.
LineTap = Callable[[bytes, "jsonrpc.Message | jsonrpc.Batch | Oversized"], None]


class PendingRequest:
    """A request that was sent; ``response()`` / ``result()`` wait for its answer."""

    __slots__ = ("id", "method", "_conn", "_done", "_response", "_failure", "_callbacks")

    def __init__(self, conn: Connection, method: str) -> None:
        self.id: str | int = ""
        self.method = method
        self._conn = conn
        self._done = anyio.Event()
        self._response: jsonrpc.Response | None = None
        self._failure: TransportError | None = None
        self._callbacks: list[Callable[[PendingRequest], None]] = []

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[[PendingRequest], None]) -> None:
        """Call ``callback(self)`` once answered (or failed), in the reader's task, before
        the next line is routed: at once if that already happened. For a caller that keeps
        its own record of answers in step with the stream (the test harness)."""
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def response_nowait(self) -> jsonrpc.Response:
        """The response of a request that is done; raises ``TransportError`` if it failed."""
        if self._response is None:
            # A fresh exception per raise: one instance raised in many tasks would pile up
            # their tracebacks.
            raise TransportError(*self._failure.args) if self._failure else TransportError("no answer yet")
        return self._response

    def _settle(self) -> None:
        self._done.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def _resolve(self, response: jsonrpc.Response) -> None:
        self._response = response
        self._settle()

    def _fail(self, failure: TransportError) -> None:
        if not self._done.is_set():
            self._failure = failure
            self._settle()

    async def response(self) -> jsonrpc.Response:
        """The response envelope (``result`` or ``error``); ``TransportError`` if none can come."""
        await self._done.wait()
        return self.response_nowait()

    async def result(self) -> Any:
        """The ``result``; raises the ``WarrenError`` subclass of an error answer."""
        response = await self.response()
        if response.error is not None:
            raise error_from_object(response.error)
        return response.result

    async def cancel(self) -> None:
        """Ask the daemon to cancel the request (``$/cancelRequest``); it then answers with
        REQUEST_CANCELLED, or with its result if it was already done. No-op once answered."""
        if not self.done and self._conn.is_open:
            await self._conn.notify(CANCEL_METHOD, {"id": self.id})


class Connection:
    """A JSON-RPC connection to a daemon over ``receive`` (its stdout) and ``send`` (its stdin).

    Use as ``async with``: entering starts the reader task, leaving stops it and closes both
    streams. ``unhandled_requests`` says what happens to a request from the daemon that no
    handler takes: ``"refuse"`` answers METHOD_NOT_FOUND, ``"leave"`` leaves it to the
    caller, who answers it with ``respond`` (a test that answers tool calls by hand).
    """

    def __init__(
        self,
        receive: anyio.abc.ByteReceiveStream,
        send: anyio.abc.ByteSendStream,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        unhandled_requests: Literal["refuse", "leave"] = "refuse",
        on_line: LineTap | None = None,
        id_prefix: str = "client-",
    ) -> None:
        self._receive = receive
        self._send = send
        self.max_line_bytes = max_line_bytes
        self.unhandled_requests = unhandled_requests
        self._on_line = on_line
        #: Sees each response no request of ours waits for (one to a request written with
        #: ``send_raw``, an error with id ``null``); batches go to the line tap only.
        self.on_unmatched_response: Callable[[jsonrpc.Response], None] | None = None
        #: Called once, with the reason, when the connection is gone (in the reader's task,
        #: or in the one that closed it).
        self.close_callbacks: list[Callable[[TransportError], None]] = []
        self.state: PeerState[anyio.CancelScope, PendingRequest] = PeerState(id_prefix)
        self.handlers: dict[str, RequestHandler] = {}
        self._callbacks: dict[str, list[NotificationCallback]] = {}
        self._write_lock = anyio.Lock()
        self._input_closed = False
        self._exit = contextlib.AsyncExitStack()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.failure: TransportError | None = None  # set once the connection is gone
        self._closed = anyio.Event()
        self._resume = anyio.Event()
        self._resume.set()
        self._parked = anyio.Event()
        self._receive_scope: anyio.CancelScope | None = None

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Connection:
        outer = await self._exit.enter_async_context(anyio.create_task_group())
        await outer.start(self._run)
        return self

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the reader and the handlers in a task group of their own, so that closing
        the connection cancels them and never the code inside ``async with``."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._read_loop)
            task_status.started()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (see ``abort``) and wait for the reader and handler tasks to
        end. Only the task that entered the connection can do this; ``__aexit__`` does."""
        await self.abort()
        await self._exit.aclose()

    async def abort(self) -> None:
        """Stop reading and close both streams now, from any task: pending requests fail
        with ``TransportError``, handlers are cancelled, nothing pending is read."""
        self._lost(TransportError("the client closed the connection"))
        with anyio.CancelScope(shield=True):
            for stream in (self._send, self._receive):
                with contextlib.suppress(Exception):
                    await stream.aclose()

    @property
    def is_open(self) -> bool:
        return self.failure is None

    async def wait_closed(self) -> TransportError:
        """Wait until the connection is gone; returns why."""
        await self._closed.wait()
        assert self.failure is not None
        return self.failure

    async def close_input(self) -> None:
        """Close the daemon's stdin: end of input, which makes ``warren serve`` interrupt its
        turns and exit. Reading goes on until the daemon closes its output."""
        if not self._input_closed:
            self._input_closed = True
            async with self._write_lock:
                with contextlib.suppress(Exception):
                    await self._send.aclose()

    def _lost(self, failure: TransportError) -> None:
        if self.failure is not None:
            return
        self.failure = failure
        for waiter in self.state.waiters():
            waiter._fail(failure)
            self.state.close_outbound(waiter.id)
        self._closed.set()
        self._resume.set()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()  # handlers: nobody could take their answers
        for callback in self.close_callbacks:
            callback(failure)

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        """Stop reading (after routing the chunk in hand, if any): the daemon's output pipe
        fills and it sees a slow client. Nothing is routed until ``resume_reading``."""
        if self._resume.is_set() and self.failure is None:
            self._resume = anyio.Event()
            if self._receive_scope is not None:
                self._receive_scope.cancel()  # a receive is cancel-safe: nothing read is lost

    def resume_reading(self) -> None:
        self._resume.set()

    async def wait_parked(self) -> None:
        """Wait until a paused reader has really stopped reading."""
        while not self._resume.is_set() and not self._parked.is_set():
            await anyio.sleep(0.005)

    async def _read_loop(self) -> None:
        buffer = LineBuffer(self.max_line_bytes)
        failure = TransportError("the daemon closed its output")
        try:
            while True:
                if not self._resume.is_set():
                    self._parked.set()
                    await self._resume.wait()
                    self._parked = anyio.Event()
                    if self.failure is not None:
                        return
                chunk = b""
                with anyio.CancelScope() as self._receive_scope:
                    try:
                        chunk = await self._receive.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                        break
                if not chunk:
                    continue  # pause_reading() interrupted the wait (no byte was taken)
                for line in buffer.feed(chunk):
                    if isinstance(line, Oversized):
                        failure = TransportError(f"the daemon wrote a line over {self.max_line_bytes} bytes")
                        self._tap(b"", line)
                        return
                    self._route(line)
            for line in buffer.eof():
                if not isinstance(line, Oversized):
                    self._route(line)
        finally:
            self._lost(failure)

    def _tap(self, line: bytes, message: jsonrpc.Message | jsonrpc.Batch | Oversized) -> None:
        if self._on_line is not None:
            self._on_line(line, message)

    def _route(self, line: bytes) -> None:
        message = jsonrpc.parse_line(line)
        self._tap(line, message)
        if isinstance(message, jsonrpc.Batch):
            for item in message.messages:
                if not (isinstance(item, jsonrpc.Response) and self.state.waiter_for(item.id) is None):
                    self._route_message(item)
        else:
            self._route_message(message)

    def _route_message(self, message: jsonrpc.Message) -> None:
        if isinstance(message, jsonrpc.Response):
            waiter = self.state.waiter_for(message.id)
            if waiter is not None:
                self.state.close_outbound(message.id)  # type: ignore[arg-type]
                waiter._resolve(message)
            elif self.on_unmatched_response is not None:
                self.on_unmatched_response(message)
        elif isinstance(message, jsonrpc.Notification):
            if message.method == CANCEL_METHOD:
                scope = self.state.cancel_target(message.params)
                if scope is not None:
                    scope.cancel()
            for callback in self._callbacks.get(message.method, ()):
                callback(message.params)
        elif isinstance(message, jsonrpc.Request):
            self._serve(message)
        # An Invalid line from the daemon has nobody to answer: the tap saw it.

    # ------------------------------------------------------------------ notifications

    def on_notification(self, method: str, callback: NotificationCallback) -> Callable[[], None]:
        """Call ``callback(params)`` for each notification ``method``; returns the undo."""
        callbacks = self._callbacks.setdefault(method, [])
        callbacks.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

        return remove

    # ------------------------------------------------------------------ requests from the daemon

    def _serve(self, request: jsonrpc.Request) -> None:
        assert self._tasks is not None
        handler = self.handlers.get(request.method)
        if handler is None:
            if self.unhandled_requests == "refuse":
                refusal = error_object("METHOD_NOT_FOUND", f"Method not found: {request.method}", method=request.method)
                self._tasks.start_soon(self._write_quietly, jsonrpc.encode_error(request.id, refusal))
            return
        scope = anyio.CancelScope()
        refused = self.state.admit(request.id, scope)
        if refused is not None:
            self._tasks.start_soon(self._write_quietly, jsonrpc.encode_error(request.id, refused))
            return
        self._tasks.start_soon(self._run_handler, request, handler, scope)

    async def _run_handler(self, request: jsonrpc.Request, handler: RequestHandler, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                try:
                    result = await handler(None if request.params is jsonrpc.ABSENT else request.params)
                    line = jsonrpc.encode_result(request.id, result)
                except WarrenError as exc:
                    line = jsonrpc.encode_error(request.id, ErrorObject(exc.code, exc.message, exc.data))
                except Exception as exc:  # noqa: BLE001 - any failure of a handler is its answer
                    line = jsonrpc.encode_error(request.id, error_object("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"))
        finally:
            self.state.finish(request.id, scope)
        if scope.cancelled_caught:
            return  # the daemon withdrew the request ($/cancelRequest): it wants no answer
        await self._write_quietly(line)

    async def respond(self, request_id: Any, result: Any = None, error: Any = None) -> None:
        """Answer a request from the daemon by hand (see ``unhandled_requests="leave"``):
        with ``error`` (a JSON-RPC error object) when given, else with ``result``."""
        if error is not None:
            await self._write(jsonrpc.encode_error(request_id, error))  # a dict encodes as an ErrorObject does
        else:
            await self._write(jsonrpc.encode_result(request_id, result))

    # ------------------------------------------------------------------ requests to the daemon

    async def send_request(self, method: str, params: Any = jsonrpc.ABSENT, *, request_id: str | int | None = None) -> PendingRequest:
        """Send a request and return at once, once its line is written. ``request_id`` picks
        the id (default: a fresh ``client-N``); an id still awaited is refused (ValueError)."""
        if self.failure is not None:
            raise TransportError(*self.failure.args)
        pending = PendingRequest(self, method)
        if request_id is None:
            pending.id = self.state.open_outbound(pending)
        elif self.state.open_outbound_as(request_id, pending):
            pending.id = request_id
        else:
            raise ValueError(f"a request with id {request_id!r} is still waiting for its answer")
        try:
            await self._write(jsonrpc.encode_request(pending.id, method, params))
        except BaseException:
            self.state.close_outbound(pending.id)
            raise
        return pending

    async def request(self, method: str, params: Any = jsonrpc.ABSENT, *, request_id: str | int | None = None) -> Any:
        """Send a request and return its ``result`` as decoded JSON; raises ``WarrenError``
        (a subclass picked by ``data.code``) or ``TransportError``. Cancelling the caller
        sends ``$/cancelRequest`` for it, so the daemon stops the work too."""
        pending = await self.send_request(method, params, request_id=request_id)
        try:
            return await pending.result()
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(2, shield=True):
                with contextlib.suppress(TransportError):
                    await pending.cancel()
            raise

    async def notify(self, method: str, params: Any = jsonrpc.ABSENT) -> None:
        await self._write(jsonrpc.encode_notification(method, params))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (a test's malformed lines, batches, split lines)."""
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:
            if self._input_closed:
                raise TransportError("the daemon's input is closed")
            try:
                await self._send.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise TransportError("the daemon's input is closed (it exited?)") from exc

    async def _write_quietly(self, data: bytes) -> None:
        """An answer to the daemon: if it is gone, nobody is left to tell."""
        with contextlib.suppress(TransportError):
            await self._write(data)

