"""A stand-in for ``warren serve`` in tests/test_nvim_example.py: answers initialize,
session/create and turn/start, and streams one turn whose lines are written in pieces (one
split inside a UTF-8 character) and whose ``retrying`` event drops the abandoned attempt's text.
Exits at end of input."""

import json
import sys
import time

out = sys.stdout.buffer


def write(message: dict) -> None:
    """One line; with non-ASCII text, in three pieces: the first ends inside a character."""
    data = json.dumps(message, ensure_ascii=False).encode() + b"\n"
    inside = next((i + 1 for i, byte in enumerate(data) if byte >= 0x80), None)
    cuts = [0, len(data)] if inside is None else [0, inside, (inside + len(data)) // 2, len(data)]
    for start, end in zip(cuts, cuts[1:]):
        out.write(data[start:end])
        out.flush()
        time.sleep(0.05)


def event(event: dict) -> dict:
    return {"jsonrpc": "2.0", "method": "session/event",
            "params": {"session_id": "s1", "turn_id": "t1", "seq": 1, "timestamp_ms": 0, "event": event}}


for line in sys.stdin:
    request = json.loads(line)
    method, reply = request["method"], None
    if method == "initialize":
        reply = {}
    elif method == "session/create":
        reply = {"session_id": "s1", "created_at_ms": 0}
    elif method == "turn/start":
        write(event({"type": "text_delta", "delta": "héllo wörld"}))
        write(event({"type": "retrying", "attempt": 1, "delay_ms": 0, "reason": "reset", "discard_chars": 5}))
        write(event({"type": "text_delta", "delta": "Warren ✓\nbye"}))
        usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
        reply = {"session_id": "s1", "turn_id": "t1", "text": "héllo Warren ✓\nbye", "stop_reason": "end_turn",
                 "tool_calls": [], "usage": usage, "message_count": 2, "pending_tool_calls": []}
    write({"jsonrpc": "2.0", "id": request["id"], "result": reply})
