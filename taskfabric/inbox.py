"""Consume protocol messages from a queue: decode each delivery, dead-letter what does not decode.

A malformed message (garbage, wrong schema, a type this consumer does not take) is rejected
without requeue, so the broker moves it to the dead-letter queue; the consumer keeps consuming.
Decoding happens on the transport's IO thread (it is cheap and pure); the handler receives the
decoded message and the delivery, and must ack or nack it (directly or later, from any thread).
On a classic queue (`redelivery` given) returns are counted first, see `taskfabric.transport.redelivery`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from taskfabric.errors import ProtocolError
from taskfabric.protocol import unpack
from taskfabric.transport import ConsumerHandle, Delivery, DeliveryCallback, Transport
from taskfabric.transport.redelivery import RedeliveryCounter, RedeliveryLimit

__all__ = ["Inbox"]

log = logging.getLogger(__name__)

_M = TypeVar("_M")


class Inbox(Generic[_M]):
    """A subscription to `queue` that hands `handler` only messages of the `accepts` types."""

    def __init__(
        self,
        transport: Transport,
        queue: str,
        handler: Callable[[_M, Delivery], None],
        *,
        accepts: tuple[type, ...],
        prefetch: int,
        redelivery: RedeliveryLimit | None = None,
    ) -> None:
        self._transport = transport
        self._handler = handler
        self._accepts = accepts
        self.queue = queue
        self.rejected = 0
        on_delivery: DeliveryCallback = self._on_delivery
        if redelivery is not None:  # a classic queue: the broker counts nothing
            on_delivery = RedeliveryCounter(transport, redelivery, self._on_delivery)
        self._consumer: ConsumerHandle = transport.consume(queue, on_delivery, prefetch=prefetch)

    @property
    def consumer(self) -> ConsumerHandle:
        return self._consumer

    def cancel(self) -> None:
        self._consumer.cancel()

    def _on_delivery(self, delivery: Delivery) -> None:
        try:
            decoded: Any = unpack(delivery.body)
            if not isinstance(decoded, self._accepts):
                raise ProtocolError(f"{type(decoded).__name__} is not accepted on this queue")
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("dead-lettering a malformed message from %s: %s", self.queue, exc)
            self._transport.nack(delivery, requeue=False)
            return
        self._handler(cast(_M, decoded), delivery)
