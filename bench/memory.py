"""6. Peak resident memory of the daemon after 1,000 sessions have been touched.

A fresh database file; 1,000 ``session/create`` calls with the scripted provider's echo
(16 in flight, as several editor windows would), then ``session/read`` of each (64 in
flight), then ``VmHWM`` (the high-water mark of resident memory) from
``/proc/<pid>/status``. The idle high-water mark right after ``initialize`` is reported
too, so growth can be told apart from the interpreter's and the libraries' fixed cost. Create throughput falls out of the
same run and is reported for information: every create commits with ``synchronous=FULL``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .client import BenchError, Daemon, encode_request
from .loops import pipelined
from .results import Metric, Section

WINDOW = 16


def status_mb(status_value: str) -> float:
    number, _, unit = status_value.partition(" ")
    if unit != "kB":
        raise BenchError(f"unexpected /proc status unit {unit!r}")
    return int(number) / 1024


def run(section: Section, sessions: int = 1_000) -> None:
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp, \
            Daemon("--db", str(Path(tmp) / "bench.db")) as daemon:
        daemon.initialize()
        daemon.call("session/list")  # the store opens in the background; count it as idle
        idle = status_mb(daemon.status()["VmHWM"])

        def create(id_: int) -> bytes:
            return encode_request(id_, "session/create",
                                  {"prompt": f"hello {id_}", "provider": "scripted", "labels": {"bench": "rss"}})

        start = time.perf_counter()
        seconds = pipelined(daemon, create, sessions, WINDOW, timeout=300)
        section.add(Metric(section.key, f"session/create (echo turn) pipelined x{WINDOW}", "req/s",
                           sessions / seconds, sessions))
        listed = daemon.call("session/list", {"limit": 1000, "labels": {"bench": "rss"}})
        remaining = iter([s["session_id"] for s in listed["sessions"]])
        if len(listed["sessions"]) != sessions:
            raise BenchError(f"{len(listed['sessions'])} sessions listed after creating {sessions}")

        def read(id_: int) -> bytes:
            return encode_request(id_, "session/read", {"session_id": next(remaining)})

        pipelined(daemon, read, sessions, 64)
        status = daemon.status()
        elapsed = time.perf_counter() - start
    peak, rss = status_mb(status["VmHWM"]), status_mb(status["VmRSS"])
    section.add(Metric(section.key, f"peak RSS (VmHWM) after {sessions:,} sessions", "MB", peak))
    section.add(Metric(section.key, "RSS (VmRSS) at that point", "MB", rss, detail=True))
    section.add(Metric(section.key, "idle peak RSS after initialize", "MB", idle, detail=True))
    section.note(f"{sessions:,} creates + {sessions:,} reads took {elapsed:.1f} s")
