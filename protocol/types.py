"""Params, results and shapes of PROTOCOL.md section 3, as msgspec Structs.

Params structs forbid unknown fields, so a misspelt field is an error rather than a silent
default. Result structs are what the daemon encodes; fields that are ``None`` by default are
omitted from the wire only where the protocol marks them optional.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from msgspec import UNSET, Meta, Struct, UnsetType

from . import MAX_PAGE_SIZE

#: Integers stay within what every JSON client can represent exactly (and SQLite can store).
MAX_SAFE_INT = 2**53 - 1
DEFAULT_TOOL_TIMEOUT_MS = 120_000
NonEmptyStr = Annotated[str, Meta(min_length=1)]
PositiveInt = Annotated[int, Meta(ge=1, le=MAX_SAFE_INT)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=MAX_SAFE_INT)]
PageLimit = Annotated[int, Meta(ge=1, le=MAX_PAGE_SIZE)]
ToolName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=256)]
McpName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal["end_turn", "max_tokens", "tool_use", "interrupted", "budget_exhausted", "refusal"]


class Params(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every params object: unknown fields are rejected with -32602."""


# ---------------------------------------------------------------- shapes


class Usage(Struct, omit_defaults=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None

    @classmethod
    def zero(cls) -> "Usage":
        return cls(0, 0, 0)

    def __add__(self, other: "Usage") -> "Usage":
        def opt(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.total_tokens + other.total_tokens,
            opt(self.cache_read_tokens, other.cache_read_tokens),
            opt(self.cache_write_tokens, other.cache_write_tokens),
        )


class TextBlock(Struct, tag_field="type", tag="text"):
    text: str


class ReasoningBlock(Struct, tag_field="type", tag="reasoning", omit_defaults=True):
    text: str
    signature: str | None = None
    redacted: str | None = None  # opaque provider data that must be sent back unchanged
    provider: str | None = None  # who reasoned: only that provider is sent the block back


class ToolUseBlock(Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    arguments: dict[str, Any]


class ImageBlock(Struct, tag_field="type", tag="image"):
    """An image in history: stored once per content hash; ``session/blob`` gives its bytes."""

    mime_type: str
    sha256: str
    bytes: int


ImageMime = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]


class ImageInput(Struct, tag_field="type", tag="image", forbid_unknown_fields=True):
    """An image in a prompt: its bytes in base64."""

    mime_type: ImageMime
    data: str


class TextInput(Struct, tag_field="type", tag="text", forbid_unknown_fields=True):
    text: str


class ToolResultBlock(Struct, tag_field="type", tag="tool_result"):
    """``images``: what the tool returned besides its text (an MCP tool's image content, or
    a ``tool/execute`` answer's ``images``), stored like a prompt's images."""

    tool_use_id: str
    content: str
    is_error: bool = False
    images: list[ImageBlock] | UnsetType = UNSET


Block = Union[TextBlock, ReasoningBlock, ToolUseBlock, ToolResultBlock, ImageBlock]
#: What a prompt may be: text, or blocks of text and images.
Prompt = Union[str, Annotated[list[Union[TextInput, ImageInput]], Meta(min_length=1)]]


class Message(Struct, omit_defaults=True):
    """``message_id`` never changes and is shared by every transcript holding the message
    (a fork's prefix has its source's ids); ``index`` is its place in this transcript."""

    index: int
    role: Role
    content: list[Block]
    created_at_ms: int
    message_id: str
    turn_id: str | None = None
    source: str | None = None  # for system-context messages
    idempotency_key: str | None = None  # for system-context messages


class ImagePart(Struct, tag_field="type", tag="image", forbid_unknown_fields=True, omit_defaults=True):
    """An image in a message the client gives: new bytes (``mime_type``, ``data`` in base64),
    or a stored image named by ``sha256`` (as history shows it; ``bytes`` is ignored)."""

    mime_type: ImageMime | None = None
    data: str | None = None
    sha256: str | None = None
    bytes: int | None = None


class MessageInput(Struct, forbid_unknown_fields=True):
    """A message given by the client (rewrite, fork, append): shaped as history returns
    messages; a string is one text block."""

    role: Role
    content: Union[str, list[Union[TextBlock, ReasoningBlock, ToolUseBlock, ToolResultBlock, ImagePart]]]


class ToolDef(Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: ToolName
    input_schema: dict[str, Any]
    description: str = ""


class Budget(Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_tokens: PositiveInt | None = None
    max_tool_calls: NonNegativeInt | None = None
    max_turn_duration_ms: PositiveInt | None = None


class ToolCall(Struct):
    tool_use_id: str
    name: str
    arguments: dict[str, Any]


class ToolOverlay(Struct, forbid_unknown_fields=True, omit_defaults=True):
    allowed_tools: list[str] | None = None
    blocked_tools: list[str] | None = None


# ---------------------------------------------------------------- lifecycle


class ClientInfo(Struct, omit_defaults=True):
    name: str = ""
    version: str = ""


class ClientCapabilities(Struct, omit_defaults=True):
    tool_execute: bool = False


class InitializeParams(Params):
    protocol_version: int = 1
    client_info: ClientInfo | None = None
    capabilities: ClientCapabilities | None = None


class ServerInfo(Struct):
    name: str
    version: str


class ServerCapabilities(Struct):
    methods: list[str]
    events: list[str]
    providers: list[str]
    event_subscriptions: bool = True


class Limits(Struct):
    max_line_bytes: int
    max_page_size: int
    coalesce_after_lines: int
    max_image_bytes: int


class InitializeResult(Struct):
    protocol_version: int
    server_info: ServerInfo
    capabilities: ServerCapabilities
    limits: Limits


class ShutdownParams(Params):
    pass


class EmptyResult(Struct):
    pass


# ---------------------------------------------------------------- sessions


class McpServerInput(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An MCP server whose tools a session offers as ``NAME__TOOL``: stdio (``command``,
    ``args``, ``env``) or streamable HTTP (``url``, ``headers``), exactly one of the two."""

    name: McpName
    command: NonEmptyStr | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: NonEmptyStr | None = None
    headers: dict[str, str] = {}


class SessionCreateParams(Params):
    prompt: Prompt | None = None
    model: NonEmptyStr | None = None
    provider: NonEmptyStr | None = None
    system_prompt: str | None = None
    max_tokens: PositiveInt | None = None
    labels: dict[str, str] = {}
    initial_turn: Literal["run_immediately", "defer"] = "run_immediately"
    deferred_prompt_policy: Literal["discard", "stage"] = "discard"
    tools: list[ToolDef] = []
    budget: Budget | None = None
    provider_params: dict[str, Any] | None = None
    tool_timeout_ms: PositiveInt | None = None
    idempotency_key: IdempotencyKey | None = None
    mcp_servers: list[McpServerInput] = []
    output_schema: dict[str, Any] | None = None
    structured_output_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    compaction: bool = True


class SetToolsParams(Params):
    session_id: str
    tools: list[ToolDef]
    tool_timeout_ms: PositiveInt | None = None


class SetToolsResult(Struct):
    session_id: str
    tools: list[str]
    tool_timeout_ms: int


class TurnStartParams(Params):
    """``provider`` (with ``model``) moves the session to another provider from this turn on."""

    session_id: str
    prompt: Prompt
    system_prompt: str | None = None
    turn_tool_overlay: ToolOverlay | None = None
    model: NonEmptyStr | None = None
    provider: NonEmptyStr | None = None
    max_tokens: PositiveInt | None = None
    provider_params: dict[str, Any] | None = None
    idempotency_key: IdempotencyKey | None = None
    when_busy: Literal["reject", "queue"] = "reject"
    output_schema: dict[str, Any] | None = None
    structured_output_retries: Annotated[int, Meta(ge=0, le=10)] | None = None


class TurnInterruptParams(Params):
    """``when``: "now" cuts the turn short; "boundary" lets the current model call and its
    tool step finish and be committed, then ends the turn."""

    session_id: str
    turn_id: str | None = None
    when: Literal["now", "boundary"] = "now"


class TurnSteerParams(Params):
    session_id: str
    expected_turn_id: str
    prompt: Prompt


class TurnSteerResult(Struct):
    turn_id: str
    status: Literal["staged"] = "staged"


class SessionIdParams(Params):
    session_id: str


class SessionListParams(Params):
    limit: PageLimit = 100
    offset: NonNegativeInt = 0
    labels: dict[str, str] = {}
    include_archived: bool = False


class SessionHistoryParams(Params):
    session_id: str
    offset: NonNegativeInt = 0
    limit: PageLimit = 100


class AppendSystemContextParams(Params):
    session_id: str
    text: NonEmptyStr
    source: str | None = None
    idempotency_key: NonEmptyStr | None = None


class ToolResultInput(Struct, forbid_unknown_fields=True):
    tool_use_id: NonEmptyStr
    content: str
    is_error: bool = False


class StageToolResultsParams(Params):
    session_id: str
    results: Annotated[list[ToolResultInput], Meta(min_length=1)]


class BudgetUse(Struct):
    budget: Literal["max_tokens", "max_tool_calls", "max_turn_duration_ms"]
    used: int
    limit: int


class StructuredOutputError(Struct):
    """The final answer never matched ``output_schema``: how many answers were tried, and
    what was wrong with the last one."""

    attempts: int
    errors: list[str]


class RunResult(Struct, omit_defaults=True):
    session_id: str
    turn_id: str
    text: str
    stop_reason: StopReason
    tool_calls: list[ToolCall]
    usage: Usage
    message_count: int
    pending_tool_calls: list[ToolCall]
    budget: BudgetUse | None = None  # the budget that ran out, with stop_reason budget_exhausted
    #: With ``output_schema``: the parsed answer (any JSON value), or why there is none.
    structured_output: Any | UnsetType = UNSET
    structured_output_error: StructuredOutputError | None = None


class DeferredCreateResult(Struct):
    session_id: str
    created_at_ms: int


class InterruptResult(Struct):
    session_id: str
    turn_id: str
    interrupted: bool = True


class SessionSummary(Struct):
    session_id: str
    created_at_ms: int
    updated_at_ms: int
    message_count: int
    total_tokens: int
    is_active: bool
    labels: dict[str, str]
    archived: bool = False


class ForkPoint(Struct):
    """Where a fork left its source: the message index and the source's head revision."""

    message_index: int
    revision: str


class ForkedFrom(Struct):
    session_id: str
    message_index: int
    revision: str


class SessionInfo(Struct, omit_defaults=True):
    session_id: str
    created_at_ms: int
    updated_at_ms: int
    message_count: int
    is_active: bool
    model: str | None
    provider: str
    last_assistant_text: str | None
    labels: dict[str, str]
    revision: str
    forked_from: ForkedFrom | None = None


class Billing(Struct):
    total_tokens: int
    usage: Usage


class SessionView(Struct):
    state: SessionInfo
    billing: Billing


class SessionListResult(Struct):
    sessions: list[SessionSummary]
    has_more: bool


class SessionHistoryPage(Struct):
    session_id: str
    message_count: int
    offset: int
    limit: int
    has_more: bool
    messages: list[Message]
    revision: str


# ---------------------------------------------------------------- transcripts (section 9)


class EditReason(Struct, forbid_unknown_fields=True, omit_defaults=True):
    kind: NonEmptyStr
    note: str | None = None


class ForkParams(Params):
    session_id: str
    message_index: NonNegativeInt | None = None
    replacement: MessageInput | None = None
    labels: dict[str, str] | None = None
    idempotency_key: IdempotencyKey | None = None


class ForkResult(Struct):
    source_session_id: str
    session_id: str
    message_count: int
    revision: str
    forked_at: ForkPoint


class RewriteParams(Params):
    session_id: str
    start: NonNegativeInt
    end: NonNegativeInt
    replacement: list[MessageInput]
    reason: EditReason
    actor: str | None = None
    expected_revision: str | None = None


class EditResult(Struct):
    session_id: str
    parent_revision: str
    revision: str
    message_count: int


class RevisionsParams(Params):
    session_id: str
    offset: NonNegativeInt = 0
    limit: PageLimit = 100


class RevisionEntry(Struct, omit_defaults=True):
    revision: str
    parent_revision: str | None
    kind: Literal["rewrite", "restore", "fork"]
    committed_at_ms: int
    message_count: int
    reason: EditReason | None = None
    actor: str | None = None


class RevisionsResult(Struct):
    session_id: str
    head_revision: str
    entries: list[RevisionEntry]
    has_more: bool


class RevisionParams(SessionHistoryParams, kw_only=True):
    revision: NonEmptyStr


class RevisionPage(SessionHistoryPage):
    """A history page of any retained revision, and the session's head revision."""

    head_revision: str


class RestoreParams(Params):
    session_id: str
    revision: NonEmptyStr
    reason: EditReason
    actor: str | None = None
    expected_revision: str | None = None


class AppendParams(Params):
    session_id: str
    messages: Annotated[list[MessageInput], Meta(min_length=1)]
    operation_id: IdempotencyKey
    requires_ancestor: str | None = None


class AppendResult(Struct):
    status: Literal["appended", "duplicate"]
    message_ids: list[str]
    revision: str
    message_count: int


class ArchiveResult(Struct):
    session_id: str
    archived: bool = True


class AppendSystemContextResult(Struct):
    status: Literal["applied", "staged", "duplicate"]


class StageToolResultsResult(Struct):
    accepted_result_count: int


class ProvidersListParams(Params):
    pass


class ProviderInfo(Struct):
    name: str
    type: str
    base_url: str | None
    default_model: str | None
    has_credential: bool
    credential_env: str | None
    is_default: bool


class ProvidersListResult(Struct):
    providers: list[ProviderInfo]
    config_path: str | None = None
    config_error: str | None = None


class ToolExecuteParams(Struct):
    """The daemon's request to the client (``tool/execute``): run one client tool."""

    session_id: str
    turn_id: str
    tool_use_id: str
    name: str
    arguments: dict[str, Any]


class ToolExecuteResult(Struct):
    """The client's answer to ``tool/execute``. A JSON-RPC error answer counts as an error result."""

    content: str
    is_error: bool = False
    images: list[ImageInput] = []


# ---------------------------------------------------------------- MCP servers (section 11)


class McpServersParams(Params):
    session_id: str | None = None


class McpServerInfo(Struct, omit_defaults=True):
    """``state``: "starting", "ready", "failed" (``error`` says why; restarted at next use)
    or "stopped"; ``tools``: the server's own tool names."""

    name: str
    transport: Literal["stdio", "http"]
    state: Literal["starting", "ready", "failed", "stopped"]
    tools: list[str]
    error: str | None = None
    pid: int | None = None


class McpServersResult(Struct):
    servers: list[McpServerInfo]


# ---------------------------------------------------------------- compaction (section 12)


class CompactParams(Params):
    session_id: str
    keep_last: NonNegativeInt = 4


class CompactResult(Struct):
    """The summary replaces ``replaced_count`` messages in what the model sees (history keeps
    them all); token counts are estimates of the model's context before and after."""

    session_id: str
    summary_message_id: str
    replaced_count: int
    tokens_before: int
    tokens_after: int


# ---------------------------------------------------------------- images (section 12)


class BlobParams(Params):
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class BlobResult(Struct):
    sha256: str
    mime_type: str
    data: str  # base64


# ---------------------------------------------------------------- health (section 13)


class StatusParams(Params):
    pass


class StatusResult(Struct):
    """``store``: "ok", or why the store cannot be used (a ``SESSION_STORE_ERROR`` reason)."""

    version: str
    protocol_version: int
    db_path: str | None
    schema_version: int | None
    uptime_ms: int
    running_turns: int
    sessions: int | None
    store: str


class DiscoverParams(Params):
    pass


class DiscoverResult(Struct):
    """The OpenRPC 1.3 document of every method (``schemas/openrpc.json``)."""

    openrpc: str
    info: dict[str, Any]
    methods: list[dict[str, Any]]
    components: dict[str, Any]
