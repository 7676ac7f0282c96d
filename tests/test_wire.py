"""wire.py, the providers' HTTP/1.1 client, against real loopback servers: Content-Length,
chunked (cut at every byte) and read-to-close bodies, keep-alive reuse, a pooled connection the
server closed, a server hanging up mid-body, slow headers, closing early, TLS with a
self-signed certificate, proxies from the environment, gzip; and its SSE decoder against
httpx-sse's."""

from __future__ import annotations

import gzip
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.daemon.providers import wire

pytestmark = pytest.mark.anyio

Handler = Callable[[socket.socket, int], None]


class RawServer:
    """Accepts connections on 127.0.0.1 and runs ``handler(sock, connection_number)`` for each
    one in a thread; records each request head it reads through ``read_head``."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.heads: list[bytes] = []
        self.closed = threading.Event()  # set when a handler saw the client close
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._run, args=(sock, self.connections), daemon=True).start()

    def _run(self, sock: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.handler(sock, number)
        except OSError:
            pass
        finally:
            sock.close()

    def read_head(self, sock: socket.socket) -> bytes:
        """One request head and its Content-Length body; ``b""`` if the client closed."""
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return b""
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                size = int(line.split(b":")[1])
                while len(body) < size:
                    body += sock.recv(65536)
        self.heads.append(head)
        return head

    def url(self, path: str = "/x", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler, **kw: Any) -> RawServer:
        servers.append(RawServer(handler, **kw))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(**kw: Any) -> wire.Client:
    timeouts = kw.pop("timeouts", wire.Timeouts(connect=5, read=5, write=5))
    return wire.Client(timeouts=timeouts, headers={"user-agent": "test"}, **kw)


async def fetch(c: wire.Client, url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with c.stream(kw.pop("method", "GET"), url, **kw) as response:
        body = await response.read()
    return response.status_code, dict(response.headers), body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"


async def test_content_length_and_keep_alive_reuse(serve: Callable[..., RawServer]) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        while server.read_head(sock):
            sock.sendall(OK_HEAD + b"Content-Length: 5\r\nX-Multi: a\r\nx-multi: b\r\n\r\nhello")

    server = serve(handler)
    c = client()
    status, headers, body = await fetch(c, server.url(), method="POST", content=b'{"a":1}',
                                        headers={"Authorization": "Bearer k"})
    assert (status, body, headers["x-multi"]) == (200, b"hello", "a, b")
    assert (await fetch(c, server.url("/y?q=1")))[2] == b"hello"
    assert server.connections == 1
    first, second = server.heads
    assert first.startswith(b"POST /x HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:%d\r\n" % server.port in first
    assert b"\r\nauthorization: Bearer k\r\n" in first and b"\r\ncontent-length: 7" in first
    assert b"\r\nuser-agent: test\r\n" in first
    assert second.startswith(b"GET /y?q=1 HTTP/1.1\r\n") and b"content-length" not in second
    await c.aclose()


async def test_chunked_body_cut_at_every_byte_with_trailers(serve: Callable[..., RawServer]) -> None:
    payload = chunked(b"data: one\n\n", b"x" * 300, b"data: two\n\n")[:-2] + b"Trailer-A: 1\r\n\r\n"

    def handler(sock: socket.socket, _: int) -> None:
        while server.read_head(sock):
            sock.sendall(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(len(payload)):
                sock.sendall(payload[i:i + 1])
                if i % 7 == 0:
                    time.sleep(0.0005)

    server = serve(handler)
    c = client()
    for _ in range(2):
        _, _, body = await fetch(c, server.url())
        assert body == b"data: one\n\n" + b"x" * 300 + b"data: two\n\n"
    assert server.connections == 1  # the trailer was consumed: the connection was reusable
    await c.aclose()


async def test_body_until_close_is_not_reused(serve: Callable[..., RawServer]) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        sock.sendall(b"HTTP/1.0 200 OK\r\n\r\nall of it")

    server = serve(handler)
    c = client()
    assert (await fetch(c, server.url()))[2] == b"all of it"
    assert (await fetch(c, server.url()))[2] == b"all of it"
    assert server.connections == 2
    await c.aclose()


async def test_pooled_connection_closed_by_server_is_replaced(serve: Callable[..., RawServer]) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        sock.sendall(OK_HEAD + b"content-length: 2\r\n\r\nok")
        # and close: keep-alive was not refused, but the server drops idle connections

    server = serve(handler)
    c = client()
    assert (await fetch(c, server.url()))[2] == b"ok"
    await anyio.sleep(0.05)
    assert (await fetch(c, server.url()))[2] == b"ok"
    assert server.connections == 2
    await c.aclose()


async def test_request_on_a_connection_dropped_unnoticed_is_sent_again(serve: Callable[..., RawServer]) -> None:
    """The keep-alive race: the server closes just as the request goes out on a reused
    connection; the request is sent again, once, on a new connection."""
    def handler(sock: socket.socket, number: int) -> None:
        server.read_head(sock)
        if number == 1:
            sock.sendall(OK_HEAD + b"content-length: 2\r\n\r\nok")
            server.read_head(sock)  # the second request arrives… and gets no answer
            return
        sock.sendall(OK_HEAD + b"content-length: 3\r\n\r\nyes")

    server = serve(handler)
    c = client()
    assert (await fetch(c, server.url()))[2] == b"ok"
    assert (await fetch(c, server.url()))[2] == b"yes"
    assert server.connections == 2
    # The second request went out on the reused connection first (without pooling it would
    # have gone out once, on a new one, and this test would prove nothing).
    assert len(server.heads) == 3
    await c.aclose()


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_server_closing_mid_body(serve: Callable[..., RawServer], framing: str) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        if framing == "chunked":
            sock.sendall(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n8\r\npart")
        else:
            sock.sendall(OK_HEAD + b"content-length: 100\r\n\r\nhello")

    server = serve(handler)
    c = client()
    pieces: list[bytes] = []
    with pytest.raises(wire.RemoteProtocolError, match="peer closed connection"):
        async with c.stream("GET", server.url()) as response:
            async for piece in response.aiter_bytes():
                pieces.append(piece)
    assert b"".join(pieces).startswith(b"hello")
    await c.aclose()


async def test_slow_headers_hit_the_read_timeout(serve: Callable[..., RawServer]) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        time.sleep(1.0)

    server = serve(handler)
    c = client(timeouts=wire.Timeouts(connect=5, read=0.2, write=5))
    started = time.monotonic()
    with pytest.raises(wire.ReadTimeout):
        await fetch(c, server.url())
    assert time.monotonic() - started < 0.8
    await c.aclose()


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(wire.ConnectError):
        await fetch(client(), f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///nohost", "http://host:notaport/"])
async def test_bad_urls(url: str) -> None:
    with pytest.raises((wire.UnsupportedProtocol, wire.InvalidURL)):
        await fetch(client(), url)


async def test_header_injection_is_refused(serve: Callable[..., RawServer]) -> None:
    with pytest.raises(wire.LocalProtocolError):
        await fetch(client(), "http://127.0.0.1:9/", headers={"x-a": "1\r\nx-b: 2"})


async def test_leaving_early_drops_the_connection_at_once(serve: Callable[..., RawServer]) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        sock.sendall(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        sock.settimeout(5)
        if sock.recv(1) == b"":
            server.closed.set()

    server = serve(handler)
    c = client()
    async with c.stream("GET", server.url()) as response:
        async for piece in response.aiter_bytes():
            assert piece == b"first"
            break
    assert await anyio.to_thread.run_sync(server.closed.wait, 2.0)
    await c.aclose()


async def test_gzip_body_is_decoded(serve: Callable[..., RawServer]) -> None:
    packed = gzip.compress(b"squeezed " * 100)

    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        sock.sendall(OK_HEAD + b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(packed) + packed)

    server = serve(handler)
    assert (await fetch(client(), server.url()))[2] == b"squeezed " * 100


async def test_interim_response_is_skipped(serve: Callable[..., RawServer]) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        server.read_head(sock)
        sock.sendall(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK_HEAD + b"content-length: 1\r\n\r\n!")

    server = serve(handler)
    assert (await fetch(client(), server.url()))[:3:2] == (200, b"!")


async def test_no_tls_context_for_http_and_warm_builds_it_for_https() -> None:
    c = client()
    c.warm("http://127.0.0.1:1/v1")
    assert c._ssl_context is None
    c.warm("https://api.example.com/v1")
    assert isinstance(c._ssl_context, ssl.SSLContext)


# ---------------------------------------------------------------- TLS and proxies


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


async def test_tls_with_a_self_signed_certificate(
    serve: Callable[..., RawServer], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        while server.read_head(sock):
            sock.sendall(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunked(b"secure"))

    server = serve(handler, tls=server_tls(certificate))
    with pytest.raises(wire.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch(client(), server.url(scheme="https"))  # not trusted by default
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    c = client()
    for _ in range(2):
        assert (await fetch(c, server.url(scheme="https")))[2] == b"secure"
    assert server.connections == 2  # one refused above, one kept alive for both
    await c.aclose()


async def test_http_proxy_from_the_environment(serve: Callable[..., RawServer], monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(sock: socket.socket, _: int) -> None:
        while server.read_head(sock):
            sock.sendall(OK_HEAD + b"content-length: 7\r\n\r\nproxied")

    server = serve(handler)
    monkeypatch.setenv("http_proxy", f"http://user:pw@127.0.0.1:{server.port}")
    monkeypatch.setenv("no_proxy", "localhost,.internal")
    assert (await fetch(client(), "http://api.example.com/v1/models"))[2] == b"proxied"
    head = server.heads[-1]
    assert head.startswith(b"GET http://api.example.com/v1/models HTTP/1.1\r\n")
    assert b"\r\nhost: api.example.com\r\n" in head and b"\r\nproxy-authorization: Basic dXNlcjpwdw==" in head
    assert wire.proxy_for("http://svc.internal/") is None and wire.proxy_for("http://localhost:1/") is None


async def test_https_through_a_connect_tunnel(
    serve: Callable[..., RawServer], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = server_tls(certificate)

    def handler(sock: socket.socket, _: int) -> None:
        head = server.read_head(sock)
        assert head.startswith(b"CONNECT localhost:443 HTTP/1.1\r\n")
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        inner = tls.wrap_socket(sock, server_side=True)
        server.read_head(inner)
        inner.sendall(OK_HEAD + b"content-length: 8\r\n\r\ntunneled")
        inner.close()

    server = serve(handler)
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    assert (await fetch(client(), "https://localhost/v1/x"))[2] == b"tunneled"
    assert server.heads[-1].startswith(b"GET /v1/x HTTP/1.1\r\n")


# ---------------------------------------------------------------- SSE


def test_sse_decoder_shapes() -> None:
    decoder = wire.SSEDecoder()
    events = decoder.feed(b": keep-alive\n\ndata: a\r\ndata:b\r\n\r\nevent: ping\ndata: {}\n\nid: 7\nretry: 10\ndata")
    assert [(e.event, e.data) for e in events] == [("message", "a\nb"), ("ping", "{}")]
    events = decoder.feed(b": x\n\n")
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [("message", "x", "7", 10)]
    assert decoder.feed(b"data: unfinished") == []


EVENTS = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["ping", "content_block_delta", "message_stop"])),
        st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                         max_size=20), min_size=1, max_size=3),
        st.booleans(),  # a comment line before it
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_sse_decoder_agrees_with_httpx_sse(events: list[Any], eol: str, data: st.DataObject) -> None:
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text = ""
    for name, lines, comment in events:
        if comment:
            text += ": comment" + eol
        if name:
            text += f"event: {name}{eol}"
        text += "".join(f"data: {line}{eol}" for line in lines) + eol
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]

    expected = []
    lines_decoder, sse_decoder = SSELineDecoder(), SSEDecoder()
    for line in lines_decoder.decode(raw.decode()) + lines_decoder.flush():
        event = sse_decoder.decode(line)
        if event is not None:
            expected.append((event.event, event.data))

    ours = wire.SSEDecoder()
    got = [(e.event, e.data) for piece in pieces for e in ours.feed(piece)]
    assert got == expected


# ---------------------------------------------------------------- the provider seam


def test_provider_warm_does_the_one_off_work_without_a_loop_or_network() -> None:
    """``HTTPProvider.warm`` (run by the daemon in a worker thread) builds the client, and the
    TLS context only for an https base URL; the next call uses what it built."""
    from warren.daemon.config import ProviderConfig
    from warren.daemon.providers.openai import OpenAIProvider

    local = OpenAIProvider(ProviderConfig(name="local", type="openai", base_url="http://127.0.0.1:9/v1"))
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            local.warm()
            result.append(None)
        except BaseException as exc:  # pragma: no cover - reported below
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert result == [None]
    assert local._client is not None and local._client._ssl_context is None
    remote = OpenAIProvider(ProviderConfig(name="openai", type="openai", base_url="https://api.openai.com/v1",
                                           api_key="sk-x"))
    remote.warm()
    client = remote._client
    assert client is not None and isinstance(client._ssl_context, ssl.SSLContext)
    remote.warm()
    assert remote._client is client and client._ssl_context is not None
    assert remote._http_client() is client
