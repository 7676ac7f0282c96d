"""Client tools: checking definitions at the door, checking the model's arguments, and
running a step's calls through the client's ``tool/execute``.

Argument checking uses ``jsonschema`` (imported on first use: it costs ~60 ms, which
start-up must not pay). A call the model got wrong never reaches the client: it becomes an
error result the model can read and correct.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Protocol

import anyio
import msgspec

from protocol.events import Event, ToolExecutionCompleted, ToolExecutionStarted, ToolExecutionTimedOut
from protocol.types import ToolCall, ToolDef, ToolExecuteResult, ToolOverlay, ToolResultBlock

from .. import errors
from ..logs import get_logger

log = get_logger("warren.tools")


class ClientGone(Exception):
    """The client closed its input: nobody will answer ``tool/execute``."""


class ClientError(Exception):
    """The client answered ``tool/execute`` with a JSON-RPC error."""


class ClientChannel(Protocol):
    """Requests from the daemon to the client (implemented by the connection)."""

    def supports_tool_execute(self) -> bool: ...

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
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
            problems.append({"path": f"{path}[{i}].input_schema{where}", "message": exc.message})
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
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{error.message} (at {where})"


Emit = Callable[[Event], Awaitable[None]]


class StepRunner:
    """Runs one step's calls concurrently; results keep the order the model asked for.

    ``results`` fills in as calls finish, so an interrupted step can still commit what
    finished (and an error result for the rest) and the history stays well formed.
    """

    def __init__(
        self,
        calls: list[ToolCall],
        tools: list[ToolDef],
        channel: ClientChannel,
        session_id: str,
        turn_id: str,
        timeout_ms: int,
        emit: Emit,
    ) -> None:
        self.calls = calls
        self.tools = {t.name: t for t in tools}
        self.channel = channel
        self.session_id = session_id
        self.turn_id = turn_id
        self.timeout_ms = timeout_ms
        self.emit = emit
        self.results: dict[str, ToolResultBlock] = {}

    def ordered(self, missing: str) -> list[ToolResultBlock]:
        """Every call's result in the model's order; calls without one get ``missing``."""
        return [self.results.get(c.tool_use_id) or ToolResultBlock(c.tool_use_id, missing, True) for c in self.calls]

    async def run(self) -> list[ToolResultBlock]:
        async with anyio.create_task_group() as tasks:
            for call in self.calls:
                tasks.start_soon(self._one, call)
        return self.ordered("no result")

    async def _reject(self, call: ToolCall, message: str) -> None:
        self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, message, True)
        await self.emit(ToolExecutionCompleted(call.tool_use_id, call.name, message, True, 0))

    async def _one(self, call: ToolCall) -> None:
        tool = self.tools.get(call.name)
        if tool is None:
            await self._reject(call, f"Tool {call.name!r} is not available in this turn")
            return
        problem = argument_problem(call, tool)
        if problem is not None:
            await self._reject(call, f"Invalid arguments for tool {call.name!r}: {problem}. Fix them and call again.")
            return
        await self.emit(ToolExecutionStarted(call.tool_use_id, call.name))
        started = time.perf_counter()
        params = {
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "tool_use_id": call.tool_use_id,
            "name": call.name,
            "arguments": call.arguments,
        }
        try:
            answer = await self.channel.call_client("tool/execute", params, self.timeout_ms / 1000)
            content, is_error = _read_answer(answer)
        except ClientGone:
            # the turn is being interrupted by the shutdown that follows; record why
            self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, "Tool call interrupted: the client went away", True)
            return
        except TimeoutError:
            message = f"Tool {call.name!r} timed out after {self.timeout_ms} ms"
            self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, message, True)
            await self.emit(ToolExecutionTimedOut(call.tool_use_id, call.name, self.timeout_ms))
            return
        except ClientError as exc:
            content, is_error = str(exc), True
        self.results[call.tool_use_id] = ToolResultBlock(call.tool_use_id, content, is_error)
        duration = int((time.perf_counter() - started) * 1000)
        await self.emit(ToolExecutionCompleted(call.tool_use_id, call.name, content, is_error, duration))


def _read_answer(answer: Any) -> tuple[str, bool]:
    try:
        result = msgspec.convert(answer, ToolExecuteResult, strict=True)
    except msgspec.ValidationError as exc:
        return f"The client's tool/execute result was not {{content: string, is_error: bool}}: {exc}", True
    return result.content, result.is_error
