"""Logging: structlog, one JSON object per line on stderr, imported only when needed.

Every module logs through ``get_logger``. The loggers it returns are cheap stand-ins:
a call below the configured level returns at once, and the first call that must write
imports and configures structlog. Importing structlog costs ~10 ms, which would be a
tenth of the start-up budget; this way the answer to ``initialize`` never waits for it.

Nothing logged at info level carries prompt or reply text or a credential: log calls pass
ids, sizes, codes and durations only. ``--log-level debug`` is the one way to see more.
"""

from __future__ import annotations

import sys
from typing import Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_threshold = _LEVELS["info"]
_real_factory: Any = None


def configure(level: str = "info") -> None:
    """Set the level; structlog itself is configured on the first line that is written."""
    global _threshold, _real_factory
    _threshold = _LEVELS.get(level.lower(), _LEVELS["info"])
    _real_factory = None


def _structlog_logger(name: str) -> Any:
    global _real_factory
    if _real_factory is None:
        import msgspec
        import structlog

        encoder = msgspec.json.Encoder(enc_hook=repr)

        def render(logger: object, method: str, event: dict[str, object]) -> bytes:
            return encoder.encode(event)

        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                structlog.processors.format_exc_info,
                render,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_threshold),
            logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer),
            cache_logger_on_first_use=True,
        )
        _real_factory = structlog.get_logger
    return _real_factory(name)


class Logger:
    """The subset of structlog's bound-logger API the daemon uses."""

    __slots__ = ("_name", "_context", "_real")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}
        self._real: Any = None

    def bind(self, **context: Any) -> "Logger":
        return Logger(self._name, {**self._context, **context})

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if level < _threshold:
            return
        if self._real is None or _real_factory is None:
            self._real = _structlog_logger(self._name).bind(logger=self._name, **self._context)
        getattr(self._real, method)(event, **kw)

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
