"""The state of one side of a JSON-RPC 2.0 connection, with no I/O (as h11 keeps HTTP's).

Everything that decides what a request id means lives here: which requests are in flight
(so a duplicate id is refused and ``$/cancelRequest`` finds its target), which requests we
sent and are waiting for (so a response line finds its waiter), and which ids are valid at
all. A driver (``daemon.transport.peer``) keeps a token per entry (a cancel scope, a
waiter) and does the reading, the writing and the waiting; this class never knows method
names, so Warren's protocol and ACP share it.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from .errors import ErrorObject, error_object
from .jsonrpc import is_request_id

Token = TypeVar("Token")
Waiter = TypeVar("Waiter")


class PeerState(Generic[Token, Waiter]):
    def __init__(self, outbound_prefix: str = "warren-") -> None:
        self._inflight: dict[Any, Token] = {}
        self._outbound: dict[str | int, Waiter] = {}
        self._prefix = outbound_prefix
        self._next_outbound = 0

    # ------------------------------------------------------------------ requests we serve

    def admit(self, request_id: Any, token: Token) -> ErrorObject | None:
        """Register a request as in flight (at once, when its line is read: two lines read
        in one chunk must not both pass), or refuse a duplicate id."""
        if request_id is None:
            return None
        if request_id in self._inflight:
            return error_object(
                "INVALID_REQUEST",
                f"Invalid request: id {request_id!r} is already in flight; use a fresh id per request",
            )
        self._inflight[request_id] = token
        return None

    def finish(self, request_id: Any, token: Token) -> None:
        if request_id is not None and self._inflight.get(request_id) is token:
            del self._inflight[request_id]

    def cancel_target(self, params: Any, field: str = "id") -> Token | None:
        """The in-flight request a cancel notification names (``{id}`` in Warren's protocol,
        ``{requestId}`` in ACP's and MCP's), if any."""
        request_id = params.get(field) if isinstance(params, dict) else None
        return self._inflight.get(request_id) if is_request_id(request_id) else None

    def busy_besides(self, request_id: Any) -> bool:
        return any(k != request_id for k in self._inflight)

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------------ requests we send

    def open_outbound(self, waiter: Waiter) -> str:
        while True:  # skip an id a caller chose itself (``open_outbound_as``)
            self._next_outbound += 1
            request_id = f"{self._prefix}{self._next_outbound}"
            if request_id not in self._outbound:
                break
        self._outbound[request_id] = waiter
        return request_id

    def open_outbound_as(self, request_id: str | int, waiter: Waiter) -> bool:
        """Wait for the answer to a request whose id the caller chose (a test harness that
        names its requests); False, and nothing registered, while that id is still awaited."""
        if not is_request_id(request_id):
            raise ValueError(f"a request id is a string or an integer, not {request_id!r}")
        if request_id in self._outbound:
            return False
        self._outbound[request_id] = waiter
        return True

    def close_outbound(self, request_id: str | int) -> None:
        self._outbound.pop(request_id, None)

    def waiter_for(self, response_id: Any) -> Waiter | None:
        """The waiter of a response line, or None for an id we never sent (or gave up on)."""
        return self._outbound.get(response_id) if is_request_id(response_id) else None

    def waiters(self) -> list[Waiter]:
        return list(self._outbound.values())
