"""Secrets that straddle a cut: an echoed key must never reach the client even in part.

A provider's error body is quoted in the error message only up to a length (300 characters
of a body, 200 of an SSE data line). When the body echoes a credential right at that length,
cutting first and redacting second leaves a prefix of the key that no longer matches it
whole, and that prefix then reaches the client's error, the ``turn_failed`` event, the
``turns.error`` column and the log. Each test here puts the secret exactly across the cut,
through the real daemon over its pipes against the fake server, and asserts that no prefix
of 8 characters or more appears in stdout, the stderr log, or the SQLite files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from warren.daemon.providers.http import Redactor
from tests.daemon_client import Daemon
from tests.fakes.llm_server import Exchange, FakeLLMServer, RawLine, SSEResponse
from tests.test_providers_daemon import PROVIDER_ERROR, claude_section, openai_section, write_config

Spawn = Callable[..., Daemon]

#: Characters of error body the daemon quotes, and of an SSE data line.
BODY_CUT = 300
SSE_CUT = 200
#: The shortest secret prefix that counts as a leak.
LEAK = 8

OPENAI_KEY = "sk-proj-SECRETSECRETSECRET0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-SECRETSECRETSECRET0123456789abcdef"
HEADER_SECRET = "hdr-SECRETSECRETSECRET0123456789abcdef0123456789"


def echo_in_html_404(header: str) -> Callable[[Exchange], SSEResponse]:
    """A 404 ``text/html`` page of 250 filler characters, then ``auth=`` and the request's
    ``header`` as received: the echoed value starts 255 characters in, across the cut."""

    def respond(exchange: Exchange) -> SSEResponse:
        body = "." * 250 + "auth=" + exchange.headers[header]
        return SSEResponse([RawLine(body.encode())], status=404, content_type="text/html; charset=utf-8")

    return respond


def echo_in_sse_data_line(header: str, line: Callable[[str], str]) -> Callable[[Exchange], SSEResponse]:
    """A 200 stream whose first event's data line (``line`` of the echoed ``header``) is not
    a JSON object, so the daemon quotes the line in a protocol error."""

    def respond(exchange: Exchange) -> SSEResponse:
        return SSEResponse([RawLine(f"data: {line(exchange.headers[header])}\n\n".encode())])

    return respond


def store_bytes(tmp_path: Path) -> bytes:
    """warren.db and its -wal/-shm files, as they are on disk right now."""
    return b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("warren.db*")) if p.is_file())


def assert_no_prefix_anywhere(d: Daemon, tmp_path: Path, secret: str) -> None:
    """No prefix of ``secret`` of ``LEAK`` characters or more in stdout, the stderr log or the
    store files (read while the daemon runs, for the WAL, and again after it stopped)."""
    live = store_bytes(tmp_path)
    d.stop()
    stdout = b"".join(d.lines)
    stderr = d.stderr_path.read_bytes()
    stored = store_bytes(tmp_path)
    prefix = secret[:LEAK].encode()  # every longer prefix contains this one
    for where, data in (("stdout", stdout), ("stderr", stderr), ("store", live), ("store", stored)):
        at = data.find(prefix)
        assert at < 0, f"{where} holds {data[max(0, at - 40):at + 60]!r}"
    # The failure was written everywhere, the store's turns.error included.
    assert b"turn_failed" in stdout and stderr and b"[redacted]" in live + stored


def assert_failed_with_redacted_echo(err: dict[str, Any], status: int | None, kind: str) -> None:
    """The error really quotes the provider's text, with the secret replaced: so the test
    fails for a leak, not because nothing was quoted at all."""
    assert err["code"] == PROVIDER_ERROR, err
    assert (err["data"]["status"], err["data"]["kind"]) == (status, kind), err
    assert "[redacted]" in err["message"], err["message"]


# ---------------------------------------------------------------- error bodies cut at 300


def test_openai_key_echoed_across_the_body_cut(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """(a) OPENAI_API_KEY, a 404 HTML page echoing ``Authorization: Bearer KEY`` at 255."""
    server.enqueue(echo_in_html_404("authorization"))
    d = spawn("--log-level", "debug",
              env={"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": server.openai_base_url})
    err = d.error("session/create", {"prompt": "hi", "model": "m"})
    assert server.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert len("." * 250 + "auth=Bearer ") < BODY_CUT < len("." * 250 + "auth=Bearer " + OPENAI_KEY)
    assert_no_prefix_anywhere(d, tmp_path, OPENAI_KEY)
    assert_failed_with_redacted_echo(err, 404, "bad_request")
    assert "auth=" in err["message"]


def test_anthropic_key_echoed_across_the_body_cut(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """(b) ANTHROPIC_API_KEY, a 404 HTML page echoing ``x-api-key`` at 255."""
    server.enqueue(echo_in_html_404("x-api-key"))
    d = spawn("--log-level", "debug",
              env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": server.base_url})
    err = d.error("session/create", {"prompt": "hi", "model": "m"})
    assert server.last.headers["x-api-key"] == ANTHROPIC_KEY
    assert_no_prefix_anywhere(d, tmp_path, ANTHROPIC_KEY)
    assert_failed_with_redacted_echo(err, 404, "bad_request")
    assert "auth=" in err["message"]


@pytest.mark.parametrize("header", ["x-secret", "x-route"])
def test_configured_header_echoed_across_the_body_cut(
    spawn: Spawn, server: FakeLLMServer, tmp_path: Path, header: str
) -> None:
    """(c) A custom header from the config file, echoed at 255. Every configured header value
    is treated as a secret, whether or not its name looks like a credential's."""
    path = write_config(
        tmp_path,
        openai_section(server, name="proxy",
                       extra=f'default_model = "m"\nheaders = {{ "{header}" = "{HEADER_SECRET}" }}'),
    )
    server.enqueue(echo_in_html_404(header))
    d = spawn("--config", str(path), "--log-level", "debug")
    err = d.error("session/create", {"prompt": "hi", "provider": "proxy"})
    assert server.last.headers[header] == HEADER_SECRET
    assert len("." * 250 + "auth=") + LEAK < BODY_CUT < len("." * 250 + "auth=" + HEADER_SECRET)
    assert_no_prefix_anywhere(d, tmp_path, HEADER_SECRET)
    assert_failed_with_redacted_echo(err, 404, "bad_request")


# ---------------------------------------------------------------- SSE data lines cut at 200


def test_openai_key_echoed_across_the_sse_data_line_cut(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """(d) A garbled ``data:`` line that echoes the Authorization header so that the key
    starts 180 characters in and runs past the 200-character cut."""
    path = write_config(
        tmp_path,
        openai_section(server, name="oai",
                       extra='api_key_env = "WARREN_TEST_SSE_KEY"\ndefault_model = "m"\nmax_retries = 0'),
    )

    def garbled(authorization: str) -> str:
        line = "{" + "y" * (180 - len("{auth=Bearer ")) + "auth=" + authorization
        assert line.index(OPENAI_KEY) == 180 and len(line) > SSE_CUT
        return line

    server.enqueue(echo_in_sse_data_line("authorization", garbled))
    d = spawn("--config", str(path), "--log-level", "debug", env={"WARREN_TEST_SSE_KEY": OPENAI_KEY})
    err = d.error("session/create", {"prompt": "hi", "provider": "oai"})
    assert_no_prefix_anywhere(d, tmp_path, OPENAI_KEY)
    assert_failed_with_redacted_echo(err, None, "protocol")
    assert "invalid JSON in SSE data line" in err["message"]


def test_anthropic_key_echoed_across_the_sse_data_line_cut(spawn: Spawn, server: FakeLLMServer, tmp_path: Path) -> None:
    """(d) The same on the Anthropic path, with a data line that is JSON but not an object."""
    path = write_config(tmp_path, claude_section(server, extra="max_retries = 0"))

    def not_an_object(key: str) -> str:
        return '"' + "z" * 185 + key + '"'

    server.enqueue(echo_in_sse_data_line("x-api-key", not_an_object))
    d = spawn("--config", str(path), "--log-level", "debug", env={"WARREN_TEST_CLAUDE_KEY": ANTHROPIC_KEY})
    err = d.error("session/create", {"prompt": "hi"})
    assert_no_prefix_anywhere(d, tmp_path, ANTHROPIC_KEY)
    assert_failed_with_redacted_echo(err, None, "protocol")
    assert "SSE data is not a JSON object" in err["message"]


# ---------------------------------------------------------------- the cut itself


def test_cut_redacts_the_whole_text_first_and_masks_a_cut_off_tail() -> None:
    """``Redactor.clip`` redacts before it cuts, never splits its own marker, and for a text
    that was itself cut off (an error body at its read limit) also masks a trailing fragment
    of a secret: the rest of that secret was never received, so no match could remove it."""
    redact = Redactor([OPENAI_KEY])
    text = "." * 250 + "auth=Bearer " + OPENAI_KEY + " tail"
    assert redact.clip(text, BODY_CUT) == "." * 250 + "auth=Bearer [redacted] tail"
    assert redact.clip(text, 265) == "." * 250 + "auth=Bearer [redacted]"  # the marker stays whole
    assert redact.clip(text, 10) == "." * 10

    cut_off = "." * 50 + "auth=" + OPENAI_KEY[:20]
    assert redact.clip(cut_off, BODY_CUT) == cut_off  # a complete text: a fragment is just text
    assert redact.clip(cut_off, BODY_CUT, complete=False) == "." * 50 + "auth=[redacted]"
    assert redact.clip("." * 50 + "sk-", BODY_CUT, complete=False) == "." * 50 + "sk-"  # too short to mean anything
