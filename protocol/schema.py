"""JSON Schema (draft 2020-12) for the wire contract, generated from the msgspec types.

``generate()`` maps a relative path (``methods/session.create.params.json``, ...) to a
schema, derived from ``protocol.methods.METHODS``, ``protocol.events.EVENT_TYPES`` and
``protocol.errors.CODES``: a new method, event type or error code appears here without
touching this module. ``render()`` gives the exact text of a checked-in file. Only
``main`` touches the file system::

    python -m warren.protocol.schema schemas           # (re)write schemas/, drop stale files
    python -m warren.protocol.schema schemas --check   # exit 1 if schemas/ is out of date

Layout of the output directory:

- ``methods/<method>.params.json`` and ``methods/<method>.result.json`` for every method,
  ``/`` in the method name replaced by ``.``; a method with several result types
  (``session/create``) gets an ``anyOf``.
- ``events/<type>.json`` for every ``session/event`` event type.
- ``notifications/session.event.params.json``: the params of the ``session/event``
  notification; ``notifications/$.cancelRequest.params.json`` and any other client
  notification likewise.
- ``error.json``: the JSON-RPC ``error`` member, with ``data.code`` / ``data.retryable``.
- ``warren.schema.json``: every definition under ``$defs``, plus an index (``methods``,
  ``events``, ``notifications``, ``error``) of ``$ref``\\ s into it.
- ``typescript/``: not written here, but by ``protocol.typescript`` (TypeScript declarations
  from the same definitions); left alone.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import msgspec

from . import PROTOCOL_VERSION
from .errors import CODES, ErrorObject
from .events import EVENT_TYPES, SessionEventParams, event_type_name
from .methods import CLIENT_NOTIFICATIONS, METHODS, SERVER_REQUESTS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
DEFS = "#/$defs/"
REF_TEMPLATE = DEFS + "{name}"
COMBINED = "warren.schema.json"

Schema = dict[str, Any]


def file_stem(name: str) -> str:
    """``session/create`` -> ``session.create`` (also for ``$/cancelRequest``)."""
    return name.replace("/", ".")


# ---------------------------------------------------------------- refinements


def _error_object_schema(base: Schema) -> Schema:
    """msgspec sees ``data: dict[str, Any]``; the contract says more (PROTOCOL.md §6)."""
    schema = copy.deepcopy(base)
    props = schema.setdefault("properties", {})
    props["code"] = {
        "type": "integer",
        "enum": sorted(set(CODES.values())),
        "description": "The JSON-RPC error code. Several data.code values share one number.",
    }
    props["data"] = {
        "type": "object",
        "description": "Always holds the stable string `code` (branch on this) and `retryable`; "
        "other fields depend on the code.",
        "properties": {
            "code": {"enum": sorted(CODES)},
            "retryable": {"type": "boolean"},
        },
        "required": ["code", "retryable"],
    }
    return schema


_REFINE = {ErrorObject.__name__: _error_object_schema}


def _tidy(value: Any) -> Any:
    """Docstrings become one-line descriptions in Markdown style (``x`` -> `x`)."""
    if isinstance(value, dict):
        return {
            k: (" ".join(v.split()).replace("``", "`") if k == "description" and isinstance(v, str) else _tidy(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def _components(types: Iterable[Any]) -> tuple[list[Schema], dict[str, Schema]]:
    schemas, components = msgspec.json.schema_components(list(types), ref_template=REF_TEMPLATE)
    refined = {name: _tidy(_REFINE[name](s) if name in _REFINE else s) for name, s in components.items()}
    return list(schemas), refined


def _mentions(value: Any, ref: str) -> bool:
    if isinstance(value, dict):
        return value.get("$ref") == ref or any(_mentions(v, ref) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, ref) for v in value)
    return False


def _document(title: str, types: tuple[Any, ...], description: str | None = None) -> Schema:
    """A standalone schema for one type (inlined at the root) or a union of several (anyOf)."""
    schemas, components = _components(types)
    defs = dict(components)
    if len(schemas) == 1 and set(schemas[0]) == {"$ref"}:
        name = schemas[0]["$ref"][len(DEFS):]
        root = dict(defs[name])
        if not any(_mentions(v, schemas[0]["$ref"]) for v in defs.values()):
            del defs[name]  # not recursive: the root itself is the definition
    else:
        root = {"anyOf": schemas}
    root.pop("title", None)
    doc: Schema = {"$schema": DIALECT, "title": title}
    if description and "description" not in root:
        doc["description"] = description
    doc.update(root)
    if defs:
        doc["$defs"] = defs
    return doc


# ---------------------------------------------------------------- generation


def _combined() -> Schema:
    method_types = [t for spec in METHODS.values() for t in (spec.params, *spec.result)]
    note_types = list(CLIENT_NOTIFICATIONS.values())
    server_types = [t for spec in SERVER_REQUESTS.values() for t in (spec.params, *spec.result)]
    all_types = [*method_types, *EVENT_TYPES, SessionEventParams, ErrorObject, *note_types, *server_types]
    schemas, defs = _components(all_types)
    refs = iter(schemas)
    methods: Schema = {}
    for name, spec in METHODS.items():
        params = next(refs)
        results = [next(refs) for _ in spec.result]
        methods[name] = {"params": params, "result": results[0] if len(results) == 1 else {"anyOf": results}}
    events = {event_type_name(cls): next(refs) for cls in EVENT_TYPES}
    notifications: Schema = {"session/event": {"direction": "daemon to client", "params": next(refs)}}
    error = next(refs)
    for name in CLIENT_NOTIFICATIONS:
        notifications[name] = {"direction": "client to daemon", "params": next(refs)}
    server_requests: Schema = {}
    for name in SERVER_REQUESTS:
        server_requests[name] = {"direction": "daemon to client", "params": next(refs), "result": next(refs)}
    return {
        "$schema": DIALECT,
        "title": f"Warren JSON-RPC protocol, version {PROTOCOL_VERSION}",
        "description": "Every definition of the Warren wire contract under $defs. `methods`, `events`, "
        "`notifications` and `error` index them; the per-file schemas next to this one are the "
        "same definitions, one document each.",
        "protocol_version": PROTOCOL_VERSION,
        "methods": methods,
        "events": events,
        "notifications": notifications,
        "server_requests": server_requests,
        "error": error,
        "$defs": defs,
    }


def _components_refs(value: Any) -> Any:
    """``#/$defs/X`` -> ``#/components/schemas/X``, where OpenRPC keeps shared schemas (in
    ``$ref`` and in discriminator mappings alike)."""
    if isinstance(value, str) and value.startswith(DEFS):
        return "#/components/schemas/" + value[len(DEFS):]
    if isinstance(value, dict):
        return {k: _components_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_components_refs(v) for v in value]
    return value


def openrpc(version: str = "0.1.0", combined: Schema | None = None) -> Schema:
    """The OpenRPC 1.3 document of every method (what ``rpc.discover`` answers), from the
    same types as the JSON Schemas: params by name, one ``contentDescriptor`` a field.
    ``combined``: ``_combined()``, when the caller has it already (it is not modified)."""
    combined = _combined() if combined is None else combined
    defs = _components_refs(combined["$defs"])
    methods = []
    for name, method in combined["methods"].items():
        params_ref = method["params"]["$ref"][len(DEFS):]
        params_schema = defs.get(params_ref, {})
        required = set(params_schema.get("required", []))
        methods.append({
            "name": name,
            "paramStructure": "by-name",
            "params": [{"name": field, "required": field in required, "schema": schema}
                       for field, schema in params_schema.get("properties", {}).items()],
            "result": {"name": f"{name} result", "schema": _components_refs(method["result"])},
        })
    return {
        "openrpc": "1.3.2",
        "info": {"title": "Warren", "version": version,
                 "description": f"Warren's JSON-RPC protocol, version {PROTOCOL_VERSION}: LLM agent sessions over stdio."},
        "methods": methods,
        "components": {"schemas": defs},
    }


def generate() -> dict[str, Schema]:
    """Every schema file, by path relative to the output directory. Pure."""
    out: dict[str, Schema] = {}
    for name, spec in METHODS.items():
        stem = file_stem(name)
        out[f"methods/{stem}.params.json"] = _document(f"{name} params", (spec.params,))
        out[f"methods/{stem}.result.json"] = _document(f"{name} result", spec.result)
    for cls in EVENT_TYPES:
        tag = event_type_name(cls)
        out[f"events/{tag}.json"] = _document(f"{tag} event", (cls,), f"The `event` of a session/event notification of type {tag}.")
    out["notifications/session.event.params.json"] = _document(
        "session/event notification params", (SessionEventParams,)
    )
    for name, params in CLIENT_NOTIFICATIONS.items():
        out[f"notifications/{file_stem(name)}.params.json"] = _document(f"{name} notification params", (params,))
    for name, spec in SERVER_REQUESTS.items():
        stem = file_stem(name)
        out[f"server_requests/{stem}.params.json"] = _document(f"{name} params (daemon to client)", (spec.params,))
        out[f"server_requests/{stem}.result.json"] = _document(f"{name} result (client to daemon)", spec.result)
    out["error.json"] = _document("JSON-RPC error object", (ErrorObject,))
    out[COMBINED] = _combined()
    out["openrpc.json"] = openrpc(combined=out[COMBINED])
    return dict(sorted(out.items()))


def render(schema: Schema) -> str:
    """The exact text of a schema file: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- command line


#: Folders of the output directory that another generator writes (``protocol.typescript``):
#: never "not generated", never removed.
FOREIGN = ("typescript/",)


def _existing(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    return {p for p in found if not p.startswith(FOREIGN)}


def cli_args(argv: list[str] | None, usage: str) -> tuple[Path, bool] | None:
    """A generator's command line, ``TARGET [--check]``: the target and whether to only
    check it; None (after printing ``usage``) when it is not that."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    if len(args) != 1:
        print(f"usage: {usage} [--check]", file=sys.stderr)
        return None
    return Path(args[0]), check


def main(argv: list[str] | None = None) -> int:
    parsed = cli_args(argv, "python -m warren.protocol.schema OUT_DIR")
    if parsed is None:
        return 2
    root, check = parsed
    wanted = {path: render(schema) for path, schema in generate().items()}
    present = _existing(root)
    stale = sorted(p for p, text in wanted.items() if p not in present or (root / p).read_text("utf-8") != text)
    extra = sorted(present - set(wanted))
    if check:
        for p in stale:
            print(f"out of date: {root / p}", file=sys.stderr)
        for p in extra:
            print(f"not generated: {root / p}", file=sys.stderr)
        if stale or extra:
            print("run `make schemas`", file=sys.stderr)
            return 1
        return 0
    for p in stale:
        target = root / p
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(wanted[p], encoding="utf-8")
    for p in extra:
        (root / p).unlink()
    for d in sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    print(f"{root}: {len(wanted)} schemas, {len(stale)} written, {len(extra)} removed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
