"""15. Images in prompts: a turn carrying a 1 MiB image, from ``turn/start`` written to the
HTTP request's arrival at a local OpenAI-compatible server, beside the same turn with a
tiny text prompt. The issue sets no target: the numbers are reported.

The plumbing is section 7's (``providers.fake_provider_daemon``): the daemon runs on a fresh
``--db`` file and talks HTTP to ``tests.fakes.llm_server.FakeLLMServer`` in a thread of this
process, provider ``fake`` (``type = "openai"``), which answers every request with its short
default reply. Each sample is one fresh session (``session/create`` with ``initial_turn:
"defer"``, not timed) and one timed ``turn/start``, so every request carries a one-message
history and no earlier image. The image prompt is ``[{text: PROMPT}, {image: image/png,
base64 of 1,048,576 random bytes}]``, with new random bytes for each sample (so each is
decoded, hashed and stored as a new blob, never found already stored); the text prompt is
``PROMPT`` alone. The two kinds alternate, which goes first swapping every pair, after
``WARMUP`` uncounted turns of each (the first imports the HTTP client, ``wire``, and opens the connection).
Request lines are encoded before the clock starts.

"turn/start written to HTTP request received" is section 7's measure: the fake server's
``Exchange.received_at`` (``time.time()``, taken once it has read the whole body and parsed
it as JSON) minus ``time.time()`` just before this client wrote the request line. For the
image turn it covers the write of the 1.4 MB line through the stdin pipe, JSON-RPC decoding,
base64 validation, sha256, the blob and message commit, reading the blob back for the
request, base64 again for the data URL, JSON-encoding the body, and ``wire`` sending it over
loopback; plus the fake server's reading and parsing of it, which runs in this process and is
shown on its own (timed here, afterwards, on a recorded body). A sample during which
``time.time() - time.monotonic()`` moved by more than 0.25 ms is left out (and counted).

Every request is checked: the image turn's last message must be the prompt's text and an
``image_url`` holding exactly ``data:image/png;base64,`` and the sent base64; the text turn's,
the prompt as a string; and each turn must end ``end_turn`` with the server's reply.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .client import BenchError, Daemon, encode_request, result_of
from .providers import MAX_CLOCK_DRIFT_S, fake_provider_daemon, low_switch_interval, turn_exchange, wall_offset
from .results import Metric, Section, latency_metric, summarize

IMAGE_BYTES = 1_048_576
MIME = "image/png"
PROMPT = "What is in this picture?"
SAMPLES = 40  # per kind
WARMUP = 2  # per kind
PARSE_RUNS = 5


@dataclass
class _Sample:
    request_ms: float  # turn/start written -> the fake server received the request
    round_trip_ms: float  # turn/start written -> its response read
    line_bytes: int  # the turn/start request line
    body_bytes: int  # the HTTP request body
    clock_ok: bool


def _image_prompt(b64: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": PROMPT}, {"type": "image", "mime_type": MIME, "data": b64}]


def _check_image(body: Any, b64: str) -> None:
    content = body["messages"][-1]["content"]
    expected = [{"type": "text", "text": PROMPT},
                {"type": "image_url", "image_url": {"url": f"data:{MIME};base64,{b64}"}}]
    if content != expected:
        raise BenchError("the image turn's request did not carry the prompt's text and exactly the image sent")


def _check_text(body: Any, _: str) -> None:
    if body["messages"][-1] != {"role": "user", "content": PROMPT}:
        raise BenchError(f"the text turn's request ended with {body['messages'][-1]!r}")


def _turn(daemon: Daemon, server: Any, image_b64: str | None) -> _Sample:
    """One fresh session and one timed ``turn/start``: with the image, or ``PROMPT`` alone."""
    session_id = daemon.call("session/create", {"provider": "fake", "initial_turn": "defer"})["session_id"]
    before = len(server.exchanges)
    id_ = daemon.new_id()
    prompt: Any = PROMPT if image_b64 is None else _image_prompt(image_b64)
    line = encode_request(id_, "turn/start", {"session_id": session_id, "prompt": prompt})
    offset = wall_offset()
    start_wall = time.time()
    start = time.perf_counter()
    daemon.write(line)
    response = daemon.wait(id_)
    elapsed = time.perf_counter() - start
    clock_ok = abs(wall_offset() - offset) <= MAX_CLOCK_DRIFT_S
    result = result_of(response)
    if result.get("stop_reason") != "end_turn" or not result.get("text"):
        raise BenchError(f"turn ended {result.get('stop_reason')!r} with {len(result.get('text') or '')} characters")
    ex = turn_exchange(server, before, "image turn" if image_b64 else "text turn")
    (_check_text if image_b64 is None else _check_image)(ex.json, image_b64 or "")
    return _Sample((ex.received_at - start_wall) * 1000, elapsed * 1000, len(line), len(ex.raw_body), clock_ok)


def _new_image() -> str:
    return base64.b64encode(os.urandom(IMAGE_BYTES)).decode()


def run(section: Section, samples: int = SAMPLES) -> None:
    with low_switch_interval(), fake_provider_daemon() as (daemon, server):
        for _ in range(WARMUP):
            _turn(daemon, server, _new_image())
            _turn(daemon, server, None)
        image: list[_Sample] = []
        text: list[_Sample] = []
        for n in range(samples):
            b64 = _new_image()  # before the clock
            if n % 2:
                text.append(_turn(daemon, server, None))
                image.append(_turn(daemon, server, b64))
            else:
                image.append(_turn(daemon, server, b64))
                text.append(_turn(daemon, server, None))
        body = max((ex.raw_body for ex in server.exchanges[-2:]), key=len)  # the last image turn's
    parse_ms = []
    for _ in range(PARSE_RUNS):
        start = time.perf_counter()
        json.loads(body)
        parse_ms.append((time.perf_counter() - start) * 1000)
    _report(section, image, text, statistics.median(parse_ms))


def _report(section: Section, image: list[_Sample], text: list[_Sample], parse_ms: float) -> None:
    key = section.key
    pairs = [(i, t) for i, t in zip(image, text) if i.clock_ok and t.clock_ok]
    if not pairs:
        raise BenchError("the wall clock moved during every sample; no latency is usable")
    good_image = [i for i, _ in pairs]
    good_text = [t for _, t in pairs]
    section.add(latency_metric(key, "1 MiB image turn: turn/start written to HTTP request received",
                               [s.request_ms for s in good_image]))
    section.add(latency_metric(key, "tiny text turn: turn/start written to HTTP request received",
                               [s.request_ms for s in good_text]))
    section.add(latency_metric(key, "image minus text, sample pairs run back to back",
                               [i.request_ms - t.request_ms for i, t in pairs], detail=True))
    section.add(Metric(key, "of which the fake server's json.loads of the image body (bench process)", "ms",
                       parse_ms, PARSE_RUNS, detail=True))
    section.add(latency_metric(key, "1 MiB image turn: turn/start round trip (to its response)",
                               [s.round_trip_ms for s in image], detail=True))
    section.add(latency_metric(key, "tiny text turn: turn/start round trip (to its response)",
                               [s.round_trip_ms for s in text], detail=True))
    for name, samples in (("image", image), ("text", text)):
        sizes = summarize([float(s.body_bytes) for s in samples])
        section.add(Metric(key, f"HTTP request body, {name} turn", "bytes", sizes["median"], len(samples),
                           {"min": sizes["min"], "max": sizes["max"]}))
    b64_chars = len(_new_image())
    image_body = statistics.median(s.body_bytes for s in image)
    text_body = statistics.median(s.body_bytes for s in text)
    section.add(Metric(key, "turn/start request line, image turn", "bytes",
                       statistics.median(s.line_bytes for s in image), len(image), detail=True))
    skipped = len(image) + len(text) - 2 * len(pairs)
    section.extra.update({"image_bytes": IMAGE_BYTES, "base64_chars": b64_chars, "samples_per_kind": len(image),
                          "warmup_per_kind": WARMUP, "clock_skipped_samples": skipped,
                          "image_body_bytes": image_body, "text_body_bytes": text_body})
    section.note(f"{len(image)} samples of each kind, a fresh session each, alternating; the image is {IMAGE_BYTES:,} "
                 f"random bytes ({b64_chars:,} base64 characters), new each sample. The image body is the text body "
                 f"+ {image_body - text_body:,.0f} bytes: the base64 plus the data URL's and content parts' framing.")
    section.note("Arrival is the fake server's Exchange.received_at (after it read and json-parsed the whole body, "
                 "in this process, as section 7 measures it); the parse time is shown on its own above.")
    if skipped:
        section.note(f"{skipped} sample(s) left out of the latencies (with their pairs): the wall clock moved "
                     "meanwhile.")
