"""One turn: model calls, commits, events, retries, interrupts.

Commit points (PROTOCOL.md §3): the prompt is committed by the service before a turn
starts; each model call's output is committed as the call ends, in the same unit as any
system context staged meanwhile; the end of the turn is committed before its last event
and before the response. An interrupt commits the partial text of the call in progress.
Text from an attempt that failed and was retried is never committed.

This module is the turn's I/O: it calls the model, commits, emits and runs tool steps.
What happens next is decided by the pure state machine in ``turn_state`` (with the budget
rules in ``budgets``); a call's output is assembled by ``call_output``, and what the model is
sent is chosen by ``context``.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import aclosing
from typing import Any, Callable

import anyio
import msgspec
from msgspec import UNSET

from warren.protocol.events import (
    BudgetWarning,
    CompactionCompleted,
    CompactionStarted,
    Event,
    ReasoningDelta as ReasoningDeltaEvent,
    Retrying,
    SteerApplied,
    SystemContextApplied,
    TextDelta as TextDeltaEvent,
    ToolCallRequested,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    UsageReported,
)
from warren.protocol.types import (
    DEFAULT_TOOL_TIMEOUT_MS,
    Budget,
    BudgetUse,
    CompactResult,
    McpServerInput,
    Message,
    RunResult,
    StopReason,
    StructuredOutputError,
    TextBlock,
    ToolCall,
    ToolDef,
    ToolOverlay,
    ToolResultBlock,
    Usage,
)

from .. import errors
from ..store import sessions, staging, transcripts, turns as turn_rows
from ..clock import new_id, now_ms
from ..store import events as event_rows
from .events import EventBus, Numbered, TurnLog
from ..providers import ProviderRegistry, base
from ..providers.base import STRUCTURED_OUTPUT
from ..store import Store
from . import budgets, images, structured, turn_state
from .call_output import CallOutput
from .edits import compaction_boundary
from .context import KEEP_LAST, SUMMARY_PROMPT, SUMMARY_REQUEST, compaction_cut, estimate_tokens, for_provider, model_context
from .turn_state import Next, State, TurnMachine
from ..store import blobs as blob_rows
from .tools import ClientChannel, ClientSource, McpManagerLike, McpSource, StepRunner, Toolbox, offered
from ..logs import get_logger
from ..loop import checkpoint

log = get_logger("warren.turns")

class TurnSetup(msgspec.Struct):
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
    applied_context: list[staging.Staged] = msgspec.field(default_factory=list)
    overlay: ToolOverlay | None = None
    budget: Budget | None = None
    tool_timeout_ms: int = DEFAULT_TOOL_TIMEOUT_MS
    mcp_servers: list[McpServerInput] = msgspec.field(default_factory=list)  # the config's and the session's
    output_schema: dict[str, Any] | None = None
    structured_output_retries: int = 2
    compaction: bool = True
    compaction_summary: str | None = None  # the last compaction's summary message id
    compaction_keep_from: str | None = None  # and the first message it kept
    context_window: int = 200_000
    compaction_threshold: float = 0.8
    compact_only: int | None = None  # session/compact: this "turn" compacts, keeping this many


class Turn:
    """A running turn. ``scope`` is cancelled by ``turn/interrupt`` and by shutdown.

    The loop: a model call; if the model asked for tools and the client executes them, run
    them, commit their results as one ``tool`` message, and call the model again; until the
    model stops asking, a budget runs out, or the turn is interrupted. Without a client that
    executes tools the turn ends with ``tool_use`` and the calls wait for staged results.
    """

    def __init__(
        self,
        setup: TurnSetup,
        providers: ProviderRegistry,
        store: Store,
        bus: EventBus,
        events: TurnLog,
        channel: ClientChannel | None = None,
        spawn: Callable[..., None] | None = None,
        mcp: McpManagerLike | None = None,
    ) -> None:
        self.setup = setup
        self.mcp = mcp
        self.toolbox = Toolbox()
        self.session_id = setup.session_id
        self.turn_id = setup.turn_id
        self.providers = providers
        self.provider: base.Provider | None = None
        self.store = store
        self.bus = bus
        self.events = events
        self.channel = channel
        self.spawn = spawn
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.history: list[Message] = []
        self.clean_history = 0  # leading messages of the history checked for other providers' reasoning
        #: The head transcript as this turn last committed it (it alone writes the session
        #: while it runs), so a commit need not read it back.
        self.path: transcripts.Path | None = None
        self.images: dict[str, tuple[str, bytes]] = {}
        self.message_count = setup.message_count
        self.usage = Usage.zero()
        self.tool_calls: list[ToolCall] = []
        self.last_text = ""
        self.current: CallOutput | None = None
        self.step: StepRunner | None = None
        self.deadline = anyio.CancelScope()
        self.deadline_s: float | None = None
        self.budget_clock = anyio.CancelScope()
        self.started_at = anyio.current_time()
        self.warned: set[str] = set()
        self.exhausted: BudgetUse | None = None
        #: ``turn/interrupt`` with ``when: "boundary"``: end after the current call's tool step.
        self.stop_at_boundary = False
        self.answers = 0  # final answers checked against ``output_schema``
        self.compacted: CompactResult | None = None
        self.last_input_tokens = 0  # the last model call's input, to know when to compact
        self.structured: Any = UNSET
        self.structured_error: StructuredOutputError | None = None
        #: The outcome, once the turn ended: its RunResult, or the error it failed with.
        self.outcome: RunResult | errors.WarrenError | None = None
        self.keep_delta_turns = bus.keep_delta_turns
        self.log = log.bind(session_id=self.session_id, turn_id=self.turn_id)
        #: Where the turn is; ``turn_state`` decides every move, this class does the I/O.
        self.machine = TurnMachine()

    # ------------------------------------------------------------------ events

    async def emit(self, event: Event) -> None:
        """Send one event now (the bus numbers it and keeps it for the next commit)."""
        if not self.bus.emit_now(self.events, event):
            await self.bus.emit(self.events, event)

    # ------------------------------------------------------------------ budgets

    async def _warn(self, budget: str, used: int, limit: int | None) -> None:
        """Emit ``budget_warning`` once per budget, when use reaches 80 % of its limit."""
        if budgets.warning_due(budget, used, limit, self.warned):
            self.warned.add(budget)
            await self.emit(BudgetWarning(budget, used, limit))

    def _elapsed_ms(self) -> int:
        return math.ceil((anyio.current_time() - self.started_at) * 1000)

    async def _duration_warning(self, limit_ms: int) -> None:
        with self.budget_clock:
            await anyio.sleep_until(self.started_at + limit_ms * 0.8 / 1000)
            if not self.done.is_set():
                await self._warn("max_turn_duration_ms", self._elapsed_ms(), limit_ms)

    # ------------------------------------------------------------------ running

    async def run(self) -> RunResult:
        failure: Exception
        budget = self.setup.budget
        limit_ms = budget.max_turn_duration_ms if budget else None
        try:
            result: RunResult | None = None
            try:
                with self.scope:
                    with anyio.CancelScope() as self.deadline:
                        with anyio.CancelScope() as duration:
                            if limit_ms is not None:
                                duration.deadline = self.started_at + limit_ms / 1000
                                if self.spawn is not None:
                                    self.spawn(self._duration_warning, limit_ms)
                            result = await self._loop()
                        if duration.cancelled_caught:
                            assert limit_ms is not None
                            self.exhausted = spent = budgets.duration_spent(self._elapsed_ms(), limit_ms)
                            with anyio.CancelScope(shield=True):
                                await self._warn("max_turn_duration_ms", spent.used, limit_ms)
                                result = await self._finish_interrupted("budget_exhausted")
                    if self.deadline.cancelled_caught:
                        raise errors.ProviderFailed(
                            self.setup.provider, "turn_timeout",
                            f"the turn exceeded its time limit of {self.deadline_s:g} s", retryable=False,
                        )
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    self.outcome = await self._finish_interrupted("interrupted")
                raise
            except base.ProviderError as exc:
                failure = errors.ProviderFailed(
                    exc.provider, exc.kind, exc.message, retryable=exc.retryable, status=exc.status,
                    retry_after_ms=exc.retry_after_ms, provider_error_type=exc.error_type,
                )
            except errors.WarrenError as exc:
                failure = exc
            except Exception as exc:  # noqa: BLE001 - becomes INTERNAL_ERROR with an error_id
                failure = exc
            else:
                if result is None:
                    with anyio.CancelScope(shield=True):
                        result = await self._finish_interrupted("interrupted")
                self.outcome = result
                return result
            if not isinstance(failure, errors.WarrenError):
                internal = errors.Internal(errors.new_error_id())
                self.log.error("turn_crashed", error_id=internal.error_id, exc_info=failure)
                failure = internal  # the turn_failed event and the response share its error_id
            # a failed first turn of session/create must still say which session it made
            failure.context.setdefault("session_id", self.session_id)
            with anyio.CancelScope(shield=True):
                await self._finish_failed(failure)
            self.outcome = failure
            raise failure
        finally:
            self.budget_clock.cancel()
            self.bus.close_turn(self.events)
            self.done.set()

    async def _loop(self) -> RunResult | None:
        setup = self.setup
        self.provider = self.providers.get(setup.provider)
        self.deadline_s = base.turn_timeout_s(self.provider)
        if self.deadline_s:
            self.deadline.deadline = anyio.current_time() + self.deadline_s
        self.path, self.history, self.images = await self.store.read(self._load_history, small=False)
        if setup.model is None:
            await self._discover_model()
        self.toolbox = toolbox = await self._toolbox()
        tools = toolbox.defs()
        await self.emit(TurnStarted(setup.provider, setup.model, [t.name for t in tools]))
        for staged in setup.applied_context:
            await self.emit(_applied(staged))
        budget = setup.budget or Budget()
        machine = self.machine
        if setup.compact_only is not None:
            machine.to(State.COMPACTING)
            with anyio.CancelScope(shield=True):
                await self._compact(setup.compact_only, "manual")
                result = await self._commit([], end=("completed", "end_turn"))
                machine.to(State.DONE)
                return result
        while True:
            # the last call's reported input, or before the first call an estimate
            filled = (self.last_input_tokens or estimate_tokens(self._context())) if setup.compaction else 0
            compact = turn_state.compaction_due(enabled=setup.compaction, filled=filled,
                                                threshold=setup.compaction_threshold, window=setup.context_window)
            if machine.to(turn_state.before_call(compact=compact)) is State.COMPACTING:
                await self._compact(KEEP_LAST, "auto")
                machine.to(State.CALLING_MODEL)
            output = await self._model_call(tools)
            if output.usage is not None:
                self.last_input_tokens = output.usage.input_tokens
            if setup.output_schema is not None:
                output.take_tool(STRUCTURED_OUTPUT)  # a forced tool's input is the answer's text
            calls = output.tool_calls()
            tokens = (self.usage + (output.usage or Usage.zero())).total_tokens
            for warning in turn_state.call_warnings(
                tokens=tokens, calls=len(calls), earlier_calls=len(self.tool_calls),
                max_tokens=budget.max_tokens, max_tool_calls=budget.max_tool_calls, warned=self.warned,
            ):
                await self._warn(warning.budget, warning.used, warning.limit)
            decision = turn_state.after_call(turn_state.CallFacts(
                stop=output.stop, calls=len(calls), runnable=bool(calls) and toolbox.runnable(calls), tokens=tokens,
                earlier_calls=len(self.tool_calls), max_tokens=budget.max_tokens, max_tool_calls=budget.max_tool_calls,
                schema=setup.output_schema is not None,
            ))
            if decision.exhausted is not None:
                self.exhausted = decision.exhausted
            again = self._check_answer(output) if decision.check_answer else None
            if again is not None:
                with anyio.CancelScope(shield=True):
                    await self._commit_call(output, None, [], steer=False)
                    self.current = None
                    await self._commit([Message(self.message_count, "user", [TextBlock(again)], now_ms(), new_id(),
                                                self.turn_id)], steer=False)
                continue
            # A steer waiting when the model has answered: the turn goes on, with it.
            steered = turn_state.steer_may_join(decision, stop_at_boundary=self.stop_at_boundary) and (
                await self.store.read(lambda db: staging.steer_waiting(db, self.session_id))
            )
            outcome = turn_state.call_outcome(decision, steered=bool(steered))
            with anyio.CancelScope(shield=True):
                refused = [
                    ToolResultBlock(c.tool_use_id, budgets.refusal(outcome.refuse.budget), True) for c in calls
                ] if outcome.refuse is not None else []
                # steers join only where a user message may stand: not between calls and results
                result = await self._commit_call(output, outcome.end, refused, steer=bool(steered))
                self.current = None
                if result is not None:
                    machine.to(State.DONE)
                    return result
            if outcome.next is Next.CALL_AGAIN:
                continue
            machine.to(State.RUNNING_TOOLS)
            self.step = StepRunner(calls, toolbox, setup.tool_timeout_ms, self.emit, self._permit)
            results = await self.step.run()
            with anyio.CancelScope(shield=True):
                await self._commit([self._tool_message(results, self.message_count)], blobs=self.step.blobs)
                self.step = None
                if turn_state.after_tools(stop_at_boundary=self.stop_at_boundary) is Next.BOUNDARY:
                    return await self._finish_interrupted("interrupted")

    # ------------------------------------------------------------------ context and compaction

    async def _load_history(
        self, db: Any
    ) -> tuple[transcripts.Path | None, list[Message], dict[str, tuple[str, bytes]]]:
        """The transcript's path, its messages as far as the model will see them (after a
        compaction, from the first kept message on; the summary comes after it), and the
        images they show, in one read."""
        path = await transcripts.head(db, self.session_id)
        if path is None:
            return None, [], {}
        start = await compaction_boundary(db, self.setup.compaction_keep_from, self.setup.compaction_summary, path) or 0
        history = await transcripts.read(db, path, start, path.count - start)
        return path, history, await blob_rows.get_many(db, images.image_hashes(history))

    def _context(self) -> list[Message]:
        """What the model is sent: the history, or, after a compaction, its summary and the
        messages it kept (the history itself keeps every message)."""
        return model_context(self.history, self.setup.compaction_summary, self.setup.compaction_keep_from)

    async def _compact(self, keep_last: int, reason: str) -> None:
        """Summarise what the model sees, but its last ``keep_last`` messages, in a call of
        its own, and from now on send the summary instead. A kept part never starts with
        tool results whose calls would be summarised away."""
        context = self._context()
        cut = compaction_cut(context, keep_last)
        if cut == 0:
            return
        await self.emit(CompactionStarted(reason))  # type: ignore[arg-type]
        request = base.ModelRequest(
            model=self.setup.model, system=SUMMARY_PROMPT, max_tokens=self.setup.max_tokens, tools=[],
            messages=for_provider(context[:cut], self.setup.provider) + [Message(
                len(context), "user", [TextBlock(SUMMARY_REQUEST)], now_ms(), new_id(), self.turn_id)],
            provider_params=self.setup.provider_params, state=self.setup.provider_state,
        )
        assert self.provider is not None
        output = CallOutput()
        async with aclosing(self.provider.stream(request)) as stream:  # type: ignore[type-var]
            async for delta in stream:
                output.feed(delta)
        summary = Message(self.message_count, "system", [TextBlock(output.text() or "(no summary)")], now_ms(),
                          new_id(), self.turn_id, "compaction")
        keep_from = context[cut].message_id if cut < len(context) else None
        before = estimate_tokens(context)
        self.setup.compaction_summary, self.setup.compaction_keep_from = summary.message_id, keep_from
        after = estimate_tokens([summary] + context[cut:])
        self.compacted = CompactResult(self.session_id, summary.message_id, cut, before, after)
        self.last_input_tokens = 0
        await self._commit(
            [summary], usage=output.usage or Usage.zero(),
            events=[CompactionCompleted(summary.message_id, cut, before, after)], steer=False,
            session_fields={"compaction_summary": summary.message_id, "compaction_keep_from": keep_from},
        )

    def _check_answer(self, output: CallOutput) -> str | None:
        """With ``output_schema``: check a final answer. Returns the correction to send
        when another try is due; otherwise records the value or the failure."""
        schema = self.setup.output_schema
        if schema is None:
            return None
        self.answers += 1
        value, problems = structured.parse(output.text(), schema)
        verdict = turn_state.answer_verdict(
            problems=len(problems), attempt=self.answers, retries=self.setup.structured_output_retries
        )
        if verdict == "accepted":
            self.structured, self.structured_error = value, None
            return None
        if verdict == "retry":
            self.log.info("structured_output_retry", attempt=self.answers, problems=len(problems))
            return structured.correction(problems)
        self.structured_error = StructuredOutputError(self.answers, problems)
        return None

    async def _toolbox(self) -> Toolbox:
        """The session's client tools and every tool of its MCP servers, narrowed by the
        turn's overlay. A server that cannot start is logged and left out of this turn."""
        setup = self.setup
        client = ClientSource(self.channel, self.session_id, self.turn_id) if self.channel is not None else None
        box = Toolbox(client)
        if client is not None:
            for tool in offered(setup.tools, setup.overlay):
                box.add(tool, client)
        if setup.mcp_servers and self.mcp is not None:
            from ..mcp import McpError

            for server in setup.mcp_servers:
                source = McpSource(self.mcp, server)
                try:
                    listed = await source.tools()
                except McpError as exc:
                    self.log.warning("mcp_server_unavailable", server=server.name, error=str(exc))
                    box.unavailable[server.name] = str(exc)
                    continue
                names = {d.name for d in offered([d for d, _ in listed], setup.overlay)}
                for definition, name in listed:
                    if definition.name in names:
                        box.add(definition, source, name)
        return box

    async def _permit(self, call: ToolCall, timeout_s: float) -> bool:
        return self.channel is None or await self.channel.permit(self.session_id, call, timeout_s)

    async def _discover_model(self) -> None:
        """Ask a compatible server which model it serves, and remember the answer."""
        discover = getattr(self.provider, "discover_model", None)
        model = None
        if discover is not None:
            assert self.provider is not None
            policy, attempt = self.provider.retry_policy, 0
            while True:  # retried like a model call (before turn_started: logged, no events)
                try:
                    model = await discover()
                    break
                except base.ProviderError as exc:
                    if exc.retryable and attempt < policy.max_retries:
                        attempt += 1
                        delay = policy.delay_ms(attempt, exc.retry_after_ms, random.random())
                        self.log.info("model_discovery_retry", attempt=attempt, delay_ms=delay, kind=exc.kind)
                        await anyio.sleep(delay / 1000)
                        continue
                    exc.message = f"model discovery (GET /models) failed: {exc.message}"
                    exc.args = (exc.message,)
                    raise
        if not model:
            raise errors.FailedWithData(
                f"Provider {self.setup.provider!r} has no model and its server lists none: pass "
                "model to session/create or turn/start, or set default_model for this provider "
                "in the config file",
                {"reason": "no_model_configured", "provider": self.setup.provider},
            )
        self.setup.model = model
        await self.store.write(lambda db: sessions.update_session(db, self.session_id, model=model))

    async def _model_call(self, tools: list[ToolDef]) -> CallOutput:
        s = self.setup
        context = self._context()
        messages = for_provider(context, s.provider, known_clean=self.clean_history if context is self.history else 0)
        if messages is context and context is self.history:
            self.clean_history = len(context)  # the history only grows during a turn
        request = base.ModelRequest(
            images=self.images,
            output_schema=s.output_schema,
            model=s.model,
            system=s.system,
            messages=messages,
            tools=tools,
            max_tokens=s.max_tokens,
            provider_params=s.provider_params,
            state=s.provider_state,
        )
        provider = self.provider
        assert provider is not None
        policy = provider.retry_policy
        emit_now, events = self.bus.emit_now, self.events
        attempt = 0
        while True:
            output = self.current = CallOutput()
            try:
                flushed_at = 0.0
                async with aclosing(provider.stream(request)) as stream:  # type: ignore[type-var]
                    async for delta in stream:
                        # Sent before kept: an interrupt can land in ``emit``, and what is
                        # committed must never hold text the client was not sent.
                        if isinstance(delta, base.TextDelta):
                            event: Event = TextDeltaEvent(delta.text)
                            if not emit_now(events, event, "text_delta"):
                                await self.emit(event)
                            output.add_text(delta.index, delta.text)
                        elif isinstance(delta, base.ReasoningDelta):
                            event = ReasoningDeltaEvent(delta.text)
                            if not emit_now(events, event, "reasoning_delta"):
                                await self.emit(event)
                            output.feed(delta)
                        else:
                            output.feed(delta)
                            continue
                        # A provider parses a whole network read (up to ~270 deltas) without
                        # yielding; let the writer flush the first delta at once, then at
                        # most every millisecond, instead of after the whole read.
                        now = time.perf_counter()
                        if now - flushed_at > 0.001:
                            flushed_at = now
                            await checkpoint()
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
        content = output.content(partial=partial, provider=self.setup.provider)
        if not content:
            return None
        return Message(self.message_count, "assistant", content, now_ms(), new_id(), self.turn_id)

    def _tool_message(self, results: list[ToolResultBlock], index: int) -> Message:
        return Message(index, "tool", list(results), now_ms(), new_id(), self.turn_id)

    async def _commit(
        self,
        new: list[Message],
        *,
        usage: Usage = Usage.zero(),
        events: list[Event] = [],
        end: tuple[str, StopReason] | None = None,
        pending: list[ToolCall] | None = None,
        last_text: str | None = None,
        steer: bool = True,
        session_fields: dict[str, Any] | None = None,
        blobs: list[images.Blob] = [],
    ) -> RunResult | None:
        """One unit: append ``new`` plus any system context staged meanwhile, add usage,
        store the turn's events, and either keep the turn running or end it
        (``end = (status, stop_reason)``; then the RunResult is stored and returned).

        ``events`` report this commit (usage, tool calls requested): they are staged, so
        they go out once the commit holds, followed by the context applied and, at the
        end, ``turn_completed``. The unit runs on the store's thread, so it reads only
        this snapshot; the turn's own state is updated here, on the event loop.
        """
        sid, turn_id, provider_state = self.session_id, self.turn_id, self.setup.provider_state
        count, turn_usage = self.message_count, self.usage + usage
        staged_context = [
            s for s in await self.store.read(lambda db: staging.staged_system_context(db, sid))
            if steer or s.role != "user"
        ]
        now = now_ms()
        messages = new + [
            Message(count + len(new) + i, s.role, s.blocks(), now, new_id(), turn_id, s.source,  # type: ignore[arg-type]
                    s.idempotency_key)
            for i, s in enumerate(staged_context)
        ]
        staged: list[Numbered | None] = []
        for event in events:
            staged.append(await self.bus.stage(self.events, event))
        for s in staged_context:
            staged.append(await self.bus.stage(self.events, _applied(s)))
        result = None
        if end is not None:
            result = self._result(end[1], pending or [], count + len(messages), turn_usage)
            staged.append(await self.bus.stage(self.events, TurnCompleted(end[1], turn_usage), final=True))
        rows = self.bus.take(self.events)
        next_seq = self.events.next
        keep = self.keep_delta_turns

        path = self.path

        async def unit(db: Any) -> transcripts.Path:
            await staging.remove_staged_system_context(db, [s.id for s in staged_context])
            for sha, mime, data in blobs:
                await blob_rows.put(db, sha, mime, data, now)
            head = await transcripts.append(db, sid, messages, path)
            await sessions.add_usage(db, sid, usage)
            if pending:
                await staging.set_pending_tool_calls(db, sid, pending)
            await event_rows.insert(db, rows)
            fields: dict[str, Any] = {
                "updated_at_ms": now,
                "provider_state": provider_state,
            }
            if last_text:
                fields["last_assistant_text"] = last_text
            await sessions.update_session(db, sid, **fields, **(session_fields or {}))
            if end is not None:
                await event_rows.set_next_seq(db, sid, next_seq)
                await turn_rows.end_turn(db, turn_id, status=end[0], stop_reason=end[1], usage=turn_usage,
                                         now_ms=now, result=result)
                if keep is not None:
                    await event_rows.trim_deltas(db, sid, keep)
            return head

        try:
            self.path = await self.store.write(unit)
        except BaseException:
            self.bus.unstored(self.events)
            self.bus.retract(self.events, staged)
            raise
        self.bus.stored(self.events)
        self.images.update({sha: (mime, data) for sha, mime, data in blobs})
        missing = [sha for sha in images.image_hashes(messages) if sha not in self.images]  # a steer's images
        if missing:
            self.images.update(await self.store.read(lambda db: blob_rows.get_many(db, missing), small=False))
        self.history.extend(messages)
        self.message_count += len(messages)
        self.usage = turn_usage
        self.bus.publish(self.events, staged)
        return result

    async def _commit_call(
        self, output: CallOutput, stop: StopReason | None, refused: list[ToolResultBlock], *, steer: bool
    ) -> RunResult | None:
        """Commit a finished model call; with ``stop`` set this also ends the turn."""
        message = self._assistant(output, partial=False)
        new = [message] if message else []
        if refused:
            new.append(self._tool_message(refused, self.message_count + len(new)))
        calls = output.tool_calls()
        events: list[Event] = [UsageReported(output.usage)] if output.usage is not None else []
        events += [ToolCallRequested(c.tool_use_id, c.name, c.arguments, self.toolbox.source_of(c.name)) for c in calls]
        self.tool_calls.extend(calls)
        self.last_text = output.text()
        return await self._commit(
            new,
            usage=output.usage or Usage.zero(),
            events=events,
            end=None if stop is None else ("completed", stop),
            pending=calls if stop == "tool_use" else [],
            last_text=self.last_text,
            steer=steer,
        )

    async def _finish_interrupted(self, stop: StopReason) -> RunResult:
        """Commit what the cut-short step produced and end the turn with ``stop``
        (``interrupted``, or ``budget_exhausted`` when the turn's time ran out)."""
        new: list[Message] = []
        output = self.current
        if output is not None:
            message = self._assistant(output, partial=True)
            if message is not None:
                new.append(message)
        if self.step is not None:
            cause = "interrupted" if stop == "interrupted" else "cancelled: the turn's time budget ran out"
            new.append(self._tool_message(self.step.ordered(f"Tool call {cause}"), self.message_count + len(new)))
        usage = (output.usage if output else None) or Usage.zero()
        text = output.text() if output else ""
        if text:
            self.last_text = text
        try:
            result = await self._commit(
                new, usage=usage, end=("interrupted" if stop == "interrupted" else "completed", stop), last_text=text
            )
        except errors.WarrenError as exc:
            await self._send_failed(errors.to_wire(exc))
            raise
        self.machine.to(turn_state.ended_by(stop))
        self.current = self.step = None
        assert result is not None
        return result

    async def _finish_failed(self, failure: errors.WarrenError) -> None:
        """End the turn as failed: store the error it answers with and ``turn_failed``.
        Staged system context stays staged for the next turn."""
        wire = errors.to_wire(failure)
        new = []
        if self.step is not None:
            new.append(self._tool_message(self.step.ordered("Tool call abandoned: the turn failed"), self.message_count))
        sid, turn_id, provider_state = self.session_id, self.turn_id, self.setup.provider_state
        event = await self.bus.stage(self.events, TurnFailed(wire), final=True)
        rows = self.bus.take(self.events)
        next_seq = self.events.next

        async def unit(db: Any) -> None:
            now = now_ms()
            await transcripts.append(db, sid, new)
            await sessions.update_session(db, sid, updated_at_ms=now, provider_state=provider_state)
            await event_rows.insert(db, rows)
            await event_rows.set_next_seq(db, sid, next_seq)
            await turn_rows.end_turn(db, turn_id, status="failed", stop_reason=None, usage=self.usage,
                                     now_ms=now, error=wire)

        try:
            await self.store.write(unit)
            self.bus.stored(self.events)
        except errors.WarrenError as exc:
            self.bus.unstored(self.events)
            self.log.warning("turn_close_failed", reason=getattr(exc, "reason", None))
        self.log.info("turn_failed", code=wire.data.get("code"))
        self.bus.publish(self.events, [event])
        if not self.machine.ended:  # an end already committed stays the turn's state
            self.machine.to(State.FAILED)

    async def _send_failed(self, wire: Any) -> None:
        """The end could not be stored: say so with ``turn_failed`` (sent, not stored)."""
        event = await self.bus.stage(self.events, TurnFailed(wire), final=True)
        self.bus.publish(self.events, [event])

    def _result(self, stop: StopReason, pending: list[ToolCall], message_count: int, usage: Usage) -> RunResult:
        return RunResult(
            session_id=self.session_id,
            turn_id=self.turn_id,
            text=self.last_text,
            stop_reason=stop,
            tool_calls=list(self.tool_calls),
            usage=usage,
            message_count=message_count,
            pending_tool_calls=pending,
            budget=self.exhausted if stop == "budget_exhausted" else None,
            structured_output=self.structured,
            structured_output_error=self.structured_error,
        )


def _applied(staged: staging.Staged) -> Event:
    """The event of a staged message joining the transcript: context, or a steer."""
    if staged.role == "user":
        return SteerApplied(staged.text)
    return SystemContextApplied(staged.source, staged.idempotency_key)
