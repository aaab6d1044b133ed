"""Fan-out between forwarder replicas: a result ingested by one replica reaches results streams on
every replica within milliseconds.

Each replica consumes its share of the endpoints' result queues (competing consumers), so a
client's results stream may sit on a replica that never sees the result message. After storing a
batch, the ingesting replica publishes one small `TasksFinished` notice (task ids only) to the
fanout exchange `<prefix>.replicas`; every replica has its own queue bound to it and, for the ids
its streams wait for, reads the outcomes from the store and hands them to its `ResultHub`. The
store stays the source of truth: the streams' store poll (`stream_poll_s`) remains the safety net
for notices lost while a replica reconnects.

DESIGN (why the broker and not PostgreSQL LISTEN/NOTIFY; measured by
benchmarks/replica_fanout.py, figures in benchmarks/README.md):
- both deliver in about a millisecond on this machine (500 notices of 200 ids, load average 12:
  broker median 0.89 ms, p99 9.7 ms; NOTIFY median 1.03 ms, p99 12.6 ms, its commit included);
  neither is the bottleneck of a map;
- NOTIFY serializes every notifying commit in the database on one global lock and keeps a
  listening connection per replica out of the pool, on the database every replica already
  saturates first; the broker is built for fan-out and its cost is one publish per stored batch;
- the broker connection, its reconnects and its error translation already exist here
  (taskfabric.transport), a LISTEN loop would be a second, psycopg-specific one.
Notices are not confirmed (a lost one costs one poll period of latency, never a result): the
ingest thread never waits on them. Each replica skips its own notices (its hub published those
already), and a stream sends each result once per connection in any case (`StreamSubscriber`).

Each replica's queue is a classic queue with `x-expires`: the broker deletes it once its replica
is gone (killed -9 too); `ensure()` declares it again after an outage longer than that.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from taskfabric.broker_config import Topology
from taskfabric.errors import ProtocolError, TaskfabricError
from taskfabric.protocol import TasksFinished, pack, unpack_as
from taskfabric.transport import ConsumerHandle, Delivery, OutgoingMessage, Transport

__all__ = ["NOTICE_MAX_IDS", "ReplicaFanout"]

log = logging.getLogger(__name__)

#: ids per notice (a stored batch larger than this is announced in several)
NOTICE_MAX_IDS = 5000
#: the broker deletes a replica's queue this long after its consumer went away
_QUEUE_EXPIRES_S = 120.0
#: a notice older than this is worthless (the store poll has found its tasks by then)
_NOTICE_TTL_S = 60.0
_QUEUE_MAX_NOTICES = 10_000
_PREFETCH = 64

#: called on the transport's IO thread with the ids a peer announced: must be quick
NoticeCallback = Callable[[list[uuid.UUID]], None]


class ReplicaFanout:
    """This replica's notices to its peers and its queue of theirs."""

    def __init__(
        self,
        transport: Transport,
        topology: Topology,
        *,
        on_notice: NoticeCallback,
        replica_id: uuid.UUID | None = None,
    ) -> None:
        self.replica_id = replica_id or uuid.uuid4()
        self._transport = transport
        self._topology = topology
        self._on_notice = on_notice
        self._consumer: ConsumerHandle | None = None
        self._queue = topology.replica_queue(self.replica_id)
        #: notices published / received from peers (for tests and metrics)
        self.announced = 0
        self.received = 0

    @property
    def queue(self) -> str:
        return self._queue

    def start(self) -> None:
        """Declare the exchange and this replica's queue, and consume it (blocks: call from a thread)."""
        self.ensure()
        self._consumer = self._transport.consume(self._queue, self._on_delivery, prefetch=_PREFETCH)

    def ensure(self) -> None:
        """Declare (idempotently) the exchange and this replica's queue and binding."""
        arguments = self._topology.replica_queue_arguments(
            expires_s=_QUEUE_EXPIRES_S, message_ttl_s=_NOTICE_TTL_S, max_length=_QUEUE_MAX_NOTICES
        )
        self._topology.declare_replica_queue(self._transport, self.replica_id, arguments)

    def close(self) -> None:
        """Stop consuming and delete this replica's queue (best effort: the broker expires it anyway)."""
        if self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None
        try:
            self._transport.delete_queue(self._queue, timeout_s=5.0)
        except TaskfabricError as exc:
            log.info("could not delete the replica queue %s: %s", self._queue, exc)

    def announce(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Tell the peers these tasks finished (stored). Never blocks; failures are logged only."""
        for start in range(0, len(task_ids), NOTICE_MAX_IDS):
            notice = TasksFinished(replica_id=self.replica_id, task_ids=list(task_ids[start : start + NOTICE_MAX_IDS]))
            future = self._transport.publish(
                OutgoingMessage(
                    exchange=self._topology.replicas_exchange,
                    routing_key="",
                    body=pack(notice),
                    user_id=self._transport.username,
                    mandatory=False,  # no peer queue but ours while a peer restarts: fine
                )
            )
            future.add_done_callback(_log_failure)
            self.announced += 1

    def _on_delivery(self, delivery: Delivery) -> None:  # on the IO thread
        self._transport.ack(delivery)  # a hint: acked at once, never redelivered
        if delivery.user_id != self._transport.username:
            # the broker verified user_id: only forwarders (our broker user) announce
            log.warning("dropped a replica notice from broker user %r", delivery.user_id)
            return
        try:
            notice = unpack_as(delivery.body, TasksFinished)
        except ProtocolError as exc:
            log.warning("dropped a malformed replica notice: %s", exc)
            return
        if notice.replica_id == self.replica_id:
            return  # our own: this replica's streams were served when it stored them
        self.received += 1
        self._on_notice(notice.task_ids)


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.info("a replica notice was not confirmed (%s); peers' streams will poll the store", exc)
