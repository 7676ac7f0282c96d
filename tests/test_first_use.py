"""What a newcomer hit in a first hour with the daemon (issue 11), each checked through it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable

from tests.daemon_client import Daemon

Spawn = Callable[..., Daemon]


def test_reading_an_archived_session_says_it_is_archived(daemon: Daemon) -> None:
    sid = daemon.call("session/create", {"initial_turn": "defer", "provider": "scripted"})["session_id"]
    daemon.call("session/archive", {"session_id": sid})
    err = daemon.error("session/read", {"session_id": sid})
    assert err["code"] == -32001 and "archived" in err["message"]
    assert err["data"]["archived"] is True and err["data"]["session_id"] == sid
    unknown = daemon.error("session/read", {"session_id": "nope"})
    assert "archived" not in unknown["data"] and unknown["message"].startswith("No session")


def test_a_provider_without_its_key_stores_no_session(spawn: Spawn, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[providers.claude]\ntype = "anthropic"\napi_key_env = "WARREN_TEST_NO_SUCH_KEY"\n')
    d = spawn("--config", str(config))
    for _ in range(3):
        err = d.error("session/create", {"prompt": "hi", "provider": "claude"})
        assert err["data"]["code"] == "PROVIDER_ERROR" and err["data"]["kind"] == "auth"
        assert "WARREN_TEST_NO_SUCH_KEY" in err["message"] and "session_id" not in err["data"]
    assert d.call("session/list", {"include_archived": True})["sessions"] == []


def test_db_parents_are_created_readable_only_by_their_owner(spawn: Spawn, tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "warren.db"
    d = spawn(db=db)
    d.call("session/create", {"initial_turn": "defer", "provider": "scripted"})
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_debug_logging_shows_prompt_and_reply_text_and_info_does_not(spawn: Spawn, tmp_path: Path) -> None:
    for level, shown in (("debug", True), ("info", False)):
        log = tmp_path / f"{level}.log"
        with Daemon("--log-level", level, stderr_path=log) as d:
            d.call("session/create", {"prompt": "a very particular prompt", "provider": "scripted"})
        text = log.read_text()
        assert ("a very particular prompt" in text) is shown
        assert ("echo: a very particular prompt" in text) is shown
        if shown:
            events = {json.loads(line).get("event") for line in text.splitlines() if line.startswith("{")}
            assert {"turn_prompt", "turn_reply"} <= events


def test_version_and_status(spawn: Spawn, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.daemon_client import ROOT, hermetic_env

    out = subprocess.run([sys.executable, "-m", "warren.daemon", "--version"], cwd=ROOT, env={**hermetic_env(), "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("warren 0.1.0 (protocol 1)")
    db = tmp_path / "warren.db"
    d = spawn(db=db)
    d.call("session/create", {"initial_turn": "defer", "provider": "scripted"})
    status = d.call("daemon/status")
    assert status["db_path"] == str(db) and status["store"] == "ok" and status["sessions"] == 1
    assert status["schema_version"] >= 12 and status["running_turns"] == 0 and status["uptime_ms"] >= 0
    assert status["version"] == "0.1.0" and status["protocol_version"] == 1
    corrupt = tmp_path / "bad.db"
    corrupt.write_bytes(b"not a database" * 100)
    broken = spawn(db=corrupt).call("daemon/status")
    assert broken["store"] == "corrupt" and broken["sessions"] is None


def test_a_misspelt_field_gets_the_closest_name(daemon: Daemon) -> None:
    def first(params: dict) -> dict:
        return daemon.error("session/create", {"provider": "scripted", **params})["data"]["errors"][0]

    step = first({"prompt": "x", "provider_params": {"script": [{"text": "a", "delay": 5}]}})
    assert step["path"] == "$.provider_params.script[0].delay" and step["message"].endswith("did you mean `delay_ms`?")
    assert first({"promt": "x"})["message"] == "unknown field `promt`; did you mean `prompt`?"
    nested = first({"prompt": "x", "budget": {"max_token": 5}})
    assert nested["path"] == "$.budget.max_token" and nested["message"].endswith("did you mean `max_tokens`?")
    assert first({"prompt": "x", "zzzz": 1})["message"] == "unknown field `zzzz`"
