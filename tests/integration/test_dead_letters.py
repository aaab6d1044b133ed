"""Malformed messages on a real queue end in the dead-letter queue; the consumer keeps going."""

from __future__ import annotations

import threading
import uuid

from taskfabric.broker_config import Topology, new_queue_secret
from taskfabric.inbox import Inbox
from taskfabric.protocol import Heartbeat, Task, TaskBatch, pack
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport


def test_malformed_messages_are_dead_lettered_and_consuming_continues(
    rabbit: RabbitTransport, topology: Topology
) -> None:
    queues = topology.endpoint_queues(uuid.uuid4(), new_queue_secret())
    topology.declare_endpoint(rabbit, queues)
    good = [TaskBatch(tasks=[Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"p")]) for _ in range(3)]
    bad = [b"garbage", b"\x01\x92\x01\x02", pack(Heartbeat(sent_at=1.0)), b"\x09" + pack(good[0])[1:]]
    bodies = [pack(good[0]), bad[0], bad[1], pack(good[1]), bad[2], bad[3], pack(good[2])]
    for future in rabbit.publish_many(
        OutgoingMessage(exchange=topology.tasks_exchange, routing_key=queues.task_queue, body=body) for body in bodies
    ):
        future.result(timeout=10)

    handled: list[TaskBatch] = []
    lock = threading.Lock()

    def handle(batch: TaskBatch, delivery: Delivery) -> None:
        with lock:
            handled.append(batch)
        rabbit.ack(delivery)

    inbox = Inbox(rabbit, queues.task_queue, handle, accepts=(TaskBatch,), prefetch=10)
    wait_until(lambda: len(handled) == 3, what="the three good batches")
    assert handled == good
    wait_until(lambda: rabbit.queue_depth(topology.dead_letter_queue) == 4, what="four dead letters")
    assert inbox.rejected == 4

    dead: list[Delivery] = []
    rabbit.consume(topology.dead_letter_queue, lambda d: (dead.append(d), rabbit.ack(d)), prefetch=10)
    wait_until(lambda: len(dead) == 4, what="dead letters read back")
    assert sorted(d.body for d in dead) == sorted(bad)
    assert {d.headers["x-first-death-reason"] for d in dead} == {"rejected"}
    assert {d.headers["x-first-death-queue"] for d in dead} == {queues.task_queue}

    # and the consumer is still consuming
    fresh = TaskBatch(tasks=[Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"later")])
    rabbit.publish(
        OutgoingMessage(exchange=topology.tasks_exchange, routing_key=queues.task_queue, body=pack(fresh))
    ).result(timeout=10)
    wait_until(lambda: len(handled) == 4, what="a batch after the bad ones")
    assert handled[-1] == fresh
    topology.delete_endpoint(rabbit, queues)
