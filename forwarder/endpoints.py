"""Endpoint registration and deletion.

Registering declares the endpoint's queues (at registration, well before any traffic: a quorum
queue declared just before a broker crash can come back leaderless), creates or re-keys its broker
user `ep-<id>` with a fresh random password and narrow permissions, and starts consuming its
result queue. The same owner registering the same name gets the same id (stable across restarts).

Deleting revokes the broker user (closing its connections), stops the result consumer, deletes the
queues, fails the endpoint's unfinished tasks with `ENDPOINT_DELETED`, and forgets the endpoint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from taskfabric.broker_config import EndpointQueues, broker_username, new_queue_secret
from taskfabric.errors import BrokerError, ErrorCode, NotFoundError, PermissionDenied, QuotaExceeded, ServiceError
from taskfabric.forwarder.access import EndpointPermission, EndpointRole
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.consumers import ResultConsumers
from taskfabric.forwarder.endpoint_sharing import EndpointSharing
from taskfabric.forwarder.ingest import StatusBook
from taskfabric.forwarder.queue_health import QueueDoctor
from taskfabric.forwarder.quotas import check_endpoint_count
from taskfabric.forwarder.records import EndpointRecord, Identity, TaskRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Failure, Store, StoreConflict, StoreRunner
from taskfabric.forwarder.ttl_cache import TTLCache
from taskfabric.forwarder.user_endpoints import (
    MAX_USER_ENDPOINTS_PER_USER,
    START_COMMAND_PERIOD_S,
    UserEndpointKey,
    parent_of,
    user_endpoint_id,
    user_endpoint_metadata,
    user_endpoint_name,
    user_of,
)
from taskfabric.protocol import StartUserEndpoint, pack
from taskfabric.protocol.api import BrokerAccess

__all__ = ["CONFLICT", "EndpointRegistry", "Registration"]

log = logging.getLogger(__name__)

CONFLICT = "CONFLICT"

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    endpoint: EndpointRecord
    created: bool
    broker: BrokerAccess


class EndpointRegistry:
    """Registers, reads, lists and deletes endpoints (ownership enforced)."""

    def __init__(
        self,
        settings: ForwarderSettings,
        *,
        store: Store,
        runner: StoreRunner,
        broker: AdminBrokerLink,
        consumers: ResultConsumers,
        statuses: StatusBook,
        on_failed: Callable[[Sequence[TaskRecord]], None],
        sharing: EndpointSharing,
    ) -> None:
        self._settings = settings
        self._store = store
        self._runner = runner
        self._broker = broker
        self._consumers = consumers
        self._statuses = statuses
        self._on_failed = on_failed
        self.sharing = sharing
        self._lock = asyncio.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="broker-admin")
        self._doctor = QueueDoctor(broker, consumers, confirmations=settings.queue_check_confirmations)
        # submits look an endpoint up every time; a deletion elsewhere is noticed within the sync period
        self._targets: TTLCache[uuid.UUID, EndpointRecord] = TTLCache(settings.endpoint_sync_period_s)
        #: user endpoints whose parent was sent a start command lately (see forwarder/user_endpoints.py)
        self._announced: TTLCache[uuid.UUID, bool] = TTLCache(START_COMMAND_PERIOD_S)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def _blocking(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    # --- registration -------------------------------------------------------------------

    async def register(
        self, identity: Identity, *, name: str, endpoint_id: uuid.UUID | None, metadata: dict[str, Any] | None
    ) -> Registration:
        """Create or re-register an endpoint and issue fresh broker credentials."""
        metadata_json = json.dumps(metadata, separators=(",", ":")) if metadata is not None else None
        async with self._lock:
            existing = await self._existing(identity, name=name, endpoint_id=endpoint_id)
            if existing is None:
                record = await self._create(identity, name=name, endpoint_id=endpoint_id, metadata=metadata_json)
                created = True
            else:
                record = await self._reregister(existing, name=name, metadata=metadata_json)
                created = False
            queues = self._broker.queues_of(record.endpoint_id, record.queue_secret)
            password = await self._blocking(
                self._broker.issue_credentials, record.endpoint_id, queues, revoke_old=not created
            )
            await self._blocking(self._consumers.ensure, record)
        log.info(
            "%s endpoint %s (%s) of %s",
            "registered" if created else "re-registered",
            record.endpoint_id,
            name,
            identity.username,
        )
        return Registration(endpoint=record, created=created, broker=self._credentials(record, queues, password))

    async def _existing(self, identity: Identity, *, name: str, endpoint_id: uuid.UUID | None) -> EndpointRecord | None:
        if endpoint_id is not None:
            by_id = await self._runner.read(self._store.endpoints.get, endpoint_id)
            if by_id is not None:
                return _owned(identity, endpoint_id, by_id)
        by_name = await self._runner.read(self._store.endpoints.find, identity.user_id, name)
        if by_name is not None and endpoint_id is not None and by_name.endpoint_id != endpoint_id:
            raise ServiceError(
                f"you already have an endpoint named {name!r} with id {by_name.endpoint_id}", status=409, code=CONFLICT
            )
        return by_name

    async def _create(
        self, identity: Identity, *, name: str, endpoint_id: uuid.UUID | None, metadata: str | None
    ) -> EndpointRecord:
        # before any broker work: a refused endpoint costs one count, no queues or broker user
        await self._check_endpoint_quota(identity)
        new_id = endpoint_id or uuid.uuid4()
        record = EndpointRecord(
            endpoint_id=new_id,
            owner_id=identity.user_id,
            name=name,
            queue_secret=new_queue_secret(),
            broker_username=broker_username(new_id),
            created_at=time.time(),
            metadata=metadata or "{}",
        )
        queues = self._broker.queues_of(new_id, record.queue_secret)
        await self._blocking(self._declare_proven_queues, queues)
        try:
            await self._runner.write(self._store.endpoints.add, record)
        except StoreConflict:
            await self._blocking(self._broker.delete_endpoint_queues, queues)
            raise ServiceError(
                f"endpoint {new_id} or the name {name!r} was registered concurrently; retry", status=409, code=CONFLICT
            ) from None
        return record

    async def _check_endpoint_quota(self, identity: Identity) -> None:
        """`QuotaExceeded` when the user has `quotas.max_endpoints_per_user` endpoints already
        (checked under the registration lock, so one replica cannot overshoot)."""
        if self._settings.quotas.max_endpoints_per_user:
            owned = await self._runner.read(self._store.quotas.endpoints, identity.user_id)
            check_endpoint_count(self._settings.quotas, owned=owned)

    def _declare_proven_queues(self, queues: EndpointQueues) -> None:
        """Declare a new endpoint's queues and prove them with a probe round trip (a queue the
        broker cannot serve is declared once more); raises 503 if they still do not work."""
        for attempt in (1, 2):
            self._broker.declare_endpoint_queues(queues)
            try:
                self._broker.probe_endpoint_queues(queues, timeout_s=self._settings.confirm_timeout_s)
                return
            except BrokerError as exc:
                log.warning("new endpoint queues failed their probe (attempt %d): %s", attempt, exc)
                self._broker.delete_endpoint_queues(queues)
        raise ServiceError(
            "the broker could not provide working queues for the endpoint; try again",
            status=503,
            code="BROKER_UNAVAILABLE",
        )

    async def _reregister(self, existing: EndpointRecord, *, name: str, metadata: str | None) -> EndpointRecord:
        new_metadata = metadata if metadata is not None else existing.metadata
        try:
            await self._runner.write(
                self._store.endpoints.update_registration, existing.endpoint_id, name=name, metadata=new_metadata
            )
        except StoreConflict:
            raise ServiceError(f"you already have another endpoint named {name!r}", status=409, code=CONFLICT) from None
        record = dataclasses.replace(existing, name=name, metadata=new_metadata)
        # idempotent: re-declares queues lost with a broker's data
        await self._blocking(
            self._broker.declare_endpoint_queues, self._broker.queues_of(record.endpoint_id, record.queue_secret)
        )
        return record

    def _credentials(self, record: EndpointRecord, queues: EndpointQueues, password: str) -> BrokerAccess:
        urls = self._settings.endpoint_broker_urls(record.broker_username, password)
        return self._broker.topology.broker_access(
            queues,
            amqp_url=urls[0],
            amqp_urls=urls,
            username=record.broker_username,
            ca_certificate=self._settings.endpoint_broker_ca_pem(),
        )

    # --- multi-user endpoints (design: forwarder/user_endpoints.py) -----------------------

    async def user_endpoint(
        self, identity: Identity, parent: EndpointRecord, config: dict[str, Any] | None
    ) -> tuple[EndpointRecord, UserEndpointKey]:
        """The user endpoint for the caller's tasks on multi-user endpoint `parent` (created, with
        its queues, on first use)."""
        key = UserEndpointKey(parent.endpoint_id, identity, config)
        child_id = user_endpoint_id(key)
        record = self._targets.get(child_id) or await self._runner.read(self._store.endpoints.get, child_id)
        if record is None:
            async with self._lock:
                record = await self._runner.read(self._store.endpoints.get, child_id)
                if record is None:
                    await self._check_user_endpoint_count(parent, key)
                    record = await self._create_user_endpoint(parent, key, child_id)
        self._targets.put(child_id, record)
        return record, key

    async def _check_user_endpoint_count(self, parent: EndpointRecord, key: UserEndpointKey) -> None:
        """`QuotaExceeded` when the user has `MAX_USER_ENDPOINTS_PER_USER` user endpoints on this
        parent already (a new user_endpoint_config would start one more process)."""
        owned = await self._runner.read(self._store.endpoints.list, parent.owner_id)
        mine = [r for r in owned if parent_of(r) == parent.endpoint_id and user_of(r) == key.user_id]
        if len(mine) >= MAX_USER_ENDPOINTS_PER_USER:
            raise QuotaExceeded(
                f"you have {len(mine)} user endpoints on multi-user endpoint {parent.endpoint_id} (one per distinct "
                f"user_endpoint_config), the most allowed: reuse one of your configs",
                quota="max_user_endpoints_per_user",
                limit=MAX_USER_ENDPOINTS_PER_USER,
                retry_after_s=60.0,
            )

    async def _create_user_endpoint(
        self, parent: EndpointRecord, key: UserEndpointKey, child_id: uuid.UUID
    ) -> EndpointRecord:
        record = EndpointRecord(
            endpoint_id=child_id,
            owner_id=parent.owner_id,
            name=user_endpoint_name(parent, key),
            queue_secret=new_queue_secret(),
            broker_username=broker_username(child_id),
            created_at=time.time(),
            metadata=user_endpoint_metadata(key),
            allowed_functions=parent.allowed_functions,
        )
        queues = self._broker.queues_of(child_id, record.queue_secret)
        await self._blocking(self._declare_proven_queues, queues)
        await self._runner.write(self._store.endpoints.add, record)
        await self._blocking(self._consumers.ensure, record)
        log.info("created user endpoint %s of %s for %s", child_id, parent.endpoint_id, key.username)
        return record

    async def announce_user_endpoint(self, parent: EndpointRecord, child: EndpointRecord, key: UserEndpointKey) -> None:
        """Send the parent a `StartUserEndpoint` (at most once per `START_COMMAND_PERIOD_S` per
        child). While the child reports online it carries no credentials (re-keying would leave
        the running process with a stale password); otherwise the child's broker user is keyed
        afresh and the command carries that access to its queues only."""
        if self._announced.get(child.endpoint_id):
            return
        self._announced.put(child.endpoint_id, True)
        broker = None
        if not self._online(child.endpoint_id):
            queues = self._broker.queues_of(child.endpoint_id, child.queue_secret)
            # revoke_old=False: a process still starting keeps its connection (the parent keeps
            # the new key for its next start)
            password = await self._blocking(self._broker.issue_credentials, child.endpoint_id, queues, revoke_old=False)
            broker = self._credentials(child, queues, password)
        command = StartUserEndpoint(
            endpoint_id=child.endpoint_id,
            parent_endpoint_id=parent.endpoint_id,
            user=key.username,
            user_id=key.user_id,
            identity_username=key.username,
            identity_sub=key.identity_sub,
            user_endpoint_config_json=json.dumps(key.config, sort_keys=True),
            broker=broker,
            sent_at=time.time(),
        )
        parent_queues = self._broker.queues_of(parent.endpoint_id, parent.queue_secret)
        future = self._broker.publish_control_message(parent_queues, pack(command))
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self._settings.confirm_timeout_s + 5.0)
        except (BrokerError, TimeoutError) as exc:
            # the tasks are safe in the child's queue; the next submit announces it again
            self._announced.discard(child.endpoint_id)
            log.warning("could not send the start command of user endpoint %s: %s", child.endpoint_id, exc)

    def _online(self, endpoint_id: uuid.UUID) -> bool:
        """Whether the endpoint's latest report (seen by this replica) says online, and is fresh."""
        report = self._statuses.latest(endpoint_id)
        if report is None or report.state != "online" or report.last_heartbeat_at is None:
            return False
        return time.time() - report.last_heartbeat_at < self._settings.endpoint_offline_after_s

    async def _delete_user_endpoints(self, identity: Identity, parent_id: uuid.UUID) -> int:
        """Delete the user endpoints of a deleted parent; returns how many tasks were failed."""
        owned = await self._runner.read(self._store.endpoints.list, identity.user_id)
        failed = 0
        for record in owned:
            if parent_of(record) == parent_id:
                failed += await self.delete(identity, record.endpoint_id)
        return failed

    # --- reads --------------------------------------------------------------------------

    async def owned(self, identity: Identity, endpoint_id: uuid.UUID) -> EndpointRecord:
        """The caller's endpoint (404 / 403 otherwise), as stored."""
        record = await self._runner.read(self._store.endpoints.get, endpoint_id)
        return _owned(identity, endpoint_id, record)

    async def submit_target(
        self, identity: Identity, endpoint_id: uuid.UUID
    ) -> tuple[EndpointRecord, EndpointPermission]:
        """The endpoint for a submit (its owner and queue secret; its status may be old) and what
        the caller may do with it: the owner at no further cost, others by their grants (403
        without one)."""
        record = self._targets.get(endpoint_id)
        if record is None:
            record = await self._runner.read(self._store.endpoints.get, endpoint_id)
            if record is not None:
                self._targets.put(endpoint_id, record)
        return await self._permitted(identity, endpoint_id, record)

    async def visible(self, identity: Identity, endpoint_id: uuid.UUID) -> tuple[EndpointRecord, EndpointPermission]:
        """The endpoint with a fresh status, for its owner and anyone with a role on it (404
        unknown, 403 otherwise); what the caller sees of it depends on the role."""
        record = await self._runner.read(self._store.endpoints.get, endpoint_id)
        record, permission = await self._permitted(identity, endpoint_id, record)
        return self._with_fresh_status(record), permission

    async def _permitted(
        self, identity: Identity, endpoint_id: uuid.UUID, record: EndpointRecord | None
    ) -> tuple[EndpointRecord, EndpointPermission]:
        if record is not None and record.owner_id != identity.user_id:
            permission = await self.sharing.permission(identity, endpoint_id)
            if permission is not None:
                return record, permission
        return _owned(identity, endpoint_id, record), _OWNER

    async def list_visible(self, identity: Identity) -> list[tuple[EndpointRecord, EndpointPermission]]:
        """The caller's endpoints, then those shared with them, each with the caller's role."""
        mine = [(record, _OWNER) for record in await self.list(identity)]
        shared = []
        for endpoint_id, permission in await self.sharing.shared_with(identity):
            record = await self._runner.read(self._store.endpoints.get, endpoint_id)
            if record is not None:
                shared.append((self._with_fresh_status(record), permission))
        shared.sort(key=lambda item: item[0].created_at)
        return mine + shared

    def forget_target(self, endpoint_id: uuid.UUID) -> None:
        """The endpoint's allow-list changed: submits read it afresh at once (on this replica)."""
        self._targets.discard(endpoint_id)

    async def list(self, identity: Identity) -> list[EndpointRecord]:
        records = await self._runner.read(self._store.endpoints.list, identity.user_id)
        return [self._with_fresh_status(record) for record in records]

    def _with_fresh_status(self, record: EndpointRecord) -> EndpointRecord:
        """The store's status may lag by `status_flush_s`; this replica may know a newer one."""
        fresh = self._statuses.latest(record.endpoint_id)
        stored_at = record.status.last_heartbeat_at
        if (
            fresh is not None
            and fresh.last_heartbeat_at is not None
            and (stored_at is None or fresh.last_heartbeat_at > stored_at)
        ):
            return dataclasses.replace(record, status=fresh)
        return record

    # --- deletion -----------------------------------------------------------------------

    async def delete(self, identity: Identity, endpoint_id: uuid.UUID) -> int:
        """Delete an endpoint; returns how many unfinished tasks were failed."""
        self._targets.discard(endpoint_id)
        self.sharing.forget(endpoint_id)
        async with self._lock:
            record = await self.owned(identity, endpoint_id)
            queues = self._broker.queues_of(endpoint_id, record.queue_secret)
            await self._blocking(self._broker.revoke_credentials, endpoint_id)
            await self._blocking(self._consumers.stop, endpoint_id)
            await self._blocking(self._broker.delete_endpoint_queues, queues)
            failure = Failure(
                ErrorCode.ENDPOINT_DELETED.value, f"endpoint {endpoint_id} was deleted before the task ran"
            )
            failed = await self._runner.write(self._store.tasks.fail_endpoint, endpoint_id, failure, now=time.time())
            await self._runner.write(self._store.endpoints.delete, endpoint_id)
            self._statuses.forget(endpoint_id)
        if failed:
            self._on_failed(failed)
        log.info("deleted endpoint %s; failed %d unfinished tasks", endpoint_id, len(failed))
        return len(failed) + await self._delete_user_endpoints(identity, endpoint_id)

    # --- replicas -----------------------------------------------------------------------

    async def declare_existing_queues(self) -> None:
        """Declare the queues of stored endpoints that lack one (idempotent). Run at startup:
        endpoints registered before a queue kind existed (the control queue) get it here, so
        cancellations for them wait in the broker until their agent re-registers and consumes
        them. The broker's queue list (one management API request) spares the endpoints whose
        queues all exist their six declare round trips: with 10,000 endpoints, a minute of start."""
        endpoints = await self._runner.read(self._store.endpoints.list)
        try:
            existing: set[str] | None = set(await self._blocking(self._broker.management.queue_states))
        except BrokerError as exc:
            log.warning("cannot list the broker's queues (%s); declaring every endpoint's", exc)
            existing = None
        for record in endpoints:
            queues = self._broker.queues_of(record.endpoint_id, record.queue_secret)
            if existing is not None and {queues.task_queue, queues.result_queue, queues.control_queue} <= existing:
                continue
            try:
                await self._blocking(self._broker.declare_endpoint_queues, queues)
            except BrokerError as exc:
                log.warning("cannot declare the queues of endpoint %s: %s", record.endpoint_id, exc)

    async def sync_consumers(self) -> None:
        """Consume exactly the result queues of the stored endpoints (other replicas register too)."""
        async with self._lock:
            endpoints = await self._runner.read(self._store.endpoints.list)
            await self._blocking(self._consumers.reconcile, endpoints)

    def under_repair(self, endpoint_id: uuid.UUID) -> bool:
        """Whether the endpoint has a queue seen broken and not rebuilt yet (forwarder/queue_health.py)."""
        return endpoint_id in self._doctor.under_repair

    async def check_queues(self, *, may_rebuild: bool = True) -> None:
        """Find endpoint queues a broker crash broke and rebuild them (only `may_rebuild`: the
        replica holding the lease; see forwarder/queue_health.py)."""
        async with self._lock:
            endpoints = await self._runner.read(self._store.endpoints.list)
            rebuilds = await self._blocking(self._doctor.examine, endpoints, may_rebuild=may_rebuild)
        for rebuild in rebuilds:
            if rebuild.task_queue:
                await self._runner.write(self._store.endpoints.mark_queue_rebuilt, rebuild.endpoint_id, at=time.time())


_OWNER = EndpointPermission(role=EndpointRole.OWNER)


def _owned(identity: Identity, endpoint_id: uuid.UUID, record: EndpointRecord | None) -> EndpointRecord:
    if record is None:
        raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")
    if record.owner_id != identity.user_id:
        raise PermissionDenied(f"endpoint {endpoint_id} belongs to another user", code="FORBIDDEN")
    return record
