"""The session service: every method's semantics, over the store and the turn loop.

One running turn per session is enforced by the database itself (a partial unique index on
``turns(session_id) WHERE status = 'running'``), so it holds across daemons sharing a file.
A running row whose owner process is dead is closed as interrupted when found: at start-up
for every session, and at any later claim for that session.
"""

from __future__ import annotations

import base64
from typing import Any, Awaitable, Callable

import anyio
import msgspec

from warren.protocol.errors import ErrorObject
from warren.protocol.events import (
    SessionEventsParams,
    SessionEventsResult,
    SubscribeParams,
    SubscribeResult,
    SystemContextApplied,
    TurnCompleted,
    UnsubscribeParams,
    UnsubscribeResult,
)
from warren.protocol.types import (
    DEFAULT_TOOL_TIMEOUT_MS,
    AppendSystemContextParams,
    AppendSystemContextResult,
    ArchiveResult,
    Billing,
    DeferredCreateResult,
    InterruptResult,
    McpServerInput,
    Message,
    Prompt,
    RunResult,
    SessionCreateParams,
    SessionHistoryPage,
    SessionHistoryParams,
    SessionInfo,
    SessionListParams,
    SessionListResult,
    SessionView,
    SetToolsParams,
    SetToolsResult,
    StageToolResultsParams,
    StageToolResultsResult,
    TextBlock,
    ToolOverlay,
    ToolResultBlock,
    ToolUseBlock,
    TurnInterruptParams,
    TurnStartParams,
    BlobParams,
    BlobResult,
    CompactParams,
    CompactResult,
    TurnSteerParams,
    TurnSteerResult,
    Usage,
)

from .. import errors
from ..clock import new_id, now_ms
from ..logs import get_logger
from ..providers import ProviderRegistry
from ..store import Store, blobs, sessions, staging, transcripts, turns as turn_rows
from . import images, structured
from .edits import TranscriptEditor, params_hash
from .events import EventBus, Numbered, Sink
from .tools import ClientChannel, McpManagerLike, check_mcp_servers, check_tool_defs, mcp_spec
from .turns import Turn, TurnSetup

log = get_logger("warren.service")


async def _live_row(db: Any, session_id: str) -> sessions.SessionRow:
    """The session's row; a missing or archived session is SESSION_NOT_FOUND (the message
    says which)."""
    row = await sessions.get_session(db, session_id)
    if row is None:
        raise errors.NotFound(session_id)
    if row.archived:
        raise errors.NotFound(session_id, archived=True)
    return row


class _KeyTaken(Exception):
    """Inside a claim: another request (maybe another daemon's) took the key first."""


class SessionService:
    def __init__(
        self,
        store: Store,
        providers: ProviderRegistry,
        bus: EventBus,
        sink: Sink,
        channel: ClientChannel | None,
        spawn: Callable[..., None],
        *,
        accepting: bool = True,
        mcp: McpManagerLike | None = None,
    ) -> None:
        """``mcp`` runs the MCP servers sessions name (the daemon's one manager)."""
        self.store = store
        self.providers = providers
        self.bus = bus
        self.sink = sink  # the connection: it gets the events of the turns it runs
        self.channel = channel
        self.spawn = spawn  # starts background tasks in the daemon's root task group
        self.turns: dict[str, Turn] = {}  # session_id -> the turn this process runs
        self._claimed: set[str] = set()  # turn ids this process has claimed, running or about to
        self.accepting = accepting
        self.mcp = mcp
        self._queues: dict[str, list[object]] = {}  # session_id -> turn/start requests queued, in order
        self._queue_moved = anyio.Event()  # set (and replaced) whenever a request leaves a queue
        self.edits = TranscriptEditor(store, bus, self._not_while_running)

    # ------------------------------------------------------------------ start-up

    async def recover(self, db: Any) -> int:
        """Close the turns that died with their process (a unit run when the store opens)."""
        closed = 0
        for turn_id, session_id, owner in await turn_rows.running_turns(db):
            if not self._owner_alive(owner, turn_id):
                await self._close_dead_turn(db, turn_id, session_id)
                closed += 1
        if closed:
            log.info("recovered_dead_turns", count=closed)
        return closed

    def _owner_alive(self, owner: str | None, turn_id: str) -> bool:
        if owner == self.store.owner.owner_id:
            return turn_id in self._claimed
        return self.store.owner.is_alive(owner)

    def _running(self, turn_id: str | None, owner: str | None) -> bool:
        """Whether a turn recorded as running really runs (its daemon is alive)."""
        return turn_id is not None and self._owner_alive(owner, turn_id)

    def _not_while_running(self, row: sessions.SessionRow, what: str) -> None:
        if self._running(row.running_turn_id, row.running_owner):
            assert row.running_turn_id is not None
            raise errors.Busy(
                row.session_id, row.running_turn_id,
                f"Session {row.session_id!r} is running turn {row.running_turn_id!r}: {what}",
            )

    async def _close_dead_turn(self, db: Any, turn_id: str, session_id: str) -> None:
        """Close a turn whose process died, keeping what it committed. A tool step it left
        waiting on the client gets error results, so the history stays one every provider
        accepts (each tool_use answered)."""
        now = now_ms()
        last = await transcripts.last_message(db, session_id)
        count = 0 if last is None else last.index + 1
        text = ""
        if last is not None and last.role == "assistant" and last.turn_id == turn_id:
            text = "".join(b.text for b in last.content if isinstance(b, TextBlock))
            calls = [b for b in last.content if isinstance(b, ToolUseBlock)]
            pending = {c.tool_use_id for c in await staging.pending_tool_calls(db, session_id)}
            if calls and not pending:
                results = [ToolResultBlock(c.id, "Tool call interrupted: the daemon stopped", True) for c in calls]
                await transcripts.append(db, session_id, [Message(count, "tool", list(results), now, new_id(), turn_id)])
                count += 1
        result = RunResult(session_id, turn_id, text, "interrupted", [], Usage.zero(), count, [])
        await turn_rows.end_turn(db, turn_id, status="interrupted", stop_reason="interrupted", usage=None,
                                 now_ms=now, result=result)
        # The turn's last event: it was never sent, so followers learn here that it ended.
        await self.bus.append(db, session_id, [TurnCompleted("interrupted", Usage.zero())], turn_id)
        log.info("closed_dead_turn", session_id=session_id, turn_id=turn_id)

    # ------------------------------------------------------------------ turns

    async def create(self, p: SessionCreateParams, *, cwd: str | None = None) -> RunResult | DeferredCreateResult:
        """``cwd``: the working directory an ACP editor gives (Warren's own protocol has none)."""
        defer = p.initial_turn == "defer"
        if not defer and p.prompt is None:
            raise errors.InvalidRequest.at("$.prompt", 'required unless initial_turn is "defer"')
        staged = defer and p.deferred_prompt_policy == "stage" and p.prompt
        if staged and images.prompt_blocks(p.prompt)[1]:
            raise errors.InvalidRequest.at("$.prompt", "a staged prompt holds text only: send images with turn/start")
        check_tool_defs(p.tools)
        check_mcp_servers(p.mcp_servers)
        structured.check_schema(p.output_schema)
        provider, model = self.providers.resolve(p.provider, p.model)
        self.providers.check_params(provider, p.provider_params, "$.provider_params")
        self.providers.check_credential(provider)  # before anything is stored: a retry leaves no trace
        now = now_ms()
        row = sessions.SessionRow(
            session_id=new_id(),
            created_at_ms=now,
            updated_at_ms=now,
            provider=provider,
            model=model,
            system_prompt=p.system_prompt,
            max_tokens=p.max_tokens,
            labels=dict(p.labels),
            archived=False,
            message_count=0,
            usage=Usage.zero(),
            last_assistant_text=None,
            budget=p.budget,
            provider_params=p.provider_params,
            provider_state={},
            staged_prompt=images.text_of(p.prompt) if staged else None,
            tools=list(p.tools),
            next_seq=1,
            running_turn_id=None,
            running_owner=None,
            tool_timeout_ms=p.tool_timeout_ms or DEFAULT_TOOL_TIMEOUT_MS,
            cwd=cwd,
            mcp_servers=list(p.mcp_servers),
            output_schema=p.output_schema,
            structured_output_retries=p.structured_output_retries,
            compaction=p.compaction,
        )
        key = None
        if p.idempotency_key is not None:
            key = (p.idempotency_key, params_hash(p))
            made = await self.store.read(lambda db: sessions.create_key(db, p.idempotency_key))
            if made is not None:
                return await self._create_again(made, key)
        try:
            if defer:
                await self.store.write(lambda db: self._insert_session(db, row, key, None))
                log.info("session_created", session_id=row.session_id, provider=provider, deferred=True)
                return DeferredCreateResult(row.session_id, row.created_at_ms)
            log.info("session_created", session_id=row.session_id, provider=provider, deferred=False)
            return await self._run_turn(row.session_id, p.prompt or "", new_session=row, create_key=key)
        except _KeyTaken:
            assert key is not None
            made = await self.store.read(lambda db: sessions.create_key(db, key[0]))
            assert made is not None
            return await self._create_again(made, key)

    async def _insert_session(
        self, db: Any, row: sessions.SessionRow, key: tuple[str, str] | None, turn_id: str | None
    ) -> None:
        if key is not None and await sessions.create_key(db, key[0]) is not None:
            raise _KeyTaken()
        await sessions.insert_session(db, row)
        if key is not None:
            await sessions.remember_create_key(
                db, key[0], sessions.CreateKey(key[1], row.session_id, turn_id, row.created_at_ms)
            )

    async def _create_again(self, made: sessions.CreateKey, key: tuple[str, str]) -> RunResult | DeferredCreateResult:
        """A ``session/create`` retried with its idempotency key: what the first one made."""
        if made.params_hash != key[1]:
            raise errors.IdempotencyConflict(key[0], made.session_id, "session")
        if made.turn_id is None:
            return DeferredCreateResult(made.session_id, made.created_at_ms)
        return await self._follow(made.session_id, made.turn_id)

    async def start_turn(
        self, p: TurnStartParams, *, on_claim: Callable[[anyio.CancelScope], None] | None = None
    ) -> RunResult:
        """``on_claim`` gets the turn's cancel scope the moment the turn exists (before it
        runs): a front-end that must stop exactly this turn (ACP's ``session/cancel``)."""
        key = None
        if p.idempotency_key is not None:
            key = (p.idempotency_key, params_hash(p))
            first = await self.store.read(lambda db: turn_rows.turn_by_key(db, p.session_id, p.idempotency_key))
            if first is not None:
                return await self._start_again(first, key)
        structured.check_schema(p.output_schema)
        if p.when_busy == "queue":
            return await self._queued(p.session_id, lambda: self.start_turn(
                msgspec.structs.replace(p, when_busy="reject"), on_claim=on_claim))
        try:
            return await self._run_turn(
                p.session_id,
                p.prompt,
                system_prompt=p.system_prompt,
                model=p.model,
                max_tokens=p.max_tokens,
                provider_params=p.provider_params,
                overlay=p.turn_tool_overlay,
                turn_key=key,
                on_claim=on_claim,
                output_schema=p.output_schema,
                structured_output_retries=p.structured_output_retries,
                provider=p.provider,
            )
        except _KeyTaken:
            assert key is not None
            first = await self.store.read(lambda db: turn_rows.turn_by_key(db, p.session_id, key[0]))
            assert first is not None
            return await self._start_again(first, key)

    async def _queued(self, session_id: str, start: Callable[[], Awaitable[RunResult]]) -> RunResult:
        """``when_busy: "queue"``: wait behind the running turn and the turns queued before
        this one, then run. The queue lives in this daemon: a request queued here that the
        daemon never ran dies with it (its client got no answer), never runs twice."""
        queue = self._queues.setdefault(session_id, [])
        me = object()
        queue.append(me)
        try:
            while True:
                if queue[0] is not me:
                    await self._queue_moved.wait()  # the request ahead left the queue
                    continue
                try:
                    return await start()
                except errors.Busy:
                    pass  # another daemon's turn, or one that claimed first
                local = self.turns.get(session_id)
                if local is not None and not local.done.is_set():
                    await local.done.wait()
                else:
                    await self.bus.watch()  # another daemon's turn ends (or a moment passes)
        finally:
            queue.remove(me)
            if not queue:
                del self._queues[session_id]
            moved, self._queue_moved = self._queue_moved, anyio.Event()
            moved.set()

    async def _start_again(self, first: turn_rows.TurnRow, key: tuple[str, str]) -> RunResult:
        if first.params_hash != key[1]:
            raise errors.IdempotencyConflict(key[0], first.turn_id, "turn")
        return await self._follow(first.session_id, first.turn_id)

    async def _follow(self, session_id: str, turn_id: str) -> RunResult:
        """The outcome of a turn that an earlier request started: its stored RunResult (or
        error) once it ends. While it runs, in this daemon or another, this connection
        gets its events from now on, as the first request's connection does."""
        subscription: str | None = None
        try:
            while True:
                local = self.turns.get(session_id)
                if local is not None and local.turn_id == turn_id:
                    await local.done.wait()
                    return _outcome(local.outcome)
                row = await self.store.read(lambda db: turn_rows.get_turn(db, turn_id))
                assert row is not None
                if row.status != "running":
                    if row.result is not None:
                        return msgspec.json.decode(row.result, type=RunResult)
                    if row.error is not None:
                        raise errors.Replayed(msgspec.json.decode(row.error, type=ErrorObject))
                    raise errors.FailedWithData(
                        f"Turn {turn_id!r} ended before this daemon kept outcomes",
                        {"reason": "outcome_not_kept", "turn_id": turn_id},
                    )
                if not self._owner_alive(row.owner, turn_id):
                    await self.store.write(lambda db: self._close_if_dead(db, turn_id, session_id))
                    continue
                if subscription is None:
                    subscription = (await self.bus.subscribe(self.sink, session_id, None, None)).subscription_id
                    continue  # the turn may have ended while subscribing
                await self.bus.watch()
        finally:
            if subscription is not None:
                self.bus.unsubscribe(subscription)

    async def _close_if_dead(self, db: Any, turn_id: str, session_id: str) -> None:
        row = await turn_rows.get_turn(db, turn_id)
        if row is not None and row.status == "running" and not self._owner_alive(row.owner, turn_id):
            await self._close_dead_turn(db, turn_id, session_id)

    async def _run_turn(
        self,
        session_id: str,
        prompt: Prompt,
        *,
        new_session: sessions.SessionRow | None = None,
        system_prompt: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        provider_params: dict[str, Any] | None = None,
        overlay: ToolOverlay | None = None,
        create_key: tuple[str, str] | None = None,
        turn_key: tuple[str, str] | None = None,
        on_claim: Callable[[anyio.CancelScope], None] | None = None,
        output_schema: dict[str, Any] | None = None,
        structured_output_retries: int | None = None,
        provider: str | None = None,
        compact: int | None = None,
        ran: list[Turn] | None = None,
    ) -> RunResult:
        """``compact``: this turn only compacts the session, keeping that many messages
        (``session/compact``); ``ran`` gets the Turn, for what it did besides its result."""
        turn_id = new_id()
        prompt_content, prompt_images = images.prompt_blocks(prompt)  # checked before anything is written

        async def claim(db: Any) -> tuple[sessions.SessionRow, list[Message], list[staging.Staged], tuple[int, int]]:
            if new_session is not None:
                await self._insert_session(db, new_session, create_key, turn_id)
            elif turn_key is not None and await turn_rows.turn_by_key(db, session_id, turn_key[0]) is not None:
                raise _KeyTaken()
            row = await _live_row(db, session_id)
            if row.running_turn_id is not None:
                if self._owner_alive(row.running_owner, row.running_turn_id):
                    raise errors.Busy(session_id, row.running_turn_id)
                await self._close_dead_turn(db, row.running_turn_id, session_id)
            if provider is not None and provider != row.provider:
                # sticky: the session moves to this provider; its private state starts afresh
                row.provider, row.model = self.providers.resolve(provider, model)
                row.provider_state = {}
                switched = {"provider": row.provider, "model": row.model, "provider_state": {}}
            else:
                switched = {}
            if provider_params is not None:
                self.providers.check_params(row.provider, provider_params, "$.provider_params")
            if system_prompt is not None and row.message_count > 0:
                raise errors.InvalidRequest.at("$.system_prompt", "only allowed while the session has no messages")
            now = now_ms()
            index = row.message_count
            new: list[Message] = []
            pending = await staging.pending_tool_calls(db, session_id)
            if pending:
                staged = await staging.staged_tool_results(db, session_id)
                missing = [c for c in pending if c.tool_use_id not in staged]
                if missing:
                    raise errors.FailedWithData(
                        f"{len(missing)} tool call(s) still need results: stage them with "
                        "session/stage_tool_results before starting a turn",
                        {
                            "reason": "tool_results_pending",
                            "pending_tool_calls": [
                                {"tool_use_id": c.tool_use_id, "name": c.name, "arguments": c.arguments}
                                for c in missing
                            ],
                        },
                    )
                blocks = [ToolResultBlock(c.tool_use_id, *staged[c.tool_use_id]) for c in pending]
                new.append(Message(index, "tool", list(blocks), now, new_id(), turn_id))
                await staging.clear_tool_state(db, session_id)
            applied = await staging.take_staged_system_context(db, session_id)
            for s in applied:  # context, and steers that came after the last turn's last boundary
                new.append(Message(index + len(new), s.role, s.blocks(), now, new_id(), turn_id, s.source,  # type: ignore[arg-type]
                                   s.idempotency_key))
            content = list(prompt_content)
            if row.staged_prompt:  # the deferred create's prompt opens this one
                if content and isinstance(content[0], TextBlock):
                    content[0] = TextBlock(f"{row.staged_prompt}\n\n{content[0].text}")
                else:
                    content.insert(0, TextBlock(row.staged_prompt))
            if content:
                new.append(Message(index + len(new), "user", content, now, new_id(), turn_id))
            for sha, mime, data in prompt_images:
                await blobs.put(db, sha, mime, data, now)
            if compact is None and not any(m.role in ("user", "tool") for m in new):
                raise errors.InvalidRequest.at("$.prompt", "must not be empty")
            await transcripts.append(db, session_id, new)
            await turn_rows.insert_turn(
                db, turn_id, session_id, self.store.owner.owner_id, now,
                *(turn_key if turn_key is not None else (None, None)),
            )
            self._claimed.add(turn_id)
            seqs = await self.bus.reserve(db, session_id)
            fields: dict[str, Any] = {
                "updated_at_ms": now,
                "staged_prompt": None,
                **switched,
            }
            if system_prompt is not None:
                fields["system_prompt"] = row.system_prompt = system_prompt
            if model is not None:
                fields["model"] = row.model = model
            if max_tokens is not None:
                fields["max_tokens"] = row.max_tokens = max_tokens
            if provider_params is not None:
                fields["provider_params"] = row.provider_params = provider_params
                fields["provider_state"] = row.provider_state = {}
            await sessions.update_session(db, session_id, **fields)
            return row, new, applied, seqs

        try:
            row, new, applied, (first_seq, reserved) = await self.store.write(claim)
        except BaseException:
            self._claimed.discard(turn_id)
            raise
        setup = TurnSetup(
            session_id=session_id,
            turn_id=turn_id,
            provider=row.provider,
            model=row.model,
            system=row.system_prompt,
            max_tokens=row.max_tokens,
            tools=row.tools,
            provider_params=row.provider_params or {},
            provider_state=row.provider_state,
            message_count=row.message_count + len(new),
            applied_context=applied,
            overlay=overlay,
            budget=row.budget,
            tool_timeout_ms=row.tool_timeout_ms,
            mcp_servers=self._mcp_servers(row),
            compaction=row.compaction,
            compaction_summary=row.compaction_summary,
            compaction_keep_from=row.compaction_keep_from,
            context_window=self.providers.context_window(row.provider, row.model, row.provider_params or {}),
            compaction_threshold=self.providers.config.compaction_threshold,
            compact_only=compact,
            output_schema=output_schema if output_schema is not None else row.output_schema,
            structured_output_retries=(
                structured_output_retries if structured_output_retries is not None else row.structured_output_retries
            ),
        )
        events = self.bus.open_turn(session_id, turn_id, first_seq, reserved, self.sink)
        turn = self.turns[session_id] = Turn(
            setup, self.providers, self.store, self.bus, events, self.channel, self.spawn, self.mcp
        )
        if not self.accepting:
            # read before the input ended, claimed after: committed, then interrupted like the rest
            turn.scope.cancel()
        if on_claim is not None:
            on_claim(turn.scope)
        if ran is not None:
            ran.append(turn)
        log.info("turn_started", session_id=session_id, turn_id=turn_id, provider=row.provider)
        log.debug("turn_prompt", session_id=session_id, turn_id=turn_id, text=images.text_of(prompt))  # debug only
        try:
            result = await turn.run()
        finally:
            self.turns.pop(session_id, None)
            self._claimed.discard(turn_id)
        log.info("turn_ended", session_id=session_id, turn_id=turn_id, stop_reason=result.stop_reason)
        log.debug("turn_reply", session_id=session_id, turn_id=turn_id, text=result.text)  # debug only
        return result

    def _mcp_servers(self, row: sessions.SessionRow) -> list[McpServerInput]:
        """The config's servers, then the session's (a session's server replaces the
        config's of the same name)."""
        mine = {s.name for s in row.mcp_servers}
        return [s for s in self.providers.config.mcp_servers if s.name not in mine] + list(row.mcp_servers)

    async def set_mcp_servers(self, session_id: str, servers: list[McpServerInput]) -> None:
        """The servers an ACP editor gives again when it loads or resumes a session."""
        check_mcp_servers(servers, "$.mcpServers")

        async def unit(db: Any) -> None:
            await _live_row(db, session_id)
            await sessions.update_session(db, session_id, mcp_servers=list(servers))

        await self.store.write(unit)

    async def mcp_status(self, session_id: str | None) -> list[Any]:
        """What ``mcp/servers`` lists: every server this daemon runs, or a session's."""
        if self.mcp is None:
            return []
        if session_id is None:
            return self.mcp.servers()
        row = await self.session_row(session_id, archived=True)
        return self.mcp.servers([mcp_spec(s) for s in self._mcp_servers(row)])

    async def compact(self, p: CompactParams) -> CompactResult:
        """``session/compact``: a turn of its own that only summarises (the session's
        provider writes the summary); busy while another turn runs."""
        row = await self._live_session(p.session_id)
        if not row.compaction:
            raise errors.CompactionDisabled(
                f"Session {p.session_id!r} was created with compaction: false; fork it to compact a copy"
            )
        if p.keep_last > row.message_count:
            raise errors.InvalidRequest.at("$.keep_last", f"must be at most message_count ({row.message_count})")
        ran: list[Turn] = []
        await self._run_turn(p.session_id, "", compact=p.keep_last, ran=ran)
        done = ran[0].compacted if ran else None
        if done is None:
            raise errors.FailedWithData(
                "Nothing to compact: the model already sees only the messages to keep",
                {"reason": "nothing_to_compact", "session_id": p.session_id, "keep_last": p.keep_last},
            )
        return done

    async def images_of(self, messages: list[Message]) -> dict[str, tuple[str, bytes]]:
        """The bytes of the images the messages name."""
        wanted = images.image_hashes(messages)
        if not wanted:
            return {}
        found: dict[str, tuple[str, bytes]] = await self.store.read(lambda db: blobs.get_many(db, wanted), small=False)
        return found

    async def health(self) -> tuple[int | None, int | None, str]:
        """``(schema version, sessions, "ok" or the store's failure reason)``, for ``daemon/status``."""
        async def read(db: Any) -> tuple[int, int]:
            version = await db.execute_fetchall("SELECT version FROM schema_version")
            count = await db.execute_fetchall("SELECT count(*) FROM sessions")
            return int(version[0][0]), int(count[0][0])

        try:
            version, count = await self.store.read(read)
        except errors.Store as exc:
            return None, None, exc.reason
        return version, count, "ok"

    async def blob(self, p: BlobParams) -> BlobResult:
        found = await self.store.read(lambda db: blobs.get(db, p.sha256), small=False)
        if found is None:
            raise errors.FailedWithData(f"No image {p.sha256}", {"reason": "unknown_blob", "sha256": p.sha256})
        return BlobResult(p.sha256, found[0], base64.b64encode(found[1]).decode())

    async def interrupt(self, p: TurnInterruptParams) -> InterruptResult:
        turn = self.turns.get(p.session_id)
        if turn is None:
            row = await self._live_session(p.session_id)
            if self._running(row.running_turn_id, row.running_owner):
                if row.running_owner != self.store.owner.owner_id:
                    raise errors.Unsupported(
                        "turn/interrupt",
                        f"Turn {row.running_turn_id!r} runs in another Warren process; interrupt it there",
                    )
            raise errors.NotRunning(p.session_id)
        if p.turn_id is not None and p.turn_id != turn.turn_id:
            raise errors.NotRunning(
                p.session_id, f"Turn {p.turn_id!r} is not running; the running turn is {turn.turn_id!r}"
            )
        if p.when == "boundary":
            # the turn ends after its current call's tool step; its turn/start answers then
            turn.stop_at_boundary = True
            return InterruptResult(p.session_id, turn.turn_id)
        turn.scope.cancel()
        with anyio.move_on_after(10):
            await turn.done.wait()
        return InterruptResult(p.session_id, turn.turn_id)

    async def steer(self, p: TurnSteerParams) -> TurnSteerResult:
        """Stage a prompt for the running turn (wherever it runs): it joins as a user message
        at the turn's next model-call boundary, and the model answers it in this turn."""
        blocks, prompt_images = images.prompt_blocks(p.prompt)
        if not blocks:
            raise errors.InvalidRequest.at("$.prompt", "must not be empty")
        content = blocks if prompt_images else None

        async def unit(db: Any) -> str:
            row = await _live_row(db, p.session_id)
            running = row.running_turn_id if self._running(row.running_turn_id, row.running_owner) else None
            if running is None or running != p.expected_turn_id:
                raise errors.NotRunning(
                    p.session_id,
                    f"Turn {p.expected_turn_id!r} is not running"
                    + (f"; the running turn is {running!r}" if running else "; the session is idle"),
                )
            now = now_ms()
            for sha, mime, data in prompt_images:
                await blobs.put(db, sha, mime, data, now)
            await staging.stage_system_context(db, p.session_id, images.text_of(p.prompt), None, None, now,
                                               role="user", content=content)
            return running

        return TurnSteerResult(await self.store.write(unit))

    async def interrupt_all(self) -> None:
        """Shutdown: interrupt every running turn and wait until each has committed."""
        self.accepting = False
        turns = list(self.turns.values())
        for turn in turns:
            turn.scope.cancel()
        for turn in turns:
            await turn.done.wait()

    # ------------------------------------------------------------------ reads

    async def _live_session(self, session_id: str) -> sessions.SessionRow:
        return await self.store.read(lambda db: _live_row(db, session_id))

    async def read(self, session_id: str) -> SessionView:
        row = await self._live_session(session_id)
        info = SessionInfo(
            session_id=row.session_id,
            created_at_ms=row.created_at_ms,
            updated_at_ms=row.updated_at_ms,
            message_count=row.message_count,
            is_active=self._running(row.running_turn_id, row.running_owner),
            model=row.model,
            provider=row.provider,
            last_assistant_text=row.last_assistant_text,
            labels=row.labels,
            revision=transcripts.Path.decode(row.pieces).revision,
            forked_from=row.forked_from,
        )
        return SessionView(info, Billing(row.usage.total_tokens, row.usage))

    async def list(self, p: SessionListParams) -> SessionListResult:
        rows, has_more = await self.store.read(
            lambda db: sessions.list_sessions(
                db, limit=p.limit, offset=p.offset, labels=p.labels, include_archived=p.include_archived
            )
        )
        for listed in rows:
            listed.summary.is_active = self._running(listed.running_turn_id, listed.running_owner)
        return SessionListResult([listed.summary for listed in rows], has_more)

    async def history(self, p: SessionHistoryParams) -> SessionHistoryPage:
        page = await self.store.read(lambda db: transcripts.history_page(db, p.session_id, p.offset, p.limit))
        if page is None:
            raise errors.NotFound(p.session_id)
        path, messages = page
        return SessionHistoryPage(
            session_id=p.session_id,
            message_count=path.count,
            offset=p.offset,
            limit=p.limit,
            has_more=p.offset + len(messages) < path.count,
            messages=messages,
            revision=path.revision,
        )

    # ------------------------------------------------------------------ writes

    async def archive(self, session_id: str) -> ArchiveResult:
        async def unit(db: Any) -> None:
            row = await sessions.get_session(db, session_id)
            if row is None:
                raise errors.NotFound(session_id)
            self._not_while_running(row, "interrupt it before archiving")
            if not row.archived:
                await sessions.update_session(db, session_id, archived=1)

        await self.store.write(unit)
        return ArchiveResult(session_id)

    async def set_tools(self, p: SetToolsParams) -> SetToolsResult:
        check_tool_defs(p.tools)

        async def unit(db: Any) -> int:
            row = await _live_row(db, p.session_id)
            self._not_while_running(row, "tools change between turns")
            timeout = p.tool_timeout_ms or row.tool_timeout_ms
            await sessions.update_session(db, p.session_id, tools=list(p.tools), tool_timeout_ms=timeout)
            return timeout

        timeout = await self.store.write(unit)
        return SetToolsResult(p.session_id, [t.name for t in p.tools], timeout)

    async def append_system_context(self, p: AppendSystemContextParams) -> AppendSystemContextResult:
        async def unit(db: Any) -> str:
            applied.clear()
            row = await _live_row(db, p.session_id)
            if p.idempotency_key is not None:
                seen = await staging.system_context_key(db, p.session_id, p.idempotency_key)
                if seen is not None:
                    if seen == p.text:
                        return "duplicate"
                    raise errors.Conflict(p.session_id, p.idempotency_key)
                await staging.remember_system_context_key(db, p.session_id, p.idempotency_key, p.text)
            now = now_ms()
            if self._running(row.running_turn_id, row.running_owner):
                await staging.stage_system_context(db, p.session_id, p.text, p.source, p.idempotency_key, now)
                return "staged"
            message = Message(row.message_count, "system", [TextBlock(p.text)], now, new_id(), None, p.source,
                              p.idempotency_key)
            await transcripts.append(db, p.session_id, [message])
            await sessions.update_session(db, p.session_id, updated_at_ms=now)
            applied.extend(await self.bus.append(db, p.session_id, [SystemContextApplied(p.source, p.idempotency_key)]))
            return "applied"

        applied: list[Numbered] = []
        status = await self.store.write(unit)
        self.bus.deliver_committed(applied)
        return AppendSystemContextResult(status)  # type: ignore[arg-type]

    async def stage_tool_results(self, p: StageToolResultsParams) -> StageToolResultsResult:
        async def unit(db: Any) -> int:
            await _live_row(db, p.session_id)
            pending = {c.tool_use_id for c in await staging.pending_tool_calls(db, p.session_id)}
            staged = await staging.staged_tool_results(db, p.session_id)
            problems = []
            seen: set[str] = set()
            for i, r in enumerate(p.results):
                path = f"$.results[{i}].tool_use_id"
                if r.tool_use_id in seen:
                    problems.append({"path": path, "message": f"{r.tool_use_id!r} appears twice"})
                elif r.tool_use_id in staged:
                    problems.append({"path": path, "message": f"{r.tool_use_id!r} already has a result"})
                elif r.tool_use_id not in pending:
                    problems.append({"path": path, "message": f"{r.tool_use_id!r} is not a pending tool call"})
                seen.add(r.tool_use_id)
            if problems:
                raise errors.InvalidRequest("Invalid params: " + problems[0]["message"], problems)
            await staging.stage_tool_results(
                db, p.session_id, [(r.tool_use_id, r.content, r.is_error) for r in p.results], now_ms()
            )
            return len(p.results)

        return StageToolResultsResult(await self.store.write(unit))

    # ------------------------------------------------------------------ what an ACP editor keeps

    async def set_model(self, session_id: str, model: str) -> None:
        """The model of the session's next turns."""
        async def unit(db: Any) -> None:
            await _live_row(db, session_id)
            await sessions.update_session(db, session_id, model=model)

        await self.store.write(unit)

    async def name(self, session_id: str, title: str) -> bool:
        """Give the session a title unless it has one; returns whether it was given."""
        async def unit(db: Any) -> bool:
            row = await _live_row(db, session_id)
            if row.title:
                return False
            await sessions.update_session(db, session_id, title=title)
            return True

        named: bool = await self.store.write(unit)
        return named

    async def session_row(self, session_id: str, *, archived: bool = False) -> sessions.SessionRow:
        """A session's row (``archived``: an archived one too)."""
        row = await self.store.read(lambda db: sessions.get_session(db, session_id))
        if row is None or (row.archived and not archived):
            raise errors.NotFound(session_id)
        return row

    async def list_titled(self, cwd: str | None, offset: int, limit: int) -> tuple[list[sessions.Titled], bool]:
        result: tuple[list[sessions.Titled], bool] = await self.store.read(
            lambda db: sessions.list_titled(db, cwd=cwd, offset=offset, limit=limit)
        )
        return result

    async def transcript(self, session_id: str) -> list[Message]:
        messages: list[Message] = await self.store.read(
            lambda db: transcripts.all_messages(db, session_id), small=False
        )
        return messages

    # ------------------------------------------------------------------ events

    async def _known(self, session_id: str) -> None:
        """Events stay readable after archiving, like history: only an unknown id fails."""
        await self.session_row(session_id, archived=True)

    async def events(self, p: SessionEventsParams) -> SessionEventsResult:
        await self._known(p.session_id)
        return await self.bus.page(p.session_id, p.after_seq, p.limit, p.types)

    async def subscribe(self, p: SubscribeParams) -> SubscribeResult:
        await self._known(p.session_id)
        return await self.bus.subscribe(self.sink, p.session_id, p.after_seq, p.types)

    def unsubscribe(self, p: UnsubscribeParams) -> UnsubscribeResult:
        return UnsubscribeResult(self.bus.unsubscribe(p.subscription_id))


def _outcome(outcome: RunResult | errors.WarrenError | None) -> RunResult:
    if isinstance(outcome, RunResult):
        return outcome
    if outcome is None:
        raise errors.Agent("The turn ended without an outcome")
    raise errors.Replayed(errors.to_wire(outcome))
