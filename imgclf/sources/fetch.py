"""Download one URL to a file safely: http(s) only, no private addresses, a deadline, a byte cap, an atomic write.

The check's name lookup counts against the deadline: `socket.getaddrinfo` has no timeout of its own, so it runs in
a thread that is given up on (left to finish by itself) when the deadline passes.

The connection goes to the address the check resolved (`_PinnedAdapter`), not to a second lookup of the name: a
DNS server cannot answer the check with a public address and the connection with a private one (DNS rebinding),
and no lookup runs outside the deadline. TLS still checks the certificate against the host's name.
"""

from __future__ import annotations

import http
import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

log = logging.getLogger(__name__)

# Some image hosts answer 403 to the default python-requests agent.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
_CHUNK = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchResult:
    """What happened to one URL; `path` is set only when status == "ok"."""

    url: str
    status: str
    reason: str
    path: Path | None
    final_url: str
    size: int


class _Failed(Exception):
    """Internal: ends a fetch with (status, reason)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _ResolveTimeout(Exception):
    """Internal: the name lookup did not answer within the time left."""


def _getaddrinfo(host: str, timeout: float | None) -> list:
    """`socket.getaddrinfo(host)`, given up after `timeout` seconds (None: no limit). getaddrinfo cannot be
    interrupted, so it runs in a daemon thread; one given up on finishes, or hangs, by itself without holding
    anything of ours."""
    if timeout is None:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    answer: dict[str, object] = {}

    def lookup() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            answer["error"] = e

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _ResolveTimeout(f"no answer from the resolver for {host} within {timeout:.1f} s")
    if "error" in answer:
        raise answer["error"]  # type: ignore[misc]
    return answer["infos"]  # type: ignore[return-value]


def _resolve(host: str, timeout: float | None = None) -> list[IPAddress]:
    """Every address `host` resolves to, within `timeout` seconds; an IP literal resolves to itself without DNS."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = _getaddrinfo(host, timeout)
    # IPv6 link-local answers can carry a "%scope" suffix that ip_address() rejects.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are the IPv4 address
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: NAT64 inside one network, never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d (:: and ::1 are IPv6's own)


def _embedded_ipv4(addr: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """(form, IPv4 address) when `addr` is an IPv6 address that reaches an IPv4 one: IPv4-mapped ::ffff:a.b.c.d,
    6to4 2002:AABB:CCDD::/48, NAT64 64:ff9b::a.b.c.d, IPv4-compatible ::a.b.c.d. (Teredo, 2001::/32, is
    refused as private whatever it embeds.)"""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.ipv4_mapped is not None:
        return "IPv4-mapped", addr.ipv4_mapped
    if addr.sixtofour is not None:
        return "6to4", addr.sixtofour
    if addr in _NAT64:
        return "NAT64", low32
    if addr in _IPV4_COMPATIBLE and int(addr) > 1:
        return "IPv4-compatible", low32
    return None


def _address_kind(addr: IPAddress) -> str | None:
    """Why `addr` is not a public address (e.g. "loopback"), or None when it is. An IPv6 address that embeds an
    IPv4 address (see `_embedded_ipv4`) is judged by that address: 2002:a9fe:a9fe:: reaches 169.254.169.254,
    and Python's flags do not look inside these forms."""
    embedded = _embedded_ipv4(addr)
    if embedded is not None:
        form, v4 = embedded
        kind = _address_kind(v4)
        if kind or form != "IPv4-compatible":
            return kind  # a public IPv4 address in a mapped, 6to4 or NAT64 form (DNS64 answers so) is public
    if addr in _NAT64_LOCAL:
        return "local-use NAT64"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    if not addr.is_global:
        return "not globally routable"  # e.g. 100.64.0.0/10 carrier-grade NAT
    return None


def check_url(url: str, allow_private: bool, timeout: float | None = None) -> tuple[str, str] | None:
    """(status, reason) if `url` may not be fetched, else None (`checked_address`'s verdict)."""
    return checked_address(url, allow_private, timeout)[0]


def checked_address(
    url: str, allow_private: bool, timeout: float | None = None
) -> tuple[tuple[str, str] | None, IPAddress | None]:
    """((status, reason), None) if `url` may not be fetched, else (None, the address to connect to).

    bad_scheme: not http/https; bad_url: unparsable or no host; blocked_address: the host resolves to a
    private, loopback, link-local, multicast, reserved or unspecified address, or an IPv6 form of one (unless
    allow_private); connection_error: the host does not resolve; timeout: the name lookup took longer than
    `timeout` seconds. With allow_private every address passes; the name is still looked up once, within
    `timeout`, for the connection.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port like :99999 or :abc
    except ValueError as e:
        return ("bad_url", f"cannot parse URL: {e}"), None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return ("bad_scheme", f"scheme {scheme or '(none)'!r} is not http or https"), None
    if not host:
        return ("bad_url", "URL has no host"), None
    try:
        addresses = _resolve(host, timeout)
    except _ResolveTimeout as e:
        return ("timeout", str(e)), None
    except (OSError, UnicodeError) as e:
        return ("connection_error", f"cannot resolve {host}: {e}"), None
    if not addresses:
        return ("connection_error", f"cannot resolve {host}: no address"), None
    for addr in addresses if not allow_private else ():
        kind = _address_kind(addr)
        if kind:
            embedded = _embedded_ipv4(addr)
            shown = f"{addr}, the {embedded[0]} form of {embedded[1]}" if embedded else str(addr)
            return ("blocked_address", f"resolves to {shown} ({kind})"), None
    return None, addresses[0]


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    """requests' HTTP adapter, connecting each host to the address pinned for it in `pins` (host -> IP) instead of
    looking the name up again. The host's name stays in the Host header, the TLS server name and the certificate
    check."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.pins: dict[str, str] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        ip = self.pins.get(str(pool.host).strip("[]").lower())
        base = getattr(pool.ConnectionCls, "unpinned", pool.ConnectionCls)
        if ip is None:
            raise _Failed("connection_error", f"{pool.host} was not checked before connecting")
        if getattr(pool.ConnectionCls, "pinned", None) != ip:
            pool.ConnectionCls = type(
                base.__name__, (base,), {"pinned": ip, "unpinned": base, "_new_conn": _pinned_conn}
            )
        return pool


def _pinned_conn(self) -> socket.socket:
    """urllib3's HTTPConnection._new_conn, to the pinned address (`self.pinned`) rather than the host's name."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
    from urllib3.util.connection import create_connection

    try:
        return create_connection(
            (self.pinned, self.port),
            self.timeout,
            source_address=self.source_address,
            socket_options=self.socket_options,
        )
    except TimeoutError as e:
        raise ConnectTimeoutError(self, f"Connection to {self.host} ({self.pinned}) timed out") from e
    except OSError as e:
        raise NewConnectionError(self, f"Failed to establish a new connection to {self.pinned}: {e}") from e


def _open_temp(dest: Path) -> tuple[Path, BinaryIO]:
    """A new hidden `.part` file next to `dest` (same filesystem, so the final rename is atomic)."""
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        try:
            # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600.
            return tmp, open(tmp, "xb")
        except FileExistsError:
            continue


def _remaining(end: float) -> float:
    """Seconds left before the deadline; _Failed("timeout") once it has passed."""
    left = end - time.monotonic()
    if left <= 0:
        raise _Failed("timeout", "deadline passed")
    return left


def _http_reason(resp: requests.Response) -> str:
    """'HTTP 404 Not Found', with the standard phrase when the server sent none."""
    phrase = resp.reason
    if not phrase:
        try:
            phrase = http.HTTPStatus(resp.status_code).phrase
        except ValueError:
            phrase = ""
    return f"HTTP {resp.status_code} {phrase}".rstrip()


def _check_length(resp: requests.Response, max_bytes: int) -> None:
    """Refuse before reading the body when the server announces more than `max_bytes`."""
    try:
        length = int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return  # absent or garbled: the streaming count still applies
    if length > max_bytes:
        raise _Failed("too_large", f"over {max_bytes} bytes (Content-Length {length})")


class _Watchdog:
    """Shuts the response's socket down when the deadline passes, so a read blocked on a silent server
    returns at once instead of waiting out a read timeout that was fixed when the request was sent."""

    def __init__(self, resp: requests.Response, end: float):
        self.fired = threading.Event()
        self._raw = resp.raw
        self._timer = threading.Timer(max(0.0, end - time.monotonic()), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        try:
            self._raw.shutdown()
        except (OSError, ValueError, RuntimeError):
            pass  # already closed or released: nothing left to unblock

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _read_chunk(resp: requests.Response, end: float, watchdog: _Watchdog) -> bytes:
    """Next piece of the (decoded) body; b"" at the end."""
    _remaining(end)
    try:
        # read1 returns after one socket read: a server that drips a byte at a time cannot keep us
        # blocked filling a large buffer, so the clock is checked between drips.
        chunk = resp.raw.read1(_CHUNK, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        if watchdog.fired.is_set() or isinstance(e, urllib3.exceptions.ReadTimeoutError):
            raise _Failed("timeout", "deadline passed while reading the body") from None
        raise _Failed("connection_error", f"connection broken while reading the body: {e}") from None
    if not chunk and watchdog.fired.is_set():
        # A shut-down socket reads as end-of-body; without a Content-Length that would look complete.
        raise _Failed("timeout", "deadline passed while reading the body")
    return chunk


def _stream_body(
    resp: requests.Response, out: BinaryIO, end: float, max_bytes: int, progress: Callable[[int], None] | None
) -> int:
    """Copy the body into `out` before the deadline; return the byte count."""
    size = 0
    with _Watchdog(resp, end) as watchdog:
        while chunk := _read_chunk(resp, end, watchdog):
            size += len(chunk)
            if size > max_bytes:
                # Counted on decoded bytes, so a gzip bomb or a missing/false Content-Length is caught too.
                raise _Failed("too_large", f"over {max_bytes} bytes")
            out.write(chunk)
            if progress is not None:
                progress(len(chunk))
    return size


def _get(session: requests.Session, url: str, end: float, connect_timeout: float) -> requests.Response:
    """One GET without following redirects; network errors become _Failed."""
    left = _remaining(end)
    try:
        return session.get(url, stream=True, allow_redirects=False, timeout=(min(connect_timeout, left), left))
    except requests.exceptions.Timeout as e:  # ConnectTimeout and ReadTimeout
        raise _Failed("timeout", f"timed out: {e}") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema) as e:
        raise _Failed("bad_url", str(e)) from None
    except ValueError as e:  # e.g. a control character in the URL, rejected by http.client
        raise _Failed("bad_url", str(e)) from None
    except requests.exceptions.RequestException as e:
        raise _Failed("connection_error", str(e)) from None


def _download(
    resp: requests.Response, dest: Path, end: float, max_bytes: int, progress: Callable[[int], None] | None
) -> int:
    """Write the body of a 200 response to `dest` atomically; return its size."""
    _check_length(resp, max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, out = _open_temp(dest)
    try:
        with out:
            size = _stream_body(resp, out, end, max_bytes, progress)
        os.replace(tmp, dest)
    except BaseException:
        # Also on KeyboardInterrupt: the half-written file must never survive.
        tmp.unlink(missing_ok=True)
        raise
    return size


def fetch_to_file(
    url: str,
    dest: Path,
    *,
    connect_timeout: float = 5.0,
    deadline: float = 30.0,
    max_bytes: int = 20_000_000,
    max_redirects: int = 3,
    allow_private: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FetchResult:
    """Download `url` to `dest`, following up to `max_redirects` redirects (each hop re-checked by
    `check_url`), within `deadline` seconds in total (name lookups included) and at most `max_bytes` bytes.

    `dest` is written atomically (temp file + rename) and only when the whole body arrived. Network and HTTP
    problems come back as a FetchResult, never as an exception. `progress(n)` gets each chunk's byte count.
    """
    dest = Path(dest)
    end = time.monotonic() + deadline
    current = url
    with requests.Session() as session:
        # No proxies, .netrc or CA-bundle variables from the environment: the address check must be about the
        # host we actually connect to, and a download must not depend on the shell that ran the stage.
        session.trust_env = False
        session.headers["User-Agent"] = USER_AGENT
        adapter = _PinnedAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            for _ in range(max_redirects + 1):
                refused, address = checked_address(current, allow_private, timeout=_remaining(end))
                if refused:
                    raise _Failed(*refused)
                adapter.pins[str(urlsplit(current).hostname).lower()] = str(address)
                with _get(session, current, end, connect_timeout) as resp:
                    location = resp.headers.get("Location")
                    if resp.status_code in _REDIRECTS and location:
                        current = urljoin(current, location)
                        continue
                    if resp.status_code != 200:
                        raise _Failed(f"http_{resp.status_code}", _http_reason(resp))
                    size = _download(resp, dest, end, max_bytes, progress)
                    return FetchResult(url, "ok", f"{size} bytes", dest, current, size)
            raise _Failed("too_many_redirects", f"more than {max_redirects} redirects (last to {current})")
        except _Failed as f:
            log.debug("fetch %s: %s (%s)", url, f.status, f.reason)
            return FetchResult(url, f.status, f.reason, None, current, 0)
