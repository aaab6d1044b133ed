"""The transport contract: the same cases on the in-memory broker and on a real RabbitMQ, with
each queue type (on classic queues the consumer counts returns: taskfabric/transport/redelivery.py)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from taskfabric.broker_config import QUEUE_TYPES, Topology, new_queue_secret
from taskfabric.errors import NotFound, PreconditionFailed, Unroutable
from taskfabric.testing import unique_name, wait_until
from taskfabric.transport import Delivery, DeliveryCallback, OutgoingMessage, Transport
from taskfabric.transport.redelivery import RedeliveryCounter

Env = tuple[Transport, Callable[[], Transport]]


class Collector:
    """Collects deliveries (on the IO thread) for assertions from the test thread."""

    def __init__(self, transport: Transport, *, auto_ack: bool = True) -> None:
        self.transport = transport
        self.auto_ack = auto_ack
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        with self.lock:
            self.deliveries.append(delivery)
        if self.auto_ack:
            self.transport.ack(delivery)

    @property
    def bodies(self) -> list[bytes]:
        with self.lock:
            return [d.body for d in self.deliveries]


@pytest.fixture(params=QUEUE_TYPES)
def env(
    any_transport: Env, request: pytest.FixtureRequest
) -> Iterator[tuple[Transport, Callable[[], Transport], Topology, str]]:
    """A declared topology with one endpoint's queues of either type on either transport; cleaned up after."""
    transport, make = any_transport
    topo = Topology(prefix=unique_name("c"), delivery_limit=2, queue_type=request.param)
    topo.declare_shared(transport)
    queues = topo.endpoint_queues(uuid.uuid4(), new_queue_secret())
    topo.declare_endpoint(transport, queues)
    yield transport, make, topo, queues.task_queue
    topo.delete_endpoint(transport, queues)
    topo.delete_shared(transport)


def _counted(transport: Transport, topo: Topology, callback: DeliveryCallback) -> DeliveryCallback:
    """`callback` as the agent and the forwarder consume: returns counted on a classic queue."""
    limit = topo.redelivery_limit(topo.tasks_exchange)
    return callback if limit is None else RedeliveryCounter(transport, limit, callback)


def _msg(topo: Topology, queue: str, body: bytes, **kwargs: object) -> OutgoingMessage:
    return OutgoingMessage(exchange=topo.tasks_exchange, routing_key=queue, body=body, **kwargs)  # type: ignore[arg-type]


def test_confirmed_publish_then_consume_in_order(env: tuple[Transport, Callable[[], Transport], Topology, str]) -> None:
    transport, _make, topo, queue = env
    futures = transport.publish_many(_msg(topo, queue, f"m{i}".encode(), headers={"i": i}) for i in range(50))
    for future in futures:
        assert future.result(timeout=10) is None
    assert transport.queue_depth(queue) == 50
    collector = Collector(transport)
    handle = transport.consume(queue, collector, prefetch=10)
    wait_until(lambda: len(collector.bodies) == 50, what="50 deliveries")
    assert collector.bodies == [f"m{i}".encode() for i in range(50)]
    assert collector.deliveries[3].headers["i"] == 3
    assert not collector.deliveries[0].redelivered
    handle.cancel()
    wait_until(lambda: transport.queue_depth(queue) == 0, what="queue drained")


def test_unroutable_mandatory_publish_raises(env: tuple[Transport, Callable[[], Transport], Topology, str]) -> None:
    transport, _make, topo, _queue = env
    future = transport.publish(_msg(topo, "no-such-queue", b"x"))
    with pytest.raises(Unroutable, match="no-such-queue"):
        future.result(timeout=10)
    # the transport keeps working afterwards
    assert transport.publish(_msg(topo, _queue, b"ok")).result(timeout=10) is None


def test_publish_to_missing_exchange_is_not_found(
    env: tuple[Transport, Callable[[], Transport], Topology, str],
) -> None:
    transport, _make, topo, queue = env
    future = transport.publish(OutgoingMessage(exchange=unique_name("nope"), routing_key=queue, body=b"x"))
    with pytest.raises(NotFound):
        future.result(timeout=10)
    assert transport.publish(_msg(topo, queue, b"still works")).result(timeout=10) is None


def test_prefetch_bounds_unacked_deliveries(env: tuple[Transport, Callable[[], Transport], Topology, str]) -> None:
    transport, _make, topo, queue = env
    for future in transport.publish_many(_msg(topo, queue, b"%d" % i) for i in range(10)):
        future.result(timeout=10)
    collector = Collector(transport, auto_ack=False)
    transport.consume(queue, collector, prefetch=3)
    wait_until(lambda: len(collector.deliveries) == 3, what="3 deliveries")
    # no more arrive until something is acked
    with pytest.raises(TimeoutError):
        wait_until(lambda: len(collector.deliveries) > 3, timeout_s=0.5)
    transport.ack(collector.deliveries[0])
    wait_until(lambda: len(collector.deliveries) == 4, what="a 4th delivery after one ack")


def test_nack_requeue_redelivers_with_a_count_then_dead_letters(
    env: tuple[Transport, Callable[[], Transport], Topology, str],
) -> None:
    transport, _make, topo, queue = env
    transport.publish(_msg(topo, queue, b"poison", message_id="poison-1")).result(timeout=10)
    seen: list[Delivery] = []

    def always_fail(delivery: Delivery) -> None:
        seen.append(delivery)
        transport.nack(delivery, requeue=True)

    handle = transport.consume(queue, _counted(transport, topo, always_fail), prefetch=1)
    # delivery_limit=2: delivered three times, then dead-lettered
    wait_until(lambda: transport.queue_depth(topo.dead_letter_queue) == 1, what="poison message dead-lettered")
    handle.cancel()
    assert [d.delivery_count for d in seen] == [0, 1, 2]
    assert [d.redelivered for d in seen] == [False, True, True]
    dead = Collector(transport)
    transport.consume(topo.dead_letter_queue, dead, prefetch=5)
    wait_until(lambda: dead.deliveries, what="dead letter")
    assert dead.deliveries[0].body == b"poison"
    assert dead.deliveries[0].message_id == "poison-1"
    assert dead.deliveries[0].headers["x-first-death-reason"] == "delivery_limit"


def test_nack_without_requeue_dead_letters_at_once(
    env: tuple[Transport, Callable[[], Transport], Topology, str],
) -> None:
    transport, _make, topo, queue = env
    transport.publish(_msg(topo, queue, b"reject me")).result(timeout=10)
    transport.consume(queue, lambda d: transport.nack(d, requeue=False), prefetch=1)
    wait_until(lambda: transport.queue_depth(topo.dead_letter_queue) == 1, what="rejected message dead-lettered")
    dead = Collector(transport)
    transport.consume(topo.dead_letter_queue, dead, prefetch=5)
    wait_until(lambda: dead.deliveries, what="dead letter")
    assert dead.deliveries[0].headers["x-first-death-reason"] == "rejected"


def test_closing_a_consumer_requeues_unacked(env: tuple[Transport, Callable[[], Transport], Topology, str]) -> None:
    transport, make, topo, queue = env
    transport.publish(_msg(topo, queue, b"x")).result(timeout=10)
    other = make()
    collector = Collector(other, auto_ack=False)
    handle = other.consume(queue, collector, prefetch=1)
    wait_until(lambda: collector.deliveries, what="first delivery")
    handle.cancel()
    again = Collector(transport)
    transport.consume(queue, again, prefetch=1)
    wait_until(lambda: again.deliveries, what="redelivery")
    assert again.deliveries[0].redelivered
    # acking the first delivery now is harmless: it is stale
    other.ack(collector.deliveries[0])


def test_pause_and_resume(env: tuple[Transport, Callable[[], Transport], Topology, str]) -> None:
    transport, _make, topo, queue = env
    collector = Collector(transport)
    handle = transport.consume(queue, collector, prefetch=5)
    handle.pause()
    # a paused consumer takes nothing: the message stays ready in the queue
    transport.publish(_msg(topo, queue, b"later")).result(timeout=10)
    wait_until(lambda: transport.queue_depth(queue) == 1, what="message waiting")
    assert collector.bodies == []
    handle.resume()
    wait_until(lambda: collector.bodies == [b"later"], what="delivery after resume")


def test_declares_are_idempotent_and_conflicts_are_typed(
    env: tuple[Transport, Callable[[], Transport], Topology, str],
) -> None:
    transport, _make, topo, queue = env
    topo.declare_shared(transport)
    transport.declare_queue(queue, arguments=topo.queue_arguments())
    with pytest.raises(PreconditionFailed):
        other = "classic" if topo.queue_type == "quorum" else "quorum"
        transport.declare_queue(queue, arguments={**topo.queue_arguments(), "x-queue-type": other})
    # the transport recovers from the closed channel
    assert transport.queue_depth(queue) == 0


def test_endpoint_queues_declared_before_a_change_of_queue_type_keep_their_type(
    env: tuple[Transport, Callable[[], Transport], Topology, str],
) -> None:
    transport, _make, topo, queue = env
    other = dataclasses.replace(topo, queue_type="classic" if topo.queue_type == "quorum" else "quorum")
    queues = topo.endpoint_queues(uuid.UUID(queue.split(".")[2]), queue.split(".")[3])
    other.declare_endpoint(transport, queues)  # a forwarder restarted with the other queue_type
    transport.publish(_msg(topo, queue, b"still here")).result(timeout=10)
    collector = Collector(transport)
    transport.consume(queue, collector, prefetch=1)
    wait_until(lambda: collector.bodies == [b"still here"], what="the queue working as before")


def test_queue_depth_of_missing_queue_is_not_found(
    env: tuple[Transport, Callable[[], Transport], Topology, str],
) -> None:
    transport, _make, _topo, _queue = env
    with pytest.raises(NotFound):
        transport.queue_depth(unique_name("missing"))
    with pytest.raises(NotFound):
        transport.consume(unique_name("missing"), lambda d: None, prefetch=1)


def test_user_id_is_validated(env: tuple[Transport, Callable[[], Transport], Topology, str]) -> None:
    transport, _make, topo, queue = env
    transport.publish(_msg(topo, queue, b"mine", user_id=transport.username)).result(timeout=10)
    forged = transport.publish(_msg(topo, queue, b"forged", user_id="somebody-else"))
    with pytest.raises(PreconditionFailed):
        forged.result(timeout=10)
    collector = Collector(transport)
    transport.consume(queue, collector, prefetch=5)
    wait_until(lambda: collector.deliveries, what="delivery")
    assert collector.bodies == [b"mine"]
    assert collector.deliveries[0].user_id == transport.username
