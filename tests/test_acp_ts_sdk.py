"""The official ACP TypeScript SDK (``@agentclientprotocol/sdk`` 2.x, npm) drives ``warren acp`` as
an editor would. ``tests/acp_ts/judge.mjs`` runs the scenario once per test session with the
SDK's ``acp.client(...).connectWith(acp.ndJsonStream(...), ...)`` and prints one JSON line of
observations (including every message the agents wrote, as the SDK received them); the tests
below judge those observations, one requirement each.

Node packages come from ``make test`` (``npm ci --prefix tests/acp_ts``); run alone, this module
installs them itself. It skips only when ``node`` or ``npm`` is missing.

Test names carry the ACP conformance kit's requirement ids (``agentclientprotocol/acp-tck``)
where one applies.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.acp_helpers import (
    SCHEMA_PATH,
    SLOW_STEP,
    STREAMED_TEXT,
    NODE,
    NPM,
    TS_DIR,
    agent_env,
    mcp_stdio_server,
    node_with_packages,
    schema_violations,
)

pytestmark = pytest.mark.skipif(NODE is None or NPM is None,
                                reason="the TypeScript SDK judge needs Node.js: `node` and `npm` are not on PATH")

JUDGE_TIMEOUT_S = 30
SDK_MARKER = TS_DIR / "node_modules" / "@agentclientprotocol" / "sdk" / "package.json"


@pytest.fixture(scope="session")
def observations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the judge per test session, shared by xdist workers through a lock file."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one directory for all workers
    cache = shared / "acp-ts-judge.json"
    with open(shared / "acp-ts-judge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.is_file():
            return json.loads(cache.read_text())
        node_with_packages(SDK_MARKER)
        work = shared / "acp-ts-judge"
        work.mkdir(exist_ok=True)
        stderr_log = work / "agents-stderr.log"
        env = agent_env()
        env["JUDGE_MCP_SERVER"] = json.dumps(mcp_stdio_server())
        env["JUDGE_STDERR"] = str(stderr_log)
        argv = [sys.executable, "-m", "warren.daemon", "acp"]
        try:
            done = subprocess.run([NODE, str(TS_DIR / "judge.mjs"), json.dumps(argv), str(work)],  # type: ignore[list-item]
                                  capture_output=True, text=True, timeout=JUDGE_TIMEOUT_S, env=env, cwd=TS_DIR.parent.parent)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the TypeScript judge ran over {JUDGE_TIMEOUT_S}s; stderr: {exc.stderr!r}")
        agents = stderr_log.read_text(errors="replace")[-3000:] if stderr_log.exists() else ""
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            pytest.fail(f"the TypeScript judge failed ({done.returncode}): {done.stderr[-3000:]}\nagents' stderr:\n{agents}")
        obs = json.loads(lines[-1])
        cache.write_text(json.dumps(obs))
        return obs


def scenario(obs: dict[str, Any], name: str) -> dict[str, Any]:
    value = obs.get(name)
    assert value is not None, f"the judge recorded no {name!r} scenario"
    assert "error" not in value, f"scenario {name!r} failed in the TypeScript SDK: {json.dumps(value['error'])[:3000]}"
    return value


# ====================================================================== a. initialize


def test_acp_init_001_002_004_initialize(observations: dict[str, Any]) -> None:
    init = scenario(observations, "initialize")
    assert init["protocolVersion"] == 1
    caps = init["agentCapabilities"]
    assert caps["loadSession"] is True
    assert set(caps["sessionCapabilities"]) >= {"list", "resume", "close", "delete"}
    assert init["agentInfo"]["name"] and init["agentInfo"]["version"]


def test_acp_init_003_unsupported_version_answered_with_1(observations: dict[str, Any]) -> None:
    assert scenario(observations, "initialize_65535")["protocolVersion"] == 1


# ====================================================================== b, c. new and streaming


def test_acp_session_001_002_prompt_001_streaming(observations: dict[str, Any]) -> None:
    s = scenario(observations, "streaming")
    assert s["sessionId"] and s["otherSessionId"] and s["sessionId"] != s["otherSessionId"]
    assert len(s["chunkTexts"]) > 5 and "".join(s["chunkTexts"]) == STREAMED_TEXT
    assert len(set(s["messageIds"])) == 1 and None not in s["messageIds"]
    assert s["stopReason"] == "end_turn"
    assert s["usage"] and s["usage"]["totalTokens"] > 0 and s["usage"]["outputTokens"] > 0
    assert "usage_update" in s["kinds"]
    assert s["titles"] == ["Say hello"]


def test_acp_config_001_model_option(observations: dict[str, Any]) -> None:
    options = {o["id"]: o for o in scenario(observations, "streaming")["configOptions"]}
    model = options["model"]
    assert model["currentValue"] in [v["value"] for v in model["options"]]


def test_acp_prompt_002_updates_name_their_session_and_precede_the_answer(observations: dict[str, Any]) -> None:
    wire = observations["wire_main"]
    sid = observations["ids"]["streaming"]
    incoming, sent = wire["incoming"], wire["sentMethods"]
    prompt_id = next(i for i, m in sent.items() if m == "session/prompt")
    answered = next(k for k, m in enumerate(incoming) if "method" not in m and str(m.get("id")) == prompt_id)
    before = [m for m in incoming[:answered] if m.get("method") == "session/update"]
    assert before and all(m["params"]["sessionId"] == sid for m in before)


# ====================================================================== e, f. cancel


def test_acp_cancel_001_002_cancel_mid_turn(observations: dict[str, Any]) -> None:
    c = scenario(observations, "cancel")
    assert c["stopReason"] == c["promptStopReason"] == "cancelled"
    assert 0 < c["streamedChars"] < len(SLOW_STEP["text"])
    assert c["updatesAfterAnswer"] == 0


def test_late_cancel_does_not_stop_the_next_prompt(observations: dict[str, Any]) -> None:
    f = scenario(observations, "late_cancel")
    assert f["stopReasons"] == ["end_turn", "end_turn", "end_turn"]
    assert f["texts"] == ["first answer", "echo: two", "echo: three"]


# ====================================================================== g. list


def test_acp_list_001_002_list_filter_and_cursor(observations: dict[str, Any]) -> None:
    g = scenario(observations, "list")
    ids = observations["ids"]
    mine = {s["sessionId"]: s for s in g["mine"]}
    assert ids["streaming"] in mine and ids["late"] in mine
    assert all(s["cwd"] == observations["cwd"] for s in g["mine"])
    assert g["nobody"] == []
    assert g["pageSizes"] == [50, 2]
    assert len(set(g["paged"])) == 52


# ====================================================================== h, i. load, resume, close


def test_acp_load_001_002_replay_in_a_new_process(observations: dict[str, Any]) -> None:
    h = scenario(observations, "load")
    assert isinstance(h["rawResult"], dict)  # ACP-LOAD-003: {} (or more), never null
    users = [u for u in h["replay"] if u["sessionUpdate"] == "user_message_chunk"]
    agents = [u for u in h["replay"] if u["sessionUpdate"] == "agent_message_chunk"]
    assert "".join(u["content"]["text"] for u in users).startswith("Say hello")
    assert STREAMED_TEXT in "".join(u["content"]["text"] for u in agents)
    assert h["replay"].index(users[0]) < h["replay"].index(agents[0])


def test_acp_resume_001_002_close_001(observations: dict[str, Any]) -> None:
    i = scenario(observations, "resume_close")
    assert i["historyBeforeAnswer"] == []
    assert i["stopReason"] == "end_turn" and i["text"] == "echo: continue"
    assert i["rawClose"] == {} and i["listedAfterClose"] is True


# ====================================================================== j. errors


def test_errors_audio_unknown_session_warren_method(observations: dict[str, Any]) -> None:
    j = scenario(observations, "errors")
    assert j["audio"]["code"] == -32602
    assert [e["path"] for e in j["audio"]["data"]["errors"]] == ["$.prompt[0].type"]
    assert j["unknown_session"]["code"] == -32002
    assert j["unknown_session"]["data"]["code"] == "SESSION_NOT_FOUND"
    assert j["warren_v1_method"]["code"] == -32601
    assert j["still_serving"]["result"]["stopReason"] == "end_turn"  # ACP-JSONRPC-005


# ====================================================================== d. a tool call through MCP


def test_tool_call_through_mcp_with_permission_always_remembered(observations: dict[str, Any]) -> None:
    d = scenario(observations, "tool_call")
    assert d["stopReasons"] == ["end_turn", "end_turn", "end_turn"]
    assert d["permissionsAfterFirst"] == 1 and d["permissionsAfterSecond"] == 1  # "always" remembered
    assert d["permissionsAfterReject"] == 2
    asked = d["permissionRequests"][0]
    assert asked["toolCall"]["toolCallId"] == "call-1"
    assert {o["kind"] for o in asked["options"]} == {"allow_once", "allow_always", "reject_once", "reject_always"}
    call1 = [u for u in d["allowed"] if u["toolCallId"] == "call-1"]
    assert call1[0]["sessionUpdate"] == "tool_call" and call1[0].get("status") == "pending" and call1[0].get("kind")
    assert call1[0]["rawInput"] == {"text": "hi"}
    assert call1[-1]["sessionUpdate"] == "tool_call_update" and call1[-1]["status"] == "completed"
    assert "hi" in json.dumps(call1[-1].get("rawOutput"))
    assert d["order"].index("permission") < d["order"].index("in_progress")
    assert [u for u in d["allowed"] if u["toolCallId"] == "call-2"][-1]["status"] == "completed"
    assert [u for u in d["rejected"] if u["toolCallId"] == "call-3"][-1]["status"] == "failed"
    assert d["text"].startswith("done")


def test_acp_load_002_tool_calls_replayed_with_final_status(observations: dict[str, Any]) -> None:
    replay = scenario(observations, "load")["toolReplay"]
    calls = {u["toolCallId"]: u for u in replay if u["sessionUpdate"] == "tool_call"}
    assert calls["call-1"]["status"] == "completed" and calls["call-2"]["status"] == "completed"


# ====================================================================== ACP-SCHEMA-001


@pytest.mark.parametrize("wire", [
    "wire_init65535",
    "wire_main",
    "wire_reopened",
])
def test_acp_schema_001_every_message_validates(observations: dict[str, Any], wire: str) -> None:
    assert SCHEMA_PATH.is_file()
    recorded = observations[wire]
    sent = {int(k) if k.isdigit() else k: v for k, v in recorded["sentMethods"].items()}
    problems = schema_violations(recorded["incoming"], sent)
    assert not problems, "ACP-SCHEMA-001:\n" + "\n".join(problems)
