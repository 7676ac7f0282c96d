"""Method dispatch: name -> params type -> handler, with every failure mapped to the wire.

This replaces jsonrpcserver (see the issue note): importing it costs ~110 ms of start-up
(it pulls in jsonschema to validate each request), and its catch-all sends exception text
to the client. What remains for us to do is small and lives here.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import msgspec

from protocol.errors import ErrorObject, error_object
from protocol.methods import METHODS
from protocol.validation import ParamsInvalid, validate

from .. import errors
from ..logs import get_logger

log = get_logger("warren.rpc")

Handler = Callable[[Any, "RequestContext"], Awaitable[msgspec.Struct]]

#: Reads that editors poll: logged at debug when they succeed, so that the info log says
#: what changed rather than how often a plugin looked. Every failure is logged at info.
QUIET_METHODS = frozenset({"initialize", "session/read", "session/list", "session/history", "providers/list"})


class RequestContext(msgspec.Struct):
    id: Any
    method: str
    session_id: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Dispatcher:
    def __init__(self, handlers: dict[str, Handler]) -> None:
        missing = set(METHODS) ^ set(handlers)
        if missing:
            raise RuntimeError(f"dispatch table and protocol.methods disagree on {sorted(missing)}")
        self._table = {name: (METHODS[name].params, handler) for name, handler in handlers.items()}

    @property
    def methods(self) -> list[str]:
        return list(self._table)

    async def call(self, request_id: Any, method: str, raw_params: Any) -> tuple[Any, ErrorObject | None]:
        """Run one method; returns ``(result, None)`` or ``(None, error)``. Never raises
        except for cancellation, which the caller turns into ``REQUEST_CANCELLED``."""
        started = time.perf_counter()
        ctx = RequestContext(request_id, method)
        outcome = "ok"
        try:
            entry = self._table.get(method)
            if entry is None:
                outcome = "METHOD_NOT_FOUND"
                return None, error_object("METHOD_NOT_FOUND", f"Method not found: {method}", method=method)
            params_type, handler = entry
            try:
                params = validate(raw_params, params_type)
            except ParamsInvalid as exc:
                outcome = "INVALID_PARAMS"
                return None, error_object("INVALID_PARAMS", f"Invalid params: {exc}", errors=exc.errors)
            ctx.session_id = getattr(params, "session_id", None)
            try:
                return await handler(params, ctx), None
            except errors.WarrenError as exc:
                outcome = exc.code
                return None, errors.to_wire(exc)
            except Exception as exc:  # noqa: BLE001 - the client gets only an error_id
                error_id = errors.new_error_id()
                outcome = "INTERNAL_ERROR"
                log.error("internal_error", error_id=error_id, id=request_id, method=method, exc_info=exc)
                return None, errors.to_wire(exc, error_id)
        except BaseException:
            outcome = "REQUEST_CANCELLED"
            raise
        finally:
            quiet = outcome == "ok" and method in QUIET_METHODS
            (log.debug if quiet else log.info)(
                "request",
                id=request_id,
                method=method,
                session_id=ctx.session_id,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                outcome=outcome,
                **ctx.extra,
            )
