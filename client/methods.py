"""One typed async method per method of Warren's protocol (``warren.protocol.methods.METHODS``).

Each method takes the params as keyword arguments, builds the protocol's own params Struct
(so a misspelt argument fails in Python, not on the wire) and decodes the result into the
protocol's result Struct, both looked up in ``METHODS`` by the method's name. The Python
name is the method's with ``/`` and ``.`` written as ``_`` (``session/create`` ->
``session_create``, ``rpc.discover`` -> ``rpc_discover``); a test checks that every protocol
method has one, that it sends that method, and that its arguments are its params' fields.

Arguments left at ``None`` are not sent, so the daemon applies its own default; the others
default to the value the daemon would use anyway, and a params Struct omits defaults on the
wire. Results are decoded strictly except where the protocol promises to grow: unknown
fields are ignored (msgspec's default), unknown event types become ``UnknownEvent``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from warren.protocol import events as ev
from warren.protocol import types as t
from warren.protocol.events import EventGap, EventTypeName, SessionEventParams
from warren.protocol.methods import METHODS

from .errors import ProtocolMismatch
from .events import decode_event

R = TypeVar("R")


class EventsPage(msgspec.Struct):
    """The result of ``session/events`` with its events decoded (the protocol's own
    ``SessionEventsResult`` keeps them as raw JSON, which is what the daemon stores)."""

    session_id: str
    events: list[SessionEventParams]
    next_seq: int
    has_more: bool
    gap: EventGap | None = None


def params(cls: type[msgspec.Struct], **given: Any) -> msgspec.Struct:
    """The params Struct with every argument that is not ``None`` (``None`` means: let
    the daemon use its default; no Warren param gives ``null`` another meaning)."""
    return cls(**{k: v for k, v in given.items() if v is not None})


def decode(value: Any, type_: type[R], method: str) -> R:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise ProtocolMismatch(f"{method}: the daemon's result does not fit {type_.__name__}: {exc}", value) from exc


class Methods:
    """The protocol's methods over ``request`` (provided by ``Client``)."""

    async def request(self, method: str, params: Any = None) -> Any:  # pragma: no cover - Client's
        raise NotImplementedError

    async def _send(self, method: str, **given: Any) -> Any:
        """``method`` with its params Struct (from ``METHODS``) built from ``given``; the
        result as decoded JSON."""
        return await self.request(method, params(METHODS[method].params, **given))

    async def _call(self, method: str, **given: Any) -> Any:
        """``_send``, its result decoded into the method's result Struct (from ``METHODS``)."""
        (result,) = METHODS[method].result
        return decode(await self._send(method, **given), result, method)

    # ------------------------------------------------------------------ lifecycle

    async def initialize(
        self,
        *,
        protocol_version: int = 1,
        client_info: t.ClientInfo | None = None,
        capabilities: t.ClientCapabilities | None = None,
    ) -> t.InitializeResult:
        return await self._call(
            "initialize", protocol_version=protocol_version, client_info=client_info, capabilities=capabilities
        )

    async def shutdown(self) -> t.EmptyResult:
        """Interrupt running turns, wait for them to commit, answer, then stop reading."""
        return await self._call("shutdown")

    # ------------------------------------------------------------------ sessions and turns

    async def session_create(
        self,
        *,
        prompt: t.Prompt | None = None,
        model: str | None = None,
        provider: str | None = None,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        labels: dict[str, str] | None = None,
        initial_turn: Literal["run_immediately", "defer"] = "run_immediately",
        deferred_prompt_policy: Literal["discard", "stage"] = "discard",
        tools: list[t.ToolDef] | None = None,
        budget: t.Budget | None = None,
        provider_params: dict[str, Any] | None = None,
        tool_timeout_ms: int | None = None,
        idempotency_key: str | None = None,
        mcp_servers: list[t.McpServerInput] | None = None,
        output_schema: dict[str, Any] | None = None,
        structured_output_retries: int = 2,
        compaction: bool = True,
    ) -> t.RunResult | t.DeferredCreateResult:
        """A ``RunResult`` when the first turn ran (answers once it ended, its events
        streamed before), a ``DeferredCreateResult`` with ``initial_turn="defer"``."""
        result = await self._send(
            "session/create", prompt=prompt, model=model, provider=provider, system_prompt=system_prompt,
            max_tokens=max_tokens, labels=labels, initial_turn=initial_turn,
            deferred_prompt_policy=deferred_prompt_policy, tools=tools, budget=budget,
            provider_params=provider_params, tool_timeout_ms=tool_timeout_ms, idempotency_key=idempotency_key,
            mcp_servers=mcp_servers, output_schema=output_schema,
            structured_output_retries=structured_output_retries, compaction=compaction,
        )
        kind = t.RunResult if isinstance(result, dict) and "turn_id" in result else t.DeferredCreateResult
        return decode(result, kind, "session/create")

    async def turn_start(
        self,
        *,
        session_id: str,
        prompt: t.Prompt,
        system_prompt: str | None = None,
        turn_tool_overlay: t.ToolOverlay | None = None,
        model: str | None = None,
        provider: str | None = None,
        max_tokens: int | None = None,
        provider_params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        when_busy: Literal["reject", "queue"] = "reject",
        output_schema: dict[str, Any] | None = None,
        structured_output_retries: int | None = None,
    ) -> t.RunResult:
        """Runs a turn and answers when it has ended; iterate ``events()`` meanwhile for its
        deltas. Cancelling the call interrupts the turn (``$/cancelRequest``)."""
        return await self._call(
            "turn/start", session_id=session_id, prompt=prompt, system_prompt=system_prompt,
            turn_tool_overlay=turn_tool_overlay, model=model, provider=provider, max_tokens=max_tokens,
            provider_params=provider_params, idempotency_key=idempotency_key, when_busy=when_busy,
            output_schema=output_schema, structured_output_retries=structured_output_retries,
        )

    async def turn_interrupt(
        self, *, session_id: str, turn_id: str | None = None, when: Literal["now", "boundary"] = "now"
    ) -> t.InterruptResult:
        return await self._call("turn/interrupt", session_id=session_id, turn_id=turn_id, when=when)

    async def turn_steer(self, *, session_id: str, expected_turn_id: str, prompt: t.Prompt) -> t.TurnSteerResult:
        return await self._call("turn/steer", session_id=session_id, expected_turn_id=expected_turn_id, prompt=prompt)

    async def session_read(self, *, session_id: str) -> t.SessionView:
        return await self._call("session/read", session_id=session_id)

    async def session_list(
        self, *, limit: int = 100, offset: int = 0, labels: dict[str, str] | None = None, include_archived: bool = False
    ) -> t.SessionListResult:
        return await self._call("session/list", limit=limit, offset=offset, labels=labels, include_archived=include_archived)

    async def session_history(self, *, session_id: str, offset: int = 0, limit: int = 100) -> t.SessionHistoryPage:
        return await self._call("session/history", session_id=session_id, offset=offset, limit=limit)

    async def session_archive(self, *, session_id: str) -> t.ArchiveResult:
        return await self._call("session/archive", session_id=session_id)

    async def session_append_system_context(
        self, *, session_id: str, text: str, source: str | None = None, idempotency_key: str | None = None
    ) -> t.AppendSystemContextResult:
        return await self._call(
            "session/append_system_context", session_id=session_id, text=text, source=source,
            idempotency_key=idempotency_key,
        )

    async def session_stage_tool_results(
        self, *, session_id: str, results: list[t.ToolResultInput]
    ) -> t.StageToolResultsResult:
        return await self._call("session/stage_tool_results", session_id=session_id, results=results)

    async def session_set_tools(
        self, *, session_id: str, tools: list[t.ToolDef], tool_timeout_ms: int | None = None
    ) -> t.SetToolsResult:
        return await self._call("session/set_tools", session_id=session_id, tools=tools, tool_timeout_ms=tool_timeout_ms)

    async def providers_list(self) -> t.ProvidersListResult:
        return await self._call("providers/list")

    async def session_compact(self, *, session_id: str, keep_last: int = 4) -> t.CompactResult:
        return await self._call("session/compact", session_id=session_id, keep_last=keep_last)

    async def session_blob(self, *, sha256: str) -> t.BlobResult:
        return await self._call("session/blob", sha256=sha256)

    # ------------------------------------------------------------------ stored events

    async def session_events(
        self, *, session_id: str, after_seq: int = 0, limit: int = 1000, types: list[EventTypeName] | None = None
    ) -> EventsPage:
        """A page of stored events, decoded like live ones (see ``EventsPage``)."""
        raw = await self._send("session/events", session_id=session_id, after_seq=after_seq, limit=limit, types=types)
        if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
            raise ProtocolMismatch("session/events: the daemon's result has no events list", raw)
        events = [decode_event(e) for e in raw["events"]]
        page = decode({**raw, "events": []}, EventsPage, "session/events")
        page.events = events
        return page

    async def session_subscribe(
        self, *, session_id: str, after_seq: int | None = None, types: list[EventTypeName] | None = None
    ) -> ev.SubscribeResult:
        """Live events of the session (and, with ``after_seq``, the stored ones after it,
        replayed before this answers) arrive as ``session/event``: read them with ``events()``."""
        return await self._call("session/subscribe", session_id=session_id, after_seq=after_seq, types=types)

    async def session_unsubscribe(self, *, subscription_id: str) -> ev.UnsubscribeResult:
        return await self._call("session/unsubscribe", subscription_id=subscription_id)

    # ------------------------------------------------------------------ revisions

    async def session_fork(
        self,
        *,
        session_id: str,
        message_index: int | None = None,
        replacement: t.MessageInput | None = None,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> t.ForkResult:
        return await self._call(
            "session/fork", session_id=session_id, message_index=message_index, replacement=replacement,
            labels=labels, idempotency_key=idempotency_key,
        )

    async def session_rewrite(
        self,
        *,
        session_id: str,
        start: int,
        end: int,
        replacement: list[t.MessageInput],
        reason: t.EditReason,
        actor: str | None = None,
        expected_revision: str | None = None,
    ) -> t.EditResult:
        return await self._call(
            "session/rewrite", session_id=session_id, start=start, end=end, replacement=replacement,
            reason=reason, actor=actor, expected_revision=expected_revision,
        )

    async def session_revisions(self, *, session_id: str, offset: int = 0, limit: int = 100) -> t.RevisionsResult:
        return await self._call("session/revisions", session_id=session_id, offset=offset, limit=limit)

    async def session_revision(
        self, *, session_id: str, revision: str, offset: int = 0, limit: int = 100
    ) -> t.RevisionPage:
        return await self._call("session/revision", session_id=session_id, revision=revision, offset=offset, limit=limit)

    async def session_restore(
        self,
        *,
        session_id: str,
        revision: str,
        reason: t.EditReason,
        actor: str | None = None,
        expected_revision: str | None = None,
    ) -> t.EditResult:
        return await self._call(
            "session/restore", session_id=session_id, revision=revision, reason=reason, actor=actor,
            expected_revision=expected_revision,
        )

    async def session_append(
        self,
        *,
        session_id: str,
        messages: list[t.MessageInput],
        operation_id: str,
        requires_ancestor: str | None = None,
    ) -> t.AppendResult:
        return await self._call(
            "session/append", session_id=session_id, messages=messages, operation_id=operation_id,
            requires_ancestor=requires_ancestor,
        )

    # ------------------------------------------------------------------ the daemon

    async def mcp_servers(self, *, session_id: str | None = None) -> t.McpServersResult:
        return await self._call("mcp/servers", session_id=session_id)

    async def daemon_status(self) -> t.StatusResult:
        return await self._call("daemon/status")

    async def rpc_discover(self) -> t.DiscoverResult:
        """The OpenRPC document of every method."""
        return await self._call("rpc.discover")
