"""One turn: model calls, commits, events, retries, interrupts.

Commit points (PROTOCOL.md §3): the prompt is committed by the service before a turn
starts; each model call's output is committed as the call ends, in the same unit as any
system context staged meanwhile; the end of the turn is committed before its last event
and before the response. An interrupt commits the partial text of the call in progress.
Text from an attempt that failed and was retried is never committed.
"""

from __future__ import annotations

import random
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog

from protocol.events import (
    Event,
    ReasoningDelta as ReasoningDeltaEvent,
    Retrying,
    SystemContextApplied,
    TextDelta as TextDeltaEvent,
    ToolCallRequested,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    UsageReported,
)
from protocol.types import (
    Block,
    Message,
    ReasoningBlock,
    RunResult,
    StopReason,
    TextBlock,
    ToolCall,
    ToolDef,
    ToolUseBlock,
    Usage,
)

from . import errors, tables
from .clock import now_ms
from .events import RESERVATION, EventSink
from .providers import ProviderRegistry, base
from .store import Store

log = structlog.get_logger("warren.turns")

_json = msgspec.json.Decoder()


@dataclass
class TurnSetup:
    """What the service's claim committed and the turn needs to run."""

    session_id: str
    turn_id: str
    provider: str
    model: str | None
    system: str | None
    max_tokens: int | None
    tools: list[ToolDef]
    provider_params: dict[str, Any]
    provider_state: dict[str, Any]
    message_count: int
    next_seq: int
    seq_reserved: int
    applied_context: list[tuple[str, str | None, str | None]] = field(default_factory=list)


@dataclass
class _Block:
    kind: str
    parts: list[str] = field(default_factory=list)
    signature: str | None = None
    redacted: str | None = None
    tool_id: str = ""
    tool_name: str = ""


class CallOutput:
    """Assembles one model call's deltas into blocks, and says which event each delta is."""

    def __init__(self) -> None:
        self.blocks: dict[int, _Block] = {}
        self.usage: Usage | None = None
        self.stop: str | None = None
        self.streamed_chars = 0
        self.streamed_reasoning_chars = 0

    def _block(self, index: int, kind: str) -> _Block:
        block = self.blocks.get(index)
        if block is None:
            block = self.blocks[index] = _Block(kind)
        return block

    def feed(self, delta: base.Delta) -> Event | None:
        if isinstance(delta, base.TextDelta):
            self._block(delta.index, "text").parts.append(delta.text)
            self.streamed_chars += len(delta.text)
            return TextDeltaEvent(delta.text)
        if isinstance(delta, base.ReasoningDelta):
            self._block(delta.index, "reasoning").parts.append(delta.text)
            self.streamed_reasoning_chars += len(delta.text)
            return ReasoningDeltaEvent(delta.text)
        if isinstance(delta, base.ReasoningSignature):
            self._block(delta.index, "reasoning").signature = delta.signature
        elif isinstance(delta, base.RedactedReasoning):
            self._block(delta.index, "reasoning").redacted = delta.data
        elif isinstance(delta, base.ToolUseStart):
            block = self._block(delta.index, "tool_use")
            block.tool_id, block.tool_name = delta.id, delta.name
        elif isinstance(delta, base.ToolUseArgsDelta):
            self._block(delta.index, "tool_use").parts.append(delta.fragment)
        elif isinstance(delta, base.UsageReport):
            self.usage = delta.usage
        elif isinstance(delta, base.Stop):
            self.stop = delta.stop_reason
        return None

    def content(self, *, partial: bool = False) -> list[Block]:
        """The assistant message's blocks; a partial one keeps only text and reasoning."""
        out: list[Block] = []
        for index in sorted(self.blocks):
            b = self.blocks[index]
            if b.kind == "text":
                if b.parts:
                    out.append(TextBlock("".join(b.parts)))
            elif b.kind == "reasoning":
                if b.parts or b.redacted:
                    out.append(ReasoningBlock("".join(b.parts), b.signature, b.redacted))
            elif not partial:
                out.append(ToolUseBlock(b.tool_id, b.tool_name, _arguments(b.parts)))
        return out

    def text(self) -> str:
        return "".join("".join(b.parts) for i, b in sorted(self.blocks.items()) if b.kind == "text")

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(b.tool_id, b.tool_name, _arguments(b.parts))
            for _, b in sorted(self.blocks.items())
            if b.kind == "tool_use"
        ]


def _arguments(parts: list[str]) -> dict[str, Any]:
    raw = "".join(parts).strip()
    if not raw:
        return {}
    try:
        value = _json.decode(raw)
    except msgspec.DecodeError:
        return {"_invalid_json": raw}
    return value if isinstance(value, dict) else {"_value": value}


class Turn:
    """A running turn. ``scope`` is cancelled by ``turn/interrupt`` and by shutdown."""

    def __init__(
        self, setup: TurnSetup, providers: ProviderRegistry, store: Store, sink: EventSink
    ) -> None:
        self.setup = setup
        self.session_id = setup.session_id
        self.turn_id = setup.turn_id
        self.providers = providers
        self.provider: base.Provider | None = None
        self.store = store
        self.sink = sink
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.seq = setup.next_seq
        self.seq_reserved = setup.seq_reserved
        self.history: list[Message] = []
        self.message_count = setup.message_count
        self.usage = Usage.zero()
        self.tool_calls: list[ToolCall] = []
        self.last_text = ""
        self.current: CallOutput | None = None
        self.result: RunResult | None = None
        self.deadline = anyio.CancelScope()
        self.deadline_s: float | None = None
        self.log = log.bind(session_id=self.session_id, turn_id=self.turn_id)

    # ------------------------------------------------------------------ events

    async def emit(self, event: Event) -> None:
        if self.seq >= self.seq_reserved:
            target = self.seq + RESERVATION
            await self.store.write(lambda db: tables.update_session(db, self.session_id, next_seq=target))
            self.seq_reserved = target
        seq = self.seq
        self.seq += 1
        await self.sink.session_event(self.session_id, self.turn_id, seq, event)

    async def _emit_context(self, applied: list[tuple[str, str | None, str | None]]) -> None:
        for _text, source, key in applied:
            await self.emit(SystemContextApplied(source, key))

    # ------------------------------------------------------------------ running

    async def run(self) -> RunResult:
        failure: BaseException
        try:
            result: RunResult | None = None
            try:
                with self.scope:
                    with anyio.CancelScope() as self.deadline:
                        result = await self._loop()
                    if self.deadline.cancelled_caught:
                        raise errors.ProviderFailed(
                            f"{self.setup.provider}: the turn exceeded its time limit of {self.deadline_s:g} s",
                            {"provider": self.setup.provider, "kind": "turn_timeout", "status": None,
                             "retry_after_ms": None, "provider_error_type": None},
                            False,
                        )
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._finish_interrupted()
                raise
            except base.ProviderError as exc:
                failure = errors.ProviderFailed(
                    f"{exc.provider}: {exc.message}",
                    {
                        "provider": exc.provider,
                        "kind": exc.kind,
                        "status": exc.status,
                        "retry_after_ms": exc.retry_after_ms,
                        "provider_error_type": exc.error_type,
                    },
                    exc.retryable,
                )
            except errors.WarrenError as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - becomes INTERNAL_ERROR with an error_id
                failure = exc
            else:
                if result is not None:
                    self.result = result
                    return result
                with anyio.CancelScope(shield=True):
                    self.result = await self._finish_interrupted()
                return self.result
            with anyio.CancelScope(shield=True):
                await self._finish_failed(failure)
            raise failure
        finally:
            self.done.set()

    async def _loop(self) -> RunResult | None:
        setup = self.setup
        self.provider = self.providers.get(setup.provider)
        self.deadline_s = base.turn_timeout_s(self.provider)
        if self.deadline_s:
            self.deadline.deadline = anyio.current_time() + self.deadline_s
        self.history = await self.store.read(lambda db: tables.all_messages(db, self.session_id))
        if setup.model is None:
            await self._discover_model()
        await self.emit(TurnStarted(setup.provider, setup.model))
        await self._emit_context(setup.applied_context)
        while True:
            output = await self._model_call()
            calls = output.tool_calls()
            stop: StopReason = "tool_use" if calls else _stop_reason(output.stop)
            with anyio.CancelScope(shield=True):
                applied = await self._commit_call(output, stop)
                self.current = None
                if output.usage is not None:
                    await self.emit(UsageReported(output.usage))
                for call in calls:
                    await self.emit(ToolCallRequested(call.tool_use_id, call.name, call.arguments))
                await self._emit_context(applied)
                await self.emit(TurnCompleted(stop, self.usage))
                return self._result(stop, pending=calls)

    async def _discover_model(self) -> None:
        """Ask a compatible server which model it serves, and remember the answer."""
        discover = getattr(self.provider, "discover_model", None)
        model = await discover() if discover is not None else None
        if not model:
            raise errors.FailedWithData(
                f"Provider {self.setup.provider!r} has no model: pass model, or set default_model "
                f"under [providers.{self.setup.provider}] in the config file",
                {"reason": "no_model_configured", "provider": self.setup.provider},
            )
        self.setup.model = model
        await self.store.write(lambda db: tables.update_session(db, self.session_id, model=model))

    async def _model_call(self) -> CallOutput:
        s = self.setup
        request = base.ModelRequest(
            model=s.model,
            system=s.system,
            messages=self.history,
            tools=s.tools,
            max_tokens=s.max_tokens,
            provider_params=s.provider_params,
            state=s.provider_state,
        )
        provider = self.provider
        assert provider is not None
        policy = provider.retry_policy
        attempt = 0
        while True:
            output = self.current = CallOutput()
            try:
                async with aclosing(provider.stream(request)) as stream:  # type: ignore[type-var]
                    async for delta in stream:
                        event = output.feed(delta)
                        if event is not None:
                            await self.emit(event)
                return output
            except base.ProviderError as exc:
                self.current = None
                if not exc.retryable or attempt >= policy.max_retries:
                    raise
                attempt += 1
                delay = policy.delay_ms(attempt, exc.retry_after_ms, random.random())
                self.log.info("provider_retry", attempt=attempt, delay_ms=delay, kind=exc.kind, status=exc.status)
                await self.emit(
                    Retrying(attempt, delay, exc.kind, output.streamed_chars, output.streamed_reasoning_chars)
                )
                await anyio.sleep(delay / 1000)

    # ------------------------------------------------------------------ commits

    def _assistant(self, output: CallOutput, *, partial: bool) -> Message | None:
        content = output.content(partial=partial)
        if not content:
            return None
        return Message(self.message_count, "assistant", content, now_ms(), self.turn_id)

    async def _commit_call(self, output: CallOutput, stop: StopReason) -> list[tuple[str, str | None, str | None]]:
        """Commit a finished model call and end the turn, in one unit."""
        message = self._assistant(output, partial=False)
        usage = output.usage or Usage.zero()
        pending = output.tool_calls() if stop == "tool_use" else []
        sid = self.session_id

        async def unit(db: Any) -> list[tuple[str, str | None, str | None]]:
            now = now_ms()
            new = [message] if message else []
            applied = await tables.take_staged_system_context(db, sid)
            base_index = self.message_count + len(new)
            new += [
                Message(base_index + i, "system", [TextBlock(text)], now, self.turn_id, source)
                for i, (text, source, _key) in enumerate(applied)
            ]
            await tables.append_messages(db, sid, new)
            await tables.add_usage(db, sid, usage)
            if pending:
                await tables.set_pending_tool_calls(db, sid, pending)
            fields: dict[str, Any] = {
                "message_count": self.message_count + len(new),
                "updated_at_ms": now,
                "provider_state": self.setup.provider_state,
                # events still to come: usage, tool calls, applied context, turn_completed
                "next_seq": self.seq + (output.usage is not None) + len(pending) + len(applied) + 1,
            }
            text = output.text()
            if text:
                fields["last_assistant_text"] = text
            await tables.update_session(db, sid, **fields)
            await tables.end_turn(db, self.turn_id, status="completed", stop_reason=stop,
                                  usage=self.usage + usage, now_ms=now)
            self.history.extend(new)
            self.message_count += len(new)
            return applied

        applied = await self.store.write(unit)
        self.usage = self.usage + usage
        self.last_text = output.text()
        self.tool_calls.extend(output.tool_calls())
        return applied

    async def _finish_interrupted(self) -> RunResult:
        """Commit the partial output and close the turn as interrupted."""
        output = self.current
        message = self._assistant(output, partial=True) if output else None
        usage = (output.usage if output else None) or Usage.zero()
        sid = self.session_id

        async def unit(db: Any) -> None:
            now = now_ms()
            fields: dict[str, Any] = {
                "updated_at_ms": now,
                "provider_state": self.setup.provider_state,
                "next_seq": self.seq + 1,
            }
            if message:
                await tables.append_messages(db, sid, [message])
                fields["message_count"] = self.message_count + 1
                if output and output.text():
                    fields["last_assistant_text"] = output.text()
            await tables.add_usage(db, sid, usage)
            await tables.update_session(db, sid, **fields)
            await tables.end_turn(db, self.turn_id, status="interrupted", stop_reason="interrupted",
                                  usage=self.usage + usage, now_ms=now)
            if message:
                self.history.append(message)
                self.message_count += 1

        try:
            await self.store.write(unit)
        except errors.WarrenError as exc:
            await self.emit(TurnFailed(errors.to_wire(exc)))
            raise
        self.usage = self.usage + usage
        if output and output.text():
            self.last_text = output.text()
        self.current = None
        await self.emit(TurnCompleted("interrupted", self.usage))
        self.result = self._result("interrupted", pending=[])
        return self.result

    async def _finish_failed(self, failure: BaseException) -> None:
        error_id = None
        if not isinstance(failure, errors.WarrenError):
            error_id = errors.new_error_id()
            self.log.error("turn_crashed", error_id=error_id, exc_info=failure)
        wire = errors.to_wire(failure, error_id)
        sid = self.session_id

        async def unit(db: Any) -> None:
            await tables.update_session(
                db, sid, updated_at_ms=now_ms(), provider_state=self.setup.provider_state, next_seq=self.seq + 1
            )
            await tables.end_turn(db, self.turn_id, status="failed", stop_reason=None, usage=self.usage,
                                  now_ms=now_ms(), error={"code": wire.data.get("code"), "message": wire.message})

        try:
            await self.store.write(unit)
        except errors.WarrenError as exc:
            self.log.warning("turn_close_failed", reason=getattr(exc, "reason", None))
        self.log.info("turn_failed", code=wire.data.get("code"))
        await self.emit(TurnFailed(wire))

    def _result(self, stop: StopReason, pending: list[ToolCall]) -> RunResult:
        return RunResult(
            session_id=self.session_id,
            turn_id=self.turn_id,
            text=self.last_text,
            stop_reason=stop,
            tool_calls=list(self.tool_calls),
            usage=self.usage,
            message_count=self.message_count,
            pending_tool_calls=pending,
        )


def _stop_reason(stop: str | None) -> StopReason:
    if stop in ("end_turn", "max_tokens", "refusal"):
        return stop  # type: ignore[return-value]
    return "end_turn"
