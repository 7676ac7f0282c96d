"""docs/protocol.md keeps up with the daemon: every method, event type and error code is
documented, the example lines are real protocol lines, and the shell sessions work."""

from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from warren.protocol.errors import CODES
from warren.protocol.schema import generate
from tests.daemon_client import Daemon, hermetic_env

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "protocol.md"
DOC = DOC_PATH.read_text("utf-8")


def headings() -> list[str]:
    return [line for line in DOC.splitlines() if re.match(r"^#{2,4} ", line)]


def section(title: str) -> str:
    """The text under the level-2 heading ``## title``, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"docs/protocol.md has no '## {title}' section"
    return match.group(1)


def undocumented(names: list[str]) -> list[str]:
    """Names without a heading that contains them in backticks."""
    return [n for n in names if not any(f"`{n}`" in h for h in headings())]


@pytest.fixture(scope="module")
def capabilities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("docs")
    with Daemon(stderr_path=tmp / "stderr.log") as d:  # --ephemeral
        return d.call("initialize", {})["capabilities"]


def test_every_method_has_a_section(capabilities: dict[str, Any]) -> None:
    missing = undocumented(capabilities["methods"])
    assert not missing, f"docs/protocol.md needs a '### `name`' section for these methods: {missing}"


def test_every_event_type_has_a_section(capabilities: dict[str, Any]) -> None:
    missing = undocumented(capabilities["events"])
    assert not missing, f"docs/protocol.md needs a '### `type`' section for these event types: {missing}"


def test_every_error_code_is_in_the_errors_table() -> None:
    rows = [line for line in section("Errors").splitlines() if line.startswith("|")]
    missing = [code for code in CODES if not any(f"`{code}`" in row for row in rows)]
    assert not missing, f"the errors table of docs/protocol.md lacks these data.code values: {missing}"
    for code, number in CODES.items():
        row = next(r for r in rows if f"`{code}`" in r)
        assert f"| {number} |" in row, f"the errors table gives {code} another number than {number}"


def test_required_sections_exist() -> None:
    for title in ("Quick start", "Transport", "Lifecycle", "Events", "Errors", "The scripted provider", "Durability",
                  "Decisions this reference settles"):
        section(title)


# ---------------------------------------------------------------- the example lines


def example_lines() -> list[tuple[str, str]]:
    """``(direction, json_text)`` for every ``→``/``←`` line in the document's code blocks."""
    out = []
    for block in re.findall(r"```text\n(.*?)```", DOC, re.S):
        for line in block.splitlines():
            line = line.strip()
            if line[:2] in ("→ ", "← "):
                out.append((line[0], line[2:]))
    return out


@lru_cache(maxsize=None)
def validator(path: str) -> Draft202012Validator:
    return Draft202012Validator(generate()[path])


def check(path: str, instance: Any, line: str) -> None:
    errors = list(validator(path).iter_errors(instance))
    assert not errors, f"example line does not match schemas/{path}: {errors[0].message}\n{line}"


def test_example_lines_are_protocol_lines() -> None:
    lines = example_lines()
    assert len(lines) > 50
    seen_events: set[str] = set()
    for i, (direction, text) in enumerate(lines):
        try:
            value = json.loads(text)
        except ValueError:
            # only a request shown on purpose as broken, answered by a PARSE_ERROR
            assert direction == "→" and '"PARSE_ERROR"' in lines[i + 1][1], f"not JSON: {text}"
            continue
        for message in value if isinstance(value, list) else [value]:
            if not isinstance(message, dict):
                assert direction == "→", text  # a batch element shown on purpose as invalid
                continue
            if direction == "←":
                assert message["jsonrpc"] == "2.0", text
            if message.get("method") == "session/event":
                check("notifications/session.event.params.json", message["params"], text)
                seen_events.add(message["params"]["event"]["type"])
            if "error" in message and direction == "←":
                check("error.json", message["error"], text)
    assert seen_events, "no session/event example found"


def test_every_event_section_shows_its_event(capabilities: dict[str, Any]) -> None:
    for kind in capabilities["events"]:
        body = re.search(rf"^### `{kind}`\n(.*?)(?=^##)", DOC, re.S | re.M)
        assert body, f"no section for {kind}"
        assert f'"type":"{kind}"' in body.group(1), f"the section of {kind} has no example line of it"


def test_every_method_section_shows_a_request(capabilities: dict[str, Any]) -> None:
    for method in capabilities["methods"]:
        body = re.search(rf"^### `{re.escape(method)}`\n(.*?)(?=^##)", DOC, re.S | re.M)
        assert body, f"no section for {method}"
        assert f'"method":"{method}"' in body.group(1), f"the section of {method} has no example request"


# ---------------------------------------------------------------- the shell sessions


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC, re.S)


def run_bash(script: str) -> list[dict[str, Any]]:
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, timeout=60, env=hermetic_env())
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


@pytest.mark.parametrize("index", range(2), ids=["quick_start_coprocess", "fifo"])
def test_shell_sessions_work_when_pasted(index: int) -> None:
    blocks = bash_blocks()
    assert len(blocks) >= 2, "docs/protocol.md should show a coprocess and a FIFO session"
    messages = run_bash(blocks[index])
    events = [m["params"]["event"]["type"] for m in messages if m.get("method") == "session/event"]
    assert events[0] == "turn_started" and "text_delta" in events and events[-1] == "turn_completed"
    results = {m["id"]: m["result"] for m in messages if "id" in m and "result" in m}
    assert results[1]["text"].startswith("echo: ") and results[1]["stop_reason"] == "end_turn"
    if index == 0:
        assert results[2] == {}


def test_a_pipe_that_closes_stdin_does_not_run_the_turn() -> None:
    """The Quick start warns against `echo … | warren serve`; keep the warning true."""
    line = '{"jsonrpc":"2.0","id":1,"method":"session/create","params":{"prompt":"hi","provider":"scripted"}}'
    messages = run_bash(f"echo '{line}' | .venv/bin/python -m warren.daemon serve --ephemeral 2>/dev/null")
    answer = next(m for m in messages if m.get("id") == 1)
    assert answer.get("error", {}).get("data", {}).get("code") == "AGENT_ERROR" or (
        answer["result"]["stop_reason"] == "interrupted"
    ), answer


