"""The queue doctor's decisions on fakes: which queue is broken, when it is rebuilt, and which
endpoints are kept out of traffic meanwhile."""

from __future__ import annotations

import uuid
from typing import Any

from taskfabric.broker_config import Topology, new_queue_secret
from taskfabric.errors import NotFound
from taskfabric.forwarder.queue_health import QueueDoctor, is_broken
from taskfabric.forwarder.records import EndpointRecord


def test_what_counts_as_broken() -> None:
    assert is_broken(None)  # missing
    assert is_broken({"type": "quorum", "leader": None, "online": ["n"]})
    assert is_broken({"type": "quorum", "leader": "n", "online": []})
    assert not is_broken({"type": "quorum", "leader": "n", "online": ["n"]})
    assert not is_broken({"type": "classic", "state": "running"})


class _Broker:
    def __init__(self) -> None:
        self.topology = Topology(prefix="t")
        self.states: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.declared: list[str] = []
        self.management = self
        self.transport = self

    def queue_states(self) -> dict[str, dict[str, Any]]:
        return self.states

    def queues_of(self, endpoint_id: uuid.UUID, secret: str) -> Any:
        return self.topology.endpoint_queues(endpoint_id, secret)

    def queue_depth(self, name: str, *, timeout_s: float = 10.0) -> int:
        if name not in self.states:
            raise NotFound(f"no queue {name!r}")
        return 0

    def delete_queue(self, name: str) -> None:
        self.deleted.append(name)

    def declare_endpoint_queues(self, queues: Any) -> None:
        self.declared.append(queues.task_queue)
        for name in (queues.task_queue, queues.result_queue, queues.control_queue):
            self.states[name] = {"type": "quorum", "leader": "n", "online": ["n"]}


class _Consumers:
    def __init__(self) -> None:
        self.quarantined: set[uuid.UUID] = set()
        self.released: list[uuid.UUID] = []

    def quarantine(self, endpoint_id: uuid.UUID) -> None:
        self.quarantined.add(endpoint_id)

    def release(self, endpoint: EndpointRecord) -> None:
        self.quarantined.discard(endpoint.endpoint_id)
        self.released.append(endpoint.endpoint_id)


def _endpoint() -> EndpointRecord:
    endpoint_id = uuid.uuid4()
    return EndpointRecord(
        endpoint_id=endpoint_id,
        owner_id=uuid.uuid4(),
        name="e",
        queue_secret=new_queue_secret(),
        broker_username=f"ep-{endpoint_id}",
        created_at=0.0,
        metadata="{}",
    )


def _healthy(broker: _Broker, *endpoints: EndpointRecord) -> None:
    for endpoint in endpoints:
        broker.declare_endpoint_queues(broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret))
    broker.declared.clear()


def test_a_broken_queue_is_quarantined_at_once_and_rebuilt_when_confirmed() -> None:
    broker, consumers = _Broker(), _Consumers()
    doctor = QueueDoctor(broker, consumers, confirmations=2)  # type: ignore[arg-type]
    victim, bystander = _endpoint(), _endpoint()
    _healthy(broker, victim, bystander)
    queues = broker.queues_of(victim.endpoint_id, victim.queue_secret)
    broker.states[queues.result_queue] = {"type": "quorum", "leader": None, "online": []}

    assert doctor.examine([victim, bystander]) == []
    assert doctor.under_repair == {victim.endpoint_id}
    assert consumers.quarantined == {victim.endpoint_id}

    [rebuild] = doctor.examine([victim, bystander])
    assert rebuild.endpoint_id == victim.endpoint_id and rebuild.result_queue and not rebuild.task_queue
    assert broker.deleted == [queues.result_queue]
    assert doctor.under_repair == set() and consumers.quarantined == set()
    assert consumers.released == [victim.endpoint_id]


def test_a_replica_without_the_rebuild_lease_quarantines_and_waits_for_the_holders_rebuild() -> None:
    broker, consumers = _Broker(), _Consumers()
    doctor = QueueDoctor(broker, consumers, confirmations=1)  # type: ignore[arg-type]
    endpoint = _endpoint()
    _healthy(broker, endpoint)
    queues = broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret)
    broken = {"type": "quorum", "leader": None, "online": []}
    broker.states[queues.result_queue] = broken
    for _ in range(2):  # confirmed broken, again and again: still not rebuilt here
        assert doctor.examine([endpoint], may_rebuild=False) == []
        assert doctor.under_repair == {endpoint.endpoint_id} and consumers.quarantined == {endpoint.endpoint_id}
    assert broker.deleted == []
    broker.states[queues.result_queue] = {"type": "quorum", "leader": "n", "online": ["n"]}  # the holder rebuilt it
    assert doctor.examine([endpoint], may_rebuild=False) == []
    assert doctor.under_repair == set() and consumers.released == [endpoint.endpoint_id]


def test_a_queue_that_heals_by_itself_is_released_without_a_rebuild() -> None:
    broker, consumers = _Broker(), _Consumers()
    doctor = QueueDoctor(broker, consumers, confirmations=3)  # type: ignore[arg-type]
    endpoint = _endpoint()
    _healthy(broker, endpoint)
    queues = broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret)
    broker.states[queues.task_queue] = {"type": "quorum", "leader": None, "online": ["n"]}
    doctor.examine([endpoint])
    assert doctor.under_repair == {endpoint.endpoint_id}
    broker.states[queues.task_queue] = {"type": "quorum", "leader": "n", "online": ["n"]}  # a new leader
    assert doctor.examine([endpoint]) == []
    assert doctor.under_repair == set() and consumers.released == [endpoint.endpoint_id]
    assert broker.deleted == []


def test_a_queue_the_listing_does_not_show_yet_is_left_alone() -> None:
    broker, consumers = _Broker(), _Consumers()
    doctor = QueueDoctor(broker, consumers, confirmations=1)  # type: ignore[arg-type]
    endpoint = _endpoint()
    _healthy(broker, endpoint)
    queues = broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret)
    listed = dict(broker.states)
    del listed[queues.result_queue]  # declared, but not in the management API's listing yet
    broker.queue_states = lambda: listed  # type: ignore[method-assign]
    assert doctor.examine([endpoint]) == []
    assert doctor.under_repair == set() and consumers.quarantined == set()


def test_a_missing_queue_is_declared_again() -> None:
    broker, consumers = _Broker(), _Consumers()
    doctor = QueueDoctor(broker, consumers, confirmations=1)  # type: ignore[arg-type]
    endpoint = _endpoint()
    _healthy(broker, endpoint)
    queues = broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret)
    del broker.states[queues.control_queue]
    [rebuild] = doctor.examine([endpoint])
    assert rebuild.endpoint_id == endpoint.endpoint_id
    assert broker.declared == [queues.task_queue]
