"""The agent's broker link takes cancellations on the control queue before any task, and keeps
taking them while its task intake is paused (in-memory broker)."""

from __future__ import annotations

import dataclasses
import queue
import uuid
from collections.abc import Iterator

import pytest

from taskfabric.broker_config import EndpointQueues, Topology, new_queue_secret
from taskfabric.endpoint_agent.broker_link import EndpointBrokerLink
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.protocol import CancelTasks, Task, TaskBatch, pack
from taskfabric.testing import wait_until
from taskfabric.transport import MemoryBroker, MemoryTransport, OutgoingMessage


@pytest.fixture
def setup() -> Iterator[tuple[MemoryTransport, Topology, EndpointQueues, EndpointConnection]]:
    memory = MemoryBroker()
    admin = MemoryTransport(memory)
    admin.start()
    topology = Topology(prefix="unit")
    topology.declare_shared(admin)
    endpoint_id = uuid.uuid4()
    queues = topology.endpoint_queues(endpoint_id, new_queue_secret())
    topology.declare_endpoint(admin, queues)
    connection = EndpointConnection.of(
        endpoint_id, topology.broker_access(queues, amqp_url="amqp://unused", username="guest")
    )
    yield admin, topology, queues, connection
    admin.close()


def _publish(admin: MemoryTransport, topology: Topology, queue_name: str, body: bytes) -> None:
    admin.publish(OutgoingMessage(exchange=topology.tasks_exchange, routing_key=queue_name, body=body)).result(5)


def _task() -> Task:
    return Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"p")


def test_cancels_are_taken_before_tasks(
    setup: tuple[MemoryTransport, Topology, EndpointQueues, EndpointConnection],
) -> None:
    admin, topology, queues, connection = setup
    early, late = [uuid.uuid4()], [uuid.uuid4()]
    _publish(admin, topology, queues.task_queue, pack(TaskBatch(tasks=[_task()])))
    _publish(admin, topology, queues.control_queue, pack(CancelTasks(task_ids=early)))
    _publish(admin, topology, queues.control_queue, pack(CancelTasks(task_ids=late)))
    link = EndpointBrokerLink(
        connection, wake=lambda: None, prefetch_messages=1, transport=MemoryTransport(admin.broker)
    )
    link.start()
    try:
        assert link.subscribe() is False  # a cancel is still waiting in the control queue
        assert not link.subscribed()
        cancel, delivery = link.cancels.get(timeout=5)
        assert cancel.task_ids == early
        link.ack(delivery)
        cancel, delivery = link.cancels.get(timeout=5)
        assert cancel.task_ids == late
        link.ack(delivery)
        assert link.subscribe() is True  # the control backlog is delivered: tasks may come
        batch, _ = link.inbound.get(timeout=5)
        assert len(batch.tasks) == 1

        link.pause()  # a full agent takes no tasks, but still hears about cancels
        more = [uuid.uuid4()]
        _publish(admin, topology, queues.task_queue, pack(TaskBatch(tasks=[_task()])))
        _publish(admin, topology, queues.control_queue, pack(CancelTasks(task_ids=more)))
        cancel, _ = link.cancels.get(timeout=5)
        assert cancel.task_ids == more
        with pytest.raises(queue.Empty):
            link.inbound.get_nowait()
        wait_until(lambda: admin.queue_depth(queues.task_queue) == 1, what="the task left in its queue")
    finally:
        link.close()


def test_an_old_connection_without_a_control_queue_still_takes_tasks(
    setup: tuple[MemoryTransport, Topology, EndpointQueues, EndpointConnection],
) -> None:
    admin, topology, queues, connection = setup
    old = dataclasses.replace(connection, control_queue=None)
    _publish(admin, topology, queues.task_queue, pack(TaskBatch(tasks=[_task()])))
    link = EndpointBrokerLink(old, wake=lambda: None, transport=MemoryTransport(admin.broker))
    link.start()
    try:
        assert link.subscribe() is True
        batch, _ = link.inbound.get(timeout=5)
        assert len(batch.tasks) == 1
    finally:
        link.close()
