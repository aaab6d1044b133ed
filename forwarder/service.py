"""The forwarder assembled: store, broker link, consumers, ingestor, registries, results hub.

`Forwarder.start()` opens the store (migrating it), connects to the broker and declares the shared
topology, starts the ingest thread, consumes every registered endpoint's result queue and the
dead-letter queue, and starts its housekeeping loops (expired results; consumers of endpoints
registered through other replicas; endpoint queues a broker crash broke, see queue_health.py).
`stop()` undoes it in reverse order. The HTTP layer (`app`)
only calls the registries and services exposed here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from taskfabric.errors import AuthenticationError, ServiceError, TaskfabricError
from taskfabric.forwarder.allow_lists import AllowLists
from taskfabric.forwarder.audit import AuditLog
from taskfabric.forwarder.auth import (
    AUTHENTICATION_REQUIRED,
    INVALID_TOKEN,
    TOKEN_REVOKED,
    AuthProvider,
    make_provider,
)
from taskfabric.forwarder.batching import FunctionBodyCache
from taskfabric.forwarder.blobs import open_blob_store
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.consumer_pool import ConsumerConnections
from taskfabric.forwarder.consumers import ResultConsumers
from taskfabric.forwarder.data_refs import DataRefSigner, load_or_create_key
from taskfabric.forwarder.data_uploads import DataUploads
from taskfabric.forwarder.endpoint_sharing import EndpointSharing
from taskfabric.forwarder.endpoints import EndpointRegistry
from taskfabric.forwarder.fresh_uploads import FreshUploads
from taskfabric.forwarder.functions import FunctionRegistry
from taskfabric.forwarder.globus_compute.results import ComputeResultRelay
from taskfabric.forwarder.groups import GroupService
from taskfabric.forwarder.ingest import Ingestor
from taskfabric.forwarder.leases import LeaseKeeper, replica_name
from taskfabric.forwarder.metrics import ForwarderMetrics
from taskfabric.forwarder.quotas import utc_day
from taskfabric.forwarder.records import Identity, TaskRecord
from taskfabric.forwarder.replicas import ReplicaFanout
from taskfabric.forwarder.result_limits import ResultLimits
from taskfabric.forwarder.result_uploads import ResultUploads, ResultUploadSigner, UploadOffer
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.store.engine import redact_db_url
from taskfabric.forwarder.stream import ResultHub, StreamLimits
from taskfabric.forwarder.tasks import TaskService
from taskfabric.transport import redact_url

__all__ = ["ONCE_ONLY_JOBS", "Forwarder"]

#: the leases of work only one replica does at a time (forwarder/leases.py)
ONCE_ONLY_JOBS = ("expire-results", "rebuild-queues")

log = logging.getLogger(__name__)


class Forwarder:
    """The running service's parts. Create, `await start()`, use, `await stop()`."""

    def __init__(
        self,
        settings: ForwarderSettings,
        *,
        metrics: ForwarderMetrics | None = None,
        broker: AdminBrokerLink | None = None,
    ) -> None:
        """`broker` defaults to the real administrator link (RabbitMQ and its management API);
        unit tests pass one built on a `MemoryTransport`."""
        self.settings = settings
        self._broker = broker
        self.metrics = metrics or ForwarderMetrics(cache_s=settings.metrics_cache_s)
        self.hub = ResultHub()
        self.stream_limits = StreamLimits(
            buffer_bytes=settings.stream_buffer_bytes,
            max_ids_per_frame=settings.max_batch_tasks,
            poll_s=settings.stream_poll_s,
        )
        self._background: list[asyncio.Task[None]] = []
        #: this process among the forwarder replicas sharing the store (leases, fan-out)
        self.replica_id = uuid.uuid4()
        self.replica_name = replica_name(self.replica_id)
        #: the fan-out to other replicas (None on SQLite, or with `replica_fanout: false`)
        self.fanout: ReplicaFanout | None = None
        self._peer_reads: set[asyncio.Task[None]] = set()
        #: the leases of once-only jobs (set once the housekeeping loops start)
        self.leases: LeaseKeeper | None = None
        # token checks may wait on an identity provider: not on the store's reader threads
        self._auth_executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="auth")
        self._cleanups: list[Callable[[], None]] = []
        # set by start()
        self.store: Store
        self.data: DataUploads
        self.result_uploads: ResultUploads
        self.upload_offer: UploadOffer | None
        self.runner: StoreRunner
        self.auth: AuthProvider
        self.audit: AuditLog
        self.broker: AdminBrokerLink
        self.ingestor: Ingestor
        self.consumers: ResultConsumers
        self.consumer_connections: ConsumerConnections
        self.functions: FunctionRegistry
        self.allow_lists: AllowLists
        self.endpoints: EndpointRegistry
        self.tasks: TaskService
        self.groups: GroupService  # sharing: groups and their members
        #: the Globus-Compute-compatible API's result queues (None unless `globus_compute.enabled`)
        self.compute_results: ComputeResultRelay | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bring every part up; on failure, whatever was started is stopped again."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        log.info(
            "forwarder starting: store %s, broker %s",
            redact_db_url(settings.store_url),
            ", ".join(redact_url(url) for url in settings.broker_urls),
        )
        await self._open_store_and_auth()
        await self._connect_broker()
        self._start_ingest(asyncio.get_running_loop())
        self._build_services()
        await asyncio.to_thread(self.consumers.start_dead_letters)
        await self.endpoints.declare_existing_queues()
        await self.endpoints.sync_consumers()
        await self._start_fanout(asyncio.get_running_loop())
        self._start_background()
        log.info("forwarder started (%d endpoints), replica %s", len(self.consumers.endpoint_ids), self.replica_name)

    def _start_background(self) -> None:
        """The housekeeping loops. Once-only work runs where its lease is held (forwarder/leases.py):
        expiring results, and rebuilding broken queues (every replica examines them, to protect its
        own consumers; only the lease holder rebuilds). Every replica syncs its own consumers and
        keeps its fan-out queue declared."""
        settings = self.settings
        leases = self.leases = LeaseKeeper(
            self.store,
            self.runner,
            holder=self.replica_name,
            names=ONCE_ONLY_JOBS,
            ttl_s=settings.lease_ttl_s,
            exclusive=self.store.backend != "postgresql",  # SQLite: one forwarder process
        )
        jobs: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("expire-results", settings.cleanup_period_s, leases.guarded("expire-results", self.delete_expired)),
            ("sync-consumers", settings.endpoint_sync_period_s, self.endpoints.sync_consumers),
        ]

        async def check_queues() -> None:
            await self.endpoints.check_queues(may_rebuild=leases.held("rebuild-queues"))

        if settings.queue_check_period_s > 0:
            jobs.append(("check-queues", settings.queue_check_period_s, check_queues))
        if self.fanout is not None:
            jobs.append(("ensure-fanout", settings.endpoint_sync_period_s, self._ensure_fanout))
        self._background = [asyncio.create_task(leases.keep(), name="leases")]
        for name, period_s, job in jobs:
            self._background.append(asyncio.create_task(self._every(period_s, job), name=name))

    async def _start_fanout(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fan-out between replicas: only where there can be replicas (a PostgreSQL store)."""
        if self.store.backend != "postgresql" or not self.settings.replica_fanout:
            return

        def on_notice(task_ids: list[uuid.UUID]) -> None:  # on the broker's IO thread
            loop.call_soon_threadsafe(self._finished_elsewhere, task_ids)

        def announce(task_ids: list[uuid.UUID]) -> None:  # on the event loop
            fanout.announce(task_ids)
            self.metrics.replica_notice("sent")

        fanout = ReplicaFanout(
            self.broker.transport, self.broker.topology, on_notice=on_notice, replica_id=self.replica_id
        )
        await asyncio.to_thread(fanout.start)
        self._cleanups.append(fanout.close)
        self.fanout = fanout
        self.hub.announce = announce

    async def _ensure_fanout(self) -> None:
        if self.fanout is not None:
            await asyncio.to_thread(self.fanout.ensure)

    def _finished_elsewhere(self, task_ids: list[uuid.UUID]) -> None:
        """A peer stored these tasks' outcomes: read the ones our streams wait for, serve them."""
        self.metrics.replica_notice("received")
        watched = self.hub.finished_elsewhere(task_ids)
        if not watched:
            return
        read = asyncio.create_task(self._serve_from_store(watched), name="peer-results")
        self._peer_reads.add(read)
        read.add_done_callback(self._peer_reads.discard)

    async def _serve_from_store(self, task_ids: list[uuid.UUID]) -> None:
        try:
            # results kept in the blob store go to the streams as references, not read here
            records = await self.runner.read(self.store.tasks.get_many, task_ids, results=False)
        except TaskfabricError as exc:  # the store poll delivers them later
            log.warning("could not read %d tasks finished by another replica: %s", len(task_ids), exc)
            return
        self.hub.publish_from_peer(record for record in records.values() if record.finished)

    async def _open_store_and_auth(self) -> None:
        settings = self.settings
        blobs = await asyncio.to_thread(
            open_blob_store,
            str(settings.blob_store_url),
            s3_endpoint_url=settings.blob_s3_endpoint_url,
            s3_region=settings.blob_s3_region,
        )
        self.store = await asyncio.to_thread(
            Store.open,
            settings.store_url,
            pool_size=settings.db_read_threads + 2,
            blobs=blobs,
            blob_threshold_bytes=settings.blob_threshold_bytes,
        )
        self._cleanups.append(self.store.close)
        key = await asyncio.to_thread(_data_ref_key, settings)
        upload_url = settings.worker_upload_url()
        self.data = DataUploads(
            blobs,
            DataRefSigner(key),
            max_bytes=settings.max_data_bytes,
            ttl_s=min(settings.data_ref_ttl_s, settings.result_ttl_s),
            endpoint_url=upload_url,
        )
        signer = ResultUploadSigner(key)
        fresh = FreshUploads(max_bytes=settings.upload_memory_bytes, max_item_bytes=settings.upload_push_bytes)
        self.result_uploads = ResultUploads(blobs, signer, fresh if fresh.max_item_bytes > 0 else None)
        self.upload_offer = (
            UploadOffer(
                url=upload_url,
                threshold_bytes=settings.blob_threshold_bytes,
                max_bytes=settings.quotas.max_result_bytes,
                ttl_s=settings.result_ttl_s,
                signer=signer,
            )
            if upload_url is not None
            else None
        )
        self.runner = StoreRunner(read_threads=settings.db_read_threads, on_error=self.metrics.store_error)
        self._cleanups.append(self.runner.close)
        self.auth = make_provider(settings.auth, self.store.users)
        self._cleanups.append(self.auth.close)
        self.audit = AuditLog(settings.audit_log_path)
        self._cleanups.append(self.audit.close)
        self._cleanups.append(lambda: self._auth_executor.shutdown(wait=True))

    async def _connect_broker(self) -> None:
        self.broker = self._broker or AdminBrokerLink(self.settings)
        self._cleanups.append(self.broker.close)
        await asyncio.to_thread(self.broker.start)
        if self.settings.globus_compute.enabled:
            self.compute_results = ComputeResultRelay(self.settings, store=self.store, broker=self.broker)

    def _start_ingest(self, loop: asyncio.AbstractEventLoop) -> None:
        """The ingest thread, and the result consumers feeding it."""

        relay = self.compute_results

        fresh = self.result_uploads.fresh

        def on_finished(records: Sequence[TaskRecord]) -> None:  # called on the ingest thread
            if fresh is not None:
                fresh.attach(records)  # uploads still in memory go out whole on the results stream
            self.metrics.tasks_finished(records)
            if relay is not None:
                relay.relay(records)
            loop.call_soon_threadsafe(self.hub.publish, records)

        def on_replayed(records: Sequence[TaskRecord]) -> None:  # on the ingest thread
            # finished before (a replica died before acking them): stream and announce them
            # again; a stream sends each result once, and they are not counted twice
            loop.call_soon_threadsafe(self.hub.publish, records)

        self.consumer_connections = ConsumerConnections(
            self.broker.transport,
            per_connection=self.settings.quotas.consumers_per_connection,
            open_transport=self.broker.consumer_transport_factory(),
            connect_timeout_s=self.settings.broker_connect_timeout_s,
        )
        self._cleanups.append(self.consumer_connections.close)
        self.ingestor = Ingestor(
            self.store,
            self.runner,
            self.consumer_connections,
            forwarder_username=self.broker.username,
            on_finished=on_finished,
            on_replayed=on_replayed,
            batch_messages=self.settings.ingest_batch_messages,
            status_flush_s=self.settings.status_flush_s,
            metrics=self.metrics,
            limits=ResultLimits(
                max_result_bytes=self.settings.quotas.max_result_bytes,
                max_results_per_message=self.settings.quotas.max_results_per_message,
                receipts=self.result_uploads.signer,
            ),
            group_results=self.settings.quotas.ingest_group_results,
            transaction_s=self.settings.quotas.ingest_transaction_s,
            contended_transaction_s=self.settings.quotas.ingest_contended_transaction_s,
        )
        self.ingestor.start()
        self._cleanups.append(self.ingestor.stop)
        self.consumers = ResultConsumers(
            self.consumer_connections, self.broker.topology, self.ingestor.put, prefetch=self.settings.result_prefetch
        )
        self._cleanups.append(self.consumers.close)

    def _build_services(self) -> None:
        cache = FunctionBodyCache(self.settings.function_cache_bytes)
        self.functions = FunctionRegistry(self.store, self.runner, cache)
        self.allow_lists = AllowLists(self.store, self.runner)
        self.endpoints = EndpointRegistry(
            self.settings,
            store=self.store,
            runner=self.runner,
            broker=self.broker,
            consumers=self.consumers,
            statuses=self.ingestor.statuses,
            on_failed=self.finished,
            sharing=EndpointSharing(self.store, self.runner),  # endpoint sharing (issue 13)
        )
        self._cleanups.append(self.endpoints.close)
        self.tasks = TaskService(
            self.settings,
            store=self.store,
            runner=self.runner,
            broker=self.broker,
            endpoints=self.endpoints,
            cache=cache,
            metrics=self.metrics,
            sharing=self.functions.sharing,
            upload_offer=self.upload_offer,
        )
        self.groups = GroupService(self.store, self.runner)

    async def stop(self) -> None:
        """Stop the housekeeping loops (releasing their leases), then every part in reverse order
        of starting."""
        for task in [*self._background, *self._peer_reads]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        if self.leases is not None:
            with contextlib.suppress(Exception):
                await self.leases.release_all()
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                await asyncio.to_thread(cleanup)
            except Exception:
                log.exception("error while stopping the forwarder")
        log.info("forwarder stopped")

    # --- services -----------------------------------------------------------------------

    def finished(self, records: Sequence[TaskRecord]) -> None:
        """Tasks the forwarder finished itself (on the event loop): count them, stream them."""
        self.metrics.tasks_finished(records)
        self.hub.publish(records)
        if self.compute_results is not None:  # rare (an endpoint deleted): a short store read
            self.compute_results.relay(records)

    async def authenticate(self, token: str | None, *, peer: str = "") -> Identity:
        """The identity of a bearer token (`AuthenticationError` if missing or not accepted,
        `PermissionDenied` for a disabled user). Acceptances that were checked against the store or
        identity provider and every refusal are audited, with the client's address `peer`."""
        if not token:
            raise AuthenticationError(
                "a bearer token is required (Authorization: Bearer <token>)", code=AUTHENTICATION_REQUIRED
            )
        known = self.auth.cached(token)  # most requests: no thread hop, no database read
        if known is not None:
            return known
        try:
            identity = await asyncio.wrap_future(self._auth_executor.submit(self.auth.authenticate, token))
        except ServiceError as exc:
            if exc.status in (401, 403):
                log.info("refused a token from %s: %s", peer or "?", exc.code)
                self.audit.record("login_refused", user="", peer=peer, outcome=exc.code)
            raise
        self.audit.record("login", user=identity.username, peer=peer)
        return identity

    async def recheck(self, token: str, identity: Identity) -> str | None:
        """Whether `token` is still accepted for `identity` (not from the cache): None if so, else
        the refusal ("CODE: message"). An identity provider that cannot answer is not a refusal."""
        try:
            current = await asyncio.wrap_future(self._auth_executor.submit(self.auth.revalidate, token))
        except ServiceError as exc:
            if exc.status not in (401, 403):
                return None
            code = TOKEN_REVOKED if exc.code == INVALID_TOKEN else exc.code
            self.audit.record("stream_closed", user=identity.username, peer="", outcome=code)
            return f"{code}: {exc}"
        if current.user_id != identity.user_id:
            return f"{TOKEN_REVOKED}: the token now names another user"
        return None

    @property
    def recheck_s(self) -> float:
        """How often results streams re-check their token: the auth cache period (at least 1 s)."""
        return max(1.0, self.auth.recheck_s)

    async def delete_expired(self) -> None:
        """Delete tasks finished more than `result_ttl_s` ago, a chunk at a time."""
        before = time.time() - self.settings.result_ttl_s
        total = 0
        while True:
            deleted = await self.runner.write(self.store.tasks.delete_expired, before)
            total += deleted
            if deleted == 0:
                break
        if total:
            log.info("deleted %d expired tasks", total)
        swept = await self.runner.write(self.store.tasks.sweep_blobs, before)
        if swept:
            log.info("deleted %d expired blobs (their tasks were deleted, or a crash left them)", swept)
        # the daily result-bytes counts: today's and yesterday's are all the quota reads
        await self.runner.write(self.store.quotas.prune_result_bytes, utc_day(time.time()) - 1)
        # the daily counts of cross-user submissions (per-grant max_tasks_per_day): today's only
        await self.runner.write(self.store.access.prune_submissions, utc_day(time.time()) - 1)
        # Globus Compute task groups older than any task they could hold (forwarder/globus_compute/)
        await self.runner.write(self.store.compute_groups.delete_older_than, before)

    @staticmethod
    async def _every(period_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await job()
            except TaskfabricError as exc:
                log.warning("%s failed: %s", getattr(job, "__name__", job), exc)
            except Exception:
                log.exception("%s failed", getattr(job, "__name__", job))


def _data_ref_key(settings: ForwarderSettings) -> bytes:
    path = settings.data_ref_key_path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return load_or_create_key(path)
