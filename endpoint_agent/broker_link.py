"""The agent's link to RabbitMQ, with the endpoint's own credentials.

- Task batches arrive on the transport's IO thread, are decoded there (malformed ones are
  dead-lettered by the `Inbox`) and handed to the agent loop through `inbound`; the loop is woken.
- Results, task starts (`TaskEvents`) and status reports are published to the results exchange
  with publisher confirms and the broker-validated `user_id` (the forwarder accepts results only
  from the endpoint's own user); each result publish's outcome comes back to the loop through
  `outcomes`.
- Tasks the fabric failed to run too many times are published to the dead-letter exchange.
- A watchdog thread checks every `consumer_check_period_s` that the broker still counts our task
  consumer (a passive declare). A queue deleted and declared again (the forwarder rebuilds a queue a
  broker crash left leaderless) forgets its consumers without telling them; the watchdog then drops
  the dead consumer, the agent loop subscribes again, and `consumer_lost` tells it to report the
  tasks it holds (see `taskfabric.forwarder.queue_health`).
- Cancellations (`CancelTasks`) arrive on the endpoint's control queue through a consumer of their
  own, never paused with the task intake and never behind the task backlog, and are handed to the
  loop through `cancels`. It is subscribed before the task queue, and the task queue only once the
  control queue's backlog has been delivered: after an outage, cancels sent meanwhile are known
  before any task they name can arrive.
- On classic queues (`queue_type` of the registration answer) the broker counts no deliveries: the
  task and control queues' returns are counted here (`taskfabric.transport.redelivery`), so a
  poison task message still ends in the dead-letter queue after `delivery_limit` returns.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future

from taskfabric.broker_config import DEFAULT_DELIVERY_LIMIT
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.errors import AccessRefused, BrokerError, ConfigError, NotFound
from taskfabric.inbox import Inbox
from taskfabric.logs import wrap_with_logs
from taskfabric.protocol import (
    CancelTasks,
    EndpointStatus,
    FunctionBody,
    Result,
    ResultBatch,
    StartUserEndpoint,
    Task,
    TaskBatch,
    TaskEvents,
    TaskStarted,
    pack,
)
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport, Transport
from taskfabric.transport.redelivery import RedeliveryLimit

__all__ = ["EndpointBrokerLink", "PublishOutcome"]

log = logging.getLogger(__name__)

#: results per ResultBatch message
RESULTS_PER_MESSAGE = 1000
#: how often the watchdog checks that the broker still counts our task consumer
CONSUMER_CHECK_PERIOD_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class PublishOutcome:
    """The broker's verdict on one published result batch."""

    ticket: int
    results: list[Result]
    error: BaseException | None


class EndpointBrokerLink:
    """The endpoint's own-credential link: consumes its task queue, publishes to its result queue."""

    def __init__(
        self,
        connection: EndpointConnection,
        *,
        wake: Callable[[], None],
        prefetch_messages: int = 4,
        transport: Transport | None = None,
        consumer_check_period_s: float = CONSUMER_CHECK_PERIOD_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` verifies an amqps broker (`EndpointConnection.broker_ssl_context`)."""
        self.connection = connection
        self._wake = wake
        self._prefetch = prefetch_messages
        self.transport = transport or RabbitTransport(
            connection.broker_urls,
            ssl_context=ssl_context,
            connection_name=f"taskfabric-agent-{connection.endpoint_id}",
        )
        self.inbound: queue.SimpleQueue[tuple[TaskBatch, Delivery]] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[PublishOutcome] = queue.SimpleQueue()
        self.cancels: queue.SimpleQueue[tuple[CancelTasks, Delivery]] = queue.SimpleQueue()
        #: a multi-user parent's start commands (its control queue carries these, not cancellations)
        self.commands: queue.SimpleQueue[tuple[StartUserEndpoint, Delivery]] = queue.SimpleQueue()
        self._inbox: Inbox[TaskBatch] | None = None
        self._control: Inbox[CancelTasks | StartUserEndpoint] | None = None
        self._tickets = itertools.count(1)
        self.paused = False
        self._lock = threading.Lock()
        self._check_period_s = consumer_check_period_s
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        #: set when the watchdog dropped a consumer the broker had forgotten; the loop clears it
        #: once it has reported the tasks it holds
        self.consumer_lost = False
        self._redelivery = redelivery_limit_of(connection)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, *, wait_s: float = 15.0) -> None:
        """Connect (raising `AccessRefused` for bad credentials, `BrokerUnavailable` if unreachable)."""
        self.transport.start(wait_s=wait_s)
        if self._check_period_s > 0 and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="consumer-watchdog", daemon=True)
            self._watchdog.start()

    def subscribed(self) -> bool:
        """Consuming tasks, and cancellations when the endpoint has a control queue."""
        return self._inbox is not None and (self.connection.control_queue is None or self._control is not None)

    @property
    def subscribed_control(self) -> bool:
        """Consuming the control queue (a multi-user parent consumes nothing else)."""
        return self._control is not None

    def subscribe(self, *, tasks: bool = True) -> bool:
        """Consume the control queue, then (once its backlog is delivered) task batches; returns
        whether tasks are consumed now (raises `BrokerError` if a queue cannot be consumed).
        `tasks=False` (a multi-user parent): the control queue only."""
        control_queue = self.connection.control_queue
        if control_queue is not None and self._control is None:
            self._control = Inbox(
                self.transport,
                control_queue,
                self._on_control,
                # an ordinary agent takes cancellations only; a parent, start commands only
                accepts=(CancelTasks,) if tasks else (StartUserEndpoint,),
                prefetch=self._prefetch,
                redelivery=self._redelivery,
            )
        if not tasks:
            return self._control is not None
        with self._lock:
            if self._inbox is not None:
                return True
        if control_queue is not None and self.transport.queue_depth(control_queue) > 0:
            return False  # cancellations first: the next pass tries again
        inbox = Inbox(
            self.transport,
            self.connection.task_queue,
            self._on_batch,
            accepts=(TaskBatch,),
            prefetch=self._prefetch,
            redelivery=self._redelivery,
        )
        with self._lock:
            self._inbox = inbox
            if self.paused:
                inbox.consumer.pause()
        return True

    def close(self) -> None:
        self._stop.set()
        self.transport.close()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5.0)

    # --- the consumer watchdog ------------------------------------------------------------

    @wrap_with_logs
    def _watch(self) -> None:
        while not self._stop.wait(self._check_period_s):
            try:
                if self.check_consumer():
                    self._wake()
            except Exception:  # the watchdog must outlive any surprise; the next pass tries again
                log.exception("checking the task consumer failed")

    def check_consumer(self) -> bool:
        """Drop our task (and control) consumer if the broker no longer counts it; True when it did."""
        control_lost = self._check_control_consumer()
        return self._check_task_consumer() or control_lost

    def _forgotten(self, queue_name: str) -> bool:
        """Whether the broker counts no consumer on `queue_name` (or no such queue); False when it
        cannot tell (disconnected: the reconnect subscribes again anyway)."""
        try:
            return self.transport.queue_consumers(queue_name, timeout_s=5.0) == 0
        except NotFound:
            return True
        except BrokerError as exc:
            log.debug("cannot check the consumer of %s: %s", queue_name, exc)
            return False

    def _check_control_consumer(self) -> bool:
        control, queue_name = self._control, self.connection.control_queue
        if control is None or queue_name is None or not self._forgotten(queue_name):
            return False
        self._control = None  # the loop's next subscribe() consumes the control queue again
        control.cancel()
        log.warning("the broker no longer counts our consumer of %s (queue rebuilt?): subscribing again", queue_name)
        return True

    def _check_task_consumer(self) -> bool:
        with self._lock:
            inbox = self._inbox
            if inbox is None or self.paused:
                return False
        if not self._forgotten(self.connection.task_queue):
            return False
        with self._lock:
            if self._inbox is not inbox or self.paused:
                return False
            self._inbox = None
            self.consumer_lost = True
        inbox.cancel()
        log.warning("the broker no longer counts our consumer of %s (queue rebuilt?): subscribing again", inbox.queue)
        return True

    @property
    def connected(self) -> bool:
        return self.transport.connected

    def refusal(self) -> AccessRefused | None:
        """The broker's refusal of this endpoint's credentials, while it lasts (they were revoked:
        the endpoint was registered again, or deleted)."""
        error = self.transport.last_error
        return error if isinstance(error, AccessRefused) and not self.transport.connected else None

    # --- intake -------------------------------------------------------------------------

    def _on_batch(self, batch: TaskBatch, delivery: Delivery) -> None:
        self.inbound.put((batch, delivery))
        self._wake()

    def _on_control(self, message: CancelTasks | StartUserEndpoint, delivery: Delivery) -> None:
        if isinstance(message, StartUserEndpoint):
            self.commands.put((message, delivery))
        else:
            self.cancels.put((message, delivery))
        self._wake()

    def ack(self, delivery: Delivery) -> None:
        try:
            self.transport.ack(delivery)
        except BrokerError as exc:  # the transport closed: the broker requeues it; the ledger dedupes
            log.debug("could not ack: %s", exc)

    def requeue(self, delivery: Delivery) -> None:
        """Give a task message back to the broker, unread (e.g. it arrived while stopping)."""
        try:
            self.transport.nack(delivery, requeue=True)
        except BrokerError as exc:  # the transport closed: the broker requeues it anyway
            log.debug("could not requeue: %s", exc)

    def hand_back(self, batches: list[TaskBatch]) -> list[Future[None]] | None:
        """Publish tasks this agent will not run now back to its own task queue (a graceful stop);
        each future resolves on the broker's confirm. None when the registration predates this
        (no tasks exchange known)."""
        exchange = self.connection.tasks_exchange
        if exchange is None:
            return None
        return self.transport.publish_many(
            OutgoingMessage(
                exchange=exchange,
                routing_key=self.connection.task_queue,
                body=pack(batch),
                user_id=self.connection.username,
                message_id=str(uuid.uuid4()),
            )
            for batch in batches
        )

    def backlog(self) -> int:
        """Task messages waiting in the endpoint's queue (a passive declare; blocks briefly)."""
        return self.transport.queue_depth(self.connection.task_queue, timeout_s=5.0)

    def pause(self) -> None:
        with self._lock:
            if not self.paused:
                self.paused = True
                if self._inbox is not None:
                    self._inbox.consumer.pause()

    def resume(self) -> None:
        with self._lock:
            if self.paused:
                self.paused = False
                if self._inbox is not None:
                    self._inbox.consumer.resume()

    # --- output -------------------------------------------------------------------------

    def publish_results(self, results: list[Result]) -> list[tuple[int, list[Result]]]:
        """Publish results in batches; returns (ticket, results) per message. Each message's
        outcome arrives later on `outcomes` under its ticket."""
        chunks = [results[start : start + RESULTS_PER_MESSAGE] for start in range(0, len(results), RESULTS_PER_MESSAGE)]
        tickets = [next(self._tickets) for _ in chunks]
        futures = self.transport.publish_many(self._message(pack(ResultBatch(results=chunk))) for chunk in chunks)
        for ticket, chunk, future in zip(tickets, chunks, futures, strict=True):
            future.add_done_callback(functools.partial(self._settled, ticket, chunk))
        return list(zip(tickets, chunks, strict=True))

    def _settled(self, ticket: int, results: list[Result], future: Future[None]) -> None:
        self.outcomes.put(PublishOutcome(ticket, results, future.exception()))
        self._wake()

    def publish_events(self, events: TaskEvents) -> Future[None]:
        """Publish task events (and inventories) with a confirm."""
        return self.transport.publish(self._message(pack(events)))

    def publish_started(self, started: list[TaskStarted]) -> None:
        """Publish task starts, in messages of up to `RESULTS_PER_MESSAGE`. Not tracked: a lost
        start only delays the `running` state until the result (which the forwarder stores anyway)."""
        chunks = [started[i : i + RESULTS_PER_MESSAGE] for i in range(0, len(started), RESULTS_PER_MESSAGE)]
        futures = self.transport.publish_many(self._message(pack(TaskEvents(started=chunk))) for chunk in chunks)
        for future in futures:
            future.add_done_callback(_log_events_failure)

    def publish_status(self, status: EndpointStatus) -> Future[None]:
        """Publish a status report; a lost one is replaced by the next, so callers need not wait
        (the returned future resolves on the broker's confirm)."""
        future = self.transport.publish(self._message(pack(status)))
        future.add_done_callback(_log_status_failure)
        return future

    def dead_letter(self, task: Task, function: FunctionBody | None, reason: str) -> None:
        """Put a task the fabric gave up on into the dead-letter queue, for inspection. Its error
        result is reported separately; the header says so."""
        body = pack(TaskBatch(tasks=[task], functions=[function] if function else []))
        message = OutgoingMessage(
            exchange=self.connection.dead_letter_exchange,
            routing_key=self.connection.task_queue,
            body=body,
            message_id=str(task.task_id),
            user_id=self.connection.username,
            headers={
                "x-first-death-reason": "retries_exhausted",
                "x-first-death-queue": self.connection.task_queue,
                "x-taskfabric-reason": reason,
                "x-taskfabric-outcome-reported": True,
                "x-taskfabric-endpoint": str(self.connection.endpoint_id),
            },
        )
        self.transport.publish(message).add_done_callback(_log_dead_letter_failure)

    def _message(self, body: bytes) -> OutgoingMessage:
        return OutgoingMessage(
            exchange=self.connection.results_exchange,
            routing_key=self.connection.result_queue,
            body=body,
            user_id=self.connection.username,
            message_id=str(uuid.uuid4()),
        )


def _log_status_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.debug("status report not delivered: %s", error)


def _log_events_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.debug("task starts not delivered: %s", error)


def _log_dead_letter_failure(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        log.warning("could not dead-letter a task: %s", error)


def redelivery_limit_of(connection: EndpointConnection) -> RedeliveryLimit | None:
    """How this agent counts returns of its task and control queues: None on quorum queues (the
    broker counts) and when the forwarder named no tasks exchange to re-publish to (an old one)."""
    if connection.queue_type == "quorum" or connection.tasks_exchange is None:
        return None
    if connection.queue_type != "classic":
        raise ConfigError(f"unknown queue type {connection.queue_type!r}", key="queue_type")
    return RedeliveryLimit(
        limit=connection.delivery_limit or DEFAULT_DELIVERY_LIMIT,
        exchange=connection.tasks_exchange,
        dead_letter_exchange=connection.dead_letter_exchange,
    )
