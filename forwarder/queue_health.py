"""Finding endpoint queues a broker crash left unusable, and rebuilding them.

DESIGN. On RabbitMQ 3.10 a quorum queue declared about a second before the broker crashes can come
back leaderless (see shared/reference/rabbitmq-and-faults.md): publishes to it are refused or never
confirmed, and consuming it can make the broker close the consuming *connection* (541
INTERNAL_ERROR). Nothing heals it by itself. So every `queue_check_period_s` the forwarder lists
the vhost's queues through the management API (one request) and calls a queue *broken* when it is
missing, or is a quorum queue without a leader or without an online member. A queue seen broken
`queue_check_confirmations` times in a row (a leader election takes a moment) is rebuilt: the
forwarder stops consuming it, deletes it, declares and binds it again, and consumes it again.

What a rebuild loses, and how nothing is left waiting forever:
- Results: the agent keeps every result on disk until the broker confirms it, and re-publishes;
  publishes to the broken queue were refused, so the results arrive after the rebuild.
- Tasks: messages still in the task queue are gone. The agent's consumer of the old queue is
  silently forgotten by the broker; the agent's watchdog notices (`consumer_lost` in
  endpoint_agent/broker_link.py), subscribes again and reports the tasks it holds. The endpoint row
  remembers `queue_rebuilt_at`; tasks of that endpoint submitted before the rebuild that are still
  `waiting` and that the agent does not hold when it reports are failed with `TASK_QUEUE_LOST`.

One endpoint's broken queue must not disturb the others: the doctor stops consuming a broken
result queue as soon as it is confirmed broken (before that, each failing subscription backs off
exponentially, see the transport's consumer re-subscription).

With several forwarder replicas, every replica examines the queues (each protects its own
consumers and refuses submits into a broken queue), but only the replica holding the
`rebuild-queues` lease rebuilds (forwarder/leases.py): the others keep the endpoint under repair
until they see its queues healthy again, then consume them again.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from taskfabric.broker_config import EndpointQueues
from taskfabric.errors import BrokerError, NotFound
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.consumers import ResultConsumers
from taskfabric.forwarder.records import EndpointRecord

__all__ = ["QueueDoctor", "Rebuild", "is_broken"]

log = logging.getLogger(__name__)


def is_broken(state: Mapping[str, Any] | None) -> bool:
    """A queue listed by the management API (None: not listed) that cannot work as it is."""
    if state is None:
        return True
    if state.get("type") != "quorum":
        return False
    return not state.get("leader") or not state.get("online")


@dataclasses.dataclass(frozen=True, slots=True)
class Rebuild:
    """A rebuilt endpoint's id and which of its queues were rebuilt."""

    endpoint_id: uuid.UUID
    task_queue: bool
    result_queue: bool


class QueueDoctor:
    """Examines endpoint queues and rebuilds the broken ones (blocking calls: use a thread)."""

    def __init__(
        self,
        broker: AdminBrokerLink,
        consumers: ResultConsumers,
        *,
        confirmations: int = 2,
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1")
        self._broker = broker
        self._consumers = consumers
        self._confirmations = confirmations
        #: queue name -> times in a row it was seen broken
        self._sightings: dict[str, int] = {}
        #: endpoints with a queue seen broken and not rebuilt yet: submits to them are refused with
        #: 503 (the client retries) instead of publishing into a queue that would make the broker
        #: close the forwarder's connection, and their results are not consumed meanwhile
        self.under_repair: set[uuid.UUID] = set()

    def examine(self, endpoints: Iterable[EndpointRecord], *, may_rebuild: bool = True) -> list[Rebuild]:
        """One pass over the endpoints' queues; returns what was rebuilt. Without `may_rebuild`
        (another replica rebuilds), a queue confirmed broken stays under repair here."""
        states = self._broker.management.queue_states()
        seen: dict[str, int] = {}
        rebuilds: list[Rebuild] = []
        suspects: set[uuid.UUID] = set()
        for endpoint in endpoints:
            queues = self._broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret)
            confirmed = self._confirmed_broken(queues, states, seen)
            if confirmed and may_rebuild:
                rebuilds.append(self.rebuild(endpoint, queues, confirmed))
            elif any(name in seen for name in (queues.task_queue, queues.result_queue, queues.control_queue)):
                suspects.add(endpoint.endpoint_id)
                self._consumers.quarantine(endpoint.endpoint_id)
            elif endpoint.endpoint_id in self.under_repair:  # healed by itself (a new leader)
                self._consumers.release(endpoint)
        self.under_repair = suspects
        self._sightings = {name: count for name, count in seen.items() if count < self._confirmations}
        return rebuilds

    def _confirmed_broken(
        self, queues: EndpointQueues, states: Mapping[str, Mapping[str, Any]], seen: dict[str, int]
    ) -> set[str]:
        confirmed: set[str] = set()
        for name in (queues.task_queue, queues.result_queue, queues.control_queue):
            if not is_broken(states.get(name)) or (name not in states and self._exists(name)):
                continue
            count = self._sightings.get(name, 0) + 1
            seen[name] = count
            if count >= self._confirmations:
                confirmed.add(name)
            else:
                log.info("queue %s looks broken (%s); checking again before rebuilding it", name, states.get(name))
        return confirmed

    def _exists(self, name: str) -> bool:
        """Whether a queue the management API did not list exists (the listing lags behind new
        queues by a statistics interval); a passive declare is authoritative."""
        try:
            self._broker.transport.queue_depth(name, timeout_s=5.0)
        except NotFound:
            return False
        except BrokerError:  # cannot tell now: not a reason to rebuild
            return True
        return True

    def rebuild(self, endpoint: EndpointRecord, queues: EndpointQueues, names: set[str]) -> Rebuild:
        """Delete the named queues of one endpoint and declare them again; consume its results again."""
        result_too = queues.result_queue in names
        control_too = queues.control_queue in names
        self._consumers.quarantine(endpoint.endpoint_id)
        for name in sorted(names):
            self._broker.transport.delete_queue(name)
        self._broker.declare_endpoint_queues(queues)
        self._consumers.release(endpoint)
        self.under_repair.discard(endpoint.endpoint_id)
        rebuild = Rebuild(endpoint.endpoint_id, task_queue=queues.task_queue in names, result_queue=result_too)
        kinds = [
            kind
            for kind, hit in (("task", rebuild.task_queue), ("result", result_too), ("control", control_too))
            if hit
        ]
        log.warning("rebuilt the broken %s queue of endpoint %s", " and ".join(kinds), endpoint.endpoint_id)
        return rebuild
