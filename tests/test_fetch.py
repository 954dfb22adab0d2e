"""stages.fetch against a loopback HTTP server: statuses, deadline, byte cap, redirects, address checks, cleanup."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imgclf.sources import fetch
from imgclf.sources.fetch import check_url, fetch_to_file

BODY = bytes(range(256)) * 800  # 200 KiB: several chunks
BIG = b"x" * 5000
CAP = 1000
DEST_NAME = "fetched.bin"


class _Handler(BaseHTTPRequestHandler):
    """Routes by path; every request path is recorded in server.hits."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        route = getattr(self, "route_" + self.path.strip("/").replace("-", "_"), None)
        if route is None:
            self.send_error(404)
            return
        try:
            route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as the tests intend

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route_ok(self) -> None:
        self._send(200, BODY)

    def route_500(self) -> None:
        self.send_error(500)

    def route_gzip(self) -> None:
        self._send(200, gzip.compress(BODY), {"Content-Encoding": "gzip"})

    def route_drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "200")
        self.end_headers()
        for _ in range(200):  # 40 s in all, far past any test deadline
            if self.server.stop.wait(0.2):
                return
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_stall(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.flush()
        self.server.stop.wait(30)

    def route_drip_stall(self, length: bool = True) -> None:
        # Five drips (1 s), then silence: catches a read timeout fixed at request time instead of the time left.
        self.send_response(200)
        if length:
            self.send_header("Content-Length", "10")
        self.end_headers()
        for _ in range(5):
            self.server.stop.wait(0.2)
            self.wfile.write(b"x")
            self.wfile.flush()
        self.server.stop.wait(30)

    def route_drip_stall_close(self) -> None:
        # Same without Content-Length: cutting this body short must not look like a complete download.
        self.route_drip_stall(length=False)

    def route_huge_cl(self) -> None:
        # Announces 1 GB, sends a little, then hangs: only an up-front Content-Length check ends this quickly.
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.wfile.write(b"z" * 10)
        self.wfile.flush()
        self.server.stop.wait(30)

    def route_big_cl(self) -> None:
        self._send(200, BIG)

    def route_big_close(self) -> None:
        # HTTP/1.0 without Content-Length: the body ends when the connection closes.
        self._send(200, BIG, length=False)

    def route_big_chunked(self) -> None:
        self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(0, len(BIG), 500):
            piece = BIG[i : i + 500]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def route_truncated(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"y" * 500)  # then the connection closes

    def route_redirect(self) -> None:
        self._send(302, b"", {"Location": "ok"})  # relative: resolved against /redirect

    def route_loop(self) -> None:
        self._send(302, b"", {"Location": "/loop"})

    def route_to_private(self) -> None:
        self._send(302, b"", {"Location": f"http://127.0.0.1:{self.server.server_port}/ok"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []
        self.stop = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-body is the point of several tests

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _stray_temp_files() -> set[Path]:
    """Temp files named after DEST_NAME in places a wrong implementation might write them."""
    places = {Path.cwd(), Path(tempfile.gettempdir()), Path.home()}
    return {p for place in places for p in place.glob(f".{DEST_NAME}*")}


@pytest.fixture(autouse=True)
def nothing_outside_tmp_path():
    before = _stray_temp_files()
    yield
    assert _stray_temp_files() == before


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _fetch(srv: _Server, tmp_path: Path, path: str, **kwargs) -> fetch.FetchResult:
    kwargs.setdefault("allow_private", True)  # the test server is on loopback
    return fetch_to_file(srv.url(path), tmp_path / "sub" / DEST_NAME, **kwargs)


def _assert_failed(result: fetch.FetchResult, status: str, tmp_path: Path) -> None:
    assert (result.status, result.path, result.size) == (status, None, 0), result
    assert result.reason
    assert _files(tmp_path) == []  # no dest, no .part


def test_ok_writes_exact_bytes_and_reports_progress(server, tmp_path):
    seen: list[int] = []
    result = _fetch(server, tmp_path, "/ok", progress=seen.append)
    dest = tmp_path / "sub" / DEST_NAME
    assert (result.status, result.path, result.size, result.final_url) == ("ok", dest, len(BODY), server.url("/ok"))
    assert dest.read_bytes() == BODY
    assert sum(seen) == len(BODY)
    assert _files(tmp_path) == [f"sub/{DEST_NAME}"]


def test_gzip_body_is_decoded(server, tmp_path):
    result = _fetch(server, tmp_path, "/gzip")
    assert result.status == "ok"
    assert result.path.read_bytes() == BODY


@pytest.mark.parametrize(
    "path,status,reason",
    [("/missing", "http_404", "HTTP 404 Not Found"), ("/500", "http_500", "HTTP 500 Internal Server Error")],
)
def test_http_errors(server, tmp_path, path, status, reason):
    result = _fetch(server, tmp_path, path)
    _assert_failed(result, status, tmp_path)
    assert result.reason == reason


@pytest.mark.parametrize("path", ["/drip", "/stall", "/drip-stall", "/drip-stall-close"])
def test_deadline_covers_slow_servers(server, tmp_path, path):
    start = time.monotonic()
    result = _fetch(server, tmp_path, path, deadline=1.5)
    elapsed = time.monotonic() - start
    _assert_failed(result, "timeout", tmp_path)
    assert 1.4 <= elapsed < 2.2


def test_existing_dest_is_untouched_on_failure(server, tmp_path):
    dest = tmp_path / "sub" / DEST_NAME
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    assert _fetch(server, tmp_path, "/truncated").status == "connection_error"
    assert dest.read_bytes() == b"old"
    assert _files(tmp_path) == [f"sub/{DEST_NAME}"]


@pytest.mark.parametrize("path", ["/big-cl", "/big-close", "/big-chunked"])
def test_body_over_the_cap(server, tmp_path, path):
    result = _fetch(server, tmp_path, path, max_bytes=CAP)
    _assert_failed(result, "too_large", tmp_path)
    assert f"over {CAP} bytes" in result.reason


def test_announced_oversize_is_refused_before_reading(server, tmp_path):
    start = time.monotonic()
    result = _fetch(server, tmp_path, "/huge-cl", deadline=5.0)
    _assert_failed(result, "too_large", tmp_path)
    assert result.reason == f"over 20000000 bytes (Content-Length {10**9})"
    assert time.monotonic() - start < 1.0


def test_body_at_the_cap_is_ok(server, tmp_path):
    for path in ("/big-cl", "/big-close", "/big-chunked"):
        result = _fetch(server, tmp_path, path, max_bytes=len(BIG))
        assert (result.status, result.path.read_bytes()) == ("ok", BIG), path


def test_truncated_body_is_a_connection_error(server, tmp_path):
    _assert_failed(_fetch(server, tmp_path, "/truncated"), "connection_error", tmp_path)


def test_relative_redirect_is_followed(server, tmp_path):
    result = _fetch(server, tmp_path, "/redirect")
    assert (result.status, result.final_url, result.url) == ("ok", server.url("/ok"), server.url("/redirect"))
    assert result.path.read_bytes() == BODY
    assert server.hits == ["/redirect", "/ok"]


def test_redirect_loop(server, tmp_path):
    result = _fetch(server, tmp_path, "/loop", max_redirects=3)
    _assert_failed(result, "too_many_redirects", tmp_path)
    assert server.hits == ["/loop"] * 4  # the first request plus three redirects


def test_redirect_to_private_address_is_blocked(server, tmp_path, monkeypatch):
    real_kind, calls = fetch._address_kind, []

    def first_hop_looks_public(addr):
        # The first hop (localhost, connected to as resolved) passes the check; the redirect target is judged.
        calls.append(addr)
        return None if len(calls) == 1 else real_kind(addr)

    monkeypatch.setattr(fetch, "_address_kind", first_hop_looks_public)
    url = f"http://localhost:{server.server_port}/to-private"
    result = fetch_to_file(url, tmp_path / "sub" / DEST_NAME, allow_private=False)
    _assert_failed(result, "blocked_address", tmp_path)
    assert result.reason == "resolves to 127.0.0.1 (loopback)"
    assert result.final_url == server.url("/ok")
    assert server.hits == ["/to-private"]  # the private target was never contacted


def test_environment_proxies_are_ignored(server, tmp_path, monkeypatch):
    # A proxy would make the address check meaningless; port 9 (discard) refuses on loopback.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _fetch(server, tmp_path, "/ok").status == "ok"


def test_loopback_is_blocked_without_allow_private(server, tmp_path):
    result = _fetch(server, tmp_path, "/ok", allow_private=False)
    _assert_failed(result, "blocked_address", tmp_path)
    assert "loopback" in result.reason
    assert server.hits == []


@pytest.mark.parametrize(
    "url,status",
    [
        ("file:///etc/passwd", "bad_scheme"),
        ("ftp://example.com/a.jpg", "bad_scheme"),
        ("javascript:alert(1)", "bad_scheme"),
        ("http:///no-host", "bad_url"),
        ("http://[::1/", "bad_url"),
        ("http://example.com:99999/", "bad_url"),
    ],
)
def test_refused_urls(tmp_path, url, status):
    result = fetch_to_file(url, tmp_path / DEST_NAME)
    _assert_failed(result, status, tmp_path)


@pytest.mark.parametrize(
    "host,kind",
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:10.0.0.1]", "private"),  # IPv4-mapped
        ("[2002:a9fe:a9fe::]", "link-local"),  # 6to4 of 169.254.169.254, the cloud metadata address
        ("[2002:7f00:1::1]", "loopback"),  # 6to4 of 127.0.0.1
        ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 of 169.254.169.254
        ("[64:ff9b::10.1.2.3]", "private"),  # NAT64 of 10.1.2.3
        ("[64:ff9b:1::a00:1]", "local-use NAT64"),  # RFC 8215: local NAT64, never public
        ("[::10.1.2.3]", "private"),  # IPv4-compatible
        ("[::8.8.8.8]", "reserved"),  # IPv4-compatible addresses are deprecated, public or not
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "private"),  # Teredo
        ("[fe80::1]", "link-local"),
        ("2130706433", "loopback"),
        ("0x7f.0.0.1", "loopback"),  # numeric spellings the resolver accepts
    ],
)
def test_check_url_blocks_non_public_addresses(host, kind):
    status, reason = check_url(f"http://{host}/x.jpg", allow_private=False)
    assert status == "blocked_address"
    assert reason.endswith(f"({kind})")
    assert check_url(f"http://{host}/x.jpg", allow_private=True) is None


@pytest.mark.parametrize(
    "host",
    [
        "93.184.216.34",
        "[2606:4700:4700::1111]",  # a public IPv6 address
        "[::ffff:8.8.8.8]",  # the IPv4-mapped, 6to4 and NAT64 forms of a public IPv4 address reach it
        "[2002:808:808::1]",
        "[64:ff9b::8.8.8.8]",  # what a DNS64 resolver answers on an IPv6-only network
    ],
)
def test_check_url_allows_public_address(host):
    assert check_url(f"https://{host}/x.jpg", allow_private=False) is None


@pytest.fixture
def fake_dns(monkeypatch):
    """socket.getaddrinfo answering names in `answers` (name -> (IP, seconds before the answer)); other names go
    to the real resolver. The code's own lookup, parsing and checks run on the answers."""
    real, answers = socket.getaddrinfo, {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        ip, delay = answers[host]
        time.sleep(delay)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sockaddr = (ip, port or 0, 0, 0) if family == socket.AF_INET6 else (ip, port or 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize(
    "ip,kind",
    [("2002:a9fe:a9fe::", "link-local"), ("64:ff9b::a9fe:a9fe", "link-local"), ("::ffff:192.168.1.1", "private")],
)
def test_a_name_resolving_to_an_ipv6_form_of_a_private_address_is_blocked(fake_dns, tmp_path, ip, kind):
    fake_dns["metadata.example"] = (ip, 0)
    result = fetch_to_file("http://metadata.example/x.jpg", tmp_path / DEST_NAME, deadline=5)
    _assert_failed(result, "blocked_address", tmp_path)
    assert result.reason.startswith(f"resolves to {ipaddress.ip_address(ip)}, the ") and result.reason.endswith(
        f"({kind})"
    )


def test_a_name_resolving_to_a_public_ipv6_address_passes_the_check(fake_dns):
    fake_dns["images.example"] = ("2606:4700:4700::1111", 0)
    assert check_url("https://images.example/x.jpg", allow_private=False, timeout=5) is None


def test_a_slow_resolver_fails_the_url_within_the_deadline(fake_dns, tmp_path):
    """getaddrinfo has no timeout: the lookup counts against the URL's deadline all the same."""
    fake_dns["slow.example"] = ("93.184.216.34", 3.0)
    start = time.monotonic()
    result = fetch_to_file("http://slow.example/x.jpg", tmp_path / DEST_NAME, deadline=0.5)
    elapsed = time.monotonic() - start
    _assert_failed(result, "timeout", tmp_path)
    assert "slow.example" in result.reason
    assert elapsed < 1.0, elapsed  # about the deadline, not the resolver's 3 s


def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(fake_dns, server, tmp_path, monkeypatch):
    """A name looked up once: the check's answer is the address connected to (no DNS rebinding between the check
    and the connection, and no lookup outside the deadline); the Host header still names the host."""
    lookups = []
    answer = socket.getaddrinfo

    def counted(host, *args, **kwargs):
        lookups.append(host)
        return answer(host, *args, **kwargs)

    fake_dns["pinned.example"] = ("127.0.0.1", 0)
    monkeypatch.setattr(socket, "getaddrinfo", counted)
    url = f"http://pinned.example:{server.server_port}/ok"
    result = fetch_to_file(url, tmp_path / DEST_NAME, allow_private=True, deadline=5)
    assert result.status == "ok", result
    # the connection's getaddrinfo gets the address itself (numeric: no DNS), never the name again
    assert lookups[0] == "pinned.example" and lookups[1:] == ["127.0.0.1"]


def test_connection_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    result = fetch_to_file(f"http://127.0.0.1:{port}/x", tmp_path / DEST_NAME, allow_private=True)
    _assert_failed(result, "connection_error", tmp_path)


def test_keyboard_interrupt_mid_download_leaves_nothing(server, tmp_path):
    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fetch(server, tmp_path, "/ok", progress=interrupt)
    assert _files(tmp_path) == []
    result = _fetch(server, tmp_path, "/ok")
    assert result.status == "ok"
    assert result.path.read_bytes() == BODY
    assert _files(tmp_path) == [f"sub/{DEST_NAME}"]
