"""The daemon's two file descriptors: a chunk reader for stdin and the single stdout writer.

Neither uses a thread or asyncio's ``StreamReader`` (whose 64 KiB line limit and buffering
we do not want). Pipes and sockets are polled; a regular file or ``/dev/null`` cannot be,
and is read directly, which never blocks for long.

The protocol descriptor is put in non-blocking mode only when it is a pipe or a socket:
those belong to the client that spawned us, whereas flipping a terminal to non-blocking
would leak into the user's shell.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import sys
from typing import AsyncIterator, Protocol

import anyio

from ..loop import checkpoint

READ_SIZE = 1 << 16
_GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET, errno.EIO)
WRITE_BATCH = 1 << 18


def _is_pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def read_chunks(fd: int) -> AsyncIterator[bytes]:
    """Yield what arrives on ``fd`` until end of file."""
    if _is_pipe_or_socket(fd):
        async for data in _read_registered(fd):
            yield data
        return
    pollable = True
    while True:
        if pollable:
            try:
                await anyio.wait_readable(fd)
            except (OSError, ValueError, NotImplementedError):
                pollable = False
        data = _read(fd)
        if data is None:
            continue
        if not data:
            return
        yield data
        if not pollable:
            await checkpoint()


def _read(fd: int) -> bytes | None:
    """One read: the bytes, ``b""`` at end of input (or a closed descriptor), ``None`` when
    nothing is ready yet."""
    try:
        return os.read(fd, READ_SIZE)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.EIO, errno.ECONNRESET):
            return b""
        raise


async def _read_registered(fd: int) -> AsyncIterator[bytes]:
    """A pipe or socket stays registered with the event loop for the whole session, rather
    than once per read: a sequential client pays one readiness wake-up per request, not
    two registrations. (The daemon runs anyio on its asyncio backend; this is the one
    place that uses the loop directly.)"""
    import asyncio

    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    os.set_blocking(fd, False)
    loop.add_reader(fd, ready.set)
    try:
        while True:
            data = _read(fd)
            if data is None:
                ready.clear()
                await ready.wait()
                continue
            if not data:
                return
            yield data
    finally:
        loop.remove_reader(fd)


class Mergeable(Protocol):
    """A queued line that may absorb the next one while the client is not reading (a
    front-end's text delta), encoded only when it is written."""

    def merge(self, other: "Mergeable") -> bool:
        """Absorb ``other`` (True), or refuse it (False: it is queued after)."""
        ...

    def encode(self) -> bytes: ...


class Writer:
    """The only code that writes protocol lines. Producers ``send`` whole lines; one task
    writes them in order, batching whatever has queued up into one ``write``.

    ``send`` waits while ``max_pending`` lines are queued: a client that stops reading
    slows requests down instead of growing memory. Events never wait (a turn must not be
    stalled by a reader): ``send_event`` queues at once, and while more than
    ``coalesce_after`` lines wait, an event is merged into the one before it when that
    one agrees (``Mergeable``), so memory grows with what was produced, not with the
    number of lines. If the client is gone (EPIPE), lines are dropped and ``broken`` is set.
    """

    def __init__(self, fd: int, *, max_pending: int = 4096, coalesce_after: int = 1024) -> None:
        self.fd = fd
        self.max_pending = max_pending
        self.coalesce_after = coalesce_after
        self.broken = anyio.Event()
        self._broken = False  # the same, read on every line without a call
        self._queue: collections.deque[bytes | Mergeable] = collections.deque()
        self._closed = False
        self._wake: anyio.Event | None = None
        self._space: anyio.Event | None = None
        self._drained = anyio.Event()
        self._nonblocking = _is_pipe_or_socket(fd)
        if self._nonblocking:
            os.set_blocking(fd, False)

    async def send(self, line: bytes, *, direct: bool = False) -> None:
        await self.wait_space()
        self.send_nowait(line, direct=direct)

    async def wait_space(self) -> None:
        """Return once a line can be queued. Does not yield while there is room, so a
        caller can allocate something (an event's ``seq``) and queue it atomically."""
        while len(self._queue) >= self.max_pending and not self._broken:
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()

    def send_nowait(self, line: bytes, *, direct: bool = False) -> None:
        """Queue a line. ``direct``: when the writer is idle (nothing queued, nothing being
        written), write it now, saving a trip through the event loop. Responses use it;
        events do not, because a burst of deltas is cheaper written in batches."""
        if self._broken or self._closed:
            return
        if direct and not self._queue and self._wake is not None:
            try:
                n = os.write(self.fd, line)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno in _GONE:
                    self._mark_broken()
                    return
                raise
            if n == len(line):
                return
            line = line[n:]
        self._queue.append(line)
        if self._wake is not None:
            self._wake.set()

    @property
    def backlog(self) -> int:
        """Lines waiting to be written."""
        return len(self._queue)

    def send_event(self, item: bytes | Mergeable) -> None:
        """Queue an event line without ever waiting (see the class docstring)."""
        if self._broken or self._closed:
            return
        queue = self._queue
        if not isinstance(item, bytes) and len(queue) > self.coalesce_after:
            last = queue[-1]
            if not isinstance(last, bytes) and last.merge(item):
                return
        queue.append(item)
        if self._wake is not None:
            self._wake.set()

    def stop_backpressure(self) -> None:
        """Shutdown: ``send`` no longer waits for room. A turn finishing under a shield (its
        interrupted result and last events) must not hang on a client that stopped reading;
        what is queued is written within the shutdown grace period or dropped."""
        self.max_pending = sys.maxsize
        if self._space is not None:
            self._space.set()
            self._space = None

    def close(self) -> None:
        """No more lines will be sent; ``run`` returns once the queue is written."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    async def run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closed or self._broken:
                        return
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    self._wake = None
                    continue
                parts: list[bytes] = []
                size = 0
                while self._queue and size < WRITE_BATCH:
                    item = self._queue.popleft()
                    part = item if isinstance(item, bytes) else item.encode()
                    parts.append(part)
                    size += len(part)
                if self._space is not None:
                    self._space.set()
                    self._space = None
                await self._write_all(b"".join(parts))
        finally:
            self._drained.set()

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._broken:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self.fd)
                continue
            except OSError as exc:
                if exc.errno in _GONE:
                    self._mark_broken()
                    return
                raise
            view = view[n:]
        if self._nonblocking:
            await checkpoint()

    def _mark_broken(self) -> None:
        self._broken = True
        self.broken.set()
        self._queue.clear()
        if self._space is not None:
            self._space.set()
