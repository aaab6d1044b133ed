"""The broker transport interface, shared by the RabbitMQ and the in-memory implementation.

A transport owns its connection on one IO thread. Every public method may be called from any
thread: publishes return a `concurrent.futures.Future` that resolves when the broker confirms (or
fails with a `BrokerError`); deliveries are handed to the consumer's callback *on the IO thread*,
so callbacks must be quick (hand the delivery to your own thread) and must not block.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

__all__ = [
    "ConsumerHandle",
    "Delivery",
    "DeliveryCallback",
    "ErrorCallback",
    "ExchangeKind",
    "OutgoingMessage",
    "Transport",
]

ExchangeKind = str  # "direct" | "fanout" | "topic"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMessage:
    """A message to publish. Always persistent; `mandatory` makes an unroutable publish fail."""

    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] | None = None
    message_id: str | None = None
    #: when set, the broker checks it equals the connection's user (a verified sender identity)
    user_id: str | None = None
    content_type: str = "application/x-taskfabric"
    mandatory: bool = True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A message handed to a consumer; ack or nack it through the transport that delivered it."""

    body: bytes
    exchange: str
    routing_key: str
    headers: Mapping[str, Any]
    message_id: str | None
    user_id: str | None
    redelivered: bool
    #: how many times the broker delivered this message before (quorum queues count it)
    delivery_count: int
    queue: str
    #: opaque: which connection/channel generation and tag the delivery belongs to
    token: Any = dataclasses.field(repr=False, compare=False)


DeliveryCallback = Callable[[Delivery], None]
ErrorCallback = Callable[[BaseException], None]


class ConsumerHandle(abc.ABC):
    """A live subscription; survives reconnects until cancelled."""

    queue: str

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop consuming; unacked deliveries go back to the queue when the channel closes."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Stop receiving new deliveries (already delivered ones stay valid)."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Start receiving again after `pause`."""


class Transport(abc.ABC):
    """A connection to a message broker with confirmed publishes and acknowledged consumes."""

    @property
    @abc.abstractmethod
    def username(self) -> str:
        """The broker user this transport authenticates as."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the connection is up right now."""

    @property
    def last_error(self) -> BaseException | None:
        """Why the last connection attempt failed or the connection dropped (None once connected)."""
        return None

    @abc.abstractmethod
    def start(self, *, wait_s: float | None = None) -> None:
        """Start the IO thread and connect. With `wait_s`, wait that long for the first connection
        and raise `BrokerUnavailable` if it was not made (naming why)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection and stop the IO thread; pending publishes fail."""

    # --- publishing ---------------------------------------------------------------------

    @abc.abstractmethod
    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[Future[None]]:
        """Publish messages in order; each future resolves on the broker's confirm, or fails with
        `Unroutable`, `PublishRejected`, `PublishTimeout`, `ConnectionLost`, `NotFound`,
        `AccessRefused` or `BrokerUnavailable`."""

    def publish(self, message: OutgoingMessage) -> Future[None]:
        """Publish one message; see `publish_many`."""
        return self.publish_many([message])[0]

    # --- consuming ----------------------------------------------------------------------

    @abc.abstractmethod
    def consume(
        self,
        queue: str,
        on_delivery: DeliveryCallback,
        *,
        prefetch: int,
        on_error: ErrorCallback | None = None,
        timeout_s: float = 10.0,
    ) -> ConsumerHandle:
        """Subscribe to `queue` with manual acks and at most `prefetch` unacked deliveries.
        Raises `NotFound` / `AccessRefused` if the first subscription fails; later failures (after
        a reconnect) go to `on_error`."""

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a delivery. A delivery from a connection that has since dropped is ignored
        (the broker has already requeued it)."""

    @abc.abstractmethod
    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        """Reject a delivery: back to the queue, or (requeue=False) to the dead-letter exchange."""

    # --- topology -----------------------------------------------------------------------

    @abc.abstractmethod
    def declare_exchange(self, name: str, kind: ExchangeKind, *, timeout_s: float = 10.0) -> None:
        """Declare a durable exchange (idempotent)."""

    @abc.abstractmethod
    def declare_queue(self, name: str, *, arguments: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> None:
        """Declare a durable queue with `arguments` (idempotent for equal arguments)."""

    @abc.abstractmethod
    def bind_queue(self, queue: str, exchange: str, routing_key: str, *, timeout_s: float = 10.0) -> None:
        """Bind `queue` to `exchange` with `routing_key`."""

    @abc.abstractmethod
    def delete_queue(self, name: str, *, timeout_s: float = 10.0) -> None:
        """Delete a queue and its messages (no error if it does not exist)."""

    @abc.abstractmethod
    def delete_exchange(self, name: str, *, timeout_s: float = 10.0) -> None:
        """Delete an exchange (no error if it does not exist)."""

    @abc.abstractmethod
    def queue_depth(self, name: str, *, timeout_s: float = 10.0) -> int:
        """Messages ready in `queue` (not counting unacked ones). Raises `NotFound`."""

    @abc.abstractmethod
    def take_one(self, name: str, *, timeout_s: float = 10.0) -> bytes | None:
        """Remove and return the body of the next ready message of `queue` (None when empty).
        For probes and tools, not for the hot path. Raises `NotFound`."""

    @abc.abstractmethod
    def queue_consumers(self, name: str, *, timeout_s: float = 10.0) -> int:
        """Consumers subscribed to `queue` (a consumer the broker forgot, e.g. on a queue deleted
        and declared again, is not counted). Raises `NotFound`."""

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
