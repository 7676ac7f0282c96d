"""1. Cold start: from spawning the daemon to holding its ``initialize`` response.

The clock starts before ``Popen`` and stops when the response line has been read, so it
covers fork/exec, interpreter start-up, imports, event loop set-up and the first round trip:
what an editor waits for before it can show anything. The ``initialize`` request is written
right after spawning, as a client would, and sits in the pipe until the daemon reads it.

Bytecode matters as much as code here. When ``PYTHONDONTWRITEBYTECODE`` is set (it is in
some dev and CI environments) no ``.pyc`` is ever written for the work tree, so every start
compiles the daemon's own sources again. The start is therefore measured twice: with the
environment as it is, and with bytecode cached (``PYTHONPYCACHEPREFIX`` pointing at a temp
dir, filled by an uncounted warm-up run), which is what an installed Warren does.

Two baselines put the numbers in context: a bare ``python -c pass`` (the floor no daemon
change can go below) and ``-X importtime`` of one start with cached bytecode, whose top
entries show which imports dominate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import ROOT, BenchError, Daemon, encode_request
from .results import Section, Target, latency_metric

TARGET_MS = Target("<", 100)
INIT = encode_request(1, "initialize", {"protocol_version": 1, "client_info": {"name": "warren-bench", "version": "1"}})
Env = dict[str, str | None]


def cached_bytecode(tmp: str) -> Env:
    """The environment of a start with bytecode cached under ``tmp`` (whatever
    ``PYTHONDONTWRITEBYTECODE`` says here), as an installed Warren starts."""
    return {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache")}


def one_start(args: tuple[str, ...], env: Env, *, command: str = "serve", init: bytes = INIT) -> float:
    """Milliseconds from spawning ``python -m warren.daemon COMMAND ARGS`` to its answer to ``init``
    (an ``initialize`` request with id 1, in the front-end's own protocol)."""
    start = time.perf_counter()
    daemon = Daemon(*args, env=env, command=command)
    try:
        daemon.write(init)
        msg = daemon.wait(1, timeout=30)
        elapsed = (time.perf_counter() - start) * 1000
        if not msg.result:
            raise BenchError("initialize returned no result")
    finally:
        daemon.close()
    return elapsed


def _interpreter_floor(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, cwd=ROOT)
        out.append((time.perf_counter() - start) * 1000)
    return out


def parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """``-X importtime`` lines as (self_us, cumulative_us, depth, module), in import order."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, cum_us, name = line[len("import time:") :].split("|", 2)
            depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
            rows.append((int(self_us), int(cum_us), depth, name.strip()))
        except ValueError:
            continue
    return rows


def _importtime(env: Env, top: int) -> tuple[list[dict[str, object]], float, float]:
    """One start under ``-X importtime``: the ``top`` entries by cumulative time, the total
    of top-level imports, and the part of it done after the daemon logged "started"
    (deferred imports, which may or may not delay the first response)."""
    with tempfile.TemporaryFile() as err:
        daemon = Daemon("--ephemeral", python_flags=("-X", "importtime"), stderr=err, env=env)
        try:
            daemon.initialize()
        finally:
            daemon.close()
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    marker = text.find('"event":"started"')
    cut = len(text) if marker < 0 else marker
    rows = [(*r, False) for r in parse_importtime(text[:cut])] + [(*r, True) for r in parse_importtime(text[cut:])]
    top_level = [r for r in rows if r[2] == 0]
    total_ms = sum(r[1] for r in top_level) / 1000
    deferred_ms = sum(r[1] for r in top_level if r[4]) / 1000
    ranked = sorted(rows, key=lambda r: r[1], reverse=True)[:top]
    return (
        [
            {"module": r[3], "cumulative_ms": r[1] / 1000, "self_ms": r[0] / 1000, "depth": r[2], "deferred": r[4]}
            for r in ranked
        ],
        total_ms,
        deferred_ms,
    )


def run(section: Section, runs: int = 20) -> None:
    as_is: Env = {}
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        cached = cached_bytecode(tmp)
        dont_write = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        variants: list[tuple[str, tuple[str, ...], Env]] = [
            ("--ephemeral, bytecode cached", ("--ephemeral",), cached),
            ("--db fresh file, bytecode cached", ("--db", ""), cached),
        ]
        if dont_write:
            section.note("PYTHONDONTWRITEBYTECODE is set here: without a cache every start compiles the "
                         "daemon's sources (the 'as configured' rows).")
            variants += [
                ("--ephemeral, as configured (no .pyc)", ("--ephemeral",), as_is),
                ("--db fresh file, as configured (no .pyc)", ("--db", ""), as_is),
            ]
        for name, args, env in variants:
            one_start(("--ephemeral",), env)  # warm the page cache (and the bytecode cache); not counted
            samples = []
            for i in range(runs):
                if args[0] == "--db":  # a new file every time: the start creates and migrates it
                    args = ("--db", str(Path(tmp) / f"fresh-{len(section.metrics)}-{i}.db"))
                samples.append(one_start(args, env))
            section.add(latency_metric(section.key, f"cold start {name}", samples, TARGET_MS))

        floor = _interpreter_floor(max(5, runs // 2))
        section.add(latency_metric(section.key, "baseline: python -c pass", floor))
        top, total_ms, deferred_ms = _importtime(cached, 10)

    section.extra["importtime_top"] = top
    section.extra["import_total_ms"] = total_ms
    section.note(
        f"-X importtime (bytecode cached): top-level imports total {total_ms:.1f} ms (of which {deferred_ms:.1f} ms "
        "after the 'started' log line); top 10 by cumulative time:"
    )
    for row in top:
        indent = "  " * int(row["depth"])  # type: ignore[call-overload]
        flag = "  (after 'started')" if row["deferred"] else ""
        section.note(f"  {row['cumulative_ms']:7.1f} ms cum {row['self_ms']:6.1f} ms self  {indent}{row['module']}{flag}")
