"""Command line: ``warren serve`` (also ``python -m daemon serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from protocol import DEFAULT_MAX_LINE_BYTES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warren", description="Warren: LLM agent sessions over JSON-RPC on stdio")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve JSON-RPC 2.0 on stdin/stdout (one message per line)")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="SQLite file (default: $XDG_DATA_HOME/warren/warren.db)")
    where.add_argument("--ephemeral", action="store_true", help="keep everything in memory; nothing is saved")
    serve.add_argument("--config", type=Path,
                       help="config file (default: $XDG_CONFIG_HOME/warren/config.toml)")
    serve.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES, help="largest accepted input line")
    serve.add_argument("--log-level", default=os.environ.get("WARREN_LOG_LEVEL", "info"),
                       choices=["debug", "info", "warning", "error"], help="stderr log level (default info)")
    serve.add_argument("--busy-timeout-ms", type=int, default=5000,
                       help="how long a write waits for another process's lock before SESSION_STORE_ERROR")
    serve.add_argument("--shutdown-grace-s", type=float, default=5.0,
                       help="how long shutdown waits for running requests before cancelling them")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.max_line_bytes < 1024:
        print("warren: --max-line-bytes must be at least 1024", file=sys.stderr)
        return 2

    from .stdio import protect_stdout

    out_fd = protect_stdout()
    from . import logs

    logs.configure(args.log_level)

    import anyio

    from .app import Options, serve
    from .store import default_db_path

    db = None if args.ephemeral else (args.db or default_db_path())
    options = Options(db=db, max_line_bytes=args.max_line_bytes, config=args.config, busy_timeout_ms=args.busy_timeout_ms,
                      shutdown_grace_s=args.shutdown_grace_s)
    import gc

    # Everything imported so far lives for the whole process: keep the collector from
    # walking it again and again (full collections were 10 ms pauses in long tool loops).
    gc.freeze()
    anyio.run(serve, options, 0, out_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
