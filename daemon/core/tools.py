"""Client tools: checking definitions at the door, checking the model's arguments, and
running a step's calls through the client's ``tool/execute``.

Argument checking uses ``jsonschema`` (imported on first use: it costs ~60 ms, which
start-up must not pay). A call the model got wrong never reaches the client: it becomes an
error result the model can read and correct.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

import anyio
import msgspec

from warren.protocol.events import Event, ToolExecutionCompleted, ToolExecutionStarted, ToolExecutionTimedOut
from warren.protocol.types import McpServerInput, ToolCall, ToolDef, ToolExecuteResult, ToolOverlay, ToolResultBlock

from .. import errors
from . import images
from .structured import json_path, schema_problem
from ..logs import get_logger

if TYPE_CHECKING:
    from ..mcp import McpServerSpec

log = get_logger("warren.tools")


class ClientGone(Exception):
    """The client closed its input: nobody will answer ``tool/execute``."""


class ClientError(Exception):
    """The client answered ``tool/execute`` with a JSON-RPC error."""


class ClientChannel(Protocol):
    """Requests from the daemon to the client (implemented by the front-end)."""

    def supports_tool_execute(self) -> bool: ...

    def stages_tool_results(self) -> bool:
        """Whether calls it does not execute can wait for results it stages later (Warren's
        ``session/stage_tool_results``); if not, they fail at once."""
        ...

    async def permit(self, session_id: str, call: ToolCall, timeout_s: float) -> bool:
        """Whether the user lets this tool call run (ACP asks the editor; Warren's own
        protocol has no such question and answers yes)."""
        ...

    async def call_client(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        """The client's ``result``; raises ClientError, TimeoutError or ClientGone. On
        timeout or cancellation the daemon has already sent ``$/cancelRequest``."""
        ...


def check_tool_defs(tools: list[ToolDef], path: str = "$.tools") -> None:
    """Reject definitions a provider would refuse: duplicate names, non-object schemas,
    and schemas that are not valid JSON Schema (names are checked by the wire type)."""
    seen: set[str] = set()
    problems: list[dict[str, str]] = []
    for i, tool in enumerate(tools):
        if tool.name in seen:
            problems.append({"path": f"{path}[{i}].name", "message": f"duplicate tool name {tool.name!r}"})
        seen.add(tool.name)
        schema = tool.input_schema
        if schema.get("type") != "object":
            problems.append({"path": f"{path}[{i}].input_schema.type", "message": 'must be "object"'})
            continue
        problem = schema_problem(schema, f"{path}[{i}].input_schema")
        if problem is not None:
            problems.append(problem)
    if problems:
        raise errors.InvalidRequest("Invalid params: " + problems[0]["message"], problems)


def offered(tools: list[ToolDef], overlay: ToolOverlay | None) -> list[ToolDef]:
    """The tools the model sees this turn: the session's, narrowed by the overlay."""
    if overlay is None:
        return list(tools)
    allowed = None if overlay.allowed_tools is None else set(overlay.allowed_tools)
    blocked = set(overlay.blocked_tools or ())
    return [t for t in tools if (allowed is None or t.name in allowed) and t.name not in blocked]


_validators: dict[str, tuple[dict[str, Any], Any]] = {}


def _validator(tool: ToolDef) -> Any:
    """A compiled validator per tool schema (kept while the schema object lives)."""
    cached = _validators.get(tool.name)
    if cached is None or cached[0] is not tool.input_schema:
        from jsonschema import Draft202012Validator

        if len(_validators) > 256:
            _validators.clear()
        cached = _validators[tool.name] = (tool.input_schema, Draft202012Validator(tool.input_schema))
    return cached[1]


def argument_problem(call: ToolCall, tool: ToolDef) -> str | None:
    """Why the model's arguments do not fit the tool's schema, or None when they do."""
    if "_invalid_json" in call.arguments and len(call.arguments) == 1:
        return "the arguments are not valid JSON"
    error = next(iter(_validator(tool).iter_errors(call.arguments)), None)
    if error is None:
        return None
    return f"{error.message} (at ${json_path(error.absolute_path)})"


Emit = Callable[[Event], Awaitable[None]]
CLIENT = "client"
#: A tool's answer: its text, whether it failed, and its images as ``(mime type, base64)``.
Answer = tuple[str, bool, list[tuple[str, str]]]


class ToolSource(Protocol):
    """Where a tool runs: the client (``tool/execute``) or an MCP server. ``source`` is what
    the tool events carry (``"client"``, ``"mcp:NAME"``)."""

    source: str

    def available(self) -> bool:
        """Whether calls can run now (a client that does not execute tools: no)."""
        ...

    async def run(self, call: ToolCall, name: str, timeout_s: float) -> Answer:
        """``(content, is_error, images as (mime type, base64))``; raises ``ClientGone`` when
        nobody can answer any more. ``name``: the tool's own name at its source."""
        ...


class ClientSource:
    source = CLIENT

    def __init__(self, channel: ClientChannel, session_id: str, turn_id: str) -> None:
        self.channel = channel
        self.session_id = session_id
        self.turn_id = turn_id

    def available(self) -> bool:
        return self.channel.supports_tool_execute()

    def stages(self) -> bool:
        return self.channel.stages_tool_results()

    async def run(self, call: ToolCall, name: str, timeout_s: float) -> Answer:
        params = {
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "tool_use_id": call.tool_use_id,
            "name": name,
            "arguments": call.arguments,
        }
        try:
            return _read_answer(await self.channel.call_client("tool/execute", params, timeout_s))
        except ClientError as exc:
            return str(exc), True, []


class McpManagerLike(Protocol):
    """What a tool source needs of ``daemon.mcp.McpManager`` (imported only when a session
    names an MCP server)."""

    async def tools(self, spec: Any) -> list[Any]: ...

    async def call(self, spec: Any, tool: str, arguments: dict[str, Any], timeout_s: float) -> Any: ...

    def servers(self, specs: Any = None) -> list[Any]: ...


def mcp_tool_name(server: str, tool: str) -> str:
    """The name the model sees: ``SERVER__TOOL``, kept to what every provider accepts."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", f"{server}__{tool}")[:64]


def mcp_spec(server: McpServerInput) -> McpServerSpec:
    """The manager's key for a server as a session or the config names it: equal specs
    share one process."""
    from ..mcp import McpServerSpec

    return McpServerSpec(
        server.name, command=server.command, args=tuple(server.args), env=tuple(sorted(server.env.items())),
        url=server.url, headers=tuple(sorted(server.headers.items())),
    )


class McpSource:
    """The tools of one MCP server."""

    def __init__(self, manager: McpManagerLike, server: McpServerInput) -> None:
        self.manager = manager
        self.server = server
        self.source = f"mcp:{server.name}"
        self.spec = mcp_spec(server)

    def available(self) -> bool:
        return True

    async def tools(self) -> list[tuple[ToolDef, str]]:
        """``(definition as the model sees it, the tool's own name)``; raises ``McpError``."""
        listed = await self.manager.tools(self.spec)
        return [
            (ToolDef(mcp_tool_name(self.server.name, t.name), t.input_schema or {"type": "object"}, t.description or ""),
             t.name)
            for t in listed
        ]

    async def run(self, call: ToolCall, name: str, timeout_s: float) -> Answer:
        result = await self.manager.call(self.spec, name, call.arguments, timeout_s)
        return result.content, result.is_error, list(result.images)


def check_mcp_servers(servers: list[McpServerInput], path: str = "$.mcp_servers") -> None:
    """Each server is stdio (``command``) or HTTP (``url``), and names are unique."""
    problems: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, server in enumerate(servers):
        if (server.command is None) == (server.url is None):
            problems.append({"path": f"{path}[{i}]", "message": "give either command (stdio) or url (streamable HTTP)"})
        if server.name in seen:
            problems.append({"path": f"{path}[{i}].name", "message": f"duplicate server name {server.name!r}"})
        seen.add(server.name)
    if problems:
        raise errors.InvalidRequest("Invalid params: " + problems[0]["message"], problems)


class Toolbox:
    """The tools a turn offers the model, each with the source that runs it (by the name
    the model sees: MCP tools are ``SERVER__TOOL``)."""

    def __init__(self, client: ClientSource | None = None) -> None:
        """``client``: where a call of a tool the box does not hold goes (the client decides
        what it serves; a model's unknown tool is refused there, or staged without one)."""
        self.client = client
        self._entries: dict[str, tuple[ToolDef, ToolSource, str]] = {}
        #: MCP servers that could not be started for this turn, with why: a call of one of
        #: their tools is answered with that, naming the server.
        self.unavailable: dict[str, str] = {}

    def add(self, tool: ToolDef, source: ToolSource, name: str | None = None) -> None:
        self._entries.setdefault(tool.name, (tool, source, name or tool.name))

    def defs(self) -> list[ToolDef]:
        return [entry[0] for entry in self._entries.values()]

    def get(self, name: str) -> tuple[ToolDef, ToolSource, str] | None:
        return self._entries.get(name)

    def source_of(self, name: str) -> str:
        entry = self._entries.get(name)
        return entry[1].source if entry is not None else CLIENT

    def runnable(self, calls: list[ToolCall]) -> bool:
        """Whether this step's calls can all run now; else the turn ends with them pending."""
        client_ok = self.client is not None and self.client.available()

        def can_run(call: ToolCall) -> bool:
            entry = self._entries.get(call.name)
            if entry is not None:
                return entry[1].available()
            # an unavailable MCP server's tool runs, to fail with why
            return client_ok or call.name.split("__", 1)[0] in self.unavailable

        if all(can_run(c) for c in calls):
            return True
        # a call only the client could run, and it does not: it waits for staged results
        # where the client stages them; elsewhere the step runs and that call fails
        return self.client is None or not self.client.stages()


Permit = Callable[[ToolCall, float], Awaitable[bool]]


class StepRunner:
    """Runs one step's calls concurrently; results keep the order the model asked for.

    ``results`` fills in as calls finish, so an interrupted step can still commit what
    finished (and an error result for the rest) and the history stays well formed.
    ``permit`` asks the client before each call (ACP's permission request).
    """

    def __init__(
        self,
        calls: list[ToolCall],
        toolbox: Toolbox,
        timeout_ms: int,
        emit: Emit,
        permit: Permit | None = None,
    ) -> None:
        self.calls = calls
        self.toolbox = toolbox
        self.timeout_ms = timeout_ms
        self.emit = emit
        self.permit = permit
        self.results: dict[str, ToolResultBlock] = {}
        self.blobs: list[images.Blob] = []  # the results' images, stored with the step's commit

    def ordered(self, missing: str) -> list[ToolResultBlock]:
        """Every call's result in the model's order; calls without one get ``missing``."""
        return [self.results.get(c.tool_use_id) or ToolResultBlock(c.tool_use_id, missing, True) for c in self.calls]

    async def run(self) -> list[ToolResultBlock]:
        async with anyio.create_task_group() as tasks:
            for call in self.calls:
                tasks.start_soon(self._one, call)
        return self.ordered("no result")

    async def _reject(self, call: ToolCall, message: str, source: str) -> None:
        self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, message, True)
        await self.emit(ToolExecutionCompleted(call.tool_use_id, call.name, message, True, 0, source))

    async def _one(self, call: ToolCall) -> None:
        entry = self.toolbox.get(call.name)
        if entry is None:
            server = call.name.split("__", 1)[0] if "__" in call.name else None
            if server in self.toolbox.unavailable:
                await self._reject(call, f"Tool {call.name!r} is not available: {self.toolbox.unavailable[server]}",
                                   f"mcp:{server}")
            else:
                await self._reject(call, f"Tool {call.name!r} is not available in this turn", CLIENT)
            return
        tool, source, name = entry
        problem = argument_problem(call, tool)
        if problem is not None:
            await self._reject(call, f"Invalid arguments for tool {call.name!r}: {problem}. Fix them and call again.",
                               source.source)
            return
        timeout_s = self.timeout_ms / 1000
        try:
            if self.permit is not None:
                with anyio.fail_after(timeout_s):
                    allowed = await self.permit(call, timeout_s)
                if not allowed:
                    await self._reject(call, f"The user declined the call of tool {call.name!r}", source.source)
                    return
            await self.emit(ToolExecutionStarted(call.tool_use_id, call.name, source.source))
            started = time.perf_counter()
            with anyio.fail_after(timeout_s):
                content, is_error, pictures = await source.run(call, name, timeout_s)
        except ClientGone:
            # the turn is being interrupted by the shutdown that follows; record why
            self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, "Tool call interrupted: the client went away", True)
            return
        except TimeoutError:
            message = f"Tool {call.name!r} timed out after {self.timeout_ms} ms"
            self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, message, True)
            await self.emit(ToolExecutionTimedOut(call.tool_use_id, call.name, self.timeout_ms, source.source))
            return
        blocks, blobs, problem = images.tool_images(pictures)
        if problem is not None:
            content = f"{content}\n[the tool returned {problem}; it was left out]"
        self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, content, is_error,
                                                         blocks if blocks else msgspec.UNSET)
        self.blobs += blobs
        duration = int((time.perf_counter() - started) * 1000)
        await self.emit(ToolExecutionCompleted(call.tool_use_id, call.name, content, is_error, duration, source.source))


def _read_answer(answer: Any) -> Answer:
    try:
        result = msgspec.convert(answer, ToolExecuteResult, strict=True)
    except msgspec.ValidationError as exc:
        return (f"The client's tool/execute result was not {{content: string, is_error: bool, images?}}: {exc}",
                True, [])
    return result.content, result.is_error, [(i.mime_type, i.data) for i in result.images]
