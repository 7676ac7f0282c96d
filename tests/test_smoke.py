from tests.daemon_client import Daemon, script


def test_create_echo_and_history(daemon: Daemon) -> None:
    result = daemon.call("session/create", {"prompt": "hello", "provider": "scripted"})
    assert result["text"] == "echo: hello"
    assert result["stop_reason"] == "end_turn"
    page = daemon.call("session/history", {"session_id": result["session_id"]})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant"]
    assert page["messages"][1]["content"] == [{"type": "text", "text": "echo: hello"}]
    types = daemon.event_types(result["session_id"])
    assert types == ["turn_started", "text_delta", "text_delta", "usage", "turn_completed"]


def test_scripted_text(daemon: Daemon) -> None:
    r = daemon.call("session/create", {"prompt": "x", "provider": "scripted", "provider_params": script({"text": "abcdefghij", "chunk_chars": 4})})
    assert r["text"] == "abcdefghij"
    deltas = [e["event"]["delta"] for e in daemon.events(r["session_id"]) if e["event"]["type"] == "text_delta"]
    assert deltas == ["abcd", "efgh", "ij"]
