"""An endpoint's side of the broker: its management-API users in memory, and a fake agent
logged in with the endpoint's own credentials."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from taskfabric.broker_config import EndpointPermissions
from taskfabric.protocol import (
    BrokerAccess,
    CancelTasks,
    EndpointRegistered,
    EndpointState,
    EndpointStatus,
    Result,
    ResultBatch,
    TaskBatch,
    TaskEvents,
    pack,
    parse,
    unpack,
)
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

__all__ = ["FakeEndpoint", "MemoryEndpointUsers"]


class MemoryEndpointUsers:
    """The management API's endpoint users, in a dict (an `EndpointUsers` for unit tests, with
    an `AdminBrokerLink` on a `MemoryTransport`)."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {}
        self.permissions: dict[str, EndpointPermissions] = {}
        self.closed_for: list[tuple[str, str]] = []

    def queue_states(self) -> dict[str, dict[str, Any]]:
        return {}

    def create_user(self, name: str, password: str) -> None:
        self.users[name] = password

    def set_permissions(self, user: str, permissions: EndpointPermissions) -> None:
        self.permissions[user] = permissions

    def close_connections_of(self, user: str, *, reason: str = "credentials revoked") -> int:
        self.closed_for.append((user, reason))
        return 1

    def delete_user(self, name: str) -> None:
        self.users.pop(name, None)
        self.permissions.pop(name, None)

    def close(self) -> None:
        pass


class FakeEndpoint:
    """The broker side of an endpoint agent, from a registration response's `broker` section."""

    def __init__(self, registration: Mapping[str, Any], *, auto_ack: bool = True) -> None:
        registered = parse(EndpointRegistered, registration)
        self.broker: BrokerAccess = registered.broker
        self.endpoint_id = registered.endpoint_id
        self.auto_ack = auto_ack
        self.transport = RabbitTransport(self.broker.broker_urls, connection_name="fake-endpoint")
        self.batches: list[TaskBatch] = []
        self.deliveries: list[Delivery] = []
        self.cancels: list[CancelTasks] = []
        self._lock = threading.Lock()

    @property
    def username(self) -> str:
        return self.broker.username

    def start(self) -> FakeEndpoint:
        self.transport.start()
        return self

    def close(self) -> None:
        self.transport.close()

    def consume_tasks(self, *, prefetch: int = 50) -> None:
        self.transport.consume(self.broker.task_queue, self._on_task, prefetch=prefetch)

    def consume_control(self) -> None:
        """Collect the `CancelTasks` arriving on the endpoint's control queue (in `cancels`)."""
        assert self.broker.control_queue is not None, "the forwarder sent no control queue"
        self.transport.consume(self.broker.control_queue, self._on_control, prefetch=10)

    def _on_control(self, delivery: Delivery) -> None:
        cancel = unpack(delivery.body)
        assert isinstance(cancel, CancelTasks)
        with self._lock:
            self.cancels.append(cancel)
        self.transport.ack(delivery)

    @property
    def cancelled_ids(self) -> list[uuid.UUID]:
        with self._lock:
            return [task_id for cancel in self.cancels for task_id in cancel.task_ids]

    def _on_task(self, delivery: Delivery) -> None:
        batch = unpack(delivery.body)
        assert isinstance(batch, TaskBatch)
        with self._lock:
            self.batches.append(batch)
            self.deliveries.append(delivery)
        if self.auto_ack:
            self.transport.ack(delivery)

    @property
    def task_ids(self) -> list[uuid.UUID]:
        with self._lock:
            return [task.task_id for batch in self.batches for task in batch.tasks]

    def publish_results(
        self, results: Sequence[Result], *, user_id: str | None = "", routing_key: str | None = None
    ) -> None:
        """Publish a result batch (as this endpoint's user unless `user_id` says otherwise) and
        wait for the broker's confirm."""
        self.publish_message(ResultBatch(results=list(results)), user_id=user_id, routing_key=routing_key)

    def publish_status(self, state: str = EndpointState.ONLINE, **fields: Any) -> None:
        status = EndpointStatus(
            endpoint_id=self.endpoint_id, sent_at=time.time(), state=state, heartbeat_period_s=5.0, **fields
        )
        self.publish_message(status)

    def publish_message(
        self,
        message: ResultBatch | TaskEvents | EndpointStatus,
        *,
        user_id: str | None = "",
        routing_key: str | None = None,
    ) -> None:
        self.transport.publish(
            OutgoingMessage(
                exchange=self.broker.results_exchange,
                routing_key=routing_key or self.broker.result_queue,
                body=pack(message),
                user_id=self.username if user_id == "" else user_id,
            )
        ).result(timeout=15)

    def __enter__(self) -> FakeEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
