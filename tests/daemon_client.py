"""A test client that runs the real daemon as a subprocess and talks to it over pipes.

Every wait has a timeout, so a daemon bug fails a test instead of hanging the suite.
Notifications are collected in arrival order, and every line the daemon writes is kept
(``lines``) so tests can assert on stdout as a whole.
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
from typing import Any

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
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            cwd=ROOT,
            env=full_env,
            **kwargs,
        )
        self.lines: list[bytes] = []
        self.notifications: list[dict[str, Any]] = []
        self.notification_times: list[float] = []  # time.monotonic() of each notification's arrival
        self.client_requests: list[dict[str, Any]] = []
        self._responses: dict[Any, Any] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._eof = False
        self._may_read = threading.Event()  # cleared by pause_reading(): the reader thread blocks
        self._may_read.set()
        self._parked = threading.Event()  # set while the reader thread is blocked by a pause
        self._vanished = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ plumbing

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            if not self._may_read.is_set():
                self._parked.set()
                self._may_read.wait()
                self._parked.clear()
            if self._vanished:
                break
            raw = self.proc.stdout.readline()
            if not raw:
                break
            with self._cond:
                self.lines.append(raw)
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = {"__unparsable__": raw.decode("utf-8", "replace")}
                if isinstance(msg, list):
                    for item in msg:
                        self._responses.setdefault(("batch", item.get("id")), item)
                    self._responses.setdefault("batch", []).append(msg)
                elif "method" in msg and "id" not in msg:
                    self.notifications.append(msg)
                    self.notification_times.append(time.monotonic())
                elif "method" in msg:
                    self.client_requests.append(msg)
                else:
                    self._responses[msg.get("id")] = msg
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def pause_reading(self) -> None:
        """Stop reading stdout (after at most the line being read): the daemon's pipe fills up
        and it sees a slow client. Waits on nothing; see ``wait_parked``."""
        self._may_read.clear()

    def resume_reading(self) -> None:
        self._may_read.set()

    def wait_parked(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until a paused reader thread really stopped (it finishes the line it was reading)."""
        if not self._parked.wait(timeout):
            raise DaemonError(f"reader thread still reading {timeout}s after pause_reading()")

    def vanish(self) -> None:
        """Act as a client that died: close both pipes without reading what is pending.
        Only while reading is paused, so no thread is inside a read of stdout."""
        assert not self._may_read.is_set(), "pause_reading() first"
        self.wait_parked()
        self._vanished = True
        self.close_stdin()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._may_read.set()
        self._reader.join(5)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

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
        """Send a request without waiting; returns its id."""
        id_ = self.next_id() if id_ is None else id_
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return id_

    def call(self, method: str, params: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Request and return ``result``; raise DaemonError carrying ``error`` otherwise."""
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
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

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
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_}
        if error is not None:
            msg["error"] = error
        else:
            msg["result"] = result
        self.send(msg)

    def auto_answer(self, answer: Any) -> threading.Thread:
        """Answer every tool/execute with ``answer(request_params) -> result`` until exit."""

        def loop() -> None:
            seen = 0
            while True:
                try:
                    reqs = self.wait_for(
                        lambda seen=seen: len(self.tool_requests()) > seen and self.tool_requests(), 60, "tool call"
                    )
                except DaemonError:
                    return
                for req in reqs[seen:]:
                    try:
                        self.reply(req["id"], answer(req["params"]))
                    except (BrokenPipeError, ValueError, OSError):
                        return
                seen = len(reqs)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def cancels_sent(self) -> list[Any]:
        with self._cond:
            return [n["params"]["id"] for n in self.notifications if n.get("method") == "$/cancelRequest"]

    # ------------------------------------------------------------------ ending

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

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
        if self.proc.stdout is not None and not self._vanished:
            self._reader.join(5)
            self.proc.stdout.close()

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class RpcError(DaemonError):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"RPC error {error}")
        self.error = error
        self.code = error["code"]
        self.data = error.get("data", {})


def script(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"script": list(steps)}
