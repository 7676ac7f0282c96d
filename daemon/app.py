"""Assembles the daemon: store, providers, service, connection, and the order they stop in.

Start-up does not wait for the database: the store opens in the background while
``initialize`` is answered, and store-backed requests wait for it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from warren.protocol import DEFAULT_COALESCE_AFTER_LINES

from .core.events import EventBus
from .frontends.warren import CANCEL_METHOD, WarrenFrontend
from .mcp import McpManager
from .frontends.handshake import Handshake, Initialize
from .providers import ProviderRegistry
from .store import Store
from .transport.peer import Peer
from .transport.stdio import Writer
from .logs import get_logger

if TYPE_CHECKING:
    from .core.service import SessionService
    from .frontends.acp import AcpFrontend

log = get_logger("warren.app")


class Options(msgspec.Struct):
    db: Path | None
    max_line_bytes: int
    busy_timeout_ms: int = 5000
    shutdown_grace_s: float = 5.0
    keep_delta_turns: int | None = None
    coalesce_after_lines: int = DEFAULT_COALESCE_AFTER_LINES
    frontend: str = "serve"  # "serve": Warren's protocol; "acp": the Agent Client Protocol


async def serve(options: Options, in_fd: int, out_fd: int, registry: ProviderRegistry,
                startup_logs: list[tuple[str, str, dict[str, Any]]], initialize: Initialize, first: Handshake) -> None:
    """``first``: what ``handshake.answer_first_request`` did with the first line before
    the loop existed (``initialize`` is the handler that answered it, if it did)."""
    built: list[SessionService] = []
    stopping = False

    def service() -> SessionService:
        """The session service, imported and built on first use (see ``WarrenFrontend``)."""
        if not built:
            from .core.service import SessionService

            built.append(SessionService(store, registry, bus, frontend, frontend, root.start_soon,
                                        accepting=not stopping, mcp=mcp))
        return built[0]

    async def recover(db: Any) -> int:
        """Runs when the store opens, before any other unit: nothing may see a dead turn."""
        return await service().recover(db)

    store = Store(options.db, busy_timeout_ms=options.busy_timeout_ms, on_open=recover)
    mcp = McpManager(log_stderr=_log_mcp_stderr)
    bus = EventBus(store, keep_delta_turns=options.keep_delta_turns)
    writer = Writer(out_fd, coalesce_after=options.coalesce_after_lines)
    startup_logs.append(
        ("info", "started", {"db": str(options.db) if options.db else ":memory:", "max_line_bytes": options.max_line_bytes})
    )

    async def input_closed() -> None:
        nonlocal stopping
        stopping = True  # a service built from now on starts out shutting down
        bus.drop_sink(frontend)
        if built:
            await built[0].interrupt_all()

    async def warm_up() -> None:
        """Work that must not delay the first answer, run after the first line's task:
        building the service, opening the store, writing the start-up log lines."""
        service()
        store.want_open()
        for level, event, fields in startup_logs:
            getattr(log, level)(event, **fields)
        await _prepare_provider(registry, peer)

    frontend: WarrenFrontend | AcpFrontend
    on_first_line = None if first.answered else lambda: root.start_soon(warm_up)
    if options.frontend == "acp":
        from warren.protocol.acp import METHOD_CANCEL_REQUEST

        from .frontends.acp import AcpFrontend

        peer = Peer(writer, max_line_bytes=options.max_line_bytes, cancel_method=METHOD_CANCEL_REQUEST,
                    cancel_field="requestId", shutdown_grace_s=options.shutdown_grace_s, on_first_line=on_first_line)
        frontend = AcpFrontend(peer, registry, service)
    else:
        peer = Peer(writer, max_line_bytes=options.max_line_bytes, cancel_method=CANCEL_METHOD,
                    shutdown_grace_s=options.shutdown_grace_s, on_first_line=on_first_line)
        frontend = WarrenFrontend(peer, registry, service, initialize,
                                  db_path=str(options.db) if options.db else None)

    async with anyio.create_task_group() as root:
        root.start_soon(writer.run)
        await root.start(store.run)
        root.start_soon(bus.run)
        await root.start(mcp.run)
        root.start_soon(_watch_signals, peer)
        if first.answered:
            root.start_soon(warm_up)
        if first.stop_signal is not None:
            log.info("signal", signal=signal.Signals(first.stop_signal).name)
            peer.stop_reading()
        if first.output_gone:
            log.info("client_gone", during="initialize")  # as the writer would on a broken pipe
            peer.stop_reading()
        await peer.serve(in_fd, frontend.dispatcher, input_closed, buffer=first.buffer, pending=first.pending)
        writer.close()
        with anyio.move_on_after(options.shutdown_grace_s):
            await writer.wait_drained()
        with anyio.move_on_after(1, shield=True):
            await registry.aclose()
        with anyio.move_on_after(options.shutdown_grace_s, shield=True):
            await mcp.aclose()
        root.cancel_scope.cancel()
    log.info("stopped")


QUIET_BEFORE_PREPARING_S = 0.03


async def _prepare_provider(registry: ProviderRegistry, peer: Peer) -> None:
    """Import and build the default provider in a worker thread once the client has gone
    quiet (no request in flight for ``QUIET_BEFORE_PREPARING_S``, or after a second of
    steady traffic), so that the first turn does not wait for it, and the requests an
    editor sends right after ``initialize`` (creating a session) do not share the
    interpreter with it."""
    with anyio.move_on_after(1.0):
        quiet_since = anyio.current_time()
        while anyio.current_time() - quiet_since < QUIET_BEFORE_PREPARING_S:
            await anyio.sleep(0.01)
            if peer.state.inflight_count:
                quiet_since = anyio.current_time()
    started = anyio.current_time()
    try:
        prepared = await anyio.to_thread.run_sync(registry.prepare_default)
    except Exception as exc:  # noqa: BLE001 - the first turn builds it again and reports why
        log.warning("provider_prepare_failed", error=type(exc).__name__)
        return
    if prepared is not None:
        registry.adopt(prepared)
        log.debug("provider_prepared", provider=prepared[0],
                  duration_ms=round((anyio.current_time() - started) * 1000, 3))


def _log_mcp_stderr(server: str, line: str) -> None:
    """An MCP server's stderr, a log line each, tagged with the server's name."""
    log.info("mcp_stderr", server=server, line=line)


async def _watch_signals(peer: Peer) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal", signal=signal.Signals(signum).name)
            peer.stop_reading()
