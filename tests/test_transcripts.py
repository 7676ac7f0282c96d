"""Revisioned, branchable transcripts (PROTOCOL.md part two, section 9) through the real
daemon over pipes: message ids and revisions, ``session/fork``, ``session/rewrite``,
``session/revisions`` / ``session/revision``, ``session/restore`` and the guarded
``session/append``; tool-call validity of every edit, system context through edits, the
``transcript_changed`` events, two daemons editing one file, SIGKILL in the middle of an edit,
and a database of the previous schema version (commit a2c7c22) migrated with its messages.
"""

from __future__ import annotations

import io
import re
import sqlite3
import subprocess
import tarfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests import daemon_client
from tests.daemon_client import Daemon, script

Msg = dict[str, Any]
Spawn = Callable[..., Daemon]

INVALID_PARAMS, SESSION_NOT_FOUND, SESSION_BUSY, SESSION_ERROR = -32602, -32001, -32002, -32009
SYSTEM_CONTEXT_CONFLICT, REVISION_CONFLICT, IDEMPOTENCY_CONFLICT, STALE_BRANCH = -32008, -32014, -32015, -32016
REVISION = re.compile(r"^sha256:[0-9a-f]{64}$")
NEW_METHODS = {"session/fork", "session/rewrite", "session/revisions", "session/revision", "session/restore", "session/append"}
# A model call that streams for about three seconds, for anything that must happen mid-turn.
SLOW = {"text": "s" * 60, "chunk_chars": 1, "delay_ms": 50}
READ = {"name": "read_file", "description": "Read a file", "input_schema": {"type": "object"}}
PRE_TRANSCRIPTS_COMMIT = "a2c7c22"  # the last commit before revisioned transcripts (schema v3)


# ---------------------------------------------------------------- helpers: messages


def text(s: str) -> Msg:
    return {"type": "text", "text": s}


def tool_use(id_: str, name: str = "lookup", arguments: dict[str, Any] | None = None) -> Msg:
    return {"type": "tool_use", "id": id_, "name": name, "arguments": arguments or {}}


def tool_result(id_: str, content: str = "ok", is_error: bool = False) -> Msg:
    return {"type": "tool_result", "tool_use_id": id_, "content": content, "is_error": is_error}


def staged(id_: str, content: str = "ok", is_error: bool = False) -> Msg:
    """One result for ``session/stage_tool_results``."""
    return {"tool_use_id": id_, "content": content, "is_error": is_error}


def user(s: str) -> Msg:
    return {"role": "user", "content": s}


def assistant(*blocks: Msg | str) -> Msg:
    return {"role": "assistant", "content": [text(b) if isinstance(b, str) else b for b in blocks]}


def tool(*results: Msg) -> Msg:
    return {"role": "tool", "content": list(results)}


def system(s: str) -> Msg:
    return {"role": "system", "content": s}


def core(m: Msg) -> tuple[Any, ...]:
    """What a message is, wherever it appears: its id, role, content and source."""
    return (m["message_id"], m["role"], m["content"], m.get("source"))


def cores(msgs: list[Msg]) -> list[tuple[Any, ...]]:
    return [core(m) for m in msgs]


def ids(msgs: list[Msg]) -> list[str]:
    return [m["message_id"] for m in msgs]


def texts(msgs: list[Msg]) -> list[str]:
    return ["".join(b.get("text", "") for b in m["content"]) for m in msgs]


# ---------------------------------------------------------------- helpers: calls


def deferred(d: Daemon, *steps: Msg, **params: Any) -> str:
    """A scripted session with no turn yet; its model calls answer ``steps`` in order."""
    if steps:
        params["provider_params"] = script(*steps)
    return d.call("session/create", {"initial_turn": "defer", "provider": "scripted", **params})["session_id"]


def run(d: Daemon, sid: str, prompt: str = "q", **params: Any) -> dict[str, Any]:
    return d.call("turn/start", {"session_id": sid, "prompt": prompt, **params})


def chat(d: Daemon, *steps: Msg, turns: int = 2, **params: Any) -> str:
    """A session of ``turns`` ordinary turns (prompts p0, p1, ...): 2 × turns messages."""
    sid = deferred(d, *steps, **params)
    for i in range(turns):
        run(d, sid, f"p{i}")
    return sid


def tool_chat(d: Daemon) -> str:
    """[user go, assistant(tool_use c1), tool(result c1), assistant done, user next, assistant echo: next]."""
    sid = deferred(d, {"tool_calls": [{"name": "lookup", "arguments": {"q": 1}, "id": "c1"}]}, {"text": "done"})
    assert run(d, sid, "go")["stop_reason"] == "tool_use"
    d.call("session/stage_tool_results", {"session_id": sid, "results": [staged("c1", "42")]})
    assert run(d, sid, "")["text"] == "done"
    run(d, sid, "next")
    msgs = history(d, sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    return sid


def read(d: Daemon, sid: str) -> dict[str, Any]:
    return d.call("session/read", {"session_id": sid})["state"]


def head(d: Daemon, sid: str) -> str:
    return read(d, sid)["revision"]


def history(d: Daemon, sid: str) -> list[Msg]:
    """Every message of the session's head, walking pages; checks each page's revision."""
    msgs: list[Msg] = []
    revisions = set()
    for _ in range(1000):
        page = d.call("session/history", {"session_id": sid, "offset": len(msgs), "limit": 1000})
        revisions.add(page["revision"])
        msgs += page["messages"]
        if not page["has_more"]:
            assert len(msgs) == page["message_count"] and len(revisions) == 1, (len(msgs), page["message_count"], revisions)
            assert [m["index"] for m in msgs] == list(range(len(msgs)))
            return msgs
    raise AssertionError("session/history never said has_more: false")


def revision_messages(d: Daemon, sid: str, revision: str) -> list[Msg]:
    msgs: list[Msg] = []
    for _ in range(1000):
        page = d.call("session/revision", {"session_id": sid, "revision": revision, "offset": len(msgs), "limit": 1000})
        assert page["revision"] == revision
        msgs += page["messages"]
        if not page["has_more"]:
            assert len(msgs) == page["message_count"]
            return msgs
    raise AssertionError("session/revision never said has_more: false")


def log(d: Daemon, sid: str) -> list[Msg]:
    """The whole revision log, newest first, walking pages."""
    entries: list[Msg] = []
    for _ in range(1000):
        page = d.call("session/revisions", {"session_id": sid, "offset": len(entries), "limit": 100})
        assert page["session_id"] == sid
        entries += page["entries"]
        if not page["has_more"]:
            return entries
    raise AssertionError("session/revisions never said has_more: false")


def stored(d: Daemon, sid: str, **params: Any) -> list[Msg]:
    events: list[Msg] = []
    after = 0
    for _ in range(1000):
        p = d.call("session/events", {"session_id": sid, "after_seq": after, **params})
        events += p["events"]
        if not p["has_more"]:
            return events
        after = p["next_seq"] - 1
    raise AssertionError("session/events never said has_more: false")


def changes(d: Daemon, sid: str) -> list[Msg]:
    """The stored ``transcript_changed`` events' bodies, oldest first."""
    return [e["event"] for e in stored(d, sid, types=["transcript_changed"])]


def reason(kind: str = "edit", note: str | None = None) -> Msg:
    return {"kind": kind} if note is None else {"kind": kind, "note": note}


def rewrite(d: Daemon, sid: str, start: int, end: int, replacement: list[Msg], **params: Any) -> dict[str, Any]:
    params.setdefault("reason", reason())
    return d.call("session/rewrite", {"session_id": sid, "start": start, "end": end, "replacement": replacement, **params})


def restore(d: Daemon, sid: str, revision: str, **params: Any) -> dict[str, Any]:
    params.setdefault("reason", reason("undo"))
    return d.call("session/restore", {"session_id": sid, "revision": revision, **params})


def fork(d: Daemon, sid: str, **params: Any) -> dict[str, Any]:
    return d.call("session/fork", {"session_id": sid, **params})


def append(d: Daemon, sid: str, messages: list[Msg], operation_id: str, **params: Any) -> dict[str, Any]:
    return d.call("session/append", {"session_id": sid, "messages": messages, "operation_id": operation_id, **params})


def snapshot(d: Daemon, sid: str) -> dict[str, Any]:
    """Everything an edit may change: head revision, messages, revision log, stored events."""
    return {"revision": head(d, sid), "messages": history(d, sid), "log": log(d, sid), "events": stored(d, sid)}


def assert_error(err: Msg, code: int, data_code: str) -> None:
    assert err["code"] == code and err["data"]["code"] == data_code, err


def assert_invalid(err: Msg, path_prefix: str | tuple[str, ...]) -> None:
    """``-32602`` naming a path that starts with ``path_prefix`` (or one of them)."""
    assert_error(err, INVALID_PARAMS, "INVALID_PARAMS")
    paths = [e["path"] for e in err["data"]["errors"]]
    assert any(p.startswith(path_prefix) for p in paths), (path_prefix, err)


def assert_result_shape(r: Msg, sid: str) -> None:
    assert set(r) >= {"session_id", "parent_revision", "revision", "message_count"}, r
    assert r["session_id"] == sid and REVISION.match(r["revision"]) and REVISION.match(r["parent_revision"]), r


def assert_log_readable(d: Daemon, sid: str) -> None:
    """The head and every revision named in the log (``revision`` and ``parent_revision``)
    can be read with ``session/revision``."""
    entries = log(d, sid)
    named = {head(d, sid)}
    for e in entries:
        named.add(e["revision"])
        if e.get("parent_revision") is not None:
            named.add(e["parent_revision"])
    for revision in named:
        page = d.call("session/revision", {"session_id": sid, "revision": revision, "limit": 1})
        assert page["revision"] == revision and page["head_revision"] == head(d, sid), page


def pending_ids(err: Msg) -> list[str]:
    assert_error(err, SESSION_ERROR, "SESSION_ERROR")
    assert err["data"]["details"]["reason"] == "tool_results_pending", err
    return [p["tool_use_id"] for p in err["data"]["details"]["pending_tool_calls"]]


def wait_streaming(d: Daemon, sid: str, deltas: int = 3) -> str:
    """Wait until the session's latest turn (run by ``d``) streamed ``deltas`` text deltas; its turn id."""

    def streaming() -> str | None:
        events = d.events(sid)
        starts = [i for i, e in enumerate(events) if e["event"]["type"] == "turn_started"]
        if not starts:
            return None
        latest = events[starts[-1]:]
        return latest[0]["turn_id"] if [e["event"]["type"] for e in latest].count("text_delta") >= deltas else None

    return d.wait_for(streaming, what=f"{deltas} deltas of a running turn in {sid}")


# ---------------------------------------------------------------- capabilities, ids, revisions


def test_initialize_lists_the_transcript_methods_and_event(daemon: Daemon) -> None:
    caps = daemon.call("initialize", {})["capabilities"]
    assert NEW_METHODS <= set(caps["methods"])
    assert "transcript_changed" in caps["events"]


def test_messages_have_stable_ids_and_sessions_a_revision(daemon: Daemon) -> None:
    sid = deferred(daemon)
    empty = read(daemon, sid)["revision"]
    assert REVISION.match(empty)
    run(daemon, sid, "one")
    first = history(daemon, sid)
    assert all(isinstance(m["message_id"], str) and m["message_id"] for m in first)
    after_one = head(daemon, sid)
    assert REVISION.match(after_one) and after_one != empty
    page = daemon.call("session/history", {"session_id": sid, "offset": 1, "limit": 1})
    assert page["revision"] == after_one and ids(page["messages"]) == ids(first)[1:]
    run(daemon, sid, "two")
    msgs = history(daemon, sid)
    assert ids(msgs)[:2] == ids(first) and len(set(ids(msgs))) == 4  # old ids unchanged, new ones new
    assert head(daemon, sid) not in (empty, after_one)  # an ordinary turn moves the head
    assert read(daemon, sid).get("forked_from") is None
    # the revision is a content address: empty transcripts share one, whatever session holds them
    assert read(daemon, deferred(daemon))["revision"] == empty


def test_revision_depends_on_the_messages_not_on_the_path(daemon: Daemon) -> None:
    sid = chat(daemon, turns=3)
    msgs = history(daemon, sid)
    prefix = fork(daemon, sid, message_index=2)  # fork of [m0, m1]
    whole = fork(daemon, sid)  # fork of everything
    assert whole["revision"] == head(daemon, sid)
    cut = rewrite(daemon, sid, 2, 6, [])  # a rewrite that leaves [m0, m1]
    assert cut["revision"] == prefix["revision"] == head(daemon, prefix["session_id"])
    assert ids(history(daemon, sid)) == ids(msgs[:2])
    assert fork(daemon, sid, message_index=0)["revision"] == read(daemon, deferred(daemon))["revision"]


def test_a_rewrite_gives_its_messages_new_ids(daemon: Daemon) -> None:
    sid = chat(daemon)
    before = history(daemon, sid)
    original = head(daemon, sid)
    changed = rewrite(daemon, sid, 1, 2, [assistant("edited")])
    back = rewrite(daemon, sid, 1, 2, [{"role": "assistant", "content": before[1]["content"]}])
    after = history(daemon, sid)
    assert [m["content"] for m in after] == [m["content"] for m in before]
    assert ids(after)[0] == ids(before)[0] and ids(after)[2:] == ids(before)[2:]
    assert ids(after)[1] not in ids(before)
    assert len({original, changed["revision"], back["revision"]}) == 3  # same content, another id


# ---------------------------------------------------------------- session/fork


def test_fork_at_the_end_copies_the_transcript_and_leaves_the_source(daemon: Daemon) -> None:
    sid = chat(daemon, labels={"repo": "w"})
    source = snapshot(daemon, sid)
    f = fork(daemon, sid)
    assert set(f) >= {"source_session_id", "session_id", "message_count", "revision", "forked_at"}
    fid = f["session_id"]
    assert f["source_session_id"] == sid and fid != sid and f["message_count"] == 4
    assert f["revision"] == source["revision"] == head(daemon, fid)
    assert f["forked_at"] == {"message_index": 4, "revision": source["revision"]}
    assert cores(history(daemon, fid)) == cores(source["messages"])
    state = read(daemon, fid)
    assert state["forked_from"] == {"session_id": sid, "message_index": 4, "revision": source["revision"]}
    assert state["labels"] == {"repo": "w"} and state["provider"] == "scripted" and state["message_count"] == 4
    assert snapshot(daemon, sid) == source
    listed = daemon.call("session/list", {"labels": {"repo": "w"}})["sessions"]
    assert {s["session_id"] for s in listed} == {sid, fid}


def test_fork_at_an_index_and_with_a_replacement(daemon: Daemon) -> None:
    sid = chat(daemon, turns=3)
    source = snapshot(daemon, sid)
    msgs = source["messages"]

    at = fork(daemon, sid, message_index=3, labels={"branch": "b"})
    assert at["message_count"] == 3 and at["forked_at"] == {"message_index": 3, "revision": source["revision"]}
    assert cores(history(daemon, at["session_id"])) == cores(msgs[:3])
    assert read(daemon, at["session_id"])["labels"] == {"branch": "b"}

    edited = fork(daemon, sid, message_index=2, replacement=user("a better question"))
    eid = edited["session_id"]
    assert edited["message_count"] == 3 and edited["forked_at"] == {"message_index": 2, "revision": source["revision"]}
    got = history(daemon, eid)
    assert cores(got[:2]) == cores(msgs[:2])
    assert got[2]["role"] == "user" and got[2]["content"] == [text("a better question")]
    assert got[2]["message_id"] not in ids(msgs)
    assert read(daemon, eid)["forked_from"] == {"session_id": sid, "message_index": 2, "revision": source["revision"]}
    assert edited["revision"] == head(daemon, eid) != source["revision"]

    blocks = fork(daemon, sid, message_index=1, replacement=assistant("better", "answer"))
    assert [m["content"] for m in history(daemon, blocks["session_id"])][1] == [text("better"), text("answer")]
    assert blocks["message_count"] == 2

    assert snapshot(daemon, sid) == source
    assert run(daemon, eid, "more")["message_count"] == 5


def test_fork_log_starts_with_a_fork_entry_and_emits_transcript_changed(daemon: Daemon) -> None:
    sid = chat(daemon)
    source_events = stored(daemon, sid)
    f = fork(daemon, sid, message_index=2)
    fid = f["session_id"]
    entries = log(daemon, fid)
    assert len(entries) == 1 and entries[0]["kind"] == "fork", entries
    assert entries[0]["revision"] == f["revision"] and entries[0]["message_count"] == 2
    assert isinstance(entries[0]["committed_at_ms"], int) and entries[0]["committed_at_ms"] > 0
    assert_log_readable(daemon, fid)
    [change] = changes(daemon, fid)
    assert change["kind"] == "fork" and change["revision"] == f["revision"] and change["message_count"] == 2
    assert stored(daemon, sid) == source_events  # nothing is emitted in the source
    # the fork's own events keep counting up by one after it
    run(daemon, fid, "go")
    fork_seqs = [e["seq"] for e in stored(daemon, fid)]
    assert fork_seqs == list(range(fork_seqs[0], fork_seqs[0] + len(fork_seqs)))


def test_fork_copies_provider_model_prompt_tools_budget_and_timeout(spawn: Spawn) -> None:
    d = spawn()
    d.call("initialize", {"capabilities": {"tool_execute": True}})
    steps = script(
        {"text": "first"},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "a"}, "id": "c1"}]},
        {"tool_calls": [{"name": "read_file", "arguments": {"path": "b"}, "id": "c2"}]},
        {"text": "not reached"},
    )
    sid = d.call("session/create", {
        "prompt": "hi", "provider": "scripted", "model": "model-x", "system_prompt": "S" * 400, "labels": {"t": "1"},
        "tools": [READ], "tool_timeout_ms": 300, "budget": {"max_tool_calls": 1}, "provider_params": steps,
    })["session_id"]
    source = snapshot(d, sid)
    fid = fork(d, sid)["session_id"]
    state = read(d, fid)
    assert (state["provider"], state["model"], state["labels"]) == ("scripted", "model-x", {"t": "1"})
    started = time.monotonic()
    r = run(d, fid, "go")
    # scripted position: the fork's first call is the source's next step (the tool call) ...
    [req] = d.tool_requests()
    assert req["params"]["session_id"] == fid and req["params"]["name"] == "read_file"  # ... the tool is the session's
    timed_out = [e["event"] for e in d.events(fid) if e["event"]["type"] == "tool_execution_timed_out"]
    assert [e["timeout_ms"] for e in timed_out] == [300] and time.monotonic() - started < 10  # its timeout
    assert r["stop_reason"] == "budget_exhausted" and r["budget"]["budget"] == "max_tool_calls"  # its budget
    assert r["budget"]["limit"] == 1
    usage = [e["event"]["usage"] for e in d.events(fid) if e["event"]["type"] == "usage"]
    assert usage[0]["input_tokens"] >= 100  # its system prompt: 400 characters are 100 tokens
    assert snapshot(d, sid) == source


def test_forks_of_forks_share_message_ids_down_the_chain(daemon: Daemon) -> None:
    sid = chat(daemon)
    root = history(daemon, sid)
    f1 = fork(daemon, sid)["session_id"]
    run(daemon, f1, "on f1")
    one = history(daemon, f1)
    f2 = fork(daemon, f1)
    two = history(daemon, f2["session_id"])
    assert cores(two[:4]) == cores(root) and cores(two) == cores(one) and len(two) == 6
    assert read(daemon, f2["session_id"])["forked_from"] == {"session_id": f1, "message_index": 6, "revision": head(daemon, f1)}
    f3 = fork(daemon, f2["session_id"], message_index=5, replacement=assistant("third"))
    three = history(daemon, f3["session_id"])
    assert cores(three[:5]) == cores(one[:5]) and three[5]["message_id"] not in ids(one)
    assert [e["kind"] for e in log(daemon, f3["session_id"])] == ["fork"]
    assert cores(history(daemon, sid)) == cores(root)


def test_fork_turns_run_independently_of_the_source(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "one"}, {"text": "two"}, {"text": "three"})
    assert run(daemon, sid, "a")["text"] == "one"
    fid = fork(daemon, sid)["session_id"]
    assert run(daemon, sid, "b")["text"] == "two"
    assert run(daemon, fid, "x")["text"] == "two"
    assert run(daemon, fid, "y")["text"] == "three"
    assert run(daemon, sid, "c")["text"] == "three"
    assert run(daemon, fid, "z")["text"] == "echo: z"
    src, frk = history(daemon, sid), history(daemon, fid)
    assert texts(src) == ["a", "one", "b", "two", "c", "three"]
    assert texts(frk) == ["a", "one", "x", "two", "y", "three", "z", "echo: z"]
    assert ids(src)[:2] == ids(frk)[:2] and not set(ids(src)[2:]) & set(ids(frk)[2:])
    assert head(daemon, sid) != head(daemon, fid)


def test_fork_of_a_running_session_takes_its_committed_transcript(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "done"}, SLOW)
    run(daemon, sid, "first")
    running = daemon.request("turn/start", {"session_id": sid, "prompt": "long"})
    wait_streaming(daemon, sid)
    committed = history(daemon, sid)
    assert len(committed) == 3  # the prompt is committed before the model call
    f = fork(daemon, sid)
    assert f["message_count"] == 3 and cores(history(daemon, f["session_id"])) == cores(committed)
    daemon.call("turn/interrupt", {"session_id": sid})
    assert daemon.response(running)["result"]["stop_reason"] == "interrupted"
    assert cores(history(daemon, sid))[:3] == cores(committed)
    assert history(daemon, f["session_id"])[-1]["content"] == [text("long")]


def test_fork_of_an_archived_session_is_a_live_session(daemon: Daemon) -> None:
    sid = chat(daemon)
    msgs = history(daemon, sid)
    daemon.call("session/archive", {"session_id": sid})
    f = fork(daemon, sid)
    fid = f["session_id"]
    assert f["message_count"] == 4 and cores(history(daemon, fid)) == cores(msgs)
    assert read(daemon, fid)["forked_from"]["session_id"] == sid
    assert run(daemon, fid, "alive")["message_count"] == 6
    assert [s["session_id"] for s in daemon.call("session/list", {})["sessions"]] == [fid]
    assert daemon.error("session/read", {"session_id": sid})["code"] == SESSION_NOT_FOUND  # the source stays archived


def test_fork_idempotency_key(daemon: Daemon) -> None:
    sid = chat(daemon)
    params = {"message_index": 2, "labels": {"try": "1"}, "idempotency_key": "fork-1"}
    first = fork(daemon, sid, **params)
    again = fork(daemon, sid, **params)
    assert again == first
    assert len(daemon.call("session/list", {"labels": {"try": "1"}})["sessions"]) == 1
    err = daemon.error("session/fork", {"session_id": sid, **params, "message_index": 3})
    assert_error(err, IDEMPOTENCY_CONFLICT, "IDEMPOTENCY_CONFLICT")
    assert err["data"]["key"] == "fork-1" and err["data"]["original"] == first["session_id"]
    assert len(daemon.call("session/list", {})["sessions"]) == 2


def test_fork_errors_write_nothing(daemon: Daemon) -> None:
    err = daemon.error("session/fork", {"session_id": "no-such-session"})
    assert_error(err, SESSION_NOT_FOUND, "SESSION_NOT_FOUND")
    assert err["data"]["session_id"] == "no-such-session"
    sid = chat(daemon)
    source = snapshot(daemon, sid)
    bad = [
        ({"message_index": 5}, "$.message_index"),
        ({"message_index": -1}, "$.message_index"),
        ({"message_index": 4, "replacement": user("past the end")}, "$.message_index"),
        ({"replacement": user("default index is the end")}, ("$.message_index", "$.replacement")),
        ({"message_index": 1, "replacement": {"role": "user", "content": [tool_use("x")]}}, "$.replacement"),
        ({"message_index": 1, "replacement": {"role": "robot", "content": "x"}}, "$.replacement"),
        ({"message_index": 1, "replacement": tool(tool_result("unknown"))}, "$.replacement"),
        ({"message_index": 1, "colour": "red"}, "$.colour"),
    ]
    for params, path in bad:
        assert_invalid(daemon.error("session/fork", {"session_id": sid, **params}), path)
    assert snapshot(daemon, sid) == source
    assert [s["session_id"] for s in daemon.call("session/list", {})["sessions"]] == [sid]


# ---------------------------------------------------------------- session/rewrite


def test_rewrite_replaces_deletes_and_inserts_with_a_log(daemon: Daemon) -> None:
    sid = chat(daemon, turns=3)
    msgs = history(daemon, sid)
    r0 = head(daemon, sid)

    replaced = rewrite(daemon, sid, 1, 2, [assistant("short")], reason=reason("edit", "shorter"), actor="alice")
    assert_result_shape(replaced, sid)
    assert replaced["parent_revision"] == r0 and replaced["message_count"] == 6 and replaced["revision"] != r0
    after = history(daemon, sid)
    assert texts(after) == ["p0", "short", "p1", "echo: p1", "p2", "echo: p2"]
    assert cores(after[2:]) == cores(msgs[2:]) and core(after[0]) == core(msgs[0])
    assert head(daemon, sid) == replaced["revision"]

    deleted = rewrite(daemon, sid, 2, 4, [], expected_revision=replaced["revision"])
    assert deleted["parent_revision"] == replaced["revision"] and deleted["message_count"] == 4
    assert texts(history(daemon, sid)) == ["p0", "short", "p2", "echo: p2"]

    inserted = rewrite(daemon, sid, 2, 2, [system("note"), user("inserted"), assistant("reply")])
    assert inserted["message_count"] == 7
    final = history(daemon, sid)
    assert texts(final) == ["p0", "short", "note", "inserted", "reply", "p2", "echo: p2"]
    assert [m["role"] for m in final][2:5] == ["system", "user", "assistant"]
    assert cores(final[5:]) == cores(msgs[4:])

    entries = log(daemon, sid)
    assert [e["kind"] for e in entries] == ["rewrite"] * 3
    assert [e["revision"] for e in entries] == [inserted["revision"], deleted["revision"], replaced["revision"]]
    assert [e["parent_revision"] for e in entries] == [deleted["revision"], replaced["revision"], r0]
    assert [e["message_count"] for e in entries] == [7, 4, 6]
    assert entries[2]["reason"] == {"kind": "edit", "note": "shorter"} and entries[2]["actor"] == "alice"
    assert entries[0]["reason"] == {"kind": "edit"}
    assert entries[0]["committed_at_ms"] >= entries[1]["committed_at_ms"] >= entries[2]["committed_at_ms"] > 0
    assert_log_readable(daemon, sid)
    assert run(daemon, sid, "after edits")["message_count"] == 9


def test_rewrite_errors_write_nothing(daemon: Daemon) -> None:
    err = daemon.error("session/rewrite", {"session_id": "nope", "start": 0, "end": 0, "replacement": [], "reason": reason()})
    assert_error(err, SESSION_NOT_FOUND, "SESSION_NOT_FOUND")
    sid = chat(daemon)
    before = snapshot(daemon, sid)
    base = {"session_id": sid, "start": 1, "end": 2, "replacement": [assistant("x")], "reason": reason()}
    bad = [
        ({"start": 3, "end": 2}, "$.start"),
        ({"start": -1}, "$.start"),
        ({"end": 5}, "$.end"),
        ({"start": 5, "end": 5}, "$.end"),
        ({"replacement": [{"role": "user", "content": [tool_use("t1")]}]}, "$.replacement[0].content[0]"),
        ({"replacement": [{"role": "assistant", "content": [tool_result("t1")]}]}, "$.replacement[0].content[0]"),
        ({"replacement": [assistant("fine"), {"role": "tool", "content": "not a result"}]}, "$.replacement[1].content"),
        ({"replacement": [{"role": "robot", "content": "x"}]}, "$.replacement[0].role"),
        ({"replacement": [tool(tool_result("never-called"))]}, "$.replacement[0]"),
        ({"reason": {"note": "no kind"}}, "$.reason"),
        ({"reason": None}, "$.reason"),
    ]
    for params, path in bad:
        assert_invalid(daemon.error("session/rewrite", {**base, **params}), path)
    missing = daemon.error("session/rewrite", {k: v for k, v in base.items() if k != "reason"})
    assert_invalid(missing, "$.reason")
    assert snapshot(daemon, sid) == before


def test_rewrite_expected_revision_guard(daemon: Daemon) -> None:
    sid = chat(daemon)
    stale = head(daemon, sid)
    run(daemon, sid, "moves the head")
    before = snapshot(daemon, sid)
    for expected in (stale, "sha256:" + "0" * 64):
        err = daemon.error("session/rewrite", {
            "session_id": sid, "start": 0, "end": 1, "replacement": [user("x")], "reason": reason(), "expected_revision": expected,
        })
        assert_error(err, REVISION_CONFLICT, "SESSION_REVISION_CONFLICT")
        assert err["data"]["session_id"] == sid and err["data"]["current_revision"] == before["revision"]
    assert snapshot(daemon, sid) == before
    ok = rewrite(daemon, sid, 0, 1, [user("x")], expected_revision=before["revision"])
    assert ok["parent_revision"] == before["revision"]


def test_edits_while_a_turn_runs_are_busy_and_write_nothing(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "done"}, SLOW)
    run(daemon, sid, "first")
    undo_to = head(daemon, sid)
    rewrite(daemon, sid, 1, 2, [assistant("edited")])  # so there is a logged revision to restore
    running = daemon.request("turn/start", {"session_id": sid, "prompt": "long"})
    turn_id = wait_streaming(daemon, sid)
    before = {"messages": history(daemon, sid), "log": log(daemon, sid), "revision": head(daemon, sid)}
    attempts = [
        ("session/rewrite", {"start": 0, "end": 1, "replacement": [user("x")], "reason": reason()}),
        ("session/restore", {"revision": undo_to, "reason": reason("undo")}),
        ("session/append", {"messages": [user("x")], "operation_id": "busy-op"}),
    ]
    for method, params in attempts:
        err = daemon.error(method, {"session_id": sid, **params})
        assert_error(err, SESSION_BUSY, "SESSION_BUSY")
        assert err["data"]["session_id"] == sid and err["data"]["running_turn_id"] == turn_id, (method, err)
    assert {"messages": history(daemon, sid), "log": log(daemon, sid), "revision": head(daemon, sid)} == before
    daemon.call("turn/interrupt", {"session_id": sid})
    assert daemon.response(running)["result"]["stop_reason"] == "interrupted"
    # the refused append did not take its operation id
    assert append(daemon, sid, [user("x")], "busy-op")["status"] == "appended"


# ---------------------------------------------------------------- tool-call validity


def test_rewrites_that_break_tool_pairing_are_refused(daemon: Daemon) -> None:
    sid = tool_chat(daemon)
    before = snapshot(daemon, sid)
    breaking = [
        (2, 3, []),  # the result goes: "done" follows an unanswered call
        (1, 2, []),  # the call goes: the result answers nothing
        (4, 4, [tool(tool_result("unknown"))]),  # answers an id never called
        (3, 3, [tool(tool_result("c1"))]),  # answers c1 a second time
        (2, 2, [user("between a call and its result")]),
        (2, 3, [tool(tool_result("c1")), assistant(tool_use("c9")), user("no result for c9")]),
    ]
    for start, end, replacement in breaking:
        err = daemon.error("session/rewrite", {
            "session_id": sid, "start": start, "end": end, "replacement": replacement, "reason": reason(),
        })
        assert_error(err, INVALID_PARAMS, "INVALID_PARAMS")
        assert err["data"]["errors"], err
    assert snapshot(daemon, sid) == before
    # replacing the call and its result together is fine; so is a system message between them
    fine = rewrite(daemon, sid, 2, 2, [system("context between")])
    assert fine["message_count"] == 7
    fine = rewrite(daemon, sid, 1, 4, [assistant("no tools needed")])
    assert texts(history(daemon, sid)) == ["go", "no tools needed", "done", "next", "echo: next"]


def test_a_transcript_ending_in_tool_calls_has_them_pending(daemon: Daemon) -> None:
    sid = tool_chat(daemon)
    cut = rewrite(daemon, sid, 2, 6, [])
    assert cut["message_count"] == 2
    assert pending_ids(daemon.error("turn/start", {"session_id": sid, "prompt": ""})) == ["c1"]
    daemon.call("session/stage_tool_results", {"session_id": sid, "results": [staged("c1", "again")]})
    r = run(daemon, sid, "")
    assert r["stop_reason"] == "end_turn"
    msgs = history(daemon, sid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[2]["content"] == [tool_result("c1", "again")]


def test_append_validates_tool_pairing_with_paths(daemon: Daemon) -> None:
    sid = chat(daemon, turns=1)
    before = snapshot(daemon, sid)
    bad = [
        ([user("ok"), {"role": "tool", "content": "text in a tool message"}], "$.messages[1].content"),
        ([{"role": "user", "content": [tool_use("u1")]}], "$.messages[0].content[0]"),
        ([{"role": "system", "content": [tool_result("u1")]}], "$.messages[0].content[0]"),
        ([tool(tool_result("nobody-asked"))], "$.messages[0]"),
        ([assistant(tool_use("a1")), user("too early")], "$.messages[1]"),
        ([assistant(tool_use("a1")), assistant("too early")], "$.messages[1]"),
        ([assistant(tool_use("a1")), tool(tool_result("a1"), tool_result("a1"))], "$.messages[1]"),
    ]
    for i, (messages, path) in enumerate(bad):
        err = daemon.error("session/append", {"session_id": sid, "messages": messages, "operation_id": f"bad-{i}"})
        assert_invalid(err, path)
    assert snapshot(daemon, sid) == before
    # a system message between a call and its result is allowed
    ok = append(daemon, sid, [assistant("calling", tool_use("a1")), system("fyi"), tool(tool_result("a1", "r"))], "good")
    assert ok["status"] == "appended" and ok["message_count"] == 5


def test_appended_tool_calls_are_pending_until_answered(daemon: Daemon) -> None:
    sid = chat(daemon, {"text": "one"}, {"text": "after the plugin's tool"}, turns=1)
    append(daemon, sid, [assistant(tool_use("p1", "read_file", {"path": "x"}))], "calls")
    err = daemon.error("turn/start", {"session_id": sid, "prompt": "go on"})
    assert pending_ids(err) == ["p1"]
    pending = err["data"]["details"]["pending_tool_calls"][0]
    assert pending["name"] == "read_file" and pending["arguments"] == {"path": "x"}
    append(daemon, sid, [tool(tool_result("p1", "contents"))], "answers")
    assert run(daemon, sid, "go on")["text"] == "after the plugin's tool"


# ---------------------------------------------------------------- session/revisions and session/revision


def test_revisions_pages_newest_first(daemon: Daemon) -> None:
    sid = chat(daemon)
    assert daemon.call("session/revisions", {"session_id": sid}) == {
        "session_id": sid, "head_revision": head(daemon, sid), "entries": [], "has_more": False,
    }
    made = [rewrite(daemon, sid, 1, 2, [assistant(f"v{i}")])["revision"] for i in range(3)]
    first = daemon.call("session/revisions", {"session_id": sid, "limit": 2})
    assert first["head_revision"] == made[-1] and first["has_more"] is True
    assert [e["revision"] for e in first["entries"]] == [made[2], made[1]]
    rest = daemon.call("session/revisions", {"session_id": sid, "offset": 2, "limit": 2})
    assert [e["revision"] for e in rest["entries"]] == [made[0]] and rest["has_more"] is False
    run(daemon, sid, "a turn is not logged")
    after = daemon.call("session/revisions", {"session_id": sid})
    assert after["head_revision"] == head(daemon, sid) != made[-1] and len(after["entries"]) == 3
    assert_error(daemon.error("session/revisions", {"session_id": "nope"}), SESSION_NOT_FOUND, "SESSION_NOT_FOUND")
    assert_invalid(daemon.error("session/revisions", {"session_id": sid, "offset": -1}), "$.offset")


def test_revision_pages_of_retained_revisions(daemon: Daemon) -> None:
    sid = chat(daemon, turns=3)
    old = history(daemon, sid)
    r0 = head(daemon, sid)
    r1 = rewrite(daemon, sid, 2, 6, [user("instead")])["revision"]
    page = daemon.call("session/revision", {"session_id": sid, "revision": r0, "offset": 1, "limit": 2})
    assert page["revision"] == r0 and page["head_revision"] == r1 and page["session_id"] == sid
    assert page["message_count"] == 6 and page["offset"] == 1 and page["limit"] == 2 and page["has_more"] is True
    assert cores(page["messages"]) == cores(old[1:3]) and [m["index"] for m in page["messages"]] == [1, 2]
    assert cores(revision_messages(daemon, sid, r0)) == cores(old)
    assert cores(revision_messages(daemon, sid, r1)) == cores(history(daemon, sid))
    tail = daemon.call("session/revision", {"session_id": sid, "revision": r0, "offset": 50})
    assert tail["messages"] == [] and tail["has_more"] is False


def test_revision_not_retained(daemon: Daemon) -> None:
    sid = chat(daemon, turns=1)
    passed = head(daemon, sid)
    run(daemon, sid, "moves on")  # a turn's revision is not in the log once the head moved
    rewrite(daemon, sid, 0, 1, [user("edited")])
    for revision in (passed, "sha256:" + "ab" * 32):
        err = daemon.error("session/revision", {"session_id": sid, "revision": revision})
        assert_error(err, SESSION_ERROR, "SESSION_ERROR")
        assert err["data"]["details"]["reason"] == "revision_not_retained", err
    other = chat(daemon, turns=1)  # another session's revision is not this one's
    err = daemon.error("session/revision", {"session_id": sid, "revision": head(daemon, other)})
    assert err["data"]["details"]["reason"] == "revision_not_retained", err
    err = daemon.error("session/revision", {"session_id": "nope", "revision": passed})
    assert_error(err, SESSION_NOT_FOUND, "SESSION_NOT_FOUND")


def test_pages_of_a_pieced_transcript_are_exact_at_every_offset(daemon: Daemon) -> None:
    """A fork, rewrites (replace, insert, delete), an append and a turn make a transcript of
    many pieces: every page of the head and of each logged revision is the right slice."""
    sid = chat(daemon, turns=6)
    model = texts(history(daemon, sid))[:10]
    fid = fork(daemon, sid, message_index=10)["session_id"]
    at = {head(daemon, fid): list(model)}
    for start, end, replacement in [
        (3, 5, [user("r1"), {"role": "assistant", "content": "r2"}, user("r3")]),
        (8, 8, [system("inserted")]),
        (1, 2, []),
        (0, 1, [user("first")]),
    ]:
        r = rewrite(daemon, fid, start, end, replacement)
        model[start:end] = [m["content"] for m in replacement]  # all plain strings here
        at[r["revision"]] = list(model)
    append(daemon, fid, [user("appended"), assistant("too")], "pieces")
    run(daemon, fid, "last")
    model += ["appended", "too", "last", "echo: last"]
    full = history(daemon, fid)
    assert texts(full) == model
    for offset in range(len(model) + 1):
        for limit in (1, 3):
            page = daemon.call("session/history", {"session_id": fid, "offset": offset, "limit": limit})
            assert page["messages"] == full[offset:offset + limit], (offset, limit)
            assert page["has_more"] is (offset + limit < len(model)) and page["message_count"] == len(model)
    assert {e["revision"] for e in log(daemon, fid)} == set(at)
    for revision, expected in at.items():
        whole = revision_messages(daemon, sid=fid, revision=revision)
        assert texts(whole) == expected and [m["index"] for m in whole] == list(range(len(expected)))
        for offset in range(0, len(expected) + 1, 2):
            page = daemon.call("session/revision", {"session_id": fid, "revision": revision, "offset": offset, "limit": 3})
            assert page["messages"] == whole[offset:offset + 3], (revision, offset)
            assert page["has_more"] is (offset + 3 < len(expected))


# ---------------------------------------------------------------- session/restore


def test_rewrite_then_restore_then_fork_of_the_restored_head(daemon: Daemon) -> None:
    sid = chat(daemon)
    original = history(daemon, sid)
    a = head(daemon, sid)
    b = rewrite(daemon, sid, 2, 4, [user("rewritten")])
    assert b["message_count"] == 3
    back = restore(daemon, sid, a, reason=reason("undo", "oops"), actor="bob")
    assert_result_shape(back, sid)
    assert back == {"session_id": sid, "parent_revision": b["revision"], "revision": a, "message_count": 4}
    assert head(daemon, sid) == a and cores(history(daemon, sid)) == cores(original)
    entries = log(daemon, sid)
    assert [(e["kind"], e["revision"], e["parent_revision"]) for e in entries] == [
        ("restore", a, b["revision"]), ("rewrite", b["revision"], a),
    ]
    assert entries[0]["reason"] == {"kind": "undo", "note": "oops"} and entries[0]["actor"] == "bob"
    assert entries[0]["message_count"] == 4

    f = fork(daemon, sid)
    assert f["revision"] == a and f["forked_at"] == {"message_index": 4, "revision": a}
    assert cores(history(daemon, f["session_id"])) == cores(original)
    assert [e["kind"] for e in log(daemon, f["session_id"])] == ["fork"]
    assert run(daemon, f["session_id"], "on")["message_count"] == 6

    redo = restore(daemon, sid, b["revision"])
    assert redo["revision"] == b["revision"] and texts(history(daemon, sid))[2] == "rewritten"
    assert [e["kind"] for e in log(daemon, sid)] == ["restore", "restore", "rewrite"]
    assert_log_readable(daemon, sid)


def test_restore_errors_write_nothing(daemon: Daemon) -> None:
    sid = chat(daemon)
    a = head(daemon, sid)
    b = rewrite(daemon, sid, 1, 2, [assistant("b")])["revision"]
    before = snapshot(daemon, sid)
    err = daemon.error("session/restore", {"session_id": sid, "revision": b, "reason": reason()})
    assert_error(err, SESSION_ERROR, "SESSION_ERROR")
    assert err["data"]["details"]["reason"] == "revision_is_head", err
    err = daemon.error("session/restore", {"session_id": sid, "revision": "sha256:" + "cd" * 32, "reason": reason()})
    assert err["data"]["details"]["reason"] == "revision_not_retained", err
    err = daemon.error("session/restore", {"session_id": sid, "revision": a, "reason": reason(), "expected_revision": a})
    assert_error(err, REVISION_CONFLICT, "SESSION_REVISION_CONFLICT")
    assert err["data"]["session_id"] == sid and err["data"]["current_revision"] == b
    assert_invalid(daemon.error("session/restore", {"session_id": sid, "revision": a}), "$.reason")
    err = daemon.error("session/restore", {"session_id": "nope", "revision": a, "reason": reason()})
    assert_error(err, SESSION_NOT_FOUND, "SESSION_NOT_FOUND")
    assert snapshot(daemon, sid) == before
    assert restore(daemon, sid, a, expected_revision=b)["revision"] == a


# ---------------------------------------------------------------- session/append


def test_append_adds_messages_without_running_the_model(daemon: Daemon) -> None:
    sid = chat(daemon, turns=1)
    before = history(daemon, sid)
    r0 = head(daemon, sid)
    events_before = stored(daemon, sid)
    r = append(daemon, sid, [user("from a plugin"), assistant("a canned answer")], "op-1")
    assert set(r) >= {"status", "message_ids", "revision", "message_count"}
    assert r["status"] == "appended" and r["message_count"] == 4 and REVISION.match(r["revision"]) and r["revision"] != r0
    msgs = history(daemon, sid)
    assert cores(msgs[:2]) == cores(before)
    assert ids(msgs[2:]) == r["message_ids"] and len(set(r["message_ids"])) == 2
    assert [(m["role"], m["content"]) for m in msgs[2:]] == [("user", [text("from a plugin")]), ("assistant", [text("a canned answer")])]
    assert head(daemon, sid) == r["revision"]
    new_events = stored(daemon, sid)[len(events_before):]
    assert [e["event"]["type"] for e in new_events] == ["transcript_changed"]  # no turn ran
    assert log(daemon, sid) == []  # appends move the head without a log entry


def test_append_operation_id_makes_retries_duplicates(daemon: Daemon) -> None:
    sid = chat(daemon, turns=1)
    messages = [user("once")]
    first = append(daemon, sid, messages, "op-x")
    again = append(daemon, sid, messages, "op-x")
    assert again["status"] == "duplicate" and again["message_ids"] == first["message_ids"]
    run(daemon, sid, "the head moves on")
    later = append(daemon, sid, messages, "op-x")
    assert later["status"] == "duplicate" and later["message_ids"] == first["message_ids"]
    msgs = history(daemon, sid)
    assert len(msgs) == 5 and texts(msgs).count("once") == 1
    before = snapshot(daemon, sid)
    err = daemon.error("session/append", {"session_id": sid, "messages": [user("other")], "operation_id": "op-x"})
    assert_error(err, IDEMPOTENCY_CONFLICT, "IDEMPOTENCY_CONFLICT")
    assert err["data"]["key"] == "op-x"
    assert snapshot(daemon, sid) == before


def test_append_requires_ancestor(daemon: Daemon) -> None:
    sid = chat(daemon)
    msgs = history(daemon, sid)
    middle = msgs[1]["message_id"]
    ok = append(daemon, sid, [user("guarded")], "g1", requires_ancestor=middle)  # not the last message: fine
    assert ok["status"] == "appended"
    run(daemon, sid, "head advances")
    assert append(daemon, sid, [user("still fine")], "g2", requires_ancestor=middle)["status"] == "appended"
    rewrite(daemon, sid, 1, 2, [assistant("replaced")])  # the ancestor leaves the transcript
    before = snapshot(daemon, sid)
    for i, ancestor in enumerate([middle, "never-in-this-session"]):
        err = daemon.error("session/append", {
            "session_id": sid, "messages": [user("stale")], "operation_id": f"g-stale-{i}", "requires_ancestor": ancestor,
        })
        assert_error(err, STALE_BRANCH, "SESSION_STALE_BRANCH")
        assert err["data"]["session_id"] == sid and err["data"]["current_revision"] == before["revision"]
    assert snapshot(daemon, sid) == before
    # restoring the revision that had it makes the same ancestor acceptable again
    restore(daemon, sid, log(daemon, sid)[0]["parent_revision"])
    assert append(daemon, sid, [user("back")], "g3", requires_ancestor=middle)["status"] == "appended"


def test_append_errors(daemon: Daemon) -> None:
    err = daemon.error("session/append", {"session_id": "nope", "messages": [user("x")], "operation_id": "o"})
    assert_error(err, SESSION_NOT_FOUND, "SESSION_NOT_FOUND")
    sid = chat(daemon, turns=1)
    before = snapshot(daemon, sid)
    assert_invalid(daemon.error("session/append", {"session_id": sid, "messages": [user("x")]}), "$.operation_id")
    assert_invalid(daemon.error("session/append", {"session_id": sid, "operation_id": "o"}), "$.messages")
    assert_invalid(daemon.error("session/append", {
        "session_id": sid, "messages": [{"role": "user", "content": "x", "extra": 1}], "operation_id": "o",
    }), "$.messages[0]")
    assert snapshot(daemon, sid) == before


# ---------------------------------------------------------------- system context through edits


def test_system_context_keeps_source_and_key_through_fork_rewrite_and_restore(daemon: Daemon) -> None:
    sid = chat(daemon, turns=1)
    ctx = {"session_id": sid, "text": "cwd is /src", "source": "editor", "idempotency_key": "cwd"}
    assert daemon.call("session/append_system_context", ctx)["status"] == "applied"
    run(daemon, sid, "after the context")  # [u, a, system, u, a]

    def key_state(target: str) -> tuple[str, int]:
        same = daemon.call("session/append_system_context", {**ctx, "session_id": target})["status"]
        err = daemon.error("session/append_system_context", {**ctx, "session_id": target, "text": "cwd is /elsewhere"})
        return same, err["code"]

    fid = fork(daemon, sid)["session_id"]
    system_msgs = [m for m in history(daemon, fid) if m["role"] == "system"]
    assert [(m["source"], texts([m])[0]) for m in system_msgs] == [("editor", "cwd is /src")]
    assert key_state(fid) == ("duplicate", SYSTEM_CONTEXT_CONFLICT)

    rewrite(daemon, sid, 0, 2, [user("edited"), assistant("elsewhere")])  # the context message stays
    kept = history(daemon, sid)[2]
    assert kept["role"] == "system" and kept["source"] == "editor"
    assert key_state(sid) == ("duplicate", SYSTEM_CONTEXT_CONFLICT)

    with_ctx = head(daemon, sid)
    removed = rewrite(daemon, sid, 2, 3, [])  # the rewrite removes it: the key is free
    assert "cwd is /src" not in texts(history(daemon, sid))
    moved = daemon.call("session/append_system_context", {**ctx, "text": "cwd is /elsewhere"})
    assert moved["status"] == "applied"
    assert history(daemon, sid)[-1]["source"] == "editor"
    assert key_state(fid) == ("duplicate", SYSTEM_CONTEXT_CONFLICT)  # the fork still has it

    restore(daemon, sid, with_ctx)  # the restored revision has "cwd is /src" again: the key is taken by it
    assert removed["parent_revision"] == with_ctx
    restored = [m for m in history(daemon, sid) if m["role"] == "system"]
    assert [(m["source"], texts([m])[0]) for m in restored] == [("editor", "cwd is /src")]
    assert key_state(sid) == ("duplicate", SYSTEM_CONTEXT_CONFLICT)


# ---------------------------------------------------------------- events


def test_every_edit_emits_one_transcript_changed_event(spawn: Spawn) -> None:
    a, watcher = spawn(), spawn()
    sid = chat(a)
    r0 = head(a, sid)
    watcher.call("session/subscribe", {"session_id": sid})
    seen = len(stored(a, sid))
    w = rewrite(a, sid, 1, 2, [assistant("w")])
    r = restore(a, sid, r0)
    p = append(a, sid, [user("appended")], "ev-1")
    append(a, sid, [user("appended")], "ev-1")  # a duplicate changes nothing and emits nothing
    events = stored(a, sid)
    new = events[seen:]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"]["type"] for e in new] == ["transcript_changed"] * 3
    bodies = [e["event"] for e in new]
    assert [(b["kind"], b["revision"], b["message_count"]) for b in bodies] == [
        ("rewrite", w["revision"], 4), ("restore", r["revision"], 4), ("append", p["revision"], 5),
    ]
    assert bodies[0]["parent_revision"] == r0 and bodies[1]["parent_revision"] == w["revision"]
    live = watcher.wait_for(lambda: len(watcher.events(sid)) >= 3 and watcher.events(sid), what="live transcript_changed")
    assert [{k: e[k] for k in ("seq", "event")} for e in live] == [{k: e[k] for k in ("seq", "event")} for e in new]
    f = fork(a, sid)
    [forked] = changes(a, f["session_id"])
    assert (forked["type"], forked["kind"], forked["revision"], forked["message_count"]) == (
        "transcript_changed", "fork", f["revision"], 5)
    assert len(stored(a, sid)) == len(events)  # the fork's event is in the new session only


# ---------------------------------------------------------------- two daemons, crashes


def test_concurrent_guarded_rewrites_from_two_daemons_exactly_one_wins(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = chat(a)
    for round_ in range(4):
        base = head(b, sid)
        params = {"session_id": sid, "start": 1, "end": 2, "reason": reason(), "expected_revision": base}
        ia = a.request("session/rewrite", {**params, "replacement": [assistant(f"a{round_}")]})
        ib = b.request("session/rewrite", {**params, "replacement": [assistant(f"b{round_}")]})
        ra, rb = a.response(ia), b.response(ib)
        winners = [(name, r) for name, r in (("a", ra), ("b", rb)) if "result" in r]
        losers = [r for r in (ra, rb) if "error" in r]
        assert len(winners) == 1 and len(losers) == 1, (ra, rb)
        name, won = winners[0]
        assert won["result"]["parent_revision"] == base
        assert_error(losers[0]["error"], REVISION_CONFLICT, "SESSION_REVISION_CONFLICT")
        assert losers[0]["error"]["data"]["current_revision"] == won["result"]["revision"]
        for d in (a, b):
            assert head(d, sid) == won["result"]["revision"]
            assert texts(history(d, sid))[1] == f"{name}{round_}"
    entries = log(b, sid)
    assert len(entries) == 4 and all(e["kind"] == "rewrite" for e in entries)
    assert [e["parent_revision"] for e in entries[:-1]] == [e["revision"] for e in entries[1:]]


def test_the_same_append_or_fork_retried_on_two_daemons_at_once_happens_once(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = chat(a)
    params = {"session_id": sid, "messages": [user("from two windows")], "operation_id": "both"}
    ia, ib = a.request("session/append", params), b.request("session/append", params)
    ra, rb = a.response(ia), b.response(ib)
    assert "result" in ra and "result" in rb, (ra, rb)
    assert sorted([ra["result"]["status"], rb["result"]["status"]]) == ["appended", "duplicate"]
    assert ra["result"]["message_ids"] == rb["result"]["message_ids"]
    assert texts(history(a, sid)).count("from two windows") == 1
    fork_params = {"session_id": sid, "message_index": 2, "idempotency_key": "fork-both"}
    ia, ib = a.request("session/fork", fork_params), b.request("session/fork", fork_params)
    ra, rb = a.response(ia), b.response(ib)
    assert "result" in ra and "result" in rb, (ra, rb)
    assert ra["result"] == rb["result"]
    assert len(a.call("session/list", {})["sessions"]) == 2


def test_sigkill_during_a_large_rewrite_leaves_all_or_nothing(spawn: Spawn) -> None:
    """Kill the daemon while it handles a 2 MB rewrite; after a restart the head, history,
    revision log and events all show the old transcript or all show the new one. The kill
    times home in on the commit (bisection between "still old" and "already new")."""

    def big(tag: str) -> list[Msg]:
        return [user(f"{tag}{i:05d}" + "x" * 700) for i in range(3000)]

    d = spawn()
    sid = chat(d)
    probe = chat(d, turns=1)
    started = time.monotonic()
    rewrite(d, probe, 0, 2, big("probe"))
    took = time.monotonic() - started
    d.stop()
    checker = spawn()
    early, late = 0.0, took * 1.5
    for n in range(6):
        old = {"revision": head(checker, sid), "messages": history(checker, sid), "log": log(checker, sid),
               "changes": changes(checker, sid)}
        victim = spawn()
        victim.call("session/read", {"session_id": sid})  # started and serving
        replacement = big(f"t{n}-")
        victim.request("session/rewrite", {
            "session_id": sid, "start": 0, "end": len(old["messages"]), "replacement": replacement,
            "reason": reason("bulk"), "expected_revision": old["revision"],
        })
        delay = (early + late) / 2
        time.sleep(delay)
        victim.kill()
        checker = spawn()  # a fresh daemon on the file after the crash
        now = head(checker, sid)
        msgs = history(checker, sid)
        entries = log(checker, sid)
        if now == old["revision"]:  # nothing of the edit is there ...
            early = delay
            assert cores(msgs) == cores(old["messages"]) and entries == old["log"]
            assert changes(checker, sid) == old["changes"]
        else:  # ... or all of it
            late = delay
            assert [(m["role"], m["content"]) for m in msgs] == [("user", [text(m["content"])]) for m in replacement]
            assert entries[1:] == old["log"] and entries[0]["kind"] == "rewrite"
            assert (entries[0]["revision"], entries[0]["parent_revision"]) == (now, old["revision"])
            assert entries[0]["message_count"] == len(replacement)
            [change] = changes(checker, sid)[len(old["changes"]):]
            assert (change["kind"], change["revision"], change["message_count"]) == ("rewrite", now, len(replacement))
        assert_log_readable(checker, sid)
    # the file stays editable
    assert rewrite(checker, sid, 0, 1, [user("afterwards")], expected_revision=head(checker, sid))["message_count"] >= 2


# ---------------------------------------------------------------- migration from schema v3


@pytest.fixture(scope="module")
def pre_transcripts_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The daemon as of the last commit before revisioned transcripts, extracted from git."""
    root = daemon_client.ROOT
    if not (root / ".git").exists():
        pytest.skip("not a git checkout: the previous schema's daemon cannot be extracted")
    archive = subprocess.run(["git", "archive", PRE_TRANSCRIPTS_COMMIT], cwd=root, capture_output=True, timeout=60)
    assert archive.returncode == 0, archive.stderr.decode()
    target = tmp_path_factory.mktemp("warren-a2c7c22")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture
def spawn_old(spawn: Spawn, pre_transcripts_tree: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawn]:
    """Like ``spawn``, but runs the pre-transcripts daemon (same default database file)."""

    def start(*args: str, **kwargs: Any) -> Daemon:
        with monkeypatch.context() as m:
            m.setattr(daemon_client, "ROOT", pre_transcripts_tree)  # its cwd and PYTHONPATH
            m.setattr(daemon_client, "DAEMON_MODULE", "daemon")  # it predates the warren namespace
            return spawn(*args, **kwargs)

    yield start


def schema_version(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


def test_a_previous_schema_database_migrates_with_its_messages(spawn: Spawn, spawn_old: Spawn, tmp_path: Path) -> None:
    old = spawn_old()
    assert "session/fork" not in old.call("initialize", {})["capabilities"]["methods"]  # really the old daemon
    steps = script(
        {"text": "first answer"},
        {"tool_calls": [{"name": "lookup", "arguments": {"q": "w"}, "id": "m1"}]},
        {"reasoning": "thinking", "text": "after the tool"},
        {"text": "after migration"},
    )
    sid = old.call("session/create", {
        "prompt": "hello", "provider": "scripted", "system_prompt": "be brief", "labels": {"m": "1"}, "provider_params": steps,
    })["session_id"]
    assert run(old, sid, "use a tool")["stop_reason"] == "tool_use"
    old.call("session/stage_tool_results", {"session_id": sid, "results": [staged("m1", "w is 42")]})
    assert run(old, sid, "")["text"] == "after the tool"
    ctx = {"session_id": sid, "text": "cwd is /src", "source": "editor", "idempotency_key": "cwd"}
    assert old.call("session/append_system_context", ctx)["status"] == "applied"
    empty = deferred(old)
    before = old.call("session/history", {"session_id": sid, "limit": 1000})["messages"]
    assert [m["role"] for m in before] == ["user", "assistant", "user", "assistant", "tool", "assistant", "system"]
    old.stop()
    db = tmp_path / "warren.db"
    old_version = schema_version(db)

    new = spawn()
    after = history(new, sid)
    assert schema_version(db) > old_version
    assert len(after) == len(before)
    for was, now in zip(before, after):
        assert {k: now.get(k) for k in was} == was  # content, roles, times, turn ids, source: intact
    assert all(isinstance(m["message_id"], str) and m["message_id"] for m in after)
    assert len(set(ids(after))) == len(after)
    state = read(new, sid)
    assert REVISION.match(state["revision"]) and state["message_count"] == 7 and state["labels"] == {"m": "1"}
    assert new.call("session/revisions", {"session_id": sid})["head_revision"] == state["revision"]
    assert read(new, empty)["revision"] == read(new, deferred(new))["revision"]  # the empty transcript's

    assert new.call("session/append_system_context", ctx)["status"] == "duplicate"
    r = run(new, sid, "and now")
    assert r["text"] == "after migration" and r["message_count"] == 9
    grown = history(new, sid)
    assert cores(grown[:7]) == cores(after)
    f = fork(new, sid, message_index=5)
    assert cores(history(new, f["session_id"])) == cores(after[:5])
    assert run(new, empty, "hi")["text"] == "echo: hi"
