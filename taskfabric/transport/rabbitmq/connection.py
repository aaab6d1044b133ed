"""`RabbitTransport`: the IO thread and the connection's life (connect, reconnect with back-off,
close), assembled from the publishing, consuming and admin parts.

Given the URLs of several members of a RabbitMQ cluster, it connects to one at a time: after a
failed attempt or a lost connection the next attempt goes to the next URL (round robin), after the
same bounded, jittered back-off. Quorum queues live on the whole cluster, so any member serves
every queue; consumers are re-subscribed on the new member.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from taskfabric.errors import AccessRefused, BrokerError, BrokerUnavailable, ConnectionLost
from taskfabric.logs import wrap_with_logs
from taskfabric.transport.base import Transport
from taskfabric.transport.rabbitmq.admin import Admin
from taskfabric.transport.rabbitmq.consuming import Consuming, _RabbitConsumer
from taskfabric.transport.rabbitmq.core import _jitter
from taskfabric.transport.rabbitmq.errors import redact_url, translate_error
from taskfabric.transport.rabbitmq.publishing import Publishing, _Pending

__all__ = ["RabbitTransport"]

log = logging.getLogger(__name__)


def _ssl_options(params: pika.URLParameters, url: str, context: ssl.SSLContext | None) -> pika.SSLOptions | None:
    """TLS options for an amqps URL: the given context (or a verifying default) and the URL's host
    name, which the broker's certificate must carry."""
    if urllib.parse.urlsplit(url).scheme != "amqps":
        if context is not None:
            raise ValueError("an ssl_context needs an amqps:// broker URL")
        return None
    if context is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    return pika.SSLOptions(context, server_hostname=params.host)


def _parameters(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    connection_name: str,
    heartbeat_s: int,
    connect_timeout_s: float,
    channel_max: int | None,
) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat_s
    params.blocked_connection_timeout = max(60.0, 2.0 * heartbeat_s)
    params.connection_attempts = 1
    params.socket_timeout = min(5.0, connect_timeout_s)
    # bounds TCP + TLS + AMQP handshake: a peer that never answers fails the attempt in time
    params.stack_timeout = connect_timeout_s
    params.client_properties = {"connection_name": connection_name}
    if channel_max is not None:
        params.channel_max = channel_max
    params.ssl_options = _ssl_options(params, url, ssl_context)
    return params


class RabbitTransport(Publishing, Consuming, Admin, Transport):
    """A `Transport` to RabbitMQ at `url` (``amqp://user:pass@host:port/vhost``), or at any of
    several such URLs (members of one cluster, tried in turn).

    An ``amqps://`` URL connects over TLS and verifies the broker's certificate and host name with
    `ssl_context` (e.g. `taskfabric.tls.client_ssl_context(ca_file)` for a private CA), or with
    the system's trust store when it is None. An `ssl_context` with an ``amqp://`` URL is a
    `ValueError` (it would silently go unused)."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        ssl_context: ssl.SSLContext | None = None,
        connection_name: str = "taskfabric",
        confirm_timeout_s: float = 15.0,
        heartbeat_s: int = 30,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        channel_max: int | None = None,
    ) -> None:
        """`channel_max`: ask for at most this many channels on the connection (the broker's own
        limit applies when lower); None: the broker's."""
        self._urls = [url] if isinstance(url, str) else list(url)
        if not self._urls:
            raise ValueError("no broker URL given")
        self._url_index = 0
        self._params_list = [
            _parameters(
                one,
                ssl_context=ssl_context,
                connection_name=connection_name,
                heartbeat_s=heartbeat_s,
                connect_timeout_s=connect_timeout_s,
                channel_max=channel_max,
            )
            for one in self._urls
        ]
        self._connect_timeout_s = connect_timeout_s
        self._confirm_timeout_s = confirm_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._ioloop = IOLoop()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._closing = False
        self._closed = threading.Event()
        self._last_error: BaseException | None = None
        self._attempt = 0
        self._reconnect_timer: Any = None
        self._sweep_timer: Any = None
        # IO-thread state
        self._connection: Any = None
        self._channel_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._pub_channel: Any = None
        self._pub_next_tag = 1
        self._unconfirmed: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._by_message_id: dict[str, _Pending] = {}
        self._outbox: collections.deque[_Pending] = collections.deque()
        self._consumers: list[_RabbitConsumer] = []
        self._admin_channel: Any = None
        self._admin_waiting: collections.deque[Callable[[Any], None]] = collections.deque()
        self._admin_inflight: Future[Any] | None = None
        self._admin_lock = threading.Lock()

    # --- properties ---------------------------------------------------------------------

    @property
    def _url(self) -> str:
        """The URL of the current (or next) connection attempt."""
        return self._urls[self._url_index]

    @property
    def _params(self) -> pika.URLParameters:
        return self._params_list[self._url_index]

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    @property
    def username(self) -> str:
        return str(self._params.credentials.username)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_error(self) -> BaseException | None:
        return self._last_error

    def __repr__(self) -> str:
        return f"RabbitTransport({', '.join(repr(redact_url(one)) for one in self._urls)})"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, *, wait_s: float | None = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("transport already started")
        if self._closing:
            raise BrokerUnavailable("the transport is closed")
        self._thread = threading.Thread(target=self._run, name="broker-io", daemon=True)
        self._thread.start()
        if wait_s is not None and not self._connected.wait(wait_s):
            reason = self._last_error
            self.close()
            if isinstance(reason, AccessRefused):
                raise reason
            raise BrokerUnavailable(
                f"could not connect to the broker at {self._described_urls()} within {wait_s:g} s: {reason}"
            )

    def close(self) -> None:
        if self._thread is None and not self._closing:  # never started: release the loop's wake-up sockets
            self._closing = True
            self._closed.set()
            self._ioloop.close()
            return
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._call_soon(self._shutdown)
        # an opening connection is left to finish or time out (see _shutdown): allow for that
        self._thread.join(timeout=self._connect_timeout_s + 5.0)
        self._fail_everything(BrokerUnavailable("the transport is closed"))

    @wrap_with_logs
    def _run(self) -> None:
        try:
            self._connect()
            self._schedule_sweep()
            while True:
                try:
                    self._ioloop.start()
                    return
                except Exception as exc:
                    # a callback raised through the loop (pika's own connect sequence does, when the
                    # broker drops a socket it has just accepted): the connection is unusable, the
                    # loop is not. Without this the transport would stay closed for good.
                    if self._closing:
                        return
                    log.warning(
                        "the broker connection failed inside its I/O loop (%s: %s); reconnecting",
                        type(exc).__name__,
                        exc,
                    )
                    self._abandon_connection(exc)
        finally:
            self._closed.set()
            self._ioloop.close()  # releases the wake-up socket pair

    def _abandon_connection(self, error: BaseException) -> None:
        """Drop the current connection as lost (its callbacks, if any still come, are ignored:
        see `_current`) and schedule the next attempt."""
        connection = self._connection
        self._lost(error)  # (forgets the connection first)
        if connection is not None:
            with contextlib.suppress(Exception):  # it may be half open, or closed already
                connection.close()

    def _connect(self) -> None:
        self._reconnect_timer = None
        if self._closing:
            return
        log.debug("connecting to %s", redact_url(self._url))
        self._connection = pika.SelectConnection(
            parameters=self._params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=self._ioloop,
        )

    def _current(self, connection: Any) -> bool:
        """Whether `connection` is the one in use (not one abandoned after a failure)."""
        return connection is self._connection

    def _on_connection_open(self, connection: Any) -> None:
        if self._closing or not self._current(connection):  # closed while it was opening, or abandoned
            connection.close()
            return
        log.info("connected to %s", redact_url(self._url))
        self._attempt = 0
        self._last_error = None
        self._open_publish_channel()
        if self._admin_waiting:
            self._open_admin_channel()
        for consumer in self._consumers:
            if not consumer.cancelled:
                self._subscribe(consumer)

    def _on_connection_open_error(self, connection: Any, error: BaseException) -> None:
        if not self._current(connection):
            return
        self._last_error = translate_error(error, BrokerUnavailable)
        log.warning("cannot connect to %s: %s", redact_url(self._url), self._last_error)
        self._connection = None
        self._after_disconnect()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        if self._current(connection):
            self._lost(reason)

    def _lost(self, reason: BaseException) -> None:
        """The connection in use is gone: fail what waited on it, then reconnect (or stop)."""
        self._connected.clear()
        self._connection = None
        self._pub_channel = None
        self._admin_channel = None
        if not self._closing:
            self._last_error = translate_error(reason)
            log.warning("connection to %s lost: %s", redact_url(self._url), self._last_error)
        lost = ConnectionLost(f"connection to the broker lost before confirm: {reason}")
        self._fail_unconfirmed(lost)
        self._fail_admin_inflight(lost)
        for consumer in self._consumers:
            consumer.channel = None
            consumer.consumer_tag = None
        self._after_disconnect()

    def _described_urls(self) -> str:
        return " or ".join(redact_url(one) for one in self._urls)

    def _after_disconnect(self) -> None:
        if self._closing:
            self._ioloop.stop()
            return
        # the next attempt goes to the next cluster member: this one may be down
        self._url_index = (self._url_index + 1) % len(self._urls)
        delay = min(self._backoff_max_s, self._backoff_initial_s * (2**self._attempt))
        delay = delay / 2 + _jitter.uniform(0, delay / 2)  # "equal jitter": never a tight loop
        self._attempt += 1
        log.debug("reconnecting in %.2f s (attempt %d)", delay, self._attempt)
        self._reconnect_timer = self._ioloop.call_later(delay, self._connect)

    def _shutdown(self) -> None:
        if self._reconnect_timer is not None:
            self._ioloop.remove_timeout(self._reconnect_timer)
            self._reconnect_timer = None
        if self._sweep_timer is not None:
            self._ioloop.remove_timeout(self._sweep_timer)
            self._sweep_timer = None
        connection = self._connection
        if connection is not None and connection.is_open:
            try:
                connection.close()
                return  # _on_connection_closed stops the loop
            except pika.exceptions.ConnectionWrongStateError:
                pass
        if connection is not None and not (connection.is_closed or connection.is_closing):
            # Still opening. pika's close() during the handshake trips an assertion in its
            # connection workflow, so let the attempt end by itself: the open and open-error
            # callbacks see _closing and stop the loop, and stack_timeout bounds the wait.
            return
        self._ioloop.stop()

    def _fail_everything(self, error: BrokerError) -> None:
        for pending in list(self._unconfirmed.values()) + list(self._outbox):
            pending.fail(error)
        self._unconfirmed.clear()
        self._outbox.clear()
        self._by_message_id.clear()
        for consumer in self._consumers:
            if not consumer.first_subscription.done():
                consumer.first_subscription.set_exception(error)
        self._fail_admin_inflight(error)
