from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.daemon_client import Daemon
from tests.fakes.llm_server import FakeLLMServer


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons (on a per-test database by default); all are stopped at teardown."""
    started: list[Daemon] = []

    def start(*args: str, db: Path | None | str = "default", **kwargs: object) -> Daemon:
        path = tmp_path / "warren.db" if db == "default" else db
        stderr = tmp_path / f"stderr-{len(started)}.log"
        d = Daemon(*args, db=path, stderr_path=stderr, **kwargs)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def daemon(spawn: Callable[..., Daemon]) -> Daemon:
    return spawn()


@pytest.fixture
def anyio_backend() -> str:
    """anyio-marked tests run on asyncio, the daemon's backend."""
    return "asyncio"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """A fake Anthropic/OpenAI HTTP server on loopback for this test."""
    with FakeLLMServer() as fake:
        yield fake
