"""A hand-written stdio MCP server, no SDK: fast to start, and it shows what it receives.

    python tests/fakes/mcp_raw_server.py [MODE]

Every line it reads is echoed to stderr as ``got <line>``, so a test sees exactly what
the client sent (``notifications/cancelled`` and its params, answers to our ``ping``).

MODE: ``garbage`` (prints a banner on stdout and waits), ``exit`` (complains on stderr and
exits with code 3), ``version:V`` (answers ``initialize`` with protocol version V), or
nothing (a working server). After ``notifications/initialized`` it pings the client and
sends a log message. ``tools/list`` answers in two pages (``nextCursor``).
Tools: ``echo`` {text}, ``hang`` (never answers), ``die`` (exits with code 7 at once),
``env`` (its environment's names), ``structured`` (structuredContent only), ``pid``.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else ""

TOOLS = [
    {
        "name": "echo",
        "description": "Echo text.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
    {"name": "hang", "description": "Never answers.", "inputSchema": {"type": "object"}},
    {"name": "die", "description": "Exits at once.", "inputSchema": {"type": "object"}},
    {"name": "env", "description": "Environment names.", "inputSchema": {"type": "object"}},
    {"name": "structured", "description": "Structured content only.", "inputSchema": {"type": "object"}},
    {"name": "pid", "description": "Process id.", "inputSchema": {"type": "object"}},
]


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def result(id_: object, value: dict) -> None:
    send({"jsonrpc": "2.0", "id": id_, "result": value})


def text(id_: object, value: str) -> None:
    result(id_, {"content": [{"type": "text", "text": value}], "isError": False})


def main() -> None:
    if MODE == "garbage":
        print("Hello! Listening on port 8080", flush=True)
        time.sleep(60)
        return
    if MODE == "exit":
        print("fatal: no config file found", file=sys.stderr, flush=True)
        sys.exit(3)
    version = MODE.split(":", 1)[1] if MODE.startswith("version:") else None
    for line in sys.stdin:
        print(f"got {line.strip()}", file=sys.stderr, flush=True)
        msg = json.loads(line)
        method, id_, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method == "initialize":
            result(id_, {
                "protocolVersion": version or params.get("protocolVersion"),
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "raw", "version": "0"},
            })
        elif method == "notifications/initialized":
            send({"jsonrpc": "2.0", "id": "raw-ping-1", "method": "ping"})
            log = {"level": "info", "logger": "raw", "data": "hello from raw"}
            send({"jsonrpc": "2.0", "method": "notifications/message", "params": log})
        elif method == "tools/list":
            if params.get("cursor") == "page-2":
                result(id_, {"tools": TOOLS[3:]})
            else:
                result(id_, {"tools": TOOLS[:3], "nextCursor": "page-2"})
        elif method == "tools/call":
            name, args = params.get("name"), params.get("arguments") or {}
            if name == "echo":
                text(id_, str(args.get("text", "")))
            elif name == "hang":
                pass
            elif name == "die":
                os._exit(7)
            elif name == "env":
                text(id_, "\n".join(f"{k}={os.environ[k]}" if k == "WARREN_TEST_VAR" else k for k in sorted(os.environ)))
            elif name == "structured":
                result(id_, {"content": [], "structuredContent": {"temperature": 21.5, "unit": "C"}})
            elif name == "pid":
                text(id_, str(os.getpid()))
            else:
                send({"jsonrpc": "2.0", "id": id_, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})
        elif id_ is not None and method is not None:
            send({"jsonrpc": "2.0", "id": id_, "error": {"code": -32601, "message": f"Method not found: {method}"}})


if __name__ == "__main__":
    main()
