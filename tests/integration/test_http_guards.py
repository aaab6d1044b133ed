"""The header deadline of `forwarder.connections` on both of uvicorn's HTTP protocols (the
forwarder uses httptools when installed, h11 otherwise): a real uvicorn server in a thread, a
trivial app, raw sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from taskfabric.forwarder.connections import guarded_http_protocol
from taskfabric.forwarder.testing.abuse import read_response, send_slowly
from taskfabric.testing import wait_until

_HEADER_TIMEOUT_S = 0.5


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["httptools", "h11"])
def server_address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    protocol = guarded_http_protocol(_HEADER_TIMEOUT_S, parser=request.param)
    config = uvicorn.Config(_hello, http=protocol, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=10.0, what="uvicorn to start")
    try:
        yield listener.getsockname()
    finally:
        server.should_exit = True
        thread.join(10.0)
        listener.close()


def test_silent_connections_are_cut(server_address: tuple[str, int]) -> None:
    with socket.create_connection(server_address, timeout=10.0) as sock:
        assert sock.recv(1024).startswith(b"HTTP/1.1 408")


def test_slow_headers_are_cut_also_after_a_request(server_address: tuple[str, int]) -> None:
    with socket.create_connection(server_address, timeout=10.0) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, close_wait_s=0).status == 200
        assert send_slowly(sock, b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 40, interval_s=0.1, wait_s=5.0)
        assert sock.recv(1024).startswith(b"HTTP/1.1 408")


def test_a_prompt_request_is_served(server_address: tuple[str, int]) -> None:
    with socket.create_connection(server_address, timeout=10.0) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(sock, close_wait_s=0)
        assert (response.status, response.body) == (200, b"ok")
