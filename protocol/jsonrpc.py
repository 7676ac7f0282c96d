"""JSON-RPC 2.0 envelopes: turn one inbound line into typed messages, and encode outbound ones.

Pure functions over bytes and values. The daemon decides what to *do* with a message; this
module only decides what the message *is*, following JSON-RPC 2.0 sections 4 to 6.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from .errors import ErrorObject, error_object

Id = Union[str, int, None]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class Request(msgspec.Struct, frozen=True):
    id: Id
    method: str
    params: Any  # dict, list, or _ABSENT


class Notification(msgspec.Struct, frozen=True):
    method: str
    params: Any


class Response(msgspec.Struct, frozen=True):
    """A client's answer to a request the daemon sent (``tool/execute``)."""

    id: Id
    result: Any = None
    error: Any = None


class Invalid(msgspec.Struct, frozen=True):
    """An element that is not a valid JSON-RPC message; answered with ``error`` and ``id``."""

    id: Id
    error: ErrorObject


Message = Union[Request, Notification, Response, Invalid]


class Batch(msgspec.Struct, frozen=True):
    messages: list[Message]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


def parse_line(line: bytes) -> Message | Batch:
    """Classify one line. Never raises: every failure becomes an ``Invalid`` message."""
    try:
        value = _decoder.decode(line)
    except RecursionError:
        # msgspec raises this (not DecodeError) for arrays/objects nested ~1000 deep.
        return Invalid(None, error_object("PARSE_ERROR", "Parse error: JSON nested too deeply"))
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec reports bad UTF-8 outside strings as a JSON syntax error: check it ourselves.
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            reason = "invalid UTF-8"
        else:
            reason = "invalid JSON"
        return Invalid(None, error_object("PARSE_ERROR", f"Parse error: {reason}"))
    if isinstance(value, list):
        if not value:
            return Invalid(None, error_object("INVALID_REQUEST", "Invalid request: empty batch"))
        return Batch([classify(v) for v in value])
    return classify(value)


def is_request_id(value: Any) -> bool:
    """Only a string or an integer can name a request (``true`` or ``1.0`` must not name
    request ``1``, and a list would not even hash)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _invalid(id_: Id, why: str) -> Invalid:
    return Invalid(id_, error_object("INVALID_REQUEST", f"Invalid request: {why}"))


def classify(value: Any) -> Message:
    """Classify one decoded JSON value (one line, or one element of a batch)."""
    if not isinstance(value, dict):
        return _invalid(None, "expected a JSON object")
    raw_id = value.get("id", ABSENT)
    if raw_id is ABSENT or raw_id is None or is_request_id(raw_id):
        id_: Id = None if raw_id is ABSENT else raw_id
    else:
        return _invalid(None, "id must be a string, an integer or null")
    if value.get("jsonrpc") != "2.0":
        return _invalid(id_, 'jsonrpc must be "2.0"')
    method = value.get("method", ABSENT)
    if method is ABSENT:
        if raw_id is not ABSENT and ("result" in value) != ("error" in value):
            return Response(id_, value.get("result"), value.get("error"))
        return _invalid(id_, "missing method")
    if not isinstance(method, str):
        return _invalid(id_, "method must be a string")
    params = value.get("params", ABSENT)
    if params is not ABSENT and not isinstance(params, (dict, list)):
        return _invalid(id_, "params must be an object or an array")
    if raw_id is ABSENT:
        return Notification(method, params)
    return Request(id_, method, params)


def encode_result(id_: Id, result: Any) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": id_, "result": result}) + b"\n"


def encode_error(id_: Id, error: ErrorObject) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": id_, "error": error}) + b"\n"


def encode_notification(method: str, params: Any) -> bytes:
    """``params`` may be ``ABSENT``: the line then has no ``params`` member."""
    if params is ABSENT:
        return _encoder.encode({"jsonrpc": "2.0", "method": method}) + b"\n"
    return _encoder.encode({"jsonrpc": "2.0", "method": method, "params": params}) + b"\n"


def encode_request(id_: Id, method: str, params: Any) -> bytes:
    """``params`` may be ``ABSENT``: the line then has no ``params`` member."""
    if params is ABSENT:
        return _encoder.encode({"jsonrpc": "2.0", "id": id_, "method": method}) + b"\n"
    return _encoder.encode({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}) + b"\n"


def encode_batch(parts: list[bytes]) -> bytes:
    """Join already-encoded single responses (each ending in a newline) into one array line."""
    return b"[" + b",".join(p.rstrip(b"\n") for p in parts) + b"]\n"
