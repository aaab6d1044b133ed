"""RabbitMQ transport on pika's SelectConnection. This is the only module that imports pika.

One IO thread runs pika's ioloop for the life of the transport; it owns the connection and every
channel. Other threads only schedule work onto it (`add_callback_threadsafe`). Channels:

- one *publish* channel in confirm mode: publishes are pipelined; a future per message resolves on
  the broker's ack (or fails on nack / return / channel close / connection loss / deadline);
- one channel per consumer, with its own prefetch, so a consumer failing (queue deleted, access
  refused, consumer_timeout) never disturbs the others;
- one *admin* channel for declares and deletes, used one operation at a time so that a channel
  closed by the broker can be attributed to the operation that caused it.

When the connection drops, unconfirmed publishes fail with `ConnectionLost` (their outcome is
unknown: callers retry, and duplicates are removed downstream by task id), consumers are
re-subscribed after reconnecting, and acks for deliveries of the old connection are dropped (the
broker already requeued them). Reconnects back off exponentially with jitter.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.select_connection import IOLoop
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed

from taskfabric.errors import (
    AccessRefused,
    BrokerError,
    BrokerUnavailable,
    ConnectionLost,
    NotFound,
    PreconditionFailed,
    PublishRejected,
    PublishTimeout,
    Unroutable,
)
from taskfabric.logs import wrap_with_logs
from taskfabric.transport.base import (
    ConsumerHandle,
    Delivery,
    DeliveryCallback,
    ErrorCallback,
    ExchangeKind,
    OutgoingMessage,
    Transport,
)

__all__ = ["RabbitTransport", "redact_url"]

log = logging.getLogger(__name__)

# Our own generator for backoff jitter: this I/O thread must not advance the process-wide `random`
# state that user code (and test tools such as hypothesis) may depend on.
_jitter = random.Random()

_PERSISTENT = pika.spec.PERSISTENT_DELIVERY_MODE


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (safe to log)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The SSL error behind a connection failure (pika wraps it once or twice), if there is one."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        nested = getattr(seen, "exception", None)  # pika's AMQPConnectorPhaseErrorBase
        seen = nested if isinstance(nested, BaseException) else (seen.__cause__ or seen.__context__)
    return None


def translate_error(exc: BaseException | None, default: type[BrokerError] = ConnectionLost) -> BrokerError:
    """Map a pika exception to taskfabric's error tree."""
    if isinstance(exc, AMQPConnectionWorkflowFailed) and exc.exceptions:
        exc = exc.exceptions[-1]  # the workflow's own repr says nothing: its last attempt's error does
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)):
        code, text = exc.reply_code, exc.reply_text
        by_code: dict[int, type[BrokerError]] = {403: AccessRefused, 404: NotFound, 406: PreconditionFailed}
        return by_code.get(code, default)(f"broker closed the channel: {code} {text}")
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError)):
        return AccessRefused(f"the broker refused the credentials: {exc}")
    if exc is None:
        return default("connection closed")
    tls_error = _tls_error(exc)
    if tls_error is not None:
        return default(
            f"TLS with the broker failed: {tls_error}. Check that the broker's certificate is signed by the CA "
            "you trust (broker_ca_file) and names the host in the URL"
        )
    detail = str(exc) or repr(exc.args[0] if len(exc.args) == 1 else exc.args)
    return default(f"{type(exc).__name__}: {detail}")


@dataclasses.dataclass(slots=True, eq=False)
class _Pending:
    """A publish waiting to be sent or confirmed."""

    message: OutgoingMessage
    future: Future[None]
    deadline: float
    message_id: str
    returned: str | None = None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def succeed(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class _RabbitConsumer(ConsumerHandle):
    """A subscription; its state is touched only on the IO thread."""

    def __init__(
        self,
        transport: RabbitTransport,
        queue: str,
        callback: DeliveryCallback,
        prefetch: int,
        on_error: ErrorCallback | None,
    ) -> None:
        self.queue = queue
        self._transport = transport
        self.callback = callback
        self.prefetch = prefetch
        self.on_error = on_error
        self.channel: Any = None
        self.channel_id = 0
        self.consumer_tag: str | None = None
        self.paused = False
        self.cancelled = False
        #: failed subscriptions in a row: each waits longer before the next try
        self.failures = 0
        self.first_subscription: Future[None] = Future()

    def cancel(self) -> None:
        self._transport._call_soon(lambda: self._transport._cancel_consumer(self))

    def pause(self) -> None:
        self._transport._call_soon(lambda: self._transport._pause_consumer(self))

    def resume(self) -> None:
        self._transport._call_soon(lambda: self._transport._resume_consumer(self))


class RabbitTransport(Transport):
    """A `Transport` to RabbitMQ at `url` (``amqp://user:pass@host:port/vhost``).

    An ``amqps://`` URL connects over TLS and verifies the broker's certificate and host name with
    `ssl_context` (e.g. `taskfabric.tls.client_ssl_context(ca_file)` for a private CA), or with
    the system's trust store when it is None. An `ssl_context` with an ``amqp://`` URL is a
    `ValueError` (it would silently go unused)."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connection_name: str = "taskfabric",
        confirm_timeout_s: float = 15.0,
        heartbeat_s: int = 30,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._params = pika.URLParameters(url)
        self._params.heartbeat = heartbeat_s
        self._params.blocked_connection_timeout = max(60.0, 2.0 * heartbeat_s)
        self._params.connection_attempts = 1
        self._params.socket_timeout = min(5.0, connect_timeout_s)
        # bounds TCP + TLS + AMQP handshake: a peer that never answers fails the attempt in time
        self._params.stack_timeout = connect_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._params.client_properties = {"connection_name": connection_name}
        self._params.ssl_options = _ssl_options(self._params, url, ssl_context)
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
    def username(self) -> str:
        return str(self._params.credentials.username)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_error(self) -> BaseException | None:
        return self._last_error

    def __repr__(self) -> str:
        return f"RabbitTransport({redact_url(self._url)!r})"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, *, wait_s: float | None = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("transport already started")
        self._thread = threading.Thread(target=self._run, name="broker-io", daemon=True)
        self._thread.start()
        if wait_s is not None and not self._connected.wait(wait_s):
            reason = self._last_error
            self.close()
            if isinstance(reason, AccessRefused):
                raise reason
            raise BrokerUnavailable(
                f"could not connect to the broker at {redact_url(self._url)} within {wait_s:g} s: {reason}"
            )

    def close(self) -> None:
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
            self._ioloop.start()
        finally:
            self._closed.set()
            self._ioloop.close()  # releases the wake-up socket pair

    def _call_soon(self, fn: Callable[[], None]) -> None:
        if self._closed.is_set():
            raise BrokerUnavailable("the transport is closed")
        self._ioloop.add_callback_threadsafe(fn)

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

    def _on_connection_open(self, connection: Any) -> None:
        if self._closing:  # closed while it was opening: now it can be closed cleanly
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
        self._last_error = translate_error(error, BrokerUnavailable)
        log.warning("cannot connect to %s: %s", redact_url(self._url), self._last_error)
        self._connection = None
        self._after_disconnect()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
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

    def _after_disconnect(self) -> None:
        if self._closing:
            self._ioloop.stop()
            return
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

    # --- publishing ---------------------------------------------------------------------

    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[Future[None]]:
        deadline = time.monotonic() + self._confirm_timeout_s
        batch = []
        for message in messages:
            message_id = message.message_id or f"tf-{next(self._message_ids)}"
            batch.append(_Pending(message, Future(), deadline, message_id))
        futures = [pending.future for pending in batch]
        if self._closing or self._closed.is_set():
            for pending in batch:
                pending.fail(BrokerUnavailable("the transport is closed"))
            return futures
        self._call_soon(lambda: self._enqueue(batch))
        return futures

    def _enqueue(self, batch: list[_Pending]) -> None:
        self._outbox.extend(batch)
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        channel = self._pub_channel
        while self._outbox and channel is not None and channel.is_open:
            pending = self._outbox.popleft()
            if pending.future.done():
                continue
            message = pending.message
            properties = pika.BasicProperties(
                delivery_mode=_PERSISTENT,
                content_type=message.content_type,
                headers=dict(message.headers) if message.headers else None,
                message_id=pending.message_id,
                user_id=message.user_id,
                timestamp=int(time.time()),
            )
            tag = self._pub_next_tag
            self._pub_next_tag += 1
            self._unconfirmed[tag] = pending
            self._by_message_id[pending.message_id] = pending
            channel.basic_publish(
                message.exchange, message.routing_key, message.body, properties, mandatory=message.mandatory
            )

    def _open_publish_channel(self) -> None:
        if self._connection is None or not self._connection.is_open:
            return
        self._connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_publish_channel_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_publish_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._publish_ready(channel)
        )

    def _publish_ready(self, channel: Any) -> None:
        self._pub_channel = channel
        self._pub_next_tag = 1
        self._connected.set()
        self._flush_outbox()

    def _on_publish_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._pub_channel:
            return
        self._pub_channel = None
        self._fail_unconfirmed(translate_error(reason))
        if self._connection is not None and self._connection.is_open and not self._closing:
            log.warning("publish channel closed: %s; reopening", reason)
            self._connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        pending = self._by_message_id.get(properties.message_id)
        if pending is not None:
            pending.returned = method.reply_text or "NO_ROUTE"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            while self._unconfirmed:
                first = next(iter(self._unconfirmed))
                if first > tag:
                    break
                self._settle(self._unconfirmed.pop(first), acked)
        else:
            pending = self._unconfirmed.pop(tag, None)
            if pending is not None:
                self._settle(pending, acked)

    def _settle(self, pending: _Pending, acked: bool) -> None:
        self._by_message_id.pop(pending.message_id, None)
        message = pending.message
        if pending.returned is not None:
            pending.fail(Unroutable(message.exchange, message.routing_key, pending.returned))
        elif acked:
            pending.succeed()
        else:
            pending.fail(
                PublishRejected(f"the broker rejected a message to {message.exchange!r}/{message.routing_key!r}")
            )

    def _fail_unconfirmed(self, error: BaseException) -> None:
        for pending in self._unconfirmed.values():
            self._by_message_id.pop(pending.message_id, None)
            pending.fail(error)
        self._unconfirmed.clear()

    def _schedule_sweep(self) -> None:
        interval = max(0.05, min(0.5, self._confirm_timeout_s / 4))
        self._sweep_timer = self._ioloop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Fail publishes whose bounded wait is over (queued or unconfirmed)."""
        now = time.monotonic()
        while self._outbox and self._outbox[0].deadline <= now:
            self._outbox.popleft().fail(
                PublishTimeout(f"not sent within {self._confirm_timeout_s:g} s (broker unreachable)")
            )
        expired = 0
        for tag in list(self._unconfirmed):
            pending = self._unconfirmed[tag]
            if pending.deadline > now:
                break
            del self._unconfirmed[tag]
            self._by_message_id.pop(pending.message_id, None)
            pending.fail(PublishTimeout(f"no confirm from the broker within {self._confirm_timeout_s:g} s"))
            expired += 1
        if expired:
            self._recycle_publish_channel(expired)
        self._schedule_sweep()

    def _recycle_publish_channel(self, expired: int) -> None:
        """A publish the broker never confirms can wedge the channel for good: a quorum queue that
        lost its leader and was then deleted and declared again leaves the channel waiting for the
        old queue's answer, and later publishes to the new queue are never confirmed either. So
        after a confirm timeout the channel is replaced (its other unconfirmed publishes fail and
        are re-sent by their owners)."""
        channel = self._pub_channel
        if channel is not None and channel.is_open:
            log.warning("%d publishes were not confirmed in time: opening a new publish channel", expired)
            channel.close()

    # --- consuming ----------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        on_delivery: DeliveryCallback,
        *,
        prefetch: int,
        on_error: ErrorCallback | None = None,
        timeout_s: float = 10.0,
    ) -> ConsumerHandle:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        consumer = _RabbitConsumer(self, queue, on_delivery, prefetch, on_error)

        def register() -> None:
            self._consumers.append(consumer)
            if self._connection is not None and self._connection.is_open:
                self._subscribe(consumer)

        self._call_soon(register)
        try:
            consumer.first_subscription.result(timeout=timeout_s)
        except TimeoutError:
            consumer.cancel()
            raise BrokerUnavailable(f"could not subscribe to {queue!r} within {timeout_s:g} s") from None
        except BrokerError:
            consumer.cancel()
            raise
        return consumer

    def _subscribe(self, consumer: _RabbitConsumer) -> None:
        channel_id = next(self._channel_ids)

        def on_open(channel: Any) -> None:
            consumer.channel = channel
            consumer.channel_id = channel_id
            channel.add_on_close_callback(lambda ch, reason: self._on_consumer_channel_closed(consumer, ch, reason))
            channel.add_on_cancel_callback(lambda _frame: self._on_server_cancel(consumer, channel))
            channel.basic_qos(prefetch_count=consumer.prefetch, callback=lambda _frame: self._start_consuming(consumer))

        self._connection.channel(on_open_callback=on_open)

    def _start_consuming(self, consumer: _RabbitConsumer) -> None:
        if consumer.cancelled or consumer.channel is None:
            return
        if consumer.paused:
            self._mark_subscribed(consumer)
            return
        channel, channel_id = consumer.channel, consumer.channel_id

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            self._deliver(consumer, channel_id, method, properties, body)

        consumer.consumer_tag = channel.basic_consume(
            consumer.queue, on_message, auto_ack=False, callback=lambda _frame: self._mark_subscribed(consumer)
        )

    def _on_server_cancel(self, consumer: _RabbitConsumer, channel: Any) -> None:
        """The broker cancelled the consumer (its queue was deleted, e.g. rebuilt after a crash):
        close the channel; the close handler subscribes again with back-off."""
        if consumer.cancelled or consumer.channel is not channel:
            return
        log.warning("the broker cancelled the consumer of %r (queue deleted?); re-subscribing", consumer.queue)
        consumer.consumer_tag = None
        if channel.is_open:
            channel.close()

    def _mark_subscribed(self, consumer: _RabbitConsumer) -> None:
        consumer.failures = 0
        if not consumer.first_subscription.done():
            consumer.first_subscription.set_result(None)

    def _deliver(self, consumer: _RabbitConsumer, channel_id: int, method: Any, properties: Any, body: bytes) -> None:
        headers = properties.headers or {}
        count = headers.get("x-delivery-count", 0)
        delivery = Delivery(
            body=body,
            exchange=method.exchange,
            routing_key=method.routing_key,
            headers=headers,
            message_id=properties.message_id,
            user_id=properties.user_id,
            redelivered=bool(method.redelivered),
            delivery_count=count if isinstance(count, int) else 0,
            queue=consumer.queue,
            token=(consumer, channel_id, method.delivery_tag),
        )
        try:
            consumer.callback(delivery)
        except Exception:
            log.exception("consumer callback for %r failed; the delivery stays unacked", consumer.queue)

    def _on_consumer_channel_closed(self, consumer: _RabbitConsumer, channel: Any, reason: BaseException) -> None:
        if consumer.channel is not channel:
            return
        consumer.channel = None
        consumer.consumer_tag = None
        if consumer.cancelled:
            return
        error = translate_error(reason)
        if not consumer.first_subscription.done():
            consumer.first_subscription.set_exception(error)
            consumer.cancelled = True
            return
        if self._connection is None or not self._connection.is_open:
            return  # the reconnect re-subscribes
        log.warning("consumer channel for %r closed: %s; re-subscribing", consumer.queue, error)
        if consumer.on_error is not None:
            try:
                consumer.on_error(error)
            except Exception:
                log.exception("on_error callback failed")
        # a queue that keeps failing (gone, leaderless) is retried ever less often, up to backoff_max_s
        base = min(self._backoff_max_s, self._backoff_initial_s * (2**consumer.failures))
        consumer.failures += 1
        delay = base + _jitter.uniform(0, base)
        self._ioloop.call_later(delay, lambda: self._resubscribe(consumer))

    def _resubscribe(self, consumer: _RabbitConsumer) -> None:
        if (
            not consumer.cancelled
            and consumer.channel is None
            and self._connection is not None
            and self._connection.is_open
        ):
            self._subscribe(consumer)

    def _cancel_consumer(self, consumer: _RabbitConsumer) -> None:
        consumer.cancelled = True
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        channel, consumer.channel = consumer.channel, None
        if channel is not None and channel.is_open:
            channel.close()

    def _pause_consumer(self, consumer: _RabbitConsumer) -> None:
        consumer.paused = True
        if consumer.channel is not None and consumer.channel.is_open and consumer.consumer_tag:
            consumer.channel.basic_cancel(consumer.consumer_tag)
        consumer.consumer_tag = None

    def _resume_consumer(self, consumer: _RabbitConsumer) -> None:
        if not consumer.paused:
            return
        consumer.paused = False
        if consumer.channel is not None and consumer.channel.is_open and consumer.consumer_tag is None:
            self._start_consuming(consumer)

    def ack(self, delivery: Delivery) -> None:
        self._call_soon(lambda: self._settle_delivery(delivery, lambda ch, tag: ch.basic_ack(tag)))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._call_soon(lambda: self._settle_delivery(delivery, lambda ch, tag: ch.basic_nack(tag, requeue=requeue)))

    def _settle_delivery(self, delivery: Delivery, action: Callable[[Any, int], None]) -> None:
        consumer, channel_id, tag = delivery.token
        channel = consumer.channel
        if channel is None or consumer.channel_id != channel_id or not channel.is_open:
            log.debug("dropping ack/nack of a delivery from a closed channel (already requeued)")
            return
        action(channel, tag)

    # --- topology (one admin operation at a time) ---------------------------------------

    def declare_exchange(self, name: str, kind: ExchangeKind, *, timeout_s: float = 10.0) -> None:
        self._admin(
            lambda ch, done: ch.exchange_declare(name, exchange_type=kind, durable=True, callback=done),
            f"declare exchange {name!r}",
            timeout_s,
        )

    def declare_queue(self, name: str, *, arguments: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> None:
        args = dict(arguments or {})
        self._admin(
            lambda ch, done: ch.queue_declare(name, durable=True, arguments=args, callback=done),
            f"declare queue {name!r}",
            timeout_s,
        )

    def bind_queue(self, queue: str, exchange: str, routing_key: str, *, timeout_s: float = 10.0) -> None:
        self._admin(
            lambda ch, done: ch.queue_bind(queue, exchange, routing_key=routing_key, callback=done),
            f"bind {queue!r} to {exchange!r}",
            timeout_s,
        )

    def delete_queue(self, name: str, *, timeout_s: float = 10.0) -> None:
        self._admin(lambda ch, done: ch.queue_delete(name, callback=done), f"delete queue {name!r}", timeout_s)

    def delete_exchange(self, name: str, *, timeout_s: float = 10.0) -> None:
        self._admin(lambda ch, done: ch.exchange_delete(name, callback=done), f"delete exchange {name!r}", timeout_s)

    def queue_depth(self, name: str, *, timeout_s: float = 10.0) -> int:
        frame = self._admin(
            lambda ch, done: ch.queue_declare(name, passive=True, callback=done),
            f"inspect queue {name!r}",
            timeout_s,
        )
        return int(frame.method.message_count)

    def take_one(self, name: str, *, timeout_s: float = 10.0) -> bytes | None:
        depth = self.queue_depth(name, timeout_s=timeout_s)
        if depth == 0:
            return None
        # with a ready message, basic.get answers get-ok (pika calls nothing on get-empty)
        body: bytes = self._admin(
            lambda ch, done: ch.basic_get(name, lambda _ch, _method, _props, data: done(data), auto_ack=True),
            f"take a message from {name!r}",
            timeout_s,
        )
        return body

    def queue_consumers(self, name: str, *, timeout_s: float = 10.0) -> int:
        frame = self._admin(
            lambda ch, done: ch.queue_declare(name, passive=True, callback=done),
            f"inspect queue {name!r}",
            timeout_s,
        )
        return int(frame.method.consumer_count)

    def _admin(self, operation: Callable[[Any, Callable[[Any], None]], None], what: str, timeout_s: float) -> Any:
        """Run one operation on the admin channel and wait for its answer."""
        with self._admin_lock:
            future: Future[Any] = Future()

            def run(channel: Any) -> None:
                self._admin_inflight = future

                def done(frame: Any) -> None:
                    self._admin_inflight = None
                    if not future.done():
                        future.set_result(frame)

                operation(channel, done)

            self._call_soon(lambda: self._with_admin_channel(run))
            try:
                return future.result(timeout=timeout_s)
            except TimeoutError:
                raise BrokerUnavailable(f"could not {what} within {timeout_s:g} s (broker unreachable?)") from None

    def _with_admin_channel(self, run: Callable[[Any], None]) -> None:
        if self._admin_channel is not None and self._admin_channel.is_open:
            run(self._admin_channel)
            return
        self._admin_waiting.append(run)
        if self._connection is not None and self._connection.is_open and len(self._admin_waiting) == 1:
            self._open_admin_channel()

    def _open_admin_channel(self) -> None:
        def on_open(channel: Any) -> None:
            self._admin_channel = channel
            channel.add_on_close_callback(self._on_admin_channel_closed)
            while self._admin_waiting:
                self._admin_waiting.popleft()(channel)

        self._connection.channel(on_open_callback=on_open)

    def _on_admin_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is self._admin_channel:
            self._admin_channel = None
        self._fail_admin_inflight(translate_error(reason))

    def _fail_admin_inflight(self, error: BaseException) -> None:
        future, self._admin_inflight = self._admin_inflight, None
        if future is not None and not future.done():
            future.set_exception(error)
