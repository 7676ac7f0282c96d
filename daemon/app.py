"""Assembles the daemon: store, providers, service, connection, and the order they stop in.

Start-up does not wait for the database: the store opens in the background while
``initialize`` is answered, and store-backed requests wait for it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import anyio

from .transport.dispatch import Dispatcher
from .frontends.warren import build_handlers
from .providers import ProviderRegistry
from .transport.peer import Connection
from .transport.stdio import Writer
from .store import Store
from .logs import get_logger

if TYPE_CHECKING:
    from .core.service import SessionService

log = get_logger("warren.app")


class Options(msgspec.Struct):
    db: Path | None
    max_line_bytes: int
    config: Path | None = None
    busy_timeout_ms: int = 5000
    shutdown_grace_s: float = 5.0


async def serve(options: Options, in_fd: int, out_fd: int) -> None:
    store = Store(options.db, busy_timeout_ms=options.busy_timeout_ms)
    connection = Connection(
        Writer(out_fd), max_line_bytes=options.max_line_bytes, shutdown_grace_s=options.shutdown_grace_s
    )
    connection.writer.on_broken = connection.stop_reading
    registry, startup_logs = load_providers(options.config)
    startup_logs.append(
        ("info", "started", {"db": str(options.db) if options.db else ":memory:", "max_line_bytes": options.max_line_bytes})
    )
    built: list[SessionService] = []

    def service() -> SessionService:
        """The session service, imported and built on first use (see ``build_handlers``)."""
        if not built:
            from .core.service import SessionService

            made = SessionService(store, registry, connection, channel=connection)
            made.spawn = root.start_soon
            made.accepting = not stopping
            store.on_open = made.recover  # before the store opens: nothing may see a dead turn
            built.append(made)
        return built[0]

    stopping = False

    async def interrupt_turns() -> None:
        nonlocal stopping
        stopping = True  # a service built from now on starts out shutting down
        if built:
            await built[0].interrupt_all()

    async def warm_up() -> None:
        """Work that must not delay the first answer, run after the first line's task:
        building the service, opening the store, writing the start-up log lines."""
        service()
        store.want_open()
        for level, event, fields in startup_logs:
            getattr(log, level)(event, **fields)

    connection.on_shutdown = interrupt_turns
    connection.on_first_line = lambda: root.start_soon(warm_up)
    connection.dispatcher = Dispatcher(
        build_handlers(service, registry, connection, max_line_bytes=options.max_line_bytes)
    )

    async with anyio.create_task_group() as root:
        root.start_soon(connection.writer.run)
        await root.start(store.run)
        root.start_soon(_watch_signals, connection)
        await connection.serve(in_fd)
        connection.writer.close()
        with anyio.move_on_after(options.shutdown_grace_s):
            await connection.writer.wait_drained()
        with anyio.move_on_after(1, shield=True):
            await registry.aclose()
        root.cancel_scope.cancel()
    log.info("stopped")


def load_providers(path: Path | None) -> tuple[ProviderRegistry, list[tuple[str, str, dict[str, Any]]]]:
    """Read the config; a broken file is reported on use instead of stopping the daemon.
    Returns the log lines to write once start-up is over."""
    from .config import Config, ConfigError, default_config_path, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        config = Config(None, None, {}, path or default_config_path(os.environ))
        return ProviderRegistry(config, exc), [("error", "config_invalid", {"error": exc.message})]
    logs: list[tuple[str, str, dict[str, Any]]] = [("warning", "config_warning", {"warning": w}) for w in config.warnings]
    logs.append(("info", "config_loaded", {"path": str(config.path), "file_loaded": config.file_loaded,
                                           "providers": sorted(config.providers), "default": config.default_provider}))
    return ProviderRegistry(config), logs


async def _watch_signals(connection: Connection) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal", signal=signal.Signals(signum).name)
            connection.stop_reading()
