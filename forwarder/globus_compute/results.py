"""Results for the SDK's Executor: per-user result queues on our RabbitMQ.

The Executor reads its results from AMQP, not from the web service: it asks
`GET /v2/get_amqp_result_connection_url` for a URL and a queue prefix, then consumes
`{queue_prefix}{task_group_id}`. Here:

- `queue_prefix` is `{topology prefix}.gc.{user id}.`: one namespace per user;
- each user has a broker user `gc-{user id}` whose permissions allow reading queues in that
  namespace only (no configure, no write): it cannot see or take another user's results. Its
  password is replaced at each URL request (the SDK asks again whenever it reconnects);
- a submit with `create_queue` declares the group's queue (durable, deleted after
  `globus_compute.result_queue_expires_s` without a consumer) and records the group in the store
  (`globus_compute_task_groups`), so that every forwarder replica's ingest knows it;
- `ComputeResultRelay.relay` (on the ingest thread, after results are stored) publishes each
  finished task of such a group as a globus-compute-common `Result` message. DESIGN: the publish
  is not awaited (the ingest thread must not wait on the broker); if it fails, the result is still
  in the store, and `Executor.reload_tasks()` or `Client.get_result` fetches it over REST.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future

from taskfabric.broker_config import EndpointPermissions
from taskfabric.errors import StoreError
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.globus_compute.bodies import compute_outcome
from taskfabric.forwarder.records import TaskRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.ttl_cache import TTLCache
from taskfabric.protocol.globus_compute import compute_result_message
from taskfabric.transport import OutgoingMessage

__all__ = ["ComputeResultRelay", "queue_prefix_of", "result_broker_username"]

log = logging.getLogger(__name__)

_MISSING: tuple[uuid.UUID | None, str] = (None, "")  # cached: this task group has no result queue


def queue_prefix_of(topology_prefix: str, user_id: uuid.UUID) -> str:
    return f"{topology_prefix}.gc.{user_id}."


def result_broker_username(user_id: uuid.UUID) -> str:
    return f"gc-{user_id}"


class ComputeResultRelay:
    """Result queues, their readers' credentials, and the publishing of results to them."""

    def __init__(self, settings: ForwarderSettings, *, store: Store, broker: AdminBrokerLink) -> None:
        self._settings = settings
        self._store = store
        self._broker = broker
        #: task group -> (its owner, its queue) (`_MISSING` when it has none); groups never change
        self._queues: TTLCache[uuid.UUID, tuple[uuid.UUID | None, str]] = TTLCache(300.0, max_entries=100_000)
        self.published = 0

    def queue_of(self, user_id: uuid.UUID, task_group_id: uuid.UUID) -> str:
        return queue_prefix_of(self._settings.topology_prefix, user_id) + str(task_group_id)

    # --- called from request handlers, on threads ------------------------------------------

    def declare_group_queue(self, user_id: uuid.UUID, task_group_id: uuid.UUID) -> uuid.UUID:
        """Declare the group's queue and record the group; returns the group's owner (another
        user's id when that user created the group first: the caller refuses then)."""
        queue = self.queue_of(user_id, task_group_id)
        if self._queues.get(task_group_id) == (user_id, queue):
            return user_id  # declared by this replica a moment ago (each batch of an Executor asks)
        owner = self._store.compute_groups.add(task_group_id, owner_id=user_id, queue=queue, now=time.time())
        if owner != user_id:
            return owner
        expires_ms = int(self._settings.globus_compute.result_queue_expires_s * 1000)
        self._broker.transport.declare_queue(queue, arguments={"x-expires": expires_ms})
        self._queues.put(task_group_id, (owner, queue))
        return owner

    def issue_reader(self, user_id: uuid.UUID) -> tuple[str, str]:
        """(AMQP URL with fresh credentials that read only this user's result queues, queue prefix)."""
        username = result_broker_username(user_id)
        password = secrets.token_urlsafe(24)
        prefix = queue_prefix_of(self._settings.topology_prefix, user_id)
        management = self._broker.management
        management.create_user(username, password)
        management.set_permissions(
            username, EndpointPermissions(configure="^$", write="^$", read=f"^{re.escape(prefix)}")
        )
        return self._settings.endpoint_broker_url(username, password), prefix

    # --- called on the ingest thread ------------------------------------------------------

    def relay(self, records: Sequence[TaskRecord]) -> None:
        """Publish the finished tasks of groups with a result queue (never raises): only the
        tasks of the group's owner. A group id is the client's choice, so another user may have
        submitted tasks under it (without a queue, before the owner claimed it): their results
        must never reach the owner's queue."""
        grouped = [record for record in records if record.task_group_id is not None]
        if not grouped:
            return
        try:
            queues = self._queues_of({record.task_group_id for record in grouped if record.task_group_id})
        except StoreError as exc:
            log.warning("could not look up %d task groups' result queues: %s", len(grouped), exc)
            return
        for record in grouped:
            owner, queue = queues.get(record.task_group_id, _MISSING) if record.task_group_id else _MISSING
            if not queue or owner != record.owner_id:
                continue
            outcome = compute_outcome(record)
            if outcome is None:
                continue
            message = OutgoingMessage(
                exchange="",
                routing_key=queue,
                body=compute_result_message(outcome),
                content_type="application/json",
                mandatory=False,
            )
            try:
                self._broker.transport.publish(message).add_done_callback(_log_failure)
                self.published += 1
            except Exception as exc:  # the result is stored: REST still serves it
                log.warning("could not publish the result of task %s to %s: %s", record.task_id, queue, exc)

    def _queues_of(self, group_ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[uuid.UUID | None, str]]:
        known: dict[uuid.UUID, tuple[uuid.UUID | None, str]] = {}
        unknown: list[uuid.UUID] = []
        for group_id in group_ids:
            cached = self._queues.get(group_id)
            if cached is None:
                unknown.append(group_id)
            else:
                known[group_id] = cached
        if unknown:
            stored = self._store.compute_groups.queues(unknown)
            for group_id in unknown:
                found = stored.get(group_id, _MISSING)
                self._queues.put(group_id, found)
                known[group_id] = found
        return known


def _log_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("a Globus Compute result was not confirmed by the broker: %s", exc)
