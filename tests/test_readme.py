"""The README's promises: its two commands, and its pipe session working when pasted."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.daemon_client import hermetic_env

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None and README.index("```sh") < 40
    lines = [l.split("#")[0].strip() for l in first_block.group(1).splitlines()]
    assert lines[:2] == ["make run", "make test"]


def test_readme_pipe_session_works_when_pasted() -> None:
    session = re.search(r"```bash\n(.*?)```", README, re.S)
    assert session is not None
    proc = subprocess.run(
        ["bash", "-c", session.group(1)], cwd=ROOT, capture_output=True, timeout=120, env=hermetic_env()
    )
    assert proc.returncode == 0, proc.stderr.decode()
    messages = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    events = [m["params"]["event"]["type"] for m in messages if m.get("method") == "session/event"]
    assert events[0] == "turn_started" and "text_delta" in events and events[-1] == "turn_completed"
    results = {m["id"]: m["result"] for m in messages if "id" in m}
    assert results[1]["text"] == "echo: hello warren"
    assert [m["role"] for m in results[2]["messages"]] == ["user", "assistant"]
    assert results[3] == {}
