"""The official ACP Python SDK (``agent-client-protocol``, PyPI) drives ``warren acp`` as an editor
would: ``acp.spawn_agent_process`` starts the agent, a ``Client`` answers its requests and
collects its ``session/update`` notifications, and every message the agent writes is also
recorded raw (the SDK's stream observers) to check what the typed layer would smooth over:
ordering against responses, ``messageId`` on the wire, and the v1 JSON Schema.

Test names carry the ACP conformance kit's requirement ids (``agentclientprotocol/acp-tck``)
where one applies. Every wait is bounded; the module runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

acp = pytest.importorskip("acp", reason="the ACP Python SDK (agent-client-protocol) is a dev dependency: pip install -e '.[dev]'")

from acp import RequestError, text_block  # noqa: E402
from acp.connection import StreamDirection, StreamEvent  # noqa: E402
from acp.schema import (  # noqa: E402
    AllowedOutcome,
    AudioContentBlock,
    ClientCapabilities,
    EmbeddedResourceContentBlock,
    Implementation,
    McpServerStdio,
    RequestPermissionResponse,
    ResourceContentBlock,
    TextResourceContents,
)

from tests.acp_helpers import (
    MCP_ECHO,
    ROOT,
    SLOW_STEP,
    STREAMED_TEXT,
    agent_command,
    agent_env,
    schema_available,
    schema_violations,
    scripted,
    tool_step,
)

pytestmark = pytest.mark.anyio

TEST_TIMEOUT_S = 25.0
WAIT_S = 10.0
HISTORY_KINDS = ("user_message_chunk", "agent_message_chunk", "agent_thought_chunk")


class Editor:
    """The client side, as an editor would implement the SDK's ``Client`` interface: it answers
    ``session/request_permission`` from a queue of option kinds and records every update."""

    def __init__(self, answers: list[str] | None = None) -> None:
        self.answers = list(answers or [])
        self.updates: list[tuple[str, Any]] = []  # (sessionId, typed update)
        self.permission_requests: list[dict[str, Any]] = []
        self.wire_in: list[dict[str, Any]] = []  # every message the agent wrote, in order
        self.sent_methods: dict[Any, str] = {}  # request id -> method, for the schema check
        self.conn: Any = None

    # ---------------------------------------------------------------- the Client interface

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any) -> RequestPermissionResponse:
        self.permission_requests.append({"session_id": session_id, "tool_call": tool_call, "options": options})
        kind = self.answers.pop(0) if self.answers else "allow_once"
        chosen = next(o for o in options if o.kind == kind)  # as an editor would: by the option's kind
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=chosen.option_id))

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append((session_id, update))

    async def write_text_file(self, **kwargs: Any) -> Any:
        raise RequestError.method_not_found("fs/write_text_file")

    async def read_text_file(self, **kwargs: Any) -> Any:
        raise RequestError.method_not_found("fs/read_text_file")

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    # ---------------------------------------------------------------- the raw wire

    def observe(self, event: StreamEvent) -> None:
        msg = event.message
        if event.direction is StreamDirection.INCOMING:
            self.wire_in.append(msg)
        elif "method" in msg and "id" in msg:
            self.sent_methods[msg["id"]] = msg["method"]

    def kinds(self, session_id: str) -> list[str]:
        return [u.session_update for s, u in self.updates if s == session_id]

    def of(self, session_id: str, kind: str) -> list[Any]:
        return [u for s, u in self.updates if s == session_id and u.session_update == kind]

    def response_index(self, method: str, nth: int = -1) -> int:
        """Where in ``wire_in`` the agent answered the ``nth`` request of ``method``."""
        ids = [i for i, m in self.sent_methods.items() if m == method]
        wanted = ids[nth]
        for index, msg in enumerate(self.wire_in):
            if "method" not in msg and msg.get("id") == wanted:
                return index
        raise AssertionError(f"no response to {method} id {wanted}")

    def updates_between(self, start: int, end: int, session_id: str) -> list[dict[str, Any]]:
        return [m["params"]["update"] for m in self.wire_in[start:end]
                if m.get("method") == "session/update" and m["params"]["sessionId"] == session_id]

    def assert_schema_valid(self, only: frozenset[str] | None = None) -> None:
        """ACP-SCHEMA-001 over everything this agent wrote (or the messages of ``only``); the
        schema comes with the TypeScript SDK's package, so without npm this checks nothing."""
        if not schema_available():
            return
        problems = schema_violations(self.wire_in, self.sent_methods, only)
        assert not problems, "ACP-SCHEMA-001:\n" + "\n".join(problems)


async def until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def editor(tmp_path: Path, *, db: Path | None = None, answers: list[str] | None = None,
                 initialize: bool = True) -> AsyncIterator[tuple[Editor, Any]]:
    """Spawn ``warren acp`` through the SDK; yields (editor, ClientSideConnection). The agent's
    stderr goes to a file that is printed if the block fails."""
    ed = Editor(answers)
    log = tmp_path / f"agent-stderr-{os.urandom(3).hex()}.log"
    cmd = agent_command(db=db)
    with open(log, "wb") as err:
        try:
            async with acp.spawn_agent_process(ed, cmd[0], *cmd[1:], env=agent_env(), cwd=ROOT,
                                               transport_kwargs={"stderr": err, "shutdown_timeout": 3.0},
                                               observers=[ed.observe]) as (conn, _proc):
                if initialize:
                    await asyncio.wait_for(conn.initialize(protocol_version=1, client_capabilities=ClientCapabilities(),
                                                           client_info=Implementation(name="acp-python-judge", version="1")), WAIT_S)
                yield ed, conn
        except BaseException:
            print(f"--- warren acp stderr ({log}):\n{log.read_text(errors='replace')[-4000:]}")
            raise


async def new_session(conn: Any, cwd: str, *steps: dict[str, Any], mcp_servers: list[Any] | None = None) -> str:
    made = await asyncio.wait_for(conn.new_session(cwd=cwd, mcp_servers=mcp_servers or [], warren=scripted(*steps)), WAIT_S)
    assert isinstance(made.session_id, str) and made.session_id
    return made.session_id


async def prompt(conn: Any, session_id: str, text: str, **meta: Any) -> Any:
    return await asyncio.wait_for(conn.prompt(session_id=session_id, prompt=[text_block(text)], **meta), WAIT_S)


# ====================================================================== a. initialize


async def test_acp_init_001_002_004_initialize_v1_capabilities(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path, initialize=False) as (ed, conn):
        answer = await asyncio.wait_for(conn.initialize(protocol_version=1, client_capabilities=ClientCapabilities(),
                                                        client_info=Implementation(name="judge", version="1")), WAIT_S)
        assert answer.protocol_version == 1
        caps = answer.agent_capabilities
        assert caps.load_session is True
        sc = caps.session_capabilities
        assert sc is not None and None not in (sc.list, sc.resume, sc.close, sc.delete), sc
        assert answer.agent_info is not None and answer.agent_info.name and answer.agent_info.version
        raw = ed.wire_in[-1]["result"]
        assert set(raw["agentCapabilities"]["sessionCapabilities"]) >= {"list", "resume", "close", "delete"}
        assert not answer.auth_methods  # ACP-AUTH-005: nothing to authenticate, session/new is open


async def test_acp_init_003_unsupported_version_answered_with_1(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path, initialize=False) as (ed, conn):
        answer = await asyncio.wait_for(conn.initialize(protocol_version=65535, client_capabilities=ClientCapabilities()), WAIT_S)
        assert answer.protocol_version == 1
        assert ed.wire_in[-1]["result"]["protocolVersion"] == 1
        # and the connection is usable at version 1
        sid = await new_session(conn, str(tmp_path))
        assert (await prompt(conn, sid, "still there?")).stop_reason == "end_turn"


# ====================================================================== b, c. new and streaming


async def test_acp_session_001_002_prompt_001_002_streaming(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path), {"text": STREAMED_TEXT, "chunk_chars": 5})
        other = await new_session(conn, str(tmp_path))
        assert other != sid  # ACP-SESSION-002
        result = await prompt(conn, sid, "Say hello")
        assert result.stop_reason == "end_turn"
        assert result.usage is not None and result.usage.total_tokens > 0 and result.usage.output_tokens > 0
        chunks = ed.of(sid, "agent_message_chunk")
        assert len(chunks) > 5, chunks  # streamed, not one block
        assert "".join(c.content.text for c in chunks) == STREAMED_TEXT
        ids = {c.message_id for c in chunks}
        assert len(ids) == 1 and None not in ids, ids  # one message, its id on every chunk
        wire_chunks = [m["params"]["update"] for m in ed.wire_in
                       if m.get("method") == "session/update" and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"]
        assert all(isinstance(u.get("messageId"), str) and u["messageId"] for u in wire_chunks)
        # ACP-PROMPT-002: every update names the prompted session, and all came before the answer
        answered = ed.response_index("session/prompt")
        assert all(m["params"]["sessionId"] == sid for m in ed.wire_in if m.get("method") == "session/update")
        assert all(m.get("method") != "session/update" for m in ed.wire_in[answered + 1:])
        assert "usage_update" in ed.kinds(sid)
        assert [u.title for u in ed.of(sid, "session_info_update")] == ["Say hello"]


async def test_acp_prompt_003_promptcap_003_meta_001_resource_blocks_and_meta(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path))  # no script: the reply echoes the prompt
        blocks = [
            text_block("Read these:"),
            ResourceContentBlock(type="resource_link", name="notes.txt", uri="file:///tmp/notes.txt"),
            EmbeddedResourceContentBlock(type="resource", resource=TextResourceContents(uri="file:///tmp/a.py", text="print(1)")),
        ]
        result = await asyncio.wait_for(conn.prompt(session_id=sid, prompt=blocks,
                                                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), WAIT_S)
        assert result.stop_reason == "end_turn"
        reply = "".join(c.content.text for c in ed.of(sid, "agent_message_chunk"))
        assert reply.startswith("echo: Read these:") and "file:///tmp/notes.txt" in reply and "print(1)" in reply


async def test_acp_config_001_002_model_option(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        made = await asyncio.wait_for(conn.new_session(cwd=str(tmp_path), mcp_servers=[], warren=scripted()), WAIT_S)
        options = {o.id: o for o in made.config_options or []}  # the SDK skips entries that do not validate
        assert "model" in options
        model = options["model"]
        assert model.current_value in [v.value for v in model.options]
        changed = await asyncio.wait_for(conn.set_config_option(config_id="model", session_id=made.session_id, value="scripted-2"), WAIT_S)
        after = {o.id: o for o in changed.config_options or []}
        assert set(after) == set(options)  # the complete list, not only the changed option
        assert after["model"].current_value == "scripted-2"
        assert (await prompt(conn, made.session_id, "after the switch")).stop_reason == "end_turn"


# ====================================================================== e, f. cancel


async def test_acp_cancel_001_002_cancel_mid_turn(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path), SLOW_STEP)
        running = asyncio.create_task(prompt(conn, sid, "talk slowly"))
        await until(lambda: ed.of(sid, "agent_message_chunk"), "the first agent_message_chunk")
        await conn.cancel(session_id=sid)
        result = await asyncio.wait_for(running, WAIT_S)
        assert result.stop_reason == "cancelled"
        streamed = "".join(c.content.text for c in ed.of(sid, "agent_message_chunk"))
        assert 0 < len(streamed) < len(SLOW_STEP["text"])
        # ACP-CANCEL-002: nothing for the session after the answer (a bounded quiet period)
        answered = ed.response_index("session/prompt")
        await asyncio.sleep(0.3)
        assert not ed.updates_between(answered + 1, len(ed.wire_in), sid)


async def test_late_cancel_does_not_stop_the_next_prompt(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path), {"text": "first answer"})
        assert (await prompt(conn, sid, "one")).stop_reason == "end_turn"
        await conn.cancel(session_id=sid)  # late: the prompt it meant has already answered
        second = await prompt(conn, sid, "two")  # sent right behind the cancel
        assert second.stop_reason == "end_turn"
        await conn.cancel(session_id=sid)
        await asyncio.sleep(0.1)  # the cancel has surely been read before this prompt
        third = await prompt(conn, sid, "three")
        assert third.stop_reason == "end_turn"
        texts = "".join(c.content.text for c in ed.of(sid, "agent_message_chunk"))
        assert texts == "first answer" + "echo: two" + "echo: three"


# ====================================================================== g. list


async def test_acp_list_001_002_list_filter_and_cursor(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        mine = [await new_session(conn, str(here)) for _ in range(2)]
        theirs = [await new_session(conn, str(there)) for _ in range(52)]
        listed = await asyncio.wait_for(conn.list_sessions(cwd=str(here)), WAIT_S)
        assert {s.session_id for s in listed.sessions} == set(mine)
        assert all(s.cwd == str(here) for s in listed.sessions)
        assert listed.next_cursor is None
        empty = await asyncio.wait_for(conn.list_sessions(cwd=str(tmp_path / "nobody")), WAIT_S)
        assert empty.sessions == [] and ed.wire_in[-1]["result"]["sessions"] == []  # ACP-LIST-002
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(5):  # 54 sessions: two pages of at most 50
            page = await asyncio.wait_for(conn.list_sessions(cursor=cursor), WAIT_S)
            assert len(page.sessions) <= 50
            seen += [s.session_id for s in page.sessions]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 54
        assert set(seen) == set(mine) | set(theirs)
        with pytest.raises(RequestError) as bad:
            await asyncio.wait_for(conn.list_sessions(cursor="not-a-cursor"), WAIT_S)
        assert bad.value.code == -32602


# ====================================================================== h, i. load, resume, close


async def test_acp_load_001_002_replay_in_a_new_process(tmp_path: Path) -> None:
    db = tmp_path / "warren.db"
    async with asyncio.timeout(TEST_TIMEOUT_S):
        async with editor(tmp_path, db=db) as (ed, conn):
            sid = await new_session(conn, str(tmp_path), {"text": "world, streamed", "chunk_chars": 3})
            assert (await prompt(conn, sid, "hello")).stop_reason == "end_turn"
        async with editor(tmp_path, db=db) as (ed, conn):  # a new agent process on the same file
            start = len(ed.wire_in)
            loaded = await asyncio.wait_for(conn.load_session(cwd=str(tmp_path), session_id=sid, mcp_servers=[]), WAIT_S)
            assert loaded is not None
            answered = ed.response_index("session/load")
            replay = ed.updates_between(start, answered, sid)
            users = [u for u in replay if u["sessionUpdate"] == "user_message_chunk"]
            agents = [u for u in replay if u["sessionUpdate"] == "agent_message_chunk"]
            assert "".join(u["content"]["text"] for u in users) == "hello"
            assert "".join(u["content"]["text"] for u in agents) == "world, streamed"
            assert replay.index(users[0]) < replay.index(agents[0])
            assert isinstance(ed.wire_in[answered]["result"], dict)  # ACP-LOAD-003: {} not null
            await asyncio.sleep(0.2)
            assert not ed.updates_between(answered + 1, len(ed.wire_in), sid)  # ACP-LOAD-002
            again = await prompt(conn, sid, "and now?")
            assert again.stop_reason == "end_turn"
            after = ed.updates_between(answered + 1, len(ed.wire_in), sid)
            assert "".join(u["content"]["text"] for u in after if u["sessionUpdate"] == "agent_message_chunk") == "echo: and now?"
    

async def test_acp_resume_001_002_close_001_in_a_new_process(tmp_path: Path) -> None:
    db = tmp_path / "warren.db"
    async with asyncio.timeout(TEST_TIMEOUT_S):
        async with editor(tmp_path, db=db) as (ed, conn):
            sid = await new_session(conn, str(tmp_path), {"text": "remembered"})
            assert (await prompt(conn, sid, "remember this")).stop_reason == "end_turn"
        async with editor(tmp_path, db=db) as (ed, conn):
            start = len(ed.wire_in)
            resumed = await asyncio.wait_for(conn.resume_session(session_id=sid, cwd=str(tmp_path)), WAIT_S)
            assert resumed is not None
            answered = ed.response_index("session/resume")
            history = [u for u in ed.updates_between(start, answered, sid) if u["sessionUpdate"] in HISTORY_KINDS]
            assert history == []  # resume does not replay
            assert (await prompt(conn, sid, "continue")).stop_reason == "end_turn"
            assert "".join(c.content.text for c in ed.of(sid, "agent_message_chunk")) == "echo: continue"
            closed = await asyncio.wait_for(conn.close_session(session_id=sid), WAIT_S)
            assert closed is not None
            assert ed.wire_in[ed.response_index("session/close")]["result"] == {}
            listed = await asyncio.wait_for(conn.list_sessions(cwd=str(tmp_path)), WAIT_S)
            assert sid in {s.session_id for s in listed.sessions}  # closed, still listed
    

async def test_acp_close_002_close_cancels_the_prompt_in_flight(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path), SLOW_STEP)
        running = asyncio.create_task(prompt(conn, sid, "talk slowly"))
        await until(lambda: ed.of(sid, "agent_message_chunk"), "the first agent_message_chunk")
        await asyncio.wait_for(conn.close_session(session_id=sid), WAIT_S)
        assert (await asyncio.wait_for(running, WAIT_S)).stop_reason == "cancelled"


async def test_acp_delete_001_deleted_session_leaves_the_list(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        keep, drop = await new_session(conn, str(tmp_path)), await new_session(conn, str(tmp_path))
        # the SDK's ClientSideConnection has no delete helper yet: the same connection, raw
        ed.sent_methods[conn._conn._next_request_id] = "session/delete"
        assert await asyncio.wait_for(conn._conn.send_request("session/delete", {"sessionId": drop}), WAIT_S) == {}
        listed = await asyncio.wait_for(conn.list_sessions(cwd=str(tmp_path)), WAIT_S)
        assert {s.session_id for s in listed.sessions} == {keep}


# ====================================================================== j. errors


async def test_errors_audio_unknown_session_and_warren_methods(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path))
        with pytest.raises(RequestError) as audio:
            await asyncio.wait_for(conn.prompt(session_id=sid, prompt=[AudioContentBlock(type="audio", data="UklGRg==", mime_type="audio/wav")]), WAIT_S)
        assert audio.value.code == -32602
        assert "$.prompt[0].type" in str(audio.value) or "$.prompt[0].type" in repr(audio.value.data)
        assert [e["path"] for e in audio.value.data["errors"]] == ["$.prompt[0].type"]

        with pytest.raises(RequestError) as unknown:
            await prompt(conn, "no-such-session", "hello?")
        assert unknown.value.code == -32002
        assert unknown.value.data["code"] == "SESSION_NOT_FOUND"  # Warren's data kept

        with pytest.raises(RequestError) as load_unknown:
            await asyncio.wait_for(conn.load_session(cwd=str(tmp_path), session_id="no-such-session"), WAIT_S)
        assert load_unknown.value.code == -32002

        for method in ("session/read", "session/create", "turn/start"):
            with pytest.raises(RequestError) as warren_v1:
                await asyncio.wait_for(conn._conn.send_request(method, {"session_id": sid}), WAIT_S)
            assert warren_v1.value.code == -32601, method

        with pytest.raises(RequestError) as ext:  # ACP-EXT-001: an `_` method gets an answer
            await asyncio.wait_for(conn.ext_method("warren.judge/unknown", {}), WAIT_S)
        assert ext.value.code == -32601

        # ACP-JSONRPC-005: the connection still serves
        assert (await prompt(conn, sid, "still fine")).stop_reason == "end_turn"
        for msg in ed.wire_in:  # ACP-ERROR-001: one-line messages
            if "error" in msg:
                assert msg["error"]["message"] and "\n" not in msg["error"]["message"]


# ====================================================================== the whole exchange, schema-checked


async def test_acp_schema_001_every_message_validates(tmp_path: Path) -> None:
    """Every message the agent writes through new, streaming, config, cancel, list, close,
    delete, errors, and then load and resume in a second process validates against the
    official ACP v1 JSON Schema."""
    db = tmp_path / "warren.db"
    async with asyncio.timeout(TEST_TIMEOUT_S):
        async with editor(tmp_path, db=db) as (first, conn):
            sid = await new_session(conn, str(tmp_path), {"text": STREAMED_TEXT, "chunk_chars": 7, "reasoning": "hmm"}, SLOW_STEP)
            await prompt(conn, sid, "stream please")
            await asyncio.wait_for(conn.set_config_option(config_id="model", session_id=sid, value="scripted-2"), WAIT_S)
            running = asyncio.create_task(prompt(conn, sid, "slowly"))
            await until(lambda: len(first.of(sid, "agent_message_chunk")) > 10, "the slow step's first chunk")
            await conn.cancel(session_id=sid)
            await asyncio.wait_for(running, WAIT_S)
            await asyncio.wait_for(conn.list_sessions(), WAIT_S)
            spare = await new_session(conn, str(tmp_path))
            first.sent_methods[conn._conn._next_request_id] = "session/delete"
            await asyncio.wait_for(conn._conn.send_request("session/delete", {"sessionId": spare}), WAIT_S)
            with pytest.raises(RequestError):
                await asyncio.wait_for(conn.prompt(session_id=sid, prompt=[AudioContentBlock(type="audio", data="AA==", mime_type="audio/wav")]), WAIT_S)
            with pytest.raises(RequestError):
                await prompt(conn, "no-such-session", "x")
            with pytest.raises(RequestError):
                await asyncio.wait_for(conn._conn.send_request("session/read", {}), WAIT_S)
            await asyncio.wait_for(conn.close_session(session_id=sid), WAIT_S)
        async with editor(tmp_path, db=db) as (second, conn):
            await asyncio.wait_for(conn.load_session(cwd=str(tmp_path), session_id=sid, mcp_servers=[]), WAIT_S)
            await asyncio.wait_for(conn.resume_session(session_id=sid, cwd=str(tmp_path)), WAIT_S)
            await prompt(conn, sid, "after load")
        problems = [*schema_violations(first.wire_in, first.sent_methods), *schema_violations(second.wire_in, second.sent_methods)] \
            if schema_available() else None
    if problems is None:
        pytest.skip("the ACP v1 JSON Schema comes with the TypeScript SDK: npm ci --prefix tests/acp_ts")
    assert {u.session_update for _, u in first.updates} >= {"agent_message_chunk", "agent_thought_chunk", "usage_update", "session_info_update"}
    assert not problems, "ACP-SCHEMA-001:\n" + "\n".join(problems)


# ====================================================================== d. a tool call through MCP

async def test_a_tool_nobody_serves_fails_and_the_session_goes_on(tmp_path: Path) -> None:
    """An ACP client cannot run tools itself (no ``session/stage_tool_results`` in ACP): a call
    to a tool no MCP server offers must end as a failed tool call, not as a pending client call
    that leaves the session refusing every later prompt."""
    async with asyncio.timeout(TEST_TIMEOUT_S), editor(tmp_path) as (ed, conn):
        sid = await new_session(conn, str(tmp_path), tool_step("call-x", "hi", name="nosuch__tool"), {"text": "recovered"})
        first = await prompt(conn, sid, "call something")
        assert first.stop_reason == "end_turn"
        assert [u.status for u in tool_updates(ed, sid, "call-x")][-1] == "failed"
        second = await prompt(conn, sid, "and now?")
        assert second.stop_reason == "end_turn"


def echo_server() -> McpServerStdio:
    return McpServerStdio(name="t", command=sys.executable, args=[str(MCP_ECHO)], env=[])


def tool_updates(ed: Editor, sid: str, call_id: str) -> list[Any]:
    return [u for s, u in ed.updates if s == sid and u.session_update in ("tool_call", "tool_call_update")
            and u.tool_call_id == call_id]


async def test_tool_call_through_mcp_with_permission_always_remembered(tmp_path: Path) -> None:
    pytest.importorskip("mcp", reason="the MCP test server needs the `mcp` SDK (a dev dependency)")
    db = tmp_path / "warren.db"
    async with asyncio.timeout(TEST_TIMEOUT_S):
        async with editor(tmp_path, db=db, answers=["allow_always", "reject_once"]) as (ed, conn):
            sid = await new_session(conn, str(tmp_path), tool_step("call-1", "hi"), {"text": "done"},
                                    tool_step("call-2", "again"), {"text": "done again"}, mcp_servers=[echo_server()])
            first = await prompt(conn, sid, "use the tool")
            assert first.stop_reason == "end_turn"
            assert len(ed.permission_requests) == 1
            asked = ed.permission_requests[0]
            assert asked["session_id"] == sid and asked["tool_call"].tool_call_id == "call-1"
            assert {o.kind for o in asked["options"]} == {"allow_once", "allow_always", "reject_once", "reject_always"}
            calls = tool_updates(ed, sid, "call-1")
            assert calls[0].session_update == "tool_call" and calls[0].status == "pending" and calls[0].kind is not None
            assert calls[0].raw_input == {"text": "hi"}
            assert calls[-1].session_update == "tool_call_update" and calls[-1].status == "completed"
            assert "in_progress" in [c.status for c in calls]
            assert "hi" in repr(calls[-1].raw_output)
            # the permission request came after the pending tool_call and before it ran
            wire = [m for m in ed.wire_in if m.get("method") in ("session/update", "session/request_permission")]
            order = [m["method"] if m["method"] != "session/update" else m["params"]["update"].get("status")
                     for m in wire if m["method"] == "session/request_permission" or m["params"]["update"].get("toolCallId") == "call-1"]
            assert order.index("session/request_permission") < order.index("in_progress"), order
            assert "".join(c.content.text for c in ed.of(sid, "agent_message_chunk")) == "done"

            second = await prompt(conn, sid, "again")
            assert second.stop_reason == "end_turn"
            assert len(ed.permission_requests) == 1  # "always" was remembered for the session
            assert tool_updates(ed, sid, "call-2")[-1].status == "completed"

            rejected = await new_session(conn, str(tmp_path), tool_step("call-3", "no"), {"text": "ok, I won't"},
                                         mcp_servers=[echo_server()])
            third = await prompt(conn, rejected, "try it")
            assert third.stop_reason == "end_turn"
            assert len(ed.permission_requests) == 2
            assert tool_updates(ed, rejected, "call-3")[-1].status == "failed"
            ed.assert_schema_valid(frozenset({"session/update", "session/request_permission"}))

        async with editor(tmp_path, db=db) as (ed, conn):  # load in a new process: tool calls replayed
            start = len(ed.wire_in)
            await asyncio.wait_for(conn.load_session(cwd=str(tmp_path), session_id=sid, mcp_servers=[echo_server()]), WAIT_S)
            replay = ed.updates_between(start, ed.response_index("session/load"), sid)
            replayed_calls = {u["toolCallId"]: u for u in replay if u["sessionUpdate"] == "tool_call"}
            assert replayed_calls["call-1"]["status"] == "completed"
            assert replayed_calls["call-2"]["status"] == "completed"
            ed.assert_schema_valid(frozenset({"session/update", "session/request_permission"}))
