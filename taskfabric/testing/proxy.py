"""A loopback TCP proxy that injects network faults, for the fault campaign (tests/faults/).

Put it between a component and the broker (point the component's AMQP URL at `proxy.port`) and
switch its mode at run time, from any thread:

- `PASS`: bytes flow both ways;
- `BLACKHOLE`: connections stay open, every byte is swallowed: a silent partition. When it heals
  (any other mode), each connection that lost bytes is reset, as TCP itself ends a connection
  whose retransmissions timed out: a byte stream with a hole in it must never be resumed (measured:
  an AMQP connection resumed after swallowed publish frames stays "up", its heartbeats flow, and
  its publisher confirms never come: the broker numbers them from the frames it saw);
- `RESET`: open connections are reset (RST), new ones are reset at once;
- `REFUSE`: the listening socket is closed, so connects are refused; open connections are reset;
- `DELAY`: bytes flow after `delay_ms` (each direction keeps its order).

Bounded: loopback only (it listens on 127.0.0.1 and refuses a non-loopback upstream), at most
`max_connections` at once, and it stops by itself after `lifetime_s` even if a test forgets to.
No dependencies beyond asyncio; one thread runs its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["FaultProxy", "ProxyMode"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHUNK_BYTES = 65536


class ProxyMode(enum.StrEnum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    REFUSE = "refuse"
    DELAY = "delay"


class _Link:
    """One proxied connection: the client's side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []
        #: bytes were swallowed: the stream has a hole and must not be resumed
        self.swallowed = False

    def reset(self) -> None:
        for writer in self.writers:
            _abort_with_rst(writer)
        for task in self.tasks:
            task.cancel()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards to `upstream_host`:`upstream_port` (see module doc)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        port: int = 0,
        lifetime_s: float = 900.0,
        max_connections: int = 64,
    ) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(upstream_host)).is_loopback:
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.lifetime_s = lifetime_s
        self.max_connections = max_connections
        self.mode = ProxyMode.PASS
        self.delay_ms = 0.0
        self.connections_seen = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{upstream_port}", daemon=True)
        self._stopped = threading.Event()

    # --- control (any thread) -----------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        self._loop.call_later(self.lifetime_s, self._expire)
        return self

    def set_mode(self, mode: ProxyMode, *, delay_ms: float = 0.0) -> None:
        """Switch the fault; takes effect at once for open and new connections."""
        self._call(self._switch(ProxyMode(mode), delay_ms))

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError, TimeoutError):
                self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._stopped.set()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # --- the loop thread ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _expire(self) -> None:
        log.warning("fault proxy on port %d reached its lifetime (%g s); stopping", self.port, self.lifetime_s)
        self._loop.create_task(self._shutdown())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _switch(self, mode: ProxyMode, delay_ms: float) -> None:
        previous, self.mode, self.delay_ms = self.mode, mode, delay_ms
        log.info("fault proxy %d: %s -> %s", self.port, previous, mode)
        cut = [link for link in self._links if mode in (ProxyMode.RESET, ProxyMode.REFUSE) or link.swallowed]
        if mode != ProxyMode.BLACKHOLE:
            for link in cut:
                link.reset()
                self._links.discard(link)
        if mode == ProxyMode.REFUSE:
            await self._close_listener()
        elif self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        await self._close_listener()
        for link in list(self._links):
            link.reset()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_seen += 1
        if self.mode in (ProxyMode.RESET, ProxyMode.REFUSE) or len(self._links) >= self.max_connections:
            _abort_with_rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), timeout=10)
        except (TimeoutError, OSError):
            _abort_with_rst(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        """Copy one direction; a second task writes, so delayed chunks keep their order without
        slowing the reads down."""
        pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(pending, writer, link))
        try:
            while True:
                data = await reader.read(_CHUNK_BYTES)
                if not data:
                    break
                if self.mode == ProxyMode.BLACKHOLE:
                    link.swallowed = True
                    continue
                due = time.monotonic() + (self.delay_ms / 1000.0 if self.mode == ProxyMode.DELAY else 0.0)
                pending.put_nowait((due, data))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            pending.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            self._links.discard(link)
            for end in link.writers:
                end.transport.abort()

    async def _send(
        self, pending: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        while True:
            item = await pending.get()
            if item is None:
                return
            due, data = item
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if self.mode == ProxyMode.BLACKHOLE:
                link.swallowed = True
                continue
            writer.write(data)
            await writer.drain()
