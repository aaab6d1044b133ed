"""Storing what endpoints send back: results, status reports and dead letters.

One ingest thread takes verified messages from the consumers (a queue filled on the broker's IO
thread), groups up to `ingest_batch_messages` of them, and for each group:

1. stores all results in one transaction (`TaskTable.store_results`, on the store's writer
   thread), retrying with backoff while the store fails: deliveries stay unacked meanwhile;
2. acks the deliveries: only after the commit, so a crash re-delivers instead of losing;
3. hands the newly finished tasks to `on_finished` (the results stream).

Task starts (`TaskEvents`) in a group are stored first, in one transaction (`mark_started`:
`waiting` -> `running`, never from a finished state), then acked the same way. A start and its
task's result may arrive in either order: the store's guards make the outcome the same.

Status reports are acked at once and kept in memory; the latest per endpoint is written at most
every `status_flush_s`. Dead letters: a `TaskBatch` fails its still-waiting tasks with
`DEAD_LETTERED`, naming the broker's reason (`x-first-death-reason`). It is trusted only if the
forwarder itself published it (the broker-validated `user_id` survives dead-lettering), or if an
endpoint's own user published it, and then only for that endpoint's tasks. A `ResultBatch` that
ended there is stored under the same rule (results are never dropped for a transient fault).
Anything else is logged and dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from taskfabric.errors import ErrorCode, StoreError
from taskfabric.forwarder.broker import endpoint_id_of_username
from taskfabric.forwarder.consumers import DeadLetter, Incoming
from taskfabric.forwarder.records import StatusReport, TaskRecord
from taskfabric.forwarder.store import Failure, Store, StoreRunner
from taskfabric.logs import wrap_with_logs
from taskfabric.protocol import EndpointStatus, ResultBatch, TaskBatch, TaskEvents
from taskfabric.transport import Transport

__all__ = ["Ingestor", "StatusBook"]

log = logging.getLogger(__name__)

_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0


class StatusBook:
    """The latest status report per endpoint, and which are not written yet."""

    def __init__(self) -> None:
        self._latest: dict[uuid.UUID, StatusReport] = {}
        self._dirty: set[uuid.UUID] = set()
        self._lock = threading.Lock()

    def record(self, report: EndpointStatus, *, received_at: float) -> None:
        status = StatusReport(
            state=report.state,
            last_heartbeat_at=received_at,
            managers=report.managers,
            workers=report.workers,
            idle_workers=report.idle_workers,
            outstanding_tasks=report.outstanding_tasks,
            pending_blocks=report.pending_blocks,
            running_blocks=report.running_blocks,
            hostname=report.hostname,
            python_version=report.python_version,
            agent_version=report.agent_version,
        )
        with self._lock:
            self._latest[report.endpoint_id] = status
            self._dirty.add(report.endpoint_id)

    def latest(self, endpoint_id: uuid.UUID) -> StatusReport | None:
        with self._lock:
            return self._latest.get(endpoint_id)

    def forget(self, endpoint_id: uuid.UUID) -> None:
        with self._lock:
            self._latest.pop(endpoint_id, None)
            self._dirty.discard(endpoint_id)

    def take_dirty(self) -> list[tuple[uuid.UUID, StatusReport]]:
        with self._lock:
            dirty = [(endpoint_id, self._latest[endpoint_id]) for endpoint_id in self._dirty]
            self._dirty.clear()
        return dirty


class Ingestor:
    """The ingest thread (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        runner: StoreRunner,
        transport: Transport,
        *,
        forwarder_username: str,
        on_finished: Callable[[list[TaskRecord]], None],
        batch_messages: int = 64,
        status_flush_s: float = 1.0,
    ) -> None:
        self._store = store
        self._runner = runner
        self._transport = transport
        self._forwarder_username = forwarder_username
        self._on_finished = on_finished
        self._batch_messages = batch_messages
        self._status_flush_s = status_flush_s
        self.statuses = StatusBook()
        self._queue: queue.SimpleQueue[Incoming | DeadLetter | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._last_flush = time.monotonic()
        self.stored_results = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Incoming | DeadLetter) -> None:
        """Hand over a message (called on the broker's IO thread; never blocks)."""
        self._queue.put(item)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop after the group in progress; unprocessed deliveries stay unacked (the broker
        re-delivers them when the connection closes)."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._flush_statuses()

    # --- the loop -----------------------------------------------------------------------

    @wrap_with_logs
    def _run(self) -> None:
        while not self._stopping.is_set():
            group = self._take_group()
            if group:
                self._process(group)
            self._flush_statuses_if_due()

    def _take_group(self) -> list[Incoming | DeadLetter]:
        wait_s = self._status_flush_s if self._status_flush_s > 0 else 1.0
        try:
            first = self._queue.get(timeout=wait_s)
        except queue.Empty:
            return []
        group: list[Incoming | DeadLetter] = []
        item = first
        while item is not None:
            group.append(item)
            if len(group) >= self._batch_messages:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return group

    def _process(self, group: Sequence[Incoming | DeadLetter]) -> None:
        results = [item for item in group if isinstance(item, Incoming) and isinstance(item.message, ResultBatch)]
        events = [item for item in group if isinstance(item, Incoming) and isinstance(item.message, TaskEvents)]
        for item in group:
            if isinstance(item, Incoming) and isinstance(item.message, EndpointStatus):
                self.statuses.record(item.message, received_at=time.time())
                self._transport.ack(item.delivery)
        if events:
            self._store_events(events)
        if results:
            self._store_results(results)
        for item in group:
            if isinstance(item, DeadLetter):
                self._handle_dead_letter(item)

    # --- results ------------------------------------------------------------------------

    def _store_results(self, items: Sequence[Incoming]) -> None:
        batches = [(item.endpoint_id, item.message.results) for item in items if isinstance(item.message, ResultBatch)]
        finished = self._write_with_retry(lambda: self._store.tasks.store_results(batches, now=time.time()))
        if finished is None:
            return  # stopping: the deliveries stay unacked and come back
        for item in items:
            self._transport.ack(item.delivery)
        self.stored_results += len(finished)
        if finished:
            self._on_finished(finished)

    def _store_events(self, items: Sequence[Incoming]) -> None:
        batches = [(item.endpoint_id, item.message.started) for item in items if isinstance(item.message, TaskEvents)]

        def write() -> list[TaskRecord]:
            self._store.tasks.mark_started(batches)
            return []

        if self._write_with_retry(write) is None:
            return  # stopping: the deliveries stay unacked and come back
        for item in items:
            self._transport.ack(item.delivery)

    def _write_with_retry(self, write: Callable[[], list[TaskRecord]]) -> list[TaskRecord] | None:
        """Run a store write until it succeeds; None if stopping first."""
        delay = _RETRY_INITIAL_S
        while True:
            try:
                return self._runner.write_blocking(write)
            except StoreError as exc:
                log.error("a store write failed (%s); retrying in %.1f s", exc, delay)
            except RuntimeError:  # the runner shut down under us
                return None
            if self._stopping.wait(delay):
                return None
            delay = min(_RETRY_MAX_S, delay * 2)

    # --- status reports -----------------------------------------------------------------

    def _flush_statuses_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self._status_flush_s:
            self._last_flush = now
            self._flush_statuses()

    def _flush_statuses(self) -> None:
        dirty = self.statuses.take_dirty()
        if not dirty:
            return
        try:
            self._runner.write_blocking(self._store.endpoints.record_statuses, dirty)
        except (StoreError, RuntimeError) as exc:
            log.warning("could not record %d endpoint status reports: %s", len(dirty), exc)

    # --- dead letters -------------------------------------------------------------------

    def _handle_dead_letter(self, item: DeadLetter) -> None:
        try:
            handled = self._apply_dead_letter(item)
        except Exception:
            log.exception("dropping a dead letter that could not be handled")
            handled = True
        if handled:
            self._transport.ack(item.delivery)

    def _apply_dead_letter(self, item: DeadLetter) -> bool:
        """Record what a dead letter means; False if stopping before it was recorded."""
        delivery, message = item.delivery, item.message
        reason = str(delivery.headers.get("x-first-death-reason", "unknown"))
        trusted, endpoint_id = self._dead_letter_publisher(delivery.user_id)
        if not trusted:
            log.warning("dropping a dead letter published by untrusted user %r", delivery.user_id)
            return True
        if isinstance(message, TaskBatch):
            failure = Failure(ErrorCode.DEAD_LETTERED.value, _dead_letter_reason(reason, delivery.delivery_count))
            ids = [task.task_id for task in message.tasks]
            failed = self._write_with_retry(
                lambda: self._store.tasks.fail(ids, failure, now=time.time(), endpoint_id=endpoint_id)
            )
            if failed is None:
                return False
            log.warning("dead letter (%s): failed %d of its %d tasks", reason, len(failed), len(ids))
        elif isinstance(message, ResultBatch) and endpoint_id is not None:
            batches = [(endpoint_id, message.results)]
            failed = self._write_with_retry(lambda: self._store.tasks.store_results(batches, now=time.time()))
            if failed is None:
                return False
            log.warning("dead-lettered result batch (%s): stored %d results", reason, len(failed))
        else:
            kind = type(message).__name__ if message is not None else "undecodable message"
            log.warning("dropping a dead letter (%s, reason %s)", kind, reason)
            return True
        if failed:
            self._on_finished(failed)
        return True

    def _dead_letter_publisher(self, user_id: str | None) -> tuple[bool, uuid.UUID | None]:
        """(trusted?, the endpoint it speaks for: None = any)."""
        if user_id == self._forwarder_username:
            return True, None
        endpoint_id = endpoint_id_of_username(user_id)
        return endpoint_id is not None, endpoint_id


def _dead_letter_reason(reason: str, deliveries: int) -> str:
    if reason == "delivery_limit":
        return (
            f"the broker dead-lettered the task after {deliveries} deliveries (delivery_limit): "
            "its message was never acknowledged by the endpoint (a poison message or a crashing agent)"
        )
    if reason == "rejected":
        return "the broker dead-lettered the task (rejected): the endpoint refused its message"
    return f"the broker dead-lettered the task ({reason})"
