"""Which finished tasks the Globus Compute result relay publishes to a task group's queue: only
the group owner's (a group id is the client's choice; another user may have used it too)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from concurrent.futures import Future
from typing import Any, cast

from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.globus_compute.results import ComputeResultRelay
from taskfabric.forwarder.records import TaskRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store
from taskfabric.protocol.states import TaskStatus


class _Groups:
    def __init__(self, groups: dict[uuid.UUID, tuple[uuid.UUID, str]]) -> None:
        self.groups = groups

    def queues(self, task_group_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
        return {group: self.groups[group] for group in task_group_ids if group in self.groups}


class _Transport:
    def __init__(self) -> None:
        self.routing_keys: list[str] = []

    def publish(self, message: Any) -> Future[None]:
        self.routing_keys.append(message.routing_key)
        done: Future[None] = Future()
        done.set_result(None)
        return done


class _Store:
    def __init__(self, groups: _Groups) -> None:
        self.compute_groups = groups


class _Broker:
    def __init__(self) -> None:
        self.transport = _Transport()


def _finished(owner: uuid.UUID, group: uuid.UUID) -> TaskRecord:
    return TaskRecord(
        task_id=uuid.uuid4(),
        owner_id=owner,
        endpoint_id=uuid.uuid4(),
        function_id=uuid.uuid4(),
        status=TaskStatus.SUCCESS,
        created_at=time.time(),
        completed_at=time.time(),
        result=b"secret",
        task_group_id=group,
    )


def test_only_the_group_owners_tasks_reach_its_result_queue() -> None:
    alice, mallory, group = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    broker = _Broker()
    relay = ComputeResultRelay(
        ForwarderSettings(topology_prefix="unit"),
        store=cast(Store, _Store(_Groups({group: (mallory, f"unit.gc.{mallory}.{group}")}))),
        broker=cast(AdminBrokerLink, broker),
    )
    # alice used the group id first (no result queue); mallory claimed it with create_queue
    relay.relay([_finished(alice, group), _finished(alice, group)])
    assert broker.transport.routing_keys == []
    relay.relay([_finished(mallory, group)])
    assert broker.transport.routing_keys == [f"unit.gc.{mallory}.{group}"]
