"""Connection limits that live below the ASGI app: uvicorn's settings, and two guards of our own.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`), open connections
(`limit_concurrency`: new requests above it get 503) and WebSocket messages (`ws_max_size`,
pings). It has no deadline for a request's headers: a client that opens a connection and sends
nothing, or a header a byte at a time (slow loris), holds it forever. `guarded_http_protocol`
subclasses uvicorn's HTTP protocol with one: from the connection's opening, or from the first byte
of each further request, to the end of the headers (`limits.header_timeout_s`); past it, 408 and
close. The body's pace is bounded in the ASGI middleware (`limits.RequestGuard`).

uvicorn answers every WebSocket ping with a pong written straight to the socket, even when the
client reads nothing: a client sending pings without reading grows the forwarder's write buffer
without bound. `guarded_ws_protocol` sends no pong while the socket is above its high-water mark
(the client is not reading); the app's own frames already wait for room (`stream_buffer_bytes`
bounds the results waiting behind them).

These hook a few methods of uvicorn's protocol classes (`connection_made`, `on_message_begin`,
`on_headers_complete` for httptools, `data_received` for h11, `handle_ping`); tests run them
against a real server so an upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any, Literal

from taskfabric.forwarder.settings import ForwarderSettings

__all__ = ["apply_connection_limits", "guarded_http_protocol", "guarded_ws_protocol"]

log = logging.getLogger(__name__)

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeaderDeadline:
    """Mixin: close a connection whose request headers do not arrive within `header_timeout_s`."""

    header_timeout_s: float = 10.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("closing a connection that did not send its request headers within %g s", self.header_timeout_s)
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def guarded_http_protocol(
    header_timeout_s: float, *, parser: Literal["httptools", "h11"] | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a deadline for request headers; `parser` None: httptools when
    it is installed, else h11 (uvicorn's own choice)."""
    if parser is None:
        parser = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return _httptools_protocol(header_timeout_s) if parser == "httptools" else _h11_protocol(header_timeout_s)


def _httptools_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()  # a connection that never sends a byte

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

    GuardedHttpToolsProtocol.header_timeout_s = header_timeout_s
    return GuardedHttpToolsProtocol


def _h11_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(_HeaderDeadline, H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a request's headers are still incomplete
                self._arm_header_deadline()
            else:
                self._disarm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

    GuardedH11Protocol.header_timeout_s = header_timeout_s
    return GuardedH11Protocol


def guarded_ws_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's sans-I/O WebSocket protocol, sending no pong to a client that reads nothing (see
    the module docstring); the plain `websockets` protocol where uvicorn has no sans-I/O one."""
    import uvicorn.config

    if "websockets-sansio" not in uvicorn.config.WS_PROTOCOLS:
        return "websockets"  # the websockets library bounds its own write buffer
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
        def handle_ping(self) -> None:
            if not self.writable.is_set():
                self.conn.data_to_send()  # the pong is dropped: the client reads nothing anyway
                return
            super().handle_ping()

    return GuardedWebSocketProtocol


def apply_connection_limits(config: Any, settings: ForwarderSettings) -> None:
    """Set the fields of a `uvicorn.Config` (before its `load()`) that bound connections (see
    `settings.limits`): the guarded protocols, timeouts, the connection limit, WebSocket pings."""
    limits = settings.limits
    config.http = guarded_http_protocol(limits.header_timeout_s)
    config.ws = guarded_ws_protocol()
    config.ws_ping_interval = limits.ws_ping_interval_s
    config.ws_ping_timeout = limits.ws_ping_timeout_s
    config.timeout_keep_alive = limits.idle_timeout_s
    config.limit_concurrency = limits.max_connections
