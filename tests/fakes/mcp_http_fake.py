"""A hand-written streamable-HTTP MCP server on loopback that answers in JSON mode and
records every request (method, headers, body), for the cases the SDK server will not
produce: an HTTP 500, a body that quotes the client's secret header, no GET stream (405).

    with FakeMcpHttp(mode="ok") as fake:      # tools/call answers 500
        fake.url                              # http://127.0.0.1:PORT/mcp

``mode="fail"``: every POST answers 500. ``expire()`` forgets the session, as a server
that restarted would: a request that carries the old id gets 404.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any



class FakeMcpHttp:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.session = "fake-session-1"
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                if body:
                    self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                message = json.loads(self.rfile.read(size))
                fake.requests.append(("POST", {k.lower(): v for k, v in self.headers.items()}, message))
                auth = self.headers.get("authorization", "")
                if fake.mode == "fail":
                    self._reply(500, f"upstream exploded (auth was {auth})".encode(), "text/plain")
                    return
                method, id_ = message.get("method"), message.get("id")
                sent = self.headers.get("mcp-session-id")
                if method != "initialize" and sent != fake.session:
                    if sent is None:
                        self._reply(400, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no session"}}')
                    else:
                        self._reply(404, b"session not found", "text/plain")
                    return
                if "id" not in message:
                    self._reply(202)
                elif method == "initialize":
                    result = {
                        "protocolVersion": "2025-03-26",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "fake-http", "version": "0"},
                    }
                    body = json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}).encode()
                    self._reply(200, body, headers={"mcp-session-id": fake.session})
                elif method == "tools/list":
                    tools = [{"name": "explode", "inputSchema": {"type": "object"}}, {"name": "hello", "inputSchema": {"type": "object"}}]
                    self._reply(200, json.dumps({"jsonrpc": "2.0", "id": id_, "result": {"tools": tools}}).encode())
                elif method == "tools/call" and message["params"]["name"] == "hello":
                    result = {"content": [{"type": "text", "text": f"hello from {fake.session}"}]}
                    self._reply(200, json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}).encode())
                elif method == "tools/call":
                    self._reply(500, f"<html>Internal Server Error; request carried {auth}</html>".encode(), "text/html")
                else:
                    body = {"jsonrpc": "2.0", "id": id_, "error": {"code": -32601, "message": "Method not found"}}
                    self._reply(200, json.dumps(body).encode())

            def do_GET(self) -> None:
                fake.requests.append(("GET", {k.lower(): v for k, v in self.headers.items()}, None))
                self._reply(405)

            def do_DELETE(self) -> None:
                fake.requests.append(("DELETE", {k.lower(): v for k, v in self.headers.items()}, None))
                self._reply(200)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/mcp"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeMcpHttp":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def expire(self) -> None:
        number = int(self.session.rsplit("-", 1)[1]) + 1
        self.session = f"fake-session-{number}"

    def methods(self) -> list[str]:
        return [m["method"] for verb, _, m in self.requests if verb == "POST" and "method" in m]
