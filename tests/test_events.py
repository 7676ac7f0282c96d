"""Durable events (PROTOCOL.md part two, section 8) through the real daemon over pipes:
the ``session/event`` envelope and its ``seq``, ``session/events``, ``session/subscribe`` /
``session/unsubscribe`` (one daemon and two daemons on one file), delta retention,
coalescing for a slow reader, idempotency keys, and what crashes and vanishing clients do.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

from tests.daemon_client import Daemon, script

Event = dict[str, Any]
Spawn = Callable[..., Daemon]

ENVELOPE = {"session_id", "turn_id", "seq", "timestamp_ms", "event"}
END_TYPES = {"turn_completed", "turn_failed"}
DELTA_TYPES = {"text_delta", "reasoning_delta"}
INVALID_PARAMS, SESSION_NOT_FOUND, IDEMPOTENCY_CONFLICT = -32602, -32001, -32015
# A turn that streams for about two seconds, for anything that must happen mid-turn.
SLOW = {"text": "s" * 40, "chunk_chars": 1, "delay_ms": 50}


# ---------------------------------------------------------------- helpers


def deferred(d: Daemon, *steps: dict[str, Any], **params: Any) -> str:
    """A scripted session with no turn yet; its model calls answer ``steps`` in order."""
    if steps:
        params["provider_params"] = script(*steps)
    return d.call("session/create", {"initial_turn": "defer", "provider": "scripted", **params})["session_id"]


def run(d: Daemon, sid: str, prompt: str = "q", **params: Any) -> dict[str, Any]:
    return d.call("turn/start", {"session_id": sid, "prompt": prompt, **params})


def seqs(events: Iterable[Event]) -> list[int]:
    return [e["seq"] for e in events]


def types(events: Iterable[Event]) -> list[str]:
    return [e["event"]["type"] for e in events]


def of_turn(events: Iterable[Event], turn_id: str) -> list[Event]:
    return [e for e in events if e["turn_id"] == turn_id]


def text_of(events: Iterable[Event], kind: str = "text_delta") -> str:
    return "".join(e["event"]["delta"] for e in events if e["event"]["type"] == kind)


def envelope(e: Event) -> Event:
    """The fields every copy of one event shares, whichever way it was delivered."""
    return {k: e[k] for k in ENVELOPE}


def assert_consecutive(values: list[int], first: int | None = None) -> None:
    assert values, "no events"
    start = values[0] if first is None else first
    assert values == list(range(start, start + len(values))), values


def assert_turns_end_last(events: list[Event]) -> None:
    """Each turn has exactly one end event, and nothing of the turn comes after it."""
    for turn_id in {e["turn_id"] for e in events}:
        kinds = types(of_turn(events, turn_id))
        assert sum(k in END_TYPES for k in kinds) == 1 and kinds[-1] in END_TYPES, (turn_id, kinds)


def page(d: Daemon, sid: str, **params: Any) -> dict[str, Any]:
    return d.call("session/events", {"session_id": sid, **params})


def stored(d: Daemon, sid: str, limit: int = 1000, **params: Any) -> list[Event]:
    """Every stored event after ``after_seq`` (default 0), walking pages the documented way."""
    events: list[Event] = []
    after = params.pop("after_seq", 0)
    for _ in range(10_000):
        p = page(d, sid, after_seq=after, limit=limit, **params)
        events += p["events"]
        if not p["has_more"]:
            return events
        after = p["next_seq"] - 1
    raise AssertionError("session/events never said has_more: false")


def messages(d: Daemon) -> list[dict[str, Any]]:
    """Every line the daemon wrote so far, in stdout order."""
    return [json.loads(line) for line in list(d.lines)]


def response_index(d: Daemon, id_: Any) -> int:
    return next(i for i, m in enumerate(messages(d)) if isinstance(m, dict) and m.get("id") == id_ and "method" not in m)


def subscribe(d: Daemon, sid: str, **params: Any) -> tuple[dict[str, Any], int]:
    """``session/subscribe``; returns its result and the request id (for stdout order)."""
    id_ = d.request("session/subscribe", {"session_id": sid, **params})
    reply = d.response(id_)
    assert "result" in reply, reply
    return reply["result"], id_


def wait_turn_end(d: Daemon, sid: str, turn_id: str | None = None, timeout: float = 20.0) -> list[Event]:
    """The session's events as ``d`` received them, once one of them ends a turn (``turn_id``'s)."""
    def done() -> list[Event] | None:
        got = d.events(sid)
        ends = [e for e in got if e["event"]["type"] in END_TYPES and turn_id in (None, e["turn_id"])]
        return got if ends else None

    return d.wait_for(done, timeout, f"end of turn {turn_id or ''} in {sid}")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rss_mb(d: Daemon) -> float:
    with open(f"/proc/{d.proc.pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def assert_error(err: dict[str, Any], code: int, data_code: str) -> None:
    assert err["code"] == code and err["data"]["code"] == data_code, err


# ---------------------------------------------------------------- the session/event envelope


def test_live_event_params_are_exactly_the_envelope(daemon: Daemon) -> None:
    before = int(time.time() * 1000)
    sid = deferred(daemon, {"reasoning": "hmm", "text": "hello", "chunk_chars": 2})
    r = run(daemon, sid)
    after = int(time.time() * 1000)
    events = daemon.events(sid)
    assert types(events)[0] == "turn_started" and types(events)[-1] == "turn_completed"
    for e in events:
        assert set(e) == ENVELOPE, e  # no replay, no seq_first on an ordinary live event
        assert e["session_id"] == sid and e["turn_id"] == r["turn_id"]
        assert isinstance(e["seq"], int) and before - 1000 <= e["timestamp_ms"] <= after + 1000
    assert_consecutive(seqs(events), first=1)
    assert [e["timestamp_ms"] for e in events] == sorted(e["timestamp_ms"] for e in events)


def test_seq_continues_across_turns_daemons_failures_and_a_restart(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, {"text": "one"}, {"error": {"kind": "auth"}}, {"text": "three"}, {"text": "four"})
    run(a, sid)
    assert b.error("turn/start", {"session_id": sid, "prompt": "fails"})["data"]["code"] == "PROVIDER_ERROR"
    run(a, sid)
    a.stop()
    c = spawn()
    run(c, sid)
    live = sorted(a.events(sid) + b.events(sid) + c.events(sid), key=lambda e: e["seq"])
    assert_consecutive(seqs(live), first=1)
    assert_turns_end_last(live)
    assert [k for k in types(live) if k in END_TYPES] == ["turn_completed", "turn_failed", "turn_completed", "turn_completed"]
    assert stored(c, sid) == live


def test_budget_warning_with_slow_reader_never_repeats_a_seq_or_follows_turn_end(daemon: Daemon) -> None:
    """Regression: the 80 % timer of max_turn_duration_ms raced the turn's own events while
    the client was slow, repeating a seq and sending budget_warning after turn_completed.
    The first turn streams past 80 % of the limit; the others end right around it."""
    big = "b" * 8192  # a few of these lines fill the pipe
    paced = [(18, 25), (16, 24), (16, 25), (16, 26)]  # (deltas, delay_ms): ~450 ms, then ~400 ms
    steps = [{"text": big * n, "chunk_chars": len(big), "delay_ms": ms} for n, ms in paced]
    sid = deferred(daemon, *steps, budget={"max_turn_duration_ms": 500})
    turn_ids = []
    for _ in steps:
        daemon.pause_reading()
        id_ = daemon.request("turn/start", {"session_id": sid, "prompt": "q"})
        time.sleep(0.8)
        daemon.resume_reading()
        turn_ids.append(daemon.response(id_)["result"]["turn_id"])
    live = daemon.events(sid)
    assert_consecutive(seqs(live), first=1)
    assert_turns_end_last(live)
    assert "budget_warning" in types(of_turn(live, turn_ids[0]))
    assert stored(daemon, sid) == live


# ---------------------------------------------------------------- session/events


def test_stored_events_equal_the_live_ones(daemon: Daemon) -> None:
    sid = deferred(
        daemon,
        {"reasoning": "let me see", "text": "answer", "chunk_chars": 3, "usage": {"input_tokens": 5, "output_tokens": 2}},
        {"tool_calls": [{"name": "lookup", "arguments": {"q": 1}, "id": "c1"}]},
        {"error": {"kind": "overloaded", "retry_after_ms": 1}},
        {"text": "after a retry"},
    )
    run(daemon, sid, "first")
    assert run(daemon, sid, "second")["stop_reason"] == "tool_use"
    daemon.call("session/stage_tool_results", {"session_id": sid, "results": [{"tool_use_id": "c1", "content": "42", "is_error": False}]})
    run(daemon, sid, "")
    live = daemon.events(sid)
    assert {"reasoning_delta", "tool_call_requested", "retrying", "usage"} <= set(types(live))
    assert page(daemon, sid)["events"] == live
    assert stored(daemon, sid, limit=1) == live


def test_events_pages_walk_every_event_once_and_next_seq_continues(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "abcdefgh", "chunk_chars": 1})
    run(daemon, sid)
    run(daemon, sid)
    head = daemon.events(sid)[-1]["seq"]
    after, walked = 0, []
    while True:
        p = page(daemon, sid, after_seq=after, limit=4)
        assert p["session_id"] == sid and "gap" not in p
        assert seqs(p["events"]) == list(range(after + 1, min(after + 4, head) + 1))
        assert p["next_seq"] == p["events"][-1]["seq"] + 1
        assert p["has_more"] is (p["next_seq"] <= head)
        walked += p["events"]
        if not p["has_more"]:
            break
        after = p["next_seq"] - 1
    assert walked == daemon.events(sid)
    assert page(daemon, sid, after_seq=head - 2)["events"] == daemon.events(sid)[-2:]
    for past in (head, head + 100):
        assert page(daemon, sid, after_seq=past) == {"session_id": sid, "events": [], "next_seq": head + 1, "has_more": False}


def test_events_default_and_max_page_is_1000(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "x" * 1100, "chunk_chars": 1})
    run(daemon, sid)
    total = 1100 + 3  # turn_started, the deltas, usage, turn_completed
    default = page(daemon, sid)
    assert len(default["events"]) == 1000 and default["has_more"] is True and default["next_seq"] == 1001
    assert page(daemon, sid, limit=1000) == default
    rest = page(daemon, sid, after_seq=1000)
    assert len(rest["events"]) == total - 1000 and rest["has_more"] is False


def test_events_types_filter(daemon: Daemon) -> None:
    sid = deferred(daemon, {"reasoning": "r", "text": "abc", "chunk_chars": 1})
    turn_ids = [run(daemon, sid)["turn_id"] for _ in range(3)]
    live = daemon.events(sid)
    completed = page(daemon, sid, types=["turn_completed"])
    assert completed["events"] == [e for e in live if e["event"]["type"] == "turn_completed"]
    assert [e["turn_id"] for e in completed["events"]] == turn_ids and completed["has_more"] is False
    wanted = {"text_delta", "usage"}
    assert stored(daemon, sid, limit=2, types=sorted(wanted)) == [e for e in live if e["event"]["type"] in wanted]


def test_events_bad_params_name_the_field(daemon: Daemon) -> None:
    sid = deferred(daemon)
    run(daemon, sid)
    cases = [
        ({"after_seq": -1}, "$.after_seq"),
        ({"after_seq": 1.5}, "$.after_seq"),
        ({"after_seq": "3"}, "$.after_seq"),
        ({"limit": 0}, "$.limit"),
        ({"limit": 1001}, "$.limit"),
        ({"types": ["not_an_event"]}, "$.types[0]"),
        ({"types": ["text_delta", "bogus"]}, "$.types[1]"),
    ]
    subscribe_cases = [(params, path) for params, path in cases if "limit" not in params]
    for method, params, path in [("session/events", *c) for c in cases] + [("session/subscribe", *c) for c in subscribe_cases]:
        err = daemon.error(method, {"session_id": sid, **params})
        assert_error(err, INVALID_PARAMS, "INVALID_PARAMS")
        assert path in [e["path"] for e in err["data"]["errors"]], (method, params, err)
    err = daemon.error("session/unsubscribe", {})
    assert_error(err, INVALID_PARAMS, "INVALID_PARAMS")
    assert "$.subscription_id" in [e["path"] for e in err["data"]["errors"]], err


def test_unknown_session_is_not_found_for_events_and_subscribe(daemon: Daemon) -> None:
    for method in ("session/events", "session/subscribe"):
        err = daemon.error(method, {"session_id": "no-such-session"})
        assert_error(err, SESSION_NOT_FOUND, "SESSION_NOT_FOUND")
        assert err["data"]["session_id"] == "no-such-session"


# ---------------------------------------------------------------- session/subscribe on one connection


def test_subscribe_replays_before_its_response_then_streams_without_duplicates(daemon: Daemon) -> None:
    sid = deferred(daemon, {"reasoning": "r", "text": "abcdef", "chunk_chars": 2})
    run(daemon, sid)
    run(daemon, sid)
    before = daemon.events(sid)
    head = before[-1]["seq"]
    result, sub_id = subscribe(daemon, sid, after_seq=0)
    assert result["session_id"] == sid and isinstance(result["subscription_id"], str)
    assert result["next_seq"] == head + 1 and "gap" not in result
    replayed = daemon.events(sid)[len(before):]
    assert all(e.get("replay") is True for e in replayed)
    assert [{k: v for k, v in e.items() if k != "replay"} for e in replayed] == stored(daemon, sid) == before
    # every replayed line precedes the response line on stdout
    lines = messages(daemon)
    replay_at = [i for i, m in enumerate(lines) if m.get("method") == "session/event" and m["params"].get("replay")]
    assert len(replay_at) == len(replayed) and max(replay_at) < response_index(daemon, sub_id)

    third = run(daemon, sid)
    live = daemon.events(sid)[len(before) + len(replayed):]
    assert all(e["turn_id"] == third["turn_id"] and "replay" not in e for e in live)
    assert_consecutive(seqs(live), first=head + 1)  # no hole at the seam, each seq once
    assert types(live)[-1] == "turn_completed"


def test_subscribe_without_after_seq_replays_nothing(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a)
    run(a, sid)
    head = a.events(sid)[-1]["seq"]
    result, _ = subscribe(b, sid)
    assert result["next_seq"] == head + 1 and b.events(sid) == []
    run(a, sid)
    got = wait_turn_end(b, sid)
    assert got == a.events(sid)[-len(got):] and got[0]["seq"] == head + 1


def test_subscribe_after_the_end_is_clamped_to_the_end(spawn: Spawn) -> None:
    """An ``after_seq`` past the stored end replays nothing, and the next turn's events
    (numbered from the end) still arrive: ``next_seq`` says where they start."""
    a, b = spawn(), spawn()
    sid = deferred(a)
    run(a, sid)
    head = a.events(sid)[-1]["seq"]
    result, _ = subscribe(b, sid, after_seq=head + 100)
    assert result["next_seq"] == head + 1 and b.events(sid) == []
    second = run(a, sid)
    got = wait_turn_end(b, sid, second["turn_id"])
    assert got == of_turn(a.events(sid), second["turn_id"]) and got[0]["seq"] == head + 1


def test_subscribe_replays_from_any_seq_and_two_subscriptions_deliver_once(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, {"text": "abcdefgh", "chunk_chars": 1})
    run(a, sid)
    everything = stored(a, sid)
    head = everything[-1]["seq"]
    result, _ = subscribe(b, sid, after_seq=5)  # inside the turn's run of deltas
    replayed = b.events(sid)
    assert [envelope(e) for e in replayed] == everything[5:] and result["next_seq"] == head + 1
    assert subscribe(b, sid)[0]["next_seq"] == head + 1 and len(b.events(sid)) == len(replayed)
    second = run(a, sid)
    live = wait_turn_end(b, sid, second["turn_id"])[len(replayed):]
    assert live == of_turn(a.events(sid), second["turn_id"])  # one copy of each event for two subscriptions
    assert_consecutive(seqs(live), first=head + 1)


def test_subscribe_types_filter_applies_to_replay_and_live(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, {"text": "abc", "chunk_chars": 1})
    first = run(a, sid)
    subscribe(b, sid, after_seq=0, types=["turn_started", "turn_completed"])
    replayed = b.events(sid)
    assert types(replayed) == ["turn_started", "turn_completed"] and all(e["replay"] for e in replayed)
    second = run(a, sid)
    got = b.wait_for(lambda: len(b.events(sid)) >= 4 and b.events(sid), what="live")
    assert types(got) == ["turn_started", "turn_completed"] * 2
    assert [e["turn_id"] for e in got] == [first["turn_id"]] * 2 + [second["turn_id"]] * 2
    assert got[2:] == [e for e in a.events(sid) if e["event"]["type"] in ("turn_started", "turn_completed")][2:]


def test_unsubscribe_stops_delivery(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    watched, fence = deferred(a), deferred(a)
    result, _ = subscribe(b, watched)
    subscribe(b, fence)
    assert b.call("session/unsubscribe", {"subscription_id": result["subscription_id"]}) == {"unsubscribed": True}
    assert b.call("session/unsubscribe", {"subscription_id": result["subscription_id"]}) == {"unsubscribed": False}
    assert b.call("session/unsubscribe", {"subscription_id": "never-issued"}) == {"unsubscribed": False}
    run(a, watched)
    run(a, fence)
    wait_turn_end(b, fence)  # the fence session's turn came through, so delivery works ...
    time.sleep(0.3)
    assert b.events(watched) == []  # ... and nothing of the unsubscribed session did


# ---------------------------------------------------------------- across daemons on one file


def test_subscriber_on_another_daemon_gets_every_event_live_in_order(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(b, {"text": "0123456789", "chunk_chars": 1, "delay_ms": 60})
    subscribe(b, sid)
    r = run(a, sid)
    on_b = wait_turn_end(b, sid, r["turn_id"])
    on_a = a.events(sid)
    assert on_b == on_a and types(on_b)[-1] == "turn_completed"
    assert_consecutive(seqs(on_b), first=1)
    arrived_a = {e["seq"]: t for t, e in a.timed_events(sid)}
    for t, e in b.timed_events(sid):
        assert t - arrived_a[e["seq"]] < 2.0, (e, t - arrived_a[e["seq"]])


def test_subscribe_mid_turn_from_zero_has_no_hole_and_no_duplicate(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, {"text": "done", "chunk_chars": 1}, SLOW)
    run(a, sid)
    b.call("session/read", {"session_id": sid})  # b is up: its subscribe lands mid-turn, not after it
    running = a.request("turn/start", {"session_id": sid, "prompt": "long"})
    a.wait_for(lambda: types(a.events(sid)).count("text_delta") >= 14, what="mid-turn deltas")
    _, sub_id = subscribe(b, sid, after_seq=0)
    a.response(running)
    got = wait_turn_end(b, sid, a.events(sid)[-1]["turn_id"])
    assert_consecutive(seqs(got), first=1)
    assert [envelope(e) for e in got] == a.events(sid)
    replayed = [e for e in got if e.get("replay")]
    assert replayed and got[: len(replayed)] == replayed  # replay first, then live
    replay_lines = [m for m in messages(b)[: response_index(b, sub_id)] if m.get("method") == "session/event"]
    assert len(replay_lines) == len(replayed)


# ---------------------------------------------------------------- retention


def test_keep_delta_turns_trims_old_deltas_and_reports_the_gap(spawn: Spawn) -> None:
    d = spawn("--keep-delta-turns", "1")
    sid = deferred(d, *[{"reasoning": "rr", "text": "abcde", "chunk_chars": 1}] * 3)
    turn_ids = [run(d, sid)["turn_id"] for _ in range(3)]
    live = d.events(sid)
    kept = stored(d, sid)
    old, last = turn_ids[:2], turn_ids[2]
    assert [e for e in kept if e["turn_id"] == last] == of_turn(live, last)
    assert kept == [e for e in live if e["turn_id"] == last or e["event"]["type"] not in DELTA_TYPES]
    for turn_id in old:
        assert types(of_turn(kept, turn_id)) == ["turn_started", "usage", "turn_completed"]

    newest_trimmed = max(e["seq"] for e in live if e["turn_id"] in old and e["event"]["type"] in DELTA_TYPES)
    first_kept_turn = of_turn(live, last)[0]["seq"]
    p = page(d, sid, after_seq=0)
    gap = p["gap"]
    assert gap["after_seq"] == 0 and gap["reason"] == "trimmed"
    assert newest_trimmed < gap["oldest_seq"] <= first_kept_turn
    assert page(d, sid, after_seq=newest_trimmed - 1)["gap"]["after_seq"] == newest_trimmed - 1
    assert "gap" not in page(d, sid, after_seq=first_kept_turn - 1)
    result, _ = subscribe(d, sid, after_seq=0)
    assert result["gap"] == gap


# ---------------------------------------------------------------- coalescing for a slow reader


def test_initialize_reports_event_capabilities_and_coalesce_limit(spawn: Spawn) -> None:
    default = spawn().call("initialize", {})
    assert default["capabilities"]["event_subscriptions"] is True
    assert {"session/events", "session/subscribe", "session/unsubscribe"} <= set(default["capabilities"]["methods"])
    assert default["limits"]["coalesce_after_lines"] == 1024
    assert spawn("--coalesce-after-lines", "16").call("initialize", {})["limits"]["coalesce_after_lines"] == 16


def assert_covers_each_seq_once(events: list[Event]) -> None:
    """The [seq_first, seq] ranges of the received events tile the turn's seqs."""
    expected = events[0]["seq"]
    for e in events:
        first = e.get("seq_first", e["seq"])
        if "seq_first" in e:
            assert e["event"]["type"] in DELTA_TYPES and first < e["seq"], e
        assert first == expected, (e, expected)
        expected = e["seq"] + 1


def slow_reader_turn(d: Daemon, sid: str, text: str, pause_s: float, while_paused: Callable[[], None] | None = None) -> tuple[dict[str, Any], float]:
    """Run a turn whose client stops reading from the request on for ``pause_s``; returns the
    RunResult and how long it took to arrive after reading resumed."""
    d.pause_reading()
    id_ = d.request("turn/start", {"session_id": sid, "prompt": "stream"})
    paused_at = time.monotonic()
    if while_paused:
        while_paused()
    time.sleep(max(0.0, pause_s - (time.monotonic() - paused_at)))
    d.resume_reading()
    resumed_at = time.monotonic()
    result = d.response(id_, timeout=30)["result"]
    assert result["text"] == text
    return result, time.monotonic() - resumed_at


def assert_received_coalesced(d: Daemon, sid: str, result: dict[str, Any], reasoning: str = "") -> None:
    """What the slow client received adds up to the committed text, in fewer events."""
    got = of_turn(d.events(sid), result["turn_id"])
    assert text_of(got) == result["text"] and text_of(got, "reasoning_delta") == reasoning
    committed = [{"type": "reasoning", "text": reasoning, "provider": "scripted"}] if reasoning else []
    committed.append({"type": "text", "text": result["text"]})
    assert d.call("session/history", {"session_id": sid})["messages"][-1]["content"] == committed
    assert any("seq_first" in e for e in got), "a slow reader got no coalesced event"
    assert len(got) < len(result["text"])
    assert_covers_each_seq_once(got)
    assert types(got)[-1] == "turn_completed"


def test_slow_reader_gets_coalesced_deltas_that_add_up(spawn: Spawn) -> None:
    d = spawn("--coalesce-after-lines", "16")
    text = "".join(chr(ord("a") + i % 26) for i in range(20_000))
    reasoning = "".join(chr(ord("0") + i % 10) for i in range(2_000))
    sid = deferred(d, {"reasoning": reasoning, "text": text, "chunk_chars": 1})
    result, _ = slow_reader_turn(d, sid, text, pause_s=2.0)
    assert_received_coalesced(d, sid, result, reasoning)
    deltas = stored(d, sid, types=["reasoning_delta", "text_delta"])  # the store keeps every delta as produced
    assert len(deltas) == len(reasoning) + len(text)
    assert all(set(e) == ENVELOPE and len(e["event"]["delta"]) == 1 for e in deltas)
    assert text_of(deltas, "reasoning_delta") == reasoning and text_of(deltas) == text


def test_slow_reader_does_not_stall_a_100k_delta_turn_or_grow_memory(spawn: Spawn) -> None:
    d = spawn("--coalesce-after-lines", "16")
    watcher = spawn()  # a second daemon on the same file sees when the turn is stored
    text = "".join(chr(ord("A") + i % 26) for i in range(100_000))
    sid = deferred(d, {"text": text, "chunk_chars": 1})
    peak = [0.0]

    def turn_ended_while_paused() -> None:
        def ended() -> bool:
            peak[0] = max(peak[0], rss_mb(d))
            state = watcher.call("session/read", {"session_id": sid})["state"]
            return state["message_count"] == 2 and not state["is_active"]

        wait_until(ended, timeout=30, what="the turn to be stored while its client does not read", interval=0.1)

    result, after_resume = slow_reader_turn(d, sid, text, pause_s=3.0, while_paused=turn_ended_while_paused)
    peak[0] = max(peak[0], rss_mb(d))
    assert after_resume < 10, after_resume
    assert peak[0] < 200, f"daemon RSS reached {peak[0]:.0f} MB"
    assert_received_coalesced(d, sid, result)


# ---------------------------------------------------------------- idempotency keys


def test_create_with_same_key_returns_the_original_run_result(daemon: Daemon) -> None:
    params = {"prompt": "hi", "provider": "scripted", "provider_params": script({"text": "first answer"}), "idempotency_key": "k1"}
    original = daemon.call("session/create", params)
    assert original["text"] == "first answer"
    again = daemon.call("session/create", params)
    assert again == original
    assert len(daemon.call("session/list", {})["sessions"]) == 1
    assert daemon.call("session/history", {"session_id": original["session_id"]})["message_count"] == 2


def test_deferred_create_with_same_key_returns_the_same_session(daemon: Daemon) -> None:
    params = {"initial_turn": "defer", "provider": "scripted", "idempotency_key": "k-defer"}
    original = daemon.call("session/create", params)
    assert set(original) == {"session_id", "created_at_ms"}
    assert daemon.call("session/create", params) == original
    assert len(daemon.call("session/list", {})["sessions"]) == 1


def test_same_key_with_different_params_is_idempotency_conflict(daemon: Daemon) -> None:
    create = {"initial_turn": "defer", "provider": "scripted", "idempotency_key": "kc", "labels": {"a": "1"}}
    sid = daemon.call("session/create", create)["session_id"]
    err = daemon.error("session/create", {**create, "labels": {"a": "2"}})
    assert_error(err, IDEMPOTENCY_CONFLICT, "IDEMPOTENCY_CONFLICT")
    assert err["data"]["key"] == "kc" and err["data"]["original"] == sid

    turn = run(daemon, sid, "first", idempotency_key="kt")
    err = daemon.error("turn/start", {"session_id": sid, "prompt": "other", "idempotency_key": "kt"})
    assert_error(err, IDEMPOTENCY_CONFLICT, "IDEMPOTENCY_CONFLICT")
    assert err["data"]["key"] == "kt" and err["data"]["original"] == turn["turn_id"]
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 2


def test_turn_start_with_same_key_returns_the_original_and_runs_nothing(daemon: Daemon) -> None:
    sid = deferred(daemon, {"text": "one"}, {"text": "two"})
    original = run(daemon, sid, "p", idempotency_key="t1")
    seen = len(daemon.events(sid))
    assert run(daemon, sid, "p", idempotency_key="t1") == original
    assert daemon.call("session/history", {"session_id": sid})["message_count"] == 2
    assert len(page(daemon, sid, types=["turn_started"])["events"]) == 1
    assert all(e["turn_id"] == original["turn_id"] for e in daemon.events(sid)[seen:])
    assert run(daemon, sid, "p", idempotency_key="t2")["text"] == "two"  # another key is new work


def test_turn_keys_are_per_session(daemon: Daemon) -> None:
    a, b = deferred(daemon), deferred(daemon)
    ra = run(daemon, a, "same", idempotency_key="shared")
    rb = run(daemon, b, "same", idempotency_key="shared")
    assert rb["session_id"] == b and rb["turn_id"] != ra["turn_id"]
    assert daemon.call("session/history", {"session_id": b})["message_count"] == 2


def test_idempotency_keys_survive_a_restart(spawn: Spawn) -> None:
    create = {"prompt": "hi", "provider": "scripted", "provider_params": script({"text": "a"}, {"text": "b"}, {"text": "c"}),
              "idempotency_key": "restart-create"}
    first = spawn()
    created = first.call("session/create", create)
    turn = run(first, created["session_id"], "next", idempotency_key="restart-turn")
    first.stop()
    second = spawn()
    assert second.call("session/create", create) == created
    assert run(second, created["session_id"], "next", idempotency_key="restart-turn") == turn
    assert len(second.call("session/list", {})["sessions"]) == 1
    assert second.call("session/history", {"session_id": created["session_id"]})["message_count"] == 4


def test_retrying_a_running_turn_on_the_same_connection_sends_no_event_twice(daemon: Daemon) -> None:
    sid = deferred(daemon, SLOW)
    params = {"session_id": sid, "prompt": "go", "idempotency_key": "twice"}
    first = daemon.request("turn/start", params)
    daemon.wait_event("text_delta", sid)
    second = daemon.request("turn/start", params)
    results = [daemon.response(i) for i in (first, second)]
    assert all("result" in r for r in results), results
    assert results[0]["result"] == results[1]["result"]
    assert_consecutive(seqs(daemon.events(sid)), first=1)
    assert types(daemon.events(sid)).count("turn_started") == 1


def test_retrying_a_turn_running_in_another_daemon_follows_it_to_its_result(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, SLOW)
    b.call("session/read", {"session_id": sid})  # b is up before the turn starts: it must find it running
    params = {"session_id": sid, "prompt": "go", "idempotency_key": "in-flight"}
    on_a = a.request("turn/start", params)
    a.wait_for(lambda: types(a.events(sid)).count("text_delta") >= 5, what="the turn to be under way")
    on_b = b.request("turn/start", params)
    result_b = b.response(on_b)
    result_a = a.response(on_a)
    assert "result" in result_b, result_b
    assert result_b["result"] == result_a["result"]
    turn_id = result_a["result"]["turn_id"]
    followed = b.events(sid)
    assert followed and all(e["turn_id"] == turn_id for e in followed)
    assert types(followed)[-1] == "turn_completed"
    assert_consecutive(seqs(followed))
    by_seq = {e["seq"]: e for e in a.events(sid)}
    assert [envelope(e) for e in followed] == [by_seq[s] for s in seqs(followed)]
    last_event_line = max(i for i, m in enumerate(messages(b)) if m.get("method") == "session/event")
    assert last_event_line < response_index(b, on_b)
    assert len(page(a, sid, types=["turn_started"])["events"]) == 1


# ---------------------------------------------------------------- crashes and vanishing clients


def test_subscriber_vanishing_mid_replay_leaves_the_other_daemon_serving(spawn: Spawn) -> None:
    a, b = spawn(), spawn()
    sid = deferred(a, {"text": "v" * 3000, "chunk_chars": 1})
    run(a, sid)
    b.pause_reading()
    b.request("session/subscribe", {"session_id": sid, "after_seq": 0})
    time.sleep(0.3)  # the replay fills the pipe that nobody reads
    b.vanish()
    b.wait_exit(10)
    r = run(a, sid, "still there")
    assert r["stop_reason"] == "end_turn"
    assert stored(a, sid)[-1]["turn_id"] == r["turn_id"]
    c = spawn()  # and the file is usable by a new daemon
    assert stored(c, sid) == stored(a, sid)


def test_sigkill_mid_turn_keeps_stored_events_and_never_repeats_a_seq(spawn: Spawn) -> None:
    a = spawn()
    sid = deferred(a, {"text": "committed"}, {"text": "y" * 300, "chunk_chars": 1, "delay_ms": 10})
    run(a, sid)
    a.request("turn/start", {"session_id": sid, "prompt": "cut short"})
    a.wait_for(lambda: types(a.events(sid)).count("text_delta") >= 40, what="deltas of the second turn")
    before_kill = stored(a, sid)
    a.kill()
    seen = max(seqs(a.events(sid)) + seqs(before_kill))
    b = spawn()
    after = stored(b, sid)
    by_seq = {e["seq"]: e for e in after}
    assert [by_seq.get(e["seq"]) for e in before_kill] == before_kill
    assert seqs(after) == sorted(set(seqs(after)))
    r = run(b, sid, "again", provider_params=script({"text": "after"}))  # not the slow step again
    new = b.events(sid)
    assert r["stop_reason"] == "end_turn" and new and min(seqs(new)) > seen
    assert_consecutive(seqs(new))
    assert of_turn(stored(b, sid), r["turn_id"]) == new
