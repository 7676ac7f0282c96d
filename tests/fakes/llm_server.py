"""A fake LLM HTTP server speaking the Anthropic Messages and OpenAI Chat Completions wire
formats, event for event, on a real socket.

It runs in a background thread on ``127.0.0.1`` with an ephemeral port, so the code under
test may be in the same process (provider unit tests) or in a daemon subprocess pointed at
``server.base_url``. Tests script each response in order (``enqueue``): an SSE stream of
events with delays, an HTTP error with a JSON body and headers, a connection reset or hang-up
mid-stream, a stall past the client's read timeout, a malformed line. With nothing queued,
the server answers a short realistic reply for the path asked (``GET …/models``: a
one-model list, as a compatible server such as Ollama would).

Every request is recorded as an ``Exchange`` (method, path, headers, parsed JSON body) along
with the wall-clock times (``time.time()``) at which the server sent the first byte of the
response body, wrote each step, and saw the client close the connection, so tests can assert
exact requests, streaming latency and prompt cancellation.

Streams use chunked transfer encoding with keep-alive, as the real APIs do, so client
connection reuse is exercised too.

Run ``python -m tests.fakes.llm_server`` to serve the default replies by hand.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

# ---------------------------------------------------------------- what a response does


@dataclass(frozen=True)
class Event:
    """One SSE event. ``data`` that is not a ``str`` is sent as compact JSON; ``event`` adds
    an ``event:`` line (Anthropic names every event; OpenAI sends only ``data:``)."""

    data: Any
    event: str | None = None
    delay_s: float = 0.0

    def encode(self) -> bytes:
        data = self.data if isinstance(self.data, str) else json.dumps(self.data, separators=(",", ":"))
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {data}\n\n".encode()


@dataclass(frozen=True)
class RawLine:
    """Bytes written into the body as they are, e.g. a malformed ``data:`` line."""

    data: bytes
    delay_s: float = 0.0


@dataclass(frozen=True)
class Stall:
    """Send nothing for ``seconds`` (ends early if the client hangs up)."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST, mid-body."""

    delay_s: float = 0.0


@dataclass(frozen=True)
class Hangup:
    """Close the connection cleanly (FIN) without finishing the chunked body."""

    delay_s: float = 0.0


Step = Union[Event, RawLine, Stall, Reset, Hangup]


@dataclass
class SSEResponse:
    steps: list[Step]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/event-stream; charset=utf-8"
    #: Pause before the response head, i.e. the server's time to first byte.
    head_delay_s: float = 0.0


@dataclass
class JSONResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Response = Union[SSEResponse, JSONResponse]


@dataclass
class Exchange:
    """One request and what became of it. Times are ``time.time()`` floats."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    raw_body: bytes
    json: Any
    received_at: float
    connection_id: int
    #: Every header line as sent, in order (``headers`` keeps the last of repeated names).
    header_list: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    first_byte_at: float | None = None
    step_times: list[float] = field(default_factory=list)
    client_closed_at: float | None = None
    finished_at: float | None = None
    #: "complete", "client_closed", "reset", "hangup" or "pending"
    outcome: str = "pending"
    done: threading.Event = field(default_factory=threading.Event, repr=False)


Responder = Callable[[Exchange], Response]


# ---------------------------------------------------------------- the server


class FakeLLMServer:
    """Start with ``with FakeLLMServer() as server:`` (or ``start()``/``stop()``)."""

    def __init__(self, default: Responder | None = None) -> None:
        self._default = default or default_response
        self._queue: deque[Response | Responder] = deque()
        self._exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._next_connection_id = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> "FakeLLMServer":
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="fake-llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """Root URL; an Anthropic provider's ``base_url``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """An OpenAI-compatible provider's ``base_url`` (ends in ``/v1``)."""
        return f"{self.base_url}/v1"

    # ---- scripting and inspection

    def enqueue(self, *responses: Response | Responder) -> None:
        """Answers for the next requests, in order; a callable gets the ``Exchange``."""
        with self._lock:
            self._queue.extend(responses)

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    @property
    def last(self) -> Exchange:
        with self._lock:
            return self._exchanges[-1]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Exchange]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._exchanges) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} requests, got {len(self._exchanges)}")
                self._changed.wait(remaining)
            return list(self._exchanges)

    # ---- used by the handler

    def _register(self, conn: socket.socket) -> int:
        with self._lock:
            self._connections.add(conn)
            self._next_connection_id += 1
            return self._next_connection_id

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _record(self, exchange: Exchange) -> Response:
        with self._changed:
            self._exchanges.append(exchange)
            self._changed.notify_all()
            item = self._queue.popleft() if self._queue else self._default
        return item(exchange) if callable(item) else item


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeLLMServer) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropping a kept-alive connection is normal here, not worth a traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection_id = self.server.fake._register(self.connection)

    def finish(self) -> None:
        self.server.fake._unregister(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_POST

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        exchange = Exchange(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            raw_body=raw,
            json=parsed,
            received_at=time.time(),
            connection_id=self.connection_id,
            header_list=list(self.headers.items()),
        )
        try:
            response = self.server.fake._record(exchange)
            exchange.status = response.status
            if isinstance(response, JSONResponse):
                self._send_json(exchange, response)
            else:
                self._send_sse(exchange, response)
        except (BrokenPipeError, ConnectionResetError):
            self._client_closed(exchange)
        finally:
            exchange.finished_at = time.time()
            exchange.done.set()

    # ---- responses

    def _send_json(self, exchange: Exchange, response: JSONResponse) -> None:
        if response.delay_s and self._wait(exchange, response.delay_s):
            return
        body = response.body if isinstance(response.body, bytes) else json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        exchange.first_byte_at = time.time()
        self.wfile.write(body)
        exchange.outcome = "complete"

    def _send_sse(self, exchange: Exchange, response: SSEResponse) -> None:
        if response.head_delay_s and self._wait(exchange, response.head_delay_s):
            return
        self.send_response(response.status)
        self.send_header("content-type", response.content_type)
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        for step in response.steps:
            delay = step.seconds if isinstance(step, Stall) else step.delay_s
            if delay and self._wait(exchange, delay):
                return
            if isinstance(step, Stall):
                continue
            if isinstance(step, Reset):
                self._abort(exchange, rst=True)
                return
            if isinstance(step, Hangup):
                self._abort(exchange, rst=False)
                return
            self._chunk(exchange, step.encode() if isinstance(step, Event) else step.data)
        self.wfile.write(b"0\r\n\r\n")
        exchange.outcome = "complete"

    def _chunk(self, exchange: Exchange, data: bytes) -> None:
        now = time.time()
        if exchange.first_byte_at is None:
            exchange.first_byte_at = now
        exchange.step_times.append(now)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _abort(self, exchange: Exchange, *, rst: bool) -> None:
        self.close_connection = True
        exchange.outcome = "reset" if rst else "hangup"
        try:
            if rst:
                # Linger 0 makes close() send RST. The rfile holds a reference to the
                # socket, so it must go first for close() to really close.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _wait(self, exchange: Exchange, seconds: float) -> bool:
        """Sleep, watching the socket; True (and recorded) if the client hung up."""
        deadline = time.monotonic() + seconds
        stopping = self.server.fake._stopping
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if stopping.is_set():
                self.close_connection = True
                return True
            try:
                readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.05))
                if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                    self._client_closed(exchange)
                    return True
            except (OSError, ValueError):
                self._client_closed(exchange)
                return True
            if readable:
                time.sleep(min(remaining, 0.005))  # unexpected data (pipelining): keep waiting

    def _client_closed(self, exchange: Exchange) -> None:
        if exchange.client_closed_at is None:
            exchange.client_closed_at = time.time()
        exchange.outcome = "client_closed"
        self.close_connection = True


# ---------------------------------------------------------------- Anthropic wire format


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def text_block(text: str, *, chunk: int = 8) -> dict[str, Any]:
    return {"type": "text", "parts": _split(text, chunk)}


def thinking_block(text: str, signature: str, *, chunk: int = 16) -> dict[str, Any]:
    return {"type": "thinking", "parts": _split(text, chunk), "signature": signature}


def redacted_thinking_block(data: str) -> dict[str, Any]:
    return {"type": "redacted_thinking", "data": data}


def tool_use_block(
    id: str, name: str, input: dict[str, Any] | None = None, *, fragments: list[str] | None = None
) -> dict[str, Any]:
    """``fragments`` default to the JSON of ``input`` cut in 10-character pieces, after the
    empty first fragment the real API sends."""
    if fragments is None:
        fragments = [""] + _split(json.dumps(input or {}), 10) if input else [""]
    return {"type": "tool_use", "id": id, "name": name, "fragments": fragments}


def anthropic_events(
    *blocks: dict[str, Any],
    model: str = "claude-sonnet-4-5",
    message_id: str = "msg_01FakeXYZ",
    input_tokens: int = 25,
    output_tokens: int = 12,
    cache_read: int = 0,
    cache_write: int = 0,
    stop_reason: str = "end_turn",
    delay_s: float = 0.0,
) -> list[Step]:
    """The event sequence of the streaming docs: message_start, then per block
    content_block_start / (ping after the first) / content_block_delta… / content_block_stop,
    then message_delta and message_stop. ``delay_s`` goes before every delta event."""

    def ev(name: str, data: dict[str, Any], delay: float = 0.0) -> Event:
        return Event({"type": name, **data}, event=name, delay_s=delay)

    steps: list[Step] = [
        ev(
            "message_start",
            {
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "cache_creation_input_tokens": cache_write,
                        "cache_read_input_tokens": cache_read,
                        "output_tokens": 1,
                    },
                }
            },
        )
    ]
    for index, block in enumerate(blocks):
        btype = block["type"]
        if btype == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in block["parts"]]
        elif btype == "thinking":
            start = {"type": "thinking", "thinking": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in block["parts"]]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif btype == "redacted_thinking":
            start = {"type": "redacted_thinking", "data": block["data"]}
            deltas = []
        elif btype == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in block["fragments"]]
        else:
            raise ValueError(f"unknown block type {btype!r}")
        steps.append(ev("content_block_start", {"index": index, "content_block": start}))
        if index == 0:
            steps.append(ev("ping", {}))
        steps.extend(ev("content_block_delta", {"index": index, "delta": d}, delay_s) for d in deltas)
        steps.append(ev("content_block_stop", {"index": index}))
    steps.append(
        ev(
            "message_delta",
            {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": {"output_tokens": output_tokens}},
        )
    )
    steps.append(ev("message_stop", {}))
    return steps


def anthropic_stream(*blocks: dict[str, Any], headers: dict[str, str] | None = None, **options: Any) -> SSEResponse:
    return SSEResponse(anthropic_events(*blocks, **options), headers=dict(headers or {}))


def anthropic_text(text: str, **options: Any) -> SSEResponse:
    return anthropic_stream(text_block(text), **options)


def anthropic_error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_011FakeRequest"}
    return JSONResponse(status, body, dict(headers or {}))


def anthropic_error_event(error_type: str, message: str, delay_s: float = 0.0) -> Event:
    return Event({"type": "error", "error": {"type": error_type, "message": message}}, event="error", delay_s=delay_s)


# ---------------------------------------------------------------- OpenAI wire format


def openai_chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
    model: str = "gpt-4o-mini-2024-07-18",
    id: str = "chatcmpl-FakeABC123",
    include_usage: bool = True,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``. With ``include_usage`` every chunk carries
    ``"usage": null`` except the last, which has ``choices: []`` and the counts."""
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": model,
        "system_fingerprint": "fp_fake0001",
        "choices": [],
    }
    if choices:
        chunk["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    if include_usage:
        chunk["usage"] = usage
    return chunk


def openai_usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_tool_call(id: str, name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    return {"id": id, "name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}


def openai_events(
    text: str = "",
    *,
    reasoning: str = "",
    reasoning_field: str = "reasoning_content",
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    chunk: int = 8,
    delay_s: float = 0.0,
    done: bool = True,
) -> list[Step]:
    """A realistic stream: role chunk, reasoning chunks, content chunks, tool calls (id and
    name in the first fragment, arguments in pieces), the finish chunk, the usage chunk and
    ``[DONE]``."""
    tool_calls = tool_calls or []
    finish_reason = finish_reason or ("tool_calls" if tool_calls else "stop")
    usage = usage if usage is not None else openai_usage(19, 10)

    def data(delta: dict[str, Any] | None = None, **kw: Any) -> Event:
        return Event(openai_chunk(delta, **kw), delay_s=delay_s)

    steps: list[Step] = [data({"role": "assistant", "content": "", "refusal": None})]
    if reasoning:
        steps.extend(data({reasoning_field: p}) for p in _split(reasoning, chunk))
    if text:
        steps.extend(data({"content": p}) for p in _split(text, chunk))
    for i, call in enumerate(tool_calls):
        steps.append(
            data({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                  "function": {"name": call["name"], "arguments": ""}}]})
        )
        steps.extend(
            data({"tool_calls": [{"index": i, "function": {"arguments": p}}]}) for p in _split(call["arguments"], 10)
        )
    steps.append(data({}, finish_reason=finish_reason))
    steps.append(data(choices=False, usage=usage))
    if done:
        steps.append(Event("[DONE]"))
    return steps


def openai_stream(text: str = "", *, headers: dict[str, str] | None = None, **options: Any) -> SSEResponse:
    return SSEResponse(openai_events(text, **options), headers=dict(headers or {}))


def openai_error(
    status: int, message: str, error_type: str | None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return JSONResponse(status, body, dict(headers or {}))


def openai_models(*ids: str, owned_by: str = "library") -> JSONResponse:
    """``GET /v1/models``: the list a compatible server (Ollama, vLLM, llama.cpp) answers."""
    data = [{"id": i, "object": "model", "created": 1735689600, "owned_by": owned_by} for i in ids]
    return JSONResponse(200, {"object": "list", "data": data})


# ---------------------------------------------------------------- defaults


def default_response(exchange: Exchange) -> Response:
    """With nothing queued: a short reply in the format the path belongs to."""
    path = exchange.path.split("?", 1)[0]
    if path.endswith("/v1/messages"):
        return anthropic_text("Hello from the fake Anthropic server.")
    if path.endswith("/chat/completions"):
        return openai_stream("Hello from the fake OpenAI server.")
    if path.endswith("/models") and exchange.method == "GET":
        return openai_models("fake-model:latest")
    return JSONResponse(404, {"error": {"type": "not_found_error", "message": f"no route for {path}"}})


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeLLMServer()
    server._httpd = _HTTPServer(("127.0.0.1", args.port), _Handler, server)
    print(f"fake LLM server on {server.base_url} (OpenAI base URL {server.openai_base_url})", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
