"""anyio byte streams over pipe file descriptors, for attaching to a daemon someone else spawned.

``anyio.open_process`` already hands out streams, but a program that started the daemon with
``subprocess.Popen`` (or inherited its pipes) holds plain descriptors. These two classes poll
them with ``anyio.wait_readable`` / ``wait_writable`` rather than reading in a worker thread,
so a read can be cancelled and costs no thread. Unix pipes and sockets only: they are put in
non-blocking mode, which is why a stream takes ownership of its descriptor (pass a ``dup``
of one you want to keep) and closes it on ``aclose``.
"""

from __future__ import annotations

import errno
import os

import anyio
import anyio.abc

READ_SIZE = 1 << 16
#: A descriptor whose other end is gone reads as end of file rather than raising.
_GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET, errno.EIO)


class _FdStream:
    """What both directions share: the descriptor, put in non-blocking mode and owned."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    def fileno(self) -> int:
        return self._fd

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._fd)  # wake a task still waiting in receive() / send()
            os.close(self._fd)


class FdReceiveStream(_FdStream, anyio.abc.ByteReceiveStream):
    """Bytes from a readable pipe descriptor; ``EndOfStream`` once the writer closed it."""

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            except OSError as exc:
                if exc.errno in _GONE:
                    raise anyio.EndOfStream from exc
                raise
            if not data:
                raise anyio.EndOfStream
            return data


class FdSendStream(_FdStream, anyio.abc.ByteSendStream):
    """Bytes to a writable pipe descriptor; ``BrokenResourceError`` once the reader is gone."""

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError as exc:
                if exc.errno in _GONE:
                    raise anyio.BrokenResourceError from exc
                raise
            view = view[written:]
