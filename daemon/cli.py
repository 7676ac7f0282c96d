"""Command line: ``warren serve`` (also ``python -m warren.daemon serve``).

Editors spawn this at every start, and argparse alone costs ~7 ms of the start-up budget.
The options are therefore one table: a small parser reads the ordinary command lines, and
argparse is built from the same table only for ``--help`` or a command line the small
parser cannot read, so every error message and the help text stay argparse's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

from warren.protocol import DEFAULT_COALESCE_AFTER_LINES, DEFAULT_MAX_LINE_BYTES

LOG_LEVELS = ("debug", "info", "warning", "error")
#: The front-ends, each over the same store and session service.
COMMANDS = {
    "serve": "serve Warren's protocol: JSON-RPC 2.0 on stdin/stdout (one message per line)",
    "acp": "serve the Agent Client Protocol (v1) on stdin/stdout, for ACP editors",
}


class Option(NamedTuple):
    flag: str
    convert: Callable[[str], Any] | None  # None: a switch that takes no value
    default: Any
    help: str


def _options() -> list[Option]:
    return [
        Option("--db", Path, None, "SQLite file (default: $XDG_DATA_HOME/warren/warren.db)"),
        Option("--ephemeral", None, False, "keep everything in memory; nothing is saved"),
        Option("--config", Path, None, "config file (default: $XDG_CONFIG_HOME/warren/config.toml)"),
        Option("--max-line-bytes", int, DEFAULT_MAX_LINE_BYTES, "largest accepted input line"),
        Option("--log-level", str, os.environ.get("WARREN_LOG_LEVEL", "info"), "stderr log level (default info)"),
        Option("--busy-timeout-ms", int, 5000,
               "how long a write waits for another process's lock before SESSION_STORE_ERROR"),
        Option("--shutdown-grace-s", float, 5.0, "how long shutdown waits for running requests before cancelling them"),
        Option("--keep-delta-turns", int, None,
               "keep the text and reasoning deltas of only each session's last N turns (default: all)"),
        Option("--coalesce-after-lines", int, DEFAULT_COALESCE_AFTER_LINES,
               "merge a slow client's waiting deltas once this many lines wait for it"),
    ]


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _quick_parse(argv: list[str]) -> dict[str, Any] | None:
    """Parse ``serve|acp [--flag value | --flag=value | --switch]...``; None when unsure."""
    if not argv or argv[0] not in COMMANDS:
        return None
    options = {o.flag: o for o in _options()}
    values = {_dest(o.flag): o.default for o in options.values()}
    values["command"] = argv[0]
    rest = argv[1:]
    while rest:
        flag, _, inline = rest.pop(0).partition("=")
        option = options.get(flag)
        if option is None:
            return None
        if option.convert is None:
            if inline:
                return None
            values[_dest(flag)] = True
            continue
        raw = inline if inline else (rest.pop(0) if rest else None)
        if raw is None:
            return None
        try:
            values[_dest(flag)] = option.convert(raw)
        except ValueError:
            return None
    if values["db"] is not None and values["ephemeral"]:
        return None
    if values["log_level"] not in LOG_LEVELS:
        return None
    return values


def _version() -> str:
    from warren.protocol import PROTOCOL_VERSION

    from . import __version__

    return f"warren {__version__} (protocol {PROTOCOL_VERSION})"


def _argparse(argv: list[str]) -> dict[str, Any]:
    import argparse

    parser = argparse.ArgumentParser(prog="warren", description="Warren: LLM agent sessions over JSON-RPC on stdio")
    parser.add_argument("--version", "-V", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in COMMANDS.items():
        serve = sub.add_parser(command, help=help_text)
        where = serve.add_mutually_exclusive_group()
        for option in _options():
            target = where if option.flag in ("--db", "--ephemeral") else serve
            if option.convert is None:
                target.add_argument(option.flag, action="store_true", help=option.help)
            elif option.flag == "--log-level":
                target.add_argument(option.flag, default=option.default, choices=LOG_LEVELS, help=option.help)
            else:
                target.add_argument(option.flag, type=option.convert, default=option.default, help=option.help)
    return vars(parser.parse_args(argv))


def _import_msgspec_lean() -> None:
    """Import msgspec with ``typing_extensions`` hidden from it.

    msgspec resolves type hints through typing_extensions whenever it is installed (anyio
    brings it), and importing that costs 38M of the ~250M instructions to the answer to
    ``initialize``. The wire types use ``typing`` alone, which msgspec falls back to, and
    anything imported later still gets the real module."""
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]
    try:
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--version"], ["-V"]):
        print(_version())
        return 0
    args = _quick_parse(argv) or _argparse(argv)
    if args["max_line_bytes"] < 1024:
        print("warren: --max-line-bytes must be at least 1024", file=sys.stderr)
        return 2
    if args["keep_delta_turns"] is not None and args["keep_delta_turns"] < 0:
        print("warren: --keep-delta-turns must be 0 or more", file=sys.stderr)
        return 2
    if args["coalesce_after_lines"] < 1:
        print("warren: --coalesce-after-lines must be at least 1", file=sys.stderr)
        return 2
    from .transport.stdout import protect_stdout

    out_fd = protect_stdout()
    from . import logs

    logs.configure(args["log_level"])
    _import_msgspec_lean()
    from .providers import load_providers

    registry, startup_logs = load_providers(args["config"])
    # A first initialize is answered before anyio, the store and the service are imported.
    from .frontends.handshake import Initialize, answer_first_request, first_request_dispatcher

    initialize = Initialize(registry, max_line_bytes=args["max_line_bytes"],
                            coalesce_after_lines=args["coalesce_after_lines"])
    first = answer_first_request(0, out_fd, first_request_dispatcher(args["command"], initialize),
                                 args["max_line_bytes"])

    import anyio

    from .app import Options, serve
    from .store.db import default_db_path

    db = None if args["ephemeral"] else (args["db"] or default_db_path())
    options = Options(db=db, max_line_bytes=args["max_line_bytes"],
                      busy_timeout_ms=args["busy_timeout_ms"], shutdown_grace_s=args["shutdown_grace_s"],
                      keep_delta_turns=args["keep_delta_turns"], coalesce_after_lines=args["coalesce_after_lines"],
                      frontend=args["command"])
    import gc

    # Everything imported so far lives for the whole process: keep the collector from
    # walking it again and again (full collections were 10 ms pauses in long tool loops).
    gc.freeze()
    anyio.run(serve, options, 0, out_fd, registry, startup_logs, initialize, first)
    return 0


if __name__ == "__main__":
    sys.exit(main())
