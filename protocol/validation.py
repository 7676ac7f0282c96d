"""Params validation that reports every problem, each with a JSON path.

msgspec stops at the first error. For ``-32602`` a client is better served by the whole
list, so on failure the params are re-checked field by field: unknown fields, missing
required fields, and each present field converted on its own.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .jsonrpc import ABSENT

T = TypeVar("T", bound=msgspec.Struct)

_AT = re.compile(r"^(.*) - at `(\$[^`]*)`$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`$")


class ParamsInvalid(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['message']} (at {e['path']})" for e in errors))
        self.errors = errors


def split_message(message: str) -> tuple[str, str]:
    """Split msgspec's ``"Expected `int`, got `str` - at `$.limit`"`` into message and path."""
    m = _AT.match(message)
    text, path = (m.group(1), m.group(2)) if m else (message, "$")
    unknown = _UNKNOWN.match(text)
    if unknown:
        path = f"{path}.{unknown.group(1)}"
    return text, path


def _rebase(path: str, prefix: str) -> str:
    return prefix + path[1:]


def validate(params: Any, params_type: type[T]) -> T:
    """Convert params (``ABSENT``/None means ``{}``) into ``params_type`` or raise ParamsInvalid."""
    if params is None or params is ABSENT:
        params = {}
    if isinstance(params, list):
        raise ParamsInvalid([{"path": "$", "message": "params must be an object (by-name), not an array"}])
    try:
        return msgspec.convert(params, params_type, strict=True)
    except msgspec.ValidationError as exc:
        first = split_message(str(exc))
    raise ParamsInvalid(_collect(params, params_type) or [{"path": first[1], "message": first[0]}])


def _collect(params: Any, params_type: type[msgspec.Struct]) -> list[dict[str, str]]:
    if not isinstance(params, dict):
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(params_type)}
    problems: list[dict[str, str]] = []
    for key in params:
        if key not in fields:
            problems.append({"path": f"$.{key}", "message": f"unknown field `{key}`"})
    for name, field in fields.items():
        if name not in params:
            if field.required:
                problems.append({"path": f"$.{name}", "message": f"missing required field `{name}`"})
            continue
        try:
            msgspec.convert(params[name], field.type, strict=True)
        except msgspec.ValidationError as exc:
            message, path = split_message(str(exc))
            problems.append({"path": _rebase(path, f"$.{name}"), "message": message})
        except TypeError:
            pass
    return problems
