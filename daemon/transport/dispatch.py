"""Method dispatch: name -> params type -> handler, with every failure mapped to the wire.

This replaces jsonrpcserver (see the issue note): importing it costs ~110 ms of start-up
(it pulls in jsonschema to validate each request), and its catch-all sends exception text
to the client. What remains for us to do is small and lives here. It is generic: a
front-end gives the table (each method name beside its params type and handler) and the
one function that maps its exceptions to its wire's error objects.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import msgspec

from warren.protocol.errors import ErrorObject, error_object
from warren.protocol.validation import ParamsInvalid, validate

from .. import errors
from ..logs import get_logger

log = get_logger("warren.rpc")

Handler = Callable[[Any, "RequestContext"], Awaitable[Any]]
ErrorMapper = Callable[[BaseException, "str | None"], ErrorObject]


class RequestContext(msgspec.Struct):
    id: Any
    method: str
    session_id: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Run once the response line is written (``shutdown`` stops reading then).
    after_response: Callable[[], None] | None = None


class Outcome(msgspec.Struct):
    result: Any = None
    error: ErrorObject | None = None
    after_response: Callable[[], None] | None = None


class Dispatcher:
    def __init__(
        self,
        table: dict[str, tuple[type[msgspec.Struct], Handler]],
        *,
        to_wire: ErrorMapper = errors.to_wire,
        quiet: frozenset[str] = frozenset(),
    ) -> None:
        """``quiet``: reads that editors poll, logged at debug when they succeed, so that
        the info log says what changed rather than how often a plugin looked."""
        self._table = table
        self._to_wire = to_wire
        self._quiet = quiet

    @property
    def methods(self) -> list[str]:
        return list(self._table)

    async def call(self, request_id: Any, method: str, raw_params: Any) -> Outcome:
        """Run one method. Never raises except for cancellation, which the caller turns
        into ``REQUEST_CANCELLED``."""
        started = time.perf_counter()
        ctx = RequestContext(request_id, method)
        outcome = "ok"
        try:
            entry = self._table.get(method)
            if entry is None:
                outcome = "METHOD_NOT_FOUND"
                return Outcome(error=error_object("METHOD_NOT_FOUND", f"Method not found: {method}", method=method))
            params_type, handler = entry
            try:
                params = validate(raw_params, params_type)
            except ParamsInvalid as exc:
                outcome = "INVALID_PARAMS"
                return Outcome(error=self._to_wire(errors.InvalidRequest(f"Invalid params: {exc}", exc.errors), None))
            ctx.session_id = getattr(params, "session_id", None)
            try:
                return Outcome(await handler(params, ctx), after_response=ctx.after_response)
            except errors.WarrenError as exc:
                outcome = exc.code
                return Outcome(error=self._to_wire(exc, None))
            except Exception as exc:  # noqa: BLE001 - the client gets only an error_id
                error_id = errors.new_error_id()
                outcome = "INTERNAL_ERROR"
                log.error("internal_error", error_id=error_id, id=request_id, method=method, exc_info=exc)
                return Outcome(error=self._to_wire(exc, error_id))
        except BaseException:
            outcome = "REQUEST_CANCELLED"
            raise
        finally:
            quiet = outcome == "ok" and method in self._quiet
            (log.debug if quiet else log.info)(
                "request",
                id=request_id,
                method=method,
                session_id=ctx.session_id,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                outcome=outcome,
                **ctx.extra,
            )
