"""Many result consumers on a real RabbitMQ: one connection runs out of channels, the forwarder's
`ConsumerConnections` pool does not (it opens more connections and routes acks back).

The per-connection channel limit is lowered for the test (`channel_max`, negotiated down from the
broker's 2047), so a handful of queues stands for two thousand endpoints."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from taskfabric.errors import BrokerError
from taskfabric.forwarder.consumer_pool import ConsumerConnections
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport, Transport

pytestmark = pytest.mark.timeout(120)

#: consumers per connection in this test; each connection also has a publish and an admin channel
PER_CONNECTION = 3
QUEUES = 10


@pytest.fixture
def queues(rabbit: RabbitTransport) -> Iterator[list[str]]:
    names = [unique_name("cc") for _ in range(QUEUES)]
    for name in names:
        rabbit.declare_queue(name)
    yield names
    for name in names:
        rabbit.delete_queue(name)


def _limited(broker: BrokerUnderTest, name: str) -> RabbitTransport:
    return RabbitTransport(broker.amqp_url, connection_name=name, channel_max=PER_CONNECTION + 2)


class _Received:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        with self._lock:
            self.bodies.append(delivery.body)
        self.transport.ack(delivery)


def test_one_connection_cannot_consume_more_queues_than_its_channel_max_but_keeps_working(
    broker: BrokerUnderTest, queues: list[str]
) -> None:
    transport = _limited(broker, "taskfabric-tests-one-connection")
    transport.start()
    received = _Received(transport)
    try:
        consumed: list[str] = []
        with pytest.raises(BrokerError, match="no free channel"):
            for queue in queues:
                transport.consume(queue, received, prefetch=1, timeout_s=5.0)
                consumed.append(queue)
        assert 0 < len(consumed) < QUEUES
        # the refused subscription failed alone: the connection still publishes and delivers
        # (pika's NoFreeChannels used to end the connection's IO loop, and everything with it)
        transport.publish(OutgoingMessage(exchange="", routing_key=consumed[0], body=b"still here")).result(timeout=10)
        wait_until(lambda: received.bodies == [b"still here"], what="the earlier consumer to get a message")
    finally:
        transport.close()


def test_the_pool_consumes_every_queue_over_several_connections_and_acks_on_each(
    broker: BrokerUnderTest, rabbit: RabbitTransport, queues: list[str]
) -> None:
    primary = _limited(broker, "taskfabric-tests-primary")
    primary.start()
    opened: list[int] = []

    def open_transport(index: int) -> Transport:
        opened.append(index)
        return _limited(broker, f"taskfabric-tests-extra-{index}")

    pool = ConsumerConnections(primary, per_connection=PER_CONNECTION, open_transport=open_transport)
    received = _Received(pool)
    try:
        handles = [pool.consume(queue, received, prefetch=5) for queue in queues]
        assert pool.connections == 4 and pool.consumers_per_connection() == [3, 3, 3, 1]
        for queue in queues:
            rabbit.publish(OutgoingMessage(exchange="", routing_key=queue, body=queue.encode())).result(timeout=10)
        wait_until(lambda: len(received.bodies) == QUEUES, what="a message from every queue")
        assert sorted(received.bodies) == sorted(queue.encode() for queue in queues)
        # a freed slot is taken again before another connection is opened
        handles[0].cancel()
        pool.consume(queues[0], received, prefetch=5)
        assert pool.connections == 4 and opened == [1, 2, 3]
    finally:
        pool.close()
        primary.close()
    # the acks went to the connections the deliveries came on: nothing came back when they closed
    for queue in queues:
        assert rabbit.queue_depth(queue) == 0, queue
