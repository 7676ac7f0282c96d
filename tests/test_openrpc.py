"""``rpc.discover``: the OpenRPC document, generated from the wire types, checked in as
``schemas/openrpc.json``, valid against the official OpenRPC meta-schema (the npm package
``@open-rpc/meta-schema``, installed with the tests' Node packages), and what the daemon serves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from warren.protocol.methods import METHODS
from warren.protocol.schema import openrpc, render
from tests.daemon_client import Daemon
from tests.acp_helpers import node_with_packages

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "schemas" / "openrpc.json"
META = ROOT / "tests" / "acp_ts" / "node_modules" / "@open-rpc" / "meta-schema"


def meta_schema() -> dict:
    node = node_with_packages(META)  # the npm package; installed once, with tsc's
    out = subprocess.run([node, "-e", f"process.stdout.write(JSON.stringify(require({str(META)!r}).openrpcDocument))"],
                         check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def test_the_checked_in_document_is_current() -> None:
    assert CHECKED_IN.read_text("utf-8") == render(openrpc()), "schemas/openrpc.json is stale: run `make schemas`"


def test_the_document_is_valid_openrpc_and_lists_every_method() -> None:
    document = json.loads(CHECKED_IN.read_text("utf-8"))
    # The meta-schema refers to JSON Schema draft 7 by its own URL: served here, offline.
    draft7 = Resource.from_contents(Draft7Validator.META_SCHEMA, default_specification=DRAFT7)
    registry = Registry().with_resources([("https://meta.json-schema.tools", draft7),
                                          ("https://meta.json-schema.tools/", draft7)])
    validator = Draft7Validator(meta_schema(), registry=registry)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    assert [m["name"] for m in document["methods"]] == list(METHODS)
    create = next(m for m in document["methods"] if m["name"] == "session/create")
    assert (create["params"][0]["name"], create["params"][0]["required"]) == ("prompt", False)
    start = next(m for m in document["methods"] if m["name"] == "turn/start")
    assert {p["name"] for p in start["params"] if p["required"]} == {"session_id", "prompt"}
    refs = json.dumps(document)
    assert "#/$defs/" not in refs and "#/components/schemas/" in refs


def test_rpc_discover_serves_the_document(daemon: Daemon) -> None:
    assert daemon.call("rpc.discover") == json.loads(CHECKED_IN.read_text("utf-8"))
    assert "rpc.discover" in daemon.call("initialize")["capabilities"]["methods"]
