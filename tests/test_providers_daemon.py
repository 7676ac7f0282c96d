"""Issue 3 end to end: real providers through the real daemon process, over its pipes, against
the fake LLM server on 127.0.0.1 (never the network).

Each test starts ``python -m warren.daemon serve`` with a config file and/or environment that points
the providers at ``tests.fakes.llm_server``, drives it with JSON-RPC, and asserts both what the
client sees (results, errors, events, history) and what the server was sent (paths, headers,
exact bodies, when the client hung up).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable


from tests.daemon_client import Daemon
from tests.fakes.llm_server import (
    FakeLLMServer,
    JSONResponse,
    RawLine,
    Reset,
    SSEResponse,
    Stall,
    anthropic_error,
    anthropic_events,
    anthropic_stream,
    anthropic_text,
    openai_error,
    openai_models,
    openai_stream,
    openai_tool_call,
    openai_usage,
    text_block,
    thinking_block,
    tool_use_block,
)

Spawn = Callable[..., Daemon]

SESSION_ERROR = -32009
PROVIDER_ERROR = -32010
INVALID_PARAMS = -32602



def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def claude_section(server: FakeLLMServer, name: str = "claude", *, key_env: str = "WARREN_TEST_CLAUDE_KEY",
                   extra: str = "", timeouts: str = "") -> str:
    text = f'[providers.{name}]\ntype = "anthropic"\nbase_url = "{server.base_url}"\napi_key_env = "{key_env}"\n{extra}\n'
    if timeouts:
        text += f"[providers.{name}.timeouts]\n{timeouts}\n"
    return text


def openai_section(server: FakeLLMServer, name: str = "ollama", *, extra: str = "", timeouts: str = "") -> str:
    text = f'[providers.{name}]\ntype = "openai"\nbase_url = "{server.openai_base_url}"\n{extra}\n'
    if timeouts:
        text += f"[providers.{name}.timeouts]\n{timeouts}\n"
    return text


def events_of(d: Daemon, session_id: str, type_: str | None = None, turn_id: str | None = None) -> list[dict[str, Any]]:
    return [e["event"] for e in d.events(session_id, turn_id) if type_ is None or e["event"]["type"] == type_]


def streamed_text(d: Daemon, session_id: str, turn_id: str | None = None) -> str:
    return "".join(e["delta"] for e in events_of(d, session_id, "text_delta", turn_id))


def history(d: Daemon, session_id: str) -> list[dict[str, Any]]:
    return d.call("session/history", {"session_id": session_id})["messages"]


# ---------------------------------------------------------------- zero-config paths


def test_openai_base_url_alone_discovers_model_and_streams(spawn: Spawn, server: FakeLLMServer) -> None:
    """OPENAI_BASE_URL only (no key, no file), like a local Ollama: the model comes from
    GET /v1/models, the chat request carries no Authorization, deltas stream."""
    server.enqueue(
        openai_models("llama3.2:3b", "qwen2.5:7b"),
        openai_stream("Hello from a local model!", chunk=5, usage=openai_usage(11, 6)),
    )
    d = spawn(env={"OPENAI_BASE_URL": server.openai_base_url})
    result = d.call("session/create", {"prompt": "Say hello"})
    sid = result["session_id"]

    get, post = server.exchanges
    assert (get.method, get.path) == ("GET", "/v1/models")
    assert "authorization" not in get.headers
    assert (post.method, post.path) == ("POST", "/v1/chat/completions")
    assert "authorization" not in post.headers
    assert post.json["model"] == "llama3.2:3b"
    assert post.json["messages"] == [{"role": "user", "content": "Say hello"}]
    assert post.json["stream"] is True and post.json["stream_options"] == {"include_usage": True}

    deltas = [e["delta"] for e in events_of(d, sid, "text_delta")]
    assert deltas == ["Hello", " from", " a lo", "cal m", "odel!"]
    assert result["text"] == "".join(deltas) == "Hello from a local model!"
    assert result["stop_reason"] == "end_turn"
    assert result["usage"]["input_tokens"] == 11 and result["usage"]["output_tokens"] == 6
    started = events_of(d, sid, "turn_started")[0]
    assert (started["provider"], started["model"]) == ("openai", "llama3.2:3b")

    state = d.call("session/read", {"session_id": sid})["state"]
    assert (state["provider"], state["model"]) == ("openai", "llama3.2:3b")

    # The discovered model is remembered: the next turn does not ask again.
    d.call("turn/start", {"session_id": sid, "prompt": "again"})
    assert [x.method for x in server.exchanges] == ["GET", "POST", "POST"]
    assert server.last.json["model"] == "llama3.2:3b"


def test_discovery_without_models_endpoint_asks_for_a_model(spawn: Spawn, server: FakeLLMServer) -> None:
    """A compatible server with no GET /models (404): a SESSION_ERROR saying to name a model,
    not an opaque HTTP 404; naming one works."""
    server.enqueue(JSONResponse(404, {"error": "404 page not found"}))
    d = spawn(env={"OPENAI_BASE_URL": server.openai_base_url})
    err = d.error("session/create", {"prompt": "hi"})
    assert err["code"] == SESSION_ERROR
    assert err["data"]["details"] == {"reason": "no_model_configured", "provider": "openai"}
    assert "pass model" in err["message"]
    assert [(x.method, x.path) for x in server.exchanges] == [("GET", "/v1/models")]

    server.enqueue(openai_stream("named"))
    ok = d.call("session/create", {"prompt": "hi", "model": "llama3.2"})
    assert ok["text"] == "named" and server.last.json["model"] == "llama3.2"
    assert len(server.exchanges) == 2  # a named model needs no discovery


def test_discovery_auth_failure_is_a_provider_error(spawn: Spawn, server: FakeLLMServer) -> None:
    server.enqueue(openai_error(401, "Invalid token", "invalid_request_error", "invalid_api_key"))
    d = spawn(env={"OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": "sk-test-DISCOVER-0000000"})
    err = d.error("session/create", {"prompt": "hi"})
    assert err["code"] == PROVIDER_ERROR
    assert err["data"]["status"] == 401 and err["data"]["kind"] == "auth" and err["data"]["retryable"] is False
    (get,) = server.exchanges
    assert (get.method, get.path) == ("GET", "/v1/models")
    assert get.headers["authorization"] == "Bearer sk-test-DISCOVER-0000000"
    assert "model discovery (GET /models) failed" in err["message"]


def test_discovery_is_retried_like_a_model_call(spawn: Spawn, server: FakeLLMServer) -> None:
    server.enqueue(openai_error(503, "warming up", "server_error", headers={"retry-after-ms": "10"}),
                   openai_models("llama3.2:3b"), openai_stream("hello"))
    d = spawn(env={"OPENAI_BASE_URL": server.openai_base_url})
    assert d.call("session/create", {"prompt": "hi"})["text"] == "hello"
    assert [(e.method, e.path) for e in server.exchanges] == [
        ("GET", "/v1/models"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]


def test_configured_headers_win_and_are_never_sent_twice(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """A proxy's own Authorization from the config file replaces the key's, on the model list
    request as on the chat request, and no header name is sent twice."""
    path = write_config(
        tmp_path,
        openai_section(server, name="proxy",
                       extra='api_key_env = "WARREN_TEST_PROXY_KEY"\n'
                             'headers = { Authorization = "Bearer proxy-token-abcdef", X-Team = "blue" }'),
    )
    d = spawn("--config", str(path), env={"WARREN_TEST_PROXY_KEY": "sk-test-PROXYKEY-00000000"})
    assert d.call("session/create", {"prompt": "hi"})["text"] == "Hello from the fake OpenAI server."
    get, post = server.exchanges
    assert (get.method, get.path, post.method, post.path) == ("GET", "/v1/models", "POST", "/v1/chat/completions")
    assert post.json["model"] == "fake-model:latest"  # the fake's default model list
    for ex in (get, post):
        names = [name.lower() for name, _ in ex.header_list]
        assert len(names) == len(set(names)), ex.header_list
        assert ex.headers["authorization"] == "Bearer proxy-token-abcdef"
        assert ex.headers["x-team"] == "blue"


def test_anthropic_key_alone_exact_request(spawn: Spawn, server: FakeLLMServer) -> None:
    """ANTHROPIC_API_KEY (with ANTHROPIC_BASE_URL pointing at the fake): a streamed answer,
    and the request is exactly what the Messages API expects."""
    key = "sk-ant-test-ONLYKEY-0123456789"
    server.enqueue(anthropic_stream(text_block("Bonjour, monde.", chunk=4), input_tokens=9, output_tokens=5))
    d = spawn(env={"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": server.base_url})
    result = d.call("session/create", {"prompt": "Say hi in French", "system_prompt": "Be brief."})
    sid = result["session_id"]

    ex = server.last
    assert (ex.method, ex.path) == ("POST", "/v1/messages")
    assert ex.headers["x-api-key"] == key
    assert ex.headers["anthropic-version"] == "2023-06-01"
    assert ex.headers["content-type"] == "application/json"
    assert "authorization" not in ex.headers
    assert ex.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi in French"}]}],
        "stream": True,
    }
    assert [e["delta"] for e in events_of(d, sid, "text_delta")] == ["Bonj", "our,", " mon", "de."]
    assert result["text"] == "Bonjour, monde."
    assert result["usage"] == {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14,
                               "cache_read_tokens": 0, "cache_write_tokens": 0}
    state = d.call("session/read", {"session_id": sid})["state"]
    assert (state["provider"], state["model"]) == ("anthropic", "claude-sonnet-4-5")


def test_two_lines_of_config_for_ollama(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[providers.ollama]\ntype = "openai"\nbase_url = "{server.openai_base_url}"\n\n'
        '[defaults]\nprovider = "ollama"\nmodel = "llama3.2"\n',
    )
    server.enqueue(openai_stream("Hi from Ollama."))
    d = spawn("--config", str(path))
    result = d.call("session/create", {"prompt": "hi", "max_tokens": 64})
    assert result["text"] == "Hi from Ollama."
    assert [x.path for x in server.exchanges] == ["/v1/chat/completions"]  # model given: no discovery
    body = server.last.json
    assert body["model"] == "llama3.2"
    assert body["max_tokens"] == 64 and "max_completion_tokens" not in body  # not api.openai.com
    assert "authorization" not in server.last.headers
    state = d.call("session/read", {"session_id": result["session_id"]})["state"]
    assert (state["provider"], state["model"]) == ("ollama", "llama3.2")


# ---------------------------------------------------------------- provider resolution


def test_resolution_explicit_default_and_remembered(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """An explicit provider wins over the default; without one the default is used; a session
    keeps its provider and model across turns, and ``turn/start`` with ``model`` changes it."""
    path = write_config(
        tmp_path,
        claude_section(server, extra='default_model = "claude-test-1"')
        + openai_section(server)
        + '[defaults]\nprovider = "ollama"\nmodel = "llama3.2"\n',
    )
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-resolve-000000"})

    server.enqueue(openai_stream("from ollama"))
    by_default = d.call("session/create", {"prompt": "a"})
    assert by_default["text"] == "from ollama"
    assert server.last.path == "/v1/chat/completions" and server.last.json["model"] == "llama3.2"

    server.enqueue(anthropic_text("from claude"))
    explicit = d.call("session/create", {"prompt": "b", "provider": "claude"})
    assert explicit["text"] == "from claude"
    assert server.last.path == "/v1/messages" and server.last.json["model"] == "claude-test-1"
    sid = explicit["session_id"]

    # The session remembers its provider (not the default) and its model.
    server.enqueue(anthropic_text("still claude"))
    d.call("turn/start", {"session_id": sid, "prompt": "c"})
    assert server.last.path == "/v1/messages" and server.last.json["model"] == "claude-test-1"

    # turn/start with model changes it for this turn and the ones after.
    server.enqueue(anthropic_text("new model"), anthropic_text("kept"))
    d.call("turn/start", {"session_id": sid, "prompt": "d", "model": "claude-test-2"})
    assert server.last.json["model"] == "claude-test-2"
    d.call("turn/start", {"session_id": sid, "prompt": "e"})
    assert server.last.json["model"] == "claude-test-2"
    state = d.call("session/read", {"session_id": sid})["state"]
    assert (state["provider"], state["model"]) == ("claude", "claude-test-2")
    assert [x.path for x in server.exchanges] == ["/v1/chat/completions"] + ["/v1/messages"] * 4


def test_resolution_single_usable_provider_from_file(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """No default: the one usable provider is chosen (a provider without its key is not usable)."""
    path = write_config(
        tmp_path,
        claude_section(server, key_env="WARREN_TEST_UNSET_KEY") + openai_section(server, extra='default_model = "m"'),
    )
    server.enqueue(openai_stream("only one"))
    d = spawn("--config", str(path))
    result = d.call("session/create", {"prompt": "x"})
    assert result["text"] == "only one"
    assert d.call("session/read", {"session_id": result["session_id"]})["state"]["provider"] == "ollama"


def test_resolution_none_configured(spawn: Spawn) -> None:
    d = spawn()  # no file, no provider variables (hermetic_env)
    err = d.error("session/create", {"prompt": "hi"})
    assert err["code"] == SESSION_ERROR
    details = err["data"]["details"]
    assert details["reason"] == "no_provider_configured"
    assert details["providers"] == ["scripted"]
    how = details["how_to_fix"]
    for needed in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "/nonexistent/warren-tests/warren/config.toml",
                   'provider: "scripted"'):
        assert needed in how, needed
    # Nothing was stored for the failed create; scripted still works.
    assert d.call("session/list", {})["sessions"] == []
    assert d.call("session/create", {"prompt": "hi", "provider": "scripted"})["text"] == "echo: hi"


def test_resolution_ambiguous_without_default(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server) + openai_section(server))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-ambig-00000"})
    err = d.error("session/create", {"prompt": "hi"})
    assert err["code"] == SESSION_ERROR
    assert err["data"]["details"]["reason"] == "ambiguous_provider"
    assert err["data"]["details"]["providers"] == ["claude", "ollama"]
    assert server.exchanges == []


def test_unknown_provider_is_invalid_params(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, openai_section(server, extra='default_model = "m"'))
    d = spawn("--config", str(path))
    err = d.error("session/create", {"prompt": "hi", "provider": "gemini"})
    assert err["code"] == INVALID_PARAMS
    assert err["data"]["errors"][0]["path"] == "$.provider"
    assert "gemini" in err["data"]["errors"][0]["message"]
    assert "ollama" in err["message"] and "scripted" in err["message"]
    assert server.exchanges == []


def test_invalid_config_file_daemon_still_serves(spawn: Spawn, tmp_path: Path) -> None:
    path = write_config(tmp_path, '[providers.bad]\ntype = "gemini"\nbase_url = "http://127.0.0.1:9"\n')
    d = spawn("--config", str(path), env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    init = d.call("initialize", {"protocol_version": 1})
    assert init["capabilities"]["providers"] == ["scripted"]
    listed = d.call("providers/list", {})
    assert listed["config_path"] == str(path)
    assert listed["config_error"] and str(path) in listed["config_error"] and "providers.bad.type" in listed["config_error"]
    assert [p["name"] for p in listed["providers"]] == ["scripted"]

    err = d.error("session/create", {"prompt": "hi"})
    assert err["code"] == SESSION_ERROR
    assert err["data"]["details"]["reason"] == "invalid_config"
    assert "providers.bad.type" in err["data"]["details"]["message"]
    assert "providers.bad.type" in err["message"]

    ok = d.call("session/create", {"prompt": "hi", "provider": "scripted"})
    assert ok["text"] == "echo: hi"
    d.call("turn/start", {"session_id": ok["session_id"], "prompt": "more"})


# ---------------------------------------------------------------- providers/list and initialize


def test_providers_list_and_initialize(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    env_key = "sk-test-LISTENV-5555555555"
    claude_key = "sk-ant-test-LISTCLAUDE-66666"
    file_key = "sk-test-LISTFILE-7777777777"
    path = write_config(
        tmp_path,
        claude_section(server, extra='default_model = "claude-x"')
        + openai_section(server)
        + f'[providers.filekey]\ntype = "openai"\nbase_url = "{server.openai_base_url}"\napi_key = "{file_key}"\n\n'
        + '[defaults]\nprovider = "ollama"\n',
    )
    path.chmod(0o600)
    d = spawn("--config", str(path), env={"OPENAI_API_KEY": env_key, "WARREN_TEST_CLAUDE_KEY": claude_key})

    init = d.call("initialize", {"protocol_version": 1})
    assert "providers/list" in init["capabilities"]["methods"]
    assert init["capabilities"]["providers"] == ["claude", "filekey", "ollama", "openai", "scripted"]

    listed = d.call("providers/list", {})
    assert listed["config_path"] == str(path) and listed["config_error"] is None
    assert listed["providers"] == [
        {"name": "claude", "type": "anthropic", "base_url": server.base_url, "default_model": "claude-x",
         "has_credential": True, "credential_env": "WARREN_TEST_CLAUDE_KEY", "is_default": False},
        {"name": "filekey", "type": "openai", "base_url": server.openai_base_url, "default_model": None,
         "has_credential": True, "credential_env": None, "is_default": False},
        {"name": "ollama", "type": "openai", "base_url": server.openai_base_url, "default_model": None,
         "has_credential": False, "credential_env": None, "is_default": True},
        {"name": "openai", "type": "openai", "base_url": "https://api.openai.com/v1", "default_model": None,
         "has_credential": True, "credential_env": "OPENAI_API_KEY", "is_default": False},
        {"name": "scripted", "type": "scripted", "base_url": None, "default_model": None,
         "has_credential": True, "credential_env": None, "is_default": False},
    ]
    d.stop()
    raw = b"".join(d.lines) + d.stderr_path.read_bytes()
    for key in (env_key, claude_key, file_key):
        assert key.encode() not in raw
    assert server.exchanges == []  # listing never contacts a provider


def test_providers_list_hides_a_password_in_base_url(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    password = "pr0xy-SECRET-pass-9876"
    url = f"http://proxyuser:{password}@127.0.0.1:{server.port}/v1"
    path = write_config(tmp_path, f'[providers.proxy]\ntype = "openai"\nbase_url = "{url}"\ndefault_model = "m"\n')
    d = spawn("--config", str(path))
    listed = d.call("providers/list", {})
    assert listed["providers"][0]["name"] == "proxy"
    d.stop()
    assert password.encode() not in b"".join(d.lines)


# ---------------------------------------------------------------- credentials never leak


def test_keys_never_appear_anywhere(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """A whole session per provider, including a 401 whose error body echoes the key: the keys
    reach the server's headers and nowhere else (stdout, stderr log, SQLite files)."""
    openai_key = "sk-test-SECRET-123456"
    anthropic_key = "sk-ant-test-SECRET-abcdef987654"
    path = write_config(
        tmp_path,
        claude_section(server, extra=f'api_key = "{anthropic_key}"\nmax_retries = 0', key_env="WARREN_TEST_UNSET_KEY")
        + openai_section(server, name="oai", extra='api_key_env = "WARREN_TEST_OAI_KEY"\ndefault_model = "gpt-test"\nmax_retries = 0')
        + '[defaults]\nprovider = "oai"\n',
    )
    d = spawn("--config", str(path), "--log-level", "debug", env={"WARREN_TEST_OAI_KEY": openai_key})
    d.call("initialize", {"protocol_version": 1})
    d.call("providers/list", {})

    server.enqueue(openai_stream("first answer"))
    first = d.call("session/create", {"prompt": "hello", "labels": {"k": "v"}})
    sid = first["session_id"]
    assert server.last.headers["authorization"] == f"Bearer {openai_key}"  # where it must go
    server.enqueue(
        openai_error(401, f"Incorrect API key provided: {openai_key}. You can find your API key at "
                          "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key")
    )
    err = d.error("turn/start", {"session_id": sid, "prompt": "again"})
    assert err["code"] == PROVIDER_ERROR
    assert "Incorrect API key provided: [redacted]" in err["message"]

    server.enqueue(anthropic_text("claude answer"))
    other = d.call("session/create", {"prompt": "hi", "provider": "claude"})
    assert server.last.headers["x-api-key"] == anthropic_key
    server.enqueue(anthropic_error(401, "authentication_error", f"invalid x-api-key {anthropic_key}"))
    err2 = d.error("turn/start", {"session_id": other["session_id"], "prompt": "again"})
    assert err2["code"] == PROVIDER_ERROR and "[redacted]" in err2["message"]

    for s in (sid, other["session_id"]):
        d.call("session/read", {"session_id": s})
        d.call("session/history", {"session_id": s})
    d.call("session/list", {})

    def store_files() -> dict[str, bytes]:  # warren.db, -wal, -shm, the owners directory
        return {str(p.relative_to(tmp_path)): p.read_bytes()
                for p in sorted(tmp_path.rglob("warren.db*")) if p.is_file()}

    live_db = store_files()
    assert {"warren.db", "warren.db-wal"} <= set(live_db)
    d.stop()
    stdout = b"".join(d.lines)
    stderr = d.stderr_path.read_bytes()
    assert b"turn_failed" in stdout and b"HTTP 401" in stdout and stderr  # the failures were written
    for key in (openai_key, anthropic_key):
        secret = key.encode()
        assert secret not in stdout
        assert secret not in stderr
        for name, data in [*live_db.items(), *store_files().items()]:
            assert secret not in data, name


def test_keys_with_stray_characters(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """A key read from a CRLF .env file ends in a line break: it is trimmed and works. A key
    HTTP cannot carry at all (a line break inside, non-ASCII) is refused with a message naming
    the variable; it is never quoted back, and is not an INTERNAL_ERROR."""
    crlf_key = "sk-ant-test-SECRET-CRLF-0123456"
    broken_key = "sk-test-SECRET-BROKEN-01\n23456"
    unicode_key = "sk-test-SECRET-ÜNICODE-0123456"
    path = write_config(
        tmp_path,
        openai_section(server, name="broken", extra='api_key_env = "WARREN_TEST_BROKEN_KEY"\ndefault_model = "m"')
        + openai_section(server, name="uni", extra='api_key_env = "WARREN_TEST_UNI_KEY"\ndefault_model = "m"')
        + '[defaults]\nprovider = "anthropic"\n',
    )
    d = spawn("--config", str(path), env={
        "ANTHROPIC_API_KEY": crlf_key + "\r\n", "ANTHROPIC_BASE_URL": server.base_url,
        "WARREN_TEST_BROKEN_KEY": broken_key, "WARREN_TEST_UNI_KEY": unicode_key,
    })
    assert d.call("session/create", {"prompt": "hi"})["text"] == "Hello from the fake Anthropic server."
    assert server.last.headers["x-api-key"] == crlf_key

    for name, env_name in (("broken", "WARREN_TEST_BROKEN_KEY"), ("uni", "WARREN_TEST_UNI_KEY")):
        err = d.error("session/create", {"prompt": "hi", "provider": name})
        assert err["code"] == PROVIDER_ERROR, err
        assert err["data"]["kind"] == "auth" and err["data"]["retryable"] is False
        assert env_name in err["message"] and "authorization header" in err["message"]
    assert len(server.exchanges) == 1  # the refused keys never reached the server

    d.stop()
    everything = b"".join(d.lines) + d.stderr_path.read_bytes()
    for fragment in ("SECRET-CRLF", "SECRET-BROKEN", "NICODE-0123456"):
        assert fragment.encode() not in everything, fragment


# ---------------------------------------------------------------- failures through the daemon


def test_429_retry_after_is_honoured(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, openai_section(server, extra='default_model = "m"') + claude_section(server)
                        + '[defaults]\nprovider = "ollama"\n')
    server.enqueue(
        openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                     headers={"retry-after-ms": "150"}),
        openai_stream("after the wait"),
    )
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-429-000000000"})
    result = d.call("session/create", {"prompt": "x"})
    sid = result["session_id"]
    assert result["text"] == "after the wait"
    retrying = events_of(d, sid, "retrying")
    # discard_chars / discard_reasoning_chars are omitted when 0 (nothing was streamed).
    assert retrying == [{"type": "retrying", "attempt": 1, "delay_ms": 150, "reason": "rate_limited"}]
    first, second = server.exchanges
    assert second.received_at - first.finished_at >= 0.14  # the delay was really waited
    assert first.json == second.json
    assert events_of(d, sid, "turn_completed")[0]["stop_reason"] == "end_turn"
    types = [e["type"] for e in events_of(d, sid)]
    assert types.index("retrying") < types.index("text_delta")

    # Anthropic's form, retry-after in seconds; 0 means "now", not the 500 ms backoff.
    server.enqueue(
        anthropic_error(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.",
                        {"retry-after": "0"}),
        anthropic_text("claude after the wait"),
    )
    other = d.call("session/create", {"prompt": "y", "provider": "claude"})
    assert other["text"] == "claude after the wait"
    assert events_of(d, other["session_id"], "retrying") == [
        {"type": "retrying", "attempt": 1, "delay_ms": 0, "reason": "rate_limited"}]
    assert [x.path for x in server.exchanges[2:]] == ["/v1/messages", "/v1/messages"]


def test_500_then_success_uses_backoff(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server))
    server.enqueue(anthropic_error(500, "api_error", "Internal server error"), anthropic_text("recovered"))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-500-00000000"})
    result = d.call("session/create", {"prompt": "x"})
    assert result["text"] == "recovered" and result["stop_reason"] == "end_turn"
    (retrying,) = events_of(d, result["session_id"], "retrying")
    assert retrying["attempt"] == 1 and retrying["reason"] == "server_error"
    assert 250 <= retrying["delay_ms"] <= 500  # first backoff step: 500 ms with jitter
    assert len(server.exchanges) == 2
    assert [m["role"] for m in history(d, result["session_id"])] == ["user", "assistant"]


def test_401_fails_the_turn_without_retry(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    key = "sk-ant-test-WRONG-0000111122"
    path = write_config(tmp_path, claude_section(server))
    server.enqueue(anthropic_error(401, "authentication_error", f"invalid x-api-key: {key}"))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": key})
    rid = d.request("session/create", {"prompt": "x"})
    reply = d.response(rid)
    err = reply["error"]
    assert err["code"] == PROVIDER_ERROR
    data = err["data"]
    assert data["code"] == "PROVIDER_ERROR"
    assert data["provider"] == "claude"
    assert data["status"] == 401
    assert data["retryable"] is False
    assert data["kind"] == "auth"
    assert data["provider_error_type"] == "authentication_error"
    assert "invalid x-api-key: [redacted]" in err["message"] and key not in err["message"]
    assert len(server.exchanges) == 1  # not retried

    sid = d.call("session/list", {})["sessions"][0]["session_id"]
    evs = events_of(d, sid)
    assert [e["type"] for e in evs] == ["turn_started", "turn_failed"]
    assert evs[-1]["error"] == err
    # The prompt stays committed, nothing else; the session is usable again.
    assert [m["role"] for m in history(d, sid)] == ["user"]
    server.enqueue(anthropic_text("fixed"))
    assert d.call("turn/start", {"session_id": sid, "prompt": "retry"})["text"] == "fixed"


def test_stream_broken_after_output_is_retried_and_discarded(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """Text deltas, then a TCP reset: the attempt is retried, ``discard_chars`` is exactly what
    the abandoned attempt streamed, and only the successful attempt's text is committed."""
    path = write_config(tmp_path, claude_section(server))
    broken = anthropic_events(thinking_block("Pondering deeply", "sig-lost", chunk=8),
                              text_block("Abandoned partial text", chunk=6))
    # message_start, block 0 start, ping, 2 thinking deltas, signature, stop, block 1 start,
    # the first 3 text deltas; then the connection is reset.
    cut = broken[:11] + [Reset(delay_s=0.2)]
    server.enqueue(SSEResponse(cut), anthropic_stream(text_block("The real answer.", chunk=5)))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-reset-00000000"})
    result = d.call("session/create", {"prompt": "x"})
    sid = result["session_id"]

    evs = events_of(d, sid)
    cut_at = next(i for i, e in enumerate(evs) if e["type"] == "retrying")
    before, after = evs[:cut_at], evs[cut_at + 1:]
    abandoned = "".join(e["delta"] for e in before if e["type"] == "text_delta")
    abandoned_reasoning = "".join(e["delta"] for e in before if e["type"] == "reasoning_delta")
    assert abandoned == "Abandoned partial "
    assert abandoned_reasoning == "Pondering deeply"
    retrying = evs[cut_at]
    assert retrying["reason"] == "connection"
    assert retrying["discard_chars"] == len(abandoned) == 18
    assert retrying["discard_reasoning_chars"] == len(abandoned_reasoning)
    assert "".join(e["delta"] for e in after if e["type"] == "text_delta") == "The real answer."

    assert result["text"] == "The real answer."
    msgs = history(d, sid)
    assert msgs[-1]["content"] == [{"type": "text", "text": "The real answer."}]
    assert "Abandoned" not in json.dumps(msgs) and "Pondering" not in json.dumps(msgs)
    assert d.call("session/read", {"session_id": sid})["state"]["last_assistant_text"] == "The real answer."
    assert server.exchanges[0].outcome == "reset"


def test_retries_exhausted(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, openai_section(server, extra='default_model = "m"\nmax_retries = 2'))
    overloaded = {"retry-after-ms": "20"}
    server.enqueue(*[openai_error(503, "The server is overloaded", "server_error", headers=overloaded)] * 3)
    d = spawn("--config", str(path))
    err = d.error("session/create", {"prompt": "x"})
    assert err["code"] == PROVIDER_ERROR
    assert err["data"]["retryable"] is True
    assert err["data"]["status"] == 503 and err["data"]["kind"] == "server_error"
    assert err["data"]["retry_after_ms"] == 20
    assert len(server.exchanges) == 3  # one try + max_retries
    sid = d.call("session/list", {})["sessions"][0]["session_id"]
    assert [(e["attempt"], e["delay_ms"]) for e in events_of(d, sid, "retrying")] == [(1, 20), (2, 20)]
    assert events_of(d, sid)[-1]["type"] == "turn_failed"


# ---------------------------------------------------------------- interrupts and timeouts


def test_interrupt_mid_stream_is_prompt_and_closes_connection(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server))
    slow = "".join(f"word{i:03d} " for i in range(300))  # 300 deltas, 0.1 s apart: 30 s in all
    server.enqueue(anthropic_stream(text_block(slow, chunk=7), delay_s=0.1))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-intr-00000000"})
    create_id = d.request("session/create", {"prompt": "talk slowly"})
    first = d.wait_event("text_delta")
    sid = first["session_id"]
    d.wait_for(lambda: len(events_of(d, sid, "text_delta")) >= 3, what="three deltas")

    t0 = time.monotonic()
    wall0 = time.time()
    interrupted = d.call("turn/interrupt", {"session_id": sid})
    result = d.response(create_id)["result"]
    latency = time.monotonic() - t0
    print(f"\ninterrupt latency (turn/interrupt sent -> interrupted RunResult received): {latency * 1000:.1f} ms")
    assert latency < 5.0  # milliseconds normally; the bound leaves room for a loaded machine, not for the 30 s stream
    assert interrupted == {"session_id": sid, "turn_id": result["turn_id"], "interrupted": True}
    assert result["stop_reason"] == "interrupted"

    streamed = streamed_text(d, sid)
    assert 3 * 7 <= len(streamed) < len(slow)
    assert result["text"] == streamed
    msgs = history(d, sid)
    assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"] == [{"type": "text", "text": streamed}]
    last = events_of(d, sid)[-1]
    assert (last["type"], last["stop_reason"]) == ("turn_completed", "interrupted")

    ex = server.exchanges[0]
    assert ex.done.wait(10.0), "the fake server never saw the request end"
    assert ex.outcome == "client_closed"
    assert ex.client_closed_at is not None and ex.client_closed_at - wall0 < 5.0
    print(f"server saw the connection closed {(ex.client_closed_at - wall0) * 1000:.1f} ms after the interrupt")

    # The session works afterwards, and the partial answer is part of what is sent next.
    server.enqueue(anthropic_text("continuing"))
    assert d.call("turn/start", {"session_id": sid, "prompt": "go on"})["text"] == "continuing"
    assert server.last.json["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": streamed}]}


def test_interrupt_commits_exactly_the_streamed_text(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """A fast server sends many events per TCP read; interrupted mid-burst, what the turn
    commits must still equal what the client was streamed, delta for delta."""
    path = write_config(tmp_path, claude_section(server))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-burst-0000000"})
    events = anthropic_events(text_block("abcdefghij" * 2000, chunk=1))
    head, deltas, tail = events[:3], events[3:-3], events[-3:]
    bursts = [RawLine(b"".join(e.encode() for e in deltas[i:i + 300]), delay_s=0.005)
              for i in range(0, len(deltas), 300)]
    mismatches = []
    for trial in range(10):
        server.enqueue(SSEResponse(head + bursts + tail))
        known = {e["session_id"] for e in d.events()}  # before the request: its first event is new
        create_id = d.request("session/create", {"prompt": f"burst {trial}"})
        first = d.wait_for(lambda: next((e for e in d.events() if e["session_id"] not in known
                                         and e["event"]["type"] == "text_delta"), None), what="first delta")
        sid = first["session_id"]
        time.sleep(0.03)
        d.call("turn/interrupt", {"session_id": sid})
        result = d.response(create_id)["result"]
        assert result["stop_reason"] == "interrupted"
        committed = history(d, sid)[-1]["content"][0]["text"]
        assert committed == result["text"]
        streamed = streamed_text(d, sid)
        if committed != streamed:
            mismatches.append((trial, len(streamed), len(committed)))
            break
    assert mismatches == [], f"(trial, streamed chars, committed chars): {mismatches}"


def test_read_timeout_is_retried_then_fails_as_timeout(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server, extra="max_retries = 1", timeouts="read_s = 0.3"))
    # one delta, then a minute of silence (cut short when the client hangs up): only a read
    # timeout ends it within the bound below, however loaded the machine is
    stalled = anthropic_events(text_block("partial"))[:4] + [Stall(60.0)]
    server.enqueue(SSEResponse(stalled), SSEResponse(stalled))
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-read-00000000"})
    d.call("initialize", {"protocol_version": 1})  # start the clock once the daemon is up
    t0 = time.monotonic()
    err = d.error("session/create", {"prompt": "x"})
    elapsed = time.monotonic() - t0
    assert err["code"] == PROVIDER_ERROR
    assert err["data"]["kind"] == "timeout" and err["data"]["retryable"] is True
    assert "read timeout" in err["message"]
    assert 0.6 <= elapsed < 15.0  # two 0.3 s read timeouts plus one backoff, not the 60 s stall
    sid = d.call("session/list", {})["sessions"][0]["session_id"]
    (retrying,) = events_of(d, sid, "retrying")
    assert retrying["reason"] == "timeout" and retrying["discard_chars"] == len("partial")
    assert len(server.exchanges) == 2
    for ex in server.exchanges:
        assert ex.done.wait(10.0) and ex.outcome == "client_closed"


def test_whole_turn_timeout(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, openai_section(server, extra='default_model = "m"', timeouts="turn_s = 0.5"))
    server.enqueue(openai_stream("x" * 3000, chunk=5, delay_s=0.1))  # 60 s of steady output
    d = spawn("--config", str(path))
    d.call("initialize", {"protocol_version": 1})
    t0 = time.monotonic()
    err = d.error("session/create", {"prompt": "x"})
    elapsed = time.monotonic() - t0
    assert err["code"] == PROVIDER_ERROR
    assert err["data"]["kind"] == "turn_timeout"
    assert err["data"]["provider"] == "ollama"
    assert "0.5 s" in err["message"]
    assert 0.5 <= elapsed < 15.0  # the 0.5 s turn limit, not the 60 s stream (slack for a loaded machine)
    sid = d.call("session/list", {})["sessions"][0]["session_id"]
    evs = events_of(d, sid)
    assert any(e["type"] == "text_delta" for e in evs)  # it was streaming, not stalled
    assert evs[-1]["type"] == "turn_failed" and evs[-1]["error"]["data"]["kind"] == "turn_timeout"
    assert server.exchanges[0].done.wait(10.0) and server.exchanges[0].outcome == "client_closed"
    assert d.call("session/read", {"session_id": sid})["state"]["is_active"] is False


# ---------------------------------------------------------------- reasoning, tools, usage


def test_anthropic_thinking_signature_round_trip(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server))
    signature = "EqQBCkYIARgCIkB0ZXN0LXNpZ25hdHVyZQ=="
    server.enqueue(
        anthropic_stream(thinking_block("Let me think about 2+2.", signature, chunk=10), text_block("It is 4.")),
        anthropic_text("Yes."),
    )
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-think-0000000"})
    thinking = {"type": "enabled", "budget_tokens": 1024}
    result = d.call("session/create", {"prompt": "2+2?", "provider_params": {"thinking": thinking}})
    sid = result["session_id"]
    assert result["text"] == "It is 4."
    assert server.exchanges[0].json["thinking"] == thinking
    assert "".join(e["delta"] for e in events_of(d, sid, "reasoning_delta")) == "Let me think about 2+2."

    msgs = history(d, sid)
    assert msgs[1]["role"] == "assistant"
    assert msgs[1]["content"] == [
        {"type": "reasoning", "text": "Let me think about 2+2.", "signature": signature, "provider": "claude"},
        {"type": "text", "text": "It is 4."},
    ]

    d.call("turn/start", {"session_id": sid, "prompt": "Sure?"})
    body = server.last.json
    assert body["thinking"] == thinking
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Let me think about 2+2.", "signature": signature},
            {"type": "text", "text": "It is 4."},
        ]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                     "required": ["city"]},
}
CLOCK_TOOL = {"name": "get_time", "description": "Local time", "input_schema": {"type": "object", "properties": {}}}


def test_anthropic_tool_use_round_trip(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server))
    args = {"city": "Paris", "unit": "celsius"}
    tool_block = tool_use_block("toolu_01A", "get_weather", args)
    assert len(tool_block["fragments"]) > 3  # the arguments arrive as several input_json_delta pieces
    server.enqueue(
        anthropic_stream(text_block("Let me check."), tool_block, stop_reason="tool_use"),
        anthropic_text("It is 18 degrees in Paris."),
    )
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-tools-0000000"})
    result = d.call("session/create", {"prompt": "Weather in Paris?", "tools": [WEATHER_TOOL]})
    sid = result["session_id"]
    first = server.exchanges[0].json
    assert first["tools"] == [WEATHER_TOOL]

    assert result["stop_reason"] == "tool_use"
    assert result["text"] == "Let me check."
    call = {"tool_use_id": "toolu_01A", "name": "get_weather", "arguments": args}
    assert result["pending_tool_calls"] == [call]
    assert result["tool_calls"] == [call]
    assert events_of(d, sid, "tool_call_requested") == [{"type": "tool_call_requested", **call, "source": "client"}]
    assert events_of(d, sid, "turn_completed")[0]["stop_reason"] == "tool_use"

    staged = d.call("session/stage_tool_results", {"session_id": sid, "results": [
        {"tool_use_id": "toolu_01A", "content": "18C, sunny", "is_error": False}]})
    assert staged == {"accepted_result_count": 1}
    final = d.call("turn/start", {"session_id": sid, "prompt": ""})
    assert final["text"] == "It is 18 degrees in Paris." and final["stop_reason"] == "end_turn"
    assert server.last.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": args},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C, sunny", "is_error": False},
        ]},
    ]


def test_openai_tool_call_fragments_round_trip(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, openai_section(server, extra='default_model = "qwen2.5"'))
    server.enqueue(
        openai_stream(tool_calls=[
            openai_tool_call("call_w1", "get_weather", {"city": "Oslo", "unit": "celsius"}),
            openai_tool_call("call_t2", "get_time", {}),
        ]),
        openai_stream("Oslo: -3C; the clock failed."),
    )
    d = spawn("--config", str(path))
    result = d.call("session/create", {"prompt": "Oslo?", "system_prompt": "Use tools.",
                                       "tools": [WEATHER_TOOL, CLOCK_TOOL]})
    sid = result["session_id"]
    assert server.exchanges[0].json["tools"] == [
        {"type": "function", "function": {"name": t["name"], "description": t["description"],
                                          "parameters": t["input_schema"]}}
        for t in (WEATHER_TOOL, CLOCK_TOOL)
    ]
    assert result["stop_reason"] == "tool_use"
    assert result["pending_tool_calls"] == [
        {"tool_use_id": "call_w1", "name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}},
        {"tool_use_id": "call_t2", "name": "get_time", "arguments": {}},
    ]

    d.call("session/stage_tool_results", {"session_id": sid, "results": [
        {"tool_use_id": "call_t2", "content": "clock unavailable", "is_error": True},
        {"tool_use_id": "call_w1", "content": "-3C", "is_error": False},
    ]})
    final = d.call("turn/start", {"session_id": sid, "prompt": ""})
    assert final["text"] == "Oslo: -3C; the clock failed."
    assert server.last.json["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"celsius"}'}},
            {"id": "call_t2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "-3C"},
        {"role": "tool", "tool_call_id": "call_t2", "content": "Error: clock unavailable"},
    ]


def test_usage_with_cache_tokens(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, claude_section(server) + openai_section(server, extra='default_model = "m"'))
    server.enqueue(
        anthropic_text("one", input_tokens=20, cache_read=1800, cache_write=300, output_tokens=7),
        anthropic_text("two", input_tokens=30, cache_read=2100, cache_write=0, output_tokens=5),
        openai_stream("three", usage=openai_usage(1200, 9, cached=1024)),
    )
    d = spawn("--config", str(path), env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-usage-0000000"})
    r1 = d.call("session/create", {"prompt": "a", "provider": "claude"})
    sid = r1["session_id"]
    assert r1["usage"] == {"input_tokens": 2120, "output_tokens": 7, "total_tokens": 2127,
                           "cache_read_tokens": 1800, "cache_write_tokens": 300}
    assert events_of(d, sid, "usage")[0]["usage"] == r1["usage"]
    r2 = d.call("turn/start", {"session_id": sid, "prompt": "b"})
    assert r2["usage"] == {"input_tokens": 2130, "output_tokens": 5, "total_tokens": 2135,
                           "cache_read_tokens": 2100, "cache_write_tokens": 0}
    billing = d.call("session/read", {"session_id": sid})["billing"]
    assert billing == {"total_tokens": 4262, "usage": {
        "input_tokens": 4250, "output_tokens": 12, "total_tokens": 4262,
        "cache_read_tokens": 3900, "cache_write_tokens": 300}}

    r3 = d.call("session/create", {"prompt": "c", "provider": "ollama"})
    assert r3["usage"] == {"input_tokens": 1200, "output_tokens": 9, "total_tokens": 1209, "cache_read_tokens": 1024}
    billing3 = d.call("session/read", {"session_id": r3["session_id"]})["billing"]
    assert billing3["total_tokens"] == 1209 and billing3["usage"]["cache_read_tokens"] == 1024
