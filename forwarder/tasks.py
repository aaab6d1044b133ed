"""Task submission and task reads.

Submitting a batch, in order: check the endpoint and every function are the caller's; insert all
tasks as `waiting` (one executemany); pack them into few `TaskBatch` messages carrying the
function bodies (cached in memory); publish them and await every confirm together, bounded by
`confirm_timeout_s`. If the broker does not confirm, the rows are deleted and the caller gets 503:
nothing is accepted (a message the broker did confirm may still run; its result is then ignored,
as its task no longer exists). Rows go in before the publish so that a result can never arrive
for a task the store does not know.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from taskfabric.broker_config import EndpointQueues
from taskfabric.errors import BrokerError, NotFoundError, PermissionDenied, PublishTimeout, ServiceError
from taskfabric.forwarder.batching import FunctionBodyCache, plan_task_batches
from taskfabric.forwarder.broker import BrokerLink
from taskfabric.forwarder.endpoints import EndpointRegistry
from taskfabric.forwarder.functions import FORBIDDEN, NOT_FOUND
from taskfabric.forwarder.records import Identity, NewTask, TaskRecord
from taskfabric.forwarder.requests import SubmitRequest
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.ttl_cache import TTLCache
from taskfabric.ids import new_uuid4s
from taskfabric.protocol import FunctionBody, pack

__all__ = ["BROKER_UNAVAILABLE", "TaskService"]

log = logging.getLogger(__name__)

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
#: extra time, beyond the transport's own confirm deadline, before we stop waiting
_CONFIRM_GRACE_S = 5.0


def new_task_ids(count: int) -> list[uuid.UUID]:
    """`count` fresh random task ids."""
    return new_uuid4s(count)


class TaskService:
    """Submit batches; read tasks (the caller's only)."""

    def __init__(
        self,
        settings: ForwarderSettings,
        *,
        store: Store,
        runner: StoreRunner,
        broker: BrokerLink,
        endpoints: EndpointRegistry,
        cache: FunctionBodyCache,
    ) -> None:
        self._settings = settings
        self._store = store
        self._runner = runner
        self._broker = broker
        self._endpoints = endpoints
        self._cache = cache
        # who owns a function never changes; a deletion (here or elsewhere) is noticed within a minute
        self._owners: TTLCache[uuid.UUID, uuid.UUID] = TTLCache(60.0)
        self.submitted = 0

    # --- submission ---------------------------------------------------------------------

    async def submit(self, identity: Identity, endpoint_id: uuid.UUID, request: SubmitRequest) -> list[uuid.UUID]:
        """Store and publish a batch; returns the new task ids in request order."""
        endpoint = await self._endpoints.submit_target(identity, endpoint_id)
        bodies = await self._function_bodies(identity, request.function_ids)
        new_tasks = [
            NewTask(
                task_id=task_id,
                function_id=task.function_id,
                payload=task.payload,
                walltime_s=task.walltime_s,
                resource_specification=task.resource_specification,
            )
            for task_id, task in zip(new_task_ids(len(request.tasks)), request.tasks, strict=True)
        ]
        now = time.time()
        await self._runner.write(
            self._store.tasks.insert,
            owner_id=identity.user_id,
            endpoint_id=endpoint_id,
            client_python=request.client_python,
            new_tasks=new_tasks,
            created_at=now,
        )
        messages = plan_task_batches(
            new_tasks,
            bodies,
            max_tasks=self._settings.publish_batch_tasks,
            max_bytes=self._settings.publish_batch_bytes,
            client_python=request.client_python,
            submitted_at=now,
        )
        queues = self._broker.queues_of(endpoint_id, endpoint.queue_secret)
        try:
            await self._publish(queues, [pack(message) for message in messages])
        except BrokerError as exc:
            await self._withdraw([task.task_id for task in new_tasks])
            log.warning("the broker did not confirm %d tasks for endpoint %s: %s", len(new_tasks), endpoint_id, exc)
            raise ServiceError(
                f"the broker did not confirm the tasks in time ({exc}); nothing was accepted",
                status=503,
                code=BROKER_UNAVAILABLE,
            ) from None
        self.submitted += len(new_tasks)
        return [task.task_id for task in new_tasks]

    async def _publish(self, queues: EndpointQueues, bodies: list[bytes]) -> None:
        """Publish and await every confirm together (the transport bounds each wait too)."""
        futures = self._broker.publish_task_messages(queues, bodies)
        waits = [asyncio.wrap_future(future) for future in futures]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self._settings.confirm_timeout_s + _CONFIRM_GRACE_S)
        except TimeoutError:
            raise PublishTimeout(f"no confirm from the broker for {len(bodies)} task messages") from None

    def forget_function(self, function_id: uuid.UUID) -> None:
        """A function was deleted: stop accepting tasks for it at once (on this replica)."""
        self._owners.discard(function_id)

    async def _withdraw(self, task_ids: list[uuid.UUID]) -> None:
        try:
            await self._runner.write(self._store.tasks.delete, task_ids)
        except Exception:  # the original failure is what the caller needs to hear about
            log.exception("could not withdraw %d unconfirmed tasks", len(task_ids))

    async def _function_bodies(self, identity: Identity, function_ids: set[uuid.UUID]) -> dict[uuid.UUID, FunctionBody]:
        """The bodies of the caller's functions (404 unknown, 403 another user's)."""
        owners = {function_id: owner for function_id in function_ids if (owner := self._owners.get(function_id))}
        unknown = function_ids - owners.keys()
        if unknown:
            stored = await self._runner.read(self._store.functions.owners, unknown)
            for function_id, owner in stored.items():
                self._owners.put(function_id, owner)
            owners.update(stored)
        for function_id in sorted(function_ids, key=str):
            owner = owners.get(function_id)
            if owner is None:
                raise NotFoundError(f"no function {function_id}", code=NOT_FOUND)
            if owner != identity.user_id:
                raise PermissionDenied(f"function {function_id} belongs to another user", code=FORBIDDEN)
        bodies = self._cache.get_many(function_ids)
        missing = [function_id for function_id in function_ids if function_id not in bodies]
        if missing:
            loaded = await self._runner.read(self._store.functions.bodies, missing)
            for function_id in missing:
                found = loaded.get(function_id)
                if found is None:  # deleted since we checked
                    raise NotFoundError(f"no function {function_id}", code=NOT_FOUND)
                body = FunctionBody(function_id=function_id, body=found[0], python_version=found[1])
                self._cache.put(body)
                bodies[function_id] = body
        return bodies

    # --- reads --------------------------------------------------------------------------

    async def get(self, identity: Identity, task_id: uuid.UUID) -> TaskRecord:
        found = await self._runner.read(self._store.tasks.get_many, [task_id])
        record = found.get(task_id)
        if record is None or record.owner_id != identity.user_id:
            raise NotFoundError(f"no task {task_id}", code=NOT_FOUND)
        return record

    async def get_many(
        self, identity: Identity, task_ids: Sequence[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, TaskRecord], list[uuid.UUID]]:
        """(the caller's tasks by id, the ids that are unknown or not the caller's)."""
        found = await self._runner.read(self._store.tasks.get_many, task_ids)
        mine = {task_id: record for task_id, record in found.items() if record.owner_id == identity.user_id}
        unknown = [task_id for task_id in task_ids if task_id not in mine]
        return mine, unknown
