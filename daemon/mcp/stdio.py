"""The stdio transport: an MCP server as a subprocess, driven by the daemon's own JSON-RPC peer.

The server's stdout is the peer's read fd and its stdin the ``Writer``'s fd (the same
``transport/`` code that serves Warren's own clients); its stderr is read line by line
and handed to ``log_line``. Nothing the server writes reaches the daemon's stdout.

The child gets the spec's ``env`` over a minimal inherited environment (``PATH``,
``HOME``, locale…), never the daemon's own secrets. It runs in its own process group, so
stopping it also stops what it spawned (``npx`` runs ``node`` as a child): stdin is
closed first (the spec's way to ask a stdio server to exit), then the group gets SIGTERM,
then SIGKILL, each after a grace period.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import subprocess
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio

from ..logs import get_logger
from ..transport.dispatch import Dispatcher
from ..transport.peer import Peer, PeerError, PeerGone
from ..transport.stdio import Writer, read_chunks
from warren.protocol import jsonrpc
from warren.protocol.framing import LineBuffer, Oversized

from .types import McpError, McpServerSpec, RequestFailed, ServerGone, redactor, remote_error_text

log = get_logger("warren.mcp")

#: A tool result with an image in it is one line: allow big ones.
MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_STDERR_LINE = 16 * 1024

#: What a server inherits from the daemon's environment: enough to find its interpreter,
#: its caches and its locale, and none of the daemon's credentials.
INHERITED_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR", "TZ",
    "LANG", "LANGUAGE", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME",
    "XDG_STATE_HOME", "XDG_RUNTIME_DIR",
)  # fmt: skip


def child_env(spec: McpServerSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith("LC_")}
    env.update(spec.env)
    return env


class StdioConnection:
    transport = "stdio"

    def __init__(self, spec: McpServerSpec, proc: subprocess.Popen[bytes], log_line: Callable[[str, str], None]) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.spec = spec
        self.proc = proc
        self.pid: int | None = proc.pid
        self.closed = anyio.Event()
        self._log_line = log_line
        self._writer = Writer(proc.stdin.fileno())
        self.strict = True  # until initialize is answered: a line that is not JSON-RPC ends it
        self.garbage: str | None = None
        # MCP's cancel carries a reason; a program that is not an MCP server (or prints a
        # banner on stdout) fails at once instead of at the startup timeout.
        self.peer = Peer(self._writer, max_line_bytes=MAX_LINE_BYTES, cancel_method="notifications/cancelled",
                         cancel_field="requestId", cancel_reason=True, shutdown_grace_s=1.0,
                         on_invalid=self._invalid_line)
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=3)
        self._stopping = False
        self._stderr_done = anyio.Event()
        self.protocol_version: str | None = None

    # ------------------------------------------------------------------ requests

    async def request(self, method: str, params: Any, timeout_s: float) -> Any:
        try:
            # initialize must not be cancelled (the spec): the server is stopped instead
            return await self.peer.request(method, params, timeout_s, cancellable=method != "initialize")
        except PeerGone:
            raise ServerGone() from None
        except PeerError as exc:
            raise RequestFailed(self._redact(remote_error_text(exc.error))) from None

    def _invalid_line(self, message: jsonrpc.Invalid) -> bool:
        if not self.strict:
            return False
        if self.garbage is None:
            self.garbage = message.error.message
        self.peer.stop_reading()
        return True

    async def notify(self, method: str, params: Any) -> None:
        await self._writer.send(jsonrpc.encode_notification(method, params), direct=True)

    def initialized(self) -> None:
        """``initialize`` was answered: from now on a stray line is logged, not fatal."""
        self.strict = False

    # ------------------------------------------------------------------ tasks

    async def _serve(self, dispatcher: Dispatcher) -> None:
        assert self.proc.stdout is not None
        try:
            await self.peer.serve(self.proc.stdout.fileno(), dispatcher)
        except Exception as exc:  # noqa: BLE001 - a reader bug must still end the connection
            log.error("mcp_reader_failed", server=self.spec.name, exc_info=exc)
        finally:
            self.peer.client_went_away()  # serve does at every normal end; after a reader bug too
            self.closed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        buffer = LineBuffer(MAX_STDERR_LINE)
        try:
            async for chunk in read_chunks(self.proc.stderr.fileno()):
                for line in buffer.feed(chunk):
                    self._stderr_line(line)
            for line in buffer.eof():
                self._stderr_line(line)
        except Exception as exc:  # noqa: BLE001
            log.warning("mcp_stderr_failed", server=self.spec.name, error=type(exc).__name__)
        finally:
            self._stderr_done.set()

    def _stderr_line(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            text = f"[a stderr line of {line.size} bytes, not shown]"
        else:
            text = line.decode("utf-8", "replace").rstrip()
        self._stderr_tail.append(text)
        try:
            self._log_line(self.spec.name, text)
        except Exception as exc:  # noqa: BLE001 - a logging callback must not end the reader
            log.warning("mcp_stderr_callback_failed", server=self.spec.name, error=type(exc).__name__)

    # ------------------------------------------------------------------ the end

    def describe_loss(self, when: str = "") -> str:
        """Why the connection ended, as a clause ("its process exited with code 1"), with
        ``when`` after it and the server's last stderr line (redacted) at the end."""
        if self.garbage is not None:
            return (
                f"it wrote a line on stdout that is not JSON-RPC ({self.garbage}){when}; "
                "is it a stdio MCP server, and does it keep its own logs off stdout?"
            )
        code = self.proc.returncode
        if code is None:
            text = "it closed its stdout"
        elif code < 0:
            try:
                text = f"its process was killed by {signal.Signals(-code).name}"
            except ValueError:
                text = f"its process was killed by signal {-code}"
        else:
            text = f"its process exited with code {code}"
        text += when
        if self._stderr_tail and not self._stopping:
            quoted = self._redact_clip(self._stderr_tail[-1], 200)
            text += f" (last stderr line: {quoted!r})"
        return text

    @functools.cached_property
    def _redactor(self) -> Any:
        """Built at the first error that quotes the server, and once only (a server without
        ``env`` has no secret: its texts are quoted without importing the redactor)."""
        return redactor(self.spec)

    def _redact_clip(self, text: str, limit: int) -> str:
        return self._redactor.clip(text, limit) if self.spec.env else text[:limit]

    def _redact(self, text: str) -> str:
        return self._redactor(text) if self.spec.env else text

    async def _stop_process(self, grace_s: float, writer_scope: anyio.CancelScope) -> None:
        """Close stdin (after what is queued for it, such as a cancel notification), then
        SIGTERM, then SIGKILL the process group; reap the process."""
        self._stopping = not (self.closed.is_set() or self.peer.client_gone)
        self._writer.close()
        with anyio.move_on_after(min(0.2, grace_s)):
            await self._writer.wait_drained()
        writer_scope.cancel()
        with anyio.move_on_after(0.5):
            await self._writer.wait_drained()  # set as the writer task ends
        proc = self.proc
        assert proc.stdin is not None
        proc.stdin.close()
        # A server still talking gets time to exit on its own; one that already closed its
        # stdout or wrote garbage is past listening.
        first_wait = grace_s / 2 if self._stopping else 0.05
        for sig, wait_s in ((None, first_wait), (signal.SIGTERM, grace_s / 2), (signal.SIGKILL, 5.0)):
            if sig is not None:
                _signal_group(proc, sig)
            if await _wait_exit(proc, wait_s):
                break
        else:
            log.error("mcp_server_unkillable", server=self.spec.name, pid=proc.pid)
            return
        # Anything the server left running in its group (it was the group's leader and is
        # not yet reaped, so the group id still names only its own).
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process has ended, without reaping it (its pid stays reserved)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


async def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until the process ends (not reaped), at most ``timeout_s``."""
    if _exited(proc):
        return True
    with anyio.move_on_after(timeout_s):
        pidfd = -1
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pass
        try:
            if pidfd >= 0:
                while not _exited(proc):
                    await anyio.wait_readable(pidfd)
            else:
                while not _exited(proc):
                    await anyio.sleep(0.02)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return True
    return _exited(proc)


@asynccontextmanager
async def open_stdio(
    spec: McpServerSpec,
    dispatcher: Dispatcher,
    log_line: Callable[[str, str], None],
    stop_grace_s: float,
) -> AsyncIterator[StdioConnection]:
    """Start the server; on exit stop it and reap it (shielded: a cancelled caller still
    leaves no process behind)."""
    assert spec.command is not None
    try:
        proc = subprocess.Popen(
            [spec.command, *spec.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(spec),
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError:
        raise McpError(spec.name, f"command not found: {spec.command!r}") from None
    except PermissionError:
        raise McpError(spec.name, f"command cannot be run (permission denied): {spec.command!r}") from None
    except OSError as exc:
        raise McpError(spec.name, f"cannot start {spec.command!r}: {exc.strerror or type(exc).__name__}") from None
    conn = StdioConnection(spec, proc, log_line)
    log.info("mcp_server_started", server=spec.name, pid=proc.pid)
    try:
        async with anyio.create_task_group() as tasks:
            writer_scope = anyio.CancelScope()

            async def write() -> None:
                with writer_scope:
                    await conn._writer.run()

            tasks.start_soon(write)
            tasks.start_soon(conn._serve, dispatcher)
            tasks.start_soon(conn._read_stderr)
            try:
                yield conn
            finally:
                with anyio.CancelScope(shield=True):
                    await conn._stop_process(stop_grace_s, writer_scope)
                    # The readers end at EOF once the process is gone (the last stderr
                    # line is then known); bound it anyway: a grandchild may hold a pipe.
                    with anyio.move_on_after(1.0):
                        await conn.closed.wait()
                        await conn._stderr_done.wait()
                tasks.cancel_scope.cancel()
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        log.info("mcp_server_exited", server=spec.name, pid=proc.pid, code=proc.returncode)
