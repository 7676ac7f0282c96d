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


def split_message(message: str, root: Any = None) -> tuple[str, str]:
    """Split msgspec's ``"Expected `int`, got `str` - at `$.limit`"`` into message and path.
    With ``root`` (the type the whole value was converted to), an unknown field gets the
    closest known name as a suggestion (``delay`` → ``delay_ms``)."""
    m = _AT.match(message)
    text, path = (m.group(1), m.group(2)) if m else (message, "$")
    unknown = _UNKNOWN.match(text)
    if unknown:
        if root is not None:
            text += _did_you_mean(unknown.group(1), field_names(root, path))
        path = f"{path}.{unknown.group(1)}"
    return text, path


_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def field_names(root: Any, path: str) -> list[str]:
    """The field names of the object at ``path`` (``$.budget``, ``$.script[0]``) in a value
    of type ``root``: where a name the client misspelt should have come from."""
    from msgspec import inspect

    info: Any = inspect.type_info(root)
    for step in _STEP.finditer(path[1:]):
        info = _unwrap(info)
        if step.group(1) is not None and isinstance(info, inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == step.group(1)), None)
        elif step.group(2) is not None and isinstance(info, (inspect.ListType, inspect.TupleType)):
            info = getattr(info, "item_type", None)
        else:
            return []
        if info is None:
            return []
    info = _unwrap(info)
    return [f.encode_name for f in info.fields] if isinstance(info, inspect.StructType) else []


def _unwrap(info: Any) -> Any:
    """Optional and union types: the struct among their members (the one a typo is in)."""
    from msgspec import inspect

    while isinstance(info, (inspect.UnionType, inspect.Metadata)):
        if isinstance(info, inspect.Metadata):
            info = info.type
            continue
        members = [t for t in info.types if isinstance(t, (inspect.StructType, inspect.ListType, inspect.Metadata))]
        if len(members) != 1:
            return info
        info = members[0]
    return info


def _did_you_mean(name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


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
        first = split_message(str(exc), params_type)
    raise ParamsInvalid(_collect(params, params_type) or [{"path": first[1], "message": first[0]}])


def _collect(params: Any, params_type: type[msgspec.Struct]) -> list[dict[str, str]]:
    if not isinstance(params, dict):
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(params_type)}
    problems: list[dict[str, str]] = []
    for key in params:
        if key not in fields:
            problems.append({"path": f"$.{key}", "message": f"unknown field `{key}`" + _did_you_mean(key, list(fields))})
    for name, field in fields.items():
        if name not in params:
            if field.required:
                problems.append({"path": f"$.{name}", "message": f"missing required field `{name}`"})
            continue
        try:
            msgspec.convert(params[name], field.type, strict=True)
        except msgspec.ValidationError as exc:
            message, path = split_message(str(exc), field.type)
            problems.append({"path": _rebase(path, f"$.{name}"), "message": message})
        except TypeError:
            pass
    return problems
