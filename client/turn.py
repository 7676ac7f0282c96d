"""``Client.turn``: run a turn and iterate its events, with no task group of the caller's.

The protocol answers ``turn/start`` only when the turn has ended, and writes every event of
the turn before that answer. So the events to yield are exactly the session's events from
the call until the answer: a stream opened before the request collects them, and the answer
ends the iteration once the buffered events are out. No event has to be recognised as the
last one, which keeps this right when ``when_busy="queue"`` puts turns of other clients first
(their events are the session's too, and each event carries its ``turn_id``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, AsyncIterator

import anyio

from warren.protocol import types as t
from warren.protocol.events import SessionEventParams

from .events import EventStream, _End

if TYPE_CHECKING:
    from .client import Client


class TurnRun:
    """A running turn: ``async for event in run`` yields the session's events until the
    turn's answer, then ``await run.result()`` gives the ``RunResult`` or raises the
    request's error (a ``WarrenError`` such as ``SessionBusy``, or ``TransportError``)."""

    def __init__(self, events: EventStream) -> None:
        self._events = events
        self._done = anyio.Event()
        self._result: t.RunResult | None = None
        self._error: BaseException | None = None

    def __aiter__(self) -> TurnRun:
        return self

    async def __anext__(self) -> SessionEventParams:
        return await self._events.__anext__()

    @property
    def done(self) -> bool:
        """The answer has arrived (the iteration ends once the buffered events are out)."""
        return self._done.is_set()

    async def result(self) -> t.RunResult:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


@contextlib.asynccontextmanager
async def run_turn(client: Client, session_id: str, prompt: t.Prompt, options: dict[str, Any]) -> AsyncIterator[TurnRun]:
    """``turn/start`` in a task of its own while the caller iterates. Leaving the block
    before the answer cancels the request, which interrupts the turn."""
    events = client.events(session_id=session_id)
    run = TurnRun(events)
    try:

        async def start() -> None:
            try:
                run._result = await client.turn_start(session_id=session_id, prompt=prompt, **options)
            except Exception as exc:  # noqa: BLE001 - handed to the caller by result()
                run._error = exc
            finally:
                events._put(_End(None))
                run._done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(start)
            try:
                yield run
            finally:
                if not run.done:
                    tasks.cancel_scope.cancel()
    finally:
        events.close()
