"""Nothing committed is lost: crashes, EOF, two daemons on one file, and a failing disk."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.daemon_client import Daemon, hermetic_env, script
from tests.fakes.llm_server import FakeLLMServer, anthropic_stream, anthropic_text, text_block
from tests.test_providers_daemon import claude_section, write_config

SLOW = script({"text": "z" * 300, "chunk_chars": 1, "delay_ms": 10})


def deferred(d: Daemon, **params: object) -> str:
    return d.call("session/create", {"initial_turn": "defer", "provider": "scripted", **params})["session_id"]


def test_sigkill_mid_turn_then_restart(spawn, tmp_path: Path) -> None:
    d = spawn()
    sid = deferred(d, provider_params=script({"text": "done"}, {"text": "y" * 300, "chunk_chars": 1, "delay_ms": 10}))
    d.call("turn/start", {"session_id": sid, "prompt": "first"})
    d.request("turn/start", {"session_id": sid, "prompt": "second"})
    d.wait_for(lambda: d.event_types(sid).count("text_delta") >= 20, what="deltas")
    last_seq = d.events(sid)[-1]["seq"]
    d.kill()

    d2 = spawn()
    page = d2.call("session/history", {"session_id": sid})
    assert [m["role"] for m in page["messages"]] == ["user", "assistant", "user"]
    assert page["messages"][2]["content"] == [{"type": "text", "text": "second"}]
    view = d2.call("session/read", {"session_id": sid})
    assert view["state"]["is_active"] is False
    r = d2.call("turn/start", {"session_id": sid, "prompt": "third"})
    assert r["stop_reason"] == "end_turn"
    # never a repeated seq after a crash
    assert d2.events(sid)[0]["seq"] > last_seq
    db = sqlite3.connect(tmp_path / "warren.db")
    statuses = [row[0] for row in db.execute("SELECT status FROM turns WHERE session_id = ? ORDER BY started_at_ms", (sid,))]
    assert statuses == ["completed", "interrupted", "completed"]


def test_dead_turn_found_by_a_live_second_daemon(spawn) -> None:
    a = spawn()
    b = spawn()
    sid = deferred(a, provider_params=SLOW)
    b.call("session/read", {"session_id": sid})  # b is up before the turn starts, so it answers while it runs
    a.request("turn/start", {"session_id": sid, "prompt": "q"})
    a.wait_event("text_delta", sid)
    err = b.error("turn/start", {"session_id": sid, "prompt": "mine"})
    assert err["data"]["code"] == "SESSION_BUSY"
    err = b.error("turn/interrupt", {"session_id": sid})
    assert err["data"]["code"] == "SESSION_UNSUPPORTED" and err["data"]["operation"] == "turn/interrupt"
    assert b.call("session/read", {"session_id": sid})["state"]["is_active"] is True
    a.kill()
    r = b.call("turn/start", {"session_id": sid, "prompt": "mine"})
    assert r["stop_reason"] == "end_turn"


def test_eof_during_turn_commits_partial_and_exits_zero(spawn) -> None:
    d = spawn()
    sid = deferred(d, provider_params=SLOW)
    tid = d.request("turn/start", {"session_id": sid, "prompt": "q"})
    d.wait_for(lambda: d.event_types(sid).count("text_delta") >= 10, what="deltas")
    d.close_stdin()
    assert d.wait_exit(10) == 0
    result = d.response(tid)["result"]
    assert result["stop_reason"] == "interrupted" and len(result["text"]) >= 10
    d2 = spawn()
    msgs = d2.call("session/history", {"session_id": sid})["messages"]
    assert msgs[-1]["content"][0]["text"] == result["text"]


def test_sigterm_during_turn(spawn) -> None:
    d = spawn()
    sid = deferred(d, provider_params=SLOW)
    tid = d.request("turn/start", {"session_id": sid, "prompt": "q"})
    d.wait_event("text_delta", sid)
    assert d.terminate() == 0
    assert d.response(tid)["result"]["stop_reason"] == "interrupted"


def test_two_daemons_write_one_file(spawn, tmp_path: Path) -> None:
    a, b = spawn(), spawn()
    results: dict[str, list[str]] = {"a": [], "b": []}

    def work(name: str, d: Daemon) -> None:
        for i in range(15):
            r = d.call("session/create", {"prompt": f"{name}{i}", "labels": {"by": name}, "provider": "scripted"})
            d.call("turn/start", {"session_id": r["session_id"], "prompt": "more"})
            d.call("session/append_system_context", {"session_id": r["session_id"], "text": "ctx"})
            results[name].append(r["session_id"])

    threads = [threading.Thread(target=work, args=(n, d)) for n, d in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results["a"]) == len(results["b"]) == 15
    listed = a.call("session/list", {"limit": 100})["sessions"]
    assert len(listed) == 30 and all(s["message_count"] == 5 for s in listed)
    for sid in results["b"][:3]:
        assert a.call("session/history", {"session_id": sid})["message_count"] == 5
    a.stop(), b.stop()
    db = sqlite3.connect(tmp_path / "warren.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (150,)


def test_store_files_are_owner_only(spawn, tmp_path: Path) -> None:
    db = tmp_path / "sub" / "w.db"
    d = spawn(db=db)
    d.call("session/create", {"prompt": "x", "provider": "scripted"})
    for path in db.parent.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))


def test_default_db_under_xdg_data_home(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    cmd_env = {**hermetic_env(), **env, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run(
        [os.sys.executable, "-m", "warren.daemon", "serve"],
        input=b'{"jsonrpc":"2.0","id":1,"method":"session/create","params":{"initial_turn":"defer","provider":"scripted"}}\n',
        capture_output=True, env=cmd_env, timeout=30,
    )
    assert b'"session_id"' in proc.stdout
    path = tmp_path / "data" / "warren" / "warren.db"
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- a failing store


def test_locked_database_gives_store_error_and_keeps_serving(spawn, tmp_path: Path) -> None:
    d = spawn("--busy-timeout-ms", "200")
    sid = deferred(d)
    blocker = sqlite3.connect(tmp_path / "warren.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        err = d.error("session/create", {"prompt": "x", "provider": "scripted"})
        assert err["code"] == -32006
        assert err["data"]["code"] == "SESSION_STORE_ERROR" and err["data"]["reason"] == "locked"
        assert err["data"]["retryable"] is True
        # reads still work while another process holds the write lock (WAL)
        assert d.call("session/read", {"session_id": sid})["state"]["session_id"] == sid
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert d.call("session/create", {"prompt": "x", "provider": "scripted"})["stop_reason"] == "end_turn"


def test_read_only_database_gives_store_error(spawn, tmp_path: Path) -> None:
    """A database on a read-only file system (as root, permissions alone cannot stop writes)."""
    if os.geteuid() == 0:
        work = tmp_path / "ro"
        if not _mount_tiny_tmpfs(work, "4m"):
            pytest.skip("cannot mount tmpfs here")
    else:
        work = tmp_path / "ro"
        work.mkdir()
    try:
        d = spawn(db=work / "w.db")
        sid = deferred(d)
        d.stop()
        if os.geteuid() == 0:
            assert subprocess.run(["mount", "-o", "remount,ro", str(work)], capture_output=True).returncode == 0
        else:
            for p in work.rglob("*"):
                p.chmod(0o500 if p.is_dir() else 0o400)
            work.chmod(0o500)
        d2 = spawn(db=work / "w.db")
        err = d2.error("session/create", {"prompt": "x", "provider": "scripted"})
        assert err["code"] == -32006 and err["data"]["reason"] in ("read_only", "cant_open")
        assert err["data"]["retryable"] is False
        assert d2.call("initialize", {})["server_info"]["name"] == "warren"
        # committed data stays readable, or the store says why it cannot be opened: never lost, never a crash
        reply = d2.response(d2.request("session/read", {"session_id": sid}))
        if "result" in reply:
            assert reply["result"]["state"]["session_id"] == sid
        else:
            assert reply["error"]["code"] == -32006 and reply["error"]["data"]["reason"] in ("read_only", "cant_open")
        d2.stop()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(work)], capture_output=True)
        else:
            for p in [work, *work.rglob("*")]:
                p.chmod(0o700)


def _mount_tiny_tmpfs(path: Path, size: str = "600k") -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_full_disk_gives_store_error_and_loses_nothing(spawn, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(mnt):
        pytest.skip("cannot mount tmpfs here")
    try:
        d = spawn(db=mnt / "w.db")
        sid = deferred(d)
        committed = 0
        big = "x" * 20_000
        err = None
        for i in range(200):
            reply = d.response(d.request("session/append_system_context", {"session_id": sid, "text": f"{i}{big}"}))
            if "error" in reply:
                err = reply["error"]
                break
            committed += 1
        assert err is not None, "the disk never filled"
        assert err["code"] == -32006 and err["data"]["reason"] in ("full", "io")
        # the daemon keeps serving and every acknowledged write is there
        assert d.call("session/history", {"session_id": sid, "limit": 1})["message_count"] == committed
        d.stop()
        d2 = spawn(db=mnt / "w.db")
        assert d2.call("session/history", {"session_id": sid, "limit": 1})["message_count"] == committed
        d2.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_full_disk_mid_turn_fails_the_turn_and_keeps_what_was_committed(
    spawn, tmp_path: Path, server: FakeLLMServer
) -> None:
    """Storing a model call's message and events fills the disk: the turn answers with the
    store error and ends with ``turn_failed``; everything committed before stays readable."""
    mnt = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(mnt, "2m"):
        pytest.skip("cannot mount tmpfs here")
    try:
        config = write_config(tmp_path, claude_section(server))
        d = spawn("--config", str(config), db=mnt / "w.db", env={"WARREN_TEST_CLAUDE_KEY": "sk-ant-test-full-0000"})
        server.enqueue(anthropic_text("first"), anthropic_stream(text_block("y" * 3_000_000, chunk=4096)))
        sid = d.call("session/create", {"initial_turn": "defer"})["session_id"]
        d.call("turn/start", {"session_id": sid, "prompt": "small"})
        before = d.call("session/events", {"session_id": sid})["events"]
        err = d.error("turn/start", {"session_id": sid, "prompt": "big"})
        assert err["code"] == -32006 and err["data"]["reason"] in ("full", "io")
        got = d.events(sid)
        assert got[-1]["event"]["type"] == "turn_failed"
        assert [e["seq"] for e in got] == list(range(1, len(got) + 1))  # no seq repeated or skipped on the wire
        # the daemon keeps serving; the first turn and its events are intact
        history = d.call("session/history", {"session_id": sid})
        assert [m["role"] for m in history["messages"][:3]] == ["user", "assistant", "user"]
        assert history["messages"][1]["content"][0]["text"] == "first"
        assert d.call("session/events", {"session_id": sid})["events"][: len(before)] == before
        d.stop()
        d2 = spawn(db=mnt / "w.db")
        assert d2.call("session/events", {"session_id": sid})["events"][: len(before)] == before
        d2.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_corrupt_database_gives_store_error(spawn, tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not a database" * 100)
    d = spawn(db=path)
    err = d.error("session/list", {})
    assert err["code"] == -32006 and err["data"]["reason"] == "corrupt"
    assert d.call("initialize", {})["protocol_version"] == 1


def test_list_is_active_false_for_a_dead_owner(spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, provider_params=SLOW)
    b.call("session/read", {"session_id": sid})  # b is up before the turn starts, so it answers while it runs
    a.request("turn/start", {"session_id": sid, "prompt": "q"})
    a.wait_event("text_delta", sid)
    assert b.call("session/list", {})["sessions"][0]["is_active"] is True
    a.kill()
    assert b.call("session/list", {})["sessions"][0]["is_active"] is False
    assert b.call("session/read", {"session_id": sid})["state"]["is_active"] is False
