"""What the in-memory transport must do like RabbitMQ beyond the shared contract tests."""

from __future__ import annotations

from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, MemoryBroker, MemoryTransport, OutgoingMessage


def test_closing_a_transport_requeues_its_unacked_deliveries_for_other_consumers() -> None:
    broker = MemoryBroker()
    publisher = MemoryTransport(broker)
    publisher.start()
    publisher.declare_queue("q")
    dying = MemoryTransport(broker)
    dying.start()
    held: list[Delivery] = []
    dying.consume("q", held.append, prefetch=1)
    publisher.publish(OutgoingMessage(exchange="", routing_key="q", body=b"m")).result(timeout=5)
    wait_until(lambda: held, what="the delivery")

    dying.close()  # the consumer's connection is gone: the message is ready again, not lost to it
    assert publisher.queue_depth("q") == 1
    survivor: list[Delivery] = []
    publisher.consume("q", survivor.append, prefetch=1)
    wait_until(lambda: survivor, what="the redelivery")
    assert survivor[0].redelivered and survivor[0].body == b"m"
    publisher.close()
