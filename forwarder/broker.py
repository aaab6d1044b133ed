"""The forwarder's side of RabbitMQ: one administrator connection and the management API.

- declares the shared topology at start and each endpoint's queues at registration;
- gives each endpoint its own broker user `ep-<endpoint id>` (random password, permissions from
  `Topology.endpoint_permissions`: read its task queue, publish results and dead letters) and
  deletes it on endpoint deletion (which closes its connections);
- publishes task batch messages (and `CancelTasks` to control queues) with confirms. Each message
  carries `user_id` = the forwarder's own broker user: the broker verifies it, and it survives
  dead-lettering, so a dead-lettered task batch provably came from us.

Every call here blocks (pika's IO thread or HTTP to the management API): call it from a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from taskfabric.broker_config import (
    EndpointPermissions,
    EndpointQueues,
    ManagementClient,
    QueueType,
    broker_username,
)
from taskfabric.broker_config.topology import default_quorum_group_size
from taskfabric.errors import BrokerError, ConfigError, PublishTimeout
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.transport import OutgoingMessage, RabbitTransport, Transport

__all__ = ["TASK_BATCH_CONTENT_TYPE", "AdminBrokerLink", "EndpointUsers", "choose_queue_type"]

log = logging.getLogger(__name__)

TASK_BATCH_CONTENT_TYPE = "application/x-taskfabric"
#: a consumer connection's channels beside its consumers' (publish, admin)
_SPARE_CHANNELS = 2


class EndpointUsers(Protocol):
    """What the forwarder needs of the management API: endpoint broker users and their
    connections, and the queues' health (`ManagementClient`, or a stand-in in unit tests)."""

    def queue_states(self) -> dict[str, dict[str, Any]]: ...

    def create_user(self, name: str, password: str) -> None: ...

    def set_permissions(self, user: str, permissions: EndpointPermissions) -> None: ...

    def close_connections_of(self, user: str, *, reason: str = ...) -> int: ...

    def delete_user(self, name: str) -> None: ...

    def close(self) -> None: ...


class AdminBrokerLink:
    """The forwarder's administrator link: its transport, the topology and the management API,
    used together (declares queues, issues endpoint credentials, publishes task batches)."""

    def __init__(
        self,
        settings: ForwarderSettings,
        *,
        transport: Transport | None = None,
        management: EndpointUsers | None = None,
    ) -> None:
        """`transport` and `management` default to the real ones (RabbitMQ as the administrator
        user, the management HTTP API); unit tests pass in-memory ones."""
        self.topology = settings.topology
        self._settings = settings
        self._own_transport = transport is None
        self.transport = transport or RabbitTransport(
            settings.broker_urls,
            ssl_context=settings.broker_ssl_context,
            connection_name="taskfabric-forwarder",
            confirm_timeout_s=settings.confirm_timeout_s,
        )
        self.management = management or ManagementClient(
            settings.broker_management_urls, vhost=settings.vhost, ssl_context=settings.management_ssl_context
        )
        self._connect_timeout_s = settings.broker_connect_timeout_s

    @property
    def username(self) -> str:
        """The forwarder's own broker user."""
        return self.transport.username

    def start(self) -> None:
        """Choose the queue type (`queue_type: auto`), connect, settle the quorum queues'
        replication factor, and declare the shared exchanges and dead-letter queue."""
        nodes = self._cluster_nodes()
        self.topology = dataclasses.replace(self.topology, queue_type=self._queue_type(nodes))
        self.transport.start(wait_s=self._connect_timeout_s)
        group_size = self._settings.quorum_initial_group_size
        if group_size is None:
            # without the management API's answer: as many nodes as the forwarder has broker URLs
            group_size = default_quorum_group_size(len(nodes) if nodes is not None else len(self._settings.broker_urls))
        if group_size is not None:
            log.info("quorum queues get %d replicas", group_size)
            self.topology = dataclasses.replace(self.topology, quorum_initial_group_size=group_size)
        self.topology.declare_shared(self.transport)

    def _queue_type(self, nodes: list[str] | None) -> QueueType:
        chosen = choose_queue_type(self._settings, nodes)
        if self._settings.queue_type == "auto":
            log.info(
                "queue_type auto: %s queues (broker nodes: %s)", chosen, len(nodes) if nodes is not None else "unknown"
            )
        return chosen

    def _cluster_nodes(self) -> list[str] | None:
        """The broker's nodes by the management API; None when it cannot tell (a stand-in without
        the call, or the API unreachable: `auto` then keeps quorum queues, safe everywhere)."""
        cluster_nodes = getattr(self.management, "cluster_nodes", None)
        if cluster_nodes is None:
            return None
        try:
            nodes: list[str] = cluster_nodes()
        except BrokerError as exc:
            log.warning("cannot list the broker's nodes (for queue_type): %s", exc)
            return None
        return nodes

    def close(self) -> None:
        self.transport.close()
        self.management.close()

    def consumer_transport_factory(self) -> Callable[[int], Transport] | None:
        """Makes further connections for result consumers (`ConsumerConnections`), each allowing
        `quotas.consumers_per_connection` consumer channels plus its publish and admin channels;
        None when the link was given its transport (an in-memory one has no channel limit)."""
        if not self._own_transport:
            return None
        settings = self._settings

        def open_transport(index: int) -> Transport:
            return RabbitTransport(
                settings.broker_urls,
                ssl_context=settings.broker_ssl_context,
                connection_name=f"taskfabric-forwarder-results-{index}",
                confirm_timeout_s=settings.confirm_timeout_s,
                channel_max=settings.quotas.consumers_per_connection + _SPARE_CHANNELS,
            )

        return open_transport

    # --- endpoints ----------------------------------------------------------------------

    def queues_of(self, endpoint_id: uuid.UUID, queue_secret: str) -> EndpointQueues:
        return self.topology.endpoint_queues(endpoint_id, queue_secret)

    def declare_endpoint_queues(self, queues: EndpointQueues) -> None:
        """Declare (idempotently) an endpoint's task and result queues."""
        self.topology.declare_endpoint(self.transport, queues)

    def probe_endpoint_queues(self, queues: EndpointQueues, *, timeout_s: float) -> None:
        """Prove fresh (unconsumed) endpoint queues usable: a confirmed publish to each, read back.
        Raises `BrokerError` if either does not make the round trip."""
        routes = (
            (self.topology.tasks_exchange, queues.task_queue),
            (self.topology.results_exchange, queues.result_queue),
        )
        for exchange, queue in routes:
            body = b"taskfabric-probe:" + secrets.token_bytes(8)
            future = self.transport.publish(OutgoingMessage(exchange=exchange, routing_key=queue, body=body))
            try:
                future.result(timeout=timeout_s)
            except TimeoutError:
                raise PublishTimeout(f"no confirm for the probe of {queue!r} within {timeout_s:g} s") from None
            if self.transport.take_one(queue, timeout_s=timeout_s) != body:
                raise BrokerError(f"the probe published to {queue!r} did not come back")

    def issue_credentials(self, endpoint_id: uuid.UUID, queues: EndpointQueues, *, revoke_old: bool) -> str:
        """Create or re-key the endpoint's broker user; returns its new password. With
        `revoke_old`, connections made with the previous password are closed."""
        username = broker_username(endpoint_id)
        password = secrets.token_urlsafe(24)
        self.management.create_user(username, password)
        self.management.set_permissions(username, self.topology.endpoint_permissions(queues))
        if revoke_old:
            closed = self.management.close_connections_of(username, reason="endpoint re-registered")
            if closed:
                log.info("closed %d connection(s) of %s after re-keying it", closed, username)
        return password

    def revoke_credentials(self, endpoint_id: uuid.UUID) -> None:
        """Delete the endpoint's broker user, which closes its connections."""
        username = broker_username(endpoint_id)
        self.management.delete_user(username)
        # the broker closes a deleted user's connections; make sure none is left behind
        self.management.close_connections_of(username, reason="endpoint deleted")

    def delete_endpoint_queues(self, queues: EndpointQueues) -> None:
        """Delete an endpoint's queues and the messages in them."""
        self.topology.delete_endpoint(self.transport, queues)

    # --- tasks --------------------------------------------------------------------------

    def publish_control_message(self, queues: EndpointQueues, body: bytes) -> Future[None]:
        """Publish a packed control message (`CancelTasks`) to an endpoint's control queue; the
        future resolves on the broker's confirm (or fails with a `BrokerError`)."""
        return self.transport.publish(
            OutgoingMessage(
                exchange=self.topology.tasks_exchange,
                routing_key=queues.control_queue,
                body=body,
                user_id=self.username,
                content_type=TASK_BATCH_CONTENT_TYPE,
            )
        )

    def publish_task_messages(self, queues: EndpointQueues, bodies: Sequence[bytes]) -> list[Future[None]]:
        """Publish packed `TaskBatch` messages to an endpoint's task queue, in order; each future
        resolves on the broker's confirm (or fails with a `BrokerError`)."""
        return self.transport.publish_many(
            OutgoingMessage(
                exchange=self.topology.tasks_exchange,
                routing_key=queues.task_queue,
                body=body,
                user_id=self.username,
                content_type=TASK_BATCH_CONTENT_TYPE,
            )
            for body in bodies
        )


def choose_queue_type(settings: ForwarderSettings, nodes: list[str] | None) -> QueueType:
    """The type of the endpoint queues, from `queue_type` and the broker's nodes (`nodes`: as the
    management API lists them; None when it cannot tell). Classic queues live on one node: on a
    cluster only quorum queues keep the guarantees (a crashed node would hold the only copy), so
    classic is refused there, and `auto` means classic on a single node (a third of a quorum
    queue's cost per hop, crash-safe there; see docs/operator.md) and quorum on a cluster or when
    the nodes are unknown."""
    wanted = settings.queue_type
    if wanted == "quorum" or len(settings.broker_urls) > 1:
        return "quorum"  # several URLs name a cluster (classic with several URLs is refused by the settings)
    if wanted == "classic":
        if nodes is not None and len(nodes) > 1:
            raise ConfigError(
                f"the broker is a cluster of {len(nodes)} nodes: classic queues live on one node; "
                "use queue_type quorum (or auto)",
                key="queue_type",
            )
        return "classic"
    return "classic" if nodes is not None and len(nodes) == 1 else "quorum"
