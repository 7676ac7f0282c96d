"""The daemon's MCP servers: started on first use, shared by equal specs, stopped with the daemon.

Each server runs as one *attempt* at a time: a task in the manager's task group that opens
the transport, performs the handshake (``initialize`` → ``notifications/initialized`` →
``tools/list``, following ``nextCursor``), then waits until the connection ends. An attempt
that ends (the process crashed, the HTTP server went away) leaves the server ``failed``;
its next use starts a new attempt. Callers never run a server's tasks themselves, so a
turn that is interrupted while a server starts does not stop the server for the others.

``call`` never raises for a server's faults: a crash, a hang past ``timeout_s``, a JSON-RPC
error each become an error result naming the server. A call that times out, or whose
caller is cancelled (an interrupted turn), sends ``notifications/cancelled``.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable

import anyio
import anyio.abc

from warren.daemon import __version__
from warren.daemon.logs import get_logger

from .content import to_call_result
from .types import (
    KNOWN_PROTOCOL_VERSIONS,
    PROTOCOL_VERSION,
    McpCallResult,
    McpError,
    McpServerSpec,
    McpServerStatus,
    McpTool,
    RequestFailed,
    ServerGone,
)

log = get_logger("warren.mcp")

#: ``tools/list`` pages we follow before deciding a server's cursor never ends.
MAX_PAGES = 100


def _default_log_stderr(server: str, line: str) -> None:
    log.info("mcp_stderr", server=server, line=line)


class _Attempt:
    """One run of a server: from spawn (or first POST) to exit."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.ready = anyio.Event()  # set once ready, failed or stopped
        self.done = anyio.Event()  # set when the attempt's task has ended
        self.conn: Any = None
        self.state = "starting"
        self.error: McpError | None = None
        self.tools: list[McpTool] = []
        self.changes = 0  # notifications/tools/list_changed received
        self.listed = 0  # how many of them the current ``tools`` reflects
        self.refreshing: anyio.Event | None = None
        self.pid: int | None = None
        self.initialized = False  # the server answered initialize


class _Server:
    def __init__(self, spec: McpServerSpec, manager: "McpManager") -> None:
        self.spec = spec
        self.name = spec.name
        self.manager = manager
        self.attempt: _Attempt | None = None

    def status(self) -> McpServerStatus:
        a = self.attempt
        if a is None:
            return McpServerStatus(self.name, self.spec.transport, "stopped", [])
        live = a.state in ("starting", "ready")
        return McpServerStatus(
            self.name,
            self.spec.transport,
            a.state,
            [t.name for t in a.tools],
            str(a.error) if a.error is not None and a.state == "failed" else None,
            a.pid if live else None,
        )

    # ------------------------------------------------------------------ use

    async def ready(self) -> _Attempt:
        """The running attempt, once ready; starts one if there is none (first use, or the
        last one ended). Raises ``McpError`` if it cannot start."""
        while True:
            if self.manager._closed:
                raise McpError(self.name, "stopped (the daemon is shutting down)")
            a = self.attempt
            if a is None or a.done.is_set():
                a = self._start()
            elif a.conn is not None and a.conn.closed.is_set() and a.ready.is_set():
                await a.done.wait()  # crashed: let it be reaped, then start again
                continue
            await a.ready.wait()
            if a.error is not None:
                raise a.error
            if a.state != "ready":
                raise McpError(self.name, "stopped")
            return a

    async def tools(self) -> list[McpTool]:
        a = await self.ready()
        if a.changes != a.listed:
            await self._refresh(a)
        return list(a.tools)

    def _start(self) -> _Attempt:
        tasks = self.manager._tasks
        if tasks is None:
            raise RuntimeError("McpManager.run() is not running")
        a = _Attempt()
        self.attempt = a
        tasks.start_soon(self._run, a, name=f"mcp:{self.name}")
        return a

    # ------------------------------------------------------------------ the attempt

    def _open(self, a: _Attempt) -> AbstractAsyncContextManager[Any]:
        from .inbound import inbound_dispatcher

        dispatcher = inbound_dispatcher(self.name, lambda: self._tools_changed(a), self.manager._log_line)
        if self.spec.command is not None:
            from .stdio import open_stdio

            return open_stdio(self.spec, dispatcher, self.manager._log_line, self.manager.stop_grace_s)
        from .http import open_http

        return open_http(self.spec, dispatcher)

    async def _run(self, a: _Attempt) -> None:
        started = time.perf_counter()
        timeout = self.manager.startup_timeout_s
        try:
            with a.scope:
                failure: McpError | None = None
                lost_early = False
                conn: Any = None
                # Nothing is raised inside the ``async with``: the transport's task group
                # would wrap it in an exception group.
                async with self._open(a) as conn:
                    a.conn = conn
                    a.pid = conn.pid
                    try:
                        with anyio.fail_after(timeout):
                            await self._handshake(a, conn, timeout)
                    except ServerGone:
                        lost_early = True
                    except TimeoutError:
                        failure = McpError(self.name, f"did not answer {self._step(a)} within {timeout:g} s")
                    except RequestFailed as exc:
                        failure = McpError(self.name, f"{self._step(a)} failed: {exc}")
                    except McpError as exc:
                        failure = exc
                    else:
                        a.state = "ready"
                        a.ready.set()
                        log.info(
                            "mcp_server_ready",
                            server=self.name,
                            transport=self.spec.transport,
                            tools=len(a.tools),
                            duration_ms=round((time.perf_counter() - started) * 1000, 1),
                        )
                        await conn.closed.wait()
                # The process (if any) is reaped now: its exit status is known.
                if failure is None:
                    when = f" before answering {self._step(a)}" if lost_early else ""
                    failure = McpError(self.name, conn.describe_loss(when))
                raise failure
        except McpError as exc:
            a.error = exc
            a.state = "failed"
            log.warning("mcp_server_failed", server=self.name, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the daemon down
            a.error = McpError(self.name, f"internal error ({type(exc).__name__}); see the daemon log")
            a.state = "failed"
            log.error("mcp_server_internal_error", server=self.name, exc_info=exc)
        finally:
            if a.state in ("starting", "ready"):
                a.state = "stopped"
            a.ready.set()
            a.done.set()

    async def _handshake(self, a: _Attempt, conn: Any, timeout: float) -> None:
        result = await conn.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "warren", "version": __version__},
            },
            timeout,
        )
        if not isinstance(result, dict):
            raise McpError(self.name, "answered initialize with an invalid result")
        a.initialized = True
        version = result.get("protocolVersion")
        if version not in KNOWN_PROTOCOL_VERSIONS:
            raise McpError(
                self.name,
                f"speaks MCP protocol version {version!r}; Warren speaks {', '.join(KNOWN_PROTOCOL_VERSIONS)}",
            )
        conn.protocol_version = version
        await conn.notify("notifications/initialized", {})
        conn.initialized()
        capabilities = result.get("capabilities")
        if isinstance(capabilities, dict) and "tools" not in capabilities:
            a.tools = []  # a server without tools (resources or prompts only)
            return
        seen = a.changes
        a.tools = await self._list_tools(conn, timeout)
        a.listed = seen

    @staticmethod
    def _step(a: _Attempt) -> str:
        return "tools/list" if a.initialized else "initialize"

    async def _list_tools(self, conn: Any, timeout: float) -> list[McpTool]:
        tools: list[McpTool] = []
        names: set[str] = set()
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            result = await conn.request("tools/list", {"cursor": cursor} if cursor is not None else {}, timeout)
            if not isinstance(result, dict) or not isinstance(result.get("tools", []), list):
                raise RequestFailed("tools/list answered with an invalid result")
            for item in result.get("tools", []):
                tool = self._tool(item)
                if tool is not None and tool.name not in names:
                    names.add(tool.name)
                    tools.append(tool)
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor or cursor in seen:
                break
            seen.add(cursor)
        return tools

    def _tool(self, item: Any) -> McpTool | None:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            log.warning("mcp_invalid_tool", server=self.name)
            return None
        description = item.get("description")
        schema = item.get("inputSchema")
        return McpTool(
            self.name,
            item["name"],
            description if isinstance(description, str) else "",
            schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
        )

    # ------------------------------------------------------------------ tools/list_changed

    def _tools_changed(self, a: _Attempt) -> None:
        a.changes += 1
        tasks = self.manager._tasks
        if a.state == "ready" and tasks is not None and a.refreshing is None:
            tasks.start_soon(self._refresh, a)

    async def _refresh(self, a: _Attempt) -> None:
        """List the tools again (one listing at a time; callers wait for it). On failure
        the last list is kept and the next ``tools`` tries again."""
        if a.refreshing is not None:
            await a.refreshing.wait()
            return
        event = a.refreshing = anyio.Event()
        try:
            while a.changes != a.listed and a.state == "ready":
                seen = a.changes
                timeout = self.manager.startup_timeout_s
                try:
                    with anyio.fail_after(timeout):
                        a.tools = await self._list_tools(a.conn, timeout)
                    a.listed = seen
                    log.info("mcp_tools_changed", server=self.name, tools=len(a.tools))
                except (ServerGone, RequestFailed, TimeoutError) as exc:
                    log.warning("mcp_tools_refresh_failed", server=self.name, error=type(exc).__name__)
                    break
        finally:
            a.refreshing = None
            event.set()

    # ------------------------------------------------------------------ calls

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> McpCallResult:
        started = anyio.current_time()
        a: _Attempt | None = None
        outcome = "cancelled"
        try:
            def left() -> float:
                return max(timeout_s - (anyio.current_time() - started), 0.001)

            try:
                params = {"name": tool, "arguments": arguments}
                with anyio.fail_after(timeout_s):
                    a = await self.ready()
                try:
                    result = await a.conn.request("tools/call", params, left())
                except ServerGone:
                    if not getattr(a.conn, "session_expired", False):
                        raise
                    # An HTTP server that restarted forgot our session before the call ran:
                    # initialize again and send it once more.
                    with anyio.fail_after(left()):
                        await a.done.wait()
                        a = await self.ready()
                    result = await a.conn.request("tools/call", params, left())
            except McpError as exc:
                outcome = "unavailable"
                return McpCallResult(str(exc), True)
            except TimeoutError:
                outcome = "timeout"
                if a is None:
                    return self._error(tool, f"the server did not start within {timeout_s:g} s")
                return self._error(tool, f"no answer within {timeout_s:g} s; the call was cancelled")
            except ServerGone:
                outcome = "server_gone"
                assert a is not None
                with anyio.move_on_after(min(2.0, timeout_s - (anyio.current_time() - started))):
                    await a.done.wait()  # reaped: the exit status is known (within the timeout)
                return self._error(tool, f"{a.conn.describe_loss()}; it is restarted at its next use")
            except RequestFailed as exc:
                outcome = "error"
                return self._error(tool, str(exc))
            converted = to_call_result(self.name, tool, result)
            outcome = "tool_error" if converted.is_error else "ok"
            return converted
        finally:
            log.info(
                "mcp_call",
                server=self.name,
                tool=tool,
                outcome=outcome,
                duration_ms=round((anyio.current_time() - started) * 1000, 2),
            )

    def _error(self, tool: str, detail: str) -> McpCallResult:
        return McpCallResult(f"MCP server {self.name!r}: tool {tool!r} failed: {detail}", True)

    async def stop(self) -> None:
        a = self.attempt
        if a is not None and not a.done.is_set():
            a.scope.cancel()
            await a.done.wait()


class McpManager:
    """The daemon's MCP servers, keyed by spec (equal specs share one server)."""

    def __init__(
        self,
        *,
        log_stderr: Callable[[str, str], None] | None = None,
        startup_timeout_s: float = 10.0,
        stop_grace_s: float = 2.0,
    ) -> None:
        self._log_line = log_stderr or _default_log_stderr
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self._servers: dict[tuple[Any, ...], _Server] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._closed = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the servers' tasks until cancelled (daemon stop), then stop every server."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.aclose()
        finally:
            self._tasks = None

    def _server(self, spec: McpServerSpec) -> _Server:
        key = spec.key()
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Server(spec, self)
        return server

    async def tools(self, spec: McpServerSpec) -> list[McpTool]:
        """The server's tools (starting it if needed). Raises ``McpError`` naming it."""
        return await self._server(spec).tools()

    async def call(self, spec: McpServerSpec, tool: str, arguments: dict[str, Any], timeout_s: float) -> McpCallResult:
        """Run a tool. Never raises for the server's faults (they become error results);
        cancellation of the caller cancels the call on the server too."""
        return await self._server(spec).call(tool, arguments, timeout_s)

    def servers(self, specs: "list[McpServerSpec] | None" = None) -> list[McpServerStatus]:
        """Every server the daemon has started or tried to, or those of ``specs`` (a
        session's, matched by the whole spec, not the name), in ``specs`` order."""
        if specs is None:
            return [s.status() for s in self._servers.values()]
        known = (self._servers.get(spec.key()) for spec in specs)
        return [server.status() for server in known if server is not None]

    async def aclose(self) -> None:
        """Stop every server (each: stdin closed, SIGTERM, SIGKILL after the grace period)."""
        self._closed = True
        servers = list(self._servers.values())
        async with anyio.create_task_group() as tasks:
            for server in servers:
                tasks.start_soon(server.stop)
