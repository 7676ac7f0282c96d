"""Warren's MCP client (``daemon/mcp``) against independent peers: a server written with the
official SDK (``tests/fakes/mcp_server.py``, over stdio and streamable HTTP), the npm
reference server ``@modelcontextprotocol/server-everything`` where Node is present (over
stdio and streamable HTTP too), and two
hand-written fakes that show exactly what the client sends (``mcp_raw_server.py``) and
answer what the SDK will not (``mcp_http_fake.py``: HTTP 500s).
"""

from __future__ import annotations

import base64

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import anyio
import msgspec
import pytest

from warren.daemon.mcp import McpCallResult, McpError, McpManager, McpServerSpec, McpTool
from warren.daemon.core.tools import mcp_tool_name
from warren.daemon.mcp.content import to_call_result
from tests.fakes.mcp_http_fake import FakeMcpHttp

pytestmark = pytest.mark.anyio

FAKES = Path(__file__).parent / "fakes"
SDK_SERVER = str(FAKES / "mcp_server.py")
RAW_SERVER = str(FAKES / "mcp_raw_server.py")
#: The 1x1 PNG the SDK fake returns.
PNG_SIZE = 68

EVERYTHING_VERSION = "2026.8.31"
EVERYTHING_PACKAGE = "@modelcontextprotocol/server-everything"


def sdk_spec(name: str = "fake", **kw: Any) -> McpServerSpec:
    return McpServerSpec(name, command=sys.executable, args=(SDK_SERVER,), **kw)


def raw_spec(name: str = "raw", *args: str, **kw: Any) -> McpServerSpec:
    return McpServerSpec(name, command=sys.executable, args=(RAW_SERVER, *args), **kw)


class Lines:
    """The ``log_stderr`` callback: every (server, line), and a way to wait for one."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._changed = anyio.Event()

    def __call__(self, server: str, line: str) -> None:
        self.lines.append((server, line))
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, server: str) -> list[str]:
        return [line for name, line in self.lines if name == server]

    def count(self, server: str, text: str) -> int:
        return sum(text in line for line in self.of(server))

    async def wait_for(self, server: str, text: str, count: int = 1, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while self.count(server, text) < count:
                await self._changed.wait()


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[McpManager, Lines]]:
    lines = Lines()
    manager = McpManager(log_stderr=lines, **kw)
    async with anyio.create_task_group() as tasks:
        await tasks.start(manager.run)
        try:
            yield manager, lines
        finally:
            tasks.cancel_scope.cancel()


def gone(pid: int) -> bool:
    """The process is gone, reaped too (a zombie still answers kill 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def status(manager: McpManager, name: str) -> Any:
    (found,) = [s for s in manager.servers() if s.name == name]
    return found


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[tuple[McpManager, Lines]]:
    """One manager (and one SDK server process) for the tests that do not break it."""
    async with running() as pair:
        yield pair


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sdk_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The SDK fake served over streamable HTTP: (url, its stderr file)."""
    port = _free_port()
    err = tmp_path_factory.mktemp("mcp-http") / "stderr.log"
    with open(err, "wb") as f:
        proc = subprocess.Popen([sys.executable, SDK_SERVER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the SDK HTTP server did not start: {err.read_text()[-2000:]}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp", err
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _everything_entry() -> Path:
    """The npm reference server's entry point, installed (once per version) under /tmp, or
    where WARREN_MCP_EVERYTHING_DIR says (.ci/run may install it there)."""
    if shutil.which("node") is None:
        pytest.skip(f"Node.js is not installed: {EVERYTHING_PACKAGE} needs it")
    root = Path(os.environ.get("WARREN_MCP_EVERYTHING_DIR") or f"/tmp/warren-npm/server-everything-{EVERYTHING_VERSION}")
    entry = root / "node_modules" / EVERYTHING_PACKAGE / "dist" / "index.js"
    if entry.exists():
        return entry
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: cannot install {EVERYTHING_PACKAGE}")
    staging = Path(f"{root}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(staging), f"{EVERYTHING_PACKAGE}@{EVERYTHING_VERSION}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"npm install {EVERYTHING_PACKAGE}@{EVERYTHING_VERSION} failed:\n{done.stderr[-2000:]}")
    try:
        staging.rename(root)  # atomic: a parallel worker may have won the race
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    assert entry.exists(), entry
    return entry


@pytest.fixture(scope="module")
def everything() -> McpServerSpec:
    entry = _everything_entry()
    return McpServerSpec("everything", command=shutil.which("node") or "node", args=(str(entry), "stdio"))


# ---------------------------------------------------------------- the SDK server over stdio


async def test_lists_tools_with_names_and_schemas(shared: tuple[McpManager, Lines]) -> None:
    manager, lines = shared
    tools = await manager.tools(sdk_spec())
    by_name = {t.name: t for t in tools}
    assert {"echo", "slow", "boom", "image", "add_tool"} <= set(by_name)
    echo = by_name["echo"]
    assert isinstance(echo, McpTool) and echo.server == "fake" and mcp_tool_name(echo.server, echo.name) == "fake__echo"
    assert echo.description == "Echo the text back."
    assert echo.input_schema["type"] == "object"
    assert echo.input_schema["properties"]["text"]["type"] == "string"
    assert echo.input_schema["required"] == ["text"]
    s = status(manager, "fake")
    assert (s.transport, s.state, s.error) == ("stdio", "ready", None)
    assert isinstance(s.pid, int) and "echo" in s.tools
    await lines.wait_for("fake", "fake-mcp: starting")  # its stderr reaches log_stderr, tagged


async def test_call_echo(shared: tuple[McpManager, Lines]) -> None:
    manager, _ = shared
    result = await manager.call(sdk_spec(), "echo", {"text": "héllo, world"}, 5)
    assert result == McpCallResult("héllo, world", False)


async def test_raising_tool_is_an_error_result(shared: tuple[McpManager, Lines]) -> None:
    manager, _ = shared
    result = await manager.call(sdk_spec(), "boom", {}, 5)
    assert result.is_error and "boom" in result.content


async def test_unknown_tool_is_an_error_result(shared: tuple[McpManager, Lines]) -> None:
    manager, _ = shared
    result = await manager.call(sdk_spec(), "no_such_tool", {}, 5)
    assert result.is_error


async def test_image_result_is_summarised_and_kept(shared: tuple[McpManager, Lines]) -> None:
    manager, _ = shared
    result = await manager.call(sdk_spec(), "image", {}, 5)
    assert (result.content, result.is_error) == (f"[image image/png, {PNG_SIZE} bytes]", False)
    assert [mime for mime, _ in result.images] == ["image/png"]
    assert len(base64.b64decode(result.images[0][1])) == PNG_SIZE


async def test_list_changed_refreshes_the_tools(shared: tuple[McpManager, Lines]) -> None:
    manager, _ = shared
    spec = sdk_spec()
    assert "late_tool" not in {t.name for t in await manager.tools(spec)}
    assert (await manager.call(spec, "add_tool", {"name": "late_tool"}, 5)).content == "added late_tool"
    with anyio.fail_after(5):
        while "late_tool" not in status(manager, "fake").tools:  # refreshed in the background
            await anyio.sleep(0.01)
    assert "late_tool" in {t.name for t in await manager.tools(spec)}
    assert (await manager.call(spec, "late_tool", {}, 5)).content == "I am late_tool"


async def test_hung_call_ends_at_its_timeout_and_is_cancelled(shared: tuple[McpManager, Lines]) -> None:
    manager, lines = shared
    before = lines.count("fake", "slow: cancelled")
    started = time.monotonic()
    result = await manager.call(sdk_spec(), "slow", {"seconds": 30}, 0.5)
    assert time.monotonic() - started < 1.5
    assert result.is_error
    assert "MCP server 'fake'" in result.content and "0.5 s" in result.content
    # The server got notifications/cancelled and stopped the tool.
    await lines.wait_for("fake", "slow: cancelled", before + 1)
    assert (await manager.call(sdk_spec(), "echo", {"text": "still here"}, 5)).content == "still here"


async def test_cancelling_the_caller_cancels_the_call(shared: tuple[McpManager, Lines]) -> None:
    manager, lines = shared
    before = lines.count("fake", "slow: cancelled")
    started = time.monotonic()
    with anyio.move_on_after(0.5) as interrupted:  # an interrupted turn
        await manager.call(sdk_spec(), "slow", {"seconds": 30}, 60)
    assert interrupted.cancelled_caught and time.monotonic() - started < 1.5
    await lines.wait_for("fake", "slow: cancelled", before + 1)
    assert status(manager, "fake").state == "ready"


async def test_equal_specs_share_one_process(shared: tuple[McpManager, Lines]) -> None:
    manager, _ = shared
    a = sdk_spec(env=(("A", "1"), ("B", "2")))
    b = sdk_spec(env=(("B", "2"), ("A", "1")))  # the same server, written in another order
    assert a == McpServerSpec("fake", command=sys.executable, args=(SDK_SERVER,), env=(("A", "1"), ("B", "2")))
    assert hash(a) == hash(McpServerSpec("fake", command=sys.executable, args=(SDK_SERVER,), env=(("A", "1"), ("B", "2"))))
    async with anyio.create_task_group() as tasks:  # concurrent first use: one start
        for spec in (a, b, a):
            tasks.start_soon(manager.tools, spec)
    pids = {(await manager.call(spec, "pid", {}, 5)).content for spec in (a, b)}
    assert len(pids) == 1
    # A different spec of the same name is another server.
    plain = (await manager.call(sdk_spec(), "pid", {}, 5)).content
    assert plain not in pids
    assert len(manager.servers([a, b])) == 2 and {s.pid for s in manager.servers([a, b])} == {int(pids.pop())}
    assert manager.servers([sdk_spec(env=(("NEVER", "started"),))]) == []  # same name, another server


# ---------------------------------------------------------------- crashes and bad servers


async def test_crashed_server_gives_an_error_result_and_restarts_at_next_use() -> None:
    async with running() as (manager, lines):
        spec = sdk_spec("victim")
        pid = int((await manager.call(spec, "pid", {}, 5)).content)
        outcome: list[McpCallResult] = []

        async def slow() -> None:
            outcome.append(await manager.call(spec, "slow", {"seconds": 30}, 30))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow)
            await lines.wait_for("victim", "slow: started")
            os.kill(pid, signal.SIGKILL)
        (result,) = outcome
        assert result.is_error
        assert "MCP server 'victim'" in result.content and "SIGKILL" in result.content, result.content
        s = status(manager, "victim")
        assert s.state == "failed" and "SIGKILL" in (s.error or "") and s.pid is None
        assert gone(pid)
        # Restarted at the next use.
        assert (await manager.call(spec, "echo", {"text": "back"}, 10)).content == "back"
        new_pid = int((await manager.call(spec, "pid", {}, 5)).content)
        assert new_pid != pid and status(manager, "victim").state == "ready"


async def test_server_that_dies_mid_call_is_named_with_its_exit_code() -> None:
    async with running() as (manager, _):
        spec = raw_spec()
        result = await manager.call(spec, "die", {}, 5)
        assert result.is_error and "MCP server 'raw'" in result.content
        assert "exited with code 7" in result.content and "restarted" in result.content
        assert (await manager.call(spec, "echo", {"text": "again"}, 5)).content == "again"


async def test_command_not_found() -> None:
    async with running() as (manager, _):
        spec = McpServerSpec("ghost", command="warren-no-such-command-4711")
        with pytest.raises(McpError) as caught:
            await manager.tools(spec)
        assert str(caught.value).startswith("MCP server 'ghost': command not found")
        result = await manager.call(spec, "anything", {}, 5)
        assert result.is_error and "MCP server 'ghost': command not found" in result.content
        assert status(manager, "ghost").state == "failed"


async def test_server_that_exits_at_once() -> None:
    async with running() as (manager, _):
        started = time.monotonic()
        with pytest.raises(McpError) as caught:
            await manager.tools(raw_spec("quitter", "exit"))
        message = str(caught.value)
        assert message.startswith("MCP server 'quitter':")
        assert "exited with code 3 before answering initialize" in message
        assert "fatal: no config file found" in message  # its last stderr line
        assert time.monotonic() - started < 3


async def test_server_that_prints_garbage(capfd: pytest.CaptureFixture[str]) -> None:
    async with running() as (manager, _):
        started = time.monotonic()
        spec = raw_spec("chatty", "garbage")
        with pytest.raises(McpError) as caught:
            await manager.tools(spec)
        assert str(caught.value).startswith("MCP server 'chatty': it wrote a line on stdout that is not JSON-RPC")
        assert time.monotonic() - started < 3  # not the startup timeout
        s = status(manager, "chatty")
        assert s.state == "failed" and s.pid is None
        # The manager still serves other servers.
        assert (await manager.call(raw_spec(), "echo", {"text": "ok"}, 5)).content == "ok"
    # Nothing a server prints reaches our own stdout (or stderr: that goes to log_stderr).
    out, err = capfd.readouterr()
    assert "Listening on port" not in out and "Listening on port" not in err


async def test_server_that_never_answers_initialize() -> None:
    async with running(startup_timeout_s=0.5, stop_grace_s=0.4) as (manager, _):
        spec = McpServerSpec("mute", command=sys.executable, args=("-c", "import time; time.sleep(60)"))
        with pytest.raises(McpError) as caught:
            await manager.tools(spec)
        assert "MCP server 'mute'" in str(caught.value) and "0.5 s" in str(caught.value)


async def test_unsupported_protocol_version() -> None:
    async with running() as (manager, _):
        with pytest.raises(McpError) as caught:
            await manager.tools(raw_spec("future", "version:2099-01-01"))
        assert "MCP server 'future'" in str(caught.value) and "2099-01-01" in str(caught.value)
        # An older version we know is accepted.
        assert [t.name for t in await manager.tools(raw_spec("older", "version:2025-03-26"))][:1] == ["echo"]


async def test_aclose_stops_every_server_and_leaves_no_zombie() -> None:
    async with running() as (manager, _):
        specs = [sdk_spec("one"), raw_spec("two")]
        async with anyio.create_task_group() as tasks:
            for spec in specs:
                tasks.start_soon(manager.tools, spec)
        pids = [status(manager, s.name).pid for s in specs]
        assert all(isinstance(p, int) and not gone(p) for p in pids)
        started = time.monotonic()
        await manager.aclose()
        assert time.monotonic() - started < 3
        assert all(gone(p) for p in pids if p is not None)
        assert {s.state for s in manager.servers()} == {"stopped"}
        with pytest.raises(McpError):
            await manager.tools(specs[0])


async def test_daemon_stop_stops_every_server() -> None:
    async with running() as (manager, _):
        await manager.tools(raw_spec())
        pid = status(manager, "raw").pid
        assert pid is not None
    # run() was cancelled (as at daemon stop): the server is stopped and reaped.
    assert gone(pid)


async def test_server_ignoring_stdin_eof_and_sigterm_is_killed() -> None:
    stubborn = (
        "import signal, sys, time, json\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "line = sys.stdin.readline()\n"
        "msg = json.loads(line)\n"
        "result = {'protocolVersion': '2025-06-18', 'capabilities': {}}\n"
        "print(json.dumps({'jsonrpc': '2.0', 'id': msg['id'], 'result': result}), flush=True)\n"
        "sys.stdin.read()\n"
        "while True: time.sleep(1)\n"
    )
    async with running(stop_grace_s=0.4) as (manager, _):
        spec = McpServerSpec("stubborn", command=sys.executable, args=("-c", stubborn))
        assert await manager.tools(spec) == []  # no tools capability: no tools/list
        pid = status(manager, "stubborn").pid
        assert pid is not None
        await manager.aclose()
        assert gone(pid)


# ---------------------------------------------------------------- what goes on the wire


async def test_wire_cancel_params_pagination_ping_and_log_messages() -> None:
    async with running() as (manager, lines):
        spec = raw_spec()
        tools = await manager.tools(spec)
        assert [t.name for t in tools] == ["echo", "hang", "die", "env", "structured", "pid"]  # two pages
        result = await manager.call(spec, "hang", {}, 0.3)
        assert result.is_error and "0.3 s" in result.content
        await lines.wait_for("raw", "notifications/cancelled")
        received = [json.loads(line[4:]) for line in lines.of("raw") if line.startswith("got ")]
        (init,) = [m for m in received if m.get("method") == "initialize"]
        assert init["params"]["protocolVersion"] == "2025-06-18"
        assert init["params"]["clientInfo"]["name"] == "warren"
        assert [m["method"] for m in received[:2]] == ["initialize", "notifications/initialized"]
        (hang,) = [m for m in received if m.get("method") == "tools/call"]
        (cancel,) = [m for m in received if m.get("method") == "notifications/cancelled"]
        assert cancel["params"]["requestId"] == hang["id"] and isinstance(cancel["params"]["reason"], str)
        assert "id" not in cancel
        # We answered the server's ping, and its log message reached the log.
        assert {"jsonrpc": "2.0", "id": "raw-ping-1", "result": {}} in received
        await lines.wait_for("raw", "[info] raw: hello from raw")


async def test_concurrent_calls_on_one_server() -> None:
    async with running() as (manager, _):
        spec = raw_spec()
        results: dict[int, McpCallResult] = {}

        async def one(i: int) -> None:
            results[i] = await manager.call(spec, "echo", {"text": f"n{i}"}, 5)

        async with anyio.create_task_group() as tasks:
            for i in range(50):
                tasks.start_soon(one, i)
        assert {i: r.content for i, r in results.items()} == {i: f"n{i}" for i in range(50)}
        assert len(manager.servers()) == 1


async def test_server_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_FAKE_API_KEY", "sk-do-not-leak")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-do-not-leak")
    async with running() as (manager, _):
        spec = raw_spec(env=(("WARREN_TEST_VAR", "given"),))
        names = (await manager.call(spec, "env", {}, 5)).content.splitlines()
        assert "WARREN_TEST_VAR=given" in names and "PATH" in names
        assert "WARREN_FAKE_API_KEY" not in names and "ANTHROPIC_API_KEY" not in names


async def test_structured_content_without_text() -> None:
    async with running() as (manager, _):
        result = await manager.call(raw_spec(), "structured", {}, 5)
        assert result == McpCallResult('{"temperature":21.5,"unit":"C"}', False)


def test_content_conversion() -> None:
    result = to_call_result(
        "s",
        "t",
        {
            "content": [
                {"type": "text", "text": "first"},
                {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
                {"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt"},
                {"type": "resource", "resource": {"uri": "file:///b.txt", "text": "inline text"}},
                {"type": "resource", "resource": {"uri": "file:///c.bin", "blob": "AAAAAA==", "mimeType": "application/x"}},
                {"type": "hologram"},
            ],
            "structuredContent": {"ignored": True},
            "isError": True,
        },
    )
    assert result == McpCallResult(
        "first\n[audio audio/wav, 3 bytes]\n[resource link a.txt <file:///a.txt>]\ninline text\n"
        "[resource file:///c.bin application/x, 4 bytes]\n[hologram content]",
        True,
    )
    assert to_call_result("s", "t", None) == McpCallResult("MCP server 's': tool 't' answered with an invalid result", True)
    assert to_call_result("s", "t", {"content": []}) == McpCallResult("", False)


def test_spec_validation_and_secrets_stay_out_of_its_repr() -> None:
    spec = McpServerSpec("web", url="https://example.test/mcp", headers=(("authorization", "Bearer top-secret"),))
    assert "top-secret" not in repr(spec) and "top-secret" not in str(spec)
    assert "hunter2" not in repr(McpServerSpec("x", command="srv", env=(("TOKEN", "hunter2"),)))
    for bad in (
        {"name": "bad name", "command": "x"},
        {"name": "x" * 65, "command": "x"},
        {"name": "x"},
        {"name": "x", "command": "c", "url": "http://h"},
        {"name": "x", "url": "ftp://h"},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, McpServerSpec)
    decoded = msgspec.convert({"name": "fs", "command": "npx", "args": ["-y", "srv"], "env": [["K", "V"]]}, McpServerSpec)
    assert decoded == McpServerSpec("fs", command="npx", args=("-y", "srv"), env=(("K", "V"),))


def test_redactor_covers_every_secret_of_a_spec() -> None:
    """Env values, header values and their bare bearer token, and the URL's password and
    query values (an MCP server's URL may carry its token there) are all redacted."""
    from warren.daemon.mcp.types import redactor

    stdio = McpServerSpec("s", command="srv", env=(("TOKEN", "env-secret-value"),))
    assert redactor(stdio)("x env-secret-value y") == "x [redacted] y"
    http = McpServerSpec(
        "h", url="https://user:hunter22@mcp.example/x?key=query-secret-1",
        headers=(("x-auth", "Bearer header-token-123"),),
    )
    out = redactor(http)("hunter22 / query-secret-1 / token header-token-123 / Bearer header-token-123")
    assert out == "[redacted] / [redacted] / token [redacted] / [redacted]", out


# ---------------------------------------------------------------- streamable HTTP


async def test_http_sdk_server_happy_path(sdk_http: tuple[str, Path]) -> None:
    url, stderr = sdk_http
    async with running() as (manager, _):
        spec = McpServerSpec("web", url=url, headers=(("x-api-key", "secret-value-123"),))
        tools = await manager.tools(spec)
        assert {"echo", "slow", "image"} <= {t.name for t in tools}
        assert (await manager.call(spec, "echo", {"text": "over http"}, 5)).content == "over http"
        assert (await manager.call(spec, "image", {}, 5)).content == f"[image image/png, {PNG_SIZE} bytes]"
        assert (await manager.call(spec, "boom", {}, 5)).is_error
        s = status(manager, "web")
        assert (s.transport, s.state, s.pid) == ("http", "ready", None)
        # tools/list_changed arrives on the server's GET stream.
        await manager.call(spec, "add_tool", {"name": "http_late"}, 5)
        with anyio.fail_after(5):
            while "http_late" not in status(manager, "web").tools:
                await anyio.sleep(0.01)
        # A hung call ends at its timeout and the server is told.
        result = await manager.call(spec, "slow", {"seconds": 30}, 0.5)
        assert result.is_error and "MCP server 'web'" in result.content
        with anyio.fail_after(5):
            while "slow: cancelled" not in stderr.read_text():
                await anyio.sleep(0.02)


async def test_http_calls_reuse_one_connection(sdk_http: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each POST's SSE answer is read to its end, so its connection goes back to the pool:
    twenty calls in a row open no new connection each (the GET stream holds one of its own)."""
    from warren.daemon.providers import wire

    connects: list[str] = []
    original = wire.Client._connect

    async def counting(self: wire.Client, origin: Any, proxy: Any) -> Any:
        connects.append(origin.host)
        return await original(self, origin, proxy)

    monkeypatch.setattr(wire.Client, "_connect", counting)
    url, _ = sdk_http
    async with running() as (manager, _):
        spec = McpServerSpec("reuse", url=url)
        await manager.tools(spec)
        opened = len(connects)
        for i in range(20):
            assert (await manager.call(spec, "echo", {"text": f"n{i}"}, 5)).content == f"n{i}"
        assert len(connects) - opened <= 2, connects


async def test_http_headers_session_and_a_500_on_a_call() -> None:
    with FakeMcpHttp() as fake:
        async with running() as (manager, _):
            spec = McpServerSpec("legacy", url=fake.url, headers=(("Authorization", "Bearer very-secret-token"),))
            assert [t.name for t in await manager.tools(spec)] == ["explode", "hello"]
            result = await manager.call(spec, "explode", {}, 5)
            assert result.is_error
            assert result.content.startswith("MCP server 'legacy': tool 'explode' failed:")
            assert "HTTP 500" in result.content
            assert "very-secret-token" not in result.content and "[redacted]" in result.content
            assert status(manager, "legacy").state == "ready"  # one failed request, not a dead server
        posts = [(headers, body) for verb, headers, body in fake.requests if verb == "POST"]
        assert [b.get("method") for _, b in posts[:3]] == ["initialize", "notifications/initialized", "tools/list"]
        assert all(h["accept"] == "application/json, text/event-stream" for h, _ in posts)
        assert all(h["authorization"] == "Bearer very-secret-token" for h, _ in posts)
        assert "mcp-session-id" not in posts[0][0]
        assert all(h.get("mcp-session-id") == "fake-session-1" for h, _ in posts[1:])
        # The server answered 2025-03-26: that is what later requests carry.
        assert all(h.get("mcp-protocol-version") == "2025-03-26" for h, _ in posts[1:])
        assert ("DELETE" in [verb for verb, _, _ in fake.requests])  # the session ended at close


async def test_http_session_lost_is_initialized_again() -> None:
    with FakeMcpHttp() as fake:
        async with running() as (manager, _):
            spec = McpServerSpec("restarts", url=fake.url)
            assert (await manager.call(spec, "hello", {}, 5)).content == "hello from fake-session-1"
            fake.expire()  # the server restarted: our session id now gets 404
            assert (await manager.call(spec, "hello", {}, 5)).content == "hello from fake-session-2"
        assert fake.methods().count("initialize") == 2


async def test_http_500_at_initialize_is_an_mcp_error() -> None:
    with FakeMcpHttp(mode="fail") as fake:
        async with running() as (manager, _):
            spec = McpServerSpec("down", url=fake.url, headers=(("Authorization", "Bearer very-secret-token"),))
            with pytest.raises(McpError) as caught:
                await manager.tools(spec)
            message = str(caught.value)
            assert message.startswith("MCP server 'down':") and "HTTP 500" in message
            assert "very-secret-token" not in message
            assert status(manager, "down").state == "failed"


async def test_http_server_unreachable() -> None:
    async with running() as (manager, _):
        spec = McpServerSpec("nowhere", url=f"http://127.0.0.1:{_free_port()}/mcp")
        with pytest.raises(McpError) as caught:
            await manager.tools(spec)
        assert str(caught.value).startswith("MCP server 'nowhere': cannot reach 127.0.0.1:")
        result = await manager.call(spec, "x", {}, 5)
        assert result.is_error and "MCP server 'nowhere'" in result.content


# ---------------------------------------------------------------- the npm reference server


async def test_everything_server(everything: McpServerSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARREN_FAKE_API_KEY", "sk-do-not-leak")
    async with running() as (manager, lines):
        tools = {t.name: t for t in await manager.tools(everything)}
        assert {"echo", "get-sum", "get-tiny-image", "trigger-long-running-operation"} <= set(tools)
        assert set(tools["get-sum"].input_schema["properties"]) == {"a", "b"}
        assert (await manager.call(everything, "echo", {"message": "hi"}, 10)).content == "Echo: hi"
        total = await manager.call(everything, "get-sum", {"a": 2, "b": 3}, 10)
        assert not total.is_error and "5" in total.content
        image = await manager.call(everything, "get-tiny-image", {}, 10)
        assert "[image image/png, " in image.content and not image.is_error
        env = await manager.call(everything, "get-env", {}, 10)
        assert "PATH" in env.content and "WARREN_FAKE_API_KEY" not in env.content
        pid = status(manager, "everything").pid
        # A long operation ends at the timeout; the server is told and keeps serving.
        started = time.monotonic()
        slow = await manager.call(everything, "trigger-long-running-operation", {"duration": 30, "steps": 30}, 0.5)
        assert slow.is_error and "MCP server 'everything'" in slow.content and time.monotonic() - started < 1.5
        assert (await manager.call(everything, "echo", {"message": "after"}, 10)).content == "Echo: after"
        assert status(manager, "everything").pid == pid
        await manager.aclose()
        assert pid is not None and gone(pid)


async def test_everything_server_over_http(tmp_path: Path) -> None:
    """The npm server's streamable HTTP mode, an independent implementation of the HTTP
    side: SSE answers to POSTs, its session id, the GET stream, and the DELETE at close."""
    entry = _everything_entry()
    port = _free_port()
    err = tmp_path / "output.log"  # it logs each request to stdout
    with open(err, "wb") as f:
        proc = subprocess.Popen([shutil.which("node") or "node", str(entry), "streamableHttp"],
                                env={**os.environ, "PORT": str(port)}, stdout=f, stderr=subprocess.STDOUT)
    try:
        with anyio.fail_after(20):
            while True:
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    assert proc.poll() is None, err.read_text()[-2000:]
                    await anyio.sleep(0.05)
        async with running() as (manager, _):
            spec = McpServerSpec("everything_http", url=f"http://127.0.0.1:{port}/mcp")
            assert {"echo", "get-sum"} <= {t.name for t in await manager.tools(spec)}
            assert (await manager.call(spec, "echo", {"message": "hi"}, 10)).content == "Echo: hi"
            started = time.monotonic()
            slow = await manager.call(spec, "trigger-long-running-operation", {"duration": 30, "steps": 30}, 0.5)
            assert slow.is_error and time.monotonic() - started < 1.5
            assert (await manager.call(spec, "echo", {"message": "after"}, 10)).content == "Echo: after"
            await manager.aclose()
        with anyio.fail_after(5):
            while "session termination" not in err.read_text():
                await anyio.sleep(0.02)
        assert "Received MCP GET request" in err.read_text()  # the server's own stream was opened
    finally:
        proc.terminate()
        proc.wait(5)
