"""The Agent Client Protocol front-end (``warren acp``): ACP's methods over the same JSON-RPC
peer, session service and store as Warren's own protocol, so a session made in an editor
can be read with ``warren serve`` and the other way round.

What maps to what:
- ``session/new`` creates a deferred session (provider and model from ``_meta.warren`` or the
  config's defaults; ``_meta.systemPrompt`` as its system prompt; ``cwd`` stored);
  ``session/prompt`` runs a turn; its events become ``session/update`` notifications
  (``deliver``); its ``RunResult`` becomes ``{stopReason, usage}``.
- ``session/cancel`` stops the prompt running when it arrives, and only that one: the
  cancel is matched to the prompt in flight when it is read, never to a later one.
- Before each tool call, ``session/request_permission`` (``permit``); "always" answers are
  remembered for the session while this connection lasts.
- ``session/load`` replays the stored transcript as updates; ``resume`` does not;
  ``list`` pages with an opaque cursor; ``delete`` archives; ``close`` cancels and releases.
- Errors keep Warren's ``data`` under ACP's codes (``to_wire``).
"""

from __future__ import annotations

import base64
import datetime
from typing import TYPE_CHECKING, Any, Callable

import anyio
import msgspec

from warren.protocol import acp
from warren.protocol.errors import error_object
from warren.protocol.events import AnyEvent
from warren.protocol.types import (
    ForkParams,
    ImageBlock,
    ImageInput,
    McpServerInput,
    Message,
    ReasoningBlock,
    SessionCreateParams,
    TextBlock,
    TextInput,
    ToolCall,
    ToolResultBlock,
    ToolUseBlock,
    TurnStartParams,
)

from .. import errors
from ..clock import new_id
from ..core.events import Numbered
from ..core.tools import ClientError
from ..providers import ProviderRegistry
from ..transport.dispatch import Dispatcher, Handler, RequestContext
from .handshake import acp_initialize, acp_to_wire
from ..transport.peer import Peer, PeerError, PeerGone

if TYPE_CHECKING:
    from ..core.service import SessionService

CONTEXT_WINDOW = 200_000  # usage_update.size until models' windows are configured
LIST_PAGE = 50
TITLE_CHARS = 80

_encode = msgspec.json.Encoder().encode
_any_event = msgspec.json.Decoder(AnyEvent)

STOP_REASONS: dict[str, acp.StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "end_turn",
    "max_tokens": "max_tokens",
    "budget_exhausted": "max_turn_requests",
    "refusal": "refusal",
    "interrupted": "cancelled",
}


class _Note(msgspec.Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str = acp.NOTIFY_UPDATE
    params: acp.SessionNotification


def kind_of(tool: str) -> acp.ToolKind:
    """A guess at ACP's tool kind from the tool's name, for the editor's icon."""
    name = tool.lower().rsplit("__", 1)[-1]
    for kind, words in (("read", ("read", "get", "open", "view", "cat")), ("edit", ("write", "edit", "patch", "replace")),
                        ("delete", ("delete", "remove", "rm")), ("move", ("move", "rename")),
                        ("search", ("search", "find", "grep", "list")), ("fetch", ("fetch", "http", "url", "download")),
                        ("execute", ("exec", "run", "shell", "bash", "command"))):
        if any(w in name for w in words):
            return kind  # type: ignore[return-value]
    return "other"


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).isoformat(timespec="milliseconds")


def _text(content: str) -> acp.ToolContent:
    return acp.ToolContent(acp.TextContent(content))


class _Prompt:
    """The prompt in flight on a session: what a ``session/cancel`` arriving now stops."""

    __slots__ = ("cancelled", "scope")

    def __init__(self) -> None:
        self.cancelled = False
        self.scope: anyio.CancelScope | None = None  # the turn's, once claimed


class AcpFrontend:
    def __init__(self, peer: Peer, providers: ProviderRegistry, service: Callable[[], "SessionService"]) -> None:
        self.peer = peer
        self.writer = peer.writer
        self.providers = providers
        self.service = service
        self._prompts: dict[str, _Prompt] = {}
        self._message_ids: dict[str, str] = {}  # session -> the id of the message being streamed
        self._always: dict[str, dict[str, bool]] = {}  # session -> tool -> allowed, from "always" answers
        self.dispatcher = Dispatcher(self._table(), to_wire=acp_to_wire, quiet=frozenset({"initialize", "session/list"}))

    # ------------------------------------------------------------------ the event sink

    def deliver(self, numbered: Numbered, *, replay: bool = False) -> None:
        event = numbered.event
        if isinstance(event, msgspec.Raw):
            event = _any_event.decode(event)
        for update in self._updates(numbered.session_id, numbered.turn_id, event):
            self._send(numbered.session_id, update)

    deliver_live = deliver

    def _send(self, session_id: str, update: Any) -> None:
        self.writer.send_event(_encode(_Note(params=acp.SessionNotification(session_id, update))) + b"\n")

    def _message_id(self, session_id: str) -> str:
        current = self._message_ids.get(session_id)
        if current is None:
            current = self._message_ids[session_id] = new_id()
        return current

    def _updates(self, session_id: str, turn_id: str | None, event: Any) -> list[Any]:
        kind = event.__struct_config__.tag
        if kind == "text_delta":
            return [acp.AgentMessageChunk(acp.TextContent(event.delta), self._message_id(session_id))]
        if kind == "reasoning_delta":
            return [acp.AgentThoughtChunk(acp.TextContent(event.delta), self._message_id(session_id))]
        if kind in ("usage", "turn_started", "turn_completed", "turn_failed", "retrying"):
            self._message_ids.pop(session_id, None)  # the next model call's text is another message
        if kind == "tool_call_requested":
            return [acp.ToolCallStart(event.tool_use_id, event.name, kind_of(event.name), "pending", event.arguments)]
        if kind == "tool_execution_started":
            return [acp.ToolCallUpdate(event.tool_use_id, status="in_progress")]
        if kind == "tool_execution_completed":
            return [acp.ToolCallUpdate(event.tool_use_id, status="failed" if event.is_error else "completed",
                                       raw_output={"content": event.content, "is_error": event.is_error},
                                       content=[_text(event.content)])]
        if kind == "tool_execution_timed_out":
            return [acp.ToolCallUpdate(event.tool_use_id, status="failed",
                                       content=[_text(f"Timed out after {event.timeout_ms} ms")])]
        if kind == "usage":
            used = event.usage.input_tokens + event.usage.output_tokens
            return [acp.UsageUpdate(used, CONTEXT_WINDOW)]
        return []

    # ------------------------------------------------------------------ the client channel

    def supports_tool_execute(self) -> bool:
        return False  # ACP hands the agent its tools as MCP servers: no client-executed tools

    def stages_tool_results(self) -> bool:
        return False  # nor results staged by the client: a call nobody serves fails at once

    async def call_client(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        raise ClientError(f"An ACP client does not serve {method}")

    async def permit(self, session_id: str, call: ToolCall, timeout_s: float) -> bool:
        """Ask the editor (``session/request_permission``); "always" answers are kept."""
        remembered = self._always.get(session_id, {}).get(call.name)
        if remembered is not None:
            return remembered
        params = acp.RequestPermissionParams(
            session_id,
            acp.PermissionToolCall(call.tool_use_id, call.name, kind_of(call.name), "pending", call.arguments),
            acp.PERMISSION_OPTIONS,
        )
        try:
            answer = await self.peer.request(acp.REQUEST_PERMISSION, msgspec.to_builtins(params), timeout_s)
        except (PeerGone, PeerError):
            return False
        try:
            outcome = msgspec.convert(answer, acp.RequestPermissionResult).outcome
        except msgspec.ValidationError:
            return False
        if outcome.outcome != "selected" or outcome.option_id is None:
            return False
        allowed = outcome.option_id.startswith("allow")
        if outcome.option_id.endswith("always"):
            self._always.setdefault(session_id, {})[call.name] = allowed
        return allowed

    # ------------------------------------------------------------------ helpers

    def _model_option(self, provider: str, model: str | None) -> acp.ConfigOption:
        current = model or "default"
        values = [current] + sorted(
            {p.default_model for p in self.providers.describe() if p.default_model and p.default_model != current}
        )
        return acp.ConfigOption("model", "Model", current, [acp.SelectOption(v, v) for v in values], "select",
                                category="model", description=f"The model of {provider}")

    def _prompt(self, blocks: list[dict[str, Any]]) -> tuple[str, list[ImageInput]]:
        """An ACP prompt as the turn's text and images. Audio is refused by name, like any
        unknown block type."""
        parts: list[str] = []
        pictures: list[ImageInput] = []
        for i, raw in enumerate(blocks):
            kind = raw.get("type") if isinstance(raw, dict) else None
            if kind == "image":
                try:
                    image = msgspec.convert(raw, acp.ImageContent)
                    pictures.append(msgspec.convert({"mime_type": image.mime_type, "data": image.data}, ImageInput))
                except msgspec.ValidationError as exc:
                    raise errors.InvalidRequest.at(f"$.prompt[{i}]", str(exc)) from None
                continue
            if kind not in ("text", "resource_link", "resource"):
                raise errors.InvalidRequest.at(f"$.prompt[{i}].type", f"content blocks of type {kind!r} are not supported")
            try:
                block = msgspec.convert(raw, acp.ContentBlock)
            except msgspec.ValidationError as exc:
                raise errors.InvalidRequest.at(f"$.prompt[{i}]", str(exc)) from None
            if isinstance(block, acp.TextContent):
                parts.append(block.text)
            elif isinstance(block, acp.ResourceLink):
                parts.append(f"[{block.title or block.name}]({block.uri})")
            elif isinstance(block, acp.EmbeddedResource):
                body = block.resource.text if block.resource.text is not None else "(binary content)"
                parts.append(f'<resource uri="{block.resource.uri}">\n{body}\n</resource>')
        text = "\n\n".join(p for p in parts if p)
        if not text.strip() and not pictures:
            raise errors.InvalidRequest.at("$.prompt", "must hold some text or an image")
        return text, pictures

    async def _replay(self, session_id: str) -> None:
        """``session/load``: the stored transcript as the updates that made it."""
        results: dict[str, ToolResultBlock] = {}
        messages = await self.service().transcript(session_id)
        pictures = await self.service().images_of(messages)
        for m in messages:
            for b in m.content:
                if isinstance(b, ToolResultBlock):
                    results[b.tool_use_id] = b
        for m in messages:
            for update in self._replayed(m, results, pictures):
                self._send(session_id, update)

    def _replayed(
        self, m: Message, results: dict[str, ToolResultBlock], pictures: dict[str, tuple[str, bytes]]
    ) -> list[Any]:
        out: list[Any] = []
        for b in m.content:
            if m.role == "user" and isinstance(b, TextBlock):
                out.append(acp.UserMessageChunk(acp.TextContent(b.text), m.message_id))
            elif m.role == "user" and isinstance(b, ImageBlock) and b.sha256 in pictures:
                mime, data = pictures[b.sha256]
                out.append(acp.UserMessageChunk(acp.ImageContent(base64.b64encode(data).decode(), mime), m.message_id))
            elif m.role == "assistant" and isinstance(b, TextBlock):
                out.append(acp.AgentMessageChunk(acp.TextContent(b.text), m.message_id))
            elif m.role == "assistant" and isinstance(b, ReasoningBlock) and b.text:
                out.append(acp.AgentThoughtChunk(acp.TextContent(b.text), m.message_id))
            elif isinstance(b, ToolUseBlock):
                result = results.get(b.id)
                status: acp.ToolStatus = "pending" if result is None else ("failed" if result.is_error else "completed")
                out.append(acp.ToolCallStart(b.id, b.name, kind_of(b.name), status, b.arguments,
                                             [_text(result.content)] if result else []))
        return out

    # ------------------------------------------------------------------ methods

    def _table(self) -> dict[str, tuple[type[msgspec.Struct], Handler]]:
        service = self.service

        async def authenticate(p: acp.AuthenticateParams, ctx: RequestContext) -> acp.EmptyResult:
            return acp.EmptyResult()

        async def new(p: acp.NewSessionParams, ctx: RequestContext) -> acp.NewSessionResult:
            meta = p.meta or {}
            warren = meta.get("warren") if isinstance(meta.get("warren"), dict) else {}
            system = meta.get("systemPrompt")
            if isinstance(system, dict):
                system = system.get("append")
            try:
                params = msgspec.convert({**warren, "initial_turn": "defer",
                                          "system_prompt": system if isinstance(system, str) else None},
                                         SessionCreateParams)
            except msgspec.ValidationError as exc:
                raise errors.InvalidRequest.at("$._meta.warren", str(exc)) from None
            params = msgspec.structs.replace(params, mcp_servers=_servers(p.mcp_servers) + params.mcp_servers)
            created = await service().create(params, cwd=p.cwd)
            ctx.session_id = created.session_id
            row = await service().session_row(created.session_id)
            return acp.NewSessionResult(created.session_id, [self._model_option(row.provider, row.model)])

        async def load(p: acp.LoadSessionParams, ctx: RequestContext) -> acp.SessionSetupResult:
            row = await service().session_row(p.session_id)
            await service().set_mcp_servers(p.session_id, _servers(p.mcp_servers))
            await self._replay(p.session_id)
            return acp.SessionSetupResult([self._model_option(row.provider, row.model)])

        async def resume(p: acp.ResumeSessionParams, ctx: RequestContext) -> acp.SessionSetupResult:
            row = await service().session_row(p.session_id)
            await service().set_mcp_servers(p.session_id, _servers(p.mcp_servers))
            return acp.SessionSetupResult([self._model_option(row.provider, row.model)])

        async def fork(p: acp.ForkSessionParams, ctx: RequestContext) -> acp.NewSessionResult:
            made = await service().edits.fork(ForkParams(p.session_id))
            row = await service().session_row(made.session_id)
            return acp.NewSessionResult(made.session_id, [self._model_option(row.provider, row.model)])

        async def list_(p: acp.ListSessionsParams, ctx: RequestContext) -> acp.ListSessionsResult:
            offset = _cursor_offset(p.cursor)
            rows, more = await service().list_titled(p.cwd, offset, LIST_PAGE)
            sessions = [acp.SessionInfo(r.session_id, r.cwd or "", r.title, _iso(r.updated_at_ms)) for r in rows]
            return acp.ListSessionsResult(sessions, _cursor(offset + len(rows)) if more else None)

        async def close(p: acp.SessionIdParams, ctx: RequestContext) -> acp.EmptyResult:
            await service().session_row(p.session_id, archived=True)
            self._cancel(p.session_id)
            self._always.pop(p.session_id, None)
            self._message_ids.pop(p.session_id, None)
            return acp.EmptyResult()

        async def delete(p: acp.SessionIdParams, ctx: RequestContext) -> acp.EmptyResult:
            self._cancel(p.session_id)
            turn = service().turns.get(p.session_id)
            if turn is not None:
                await turn.done.wait()
            await service().archive(p.session_id)
            return acp.EmptyResult()

        async def set_config_option(p: acp.SetConfigOptionParams, ctx: RequestContext) -> acp.SetConfigOptionResult:
            if p.config_id != "model":
                raise errors.InvalidRequest.at("$.configId", f"unknown config option {p.config_id!r}; Warren has 'model'")
            if not isinstance(p.value, str) or not p.value:
                raise errors.InvalidRequest.at("$.value", "must be a model name")
            await service().set_model(p.session_id, p.value)
            row = await service().session_row(p.session_id)
            return acp.SetConfigOptionResult([self._model_option(row.provider, row.model)])

        async def prompt(p: acp.PromptParams, ctx: RequestContext) -> acp.PromptResult:
            state = self._prompts[p.session_id] = _Prompt()  # before any await: a cancel read next finds it

            def claimed(scope: anyio.CancelScope) -> None:
                state.scope = scope
                if state.cancelled:
                    scope.cancel()

            try:
                text, pictures = self._prompt(p.prompt)
                title = (text.strip().splitlines() or ["(image)"])[0][:TITLE_CHARS]
                if await service().name(p.session_id, title):
                    self._send(p.session_id, acp.SessionInfoUpdate(title=title))
                prompt: Any = ([TextInput(text)] if text else []) + pictures if pictures else text
                result = await service().start_turn(TurnStartParams(p.session_id, prompt), on_claim=claimed)
            finally:
                if self._prompts.get(p.session_id) is state:
                    del self._prompts[p.session_id]
            usage = result.usage
            return acp.PromptResult(
                STOP_REASONS.get(result.stop_reason, "end_turn"),
                acp.Usage(usage.total_tokens, usage.input_tokens, usage.output_tokens,
                          usage.cache_read_tokens, usage.cache_write_tokens),
            )

        async def cancel(p: acp.CancelParams, ctx: RequestContext) -> None:
            self._cancel(p.session_id)

        handlers: dict[str, tuple[type[msgspec.Struct], Handler]] = {
            "initialize": (acp.InitializeParams, acp_initialize),
            "authenticate": (acp.AuthenticateParams, authenticate),
            "session/new": (acp.NewSessionParams, new),
            "session/load": (acp.LoadSessionParams, load),
            "session/resume": (acp.ResumeSessionParams, resume),
            "session/fork": (acp.ForkSessionParams, fork),
            "session/list": (acp.ListSessionsParams, list_),
            "session/close": (acp.SessionIdParams, close),
            "session/delete": (acp.SessionIdParams, delete),
            "session/set_config_option": (acp.SetConfigOptionParams, set_config_option),
            "session/prompt": (acp.PromptParams, prompt),
            "session/cancel": (acp.CancelParams, cancel),
        }
        return handlers

    def _cancel(self, session_id: str) -> None:
        """Stop the prompt in flight on the session now, if any; a later one is untouched."""
        state = self._prompts.get(session_id)
        if state is None:
            return
        state.cancelled = True
        if state.scope is not None:
            state.scope.cancel()


def _servers(servers: list[acp.McpServer]) -> list[McpServerInput]:
    """ACP's ``mcpServers`` as the session's MCP servers (stdio and streamable HTTP; the
    deprecated SSE transport is refused by name)."""
    out = []
    for i, server in enumerate(servers):
        if server.type == "sse":
            raise errors.InvalidRequest.at(f"$.mcpServers[{i}].type", "the SSE transport is not supported; use http")
        fields = {"name": server.name, "command": server.command, "args": server.args, "url": server.url,
                  "env": {e.name: e.value for e in server.env}, "headers": {h.name: h.value for h in server.headers}}
        try:
            out.append(msgspec.convert({k: v for k, v in fields.items() if v is not None}, McpServerInput))
        except msgspec.ValidationError as exc:
            raise errors.InvalidRequest.at(f"$.mcpServers[{i}]", str(exc)) from None
    return out


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(_encode({"o": offset})).decode()


def _cursor_offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        value = msgspec.json.decode(base64.urlsafe_b64decode(cursor.encode()))
        offset = int(value["o"])
    except Exception:  # noqa: BLE001 - any malformed cursor is the client's error
        raise errors.InvalidRequest.at("$.cursor", "not a cursor this agent gave") from None
    if offset < 0:
        raise errors.InvalidRequest.at("$.cursor", "not a cursor this agent gave")
    return offset


__all__ = ["AcpFrontend", "error_object", "kind_of"]
