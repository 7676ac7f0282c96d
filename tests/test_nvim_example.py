"""examples/nvim, the example Neovim client, run headless against the real daemon.

``nvim --headless -u NONE`` with examples/nvim on 'runtimepath' runs tests/nvim/driver.lua:
``require("warren").setup({cmd = ...})`` to spawn this checkout's daemon (a database in
tmp_path, the hermetic environment, the offline ``scripted`` provider), ``:WarrenAsk``, a
snapshot of the buffer after every change, the buffer written to a file once the turn is over,
and ``require("warren").stop()``. One test swaps the daemon for tests/nvim/fake_daemon.py, to
control how lines are split and to send a retry that discards text. Skips when ``nvim`` is not on PATH (``.ci/run`` installs it
with apt-get where it can).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_client import Daemon, hermetic_env, script

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "nvim"
DRIVER = ROOT / "tests" / "nvim" / "driver.lua"
NVIM = shutil.which("nvim")
pytestmark = pytest.mark.skipif(
    NVIM is None, reason="Neovim is not installed (`nvim` not on PATH; Debian: apt-get install neovim)"
)

TEXT = "Hello from Warren.\nA second line: ünïcødé ✓, and a tab\there.\n\nThe end."


def run_nvim(tmp_path: Path, session: dict[str, Any], prompt: str = "say hello", cmd: list[str] | None = None,
             timeout_ms: int = 20_000) -> dict[str, Any]:
    """One headless Neovim run of the driver; returns its report plus ``buffer`` (the file)."""
    db = tmp_path / "warren.db"
    config = {
        "cmd": cmd or [sys.executable, "-m", "warren.daemon", "serve", "--db", str(db)],
        "session": session,
        "prompt": prompt,
        "timeout_ms": timeout_ms,
        "buffer_file": str(tmp_path / "buffer.txt"),
        "result_file": str(tmp_path / "result.json"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = hermetic_env()
    env["WARREN_NVIM_TEST"] = str(tmp_path / "config.json")
    env["XDG_STATE_HOME"] = env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # Neovim's own files
    done = subprocess.run(
        [NVIM, "--headless", "-u", "NONE", "-i", "NONE", "-n", "--cmd", f"set rtp^={PLUGIN}",  # type: ignore[list-item]
         "-c", f"luafile {DRIVER}"],
        capture_output=True, text=True, timeout=timeout_ms / 1000 + 20, env=env, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    result_file = tmp_path / "result.json"
    assert result_file.is_file(), f"the driver wrote no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    report = json.loads(result_file.read_text())
    assert not report.get("error"), f"the driver failed: {report['error']}\n{done.stderr}"
    assert done.returncode == 0, done.stderr
    assert report["finished"], f"the turn did not finish in {timeout_ms} ms: {report}"
    report["buffer"] = (tmp_path / "buffer.txt").read_text("utf-8")
    return report


def test_ask_streams_the_reply_into_a_buffer_as_it_arrives(tmp_path: Path) -> None:
    chunk, delay_ms = 4, 25
    report = run_nvim(tmp_path, {"provider": "scripted",
                                 "provider_params": script({"text": TEXT, "chunk_chars": chunk, "delay_ms": delay_ms})})
    assert report["buffer"] == TEXT
    assert report["status"] == "end_turn" and report["filetype"] == "markdown"
    assert report["buffer_name"].startswith("warren://")

    # one buffer change a delta, each a longer prefix of the reply, spread over the turn
    snapshots = report["snapshots"]
    deltas = math.ceil(len(TEXT) / chunk)
    assert len(snapshots) == deltas, [s["text"] for s in snapshots]
    lengths = [len(s["text"]) for s in snapshots]
    assert lengths == sorted(set(lengths)) and all(TEXT.startswith(s["text"]) for s in snapshots)
    assert snapshots[-1]["text"] == TEXT
    spread = snapshots[-1]["ms"] - snapshots[0]["ms"]
    assert spread >= (deltas - 1) * delay_ms * 0.5, f"the deltas arrived together ({spread:.0f} ms), not as streamed"

    # the daemon ended cleanly, and the turn is in its store
    assert report["exit_code"] == 0
    with Daemon(db=tmp_path / "warren.db", stderr_path=tmp_path / "reader.log") as d:
        history = d.call("session/history", {"session_id": report["session_id"]})
    assert [(m["role"], m["content"][0]["text"]) for m in history["messages"]] == [("user", "say hello"), ("assistant", TEXT)]


def test_lines_longer_than_a_pipe_read_are_put_back_together(tmp_path: Path) -> None:
    """Deltas of 100 000 characters: each notification line spans several on_stdout chunks."""
    text = "".join(f"line {i}: {'é' * 40} {'x' * (i % 50)}\n" for i in range(6000)) + "last"
    report = run_nvim(tmp_path, {"provider": "scripted", "provider_params": script({"text": text, "chunk_chars": 100_000})})
    assert len(text) > 250_000
    assert report["buffer"] == text
    assert len(report["snapshots"]) == math.ceil(len(text) / 100_000)


@pytest.mark.parametrize(("session", "shown"), [
    ({"provider": "nope"}, "[warren] INVALID_PARAMS: Invalid params: unknown provider 'nope'"),
    ({"provider": "scripted", "provider_params": script({"error": {"kind": "auth"}})},
     "[warren] PROVIDER_ERROR: scripted: scripted auth error (script step 0)"),
], ids=["unknown-provider", "failed-turn"])
def test_an_error_shows_in_the_buffer(tmp_path: Path, session: dict[str, Any], shown: str) -> None:
    report = run_nvim(tmp_path, session)
    assert report["status"] == "error"
    assert report["buffer"].startswith(shown), report["buffer"]
    assert report["exit_code"] == 0  # the daemon is still there, and stops cleanly


def test_a_daemon_that_cannot_start_is_reported(tmp_path: Path) -> None:
    report = run_nvim(tmp_path, {}, cmd=[str(tmp_path / "no-such-warren"), "serve"])
    assert report["status"] == "error"
    assert report["buffer"].startswith("[warren] SPAWN_FAILED: cannot run "), report["buffer"]
    assert "exit_code" not in report  # no daemon to stop


def test_split_lines_and_a_retry_that_discards_text(tmp_path: Path) -> None:
    """A stand-in daemon (tests/nvim/fake_daemon.py) writes its lines with non-ASCII text in
    pieces, the first cut inside a UTF-8 character, and sends ``retrying`` with
    ``discard_chars: 5`` after "héllo wörld"."""
    report = run_nvim(tmp_path, {}, cmd=[sys.executable, str(ROOT / "tests" / "nvim" / "fake_daemon.py")])
    assert report["status"] == "end_turn" and report["exit_code"] == 0
    assert [s["text"] for s in report["snapshots"]] == ["héllo wörld", "héllo ", "héllo Warren ✓\nbye"]
    assert report["buffer"] == "héllo Warren ✓\nbye"
