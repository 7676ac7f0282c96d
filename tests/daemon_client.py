"""The test suite's client: the real daemon as a subprocess, driven through ``warren.client``.

``Daemon`` is a synchronous facade for tests. It starts the daemon with ``subprocess.Popen``
on pipes it owns and attaches a ``warren.client.Connection`` to them, run on a background
event loop (an anyio blocking portal). The library does the message plumbing: framing, ids,
matching each response to its request, notifications, answering ``tool/execute``. What the
harness keeps is what only tests need: a record of every line the daemon writes (``lines``,
taken from the connection's line tap), notifications and daemon requests in arrival order,
responses to lines it wrote raw (malformed input, batches, chosen ids), pausing reads so the
daemon's pipe fills, and vanishing like a dead client.

Every wait has a timeout, so a daemon bug fails a test instead of hanging the suite.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import anyio
from anyio.from_thread import start_blocking_portal

from warren.client.connection import Connection, PendingRequest
from warren.client.errors import TransportError
from warren.client.streams import FdReceiveStream, FdSendStream
from warren.protocol import jsonrpc
from warren.protocol.framing import Oversized

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 20.0
#: What ``python -m`` runs; a test of an older tree (before the ``warren`` namespace) sets ``daemon``.
DAEMON_MODULE = "warren.daemon"


PROVIDER_ENV = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "XDG_CONFIG_HOME", "WARREN_LOG_LEVEL",
)


def hermetic_env() -> dict[str, str]:
    """The test process's environment minus anything that would pick a real provider:
    a developer's exported keys or config file must never reach a test daemon."""
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV}
    env["XDG_CONFIG_HOME"] = "/nonexistent/warren-tests"
    env["WARREN_LOG_LEVEL"] = "info"
    return env


class DaemonError(AssertionError):
    pass


def _envelope(response: jsonrpc.Response) -> dict[str, Any]:
    """A response as the dict a test asserts on (exactly one of ``result`` / ``error``)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": response.id}
    if response.error is not None:
        msg["error"] = response.error
    else:
        msg["result"] = response.result
    return msg


def _params_or_absent(params: Any) -> Any:
    return jsonrpc.ABSENT if params is None else params


class Daemon:
    def __init__(
        self,
        *args: str,
        db: Path | None = None,
        env: dict[str, str] | None = None,
        stderr_path: Path | None = None,
        user: int | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", DAEMON_MODULE, "serve"]
        cmd += ["--db", str(db)] if db is not None else (["--ephemeral"] if "--ephemeral" not in args else [])
        cmd += list(args)
        full_env = hermetic_env()
        full_env["PYTHONPATH"] = str(ROOT)
        if env:
            full_env.update(env)
        self.stderr_path = stderr_path
        self._stderr_file = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs["user"] = user
        # Pipes of our own rather than Popen's file objects: the connection owns (and closes)
        # its two ends, and nothing else holds them, so closing the daemon's stdin is one close.
        child_in, our_in = os.pipe()
        our_out, child_out = os.pipe()
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=child_in, stdout=child_out, stderr=self._stderr_file, cwd=ROOT, env=full_env, **kwargs
            )
        except BaseException:
            os.close(our_in)
            os.close(our_out)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        self.lines: list[bytes] = []
        self.notifications: list[dict[str, Any]] = []
        self.notification_times: list[float] = []  # time.monotonic() of each notification's arrival
        self.client_requests: list[dict[str, Any]] = []
        self._responses: dict[Any, Any] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._eof = False
        self._vanished = False
        self._stopped = False
        self._left: list[Any] = []  # ids of tool/execute requests no handler took
        self._replied: set[Any] = set()
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self.conn: Connection = self._portal.call(self._connect, our_out, our_in)
            self._conn_cm = self._portal.wrap_async_context_manager(self.conn)
            self._conn_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    async def _connect(self, out_fd: int, in_fd: int) -> Connection:
        conn = Connection(
            FdReceiveStream(out_fd), FdSendStream(in_fd), unhandled_requests="leave", on_line=self._tap, id_prefix="harness-"
        )
        conn.on_unmatched_response = self._unmatched
        conn.close_callbacks.append(self._closed)
        return conn

    # ------------------------------------------------------------------ what the connection reports (event loop thread)

    def _tap(self, line: bytes, message: Any) -> None:
        """Every line the daemon writes, before the connection routes it."""
        if isinstance(message, Oversized):
            return
        with self._cond:
            self.lines.append(line + b"\n")
            if isinstance(message, jsonrpc.Batch):
                items = json.loads(line)
                for item in items:
                    self._responses.setdefault(("batch", item.get("id")), item)
                self._responses.setdefault("batch", []).append(items)
            elif isinstance(message, jsonrpc.Notification):
                self.notifications.append({"jsonrpc": "2.0", "method": message.method, "params": message.params})
                self.notification_times.append(time.monotonic())
            elif isinstance(message, jsonrpc.Request):
                self.client_requests.append({"jsonrpc": "2.0", "id": message.id, "method": message.method, "params": message.params})
                if message.method not in self.conn.handlers:
                    self._left.append(message.id)
            elif isinstance(message, jsonrpc.Invalid):
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = {"__unparsable__": line.decode("utf-8", "replace")}
                self._responses[msg.get("id") if isinstance(msg, dict) else None] = msg
            self._cond.notify_all()

    def _unmatched(self, response: jsonrpc.Response) -> None:
        with self._cond:
            self._responses[response.id] = _envelope(response)
            self._cond.notify_all()

    def _answered(self, pending: PendingRequest) -> None:
        try:
            response = pending.response_nowait()
        except TransportError:
            return  # the daemon went away: wait_for reports it
        with self._cond:
            self._responses[response.id] = _envelope(response)
            self._cond.notify_all()

    def _closed(self, failure: TransportError) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def _reader(self) -> "_ReaderDone":
        """What tests join to wait until everything the daemon wrote has been read."""
        return _ReaderDone(self)

    # ------------------------------------------------------------------ plumbing

    def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on the connection's event loop; a write to a daemon that is
        gone raises BrokenPipeError, as a write to its stdin would."""
        try:
            return self._portal.call(func, *args)
        except TransportError as exc:
            raise BrokenPipeError(str(exc)) from exc

    def pause_reading(self) -> None:
        """Stop reading stdout (after routing the chunk in hand): the daemon's pipe fills up
        and it sees a slow client. Waits on nothing; see ``wait_parked``."""
        self._portal.call(self.conn.pause_reading)

    def resume_reading(self) -> None:
        if not self._stopped:
            self._portal.call(self.conn.resume_reading)

    def wait_parked(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until a paused reader really stopped."""

        async def parked() -> bool:
            with anyio.move_on_after(timeout):
                await self.conn.wait_parked()
                return True
            return False

        if not self._portal.call(parked):
            raise DaemonError(f"reader still reading {timeout}s after pause_reading()")

    def vanish(self) -> None:
        """Act as a client that died: close both pipes without reading what is pending.
        Only while reading is paused."""
        self.wait_parked()
        self._vanished = True
        self._portal.call(self.conn.abort)

    def send_raw(self, data: bytes) -> None:
        self._run(self.conn.send_raw, data)

    def send(self, obj: Any) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def next_id(self) -> int:
        return next(self._ids)

    def wait_for(self, predicate: Any, timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DaemonError(f"timed out waiting for {what}; last lines: {self.lines[-5:]!r}")
                if self._eof:
                    value = predicate()
                    if value:
                        return value
                    raise DaemonError(f"daemon closed stdout while waiting for {what}; rc={self.proc.poll()}")
                self._cond.wait(min(remaining, 0.5))

    def response(self, id_: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        return self.wait_for(lambda: self._responses.get(id_), timeout, f"response {id_!r}")

    # ------------------------------------------------------------------ calls

    def request(self, method: str, params: Any = None, *, id_: Any = None) -> Any:
        """Send a request without waiting; returns its id (``response`` waits for it)."""
        id_ = self.next_id() if id_ is None else id_
        with self._cond:
            self._responses.pop(id_, None)  # an earlier answer to a reused id is not this one's

        async def send_and_keep() -> None:
            pending = await self.conn.send_request(method, _params_or_absent(params), request_id=id_)
            pending.add_done_callback(self._answered)

        self._run(send_and_keep)
        return id_

    def call(self, method: str, params: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Request and return ``result``; raise RpcError carrying ``error`` otherwise."""
        reply = self.response(self.request(method, params), timeout)
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    def error(self, method: str, params: Any = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Request and return ``error``; fail if it succeeded."""
        reply = self.response(self.request(method, params), timeout)
        if "error" not in reply:
            raise DaemonError(f"{method} succeeded but an error was expected: {reply}")
        return reply["error"]

    def notify(self, method: str, params: Any = None) -> None:
        self._run(self.conn.notify, method, _params_or_absent(params))

    def events(self, session_id: str | None = None, turn_id: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [
                n["params"]
                for n in self.notifications
                if n.get("method") == "session/event"
                and (session_id is None or n["params"]["session_id"] == session_id)
                and (turn_id is None or n["params"]["turn_id"] == turn_id)
            ]

    def timed_events(self, session_id: str) -> list[tuple[float, dict[str, Any]]]:
        """``(arrival time, params)`` of each ``session/event`` of the session, in arrival order."""
        with self._cond:
            return [
                (t, n["params"])
                for t, n in zip(self.notification_times, self.notifications)
                if n.get("method") == "session/event" and n["params"]["session_id"] == session_id
            ]

    def event_types(self, session_id: str | None = None, turn_id: str | None = None) -> list[str]:
        return [e["event"]["type"] for e in self.events(session_id, turn_id)]

    def wait_event(self, type_: str, session_id: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        def found() -> Any:
            for e in self.events(session_id):
                if e["event"]["type"] == type_:
                    return e
            return None

        return self.wait_for(found, timeout, f"event {type_}")

    # ------------------------------------------------------------------ the client side of tool/execute

    def tool_requests(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.client_requests if r.get("method") == "tool/execute"]

    def wait_tool_requests(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        return self.wait_for(lambda: len(self.tool_requests()) >= n and self.tool_requests(), timeout, f"{n} tool/execute")

    def reply(self, id_: Any, result: Any = None, error: Any = None) -> None:
        """Answer a ``tool/execute`` (or any id) by hand."""
        with self._cond:
            self._replied.add(id_)
        self._run(self.conn.respond, id_, result, error)

    def auto_answer(self, answer: Callable[[Any], Any]) -> None:
        """Answer every tool/execute with ``answer(request_params) -> result`` from now on,
        and those already waiting: the library's handler does it, in the daemon's order."""

        async def handle(params: Any) -> Any:
            return answer(params)

        async def install() -> None:
            self.conn.handlers["tool/execute"] = handle
            with self._cond:
                waiting = [i for i in self._left if i not in self._replied]
                self._replied.update(waiting)
                params = {r["id"]: r["params"] for r in self.client_requests if r["id"] in waiting}
            for id_ in waiting:
                await self.conn.respond(id_, answer(params[id_]))

        try:
            self._run(install)
        except BrokenPipeError:
            pass

    def cancels_sent(self) -> list[Any]:
        with self._cond:
            return [n["params"]["id"] for n in self.notifications if n.get("method") == "$/cancelRequest"]

    # ------------------------------------------------------------------ ending

    def close_stdin(self) -> None:
        self._portal.call(self.conn.close_input)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"daemon did not exit within {timeout}s") from None

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stderr_lines(self) -> list[dict[str, Any]]:
        assert self.stderr_path is not None
        out = []
        for raw in self.stderr_path.read_bytes().splitlines():
            out.append(json.loads(raw))
        return out

    def stop(self) -> None:
        if self._stopped:
            return
        self.resume_reading()  # a paused reader would keep the daemon from flushing and exiting
        if self.proc.poll() is None:
            self.close_stdin()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._stderr_file is not subprocess.DEVNULL:
            self._stderr_file.close()
        self._stopped = True
        if not self._vanished:
            # Read what the daemon wrote before it exited, so lines and events are complete.
            async def drained() -> None:
                with anyio.move_on_after(5):
                    await self.conn.wait_closed()

            self._portal.call(drained)
        try:
            self._conn_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _ReaderDone:
    """``join`` waits until the daemon's output has ended and every line was recorded."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def join(self, timeout: float | None = None) -> None:
        d = self._daemon
        with d._cond:
            d._cond.wait_for(lambda: d._eof, timeout)

    def is_alive(self) -> bool:
        return not self._daemon._eof


class RpcError(DaemonError):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"RPC error {error}")
        self.error = error
        self.code = error["code"]
        self.data = error.get("data", {})


def script(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"script": list(steps)}
