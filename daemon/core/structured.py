"""Structured output: whether a final answer is JSON matching the turn's ``output_schema``,
and what to tell the model when it is not.

Providers with a JSON-schema mode are asked to use it (OpenAI's ``response_format``,
Anthropic through a forced tool); the answer is still checked here, because a compatible
server may ignore the mode, and the scripted provider has none.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from .. import errors

_decode = msgspec.json.Decoder()


def json_path(parts: Iterable[Any]) -> str:
    """A jsonschema error's path (``exc.path``, ``absolute_path``) as ``.a[0].b``, to follow
    ``$`` or the path of the value checked."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def schema_problem(schema: dict[str, Any], path: str) -> dict[str, str] | None:
    """What makes ``schema`` (found at ``path``) no valid JSON Schema, or None."""
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return {"path": f"{path}{json_path(exc.path)}", "message": exc.message}
    return None


def check_schema(schema: dict[str, Any] | None, path: str = "$.output_schema") -> None:
    """Refuse what is not a JSON Schema object, naming where it is wrong."""
    problem = None if schema is None else schema_problem(schema, path)
    if problem is not None:
        raise errors.InvalidRequest.at(problem["path"], problem["message"])


def parse(text: str, schema: dict[str, Any]) -> tuple[Any, list[str]]:
    """``(value, [])`` when ``text`` is JSON (a ```json fence around it is forgiven)
    matching ``schema``; else ``(None, what is wrong)``."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0].strip()
    try:
        value = _decode.decode(body)
    except msgspec.DecodeError as exc:
        return None, [f"the answer is not JSON: {exc}"]
    from jsonschema import Draft202012Validator

    problems = [
        f"{e.message} (at ${json_path(e.absolute_path)})"
        for e in Draft202012Validator(schema).iter_errors(value)
    ]
    return (None, problems[:10]) if problems else (value, [])


def correction(problems: list[str]) -> str:
    """The user message that asks for the answer again."""
    listed = "\n".join(f"- {p}" for p in problems)
    return (
        "Your last answer does not match the required JSON schema:\n"
        f"{listed}\n"
        "Answer again with only the JSON value, matching the schema exactly."
    )
