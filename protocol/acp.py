"""The Agent Client Protocol, version 1, as Warren speaks it: the params and results of the
methods it serves, the ``session/update`` notification it sends, the permission request it
makes, and the version negotiation. Pure data, like the rest of ``protocol``.

ACP's JSON is camelCase (``rename="camel"``). Params accept unknown fields (``_meta`` and
whatever later minor versions add), unlike Warren's own params: an editor built against a
newer ACP must still be served.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from msgspec import Struct, field

PROTOCOL_VERSION = 1

METHOD_CANCEL_REQUEST = "$/cancel_request"
NOTIFY_UPDATE = "session/update"
REQUEST_PERMISSION = "session/request_permission"

#: ACP's error code for an unknown session; Warren's structured ``data`` rides along unchanged.
RESOURCE_NOT_FOUND = -32002


def negotiate(requested: int) -> int:
    """ACP: answer the client's version if supported, else the latest we speak. Warren
    speaks only 1, so every request (0, 2, 65535) is answered with 1."""
    return PROTOCOL_VERSION


class AcpParams(Struct, rename="camel", omit_defaults=True):
    """Base of every params object: unknown fields (``_meta`` included) are kept in
    ``meta`` where declared and otherwise ignored."""


class Out(Struct, rename="camel", omit_defaults=True):
    """Base of everything Warren sends."""


# ---------------------------------------------------------------- content


class TextContent(Struct, tag_field="type", tag="text", omit_defaults=True):
    text: str


class ImageContent(Struct, tag_field="type", tag="image", rename="camel", omit_defaults=True):
    data: str
    mime_type: str
    uri: str | None = None


class AudioContent(Struct, tag_field="type", tag="audio", rename="camel", omit_defaults=True):
    data: str
    mime_type: str


class ResourceLink(Struct, tag_field="type", tag="resource_link", rename="camel", omit_defaults=True):
    name: str
    uri: str
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    size: int | None = None


class ResourceContents(Struct, rename="camel", omit_defaults=True):
    uri: str
    text: str | None = None
    blob: str | None = None
    mime_type: str | None = None


class EmbeddedResource(Struct, tag_field="type", tag="resource", omit_defaults=True):
    resource: ResourceContents


ContentBlock = Union[TextContent, ImageContent, AudioContent, ResourceLink, EmbeddedResource]


# ---------------------------------------------------------------- lifecycle


class Implementation(Struct, omit_defaults=True):
    name: str
    version: str
    title: str | None = None


class InitializeParams(AcpParams):
    protocol_version: int = 0
    client_capabilities: dict[str, Any] = {}
    client_info: Implementation | None = None


class PromptCapabilities(Out):
    image: bool = False
    audio: bool = False
    embedded_context: bool = False


class McpCapabilities(Out):
    http: bool = False
    sse: bool = False


class SessionCapabilities(Out):
    list: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    close: dict[str, Any] | None = None
    delete: dict[str, Any] | None = None
    fork: dict[str, Any] | None = None


class AgentCapabilities(Out):
    load_session: bool
    prompt_capabilities: PromptCapabilities
    mcp_capabilities: McpCapabilities
    session_capabilities: SessionCapabilities


class InitializeResult(Struct, rename="camel"):
    protocol_version: int
    agent_capabilities: AgentCapabilities
    auth_methods: list[dict[str, Any]]
    agent_info: Implementation


class AuthenticateParams(AcpParams):
    method_id: str = ""


class EmptyResult(Out):
    pass


# ---------------------------------------------------------------- sessions


class EnvVariable(Struct):
    name: str
    value: str


class HttpHeader(Struct):
    name: str
    value: str


class McpServer(AcpParams):
    """Stdio (``command``) or HTTP (``type: "http"``, ``url``); ``sse`` is not served."""

    name: str
    type: Literal["stdio", "http", "sse"] = "stdio"
    command: str | None = None
    args: list[str] = []
    env: list[EnvVariable] = []
    url: str | None = None
    headers: list[HttpHeader] = []


class NewSessionParams(AcpParams):
    cwd: str
    mcp_servers: list[McpServer] = []
    additional_directories: list[str] = []
    meta: dict[str, Any] | None = field(default=None, name="_meta")


class SelectOption(Out):
    value: str
    name: str
    description: str | None = None


class ConfigOption(Out):
    """A ``select`` config option (Warren offers one: the model)."""

    id: str
    name: str
    current_value: str
    options: list[SelectOption]
    type: Literal["select"]
    category: str | None = None
    description: str | None = None


class NewSessionResult(Out):
    session_id: str
    config_options: list[ConfigOption] = []


class LoadSessionParams(AcpParams):
    session_id: str
    cwd: str = ""
    mcp_servers: list[McpServer] = []
    additional_directories: list[str] = []


class ResumeSessionParams(LoadSessionParams):
    pass


class SessionSetupResult(Out):
    config_options: list[ConfigOption] = []


class ForkSessionParams(LoadSessionParams):
    pass


class ListSessionsParams(AcpParams):
    cwd: str | None = None
    cursor: str | None = None


class SessionInfo(Out):
    session_id: str
    cwd: str
    title: str | None = None
    updated_at: str | None = None


class ListSessionsResult(Out):
    sessions: list[SessionInfo]
    next_cursor: str | None = None


class SessionIdParams(AcpParams):
    session_id: str


class SetConfigOptionParams(AcpParams):
    session_id: str
    config_id: str
    value: Any = None


class SetConfigOptionResult(Out):
    config_options: list[ConfigOption]


class PromptParams(AcpParams):
    session_id: str
    prompt: list[dict[str, Any]]  # ContentBlock; checked one by one so an unknown type is named


class Usage(Out):
    total_tokens: int
    input_tokens: int
    output_tokens: int
    cached_read_tokens: int | None = None
    cached_write_tokens: int | None = None


StopReason = Literal["end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"]


class PromptResult(Out):
    stop_reason: StopReason
    usage: Usage | None = None


class CancelParams(AcpParams):
    session_id: str


# ---------------------------------------------------------------- session/update


class Update(Struct, tag_field="sessionUpdate", rename="camel", omit_defaults=True):
    pass


class UserMessageChunk(Update, tag="user_message_chunk"):
    content: ContentBlock
    message_id: str | None = None


class AgentMessageChunk(Update, tag="agent_message_chunk"):
    content: ContentBlock
    message_id: str | None = None


class AgentThoughtChunk(Update, tag="agent_thought_chunk"):
    content: ContentBlock
    message_id: str | None = None


ToolKind = Literal["read", "edit", "delete", "move", "search", "execute", "think", "fetch", "switch_mode", "other"]
ToolStatus = Literal["pending", "in_progress", "completed", "failed"]


class ToolContent(Struct, tag_field="type", tag="content"):
    content: ContentBlock


class ToolCallStart(Update, tag="tool_call"):
    tool_call_id: str
    title: str
    kind: ToolKind
    status: ToolStatus
    raw_input: Any = None
    content: list[ToolContent] = []


class ToolCallUpdate(Update, tag="tool_call_update"):
    tool_call_id: str
    status: ToolStatus | None = None
    title: str | None = None
    kind: ToolKind | None = None
    raw_input: Any = None
    raw_output: Any = None
    content: list[ToolContent] | None = None


class UsageUpdate(Update, tag="usage_update"):
    used: int
    size: int


class SessionInfoUpdate(Update, tag="session_info_update"):
    title: str | None = None
    updated_at: str | None = None


AnyUpdate = Union[UserMessageChunk, AgentMessageChunk, AgentThoughtChunk, ToolCallStart, ToolCallUpdate, UsageUpdate,
                  SessionInfoUpdate]


class SessionNotification(Struct, rename="camel"):
    session_id: str
    update: AnyUpdate


# ---------------------------------------------------------------- permission


PermissionKind = Literal["allow_once", "allow_always", "reject_once", "reject_always"]


class PermissionOption(Out):
    option_id: str
    name: str
    kind: PermissionKind


class PermissionToolCall(Out):
    tool_call_id: str
    title: str | None = None
    kind: ToolKind | None = None
    status: ToolStatus | None = None
    raw_input: Any = None


class RequestPermissionParams(Out):
    session_id: str
    tool_call: PermissionToolCall
    options: list[PermissionOption]


PERMISSION_OPTIONS = [
    PermissionOption("allow_once", "Allow once", "allow_once"),
    PermissionOption("allow_always", "Always allow", "allow_always"),
    PermissionOption("reject_once", "Reject", "reject_once"),
    PermissionOption("reject_always", "Always reject", "reject_always"),
]


class PermissionOutcome(Struct, rename="camel"):
    outcome: Literal["selected", "cancelled"]
    option_id: str | None = None


class RequestPermissionResult(Struct):
    outcome: PermissionOutcome
