"""TypeScript declarations of the wire contract, generated from the same schemas as ``schemas/``.

``render()`` gives the text of ``schemas/typescript/warren-protocol.d.ts``: one ``export``
for every definition of ``schemas/warren.schema.json`` (params, results, events, the error
object), plus maps a plugin can type its own transport with::

    import type { Methods, MethodName, EventMap } from "./warren-protocol";
    declare function request<M extends MethodName>(method: M, params: Methods[M]["params"]): Promise<Methods[M]["result"]>;

and the JSON-RPC envelopes (``WarrenRequest``, ``WarrenResponse``, ``DaemonMessage`` ...).
Struct docstrings become JSDoc comments, and so do defaults and numeric or string limits
(except the ceiling every integer has, 2^53 - 1).
Only ``main`` touches the file system::

    python -m warren.protocol.typescript schemas/typescript/warren-protocol.d.ts           # (re)write it
    python -m warren.protocol.typescript schemas/typescript/warren-protocol.d.ts --check   # exit 1 if stale

The JSON Schema to TypeScript mapping covers what ``protocol.schema`` produces: ``$ref``,
``anyOf``, ``enum``, ``const``, the JSON types, arrays, objects with ``properties`` (an
interface; a property outside ``required`` is optional) or ``additionalProperties`` (an index
signature), and ``{}`` (``unknown``). Anything else raises, so a new construct in the
schemas cannot silently become ``any``.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from typing import Any

from . import PROTOCOL_VERSION
from .errors import CODES
from .events import EVENT_TYPES, event_type_name
from .schema import DEFS, _combined, cli_args
from .types import MAX_SAFE_INT

#: Where ``make schemas`` writes the declarations, relative to the repository.
OUTPUT = "schemas/typescript/warren-protocol.d.ts"
WIDTH = 100
Schema = dict[str, Any]

#: Types whose schema is looser than what the daemon sends, and what the declarations say
#: instead. ``StoredEventParams`` carries its event as already-encoded JSON (msgspec ``Raw``,
#: so ``{}`` in the schema), but it "encodes exactly like ``SessionEventParams``".
OVERRIDES: dict[tuple[str, str], str] = {("StoredEventParams", "event"): "WarrenEvent"}

_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_DOC_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
             "minItems", "maxItems", "pattern")


class UnsupportedSchema(ValueError):
    pass


# ---------------------------------------------------------------- schema -> type expression


def _ref_name(ref: str) -> str:
    if not ref.startswith(DEFS):
        raise UnsupportedSchema(f"a $ref outside $defs: {ref}")
    return ref[len(DEFS):]


def _literal(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    raise UnsupportedSchema(f"an enum value that is not a JSON scalar: {value!r}")


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    return " | ".join(unique) if unique else "never"


def _array_of(item: str) -> str:
    return f"({item})[]" if (" | " in item or item.startswith("{") and "\n" in item) else f"{item}[]"


def _key(name: str) -> str:
    return name if _IDENT.match(name) else json.dumps(name)


#: Unions that have a name of their own in the declarations (filled in by ``render``).
_NAMED_UNIONS: dict[str, str] = {}


def _union_key(schema: Schema) -> str | None:
    if "anyOf" in schema and all(set(s) == {"$ref"} for s in schema["anyOf"]):
        return "refs:" + ",".join(sorted(s["$ref"] for s in schema["anyOf"]))
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return "enum:" + ",".join(sorted(schema["enum"]))
    return None


def type_expr(schema: Schema, indent: str = "") -> str:
    """The TypeScript type of one schema; nested object literals are indented from ``indent``."""
    key = _union_key(schema) if isinstance(schema, dict) else None
    if key in _NAMED_UNIONS:
        return _NAMED_UNIONS[key]
    if schema is True or schema == {} or (isinstance(schema, dict) and set(schema) <= {"description", "title", "default"}):
        return "unknown"
    if "$ref" in schema:
        return _ref_name(schema["$ref"])
    if "anyOf" in schema:
        return _union([type_expr(s, indent) for s in schema["anyOf"]])
    if "enum" in schema:
        return _union([_literal(v) for v in schema["enum"]])
    if "const" in schema:
        return _literal(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([type_expr({**schema, "type": k}, indent) for k in kind])
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        return _array_of(type_expr(schema.get("items", {}), indent))
    if kind == "object":
        if "properties" in schema:
            return _object_literal(schema, indent)
        extra = schema.get("additionalProperties", True)
        value = "unknown" if extra is True else type_expr(extra, indent)
        return f"{{ [key: string]: {value} }}"
    raise UnsupportedSchema(f"no TypeScript mapping for the schema {json.dumps(schema, sort_keys=True)}")


def _object_literal(schema: Schema, indent: str) -> str:
    inner = indent + "  "
    lines = ["{"]
    lines += _members(schema, inner, owner=None)
    if schema.get("additionalProperties", True) is True:
        # An open inline object (the error's data): its other fields depend on the case.
        lines.append(f"{inner}[key: string]: unknown;")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


# ---------------------------------------------------------------- JSDoc


def _jsdoc(indent: str, description: str | None, tags: list[str]) -> list[str]:
    if not description and not tags:
        return []
    body: list[str] = []
    if description:
        body += textwrap.wrap(description, width=max(WIDTH - len(indent) - 3, 40), break_long_words=False,
                              break_on_hyphens=False)
    body += tags
    body = [line.replace("*/", "*\\/") for line in body]
    if len(body) == 1 and len(indent) + len(body[0]) + 7 <= WIDTH:
        return [f"{indent}/** {body[0]} */"]
    return [f"{indent}/**", *(f"{indent} * {line}" if line else f"{indent} *" for line in body), f"{indent} */"]


def _limits(schema: Schema) -> list[str]:
    """Defaults and limits of a property (looking through ``anyOf`` with null)."""
    tags = []
    if schema.get("default", None) is not None:  # a null default is what `?: T | null` says already
        tags.append(f"@default {json.dumps(schema['default'], ensure_ascii=False, sort_keys=True)}")
    for part in [schema, *schema.get("anyOf", [])]:
        for key in _DOC_KEYS:
            if key in part and not (key == "maximum" and part[key] == MAX_SAFE_INT):
                value = part[key]
                tags.append(f"@{key} {value if isinstance(value, str) else json.dumps(value)}")
        items = part.get("items")
        if isinstance(items, dict) and "pattern" in items:
            tags.append(f"@itemPattern {items['pattern']}")
    return list(dict.fromkeys(tags))


def _members(schema: Schema, indent: str, owner: str | None) -> list[str]:
    required = set(schema.get("required", []))
    lines: list[str] = []
    for name, prop in schema["properties"].items():
        override = OVERRIDES.get((owner, name)) if owner else None
        expr = override or type_expr(prop, indent)
        lines += _jsdoc(indent, prop.get("description"), _limits(prop))
        head = f"{indent}{_key(name)}{'' if name in required else '?'}:"
        if len(head) + len(expr) + 2 > WIDTH and "\n" not in expr and " | " in expr:
            lines.append(head)  # a long union: one member a line
            lines += [f"{indent}  | {part}" for part in expr.split(" | ")]
            lines[-1] += ";"
        else:
            lines.append(f"{head} {expr};")
    return lines


# ---------------------------------------------------------------- declarations


def _definition(name: str, schema: Schema) -> list[str]:
    lines = _jsdoc("", schema.get("description"), [])
    if schema.get("type") == "object" and "properties" in schema:
        members = _members(schema, "  ", owner=name)
        if not members:
            lines.append(f"export interface {name} {{}}")
        else:
            lines += [f"export interface {name} {{", *members, "}"]
        return lines
    if schema.get("type") == "object" and not schema.get("properties") and schema.get("additionalProperties") is False:
        return [*lines, f"export interface {name} {{}}"]
    return [*lines, f"export type {name} = {type_expr(schema)};"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a docs/protocol.md heading such as ``session/create`` (in backticks)."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _call_entry(name: str, call: Schema) -> list[str]:
    """One member of ``Methods`` or ``ServerRequests``: a call's params and result."""
    return [
        f"  {json.dumps(name)}: {{",
        f"    params: {type_expr(call['params'])};",
        f"    result: {type_expr(call['result'])};",
        "  };",
    ]


def render() -> str:
    """The exact text of ``schemas/typescript/warren-protocol.d.ts``. Pure."""
    combined = _combined()
    defs: Schema = combined["$defs"]
    events = [event_type_name(cls) for cls in EVENT_TYPES]
    event_names = [combined["events"][tag]["$ref"][len(DEFS):] for tag in events]
    _NAMED_UNIONS.clear()
    _NAMED_UNIONS[f"refs:{','.join(sorted(DEFS + n for n in event_names))}"] = "WarrenEvent"
    _NAMED_UNIONS[f"enum:{','.join(sorted(events))}"] = "EventType"
    out: list[str] = [
        "/**",
        f" * Warren's JSON-RPC protocol, version {PROTOCOL_VERSION}: TypeScript declarations of every method's",
        " * params and result, every `session/event` event, the error object and the JSON-RPC envelopes.",
        " *",
        " * Generated by `python -m warren.protocol.typescript` from the msgspec wire types in protocol/,",
        " * the same source as the JSON Schemas beside this folder. Do not edit: run `make schemas`.",
        " * The reference is docs/protocol.md. Types only: import them with `import type`.",
        " */",
        "",
        "/** The protocol version these declarations describe (`initialize`'s `protocol_version`). */",
        f"export type ProtocolVersion = {PROTOCOL_VERSION};",
        "",
        "// ---------------------------------------------------------------- definitions",
    ]
    for name in sorted(defs):
        out += ["", *_definition(name, defs[name])]

    out += [
        "",
        "// ---------------------------------------------------------------- events",
        "",
        "/** The `event` of a `session/event` notification: a union tagged by `type`. */",
        "export type WarrenEvent =",
        *(f"  | {name}" + (";" if i == len(event_names) - 1 else "") for i, name in enumerate(event_names)),
        "",
        "/** Every event `type`. */",
        'export type EventType = WarrenEvent["type"];',
        "",
        "/** Event type -> event: `EventMap[\"text_delta\"]` is `TextDelta`. */",
        "export interface EventMap {",
        *(line for tag, name in zip(events, event_names)
          for line in (f"  /** docs/protocol.md#{_anchor(tag)} */", f"  {tag}: {name};")),
        "}",
        "",
        "// ---------------------------------------------------------------- errors",
        "",
        "/** The stable string code in an error's `data.code`: branch on this, not on the number. */",
        'export type ErrorCode = ErrorObject["data"]["code"];',
        "",
        "/** An error's `data`: always `code` and `retryable`; other fields depend on the code. */",
        'export type ErrorData = ErrorObject["data"];',
        "",
        "/** The JSON-RPC code of each `data.code` (several share one number). */",
        "export interface ErrorCodeNumbers {",
        *(f"  {code}: {number};" for code, number in CODES.items()),
        "}",
        "",
        "// ---------------------------------------------------------------- methods",
        "",
        "/**",
        " * Method name -> its params and result, for a typed request function:",
        " * `request<M extends MethodName>(method: M, params: ParamsOf<M>): Promise<ResultOf<M>>`.",
        " */",
        "export interface Methods {",
    ]
    for name, method in combined["methods"].items():
        out += [f"  /** docs/protocol.md#{_anchor(name)} */", *_call_entry(name, method)]
    out += [
        "}",
        "",
        "/** Every method the daemon serves (`initialize`'s `capabilities.methods`). */",
        "export type MethodName = keyof Methods;",
        'export type ParamsOf<M extends MethodName> = Methods[M]["params"];',
        'export type ResultOf<M extends MethodName> = Methods[M]["result"];',
        "",
        "/** Requests the daemon sends to a client that declared the capability. */",
        "export interface ServerRequests {",
    ]
    for name, request in combined["server_requests"].items():
        out += _call_entry(name, request)
    daemon_notes = {k: v for k, v in combined["notifications"].items() if v["direction"] == "daemon to client"}
    client_notes = {k: v for k, v in combined["notifications"].items() if v["direction"] == "client to daemon"}
    out += [
        "}",
        "",
        "/** Notifications the daemon sends: method -> params. */",
        "export interface ServerNotifications {",
        *(f"  {json.dumps(k)}: {type_expr(v['params'])};" for k, v in daemon_notes.items()),
        "}",
        "",
        "/** Notifications the daemon accepts from the client: method -> params. */",
        "export interface ClientNotifications {",
        *(f"  {json.dumps(k)}: {type_expr(v['params'])};" for k, v in client_notes.items()),
        "}",
        "",
        ENVELOPES,
    ]
    return "\n".join(out)


ENVELOPES = '''\
// ---------------------------------------------------------------- JSON-RPC 2.0 envelopes

/** A request id: the response carries it exactly as sent. */
export type JsonRpcId = string | number;

/** Absent `params` means `{}`, so they may be left out where no field is required. */
type ParamsMember<P> = {} extends P ? { params?: P } : { params: P };

/** A request from the client to the daemon; `WarrenRequest<"turn/start">` for one method. */
export type WarrenRequest<M extends MethodName = MethodName> = {
  [K in M]: { jsonrpc: "2.0"; id: JsonRpcId; method: K } & ParamsMember<Methods[K]["params"]>;
}[M];

/** The daemon's answer to a request that succeeded. */
export interface WarrenSuccess<M extends MethodName = MethodName> {
  jsonrpc: "2.0";
  id: JsonRpcId;
  result: Methods[M]["result"];
}

/** An error answer; `id` is `null` when the request's id could not be read. */
export interface WarrenFailure {
  jsonrpc: "2.0";
  id: JsonRpcId | null;
  error: ErrorObject;
}

/** The daemon's answer to a request for `M`. */
export type WarrenResponse<M extends MethodName = MethodName> = WarrenSuccess<M> | WarrenFailure;

/** A notification the daemon sends (`session/event`). */
export type WarrenNotification = {
  [K in keyof ServerNotifications]: { jsonrpc: "2.0"; method: K; params: ServerNotifications[K] };
}[keyof ServerNotifications];

/** A notification the client sends (`$/cancelRequest`). */
export type ClientNotification = {
  [K in keyof ClientNotifications]: { jsonrpc: "2.0"; method: K; params: ClientNotifications[K] };
}[keyof ClientNotifications];

/** A request the daemon sends to the client (`tool/execute`). */
export type ServerRequest<K extends keyof ServerRequests = keyof ServerRequests> = {
  [N in K]: { jsonrpc: "2.0"; id: JsonRpcId; method: N; params: ServerRequests[N]["params"] };
}[K];

/** The client's answer to a `ServerRequest`. */
export type ServerRequestResponse<K extends keyof ServerRequests = keyof ServerRequests> =
  | { jsonrpc: "2.0"; id: JsonRpcId; result: ServerRequests[K]["result"] }
  | WarrenFailure;

/** One message on a line the daemon writes (a batch's line is an array of responses). */
export type DaemonMessage = WarrenResponse | WarrenNotification | ServerRequest;

/** One message on a line the client writes. */
export type ClientMessage = WarrenRequest | ClientNotification | ServerRequestResponse;

/** A typed request function: `await request("turn/start", { session_id, prompt: "hi" })`. */
export type RequestFunction = <M extends MethodName>(
  method: M,
  params: ParamsOf<M>,
) => Promise<ResultOf<M>>;
'''


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parsed = cli_args(argv, "python -m warren.protocol.typescript OUT_FILE.d.ts")
    if parsed is None:
        return 2
    target, check = parsed
    wanted = render()
    current = target.read_text("utf-8") if target.is_file() else None
    if check:
        if current != wanted:
            print(f"{'out of date' if current is not None else 'missing'}: {target}\nrun `make schemas`", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(wanted, encoding="utf-8")
    print(f"{target}: {'written' if current != wanted else 'up to date'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
