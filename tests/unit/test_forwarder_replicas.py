"""Fan-out between forwarder replicas on the in-memory broker, and the hub's side of it."""

from __future__ import annotations

import queue
import time
import uuid

from taskfabric.broker_config import Topology
from taskfabric.forwarder.records import TaskRecord, TaskStatus
from taskfabric.forwarder.replicas import NOTICE_MAX_IDS, ReplicaFanout
from taskfabric.forwarder.stream import ResultHub, StreamLimits, StreamSubscriber
from taskfabric.protocol import TasksFinished, pack
from taskfabric.transport import OutgoingMessage
from taskfabric.transport.memory import MemoryBroker, MemoryTransport

OWNER = uuid.uuid4()


def _replica(broker: MemoryBroker, topology: Topology, heard: queue.SimpleQueue[list[uuid.UUID]]) -> ReplicaFanout:
    transport = MemoryTransport(broker, username="forwarder")
    transport.start()
    fanout = ReplicaFanout(transport, topology, on_notice=heard.put)
    fanout.start()
    return fanout


def test_a_replica_notice_reaches_every_other_replica_but_not_its_sender() -> None:
    broker, topology = MemoryBroker(), Topology(prefix="replicas-unit")
    heard_a: queue.SimpleQueue[list[uuid.UUID]] = queue.SimpleQueue()
    heard_b: queue.SimpleQueue[list[uuid.UUID]] = queue.SimpleQueue()
    a, b = _replica(broker, topology, heard_a), _replica(broker, topology, heard_b)
    ids = [uuid.uuid4() for _ in range(NOTICE_MAX_IDS + 3)]
    a.announce(ids)
    assert heard_b.get(timeout=5) + heard_b.get(timeout=5) == ids  # split in two notices, in order
    b.announce(ids[:1])
    assert heard_a.get(timeout=5) == ids[:1]
    time.sleep(0.05)
    assert heard_a.empty() and heard_b.empty()  # nobody hears its own notices
    assert (a.announced, b.received, b.announced, a.received) == (2, 2, 1, 1)
    a.close()
    b.close()
    assert topology.replica_queue(a.replica_id) not in broker.queues


def test_a_replica_drops_notices_not_sent_by_a_forwarder_and_garbage() -> None:
    broker, topology = MemoryBroker(), Topology(prefix="replicas-unit-2")
    heard: queue.SimpleQueue[list[uuid.UUID]] = queue.SimpleQueue()
    replica = _replica(broker, topology, heard)
    intruder = MemoryTransport(broker, username="ep-someone")
    intruder.start()
    forged = TasksFinished(replica_id=uuid.uuid4(), task_ids=[uuid.uuid4()])
    for transport, body in ((intruder, pack(forged)), (replica._transport, b"\x01garbage")):
        message = OutgoingMessage(
            exchange=topology.replicas_exchange, routing_key="", body=body, user_id=transport.username
        )
        transport.publish(message).result(timeout=5)
    genuine = [uuid.uuid4()]
    other = MemoryTransport(broker, username="forwarder")
    other.start()
    sender = ReplicaFanout(other, topology, on_notice=lambda ids: None)
    sender.announce(genuine)
    assert heard.get(timeout=5) == genuine  # the first thing heard: the two before were dropped
    replica.close()


def _finished(task_id: uuid.UUID) -> TaskRecord:
    now = time.time()
    return TaskRecord(
        task_id=task_id,
        owner_id=OWNER,
        endpoint_id=uuid.uuid4(),
        function_id=uuid.uuid4(),
        status=TaskStatus.SUCCESS,
        created_at=now,
        completed_at=now,
        result=b"v",
    )


def test_the_hub_announces_what_it_finished_and_serves_peers_results_without_announcing() -> None:
    hub = ResultHub()
    announced: list[list[uuid.UUID]] = []
    hub.announce = announced.append
    subscriber = StreamSubscriber(OWNER, StreamLimits())
    mine, theirs, unwatched = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hub.watch(subscriber, subscriber.want([mine, theirs]))
    hub.publish([_finished(mine)])
    assert announced == [[mine]]
    assert hub.finished_elsewhere([theirs, unwatched]) == [theirs]
    assert hub.recently_finished.get(unwatched)  # a later subscription looks it up in the store
    hub.publish_from_peer([_finished(theirs)])
    assert announced == [[mine]]
    frame = subscriber.next_frame()
    assert frame is not None
    assert [result["task_id"] for result in frame["results"]] == [str(mine), str(theirs)]
    hub.publish_from_peer([_finished(theirs)])  # a second notice: sent once all the same
    assert subscriber.next_frame() is None
