"""Storing what endpoints send back: results, status reports and dead letters.

One ingest thread takes verified messages from the consumers (a `FairQueue` filled on the broker's
IO thread: endpoints take turns, so one endpoint's flood delays another's results by one bounded
transaction), groups up to `ingest_batch_messages` of them (and about as many results as the store
writes in `quotas.ingest_transaction_s`, at most `quotas.ingest_group_results`: measured as it goes,
so a transaction stays short on a slow or busy machine too), and for each group:

1. screens the results (`result_limits.py`: an oversized result or a message with too many results
   becomes a `RESULT_TOO_LARGE` outcome) and stores them in one transaction
   (`TaskTable.store_results`, on the store's writer thread), retrying with backoff while the store
   fails: deliveries stay unacked meanwhile;
2. hands the newly finished tasks to `on_finished` (the results streams, and through them the
   other forwarder replicas' fan-out, forwarder/replicas.py): before the acks, so that a
   replica killed after acking has at least handed them on;
3. acks the deliveries: only after the commit, so a crash re-delivers instead of losing;
4. adds the stored result bytes to each owner's daily count (`quotas.max_result_bytes_per_day`):
   in memory, written with the status reports every `status_flush_s` (best effort: a failure is
   logged, the results are not stored twice);
5. for re-delivered messages (a replica died between its commit and its acks), reads the tasks
   they report that were finished already and hands them to `on_replayed`: the dead replica may
   never have announced them, and streams on the other replicas would wait for their store poll.

Task starts (`TaskEvents`) in a group are stored first, in one transaction (`mark_started`:
`waiting` -> `running`, never from a finished state), then acked the same way. A start and its
task's result may arrive in either order: the store's guards make the outcome the same.

Status reports are acked at once and kept in memory; the latest per endpoint is written at most
every `status_flush_s`. Dead letters: every one is kept in the store (`dead_letters`, one entry
per task of a task batch) for `taskfabric admin dead-letters`, and its task ids are logged. A
`TaskBatch` fails its still-waiting tasks with `DEAD_LETTERED`, naming the broker's reason
(`x-first-death-reason`), unless the agent that dead-lettered it reports the outcome itself
(header `x-taskfabric-outcome-reported`, e.g. `WORKER_LOST` after its retries): then the agent's
error result is the task's one outcome, whichever arrives first. It is trusted only if the
forwarder itself published it (the broker-validated `user_id` survives dead-lettering), or if an
endpoint's own user published it, and then only for that endpoint's tasks. A `ResultBatch` that
ended there is stored under the same rule (results are never dropped for a transient fault).
Anything else is kept without a task id (not re-queueable) and logged.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from taskfabric.broker_config import endpoint_id_of_username
from taskfabric.errors import ErrorCode, StoreError
from taskfabric.forwarder.consumers import DeadLetter, Incoming
from taskfabric.forwarder.fair_queue import FairQueue
from taskfabric.forwarder.metrics import ForwarderMetrics
from taskfabric.forwarder.quotas import utc_day
from taskfabric.forwarder.records import DeadLetterRecord, StatusReport, TaskRecord
from taskfabric.forwarder.result_limits import ResultLimits, result_bytes_by_owner
from taskfabric.forwarder.store import Failure, Store, StoreRunner
from taskfabric.forwarder.store._sql import clean_text
from taskfabric.logs import wrap_with_logs
from taskfabric.protocol import EndpointStatus, ResultBatch, Task, TaskBatch, TaskEvents, pack
from taskfabric.transport import Delivery, Transport

__all__ = ["Ingestor", "StatusBook"]

log = logging.getLogger(__name__)

_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0
#: set by an agent on a task it dead-letters after reporting the task's error result itself
OUTCOME_REPORTED_HEADER = "x-taskfabric-outcome-reported"
#: the agent's explanation of why it gave up on the task
REASON_HEADER = "x-taskfabric-reason"
_REASON_LIMIT = 4096
#: the smallest group the transaction target shrinks to (per-transaction costs dominate below it)
_MIN_GROUP_RESULTS = 64
#: more than one endpoint sent results within this many seconds: ingest transactions stay short
CONTENDED_WINDOW_S = 5.0
#: task ids named one per log line for each dead letter; the rest are counted
_LOGGED_TASK_IDS = 20


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
            scaling=report.scaling,
            status_reason=report.status_reason,
            blocks=tuple(report.blocks),
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


class GroupSizer:
    """How many results one ingest transaction may take: about what the store writes in
    `target_s` (a moving average of its speed), between `_MIN_GROUP_RESULTS` and `max_results`.
    A short transaction is what another endpoint's result waits for behind a flood."""

    def __init__(self, *, max_results: int, target_s: float) -> None:
        self._max_results = max_results
        self._target_s = target_s
        self._seconds_per_result: float | None = None
        self.results = max_results

    def observe(self, results: int, seconds: float) -> None:
        if results <= 0:
            return
        sample = seconds / results
        previous = self._seconds_per_result
        self._seconds_per_result = sample if previous is None else 0.7 * previous + 0.3 * sample
        self.results = self.results_for(self._target_s)

    def results_for(self, target_s: float) -> int:
        """About as many results as the store writes in `target_s`, within the bounds."""
        per_result = self._seconds_per_result
        fit = int(target_s / per_result) if per_result is not None and per_result > 0 else self._max_results
        return max(min(_MIN_GROUP_RESULTS, self._max_results), min(self._max_results, fit))


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
        on_replayed: Callable[[list[TaskRecord]], None] | None = None,
        batch_messages: int = 64,
        status_flush_s: float = 1.0,
        metrics: ForwarderMetrics | None = None,
        limits: ResultLimits | None = None,
        group_results: int = 4096,
        transaction_s: float = 0.05,
        contended_transaction_s: float = 0.01,
    ) -> None:
        """`limits`: the forwarder's result limits (default: none beyond the broker's own);
        `group_results`, `transaction_s`: a group stops growing past this many results, or past
        as many as the store writes in that long (fair ingest); `contended_transaction_s` instead
        while more than one endpoint sent results within the last `CONTENDED_WINDOW_S`."""
        self._store = store
        self._metrics = metrics
        self._runner = runner
        self._transport = transport
        self._forwarder_username = forwarder_username
        self._on_finished = on_finished
        self._on_replayed = on_replayed
        self._batch_messages = batch_messages
        self._status_flush_s = status_flush_s
        self._limits = limits or ResultLimits(max_result_bytes=1 << 62, max_results_per_message=1 << 62)
        self._sizer = GroupSizer(max_results=group_results, target_s=transaction_s)
        self._contended_s = min(contended_transaction_s, transaction_s)
        self.statuses = StatusBook()
        #: result bytes stored and not yet added to the daily counts: day -> owner -> bytes
        self._result_bytes: dict[int, dict[uuid.UUID, int]] = {}
        self._queue: FairQueue[Incoming | DeadLetter] = FairQueue(weight=_weight)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._last_flush = time.monotonic()
        self.stored_results = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Incoming | DeadLetter) -> None:
        """Hand over a message (called on the broker's IO thread; never blocks)."""
        self._queue.put(item.endpoint_id if isinstance(item, Incoming) else None, item)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop after the group in progress; unprocessed deliveries stay unacked (the broker
        re-delivers them when the connection closes)."""
        self._stopping.set()
        self._queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._flush_statuses()
        self._flush_result_bytes()

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
        return self._queue.take_group(max_items=self._batch_messages, max_weight=self.group_results(), timeout_s=wait_s)

    def group_results(self) -> int:
        """The next group's size in results: short transactions while several endpoints send (one
        waits for the transaction in progress), long ones for throughput while one is alone."""
        if self._queue.active_sources(CONTENDED_WINDOW_S) > 1:
            return self._sizer.results_for(self._contended_s)
        return self._sizer.results

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
        batches = [
            (item.endpoint_id, self._limits.screen(item.message.results))
            for item in items
            if isinstance(item.message, ResultBatch)
        ]
        started = time.monotonic()
        finished = self._write_with_retry(lambda: self._store.tasks.store_results(batches, now=time.time()))
        if finished is None:
            return  # stopping: the deliveries stay unacked and come back
        self._sizer.observe(sum(len(results) for _, results in batches), time.monotonic() - started)
        if finished:
            self._on_finished(finished)
        for item in items:
            self._transport.ack(item.delivery)
        self._count_result_bytes(finished)
        self.stored_results += len(finished)
        if self._metrics is not None:
            for endpoint_id, results in batches:
                self._metrics.results_ingested(endpoint_id, messages=1, results=len(results))
        self._replay_redelivered(items, finished)

    def _replay_redelivered(self, items: Sequence[Incoming], finished: Sequence[TaskRecord]) -> None:
        """Hand on the tasks re-delivered messages report that were finished before (see step 5)."""
        if self._on_replayed is None:
            return
        fresh = {record.task_id for record in finished}
        task_ids = [
            result.task_id
            for item in items
            if item.delivery.redelivered and isinstance(item.message, ResultBatch)
            for result in item.message.results
            if result.task_id not in fresh
        ]
        if not task_ids:
            return
        try:
            records = self._store.tasks.get_many(task_ids, results=False)  # for the streams: blobs by reference
        except StoreError as exc:  # the streams' store poll finds them
            log.warning("could not read %d re-delivered results: %s", len(task_ids), exc)
            return
        replayed = [record for record in records.values() if record.finished]
        if replayed:
            self._on_replayed(replayed)

    def _count_result_bytes(self, finished: Sequence[TaskRecord]) -> None:
        """Add stored result bytes to their owners' daily counts, in memory; written with the
        status reports (`_flush_result_bytes`). Apart from the results' transaction: retrying it
        after a failure here would find them stored and stream nothing."""
        by_owner = result_bytes_by_owner(finished)
        if not by_owner:
            return
        counts = self._result_bytes.setdefault(utc_day(time.time()), {})
        for owner, size in by_owner.items():
            counts[owner] = counts.get(owner, 0) + size

    def _flush_result_bytes(self) -> None:
        """Write the counted result bytes (best effort: a failure is logged, and those bytes are
        not counted; a forwarder killed -9 loses at most one flush interval of them)."""
        pending, self._result_bytes = self._result_bytes, {}
        for day, by_owner in pending.items():
            try:
                self._runner.write_blocking(self._store.quotas.add_result_bytes, by_owner, day)
            except (StoreError, RuntimeError) as exc:
                log.warning("could not count %d users' result bytes: %s", len(by_owner), exc)

    def _store_events(self, items: Sequence[Incoming]) -> None:
        batches = [(item.endpoint_id, item.message.started) for item in items if isinstance(item.message, TaskEvents)]

        def write() -> list[TaskRecord]:
            self._store.tasks.mark_started(batches)
            return []

        if self._write_with_retry(write) is None:
            return  # stopping: the deliveries stay unacked and come back
        for item in items:
            inventory_at = item.message.inventory_at if isinstance(item.message, TaskEvents) else None
            if inventory_at is not None and not self._reconcile_inventory(item, inventory_at):
                return
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

    # --- task events -------------------------------------------------------------------

    def _reconcile_inventory(self, item: Incoming, inventory_at: float) -> bool:
        """An agent's inventory after its task queue was rebuilt: fail the tasks lost with the old
        queue (forwarder/queue_health.py). False if stopping first."""
        held = set(item.message.held) if isinstance(item.message, TaskEvents) else set()
        failed = self._write_with_retry(
            lambda: self._store.tasks.fail_lost_in_rebuilt_queue(
                item.endpoint_id, held=held, inventory_at=inventory_at, now=time.time()
            )
        )
        if failed is None:
            return False  # stopping: the delivery stays unacked and comes back
        if failed:
            log.warning(
                "failed %d tasks of endpoint %s lost with its rebuilt task queue", len(failed), item.endpoint_id
            )
            self._on_finished(failed)
        return True

    # --- status reports -----------------------------------------------------------------

    def _flush_statuses_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self._status_flush_s:
            self._last_flush = now
            self._flush_statuses()
            self._flush_result_bytes()

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
        """Keep a dead letter and record what it means; False if stopping before it was recorded."""
        delivery, message = item.delivery, item.message
        trusted, endpoint_id = self._dead_letter_publisher(delivery.user_id)
        if isinstance(message, TaskBatch) and trusted:
            outcome_reported = endpoint_id is not None and delivery.headers.get(OUTCOME_REPORTED_HEADER) is True
            failed = self._write_with_retry(
                lambda: self._keep_task_batch(message, delivery, endpoint_id, outcome_reported=outcome_reported)
            )
        elif isinstance(message, ResultBatch) and endpoint_id is not None:
            batches = [(endpoint_id, self._limits.screen(message.results))]
            kept = _kept_message(delivery, endpoint_id)

            def store() -> list[TaskRecord]:
                self._store.dead_letters.add([kept])
                return self._store.tasks.store_results(batches, now=time.time())

            failed = self._write_with_retry(store)
            if failed is not None:
                self._count_result_bytes(failed)
                log.warning(
                    "dead-lettered result batch of endpoint %s (%s): stored %d results",
                    endpoint_id,
                    _broker_reason(delivery),
                    len(failed),
                )
        else:
            failed = self._keep_unattributed(delivery, message, trusted=trusted)
        if failed is None:
            return False
        if failed:
            self._on_finished(failed)
        return True

    def _keep_task_batch(
        self, batch: TaskBatch, delivery: Delivery, endpoint_id: uuid.UUID | None, *, outcome_reported: bool
    ) -> list[TaskRecord]:
        """Keep one entry per task and fail the tasks still waiting (unless the agent reports their
        outcome). Tasks of other endpoints than the publisher's are kept without a task id."""
        now = time.time()
        reason = _dead_letter_reason(delivery)
        ids = [task.task_id for task in batch.tasks]
        heads = self._store.tasks.get_many(ids, results=False)
        records = []
        mine: list[uuid.UUID] = []
        for task in batch.tasks:
            head = heads.get(task.task_id)
            if head is None or (endpoint_id is not None and head.endpoint_id != endpoint_id):
                records.append(_kept_message(delivery, endpoint_id, body=pack(_alone(batch, task)), now=now))
                continue
            mine.append(task.task_id)
            records.append(
                DeadLetterRecord(
                    dead_letter_id=uuid.uuid4(),
                    task_id=task.task_id,
                    endpoint_id=head.endpoint_id,
                    owner_id=head.owner_id,
                    reason=reason,
                    deliveries=delivery.delivery_count,
                    queue=_first_queue(delivery),
                    created_at=now,
                    body=pack(_alone(batch, task)),
                )
            )
        self._store.dead_letters.add(records)
        _log_dead_letter(mine, len(ids), reason, outcome_reported=outcome_reported)
        if outcome_reported or not mine:
            return []
        failure = Failure(ErrorCode.DEAD_LETTERED.value, reason)
        return self._store.tasks.fail(mine, failure, now=now, endpoint_id=endpoint_id)

    def _keep_unattributed(self, delivery: Delivery, message: object, *, trusted: bool) -> list[TaskRecord] | None:
        """Keep a dead letter that names no task we may attribute (undecodable, a status report,
        an untrusted publisher's): for inspection only."""
        kept = _kept_message(delivery, None)

        def keep() -> list[TaskRecord]:
            self._store.dead_letters.add([kept])
            return []

        stored = self._write_with_retry(keep)
        if stored is None:
            return None
        kind = type(message).__name__ if message is not None else "undecodable message"
        who = "" if trusted else f" published by untrusted user {delivery.user_id!r}"
        log.warning(
            "kept dead letter %s (%s%s, reason %s); it names no task of ours",
            kept.dead_letter_id,
            kind,
            who,
            _broker_reason(delivery),
        )
        return []

    def _dead_letter_publisher(self, user_id: str | None) -> tuple[bool, uuid.UUID | None]:
        """(trusted?, the endpoint it speaks for: None = any)."""
        if user_id == self._forwarder_username:
            return True, None
        endpoint_id = endpoint_id_of_username(user_id)
        return endpoint_id is not None, endpoint_id


def _weight(item: Incoming | DeadLetter) -> int:
    """A message's share of a group: its results (at least 1)."""
    message = item.message
    return max(1, len(message.results)) if isinstance(message, ResultBatch) else 1


def _broker_reason(delivery: Delivery) -> str:
    return str(delivery.headers.get("x-first-death-reason", "unknown"))


def _first_queue(delivery: Delivery) -> str:
    return clean_text(str(delivery.headers.get("x-first-death-queue") or delivery.routing_key), 256)


def _dead_letter_reason(delivery: Delivery) -> str:
    """Why the task was dead-lettered: the agent's words when it gave them, else the broker's."""
    agent_reason = delivery.headers.get(REASON_HEADER)
    if isinstance(agent_reason, str | bytes) and agent_reason:
        text = agent_reason.decode(errors="replace") if isinstance(agent_reason, bytes) else agent_reason
        return clean_text(f"the endpoint gave up on the task: {text}", _REASON_LIMIT)
    reason = _broker_reason(delivery)
    if reason == "delivery_limit":
        return (
            f"the broker dead-lettered the task after {delivery.delivery_count} deliveries (delivery_limit): "
            "its message was never acknowledged by the endpoint (a poison message or a crashing agent)"
        )
    if reason == "rejected":
        return "the broker dead-lettered the task (rejected): the endpoint refused its message"
    return clean_text(f"the broker dead-lettered the task ({reason})", _REASON_LIMIT)


def _alone(batch: TaskBatch, task: Task) -> TaskBatch:
    """A task batch of one task and its function's body: what a re-queue publishes."""
    bodies = [body for body in batch.functions if body.function_id == task.function_id]
    return TaskBatch(tasks=[task], functions=bodies, client_python=batch.client_python)


def _kept_message(
    delivery: Delivery, endpoint_id: uuid.UUID | None, *, body: bytes | None = None, now: float | None = None
) -> DeadLetterRecord:
    return DeadLetterRecord(
        dead_letter_id=uuid.uuid4(),
        task_id=None,
        endpoint_id=endpoint_id,
        owner_id=None,
        reason=_dead_letter_reason(delivery),
        deliveries=delivery.delivery_count,
        queue=_first_queue(delivery),
        created_at=now if now is not None else time.time(),
        body=delivery.body if body is None else body,
    )


def _log_dead_letter(task_ids: list[uuid.UUID], total: int, reason: str, *, outcome_reported: bool) -> None:
    effect = "kept; the endpoint reports its outcome" if outcome_reported else "kept and failed"
    for task_id in task_ids[:_LOGGED_TASK_IDS]:
        log.warning("dead-lettered task %s %s: %s", task_id, effect, reason)
    if len(task_ids) > _LOGGED_TASK_IDS:
        log.warning("... and %d more tasks of the same dead letter", len(task_ids) - _LOGGED_TASK_IDS)
    if total > len(task_ids):
        others = total - len(task_ids)
        log.warning("a dead letter named %d tasks that are not its publisher's (kept without task ids)", others)
