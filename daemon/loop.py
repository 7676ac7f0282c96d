"""The one await the daemon makes most often, without a library lookup.

The daemon runs on anyio's asyncio backend and nothing else (``cli`` starts it so).
``anyio.lowlevel.checkpoint()`` finds the running backend through sniffio at every call, and
on asyncio then does ``await asyncio.sleep(0)``. It runs after each write to the client and
every millisecond of a model stream, and the lookup was 5% of a streaming turn's profile
samples; this is the same await without it (a cancellation point as anyio's is).
"""

from __future__ import annotations

from asyncio import sleep


async def checkpoint() -> None:
    await sleep(0)
