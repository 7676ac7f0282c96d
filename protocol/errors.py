"""The error table of PROTOCOL.md section 6: numeric JSON-RPC codes and stable string codes.

The numeric code is what JSON-RPC requires; the string code in ``data.code`` is what a
program should branch on, because several string codes share one number (``-32600``).
"""

from __future__ import annotations

from typing import Any

import msgspec

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_CANCELLED = -32800
SESSION_NOT_FOUND = -32001
SESSION_BUSY = -32002
SESSION_NOT_RUNNING = -32003
SESSION_PERSISTENCE_DISABLED = -32004
SESSION_COMPACTION_DISABLED = -32005
SESSION_STORE_ERROR = -32006
SESSION_UNSUPPORTED = -32007
SESSION_SYSTEM_CONTEXT_CONFLICT = -32008
SESSION_ERROR = -32009
PROVIDER_ERROR = -32010
BUDGET_EXHAUSTED = -32011
AGENT_ERROR = -32013
SESSION_REVISION_CONFLICT = -32014
IDEMPOTENCY_CONFLICT = -32015
SESSION_STALE_BRANCH = -32016

#: data.code -> JSON-RPC code. The single source for both directions of the mapping.
CODES: dict[str, int] = {
    "PARSE_ERROR": PARSE_ERROR,
    "INVALID_REQUEST": INVALID_REQUEST,
    "MESSAGE_TOO_LARGE": INVALID_REQUEST,
    "METHOD_NOT_FOUND": METHOD_NOT_FOUND,
    "INVALID_PARAMS": INVALID_PARAMS,
    "INTERNAL_ERROR": INTERNAL_ERROR,
    "REQUEST_CANCELLED": REQUEST_CANCELLED,
    "SESSION_NOT_FOUND": SESSION_NOT_FOUND,
    "SESSION_BUSY": SESSION_BUSY,
    "SESSION_NOT_RUNNING": SESSION_NOT_RUNNING,
    "SESSION_PERSISTENCE_DISABLED": SESSION_PERSISTENCE_DISABLED,
    "SESSION_COMPACTION_DISABLED": SESSION_COMPACTION_DISABLED,
    "SESSION_STORE_ERROR": SESSION_STORE_ERROR,
    "SESSION_UNSUPPORTED": SESSION_UNSUPPORTED,
    "SESSION_SYSTEM_CONTEXT_CONFLICT": SESSION_SYSTEM_CONTEXT_CONFLICT,
    "SESSION_ERROR": SESSION_ERROR,
    "PROVIDER_ERROR": PROVIDER_ERROR,
    "BUDGET_EXHAUSTED": BUDGET_EXHAUSTED,
    "AGENT_ERROR": AGENT_ERROR,
    "SESSION_REVISION_CONFLICT": SESSION_REVISION_CONFLICT,
    "IDEMPOTENCY_CONFLICT": IDEMPOTENCY_CONFLICT,
    "SESSION_STALE_BRANCH": SESSION_STALE_BRANCH,
}


class ErrorObject(msgspec.Struct, frozen=True):
    """A JSON-RPC error member. ``data`` always holds ``code`` and ``retryable``."""

    code: int
    message: str
    data: dict[str, Any]


def error_object(
    string_code: str, message: str, *, retryable: bool = False, **extra: Any
) -> ErrorObject:
    """Build the error for a string code; extra keyword arguments become ``data`` fields."""
    data: dict[str, Any] = {"code": string_code, "retryable": retryable}
    data.update(extra)
    return ErrorObject(code=CODES[string_code], message=message, data=data)
