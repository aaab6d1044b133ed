"""Hostile HTTP clients on raw sockets, for the limit tests and `benchmarks/abuse.py`.

httpx cannot lie about Content-Length, stall between header bytes or stop reading, so these speak
HTTP/1.1 by hand: an upload that watches for the server's answer before each chunk it sends (and so
counts how much of the body the server made it send), a chunked upload, a body that stalls, and
connections that send their headers a byte at a time; and a WebSocket client that sends pings
and reads nothing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import select
import socket
import urllib.parse
from collections.abc import Iterator

__all__ = [
    "RawResponse",
    "Upload",
    "connect",
    "count_pongs",
    "ping_frames",
    "read_response",
    "request_head",
    "send_slowly",
    "upload",
    "websocket_connect",
]

_CHUNK_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class RawResponse:
    """An HTTP response as read off the socket; `closed`: the server closed the connection after it."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool


@dataclasses.dataclass(frozen=True)
class Upload:
    """How an upload ended: the answer, and how many body bytes the client had sent by then."""

    response: RawResponse | None
    sent_bytes: int


def connect(url: str, *, timeout_s: float = 30.0) -> socket.socket:
    """A TCP connection to the host and port of `url` (http only)."""
    parts = urllib.parse.urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s)


def request_head(
    method: str, path: str, *, token: str | None = None, content_length: int | None = None, chunked: bool = False
) -> bytes:
    """The request line and headers of one request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: forwarder", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload(
    url: str,
    path: str,
    *,
    body_bytes: int,
    token: str | None = None,
    chunked: bool = False,
    timeout_s: float = 30.0,
) -> Upload:
    """POST a body of `body_bytes` spaces (declared with Content-Length, or chunked), checking for
    the server's answer before every 64 KiB sent; stops at the answer or when the server closes."""
    with connect(url, timeout_s=timeout_s) as sock:
        head = request_head("POST", path, token=token, content_length=None if chunked else body_bytes, chunked=chunked)
        sock.sendall(head)
        sent = 0
        for wire, size in _pieces(body_bytes, chunked=chunked):
            if _readable(sock, 0.0):
                break
            try:
                sock.sendall(wire)
            except OSError:  # the server closed: its answer may still be readable
                break
            sent += size
        else:
            _readable(sock, timeout_s)
        try:
            return Upload(read_response(sock), sent)
        except OSError:
            return Upload(None, sent)


def _pieces(total: int, *, chunked: bool) -> Iterator[tuple[bytes, int]]:
    """(bytes on the wire, body bytes among them)."""
    block = b" " * _CHUNK_BYTES
    left = total
    while left > 0:
        size = min(left, _CHUNK_BYTES)
        left -= size
        yield (f"{size:x}\r\n".encode() + block[:size] + b"\r\n" if chunked else block[:size]), size
    if chunked:
        yield b"0\r\n\r\n", 0


def send_slowly(sock: socket.socket, data: bytes, *, interval_s: float, wait_s: float) -> bool:
    """Send `data` a byte every `interval_s`; True if the server closed (or answered) before the end."""
    for byte in data:
        if _readable(sock, interval_s):
            return True
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
    return _readable(sock, wait_s)


def read_response(sock: socket.socket, *, close_wait_s: float = 2.0) -> RawResponse:
    """One response (Content-Length framed), then whether the server closed the connection
    (waiting at most `close_wait_s` for it to)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection before answering (got {data[:80]!r})")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    closed = _server_closed(sock, close_wait_s)
    return RawResponse(int(status_line.split()[1]), headers, rest[:length], closed=closed)


def _server_closed(sock: socket.socket, wait_s: float) -> bool:
    if not _readable(sock, wait_s):
        return False
    with contextlib.suppress(OSError):
        return sock.recv(1) == b""
    return True  # reset: closed too


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout_s)
    return bool(readable)


def websocket_connect(url: str, path: str, token: str, *, receive_buffer_bytes: int = 4096) -> socket.socket:
    """A WebSocket (handshake done) with a small receive buffer, so unread frames back up fast."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    sock.settimeout(30.0)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\r\nHost: forwarder\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    sock.sendall(head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection during the WebSocket handshake")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"the WebSocket handshake was refused: {answer[:200]!r}")
    return sock


def ping_frames(count: int, payload_bytes: int = 125) -> bytes:
    """`count` masked ping frames (as a client must send them) with `payload_bytes` each (at most 125)."""
    mask = os.urandom(4)
    payload = os.urandom(payload_bytes)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return (bytes([0x89, 0x80 | payload_bytes]) + mask + masked) * count


def count_pongs(sock: socket.socket, *, quiet_s: float = 2.0) -> int:
    """Read frames until none arrives for `quiet_s` (or the server closes); the number of pongs."""
    pongs = 0
    buffer = b""
    sock.settimeout(quiet_s)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        buffer += chunk
        found, used = _pongs_in(buffer)
        pongs += found
        buffer = buffer[used:]
    return pongs


def _pongs_in(buffer: bytes) -> tuple[int, int]:
    """(pongs among the whole frames at the start of `buffer`, bytes those frames take)."""
    pongs = position = 0
    while (size := _frame_size(buffer, position)) is not None:
        pongs += (buffer[position] & 0x0F) == 0x0A
        position += size
    return pongs, position


def _frame_size(buffer: bytes, position: int) -> int | None:
    """The size of the unmasked (server) frame at `position`, None if it is not all there."""
    if len(buffer) - position < 2:
        return None
    length, header = buffer[position + 1] & 0x7F, 2
    if length >= 126:
        header = 4 if length == 126 else 10
        if len(buffer) - position < header:
            return None
        length = int.from_bytes(buffer[position + 2 : position + header], "big")
    return header + length if len(buffer) - position >= header + length else None
