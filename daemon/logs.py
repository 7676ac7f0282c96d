"""Logging: one JSON object per line on stderr.

Every module logs through ``get_logger``. A call below the configured level returns at once;
one at or above it writes a line such as
``{"logger":"warren.rpc","id":1,"method":"session/read",…,"event":"request","level":"info","ts":"…Z"}``:
the logger's name, its bound context, the call's fields, then ``event``, ``level`` and an ISO
8601 UTC timestamp, with an ``exc_info`` exception rendered as ``exception`` (its traceback).

This was structlog, configured to produce exactly these lines. Measured here, importing
structlog costs 154M instructions on top of the whole daemon's ~350M (it pulls in its
console renderers and their optional dependencies), all of it paid in the first
milliseconds after ``initialize`` is answered, when an editor is waiting for its session;
the few lines below do the same job with msgspec, which the daemon loads anyway.

Nothing logged at info level carries prompt or reply text or a credential: log calls pass
ids, sizes, codes and durations only. ``--log-level debug`` is the one way to see more.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_threshold = _LEVELS["info"]
_encode: Any = None


def configure(level: str = "info") -> None:
    global _threshold
    _threshold = _LEVELS.get(level.lower(), _LEVELS["info"])


def _timestamp() -> str:
    now = time.time()
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1e6):06d}Z"


def _write(record: dict[str, Any]) -> None:
    global _encode
    if _encode is None:
        import msgspec

        _encode = msgspec.json.Encoder(enc_hook=repr).encode
    exc = record.pop("exc_info", None)
    if exc:
        if exc is True:
            exc = sys.exc_info()[1]
        if isinstance(exc, BaseException):
            import traceback  # only for the rare line that carries one: it costs ~3 ms to import

            record["exception"] = "".join(traceback.format_exception(exc)).rstrip("\n")
    try:
        sys.stderr.buffer.write(_encode(record) + b"\n")
        sys.stderr.buffer.flush()
    except (OSError, ValueError):
        pass  # stderr closed or full: a log line is never worth failing the request for


class Logger:
    """``log.info("event", key=value, …)``, and ``bind`` for context every line carries."""

    __slots__ = ("_name", "_context")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}

    def bind(self, **context: Any) -> "Logger":
        return Logger(self._name, {**self._context, **context})

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if level < _threshold:
            return
        _write({"logger": self._name, **self._context, **kw, "event": event, "level": method, "ts": _timestamp()})

    def debug(self, event: str, **kw: Any) -> None:
        self._log(10, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(20, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(30, "warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log(40, "error", event, kw)


def get_logger(name: str) -> Logger:
    return Logger(name)
