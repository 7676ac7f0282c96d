"""``python -m bench [--json PATH] [--only KEY ...] [--profile DIR]``

Runs the fifteen measurements of the benchmark in order, printing each table as it completes.
A section that cannot be measured (the daemon crashed or answered wrongly) is reported
and the others still run; only then is the exit status non-zero. Slow numbers never fail.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from . import (acp_mcp, coldstart, compaction, events, images, memory, paging, providers, report, throughput, tools,
               transcripts)
from .client import Daemon
from .results import Section

SECTIONS: dict[str, str] = {
    "coldstart": "Cold start to the initialize response (target < 100 ms)",
    "roundtrip": "session/read round trips on an existing session (target > 5,000/s)",
    "deltas": "text_delta notifications delivered, 20,000-delta scripted turn (target > 50,000/s), "
              "and with events stored vs. before (target >= 0.9x)",
    "history": "session/history page latency, 100,000-message session (target < 5 ms)",
    "list": "session/list page latency, 10,000 sessions (target < 5 ms)",
    "memory": "Peak RSS with 1,000 sessions touched",
    "providers": "Real-provider path: 2,000-delta turns from a local OpenAI-compatible server "
                 "(targets < 2 ms added latency, < 0.05 CPU-s per 1,000 deltas)",
    "tools": "tool/execute round trip with an instant client, 1,000 calls (target median < 1 ms)",
    "replay": "Stored events read back through the pipe, 20,000-delta turn: session/events pages and "
              "session/subscribe replay (target >= 200,000 events/s)",
    "cross_daemon": "Cross-daemon subscribe: an event read from daemon A to the same seq read from daemon B, "
                    "one --db file (targets median < 20 ms, p99 < 100 ms)",
    "paused_rss": "A client that reads nothing during a 200,000-delta turn: daemon peak RSS, turn duration, "
                  "lines finally read",
    "transcripts": "Transcript edits and pages on a 100,000-message vs. a 10-message session: fork, rewrite, "
                   "append, restore, history of a fork and of a rewritten session "
                   "(targets: 100k < 5 ms and <= 2x the 10-message figure)",
    "acp_mcp": "warren acp and MCP tool sources: acp cold start beside serve's, time to the first "
               "agent_message_chunk, MCP tool round trip beyond the server's own time (target median < 2 ms), "
               "daemon RSS with one MCP server; the same over streamable HTTP",
    "compaction": "Compaction of a 10,000-message session vs. a 10-message one (daemon time; the scripted "
                  "model answers at once), history pages after it, and the first turn after it vs. the same "
                  "turn uncompacted (no targets)",
    "images": "Prompts with a 1 MiB image: turn/start written to the OpenAI-compatible server receiving the HTTP "
              "request, beside a tiny text prompt, and the request body's size (no targets)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="KEY",
                        help=f"run only these sections: {', '.join(SECTIONS)}")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run every daemon under cProfile, writing DIR/*.prof (numbers are then distorted)")
    return parser


def _run(shown: list[Section], body: Callable[[], None]) -> None:
    """Run ``body`` (which fills ``shown``), time it, record any error, print the tables."""
    start = time.perf_counter()
    cpu = report.cpu_snapshot()
    error = None
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - reported, and the remaining sections still run
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    elapsed = time.perf_counter() - start
    other = report.other_cpu_share(cpu, report.cpu_snapshot(), elapsed)
    for section in shown:
        section.seconds = elapsed
        section.other_cpu_share = other
        section.error = error
        report.print_section(section)
    sys.stdout.flush()


def _print_profiles(directory: Path, top: int = 15) -> None:
    for path in sorted(directory.glob("*.prof")):
        stats = pstats.Stats(str(path))
        total = getattr(stats, "total_tt", 0.0)
        if total < 1.0:
            continue
        print(f"--- {path} ({total:.1f} s profiled), top {top} by own time")
        stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = args.only or list(SECTIONS)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        Daemon.profile_dir = args.profile.resolve()

    env = report.environment()
    report.print_environment(env)
    if args.profile is not None:
        print(f"PROFILING into {args.profile}: every daemon runs under cProfile, so the numbers are distorted\n")
    sys.stdout.flush()

    started = time.perf_counter()
    cpu_start = report.cpu_snapshot()
    sections: dict[str, Section] = {key: Section(str(i + 1), title) for i, (key, title) in enumerate(SECTIONS.items())}
    runners: dict[str, Callable[[Section], None]] = {
        "coldstart": coldstart.run, "roundtrip": throughput.run_round_trips, "deltas": throughput.run_deltas,
        "memory": memory.run, "providers": providers.run, "tools": tools.run,
        "replay": events.run_replay, "cross_daemon": events.run_cross_daemon, "paused_rss": events.run_paused,
        "transcripts": transcripts.run, "acp_mcp": acp_mcp.run, "compaction": compaction.run, "images": images.run,
    }
    for key in SECTIONS:
        if key == "history" and ("history" in wanted or "list" in wanted):
            # Both use one database, built once, since building it is the slow part.
            history = sections["history"] if "history" in wanted else None
            listing = sections["list"] if "list" in wanted else None
            _run([x for x in (history, listing) if x is not None], lambda: paging.run(history, listing))
        elif key in runners and key in wanted:
            _run([sections[key]], lambda: runners[key](sections[key]))

    ran = [sections[key] for key in SECTIONS if key in wanted]
    total = time.perf_counter() - started
    report.print_summary(ran)
    other_share = report.print_interference(cpu_start, report.cpu_snapshot(), total)
    if Daemon.hung_exits:
        print(f"  {len(Daemon.hung_exits)} process(es) did not exit within 10 s of end of input and were killed: "
              + ", ".join(Daemon.hung_exits))
    print(f"Total {total:.1f} s")
    if args.json is not None:
        report.write_json(args.json, env, ran, {"total_seconds": round(total, 3), "hung_exits": Daemon.hung_exits,
                                                 "other_cpu_share": round(other_share, 3)})
        print(f"JSON written to {args.json}")
    if args.profile is not None:
        _print_profiles(Daemon.profile_dir)  # type: ignore[arg-type]
    return 1 if any(s.error for s in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
