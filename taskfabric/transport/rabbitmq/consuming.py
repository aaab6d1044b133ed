"""Consumers: one channel each (its own prefetch), re-subscribed with back-off when the broker
closes it, and acks that go to the channel the delivery came on (or nowhere, once it closed)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika.exceptions

from taskfabric.errors import BrokerError, BrokerUnavailable
from taskfabric.transport.base import ConsumerHandle, Delivery, DeliveryCallback, ErrorCallback
from taskfabric.transport.rabbitmq.core import TransportCore, _jitter
from taskfabric.transport.rabbitmq.errors import translate_error

__all__ = ["Consuming"]

log = logging.getLogger(__name__)


class _RabbitConsumer(ConsumerHandle):
    """A subscription; its state is touched only on the IO thread."""

    def __init__(
        self,
        transport: Consuming,
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


class Consuming(TransportCore):
    """`RabbitTransport`'s consuming part."""

    _channel_ids: itertools.count[int]
    _consumers: list[_RabbitConsumer]

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

        try:
            self._connection.channel(on_open_callback=on_open)
        except pika.exceptions.NoFreeChannels:
            self._no_free_channel(consumer)

    def _no_free_channel(self, consumer: _RabbitConsumer) -> None:
        """The connection has no channel left (`channel_max`): fail this subscription alone. pika
        raises that on the IO thread, where it would end the connection's loop: every other
        consumer and every publish with it."""
        error = BrokerUnavailable(
            f"cannot consume {consumer.queue!r}: the connection has no free channel "
            f"(channel_max {self._connection.params.channel_max})"
        )
        log.error("%s", error)
        consumer.cancelled = True
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        if not consumer.first_subscription.done():
            consumer.first_subscription.set_exception(error)

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
