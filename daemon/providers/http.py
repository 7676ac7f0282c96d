"""Plumbing shared by the HTTP providers: client, SSE stream, and failure → ProviderError.

Every failure a real API can produce becomes one ``ProviderError`` whose ``kind`` and
``retryable`` drive the turn loop's retry policy; nothing here retries (one HTTP attempt per
``stream()`` call), so retries are uniform across providers and visible as events.

Messages reach the client, so every text that came from outside (error bodies, SSE data
lines, exception texts) goes through a ``Redactor`` holding the provider's key, every
configured header value and the credentials in the base URL. Where such a text is quoted only
in part, ``Redactor.clip`` cuts it, after redacting it whole: a secret echoed across the cut
would otherwise lose its tail, no longer match, and leave its first characters in the message.

The HTTP itself is ``wire``'s small HTTP/1.1 client (see its docstring for why not httpx):
the adapters see only ``_stream_sse``, ``_get`` and ``ServerSentEvent``, so the stack can change
here without them noticing. The daemon imports this module only when a real provider is first
used.
"""

from __future__ import annotations

import base64
import email.utils
import re
import time
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

import msgspec

from warren.daemon import __version__
from warren.daemon.config import ProviderConfig
from warren.daemon.providers import wire
from warren.daemon.providers.base import ProviderError, RetryPolicy
from warren.daemon.providers.wire import ServerSentEvent
from warren.protocol.types import ImageBlock, Message, ToolResultBlock, ToolUseBlock

if TYPE_CHECKING:
    from warren.daemon.providers.base import Delta, Provider

#: How much of an error body we read; error JSON is small, an HTML error page need not be.
ERROR_BODY_LIMIT = 64 * 1024
#: What RFC 9110 (and h11, which enforces it) allows in a header value: visible ASCII, with
#: single spaces or tabs inside.
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")
#: How many characters of a body without a usable error message, and of an SSE data line
#: that is not a JSON object, an error message quotes.
ERROR_BODY_QUOTE = 300
SSE_DATA_QUOTE = 200
#: Shorter secrets (and shorter fragments of one) are not looked for: they would match
#: ordinary text, and say nothing about the secret.
_MIN_SECRET = 4
REDACTED = "[redacted]"


class Redactor:
    """Replaces each known secret with ``[redacted]``. Longest first, so a key that contains
    another secret is still removed whole."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        found: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < _MIN_SECRET:
                continue
            found.add(secret)
            # As error texts quote it: Python's escaped forms (h11 names an illegal header
            # value by its bytes repr), and without the whitespace around it.
            found.add(repr(secret)[1:-1])
            found.add(repr(secret.encode("utf-8", "backslashreplace"))[2:-1])
            if len(secret.strip()) >= _MIN_SECRET:
                found.add(secret.strip())
        self._secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def clip(self, text: str, limit: int, *, complete: bool = True) -> str:
        """At most about ``limit`` characters of ``text``, redacted.

        The whole text is redacted before the cut: a secret the cut runs through would no
        longer match whole and its head would be kept. A cut that falls inside a
        ``[redacted]`` marker keeps the marker whole (up to 9 characters past ``limit``), so
        the reader sees that something was removed rather than a stray ``[reda``.

        ``complete=False`` says ``text`` itself was cut off where it was read (a body at its
        size limit): a secret that was still arriving there is only present as a head that
        no match can find, so a trailing fragment of any secret is masked too.
        """
        text = self(text)
        if not complete:
            text = self._mask_tail(text)
        if len(text) <= limit:
            return text
        marker = text.find(REDACTED, max(0, limit - len(REDACTED) + 1))
        if 0 <= marker < limit:
            return text[: marker + len(REDACTED)]
        return text[:limit]

    def _mask_tail(self, text: str) -> str:
        """``text`` with a trailing head of a secret (``_MIN_SECRET`` characters or more)
        replaced by the marker; the longest head found wins."""
        best = 0
        for secret in self._secrets:
            for size in range(min(len(secret) - 1, len(text)), max(best, _MIN_SECRET - 1), -1):
                if text.endswith(secret[:size]):
                    best = size
                    break
        return text[: len(text) - best] + REDACTED if best else text


def secrets_of(config: ProviderConfig) -> list[str]:
    """The key, the value of every configured header, and the credentials in the base URL
    (``http://user:pass@proxy/v1``).

    Every header value, not only those whose names look like credentials: a proxy or
    gateway may take its token in a header of any name (``x-route``, ``helicone-target``),
    and a header value wrongly treated as secret costs no more than a ``[redacted]`` in an
    error message.
    """
    out = [config.api_key] if config.api_key else []
    out += url_secrets(config.base_url)
    out += header_secrets(config.headers.values())
    return out


def header_secrets(values: Iterable[str]) -> list[str]:
    """Each header value, and the bare token of ``Bearer abc``: an echo can quote either."""
    out: list[str] = []
    for value in values:
        out.append(value)
        out.extend(part for part in value.split() if len(part) >= 8)
    return out


def url_secrets(url: str, *, query: bool = False) -> list[str]:
    """The user name and password in ``url``; with ``query``, its query values too (an MCP
    server's URL may carry its token there)."""
    try:
        parts = urlsplit(url)
        out = [value for value in (parts.username, parts.password) if value]
        if query:
            out.extend(value for _, value in parse_qsl(parts.query) if value)
    except ValueError:
        return []
    return out


def build_timeout(config: ProviderConfig) -> wire.Timeouts:
    """``read`` bounds the silence between two reads of a stream, the wait for the response's
    head included (not the whole call, which is the turn loop's ``turn_timeout_s``). A server
    that stops accepting the request body is as stuck as one that stops sending, so ``write``
    uses the read timeout."""
    return wire.Timeouts(connect=config.connect_timeout_s, read=config.read_timeout_s, write=config.read_timeout_s)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> int | None:
    """Milliseconds to wait, from ``retry-after-ms`` (OpenAI, Anthropic) or ``retry-after``
    (seconds, or an HTTP date). ``None`` when absent or unparseable."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if ms >= 0:
            return int(ms)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0, int(seconds * 1000))
    return int(seconds * 1000) if seconds >= 0 else None


def classify_error_type(error_type: str | None) -> tuple[str, bool] | None:
    """Kind and retryability from a provider's own error type string, when it tells."""
    t = (error_type or "").lower()
    if not t:
        return None
    if "overloaded" in t:
        return "overloaded", True
    if t == "insufficient_quota":  # OpenAI's 429 for an exhausted plan: waiting won't help
        return "rate_limited", False
    if "rate_limit" in t:
        return "rate_limited", True
    if "authentication" in t or "permission" in t or "api_key" in t or "unauthorized" in t:
        return "auth", False
    if "timeout" in t:
        return "timeout", True
    if "invalid_request" in t or "not_found" in t or "too_large" in t or "context_length" in t:
        return "bad_request", False
    if "server_error" in t or t == "api_error":
        return "server_error", True
    return None


def classify_status(status: int) -> tuple[str, bool]:
    if status == 429:
        return "rate_limited", True
    if status == 529:
        return "overloaded", True
    if status == 408:
        return "timeout", True
    if status >= 500:
        return "server_error", True
    if status in (401, 403):
        return "auth", False
    return "bad_request", False


def _error_fields(payload: Any) -> tuple[str | None, str | None]:
    """(type, message) from the error shapes seen in the wild: Anthropic
    ``{"type":"error","error":{"type","message"}}``, OpenAI ``{"error":{"message","type",
    "code"}}``, Ollama ``{"error":"text"}``, FastAPI-based servers ``{"detail": …}``."""
    if not isinstance(payload, dict):
        return None, None
    err = payload.get("error", payload)
    if isinstance(err, str):
        return None, err
    if not isinstance(err, dict):
        return None, None
    etype = err.get("type")
    code = err.get("code")
    if not isinstance(etype, str) or not etype:
        etype = code if isinstance(code, str) and code else None
    message = err.get("message")
    if message is None:
        message = err.get("detail")
    if message is not None and not isinstance(message, str):
        message = msgspec.json.encode(message).decode()
    return etype, message


def error_from_response(
    provider: str, status: int, headers: Mapping[str, str], body: bytes, redact: Redactor
) -> ProviderError:
    """A non-2xx answer. The provider's own error type refines the kind only where the status
    is ambiguous (an ``overloaded_error`` sent with 500, say); auth and rate limits follow the
    status. ``x-should-retry`` (sent by both OpenAI and Anthropic) overrides retryability."""
    kind, retryable = classify_status(status)
    try:
        payload = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        payload = None
    etype, emsg = _error_fields(payload)
    if emsg is None and body and payload is None:
        # A body of exactly the read limit may have been cut off mid-secret (see clip).
        text = body.decode("utf-8", "replace").strip()
        emsg = redact.clip(text, ERROR_BODY_QUOTE, complete=len(body) < ERROR_BODY_LIMIT).rstrip()
    refined = classify_error_type(etype)
    if refined and (refined[0] == "overloaded" or (refined[0] == kind and not refined[1])):
        kind, retryable = refined
    should_retry = headers.get("x-should-retry", "").lower()
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    text = f"HTTP {status}"
    if etype:
        text += f" {etype}"
    if emsg:
        text += f": {emsg}"
    return ProviderError(
        provider,
        kind,
        redact(text),
        retryable=retryable,
        status=status,
        retry_after_ms=parse_retry_after(headers),
        error_type=etype,
    )


def error_from_payload(provider: str, payload: Any, redact: Redactor) -> ProviderError:
    """An error object sent inside a 200 stream (Anthropic ``event: error``, OpenAI-compatible
    ``data: {"error": …}``). Unknown types count as a retryable server error: the request was
    accepted, so the failure happened on the server's side."""
    etype, emsg = _error_fields(payload)
    status: int | None = None
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        status = err["code"]  # OpenRouter puts the HTTP status here
    refined = classify_error_type(etype)
    if refined is None:
        refined = classify_status(status) if status and status >= 400 else ("server_error", True)
    kind, retryable = refined
    text = "error in stream"
    if etype:
        text += f" {etype}"
    if emsg:
        text += f": {emsg}"
    return ProviderError(provider, kind, redact(text), retryable=retryable, status=status, error_type=etype)


_TIMEOUT_TEXT = {
    "ConnectTimeout": "timed out connecting",
    "ReadTimeout": "timed out waiting for data (read timeout)",
    "WriteTimeout": "timed out sending the request",
    "PoolTimeout": "timed out waiting for a free connection",
}


def error_from_exception(provider: str, exc: Exception, redact: Redactor, *, host: str = "") -> ProviderError:
    """Transport failures. Timeouts and dropped connections are retryable; a request we could
    not even build (bad URL, unsupported scheme) is not. ``host`` (no credentials) helps the
    user spot a local server that is not running."""
    name = exc.__class__.__name__
    detail = redact(str(exc)) or _TIMEOUT_TEXT.get(name, "failed")
    text = f"{name}{f' ({host})' if host else ''}: {detail}"
    if isinstance(exc, wire.TimeoutException):
        return ProviderError(provider, "timeout", text, retryable=True)
    if isinstance(exc, (wire.UnsupportedProtocol, wire.InvalidURL, wire.LocalProtocolError)):
        return ProviderError(provider, "bad_request", text, retryable=False)
    return ProviderError(provider, "connection", text, retryable=True)


def protocol_error(provider: str, message: str, redact: Redactor, *, retryable: bool = True) -> ProviderError:
    return ProviderError(provider, "protocol", redact(message), retryable=retryable)


def decode_event_json(provider: str, data: str, redact: Redactor) -> dict[str, Any]:
    """One SSE ``data`` payload as a JSON object. A garbled line is treated as a transmission
    fault (retryable ``protocol``): the next attempt will most likely be clean."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        quoted = redact.clip(data, SSE_DATA_QUOTE)
        raise protocol_error(provider, f"invalid JSON in SSE data line: {quoted!r}", redact) from None
    if not isinstance(value, dict):
        quoted = redact.clip(data, SSE_DATA_QUOTE)
        raise protocol_error(provider, f"SSE data is not a JSON object: {quoted!r}", redact)
    return value


def incomplete_stream(provider: str, what: str) -> ProviderError:
    return ProviderError(provider, "connection", f"stream ended before {what}", retryable=True)


class HTTPProvider:
    """Base of the HTTP providers: config, one lazily created ``wire.Client`` (its idle
    connections are reused across calls), and ``_stream_sse`` which makes the single HTTP
    attempt of a model call.

    The client is created on first use (or by ``warm``), not in ``__init__``, so constructing a
    provider (for ``initialize``'s provider list, say) costs nothing and needs no running loop.
    """

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.name = config.name
        self.retry_policy = RetryPolicy(max_retries=config.max_retries)
        self._client: wire.Client | None = None
        self._redact = Redactor(secrets_of(config))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(name={self.name!r}, base_url={self.config.base_url!r})"

    def warm(self) -> None:
        """Do the provider's one-off work now, without network I/O: build its HTTP client and,
        for an ``https`` base URL (or an ``https`` proxy), its TLS context (loading the CA
        bundle). Synchronous, so the daemon can run it in a worker thread before the first
        model call needs it; calling it again, or after a call, does nothing more."""
        self._http_client().warm(self.config.base_url)

    def _http_client(self) -> wire.Client:
        if self._client is None or self._client.is_closed:
            self._client = wire.Client(
                timeouts=build_timeout(self.config),
                headers={"user-agent": f"warren/{__version__}"},
                max_idle=16,
                keepalive_expiry=60,
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _missing_key_error(self, env_hint: str) -> ProviderError:
        where = self.config.api_key_env or env_hint
        return ProviderError(
            self.name,
            "auth",
            f"no API key for provider {self.name!r}: set {where} or api_key in the config file",
            retryable=False,
        )

    def _merged_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The adapter's headers with the configured ones on top: configured headers win (a
        proxy may want its own auth, or a pinned anthropic-version), and names are lower-cased
        so none is sent twice.

        A value HTTP cannot carry (a line break, a non-ASCII character) is refused here with
        a message naming where it came from, never quoting the value (it may be a key).
        """
        configured = {k.lower(): v for k, v in self.config.headers.items()}
        merged = {**{k.lower(): v for k, v in headers.items()}, **configured}
        for name, value in merged.items():
            if _HEADER_VALUE.fullmatch(value):
                continue
            if name in configured:
                source, kind = f"headers.{name} of [providers.{self.name}] in the config file", "bad_request"
            else:
                source = self.config.api_key_env or f"api_key of [providers.{self.name}] in the config file"
                kind = "auth"
            raise ProviderError(
                self.name,
                kind,
                f"the {name} header cannot be sent: the value from {source} contains characters "
                "not allowed in an HTTP header (a line break, a control or non-ASCII character?)",
                retryable=False,
            )
        return merged

    def _host(self, url: str) -> str:
        """``host:port`` of ``url`` without credentials, for error messages."""
        try:
            return urlsplit(url).netloc.rpartition("@")[2]
        except ValueError:
            return ""

    @asynccontextmanager
    async def _request(
        self, method: str, url: str, headers: dict[str, str], content: bytes = b""
    ) -> AsyncIterator[wire.Response]:
        """One HTTP request; transport failures (connecting, or later while the body is read
        inside the block) become ``ProviderError``. Leaving the block closes the response:
        unless its body was read to the end, that drops the connection at once."""
        try:
            async with self._http_client().stream(method, url, headers=headers, content=content) as response:
                yield response
        except wire.HTTPError as exc:
            raise error_from_exception(self.name, exc, self._redact, host=self._host(url)) from None

    async def _get(self, url: str, headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """A small GET: status, headers and at most ``ERROR_BODY_LIMIT`` bytes of body."""
        all_headers = {**self._merged_headers(headers), "accept": "application/json"}
        async with self._request("GET", url, all_headers) as response:
            body = await _read_limited(response)
        return response.status_code, response.headers, body

    async def _stream_sse(
        self,
        url: str,
        body: dict[str, Any],
        feed: Callable[[ServerSentEvent], Iterable["Delta"]],
        finished: Callable[[], bool],
        end_marker: str,
    ) -> AsyncIterator["Delta"]:
        """One streamed call, the part both APIs share: POST ``body``, feed each SSE event to
        the adapter's parser until it has seen ``end_marker``, then read the body to its end so
        the connection can be reused. A fault after the end marker loses nothing and is
        ignored; a stream that ends before it is a retryable connection error.

        Raises ``ProviderError`` for a non-2xx status, a non-SSE body, and any transport
        failure, whether while connecting or mid-stream. Closing this generator (``aclose`` on
        interrupt) leaves the request's block, which drops the unfinished connection at once.
        """
        try:
            content = msgspec.json.encode(body)
        except (TypeError, msgspec.EncodeError) as exc:
            raise ProviderError(self.name, "bad_request", f"request is not JSON-encodable: {exc}", retryable=False) from None
        headers = {
            **self._merged_headers(self.build_headers()),
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        try:
            async with self._request("POST", url, headers, content) as response:
                if response.status_code >= 300:
                    body_bytes = await _read_limited(response)
                    raise error_from_response(self.name, response.status_code, response.headers, body_bytes, self._redact)
                ctype = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                if ctype != "text/event-stream":
                    raise await self._not_a_stream(response, ctype)
                decoder = wire.SSEDecoder()
                async with aclosing(response.aiter_bytes()) as pieces:
                    async for piece in pieces:
                        for sse in decoder.feed(piece):
                            if not finished():
                                for delta in feed(sse):
                                    yield delta
        except ProviderError:
            if not finished():
                raise
            return
        if not finished():
            raise incomplete_stream(self.name, end_marker)

    def build_headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def _not_a_stream(self, response: wire.Response, ctype: str) -> ProviderError:
        """Some compatible servers answer 200 with a JSON error instead of a stream."""
        body = await _read_limited(response)
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            return error_from_payload(self.name, payload, self._redact)
        return protocol_error(
            self.name, f"expected an SSE stream (text/event-stream), got {ctype or 'no content type'!s}",
            self._redact, retryable=False,
        )


async def _read_limited(response: wire.Response) -> bytes:
    """At most ``ERROR_BODY_LIMIT`` bytes of the body. One of exactly that size may have been
    cut off, even inside an echoed secret: quote it only through ``Redactor.clip`` with
    ``complete=False``."""
    return await response.read(ERROR_BODY_LIMIT)


def image_base64(block: ImageBlock, images: Mapping[str, tuple[str, bytes]]) -> tuple[str, str]:
    """The MIME type and base64 data of an image a message names, from the request's
    ``images`` (sha256 -> (mime type, bytes)); empty data when the request lacks it."""
    mime, data = images.get(block.sha256, (block.mime_type, b""))
    return mime, base64.b64encode(data).decode()


MISSING_TOOL_RESULT = "No result was recorded for this tool call."


def with_missing_tool_results(messages: list[Message]) -> list[Message]:
    """History with an error result added for every tool call that never got one.

    Both APIs reject a history where a tool call has no result, which would make a session
    whose turn was cut short between the call and its result unusable for good. The
    synthetic result is a ``tool`` message placed right after the calling message.
    """
    answered = {
        block.tool_use_id
        for message in messages
        for block in message.content
        if isinstance(block, ToolResultBlock)
    }
    out: list[Message] = []
    for message in messages:
        out.append(message)
        if message.role != "assistant":
            continue
        missing = [
            ToolResultBlock(block.id, MISSING_TOOL_RESULT, True)
            for block in message.content
            if isinstance(block, ToolUseBlock) and block.id not in answered
        ]
        if missing:
            out.append(Message(message.index, "tool", list(missing), message.created_at_ms, "", message.turn_id))
    return out


def build_provider(config: ProviderConfig) -> "Provider":
    """The provider object for a config entry (imports only the adapter it needs)."""
    if config.type == "anthropic":
        from warren.daemon.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config)
    from warren.daemon.providers.openai import OpenAIProvider

    return OpenAIProvider(config)
