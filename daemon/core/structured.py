"""Structured output: whether a final answer is JSON matching the turn's ``output_schema``,
and what to tell the model when it is not.

Providers with a JSON-schema mode are asked to use it (OpenAI's ``response_format``,
Anthropic through a forced tool); the answer is still checked here, because a compatible
server may ignore the mode, and the scripted provider has none.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import errors

_decode = msgspec.json.Decoder()


def check_schema(schema: dict[str, Any] | None, path: str = "$.output_schema") -> None:
    """Refuse what is not a JSON Schema object, naming where it is wrong."""
    if schema is None:
        return
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise errors.InvalidRequest.at(f"{path}{where}", exc.message) from None


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
        f"{e.message} (at ${''.join(f'[{p}]' if isinstance(p, int) else f'.{p}' for p in e.absolute_path)})"
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
