"""``spawn``: start ``warren serve`` as a subprocess, attach a ``Client`` to its pipes, and end
it the way the protocol asks when the block is left.

The daemon is run as ``python -m warren.daemon serve`` with the interpreter running this
code: the client and the daemon ship in one package, so that is the daemon that matches
this client, whatever ``warren`` on ``PATH`` would be. Leaving the block closes the daemon's
stdin, which it takes as "the client went away": it interrupts running turns (committing
their output) and exits; one that has not exited within ``exit_timeout_s`` is killed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import IO, AsyncIterator, Mapping, Sequence

import anyio
import anyio.abc

from .client import Client, ToolHandler
from .connection import DEFAULT_MAX_LINE_BYTES, Connection


class SpawnedClient(Client):
    """A ``Client`` whose daemon this process started: ``process`` is its
    ``anyio.abc.Process`` (``pid``, ``returncode``, ``wait()``)."""

    process: anyio.abc.Process


def daemon_command(
    *args: str, db: str | os.PathLike[str] | None = None, ephemeral: bool = False, config: str | os.PathLike[str] | None = None
) -> list[str]:
    """The command line of ``warren serve`` with these options (``args`` are appended as
    they are: ``--log-level``, ``--max-line-bytes N``, …)."""
    cmd = [sys.executable, "-m", "warren.daemon", "serve"]
    if db is not None:
        cmd += ["--db", os.fspath(db)]
    if ephemeral:
        cmd.append("--ephemeral")
    if config is not None:
        cmd += ["--config", os.fspath(config)]
    return cmd + list(args)


@contextlib.asynccontextmanager
async def spawn(
    *args: str,
    db: str | os.PathLike[str] | None = None,
    ephemeral: bool = False,
    config: str | os.PathLike[str] | None = None,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    tool_handler: ToolHandler | None = None,
    exit_timeout_s: float = 10.0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[SpawnedClient]:
    """Start a daemon and yield a client connected to it.

    ``db`` / ``ephemeral`` / ``config`` / ``args`` are ``warren serve``'s options (neither
    ``db`` nor ``ephemeral``: the default store under ``$XDG_DATA_HOME``). ``command``
    replaces the whole command line (another build of Warren; ``args`` are appended).
    ``env`` is the daemon's whole environment (default: this process's). The daemon's log
    (JSON lines on stderr) is dropped unless ``stderr`` names a file or ``None`` (inherit).
    """
    cmd = list(command) + list(args) if command is not None else daemon_command(*args, db=db, ephemeral=ephemeral, config=config)
    process = await anyio.open_process(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=cwd,
        env=dict(env) if env is not None else None,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        async with Connection(process.stdout, process.stdin, max_line_bytes=max_line_bytes) as connection:
            client = SpawnedClient(connection, tool_handler=tool_handler)
            client.process = process
            try:
                yield client
            finally:
                client._closing = True
                with anyio.CancelScope(shield=True):
                    await connection.close_input()
                    with anyio.move_on_after(exit_timeout_s):
                        await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await process.aclose()
