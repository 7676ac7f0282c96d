"""A minimal, fast JSON-RPC client for the daemon subprocess.

Why not ``tests/daemon_client.py``: that client runs a reader thread, parses every line
with ``json`` and keeps every line for assertions, which costs more per message than the
daemon spends on some requests. Here there are no threads: requests are written with
``os.write`` and replies are read in large chunks, split into lines, and decoded with
msgspec into a small envelope whose ``result`` stays raw (undecoded) until asked for.
The client runs on the second core, so what it costs overlaps with the daemon's work
instead of adding to it.

Every read has a deadline, so a hung daemon fails that measurement instead of the run.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Self

import msgspec

ROOT = Path(__file__).resolve().parent.parent
READ_SIZE = 1 << 20
DEFAULT_TIMEOUT = 60.0


class BenchError(RuntimeError):
    """A measurement could not be taken (daemon died, hung, or answered with an error)."""


class _Event(msgspec.Struct):
    type: str


class _Update(msgspec.Struct):
    kind: str = msgspec.field(name="sessionUpdate")


class _Params(msgspec.Struct):
    event: _Event | None = None
    seq: int = 0
    seq_first: int | None = None  # a slow client's merged deltas: seq_first..seq (PROTOCOL.md §8)
    replay: bool = False
    update: _Update | None = None  # ACP's ``session/update`` (``warren acp``)


class Incoming(msgspec.Struct):
    """One line from the daemon. ``result`` is kept raw so timing loops don't pay for it."""

    id: int | str | None = None
    method: str | None = None
    params: _Params | None = None
    result: msgspec.Raw = msgspec.Raw()  # empty when absent (msgspec cannot make Raw optional)
    error: dict[str, Any] | None = None

    @property
    def event_type(self) -> str | None:
        if self.params is not None and self.params.event is not None:
            return self.params.event.type
        return None

    @property
    def update_kind(self) -> str | None:
        """ACP: the ``sessionUpdate`` of a ``session/update`` notification."""
        if self.params is not None and self.params.update is not None:
            return self.params.update.kind
        return None

    @property
    def seq(self) -> int:
        return 0 if self.params is None else self.params.seq

    @property
    def text_deltas(self) -> int:
        """How many ``text_delta`` events this line carries: one, or a merged run's length."""
        if self.event_type != "text_delta":
            return 0
        assert self.params is not None
        first = self.params.seq_first
        return 1 if first is None else self.params.seq - first + 1


decode = msgspec.json.Decoder(Incoming).decode
_encode = msgspec.json.Encoder().encode
_any = msgspec.json.Decoder()


def encode_request(id_: int, method: str, params: Any | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return _encode(msg) + b"\n"


def daemon_command(*args: str, python_flags: tuple[str, ...] = (), command: str = "serve") -> list[str]:
    """``command``: the front-end, ``serve`` (Warren's protocol) or ``acp``."""
    return [sys.executable, *python_flags, "-m", "warren.daemon", command, *args]


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (VmRSS, VmHWM, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


class LineProcess:
    """A subprocess speaking newline-delimited JSON-RPC on stdin/stdout, with a line reader
    over its stdout: the daemon, or any other peer the benchmark talks to directly (such as
    an MCP server, to time it without the daemon)."""

    hung_exits: list[str] = []  # processes that ignored end of input and had to be killed

    def __init__(
        self,
        argv: list[str],
        *,
        stderr: Any = subprocess.DEVNULL,
        env: dict[str, str | None] | None = None,
        name: str = "",
    ) -> None:
        """``env`` overrides the inherited environment; a ``None`` value removes a variable."""
        full_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=full_env,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.name = name or " ".join(argv[1:])
        self.pid = self.proc.pid
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._buf = b""
        self._pos = 0
        self._next_id = 0

    # ------------------------------------------------------------------ raw I/O

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._in, view)
            view = view[n:]

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"timed out waiting for {self.name}")
        ready, _, _ = select.select([self._out], [], [], remaining)
        if not ready:
            raise BenchError(f"timed out waiting for {self.name}")
        chunk = os.read(self._out, READ_SIZE)
        if not chunk:
            raise BenchError(f"{self.name} closed stdout (exit code {self.proc.poll()})")
        self._buf = self._buf[self._pos :] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0

    def read_line(self, deadline: float) -> bytes:
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = self._buf[self._pos : end]
                self._pos = end + 1
                return line
            self._fill(deadline)

    def read_lines(self, deadline: float) -> list[bytes]:
        """Every complete line already buffered, reading the pipe only when there is none.

        Handing back lines in bulk lets a pipelined caller answer a whole chunk of
        responses with one ``write``, instead of one system call per response.
        """
        while True:
            end = self._buf.rfind(b"\n", self._pos)
            if end >= 0:
                lines = self._buf[self._pos : end].split(b"\n")
                self._pos = end + 1
                return lines
            self._fill(deadline)

    def messages(self, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Incoming]:
        """Decoded lines as they arrive, until the caller stops iterating."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(deadline)
            if line.strip():
                yield decode(line)

    # ------------------------------------------------------------------ requests

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, method: str, params: Any | None = None) -> int:
        id_ = self.new_id()
        self.write(encode_request(id_, method, params))
        return id_

    def wait(self, id_: int, timeout: float = DEFAULT_TIMEOUT) -> Incoming:
        """Read until the response ``id_``; notifications in between are skipped."""
        for msg in self.messages(timeout):
            if msg.id == id_ and msg.method is None:
                if msg.error is not None:
                    raise BenchError(f"request {id_} failed: {msg.error}")
                return msg
        raise AssertionError("unreachable")

    def call(self, method: str, params: Any | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Request, wait, and return the decoded ``result``."""
        return result_of(self.wait(self.send(method, params), timeout))

    # ------------------------------------------------------------------ process

    def status(self) -> dict[str, str]:
        """``/proc/<pid>/status`` as a dict (VmRSS, VmHWM, ...)."""
        return proc_status(self.pid)

    def close(self, timeout: float = 10.0) -> int:
        """End of input is a clean shutdown (PROTOCOL.md §1); kill only if it hangs."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                LineProcess.hung_exits.append(self.name)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Daemon(LineProcess):
    """The daemon as a subprocess: ``python -m warren.daemon COMMAND ARGS``."""

    profile_dir: Path | None = None  # when set, every daemon runs under cProfile (``--profile``)
    _profiles = 0

    def __init__(
        self,
        *args: str,
        python_flags: tuple[str, ...] = (),
        stderr: Any = subprocess.DEVNULL,
        env: dict[str, str | None] | None = None,
        command: str = "serve",
    ) -> None:
        if Daemon.profile_dir is not None and not python_flags:
            Daemon._profiles += 1
            stem = "-".join([command] * (command != "serve") + [a.strip("-") for a in args[:1]])
            out = Daemon.profile_dir / f"{Daemon._profiles:03d}-{stem}.prof"
            python_flags = ("-m", "cProfile", "-o", str(out))
        super().__init__(daemon_command(*args, python_flags=python_flags, command=command), stderr=stderr, env=env,
                         name=" ".join((command, *args)))
        self.args = args

    def initialize(self) -> Any:
        return self.call("initialize", {"protocol_version": 1, "client_info": {"name": "warren-bench", "version": "1"}})


def read_turn(daemon: LineProcess, id_: Any, deadline: float, on_read: Callable[[int, int], None]) -> Incoming:
    """Read until the response to ``id_``; after each read, ``on_read(deltas, lines)`` gets
    the number of ``text_delta`` events it held and of the lines that carried them (fewer
    when the daemon merged a slow reader's deltas), so a caller can time the stream as it comes."""
    while True:
        deltas = lines = 0
        response = None
        for raw in daemon.read_lines(deadline):
            if not raw:
                continue
            msg = decode(raw)
            if msg.method == "session/event":
                n = msg.text_deltas
                deltas += n
                lines += n > 0
            elif msg.id == id_:
                response = msg
        on_read(deltas, lines)
        if response is not None:
            return response


def read_response(
    proc: LineProcess, id_: Any, deadline: float, on_line: Callable[[bytes, Incoming, float], None]
) -> tuple[Incoming, float]:
    """Read until the response to ``id_``; every other line goes to ``on_line(raw, msg, now)``,
    ``now`` being when the read that brought it returned (``perf_counter`` seconds), so a
    caller can time events by their arrival. Returns the response and its arrival time."""
    clock = time.perf_counter
    response = None
    while response is None:
        lines = proc.read_lines(deadline)
        now = clock()
        for raw in lines:
            if not raw:
                continue
            msg = decode(raw)
            if msg.method is None and msg.id == id_:
                response = msg
            else:
                on_line(raw, msg, now)
    return response, now


def result_of(msg: Incoming) -> Any:
    if msg.error is not None:
        raise BenchError(f"request {msg.id} failed: {msg.error}")
    if not msg.result:
        raise BenchError(f"response {msg.id} has no result")
    return _any.decode(msg.result)
