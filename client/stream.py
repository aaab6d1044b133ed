"""The results stream: one WebSocket to the forwarder that pushes results as they arrive.

`ResultStream` runs a thread that keeps the connection up (reconnecting with backoff and
re-subscribing to every task still awaited), and hands each batch of results to a callback on that
thread. Subscribing to a finished task gets its result at once, so a client that restarts simply
subscribes again to the ids it still waits for. The only module of the client importing websockets.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from taskfabric.errors import AuthenticationError, ProtocolError
from taskfabric.logs import RedactSecrets, wrap_with_logs
from taskfabric.protocol import ResultFrame, parse

__all__ = ["ResultStream"]

log = logging.getLogger(__name__)
#: websockets logs every request header at DEBUG, our Authorization header too: its records go
#: through this logger, which redacts secrets whatever logging the researcher configured
_websocket_log = logging.getLogger(f"{__name__}.websocket")
_websocket_log.addFilter(RedactSecrets())

# Backoff jitter from a generator of our own: the stream thread leaves the global `random` alone.
_jitter = random.Random()

ResultsCallback = Callable[[list[ResultFrame]], None]
UnknownCallback = Callable[[set[uuid.UUID]], None]
ErrorCallback = Callable[[BaseException], None]


class ResultStream:
    """Subscribes to task results over `ws(s)://.../v1/results/ws`."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        on_results: ResultsCallback,
        *,
        on_unknown: UnknownCallback | None = None,
        on_fatal: ErrorCallback | None = None,
        max_backoff_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`on_results` gets each batch of results, `on_unknown` the ids the service does not know
        (or are not yours), `on_fatal` the error that stopped the stream (a refused token, a frame
        that is not the protocol's). `ssl_context` verifies a wss:// forwarder (default: the
        system's trust store). Several `url`s (forwarder replicas): each reconnect after a lost or
        refused connection tries the next one."""
        urls = [url] if isinstance(url, str) else list(url)
        self._urls = [_stream_url(one) for one in urls]
        self._current = 0
        self._ssl_context = ssl_context
        self._token = token
        self._on_results = on_results
        self._on_unknown = on_unknown
        self._on_fatal = on_fatal
        self._max_backoff_s = max_backoff_s
        self._wanted: set[uuid.UUID] = set()
        #: ids of submits in flight: watched on the service, never reported unknown (`expect`)
        self._expected: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._connection: ClientConnection | None = None
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-stream", daemon=True)
        self.unknown: set[uuid.UUID] = set()

    @property
    def _url(self) -> str:
        return self._urls[self._current]

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            connection.close()
        self._thread.join(timeout=10)

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def subscribe(self, task_ids: Iterable[uuid.UUID]) -> None:
        """Ask for these tasks' results (sent at once if they are finished)."""
        self._change(task_ids, verb="subscribe", want=True)

    def expect(self, task_ids: Iterable[uuid.UUID]) -> None:
        """Watch the ids of a submit about to be sent (`taskfabric.protocol.task_ids`), so that a
        result that comes before the submit's answer is pushed at once; `subscribe` them when the
        answer comes, `withdraw` them if the submit fails."""
        self._change(task_ids, verb="expect", expect=True)

    def withdraw(self, task_ids: Iterable[uuid.UUID]) -> None:
        """Stop waiting for these ids here and on the service."""
        self._change(task_ids, verb="forget")

    def forget(self, task_ids: Iterable[uuid.UUID]) -> None:
        """Stop waiting for these ids here (the service sent their results, or said unknown)."""
        self._change(task_ids, verb=None)

    def _change(
        self, task_ids: Iterable[uuid.UUID], *, verb: str | None, want: bool = False, expect: bool = False
    ) -> None:
        """Add the ids to the wanted or the expected ones (and drop them from the other), or drop
        them from both; then tell the service with a `verb` frame, if any and connected."""
        ids = list(task_ids)
        with self._lock:
            (self._wanted.update if want else self._wanted.difference_update)(ids)
            (self._expected.update if expect else self._expected.difference_update)(ids)
            connection = self._connection
        if verb is not None and connection is not None and ids:
            self._send(connection, ids, verb=verb)

    # --- the stream thread --------------------------------------------------------------

    @wrap_with_logs
    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            url = self._url
            was_connected = False
            try:
                with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    max_size=None,
                    compression=None,  # results are pickles: compressing them costs CPU for little
                    open_timeout=10,
                    ping_interval=20,
                    ping_timeout=20,
                    ssl=self._ssl_context if url.startswith("wss://") else None,
                    logger=_websocket_log,
                ) as connection:
                    attempt = 0
                    was_connected = True
                    self._attach(connection)
                    self._receive(connection)
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    self._fatal(
                        AuthenticationError(f"the results stream refused the token (HTTP {status})", status=status)
                    )
                    return
                log.warning("results stream refused (HTTP %s); retrying", status)
            except ProtocolError as exc:  # a service that does not speak the protocol: retrying will not help
                self._fatal(exc)
                return
            except (OSError, WebSocketException, TimeoutError) as exc:
                if self._stopping.is_set():
                    return
                log.warning("results stream lost (%s); reconnecting", exc)
            finally:
                self._connection = None
                self._connected.clear()
            if len(self._urls) > 1:
                self._current = (self._current + 1) % len(self._urls)
                log.info("results stream: trying %s next", self._url)
                if was_connected:  # a lost connection: another replica may take over at once
                    continue
            attempt += 1
            delay = min(self._max_backoff_s, 0.2 * 2**attempt)
            self._stopping.wait(delay / 2 + _jitter.uniform(0, delay / 2))

    def _attach(self, connection: ClientConnection) -> None:
        with self._lock:
            self._connection = connection
            wanted = list(self._wanted)
            expected = list(self._expected)
        if expected:
            self._send(connection, expected, verb="expect")
        if wanted:
            self._send(connection, wanted)
        self._connected.set()

    def _receive(self, connection: ClientConnection) -> None:
        while not self._stopping.is_set():
            try:
                frame = connection.recv()
            except ConnectionClosed:
                if self._stopping.is_set():
                    return
                raise
            if not isinstance(frame, bytes):
                continue
            message = msgpack.unpackb(frame, raw=False)
            if isinstance(message, dict):
                self._deliver(message)

    def _deliver(self, message: dict[str, Any]) -> None:
        results = message.get("results")
        if results:
            frames = [parse(ResultFrame, result, binary=True) for result in results]
            self.forget([frame.task_id for frame in frames])
            self._on_results(frames)
        unknown = message.get("unknown")
        if unknown:
            ids = {uuid.UUID(str(task_id)) for task_id in unknown}
            self.unknown.update(ids)
            self.forget(ids)
            if self._on_unknown is not None:
                self._on_unknown(ids)

    def _send(self, connection: ClientConnection, ids: list[uuid.UUID], *, verb: str = "subscribe") -> None:
        for start in range(0, len(ids), 5000):
            frame = msgpack.packb({verb: [task_id.bytes for task_id in ids[start : start + 5000]]}, use_bin_type=True)
            try:
                connection.send(frame)
            except (ConnectionClosed, OSError):
                return  # the reconnect re-subscribes everything still wanted

    def _fatal(self, error: BaseException) -> None:
        log.error("results stream stopped: %s", error)
        if self._on_fatal is not None:
            self._on_fatal(error)


def _stream_url(url: str) -> str:
    return url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + "/v1/results/ws"
