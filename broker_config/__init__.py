"""The RabbitMQ broker: its topology as code, a management API client, and a private node.

- `Topology`: every exchange and queue name, the quorum-queue arguments (delivery limit,
  at-least-once dead-lettering) and idempotent declarations; per-endpoint permissions, and the
  naming rule of endpoint broker users (`broker_username`, `endpoint_id_of_username`).
- `ManagementClient`: creates and deletes per-endpoint broker users (HTTP management API).
- `RabbitCluster`: a private cluster of N such nodes on this machine (`broker up --nodes 3`):
  one Erlang cookie, classic-config peer discovery, members and quorum-queue leaders in `status()`.
- `RabbitNode`: starts and stops a private, loopback-only node in a directory
  (`taskfabric broker up|down|status`), configured from `rabbitmq.conf` and `enabled_plugins`
  in this folder; taskfabric lives on its own virtual host there (`DEFAULT_VHOST`, "taskfabric";
  `--vhost`), never on `/`.

Who it talks to: RabbitMQ, over AMQP through a `taskfabric.transport.Transport` (declarations) and
over the HTTP management API (endpoint users, permissions, their connections); `RabbitNode` runs
`rabbitmq-server` and `rabbitmqctl`. Used by the forwarder (which administers the broker) and by
the test harnesses; endpoints only follow the names it hands out.

State: none here; the broker's queues hold messages in flight.
"""

from __future__ import annotations

from taskfabric.broker_config.cluster import ClusterInfo, ClusterStatus, RabbitCluster
from taskfabric.broker_config.management import ManagementClient, vhost_of
from taskfabric.broker_config.node import (
    DEFAULT_VHOST,
    NodeInfo,
    RabbitNode,
    check_vhost,
    find_rabbitmq_bin,
    install_hint,
)
from taskfabric.broker_config.topology import (
    DEFAULT_DELIVERY_LIMIT,
    QUEUE_TYPES,
    EndpointPermissions,
    EndpointQueues,
    QueueType,
    Topology,
    broker_username,
    endpoint_id_of_username,
    new_queue_secret,
)

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "DEFAULT_VHOST",
    "QUEUE_TYPES",
    "ClusterInfo",
    "ClusterStatus",
    "EndpointPermissions",
    "EndpointQueues",
    "ManagementClient",
    "NodeInfo",
    "QueueType",
    "RabbitCluster",
    "RabbitNode",
    "Topology",
    "broker_username",
    "check_vhost",
    "endpoint_id_of_username",
    "find_rabbitmq_bin",
    "install_hint",
    "new_queue_secret",
    "vhost_of",
]
