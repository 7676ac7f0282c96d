"""structlog set-up: one JSON object per line on stderr.

Nothing logged at info level carries prompt or reply text or a credential: log calls pass
ids, sizes, codes and durations only. ``--log-level debug`` is the one way to see more.
"""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog

_encoder = msgspec.json.Encoder()


def _render(logger: object, name: str, event: dict[str, object]) -> bytes:
    return _encoder.encode(event)


def _default(obj: object) -> object:
    return repr(obj)


def configure(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    global _encoder
    _encoder = msgspec.json.Encoder(enc_hook=_default)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
