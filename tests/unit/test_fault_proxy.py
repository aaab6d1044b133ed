"""The fault campaign's TCP proxy, against a loopback echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from taskfabric.testing import wait_until
from taskfabric.testing.proxy import FaultProxy, ProxyMode


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy(server.server_address[1], lifetime_s=60) as running:
        yield running
    server.shutdown()
    server.server_close()


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.settimeout(5)
    return sock


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def _cut(sock: socket.socket) -> bool:
    """True when the connection was reset or closed by the other side."""
    try:
        return _echo(sock, b"probe") == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(sock, b"hello") == b"hello"


def test_blackhole_swallows_bytes_and_healing_resets_the_holed_connections(proxy: FaultProxy) -> None:
    with _connect(proxy) as holed, _connect(proxy) as idle:
        proxy.set_mode(ProxyMode.BLACKHOLE)
        holed.sendall(b"lost")
        holed.settimeout(0.5)
        with pytest.raises(TimeoutError):
            holed.recv(10)
        proxy.set_mode(ProxyMode.PASS)
        holed.settimeout(5)
        assert _cut(holed)  # bytes were lost: its stream must not resume
        assert _echo(idle, b"after") == b"after"  # nothing was lost on this one


def test_reset_cuts_open_connections_and_new_ones(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(sock, b"x") == b"x"
        proxy.set_mode(ProxyMode.RESET)
        assert _cut(sock)
    try:  # a new connection is reset at once: during the handshake, or on its first bytes
        fresh = _connect(proxy)
    except ConnectionResetError:
        return
    with fresh as sock:
        assert _cut(sock)


def test_refuse_closes_the_port_and_pass_reopens_it(proxy: FaultProxy) -> None:
    proxy.set_mode(ProxyMode.REFUSE)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    proxy.set_mode(ProxyMode.PASS)
    with _connect(proxy) as sock:
        assert _echo(sock, b"back") == b"back"


def test_delay_holds_bytes_back_in_order(proxy: FaultProxy) -> None:
    proxy.set_mode(ProxyMode.DELAY, delay_ms=300)
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _echo(sock, b"abc") == b"abc"
        assert _echo(sock, b"def") == b"def"
        assert time.monotonic() - started >= 0.6  # each way is delayed: at least 2 x 300 ms per round trip


def test_the_proxy_stops_by_itself_after_its_lifetime() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = FaultProxy(server.server_address[1], lifetime_s=0.5).start()
    try:
        wait_until(lambda: _refused(proxy.port), timeout_s=10, what="the proxy to close its port")
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_only_loopback_upstreams() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(80, upstream_host="192.0.2.1")
