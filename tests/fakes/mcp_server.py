"""An MCP server written with the official SDK (``mcp``), the independent peer of Warren's client.

    python tests/fakes/mcp_server.py              # stdio
    python tests/fakes/mcp_server.py --http PORT  # streamable HTTP on 127.0.0.1:PORT/mcp

Tools: ``echo``, ``slow`` (sleeps; says on stderr when it is cancelled), ``boom`` (raises),
``image`` (a PNG), ``add_tool`` (adds a tool and sends ``notifications/tools/list_changed``),
``env_names`` (the names of its environment variables), ``pid``, ``timed_echo`` (echo that
reports its own time, for the round-trip benchmark).
"""

from __future__ import annotations

import os
import sys
import time

import anyio

try:  # mcp 2.x
    from mcp.server.mcpserver import Context, Image, MCPServer as Server
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP as Server, Image  # type: ignore[no-redef]

#: A 1x1 transparent PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082"
)

app = Server("warren-fake", log_level="WARNING")


@app.tool(description="Echo the text back.")
def echo(text: str) -> str:
    return text


@app.tool(description="Echo, with the time the tool itself took, in microseconds.")
def timed_echo(text: str) -> str:
    t0 = time.perf_counter()
    out = text
    return f"{out} {int((time.perf_counter() - t0) * 1e6)}"


@app.tool(description="Sleep, then answer 'done'.")
async def slow(seconds: float) -> str:
    print(f"slow: started {seconds}", file=sys.stderr, flush=True)
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        print("slow: cancelled", file=sys.stderr, flush=True)
        raise
    return "done"


@app.tool(description="Always fails.")
def boom() -> str:
    raise ValueError("boom went the tool")


@app.tool(description="A 1x1 PNG.")
def image() -> Image:
    return Image(data=PNG, format="png")


@app.tool(description="Add a tool named NAME and tell the client the list changed.")
async def add_tool(name: str, ctx: Context) -> str:
    def added() -> str:
        return f"I am {name}"

    app.add_tool(added, name=name, description=f"Added at run time: {name}")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@app.tool(description="The names of the server's environment variables.")
def env_names() -> str:
    return "\n".join(sorted(os.environ))


@app.tool(description="The server's process id.")
def pid() -> str:
    return str(os.getpid())


def main() -> None:
    print("fake-mcp: starting", file=sys.stderr, flush=True)
    if len(sys.argv) >= 3 and sys.argv[1] == "--http":
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()


if __name__ == "__main__":
    main()
