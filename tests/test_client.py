"""warren.client, the library for plugin authors and scripts: through the real daemon process
(spawned by the library, or by the test and attached to), on the offline scripted provider."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from typing import Any, AsyncIterator

import anyio
import msgspec
import pytest

from tests.daemon_client import ROOT, hermetic_env, script
from warren.client import (
    Client,
    InvalidParams,
    SessionNotFound,
    TransportError,
    UnknownEvent,
    WarrenError,
    attach,
    decode_event,
    event_type,
    spawn,
)
from warren.client import errors
from warren.client.methods import Methods
from warren.protocol import errors as codes
from warren.protocol.events import TextDelta, TurnCompleted
from warren.protocol.methods import METHODS
from warren.protocol.types import DeferredCreateResult, RunResult, ToolDef, ToolExecuteParams, ToolExecuteResult

pytestmark = pytest.mark.anyio
WAIT_S = 20
ENDS = ("turn_completed", "turn_failed")


def env() -> dict[str, str]:
    return {**hermetic_env(), "PYTHONPATH": str(ROOT)}


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    with anyio.fail_after(WAIT_S):
        async with spawn(ephemeral=True, env=env()) as c:
            yield c


async def deferred(c: Client, *steps: dict[str, Any], **params: Any) -> str:
    made = await c.session_create(provider="scripted", initial_turn="defer", provider_params=script(*steps), **params)
    assert isinstance(made, DeferredCreateResult)
    return made.session_id


# ---------------------------------------------------------------- the methods


def method_name(method: str) -> str:
    return method.replace("/", "_").replace(".", "_")


def test_one_method_per_protocol_method_whose_arguments_are_its_params() -> None:
    for method, spec in METHODS.items():
        fn = getattr(Client, method_name(method), None)
        assert fn is not None, f"no Client method for {method}"
        args = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        assert sorted(args) == sorted(f.name for f in msgspec.structs.fields(spec.params)), method
        # Several methods share a params type (session/read, session/archive): the name sent decides.
        sender = inspect.getsource(getattr(Methods, method_name(method)))
        assert f'"{method}"' in sender, f"{method_name(method)} does not send {method}"


def test_the_client_never_imports_the_daemon() -> None:
    code = "import sys, warren.client; print(sorted(m for m in sys.modules if m.startswith('warren.daemon')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env()).stdout
    assert out.strip() == b"[]"


async def test_spawn_and_initialize(client: Client) -> None:
    info = await client.initialize()
    assert info.server_info.name == "warren"
    assert info.capabilities.methods == list(METHODS)
    assert "scripted" in info.capabilities.providers
    status = await client.daemon_status()
    assert status.store == "ok" and status.running_turns == 0


# ---------------------------------------------------------------- turns and events


async def test_a_turn_streams_its_deltas_while_turn_start_is_awaited(client: Client) -> None:
    sid = await deferred(client, {"text": "streamed in pieces", "chunk_chars": 3, "delay_ms": 5})
    result: list[RunResult] = []
    deltas: list[str] = []
    async with client.events(session_id=sid) as events, anyio.create_task_group() as tg:

        async def run() -> None:
            result.append(await client.turn_start(session_id=sid, prompt="go"))

        tg.start_soon(run)
        with anyio.fail_after(WAIT_S):
            async for event in events:
                if isinstance(event.event, TextDelta):
                    assert not result, "a delta came after the turn's answer"
                    deltas.append(event.event.delta)
                if event_type(event) in ENDS:
                    break
    assert isinstance(event.event, TurnCompleted) and event.event.stop_reason == "end_turn"
    assert len(deltas) == 6 and "".join(deltas) == "streamed in pieces" == result[0].text
    stored = await client.session_events(session_id=sid, types=["text_delta"])
    assert [e.event.delta for e in stored.events] == deltas  # type: ignore[union-attr]
    history = await client.session_history(session_id=sid)
    assert [m.role for m in history.messages] == ["user", "assistant"]


async def test_session_create_runs_its_first_turn_and_filters_by_type(client: Client) -> None:
    async with client.events(types=["turn_completed"]) as ends:
        made = await client.session_create(provider="scripted", prompt="hello")
        assert isinstance(made, RunResult) and made.text == "echo: hello"
        with anyio.fail_after(WAIT_S):
            end = await ends.__anext__()
    # turn_started carries the same ids: only the type shows that the filter worked.
    assert isinstance(end.event, TurnCompleted)
    assert end.session_id == made.session_id and end.turn_id == made.turn_id


async def test_cancelling_turn_start_interrupts_the_turn(client: Client) -> None:
    sid = await deferred(client, {"text": "x" * 200, "chunk_chars": 1, "delay_ms": 20})
    async with client.events(session_id=sid) as events:
        with anyio.move_on_after(0.5):
            await client.turn_start(session_id=sid, prompt="go")
        with anyio.fail_after(WAIT_S):
            async for event in events:
                if event_type(event) in ENDS:
                    break
    assert isinstance(event.event, TurnCompleted) and event.event.stop_reason == "interrupted"


async def test_turn_yields_the_turns_events_then_its_result(client: Client) -> None:
    sid = await deferred(client, {"text": "abcdefghij", "chunk_chars": 3})
    with anyio.fail_after(WAIT_S):
        async with client.turn(session_id=sid, prompt="go") as run:
            events = [event async for event in run]
            result = await run.result()
    assert [event_type(e) for e in events] == ["turn_started", "text_delta", "text_delta", "text_delta", "text_delta",
                                               "usage", "turn_completed"]
    assert "".join(e.event.delta for e in events if isinstance(e.event, TextDelta)) == "abcdefghij"
    assert isinstance(result, RunResult) and result.text == "abcdefghij" and run.done
    assert {e.turn_id for e in events} == {result.turn_id}


async def test_turn_that_is_refused_ends_at_once_and_raises_from_result(client: Client) -> None:
    with anyio.fail_after(WAIT_S):
        async with client.turn(session_id="no-such-session", prompt="go") as run:
            assert [event async for event in run] == []
            with pytest.raises(SessionNotFound) as caught:
                await run.result()
    assert caught.value.data["session_id"] == "no-such-session"


async def test_leaving_a_turn_early_interrupts_it(client: Client) -> None:
    sid = await deferred(client, {"text": "x" * 200, "chunk_chars": 1, "delay_ms": 20})
    with anyio.fail_after(WAIT_S):
        async with client.turn(session_id=sid, prompt="go") as run:
            async for event in run:
                if isinstance(event.event, TextDelta):
                    break
        while (await client.session_read(session_id=sid)).state.is_active:
            await anyio.sleep(0.05)
    page = await client.session_history(session_id=sid)
    assert page.messages[-1].role == "assistant"
    assert 0 < len(page.messages[-1].content[0].text) < 200  # what was streamed, committed when it stopped


def test_an_event_of_an_unknown_type_is_kept_not_fatal() -> None:
    params = {"session_id": "s", "turn_id": None, "seq": 9, "timestamp_ms": 1, "event": {"type": "telepathy", "x": 1}}
    event = decode_event(params)
    assert isinstance(event.event, UnknownEvent) and event_type(event) == "telepathy"
    assert event.event.fields == params["event"] and event.seq == 9


# ---------------------------------------------------------------- errors


async def test_errors_are_exceptions_carrying_data(client: Client) -> None:
    with pytest.raises(SessionNotFound) as caught:
        await client.session_read(session_id="no-such-session")
    error = caught.value
    assert error.code == codes.SESSION_NOT_FOUND and error.string_code == "SESSION_NOT_FOUND"
    assert error.data == {"code": "SESSION_NOT_FOUND", "retryable": False, "session_id": "no-such-session"}
    assert error.session_id == "no-such-session" and not error.retryable
    with pytest.raises(InvalidParams) as bad:
        await client.session_list(limit=5000)
    assert bad.value.errors == [{"path": "$.limit", "message": "Expected `int` <= 1000"}]
    with pytest.raises(errors.MethodNotFound) as missing:
        await client.request("session/lst")
    assert missing.value.data["method"] == "session/lst"
    assert (await client.request("session/list", {"limit": 1})) == {"sessions": [], "has_more": False}


def test_every_error_code_has_its_class_and_unknown_ones_fall_back_to_their_number() -> None:
    for string_code, number in codes.CODES.items():
        exc = errors.error_from_object({"code": number, "message": "m", "data": {"code": string_code, "retryable": False}})
        assert exc.STRING_CODE == string_code and exc.code == number and exc.message == "m"
    newer = errors.error_from_object({"code": -32001, "message": "m", "data": {"code": "SESSION_MOVED_TO_MARS"}})
    assert type(newer) is errors.SessionNotFound and newer.string_code == "SESSION_MOVED_TO_MARS"
    odd = errors.error_from_object({"code": -1, "message": "m", "data": {"code": "WHAT"}})
    assert type(odd) is WarrenError and odd.data == {"code": "WHAT"}
    shared = errors.error_from_object({"code": codes.INVALID_REQUEST, "message": "m", "data": {"code": "TOO_ODD"}})
    assert type(shared) is errors.InvalidRequest  # -32600 is MESSAGE_TOO_LARGE's too: the generic class wins
    assert issubclass(errors.MessageTooLarge, errors.InvalidRequest)
    assert issubclass(errors.SessionBusy, errors.SessionFault)


# ---------------------------------------------------------------- client tools


async def test_a_client_tool_is_answered_by_the_registered_handler() -> None:
    seen: list[ToolExecuteParams] = []

    async def run_tool(call: ToolExecuteParams) -> ToolExecuteResult | str:
        seen.append(call)
        if call.arguments["path"] == "missing":
            raise FileNotFoundError("no such file")
        return ToolExecuteResult(content=f"contents of {call.arguments['path']}")

    read = ToolDef(name="read_file", input_schema={"type": "object", "properties": {"path": {"type": "string"}}})
    steps = (
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}, {"name": "read_file", "arguments": {"path": "missing"}}]},
        {"text": "done"},
    )
    with anyio.fail_after(WAIT_S):
        async with spawn(ephemeral=True, env=env(), tool_handler=run_tool) as c:
            await c.initialize()  # declares tool_execute: a handler is registered
            sid = await deferred(c, *steps, tools=[read])
            async with c.events(session_id=sid, types=["tool_execution_completed"]) as done:
                result = await c.turn_start(session_id=sid, prompt="read them")
                completed = [await done.__anext__(), await done.__anext__()]
    assert result.text == "done" and [s.arguments["path"] for s in seen] == ["a.py", "missing"]
    outputs = {e.event.content: e.event.is_error for e in completed}  # type: ignore[union-attr]
    assert outputs["contents of a.py"] is False
    assert any(is_error and "no such file" in text for text, is_error in outputs.items())


async def test_a_tool_the_daemon_withdraws_is_cancelled_in_the_handler() -> None:
    started, cancelled = anyio.Event(), anyio.Event()

    async def hang(call: ToolExecuteParams) -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return "never"

    read = ToolDef(name="read_file", input_schema={"type": "object"})
    with anyio.fail_after(WAIT_S):
        async with spawn(ephemeral=True, env=env(), tool_handler=hang) as c:
            await c.initialize()
            sid = await deferred(c, {"tool_calls": [{"name": "read_file", "arguments": {}}]}, {"text": "gave up"},
                                 tools=[read], tool_timeout_ms=300)
            result = await c.turn_start(session_id=sid, prompt="go")
            await cancelled.wait()
    assert started.is_set() and result.text == "gave up"


# ---------------------------------------------------------------- attaching, and a daemon that dies


async def test_attach_to_a_daemon_spawned_by_the_caller(tmp_path: Any) -> None:
    child_in, our_in = os.pipe()
    our_out, child_out = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "warren.daemon", "serve", "--db", str(tmp_path / "w.db")],
                            stdin=child_in, stdout=child_out, stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
    os.close(child_in)
    os.close(child_out)
    try:
        with anyio.fail_after(WAIT_S):
            async with attach(our_out, our_in) as c:  # the client owns (and closes) our ends
                made = await c.session_create(provider="scripted", prompt="attached")
                assert isinstance(made, RunResult) and made.text == "echo: attached"
                listed = await c.session_list()
                assert [s.session_id for s in listed.sessions] == [made.session_id]
        assert proc.wait(10) == 0  # leaving the block closed its stdin: it shut down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_attach_over_anyio_process_streams() -> None:
    process = await anyio.open_process([sys.executable, "-m", "warren.daemon", "serve", "--ephemeral"],
                                       env=env(), stderr=subprocess.DEVNULL)
    async with process:
        assert process.stdout is not None and process.stdin is not None
        with anyio.fail_after(WAIT_S):
            async with attach(process.stdout, process.stdin) as c:
                assert (await c.shutdown()) is not None
            assert await process.wait() == 0


async def test_the_daemon_dying_mid_request_raises_the_transport_error() -> None:
    with anyio.fail_after(WAIT_S):
        async with spawn(ephemeral=True, env=env()) as c:
            sid = await deferred(c, {"text": "y" * 500, "chunk_chars": 1, "delay_ms": 10})
            events = c.events(session_id=sid)
            async with anyio.create_task_group() as tg:

                async def kill_once_streaming() -> None:
                    async for _ in events:
                        c.process.kill()
                        return

                tg.start_soon(kill_once_streaming)
                with pytest.raises(TransportError):
                    await c.turn_start(session_id=sid, prompt="go")
            with pytest.raises(TransportError):
                async for _ in events:  # what was buffered, then the same failure
                    pass
            with pytest.raises(TransportError):
                await c.session_list()
        assert c.process.returncode is not None and c.process.returncode < 0


def test_the_readme_example_works_when_pasted() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Client library"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python\n") + 1)]
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, env=env())
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "echo: hello warren"
    assert lines[1] == "{'code': 'SESSION_NOT_FOUND', 'retryable': False, 'session_id': 'no-such-session'}"
