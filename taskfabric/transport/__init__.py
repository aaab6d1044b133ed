"""The broker transport: confirmed publishes, acknowledged consumes, topology operations.

`Transport` is the interface; `RabbitTransport` talks to RabbitMQ (`rabbitmq/`, the only package importing pika)
and `MemoryTransport` on a `MemoryBroker` is its in-memory twin for unit tests. The same contract
tests run against both. Errors are taskfabric's own (`taskfabric.errors.BrokerError` and below).
"""

from __future__ import annotations

from taskfabric.transport.base import (
    ConsumerHandle,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    Transport,
)
from taskfabric.transport.memory import MemoryBroker, MemoryTransport
from taskfabric.transport.rabbitmq import RabbitTransport, redact_url

__all__ = [
    "ConsumerHandle",
    "Delivery",
    "DeliveryCallback",
    "MemoryBroker",
    "MemoryTransport",
    "OutgoingMessage",
    "RabbitTransport",
    "Transport",
    "redact_url",
]
