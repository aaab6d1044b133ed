"""The agent's link to RabbitMQ, with the endpoint's own credentials.

- Task batches arrive on the transport's IO thread, are decoded there (malformed ones are
  dead-lettered by the `Inbox`) and handed to the agent loop through `inbound`; the loop is woken.
- Results, task starts (`TaskEvents`) and status reports are published to the results exchange
  with publisher confirms and the broker-validated `user_id` (the forwarder accepts results only
  from the endpoint's own user); each result publish's outcome comes back to the loop through
  `outcomes`.
- Tasks the fabric failed to run too many times are published to the dead-letter exchange.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import queue
import uuid
from collections.abc import Callable
from concurrent.futures import Future

from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.errors import BrokerError
from taskfabric.inbox import Inbox
from taskfabric.protocol import (
    EndpointStatus,
    FunctionBody,
    Result,
    ResultBatch,
    Task,
    TaskBatch,
    TaskEvents,
    TaskStarted,
    pack,
)
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport, Transport

__all__ = ["BrokerLink", "PublishOutcome"]

log = logging.getLogger(__name__)

#: results per ResultBatch message
RESULTS_PER_MESSAGE = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class PublishOutcome:
    """The broker's verdict on one published result batch."""

    ticket: int
    results: list[Result]
    error: BaseException | None


class BrokerLink:
    """Consumes the endpoint's task queue and publishes to its result queue."""

    def __init__(
        self,
        connection: EndpointConnection,
        *,
        wake: Callable[[], None],
        prefetch_messages: int = 4,
        transport: Transport | None = None,
    ) -> None:
        self.connection = connection
        self._wake = wake
        self._prefetch = prefetch_messages
        self.transport = transport or RabbitTransport(
            connection.amqp_url, connection_name=f"taskfabric-agent-{connection.endpoint_id}"
        )
        self.inbound: queue.SimpleQueue[tuple[TaskBatch, Delivery]] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[PublishOutcome] = queue.SimpleQueue()
        self._inbox: Inbox[TaskBatch] | None = None
        self._tickets = itertools.count(1)
        self.paused = False

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, *, wait_s: float = 15.0) -> None:
        """Connect (raising `AccessRefused` for bad credentials, `BrokerUnavailable` if unreachable)."""
        self.transport.start(wait_s=wait_s)

    def subscribed(self) -> bool:
        return self._inbox is not None

    def subscribe(self) -> None:
        """Start consuming task batches (raises `BrokerError` if the queue cannot be consumed)."""
        if self._inbox is None:
            self._inbox = Inbox(
                self.transport,
                self.connection.task_queue,
                self._on_batch,
                accepts=(TaskBatch,),
                prefetch=self._prefetch,
            )
            if self.paused:
                self._inbox.consumer.pause()

    def close(self) -> None:
        self.transport.close()

    @property
    def connected(self) -> bool:
        return self.transport.connected

    # --- intake -------------------------------------------------------------------------

    def _on_batch(self, batch: TaskBatch, delivery: Delivery) -> None:
        self.inbound.put((batch, delivery))
        self._wake()

    def ack(self, delivery: Delivery) -> None:
        try:
            self.transport.ack(delivery)
        except BrokerError as exc:  # the transport closed: the broker requeues it; the ledger dedupes
            log.debug("could not ack: %s", exc)

    def backlog(self) -> int:
        """Task messages waiting in the endpoint's queue (a passive declare; blocks briefly)."""
        return self.transport.queue_depth(self.connection.task_queue, timeout_s=5.0)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            if self._inbox is not None:
                self._inbox.consumer.pause()

    def resume(self) -> None:
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

    def publish_started(self, started: list[TaskStarted]) -> None:
        """Publish task starts, in messages of up to `RESULTS_PER_MESSAGE`. Not tracked: a lost
        start only delays the `running` state until the result (which the forwarder stores anyway)."""
        chunks = [started[i : i + RESULTS_PER_MESSAGE] for i in range(0, len(started), RESULTS_PER_MESSAGE)]
        futures = self.transport.publish_many(self._message(pack(TaskEvents(started=chunk))) for chunk in chunks)
        for future in futures:
            future.add_done_callback(_log_events_failure)

    def publish_status(self, status: EndpointStatus) -> None:
        """Fire and forget: a lost status report is replaced by the next one."""
        future = self.transport.publish(self._message(pack(status)))
        future.add_done_callback(_log_status_failure)

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
