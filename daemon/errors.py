"""The session service's exception family and the one function that maps it to the wire.

Handlers raise these and never build error dicts. ``to_wire`` is the only place where an
exception becomes a JSON-RPC error, so the table in PROTOCOL.md section 6 lives in one spot
(with the numbers themselves in ``protocol.errors``).
"""

from __future__ import annotations

import os

from typing import Any

from warren.protocol.errors import ErrorObject, error_object


class WarrenError(Exception):
    """Base of every error a client may see. ``code`` is the stable ``data.code``."""

    code: str = "INTERNAL_ERROR"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: Context added where the error passes through (a failed turn adds its session id,
        #: so a failed first turn of ``session/create`` still names the session it made).
        self.context: dict[str, Any] = {}

    def data(self) -> dict[str, Any]:
        return {}


class SessionError(WarrenError):
    code = "SESSION_ERROR"


class NotFound(SessionError):
    code = "SESSION_NOT_FOUND"

    def __init__(self, session_id: str, *, archived: bool = False) -> None:
        super().__init__(
            f"Session {session_id!r} is archived: its history and events stay readable (session/history, "
            "session/events), and session/fork makes a live copy"
            if archived else f"No session {session_id!r}: check the id, or list sessions with session/list"
        )
        self.session_id = session_id
        self.archived = archived

    def data(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "archived": True} if self.archived else {"session_id": self.session_id}


class Busy(SessionError):
    code = "SESSION_BUSY"
    retryable = True

    def __init__(self, session_id: str, running_turn_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"Session {session_id!r} is running turn {running_turn_id!r}: wait for its result "
            "or call turn/interrupt"
        )
        self.session_id = session_id
        self.running_turn_id = running_turn_id

    def data(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "running_turn_id": self.running_turn_id}


class NotRunning(SessionError):
    code = "SESSION_NOT_RUNNING"

    def __init__(self, session_id: str, message: str | None = None) -> None:
        super().__init__(message or f"Session {session_id!r} has no running turn")
        self.session_id = session_id

    def data(self) -> dict[str, Any]:
        return {"session_id": self.session_id}


class PersistenceDisabled(SessionError):
    code = "SESSION_PERSISTENCE_DISABLED"


class CompactionDisabled(SessionError):
    code = "SESSION_COMPACTION_DISABLED"


class Store(SessionError):
    """The store failed: locked, full, read-only or corrupt. Committed data is untouched."""

    code = "SESSION_STORE_ERROR"

    def __init__(self, message: str, *, reason: str, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable

    def data(self) -> dict[str, Any]:
        return {"reason": self.reason}


class Unsupported(SessionError):
    code = "SESSION_UNSUPPORTED"

    def __init__(self, operation: str, message: str | None = None) -> None:
        super().__init__(message or f"{operation} is not supported")
        self.operation = operation

    def data(self) -> dict[str, Any]:
        return {"operation": self.operation}


class Agent(SessionError):
    code = "AGENT_ERROR"


class FailedWithData(SessionError):
    """A failure whose structured payload reaches the client unchanged as ``data.details``."""

    code = "SESSION_ERROR"

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details

    def data(self) -> dict[str, Any]:
        return {"details": self.details}


class ProviderFailed(SessionError):
    code = "PROVIDER_ERROR"

    def __init__(
        self,
        provider: str,
        kind: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_ms: int | None = None,
        provider_error_type: str | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.retryable = retryable
        self._data = {
            "provider": provider,
            "kind": kind,
            "status": status,
            "retry_after_ms": retry_after_ms,
            "provider_error_type": provider_error_type,
        }

    def data(self) -> dict[str, Any]:
        return self._data


class BudgetExhausted(SessionError):
    code = "BUDGET_EXHAUSTED"

    def __init__(self, budget: str, used: int, limit: int) -> None:
        super().__init__(f"Budget {budget} exhausted: used {used} of {limit}")
        self.budget, self.used, self.limit = budget, used, limit

    def data(self) -> dict[str, Any]:
        return {"budget": self.budget, "used": self.used, "limit": self.limit}


class SessionControlError(WarrenError):
    pass


class InvalidRequest(SessionControlError):
    """Params that parsed but make no sense; answered as ``-32602`` with ``data.errors``."""

    code = "INVALID_PARAMS"

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else [{"path": "$", "message": message}]
        self.extra = extra

    @classmethod
    def at(cls, path: str, message: str, **extra: Any) -> "InvalidRequest":
        return cls(f"Invalid params: {message} (at {path})", [{"path": path, "message": message}], **extra)

    def data(self) -> dict[str, Any]:
        return {"errors": self.errors, **self.extra}


class Conflict(SessionControlError):
    code = "SESSION_SYSTEM_CONTEXT_CONFLICT"

    def __init__(self, session_id: str, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency_key {idempotency_key!r} was already used with different text in session "
            f"{session_id!r}: use a new key for new text"
        )
        self.session_id = session_id
        self.idempotency_key = idempotency_key

    def data(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "idempotency_key": self.idempotency_key}


class RevisionConflict(SessionControlError):
    """``expected_revision`` is not the head: somebody else edited the session first."""

    code = "SESSION_REVISION_CONFLICT"

    def __init__(self, session_id: str, current_revision: str) -> None:
        super().__init__(
            f"Session {session_id!r} is at revision {current_revision}, not the expected one: "
            "read it again and redo the edit on the current head"
        )
        self.session_id = session_id
        self.current_revision = current_revision

    def data(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "current_revision": self.current_revision}


class StaleBranch(SessionControlError):
    """``requires_ancestor`` is not on the session's current transcript."""

    code = "SESSION_STALE_BRANCH"

    def __init__(self, session_id: str, current_revision: str, ancestor: str) -> None:
        super().__init__(
            f"Message {ancestor!r} is not in the current transcript of session {session_id!r}: "
            "it was edited away (or never there); read the session again"
        )
        self.session_id = session_id
        self.current_revision = current_revision
        self.ancestor = ancestor

    def data(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "current_revision": self.current_revision,
                "requires_ancestor": self.ancestor}


class IdempotencyConflict(SessionControlError):
    """A key (``idempotency_key``, ``operation_id``) reused with different params."""

    code = "IDEMPOTENCY_CONFLICT"

    def __init__(self, key: str, original: str, what: str) -> None:
        super().__init__(
            f"idempotency_key {key!r} was first used with different params (it made {what} {original!r}): "
            "use a new key for a new request"
        )
        self.key = key
        self.original = original

    def data(self) -> dict[str, Any]:
        return {"key": self.key, "original": self.original}


class Replayed(WarrenError):
    """A stored outcome answered again (an idempotent retry of a request that failed):
    the client gets the very error object the first attempt got."""

    def __init__(self, wire: ErrorObject) -> None:
        super().__init__(wire.message)
        self.wire = wire


class Internal(WarrenError):
    """An unexpected failure, already logged under ``error_id``; the client sees only the id."""

    code = "INTERNAL_ERROR"

    def __init__(self, error_id: str) -> None:
        super().__init__(f"Internal error {error_id}: the daemon's stderr log has the details under this error_id")
        self.error_id = error_id

    def data(self) -> dict[str, Any]:
        return {"error_id": self.error_id}


def new_error_id() -> str:
    return os.urandom(8).hex()


def to_wire(exc: BaseException, error_id: str | None = None) -> ErrorObject:
    """Map any exception to its JSON-RPC error. Unknown exceptions reveal nothing but an id."""
    if isinstance(exc, Replayed):
        return exc.wire
    if isinstance(exc, WarrenError):
        return error_object(exc.code, exc.message, retryable=exc.retryable, **{**exc.context, **exc.data()})
    return to_wire(Internal(error_id or new_error_id()))
