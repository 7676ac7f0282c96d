"""Warren's client library for plugin authors and scripts (installed as ``warren.client``).

Async (anyio), typed with the protocol's own msgspec types, and free of the daemon's
imports::

    import anyio
    from warren.client import spawn
    from warren.protocol.events import TextDelta, TurnCompleted, TurnFailed

    async def main() -> None:
        async with spawn(ephemeral=True) as client:
            await client.initialize()
            made = await client.session_create(provider="scripted", initial_turn="defer")
            async with client.events(session_id=made.session_id) as events:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: client.turn_start(session_id=made.session_id, prompt="hi"))
                    async for event in events:
                        if isinstance(event.event, TextDelta):
                            print(event.event.delta, end="")
                        elif isinstance(event.event, (TurnCompleted, TurnFailed)):
                            break

    anyio.run(main)

Modules: ``client`` (``Client``, ``attach``), ``spawn`` (``spawn``), ``methods`` (one method
per protocol method), ``events`` (``EventStream``, ``UnknownEvent``), ``errors`` (the
exception hierarchy), ``connection`` (the JSON-RPC plumbing, for raw use and tests) and
``streams`` (anyio streams over pipe descriptors).
"""

from .client import Client, ToolHandler, attach
from .connection import Connection, PendingRequest
from .errors import (
    ClientError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ProtocolMismatch,
    ProviderError,
    RequestCancelled,
    RequestError,
    SessionBusy,
    SessionError,
    SessionFault,
    SessionNotFound,
    TransportError,
    WarrenError,
)
from .events import EventStream, UnknownEvent, decode_event, event_type
from .methods import EventsPage
from .spawn import SpawnedClient, daemon_command, spawn
from .turn import TurnRun

__all__ = [
    "Client", "ToolHandler", "attach", "spawn", "SpawnedClient", "daemon_command", "TurnRun",
    "Connection", "PendingRequest", "EventStream", "EventsPage", "UnknownEvent", "decode_event", "event_type",
    "ClientError", "TransportError", "ProtocolMismatch", "WarrenError", "RequestError", "InvalidRequest",
    "MethodNotFound", "InvalidParams", "InternalError", "RequestCancelled", "SessionFault", "SessionNotFound",
    "SessionBusy", "SessionError", "ProviderError",
]
