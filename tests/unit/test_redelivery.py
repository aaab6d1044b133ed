"""Returns counted by the consumer on classic queues (taskfabric/transport/redelivery.py)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfabric.broker_config import Topology
from taskfabric.endpoint_agent.broker_link import redelivery_limit_of
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.errors import ConfigError
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, MemoryBroker, MemoryTransport, OutgoingMessage
from taskfabric.transport.redelivery import (
    ORIGINAL_USER_HEADER,
    RETURNS_HEADER,
    RedeliveryCounter,
    RedeliveryLimit,
    Verdict,
    judge,
)

_QUEUE_ID = "00000000-0000-0000-0000-000000000001"


def _delivery(*, redelivered: bool, returns: object = None) -> Delivery:
    headers = {} if returns is None else {RETURNS_HEADER: returns}
    return Delivery(
        body=b"",
        exchange="x",
        routing_key="q",
        headers=headers,
        message_id=None,
        user_id=None,
        redelivered=redelivered,
        delivery_count=0,
        queue="q",
        token=None,
    )


@pytest.mark.parametrize(
    ("redelivered", "returns", "verdict", "count"),
    [
        (False, None, Verdict.DELIVER, 0),
        (False, 2, Verdict.DELIVER, 2),  # a copy, seen for the first time
        (True, None, Verdict.COPY, 1),
        (True, 1, Verdict.COPY, 2),
        (True, 2, Verdict.DEAD_LETTER, 3),
        (True, "2", Verdict.COPY, 1),  # not a count: counted from zero
        (True, True, Verdict.COPY, 1),
        (True, -4, Verdict.COPY, 1),
    ],
)
def test_the_verdict_on_one_delivery(redelivered: bool, returns: object, verdict: Verdict, count: int) -> None:
    assert judge(_delivery(redelivered=redelivered, returns=returns), limit=2) == (verdict, count)


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        RedeliveryLimit(limit=0, exchange="x", dead_letter_exchange="d")


@dataclasses.dataclass
class _Classic:
    topology: Topology
    publisher: MemoryTransport
    consumer: MemoryTransport
    queue: str


@pytest.fixture
def classic() -> Iterator[_Classic]:
    broker = MemoryBroker()
    topology = Topology(prefix="unit", delivery_limit=2, queue_type="classic")
    publisher = MemoryTransport(broker, username="forwarder")
    consumer = MemoryTransport(broker, username="ep-1")
    publisher.start()
    consumer.start()
    topology.declare_shared(publisher)
    queues = topology.endpoint_queues(uuid.UUID(_QUEUE_ID), "0" * 32)
    topology.declare_endpoint(publisher, queues)
    yield _Classic(topology, publisher, consumer, queues.task_queue)
    consumer.close()
    publisher.close()


def _publish(classic: _Classic, body: bytes) -> None:
    message = OutgoingMessage(
        exchange=classic.topology.tasks_exchange, routing_key=classic.queue, body=body, user_id="forwarder"
    )
    classic.publisher.publish(message).result(timeout=5)


def _counted(classic: _Classic, handler: object) -> RedeliveryCounter:
    limit = classic.topology.redelivery_limit(classic.topology.tasks_exchange)
    assert limit is not None
    return RedeliveryCounter(classic.consumer, limit, handler)  # type: ignore[arg-type]


def test_classic_queues_have_no_broker_delivery_limit_and_quorum_ones_need_no_counter() -> None:
    classic = Topology(prefix="unit", queue_type="classic")
    assert classic.queue_arguments() == {"x-queue-type": "classic", "x-dead-letter-exchange": "unit.dead-letter"}
    assert Topology(prefix="unit").redelivery_limit("unit.tasks") is None
    with pytest.raises(ValueError, match="queue_type"):
        Topology(prefix="unit", queue_type="lazy")  # type: ignore[arg-type]


def test_a_message_returned_past_the_limit_is_dead_lettered_as_a_broker_would(classic: _Classic) -> None:
    seen: list[Delivery] = []
    lock = threading.Lock()

    def return_it(delivery: Delivery) -> None:  # a consumer that dies before every ack
        with lock:
            seen.append(delivery)
        classic.consumer.nack(delivery, requeue=True)

    classic.consumer.consume(classic.queue, _counted(classic, return_it), prefetch=1)
    _publish(classic, b"poison")
    wait_until(lambda: classic.publisher.queue_depth(classic.topology.dead_letter_queue) == 1, what="the dead letter")

    # delivery_limit=2: delivered three times (as the quorum queue's x-delivery-limit does), then dead-lettered
    assert [(d.redelivered, d.delivery_count) for d in seen] == [(False, 0), (True, 1), (True, 2)]
    assert {d.user_id for d in seen} == {"forwarder"}  # the copies name the real publisher
    assert classic.publisher.queue_depth(classic.queue) == 0
    dead: list[Delivery] = []
    classic.publisher.consume(classic.topology.dead_letter_queue, dead.append, prefetch=1)
    wait_until(lambda: dead, what="the dead letter delivered")
    assert dead[0].body == b"poison"
    assert dead[0].headers["x-first-death-reason"] == "delivery_limit"
    assert dead[0].headers["x-first-death-queue"] == classic.queue
    assert dead[0].headers["x-delivery-count"] == 3
    assert dead[0].user_id == "ep-1"  # the consumer dead-lettered it: its own, verified user


def test_a_message_acked_after_one_return_is_gone_and_ran_with_its_count(classic: _Classic) -> None:
    seen: list[Delivery] = []

    def fail_once(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            classic.consumer.nack(delivery, requeue=True)
        else:
            classic.consumer.ack(delivery)

    classic.consumer.consume(classic.queue, _counted(classic, fail_once), prefetch=1)
    _publish(classic, b"task")
    wait_until(lambda: len(seen) == 2, what="the second delivery")
    assert seen[1].delivery_count == 1 and seen[1].body == b"task"
    wait_until(lambda: classic.publisher.queue_depth(classic.queue) == 0, what="the queue empty")
    assert classic.publisher.queue_depth(classic.topology.dead_letter_queue) == 0


def test_a_forged_original_user_header_is_not_believed(classic: _Classic) -> None:
    seen: list[Delivery] = []
    counted = _counted(classic, seen.append)
    classic.consumer.consume(classic.queue, counted, prefetch=1)
    message = OutgoingMessage(
        exchange=classic.topology.tasks_exchange,
        routing_key=classic.queue,
        body=b"x",
        headers={ORIGINAL_USER_HEADER: "ep-2", RETURNS_HEADER: 1},
        user_id="forwarder",
    )
    classic.publisher.publish(message).result(timeout=5)
    wait_until(lambda: seen, what="the delivery")
    assert seen[0].user_id == "forwarder"  # only a copy published as the consumer's own user names another
    assert seen[0].delivery_count == 1


def test_the_agent_counts_returns_only_on_classic_queues_as_its_registration_says(tmp_path: Path) -> None:
    endpoint_id = uuid.UUID(_QUEUE_ID)
    for queue_type, counted in (("quorum", False), ("classic", True)):
        topology = Topology(prefix="unit", delivery_limit=4, queue_type=queue_type)  # type: ignore[arg-type]
        queues = topology.endpoint_queues(endpoint_id, "0" * 32)
        access = topology.broker_access(queues, amqp_url="amqp://ep:pw@127.0.0.1/", username="ep")
        connection = EndpointConnection.of(endpoint_id, access)
        connection.save(tmp_path / "connection.json")
        loaded = EndpointConnection.load(tmp_path / "connection.json")
        assert loaded.queue_type == queue_type
        limit = redelivery_limit_of(loaded)
        assert (limit is not None) == counted
        if limit is not None:
            assert (limit.limit, limit.exchange, limit.dead_letter_exchange) == (4, "unit.tasks", "unit.dead-letter")
    odd = dataclasses.replace(connection, queue_type="lazy")
    with pytest.raises(ConfigError, match="queue_type"):
        redelivery_limit_of(odd)


def test_a_copy_the_broker_refuses_uses_up_no_returns(classic: _Classic, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy's exchange routes nowhere (unroutable): the original goes back unacked, paced,
    its count unchanged, so it is never dead-lettered for the broker's refusals."""
    monkeypatch.setattr("taskfabric.transport.redelivery._RETRY_DELAY_S", 0.01)
    seen: list[Delivery] = []
    classic.publisher.declare_exchange("nowhere", "direct")
    limit = RedeliveryLimit(limit=1, exchange="nowhere", dead_letter_exchange=classic.topology.dead_letter_exchange)

    def return_it(delivery: Delivery) -> None:
        seen.append(delivery)
        classic.consumer.nack(delivery, requeue=True)

    counter = RedeliveryCounter(classic.consumer, limit, return_it)
    attempts: list[Delivery] = []

    def counted(delivery: Delivery) -> None:
        attempts.append(delivery)
        counter(delivery)

    classic.consumer.consume(classic.queue, counted, prefetch=1)
    _publish(classic, b"m")
    wait_until(lambda: len(attempts) >= 5, what="several tries of the copy")
    assert len(seen) == 1  # the handler saw the first delivery only
    assert classic.publisher.queue_depth(classic.topology.dead_letter_queue) == 0
