"""The MCP client's public types and the failures its transports report.

Importing this module costs nothing beyond msgspec: the transports (a subprocess for stdio,
the providers' HTTP client ``providers/wire.py`` for streamable HTTP) are imported when a
server is first started.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

#: The version we ask for, and every version we can speak if a server answers another one
#: (all of them use the same ``initialize`` / ``tools/list`` / ``tools/call`` shapes).
PROTOCOL_VERSION = "2025-06-18"
KNOWN_PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class McpServerSpec(msgspec.Struct, frozen=True):
    """One MCP server as a session or the config names it. Hashable: equal specs share one
    running server. ``env`` and ``headers`` are secrets: never logged, never in a repr."""

    name: str  # [a-zA-Z0-9_-]{1,64}; tools are offered to the model as f"{name}__{tool}"
    command: str | None = None  # stdio
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None  # streamable HTTP
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"MCP server name {self.name!r} must match [a-zA-Z0-9_-]{{1,64}}")
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of command (stdio) or url (HTTP)")
        if self.command is not None and not self.command:
            raise ValueError(f"MCP server {self.name!r}: command is empty")
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"MCP server {self.name!r}: url must start with http:// or https://")

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def key(self) -> tuple[Any, ...]:
        """What decides whether two specs are the same server: the order in which ``env``
        or ``headers`` were written does not."""
        return (self.name, self.command, self.args, tuple(sorted(self.env)), self.url, tuple(sorted(self.headers)))

    def __repr__(self) -> str:
        where = f"command={self.command!r}, args={self.args!r}" if self.command is not None else f"url=<{self.transport}>"
        return f"McpServerSpec(name={self.name!r}, {where}, env=<{len(self.env)} vars>, headers=<{len(self.headers)}>)"

    __str__ = __repr__


class McpTool(msgspec.Struct):
    """One tool of a server, as it listed it (the model sees it under
    ``core.tools.mcp_tool_name(server, name)``)."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]


class McpCallResult(msgspec.Struct):
    """The text of a result's content items joined (non-text items summarised), or the
    ``structuredContent`` as JSON when there is no text; ``images``: its image items, as
    ``(mime type, base64)``."""

    content: str
    is_error: bool
    images: list[tuple[str, str]] = []


class McpServerStatus(msgspec.Struct):
    name: str
    transport: str  # "stdio" | "http"
    state: str  # "starting" | "ready" | "failed" | "stopped"
    tools: list[str]
    error: str | None = None
    pid: int | None = None


class McpError(Exception):
    """A server could not be started or listed; the message names it."""

    def __init__(self, server: str, detail: str) -> None:
        super().__init__(f"MCP server {server!r}: {detail}")
        self.server = server
        self.detail = detail


# ---------------------------------------------------------------- what a transport reports


class ServerGone(Exception):
    """The connection is over (the process exited or wrote garbage, the HTTP server is
    unreachable or dropped the session): the server is restarted at its next use."""


class RequestFailed(Exception):
    """This one request failed (a JSON-RPC error, an HTTP error status, a body that is not
    JSON-RPC); the connection itself lives on."""


def remote_error_text(error: Any) -> str:
    """A JSON-RPC error object as one line: its message and code."""
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("code")
        text = message if isinstance(message, str) and message else "an error without a message"
        return f"{text} (JSON-RPC error {code})" if isinstance(code, int) else text
    return "an invalid error object"


def redactor(spec: McpServerSpec) -> Any:
    """The providers' redactor for every secret of ``spec``: its env and header values (with
    the bare token of ``Bearer x``), and the credentials and query values of its URL.

    Imports the providers' HTTP plumbing (and the config module): call it on an error path or
    in the HTTP transport only, not at import time."""
    from warren.daemon.providers.http import Redactor, header_secrets, url_secrets

    secrets = [value for _, value in spec.env]
    secrets += header_secrets(value for _, value in spec.headers)
    if spec.url:
        secrets += url_secrets(spec.url, query=True)
    return Redactor(secrets)
