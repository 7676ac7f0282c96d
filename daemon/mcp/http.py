"""The streamable HTTP transport (MCP 2025-03-26 and later).

Each message we send is one POST to the server's URL with ``Accept: application/json,
text/event-stream``. A request's answer is either one JSON body or an SSE stream that
carries the response (and may first carry the server's own requests and notifications);
a notification or a response of ours is answered ``202 Accepted``. The ``Mcp-Session-Id``
the server hands out with ``initialize`` goes with every later message, with
``MCP-Protocol-Version``; a ``404`` for it means the session is over (the server is
initialized again at its next use). A GET on the same URL opens the stream of messages
the server sends on its own (``notifications/tools/list_changed``); a server without one
answers ``405`` and is not asked again. The session is ended with a DELETE at close.

Configured headers are secrets: they are sent, never logged, and every text quoted back
from the server goes through the redactor.

The HTTP is the providers' own small HTTP/1.1 client (``providers/wire.py``), not httpx: one
stack for both, and an MCP call's POST and its SSE answer go through the same byte-level
parsing as a model call's stream (less CPU per call, and a smaller import). Its keep-alive
pool lets consecutive calls reuse one connection, which needs every response read to its end:
a ``202`` or a short answer is read before the block is left, not dropped. Leaving a block
early (a call cancelled or timed out) closes that connection, which is what tells the server
to stop sending. The manager imports this module when the first HTTP server starts.
"""

from __future__ import annotations

from contextlib import aclosing, asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from warren.daemon import __version__
from warren.daemon.logs import get_logger
from warren.daemon.providers import wire
from warren.daemon.transport.dispatch import Dispatcher
from warren.daemon.transport.peer import Outbound, await_answer, wake_all
from warren.protocol import jsonrpc
from warren.protocol.peer import PeerState

from .types import McpServerSpec, RequestFailed, ServerGone, redactor, remote_error_text

log = get_logger("warren.mcp")

_decoder = msgspec.json.Decoder()
ERROR_BODY_LIMIT = 16 * 1024
#: How long a response's event stream may stay open after the response (the server should
#: close it at once; reading to its end lets its connection be used again).
DRAIN_S = 5.0
ERROR_QUOTE = 300
#: No read timeout: a tool call may rightly take minutes (the caller's own timeout ends it),
#: and the GET stream may stay silent for as long as the server has nothing to say.
TIMEOUTS = wire.Timeouts(connect=10.0, read=None, write=30.0)
#: What a transport failure that carries no text of its own says.
_QUIET_FAILURES = {
    "ConnectTimeout": "timed out connecting",
    "WriteTimeout": "timed out sending the request",
    "ReadTimeout": "timed out waiting for data",
}


class HttpConnection:
    transport = "http"
    pid: int | None = None

    def __init__(
        self, spec: McpServerSpec, client: wire.Client, dispatcher: Dispatcher, tasks: anyio.abc.TaskGroup
    ) -> None:
        assert spec.url is not None
        self.spec = spec
        self.url = spec.url
        self.closed = anyio.Event()
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._client = client
        self._dispatcher = dispatcher
        self._tasks = tasks
        self._state: PeerState[None, Outbound] = PeerState()
        self._redact = redactor(spec)
        self._lost: str | None = None
        self._listening = False
        self.session_expired = False
        parts = urlsplit(self.url)
        self._where = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "the server"

    # ------------------------------------------------------------------ requests

    async def request(self, method: str, params: Any, timeout_s: float) -> Any:
        """Send a request and wait for its response. The POST itself runs in the
        connection's task group and reads its event stream to the end after the response
        (so its connection goes back to the pool); the caller only waits for the answer."""
        if self.closed.is_set():
            raise ServerGone()
        waiter = Outbound()
        id_ = self._state.open_outbound(waiter)
        post = anyio.CancelScope()
        body = jsonrpc.encode_request(id_, method, params)
        self._tasks.start_soon(self._post_request, body, method, waiter, post)

        def abandon(reason: str) -> None:
            post.cancel()
            if not self.closed.is_set() and method != "initialize":
                # In the background: an interrupted turn must not wait for this POST.
                note = jsonrpc.encode_notification("notifications/cancelled", {"requestId": id_, "reason": reason})
                self._tasks.start_soon(self._send_quietly, note)

        await await_answer(self._state, id_, waiter, timeout_s, abandon, interrupted="the call was interrupted")
        if waiter.failure is not None:
            raise waiter.failure
        if waiter.gone:
            raise ServerGone()
        if waiter.error is not None:
            raise RequestFailed(self._redact(remote_error_text(waiter.error)))
        return waiter.result

    async def _post_request(self, body: bytes, method: str, waiter: Outbound, scope: anyio.CancelScope) -> None:
        completed = False
        try:
            with scope:
                await self._post(body, waiter, scope, initialize=method == "initialize")
                completed = True
        except (ServerGone, RequestFailed) as exc:
            if not waiter.done.is_set():  # (after the response, while draining: too late to matter)
                waiter.failure = exc
        finally:
            if not waiter.done.is_set():
                if waiter.failure is None:
                    if completed:
                        waiter.failure = RequestFailed(f"{self._where} answered {method} without a JSON-RPC response")
                    else:
                        waiter.gone = True  # the connection is closing
                waiter.done.set()

    async def notify(self, method: str, params: Any) -> None:
        await self._post(jsonrpc.encode_notification(method, params))

    def initialized(self) -> None:
        """The handshake is over: open the stream of the server's own messages."""
        if not self._listening:
            self._listening = True
            self._tasks.start_soon(self._listen)

    def describe_loss(self, when: str = "") -> str:
        return f"{self._lost or 'the connection was closed'}{when}"

    def _lose(self, why: str) -> ServerGone:
        if self._lost is None:
            self._lost = why
        self.closed.set()
        wake_all(self._state)
        return ServerGone()

    # ------------------------------------------------------------------ the wire

    def _headers(self, accept: str = "application/json, text/event-stream") -> dict[str, str]:
        headers = dict(self.spec.headers)
        headers["accept"] = accept
        headers["content-type"] = "application/json"
        if self.session_id is not None:
            headers["mcp-session-id"] = self.session_id
        if self.protocol_version is not None:
            headers["mcp-protocol-version"] = self.protocol_version
        return headers

    async def _post(
        self,
        body: bytes,
        waiter: Outbound | None = None,
        scope: anyio.CancelScope | None = None,
        *,
        initialize: bool = False,
    ) -> None:
        """POST one message; for a request, feed what comes back (JSON or an event stream)
        to ``_take``. A stream is read to its end, at most ``DRAIN_S`` past the response."""
        try:
            async with self._client.stream("POST", self.url, content=body, headers=self._headers()) as response:
                if initialize:
                    self.session_id = response.headers.get("mcp-session-id") or None
                status = response.status_code
                if status == 202 or (waiter is None and status < 300):
                    # A body of known length (empty, as a rule) is read so the connection is
                    # pooled, not closed; any other is left unread (it could stay open).
                    if "content-length" in response.headers:
                        await response.read(ERROR_BODY_LIMIT)
                    return
                if status >= 300:
                    await self._error_status(response, waiter)
                    return
                ctype = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                if ctype == "application/json":
                    self._take(await response.read())
                elif ctype == "text/event-stream":
                    assert waiter is not None
                    decoder = wire.SSEDecoder()
                    async with aclosing(response.aiter_bytes()) as pieces:
                        async for piece in pieces:
                            for event in decoder.feed(piece):
                                if event.data:
                                    self._take(event.data)
                            if waiter.done.is_set() and scope is not None:
                                scope.deadline = min(scope.deadline, anyio.current_time() + DRAIN_S)
                else:
                    raise RequestFailed(f"{self._where} answered with content type {ctype or 'none'!r}")
        except wire.HTTPError as exc:
            raise self._lose(f"cannot reach {self._where} ({self._exc_text(exc)})") from None

    async def _error_status(self, response: wire.Response, waiter: Outbound | None) -> None:
        body = await response.read(ERROR_BODY_LIMIT)
        status = response.status_code
        # A JSON-RPC error in the body of an error status (a server may answer 400 for
        # invalid params) is the real answer.
        if waiter is not None and response.headers.get("content-type", "").startswith("application/json"):
            try:
                value = _decoder.decode(body)
            except (msgspec.DecodeError, UnicodeDecodeError):
                value = None
            if isinstance(value, dict) and isinstance(value.get("error"), dict):
                waiter.error = value["error"]
                waiter.done.set()
                return
        if status == 404 and self.session_id is not None:
            self.session_expired = True  # the request never ran: safe to send again
            raise self._lose(f"{self._where} ended the session (HTTP 404)")
        text = body.decode("utf-8", "replace").strip()
        quoted = self._redact.clip(" ".join(text.split()), ERROR_QUOTE, complete=len(body) < ERROR_BODY_LIMIT)
        reason = response.reason_phrase or ""
        raise RequestFailed(f"{self._where} answered HTTP {status} {reason}".rstrip() + (f": {quoted}" if quoted else ""))

    def _exc_text(self, exc: Exception) -> str:
        name = type(exc).__name__
        text = self._redact(str(exc)) or _QUIET_FAILURES.get(name, "")
        return f"{name}: {text}" if text else name

    def _take(self, data: bytes | str) -> None:
        """One JSON-RPC message (or batch) from the server: a JSON body, or an SSE event's
        data (msgspec decodes the ``str`` as is; no round trip through bytes)."""
        try:
            value = _decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise RequestFailed(f"{self._where} sent a body that is not JSON") from None
        for item in value if isinstance(value, list) else [value]:
            message = jsonrpc.classify(item)
            if isinstance(message, jsonrpc.Response):
                waiter = self._state.waiter_for(message.id)
                if waiter is not None and not waiter.done.is_set():
                    waiter.result, waiter.error = message.result, message.error
                    waiter.done.set()
            elif isinstance(message, jsonrpc.Request):
                self._tasks.start_soon(self._answer, message)
            elif isinstance(message, jsonrpc.Notification):
                self._tasks.start_soon(self._dispatcher.call, None, message.method, message.params)
            else:
                log.warning("mcp_invalid_message", server=self.spec.name)

    async def _send_quietly(self, line: bytes) -> None:
        try:
            with anyio.fail_after(5.0):
                await self._post(line)
        except (ServerGone, RequestFailed, TimeoutError):
            log.info("mcp_notification_failed", server=self.spec.name)

    async def _answer(self, request: jsonrpc.Request) -> None:
        outcome = await self._dispatcher.call(request.id, request.method, request.params)
        line = (
            jsonrpc.encode_error(request.id, outcome.error)
            if outcome.error is not None
            else jsonrpc.encode_result(request.id, outcome.result)
        )
        await self._send_quietly(line)

    async def _listen(self) -> None:
        """The server's own stream (GET), reopened while the connection lives."""
        delay = 0.5
        while not self.closed.is_set():
            try:
                async with self._client.stream("GET", self.url, headers=self._headers("text/event-stream")) as response:
                    ctype = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                    if response.status_code != 200 or ctype != "text/event-stream":
                        log.debug("mcp_no_server_stream", server=self.spec.name, status=response.status_code)
                        return
                    delay = 0.5
                    decoder = wire.SSEDecoder()
                    async with aclosing(response.aiter_bytes()) as pieces:
                        async for piece in pieces:
                            for event in decoder.feed(piece):
                                if event.data:
                                    try:
                                        self._take(event.data)
                                    except RequestFailed:
                                        log.warning("mcp_invalid_message", server=self.spec.name)
            except wire.ConnectError as exc:
                self._lose(f"cannot reach {self._where} ({self._exc_text(exc)})")  # restarted at next use
                return
            except wire.HTTPError as exc:
                log.debug("mcp_server_stream_ended", server=self.spec.name, error=type(exc).__name__)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _end_session(self) -> None:
        if self.session_id is None or self.closed.is_set():
            return
        try:
            with anyio.move_on_after(2.0):
                async with self._client.stream("DELETE", self.url, headers=self._headers()) as response:
                    await response.read(ERROR_BODY_LIMIT)
        except wire.HTTPError:
            pass


@asynccontextmanager
async def open_http(spec: McpServerSpec, dispatcher: Dispatcher) -> AsyncIterator[HttpConnection]:
    assert spec.url is not None
    client = wire.Client(timeouts=TIMEOUTS, headers={"user-agent": f"warren/{__version__}"})
    if spec.url.lower().startswith("https:") or wire.proxy_for(spec.url):
        # Loading the CA bundle blocks for tens of milliseconds: not on the event loop.
        await anyio.to_thread.run_sync(client.warm, spec.url)
    try:
        async with anyio.create_task_group() as tasks:
            conn = HttpConnection(spec, client, dispatcher, tasks)
            try:
                yield conn
            finally:
                tasks.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await conn._end_session()
                    conn.closed.set()
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
