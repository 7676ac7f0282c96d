"""daemon/logs.py: the JSON lines on stderr (their shape is what log tooling and the other
tests read)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

CODE = r"""
from warren.daemon import logs
logs.configure("info")
log = logs.get_logger("warren.t").bind(session_id="s1")
log.debug("hidden", x=1)
log.info("shown", n=2, items=[1, 2], odd=object())
try:
    raise ValueError("bad")
except ValueError as exc:
    log.error("failed", exc_info=exc)
logs.configure("debug")
log.debug("now_shown")
"""


def test_lines_carry_name_context_fields_event_level_and_utc_time() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, timeout=30)
    assert out.returncode == 0 and out.stdout == b""
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["shown", "failed", "now_shown"]
    shown = lines[0]
    assert list(shown)[:5] == ["logger", "session_id", "n", "items", "odd"]
    assert shown["logger"] == "warren.t" and shown["session_id"] == "s1" and shown["items"] == [1, 2]
    assert shown["odd"].startswith("<object object")
    assert shown["level"] == "info" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", shown["ts"])
    failed = lines[1]
    assert failed["level"] == "error" and failed["exception"].startswith("Traceback")
    assert failed["exception"].endswith("ValueError: bad")
    assert lines[2]["level"] == "debug"
