"""Bulk registration of endpoints, for benchmarks only (`taskfabric bench --scenarios endpoints`).

Registering through the API (`POST /v1/endpoints`, forwarder/endpoints.py) does one endpoint at a
time, as an agent does at its start: its three quorum queues declared and proven with a probe, its
broker user created and given permissions, its row written, its result queue consumed. To put
10,000 endpoints on a fabric in minutes, `register_in_bulk` makes the same things in bulk, with the
forwarder's own settings, and leaves the consuming to the forwarder (which reconciles its result
consumers with the store every `endpoint_sync_period_s`):

- broker users and permissions: one management API definitions import (`POST /api/definitions`);
- queues and bindings: `Topology.declare_endpoint`, on a few connections in parallel;
- rows: one transaction (`EndpointTable.add_many`).

It skips what only makes sense for one real agent at a time: quotas, the probe of fresh queues,
passwords handed out (the users get random ones nobody knows; the benchmark's simulated agents
publish with an impersonating user). Never used by the service itself.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence

from taskfabric.broker_config import EndpointQueues, ManagementClient, Topology, broker_username, new_queue_secret
from taskfabric.errors import BrokerError
from taskfabric.forwarder.broker import choose_queue_type
from taskfabric.forwarder.records import EndpointRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store
from taskfabric.transport import RabbitTransport

__all__ = ["register_in_bulk"]

log = logging.getLogger(__name__)

#: endpoints per definitions import (one HTTP request each)
_USERS_PER_IMPORT = 2000
#: a quorum queue's declare on a node busy with tens of thousands of them took over 10 s
_DECLARE_TIMEOUT_S = 120.0
_DECLARE_ATTEMPTS = 5


def register_in_bulk(
    settings: ForwarderSettings,
    store: Store,
    owner_id: uuid.UUID,
    names: Sequence[str],
    *,
    connections: int = 1,
    progress: Callable[[int], None] = lambda _n: None,
) -> list[EndpointRecord]:
    """Register endpoints `names` of `owner_id` (see the module docstring); returns their records.
    `progress` is called with how many more endpoints have their queues."""
    now = time.time()
    records = [
        EndpointRecord(
            endpoint_id=(endpoint_id := uuid.uuid4()),
            owner_id=owner_id,
            name=name,
            queue_secret=new_queue_secret(),
            broker_username=broker_username(endpoint_id),
            created_at=now,
            metadata="{}",
        )
        for name in names
    ]
    with ManagementClient(
        settings.management_url, vhost=settings.vhost, ssl_context=settings.management_ssl_context
    ) as management:
        # the queue type the forwarder chose at start (`queue_type: auto`: by the broker's nodes)
        queue_type = choose_queue_type(settings, management.cluster_nodes())
        topology = Topology(
            prefix=settings.topology_prefix, delivery_limit=settings.delivery_limit, queue_type=queue_type
        )
        for start in range(0, len(records), _USERS_PER_IMPORT):
            _import_users(management, topology, settings.vhost, records[start : start + _USERS_PER_IMPORT])
    _declare_queues(settings, topology, records, connections=connections, progress=progress)
    store.endpoints.add_many(records)
    return records


def _import_users(
    management: ManagementClient, topology: Topology, vhost: str, records: Sequence[EndpointRecord]
) -> None:
    users = []
    permissions = []
    for record in records:
        queues = topology.endpoint_queues(record.endpoint_id, record.queue_secret)
        allowed = topology.endpoint_permissions(queues)
        users.append(
            {
                "name": record.broker_username,
                "password_hash": _password_hash(secrets.token_urlsafe(24)),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "",
            }
        )
        permissions.append(
            {
                "user": record.broker_username,
                "vhost": vhost,
                "configure": allowed.configure,
                "write": allowed.write,
                "read": allowed.read,
            }
        )
    body = json.dumps({"users": users, "permissions": permissions})
    management.import_definitions(body)


def _password_hash(password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _declare_queues(
    settings: ForwarderSettings,
    topology: Topology,
    records: Sequence[EndpointRecord],
    *,
    connections: int,
    progress: Callable[[int], None],
) -> None:
    """Declare the endpoints' queues over `connections` connections at once (each declare of a
    quorum queue waits for its Raft group to start: the broker's cores are the limit)."""
    shares = [records[index::connections] for index in range(connections)]

    def declare(share: Sequence[EndpointRecord], index: int) -> None:
        transport = RabbitTransport(
            settings.amqp_url,
            ssl_context=settings.broker_ssl_context,
            connection_name=f"taskfabric-bulk-endpoints-{index}",
        )
        transport.start(wait_s=settings.broker_connect_timeout_s)
        try:
            for record in share:
                _declare_with_retries(
                    topology, transport, topology.endpoint_queues(record.endpoint_id, record.queue_secret)
                )
                progress(1)
        finally:
            transport.close()

    with concurrent.futures.ThreadPoolExecutor(connections, thread_name_prefix="bulk-declare") as pool:
        for future in [pool.submit(declare, share, index) for index, share in enumerate(shares) if share]:
            future.result()


def _declare_with_retries(topology: Topology, transport: RabbitTransport, queues: EndpointQueues) -> None:
    """Declare one endpoint's queues; a refusal is retried (a busy node answered a quorum
    queue's declare with 541 INTERNAL_ERROR, its Raft group not started in time, at ~6,500 queues
    on a 2-core machine at load 11). Declares are idempotent."""
    for attempt in range(1, _DECLARE_ATTEMPTS + 1):
        try:
            topology.declare_endpoint(transport, queues, timeout_s=_DECLARE_TIMEOUT_S)
            return
        except BrokerError as exc:
            if attempt == _DECLARE_ATTEMPTS:
                raise
            log.warning("declaring %s failed (attempt %d): %s; retrying", queues.task_queue, attempt, exc)
            time.sleep(2.0 * attempt)
