"""Newline-delimited framing with a hard size limit, as pure state (the h11 style).

The caller feeds whatever bytes it read and gets back complete lines. A line longer than
the limit is never buffered whole: the buffer drops it as it arrives and reports one
``Oversized`` item once its newline is seen, so a hostile or broken client cannot make
the daemon hold more than ``max_line_bytes`` of one line in memory.
"""

from __future__ import annotations

import msgspec



class Oversized(msgspec.Struct, frozen=True):
    """A line that exceeded the limit and was discarded; ``size`` is at least this many bytes."""

    size: int


class LineBuffer:
    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no newline
        self._discarding = 0  # >0 while dropping an oversized line: bytes dropped so far

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """Add bytes; return every complete, non-blank line (without its ``\\r\\n``)."""
        out: list[bytes | Oversized] = []
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                self._discarding += len(data)
                return out
            out.append(Oversized(self._discarding + nl))
            self._discarding = 0
            data = data[nl + 1 :]
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", max(start, self._scanned))
            if nl < 0:
                break
            self._scanned = 0
            self._emit(bytes(buf[start:nl]), out)
            start = nl + 1
        if start:
            del buf[:start]
        self._scanned = len(buf)
        # A trailing ``\r`` may be the first half of ``\r\n``: it is not part of the line.
        if len(buf) > self.max_line_bytes + (1 if buf.endswith(b"\r") else 0):
            self._discarding = len(buf)
            buf.clear()
            self._scanned = 0
        return out

    def eof(self) -> list[bytes | Oversized]:
        """The stream ended: a final line without a newline still counts as a line."""
        out: list[bytes | Oversized] = []
        if self._discarding:
            out.append(Oversized(self._discarding))
            self._discarding = 0
        elif self._buf:
            self._emit(bytes(self._buf), out)
        self._buf.clear()
        self._scanned = 0
        return out

    def _emit(self, line: bytes, out: list[bytes | Oversized]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            out.append(Oversized(len(line)))
        elif line.strip():
            out.append(line)
