"""Task submission and task reads.

Submitting a batch, in order: check the caller may submit to the endpoint (they own it, at no
extra cost, or hold a grant on it: see `endpoint_sharing`, whose per-grant limits are checked with
the quotas), its allow-list names every function (`check_allowed_functions`, for its owner too)
and the caller may run every function (theirs, at no extra cost, or shared with them:
`FunctionSharing`); insert all tasks as `waiting` (one executemany); pack
them into few `TaskBatch` messages carrying the function bodies (cached in memory) and the
submitting username (`Task.user`); publish them and await every confirm together, bounded by
`confirm_timeout_s`. If the broker does not confirm, the rows are deleted and the caller gets 503:
nothing is recorded. Rows go in before the publish so that a result can never arrive for a task the
store does not know. A batch accepted on another user's endpoint is then counted for the day and
audited (`endpoint.submit`).

Idempotent retries (DESIGN). A broker that did not confirm may still have taken a message, so a
503 cannot promise that nothing will run. A request may carry a `submission_id` (the client's
idempotency key; `Client` always sends one and retries 503s, timeouts and dropped connections with
it). Its task ids are then derived from (user, submission id, index): a retry names the same tasks.
If they are stored already (the first attempt was accepted but its answer was lost, or the
forwarder died between storing and publishing them), the retry publishes those still waiting again
and answers with the same ids. If they were withdrawn after a 503, the retry stores and
publishes them again under the same ids: a copy the broker did take and the retried copy are one
task, which the agent's ledger deduplicates while it holds it and whose first result the store
keeps. So a retry never makes a second task; a task may run twice (at-least-once), and its outcome
is reported once.

Cancelling, in order: find the caller's unfinished tasks among the ids; publish one `CancelTasks`
per endpoint to its control queue and await the confirms (if the broker does not confirm, nothing
changes and the caller gets 503); then move the tasks to `cancelled` in one guarded update, which
decides: a task whose result was stored in between stays finished and answers False. So a task
reported cancelled is one its endpoint will hear about, even if it is offline now (the message
waits in its control queue). Unknown ids and other users' tasks answer False, exactly like
finished ones: a caller learns nothing about tasks that are not theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator, Sequence

from taskfabric.broker_config import EndpointQueues
from taskfabric.errors import (
    BrokerError,
    ErrorCode,
    NotFoundError,
    PermissionDenied,
    PublishTimeout,
    QuotaExceeded,
    ServiceError,
)
from taskfabric.forwarder.access import EndpointPermission
from taskfabric.forwarder.allow_lists import check_allowed_functions
from taskfabric.forwarder.batching import FunctionBodyCache, plan_task_batches
from taskfabric.forwarder.blobs import BlobIntegrityError, BlobMissing
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.endpoints import EndpointRegistry
from taskfabric.forwarder.functions import NOT_FOUND, FunctionSharing
from taskfabric.forwarder.metrics import ForwarderMetrics
from taskfabric.forwarder.quotas import (
    QuotaReads,
    SubmitRateLimiter,
    check_pending_tasks,
    check_result_bytes,
    utc_day,
)
from taskfabric.forwarder.records import Identity, NewTask, TaskActivity, TaskPage, TaskQuery, TaskRecord
from taskfabric.forwarder.requests import SubmitRequest
from taskfabric.forwarder.result_uploads import UploadOffer
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store, StoreConflict, StoreRunner
from taskfabric.forwarder.ttl_cache import TTLCache
from taskfabric.forwarder.user_endpoints import is_multi_user, parent_of
from taskfabric.ids import new_uuid4s
from taskfabric.protocol import CancelTasks, FunctionBody, TaskStatus, pack
from taskfabric.protocol.api import RESULT_NOT_AVAILABLE
from taskfabric.protocol.task_ids import submission_task_ids

__all__ = [
    "ACTIVITY_UNFINISHED_CACHE_S",
    "ACTIVITY_UNFINISHED_COST_RATIO",
    "BROKER_UNAVAILABLE",
    "SUBMISSION_CONFLICT",
    "USER_ENDPOINT",
    "TaskService",
]

log = logging.getLogger(__name__)

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
SUBMISSION_CONFLICT = "SUBMISSION_CONFLICT"
#: a submit straight to a multi-user endpoint's user endpoint (403)
USER_ENDPOINT = "USER_ENDPOINT"
#: extra time, beyond the transport's own confirm deadline, before we stop waiting
_CONFIRM_GRACE_S = 5.0


#: how long `TaskService.activity` reuses a user's unfinished-task counts, at least
ACTIVITY_UNFINISHED_CACHE_S = 2.0
#: ... and at least this many times as long as counting them took
ACTIVITY_UNFINISHED_COST_RATIO = 10.0


def new_task_ids(count: int) -> list[uuid.UUID]:
    """`count` fresh random task ids."""
    return new_uuid4s(count)


@dataclasses.dataclass(frozen=True, slots=True)
class ResultBody:
    """A successful task's result bytes for `GET /v1/tasks/{id}/result`: `data` (a result kept
    in its row) or `chunks` (streamed from the blob store, checked again as they are read)."""

    task_id: uuid.UUID
    size: int
    sha256: str
    worker_python: str
    data: bytes | None = None
    chunks: Iterator[bytes] | None = None


#: a result blob up to this size is read (and checked) whole before it is sent, larger ones are
#: checked in a first pass and then streamed
_READ_WHOLE_BYTES = 8 * 1024 * 1024


class TaskService:
    """Submit batches; read tasks (the caller's only)."""

    def __init__(
        self,
        settings: ForwarderSettings,
        *,
        store: Store,
        runner: StoreRunner,
        broker: AdminBrokerLink,
        endpoints: EndpointRegistry,
        cache: FunctionBodyCache,
        metrics: ForwarderMetrics | None = None,
        sharing: FunctionSharing | None = None,
        upload_offer: UploadOffer | None = None,
    ) -> None:
        self._settings = settings
        self._upload_offer = upload_offer
        self._sharing = sharing or FunctionSharing(store, runner)
        self._metrics = metrics or ForwarderMetrics()
        self._store = store
        self._runner = runner
        self._broker = broker
        self._endpoints = endpoints
        self._cache = cache
        # who owns a function never changes; a deletion (here or elsewhere) is noticed within a minute
        self._owners: TTLCache[uuid.UUID, uuid.UUID] = TTLCache(60.0)
        #: owner -> (their unfinished tasks per (endpoint, state), reused until this monotonic time)
        self._unfinished: TTLCache[uuid.UUID, tuple[dict[tuple[uuid.UUID, TaskStatus], int], float]] = TTLCache(
            600.0, max_entries=10_000
        )
        quotas = settings.quotas
        self._rate = SubmitRateLimiter(quotas.submit_requests_per_s, quotas.submit_burst)
        self._quota_reads = QuotaReads()
        self.submitted = 0

    # --- submission ---------------------------------------------------------------------

    async def submit(self, identity: Identity, endpoint_id: uuid.UUID, request: SubmitRequest) -> list[uuid.UUID]:
        """Store and publish a batch; returns the task ids in request order. `QuotaExceeded`
        (429) when a per-user quota refuses it: nothing is recorded."""
        self._rate.take(identity.user_id)
        endpoint, permission = await self._endpoints.submit_target(identity, endpoint_id)
        if self._endpoints.under_repair(endpoint_id):
            raise ServiceError(
                "the endpoint's broker queue is being repaired after a broker failure; nothing was recorded, "
                "retry shortly (the client does)",
                status=503,
                code=BROKER_UNAVAILABLE,
            )
        check_allowed_functions(endpoint, request.function_ids)
        if parent_of(endpoint) is not None:
            # a user endpoint runs as its user's account: only its parent's routing may fill it
            raise PermissionDenied(
                f"endpoint {endpoint_id} is a user endpoint of multi-user endpoint {parent_of(endpoint)}: "
                "submit to that endpoint",
                code=USER_ENDPOINT,
            )
        parent, user_key, shared_id = None, None, endpoint_id
        if is_multi_user(endpoint):
            # the user's own queues, never the parent's (design: forwarder/user_endpoints.py)
            parent = endpoint
            endpoint, user_key = await self._endpoints.user_endpoint(identity, parent, request.user_endpoint_config)
            endpoint_id = endpoint.endpoint_id
        bodies = await self._function_bodies(identity, request.function_ids)
        task_ids = (
            new_task_ids(len(request.tasks))
            if request.submission_id is None
            else submission_task_ids(identity.user_id, request.submission_id, len(request.tasks))
        )
        await self._check_quotas(
            identity,
            len(request.tasks),
            retry_of=task_ids[0] if request.submission_id else None,
            grant=None if permission.is_owner else (shared_id, permission),
        )
        new_tasks = [
            NewTask(
                task_id=task_id,
                function_id=task.function_id,
                payload=task.payload,
                walltime_s=task.walltime_s,
                resource_specification=task.resource_specification,
            )
            for task_id, task in zip(task_ids, request.tasks, strict=True)
        ]
        now = time.time()
        try:
            await self._runner.write(
                self._store.tasks.insert,
                owner_id=identity.user_id,
                endpoint_id=endpoint_id,
                client_python=request.client_python,
                new_tasks=new_tasks,
                created_at=now,
                task_group_id=request.task_group_id,
            )
        except StoreConflict:
            if request.submission_id is None:
                raise
            # stored by an earlier attempt, which may have died before its publish was confirmed:
            # publish the still-waiting ones again (a copy the broker took is the same task)
            waiting = await self._accepted_before(identity, endpoint_id, new_tasks)
            again = [task for task in new_tasks if task.task_id in waiting]
            if again:
                await self._publish_or_withdraw(
                    identity, endpoint_id, endpoint.queue_secret, again, bodies, request, now
                )
                if parent is not None and user_key is not None:
                    await self._endpoints.announce_user_endpoint(parent, endpoint, user_key)
            return task_ids
        await self._publish_or_withdraw(identity, endpoint_id, endpoint.queue_secret, new_tasks, bodies, request, now)
        if parent is not None and user_key is not None:
            await self._endpoints.announce_user_endpoint(parent, endpoint, user_key)
        self.submitted += len(new_tasks)
        self._quota_reads.accepted(identity.user_id, len(new_tasks))
        self._metrics.tasks_submitted(endpoint_id, len(new_tasks))
        if not permission.is_owner:
            await self._endpoints.sharing.submitted(identity, shared_id, task_ids, now=now)
        return task_ids

    async def _check_quotas(
        self,
        identity: Identity,
        adding: int,
        *,
        retry_of: uuid.UUID | None,
        grant: tuple[uuid.UUID, EndpointPermission] | None = None,
    ) -> None:
        """The store-backed quotas, and the limits of the caller's grant on another user's
        endpoint (`grant`: the endpoint and the caller's permission). A retry of a submission
        already stored (its first task id, `retry_of`, is known) passes: it records nothing new,
        and refusing it would leave the client unsure whether its tasks were accepted."""
        try:
            await self._check_store_quotas(identity, adding)
            if grant is not None and grant[1].limits.any:
                await self._endpoints.sharing.check_limits(identity, grant[0], grant[1].limits, adding, now=time.time())
        except QuotaExceeded:
            if retry_of is None or not await self._runner.read(self._store.tasks.get_many, [retry_of], results=False):
                raise

    async def _check_store_quotas(self, identity: Identity, adding: int) -> None:
        """Unfinished tasks and today's result bytes (one read each, skipped while the last read,
        at most a second old, clearly leaves room: `QuotaReads`)."""
        quotas, now = self._settings.quotas, time.time()
        if not (quotas.max_pending_tasks_per_user or quotas.max_result_bytes_per_day):
            return
        day = utc_day(now)
        if self._quota_reads.passes(quotas, identity.user_id, adding=adding, day=day):
            return
        pending = used = 0
        if quotas.max_pending_tasks_per_user:
            pending = await self._runner.read(self._store.quotas.pending_tasks, identity.user_id)
        if quotas.max_result_bytes_per_day:
            used = await self._runner.read(self._store.quotas.result_bytes, identity.user_id, day)
        self._quota_reads.record(identity.user_id, pending=pending, result_bytes=used, day=day)
        check_pending_tasks(quotas, pending=pending, adding=adding)
        check_result_bytes(quotas, used=used, now=now)

    async def _publish_or_withdraw(
        self,
        identity: Identity,
        endpoint_id: uuid.UUID,
        queue_secret: str,
        new_tasks: list[NewTask],
        bodies: dict[uuid.UUID, FunctionBody],
        request: SubmitRequest,
        now: float,
    ) -> None:
        """Publish stored tasks; if the broker does not confirm, withdraw them and answer 503."""
        messages = plan_task_batches(
            new_tasks,
            bodies,
            max_tasks=self._settings.publish_batch_tasks,
            max_bytes=self._settings.publish_batch_bytes,
            client_python=request.client_python,
            submitted_at=now,
            task_group_id=request.task_group_id,
            user=identity.username,
            offer=self._upload_offer,
        )
        queues = self._broker.queues_of(endpoint_id, queue_secret)
        try:
            await self._publish(queues, [pack(message) for message in messages])
        except BrokerError as exc:
            self._metrics.broker_error("publish")
            await self._withdraw([task.task_id for task in new_tasks])
            log.warning("the broker did not confirm %d tasks for endpoint %s: %s", len(new_tasks), endpoint_id, exc)
            raise ServiceError(
                f"the broker did not confirm the tasks in time ({exc}): they were not recorded, but a copy "
                "the broker took may still run. Retry with the same submission_id (the client does): the "
                "retry names the same tasks and never makes second ones",
                status=503,
                code=BROKER_UNAVAILABLE,
            ) from None

    async def _accepted_before(
        self, identity: Identity, endpoint_id: uuid.UUID, new_tasks: list[NewTask]
    ) -> set[uuid.UUID]:
        """A retried submission whose tasks are stored already (409 if they are not the same
        tasks); returns the ids of those still waiting."""
        task_ids = [task.task_id for task in new_tasks]
        found = await self._runner.read(self._store.tasks.get_many, task_ids, results=False)
        same = len(found) == len(task_ids) and all(
            (record := found.get(task.task_id)) is not None
            and record.owner_id == identity.user_id
            and record.endpoint_id == endpoint_id
            and record.function_id == task.function_id
            for task in new_tasks
        )
        if not same:
            raise ServiceError(
                "submission_id was used before for a different batch (another endpoint or other functions)",
                status=409,
                code=SUBMISSION_CONFLICT,
            )
        log.info("a retried submission of %d tasks was stored before: publishing the waiting ones again", len(task_ids))
        return {task_id for task_id, record in found.items() if record.status is TaskStatus.WAITING}

    async def _publish(self, queues: EndpointQueues, bodies: list[bytes]) -> None:
        """Publish and await every confirm together (the transport bounds each wait too)."""
        futures = self._broker.publish_task_messages(queues, bodies)
        waits = [asyncio.wrap_future(future) for future in futures]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self._settings.confirm_timeout_s + _CONFIRM_GRACE_S)
        except TimeoutError:
            raise PublishTimeout(f"no confirm from the broker for {len(bodies)} task messages") from None

    # --- cancellation -------------------------------------------------------------------

    async def cancel(
        self, identity: Identity, task_ids: Sequence[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, bool], list[TaskRecord]]:
        """Cancel the caller's unfinished tasks among `task_ids`: (id -> whether this call
        cancelled it, for every id asked; the records it cancelled, for the results stream)."""
        heads = await self._runner.read(self._store.tasks.pending_heads, identity.user_id, task_ids)
        by_endpoint: dict[uuid.UUID, list[uuid.UUID]] = {}
        for head in heads:
            by_endpoint.setdefault(head.endpoint_id, []).append(head.task_id)
        try:
            await self._announce_cancels(by_endpoint)
        except BrokerError as exc:
            self._metrics.broker_error("publish")
            log.warning("the broker did not confirm cancellations of %d tasks: %s", len(heads), exc)
            raise ServiceError(
                f"the broker did not confirm the cancellation in time ({exc}); nothing was cancelled",
                status=503,
                code=BROKER_UNAVAILABLE,
            ) from None
        moved = await self._runner.write(self._store.tasks.cancel, identity.user_id, list(task_ids), now=time.time())
        cancelled = {record.task_id for record in moved}
        cancelled |= await self._cancelled_by_their_endpoint(heads, cancelled)
        self._metrics.tasks_finished(moved)
        if moved:
            log.info("%s cancelled %d tasks", identity.username, len(moved))
        return {task_id: task_id in cancelled for task_id in task_ids}, moved

    async def _cancelled_by_their_endpoint(self, heads: Sequence[TaskRecord], moved: set[uuid.UUID]) -> set[uuid.UUID]:
        """Tasks this call announced that their endpoint cancelled first: the agent answers the
        control message with a cancelled outcome, which a result consumer may store before this
        call's own write (a fast hop on a busy machine). This call cancelled those too."""
        announced = [head.task_id for head in heads if head.task_id not in moved]
        if not announced:
            return set()
        records = await self._runner.read(self._store.tasks.get_many, announced, results=False)
        return {task_id for task_id, record in records.items() if record.status == TaskStatus.CANCELLED}

    async def _announce_cancels(self, by_endpoint: dict[uuid.UUID, list[uuid.UUID]]) -> None:
        """One `CancelTasks` per endpoint on its control queue; await every confirm together.
        An endpoint deleted meanwhile has failed its tasks already: it needs no message."""
        futures = []
        for endpoint_id, ids in by_endpoint.items():
            record = await self._runner.read(self._store.endpoints.get, endpoint_id)
            if record is None:
                continue
            queues = self._broker.queues_of(endpoint_id, record.queue_secret)
            futures.append(self._broker.publish_control_message(queues, pack(CancelTasks(task_ids=ids))))
        if not futures:
            return
        waits = [asyncio.wrap_future(future) for future in futures]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self._settings.confirm_timeout_s + _CONFIRM_GRACE_S)
        except TimeoutError:
            raise PublishTimeout(f"no confirm from the broker for {len(futures)} cancel messages") from None

    def forget_function(self, function_id: uuid.UUID) -> None:
        """A function was deleted: stop accepting tasks for it at once (on this replica)."""
        self._owners.discard(function_id)
        self._sharing.forget(function_id)

    def forget_function_access(self, function_id: uuid.UUID) -> None:
        """A function's sharing changed: decide afresh at its next submit (on this replica)."""
        self._sharing.forget(function_id)

    async def _withdraw(self, task_ids: list[uuid.UUID]) -> None:
        try:
            await self._runner.write(self._store.tasks.delete, task_ids)
        except Exception:  # the original failure is what the caller needs to hear about
            log.exception("could not withdraw %d unconfirmed tasks", len(task_ids))

    async def _function_bodies(self, identity: Identity, function_ids: set[uuid.UUID]) -> dict[uuid.UUID, FunctionBody]:
        """The bodies of functions the caller may run: their own (the fast path: owners are
        cached), or shared with them (404 for unknown functions and other users' private ones)."""
        owners = {function_id: owner for function_id in function_ids if (owner := self._owners.get(function_id))}
        unknown = function_ids - owners.keys()
        if unknown:
            stored = await self._runner.read(self._store.functions.owners, unknown)
            for function_id, owner in stored.items():
                self._owners.put(function_id, owner)
            owners.update(stored)
        for function_id in sorted(function_ids, key=str):
            if owners.get(function_id) is None:
                raise NotFoundError(f"no function {function_id}", code=NOT_FOUND)
        others = {function_id for function_id in function_ids if owners[function_id] != identity.user_id}
        if others:
            await self._sharing.check_runnable(identity, others)
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

    async def get(self, identity: Identity, task_id: uuid.UUID, *, results: bool = True) -> TaskRecord:
        """The caller's task (`results=False`: without reading a result kept in the blob store)."""
        found = await self._runner.read(self._store.tasks.get_many, [task_id], results=results)
        record = found.get(task_id)
        if record is None or record.owner_id != identity.user_id:
            raise NotFoundError(f"no task {task_id}", code=NOT_FOUND)
        return record

    async def result_body(self, identity: Identity, task_id: uuid.UUID) -> ResultBody:
        """The caller's task's result bytes, a blob checked whole (chunk by chunk, no copy) before
        it is streamed. 404: not the caller's task; 409 `RESULT_NOT_AVAILABLE`: no result (yet);
        500 `RESULT_INTEGRITY` naming the task: its blob is missing or does not match its digest."""
        record = await self.get(identity, task_id, results=False)
        if record.status is not TaskStatus.SUCCESS:
            raise ServiceError(
                f"task {task_id} has no result: it is {record.status.value}", status=409, code=RESULT_NOT_AVAILABLE
            )
        worker = record.worker_python
        if record.result is not None:
            data = record.result
            return ResultBody(task_id, len(data), hashlib.sha256(data).hexdigest(), worker, data=data)
        ref = record.blob_ref()  # read with the row above
        if ref is None:
            raise ServiceError(f"task {task_id} has no result", status=409, code=RESULT_NOT_AVAILABLE)
        try:
            if ref.size <= _READ_WHOLE_BYTES:  # one read and one digest, not two
                data = await self._runner.read(self._store.tasks.read_blob, ref)
                return ResultBody(task_id, ref.size, ref.sha256, worker, data=data)
            await self._runner.read(self._store.tasks.check_blob, ref)
        except (BlobIntegrityError, BlobMissing) as exc:
            log.error("result of task %s is unusable: %s", task_id, exc)
            raise ServiceError(
                f"the result of task {task_id} failed its integrity check: {exc}",
                status=500,
                code=ErrorCode.RESULT_INTEGRITY.value,
            ) from None
        chunks = self._store.tasks.blob_chunks(ref)
        return ResultBody(task_id, ref.size, ref.sha256, worker, chunks=chunks)

    async def get_many(
        self, identity: Identity, task_ids: Sequence[uuid.UUID], *, result_budget_bytes: int | None = None
    ) -> tuple[dict[uuid.UUID, TaskRecord], list[uuid.UUID]]:
        """(the caller's tasks by id, the ids that are unknown or not the caller's). Results kept
        in the blob store are read while they fit in `result_budget_bytes` (None: all)."""
        found = await self._runner.read(self._store.tasks.get_many, task_ids, result_budget_bytes=result_budget_bytes)
        mine = {task_id: record for task_id, record in found.items() if record.owner_id == identity.user_id}
        unknown = [task_id for task_id in task_ids if task_id not in mine]
        return mine, unknown

    async def list(self, query: TaskQuery) -> TaskPage:
        """One page of a listing; `query` names its owner, so only the caller's tasks are seen."""
        page: TaskPage = await self._runner.read(self._store.tasks.list_page, query)
        return page

    async def activity(self, identity: Identity, *, since: float, failures: int, failures_since: float) -> TaskActivity:
        """The caller's own task activity (see `TaskTable.activity`), never another user's tasks.
        The unfinished counts walk all the caller's tasks, so they are reused for a while: at
        least `ACTIVITY_UNFINISHED_CACHE_S`, and `ACTIVITY_UNFINISHED_COST_RATIO` times as long as
        the walk took, so that a user with a huge backlog who polls fast keeps a reader thread
        busy a tenth of the time at most."""
        unfinished = await self._unfinished_counts(identity.user_id)
        finished: TaskActivity = await self._runner.read(
            self._store.tasks.activity,
            identity.user_id,
            since=since,
            failures=failures,
            failures_since=failures_since,
        )
        return TaskActivity(counts={**unfinished, **finished.counts}, failures=finished.failures)

    async def _unfinished_counts(self, user_id: uuid.UUID) -> dict[tuple[uuid.UUID, TaskStatus], int]:
        cached = self._unfinished.get(user_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        started = time.monotonic()
        counts = await self._runner.read(self._store.tasks.unfinished_counts, user_id)
        elapsed = time.monotonic() - started
        reuse_s = max(ACTIVITY_UNFINISHED_CACHE_S, ACTIVITY_UNFINISHED_COST_RATIO * elapsed)
        self._unfinished.put(user_id, (counts, time.monotonic() + reuse_s))
        return counts
