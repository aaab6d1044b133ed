"""Result consumers spread over several broker connections, a bounded number of channels each.

Every endpoint's result queue has its own consumer on its own channel (its own prefetch, and a
channel the broker closes takes only that consumer with it). RabbitMQ allows `channel_max`
channels per connection (2047 by default), so on one connection the 2,046th endpoint could not be
consumed at all. `ConsumerConnections` is the transport the result consumers and the ingestor use:
it places each consumer on the first connection holding fewer than `per_connection` of them,
opening another connection (from `open_transport`) when all are full, and routes each ack or nack
to the connection its delivery came from (the delivery's token carries it). Publishing and
topology calls go to the primary connection, which also holds the first `per_connection` consumers.

Connections are opened, never closed, while the forwarder runs: endpoints come back (a consumer
that stops leaves a free slot that the next one takes).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from taskfabric.transport import ConsumerHandle, Delivery, DeliveryCallback, OutgoingMessage, Transport
from taskfabric.transport.base import ErrorCallback, ExchangeKind

__all__ = ["ConsumerConnections"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _Slot:
    transport: Transport
    consumers: int = 0


class _PooledConsumer(ConsumerHandle):
    """A consumer on one of the pool's connections; cancelling frees its slot."""

    def __init__(self, inner: ConsumerHandle, slot: _Slot, release: Callable[[_Slot], None]) -> None:
        self.queue = inner.queue
        self._inner = inner
        self._slot = slot
        self._release = release
        self._cancelled = False

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._inner.cancel()
            self._release(self._slot)

    def pause(self) -> None:
        self._inner.pause()

    def resume(self) -> None:
        self._inner.resume()


class ConsumerConnections(Transport):
    """A `Transport` whose consumers are spread over connections (see the module docstring).

    `open_transport` makes (unstarted) further connections; when it is None every consumer goes on
    `primary` (an in-memory transport has no channel limit). Only the connections opened here are
    closed by `close`; the primary belongs to its owner."""

    def __init__(
        self,
        primary: Transport,
        *,
        per_connection: int,
        open_transport: Callable[[int], Transport] | None = None,
        connect_timeout_s: float = 15.0,
    ) -> None:
        self._primary = primary
        self._per_connection = per_connection
        self._open_transport = open_transport
        self._connect_timeout_s = connect_timeout_s
        self._slots = [_Slot(primary)]
        self._lock = threading.Lock()

    @property
    def connections(self) -> int:
        """How many connections hold consumers (the primary included)."""
        with self._lock:
            return len(self._slots)

    def consumers_per_connection(self) -> list[int]:
        with self._lock:
            return [slot.consumers for slot in self._slots]

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
        slot = self._take_slot()
        transport = slot.transport

        def tagged(delivery: Delivery) -> None:  # on that connection's IO thread
            on_delivery(dataclasses.replace(delivery, token=(transport, delivery.token)))

        try:
            inner = transport.consume(queue, tagged, prefetch=prefetch, on_error=on_error, timeout_s=timeout_s)
        except BaseException:
            self._release(slot)
            raise
        return _PooledConsumer(inner, slot, self._release)

    def _take_slot(self) -> _Slot:
        """The first connection with room (opening one if all are full), its count taken."""
        with self._lock:
            slot = next((slot for slot in self._slots if slot.consumers < self._per_connection), None)
            if slot is None and self._open_transport is None:
                slot = self._slots[0]
            if slot is None:
                slot = self._open_slot()
            slot.consumers += 1
            return slot

    def _open_slot(self) -> _Slot:
        assert self._open_transport is not None
        transport = self._open_transport(len(self._slots))
        transport.start(wait_s=self._connect_timeout_s)
        slot = _Slot(transport)
        self._slots.append(slot)
        log.info(
            "opened result-consumer connection %d (the others hold %d consumers each)",
            len(self._slots),
            self._per_connection,
        )
        return slot

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.consumers = max(0, slot.consumers - 1)

    def ack(self, delivery: Delivery) -> None:
        transport, token = self._origin(delivery)
        transport.ack(dataclasses.replace(delivery, token=token))

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        transport, token = self._origin(delivery)
        transport.nack(dataclasses.replace(delivery, token=token), requeue=requeue)

    def _origin(self, delivery: Delivery) -> tuple[Transport, Any]:
        """The connection a delivery came on, and its own token (deliveries consumed on the
        primary directly, e.g. the dead-letter queue's, carry the primary's token)."""
        token = delivery.token
        if isinstance(token, tuple) and len(token) == 2 and isinstance(token[0], Transport):
            return token[0], token[1]
        return self._primary, token

    # --- lifecycle and the rest: the primary connection ---------------------------------

    @property
    def username(self) -> str:
        return self._primary.username

    @property
    def connected(self) -> bool:
        return self._primary.connected

    def start(self, *, wait_s: float | None = None) -> None:
        """The primary is started by its owner; further connections when first needed."""

    def close(self) -> None:
        """Close the connections opened here (their unacked deliveries go back to the queues)."""
        with self._lock:
            opened, self._slots = self._slots[1:], self._slots[:1]
        for slot in opened:
            slot.transport.close()

    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[Future[None]]:
        return self._primary.publish_many(messages)

    def declare_exchange(self, name: str, kind: ExchangeKind, *, timeout_s: float = 10.0) -> None:
        self._primary.declare_exchange(name, kind, timeout_s=timeout_s)

    def declare_queue(self, name: str, *, arguments: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> None:
        self._primary.declare_queue(name, arguments=arguments, timeout_s=timeout_s)

    def bind_queue(self, queue: str, exchange: str, routing_key: str, *, timeout_s: float = 10.0) -> None:
        self._primary.bind_queue(queue, exchange, routing_key, timeout_s=timeout_s)

    def delete_queue(self, name: str, *, timeout_s: float = 10.0) -> None:
        self._primary.delete_queue(name, timeout_s=timeout_s)

    def delete_exchange(self, name: str, *, timeout_s: float = 10.0) -> None:
        self._primary.delete_exchange(name, timeout_s=timeout_s)

    def queue_depth(self, name: str, *, timeout_s: float = 10.0) -> int:
        return self._primary.queue_depth(name, timeout_s=timeout_s)

    def take_one(self, name: str, *, timeout_s: float = 10.0) -> bytes | None:
        return self._primary.take_one(name, timeout_s=timeout_s)

    def queue_consumers(self, name: str, *, timeout_s: float = 10.0) -> int:
        return self._primary.queue_consumers(name, timeout_s=timeout_s)
