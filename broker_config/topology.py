"""The broker topology as code: every exchange and queue name lives here, and nowhere else.

::

    exchange <prefix>.tasks       (direct)  --rk = queue name-->  <prefix>.tasks.<endpoint>.<secret>
                                            --rk = queue name-->  <prefix>.control.<endpoint>.<secret>
    exchange <prefix>.results     (direct)  --rk = queue name-->  <prefix>.results.<endpoint>.<secret>
    exchange <prefix>.dead-letter (fanout)  ------------------->  <prefix>.dead-letters
    exchange <prefix>.replicas    (fanout)  ------------------->  <prefix>.replica.<replica id>  (one per
                                                                  forwarder replica, classic, expires)

DESIGN (cancellation): control messages (`CancelTasks`) travel on a third per-endpoint queue,
`control`, not on the task queue: a cancel must never wait behind a backlog of task messages (nor
behind the agent's paused intake), so the agent consumes it with its own consumer. It is bound to
the tasks exchange (only the forwarder publishes there) and readable by the endpoint's user.

Per-endpoint queues are of the deployment's `queue_type`. `quorum` (the only choice on a cluster):
replicated, with an explicit delivery limit and at-least-once dead-lettering (which requires
`x-overflow: reject-publish`). `classic` (a single node): durable, and every publish is persistent
and confirmed, so a confirmed message survives a crash or restart of the node as on a quorum queue,
at about a third of the cost per hop (benchmarks/broker_hop.py); a classic queue keeps no delivery
count, so its consumers count returns themselves (`taskfabric.transport.redelivery`) with the same
limit and the same dead-letter exchange. The dead-letter queue is always a quorum queue (it is off
the hot path). Their names end in a random secret
handed out only to the forwarder and the endpoint itself: a passive `queue.declare` needs no
permission and would reveal a guessable queue's depth.

The prefix makes a whole topology unique (tests use one per test; deployments keep "taskfabric").
Every declare here is idempotent.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from taskfabric.errors import PreconditionFailed
from taskfabric.protocol.api import BrokerAccess
from taskfabric.transport import Transport
from taskfabric.transport.redelivery import RedeliveryLimit

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "QUEUE_TYPES",
    "EndpointPermissions",
    "EndpointQueues",
    "QueueType",
    "Topology",
    "broker_username",
    "default_quorum_group_size",
    "endpoint_id_of_username",
    "new_queue_secret",
]

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_LIMIT = 5
_GROUP_SIZE = "x-quorum-initial-group-size"
QueueType = Literal["quorum", "classic"]
QUEUE_TYPES: tuple[QueueType, ...] = ("quorum", "classic")
_SECRET_RE = re.compile(r"^[0-9a-f]{16,64}$")
#: every endpoint's own broker user is named `ep-<endpoint id>`
_ENDPOINT_USER_PREFIX = "ep-"


def broker_username(endpoint_id: uuid.UUID) -> str:
    """The broker user of an endpoint."""
    return f"{_ENDPOINT_USER_PREFIX}{endpoint_id}"


def endpoint_id_of_username(username: str | None) -> uuid.UUID | None:
    """The endpoint id of an endpoint's broker user name (None for other users)."""
    if not username or not username.startswith(_ENDPOINT_USER_PREFIX):
        return None
    try:
        return uuid.UUID(username[len(_ENDPOINT_USER_PREFIX) :])
    except ValueError:
        return None


def default_quorum_group_size(cluster_nodes: int) -> int | None:
    """The replication factor taskfabric asks for by default: 3 on a cluster of 3 or more nodes
    (a majority survives the loss of one member; more replicas cost every publish a wider quorum),
    else none (the broker's default: one replica per node)."""
    return 3 if cluster_nodes >= 3 else None


def new_queue_secret() -> str:
    """A fresh unguessable suffix for an endpoint's queue names."""
    return secrets.token_hex(16)


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointQueues:
    """The names of one endpoint's queues (routing key = queue name)."""

    task_queue: str
    result_queue: str
    #: cancellations (forwarder -> agent), consumed apart from the task backlog
    control_queue: str


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointPermissions:
    """RabbitMQ permission regexes for an endpoint's own broker user."""

    configure: str
    write: str
    read: str


@dataclasses.dataclass(frozen=True, slots=True)
class Topology:
    """Names and declarations of one taskfabric deployment's exchanges and queues."""

    prefix: str = "taskfabric"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    #: replicas of each quorum queue (`x-quorum-initial-group-size`); None: the broker's default,
    #: every cluster member (see `default_quorum_group_size`)
    quorum_initial_group_size: int | None = None
    queue_type: QueueType = "quorum"

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}, not {self.queue_type!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.prefix):
            raise ValueError(f"invalid topology prefix {self.prefix!r}")
        if self.delivery_limit < 1:
            raise ValueError("delivery_limit must be at least 1")
        if self.quorum_initial_group_size is not None and self.quorum_initial_group_size < 1:
            raise ValueError("quorum_initial_group_size must be at least 1")

    # --- names --------------------------------------------------------------------------

    @property
    def tasks_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def results_exchange(self) -> str:
        return f"{self.prefix}.results"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letters"

    @property
    def replicas_exchange(self) -> str:
        """Forwarder replicas tell each other which tasks finished (forwarder/replicas.py)."""
        return f"{self.prefix}.replicas"

    def replica_queue(self, replica_id: uuid.UUID) -> str:
        """One forwarder replica's own queue of its peers' notices."""
        return f"{self.prefix}.replica.{replica_id}"

    def endpoint_queues(self, endpoint_id: uuid.UUID, secret: str) -> EndpointQueues:
        """The queue names of an endpoint; `secret` comes from `new_queue_secret()`."""
        if not _SECRET_RE.match(secret):
            raise ValueError("queue secret must be 16-64 lowercase hex characters")
        return EndpointQueues(
            task_queue=f"{self.prefix}.tasks.{endpoint_id}.{secret}",
            result_queue=f"{self.prefix}.results.{endpoint_id}.{secret}",
            control_queue=f"{self.prefix}.control.{endpoint_id}.{secret}",
        )

    def broker_access(
        self,
        queues: EndpointQueues,
        *,
        amqp_url: str,
        username: str,
        ca_certificate: str | None = None,
        amqp_urls: Sequence[str] | None = None,
    ) -> BrokerAccess:
        """What an endpoint's agent needs to reach `queues` (the `broker` of its registration answer).
        `amqp_urls`: every cluster member's URL (`amqp_url` first), when there are several."""
        return BrokerAccess(
            amqp_url=amqp_url,
            amqp_urls=list(amqp_urls) if amqp_urls and len(amqp_urls) > 1 else None,
            username=username,
            task_queue=queues.task_queue,
            result_queue=queues.result_queue,
            control_queue=queues.control_queue,
            results_exchange=self.results_exchange,
            dead_letter_exchange=self.dead_letter_exchange,
            tasks_exchange=self.tasks_exchange,
            ca_certificate=ca_certificate,
            queue_type=self.queue_type,
            delivery_limit=self.delivery_limit,
        )

    def endpoint_permissions(self, queues: EndpointQueues) -> EndpointPermissions:
        """What an endpoint's broker user may do: read its task and control queues; publish
        results, dead-letter its poison tasks, and hand tasks it has not started back to its task
        queue on a graceful stop (the tasks exchange is direct and routes only by queue name, which
        holds a secret: an endpoint reaches no queue but its own); configure nothing."""
        writable = "|".join(
            re.escape(name) for name in (self.results_exchange, self.dead_letter_exchange, self.tasks_exchange)
        )
        return EndpointPermissions(
            configure="^$",
            write=f"^({writable})$",
            read=f"^({re.escape(queues.task_queue)}|{re.escape(queues.control_queue)})$",
        )

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments of every per-endpoint queue."""
        if self.queue_type == "classic":
            return {"x-queue-type": "classic", "x-dead-letter-exchange": self.dead_letter_exchange}
        return {
            **self._quorum_arguments(),
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def _quorum_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if self.quorum_initial_group_size is not None:
            arguments[_GROUP_SIZE] = self.quorum_initial_group_size
        return arguments

    def replica_queue_arguments(self, *, expires_s: float, message_ttl_s: float, max_length: int) -> dict[str, Any]:
        """A replica's notice queue: classic (notices are hints, not worth a quorum's replication;
        the store is the source of truth), deleted by the broker `expires_s` after its replica
        stopped consuming (a replica killed -9 leaves nothing behind), notices older than
        `message_ttl_s` dropped, at most `max_length` kept (the oldest go first)."""
        return {
            "x-queue-type": "classic",
            "x-expires": int(expires_s * 1000),
            "x-message-ttl": int(message_ttl_s * 1000),
            "x-max-length": max_length,
        }

    def redelivery_limit(self, exchange: str) -> RedeliveryLimit | None:
        """How a consumer of a per-endpoint queue bound to `exchange` counts returns: None on
        quorum queues (the broker counts them and applies `x-delivery-limit`)."""
        if self.queue_type != "classic":
            return None
        return RedeliveryLimit(
            limit=self.delivery_limit, exchange=exchange, dead_letter_exchange=self.dead_letter_exchange
        )

    # --- declarations -------------------------------------------------------------------

    def declare_shared(self, transport: Transport) -> None:
        """Declare the exchanges and the dead-letter queue (idempotent)."""
        transport.declare_exchange(self.tasks_exchange, "direct")
        transport.declare_exchange(self.results_exchange, "direct")
        transport.declare_exchange(self.dead_letter_exchange, "fanout")
        self._declare_quorum_queue(transport, self.dead_letter_queue, self._quorum_arguments())
        transport.bind_queue(self.dead_letter_queue, self.dead_letter_exchange, "")

    def declare_endpoint(self, transport: Transport, queues: EndpointQueues, *, timeout_s: float = 10.0) -> None:
        """Declare and bind one endpoint's task, result and control queues (idempotent); each
        step waits at most `timeout_s` for the broker (a quorum queue's declare waits for its
        Raft group to start: seconds on a busy node holding tens of thousands of them)."""
        routes = (
            (queues.task_queue, self.tasks_exchange),
            (queues.control_queue, self.tasks_exchange),
            (queues.result_queue, self.results_exchange),
        )
        for queue, exchange in routes:
            self._declare_endpoint_queue(transport, queue, timeout_s=timeout_s)
            transport.bind_queue(queue, exchange, queue, timeout_s=timeout_s)

    @staticmethod
    def _declare_quorum_queue(
        transport: Transport, name: str, arguments: dict[str, Any], *, timeout_s: float = 10.0
    ) -> None:
        """Declare a queue; a quorum queue that exists with another replication factor keeps it.

        RabbitMQ compares `x-quorum-initial-group-size` when a queue is declared again (406 when it
        differs), but the argument only shapes a new queue: a deployment that grew from one node to
        three, or changed `quorum_initial_group_size`, must still start and re-declare its queues.
        Their replicas are changed on the broker (`rabbitmq-queues grow` / `shrink`)."""
        try:
            transport.declare_queue(name, arguments=arguments, timeout_s=timeout_s)
        except PreconditionFailed as exc:
            if _GROUP_SIZE not in str(exc):
                raise
            transport.queue_depth(name)  # it exists (NotFound otherwise)
            log.warning(
                "queue %s exists with another replica count than %s; it keeps its own (see rabbitmq-queues grow)",
                name,
                arguments.get(_GROUP_SIZE, "the broker's default"),
            )

    def declare_replica_queue(self, transport: Transport, replica_id: uuid.UUID, arguments: dict[str, Any]) -> str:
        """Declare the replicas' fanout exchange and one replica's queue bound to it (idempotent);
        returns the queue's name."""
        queue = self.replica_queue(replica_id)
        transport.declare_exchange(self.replicas_exchange, "fanout")
        transport.declare_queue(queue, arguments=arguments)
        transport.bind_queue(queue, self.replicas_exchange, "")
        return queue

    def _declare_endpoint_queue(self, transport: Transport, name: str, *, timeout_s: float = 10.0) -> None:
        """Declare a queue of this `queue_type`; one declared before a change of `queue_type` keeps
        its type (a queue's type cannot change) until it is deleted and declared again."""
        try:
            self._declare_quorum_queue(transport, name, self.queue_arguments(), timeout_s=timeout_s)
        except PreconditionFailed:
            other = dataclasses.replace(self, queue_type="quorum" if self.queue_type == "classic" else "classic")
            # neither type: raises
            self._declare_quorum_queue(transport, name, other.queue_arguments(), timeout_s=timeout_s)
            log.log(
                logging.WARNING if other.queue_type == "quorum" else logging.ERROR,
                "queue %s is a %s queue from before queue_type %s: it keeps its type until it is rebuilt%s",
                name,
                other.queue_type,
                self.queue_type,
                "" if other.queue_type == "quorum" else " (its consumers count no returns meanwhile)",
            )

    def delete_endpoint(self, transport: Transport, queues: EndpointQueues) -> None:
        """Delete one endpoint's queues and the messages in them."""
        transport.delete_queue(queues.task_queue)
        transport.delete_queue(queues.result_queue)
        transport.delete_queue(queues.control_queue)

    def delete_shared(self, transport: Transport) -> None:
        """Delete the shared exchanges and the dead-letter queue (tests clean up with this)."""
        transport.delete_queue(self.dead_letter_queue)
        for name in (self.tasks_exchange, self.results_exchange, self.dead_letter_exchange, self.replicas_exchange):
            transport.delete_exchange(name)
