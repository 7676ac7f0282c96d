"""Time and ids, in one place so that both stay consistent across the daemon."""

from __future__ import annotations

import os
import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_last_ms = 0
_counter = 0


def new_id() -> str:
    """A UUIDv7 string (RFC 9562) that sorts by creation, also within one millisecond.

    The 12-bit ``rand_a`` field is a counter while the millisecond repeats (the RFC's
    "fixed bit-length dedicated counter" method), so ids made by one process in a burst
    still sort in the order they were made; ``session/list`` breaks time ties by id.
    """
    global _last_ms, _counter
    ms = now_ms()
    if ms <= _last_ms:
        ms = _last_ms
        _counter += 1
        if _counter > 0xFFF:
            ms, _counter = ms + 1, 0
    else:
        _counter = int.from_bytes(os.urandom(2), "big") & 0x1FF
    _last_ms = ms
    rand = int.from_bytes(os.urandom(8), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= _counter << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
