"""Subscriptions to every endpoint's result queue and to the dead-letter queue.

Each endpoint's result queue gets an `Inbox` taking `ResultBatch`, `TaskEvents` and `EndpointStatus` messages
(malformed ones are dead-lettered by the inbox). A message is accepted only if its broker-validated
`user_id` is that endpoint's own broker user: the broker guarantees a publisher cannot claim another
user's id, so a result queue cannot be fed by anyone else (another endpoint that learned the queue
name, a forged message). Others are rejected without requeue (dead-lettered) and logged.

Accepted messages are handed to the `sink` (the ingestor's queue) on the transport's IO thread;
the ingestor acks them after storing. Consumers follow the store: `reconcile` starts them for
new endpoints (also ones registered through other replicas) and stops them for deleted ones.

Channels (DESIGN). Each consumer has its own channel (its own prefetch; a channel the broker closes,
e.g. on a deleted queue, takes no other endpoint's consumer with it). A RabbitMQ connection carries
at most `channel_max` channels (2047 by default), so a single connection would stop consuming new
endpoints' results at about the 2,046th endpoint, silently for those endpoints. The transport given
here is therefore a `ConsumerConnections` pool (forwarder/consumer_pool.py): at most
`quotas.consumers_per_connection` consumers per connection, another connection opened when all are
full, acks routed back to the delivering connection. `quotas.max_endpoints_per_user` bounds what one
user can make the forwarder open; the pool is what keeps many users' endpoints working.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterable

from taskfabric.broker_config import Topology, broker_username
from taskfabric.errors import BrokerError, ProtocolError
from taskfabric.forwarder.records import EndpointRecord
from taskfabric.inbox import Inbox
from taskfabric.protocol import EndpointStatus, Message, ResultBatch, TaskEvents, unpack
from taskfabric.transport import ConsumerHandle, Delivery, Transport

__all__ = ["DeadLetter", "Incoming", "ResultConsumers", "Sink"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """A verified message from an endpoint's result queue."""

    endpoint_id: uuid.UUID
    message: ResultBatch | EndpointStatus | TaskEvents
    delivery: Delivery


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message from the dead-letter queue (`message` is None when it does not decode)."""

    message: Message | None
    delivery: Delivery


Sink = Callable[[Incoming | DeadLetter], None]


class ResultConsumers:
    """One result-queue consumer per registered endpoint, plus the dead-letter consumer."""

    def __init__(self, transport: Transport, topology: Topology, sink: Sink, *, prefetch: int) -> None:
        self._transport = transport
        self._topology = topology
        self._sink = sink
        self._prefetch = prefetch
        self._inboxes: dict[uuid.UUID, Inbox[ResultBatch | EndpointStatus | TaskEvents]] = {}
        self._dead_letters: ConsumerHandle | None = None
        self._lock = threading.Lock()
        #: endpoints whose result queue is broken (forwarder/queue_health.py): not consumed until
        #: released, whatever `reconcile` says
        self._quarantined: set[uuid.UUID] = set()

    @property
    def endpoint_ids(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self._inboxes)

    def start_dead_letters(self) -> None:
        """Consume the deployment's dead-letter queue."""
        self._dead_letters = self._transport.consume(
            self._topology.dead_letter_queue, self._on_dead_letter, prefetch=self._prefetch
        )

    def ensure(self, endpoint: EndpointRecord) -> None:
        """Consume this endpoint's result queue (no-op if already consuming). Blocks until
        subscribed; raises `BrokerError` if the queue cannot be consumed."""
        with self._lock:
            if endpoint.endpoint_id in self._inboxes:
                return
            queues = self._topology.endpoint_queues(endpoint.endpoint_id, endpoint.queue_secret)
            handler = _VerifiedHandler(self._transport, endpoint.endpoint_id, queues.result_queue, self._sink)
            inbox: Inbox[ResultBatch | EndpointStatus | TaskEvents] = Inbox(
                self._transport,
                queues.result_queue,
                handler,
                accepts=(ResultBatch, EndpointStatus, TaskEvents),
                prefetch=self._prefetch,
                redelivery=self._topology.redelivery_limit(self._topology.results_exchange),
            )
            self._inboxes[endpoint.endpoint_id] = inbox
        log.info("consuming results of endpoint %s", endpoint.endpoint_id)

    def stop(self, endpoint_id: uuid.UUID) -> None:
        """Stop consuming an endpoint's results (unacked ones go back to its queue)."""
        with self._lock:
            inbox = self._inboxes.pop(endpoint_id, None)
        if inbox is not None:
            inbox.cancel()
            log.info("stopped consuming results of endpoint %s", endpoint_id)

    def quarantine(self, endpoint_id: uuid.UUID) -> None:
        """Stop consuming a broken result queue until `release` (its results wait on the agent)."""
        with self._lock:
            self._quarantined.add(endpoint_id)
        self.stop(endpoint_id)

    def release(self, endpoint: EndpointRecord) -> None:
        """Consume a quarantined endpoint's results again (its queue was rebuilt or healed)."""
        with self._lock:
            self._quarantined.discard(endpoint.endpoint_id)
        self.ensure(endpoint)

    def reconcile(self, endpoints: Iterable[EndpointRecord]) -> None:
        """Consume exactly the result queues of `endpoints` (the store's list), except quarantined ones."""
        wanted = {endpoint.endpoint_id: endpoint for endpoint in endpoints}
        for endpoint_id in self.endpoint_ids - set(wanted):
            self.stop(endpoint_id)
        with self._lock:
            quarantined = set(self._quarantined)
        for endpoint_id, endpoint in wanted.items():
            if endpoint_id in self.endpoint_ids or endpoint_id in quarantined:
                continue
            try:
                self.ensure(endpoint)
            except BrokerError as exc:
                log.warning("cannot consume the results of endpoint %s: %s", endpoint_id, exc)

    def close(self) -> None:
        for endpoint_id in list(self.endpoint_ids):
            self.stop(endpoint_id)
        if self._dead_letters is not None:
            self._dead_letters.cancel()
            self._dead_letters = None

    def _on_dead_letter(self, delivery: Delivery) -> None:
        try:
            message: Message | None = unpack(delivery.body)
        except ProtocolError:
            message = None
        self._sink(DeadLetter(message, delivery))


class _VerifiedHandler:
    """The inbox handler of one endpoint: passes on only what its own broker user published."""

    def __init__(self, transport: Transport, endpoint_id: uuid.UUID, queue: str, sink: Sink) -> None:
        self._transport = transport
        self._endpoint_id = endpoint_id
        self._username = broker_username(endpoint_id)
        self._queue = queue
        self._sink = sink

    def __call__(self, message: ResultBatch | EndpointStatus | TaskEvents, delivery: Delivery) -> None:
        if delivery.user_id != self._username:
            log.warning(
                "dead-lettering a message on the result queue of endpoint %s published by user %r, "
                "not by the endpoint's own user",
                self._endpoint_id,
                delivery.user_id,
            )
            self._transport.nack(delivery, requeue=False)
            return
        if isinstance(message, EndpointStatus) and message.endpoint_id != self._endpoint_id:
            log.warning(
                "dead-lettering a status report of endpoint %s naming %s", self._endpoint_id, message.endpoint_id
            )
            self._transport.nack(delivery, requeue=False)
            return
        self._sink(Incoming(self._endpoint_id, message, delivery))
