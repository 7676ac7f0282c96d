"""What the client raises: the daemon's error answers as exceptions, and a lost connection.

::

    ClientError                         anything this library raises on purpose
    ├── TransportError                  no answer can come: the daemon exited, a pipe closed,
    │                                   or it wrote a line the client cannot frame
    ├── ProtocolMismatch                an answer that does not fit the protocol's types
    │                                   (a daemon of another version); ``.value`` is the raw value
    └── WarrenError                     the daemon answered with a JSON-RPC error:
        │                               ``.code`` (number), ``.message``, ``.data`` (dict),
        │                               ``.string_code`` (``data.code``), ``.retryable``
        ├── RequestError                the request itself was wrong
        │   ├── ParseError              PARSE_ERROR
        │   ├── InvalidRequest          INVALID_REQUEST
        │   │   └── MessageTooLarge     MESSAGE_TOO_LARGE (``.limit``)
        │   ├── MethodNotFound          METHOD_NOT_FOUND
        │   └── InvalidParams           INVALID_PARAMS (``.errors``: [{path, message}])
        ├── InternalError               INTERNAL_ERROR (``.error_id`` names the daemon's log entry)
        ├── RequestCancelled            REQUEST_CANCELLED
        ├── SessionFault                a session cannot do what was asked
        │   ├── SessionNotFound         SESSION_NOT_FOUND
        │   ├── SessionBusy             SESSION_BUSY (retryable; ``running_turn_id`` in data)
        │   ├── SessionNotRunning       SESSION_NOT_RUNNING
        │   ├── SessionUnsupported      SESSION_UNSUPPORTED
        │   ├── SessionError            SESSION_ERROR (``.details``: {reason, …})
        │   ├── SystemContextConflict   SESSION_SYSTEM_CONTEXT_CONFLICT
        │   ├── RevisionConflict        SESSION_REVISION_CONFLICT (``current_revision`` in data)
        │   ├── StaleBranch             SESSION_STALE_BRANCH
        │   ├── PersistenceDisabled     SESSION_PERSISTENCE_DISABLED (reserved)
        │   └── CompactionDisabled      SESSION_COMPACTION_DISABLED (reserved)
        ├── StoreError                  SESSION_STORE_ERROR (``.reason``: locked, io, corrupt, …)
        ├── IdempotencyConflict         IDEMPOTENCY_CONFLICT
        ├── ProviderError               PROVIDER_ERROR (``.kind``: rate_limited, auth, …)
        ├── BudgetExhausted             BUDGET_EXHAUSTED (reserved)
        └── AgentError                  AGENT_ERROR (reserved)

The class is chosen by ``data.code``, the stable string the protocol tells programs to branch
on, never by the number alone: several codes share ``-32600``. A ``data.code`` this library
does not know (a newer daemon) falls back to the class of its number, else ``WarrenError``,
which is what the protocol asks of a client ("handle it like its numeric class").
"""

from __future__ import annotations

from typing import Any

from warren.protocol import errors as codes


class ClientError(Exception):
    """The root of everything this library raises on purpose."""


class TransportError(ClientError):
    """The connection to the daemon is gone (it exited, or a pipe closed): no answer can
    come, so every request waiting for one raises this."""


class ProtocolMismatch(ClientError):
    """The daemon answered, but with a value that does not fit the protocol's type for it.
    ``value`` is what it sent, so a caller can still use it (``Client.request`` never
    raises this: it returns values as they are)."""

    def __init__(self, message: str, value: Any) -> None:
        super().__init__(message)
        self.value = value


class WarrenError(ClientError):
    """The daemon answered a request with a JSON-RPC error.

    ``data`` is the error's ``data`` object: it always holds ``code`` (the stable string)
    and ``retryable``, plus the fields the protocol reference lists for that code.
    """

    #: The ``data.code`` this class stands for (None for the family classes).
    STRING_CODE: str | None = None

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    @property
    def string_code(self) -> str | None:
        value = self.data.get("code")
        return value if isinstance(value, str) else None

    @property
    def retryable(self) -> bool:
        return self.data.get("retryable") is True

    @property
    def error(self) -> dict[str, Any]:
        """The error object as it was on the wire."""
        return {"code": self.code, "message": self.message, "data": self.data}

    def __str__(self) -> str:
        return f"{self.message} ({self.string_code or self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.data!r})"


class RequestError(WarrenError):
    """The request was wrong: fix the request, not the session."""


class ParseError(RequestError):
    STRING_CODE = "PARSE_ERROR"


class InvalidRequest(RequestError):
    STRING_CODE = "INVALID_REQUEST"


class MessageTooLarge(InvalidRequest):
    STRING_CODE = "MESSAGE_TOO_LARGE"

    @property
    def limit(self) -> int | None:
        return self.data.get("limit")


class MethodNotFound(RequestError):
    STRING_CODE = "METHOD_NOT_FOUND"


class InvalidParams(RequestError):
    STRING_CODE = "INVALID_PARAMS"

    @property
    def errors(self) -> list[dict[str, Any]]:
        """One ``{path, message}`` per problem, paths in ``$.field[0].sub`` notation."""
        value = self.data.get("errors")
        return value if isinstance(value, list) else []


class InternalError(WarrenError):
    STRING_CODE = "INTERNAL_ERROR"

    @property
    def error_id(self) -> str | None:
        return self.data.get("error_id")


class RequestCancelled(WarrenError):
    STRING_CODE = "REQUEST_CANCELLED"


class SessionFault(WarrenError):
    """The session named cannot do what was asked (unknown, busy, edited meanwhile, …)."""

    @property
    def session_id(self) -> str | None:
        return self.data.get("session_id")


class SessionNotFound(SessionFault):
    STRING_CODE = "SESSION_NOT_FOUND"


class SessionBusy(SessionFault):
    STRING_CODE = "SESSION_BUSY"


class SessionNotRunning(SessionFault):
    STRING_CODE = "SESSION_NOT_RUNNING"


class SessionUnsupported(SessionFault):
    STRING_CODE = "SESSION_UNSUPPORTED"


class SessionError(SessionFault):
    STRING_CODE = "SESSION_ERROR"

    @property
    def details(self) -> dict[str, Any]:
        value = self.data.get("details")
        return value if isinstance(value, dict) else {}


class SystemContextConflict(SessionFault):
    STRING_CODE = "SESSION_SYSTEM_CONTEXT_CONFLICT"


class RevisionConflict(SessionFault):
    STRING_CODE = "SESSION_REVISION_CONFLICT"


class StaleBranch(SessionFault):
    STRING_CODE = "SESSION_STALE_BRANCH"


class PersistenceDisabled(SessionFault):
    STRING_CODE = "SESSION_PERSISTENCE_DISABLED"


class CompactionDisabled(SessionFault):
    STRING_CODE = "SESSION_COMPACTION_DISABLED"


class StoreError(WarrenError):
    STRING_CODE = "SESSION_STORE_ERROR"

    @property
    def reason(self) -> str | None:
        return self.data.get("reason")


class IdempotencyConflict(WarrenError):
    STRING_CODE = "IDEMPOTENCY_CONFLICT"


class ProviderError(WarrenError):
    STRING_CODE = "PROVIDER_ERROR"

    @property
    def kind(self) -> str | None:
        return self.data.get("kind")


class BudgetExhausted(WarrenError):
    STRING_CODE = "BUDGET_EXHAUSTED"


class AgentError(WarrenError):
    STRING_CODE = "AGENT_ERROR"


def _leaves(cls: type[WarrenError]) -> list[type[WarrenError]]:
    out = [cls] if cls.STRING_CODE is not None else []
    for sub in cls.__subclasses__():
        out.extend(_leaves(sub))
    return out


#: ``data.code`` -> class. Every string code of the protocol's error table has one.
BY_STRING_CODE: dict[str, type[WarrenError]] = {c.STRING_CODE: c for c in _leaves(WarrenError)}  # type: ignore[misc]
#: JSON-RPC number -> class, for a ``data.code`` this library does not know. A number several
#: codes share maps to the first class of it, which ``_leaves`` puts before its subclasses
#: (``-32600``: InvalidRequest, the class of its generic meaning, not MessageTooLarge).
BY_NUMBER: dict[int, type[WarrenError]] = {codes.CODES[s]: c for s, c in reversed(BY_STRING_CODE.items())}


def error_from_object(error: Any) -> WarrenError:
    """The exception for a JSON-RPC error object as it came off the wire (a dict)."""
    if not isinstance(error, dict):
        return WarrenError(codes.INTERNAL_ERROR, f"malformed error object: {error!r}", {})
    code = error.get("code")
    message = error.get("message")
    data = error.get("data")
    number = code if isinstance(code, int) and not isinstance(code, bool) else codes.INTERNAL_ERROR
    text = message if isinstance(message, str) else "error"
    string_code = data.get("code") if isinstance(data, dict) else None
    cls = BY_STRING_CODE.get(string_code) if isinstance(string_code, str) else None
    if cls is None:
        cls = BY_NUMBER.get(number, WarrenError)
    return cls(number, text, data if isinstance(data, dict) else {})
