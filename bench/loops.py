"""The two ways of driving requests: one at a time, and a fixed window in flight.

Sequential calls measure latency (each sample is one client round trip: write the request,
read until its response line is complete and its envelope decoded). Pipelined calls
measure throughput, the way a busy plugin issues reads without waiting for each: a window
of requests is kept in flight, and each chunk of responses read is answered with one write
that refills the window.

``make_request(id)`` returns one encoded request line; every response is checked to be a
result, not an error, because an error is usually cheaper than the real work and would
flatter the number.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .client import BenchError, LineProcess, decode, encode_request

MakeRequest = Callable[[int], bytes]


def sequential(daemon: LineProcess, make_request: MakeRequest, count: int, timeout: float = 120.0) -> list[float]:
    """Round-trip latencies in milliseconds of ``count`` requests, one in flight."""
    deadline = time.monotonic() + timeout
    out: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        id_ = daemon.new_id()
        line = make_request(id_)
        start = clock()
        daemon.write(line)
        while True:
            line = daemon.read_line(deadline)
            msg = decode(line) if line else None
            if msg is not None and msg.id == id_ and msg.method is None:
                break
        out.append((clock() - start) / 1e6)
        if msg.error is not None or not msg.result:
            raise BenchError(f"request failed: {msg.error}")
    return out


def checked_latencies(
    daemon: LineProcess, method: str, params: Callable[[], Any], check: Callable[[Any], None], count: int, warmup: int,
) -> list[float]:
    """``sequential`` latencies of ``count`` requests of ``method`` after ``warmup`` unmeasured
    ones; ``params()`` gives each request's params (called before its clock starts). The first
    response, before the warm-up, is decoded and passed to ``check``, so that a fast wrong
    answer cannot pass."""
    check(daemon.call(method, params()))

    def make(id_: int) -> bytes:
        return encode_request(id_, method, params())

    sequential(daemon, make, warmup)
    return sequential(daemon, make, count)


def pipelined(
    daemon: LineProcess, make_request: MakeRequest, count: int, window: int, timeout: float = 120.0
) -> float:
    """Seconds to complete ``count`` requests keeping ``window`` in flight."""
    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    sent = min(window, count)
    daemon.write(b"".join(make_request(daemon.new_id()) for _ in range(sent)))
    done = 0
    while done < count:
        answered = 0
        for line in daemon.read_lines(deadline):
            if not line:
                continue
            msg = decode(line)
            if msg.method is not None:
                continue  # a notification
            if msg.error is not None or not msg.result:
                raise BenchError(f"request {msg.id} failed: {msg.error}")
            answered += 1
        done += answered
        refill = min(answered, count - sent)
        if refill > 0:
            daemon.write(b"".join(make_request(daemon.new_id()) for _ in range(refill)))
            sent += refill
    return time.perf_counter() - start
