"""Every method the daemon serves, with its params and result types.

The daemon's dispatch table, ``initialize``'s method list and ``schemas/`` are all derived
from this one mapping, so none of them can forget a method.
"""

from __future__ import annotations


import msgspec

from . import events as ev
from . import types as t


class MethodSpec(msgspec.Struct, frozen=True):
    params: type[msgspec.Struct]
    result: tuple[type[msgspec.Struct], ...]


METHODS: dict[str, MethodSpec] = {
    "initialize": MethodSpec(t.InitializeParams, (t.InitializeResult,)),
    "shutdown": MethodSpec(t.ShutdownParams, (t.EmptyResult,)),
    "session/create": MethodSpec(t.SessionCreateParams, (t.RunResult, t.DeferredCreateResult)),
    "turn/start": MethodSpec(t.TurnStartParams, (t.RunResult,)),
    "turn/interrupt": MethodSpec(t.TurnInterruptParams, (t.InterruptResult,)),
    "session/read": MethodSpec(t.SessionIdParams, (t.SessionView,)),
    "session/list": MethodSpec(t.SessionListParams, (t.SessionListResult,)),
    "session/history": MethodSpec(t.SessionHistoryParams, (t.SessionHistoryPage,)),
    "session/archive": MethodSpec(t.SessionIdParams, (t.ArchiveResult,)),
    "session/append_system_context": MethodSpec(t.AppendSystemContextParams, (t.AppendSystemContextResult,)),
    "session/stage_tool_results": MethodSpec(t.StageToolResultsParams, (t.StageToolResultsResult,)),
    "session/set_tools": MethodSpec(t.SetToolsParams, (t.SetToolsResult,)),
    "providers/list": MethodSpec(t.ProvidersListParams, (t.ProvidersListResult,)),
    "session/events": MethodSpec(ev.SessionEventsParams, (ev.SessionEventsResult,)),
    "session/subscribe": MethodSpec(ev.SubscribeParams, (ev.SubscribeResult,)),
    "session/unsubscribe": MethodSpec(ev.UnsubscribeParams, (ev.UnsubscribeResult,)),
    "session/fork": MethodSpec(t.ForkParams, (t.ForkResult,)),
    "session/rewrite": MethodSpec(t.RewriteParams, (t.EditResult,)),
    "session/revisions": MethodSpec(t.RevisionsParams, (t.RevisionsResult,)),
    "session/revision": MethodSpec(t.RevisionParams, (t.RevisionPage,)),
    "session/restore": MethodSpec(t.RestoreParams, (t.EditResult,)),
    "session/append": MethodSpec(t.AppendParams, (t.AppendResult,)),
    "mcp/servers": MethodSpec(t.McpServersParams, (t.McpServersResult,)),
    "turn/steer": MethodSpec(t.TurnSteerParams, (t.TurnSteerResult,)),
    "session/compact": MethodSpec(t.CompactParams, (t.CompactResult,)),
    "session/blob": MethodSpec(t.BlobParams, (t.BlobResult,)),
    "daemon/status": MethodSpec(t.StatusParams, (t.StatusResult,)),
    "rpc.discover": MethodSpec(t.DiscoverParams, (t.DiscoverResult,)),
}


class CancelRequestParams(msgspec.Struct):
    id: str | int


#: Requests the daemon sends to the client (only when it declared the capability).
SERVER_REQUESTS: dict[str, MethodSpec] = {
    "tool/execute": MethodSpec(t.ToolExecuteParams, (t.ToolExecuteResult,)),
}

#: Notifications the daemon accepts from the client.
CLIENT_NOTIFICATIONS: dict[str, type[msgspec.Struct]] = {"$/cancelRequest": CancelRequestParams}
