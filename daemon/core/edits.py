"""Transcript surgery: fork, rewrite, restore, guarded append, and reading revisions.

Each edit is one store unit: it checks its guards (the session's head revision, a running
turn, the ancestor, the operation id), checks that the transcript it leaves is one a model
accepts (``validity``), writes only what changed (``store.transcripts``: pieces, never
copies), records the revision log, puts the session's pending tool calls and system-context
keys in line with the new transcript, and stores its ``transcript_changed`` event. An edit
that fails writes nothing. Only messages next to an edit are read to check it: the state
of tool calls after a user or assistant message depends on that message alone.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import msgspec

from warren.protocol.events import TranscriptChanged
from warren.protocol.types import (
    AppendParams,
    AppendResult,
    EditResult,
    ForkedFrom,
    ForkParams,
    ForkPoint,
    ForkResult,
    ImageBlock,
    ImageInput,
    ImagePart,
    Message,
    MessageInput,
    RestoreParams,
    RevisionPage,
    RevisionParams,
    RevisionsParams,
    RevisionsResult,
    RewriteParams,
    TextBlock,
    Block,
    Usage,
)

from .. import errors
from ..clock import new_id, now_ms
from ..store import Store, revisions, sessions, staging, transcripts
from ..store.transcripts import Path
from .events import EventBus, Numbered
from . import images
from .validity import Calls, Problem, text_of
from ..store import blobs as blob_rows

WINDOW = 16  # messages read at a time around an edit
_result_encoder = msgspec.json.Encoder()


def _hash(value: Any) -> str:
    return hashlib.sha256(_result_encoder.encode(value)).hexdigest()


def params_hash(params: msgspec.Struct) -> str:
    """What an idempotency key is checked against: the request's params without the key."""
    return _hash(msgspec.structs.replace(params, idempotency_key=None))  # type: ignore[call-arg]


async def _messages(
    db: Any, inputs: list[MessageInput], first_index: int, now: int, path: str, *, single: bool = False
) -> list[Message]:
    """The client's messages as stored ones: new images stored (once per hash), named ones
    checked to exist. ``path``: where the list (or, ``single``, the one message) is."""
    out = []
    for i, m in enumerate(inputs):
        where = path if single else f"{path}[{i}]"
        if isinstance(m.content, str):
            content: list[Block] = [TextBlock(m.content)]
        else:
            content = []
            for j, block in enumerate(m.content):
                content.append(await _image(db, block, f"{where}.content[{j}]", now)
                               if isinstance(block, ImagePart) else block)
        out.append(Message(first_index + i, m.role, content, now, new_id()))
    return out


async def _image(db: Any, part: ImagePart, where: str, now: int) -> ImageBlock:
    if part.data is not None:
        if part.mime_type is None:
            raise errors.InvalidRequest.at(f"{where}.mime_type", "required with data")
        block, (sha, mime, data) = images.decode(ImageInput(part.mime_type, part.data), where)
        await blob_rows.put(db, sha, mime, data, now)
        return block
    if part.sha256 is None:
        raise errors.InvalidRequest.at(where, "give data (a new image) or sha256 (a stored one)")
    stored = await blob_rows.get(db, part.sha256)
    if stored is None:
        raise errors.InvalidRequest.at(f"{where}.sha256", "no stored image has this hash")
    return ImageBlock(stored[0], part.sha256, len(stored[1]))


def _invalid(problems: list[Problem]) -> errors.InvalidRequest:
    return errors.InvalidRequest("Invalid params: " + problems[0]["message"] + f" (at {problems[0]['path']})", problems)


def _fit(calls: Calls, messages: list[Message], path: str, *, single: bool = False) -> None:
    """Carry ``calls`` over an edit's new messages, refusing them if any does not fit.
    ``path``: where the list (or, ``single``, the one message) is."""
    problems: list[Problem] = []
    for i, m in enumerate(messages):
        problems += calls.take(m, path if single else f"{path}[{i}]")
    if problems:
        raise _invalid(problems)


async def _calls_at(db: Any, path: Path, index: int) -> Calls:
    """The unanswered tool calls before message ``index``: from the last user or assistant
    message before it, read backwards a window at a time."""
    end = index
    window: list[Message] = []
    while end > 0:
        start = max(0, end - WINDOW)
        window = await transcripts.read(db, path, start, end - start) + window
        if any(m.role in ("user", "assistant") for m in window[: end - start]):
            break
        end = start
    anchor = max((i for i, m in enumerate(window) if m.role in ("user", "assistant")), default=0)
    calls = Calls()
    for m in window[anchor:]:
        calls.take(m, "$")
    return calls


async def _check_tail(db: Any, path: Path, start: int, calls: Calls, where: str) -> tuple[list[Problem], Calls | None]:
    """Carry ``calls`` over ``path``'s messages from ``start`` until a user or assistant
    message (from there on nothing changes). Returns the problems, and the calls pending
    at the end when the walk reached it (None: the end's pending calls are unchanged)."""
    index = start
    while index < path.count:
        for m in await transcripts.read(db, path, index, WINDOW):
            problems = calls.take(m, "$")
            if problems:
                return [{"path": where, "message": f"message {m.index} would no longer fit: {problems[0]['message']}"}], None
            if m.role in ("user", "assistant") and m.index + 1 < path.count:
                return [], None
            index = m.index + 1
    return [], calls


async def _settle(db: Any, row: sessions.SessionRow, path: Path, pending: Calls | None) -> None:
    """Bring what hangs off the transcript in line with it: the pending tool calls (a
    transcript ending in unanswered calls has them pending, as in the staged flow), the
    system-context keys it holds, the last assistant text, and the last compaction (dropped
    when the transcript no longer holds its summary: the model then sees every message).
    ``row``: the session's row as the unit read (or, for a fork, wrote) it."""
    session_id = row.session_id
    fields: dict[str, Any] = {}
    if row.compaction_summary is not None:
        where = await transcripts.find(db, row.compaction_summary)
        if where is None or path.index_of(*where) is None:
            fields.update(compaction_summary=None, compaction_keep_from=None)
    if pending is not None:
        await staging.clear_tool_state(db, session_id)
        if pending.unanswered:
            await staging.set_pending_tool_calls(db, session_id, pending.pending())
    await staging.keep_context_keys(db, session_id, await transcripts.keyed(db, path))
    tail = await transcripts.read(db, path, max(0, path.count - WINDOW), WINDOW)
    last = next((text_of(m) for m in reversed(tail) if m.role == "assistant"), None)
    await sessions.update_session(db, session_id, updated_at_ms=now_ms(), last_assistant_text=last, **fields)


async def compaction_boundary(db: Any, keep_from: str | None, summary: str | None, head: Path) -> int | None:
    """The index in ``head`` of the first message the model still sees after the session's
    last compaction (``keep_from``, else the ``summary`` message; what came before is
    summarised), or None."""
    marker = keep_from or summary
    if marker is None:
        return None
    where = await transcripts.find(db, marker)
    return None if where is None else head.index_of(*where)


class TranscriptEditor:
    def __init__(self, store: Store, bus: EventBus, not_while_running: Callable[[sessions.SessionRow, str], None]) -> None:
        self.store = store
        self.bus = bus
        self.not_while_running = not_while_running

    async def _write(self, unit: Callable[[Any, list[Numbered]], Any]) -> Any:
        """Run an edit's unit; its events go out once it has committed."""
        events: list[Numbered] = []

        async def run(db: Any) -> Any:
            events.clear()
            return await unit(db, events)

        result = await self.store.write(run)
        self.bus.deliver_committed(events)
        return result

    async def _editable(self, db: Any, session_id: str, expected: str | None, what: str) -> tuple[sessions.SessionRow, Path]:
        row = await sessions.get_session(db, session_id)
        if row is None or row.archived:
            raise errors.NotFound(session_id)
        self.not_while_running(row, what)
        path = Path.decode(row.pieces)
        if expected is not None and expected != path.revision:
            raise errors.RevisionConflict(session_id, path.revision)
        return row, path

    # ------------------------------------------------------------------ fork

    async def fork(self, p: ForkParams) -> ForkResult:
        key_hash = params_hash(p) if p.idempotency_key else None

        async def unit(db: Any, events: list[Numbered]) -> ForkResult:
            if p.idempotency_key is not None:
                made = await sessions.fork_key(db, p.idempotency_key)
                if made is not None:
                    if made[0] != key_hash:
                        raise errors.IdempotencyConflict(p.idempotency_key, made[1], "session")
                    return msgspec.json.decode(made[2], type=ForkResult)
            source = await sessions.get_session(db, p.session_id)
            if source is None:
                raise errors.NotFound(p.session_id)
            head = Path.decode(source.pieces)
            index = head.count if p.message_index is None else p.message_index
            if index > head.count:
                raise errors.InvalidRequest.at("$.message_index", f"must be at most message_count ({head.count})")
            if p.replacement is not None and index >= head.count:
                raise errors.InvalidRequest.at("$.message_index", "there is no message at message_index to replace")
            now = now_ms()
            session_id = new_id()
            pieces = await transcripts.cut(db, head, 0, index)
            calls = await _calls_at(db, head, index)
            if p.replacement is not None:
                replacement = await _messages(db, [p.replacement], index, now, "$.replacement", single=True)
                _fit(calls, replacement, "$.replacement", single=True)
            row = msgspec.structs.replace(
                source, session_id=session_id, created_at_ms=now, updated_at_ms=now, archived=False,
                message_count=0, usage=Usage.zero(), last_assistant_text=None, staged_prompt=None, next_seq=1,
                running_turn_id=None, running_owner=None, pieces="[]",
                labels=dict(source.labels if p.labels is None else p.labels),
                forked_from=ForkedFrom(p.session_id, index, head.revision),
            )
            await sessions.insert_session(db, row)
            path = transcripts.joined(pieces)
            if p.replacement is not None:
                path = transcripts.joined(pieces, [await transcripts.new_segment(db, session_id, replacement)])
            await transcripts.set_head(db, session_id, path)
            await revisions.record(db, session_id, "fork", head, path, now)
            await _settle(db, row, path, calls)
            events += await self.bus.append(
                db, session_id, [TranscriptChanged("fork", path.revision, path.count, head.revision)]
            )
            result = ForkResult(p.session_id, session_id, path.count, path.revision, ForkPoint(index, head.revision))
            if p.idempotency_key is not None:
                await sessions.remember_fork_key(db, p.idempotency_key, key_hash or "", session_id,
                                                 _result_encoder.encode(result).decode())
            return result

        result: ForkResult = await self._write(unit)
        return result

    # ------------------------------------------------------------------ rewrite and restore

    async def rewrite(self, p: RewriteParams) -> EditResult:
        async def unit(db: Any, events: list[Numbered]) -> EditResult:
            row, head = await self._editable(db, p.session_id, p.expected_revision, "rewrite it between turns")
            boundary = await compaction_boundary(db, row.compaction_keep_from, row.compaction_summary, head)
            if boundary is not None and p.start < boundary:
                raise errors.FailedWithData(
                    f"Messages before {boundary} were compacted: the model sees their summary, not them. "
                    "Fork the session before the boundary to edit them",
                    {"reason": "before_compaction_boundary", "session_id": p.session_id, "boundary": boundary},
                )
            if p.start > p.end:
                raise errors.InvalidRequest.at("$.start", f"must not be after end ({p.end})")
            if p.end > head.count:
                raise errors.InvalidRequest.at("$.end", f"must be at most message_count ({head.count})")
            now = now_ms()
            replacement = await _messages(db, p.replacement, p.start, now, "$.replacement")
            calls = await _calls_at(db, head, p.start)
            _fit(calls, replacement, "$.replacement")
            problems, pending = await _check_tail(db, head, p.end, calls, "$.end")
            if problems:
                raise _invalid(problems)
            parts = [await transcripts.cut(db, head, 0, p.start)]
            if replacement:
                parts.append([await transcripts.new_segment(db, p.session_id, replacement)])
            parts.append(await transcripts.cut(db, head, p.end, head.count))
            path = transcripts.joined(*parts)
            return await self._commit(db, events, row, "rewrite", head, path, pending, p.reason, p.actor, now)

        result: EditResult = await self._write(unit)
        return result

    async def restore(self, p: RestoreParams) -> EditResult:
        async def unit(db: Any, events: list[Numbered]) -> EditResult:
            row, head = await self._editable(db, p.session_id, p.expected_revision, "restore it between turns")
            if p.revision == head.revision:
                raise errors.FailedWithData(
                    "That revision is already the head: nothing to restore",
                    {"reason": "revision_is_head", "session_id": p.session_id, "revision": p.revision},
                )
            path = await revisions.retained(db, p.session_id, p.revision)
            if path is None:
                raise _not_retained(p.session_id, p.revision)
            pending = await _calls_at(db, path, path.count)
            return await self._commit(db, events, row, "restore", head, path, pending, p.reason, p.actor, now_ms())

        result: EditResult = await self._write(unit)
        return result

    async def _commit(
        self, db: Any, events: list[Numbered], row: sessions.SessionRow, kind: str, head: Path, path: Path,
        pending: Calls | None, reason: Any, actor: str | None, now: int,
    ) -> EditResult:
        session_id = row.session_id
        await transcripts.set_head(db, session_id, path)
        await revisions.record(db, session_id, kind, head, path, now, reason, actor)
        await _settle(db, row, path, pending)
        events += await self.bus.append(
            db, session_id, [TranscriptChanged(kind, path.revision, path.count, head.revision)]  # type: ignore[arg-type]
        )
        return EditResult(session_id, head.revision, path.revision, path.count)

    # ------------------------------------------------------------------ append

    async def append(self, p: AppendParams) -> AppendResult:
        messages_hash = _hash(p.messages)

        async def unit(db: Any, events: list[Numbered]) -> AppendResult:
            row, head = await self._editable(db, p.session_id, None, "append between turns")
            first = await staging.append_op(db, p.session_id, p.operation_id)
            if first is not None:
                if first[0] != messages_hash:
                    done = msgspec.json.decode(first[1], type=AppendResult)
                    raise errors.IdempotencyConflict(p.operation_id, done.message_ids[0], "message")
                return msgspec.structs.replace(msgspec.json.decode(first[1], type=AppendResult), status="duplicate")
            if p.requires_ancestor is not None:
                where = await transcripts.find(db, p.requires_ancestor)
                if where is None or head.index_of(*where) is None:
                    raise errors.StaleBranch(p.session_id, head.revision, p.requires_ancestor)
            now = now_ms()
            new = await _messages(db, p.messages, head.count, now, "$.messages")
            calls = await _calls_at(db, head, head.count)
            _fit(calls, new, "$.messages")
            path = await transcripts.append(db, p.session_id, new, head)
            await _settle(db, row, path, calls)
            events += await self.bus.append(
                db, p.session_id, [TranscriptChanged("append", path.revision, path.count, head.revision)]
            )
            result = AppendResult("appended", [m.message_id for m in new], path.revision, path.count)
            await staging.remember_append_op(db, p.session_id, p.operation_id, messages_hash,
                                             _result_encoder.encode(result).decode())
            return result

        result: AppendResult = await self._write(unit)
        return result

    # ------------------------------------------------------------------ reading

    async def revisions(self, p: RevisionsParams) -> RevisionsResult:
        async def read(db: Any) -> RevisionsResult:
            head = await _head(db, p.session_id)
            entries, more = await revisions.entries(db, p.session_id, p.offset, p.limit)
            return RevisionsResult(p.session_id, head.revision, entries, more)

        result: RevisionsResult = await self.store.read(read)
        return result

    async def revision(self, p: RevisionParams) -> RevisionPage:
        async def read(db: Any) -> RevisionPage:
            head = await _head(db, p.session_id)
            path = head if p.revision == head.revision else await revisions.retained(db, p.session_id, p.revision)
            if path is None:
                raise _not_retained(p.session_id, p.revision)
            messages = await transcripts.read(db, path, p.offset, p.limit)
            return RevisionPage(p.session_id, path.count, p.offset, p.limit, p.offset + len(messages) < path.count,
                                messages, path.revision, head.revision)

        result: RevisionPage = await self.store.read(read)
        return result


async def _head(db: Any, session_id: str) -> Path:
    """The session's current transcript, archived or not (reading history is allowed)."""
    head = await transcripts.head(db, session_id)
    if head is None:
        raise errors.NotFound(session_id)
    return head


def _not_retained(session_id: str, revision: str) -> errors.FailedWithData:
    return errors.FailedWithData(
        f"Revision {revision} of session {session_id!r} is not retained: only the head and the revisions "
        "named in session/revisions can be read or restored",
        {"reason": "revision_not_retained", "session_id": session_id, "revision": revision},
    )
