"""What the ACP judge tests share: how to start ``warren acp`` as an editor would, the scripted
provider's ``_meta``, the MCP test server, and a check of every message the agent wrote against
the official ACP v1 JSON Schema (shipped inside the TypeScript SDK's npm package).

The judges are the official client SDKs (``tests/test_acp_python_sdk.py``,
``tests/test_acp_ts_sdk.py``); test names carry the ACP conformance kit's requirement ids
(``agentclientprotocol/acp-tck``, ``src/tck/v1/requirements.py``) where one applies.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_client import ROOT, hermetic_env

TS_DIR = ROOT / "tests" / "acp_ts"
NODE, NPM = shutil.which("node"), shutil.which("npm")


def node_with_packages(marker: Path) -> str:
    """``node``, once ``marker`` (a file or folder of tests/acp_ts/node_modules) exists: ``make
    test`` installed it, or one ``npm ci`` does, under a lock (xdist workers, and
    tests/test_openrpc.py, which needs the same packages). Skips only without Node.js."""
    if NODE is None:
        pytest.skip("this check needs Node.js: `node` is not on PATH")
    if not marker.exists():
        if NPM is None:
            pytest.skip(f"npm is not on PATH: cannot install {TS_DIR}'s packages")
        with open(Path(tempfile.gettempdir()) / "warren-acp-ts-npm-ci.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not marker.exists():
                done = subprocess.run([NPM, "ci", "--prefix", str(TS_DIR), "--no-audit", "--no-fund"],
                                      capture_output=True, text=True, timeout=300)
                if done.returncode != 0 or not marker.exists():
                    pytest.fail(f"npm ci --prefix {TS_DIR} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return NODE
SCHEMA_PATH = TS_DIR / "node_modules" / "@agentclientprotocol" / "sdk" / "schema" / "v1" / "schema.json"
#: The stdio MCP server the tool-call scenario attaches: the ``mcp`` SDK's server side, with an
#: ``echo(text)`` tool among others (shared with the MCP tests).
MCP_ECHO = ROOT / "tests" / "fakes" / "mcp_server.py"

#: A streamed reply: several chunks, so the concatenation is really checked.
STREAMED_TEXT = "Hello from Warren's scripted provider, streamed in small pieces."
#: The cancel scenario's slow step: about 4 s unless cancelled.
SLOW_STEP = {"text": "x" * 200, "chunk_chars": 1, "delay_ms": 20}


def agent_command(*, db: Path | None = None) -> list[str]:
    """``python -m warren.daemon acp`` on a database file, or in memory."""
    return [sys.executable, "-m", "warren.daemon", "acp", *(["--db", str(db)] if db is not None else ["--ephemeral"])]


def agent_env() -> dict[str, str]:
    """No real provider, no developer config; the repository importable."""
    env = hermetic_env()
    env["PYTHONPATH"] = str(ROOT)
    return env


def scripted(*steps: dict[str, Any]) -> dict[str, Any]:
    """``_meta.warren`` for the scripted provider playing ``steps`` in order."""
    return {"provider": "scripted", "provider_params": {"script": list(steps)}}


def mcp_stdio_server(name: str = "t") -> dict[str, Any]:
    """ACP's ``McpServerStdio`` for the echo server (wire shape)."""
    return {"name": name, "command": sys.executable, "args": [str(MCP_ECHO)], "env": []}


def tool_step(call_id: str, text: str, name: str = "t__echo") -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": {"text": text}, "id": call_id}]}


# ---------------------------------------------------------------- ACP-SCHEMA-001

#: The schema definition each agent-written message must match, by the request's method.
RESPONSE_DEFS = {
    "initialize": "InitializeResponse",
    "authenticate": "AuthenticateResponse",
    "session/new": "NewSessionResponse",
    "session/load": "LoadSessionResponse",
    "session/list": "ListSessionsResponse",
    "session/delete": "DeleteSessionResponse",
    "session/resume": "ResumeSessionResponse",
    "session/close": "CloseSessionResponse",
    "session/set_config_option": "SetSessionConfigOptionResponse",
    "session/prompt": "PromptResponse",
}
REQUEST_DEFS = {"session/request_permission": "RequestPermissionRequest"}
NOTIFICATION_DEFS = {"session/update": "SessionNotification"}


@lru_cache(maxsize=1)
def _validators() -> dict[str, Any]:
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text())
    defs = schema["$defs"]
    names = {*RESPONSE_DEFS.values(), *REQUEST_DEFS.values(), *NOTIFICATION_DEFS.values(), "Error"}
    return {n: Draft202012Validator({"$ref": f"#/$defs/{n}", "$defs": defs}) for n in names}


def schema_available() -> bool:
    return SCHEMA_PATH.is_file()


def schema_violations(incoming: list[dict[str, Any]], sent_methods: dict[Any, str],
                      only: frozenset[str] | None = None) -> list[str]:
    """Check every message the agent wrote (``incoming``, in order) against ACP v1's schema.
    ``sent_methods`` maps the ids of the client's requests to their methods, so a response is
    checked as that method's result; ``only`` limits the check to the messages of those methods
    (a notification's or request's own, a response's request's). Returns one line per distinct
    violation (empty: all valid)."""
    validators = _validators()
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}  # (definition, path) -> index in problems: one line each

    def check(defn: str, value: Any, where: str) -> None:
        for err in validators[defn].iter_errors(value):
            path = "/" + "/".join(str(p) for p in err.absolute_path)
            key = (defn, path)
            if key in seen:
                continue
            seen[key] = len(problems)
            problems.append(f"not a valid {defn} at {path}: {err.message[:300]}\n    in {where}")

    for i, msg in enumerate(incoming):
        if only is not None and msg.get("method", sent_methods.get(msg.get("id"))) not in only:
            continue
        where = f"message {i} {json.dumps(msg)[:200]}"
        if msg.get("jsonrpc") != "2.0":
            problems.append(f"{where}: jsonrpc is not '2.0'")
        method = msg.get("method")
        if method is not None and "id" in msg:
            defn = REQUEST_DEFS.get(method)
            if defn is None:
                problems.append(f"{where}: the agent sent a request this client never offered: {method}")
            else:
                check(defn, msg.get("params"), where)
        elif method is not None:
            defn = NOTIFICATION_DEFS.get(method)
            if defn is None:
                problems.append(f"{where}: unexpected notification {method}")
            else:
                check(defn, msg.get("params"), where)
        else:
            if ("result" in msg) == ("error" in msg):
                problems.append(f"{where}: a response needs exactly one of result/error (ACP-JSONRPC-002)")
            elif "error" in msg:
                check("Error", msg["error"], where)
            else:
                defn = RESPONSE_DEFS.get(sent_methods.get(msg.get("id"), ""))
                if defn is not None:
                    check(defn, msg["result"], where)
    return problems
